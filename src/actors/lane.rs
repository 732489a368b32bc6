//! A lane: one actor holding many conversations as plain state (a conversation is its key,
//! a few ids and its agent's burst — a few hundred bytes — not an actor of its own, whose
//! mailboxes and task cost 7.5 KB each; issue 30). The router owns which conversations are
//! live and hands each one's work to the lane its key hashes to, under the conversation's
//! *incarnation* (a number the router gives it each time it comes to life), so work sent to
//! one that has since stopped is dropped here and handed again by the router.
//!
//! One writer per conversation still: a lane applies a conversation's slices strictly one
//! after another, in the order the router sent them, each in a task of its own (so a slow
//! store round trip of one conversation holds up no other in the lane); the task reports back
//! as a message. A panic while applying a slice "restarts" the conversation: its state is
//! dropped and its slices are applied again from the panicking one on, as a restarted
//! actor's would be.
//!
//! Idle conversations are found by one sweep per lane (not a timer per conversation) and
//! reported stopped to the router, which forgets them (or, if work raced in, brings them back
//! under a new incarnation).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::{
    Ctx,
    conversation::{self, Address, Conversation},
    messages::{ConversationKey, LaneMsg, RouterMsg},
};

pub struct Lane;

pub struct LaneState {
    ctx: Arc<Ctx>,
    router: ActorRef<RouterMsg>,
    conversations: HashMap<ConversationKey, Conversation>,
    idle: Duration,
}

impl Actor for Lane {
    type Msg = LaneMsg;
    type State = LaneState;
    type Arguments = (Arc<Ctx>, ActorRef<RouterMsg>);

    async fn pre_start(
        &self,
        myself: ActorRef<LaneMsg>,
        (ctx, router): Self::Arguments,
    ) -> Result<LaneState, ActorProcessingErr> {
        let idle = Duration::from_millis(ctx.actors.idle_timeout_ms);
        // Often enough that a conversation stops within a quarter of its idle time of it.
        let every = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
        myself.send_interval(every, || LaneMsg::Sweep);
        Ok(LaneState {
            ctx,
            router,
            conversations: HashMap::new(),
            idle,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<LaneMsg>,
        msg: LaneMsg,
        state: &mut LaneState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            LaneMsg::Start(key, inc) => {
                state.conversations.insert(key, Conversation::new(inc));
            }
            LaneMsg::To(key, inc, msg) => {
                let Some(conv) = state.conversations.get_mut(&key) else {
                    // Stopped since (idle, evicted): the router hands its work again.
                    return Ok(());
                };
                if conv.inc != inc {
                    return Ok(());
                }
                let at = Address {
                    lane: myself,
                    key,
                    inc,
                };
                conversation::handle(&state.ctx, &state.router, &at, conv, msg);
            }
            LaneMsg::Sweep => sweep(state),
            LaneMsg::Evict(key, inc) => {
                if state
                    .conversations
                    .get(&key)
                    .is_some_and(|c| c.inc == inc && !c.busy())
                {
                    state.conversations.remove(&key);
                    let _ = state.router.cast(RouterMsg::Stopped(vec![(key, inc)]));
                }
            }
        }
        Ok(())
    }
}

/// Conversations quiet for the idle time with nothing running stop; the router hears which.
fn sweep(state: &mut LaneState) {
    let now = Instant::now();
    let idle = state.idle;
    let mut stopped = Vec::new();
    state.conversations.retain(|key, conv| {
        let stop = !conv.busy() && now.duration_since(conv.last_active) >= idle;
        if stop {
            stopped.push((key.clone(), conv.inc));
        }
        !stop
    });
    if !stopped.is_empty() {
        let _ = state.router.cast(RouterMsg::Stopped(stopped));
        shrink(&mut state.conversations);
    }
}

/// A map that held many more conversations than it does now gives the room back (a burst of
/// senders leaves no lasting weight once its conversations stop).
pub fn shrink<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 1024 && map.len() < map.capacity() / 4 {
        map.shrink_to_fit();
    }
}
