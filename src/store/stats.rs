//! The operator's monitoring views, per workspace: conversation health, stuck work, processing
//! time per hour, the DLQ by error, and the agent by type.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Timelike, Utc};
use sea_orm::{ConnectionTrait, DbErr, QueryResult};
use serde_json::{Value, json};

use super::sql::Sql;

async fn rows(db: &impl ConnectionTrait, sql: Sql) -> Result<Vec<QueryResult>, DbErr> {
    db.query_all_raw(sql.build()).await
}

fn sql(db: &impl ConnectionTrait, text: &str) -> Sql {
    Sql::new(db.get_database_backend(), text)
}

/// Conversations by state, messages of the last 24 h by direction, contacts.
pub async fn health(
    db: &impl ConnectionTrait,
    ws: i64,
    now: DateTime<Utc>,
) -> Result<Value, DbErr> {
    let mut by_state = BTreeMap::new();
    let mut q = sql(
        db,
        "SELECT status, COUNT(*) AS n FROM conversations WHERE workspace_id = ",
    );
    q.param(ws).push(" GROUP BY status");
    for r in rows(db, q).await? {
        by_state.insert(
            r.try_get::<String>("", "status")?,
            r.try_get::<i64>("", "n")?,
        );
    }
    let mut directions = BTreeMap::new();
    let mut q = sql(
        db,
        "SELECT direction, COUNT(*) AS n FROM messages WHERE message_type <> 'pending' AND workspace_id = ",
    );
    q.param(ws)
        .push(" AND timestamp >= ")
        .param(now - Duration::hours(24))
        .push(" GROUP BY direction");
    for r in rows(db, q).await? {
        directions.insert(
            r.try_get::<String>("", "direction")?,
            r.try_get::<i64>("", "n")?,
        );
    }
    let mut q = sql(
        db,
        "SELECT COUNT(*) AS n FROM contacts WHERE workspace_id = ",
    );
    q.param(ws);
    let contacts: i64 = rows(db, q)
        .await?
        .first()
        .map(|r| r.try_get("", "n"))
        .transpose()?
        .unwrap_or(0);
    Ok(
        json!({"conversations_by_state": by_state, "messages_last_24h": directions, "contacts": contacts}),
    )
}

/// Events acknowledged longer than `older_than` ago and not processed yet, oldest first.
pub async fn stuck(
    db: &impl ConnectionTrait,
    ws: i64,
    older_than: DateTime<Utc>,
) -> Result<Value, DbErr> {
    let mut q = sql(
        db,
        "SELECT id, source, status, received_at, last_error FROM webhook_events WHERE status IN ('pending', 'failed') AND workspace_id = ",
    );
    q.param(ws)
        .push(" AND received_at < ")
        .param(older_than)
        .push(" ORDER BY received_at LIMIT 100");
    let mut items = Vec::new();
    for r in rows(db, q).await? {
        items.push(json!({
            "event_id": r.try_get::<i64>("", "id")?,
            "source": r.try_get::<String>("", "source")?,
            "status": r.try_get::<String>("", "status")?,
            "received_at": r.try_get::<DateTime<Utc>>("", "received_at")?,
            "last_error": r.try_get::<Option<String>>("", "last_error")?,
        }));
    }
    Ok(json!({"older_than": older_than, "events": items}))
}

/// Ack-to-processed time per hour of the last 24 h: count, p50, p95, p99 (ms).
pub async fn processing(
    db: &impl ConnectionTrait,
    ws: i64,
    now: DateTime<Utc>,
) -> Result<Value, DbErr> {
    let mut q = sql(
        db,
        "SELECT received_at, processed_at FROM webhook_events WHERE status = 'processed' AND workspace_id = ",
    );
    q.param(ws)
        .push(" AND received_at >= ")
        .param(now - Duration::hours(24))
        .push(" LIMIT 200000");
    let mut hours: BTreeMap<DateTime<Utc>, Vec<f64>> = BTreeMap::new();
    for r in rows(db, q).await? {
        let received: DateTime<Utc> = r.try_get("", "received_at")?;
        let Some(processed) = r.try_get::<Option<DateTime<Utc>>>("", "processed_at")? else {
            continue;
        };
        let hour = received
            .with_minute(0)
            .and_then(|t| t.with_second(0))
            .and_then(|t| t.with_nanosecond(0))
            .unwrap_or(received);
        hours
            .entry(hour)
            .or_default()
            .push((processed - received).num_microseconds().unwrap_or(0) as f64 / 1000.0);
    }
    let items: Vec<Value> = hours
        .into_iter()
        .map(|(hour, mut ms)| {
            ms.sort_by(f64::total_cmp);
            let q = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
            json!({"hour": hour, "events": ms.len(), "p50_ms": q(0.5), "p95_ms": q(0.95), "p99_ms": q(0.99)})
        })
        .collect();
    Ok(json!({"hours": items}))
}

/// DLQ rows by status, and the open ones grouped by their error's first line.
pub async fn dlq(db: &impl ConnectionTrait, ws: i64) -> Result<Value, DbErr> {
    let mut q = sql(
        db,
        "SELECT d.resolution_status AS s, d.error AS error FROM webhook_dlq d JOIN webhook_events e ON e.id = d.event_id WHERE e.workspace_id = ",
    );
    q.param(ws);
    let mut by_status: BTreeMap<String, i64> = BTreeMap::new();
    let mut by_error: BTreeMap<String, i64> = BTreeMap::new();
    for r in rows(db, q).await? {
        let status: String = r.try_get("", "s")?;
        let error: String = r.try_get("", "error")?;
        if super::dlq::DlqStatus::parse(&status).is_some_and(|s| s.is_open()) {
            let key: String = error
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(120)
                .collect();
            *by_error.entry(key).or_default() += 1;
        }
        *by_status.entry(status).or_default() += 1;
    }
    Ok(json!({"by_status": by_status, "open_by_error": by_error}))
}

/// Per agent type: turns by outcome, and the sessions' tokens, latency and failures.
pub async fn agents(db: &impl ConnectionTrait, ws: i64) -> Result<Value, DbErr> {
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    let mut q = sql(
        db,
        "SELECT agent_type, state, COUNT(*) AS n FROM outbound_messages WHERE workspace_id = ",
    );
    q.param(ws).push(" GROUP BY agent_type, state");
    for r in rows(db, q).await? {
        let agent: String = r.try_get("", "agent_type")?;
        let entry = out.entry(agent).or_insert_with(|| json!({"turns": {}}));
        entry["turns"][r.try_get::<String>("", "state")?] = json!(r.try_get::<i64>("", "n")?);
    }
    let mut q = sql(
        db,
        "SELECT s.agent_type AS agent, CAST(SUM(s.turns) AS BIGINT) AS turns, \
         CAST(SUM(s.prompt_tokens) AS BIGINT) AS prompt, CAST(SUM(s.completion_tokens) AS BIGINT) AS completion, \
         CAST(SUM(s.latency_ms_total) AS BIGINT) AS latency, CAST(SUM(s.failures) AS BIGINT) AS failures, \
         CAST(SUM(s.skips) AS BIGINT) AS skips, CAST(SUM(s.breaker_trips) AS BIGINT) AS trips FROM agent_sessions s \
         JOIN conversations v ON v.id = s.conversation_id WHERE v.workspace_id = ",
    );
    q.param(ws).push(" GROUP BY s.agent_type");
    for r in rows(db, q).await? {
        let agent: String = r.try_get("", "agent")?;
        let num = |c: &str| -> i64 { r.try_get::<Option<i64>>("", c).ok().flatten().unwrap_or(0) };
        let replies = num("turns");
        let entry = out.entry(agent).or_insert_with(|| json!({"turns": {}}));
        entry["replies"] = json!(replies);
        entry["prompt_tokens"] = json!(num("prompt"));
        entry["completion_tokens"] = json!(num("completion"));
        entry["mean_provider_latency_ms"] = json!(if replies > 0 {
            num("latency") / replies
        } else {
            0
        });
        entry["failures"] = json!(num("failures"));
        entry["skips"] = json!(num("skips"));
        entry["breaker_trips"] = json!(num("trips"));
    }
    Ok(json!({"agents": out}))
}

/// What Meta bills (`statuses[].pricing` of our messages) over the last 90 days: messages per
/// day, category and type, and the totals per category and type.
pub async fn costs(db: &impl ConnectionTrait, ws: i64, now: DateTime<Utc>) -> Result<Value, DbErr> {
    let mut q = sql(
        db,
        "SELECT timestamp, pricing_category, pricing_type FROM messages \
         WHERE pricing_category IS NOT NULL AND workspace_id = ",
    );
    q.param(ws)
        .push(" AND timestamp >= ")
        .param(now - Duration::days(90));
    let mut days: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    let mut totals: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for r in rows(db, q).await? {
        let at: DateTime<Utc> = r.try_get("", "timestamp")?;
        let category: String = r.try_get("", "pricing_category")?;
        let kind: String = r
            .try_get::<Option<String>>("", "pricing_type")?
            .unwrap_or_else(|| "unknown".into());
        *days
            .entry((
                at.format("%Y-%m-%d").to_string(),
                category.clone(),
                kind.clone(),
            ))
            .or_default() += 1;
        *totals.entry(category).or_default().entry(kind).or_default() += 1;
    }
    let days: Vec<Value> = days
        .into_iter()
        .map(|((day, category, kind), n)| {
            json!({"day": day, "category": category, "type": kind, "messages": n})
        })
        .collect();
    Ok(json!({"since": now - Duration::days(90), "days": days, "totals": totals}))
}
