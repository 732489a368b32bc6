//! `/api/v1/contacts` and `/api/v1/leads`: the workspace's contacts (operators edit the name,
//! lead status and score) and the three lead filters over the lead timestamps.

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    response::IntoResponse,
    routing::get,
};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::{Body, Caller, Failure, cursor, limit, page};
use crate::{
    http::AppState,
    store::{
        leads::{self, ContactPatch},
        users::{Role, audit},
    },
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/contacts", get(list))
        .route("/api/v1/contacts/{id}", axum::routing::patch(update))
        .route("/api/v1/leads", get(lead_filter))
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    name: Option<String>,
    lead_status: Option<String>,
    lead_score: Option<i32>,
}

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeadQuery {
    filter: String,
    days: Option<i64>,
    since: Option<DateTime<Utc>>,
    limit: Option<u64>,
}

async fn lead_filter(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<LeadQuery>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Viewer)?;
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
    Ok(Json(json!({"items": rows})))
}
