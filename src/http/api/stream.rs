//! `GET /api/v1/stream`: the workspace's changes as server-sent events, as they commit — a
//! conversation's new messages (`message`), delivery statuses (`status`), state
//! (`conversation`) and the agent's finished turns (`turn`), each `{"conversation_id": N}`,
//! and dead-letter rows that changed (`dlq`, `{"event_id": N}`), with an id `<boot>-<seq>`. A client that
//! reconnects with `Last-Event-ID` gets what it missed; when that is no longer kept (or the
//! server restarted) it gets `reset` and reloads what it shows. Token-authenticated like
//! every route (the console reads it with `fetch`, so the token never goes into a URL).

use std::{collections::VecDeque, convert::Infallible, time::Duration};

use axum::{
    extract::State,
    http::HeaderMap,
    response::sse::{Event, KeepAlive, Sse},
};
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Caller, Errors, Failure, Params};
use crate::{
    http::AppState,
    store::{live::Change, users::Role},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stream))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    /// End the stream after this many seconds (1 to 86400; the client reconnects with
    /// `Last-Event-ID`); default: open until the server stops.
    #[param(minimum = 1, maximum = 86400)]
    max_seconds: Option<u64>,
}

/// The workspace's changes as they commit (viewer), as `text/event-stream`: `ready` first (or
/// `reset` when what a `Last-Event-ID` names is gone), then `message`, `status`,
/// `conversation` and `turn` events with `{"conversation_id": N}`, `dlq` events with
/// `{"event_id": N}`; a comment every 15 s keeps it open.
#[utoipa::path(get, path = "/api/v1/stream", tag = "stream", operation_id = "stream_changes",
    params(StreamQuery, ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event received")),
    responses((status = 200, description = "Server-sent events", content_type = "text/event-stream", body = String), Errors))]
async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Params(q): Params<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Failure> {
    caller.require(Role::Viewer)?;
    if q.max_seconds.is_some_and(|s| !(1..=86_400).contains(&s)) {
        return Err(Failure::bad_request("max_seconds must be 1 to 86400"));
    }
    let live = state.processing.store.live().clone();
    let asked = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    // An id of this process: its sequence number; any other id is of another life.
    let last = asked
        .and_then(|v| v.rsplit_once('-'))
        .filter(|(boot, _)| *boot == live.boot())
        .and_then(|(_, seq)| seq.parse::<u64>().ok());
    let sub = live.subscribe(last);
    // Nothing kept since, or an id of another life (or none we could read): start over.
    let gap = sub.gap || (asked.is_some() && last.is_none());
    let boot = live.boot().to_owned();
    let ws = caller.0.workspace_id;
    let mut first = VecDeque::new();
    let head = sub.head;
    let first_id = if gap { head } else { last.unwrap_or(head) };
    first.push_back(
        Event::default()
            .event(if gap { "reset" } else { "ready" })
            .id(format!("{boot}-{first_id}"))
            .data("{}"),
    );
    if !gap {
        first.extend(
            sub.missed
                .iter()
                .filter(|c| c.workspace_id == ws)
                .map(|c| event(&boot, c)),
        );
    }
    let deadline = q
        .max_seconds
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let state = Open {
        first,
        rx: sub.rx,
        closed: sub.closed,
        ws,
        boot,
        deadline,
    };
    let events = futures_util::stream::unfold(state, |mut s| async move {
        if let Some(e) = s.first.pop_front() {
            return Some((Ok(e), s));
        }
        loop {
            let deadline = s.deadline;
            let until = async move {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let closed = &mut s.closed;
            let stopped = async move {
                let _ = closed.wait_for(|c| *c).await;
            };
            let next = tokio::select! {
                r = s.rx.recv() => match r {
                    Ok(c) => Next::Change(c),
                    // Too slow to keep up: start over.
                    Err(RecvError::Lagged(_)) => Next::Reset,
                    Err(RecvError::Closed) => Next::End,
                },
                _ = stopped => Next::End,
                _ = until => Next::End,
            };
            match next {
                Next::Change(c) if c.workspace_id == s.ws => {
                    let e = event(&s.boot, &c);
                    return Some((Ok(e), s));
                }
                Next::Change(_) => continue,
                Next::Reset => {
                    let e = Event::default().event("reset").data("{}");
                    return Some((Ok(e), s));
                }
                Next::End => return None,
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

enum Next {
    Change(std::sync::Arc<Change>),
    Reset,
    End,
}

struct Open {
    first: VecDeque<Event>,
    rx: tokio::sync::broadcast::Receiver<std::sync::Arc<Change>>,
    closed: tokio::sync::watch::Receiver<bool>,
    ws: i64,
    boot: String,
    deadline: Option<tokio::time::Instant>,
}

fn event(boot: &str, c: &Change) -> Event {
    Event::default()
        .id(format!("{boot}-{}", c.seq))
        .event(c.kind.as_str())
        .data(format!("{{\"{}\":{}}}", c.kind.subject(), c.id))
}
