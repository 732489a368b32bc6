//! The dead-letter queue (`webhook_dlq`): parking, the retry worker's reads, and the operator's
//! replay / resolve / discard.

use chrono::{DateTime, Utc};
use entity::{webhook_dlq, webhook_events};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
    sea_query::{Expr, ExprTrait, OnConflict},
};

use super::inbox::{CommittedEvent, EventStatus};

/// Where a DLQ row stands (`webhook_dlq.resolution_status`, stored as its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DlqStatus {
    /// Waiting for its next automatic retry (or an operator's).
    Pending,
    /// Being re-driven now.
    Retrying,
    /// Its event was processed after all (by a retry), or an operator says it is fixed.
    Resolved,
    /// An operator gave it up: its event is never processed.
    Discarded,
    /// Parked its last time: no automatic retry is left; an operator's retry revives it.
    Dead,
}

impl DlqStatus {
    pub const ALL: [DlqStatus; 5] = [
        DlqStatus::Pending,
        DlqStatus::Retrying,
        DlqStatus::Resolved,
        DlqStatus::Discarded,
        DlqStatus::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DlqStatus::Pending => "pending",
            DlqStatus::Retrying => "retrying",
            DlqStatus::Resolved => "resolved",
            DlqStatus::Discarded => "discarded",
            DlqStatus::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// Still waiting for something (a retry, or an operator).
    pub fn is_open(self) -> bool {
        matches!(self, DlqStatus::Pending | DlqStatus::Retrying)
    }
}

/// Parks an event: its DLQ row (created or updated; `parked` = times it has been parked) and
/// its inbox row (status, error, `processing_attempts` more attempts), together.
/// `next_retry_at = None` means no more automatic retries (the event is `dead`). Returns the
/// event's workspace (for the live stream).
pub async fn park(
    db: &sea_orm::DatabaseConnection,
    event_id: i64,
    error: &str,
    parked: i32,
    processing_attempts: u32,
    next_retry_at: Option<DateTime<Utc>>,
) -> Result<Option<i64>, DbErr> {
    let now = Utc::now();
    let tx = db.begin().await?;
    webhook_dlq::Entity::insert(webhook_dlq::ActiveModel {
        event_id: Set(event_id),
        error: Set(error.to_owned()),
        attempts: Set(parked),
        next_retry_at: Set(next_retry_at),
        // The last park: nothing retries it any more.
        resolution_status: Set(if next_retry_at.is_some() {
            DlqStatus::Pending
        } else {
            DlqStatus::Dead
        }
        .as_str()
        .into()),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    })
    .on_conflict(
        OnConflict::column(webhook_dlq::Column::EventId)
            .update_columns([
                webhook_dlq::Column::Error,
                webhook_dlq::Column::Attempts,
                webhook_dlq::Column::NextRetryAt,
                webhook_dlq::Column::ResolutionStatus,
                webhook_dlq::Column::UpdatedAt,
            ])
            .to_owned(),
    )
    .exec(&tx)
    .await?;
    let status = if next_retry_at.is_some() {
        EventStatus::Failed
    } else {
        EventStatus::Dead
    };
    webhook_events::Entity::update_many()
        .col_expr(webhook_events::Column::Status, status.as_str().into())
        .col_expr(webhook_events::Column::LastError, error.into())
        .col_expr(
            webhook_events::Column::Attempts,
            Expr::col(webhook_events::Column::Attempts).add(processing_attempts as i32),
        )
        .filter(webhook_events::Column::Id.eq(event_id))
        .exec(&tx)
        .await?;
    let workspace = webhook_events::Entity::find_by_id(event_id)
        .select_only()
        .column(webhook_events::Column::WorkspaceId)
        .into_tuple::<Option<i64>>()
        .one(&tx)
        .await?
        .flatten();
    tx.commit().await?;
    Ok(workspace)
}

/// Resolves the DLQ rows of re-driven events that just succeeded, inside the store's
/// transaction that marks them processed.
pub fn resolve_retried(event_ids: &[i64], now: DateTime<Utc>, chain: &mut super::sql::Chain) {
    for chunk in event_ids.chunks(super::sql::CHUNK) {
        let mut sql = super::sql::Sql::new(
            chain.backend(),
            "UPDATE webhook_dlq SET resolution_status = 'resolved', resolved_by = 'retry', resolved_at = ",
        );
        sql.param(now)
            .push(", updated_at = ")
            .param(now)
            .push(" WHERE resolution_status = ")
            .param(DlqStatus::Retrying.as_str())
            .push(" AND event_id IN ");
        sql.tuple(chunk.iter().copied());
        chain.push(sql);
    }
}

/// Current DLQ attempts of an event (0 if it was never parked).
pub async fn attempts_of(db: &impl ConnectionTrait, event_id: i64) -> Result<i32, DbErr> {
    Ok(webhook_dlq::Entity::find()
        .filter(webhook_dlq::Column::EventId.eq(event_id))
        .one(db)
        .await?
        .map_or(0, |r| r.attempts))
}

/// Claims the DLQ rows due for a retry (`pending`, `next_retry_at` passed) and returns their
/// events (with their workspace), oldest first, marked `retrying`.
pub async fn claim_due(
    db: &impl ConnectionTrait,
    now: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<(Option<i64>, CommittedEvent)>, DbErr> {
    let rows = webhook_dlq::Entity::find()
        .filter(webhook_dlq::Column::ResolutionStatus.eq(DlqStatus::Pending.as_str()))
        .filter(webhook_dlq::Column::NextRetryAt.lte(now))
        .order_by_asc(webhook_dlq::Column::NextRetryAt)
        .limit(limit)
        .all(db)
        .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let event_ids: Vec<i64> = rows.iter().map(|r| r.event_id).collect();
    webhook_dlq::Entity::update_many()
        .col_expr(
            webhook_dlq::Column::ResolutionStatus,
            DlqStatus::Retrying.as_str().into(),
        )
        .col_expr(webhook_dlq::Column::UpdatedAt, now.into())
        .filter(webhook_dlq::Column::Id.is_in(ids))
        .exec(db)
        .await?;
    let events = webhook_events::Entity::find()
        .filter(webhook_events::Column::Id.is_in(event_ids))
        .order_by_asc(webhook_events::Column::ReceivedAt)
        .order_by_asc(webhook_events::Column::Id)
        .all(db)
        .await?;
    Ok(events
        .into_iter()
        .map(|e| (e.workspace_id, CommittedEvent::from_row(e, true)))
        .collect())
}

/// Operator: retry this DLQ row now (also revives a `dead` event).
pub async fn replay(db: &impl ConnectionTrait, dlq_id: i64) -> Result<bool, DbErr> {
    let now = Utc::now();
    let res = webhook_dlq::Entity::update_many()
        .col_expr(
            webhook_dlq::Column::ResolutionStatus,
            DlqStatus::Pending.as_str().into(),
        )
        .col_expr(webhook_dlq::Column::NextRetryAt, Some(now).into())
        .col_expr(webhook_dlq::Column::UpdatedAt, now.into())
        .filter(webhook_dlq::Column::Id.eq(dlq_id))
        .filter(webhook_dlq::Column::ResolutionStatus.ne(DlqStatus::Resolved.as_str()))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// Operator: close a DLQ row by hand, `resolved` (fixed elsewhere) or `discarded`.
pub async fn close(
    db: &impl ConnectionTrait,
    dlq_id: i64,
    resolution: DlqStatus,
    by: &str,
) -> Result<bool, DbErr> {
    let now = Utc::now();
    let res = webhook_dlq::Entity::update_many()
        .col_expr(
            webhook_dlq::Column::ResolutionStatus,
            resolution.as_str().into(),
        )
        .col_expr(webhook_dlq::Column::ResolvedBy, Some(by.to_owned()).into())
        .col_expr(webhook_dlq::Column::ResolvedAt, Some(now).into())
        .col_expr(
            webhook_dlq::Column::NextRetryAt,
            None::<DateTime<Utc>>.into(),
        )
        .col_expr(webhook_dlq::Column::UpdatedAt, now.into())
        .filter(webhook_dlq::Column::Id.eq(dlq_id))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// At start-up: re-drives interrupted by a crash (`retrying`) become due again.
pub async fn reset_retrying(db: &impl ConnectionTrait) -> Result<u64, DbErr> {
    let now = Utc::now();
    let res = webhook_dlq::Entity::update_many()
        .col_expr(
            webhook_dlq::Column::ResolutionStatus,
            DlqStatus::Pending.as_str().into(),
        )
        .col_expr(webhook_dlq::Column::NextRetryAt, Some(now).into())
        .col_expr(webhook_dlq::Column::UpdatedAt, now.into())
        .filter(webhook_dlq::Column::ResolutionStatus.eq(DlqStatus::Retrying.as_str()))
        .exec(db)
        .await?;
    Ok(res.rows_affected)
}

/// A DLQ row with what an operator needs of its event.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct DlqEntry {
    pub id: i64,
    pub event_id: i64,
    pub error: String,
    pub attempts: i32,
    pub next_retry_at: Option<DateTime<Utc>>,
    pub resolution_status: String,
    pub resolved_by: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub source: String,
    pub event_type: Option<String>,
    pub received_at: DateTime<Utc>,
    pub correlation_id: String,
}

/// A workspace's DLQ rows (through their events), by id after the cursor, optionally by status.
pub async fn list(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    status: Option<DlqStatus>,
    after: Option<i64>,
    limit: u64,
) -> Result<Vec<DlqEntry>, DbErr> {
    list_in(db, workspace_id, status, after, false, limit).await
}

/// The same, newest first when `newest` (the cursor then pages below it).
pub async fn list_in(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    status: Option<DlqStatus>,
    after: Option<i64>,
    newest: bool,
    limit: u64,
) -> Result<Vec<DlqEntry>, DbErr> {
    let mut sql = super::sql::Sql::new(
        db.get_database_backend(),
        "SELECT d.id, d.event_id, d.error, d.attempts, d.next_retry_at, d.resolution_status, \
         d.resolved_by, d.resolved_at, d.created_at, d.updated_at, e.source, e.event_type, \
         e.received_at, e.correlation_id FROM webhook_dlq d JOIN webhook_events e ON e.id = d.event_id \
         WHERE e.workspace_id = ",
    );
    sql.param(workspace_id);
    if let Some(status) = status {
        sql.push(" AND d.resolution_status = ")
            .param(status.as_str());
    }
    match (after, newest) {
        (Some(after), true) => {
            sql.push(" AND d.id < ").param(after);
        }
        (Some(after), false) => {
            sql.push(" AND d.id > ").param(after);
        }
        (None, _) => {}
    }
    sql.push(if newest {
        " ORDER BY d.id DESC LIMIT "
    } else {
        " ORDER BY d.id LIMIT "
    })
    .param(limit as i64);
    let mut out = Vec::new();
    for r in db.query_all_raw(sql.build()).await? {
        out.push(DlqEntry {
            id: r.try_get("", "id")?,
            event_id: r.try_get("", "event_id")?,
            error: r.try_get("", "error")?,
            attempts: r.try_get("", "attempts")?,
            next_retry_at: r.try_get("", "next_retry_at")?,
            resolution_status: r.try_get("", "resolution_status")?,
            resolved_by: r.try_get("", "resolved_by")?,
            resolved_at: r.try_get("", "resolved_at")?,
            created_at: r.try_get("", "created_at")?,
            updated_at: r.try_get("", "updated_at")?,
            source: r.try_get("", "source")?,
            event_type: r.try_get("", "event_type")?,
            received_at: r.try_get("", "received_at")?,
            correlation_id: r.try_get("", "correlation_id")?,
        });
    }
    Ok(out)
}

/// One DLQ row of the workspace.
pub async fn get(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    id: i64,
) -> Result<Option<DlqEntry>, DbErr> {
    // Ids start at 1 (and `id - 1` must not overflow for any id a client sends).
    if id < 1 {
        return Ok(None);
    }
    let mut rows = list(db, workspace_id, None, Some(id - 1), 1).await?;
    Ok(rows.pop().filter(|r| r.id == id))
}

/// The DLQ row of an event, if it was ever parked.
pub async fn of_event(
    db: &impl ConnectionTrait,
    event_id: i64,
) -> Result<Option<webhook_dlq::Model>, DbErr> {
    webhook_dlq::Entity::find()
        .filter(webhook_dlq::Column::EventId.eq(event_id))
        .one(db)
        .await
}
