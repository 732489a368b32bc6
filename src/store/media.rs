//! `media`: one row per message that carries a file. The row is made in the store transaction
//! that stores the message (so a crash never loses the job, and a redelivered message, which
//! stores nothing, makes none); the media worker then claims it, fetches it and records the
//! outcome.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use entity::media;
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
    sea_query::{Expr, ExprTrait},
};

use super::{
    change::ChangeSet,
    sql::{Sql, run},
};

pub use media::Model as Media;

pub const PENDING: &str = "pending";
pub const STORED: &str = "stored";
pub const FAILED: &str = "failed";
pub const DELETED: &str = "deleted";

/// How long WhatsApp keeps a webhook's media id.
pub const MEDIA_ID_LIFETIME_DAYS: i64 = 7;

/// Step 3b of a store transaction: a `pending` job for every message of the sets that carries
/// a file and was stored (a message already there keeps its one job: `ON CONFLICT DO
/// NOTHING` on the message). The account is the event's, whose token may fetch it, or for a
/// file we sent (no event) the number it was sent from.
pub async fn enqueue(
    tx: &DatabaseTransaction,
    sets: &[&ChangeSet],
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    for set in sets {
        for msg in &set.messages {
            let Some(file) = &msg.media else { continue };
            let expires =
                std::cmp::max(msg.timestamp + Duration::days(MEDIA_ID_LIFETIME_DAYS), now);
            let mut sql = Sql::new(
                tx.get_database_backend(),
                "INSERT INTO media (workspace_id, message_id, account_id, media_id, kind, status, \
                 mime_type, filename, voice, expected_sha256, transcript, attempts, \
                 next_attempt_at, expires_at, created_at, updated_at) \
                 SELECT m.workspace_id, m.id, COALESCE(e.account_id, (SELECT a.id FROM \
                 whatsapp_accounts a WHERE a.workspace_id = m.workspace_id AND \
                 a.phone_number_id = ",
            );
            sql.param(file.phone_number_id.clone())
                .push(")), ")
                .param(file.media_id.clone())
                .push(", ")
                .param(file.kind.clone())
                .push(", ")
                .param(PENDING)
                .push(", ")
                .param(file.mime_type.clone())
                .push(", ")
                .param(file.filename.clone())
                .push(", ")
                .param(file.voice)
                .push(", ")
                .param(file.sha256.clone())
                .push(", ")
                .param(file.transcript.clone())
                .push(", 0, ")
                .param(now)
                .push(", ")
                .param(expires)
                .push(", ")
                .param(now)
                .push(", ")
                .param(now)
                .push(
                    " FROM messages m LEFT JOIN webhook_events e ON e.id = m.event_id \
                     WHERE m.workspace_id = ",
                )
                .param(set.workspace_id)
                .push(" AND m.wamid = ")
                .param(msg.wamid.clone())
                .push(" ON CONFLICT (message_id) DO NOTHING");
            run(tx, sql).await?;
        }
    }
    Ok(())
}

/// Jobs due now that no live worker holds, oldest first.
pub async fn due(
    db: &impl ConnectionTrait,
    now: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<Media>, DbErr> {
    media::Entity::find()
        .filter(media::Column::Status.eq(PENDING))
        .filter(media::Column::NextAttemptAt.lte(now))
        .filter(
            media::Column::LeaseUntil
                .is_null()
                .or(media::Column::LeaseUntil.lt(now)),
        )
        .order_by_asc(media::Column::NextAttemptAt)
        .limit(limit)
        .all(db)
        .await
}

/// Takes the job until `until` (one attempt more); false when another worker took it first.
pub async fn claim(
    db: &impl ConnectionTrait,
    id: i64,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let r = media::Entity::update_many()
        .col_expr(media::Column::LeaseUntil, Expr::value(until))
        .col_expr(
            media::Column::Attempts,
            Expr::col(media::Column::Attempts).add(1),
        )
        .col_expr(media::Column::UpdatedAt, Expr::value(now))
        .filter(media::Column::Id.eq(id))
        .filter(media::Column::Status.eq(PENDING))
        .filter(
            media::Column::LeaseUntil
                .is_null()
                .or(media::Column::LeaseUntil.lt(now)),
        )
        .exec(db)
        .await?;
    Ok(r.rows_affected == 1)
}

/// What a fetched file became.
pub struct Stored<'a> {
    pub mime_type: &'a str,
    pub size: i64,
    pub sha256: &'a str,
    pub storage_key: &'a str,
}

pub async fn mark_stored(
    db: &impl ConnectionTrait,
    id: i64,
    s: Stored<'_>,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    media::Entity::update_many()
        .col_expr(media::Column::Status, Expr::value(STORED))
        .col_expr(media::Column::MimeType, Expr::value(s.mime_type))
        .col_expr(media::Column::Size, Expr::value(s.size))
        .col_expr(media::Column::Sha256, Expr::value(s.sha256))
        .col_expr(media::Column::StorageKey, Expr::value(s.storage_key))
        .col_expr(media::Column::Error, Expr::value(None::<String>))
        .col_expr(
            media::Column::LeaseUntil,
            Expr::value(None::<DateTime<Utc>>),
        )
        .col_expr(media::Column::StoredAt, Expr::value(now))
        .col_expr(media::Column::UpdatedAt, Expr::value(now))
        .filter(media::Column::Id.eq(id))
        .exec(db)
        .await
        .map(|_| ())
}

/// Tried again at `at`; the error is kept for the operator.
pub async fn mark_retry(
    db: &impl ConnectionTrait,
    id: i64,
    error: &str,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    media::Entity::update_many()
        .col_expr(media::Column::Error, Expr::value(error))
        .col_expr(media::Column::NextAttemptAt, Expr::value(at))
        .col_expr(
            media::Column::LeaseUntil,
            Expr::value(None::<DateTime<Utc>>),
        )
        .col_expr(media::Column::UpdatedAt, Expr::value(now))
        .filter(media::Column::Id.eq(id))
        .exec(db)
        .await
        .map(|_| ())
}

pub async fn mark_failed(
    db: &impl ConnectionTrait,
    id: i64,
    error: &str,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    media::Entity::update_many()
        .col_expr(media::Column::Status, Expr::value(FAILED))
        .col_expr(media::Column::Error, Expr::value(error))
        .col_expr(
            media::Column::LeaseUntil,
            Expr::value(None::<DateTime<Utc>>),
        )
        .col_expr(media::Column::UpdatedAt, Expr::value(now))
        .filter(media::Column::Id.eq(id))
        .exec(db)
        .await
        .map(|_| ())
}

/// A single node at start: nobody else can hold a job, so what a dead process held is free.
pub async fn release_leases(db: &impl ConnectionTrait) -> Result<u64, DbErr> {
    Ok(media::Entity::update_many()
        .col_expr(
            media::Column::LeaseUntil,
            Expr::value(None::<DateTime<Utc>>),
        )
        .filter(media::Column::Status.eq(PENDING))
        .filter(media::Column::LeaseUntil.is_not_null())
        .exec(db)
        .await?
        .rows_affected)
}

/// A workspace's file by id (another workspace's is `None`).
pub async fn find(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    id: i64,
) -> Result<Option<Media>, DbErr> {
    media::Entity::find_by_id(id)
        .filter(media::Column::WorkspaceId.eq(workspace_id))
        .one(db)
        .await
}

/// The files of messages, by message id.
pub async fn of_messages(
    db: &impl ConnectionTrait,
    message_ids: &[i64],
) -> Result<HashMap<i64, Media>, DbErr> {
    let mut out = HashMap::new();
    for chunk in message_ids.chunks(500) {
        for m in media::Entity::find()
            .filter(media::Column::MessageId.is_in(chunk.iter().copied()))
            .all(db)
            .await?
        {
            out.insert(m.message_id, m);
        }
    }
    Ok(out)
}

/// The file of a workspace's message by wamid.
pub async fn of_wamid(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    wamid: &str,
) -> Result<Option<Media>, DbErr> {
    let Some(message) = entity::messages::Entity::find()
        .filter(entity::messages::Column::WorkspaceId.eq(workspace_id))
        .filter(entity::messages::Column::Wamid.eq(wamid))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    media::Entity::find()
        .filter(media::Column::MessageId.eq(message.id))
        .one(db)
        .await
}

pub async fn set_transcript(db: &impl ConnectionTrait, id: i64, text: &str) -> Result<(), DbErr> {
    media::Entity::update_many()
        .col_expr(media::Column::Transcript, Expr::value(text))
        .col_expr(media::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(media::Column::Id.eq(id))
        .exec(db)
        .await
        .map(|_| ())
}

/// Files stored before `cutoff` (retention), a bounded number at a time.
pub async fn stored_before(
    db: &impl ConnectionTrait,
    cutoff: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<Media>, DbErr> {
    media::Entity::find()
        .filter(media::Column::Status.eq(STORED))
        .filter(media::Column::StoredAt.lt(cutoff))
        .order_by_asc(media::Column::StoredAt)
        .limit(limit)
        .all(db)
        .await
}

/// Whether a file stored at or after `cutoff` still uses `key` (the store is
/// content-addressed: the same bytes sent twice share one object).
pub async fn key_kept(
    db: &impl ConnectionTrait,
    key: &str,
    cutoff: DateTime<Utc>,
) -> Result<bool, DbErr> {
    Ok(media::Entity::find()
        .filter(media::Column::StorageKey.eq(key))
        .filter(media::Column::Status.eq(STORED))
        .filter(media::Column::StoredAt.gte(cutoff))
        .one(db)
        .await?
        .is_some())
}

pub async fn mark_deleted(
    db: &impl ConnectionTrait,
    id: i64,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    media::Entity::update(media::ActiveModel {
        id: Set(id),
        status: Set(DELETED.into()),
        error: Set(Some(reason.into())),
        updated_at: Set(now),
        ..Default::default()
    })
    .exec(db)
    .await
    .map(|_| ())
}

/// The `phone_number_id` of an account.
pub async fn phone_number_id(
    db: &impl ConnectionTrait,
    account_id: i64,
) -> Result<Option<String>, DbErr> {
    Ok(entity::whatsapp_accounts::Entity::find_by_id(account_id)
        .one(db)
        .await?
        .map(|a| a.phone_number_id))
}
