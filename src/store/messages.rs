//! `messages`, step 3 of a store transaction: every message of the batch inserted once (the
//! first copy of a wamid wins; a stored one is only completed if it was a placeholder left by
//! an early status), returning what each conversation gained. Also the read processing uses
//! to attribute a status by its wamid.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr};

use super::{
    change::ChangeSet,
    contacts::ContactIds,
    conversations::{Added, Conversations},
    sql::{CHUNK, Sql, query},
};
use crate::ingest::event::MessageItem;

/// The insert every message row goes through (`statuses.rs` has its own for placeholders).
pub const INSERT: &str = "INSERT INTO messages (workspace_id, conversation_id, direction, wamid, \
     message_type, content, status, status_rank, status_error, timestamp, metadata, event_id, \
     created_at, updated_at, sender, author, author_user_id) VALUES ";

/// What step 3 added: per conversation, how many rows and the latest timestamp; and, when
/// tracked, which `(wamid, event_id)` were inserted (a redelivered copy is not among them).
pub struct Inserted {
    pub added: Added,
    pub rows: HashSet<(String, Option<i64>)>,
}

/// Inserts the batch's messages (only rows inserted or placeholders completed come back,
/// never a duplicate).
pub async fn insert(
    tx: &DatabaseTransaction,
    sets: &[&ChangeSet],
    contacts: &ContactIds,
    conversations: &Conversations,
    track_rows: bool,
    now: DateTime<Utc>,
) -> Result<Inserted, DbErr> {
    let mut seen: HashSet<(i64, &str)> = HashSet::new();
    let mut messages: Vec<(i64, i64, &MessageItem, Option<i64>)> = Vec::new();
    for set in sets {
        let conversation_id = conversations.id_of(contacts, set)?;
        for msg in &set.messages {
            if seen.insert((set.workspace_id, msg.wamid.as_str())) {
                messages.push((
                    set.workspace_id,
                    conversation_id,
                    msg,
                    set.origin.event_id(),
                ));
            }
        }
    }
    let mut added = Added::new();
    let mut rows = HashSet::new();
    for chunk in messages.chunks(CHUNK) {
        let mut sql = Sql::new(tx.get_database_backend(), INSERT);
        sql.values(chunk.iter().map(|(ws, conv, msg, event_id)| {
            vec![
                (*ws).into(),
                (*conv).into(),
                msg.direction.as_str().into(),
                msg.wamid.clone().into(),
                msg.message_type.clone().into(),
                msg.content.clone().into(),
                msg.status.as_str().into(),
                msg.status.rank().into(),
                None::<String>.into(),
                msg.timestamp.into(),
                msg.metadata.clone().into(),
                (*event_id).into(),
                now.into(),
                now.into(),
                msg.sender
                    .as_ref()
                    .and_then(|s| serde_json::to_string(s).ok())
                    .into(),
                msg.author.as_str().into(),
                msg.author.user_id().into(),
            ]
        }));
        sql.push(
            " ON CONFLICT (workspace_id, wamid) DO UPDATE SET \
             conversation_id = excluded.conversation_id, direction = excluded.direction, \
             message_type = excluded.message_type, content = excluded.content, \
             timestamp = excluded.timestamp, metadata = excluded.metadata, \
             event_id = excluded.event_id, updated_at = excluded.updated_at, \
             sender = excluded.sender, author = excluded.author, \
             author_user_id = excluded.author_user_id \
             WHERE messages.message_type = 'pending' \
             RETURNING conversation_id, timestamp, wamid, event_id",
        );
        // Only rows inserted (or placeholders completed) come back, never a duplicate: they
        // are the messages this transaction adds, counted in the same transaction.
        for r in query(tx, sql).await? {
            let conversation_id: i64 = r.try_get("", "conversation_id")?;
            let timestamp: DateTime<Utc> = r.try_get("", "timestamp")?;
            if track_rows {
                rows.insert((r.try_get("", "wamid")?, r.try_get("", "event_id")?));
            }
            let (n, latest) = added.entry(conversation_id).or_insert((0, timestamp));
            *n += 1;
            *latest = (*latest).max(timestamp);
        }
    }
    Ok(Inserted { added, rows })
}

/// The contact key (`contacts.phone`) of the conversation each stored `(workspace, wamid)`
/// belongs to; wamids not stored are absent.
pub async fn contacts_of(
    db: &impl ConnectionTrait,
    wamids: &[(i64, String)],
) -> Result<HashMap<(i64, String), String>, DbErr> {
    let mut out = HashMap::new();
    for chunk in wamids.chunks(500) {
        let mut sql = Sql::new(
            db.get_database_backend(),
            "SELECT m.workspace_id AS ws, m.wamid AS wamid, c.phone AS phone FROM messages m \
             JOIN conversations v ON v.id = m.conversation_id \
             JOIN contacts c ON c.id = v.contact_id WHERE (m.workspace_id, m.wamid) IN (",
        );
        sql.values(
            chunk
                .iter()
                .map(|(ws, w)| vec![(*ws).into(), w.clone().into()]),
        );
        sql.push(")");
        for r in db.query_all_raw(sql.build()).await? {
            out.insert(
                (r.try_get("", "ws")?, r.try_get("", "wamid")?),
                r.try_get("", "phone")?,
            );
        }
    }
    Ok(out)
}

/// The text of each of these messages of one conversation (revoked ones have none).
pub async fn contents_in(
    db: &impl ConnectionTrait,
    conversation_id: i64,
    wamids: &[(i64, String)],
) -> Result<HashMap<String, String>, DbErr> {
    let mut out = HashMap::new();
    for chunk in wamids.chunks(500) {
        let mut sql = Sql::new(
            db.get_database_backend(),
            "SELECT wamid, content FROM messages WHERE content IS NOT NULL AND conversation_id = ",
        );
        sql.param(conversation_id)
            .push(" AND (workspace_id, wamid) IN (");
        sql.values(
            chunk
                .iter()
                .map(|(ws, w)| vec![(*ws).into(), w.clone().into()]),
        );
        sql.push(")");
        for r in db.query_all_raw(sql.build()).await? {
            out.insert(r.try_get("", "wamid")?, r.try_get("", "content")?);
        }
    }
    Ok(out)
}

/// A message as the operator API shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct MessageView {
    pub id: i64,
    pub direction: String,
    pub wamid: String,
    pub message_type: String,
    /// Its text; the latest edit's once edited; none once revoked.
    pub content: Option<String>,
    pub status: Option<String>,
    pub status_error: Option<String>,
    pub timestamp: DateTime<Utc>,
    /// The current reaction of each side (the customer's, ours).
    pub reactions: Vec<ReactionView>,
    pub edited: bool,
    /// Every text it had, oldest first (the original, then each edit), with when.
    pub edits: Vec<EditView>,
    /// Deleted for everyone: its text is gone.
    pub revoked: bool,
    /// Who wrote it, in a group's conversation (the participant's phone, user id, name).
    #[schema(value_type = Option<SenderView>)]
    pub sender: Option<crate::ingest::event::Sender>,
    /// The file it carries (image, audio, video, document, sticker) and where it stands.
    pub media: Option<MediaView>,
    /// A shared location.
    pub location: Option<LocationView>,
    /// Who wrote it: `customer`, `agent`, `operator`, `business_app` (the WhatsApp Business
    /// app) or `api` (another system).
    pub author: String,
    /// The operator's user id and name, for `operator`.
    pub author_user_id: Option<i64>,
    pub author_name: Option<String>,
}

/// A message's file: `pending` (being fetched), `stored` (at `url`), `failed` (with
/// `error`), or `deleted` (after `media.keep_days`).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct MediaView {
    pub id: i64,
    /// `image`, `audio`, `video`, `document`, `sticker`.
    pub kind: String,
    pub status: String,
    pub mime_type: Option<String>,
    pub size: Option<i64>,
    /// Hex sha256 of the stored bytes.
    pub sha256: Option<String>,
    pub filename: Option<String>,
    /// A voice note.
    pub voice: bool,
    /// `GET` it with the same token (`/api/v1/media/{id}`), once stored.
    pub url: Option<String>,
    pub error: Option<String>,
    /// What a voice note or audio says, once transcribed.
    pub transcript: Option<String>,
}

impl From<super::media::Media> for MediaView {
    fn from(m: super::media::Media) -> Self {
        Self {
            url: (m.status == super::media::STORED).then(|| format!("/api/v1/media/{}", m.id)),
            id: m.id,
            kind: m.kind,
            status: m.status,
            mime_type: m.mime_type,
            size: m.size,
            sha256: m.sha256,
            filename: m.filename,
            voice: m.voice,
            error: m.error,
            transcript: m.transcript,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct LocationView {
    pub latitude: f64,
    pub longitude: f64,
    pub name: Option<String>,
    pub address: Option<String>,
}

impl LocationView {
    fn of(metadata: &str) -> Option<Self> {
        let m: serde_json::Value = serde_json::from_str(metadata).ok()?;
        let loc = m.get("location")?;
        let num = |k: &str| {
            loc.get(k).and_then(|v| {
                v.as_f64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
        };
        let (latitude, longitude) = (num("latitude")?, num("longitude")?);
        if !(-90.0..=90.0).contains(&latitude) || !(-180.0..=180.0).contains(&longitude) {
            return None;
        }
        let text = |k: &str| loc.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        Some(Self {
            latitude,
            longitude,
            name: text("name"),
            address: text("address"),
        })
    }
}

/// The participant who wrote a group message.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SenderView {
    pub phone: Option<String>,
    pub user_id: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ReactionView {
    pub emoji: String,
    /// `inbound` (the customer's) or `outbound` (ours).
    pub side: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct EditView {
    pub content: Option<String>,
    pub at: DateTime<Utc>,
}

/// A conversation's messages in order (timestamp, then id), up to `limit`.
pub async fn of_conversation(
    db: &impl ConnectionTrait,
    conversation_id: i64,
    limit: u64,
) -> Result<Vec<MessageView>, DbErr> {
    let backend = db.get_database_backend();
    let mut sql = Sql::new(
        backend,
        "SELECT m.id AS id, m.direction AS direction, m.wamid AS wamid, \
         m.message_type AS message_type, m.content AS content, m.status AS status, \
         m.status_error AS status_error, m.timestamp AS timestamp, m.metadata AS metadata, \
         m.edited_at AS edited_at, m.revoked_at AS revoked_at, m.sender AS sender, \
         m.author AS author, m.author_user_id AS author_user_id, u.name AS author_name \
         FROM messages m LEFT JOIN users u ON u.id = m.author_user_id \
         WHERE m.message_type <> 'pending' AND m.conversation_id = ",
    );
    sql.param(conversation_id)
        .push(" ORDER BY m.timestamp, m.id LIMIT ")
        .param(limit as i64);
    let mut out = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for r in db.query_all_raw(sql.build()).await? {
        let message_type: String = r.try_get("", "message_type")?;
        let edited_at: Option<DateTime<Utc>> = r.try_get("", "edited_at")?;
        let revoked_at: Option<DateTime<Utc>> = r.try_get("", "revoked_at")?;
        let timestamp: DateTime<Utc> = r.try_get("", "timestamp")?;
        let wamid: String = r.try_get("", "wamid")?;
        // The original text, from the message object itself (the row's content is the edit's).
        let edits = match edited_at {
            Some(_) if revoked_at.is_none() => {
                let metadata: String = r.try_get("", "metadata")?;
                let original = serde_json::from_str::<serde_json::Value>(&metadata)
                    .ok()
                    .and_then(|m| crate::ingest::content_of(&message_type, &m));
                vec![EditView {
                    content: original,
                    at: timestamp,
                }]
            }
            _ => Vec::new(),
        };
        index.insert(wamid.clone(), out.len());
        let location = match message_type.as_str() {
            "location" => LocationView::of(&r.try_get::<String>("", "metadata")?),
            _ => None,
        };
        out.push(MessageView {
            id: r.try_get("", "id")?,
            direction: r.try_get("", "direction")?,
            wamid,
            message_type,
            content: r.try_get("", "content")?,
            status: r.try_get("", "status")?,
            status_error: r.try_get("", "status_error")?,
            timestamp,
            reactions: Vec::new(),
            edited: edited_at.is_some(),
            edits,
            revoked: revoked_at.is_some(),
            sender: r
                .try_get::<Option<String>>("", "sender")?
                .and_then(|s| serde_json::from_str(&s).ok()),
            media: None,
            location,
            author: r
                .try_get::<Option<String>>("", "author")?
                .unwrap_or_else(|| "customer".into()),
            author_user_id: r.try_get("", "author_user_id")?,
            author_name: r.try_get("", "author_name")?,
        });
    }
    if out.is_empty() {
        return Ok(out);
    }
    let with_files: Vec<i64> = out
        .iter()
        .filter(|m| crate::ingest::event::MEDIA_TYPES.contains(&m.message_type.as_str()))
        .map(|m| m.id)
        .collect();
    if !with_files.is_empty() {
        let mut files = super::media::of_messages(db, &with_files).await?;
        for m in &mut out {
            m.media = files.remove(&m.id).map(MediaView::from);
        }
    }
    let mut sql = Sql::new(
        backend,
        "SELECT r.wamid AS wamid, r.side AS side, r.emoji AS emoji, r.reacted_at AS at \
         FROM message_reactions r JOIN messages m \
         ON m.workspace_id = r.workspace_id AND m.wamid = r.wamid \
         AND m.conversation_id = r.conversation_id \
         WHERE r.emoji IS NOT NULL AND m.conversation_id = ",
    );
    sql.param(conversation_id).push(" ORDER BY r.side");
    for r in db.query_all_raw(sql.build()).await? {
        let wamid: String = r.try_get("", "wamid")?;
        if let Some(&i) = index.get(&wamid) {
            out[i].reactions.push(ReactionView {
                emoji: r.try_get("", "emoji")?,
                side: r.try_get("", "side")?,
                at: r.try_get("", "at")?,
            });
        }
    }
    let mut sql = Sql::new(
        backend,
        "SELECT a.wamid AS wamid, a.content AS content, a.amended_at AS at \
         FROM message_amendments a JOIN messages m \
         ON m.workspace_id = a.workspace_id AND m.wamid = a.wamid \
         AND m.conversation_id = a.conversation_id \
         WHERE a.kind = 'edit' AND m.revoked_at IS NULL AND m.conversation_id = ",
    );
    sql.param(conversation_id)
        .push(" ORDER BY a.amended_at, a.amendment_wamid");
    for r in db.query_all_raw(sql.build()).await? {
        let wamid: String = r.try_get("", "wamid")?;
        if let Some(&i) = index.get(&wamid) {
            out[i].edits.push(EditView {
                content: r.try_get("", "content")?,
                at: r.try_get("", "at")?,
            });
        }
    }
    Ok(out)
}

/// When a person last replied in a conversation (an operator, or the business app).
pub async fn last_human_reply(
    db: &impl ConnectionTrait,
    conversation_id: i64,
) -> Result<Option<DateTime<Utc>>, DbErr> {
    let mut sql = Sql::new(
        db.get_database_backend(),
        "SELECT timestamp FROM messages WHERE author IN ('operator', 'business_app') \
         AND conversation_id = ",
    );
    sql.param(conversation_id)
        .push(" ORDER BY timestamp DESC LIMIT 1");
    Ok(match db.query_one_raw(sql.build()).await? {
        Some(r) => Some(r.try_get("", "timestamp")?),
        None => None,
    })
}

/// A message of what the agent missed while a person had the conversation.
#[derive(Debug, Clone)]
pub struct Said {
    pub wamid: String,
    /// `customer`, `operator`, `business_app`, `api`.
    pub author: String,
    pub message_type: String,
    pub content: Option<String>,
}

/// The conversation's newest `limit` messages stored after `after` (all, for `None`) that the
/// agent did not write and that are not revoked, oldest first.
pub async fn not_by_agent_since(
    db: &impl ConnectionTrait,
    conversation_id: i64,
    after: Option<DateTime<Utc>>,
    limit: u64,
) -> Result<Vec<Said>, DbErr> {
    let mut sql = Sql::new(
        db.get_database_backend(),
        "SELECT wamid, COALESCE(author, CASE WHEN direction = 'inbound' THEN 'customer' ELSE 'api' END) AS author,          message_type, content FROM messages WHERE revoked_at IS NULL          AND COALESCE(author, '') <> 'agent' AND conversation_id = ",
    );
    sql.param(conversation_id);
    if let Some(after) = after {
        sql.push(" AND created_at > ").param(after);
    }
    sql.push(" ORDER BY timestamp DESC, id DESC LIMIT ")
        .param(limit as i64);
    let mut out = Vec::new();
    for r in db.query_all_raw(sql.build()).await? {
        out.push(Said {
            wamid: r.try_get("", "wamid")?,
            author: r.try_get("", "author")?,
            message_type: r.try_get("", "message_type")?,
            content: r.try_get("", "content")?,
        });
    }
    out.reverse();
    Ok(out)
}

/// The conversations an inbox event's messages went to.
pub async fn conversations_of_event(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    event_id: i64,
) -> Result<Vec<i64>, DbErr> {
    let mut sql = Sql::new(
        db.get_database_backend(),
        "SELECT DISTINCT conversation_id FROM messages WHERE workspace_id = ",
    );
    sql.param(workspace_id)
        .push(" AND event_id = ")
        .param(event_id)
        .push(" ORDER BY conversation_id LIMIT 100");
    let mut out = Vec::new();
    for r in db.query_all_raw(sql.build()).await? {
        out.push(r.try_get("", "conversation_id")?);
    }
    Ok(out)
}
