//! `/api/v1/tokens`: admins list a user's tokens (never their secrets), create one for a user
//! of their workspace (shown once) and revoke tokens.

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Body, Caller, Errors, Failure, Id, Items, Params};
use crate::{
    http::AppState,
    store::{
        tokens,
        users::{self, Role},
    },
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(revoke))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    user_id: i64,
}

/// A token as listed: never its secret.
#[derive(Serialize, ToSchema)]
struct TokenView {
    id: i64,
    user_id: i64,
    name: String,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

/// A user's tokens of the workspace (admin): unrevoked first, newest first; never the secret.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", operation_id = "tokens_list", params(ListQuery),
    responses((status = 200, body = Items<TokenView>), Errors))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Params(q): Params<ListQuery>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Admin)?;
    let ws = caller.0.workspace_id;
    // Another workspace's user is not found.
    users::get(&state.db, ws, q.user_id).await?;
    let items = tokens::of_user(&state.db, ws, q.user_id)
        .await?
        .into_iter()
        .map(|t| TokenView {
            id: t.id,
            user_id: t.user_id,
            name: t.name,
            created_at: t.created_at,
            last_used_at: t.last_used_at,
            revoked_at: t.revoked_at,
        })
        .collect();
    Ok(Json(Items { items }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewToken {
    user_id: i64,
    #[schema(min_length = 1, max_length = 100, pattern = "\\S")]
    name: String,
}

/// A new token, in full: shown this once.
#[derive(Serialize, ToSchema)]
struct TokenCreated {
    id: i64,
    user_id: i64,
    name: String,
    token: String,
    created_at: DateTime<Utc>,
    note: String,
}

/// Creates a token for an active user of the workspace (admin); the response is the only time
/// it is shown.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", operation_id = "tokens_create", request_body = NewToken,
    responses((status = 201, body = TokenCreated), Errors))]
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
        Json(TokenCreated {
            id: row.id,
            user_id: row.user_id,
            name: row.name,
            token: plain,
            created_at: row.created_at,
            note: "shown once: store it now".into(),
        }),
    ))
}

/// Revokes a token of the workspace (admin): it stops working at once.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", operation_id = "tokens_revoke", params(("id" = i64, Path)),
    responses((status = 204, description = "revoked"), Errors))]
async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Admin)?;
    if !tokens::revoke(&state.db, caller.0.workspace_id, id, &caller.0.actor).await? {
        return Err(Failure::not_found("token"));
    }
    state.auth.invalidate();
    Ok(StatusCode::NO_CONTENT)
}
