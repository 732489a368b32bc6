//! `/api/v1/users`: the workspace's people. Viewers read; admins create, change and
//! deactivate (DELETE deactivates: the user's tokens stop working at once).

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use entity::users::Model as User;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Body, Caller, Errors, Failure, Id, Page, Params, cursor, limit, page};
use crate::{
    http::AppState,
    store::users::{self, NewUser, Role, UserPatch},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(one, update, deactivate))
        .routes(routes!(me))
}

/// Who the token speaks for (what the console shows, and which buttons it offers).
#[derive(serde::Serialize, ToSchema)]
struct Me {
    user_id: i64,
    workspace_id: i64,
    role: Role,
    /// `name <email>`, as the audit log names the actor.
    actor: String,
}

/// The token's user and role.
#[utoipa::path(get, path = "/api/v1/me", tag = "users", operation_id = "users_me",
    responses((status = 200, body = Me), Errors))]
async fn me(caller: Caller) -> Json<Me> {
    Json(Me {
        user_id: caller.0.user_id,
        workspace_id: caller.0.workspace_id,
        role: caller.0.role,
        actor: caller.0.actor,
    })
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Part of a name or an email (case-insensitive).
    search: Option<String>,
    /// The `next` cursor of the previous page.
    after: Option<String>,
    /// 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u64>,
}

/// The workspace's users, by id, optionally searched by name or email.
#[utoipa::path(get, path = "/api/v1/users", tag = "users", operation_id = "users_list", params(ListQuery),
    responses((status = 200, body = Page<User>), Errors))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Params(q): Params<ListQuery>,
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewUserBody {
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    name: String,
    /// Unique in the workspace, case-insensitively.
    #[schema(format = Email, max_length = 254)]
    email: String,
    /// Default `viewer`, the least privilege.
    #[serde(default = "viewer")]
    #[schema(default = "viewer")]
    role: Role,
    #[serde(default = "yes")]
    #[schema(default = true)]
    is_active: bool,
}

fn viewer() -> Role {
    Role::Viewer
}

fn yes() -> bool {
    true
}

/// Adds a user (admin).
#[utoipa::path(post, path = "/api/v1/users", tag = "users", operation_id = "users_create", request_body = NewUserBody,
    responses((status = 201, body = User), Errors))]
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

/// One user.
#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users", operation_id = "users_one", params(("id" = i64, Path)),
    responses((status = 200, body = User), Errors))]
async fn one(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Viewer)?;
    Ok(Json(
        users::get(&state.db, caller.0.workspace_id, id).await?,
    ))
}

#[derive(Deserialize, ToSchema)]
#[schema(as = UserPatch)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    name: Option<String>,
    email: Option<String>,
    role: Option<Role>,
    is_active: Option<bool>,
}

/// Changes a user's name, email, role or activity (admin).
#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "users", operation_id = "users_update", params(("id" = i64, Path)),
    request_body = PatchBody, responses((status = 200, body = User), Errors))]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
    Body(body): Body<PatchBody>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Admin)?;
    let patch = UserPatch {
        name: body.name,
        email: body.email,
        role: body.role,
        is_active: body.is_active,
    };
    not_locking_yourself_out(&caller, id, &patch)?;
    let user = users::update(&state.db, caller.0.workspace_id, id, patch, &caller.0.actor).await?;
    state.auth.invalidate();
    Ok(Json(user))
}

/// An admin may not deactivate themself or take away their own admin role: another admin
/// does that, so a workspace is never locked out of its own management by one click.
fn not_locking_yourself_out(caller: &Caller, id: i64, patch: &UserPatch) -> Result<(), Failure> {
    let demoted = patch.role.is_some_and(|r| r != Role::Admin);
    if id == caller.0.user_id && (patch.is_active == Some(false) || demoted) {
        return Err(Failure::new(
            StatusCode::CONFLICT,
            "conflict",
            "you cannot deactivate yourself or give up your own admin role; another admin can",
        ));
    }
    Ok(())
}

/// Deactivates a user (admin): their tokens stop working at once.
#[utoipa::path(delete, path = "/api/v1/users/{id}", tag = "users", operation_id = "users_deactivate", params(("id" = i64, Path)),
    responses((status = 200, body = User), Errors))]
async fn deactivate(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Admin)?;
    let patch = UserPatch {
        is_active: Some(false),
        ..Default::default()
    };
    not_locking_yourself_out(&caller, id, &patch)?;
    let user = users::update(&state.db, caller.0.workspace_id, id, patch, &caller.0.actor).await?;
    state.auth.invalidate();
    Ok(Json(user))
}
