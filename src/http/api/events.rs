//! `/api/v1/events`: the inbox. Viewers list and read (with the payload, the normalisation
//! notes and the DLQ history); operators replay by ids or by time range — through the same
//! actors, so a replay changes nothing that was already applied.

use axum::{Json, extract::State, response::IntoResponse};
use chrono::{DateTime, Utc};
use entity::webhook_dlq::Model as DlqRow;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    Body, Caller, Errors, Failure, Id, Page, Params, cursor, limit, one_of, page, sane_time,
};
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
/// Events read (with their payloads) at a time by a replay.
const REPLAY_PAGE: usize = 100;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(one))
        .routes(routes!(replay))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// pending, processed, failed or dead.
    #[param(pattern = "^(pending|processed|failed|dead)$")]
    status: Option<String>,
    /// meta or kapso.
    #[param(pattern = "^(meta|kapso)$")]
    source: Option<String>,
    /// Received at or after (RFC 3339).
    from: Option<DateTime<Utc>>,
    /// Received before (RFC 3339).
    to: Option<DateTime<Utc>>,
    /// A wamid, phone number or other text of the payload, or a correlation id.
    #[param(max_length = 200)]
    search: Option<String>,
    /// `newest` (the default) or `oldest` first.
    #[param(pattern = "^(newest|oldest)$")]
    order: Option<String>,
    /// The `next` cursor of the previous page.
    after: Option<String>,
    /// 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u64>,
}

/// A stored webhook event, without its payload.
#[derive(Serialize, ToSchema)]
struct EventSummary {
    id: i64,
    source: String,
    event_type: Option<String>,
    status: String,
    attempts: i32,
    received_at: DateTime<Utc>,
    processed_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    correlation_id: String,
    /// What normalisation noticed (value-level errors, parts not processed).
    notes: Option<String>,
}

fn summary_of(e: inbox::EventSummary) -> EventSummary {
    EventSummary {
        id: e.id,
        source: e.source,
        event_type: e.event_type,
        status: e.status,
        attempts: e.attempts,
        received_at: e.received_at,
        processed_at: e.processed_at,
        last_error: e.last_error,
        correlation_id: e.correlation_id,
        notes: e.notes,
    }
}

fn summary(e: &entity::webhook_events::Model) -> EventSummary {
    EventSummary {
        id: e.id,
        source: e.source.clone(),
        event_type: e.event_type.clone(),
        status: e.status.clone(),
        attempts: e.attempts,
        received_at: e.received_at,
        processed_at: e.processed_at,
        last_error: e.last_error.clone(),
        correlation_id: e.correlation_id.clone(),
        notes: e.notes.clone(),
    }
}

/// One event with its payload as received, its headers, and its DLQ history.
#[derive(Serialize, ToSchema)]
struct EventDetail {
    #[serde(flatten)]
    event: EventSummary,
    /// The body as received (JSON, or the raw text when it is not JSON).
    payload: Value,
    headers: Value,
    /// Its DLQ row, if it was ever parked.
    dlq: Option<DlqRow>,
    /// The conversations its messages went to.
    conversations: Vec<i64>,
}

/// The stored headers without the signatures: a signature shown to a viewer would let the
/// viewer post the event again (the bytes are shown too).
fn redacted_headers(stored: &str) -> Value {
    let mut headers: Value = serde_json::from_str(stored).unwrap_or(Value::Null);
    if let Some(map) = headers.as_object_mut() {
        for name in ["x-hub-signature-256", "x-webhook-signature"] {
            if let Some(v) = map.get_mut(name) {
                *v = Value::String("<redacted>".into());
            }
        }
    }
    headers
}

/// The workspace's events, newest first (or oldest), by status, source, time received and a
/// search of the payload (a wamid, a phone) or the correlation id.
#[utoipa::path(get, path = "/api/v1/events", tag = "events", operation_id = "events_list", params(ListQuery),
    responses((status = 200, body = Page<EventSummary>), Errors))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Params(q): Params<ListQuery>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Viewer)?;
    sane_time("from", q.from)?;
    sane_time("to", q.to)?;
    one_of(
        "status",
        q.status.as_deref(),
        &["pending", "processed", "failed", "dead"],
    )?;
    one_of("source", q.source.as_deref(), &["meta", "kapso"])?;
    one_of("order", q.order.as_deref(), &["newest", "oldest"])?;
    if q.search.as_ref().is_some_and(|s| s.chars().count() > 200) {
        return Err(Failure::bad_request(
            "search must have at most 200 characters",
        ));
    }
    let limit = limit(q.limit)?;
    let filter = EventFilter {
        status: q.status.as_deref(),
        source: q.source.as_deref(),
        from: q.from,
        to: q.to,
        ids: None,
        search: q.search.as_deref(),
        newest: q.order.as_deref() != Some("oldest"),
    };
    let rows = inbox::list_summaries(
        &state.db,
        caller.0.workspace_id,
        &filter,
        cursor(q.after.as_deref())?,
        limit,
    )
    .await?;
    Ok(page(
        rows.into_iter().map(summary_of).collect(),
        limit,
        |e| e.id,
    ))
}

/// One event with its payload, headers and DLQ history.
#[utoipa::path(get, path = "/api/v1/events/{id}", tag = "events", operation_id = "events_one", params(("id" = i64, Path)),
    responses((status = 200, body = EventDetail), Errors))]
async fn one(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
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
    let conversations =
        crate::store::messages::conversations_of_event(&state.db, caller.0.workspace_id, id)
            .await?;
    Ok(Json(EventDetail {
        conversations,
        event: summary(&event),
        payload: serde_json::from_str(&event.payload)
            .unwrap_or_else(|_| Value::String(event.payload.clone())),
        headers: redacted_headers(&event.headers),
        dlq: history,
    }))
}

/// Either `ids` (1 to 10,000) or a range `from`..`to` of times received.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    #[schema(min_items = 1, max_items = 10000)]
    ids: Option<Vec<i64>>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
struct Replayed {
    /// Events handed to the actors again.
    replayed: usize,
}

/// Processes events again through the same actors (operator): what was applied stays applied
/// once, so a replay is idempotent.
#[utoipa::path(post, path = "/api/v1/events/replay", tag = "events", operation_id = "events_replay", request_body = ReplayBody,
    responses((status = 200, body = Replayed), Errors))]
async fn replay(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<ReplayBody>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Operator)?;
    sane_time("from", body.from)?;
    sane_time("to", body.to)?;
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
    // Ids first, then the events a page at a time: a range of large payloads is never held
    // in memory at once.
    let ids = inbox::list_ids(&state.db, caller.0.workspace_id, &filter, MAX_REPLAY + 1).await?;
    if ids.len() as u64 > MAX_REPLAY {
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
    let mut count = 0;
    for chunk in ids.chunks(REPLAY_PAGE) {
        let page = EventFilter {
            ids: Some(chunk),
            ..Default::default()
        };
        let events = inbox::list(
            &state.db,
            caller.0.workspace_id,
            &page,
            None,
            REPLAY_PAGE as u64,
        )
        .await?;
        let committed = inbox::reset_for_replay(&state.db, &events).await?;
        count += committed.len();
        for event in committed {
            let _ = router.cast(RouterMsg::Dispatch(event));
        }
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
    Ok(Json(Replayed { replayed: count }))
}
