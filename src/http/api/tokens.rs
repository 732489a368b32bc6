//! `/api/v1/tokens`: admins create a token for a user of their workspace (shown once) and
//! revoke tokens.

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::IntoResponse,
    routing::{delete, post},
};
use serde::Deserialize;
use serde_json::json;

use super::{Body, Caller, Failure};
use crate::{
    http::AppState,
    store::{
        tokens,
        users::{self, Role},
    },
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/tokens", post(create))
        .route("/api/v1/tokens/{id}", delete(revoke))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    user_id: i64,
    name: String,
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<NewToken>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Admin)?;
    let ws = caller.0.workspace_id;
    let user = users::get(&state.db, ws, body.user_id).await?;
    if !user.is_active {
        return Err(Failure::bad_request("the user is inactive"));
    }
    let name = body.name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(Failure::bad_request("name must have 1 to 100 characters"));
    }
    let (row, plain) = tokens::create(&state.db, ws, user.id, name, &caller.0.actor).await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"id": row.id, "user_id": row.user_id, "name": row.name, "token": plain,
                    "created_at": row.created_at, "note": "shown once: store it now"}),
        ),
    ))
}

async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Admin)?;
    if !tokens::revoke(&state.db, caller.0.workspace_id, id, &caller.0.actor).await? {
        return Err(Failure::not_found("token"));
    }
    state.auth.invalidate();
    Ok(StatusCode::NO_CONTENT)
}
