//! `/api/v1/users`: the workspace's people. Viewers read; admins create, change and
//! deactivate (DELETE deactivates: the user's tokens stop working at once).

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::IntoResponse,
    routing::get,
};
use serde::Deserialize;

use super::{Body, Caller, Failure, cursor, limit, page};
use crate::{
    http::AppState,
    store::users::{self, NewUser, Role, UserPatch},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/users", get(list).post(create))
        .route(
            "/api/v1/users/{id}",
            get(one).patch(update).delete(deactivate),
        )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    search: Option<String>,
    after: Option<String>,
    limit: Option<u64>,
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Viewer)?;
    let limit = limit(q.limit)?;
    let rows = users::list(
        &state.db,
        caller.0.workspace_id,
        q.search.as_deref(),
        cursor(q.after.as_deref())?,
        limit,
    )
    .await?;
    Ok(page(rows, limit, |r| r.id))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUserBody {
    name: String,
    email: String,
    #[serde(default = "viewer")]
    role: Role,
    #[serde(default = "yes")]
    is_active: bool,
}

fn viewer() -> Role {
    Role::Viewer
}

fn yes() -> bool {
    true
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<NewUserBody>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Admin)?;
    let user = users::create(
        &state.db,
        NewUser {
            workspace_id: caller.0.workspace_id,
            name: &body.name,
            email: &body.email,
            role: body.role,
            is_active: body.is_active,
        },
        &caller.0.actor,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(user)))
}

async fn one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Viewer)?;
    Ok(Json(
        users::get(&state.db, caller.0.workspace_id, id).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    name: Option<String>,
    email: Option<String>,
    role: Option<Role>,
    is_active: Option<bool>,
}

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Body(body): Body<PatchBody>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Admin)?;
    let patch = UserPatch {
        name: body.name,
        email: body.email,
        role: body.role,
        is_active: body.is_active,
    };
    let user = users::update(&state.db, caller.0.workspace_id, id, patch, &caller.0.actor).await?;
    state.auth.invalidate();
    Ok(Json(user))
}

async fn deactivate(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Admin)?;
    let patch = UserPatch {
        is_active: Some(false),
        ..Default::default()
    };
    let user = users::update(&state.db, caller.0.workspace_id, id, patch, &caller.0.actor).await?;
    state.auth.invalidate();
    Ok(Json(user))
}
