//! A conversation: the one writer of one conversation, held as plain state by its lane
//! (`lane.rs`). It applies its slices strictly in the order the router hands them over (which
//! is the order they were acknowledged), one at a time, each in a task of its own; keeps the
//! conversation's ids and state in memory once the store has told it; retries a failing
//! slice with exponential backoff and jitter, and parks it in the dead-letter queue after
//! `processing.max_attempts` so that its later slices go on.
//!
//! The AI agent: inbound messages stored for the first time (never a redelivered copy) join
//! the conversation's current burst; after `reply_debounce_ms` of quiet (at most
//! `reply_max_wait_ms` after the burst's first message) one turn answers the whole burst. The
//! turn runs as a task of its own and reports back as a message, so a provider call that
//! takes seconds never holds up this conversation's other work, other conversations, the
//! store or the intake; one turn at a time per conversation. A conversation handed to a
//! person (`human`) gets no replies.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use ractor::ActorRef;

use super::{
    Ctx,
    messages::{ConversationKey, ConversationMsg, DeadLetterMsg, LaneMsg, RouterMsg, Slice},
};
use crate::{
    agent::{
        Answerer,
        context::Turn,
        turn::{self, Inbound, Note, NoteKind, TurnInput},
    },
    config::backoff,
    ingest::event::{AmendmentKind, ConversationState, Direction, Intent, ItemKind},
    metrics as m,
    store::change::{Applied, ApplyError, ChangeSet, Known},
};

/// Where a conversation's messages go: its lane, under its key and incarnation.
#[derive(Clone)]
pub struct Address {
    pub lane: ActorRef<LaneMsg>,
    pub key: ConversationKey,
    pub inc: u64,
}

impl Address {
    fn send(&self, msg: ConversationMsg) {
        // A lane that is gone (restarting) has dropped the conversation: the router hands
        // its unfinished slices to the new one.
        let _ = self.lane.cast(LaneMsg::To(self.key.clone(), self.inc, msg));
    }

    fn send_after(&self, wait: Duration, msg: ConversationMsg) {
        let (key, inc) = (self.key.clone(), self.inc);
        self.lane
            .send_after(wait, move || LaneMsg::To(key, inc, msg));
    }
}

/// What a lane keeps of one live conversation.
pub struct Conversation {
    /// The router's number for this life of the conversation.
    pub inc: u64,
    /// Bumped when applying a slice panicked and the conversation started afresh: reports of
    /// tasks started before are dropped.
    epoch: u32,
    known: Option<Known>,
    pub last_active: Instant,
    /// The conversation's state as the store last reported it.
    conv_state: ConversationState,
    agent: AgentState,
    /// Slices to apply, in order; the first is being applied while `applying`.
    queue: VecDeque<Arc<Slice>>,
    applying: bool,
}

/// The agent's side of a live conversation.
#[derive(Default)]
struct AgentState {
    /// Inbound messages waiting for a turn, with when the burst began and last grew.
    burst: Vec<Inbound>,
    burst_started: Option<Instant>,
    last_inbound: Option<Instant>,
    /// Bumped by every new message: only the newest scheduled `TurnDue` starts a turn.
    generation: u64,
    turn_running: bool,
    /// Who answers: the account (number) the newest message came to.
    answerer: Option<Answerer>,
    correlation_id: String,
    /// Kept between turns once loaded.
    context: Option<Vec<Turn>>,
    /// The customer's reactions, edits and revokes since the last turn: shown to the model as
    /// context in the next one, never a turn of their own.
    notes: Vec<Note>,
    /// The key of the follow-up running now, if the running task is one.
    follow_up: Option<String>,
}

/// At most this many amendments are kept for the next turn (the newest).
const NOTES_MAX: usize = 10;

impl Conversation {
    pub fn new(inc: u64) -> Self {
        Self {
            inc,
            epoch: 0,
            known: None,
            last_active: Instant::now(),
            conv_state: ConversationState::Open,
            agent: AgentState::default(),
            queue: VecDeque::new(),
            applying: false,
        }
    }

    /// Something is to be applied, or an agent burst or turn is waiting or running: the
    /// conversation stays live.
    pub fn busy(&self) -> bool {
        self.applying
            || !self.queue.is_empty()
            || self.agent.turn_running
            || !self.agent.burst.is_empty()
    }
}

/// What a conversation does with one message.
pub fn handle(
    ctx: &Arc<Ctx>,
    router: &ActorRef<RouterMsg>,
    at: &Address,
    conv: &mut Conversation,
    msg: ConversationMsg,
) {
    match msg {
        ConversationMsg::Apply(slice) => {
            conv.last_active = Instant::now();
            conv.queue.push_back(slice);
            start_apply(ctx, at, conv);
        }
        ConversationMsg::Applied {
            epoch,
            slice,
            applied,
        } => {
            if epoch != conv.epoch {
                return;
            }
            conv.applying = false;
            if conv.queue.front().is_some_and(|s| Arc::ptr_eq(s, &slice)) {
                conv.queue.pop_front();
            }
            if let Some(applied) = applied {
                // Another conversation than before (a number change merged it into an older
                // one): the context kept is not its own.
                if conv
                    .known
                    .is_some_and(|k| k.conversation_id != applied.conversation_id)
                {
                    conv.agent.context = None;
                }
                conv.known = Some(Known {
                    contact_id: applied.contact_id,
                    conversation_id: applied.conversation_id,
                });
                conv.conv_state = applied.state;
                if applied.reported {
                    take_notes(&mut conv.agent, &slice);
                }
                if !applied.new_inbound.is_empty() {
                    let burst = applied
                        .new_inbound
                        .into_iter()
                        .map(|message| Inbound {
                            message,
                            event_id: slice.event_id,
                        })
                        .collect();
                    let (pnid, cid) = (&slice.phone_number_id, &slice.correlation_id);
                    new_inbound(ctx, at, conv, pnid, cid, burst);
                }
            }
            conv.last_active = Instant::now();
            let _ = router.cast(RouterMsg::SliceDone {
                key: at.key.clone(),
                event_id: slice.event_id,
            });
            start_apply(ctx, at, conv);
        }
        ConversationMsg::Crashed { epoch, error } => {
            if epoch != conv.epoch {
                return;
            }
            // As a restarted actor: nothing kept in memory, the same slices again.
            metrics::counter!(m::ACTOR_RESTARTS, "actor" => "conversation").increment(1);
            let correlation_id = conv.queue.front().map(|s| s.correlation_id.clone());
            tracing::error!(error = %error, correlation_id, pending = conv.queue.len(), "applying a slice panicked; the conversation starts afresh");
            let generation = conv.agent.generation;
            *conv = Conversation {
                epoch: conv.epoch.wrapping_add(1),
                queue: std::mem::take(&mut conv.queue),
                ..Conversation::new(conv.inc)
            };
            conv.agent.generation = generation;
            for slice in &conv.queue {
                slice.delivered();
            }
            start_apply(ctx, at, conv);
        }
        ConversationMsg::Resume(resume) => {
            // Messages a stopped process never answered (recovery after a restart).
            conv.known.get_or_insert(resume.known);
            conv.conv_state = resume.state;
            conv.last_active = Instant::now();
            let cid = format!("resume-{}", resume.known.conversation_id);
            new_inbound(ctx, at, conv, &resume.phone_number_id, &cid, resume.burst);
        }
        ConversationMsg::TurnDue(generation) => {
            let agent = &conv.agent;
            if generation == agent.generation && !agent.turn_running && !agent.burst.is_empty() {
                start_turn(ctx, at, conv);
            }
        }
        ConversationMsg::TurnDone(epoch, report) => {
            if epoch != conv.epoch {
                return;
            }
            conv.last_active = Instant::now();
            let agent = &mut conv.agent;
            agent.turn_running = false;
            agent.follow_up = None;
            agent.context = report.context;
            if let Some(k) = conv.known {
                ctx.store.live().publish(
                    at.key.0,
                    k.conversation_id,
                    crate::store::live::Kind::Turn,
                );
            }
            // Edits and revokes that came during the turn.
            amend_context(agent);
            ctx.store.bump();
            // Messages that came during the turn are the next burst.
            if !agent.burst.is_empty() {
                schedule_turn(at, conv);
            }
        }
        ConversationMsg::FollowUp(due) => {
            conv.last_active = Instant::now();
            conv.known.get_or_insert(due.known);
            follow_up(ctx, at, conv, *due);
        }
    }
}

/// Starts applying the first queued slice in a task of its own, unless one is being applied.
fn start_apply(ctx: &Arc<Ctx>, at: &Address, conv: &mut Conversation) {
    if conv.applying {
        return;
    }
    let Some(slice) = conv.queue.front().cloned() else {
        return;
    };
    conv.applying = true;
    let set = change_set(ctx, conv.known, &slice);
    let (ctx, epoch) = (ctx.clone(), conv.epoch);
    let watch = CrashWatch(Some((at.clone(), epoch)));
    tokio::spawn(async move {
        let watch = watch;
        let applied = apply(&ctx, set, &slice).await;
        if let Some(at) = watch.disarm() {
            at.send(ConversationMsg::Applied {
                epoch,
                slice,
                applied: applied.map(Box::new),
            });
        }
    });
}

/// Held by an apply task: dropped without being disarmed — the task panicked — it tells the
/// conversation, which starts afresh with the same slices.
struct CrashWatch(Option<(Address, u32)>);

impl CrashWatch {
    fn disarm(mut self) -> Option<Address> {
        self.0.take().map(|(at, _)| at)
    }
}

impl Drop for CrashWatch {
    fn drop(&mut self) {
        if let Some((at, epoch)) = self.0.take() {
            let error = if std::thread::panicking() {
                "panicked"
            } else {
                "stopped"
            };
            at.send(ConversationMsg::Crashed {
                epoch,
                error: error.into(),
            });
        }
    }
}

/// New inbound messages join the burst (when the account has an agent and no person has the
/// conversation); the newest is marked read with a typing indicator.
fn new_inbound(
    ctx: &Arc<Ctx>,
    at: &Address,
    state: &mut Conversation,
    phone_number_id: &str,
    correlation_id: &str,
    mut burst: Vec<Inbound>,
) {
    let directory = ctx.directory();
    let Some(agent_type) = directory
        .get(phone_number_id)
        .and_then(|a| a.agent_type.clone())
    else {
        return;
    };
    let Some(answerer) = ctx.agents.answerer(&agent_type, phone_number_id) else {
        return;
    };
    // Only a person's words start a turn; in a group only where the agent answers groups.
    let answer_groups = answerer.provider.cfg.answer_groups;
    let in_group = at.key.1.group_id().is_some();
    burst.retain(|i| i.message.is_spoken() && (answer_groups || !in_group));
    // A message already waiting in the burst (a resumed copy of one that came live) joins once.
    burst.retain(|i| {
        !state
            .agent
            .burst
            .iter()
            .any(|b| b.message.wamid == i.message.wamid)
    });
    if burst.is_empty() {
        return;
    }
    // The typing indicator only when a reply will follow.
    let newest = burst.iter().max_by_key(|i| i.message.timestamp);
    if let Some(newest) = newest.filter(|_| state.conv_state != ConversationState::Human) {
        let (a, wamid) = (answerer.clone(), newest.message.wamid.clone());
        tokio::spawn(async move {
            if let Err(e) = a.graph.typing(&a.phone_number_id, &a.token, &wamid).await {
                tracing::debug!(code = %e.code, error = %e.message, "typing indicator not shown");
            }
        });
    }
    let agent = &mut state.agent;
    agent.burst.extend(burst);
    agent.answerer = Some(answerer);
    agent.correlation_id = correlation_id.to_owned();
    agent.burst_started.get_or_insert_with(Instant::now);
    agent.last_inbound = Some(Instant::now());
    agent.generation += 1;
    if !agent.turn_running {
        schedule_turn(at, state);
    }
}

/// The customer's amendments in a slice, as notes for the next turn (a redelivered one once).
fn take_notes(agent: &mut AgentState, slice: &Slice) {
    for item in &slice.items {
        let ItemKind::Amendment(a) = item else {
            continue;
        };
        if a.side != Direction::Inbound || agent.notes.iter().any(|n| n.wamid == a.wamid) {
            continue;
        }
        let kind = match &a.kind {
            AmendmentKind::Reaction(Some(emoji)) => NoteKind::Reaction(emoji.clone()),
            AmendmentKind::Reaction(None) => continue,
            AmendmentKind::Edit { content, .. } => NoteKind::Edit(content.clone()),
            AmendmentKind::Revoke => NoteKind::Revoke,
        };
        agent.notes.push(Note {
            wamid: a.wamid.clone(),
            target: a.target.clone(),
            kind,
        });
    }
    if agent.notes.len() > NOTES_MAX {
        let over = agent.notes.len() - NOTES_MAX;
        agent.notes.drain(..over);
    }
    amend_context(agent);
}

/// The kept context says what the customer's edits say now, and nothing a revoked message
/// said (the stored copy is amended by the store).
fn amend_context(agent: &mut AgentState) {
    let Some(turns) = agent.context.as_mut() else {
        return;
    };
    for n in &agent.notes {
        match &n.kind {
            NoteKind::Edit(text) => crate::agent::context::amend(turns, &n.target, text.as_deref()),
            NoteKind::Revoke => crate::agent::context::amend(turns, &n.target, None),
            NoteKind::Reaction(_) => {}
        }
    }
}

/// A `TurnDue` after the burst's quiet time, never later than its longest wait.
fn schedule_turn(at: &Address, state: &Conversation) {
    let agent = &state.agent;
    let Some(cfg) = agent.answerer.as_ref().map(|a| &a.provider.cfg) else {
        return;
    };
    let quiet = Duration::from_millis(cfg.reply_debounce_ms)
        .saturating_sub(agent.last_inbound.map_or(Duration::ZERO, |t| t.elapsed()));
    let longest = Duration::from_millis(cfg.reply_max_wait_ms)
        .saturating_sub(agent.burst_started.map_or(Duration::ZERO, |t| t.elapsed()));
    let generation = agent.generation;
    at.send_after(quiet.min(longest), ConversationMsg::TurnDue(generation));
}

fn start_turn(ctx: &Arc<Ctx>, at: &Address, state: &mut Conversation) {
    let burst = std::mem::take(&mut state.agent.burst);
    state.agent.burst_started = None;
    let (Some(answerer), Some(known)) = (state.agent.answerer.clone(), state.known) else {
        return;
    };
    state.agent.turn_running = true;
    let input = TurnInput {
        answerer,
        db: ctx.db.clone(),
        store: ctx.store.clone(),
        workspace_id: at.key.0,
        contact_id: known.contact_id,
        conversation_id: known.conversation_id,
        contact: at.key.1.clone(),
        correlation_id: state.agent.correlation_id.clone(),
        context: state.agent.context.take(),
        notes: std::mem::take(&mut state.agent.notes),
        burst,
        handed_off: state.conv_state == ConversationState::Human,
    };
    let (at, epoch) = (at.clone(), state.epoch);
    tokio::spawn(async move {
        let report = turn::run(input).await;
        // If the conversation started afresh meanwhile, it reloads the saved context.
        at.send(ConversationMsg::TurnDone(epoch, Box::new(report)));
    });
}

/// A follow-up found due: run it as a task (one at a time with turns), unless the customer
/// has just written (their burst is waiting or being answered) or a person has it.
fn follow_up(
    ctx: &Arc<Ctx>,
    at: &Address,
    state: &mut Conversation,
    due: super::messages::FollowUpDue,
) {
    let cancel = |reason: &'static str| {
        metrics::counter!(m::FOLLOW_UPS, "stage" => "cancelled", "kind" => "any", "reason" => reason)
            .increment(1);
        tracing::debug!(
            conversation_id = due.known.conversation_id,
            reason,
            "follow-up cancelled"
        );
    };
    // The sweep found it again while it runs.
    if state.agent.follow_up.as_deref() == Some(due.due.key().as_str()) {
        return;
    }
    if state.agent.turn_running || !state.agent.burst.is_empty() {
        return cancel("customer_wrote");
    }
    if state.conv_state == ConversationState::Human {
        return cancel("handed_to_person");
    }
    let directory = ctx.directory();
    let account = directory.get(&due.phone_number_id);
    let Some(answerer) = account
        .and_then(|a| a.agent_type.as_deref())
        .and_then(|agent| ctx.agents.answerer(agent, &due.phone_number_id))
    else {
        return cancel("no_agent");
    };
    let known = state.known.unwrap_or(due.known);
    state.agent.turn_running = true;
    state.agent.follow_up = Some(due.due.key());
    let input = crate::agent::followup::FollowUpInput {
        answerer,
        db: ctx.db.clone(),
        store: ctx.store.clone(),
        workspace_id: at.key.0,
        contact_id: known.contact_id,
        conversation_id: known.conversation_id,
        contact: at.key.1.clone(),
        contact_name: due.due.contact_name.clone(),
        waba_id: account.and_then(|a| a.waba_id.clone()),
        anchor: due.due.anchor,
        key: due.due.key(),
        context: state.agent.context.take(),
    };
    let (at, epoch) = (at.clone(), state.epoch);
    tokio::spawn(async move {
        let report = crate::agent::followup::run(input).await;
        at.send(ConversationMsg::TurnDone(epoch, Box::new(report)));
    });
}

/// Applies one slice: retried with backoff, then parked. Never returns an error: a poison
/// slice hurts only itself. While the database is unreachable no attempt is spent: the slice
/// (and the conversation behind it) waits, in order, until the database answers again, rather
/// than filling the dead-letter queue with events that have nothing wrong with them.
async fn apply(ctx: &Ctx, set: ChangeSet, slice: &Slice) -> Option<Applied> {
    let processing = &ctx.processing;
    let max = processing.max_attempts;
    let mut attempt = 0;
    let mut waits = 0u32;
    let last_error = loop {
        let result = match injected_failure(slice)
            .and_then(|()| injected_panic(slice))
            .and_then(|()| injected_outage(slice))
        {
            Err(e) => Err(e),
            Ok(()) => ctx.store.apply(set.clone()).await,
        };
        let error = match result {
            Ok(applied) => {
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
                return Some(applied);
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
            ctx.store.bump();
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
    // Parked, then counted finished: the event is never marked processed (the DLQ owns it).
    slice.share.park();
    match ctx.dead_letter() {
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
    None
}

fn change_set(ctx: &Ctx, known: Option<Known>, slice: &Slice) -> ChangeSet {
    // Only an account with an agent needs to hear which messages are new.
    let report = ctx
        .directory()
        .get(&slice.phone_number_id)
        .is_some_and(|a| a.agent_type.is_some());
    let mut set = ChangeSet::of_event(
        slice.share.clone(),
        report,
        slice.key.0,
        slice.key.1.clone(),
        known,
        slice.correlation_id.clone(),
    );
    set.user_id = slice.user_id.clone();
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
            ItemKind::Amendment(a) => set.amendments.push(a.clone()),
            ItemKind::IdentityChange(c) => set.identity.push(c.clone()),
            ItemKind::Lifecycle(l) => set.intents.push(Intent::Lifecycle(*l)),
            ItemKind::ExternalId(id) => set.external_id = Some(id.clone()),
            ItemKind::MarketingPreference { opt_out, at } => {
                if set.marketing.is_none_or(|(_, newest)| *at >= newest) {
                    set.marketing = Some((*opt_out, *at));
                }
            }
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
