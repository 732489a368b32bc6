//! `/api/v1/conversations`: list by state and activity, one with its messages in order (with
//! their delivery status) and its 24-hour window; operators change the state — close, hand to
//! a person (`human`: the agent stays silent), give back (`open`) — through the store's
//! writer, which writes the audit transition like any other change to the conversation.

use axum::{Json, extract::State, response::IntoResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    Body, Caller, Errors, Failure, Id, Page, Params, cursor, limit, one_of, page, sane_time,
};
use crate::{
    http::AppState,
    ingest::event::{ContactKey, ConversationState, Intent},
    store::{
        agent::AgentPanel,
        change::{ChangeSet, Known},
        conversations::{self, ConversationView, Filter, Order},
        messages::{self, MessageView},
        outbound::{self, TurnView},
        users::{Role, audit},
    },
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(one))
        .routes(routes!(set_state))
        .routes(routes!(assign))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AssignBody {
    /// An active user of the workspace, or null: nobody.
    user_id: Option<i64>,
}

/// Assigns a conversation to a user of the workspace, or to nobody (operator); an audit row
/// says who did it.
#[utoipa::path(put, path = "/api/v1/conversations/{id}/assignee", tag = "conversations", operation_id = "conversations_assign",
    params(("id" = i64, Path)), request_body = AssignBody,
    responses((status = 200, body = ConversationView), Errors))]
async fn assign(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
    Body(body): Body<AssignBody>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Operator)?;
    let ws = caller.0.workspace_id;
    let before = conversations::get(&state.db, ws, id)
        .await?
        .ok_or_else(|| Failure::not_found("conversation"))?;
    if let Some(user) = body.user_id {
        let u = crate::store::users::get(&state.db, ws, user)
            .await
            .map_err(|_| {
                Failure::bad_request(format!("user {user} is not a user of this workspace"))
            })?;
        if !u.is_active {
            return Err(Failure::bad_request(format!("user {user} is inactive")));
        }
    }
    conversations::assign(&state.db, ws, id, body.user_id).await?;
    let after = conversations::get(&state.db, ws, id)
        .await?
        .ok_or_else(|| Failure::not_found("conversation"))?;
    audit(
        &state.db,
        ws,
        &caller.0.actor,
        "conversation.assign",
        &format!("conversation:{id}"),
        before
            .assignee_name
            .as_deref()
            .or(before.assignee_id.map(|_| "?")),
        Some(after.assignee_name.as_deref().unwrap_or("nobody")),
    )
    .await?;
    state
        .processing
        .store
        .live()
        .publish(ws, id, crate::store::live::Kind::Conversation);
    Ok(Json(after))
}

const STATES: &[&str] = &["open", "inactive", "closed", "human"];

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// open, inactive, closed or human.
    #[param(pattern = "^(open|inactive|closed|human)$")]
    state: Option<String>,
    /// Last message at or after (RFC 3339).
    active_since: Option<DateTime<Utc>>,
    /// Phone (any digits of it, `+49 151…` as people write it), name or business-scoped user
    /// id, in part, any case; or a message's wamid (whole): its conversation.
    #[param(max_length = 200)]
    search: Option<String>,
    /// Only conversations whose newest message is the customer's (unanswered).
    needs_reply: Option<bool>,
    /// Only those assigned to this user.
    assignee_id: Option<i64>,
    /// Only those assigned to nobody.
    unassigned: Option<bool>,
    /// `activity` (newest activity first, the default) or `id` (oldest first, for a full
    /// export).
    #[param(pattern = "^(activity|id)$")]
    order: Option<String>,
    /// The `next` cursor of the previous page.
    after: Option<String>,
    /// 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u64>,
}

/// The workspace's conversations, newest activity first (or by id), by state, activity,
/// search and whether they need a reply.
#[utoipa::path(get, path = "/api/v1/conversations", tag = "conversations", operation_id = "conversations_list", params(ListQuery),
    responses((status = 200, body = Page<ConversationView>), Errors))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Params(q): Params<ListQuery>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Viewer)?;
    sane_time("active_since", q.active_since)?;
    one_of("state", q.state.as_deref(), STATES)?;
    let limit = limit(q.limit)?;
    if q.search.as_ref().is_some_and(|s| s.chars().count() > 200) {
        return Err(Failure::bad_request(
            "search must have at most 200 characters",
        ));
    }
    let by_id = match q.order.as_deref() {
        None | Some("activity") => false,
        Some("id") => true,
        Some(other) => {
            return Err(Failure::bad_request(format!(
                "order `{other}` is not one of activity, id"
            )));
        }
    };
    let order = if by_id {
        Order::Id(cursor(q.after.as_deref())?)
    } else {
        Order::Activity(activity_cursor(q.after.as_deref())?)
    };
    let filter = Filter {
        state: q.state.clone(),
        active_since: q.active_since,
        search: q.search.clone(),
        needs_reply: q.needs_reply.unwrap_or(false),
        assignee_id: q.assignee_id,
        unassigned: q.unassigned.unwrap_or(false),
        order,
    };
    let rows = conversations::list(&state.db, caller.0.workspace_id, &filter, limit).await?;
    if by_id {
        return Ok(page(rows, limit, |r| r.id));
    }
    let next = (rows.len() as u64 == limit)
        .then(|| rows.last())
        .flatten()
        .map(|r| format!("{}_{}", r.activity().timestamp_micros(), r.id));
    Ok(Json(Page { items: rows, next }))
}

/// An activity cursor: `<microseconds>_<id>` of the last row of the previous page.
fn activity_cursor(after: Option<&str>) -> Result<Option<(DateTime<Utc>, i64)>, Failure> {
    let Some(a) = after else { return Ok(None) };
    let bad = || Failure::bad_request(format!("`{a}` is not a cursor"));
    let (micros, id) = a.split_once('_').ok_or_else(bad)?;
    let at = micros
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(bad)?;
    Ok(Some((at, id.parse::<i64>().map_err(|_| bad())?)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct OneQuery {
    /// How many messages, 1 to 5000 (default 500).
    #[param(minimum = 1, maximum = 5000)]
    messages: Option<u64>,
}

/// A conversation with its messages in order, their delivery status and the 24-hour window.
#[derive(Serialize, ToSchema)]
struct ConversationDetail {
    conversation: ConversationView,
    /// Whether a free-form message may be sent now (the customer wrote in the last 24 hours).
    service_window_open: bool,
    service_window_closes_at: Option<DateTime<Utc>>,
    messages: Vec<MessageView>,
    /// The agent's turns that sent nothing (`skipped`, `failed`, `unknown`) with why, oldest
    /// first (the newest 200).
    turns: Vec<TurnView>,
    /// Each agent's figures here: turns, skips, failures, tokens, mean latency, last error.
    agents: Vec<AgentPanel>,
    /// Its hand-offs to a person as announced to the number's `notify_url`, newest first (the
    /// last 20): `pending`, `delivered`, `failed` or `skipped`, with the receiver's last status.
    handoffs: Vec<HandoffView>,
}

/// One conversation with its messages in order.
#[utoipa::path(get, path = "/api/v1/conversations/{id}", tag = "conversations", operation_id = "conversations_one",
    params(("id" = i64, Path), OneQuery),
    responses((status = 200, body = ConversationDetail), Errors))]
async fn one(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
    Params(q): Params<OneQuery>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Viewer)?;
    let conversation = conversations::get(&state.db, caller.0.workspace_id, id)
        .await?
        .ok_or_else(|| Failure::not_found("conversation"))?;
    let max = match q.messages.unwrap_or(500) {
        n @ 1..=5000 => n,
        n => {
            return Err(Failure::bad_request(format!(
                "messages must be 1 to 5000, not {n}"
            )));
        }
    };
    let messages = messages::of_conversation(&state.db, id, max).await?;
    let window = conversations::service_window(&state.db, id, Utc::now()).await?;
    let turns = outbound::quiet_turns(&state.db, id, 200).await?;
    let agents = crate::store::agent::panels(&state.db, id).await?;
    let handoffs = crate::store::handoffs::of_conversation(&state.db, id, 20)
        .await?
        .into_iter()
        .map(HandoffView::from)
        .collect();
    Ok(Json(ConversationDetail {
        conversation,
        service_window_open: window.service_window_open,
        service_window_closes_at: window.service_window_closes_at,
        messages,
        turns,
        agents,
        handoffs,
    }))
}

/// A hand-off notification (`handoff_notifications`).
#[derive(Serialize, ToSchema)]
struct HandoffView {
    id: i64,
    reason: String,
    status: String,
    url: Option<String>,
    attempts: i32,
    last_status: Option<i32>,
    error: Option<String>,
    next_attempt_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    delivered_at: Option<DateTime<Utc>>,
}

impl From<crate::store::handoffs::Handoff> for HandoffView {
    fn from(h: crate::store::handoffs::Handoff) -> Self {
        Self {
            id: h.id,
            reason: h.reason,
            status: h.status,
            url: h.url,
            attempts: h.attempts,
            last_status: h.last_status,
            error: h.error,
            next_attempt_at: h.next_attempt_at,
            created_at: h.created_at,
            delivered_at: h.delivered_at,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct StateBody {
    /// open (the agent answers again), closed, or human (a person answers; the agent is silent).
    #[schema(pattern = "^(open|closed|human)$")]
    state: String,
    /// Written to the audit log with the change.
    reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct StateChanged {
    id: i64,
    state: String,
    previous: String,
}

/// Closes a conversation, hands it to a person, or gives it back to the agent (operator),
/// with its audit transition.
#[utoipa::path(post, path = "/api/v1/conversations/{id}/state", tag = "conversations", operation_id = "conversations_set_state",
    params(("id" = i64, Path)), request_body = StateBody,
    responses((status = 200, body = StateChanged), Errors))]
async fn set_state(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
    Body(body): Body<StateBody>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Operator)?;
    let to = match body.state.as_str() {
        "open" | "closed" | "human" => {
            ConversationState::parse(&body.state).unwrap_or(ConversationState::Open)
        }
        other => {
            return Err(Failure::bad_request(format!(
                "state `{other}` is not one of open, closed, human"
            )));
        }
    };
    let ws = caller.0.workspace_id;
    let before = conversations::get(&state.db, ws, id)
        .await?
        .ok_or_else(|| Failure::not_found("conversation"))?;
    // The store's writer is the one writer of conversation rows: the change is a change set
    // with an intent, applied in its order with everything else, with its audit transition.
    let set = ChangeSet {
        intents: vec![Intent::Set(to)],
        ..ChangeSet::ours(
            ws,
            ContactKey::stored(before.contact.clone()),
            Known {
                contact_id: before.contact_id,
                conversation_id: id,
            },
            format!("api:user:{}", caller.0.user_id),
        )
    };
    let applied = state.processing.store.apply(set).await.map_err(|e| {
        Failure::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!("the change could not be stored: {e}"),
        )
    })?;
    let reason = body.reason.unwrap_or_default();
    audit(
        &state.db,
        ws,
        &caller.0.actor,
        "conversation.state",
        &format!("conversation:{id}"),
        Some(&before.state),
        Some(format!("{} {reason}", applied.state.as_str()).trim()),
    )
    .await?;
    Ok(Json(StateChanged {
        id,
        state: applied.state.as_str().to_owned(),
        previous: before.state,
    }))
}
