//! `/api/v1/stats/{health|stuck|processing|dlq|agents}`: the monitoring views, per workspace.

use axum::{
    Json,
    extract::{Path, State},
    response::IntoResponse,
};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Caller, Errors, Failure};
use crate::{
    http::AppState,
    store::{stats, users::Role},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(view))
        .routes(routes!(live))
}

/// This node's own figures now (process-wide, from its metrics): two readings a few seconds
/// apart give rates and the acknowledgement percentiles of the interval.
#[derive(Serialize, ToSchema, Default)]
struct Live {
    at: DateTime<Utc>,
    /// Webhook requests received, every outcome.
    webhooks_received_total: f64,
    /// Cumulative buckets of the webhook acknowledgement time (POST /webhooks/…), seconds.
    ack_buckets: Vec<Bucket>,
    inbox_pending_events: f64,
    inbox_oldest_pending_age_seconds: f64,
    /// DLQ rows pending or retrying.
    dlq_open: f64,
    live_conversation_actors: f64,
    agent_replies_sent_total: f64,
    agent_replies_failed_total: f64,
}

#[derive(Serialize, ToSchema)]
struct Bucket {
    /// Upper bound in seconds; `+Inf` for the last.
    le: String,
    count: f64,
}

/// This node's live figures (viewers): what the console's overview draws.
#[utoipa::path(get, path = "/api/v1/stats/live", tag = "stats", operation_id = "stats_live",
    responses((status = 200, body = Live), Errors))]
async fn live(State(state): State<AppState>, caller: Caller) -> Result<Json<Live>, Failure> {
    caller.require(Role::Viewer)?;
    let mut live = Live {
        at: Utc::now(),
        ..Default::default()
    };
    let mut buckets: Vec<(f64, String, f64)> = Vec::new();
    for line in state.metrics.render().lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let label = |key: &str| {
            labels
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.trim_end_matches('}').trim_matches('"'))
        };
        match name {
            "wahook_webhooks_received_total" => live.webhooks_received_total += value,
            "http_server_request_duration_seconds_bucket"
                if label("http_request_method") == Some("POST")
                    && label("http_route").is_some_and(|r| r.starts_with("/webhooks/")) =>
            {
                let le = label("le").unwrap_or("+Inf").to_owned();
                let bound = le.parse::<f64>().unwrap_or(f64::INFINITY);
                match buckets.iter_mut().find(|b| b.1 == le) {
                    Some(b) => b.2 += value,
                    None => buckets.push((bound, le, value)),
                }
            }
            "wahook_inbox_pending_events" => live.inbox_pending_events = value,
            "wahook_inbox_oldest_pending_age_seconds" => {
                live.inbox_oldest_pending_age_seconds = value
            }
            "wahook_dlq_rows" if matches!(label("status"), Some("pending" | "retrying")) => {
                live.dlq_open += value
            }
            "wahook_conversation_actors" => live.live_conversation_actors = value,
            "wahook_agent_replies_total" => match label("outcome") {
                Some("sent") => live.agent_replies_sent_total += value,
                Some("failed") => live.agent_replies_failed_total += value,
                _ => {}
            },
            _ => {}
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    live.ack_buckets = buckets
        .into_iter()
        .map(|(_, le, count)| Bucket { le, count })
        .collect();
    Ok(Json(live))
}

/// One monitoring view: `health` (conversations by state, messages of the last 24 hours by direction,
/// contacts),
/// `stuck` (conversations waiting on an event older than the stuck threshold), `processing`
/// (processing-time percentiles per hour, last 24 hours), `dlq` (open rows by error), `agents`
/// (agent performance by type), `costs` (our messages Meta bills, by day, category and type, last
/// 90 days).
#[utoipa::path(get, path = "/api/v1/stats/{view}", tag = "stats", operation_id = "stats_view",
    params(("view" = String, Path, pattern = "^(health|stuck|processing|dlq|agents|costs)$")),
    responses((status = 200, body = Object, description = "the view's figures"), Errors))]
async fn view(
    State(state): State<AppState>,
    caller: Caller,
    Path(view): Path<String>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Viewer)?;
    let (db, ws, now) = (&state.db, caller.0.workspace_id, Utc::now());
    let body = match view.as_str() {
        "health" => stats::health(db, ws, now).await?,
        "stuck" => {
            let after = Duration::seconds(state.config.health.stuck_after_seconds as i64);
            stats::stuck(db, ws, now - after).await?
        }
        "processing" => stats::processing(db, ws, now).await?,
        "dlq" => stats::dlq(db, ws).await?,
        "agents" => stats::agents(db, ws).await?,
        "costs" => stats::costs(db, ws, now).await?,
        other => {
            return Err(Failure::not_found(&format!(
                "view `{other}` (health, stuck, processing, dlq, agents, costs)"
            )));
        }
    };
    Ok(Json(body))
}
