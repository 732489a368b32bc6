//! `/api/v1/dlq`: parked events. Viewers read; operators retry now, resolve or discard
//! (each written to the audit log).

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    response::IntoResponse,
    routing::{get, post},
};
use serde::Deserialize;

use super::{Caller, Failure, cursor, limit, one_of, page};
use crate::{
    http::AppState,
    store::{
        dlq,
        users::{Role, audit},
    },
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/dlq", get(list))
        .route("/api/v1/dlq/retry", post(bulk_retry))
        .route("/api/v1/dlq/{id}", get(one))
        .route("/api/v1/dlq/{id}/{action}", post(act))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    after: Option<String>,
    limit: Option<u64>,
}

const STATUSES: &[&str] = &["pending", "retrying", "resolved", "discarded"];

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Viewer)?;
    one_of("status", q.status.as_deref(), STATUSES)?;
    let limit = limit(q.limit)?;
    let rows = dlq::list(
        &state.db,
        caller.0.workspace_id,
        q.status.as_deref(),
        cursor(q.after.as_deref())?,
        limit,
    )
    .await?;
    Ok(page(rows, limit, |r| r.id))
}

async fn one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Viewer)?;
    dlq::get(&state.db, caller.0.workspace_id, id)
        .await?
        .map(Json)
        .ok_or_else(|| Failure::not_found("DLQ row"))
}

async fn act(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, action)): Path<(i64, String)>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Operator)?;
    let ws = caller.0.workspace_id;
    let before = dlq::get(&state.db, ws, id)
        .await?
        .ok_or_else(|| Failure::not_found("DLQ row"))?;
    let done = match action.as_str() {
        // Due now: the dead-letter actor re-drives it through the same actors.
        "retry" => dlq::replay(&state.db, id).await?,
        "resolve" => dlq::close(&state.db, id, "resolved", &caller.0.actor).await?,
        "discard" => dlq::close(&state.db, id, "discarded", &caller.0.actor).await?,
        other => {
            return Err(Failure::not_found(&format!(
                "action `{other}` (retry, resolve, discard)"
            )));
        }
    };
    if !done {
        return Err(Failure::new(
            axum::http::StatusCode::CONFLICT,
            "conflict",
            format!(
                "the row is {}; it cannot be {action}d",
                before.resolution_status
            ),
        ));
    }
    audit(
        &state.db,
        ws,
        &caller.0.actor,
        &format!("dlq.{action}"),
        &format!("dlq:{id}"),
        Some(&before.resolution_status),
        None,
    )
    .await?;
    let after = dlq::get(&state.db, ws, id).await?;
    Ok(Json(after))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    /// Retry only rows whose error contains this text.
    error_contains: Option<String>,
}

/// Retries every open (`pending`) row of the workspace, or those whose error matches.
async fn bulk_retry(
    State(state): State<AppState>,
    caller: Caller,
    super::Body(body): super::Body<BulkBody>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Operator)?;
    let ws = caller.0.workspace_id;
    let mut after = None;
    let mut retried = 0u64;
    loop {
        let rows = dlq::list(&state.db, ws, Some("pending"), after, 500).await?;
        let Some(last) = rows.last() else { break };
        after = Some(last.id);
        for row in &rows {
            let matches = body
                .error_contains
                .as_deref()
                .is_none_or(|needle| row.error.contains(needle));
            if matches && dlq::replay(&state.db, row.id).await? {
                retried += 1;
            }
        }
        if retried >= 10_000 {
            break;
        }
    }
    audit(
        &state.db,
        ws,
        &caller.0.actor,
        "dlq.retry_bulk",
        &format!("dlq:{retried}"),
        None,
        body.error_contains.as_deref(),
    )
    .await?;
    Ok(Json(serde_json::json!({"retried": retried})))
}
