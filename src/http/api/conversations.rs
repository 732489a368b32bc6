//! `/api/v1/conversations`: list by state and activity, one with its messages in order (with
//! their delivery status) and its 24-hour window; operators change the state — close, hand to
//! a person (`human`: the agent stays silent), give back (`open`) — through the store's
//! writer, which writes the audit transition like any other change to the conversation.

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    response::IntoResponse,
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::{Body, Caller, Failure, cursor, limit, one_of, page};
use crate::{
    http::AppState,
    ingest::event::{ContactKey, ConversationState, Intent},
    store::{
        batch::{ChangeSet, Known},
        conversations, messages,
        users::{Role, audit},
    },
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/conversations", get(list))
        .route("/api/v1/conversations/{id}", get(one))
        .route("/api/v1/conversations/{id}/state", post(set_state))
}

const STATES: &[&str] = &["open", "inactive", "closed", "human"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    active_since: Option<DateTime<Utc>>,
    after: Option<String>,
    limit: Option<u64>,
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Viewer)?;
    one_of("state", q.state.as_deref(), STATES)?;
    let limit = limit(q.limit)?;
    let rows = conversations::list(
        &state.db,
        caller.0.workspace_id,
        q.state.as_deref(),
        q.active_since,
        cursor(q.after.as_deref())?,
        limit,
    )
    .await?;
    Ok(page(rows, limit, |r| r.id))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OneQuery {
    messages: Option<u64>,
}

async fn one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Query(q): Query<OneQuery>,
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
    Ok(Json(json!({
        "conversation": conversation,
        "service_window_open": window.service_window_open,
        "service_window_closes_at": window.service_window_closes_at,
        "messages": messages,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateBody {
    state: String,
    reason: Option<String>,
}

async fn set_state(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
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
        event_id: 0,
        marks_event: false,
        correlation_id: format!("api:user:{}", caller.0.user_id),
        workspace_id: ws,
        contact: ContactKey::stored(before.contact.clone()),
        user_id: None,
        contact_name: None,
        messages: Vec::new(),
        statuses: Vec::new(),
        intents: vec![Intent::Set(to)],
        external_id: None,
        report_new_inbound: false,
        known: Some(Known {
            contact_id: before.contact_id,
            conversation_id: id,
        }),
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
    Ok(Json(
        json!({"id": id, "state": applied.state.as_str(), "previous": before.state}),
    ))
}
