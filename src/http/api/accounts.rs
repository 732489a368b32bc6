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
    /// The `[agents.<name>]` that answers this number; `null` clears it. Only agents whose
    /// `workspaces` include this workspace (or list none).
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<String>)]
    agent: Option<Option<String>>,
    /// A Graph API access token that can read this `phone_number_id`: the proof, on create,
    /// that the number is yours (it is not kept). Required to create. Write-only.
    #[schema(min_length = 1, max_length = 4096, write_only)]
    access_token: Option<String>,
    /// The WhatsApp Business Account of the number (routes account-level webhooks).
    #[schema(pattern = "^[0-9]{1,64}$")]
    waba_id: Option<String>,
}

/// `"agent": null` clears it; an absent key leaves it.
fn some<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

async fn check(body: &AccountBody, state: &AppState, workspace_id: i64) -> Result<(), Failure> {
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
    if let Some(w) = body
        .waba_id
        .as_deref()
        .filter(|w| w.is_empty() || w.len() > 64 || !w.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(Failure::bad_request(format!(
            "waba_id `{w}` must be 1 to 64 digits"
        )));
    }
    if let Some(Some(agent)) = &body.agent {
        let Some(config) = state.config.agents.get(agent) else {
            return Err(Failure::bad_request(format!(
                "no agent `{agent}` is configured"
            )));
        };
        if !config.workspaces.is_empty() {
            let name = accounts::workspace_name(&state.db, workspace_id).await?;
            if !name.as_deref().is_some_and(|n| config.allows(n)) {
                return Err(Failure::new(
                    StatusCode::FORBIDDEN,
                    "agent_not_allowed",
                    format!("the agent `{agent}` is not available to this workspace"),
                ));
            }
        }
    }
    Ok(())
}

/// Every refusal of a number on create reads the same, so a refusal tells nobody which
/// numbers another workspace has.
fn not_yours(pnid: &str) -> Failure {
    Failure::new(
        StatusCode::FORBIDDEN,
        "ownership_not_proven",
        format!(
            "phone_number_id {pnid} cannot be added: the access_token must read it through the Graph API (GET /{{version}}/{pnid}), and it must not belong to a workspace already"
        ),
    )
}

async fn reload(state: &AppState) -> Result<(), Failure> {
    let directory = accounts::load_directory(&state.db).await?;
    crate::actors::write(&state.processing.accounts, Arc::new(directory));
    Ok(())
}

/// Adds a number (admin): `phone_number_id` (digits), `app_secret`, `verify_token` and an
/// `access_token` that can read the number through the Graph API are required (403 otherwise,
/// the same answer for a number another workspace has). The intake accepts its webhooks at once.
#[utoipa::path(post, path = "/api/v1/accounts", tag = "accounts", operation_id = "accounts_create", request_body = AccountBody,
    responses((status = 201, body = Account), Errors))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<AccountBody>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Admin)?;
    let ws = caller.0.workspace_id;
    check(&body, &state, ws).await?;
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
    let Some(token) = body.access_token.as_deref().filter(|t| !t.is_empty()) else {
        return Err(Failure::bad_request(
            "access_token is required: a Graph API token that can read the number proves it is yours",
        ));
    };
    let cap = state.config.tenants.max_accounts_per_workspace;
    if state.directory().count_in(ws) >= cap {
        return Err(Failure::new(
            StatusCode::CONFLICT,
            "account_limit",
            format!("this workspace has its {cap} accounts (tenants.max_accounts_per_workspace)"),
        ));
    }
    if let Err(why) = state
        .processing
        .agents
        .graph
        .can_read_number(&pnid, token)
        .await
    {
        tracing::info!(workspace_id = ws, reason = %why, "an account's ownership was not proven");
        return Err(not_yours(&pnid));
    }
    let fields = AccountFields {
        phone_number_id: body.phone_number_id,
        display_phone_number: body.display_phone_number,
        app_secret: body.app_secret,
        verify_token: body.verify_token,
        kapso_secret: body.kapso_secret,
        agent: body.agent,
        waba_id: body.waba_id,
    };
    let account = accounts::create_one(&state.db, ws, fields)
        .await?
        .ok_or_else(|| not_yours(&pnid))?;
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
    check(&body, &state, caller.0.workspace_id).await?;
    if body.phone_number_id.is_some() || body.access_token.is_some() {
        return Err(Failure::bad_request(
            "phone_number_id (and its ownership proof, access_token) cannot change: create another account",
        ));
    }
    let ws = caller.0.workspace_id;
    let changed: Vec<&str> = [
        ("display_phone_number", body.display_phone_number.is_some()),
        ("app_secret", body.app_secret.is_some()),
        ("verify_token", body.verify_token.is_some()),
        ("kapso_secret", body.kapso_secret.is_some()),
        ("agent", body.agent.is_some()),
        ("waba_id", body.waba_id.is_some()),
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
        waba_id: body.waba_id,
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
