//! `outbound_messages`: the agent's replies, recorded durably before the send (`pending_send`,
//! unique per turn, so a burst can never be sent twice) and after it.

use chrono::{DateTime, Utc};
use entity::outbound_messages;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter,
    sea_query::OnConflict,
};

/// Where a send (or a turn that ends without one) stands (`outbound_messages.state`, stored as
/// its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundState {
    /// Recorded before the send: it may be leaving now.
    PendingSend,
    Sent,
    /// Refused (the Graph API's error code kept), or a turn that failed before any send.
    Failed,
    /// It may or may not have left (a timeout, a stop between send and record): never resent.
    Unknown,
    /// A turn that chose to send nothing, with why.
    Skipped,
}

impl OutboundState {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboundState::PendingSend => "pending_send",
            OutboundState::Sent => "sent",
            OutboundState::Failed => "failed",
            OutboundState::Unknown => "unknown",
            OutboundState::Skipped => "skipped",
        }
    }
}

/// A reply about to be sent or a turn that ends without one.
pub struct NewOutbound<'a> {
    pub workspace_id: i64,
    pub conversation_id: i64,
    pub agent_type: &'a str,
    pub turn_key: &'a str,
    pub state: OutboundState,
    pub body: Option<&'a str>,
    pub error: Option<&'a str>,
    /// A failed turn's provider error code (`context_length_exceeded`, `http_503`, …).
    pub error_code: Option<&'a str>,
    /// A failed turn's provider HTTP status.
    pub provider_status: Option<u16>,
    /// How the model's reply ended.
    pub finish_reason: Option<&'a str>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

/// Has this turn been recorded (answered, tried, or skipped) already?
pub async fn exists(db: &impl ConnectionTrait, turn_key: &str) -> Result<bool, DbErr> {
    Ok(outbound_messages::Entity::find()
        .filter(outbound_messages::Column::TurnKey.eq(turn_key))
        .one(db)
        .await?
        .is_some())
}

/// Records the turn; `None` when its key is already recorded (then nothing may be sent).
pub async fn reserve(
    db: &impl ConnectionTrait,
    row: NewOutbound<'_>,
) -> Result<Option<i64>, DbErr> {
    let now = Utc::now();
    let result = outbound_messages::Entity::insert(outbound_messages::ActiveModel {
        workspace_id: Set(row.workspace_id),
        conversation_id: Set(row.conversation_id),
        agent_type: Set(row.agent_type.to_owned()),
        turn_key: Set(row.turn_key.to_owned()),
        state: Set(row.state.as_str().to_owned()),
        body: Set(row.body.map(str::to_owned)),
        error: Set(row.error.map(str::to_owned)),
        error_code: Set(row.error_code.map(str::to_owned)),
        provider_status: Set(row.provider_status.map(i32::from)),
        finish_reason: Set(row.finish_reason.map(str::to_owned)),
        prompt_tokens: Set(row.prompt_tokens as i32),
        completion_tokens: Set(row.completion_tokens as i32),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    })
    .on_conflict(
        OnConflict::column(outbound_messages::Column::TurnKey)
            .do_nothing()
            .to_owned(),
    )
    .exec(db)
    .await;
    match result {
        Ok(r) => Ok(Some(r.last_insert_id)),
        Err(DbErr::RecordNotInserted) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The send's outcome: `sent` with its wamid, `failed` with the Graph error code, `unknown`.
pub async fn finish(
    db: &impl ConnectionTrait,
    id: i64,
    state: OutboundState,
    wamid: Option<&str>,
    error_code: Option<&str>,
    error: Option<&str>,
) -> Result<(), DbErr> {
    outbound_messages::Entity::update_many()
        .col_expr(outbound_messages::Column::State, state.as_str().into())
        .col_expr(
            outbound_messages::Column::Wamid,
            wamid.map(str::to_owned).into(),
        )
        .col_expr(
            outbound_messages::Column::ErrorCode,
            error_code.map(str::to_owned).into(),
        )
        .col_expr(
            outbound_messages::Column::Error,
            error.map(str::to_owned).into(),
        )
        .col_expr(outbound_messages::Column::UpdatedAt, Utc::now().into())
        .filter(outbound_messages::Column::Id.eq(id))
        .exec(db)
        .await
        .map(|_| ())
}

/// After a crash: a reply still `pending_send` may or may not have left. It becomes
/// `unknown` (for an operator to look at), and is never sent again.
pub async fn settle_interrupted(
    db: &impl ConnectionTrait,
    before: DateTime<Utc>,
) -> Result<u64, DbErr> {
    let r = outbound_messages::Entity::update_many()
        .col_expr(
            outbound_messages::Column::State,
            OutboundState::Unknown.as_str().into(),
        )
        .col_expr(
            outbound_messages::Column::Error,
            "interrupted between recording and the send's outcome (process stopped); not resent"
                .into(),
        )
        .col_expr(outbound_messages::Column::UpdatedAt, Utc::now().into())
        .filter(outbound_messages::Column::State.eq(OutboundState::PendingSend.as_str()))
        .filter(outbound_messages::Column::CreatedAt.lt(before))
        .exec(db)
        .await?;
    Ok(r.rows_affected)
}

/// An inbound message no agent turn has answered.
#[derive(Debug, Clone)]
pub struct Unanswered {
    pub workspace_id: i64,
    pub conversation_id: i64,
    pub contact_id: i64,
    pub contact: String,
    /// The conversation's state (`human`: the turn is recorded as skipped).
    pub state: String,
    pub phone_number_id: String,
    pub event_id: i64,
    pub message: crate::ingest::event::MessageItem,
}

/// Inbound messages since `since` to numbers with an agent, in conversations with no turn
/// recorded after them: what a stopped process had gathered into a burst and never answered.
/// Oldest first per conversation.
pub async fn unanswered(
    db: &impl ConnectionTrait,
    since: DateTime<Utc>,
    stored_before: DateTime<Utc>,
) -> Result<Vec<Unanswered>, DbErr> {
    use crate::ingest::event::{Direction, MessageItem, MessageStatus};
    let mut sql = super::sql::Sql::new(
        db.get_database_backend(),
        "SELECT m.workspace_id AS ws, m.conversation_id AS conv, v.contact_id AS contact_id, \
         c.phone AS phone, v.status AS state, a.phone_number_id AS pnid, m.event_id AS event_id, m.wamid AS wamid, \
         m.message_type AS message_type, m.content AS content, m.timestamp AS ts, \
         m.metadata AS metadata \
         FROM messages m \
         JOIN conversations v ON v.id = m.conversation_id \
         JOIN contacts c ON c.id = v.contact_id \
         JOIN webhook_events e ON e.id = m.event_id \
         JOIN whatsapp_accounts a ON a.id = e.account_id \
         WHERE m.direction = 'inbound' AND a.agent_type IS NOT NULL AND m.timestamp > ",
    );
    sql.param(since)
        .push(" AND m.created_at < ")
        .param(stored_before);
    sql.push(
        " AND NOT EXISTS (SELECT 1 FROM outbound_messages o \
         WHERE o.conversation_id = m.conversation_id AND o.created_at >= m.created_at) \
         ORDER BY m.conversation_id, m.timestamp",
    );
    let mut out = Vec::new();
    for r in db.query_all_raw(sql.build()).await? {
        out.push(Unanswered {
            workspace_id: r.try_get("", "ws")?,
            conversation_id: r.try_get("", "conv")?,
            contact_id: r.try_get("", "contact_id")?,
            contact: r.try_get("", "phone")?,
            state: r.try_get("", "state")?,
            phone_number_id: r.try_get("", "pnid")?,
            event_id: r.try_get("", "event_id")?,
            message: MessageItem {
                direction: Direction::Inbound,
                wamid: r.try_get("", "wamid")?,
                timestamp: r.try_get("", "ts")?,
                message_type: r.try_get("", "message_type")?,
                content: r.try_get("", "content")?,
                metadata: r.try_get("", "metadata")?,
                status: MessageStatus::Received,
                sender: None,
                media: None,
                author: crate::ingest::event::Author::Customer,
            },
        });
    }
    Ok(out)
}

/// Forgets a send the Graph API refused (`failed`) so the same key may be sent again: only
/// for refusals that prove nothing left (a throughput limit), never for `unknown`.
pub async fn release_failed(db: &impl ConnectionTrait, turn_key: &str) -> Result<u64, DbErr> {
    outbound_messages::Entity::delete_many()
        .filter(outbound_messages::Column::TurnKey.eq(turn_key))
        .filter(outbound_messages::Column::State.eq("failed"))
        .exec(db)
        .await
        .map(|r| r.rows_affected)
}

/// Which of these keys are recorded (one query per 500).
pub async fn existing(
    db: &impl ConnectionTrait,
    keys: &[String],
) -> Result<std::collections::HashSet<String>, DbErr> {
    let mut out = std::collections::HashSet::new();
    for chunk in keys.chunks(500) {
        for row in outbound_messages::Entity::find()
            .filter(outbound_messages::Column::TurnKey.is_in(chunk.iter().cloned()))
            .all(db)
            .await?
        {
            out.insert(row.turn_key);
        }
    }
    Ok(out)
}

/// A turn of the agent that sent nothing (`skipped`, `failed`, `unknown`), as the conversation
/// timeline shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct TurnView {
    pub agent: String,
    pub state: String,
    /// Why: `human_replied`, `handed_to_person`, `handoff_keyword`, `service_window_closed`,
    /// or the failure.
    pub error: Option<String>,
    pub error_code: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A conversation's agent turns that sent nothing, oldest first (at most `limit`, the newest).
pub async fn quiet_turns(
    db: &impl ConnectionTrait,
    conversation_id: i64,
    limit: u64,
) -> Result<Vec<TurnView>, DbErr> {
    use sea_orm::{QueryOrder, QuerySelect};
    let mut rows = outbound_messages::Entity::find()
        .filter(outbound_messages::Column::ConversationId.eq(conversation_id))
        .filter(
            outbound_messages::Column::State.is_in(
                [
                    OutboundState::Skipped,
                    OutboundState::Failed,
                    OutboundState::Unknown,
                ]
                .map(OutboundState::as_str),
            ),
        )
        .filter(outbound_messages::Column::AgentType.is_not_in(["operator", "leads"]))
        .order_by_desc(outbound_messages::Column::Id)
        .limit(limit)
        .all(db)
        .await?;
    rows.reverse();
    Ok(rows
        .into_iter()
        .map(|r| TurnView {
            agent: r.agent_type,
            state: r.state,
            error: r.error,
            error_code: r.error_code,
            created_at: r.created_at,
        })
        .collect())
}
