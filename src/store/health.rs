//! The backlog view shared by `/health`, `/ready` and the gauges.

use chrono::{DateTime, Duration, Utc};
use sea_orm::{ConnectionTrait, DbErr, Statement};

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Backlog {
    pub pending_events: i64,
    pub oldest_pending_age_seconds: f64,
    /// DLQ rows by resolution status.
    pub dlq: std::collections::BTreeMap<String, i64>,
    /// Events parked in the DLQ during the last hour.
    pub errors_last_hour: i64,
}

/// Three small reads: pending events (index on status, received_at), DLQ by status, recent
/// parkings.
pub async fn backlog(db: &impl ConnectionTrait, now: DateTime<Utc>) -> Result<Backlog, DbErr> {
    let backend = db.get_database_backend();
    let mut out = Backlog::default();
    let row = db
        .query_one_raw(Statement::from_string(
            backend,
            "SELECT COUNT(*) AS n, MIN(received_at) AS oldest FROM webhook_events WHERE status = 'pending'",
        ))
        .await?;
    if let Some(row) = row {
        out.pending_events = row.try_get("", "n")?;
        let oldest: Option<DateTime<Utc>> = row.try_get("", "oldest").ok().flatten();
        out.oldest_pending_age_seconds = oldest
            .map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
    }
    for status in super::dlq::DlqStatus::ALL {
        out.dlq.insert(status.as_str().to_owned(), 0);
    }
    for row in db
        .query_all_raw(Statement::from_string(
            backend,
            "SELECT resolution_status AS s, COUNT(*) AS n FROM webhook_dlq GROUP BY resolution_status",
        ))
        .await?
    {
        out.dlq.insert(row.try_get("", "s")?, row.try_get("", "n")?);
    }
    let hour_ago = now - Duration::hours(1);
    let mut sql = super::sql::Sql::new(
        backend,
        "SELECT COUNT(*) AS n FROM webhook_dlq WHERE updated_at >= ",
    );
    sql.param(hour_ago);
    let row = db.query_one_raw(sql.build()).await?;
    if let Some(row) = row {
        out.errors_last_hour = row.try_get("", "n")?;
    }
    Ok(out)
}
