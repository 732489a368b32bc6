//! A conversation actor: the one writer of one conversation. It applies its slices strictly
//! in the order the router hands them over (which is the order they were acknowledged),
//! keeps the conversation's ids and state in memory once the store has told it, retries a
//! failing slice with exponential backoff and jitter, and parks it in the dead-letter queue
//! after `processing.max_attempts` so that its later slices go on.
//!
//! Seam for the AI agent: after a committed inbound message, an agent turn starts here as a
//! task of its own and reports back as a message to this actor, so a provider call that takes
//! seconds never holds up other conversations, the store or the intake.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::{
    Ctx,
    messages::{ConversationKey, ConversationMsg, DeadLetterMsg, RouterMsg, Slice},
};
use crate::{
    config::backoff,
    ingest::event::{Direction, Intent, ItemKind},
    metrics as m,
    store::batch::{ApplyError, ChangeSet, Known},
};

pub struct Conversation;

/// What a live conversation actor keeps in memory.
pub struct Live {
    ctx: Arc<Ctx>,
    key: ConversationKey,
    router: ActorRef<RouterMsg>,
    known: Option<Known>,
    last_active: Instant,
    idle: Duration,
}

impl Actor for Conversation {
    type Msg = ConversationMsg;
    type State = Live;
    type Arguments = (Arc<Ctx>, ConversationKey, ActorRef<RouterMsg>);

    async fn pre_start(
        &self,
        myself: ActorRef<ConversationMsg>,
        (ctx, key, router): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let idle = Duration::from_millis(ctx.actors.idle_timeout_ms);
        myself.send_after(idle, || ConversationMsg::IdleCheck);
        Ok(Live {
            ctx,
            key,
            router,
            known: None,
            last_active: Instant::now(),
            idle,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ConversationMsg>,
        msg: ConversationMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConversationMsg::Apply(slice) => {
                state.last_active = Instant::now();
                apply(state, &slice).await;
                state.last_active = Instant::now();
                state.router.cast(RouterMsg::SliceDone {
                    key: state.key.clone(),
                    event_id: slice.event_id,
                })?;
            }
            ConversationMsg::IdleCheck => {
                let quiet = state.last_active.elapsed();
                if quiet >= state.idle {
                    // The router sees the stop; if work raced in, it starts a new actor with it.
                    myself.stop(Some("idle".into()));
                } else {
                    myself.send_after(state.idle - quiet, || ConversationMsg::IdleCheck);
                }
            }
        }
        Ok(())
    }
}

/// Applies one slice: retried with backoff, then parked. Never returns an error: a poison
/// slice hurts only itself. While the database is unreachable no attempt is spent: the slice
/// (and the conversation behind it) waits, in order, until the database answers again, rather
/// than filling the dead-letter queue with events that have nothing wrong with them.
async fn apply(state: &mut Live, slice: &Slice) {
    let set = change_set(state, slice);
    let processing = &state.ctx.processing;
    let max = processing.max_attempts;
    let mut attempt = 0;
    let mut waits = 0u32;
    let last_error = loop {
        let result = match injected_failure(slice)
            .and_then(|()| injected_panic(slice))
            .and_then(|()| injected_outage(slice))
        {
            Err(e) => Err(e),
            Ok(()) => state.ctx.store.apply(set.clone()).await,
        };
        let error = match result {
            Ok(applied) => {
                state.known = Some(Known {
                    contact_id: applied.contact_id,
                    conversation_id: applied.conversation_id,
                });
                tracing::debug!(
                    correlation_id = %slice.correlation_id,
                    event_id = slice.event_id,
                    contact = %crate::telemetry::mask_phone(slice.key.1.as_str()),
                    items = slice.items.len(),
                    "event applied"
                );
                let lag = (Utc::now() - slice.received_at)
                    .num_microseconds()
                    .unwrap_or(0);
                metrics::histogram!(m::PROCESSING_LAG).record(lag.max(0) as f64 / 1e6);
                return;
            }
            Err(e) => e,
        };
        if error.transient {
            metrics::counter!(m::RETRIES).increment(1);
            waits += 1;
            if waits == 1 || waits.is_multiple_of(50) {
                tracing::warn!(
                    correlation_id = %slice.correlation_id,
                    event_id = slice.event_id,
                    waits,
                    error = %error,
                    "the database is unreachable; the event waits for it"
                );
            }
            state.ctx.store.bump();
            tokio::time::sleep(backoff(
                waits.min(16),
                processing.backoff_base_ms,
                processing.backoff_max_ms,
            ))
            .await;
            continue;
        }
        attempt += 1;
        tracing::warn!(
            correlation_id = %slice.correlation_id,
            event_id = slice.event_id,
            contact = %crate::telemetry::mask_phone(slice.key.1.as_str()),
            attempt,
            error = %error,
            "applying an event failed"
        );
        if attempt >= max {
            break error.message;
        }
        metrics::counter!(m::RETRIES).increment(1);
        tokio::time::sleep(backoff(
            attempt,
            processing.backoff_base_ms,
            processing.backoff_max_ms,
        ))
        .await;
    };
    state.ctx.store.abandon(slice.event_id).await;
    match state.ctx.dead_letter() {
        Some(dl) => {
            let _ = dl.cast(DeadLetterMsg::Park {
                event_id: slice.event_id,
                correlation_id: slice.correlation_id.clone(),
                error: last_error,
                attempts: max,
            });
        }
        None => {
            tracing::error!(correlation_id = %slice.correlation_id, event_id = slice.event_id, "no dead-letter actor; the event stays failed in the inbox until recovery")
        }
    }
}

fn change_set(state: &Live, slice: &Slice) -> ChangeSet {
    let mut set = ChangeSet {
        event_id: slice.event_id,
        correlation_id: slice.correlation_id.clone(),
        workspace_id: slice.key.0,
        contact: slice.key.1.clone(),
        user_id: slice.user_id.clone(),
        contact_name: None,
        messages: Vec::new(),
        statuses: Vec::new(),
        intents: Vec::new(),
        known: state.known,
    };
    for item in &slice.items {
        match item {
            ItemKind::Profile { name } => set.contact_name = Some(name.clone()),
            ItemKind::Message(msg) => {
                if msg.direction == Direction::Inbound {
                    set.intents.push(Intent::InboundMessage);
                }
                set.messages.push(msg.clone());
            }
            ItemKind::Status(status) => set.statuses.push(status.clone()),
            ItemKind::Lifecycle(l) => set.intents.push(Intent::Lifecycle(*l)),
        }
    }
    set
}

/// Fault injection for the test suite (`fail` crate; compiled to nothing without its
/// `failpoints` feature). A point's argument names the wamid it hits, so concurrent tests do
/// not trip over each other's faults.
#[allow(unused_variables)] // without failpoints the macro expands to nothing
fn injected_failure(slice: &Slice) -> Result<(), ApplyError> {
    fail::fail_point!("conversation::apply", |arg| {
        if mentions(slice, &arg) {
            Err(ApplyError {
                message: format!("injected failure for {}", arg.unwrap_or_default()),
                transient: false,
            })
        } else {
            Ok(())
        }
    });
    Ok(())
}

/// The store answers "unreachable" for slices naming the point's wamid, as it does while the
/// database is down.
#[allow(unused_variables)]
fn injected_outage(slice: &Slice) -> Result<(), ApplyError> {
    fail::fail_point!("store::unreachable", |arg| {
        if mentions(slice, &arg) {
            Err(ApplyError {
                message: "injected: the database is unreachable".into(),
                transient: true,
            })
        } else {
            Ok(())
        }
    });
    Ok(())
}

/// Panics on the first delivery of a slice naming the point's wamid (the restarted actor's
/// second delivery goes through).
#[allow(unused_variables)]
fn injected_panic(slice: &Slice) -> Result<(), ApplyError> {
    fail::fail_point!("conversation::panic", |arg| {
        if mentions(slice, &arg) && slice.deliveries() == 1 {
            panic!("injected panic for {}", arg.unwrap_or_default());
        }
        Ok(())
    });
    Ok(())
}

#[allow(dead_code)] // unused when failpoints are compiled out
fn mentions(slice: &Slice, arg: &Option<String>) -> bool {
    arg.as_deref().is_some_and(|wamid| {
        slice.items.iter().any(|i| match i {
            ItemKind::Message(m) => m.wamid == wamid,
            ItemKind::Status(s) => s.wamid == wamid,
            _ => false,
        })
    })
}
