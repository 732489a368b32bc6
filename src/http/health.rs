//! `GET /health` (liveness, with the backlog view), `GET /ready` (503 with reasons when
//! wahook cannot do its job) and `GET /metrics` (Prometheus text).

use std::time::Duration;

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use chrono::Utc;
use serde_json::json;

use super::AppState;
use crate::{actors::messages::RouterMsg, metrics as m, store};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
}

/// Always 200 while the process serves; the body tells what an operator needs to know.
async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let started = std::time::Instant::now();
    let db = store::ping(&state.db).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let backlog = store::health::backlog(&state.db, Utc::now()).await;
    let stuck = stuck_conversations(&state).await;
    let processing = &state.processing;
    let (notes, unattributed) = processing.notes.get();
    let (read_at_intake, read_again) = processing.reads.get();
    Json(json!({
        "status": if db.is_ok() && backlog.is_ok() { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "database": {
            "backend": store::backend_name(&state.db),
            "ok": db.is_ok(),
            "latency_ms": latency_ms,
            "error": db.err().map(|e| e.to_string()),
        },
        "intake": { "queue_depth": state.inbox.queue_depth() },
        "processing": {
            "actors_up": processing.router().is_some() && processing.dead_letter().is_some(),
            "events_in_flight": processing.in_flight(),
            "stuck_conversations": stuck,
            "stuck_after_seconds": state.config.health.stuck_after_seconds,
            "payload_notes": notes,
            "unattributed": unattributed,
            "payloads_read_at_intake": read_at_intake,
            "payloads_read_again": read_again,
        },
        "inbox": backlog.as_ref().ok().map(|b| json!({
            "pending_events": b.pending_events,
            "oldest_pending_age_seconds": b.oldest_pending_age_seconds,
        })),
        "dlq": backlog.as_ref().ok().map(|b| &b.dlq),
        "errors_last_hour": backlog.as_ref().ok().map(|b| b.errors_last_hour),
        "accounts": state.directory().len(),
        "cluster": match &state.cluster {
            Some(c) => json!(c.health()),
            None => json!({ "mode": "single" }),
        },
    }))
}

async fn stuck_conversations(state: &AppState) -> Option<usize> {
    let router = state.processing.router()?;
    let older_than = Duration::from_secs(state.config.health.stuck_after_seconds);
    ractor::call!(router, RouterMsg::Stuck, older_than).ok()
}

/// 200 when the store answers, the actor tree is up and the backlog is young; else 503 with
/// every reason.
async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let mut reasons: Vec<String> = Vec::new();
    // The backlog read doubles as the store check: it touches the inbox itself.
    match store::health::backlog(&state.db, Utc::now()).await {
        Ok(b) => {
            let bound = state.config.health.max_pending_age_seconds as f64;
            if b.oldest_pending_age_seconds > bound {
                reasons.push(format!(
                    "the oldest pending event is {:.0} s old (bound {bound:.0} s)",
                    b.oldest_pending_age_seconds
                ));
            }
        }
        Err(e) => reasons.push(format!("the store does not answer: {e}")),
    }
    if let Some(why) = state.inbox.failing() {
        reasons.push(format!("the inbox cannot commit: {why}"));
    }
    if let Some(why) = state.cluster.as_ref().and_then(|c| c.unready()) {
        reasons.push(why);
    }
    if state.processing.router().is_none() || state.processing.dead_letter().is_none() {
        reasons.push("the actor tree is down".into());
    }
    metrics::gauge!(m::READY).set(if reasons.is_empty() { 1.0 } else { 0.0 });
    if reasons.is_empty() {
        (StatusCode::OK, Json(json!({ "ready": true })))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "reasons": reasons })),
        )
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
