//! `GET /health` (liveness with the store's state) and `GET /metrics` (Prometheus text).

use axum::{Json, Router, extract::State, http::header, response::IntoResponse, routing::get};
use serde_json::json;

use super::AppState;
use crate::store;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
}

/// Always 200 while the process serves; the body says whether the store answers.
async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let started = std::time::Instant::now();
    let db = store::ping(&state.db).await;
    Json(json!({
        "status": if db.is_ok() { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "database": {
            "backend": store::backend_name(&state.db),
            "ok": db.is_ok(),
            "latency_ms": started.elapsed().as_secs_f64() * 1000.0,
            "error": db.err().map(|e| e.to_string()),
        },
        "intake": { "queue_depth": state.inbox.queue_depth() },
        "accounts": state.directory().len(),
    }))
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
