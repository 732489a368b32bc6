//! The router: normalises each committed event, splits it into per-conversation slices, and
//! hands them to the live conversations it owns (the only place they come to life, so two
//! webhooks for a new phone cannot race), held as plain state by a fixed set of lanes
//! (`lane.rs`; a conversation's lane is its key's hash). It keeps every slice in flight
//! until its conversation reports it done, so a conversation that stops with work queued, or
//! whose lane fails, comes back to life and is fed the same slices again: nothing in a dead
//! mailbox is lost.
//!
//! On start it re-dispatches every `pending` inbox event, oldest first, before any new event
//! (those wait in its mailbox): crash recovery.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Weak, atomic::Ordering},
    time::{Duration, Instant},
};

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::{
    Ctx,
    delivery::{self, Delivery, Done},
    lane::Lane,
    messages::{
        ConversationKey, ConversationMsg, DeadLetterMsg, LaneMsg, Resume, RouterMsg, Slice,
    },
    write,
};
use crate::{
    agent::turn::Inbound,
    ingest::{
        self,
        event::{ContactKey, ConversationState, Item, ItemKind, Lifecycle},
    },
    metrics as m,
    store::{
        change::{Known, Ticket},
        contacts, conversations, dlq, inbox, messages, outbound,
    },
};

pub struct Router;

struct Conv {
    /// This life's number (work for an earlier one is dropped by the lane).
    inc: u64,
    in_flight: VecDeque<Arc<Slice>>,
    /// When work last went to it (the least recently used idle ones are evicted first).
    last_used: Instant,
}

pub struct RouterState {
    ctx: Arc<Ctx>,
    conversations: HashMap<ConversationKey, Conv>,
    /// The lanes holding the live conversations' state.
    lanes: Vec<ActorRef<LaneMsg>>,
    /// The next conversation life's number.
    next_inc: u64,
    /// The tickets of the events dispatched (per partition, in cluster mode), to know a copy
    /// of one still in flight; the ticket alone decides when an event is done, and a finished
    /// one is dropped here when the map is next pruned.
    events: HashMap<(i64, u32), Weak<Ticket>>,
    /// How many `events` were left at the last pruning.
    events_pruned_at: usize,
    /// Events a restarted router's recovery dispatched while the intake kept handing events
    /// over: their copies in the mailbox are skipped.
    recovered: HashSet<i64>,
    /// Slices handed to conversation actors and not yet done (their mailboxes, summed).
    queued: usize,
    /// Actors asked to stop for room (`actors.max_live`), and when.
    evicting: HashMap<ConversationKey, Instant>,
    /// The contact key each recently dispatched (workspace, user id) came with under a phone:
    /// a message naming the user id alone goes to the same conversation even before that
    /// contact is stored. Bounded: cleared past [`USER_KEYS_MAX`] (the database answers).
    user_keys: HashMap<(i64, String), ContactKey>,
}

const USER_KEYS_MAX: usize = 100_000;

impl Actor for Router {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = Arc<Ctx>;

    async fn pre_start(
        &self,
        myself: ActorRef<RouterMsg>,
        ctx: Arc<Ctx>,
    ) -> Result<RouterState, ActorProcessingErr> {
        let mut lanes = Vec::with_capacity(LANES);
        for _ in 0..LANES {
            lanes.push(spawn_lane(&myself, &ctx).await?);
        }
        // Take the inbox's hand-over before recovery reads it, so no event falls between.
        write(&ctx.router, Some(myself));
        Ok(RouterState {
            ctx,
            conversations: HashMap::new(),
            lanes,
            next_inc: 0,
            events: HashMap::new(),
            events_pruned_at: 0,
            recovered: HashSet::new(),
            queued: 0,
            evicting: HashMap::new(),
            user_keys: HashMap::new(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<RouterMsg>,
        state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        state.ctx.in_flight.store(0, Ordering::Relaxed);
        // At first start the intake waits for this recovery; after a router restart it is
        // already running, so the same event may also be in the mailbox.
        let concurrent_intake = state.ctx.serving.load(Ordering::Acquire);
        let reset = dlq::reset_retrying(&state.ctx.db).await?;
        let mut after = None;
        let mut recovered = 0usize;
        // Fed by its own inbox, the node re-reads what is pending there (a broker's feed
        // brings back its unacknowledged deliveries by itself).
        while state.ctx.feed.resumes_at_start() {
            let page = inbox::pending_page(&state.ctx.db, after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = Some((last.received_at, last.id));
            for event in page {
                recovered += 1;
                if concurrent_intake {
                    state.recovered.insert(event.id);
                }
                dispatch(state, event, None).await?;
            }
        }
        let _ = state.ctx.recovered.send(true);
        // Bursts a stopped process gathered and never answered get their turn now (aside:
        // serving does not wait for it). Not on a broker's feed: every node would resume every
        // conversation, beside its owner; there they wait for the conversation's next message.
        if state.ctx.feed.resumes_at_start() {
            tokio::spawn(resume_unanswered(
                state.ctx.clone(),
                myself.clone(),
                chrono::Utc::now(),
            ));
        }
        if recovered > 0 || reset > 0 {
            tracing::info!(
                recovered,
                dlq_reset = reset,
                "re-dispatched unprocessed inbox events"
            );
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<RouterMsg>,
        _state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        // A restarted router starts from the inbox; the old actors must not keep writing.
        myself.stop_children(None);
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<RouterMsg>,
        msg: RouterMsg,
        state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::Dispatch(event) => take(state, event, None).await?,
            RouterMsg::Deliver(delivered) => {
                let (event, delivery) = *delivered;
                take(state, event, Some(delivery)).await?;
            }
            RouterMsg::Resume(key, resume) => {
                let inc = live(state, &key);
                send(state, key, inc, ConversationMsg::Resume(resume));
            }
            RouterMsg::FollowUp(key, due) => {
                let inc = live(state, &key);
                send(state, key, inc, ConversationMsg::FollowUp(due));
            }
            RouterMsg::Stopped(stopped) => {
                for (key, inc) in stopped {
                    stopped_one(state, key, inc);
                }
                super::lane::shrink(&mut state.conversations);
                metrics::gauge!(m::LIVE_CONVERSATIONS).set(state.conversations.len() as f64);
                state.ctx.store.bump();
            }
            RouterMsg::SliceDone { key, event_id } => {
                if let Some(conv) = state.conversations.get_mut(&key)
                    && let Some(pos) = conv.in_flight.iter().position(|s| s.event_id == event_id)
                {
                    conv.in_flight.remove(pos);
                    state.queued = state.queued.saturating_sub(1);
                    metrics::gauge!(m::MAILBOX_DEPTH).set(state.queued as f64);
                }
                // Over the bound because every actor was busy when the last ones started:
                // room is made as soon as some are idle again.
                make_room(state, 0);
            }
            RouterMsg::LiveConversations(reply) => {
                let _ = reply.send(state.conversations.len());
            }
            RouterMsg::Stuck(older_than, reply) => {
                let cutoff = chrono::Utc::now()
                    - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
                let stuck = state
                    .conversations
                    .values()
                    .filter(|c| c.in_flight.front().is_some_and(|s| s.received_at < cutoff))
                    .count();
                let _ = reply.send(stuck);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RouterMsg>,
        event: SupervisionEvent,
        state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        let Some(lane) = state.lanes.iter().position(|l| l.get_id() == cell.get_id()) else {
            return Ok(());
        };
        // A lane failed: its conversations' state died with it. Those with work in flight
        // come back to life in the new lane with the same slices; the rest are forgotten.
        metrics::counter!(m::ACTOR_RESTARTS, "actor" => "conversation").increment(1);
        let keys: Vec<ConversationKey> = state
            .conversations
            .keys()
            .filter(|k| lane_of(k, state.lanes.len()) == lane)
            .cloned()
            .collect();
        tracing::error!(error = %failure, conversations = keys.len(), "a conversation lane failed; restarting it");
        state.lanes[lane] = spawn_lane(&myself, &state.ctx).await?;
        for key in keys {
            let inc = state.conversations.get(&key).map_or(0, |c| c.inc);
            stopped_one(state, key, inc);
        }
        metrics::gauge!(m::LIVE_CONVERSATIONS).set(state.conversations.len() as f64);
        state.ctx.store.bump();
        Ok(())
    }
}

/// How many lanes hold the live conversations: enough that one lane's turn at the CPU holds
/// up few others, few enough that each one's sweep covers many conversations.
const LANES: usize = 16;

async fn spawn_lane(
    myself: &ActorRef<RouterMsg>,
    ctx: &Arc<Ctx>,
) -> Result<ActorRef<LaneMsg>, ActorProcessingErr> {
    let (lane, _) =
        Actor::spawn_linked(None, Lane, (ctx.clone(), myself.clone()), myself.get_cell()).await?;
    Ok(lane)
}

/// The lane a conversation lives in.
fn lane_of(key: &ConversationKey, lanes: usize) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    (BuildHasherDefault::<DefaultHasher>::default().hash_one(key) % lanes as u64) as usize
}

fn send(state: &RouterState, key: ConversationKey, inc: u64, msg: ConversationMsg) {
    let lane = &state.lanes[lane_of(&key, state.lanes.len())];
    // A lane that is gone is restarting: its supervision event hands the work again.
    let _ = lane.cast(LaneMsg::To(key, inc, msg));
}

/// A new life of a conversation in its lane: its number.
fn start(state: &mut RouterState, key: &ConversationKey) -> u64 {
    state.next_inc += 1;
    let inc = state.next_inc;
    let lane = &state.lanes[lane_of(key, state.lanes.len())];
    let _ = lane.cast(LaneMsg::Start(key.clone(), inc));
    inc
}

/// The conversation's live incarnation, brought to life if it is not live.
fn live(state: &mut RouterState, key: &ConversationKey) -> u64 {
    if let Some(conv) = state.conversations.get_mut(key) {
        conv.last_used = Instant::now();
        return conv.inc;
    }
    make_room(state, 1);
    let inc = start(state, key);
    state.conversations.insert(
        key.clone(),
        Conv {
            inc,
            in_flight: VecDeque::new(),
            last_used: Instant::now(),
        },
    );
    metrics::gauge!(m::LIVE_CONVERSATIONS).set(state.conversations.len() as f64);
    inc
}

/// A lane stopped life `inc` of a conversation (idle, evicted, or the lane failed): it is
/// forgotten, or — stopped just as work arrived — brought back with the same slices.
fn stopped_one(state: &mut RouterState, key: ConversationKey, inc: u64) {
    if state.conversations.get(&key).is_none_or(|c| c.inc != inc) {
        return;
    }
    state.evicting.remove(&key);
    let Some(conv) = state.conversations.remove(&key) else {
        return;
    };
    if conv.in_flight.is_empty() {
        return;
    }
    let inc = start(state, &key);
    for slice in &conv.in_flight {
        slice.delivered();
        send(
            state,
            key.clone(),
            inc,
            ConversationMsg::Apply(slice.clone()),
        );
    }
    state.conversations.insert(
        key,
        Conv {
            inc,
            in_flight: conv.in_flight,
            last_used: Instant::now(),
        },
    );
}

/// An event handed over (by the inbox, a re-drive, a replay or the broker): dispatched, unless
/// a copy of it is already in flight (recovery, the inbox settling a commit whose answer was
/// lost, a broker delivering again).
async fn take(
    state: &mut RouterState,
    event: inbox::CommittedEvent,
    delivery: Option<Delivery>,
) -> Result<(), ActorProcessingErr> {
    let in_flight = state
        .events
        .get(&(event.id, delivery::partition(delivery.as_ref())))
        .and_then(Weak::upgrade)
        .filter(|t| !t.is_done());
    let recovered = !event.redrive && state.recovered.remove(&event.id);
    match in_flight.filter(|_| !event.redrive) {
        None if !recovered => dispatch(state, event, delivery).await?,
        None => {}
        Some(ticket) => {
            // Delivered again while in flight (its channel broke): the new delivery is the
            // one to acknowledge.
            if let Some(d) = delivery {
                ticket.then(when_done(&state.ctx, Some(d.done)));
            }
        }
    }
    Ok(())
}

async fn dispatch(
    state: &mut RouterState,
    mut event: inbox::CommittedEvent,
    delivery: Option<Delivery>,
) -> Result<(), ActorProcessingErr> {
    injected_panic(&event);
    let ctx = state.ctx.clone();
    let primary = delivery.as_ref().is_none_or(|p| p.primary);
    let directory = ctx.directory();
    // Only inside the tenant whose secret verified the event: a number it names outside that
    // tenant is reported and never applied. An event straight from a request carries the
    // intake's reading of it (made within the same tenant); any other is read from its payload.
    let reading = match event.normalized.take() {
        Some(r) => Arc::unwrap_or_clone(r),
        None => {
            ctx.reads.processing();
            event.read_payload(&directory)
        }
    };
    let mut normalized = match reading {
        Ok(n) => n,
        Err(error) => {
            // Malformed: no retry can fix the payload; it is kept and reported in the DLQ.
            if primary {
                tracing::warn!(correlation_id = %event.correlation_id, event_id = event.id, %error, "payload cannot be normalised; parking it");
                park(&ctx, &event, error).await;
            }
            finish_delivery(delivery.as_ref());
            return Ok(());
        }
    };
    if let Some(p) = &delivery {
        // This delivery carries one partition's conversations; the other partitions' nodes
        // apply the rest.
        normalized
            .items
            .retain(|i| ingest::partition_of(i.workspace_id, &i.contact, p.of) == p.partition);
        if !p.primary {
            normalized.orphan_statuses.clear();
            normalized.handoffs.clear();
            normalized.templates.clear();
            normalized.unattributed.clear();
            normalized.notes.clear();
        }
    }
    attribute_orphan_statuses(&ctx, &mut normalized).await;
    resolve_users(&ctx, &mut state.user_keys, &mut normalized).await;
    attribute_handoffs(&ctx, &event, &mut normalized).await;
    apply_templates(&ctx, &event, &mut normalized).await;
    report_notes(&ctx, &event, &normalized);
    // Something in the event belongs to no conversation: what can be applied is, but the
    // event is never `processed`; the DLQ keeps it with the reason (and the raw payload).
    let unattributed = !normalized.unattributed.is_empty();
    if unattributed {
        let error = format!(
            "cannot be attributed to a conversation: {}",
            normalized.unattributed.join("; ")
        );
        tracing::warn!(correlation_id = %event.correlation_id, event_id = event.id, %error, "parking the event");
        park(&ctx, &event, error).await;
    }

    // Group by conversation, keeping payload order within each and first-seen order across.
    let mut slices: Vec<(ConversationKey, Option<String>, String, Vec<ItemKind>)> = Vec::new();
    for item in normalized.items {
        let key = (item.workspace_id, item.contact);
        match slices.iter_mut().find(|(k, ..)| *k == key) {
            Some((_, user_id, _, items)) => {
                if user_id.is_none() {
                    *user_id = item.user_id;
                }
                items.push(item.kind);
            }
            None => slices.push((key, item.user_id, item.phone_number_id, vec![item.kind])),
        }
    }
    if slices.is_empty() {
        if !unattributed {
            ctx.store.complete(event.id, event.redrive).await;
        }
        finish_delivery(delivery.as_ref());
        return Ok(());
    }
    metrics::gauge!(m::MAILBOX_DEPTH).set((state.queued + slices.len()) as f64);
    // The event's one bookkeeper: its shares finish on it, and the last runs `when_done`.
    let ticket = Ticket::new(event.id, slices.len(), event.redrive);
    if unattributed {
        ticket.park();
    }
    ctx.in_flight.fetch_add(1, Ordering::Relaxed);
    metrics::gauge!(m::IN_FLIGHT).set(ctx.in_flight() as f64);
    let part = delivery::partition(delivery.as_ref());
    ticket.then(when_done(&ctx, delivery.map(|d| d.done)));
    remember(state, (event.id, part), &ticket);
    for (index, (key, user_id, phone_number_id, items)) in slices.into_iter().enumerate() {
        let slice = Arc::new(Slice::new(
            &event,
            ticket.share(index),
            key.clone(),
            user_id,
            phone_number_id,
            items,
        ));
        let inc = live(state, &key);
        if let Some(conv) = state.conversations.get_mut(&key) {
            conv.in_flight.push_back(slice.clone());
            state.queued += 1;
        }
        slice.delivered();
        send(state, key, inc, ConversationMsg::Apply(slice));
    }
    Ok(())
}

/// How long an eviction may take before the actor counts as alive again (it was busy with a
/// turn and stayed).
const EVICTION_GRACE: Duration = Duration::from_secs(2);

/// Keeps the live actors within `actors.max_live` once `incoming` more start (1 before a
/// spawn, 0 after a slice finishes): past the bound, the least recently used tenth of the idle
/// ones (no slice in flight) is asked to stop — at least as many as are over it. One scan
/// serves many spawns; an actor busy with an agent turn stays, and another goes next time.
fn make_room(state: &mut RouterState, incoming: usize) {
    let max = state.ctx.actors.max_live;
    if max == 0 {
        return;
    }
    state
        .evicting
        .retain(|_, asked| asked.elapsed() < EVICTION_GRACE);
    let over = (state.conversations.len() + incoming)
        .saturating_sub(state.evicting.len())
        .saturating_sub(max);
    if over == 0 {
        return;
    }
    let mut idle: Vec<(Instant, &ConversationKey, &Conv)> = state
        .conversations
        .iter()
        .filter(|(k, c)| c.in_flight.is_empty() && !state.evicting.contains_key(*k))
        .map(|(k, c)| (c.last_used, k, c))
        .collect();
    let batch = (max / 10).max(over).clamp(1, idle.len().max(1));
    if idle.len() > batch {
        idle.select_nth_unstable_by_key(batch, |(at, ..)| *at);
        idle.truncate(batch);
    }
    let now = Instant::now();
    let asked: Vec<(ConversationKey, u64)> = idle
        .into_iter()
        .map(|(_, key, conv)| (key.clone(), conv.inc))
        .collect();
    for (key, inc) in &asked {
        let lane = &state.lanes[lane_of(key, state.lanes.len())];
        let _ = lane.cast(LaneMsg::Evict(key.clone(), *inc));
    }
    metrics::counter!(m::ACTORS_EVICTED).increment(asked.len() as u64);
    for (key, _) in asked {
        state.evicting.insert(key, now);
    }
}

/// Finds inbound messages (of the last 24 hours, to numbers with an agent) that no turn has
/// answered and hands them to their conversations as bursts.
async fn resume_unanswered(
    ctx: Arc<Ctx>,
    router: ActorRef<RouterMsg>,
    started: chrono::DateTime<chrono::Utc>,
) {
    if ctx.agents.names().next().is_none() {
        return;
    }
    // Only what was stored before this router started: anything later reached its
    // conversation the live way, and would otherwise join its burst twice.
    let now = chrono::Utc::now();
    let since = now - chrono::Duration::hours(24);
    let rows = match outbound::unanswered(&ctx.db, since, started).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look for unanswered messages; they wait for the next message");
            return;
        }
    };
    let mut conversations = 0;
    let mut rows = rows.into_iter().peekable();
    while let Some(first) = rows.next() {
        let mut burst = vec![Inbound {
            message: first.message,
            event_id: first.event_id,
        }];
        while let Some(next) = rows.next_if(|r| r.conversation_id == first.conversation_id) {
            burst.push(Inbound {
                message: next.message,
                event_id: next.event_id,
            });
        }
        conversations += 1;
        let key = (first.workspace_id, ContactKey::stored(first.contact));
        let resume = Resume {
            state: ConversationState::parse(&first.state).unwrap_or(ConversationState::Open),
            phone_number_id: first.phone_number_id,
            known: Known {
                contact_id: first.contact_id,
                conversation_id: first.conversation_id,
            },
            burst,
        };
        let _ = router.cast(RouterMsg::Resume(key, Box::new(resume)));
    }
    if conversations > 0 {
        tracing::info!(
            conversations,
            "unanswered messages handed to the agent after a restart"
        );
    }
}

/// Parks the whole event in the dead-letter queue; change sets of it still to commit apply
/// but never mark it processed.
async fn park(ctx: &Ctx, event: &inbox::CommittedEvent, error: String) {
    if let Some(dl) = ctx.dead_letter() {
        let _ = dl.cast(DeadLetterMsg::Park {
            event_id: event.id,
            correlation_id: event.correlation_id.clone(),
            error,
            attempts: 1,
        });
    }
}

/// A status that names no recipient belongs to the conversation of its message: one of the
/// same event, else the stored one with its wamid; one that matches neither cannot be
/// attributed (yet: the DLQ retries).
async fn attribute_orphan_statuses(ctx: &Ctx, normalized: &mut ingest::Normalized) {
    if normalized.orphan_statuses.is_empty() {
        return;
    }
    let mut orphans = std::mem::take(&mut normalized.orphan_statuses);
    // First the messages of the same event: a status may come with the message it is about.
    let in_event: HashMap<(i64, &str), ContactKey> = normalized
        .items
        .iter()
        .filter_map(|i| match &i.kind {
            ItemKind::Message(m) => Some(((i.workspace_id, m.wamid.as_str()), i.contact.clone())),
            _ => None,
        })
        .collect();
    let mut found_here = Vec::new();
    orphans.retain(
        |o| match in_event.get(&(o.workspace_id, o.status.wamid.as_str())) {
            Some(contact) => {
                found_here.push(Item {
                    workspace_id: o.workspace_id,
                    phone_number_id: o.phone_number_id.clone(),
                    contact: contact.clone(),
                    user_id: None,
                    kind: ItemKind::Status(o.status.clone()),
                });
                false
            }
            None => true,
        },
    );
    drop(in_event);
    normalized.items.extend(found_here);
    if orphans.is_empty() {
        return;
    }
    let wamids: Vec<(i64, String)> = orphans
        .iter()
        .map(|o| (o.workspace_id, o.status.wamid.clone()))
        .collect();
    let found = match messages::contacts_of(&ctx.db, &wamids).await {
        Ok(found) => found,
        Err(e) => {
            normalized.unattributed.push(format!(
                "statuses without a recipient could not be matched to their messages: {e}"
            ));
            return;
        }
    };
    for o in orphans {
        match found.get(&(o.workspace_id, o.status.wamid.clone())) {
            Some(phone) => normalized.items.push(Item {
                workspace_id: o.workspace_id,
                phone_number_id: o.phone_number_id,
                contact: ContactKey::stored(phone.clone()),
                user_id: None,
                kind: ItemKind::Status(o.status),
            }),
            None => normalized.unattributed.push(format!(
                "{} status for {} names no recipient and matches no stored message",
                o.status.status.as_str(),
                o.status.wamid
            )),
        }
    }
}

/// One contact per person: an item naming a user id alone (`bsuid:<id>`) goes to the
/// conversation of the contact that holds the user id under a phone, so both keep one
/// conversation. Items naming a phone with a user id teach `known` the pair.
async fn resolve_users(
    ctx: &Ctx,
    known: &mut HashMap<(i64, String), ContactKey>,
    normalized: &mut ingest::Normalized,
) {
    for item in &normalized.items {
        if let Some(user) = item.user_id.as_deref()
            && item.contact.bsuid().is_none()
            && item.contact.group_id().is_none()
            && !item.contact.as_str().starts_with("raw:")
        {
            if known.len() >= USER_KEYS_MAX {
                known.clear();
            }
            known.insert((item.workspace_id, user.to_owned()), item.contact.clone());
        }
    }
    let mut ask: Vec<(i64, String)> = normalized
        .items
        .iter()
        .filter_map(|i| Some((i.workspace_id, i.contact.bsuid()?.to_owned())))
        .filter(|k| !known.contains_key(k))
        .collect();
    ask.sort();
    ask.dedup();
    if !ask.is_empty() {
        match contacts::keys_of_users(&ctx.db, &ask).await {
            Ok(found) => {
                for (k, phone) in found {
                    known.insert(k, ContactKey::stored(phone));
                }
            }
            // Not fatal: the store links the two when the phone comes with the user id again.
            Err(e) => tracing::warn!(error = %e, "cannot look up contacts by user id"),
        }
    }
    for item in &mut normalized.items {
        let Some(user) = item.contact.bsuid() else {
            continue;
        };
        if let Some(key) = known.get(&(item.workspace_id, user.to_owned())) {
            item.user_id.get_or_insert_with(|| user.to_owned());
            item.contact = key.clone();
        }
    }
}

/// A hand-off names Kapso's conversation id: it goes to the conversation that id was stored
/// with, in the event's workspace; one not known yet waits in the DLQ (re-driven later).
async fn attribute_handoffs(
    ctx: &Ctx,
    event: &inbox::CommittedEvent,
    normalized: &mut ingest::Normalized,
) {
    for external in std::mem::take(&mut normalized.handoffs) {
        let Some(workspace_id) = event.tenant.workspace_id() else {
            normalized.unattributed.push(format!(
                "handoff for Kapso conversation {external} names no project"
            ));
            continue;
        };
        match conversations::contact_of_external(&ctx.db, workspace_id, &external).await {
            Ok(Some(phone)) => normalized.items.push(Item {
                workspace_id,
                phone_number_id: String::new(),
                contact: ContactKey::stored(phone),
                user_id: None,
                kind: ItemKind::Lifecycle(Lifecycle::Handoff),
            }),
            Ok(None) => normalized.unattributed.push(format!(
                "handoff for Kapso conversation {external}, not known yet"
            )),
            Err(e) => normalized.unattributed.push(format!(
                "handoff for Kapso conversation {external} could not be looked up: {e}"
            )),
        }
    }
}

/// Template webhooks name a WhatsApp Business Account: they change the catalog of each
/// workspace whose accounts of that WABA the signer may act on, and nowhere else.
async fn apply_templates(
    ctx: &Ctx,
    event: &inbox::CommittedEvent,
    normalized: &mut ingest::Normalized,
) {
    let updates = std::mem::take(&mut normalized.templates);
    if updates.is_empty() {
        return;
    }
    let directory = ctx.directory();
    for u in updates {
        let accounts: Vec<_> = directory
            .of_waba(&u.waba_id)
            .iter()
            .filter_map(|p| directory.get(p))
            .collect();
        let mut workspaces: Vec<i64> = accounts
            .iter()
            .filter(|a| event.tenant.admits(a.id, a.workspace_id))
            .map(|a| a.workspace_id)
            .collect();
        workspaces.dedup();
        if workspaces.is_empty() {
            if accounts.is_empty() {
                normalized.notes.push(format!(
                    "template update for unknown WhatsApp Business Account {:?} skipped",
                    u.waba_id
                ));
            } else {
                normalized.unattributed.push(format!(
                    "WhatsApp Business Account {:?} belongs to another tenant than the one whose secret signed the event: not applied",
                    u.waba_id
                ));
            }
            continue;
        }
        for ws in workspaces {
            match crate::store::templates::apply_update(&ctx.db, ws, &u).await {
                Ok(true) => {
                    tracing::info!(correlation_id = %event.correlation_id, waba_id = %u.waba_id, template = ?u.name, change = ?u.change, "template catalog updated");
                    metrics::counter!(m::TEMPLATE_UPDATES, "outcome" => "applied").increment(1);
                }
                Ok(false) => {
                    metrics::counter!(m::TEMPLATE_UPDATES, "outcome" => "unknown_template")
                        .increment(1);
                    normalized.notes.push(format!(
                        "template update for a template the catalog does not have (id {:?}): run a sync",
                        u.template_id
                    ));
                }
                Err(e) => normalized
                    .unattributed
                    .push(format!("template update could not be stored: {e}")),
            }
        }
    }
}

/// What normalisation said goes to the log, the metrics, the health counts and the event's
/// own row (`webhook_events.notes`, written aside so the router never waits for it).
fn report_notes(ctx: &Ctx, event: &inbox::CommittedEvent, normalized: &ingest::Normalized) {
    if normalized.notes.is_empty() && normalized.unattributed.is_empty() {
        return;
    }
    for note in &normalized.notes {
        tracing::info!(correlation_id = %event.correlation_id, event_id = event.id, note, "payload note");
    }
    metrics::counter!(m::PAYLOAD_NOTES, "kind" => "note").increment(normalized.notes.len() as u64);
    metrics::counter!(m::PAYLOAD_NOTES, "kind" => "unattributed")
        .increment(normalized.unattributed.len() as u64);
    ctx.notes
        .record(normalized.notes.len(), normalized.unattributed.len());
    let lines: Vec<String> = normalized
        .notes
        .iter()
        .cloned()
        .chain(
            normalized
                .unattributed
                .iter()
                .map(|u| format!("unattributed: {u}")),
        )
        .collect();
    let (db, store, event_id) = (ctx.db.clone(), ctx.store.clone(), event.id);
    tokio::spawn(async move {
        if let Err(e) = inbox::record_notes(&db, event_id, &lines).await {
            tracing::warn!(event_id, error = %e, "could not store the event's notes");
        }
        store.bump();
    });
}

/// What an event's ticket runs when its last share is finished: the broker's delivery is
/// acknowledged (cluster mode) and the event leaves the intake's in-flight bound. A ticket of
/// a router that has since restarted (whose count started again from zero) takes nothing off.
fn when_done(ctx: &Arc<Ctx>, delivery: Option<Arc<Done>>) -> impl FnOnce() + Send + 'static {
    let ctx = ctx.clone();
    move || {
        if let Some(done) = delivery {
            done.finish();
        }
        let _ = ctx
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        metrics::gauge!(m::IN_FLIGHT).set(ctx.in_flight() as f64);
    }
}

/// Keeps a weak hold of a dispatched event's ticket; finished ones are dropped once the map
/// has doubled since it was last pruned.
fn remember(state: &mut RouterState, key: (i64, u32), ticket: &Arc<Ticket>) {
    if state.events.len() >= state.events_pruned_at.max(1024) * 2 {
        state
            .events
            .retain(|_, t| t.upgrade().is_some_and(|t| !t.is_done()));
        state.events_pruned_at = state.events.len();
    }
    state.events.insert(key, Arc::downgrade(ticket));
}

/// A delivery with nothing left to apply is finished at once.
fn finish_delivery(delivery: Option<&Delivery>) {
    if let Some(d) = delivery {
        d.done.finish();
    }
}

/// Fault injection for the test suite (`fail` crate): panics the router on an event whose
/// payload contains the point's argument.
#[allow(unused_variables)] // without failpoints the macro expands to nothing
fn injected_panic(event: &inbox::CommittedEvent) {
    fail::fail_point!("router::dispatch", |arg: Option<String>| {
        if arg.is_some_and(|marker| event.payload.contains(&marker)) {
            panic!("injected router panic on event {}", event.id);
        }
    });
}
