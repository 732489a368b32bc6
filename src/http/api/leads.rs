//! `POST /api/v1/leads/follow-up`: one template to every lead a filter finds, once per
//! campaign key; `dry_run` lists who would get it and who is skipped and why.

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Body, Caller, Errors, Failure};
use crate::{
    agent::{
        leads::{self, Campaign, Lead},
        templates::TemplateRequest,
    },
    http::AppState,
    store::{
        leads as lead_store,
        users::{Role, audit},
    },
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(follow_up))
}

/// Which leads: not written to in `days` days (`not_contacted`), or waiting for our answer
/// (`needs_follow_up`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct LeadFilter {
    /// `not_contacted` or `needs_follow_up`.
    #[schema(pattern = "^(not_contacted|needs_follow_up)$")]
    filter: String,
    /// For `not_contacted`: 0 to 3650.
    #[schema(minimum = 0, maximum = 3650)]
    days: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct FollowUpBody {
    /// The business number to send from.
    #[schema(pattern = "^[0-9]{1,64}$")]
    phone_number_id: String,
    leads: LeadFilter,
    /// The template; `{name}` and `{phone}` in parameter values become each lead's.
    template: TemplateRequest,
    /// The campaign: each lead gets it once per key, however often this is called.
    #[schema(min_length = 1, max_length = 100, pattern = "^[A-Za-z0-9_.-]+$")]
    key: String,
    /// Only list who would get it and who is skipped (default false).
    #[serde(default)]
    dry_run: bool,
    /// Skip leads whose 24-hour window is open (they are in a conversation now; default true).
    skip_open_window: Option<bool>,
    /// Sends per second, 1 to 80 (default 20), under the number's throughput.
    #[schema(minimum = 1, maximum = 80)]
    per_second: Option<u32>,
    /// At most this many leads, 1 to 10000 (default 1000).
    #[schema(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
struct FollowUpPlan {
    dry_run: bool,
    /// Who gets it (or would, in a dry run).
    send: Vec<Lead>,
    /// Who does not, each with its reason.
    skipped: Vec<Lead>,
}

/// Sends one template to each lead the filter finds, once per `key` (operator). A dry run
/// only lists who would get it and who is skipped and why (opted out of marketing, window
/// open, sent before with this key, no conversation). The sends run in the background at
/// `per_second`, backing off on the Graph API's throughput errors; the answer is 202 with the
/// plan. A template that is missing, not approved or given the wrong parameters is refused for
/// everyone (404, 409, 400).
#[utoipa::path(post, path = "/api/v1/leads/follow-up", tag = "contacts", operation_id = "leads_follow_up", request_body = FollowUpBody,
    responses(
        (status = 200, body = FollowUpPlan, description = "dry run: the plan"),
        (status = 202, body = FollowUpPlan, description = "the plan; the sends run in the background"),
        Errors))]
async fn follow_up(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<FollowUpBody>,
) -> Result<Response, Failure> {
    caller.require(Role::Operator)?;
    let ws = caller.0.workspace_id;
    if body.key.is_empty()
        || body.key.len() > 100
        || !body
            .key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        return Err(Failure::bad_request(
            "key must be 1 to 100 letters, digits, _ . or -",
        ));
    }
    let per_second = body.per_second.unwrap_or(20);
    if !(1..=80).contains(&per_second) {
        return Err(Failure::bad_request(format!(
            "per_second must be 1 to 80, not {per_second}"
        )));
    }
    let limit = body.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(Failure::bad_request(format!(
            "limit must be 1 to 10000, not {limit}"
        )));
    }
    let directory = state.directory();
    let Some(account) = directory
        .get(&body.phone_number_id)
        .filter(|a| a.workspace_id == ws)
    else {
        return Err(Failure::not_found("account"));
    };
    let token = super::messages::graph_token(&state, &body.phone_number_id)?;
    let mut contacts = match body.leads.filter.as_str() {
        "not_contacted" => {
            let days = body
                .leads
                .days
                .ok_or_else(|| Failure::bad_request("not_contacted needs days"))?;
            if !(0..=3650).contains(&days) {
                return Err(Failure::bad_request(format!(
                    "days must be 0 to 3650, not {days}"
                )));
            }
            lead_store::not_contacted_in(&state.db, ws, days, Utc::now()).await?
        }
        "needs_follow_up" => lead_store::needs_follow_up(&state.db, ws).await?,
        other => {
            return Err(Failure::bad_request(format!(
                "leads.filter `{other}` is not one of not_contacted, needs_follow_up"
            )));
        }
    };
    contacts.truncate(limit);
    let plan = leads::plan(
        &state.db,
        ws,
        account.waba_id.as_deref(),
        contacts,
        &body.template,
        &body.key,
        body.skip_open_window.unwrap_or(true),
    )
    .await?;
    let plan = plan.map_err(super::messages::refusal)?;
    let answer = FollowUpPlan {
        dry_run: body.dry_run,
        send: plan.send.clone(),
        skipped: plan.skipped,
    };
    if body.dry_run {
        return Ok(Json(answer).into_response());
    }
    audit(
        &state.db,
        ws,
        &caller.0.actor,
        "leads.follow_up",
        &format!("campaign:{}", body.key),
        None,
        Some(&format!(
            "{} {}: {} to send, {} skipped",
            body.template.name,
            body.template.language,
            answer.send.len(),
            answer.skipped.len()
        )),
    )
    .await?;
    let campaign = Campaign {
        db: state.db.clone(),
        store: state.processing.store.clone(),
        graph: state.processing.agents.graph.clone(),
        token: token.to_owned(),
        phone_number_id: body.phone_number_id.clone(),
        waba_id: account.waba_id.clone(),
        workspace_id: ws,
        request: body.template,
        campaign: body.key,
        per_second,
        actor: caller.0.actor.clone(),
    };
    tokio::spawn(leads::run(campaign, plan.send));
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}
