//! `conversations`: step 2 of a store transaction (create the missing ones, read the rest),
//! step 5 (counters grow by the messages the transaction added) and the state column that
//! step 6 (`transitions.rs`) decides.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr};

use super::{
    change::ChangeSet,
    contacts::ContactIds,
    sql::{CHUNK, Chain, Sql, query, run},
};
use crate::ingest::event::ConversationState;

/// The conversation of every contact the batch touched, with its stored state.
pub struct Conversations {
    of_contact: HashMap<i64, (i64, ConversationState)>,
    /// Contacts whose conversation this transaction created.
    pub created: HashSet<i64>,
}

impl Conversations {
    /// A conversation the batch created or read; an error (never a panic: a panic would stop
    /// the writer) if it vanished, e.g. deleted by an operator mid-batch.
    pub fn of(&self, contact_id: i64) -> Result<(i64, ConversationState), DbErr> {
        self.of_contact
            .get(&contact_id)
            .copied()
            .ok_or_else(|| DbErr::Custom(format!("no conversation for contact {contact_id}")))
    }

    /// The conversation id of a change set.
    pub fn id_of(&self, contacts: &ContactIds, set: &ChangeSet) -> Result<i64, DbErr> {
        Ok(self.of(contacts.of(set)?)?.0)
    }
}

/// Creates the missing conversations; reads those neither created nor known to the actors.
pub async fn ensure(
    tx: &DatabaseTransaction,
    sets: &[&ChangeSet],
    contacts: &ContactIds,
    now: DateTime<Utc>,
) -> Result<Conversations, DbErr> {
    let backend = tx.get_database_backend();
    let mut out = Conversations {
        of_contact: HashMap::new(),
        created: HashSet::new(),
    };
    let mut wanted: BTreeMap<i64, i64> = BTreeMap::new(); // contact -> workspace
    let mut known: HashMap<i64, i64> = HashMap::new(); // contact -> conversation
    for set in sets {
        let contact_id = contacts.of(set)?;
        wanted.insert(contact_id, set.workspace_id);
        if let Some(k) = set.known.filter(|k| k.contact_id == contact_id) {
            known.insert(contact_id, k.conversation_id);
        }
    }
    let to_create: Vec<(i64, i64)> = wanted
        .iter()
        .filter(|(c, _)| !known.contains_key(c))
        .map(|(c, w)| (*c, *w))
        .collect();
    for chunk in to_create.chunks(CHUNK) {
        let mut sql = Sql::new(
            backend,
            "INSERT INTO conversations (workspace_id, contact_id, status, message_count, created_at, updated_at) VALUES ",
        );
        sql.values(chunk.iter().map(|(contact_id, ws)| {
            vec![
                (*ws).into(),
                (*contact_id).into(),
                "open".into(),
                0i32.into(),
                now.into(),
                now.into(),
            ]
        }));
        sql.push(" ON CONFLICT (contact_id) DO NOTHING RETURNING id, contact_id, status");
        for r in query(tx, sql).await? {
            let contact_id: i64 = r.try_get("", "contact_id")?;
            out.of_contact
                .insert(contact_id, (r.try_get("", "id")?, ConversationState::Open));
            out.created.insert(contact_id);
        }
    }
    let to_read: Vec<i64> = wanted
        .keys()
        .filter(|c| !out.of_contact.contains_key(c))
        .copied()
        .collect();
    for chunk in to_read.chunks(CHUNK) {
        let mut sql = Sql::new(
            backend,
            "SELECT id, contact_id, status FROM conversations WHERE contact_id IN ",
        );
        sql.tuple(chunk.iter().copied());
        for r in query(tx, sql).await? {
            let status: String = r.try_get("", "status")?;
            out.of_contact.insert(
                r.try_get("", "contact_id")?,
                (
                    r.try_get("", "id")?,
                    ConversationState::parse(&status).unwrap_or(ConversationState::Open),
                ),
            );
        }
    }
    Ok(out)
}

/// Remembers the platform's conversation ids the sets name (Kapso events only: no statement
/// for a batch without one).
pub async fn set_external_ids(
    tx: &DatabaseTransaction,
    sets: &[&ChangeSet],
    contacts: &ContactIds,
    conversations: &Conversations,
) -> Result<(), DbErr> {
    let mut ids: BTreeMap<i64, &str> = BTreeMap::new();
    for set in sets {
        if let Some(external) = &set.external_id {
            ids.insert(conversations.id_of(contacts, set)?, external);
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    let mut sql = Sql::new(
        tx.get_database_backend(),
        "UPDATE conversations SET external_id = CASE id",
    );
    for (id, external) in &ids {
        sql.push(" WHEN ")
            .param(*id)
            .push(" THEN ")
            .param(external.to_string());
    }
    sql.push(" ELSE external_id END WHERE id IN ");
    sql.tuple(ids.keys().copied());
    run(tx, sql).await
}

/// The contact key of the conversation a platform id names in a workspace.
pub async fn contact_of_external(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    external_id: &str,
) -> Result<Option<String>, DbErr> {
    let mut sql = Sql::new(
        db.get_database_backend(),
        "SELECT c.phone AS phone FROM conversations v JOIN contacts c ON c.id = v.contact_id \
         WHERE v.workspace_id = ",
    );
    sql.param(workspace_id)
        .push(" AND v.external_id = ")
        .param(external_id.to_owned());
    match db.query_one_raw(sql.build()).await? {
        Some(row) => Ok(Some(row.try_get("", "phone")?)),
        None => Ok(None),
    }
}

/// Messages a transaction added per conversation: how many, and the latest timestamp.
pub type Added = BTreeMap<i64, (i32, DateTime<Utc>)>;

/// Each conversation gains exactly the messages this transaction added, so a redelivered,
/// replayed or retried message never counts twice; O(1) per conversation.
pub fn add_counts(added: Added, now: DateTime<Utc>, chain: &mut Chain) {
    let added: Vec<(i64, (i32, DateTime<Utc>))> = added.into_iter().collect();
    for chunk in added.chunks(CHUNK) {
        let mut sql = Sql::new(
            chain.backend(),
            "UPDATE conversations SET message_count = message_count + CASE id",
        );
        for (id, (n, _)) in chunk {
            sql.push(" WHEN ").param(*id).push(" THEN ").param(*n);
        }
        sql.push(" ELSE 0 END, last_message_at = CASE id");
        for (id, (_, latest)) in chunk {
            sql.push(" WHEN ")
                .param(*id)
                .push(" THEN (CASE WHEN last_message_at IS NULL OR last_message_at < ")
                .param(*latest)
                .push(" THEN ")
                .param(*latest)
                .push(" ELSE last_message_at END)");
        }
        sql.push(" ELSE last_message_at END, updated_at = ")
            .param(now)
            .push(" WHERE id IN ");
        sql.tuple(chunk.iter().map(|(id, _)| *id));
        chain.push(sql);
    }
}

/// Stores the states the state machine moved conversations to.
pub fn set_states(changed: &BTreeMap<i64, ConversationState>, chain: &mut Chain) {
    if changed.is_empty() {
        return;
    }
    let mut sql = Sql::new(chain.backend(), "UPDATE conversations SET status = CASE id");
    for (id, to) in changed {
        sql.push(" WHEN ")
            .param(*id)
            .push(" THEN ")
            .param(to.as_str());
    }
    sql.push(" ELSE status END WHERE id IN ");
    sql.tuple(changed.keys().copied());
    chain.push(sql);
}

/// The customer-service window: free-form messages may be sent only within 24 hours of the
/// customer's last inbound message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct ServiceWindow {
    pub service_window_open: bool,
    /// 24 hours after the last inbound message; `None` before any.
    pub service_window_closes_at: Option<DateTime<Utc>>,
}

pub async fn service_window(
    db: &impl ConnectionTrait,
    conversation_id: i64,
    now: DateTime<Utc>,
) -> Result<ServiceWindow, DbErr> {
    let mut sql = Sql::new(
        db.get_database_backend(),
        "SELECT MAX(timestamp) AS last FROM messages WHERE direction = 'inbound' AND conversation_id = ",
    );
    sql.param(conversation_id);
    let last: Option<DateTime<Utc>> = match db.query_one_raw(sql.build()).await? {
        Some(row) => row.try_get("", "last").ok().flatten(),
        None => None,
    };
    let closes_at = last.map(|t| t + chrono::Duration::hours(24));
    Ok(ServiceWindow {
        service_window_open: closes_at.is_some_and(|c| c > now),
        service_window_closes_at: closes_at,
    })
}

/// A conversation as the operator API shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ConversationView {
    pub id: i64,
    pub contact_id: i64,
    pub contact: String,
    pub contact_name: Option<String>,
    /// A WhatsApp group's conversation (`contact` is then `group:<id>`; each message names
    /// its `sender`).
    pub group_id: Option<String>,
    /// The contact's business-scoped user id (BSUID), when known.
    pub user_id: Option<String>,
    pub state: String,
    pub message_count: i32,
    pub last_message_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// The newest message is the customer's: nobody answered it yet.
    pub needs_reply: bool,
    /// The user it is assigned to, and their name.
    pub assignee_id: Option<i64>,
    pub assignee_name: Option<String>,
}

/// Which conversations a list shows, and in what order.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub state: Option<String>,
    pub active_since: Option<DateTime<Utc>>,
    /// Phone (digits), name or business-scoped user id, in part, any case; or a message's
    /// wamid, whole.
    pub search: Option<String>,
    /// Only those whose newest message is the customer's (nobody answered yet).
    pub needs_reply: bool,
    /// Only those assigned to this user.
    pub assignee_id: Option<i64>,
    /// Only those assigned to nobody.
    pub unassigned: bool,
    pub order: Order,
}

/// Newest activity first (after the cursor's activity and id), or by id (after the cursor's).
#[derive(Debug, Clone)]
pub enum Order {
    Activity(Option<(DateTime<Utc>, i64)>),
    Id(Option<i64>),
}

impl Default for Order {
    fn default() -> Self {
        Order::Activity(None)
    }
}

/// What a conversation's newest activity is: its last message, or its creation.
const ACTIVITY: &str = "COALESCE(v.last_message_at, v.created_at)";

/// A workspace's conversations by the filter, up to `limit`.
pub async fn list(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    filter: &Filter,
    limit: u64,
) -> Result<Vec<ConversationView>, DbErr> {
    let mut sql = Sql::new(
        db.get_database_backend(),
        "SELECT v.id, v.contact_id, c.phone, c.name, c.user_id, v.status, v.message_count, \
         v.last_message_at, v.created_at, v.assignee_id, u.name AS assignee_name, \
         (SELECT m.direction FROM messages m WHERE m.conversation_id = v.id \
          AND m.message_type <> 'pending' ORDER BY m.timestamp DESC, m.id DESC LIMIT 1) AS last_direction \
         FROM conversations v JOIN contacts c ON c.id = v.contact_id \
         LEFT JOIN users u ON u.id = v.assignee_id WHERE v.workspace_id = ",
    );
    sql.param(workspace_id);
    if let Some(state) = &filter.state {
        sql.push(" AND v.status = ").param(state.clone());
    }
    if let Some(since) = filter.active_since {
        sql.push(" AND v.last_message_at >= ").param(since);
    }
    if let Some(term) = filter
        .search
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let like = super::sql::contains(&term.to_lowercase());
        sql.push(" AND (LOWER(c.name) LIKE ")
            .param(like.clone())
            .push(" ESCAPE '\\' OR LOWER(c.user_id) LIKE ")
            .param(like.clone())
            .push(" ESCAPE '\\' OR LOWER(c.phone) LIKE ")
            .param(like)
            .push(" ESCAPE '\\'");
        // A phone number as people write it: +49 151 1234-5678.
        let digits: String = term.chars().filter(char::is_ascii_digit).collect();
        if digits.len() >= 3 && digits != term {
            sql.push(" OR c.phone LIKE ").param(format!("%{digits}%"));
        }
        // A message's wamid: its conversation.
        sql.push(
            " OR EXISTS (SELECT 1 FROM messages m WHERE m.workspace_id = v.workspace_id \
             AND m.conversation_id = v.id AND m.wamid = ",
        )
        .param(term.to_owned())
        .push("))");
    }
    if let Some(user) = filter.assignee_id {
        sql.push(" AND v.assignee_id = ").param(user);
    }
    if filter.unassigned {
        sql.push(" AND v.assignee_id IS NULL");
    }
    if filter.needs_reply {
        sql.push(
            " AND (SELECT m.direction FROM messages m WHERE m.conversation_id = v.id \
             AND m.message_type <> 'pending' ORDER BY m.timestamp DESC, m.id DESC LIMIT 1) = 'inbound'",
        );
    }
    match filter.order {
        Order::Id(after) => {
            if let Some(after) = after {
                sql.push(" AND v.id > ").param(after);
            }
            sql.push(" ORDER BY v.id");
        }
        Order::Activity(after) => {
            if let Some((at, id)) = after {
                sql.push(&format!(" AND ({ACTIVITY} < "))
                    .param(at)
                    .push(&format!(" OR ({ACTIVITY} = "))
                    .param(at)
                    .push(" AND v.id < ")
                    .param(id)
                    .push("))");
            }
            sql.push(&format!(" ORDER BY {ACTIVITY} DESC, v.id DESC"));
        }
    }
    sql.push(" LIMIT ").param(limit as i64);
    let mut out = Vec::new();
    for r in db.query_all_raw(sql.build()).await? {
        let contact: String = r.try_get("", "phone")?;
        let last_direction: Option<String> = r.try_get("", "last_direction")?;
        out.push(ConversationView {
            id: r.try_get("", "id")?,
            contact_id: r.try_get("", "contact_id")?,
            group_id: contact.strip_prefix("group:").map(str::to_owned),
            contact,
            contact_name: r.try_get("", "name")?,
            user_id: r.try_get("", "user_id")?,
            state: r.try_get("", "status")?,
            message_count: r.try_get("", "message_count")?,
            last_message_at: r.try_get("", "last_message_at")?,
            created_at: r.try_get("", "created_at")?,
            needs_reply: last_direction.as_deref() == Some("inbound"),
            assignee_id: r.try_get("", "assignee_id")?,
            assignee_name: r.try_get("", "assignee_name")?,
        });
    }
    Ok(out)
}

impl ConversationView {
    /// Where a list ordered by activity goes on after this one.
    pub fn activity(&self) -> DateTime<Utc> {
        self.last_message_at.unwrap_or(self.created_at)
    }
}

/// One conversation of the workspace.
pub async fn get(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    id: i64,
) -> Result<Option<ConversationView>, DbErr> {
    // Ids start at 1 (and `id - 1` must not overflow for any id a client sends).
    if id < 1 {
        return Ok(None);
    }
    let filter = Filter {
        order: Order::Id(Some(id - 1)),
        ..Filter::default()
    };
    let mut rows = list(db, workspace_id, &filter, 1).await?;
    Ok(rows.pop().filter(|c| c.id == id))
}

/// The stored state of a conversation.
pub async fn state_of(
    db: &impl ConnectionTrait,
    id: i64,
) -> Result<Option<ConversationState>, DbErr> {
    let mut sql = Sql::new(
        db.get_database_backend(),
        "SELECT status FROM conversations WHERE id = ",
    );
    sql.param(id);
    Ok(match db.query_one_raw(sql.build()).await? {
        Some(r) => ConversationState::parse(&r.try_get::<String>("", "status")?),
        None => None,
    })
}

/// The conversation of each of these contacts of a workspace (those that have one).
pub async fn of_contacts(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    contact_ids: &[i64],
) -> Result<std::collections::HashMap<i64, i64>, DbErr> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let mut out = std::collections::HashMap::new();
    for chunk in contact_ids.chunks(500) {
        for c in entity::conversations::Entity::find()
            .filter(entity::conversations::Column::WorkspaceId.eq(workspace_id))
            .filter(entity::conversations::Column::ContactId.is_in(chunk.iter().copied()))
            .all(db)
            .await?
        {
            out.entry(c.contact_id).or_insert(c.id);
        }
    }
    Ok(out)
}

/// Which of these conversations have their 24-hour window open at `now` (the customer wrote
/// within 24 hours): [`service_window`] for many, one query per 500.
pub async fn open_windows(
    db: &impl ConnectionTrait,
    conversation_ids: &[i64],
    now: DateTime<Utc>,
) -> Result<HashSet<i64>, DbErr> {
    let mut out = HashSet::new();
    let since = now - chrono::Duration::hours(24);
    for chunk in conversation_ids.chunks(500) {
        let mut sql = Sql::new(
            db.get_database_backend(),
            "SELECT DISTINCT conversation_id FROM messages WHERE direction = 'inbound' AND timestamp > ",
        );
        sql.param(since)
            .push(" AND conversation_id IN ")
            .tuple(chunk.iter().copied());
        for row in db.query_all_raw(sql.build()).await? {
            out.insert(row.try_get::<i64>("", "conversation_id")?);
        }
    }
    Ok(out)
}

/// Assigns a conversation of the workspace to a user (or to nobody); false when there is no
/// such conversation. Only this column changes (nothing else writes it).
pub async fn assign(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    id: i64,
    user_id: Option<i64>,
) -> Result<bool, DbErr> {
    let mut sql = Sql::new(
        db.get_database_backend(),
        "UPDATE conversations SET assignee_id = ",
    );
    sql.param(user_id)
        .push(" WHERE id = ")
        .param(id)
        .push(" AND workspace_id = ")
        .param(workspace_id);
    let r = db.execute_raw(sql.build()).await?;
    Ok(r.rows_affected() == 1)
}
