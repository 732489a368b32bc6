//! `/api/v1/events`: the inbox. Viewers list and read (with the payload, the normalisation
//! notes and the DLQ history); operators replay by ids or by time range — through the same
//! actors, so a replay changes nothing that was already applied.

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    response::IntoResponse,
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Body, Caller, Failure, cursor, limit, one_of, page};
use crate::{
    actors::messages::RouterMsg,
    http::AppState,
    store::{
        dlq,
        inbox::{self, EventFilter},
        users::{Role, audit},
    },
};

/// The most events one replay call takes.
const MAX_REPLAY: u64 = 10_000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/events", get(list))
        .route("/api/v1/events/{id}", get(one))
        .route("/api/v1/events/replay", post(replay))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    source: Option<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    after: Option<String>,
    limit: Option<u64>,
}

fn summary(e: &entity::webhook_events::Model) -> Value {
    json!({
        "id": e.id, "source": e.source, "event_type": e.event_type, "status": e.status,
        "attempts": e.attempts, "received_at": e.received_at, "processed_at": e.processed_at,
        "last_error": e.last_error, "correlation_id": e.correlation_id, "notes": e.notes,
    })
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Viewer)?;
    one_of(
        "status",
        q.status.as_deref(),
        &["pending", "processed", "failed", "dead"],
    )?;
    one_of("source", q.source.as_deref(), &["meta", "kapso"])?;
    let limit = limit(q.limit)?;
    let filter = EventFilter {
        status: q.status.as_deref(),
        source: q.source.as_deref(),
        from: q.from,
        to: q.to,
        ids: None,
    };
    let rows = inbox::list(
        &state.db,
        caller.0.workspace_id,
        &filter,
        cursor(q.after.as_deref())?,
        limit,
    )
    .await?;
    Ok(page(
        rows.iter().map(summary).collect(),
        limit,
        |v: &serde_json::Value| v["id"].as_i64().unwrap_or(0),
    ))
}

async fn one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Viewer)?;
    let ids = [id];
    let filter = EventFilter {
        ids: Some(&ids),
        ..Default::default()
    };
    let event = inbox::list(&state.db, caller.0.workspace_id, &filter, None, 1)
        .await?
        .pop()
        .ok_or_else(|| Failure::not_found("event"))?;
    let history = dlq::of_event(&state.db, id).await?;
    let mut body = summary(&event);
    body["payload"] =
        serde_json::from_str(&event.payload).unwrap_or(Value::String(event.payload.clone()));
    body["headers"] = serde_json::from_str(&event.headers).unwrap_or(Value::Null);
    body["dlq"] = serde_json::to_value(history).unwrap_or(Value::Null);
    Ok(Json(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    ids: Option<Vec<i64>>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

async fn replay(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<ReplayBody>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Operator)?;
    let filter = match (&body.ids, body.from, body.to) {
        (Some(ids), None, None) if !ids.is_empty() && ids.len() as u64 <= MAX_REPLAY => {
            EventFilter {
                ids: Some(ids),
                ..Default::default()
            }
        }
        (None, Some(from), Some(to)) if from < to => EventFilter {
            from: Some(from),
            to: Some(to),
            ..Default::default()
        },
        _ => {
            return Err(Failure::bad_request(format!(
                "give {{\"ids\": [1 to {MAX_REPLAY} ids]}} or {{\"from\": …, \"to\": …}} with from before to"
            )));
        }
    };
    let events = inbox::list(
        &state.db,
        caller.0.workspace_id,
        &filter,
        None,
        MAX_REPLAY + 1,
    )
    .await?;
    if events.len() as u64 > MAX_REPLAY {
        return Err(Failure::bad_request(format!(
            "more than {MAX_REPLAY} events: replay a shorter range"
        )));
    }
    let router = state.processing.router().ok_or_else(|| {
        Failure::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "actors_down",
            "processing is restarting; try again",
        )
    })?;
    let committed = inbox::reset_for_replay(&state.db, &events).await?;
    let count = committed.len();
    for event in committed {
        let _ = router.cast(RouterMsg::Dispatch(event));
    }
    audit(
        &state.db,
        caller.0.workspace_id,
        &caller.0.actor,
        "events.replay",
        &format!("events:{count}"),
        None,
        None,
    )
    .await?;
    Ok(Json(json!({"replayed": count})))
}
