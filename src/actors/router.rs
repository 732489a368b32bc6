//! The router: normalises each committed event, splits it into per-conversation slices, and
//! hands them to the conversation actors it owns (the only place they are spawned, so two
//! webhooks for a new phone cannot race). It keeps every slice in flight until its actor
//! reports it done, so a conversation actor that fails or stops with work queued is restarted
//! and fed the same slices again: nothing in a dead mailbox is lost.
//!
//! On start it re-dispatches every `pending` inbox event, oldest first, before any new event
//! (those wait in its mailbox): crash recovery.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::{
    Ctx,
    conversation::Conversation,
    messages::{ConversationKey, ConversationMsg, DeadLetterMsg, Resume, RouterMsg, Slice},
    write,
};
use crate::{
    agent::turn::Inbound,
    ingest::{
        self,
        event::{ContactKey, ConversationState, Item, ItemKind, Lifecycle},
    },
    metrics as m,
    store::{change::Known, contacts, conversations, dlq, inbox, messages, outbound},
};

pub struct Router;

struct Conv {
    actor: ActorRef<ConversationMsg>,
    in_flight: VecDeque<Arc<Slice>>,
    /// When work last went to it (the least recently used idle ones are evicted first).
    last_used: Instant,
}

struct Track {
    left: usize,
    /// The broker's delivery, acknowledged once every slice is finished (cluster mode).
    done: Option<Arc<inbox::Done>>,
}

pub struct RouterState {
    ctx: Arc<Ctx>,
    conversations: HashMap<ConversationKey, Conv>,
    by_actor: HashMap<ActorId, ConversationKey>,
    /// Slices still to finish per event (and partition, in cluster mode).
    events: HashMap<(i64, u32), Track>,
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
        // Take the inbox's hand-over before recovery reads it, so no event falls between.
        write(&ctx.router, Some(myself));
        Ok(RouterState {
            ctx,
            conversations: HashMap::new(),
            by_actor: HashMap::new(),
            events: HashMap::new(),
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
        // In cluster mode the broker holds what is unfinished (unacknowledged deliveries come
        // back) and the sweeper publishes what never reached it: the inbox is not re-read.
        while !state.ctx.cluster {
            let page = inbox::pending_page(&state.ctx.db, after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = Some((last.received_at, last.id));
            for event in page {
                recovered += 1;
                if concurrent_intake {
                    state.recovered.insert(event.id);
                }
                dispatch(&myself, state, event).await?;
            }
        }
        let _ = state.ctx.recovered.send(true);
        // Bursts a stopped process gathered and never answered get their turn now (aside:
        // serving does not wait for it). Not in cluster mode: every node would resume every
        // conversation, beside its owner; there they wait for the conversation's next message.
        if !state.ctx.cluster {
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
        myself: ActorRef<RouterMsg>,
        msg: RouterMsg,
        state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::Dispatch(event) => {
                // A copy of an event already in flight (recovery, or the inbox settling a
                // commit whose answer was lost) is not dispatched twice.
                let part = event.partition();
                let already = !event.redrive
                    && (state.recovered.remove(&event.id)
                        || state.events.contains_key(&(event.id, part)));
                if !already {
                    dispatch(&myself, state, event).await?;
                } else if let (Some(p), Some(track)) =
                    (event.part, state.events.get_mut(&(event.id, part)))
                {
                    // Delivered again while in flight (its channel broke): the new delivery
                    // is the one to acknowledge.
                    track.done = Some(p.done);
                }
            }
            RouterMsg::Resume(key, resume) => {
                let actor = actor_for(&myself, state, key).await?;
                let _ = actor.cast(ConversationMsg::Resume(resume));
            }
            RouterMsg::FollowUp(key, due) => {
                let actor = actor_for(&myself, state, key).await?;
                let _ = actor.cast(ConversationMsg::FollowUp(due));
            }
            RouterMsg::SliceDone {
                key,
                event_id,
                part,
            } => {
                if let Some(conv) = state.conversations.get_mut(&key)
                    && let Some(pos) = conv.in_flight.iter().position(|s| s.event_id == event_id)
                {
                    conv.in_flight.remove(pos);
                    state.queued = state.queued.saturating_sub(1);
                    metrics::gauge!(m::MAILBOX_DEPTH).set(state.queued as f64);
                }
                finish_slice(state, event_id, part);
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
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            _ => return Ok(()),
        };
        let Some(key) = state.by_actor.remove(&cell.get_id()) else {
            return Ok(());
        };
        state.evicting.remove(&key);
        let Some(conv) = state.conversations.remove(&key) else {
            return Ok(());
        };
        // A restarted router stops its children; their queues died with this state.
        if let Some(err) = &failure {
            metrics::counter!(m::ACTOR_RESTARTS, "actor" => "conversation").increment(1);
            let correlation_id = conv.in_flight.front().map(|s| s.correlation_id.clone());
            tracing::error!(error = %err, correlation_id, pending = conv.in_flight.len(), "conversation actor failed; restarting it");
        }
        if conv.in_flight.is_empty() {
            metrics::gauge!(m::LIVE_CONVERSATIONS).set(state.conversations.len() as f64);
            state.ctx.store.bump();
            return Ok(());
        }
        // Failed, or stopped idle just as work arrived: a new actor gets the same slices.
        let actor = spawn_conversation(&myself, state, key.clone()).await?;
        for slice in &conv.in_flight {
            slice.delivered();
            actor.cast(ConversationMsg::Apply(slice.clone()))?;
        }
        state.conversations.insert(
            key,
            Conv {
                actor,
                in_flight: conv.in_flight,
                last_used: Instant::now(),
            },
        );
        Ok(())
    }
}

/// The conversation's live actor, started if it is not alive.
async fn actor_for(
    myself: &ActorRef<RouterMsg>,
    state: &mut RouterState,
    key: ConversationKey,
) -> Result<ActorRef<ConversationMsg>, ActorProcessingErr> {
    if let Some(conv) = state.conversations.get_mut(&key) {
        conv.last_used = Instant::now();
        return Ok(conv.actor.clone());
    }
    make_room(state, 1);
    let actor = spawn_conversation(myself, state, key.clone()).await?;
    state.conversations.insert(
        key,
        Conv {
            actor: actor.clone(),
            in_flight: VecDeque::new(),
            last_used: Instant::now(),
        },
    );
    metrics::gauge!(m::LIVE_CONVERSATIONS).set(state.conversations.len() as f64);
    Ok(actor)
}

async fn dispatch(
    myself: &ActorRef<RouterMsg>,
    state: &mut RouterState,
    mut event: inbox::CommittedEvent,
) -> Result<(), ActorProcessingErr> {
    injected_panic(&event);
    let ctx = state.ctx.clone();
    let primary = event.part.as_ref().is_none_or(|p| p.primary);
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
            finish_delivery(&event);
            return Ok(());
        }
    };
    if let Some(p) = &event.part {
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
        finish_delivery(&event);
        return Ok(());
    }
    metrics::gauge!(m::MAILBOX_DEPTH).set((state.queued + slices.len()) as f64);
    if !unattributed {
        ctx.store
            .expect(event.id, slices.len(), event.redrive)
            .await;
    }
    ctx.in_flight.fetch_add(1, Ordering::Relaxed);
    metrics::gauge!(m::IN_FLIGHT).set(ctx.in_flight() as f64);
    state.events.insert(
        (event.id, event.partition()),
        Track {
            left: slices.len(),
            done: event.part.as_ref().map(|p| p.done.clone()),
        },
    );
    for (key, user_id, phone_number_id, items) in slices {
        let slice = Arc::new(Slice::new(
            &event,
            key.clone(),
            user_id,
            phone_number_id,
            items,
        ));
        let actor = match state.conversations.get(&key) {
            Some(conv) => conv.actor.clone(),
            None => {
                make_room(state, 1);
                let actor = spawn_conversation(myself, state, key.clone()).await?;
                state.conversations.insert(
                    key.clone(),
                    Conv {
                        actor: actor.clone(),
                        in_flight: VecDeque::new(),
                        last_used: Instant::now(),
                    },
                );
                metrics::gauge!(m::LIVE_CONVERSATIONS).set(state.conversations.len() as f64);
                actor
            }
        };
        if let Some(conv) = state.conversations.get_mut(&key) {
            conv.in_flight.push_back(slice.clone());
            conv.last_used = Instant::now();
            state.queued += 1;
        }
        slice.delivered();
        // A failed cast means the actor is already gone; its supervision event re-sends.
        let _ = actor.cast(ConversationMsg::Apply(slice));
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
    let mut asked = Vec::with_capacity(idle.len());
    for (_, key, conv) in idle {
        if conv.actor.cast(ConversationMsg::Evict).is_ok() {
            asked.push(key.clone());
        }
    }
    metrics::counter!(m::ACTORS_EVICTED).increment(asked.len() as u64);
    for key in asked {
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
    ctx.store.abandon(event.id).await;
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

async fn spawn_conversation(
    myself: &ActorRef<RouterMsg>,
    state: &mut RouterState,
    key: ConversationKey,
) -> Result<ActorRef<ConversationMsg>, ActorProcessingErr> {
    let (actor, _) = Actor::spawn_linked(
        None,
        Conversation,
        (state.ctx.clone(), key.clone(), myself.clone()),
        myself.get_cell(),
    )
    .await?;
    state.by_actor.insert(actor.get_id(), key);
    Ok(actor)
}

fn finish_slice(state: &mut RouterState, event_id: i64, part: u32) {
    let Some(track) = state.events.get_mut(&(event_id, part)) else {
        return;
    };
    track.left -= 1;
    if track.left > 0 {
        return;
    }
    if let Some(done) = state.events.remove(&(event_id, part)).and_then(|t| t.done) {
        done.finish();
    }
    state.ctx.in_flight.fetch_sub(1, Ordering::Relaxed);
    metrics::gauge!(m::IN_FLIGHT).set(state.ctx.in_flight() as f64);
}

/// A delivery with nothing left to apply is finished at once.
fn finish_delivery(event: &inbox::CommittedEvent) {
    if let Some(p) = &event.part {
        p.done.finish();
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
