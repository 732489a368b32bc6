//! Every actor's message enum, in one place.

use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering},
};

use chrono::{DateTime, Utc};
use ractor::RpcReplyPort;

use crate::{
    ingest::event::{ContactKey, ItemKind},
    store::{change::Share, inbox::CommittedEvent},
};

/// A conversation: its workspace and who it is with.
pub type ConversationKey = (i64, ContactKey);

/// One conversation's share of one inbox event, in payload order.
#[derive(Debug)]
pub struct Slice {
    pub event_id: i64,
    /// Its share of the event's completion.
    pub share: Share,
    pub correlation_id: String,
    pub received_at: DateTime<Utc>,
    pub key: ConversationKey,
    pub user_id: Option<String>,
    /// The business number the event concerns.
    pub phone_number_id: String,
    pub items: Vec<ItemKind>,
    /// How often the router has handed this slice to an actor (more than once after the
    /// actor failed or stopped with it queued).
    deliveries: AtomicU32,
}

impl Slice {
    pub fn new(
        event: &CommittedEvent,
        share: Share,
        key: ConversationKey,
        user_id: Option<String>,
        phone_number_id: String,
        items: Vec<ItemKind>,
    ) -> Self {
        Self {
            event_id: event.id,
            share,
            correlation_id: event.correlation_id.clone(),
            received_at: event.received_at,
            key,
            user_id,
            phone_number_id,
            items,
            deliveries: AtomicU32::new(0),
        }
    }

    pub fn delivered(&self) -> u32 {
        self.deliveries.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn deliveries(&self) -> u32 {
        self.deliveries.load(Ordering::Relaxed)
    }
}

/// Inbound messages of one conversation that no agent turn has answered.
#[derive(Debug)]
pub struct Resume {
    pub phone_number_id: String,
    pub known: crate::store::change::Known,
    pub state: crate::ingest::event::ConversationState,
    pub burst: Vec<crate::agent::turn::Inbound>,
}

/// A follow-up found due by the sweep (`actors/followups.rs`).
#[derive(Debug)]
pub struct FollowUpDue {
    pub phone_number_id: String,
    pub known: crate::store::change::Known,
    pub due: crate::store::followups::Due,
}

pub enum RootMsg {}

pub enum RouterMsg {
    /// A committed inbox event to process.
    Dispatch(CommittedEvent),
    /// A broker delivery of a committed event (cluster mode): one partition's share of it.
    Deliver(Box<(CommittedEvent, super::delivery::Delivery)>),
    /// Unanswered inbound messages of a conversation with an agent, found at start.
    Resume(ConversationKey, Box<Resume>),
    /// A conversation's follow-up is due.
    FollowUp(ConversationKey, Box<FollowUpDue>),
    /// A conversation finished (applied or parked) a slice.
    SliceDone { key: ConversationKey, event_id: i64 },
    /// Conversations a lane stopped (idle, or evicted), with their incarnations.
    Stopped(Vec<(ConversationKey, u64)>),
    /// How many conversations are live.
    LiveConversations(RpcReplyPort<usize>),
    /// How many conversations have unfinished work acknowledged more than this long ago.
    Stuck(std::time::Duration, RpcReplyPort<usize>),
}

/// A lane's messages (`lane.rs`).
pub enum LaneMsg {
    /// A conversation comes to life under the router's incarnation number: fresh state.
    Start(ConversationKey, u64),
    /// For one incarnation of a conversation (dropped if it has stopped since).
    To(ConversationKey, u64, ConversationMsg),
    /// Stop the conversations idle for `actors.idle_timeout_ms`.
    Sweep,
    /// `actors.max_live` are alive: stop this one now unless something runs or waits.
    Evict(ConversationKey, u64),
}

pub enum ConversationMsg {
    Apply(Arc<Slice>),
    /// A slice's apply task finished: `applied`, or parked in the dead-letter queue (`None`).
    /// `epoch`: the conversation's life the task was started in.
    Applied {
        epoch: u32,
        slice: Arc<Slice>,
        applied: Option<Box<crate::store::change::Applied>>,
    },
    /// A slice's apply task panicked.
    Crashed {
        epoch: u32,
        error: String,
    },
    /// Inbound messages left unanswered by a stopped process: a burst for the agent.
    Resume(Box<Resume>),
    /// The burst's quiet time may be over (the generation it was scheduled for).
    TurnDue(u64),
    /// An agent turn or a follow-up finished (started in the conversation's `epoch`).
    TurnDone(u32, Box<crate::agent::turn::TurnReport>),
    /// The customer has been quiet since our last message: a follow-up is due.
    FollowUp(Box<FollowUpDue>),
}

pub enum DeadLetterMsg {
    /// Park an event that failed `attempts` times.
    Park {
        event_id: i64,
        correlation_id: String,
        error: String,
        attempts: u32,
    },
    /// Re-drive the DLQ rows that are due.
    Tick,
}
