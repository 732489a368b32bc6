//! `/api/v1/accounts`: the workspace's WhatsApp numbers. Viewers list them (secrets are never
//! returned); admins create and change them (secrets are write-only). The intake sees a change
//! at once: the account directory is reloaded after each.

use std::sync::Arc;

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use entity::whatsapp_accounts::Model as Account;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Body, Caller, Errors, Failure, Id, Items};
use crate::{
    http::AppState,
    store::{
        accounts::{self, AccountFields},
        users::{Role, audit},
    },
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(update))
}

/// The workspace's WhatsApp numbers (secrets are never returned).
#[utoipa::path(get, path = "/api/v1/accounts", tag = "accounts", operation_id = "accounts_list",
    responses((status = 200, body = Items<Account>), Errors))]
async fn list(State(state): State<AppState>, caller: Caller) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Viewer)?;
    let items = accounts::list(&state.db, caller.0.workspace_id).await?;
    Ok(Json(Items { items }))
}

/// An account's fields; on a change, only those given change. Secrets are write-only.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AccountBody {
    /// Digits; required to create, cannot change.
    #[schema(pattern = "^[0-9]{1,64}$")]
    phone_number_id: Option<String>,
    /// Informational.
    #[schema(max_length = 64)]
    display_phone_number: Option<String>,
    /// Meta's app secret (signs the webhooks); required to create. Write-only.
    #[schema(min_length = 8, max_length = 512, write_only)]
    app_secret: Option<String>,
    /// The GET handshake's token; required to create. Write-only.
    #[schema(min_length = 8, max_length = 512, write_only)]
    verify_token: Option<String>,
    /// Kapso's webhook secret. Write-only.
    #[schema(min_length = 8, max_length = 512, write_only)]
    kapso_secret: Option<String>,
    /// The `[agents.<name>]` that answers this number; `null` clears it.
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<String>)]
    agent: Option<Option<String>>,
}

/// `"agent": null` clears it; an absent key leaves it.
fn some<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

fn check(body: &AccountBody, state: &AppState) -> Result<(), Failure> {
    for (key, value) in [
        ("app_secret", &body.app_secret),
        ("verify_token", &body.verify_token),
        ("kapso_secret", &body.kapso_secret),
    ] {
        if value
            .as_deref()
            .is_some_and(|v| v.len() < 8 || v.len() > 512)
        {
            return Err(Failure::bad_request(format!(
                "{key} must have 8 to 512 characters"
            )));
        }
    }
    if let Some(d) = body
        .display_phone_number
        .as_deref()
        .filter(|d| d.chars().count() > 64)
    {
        return Err(Failure::bad_request(format!(
            "display_phone_number `{d}` must have at most 64 characters"
        )));
    }
    if let Some(Some(agent)) = &body.agent
        && !state.config.agents.contains_key(agent)
    {
        return Err(Failure::bad_request(format!(
            "no agent `{agent}` is configured"
        )));
    }
    Ok(())
}

async fn reload(state: &AppState) -> Result<(), Failure> {
    let directory = accounts::load_directory(&state.db).await?;
    crate::actors::write(&state.processing.accounts, Arc::new(directory));
    Ok(())
}

/// Adds a number (admin): `phone_number_id` (digits), `app_secret` and `verify_token` are
/// required. The intake accepts its webhooks at once.
#[utoipa::path(post, path = "/api/v1/accounts", tag = "accounts", operation_id = "accounts_create", request_body = AccountBody,
    responses((status = 201, body = Account), Errors))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<AccountBody>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Admin)?;
    check(&body, &state)?;
    let pnid = body.phone_number_id.clone().unwrap_or_default();
    if pnid.is_empty() || pnid.len() > 64 || !pnid.chars().all(|c| c.is_ascii_digit()) {
        return Err(Failure::bad_request(
            "phone_number_id must be 1 to 64 digits",
        ));
    }
    if body.app_secret.is_none() || body.verify_token.is_none() {
        return Err(Failure::bad_request(
            "app_secret and verify_token are required",
        ));
    }
    let ws = caller.0.workspace_id;
    let fields = AccountFields {
        phone_number_id: body.phone_number_id,
        display_phone_number: body.display_phone_number,
        app_secret: body.app_secret,
        verify_token: body.verify_token,
        kapso_secret: body.kapso_secret,
        agent: body.agent,
        waba_id: None,
    };
    let account = accounts::create_one(&state.db, ws, fields)
        .await?
        .ok_or_else(|| {
            Failure::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("phone_number_id {pnid} is taken"),
            )
        })?;
    reload(&state).await?;
    audit(
        &state.db,
        ws,
        &caller.0.actor,
        "account.create",
        &format!("account:{}", account.id),
        None,
        Some(&pnid),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(account)))
}

/// Changes a number's display number, secrets or agent (admin); `phone_number_id` cannot change.
#[utoipa::path(patch, path = "/api/v1/accounts/{id}", tag = "accounts", operation_id = "accounts_update", params(("id" = i64, Path)),
    request_body = AccountBody, responses((status = 200, body = Account), Errors))]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
    Body(body): Body<AccountBody>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Admin)?;
    check(&body, &state)?;
    if body.phone_number_id.is_some() {
        return Err(Failure::bad_request(
            "phone_number_id cannot change: create another account",
        ));
    }
    let ws = caller.0.workspace_id;
    let changed: Vec<&str> = [
        ("display_phone_number", body.display_phone_number.is_some()),
        ("app_secret", body.app_secret.is_some()),
        ("verify_token", body.verify_token.is_some()),
        ("kapso_secret", body.kapso_secret.is_some()),
        ("agent", body.agent.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    let fields = AccountFields {
        phone_number_id: None,
        display_phone_number: body.display_phone_number,
        app_secret: body.app_secret,
        verify_token: body.verify_token,
        kapso_secret: body.kapso_secret,
        agent: body.agent,
        waba_id: None,
    };
    let account = accounts::update_one(&state.db, ws, id, fields)
        .await?
        .ok_or_else(|| Failure::not_found("account"))?;
    reload(&state).await?;
    audit(
        &state.db,
        ws,
        &caller.0.actor,
        "account.update",
        &format!("account:{id}"),
        None,
        Some(&changed.join(",")),
    )
    .await?;
    Ok(Json(account))
}
