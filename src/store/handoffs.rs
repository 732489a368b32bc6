//! `handoff_notifications`: one row per conversation handed to a person, made in the store
//! transaction that moves it to `human` (so a crash never loses one, and a hand-off that
//! changes nothing makes none); the notifier (`agent/notify.rs`) claims it with a lease,
//! delivers it and records the outcome.

use chrono::{DateTime, Utc};
use entity::handoff_notifications as rows;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    sea_query::{Expr, ExprTrait},
};

use super::sql::{CHUNK, Chain, Sql};

pub use rows::Model as Handoff;

pub const PENDING: &str = "pending";
pub const DELIVERED: &str = "delivered";
pub const FAILED: &str = "failed";
pub const SKIPPED: &str = "skipped";

/// A conversation that went to a person in this transaction.
pub struct New {
    pub workspace_id: i64,
    pub conversation_id: i64,
    pub reason: &'static str,
    pub correlation_id: String,
}

/// Step 6b of a store transaction: a `pending` row per hand-off, due now.
pub fn enqueue(new: &[New], now: DateTime<Utc>, chain: &mut Chain) {
    for chunk in new.chunks(CHUNK) {
        let mut sql = Sql::new(
            chain.backend(),
            "INSERT INTO handoff_notifications (workspace_id, conversation_id, reason, \
             correlation_id, status, attempts, next_attempt_at, created_at, updated_at) VALUES ",
        );
        sql.values(chunk.iter().map(|h| {
            vec![
                h.workspace_id.into(),
                h.conversation_id.into(),
                h.reason.into(),
                h.correlation_id.clone().into(),
                PENDING.into(),
                0i32.into(),
                now.into(),
                now.into(),
                now.into(),
            ]
        }));
        chain.push(sql);
    }
}

/// Up to `limit` rows due now that no worker holds, oldest first.
pub async fn due(
    db: &impl ConnectionTrait,
    now: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<Handoff>, DbErr> {
    rows::Entity::find()
        .filter(rows::Column::Status.eq(PENDING))
        .filter(rows::Column::NextAttemptAt.lte(now))
        .filter(
            rows::Column::LeaseUntil
                .is_null()
                .or(rows::Column::LeaseUntil.lt(now)),
        )
        .order_by_asc(rows::Column::NextAttemptAt)
        .limit(limit)
        .all(db)
        .await
}

/// Takes the row until `until` (one attempt more); false when another worker took it first.
pub async fn claim(
    db: &impl ConnectionTrait,
    id: i64,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let r = rows::Entity::update_many()
        .col_expr(rows::Column::LeaseUntil, Expr::value(until))
        .col_expr(
            rows::Column::Attempts,
            Expr::col(rows::Column::Attempts).add(1),
        )
        .col_expr(rows::Column::UpdatedAt, Expr::value(now))
        .filter(rows::Column::Id.eq(id))
        .filter(rows::Column::Status.eq(PENDING))
        .filter(
            rows::Column::LeaseUntil
                .is_null()
                .or(rows::Column::LeaseUntil.lt(now)),
        )
        .exec(db)
        .await?;
    Ok(r.rows_affected == 1)
}

/// How an attempt ended.
pub struct Outcome {
    /// `delivered`, `failed`, `skipped`, or `pending` (tried again at `retry_at`).
    pub status: &'static str,
    pub url: Option<String>,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    pub retry_at: Option<DateTime<Utc>>,
}

pub async fn record(
    db: &impl ConnectionTrait,
    id: i64,
    o: Outcome,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let mut update = rows::Entity::update_many()
        .col_expr(rows::Column::Status, Expr::value(o.status))
        .col_expr(rows::Column::Url, Expr::value(o.url))
        .col_expr(
            rows::Column::LastStatus,
            Expr::value(o.http_status.map(i32::from)),
        )
        .col_expr(rows::Column::Error, Expr::value(o.error))
        .col_expr(rows::Column::LeaseUntil, Expr::value(None::<DateTime<Utc>>))
        .col_expr(rows::Column::UpdatedAt, Expr::value(now));
    if let Some(at) = o.retry_at {
        update = update.col_expr(rows::Column::NextAttemptAt, Expr::value(at));
    }
    if o.status == DELIVERED {
        update = update.col_expr(rows::Column::DeliveredAt, Expr::value(now));
    }
    update
        .filter(rows::Column::Id.eq(id))
        .exec(db)
        .await
        .map(|_| ())
}

/// A single node at start: nobody else can hold a row, so what a dead process held is free.
pub async fn release_leases(db: &impl ConnectionTrait) -> Result<u64, DbErr> {
    Ok(rows::Entity::update_many()
        .col_expr(rows::Column::LeaseUntil, Expr::value(None::<DateTime<Utc>>))
        .filter(rows::Column::Status.eq(PENDING))
        .filter(rows::Column::LeaseUntil.is_not_null())
        .exec(db)
        .await?
        .rows_affected)
}

/// A conversation's hand-offs, newest first.
pub async fn of_conversation(
    db: &impl ConnectionTrait,
    conversation_id: i64,
    limit: u64,
) -> Result<Vec<Handoff>, DbErr> {
    rows::Entity::find()
        .filter(rows::Column::ConversationId.eq(conversation_id))
        .order_by_desc(rows::Column::Id)
        .limit(limit)
        .all(db)
        .await
}

/// The number the conversation last heard from (its newest message that came with an inbox
/// event names the account), or `None`.
pub async fn number_of(
    db: &impl ConnectionTrait,
    conversation_id: i64,
) -> Result<Option<String>, DbErr> {
    let mut sql = Sql::new(
        db.get_database_backend(),
        "SELECT a.phone_number_id AS phone_number_id FROM messages m \
         JOIN webhook_events e ON e.id = m.event_id \
         JOIN whatsapp_accounts a ON a.id = e.account_id \
         WHERE m.conversation_id = ",
    );
    sql.param(conversation_id)
        .push(" ORDER BY m.id DESC LIMIT 1");
    let row = db.query_one_raw(sql.build()).await?;
    row.map(|r| r.try_get::<String>("", "phone_number_id"))
        .transpose()
}

/// A message as a hand-off notification shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Line {
    pub wamid: String,
    pub direction: String,
    pub author: String,
    pub message_type: String,
    pub content: Option<String>,
    pub timestamp: DateTime<Utc>,
}

/// The conversation's newest `limit` messages, oldest first.
pub async fn last_lines(
    db: &impl ConnectionTrait,
    conversation_id: i64,
    limit: u64,
) -> Result<Vec<Line>, DbErr> {
    let mut sql = Sql::new(
        db.get_database_backend(),
        "SELECT wamid, direction, author, message_type, content, timestamp FROM messages \
         WHERE conversation_id = ",
    );
    sql.param(conversation_id)
        .push(" ORDER BY timestamp DESC, id DESC LIMIT ")
        .param(limit as i64);
    let mut lines = Vec::new();
    for r in db.query_all_raw(sql.build()).await? {
        lines.push(Line {
            wamid: r.try_get("", "wamid")?,
            direction: r.try_get("", "direction")?,
            author: r.try_get("", "author")?,
            message_type: r.try_get("", "message_type")?,
            content: r.try_get("", "content")?,
            timestamp: r.try_get("", "timestamp")?,
        });
    }
    lines.reverse();
    Ok(lines)
}
