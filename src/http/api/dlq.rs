//! `/api/v1/dlq`: parked events. Viewers read; operators retry now, resolve or discard
//! (each written to the audit log).

use axum::{Json, extract::State, response::IntoResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Caller, Errors, Failure, Id, Page, Params, cursor, limit, one_of, page};
use crate::{
    http::AppState,
    store::{
        dlq::{self, DlqEntry, DlqStatus},
        live::Kind,
        users::{Role, audit},
    },
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(bulk_retry))
        .routes(routes!(one))
        .routes(routes!(retry))
        .routes(routes!(resolve))
        .routes(routes!(discard))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// pending, retrying, resolved, discarded or dead (parked for the last time: nothing
    /// retries it; replay its event).
    #[param(pattern = "^(pending|retrying|resolved|discarded|dead)$")]
    status: Option<String>,
    /// `newest` (the default) or `oldest` first.
    #[param(pattern = "^(newest|oldest)$")]
    order: Option<String>,
    /// The `next` cursor of the previous page.
    after: Option<String>,
    /// 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u64>,
}

/// The workspace's DLQ rows with their events' source and type, newest first (or oldest),
/// optionally by status.
#[utoipa::path(get, path = "/api/v1/dlq", tag = "dlq", operation_id = "dlq_list", params(ListQuery),
    responses((status = 200, body = Page<DlqEntry>), Errors))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Params(q): Params<ListQuery>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Viewer)?;
    let statuses = DlqStatus::ALL.map(DlqStatus::as_str);
    one_of("status", q.status.as_deref(), &statuses)?;
    let status = q.status.as_deref().and_then(DlqStatus::parse);
    one_of("order", q.order.as_deref(), &["newest", "oldest"])?;
    let limit = limit(q.limit)?;
    let rows = dlq::list_in(
        &state.db,
        caller.0.workspace_id,
        status,
        cursor(q.after.as_deref())?,
        q.order.as_deref() != Some("oldest"),
        limit,
    )
    .await?;
    Ok(page(rows, limit, |r| r.id))
}

/// One DLQ row.
#[utoipa::path(get, path = "/api/v1/dlq/{id}", tag = "dlq", operation_id = "dlq_one", params(("id" = i64, Path)),
    responses((status = 200, body = DlqEntry), Errors))]
async fn one(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Viewer)?;
    dlq::get(&state.db, caller.0.workspace_id, id)
        .await?
        .map(Json)
        .ok_or_else(|| Failure::not_found("DLQ row"))
}

/// Retries a row now (operator): the dead-letter actor re-drives its event through the same
/// actors; the row ends `resolved` when it is applied, or is parked again with one more attempt.
#[utoipa::path(post, path = "/api/v1/dlq/{id}/retry", tag = "dlq", operation_id = "dlq_retry", params(("id" = i64, Path)),
    responses((status = 200, body = DlqEntry), Errors))]
async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<DlqEntry>, Failure> {
    act(&state, &caller, id, "retry").await
}

/// Marks a row resolved without processing its event again (operator).
#[utoipa::path(post, path = "/api/v1/dlq/{id}/resolve", tag = "dlq", operation_id = "dlq_resolve", params(("id" = i64, Path)),
    responses((status = 200, body = DlqEntry), Errors))]
async fn resolve(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<DlqEntry>, Failure> {
    act(&state, &caller, id, "resolve").await
}

/// Discards a row: its event is never processed (operator).
#[utoipa::path(post, path = "/api/v1/dlq/{id}/discard", tag = "dlq", operation_id = "dlq_discard", params(("id" = i64, Path)),
    responses((status = 200, body = DlqEntry), Errors))]
async fn discard(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<DlqEntry>, Failure> {
    act(&state, &caller, id, "discard").await
}

async fn act(
    state: &AppState,
    caller: &Caller,
    id: i64,
    action: &'static str,
) -> Result<Json<DlqEntry>, Failure> {
    caller.require(Role::Operator)?;
    let ws = caller.0.workspace_id;
    let before = dlq::get(&state.db, ws, id)
        .await?
        .ok_or_else(|| Failure::not_found("DLQ row"))?;
    let done = match action {
        // Due now: the dead-letter actor re-drives it through the same actors.
        "retry" => dlq::replay(&state.db, id).await?,
        "resolve" => dlq::close(&state.db, id, DlqStatus::Resolved, &caller.0.actor).await?,
        _ => dlq::close(&state.db, id, DlqStatus::Discarded, &caller.0.actor).await?,
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
    let after = dlq::get(&state.db, ws, id)
        .await?
        .ok_or_else(|| Failure::not_found("DLQ row"))?;
    state
        .processing
        .store
        .live()
        .publish(ws, after.event_id, Kind::Dlq);
    Ok(Json(after))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    /// Retry only rows whose error contains this text.
    error_contains: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct Retried {
    retried: u64,
}

/// Retries every open (`pending`) row of the workspace, or those whose error contains a text
/// (operator; at most 10,000 a call).
#[utoipa::path(post, path = "/api/v1/dlq/retry", tag = "dlq", operation_id = "dlq_bulk_retry", request_body = BulkBody,
    responses((status = 200, body = Retried), Errors))]
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
        let rows = dlq::list(&state.db, ws, Some(DlqStatus::Pending), after, 500).await?;
        let Some(last) = rows.last() else { break };
        after = Some(last.id);
        for row in &rows {
            let matches = body
                .error_contains
                .as_deref()
                .is_none_or(|needle| row.error.contains(needle));
            if matches && dlq::replay(&state.db, row.id).await? {
                retried += 1;
                state
                    .processing
                    .store
                    .live()
                    .publish(ws, row.event_id, Kind::Dlq);
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
    Ok(Json(Retried { retried }))
}
