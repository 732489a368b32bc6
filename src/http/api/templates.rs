//! `/api/v1/templates`: the workspace's message templates as the Graph API and the template
//! webhooks last described them, with the placeholders a send must fill; an admin can sync
//! the catalog from the Graph API.

use axum::{Json, extract::State, response::IntoResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Caller, Errors, Failure, Items};
use crate::{
    agent::templates::{self, Placeholders, Synced},
    http::AppState,
    store::{
        templates as store,
        users::{Role, audit},
    },
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(sync))
}

/// A template of one of the workspace's WhatsApp Business Accounts.
#[derive(Serialize, ToSchema)]
struct TemplateView {
    id: i64,
    waba_id: String,
    name: String,
    language: String,
    /// `MARKETING`, `UTILITY`, `AUTHENTICATION`.
    category: String,
    /// `APPROVED` may be sent; `PAUSED`, `DISABLED`, `REJECTED`, `PENDING`, … may not.
    status: String,
    /// `GREEN`, `YELLOW`, `RED`, `UNKNOWN`.
    quality: Option<String>,
    /// `POSITIONAL` (parameters as a list) or `NAMED` (an object).
    parameter_format: String,
    placeholders: Placeholders,
    /// The body's text, with its `{{…}}` placeholders.
    body: Option<String>,
    /// The Graph API's components.
    #[schema(value_type = Vec<Object>)]
    components: serde_json::Value,
    /// Why the last change happened, when Meta said.
    reason: Option<String>,
    updated_at: DateTime<Utc>,
}

impl From<store::Template> for TemplateView {
    fn from(t: store::Template) -> Self {
        let placeholders = templates::placeholders(&t);
        let components: serde_json::Value =
            serde_json::from_str(&t.components).unwrap_or_else(|_| serde_json::json!([]));
        let body = components.as_array().and_then(|cs| {
            cs.iter()
                .find(|c| {
                    c["type"]
                        .as_str()
                        .is_some_and(|k| k.eq_ignore_ascii_case("BODY"))
                })
                .and_then(|c| c["text"].as_str().map(str::to_owned))
        });
        Self {
            id: t.id,
            waba_id: t.waba_id,
            name: t.name,
            language: t.language,
            category: t.category,
            status: t.status,
            quality: t.quality,
            parameter_format: t.parameter_format,
            placeholders,
            body,
            components,
            reason: t.reason,
            updated_at: t.updated_at,
        }
    }
}

/// The workspace's templates by name and language, with their placeholders (viewer).
#[utoipa::path(get, path = "/api/v1/templates", tag = "templates", operation_id = "templates_list",
    responses((status = 200, body = Items<TemplateView>), Errors))]
async fn list(State(state): State<AppState>, caller: Caller) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Viewer)?;
    let items = store::list(&state.db, caller.0.workspace_id)
        .await?
        .into_iter()
        .map(TemplateView::from)
        .collect();
    Ok(Json(Items { items }))
}

/// Reads every page of the catalog of each WhatsApp Business Account of the workspace (its
/// accounts' `waba_id` and Graph token) and stores it (admin). Templates no longer listed
/// become `DELETED`.
#[utoipa::path(post, path = "/api/v1/templates/sync", tag = "templates", operation_id = "templates_sync",
    responses((status = 200, body = Synced), Errors))]
async fn sync(State(state): State<AppState>, caller: Caller) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Admin)?;
    let ws = caller.0.workspace_id;
    let agents = &state.processing.agents;
    let wabas = templates::wabas(
        &state.directory(),
        |p| agents.token(p).map(str::to_owned),
        Some(ws),
    );
    let synced = templates::sync(&state.db, &agents.graph, &wabas).await;
    audit(
        &state.db,
        ws,
        &caller.0.actor,
        "templates.sync",
        "templates",
        None,
        Some(&format!(
            "{} templates from {} accounts, {} errors",
            synced.templates,
            synced.accounts,
            synced.errors.len()
        )),
    )
    .await?;
    Ok(Json(synced))
}
