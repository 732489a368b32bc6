//! `/api/v1/contacts` and `/api/v1/leads`: the workspace's contacts (operators edit the name,
//! lead status and score) and the three lead filters over the lead timestamps.

use axum::{Json, extract::State, response::IntoResponse};
use chrono::{DateTime, Utc};
use entity::contacts::Model as Contact;
use serde::Deserialize;
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    Body, Caller, Errors, Failure, Id, Items, Page, Params, cursor, limit, page, sane_time,
};
use crate::{
    http::AppState,
    store::{
        contacts::{self, IdentityChangeView},
        leads::{self, ContactPatch},
        users::{Role, audit},
    },
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(update))
        .routes(routes!(identity))
        .routes(routes!(lead_filter))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Part of a name or phone number.
    search: Option<String>,
    /// The `next` cursor of the previous page.
    after: Option<String>,
    /// 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u64>,
}

/// The workspace's contacts by id, optionally searched.
#[utoipa::path(get, path = "/api/v1/contacts", tag = "contacts", operation_id = "contacts_list", params(ListQuery),
    responses((status = 200, body = Page<Contact>), Errors))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Params(q): Params<ListQuery>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Viewer)?;
    let limit = limit(q.limit)?;
    let rows = leads::list_contacts(
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
#[schema(as = ContactPatch)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    /// 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    name: Option<String>,
    /// Lower-case letters and `_`, e.g. prospect, qualified, customer, lost.
    #[schema(pattern = "^[a-z_]{1,50}$")]
    lead_status: Option<String>,
    /// 0 to 100.
    #[schema(minimum = 0, maximum = 100)]
    lead_score: Option<i32>,
}

/// A contact's identity history: number and user-id changes, a phone linked to a user id
/// first seen alone, merges of two contacts found to be one person, identity-key changes.
#[utoipa::path(get, path = "/api/v1/contacts/{id}/identity", tag = "contacts", operation_id = "contacts_identity", params(("id" = i64, Path)),
    responses((status = 200, body = Items<IdentityChangeView>), Errors))]
async fn identity(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Viewer)?;
    let items = contacts::identity_changes(&state.db, caller.0.workspace_id, id)
        .await?
        .ok_or_else(|| Failure::not_found("contact"))?;
    Ok(Json(Items { items }))
}

/// Edits a contact's name, lead status and score (operator).
#[utoipa::path(patch, path = "/api/v1/contacts/{id}", tag = "contacts", operation_id = "contacts_update", params(("id" = i64, Path)),
    request_body = PatchBody, responses((status = 200, body = Contact), Errors))]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
    Body(body): Body<PatchBody>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Operator)?;
    if let Some(score) = body.lead_score.filter(|s| !(0..=100).contains(s)) {
        return Err(Failure::bad_request(format!(
            "lead_score must be 0 to 100, not {score}"
        )));
    }
    if let Some(status) = body.lead_status.as_deref().filter(|s| {
        s.is_empty() || s.len() > 50 || !s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
    }) {
        return Err(Failure::bad_request(format!(
            "lead_status `{status}` must be 1 to 50 lower-case letters or _ (e.g. prospect, qualified, customer, lost)"
        )));
    }
    if let Some(name) = body
        .name
        .as_deref()
        .filter(|n| n.trim().is_empty() || n.chars().count() > 200)
    {
        return Err(Failure::bad_request(format!(
            "name `{name}` must have 1 to 200 characters"
        )));
    }
    let patch = ContactPatch {
        name: body.name.map(|n| n.trim().to_owned()),
        lead_status: body.lead_status,
        lead_score: body.lead_score,
    };
    let ws = caller.0.workspace_id;
    let (before, after) = leads::update_contact(&state.db, ws, id, patch)
        .await?
        .ok_or_else(|| Failure::not_found("contact"))?;
    let summary = |c: &entity::contacts::Model| {
        json!({"name": c.name, "lead_status": c.lead_status, "lead_score": c.lead_score})
            .to_string()
    };
    audit(
        &state.db,
        ws,
        &caller.0.actor,
        "contact.update",
        &format!("contact:{id}"),
        Some(&summary(&before)),
        Some(&summary(&after)),
    )
    .await?;
    Ok(Json(after))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct LeadQuery {
    /// not_contacted (with `days`), needs_follow_up, or recently_active (with `since`).
    #[param(pattern = "^(not_contacted|needs_follow_up|recently_active)$")]
    filter: String,
    /// not_contacted: no outbound message in this many days (0 to 3650).
    #[param(minimum = 0, maximum = 3650)]
    days: Option<i64>,
    /// recently_active: an inbound message at or after this time (RFC 3339).
    since: Option<DateTime<Utc>>,
    /// 1 to 1000 (default 200).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u64>,
}

/// Leads by one of three filters over the lead timestamps.
#[utoipa::path(get, path = "/api/v1/leads", tag = "contacts", operation_id = "contacts_lead_filter", params(LeadQuery),
    responses((status = 200, body = Items<Contact>), Errors))]
async fn lead_filter(
    State(state): State<AppState>,
    caller: Caller,
    Params(q): Params<LeadQuery>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Viewer)?;
    sane_time("since", q.since)?;
    let ws = caller.0.workspace_id;
    let max = match q.limit.unwrap_or(200) {
        n @ 1..=1000 => n as usize,
        n => {
            return Err(Failure::bad_request(format!(
                "limit must be 1 to 1000, not {n}"
            )));
        }
    };
    let mut rows = match q.filter.as_str() {
        "not_contacted" => {
            let days = q
                .days
                .ok_or_else(|| Failure::bad_request("not_contacted needs days=N"))?;
            if !(0..=3650).contains(&days) {
                return Err(Failure::bad_request(format!(
                    "days must be 0 to 3650, not {days}"
                )));
            }
            leads::not_contacted_in(&state.db, ws, days, Utc::now()).await?
        }
        "needs_follow_up" => leads::needs_follow_up(&state.db, ws).await?,
        "recently_active" => {
            let since = q.since.ok_or_else(|| {
                Failure::bad_request("recently_active needs since=<RFC 3339 time>")
            })?;
            leads::recently_active(&state.db, ws, since).await?
        }
        other => {
            return Err(Failure::bad_request(format!(
                "filter `{other}` is not one of not_contacted, needs_follow_up, recently_active"
            )));
        }
    };
    rows.truncate(max);
    Ok(Json(Items { items: rows }))
}
