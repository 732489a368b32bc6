//! `/api/v1/stats/{health|stuck|processing|dlq|agents}`: the monitoring views, per workspace.

use axum::{
    Json,
    extract::{Path, State},
    response::IntoResponse,
};
use chrono::{Duration, Utc};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Caller, Errors, Failure};
use crate::{
    http::AppState,
    store::{stats, users::Role},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(view))
}

/// One monitoring view: `health` (conversations by state, messages of the last 24 hours by direction,
/// contacts),
/// `stuck` (conversations waiting on an event older than the stuck threshold), `processing`
/// (processing-time percentiles per hour, last 24 hours), `dlq` (open rows by error), `agents`
/// (agent performance by type).
#[utoipa::path(get, path = "/api/v1/stats/{view}", tag = "stats", operation_id = "stats_view",
    params(("view" = String, Path, pattern = "^(health|stuck|processing|dlq|agents)$")),
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
        other => {
            return Err(Failure::not_found(&format!(
                "view `{other}` (health, stuck, processing, dlq, agents)"
            )));
        }
    };
    Ok(Json(body))
}
