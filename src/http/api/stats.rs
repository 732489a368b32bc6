//! `/api/v1/stats/{health|stuck|processing|dlq|agents}`: the monitoring views, per workspace.

use axum::{
    Json, Router,
    extract::{Path, State},
    response::IntoResponse,
    routing::get,
};
use chrono::{Duration, Utc};

use super::{Caller, Failure};
use crate::{
    http::AppState,
    store::{stats, users::Role},
};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/stats/{view}", get(view))
}

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
        other => {
            return Err(Failure::not_found(&format!(
                "view `{other}` (health, stuck, processing, dlq, agents)"
            )));
        }
    };
    Ok(Json(body))
}
