//! The actor tree (ractor):
//!
//! ```text
//! root (supervisor: restart budget, then exit loudly)
//! ├── router ── owns which (workspace, contact) are live; the only place they come to life
//! │    └── 16 lanes (restarted by the router), each holding its live conversations as plain
//! │        state: one writer per conversation, its slices applied one after another
//! └── dead-letter actor ── webhook_dlq, retry worker
//! ```
//!
//! The inbox hands every committed event to the router through [`RouterSink`]; conversations
//! write through the batched [`Store`], each slice in a task of its own that awaits its own
//! commit only, so a slow conversation (an AI turn) never holds up the others, the store or
//! the intake.

pub mod conversation;
pub mod dead_letter;
pub mod delivery;
pub mod followups;
pub mod lane;
pub mod messages;
pub mod router;
pub mod supervisor;

use std::sync::{
    Arc, RwLock,
    atomic::{AtomicUsize, Ordering},
};

use ractor::ActorRef;
use sea_orm::DatabaseConnection;
use tokio::sync::watch;

use crate::{
    config::{ActorsConfig, ProcessingConfig},
    store::{
        accounts::Directory,
        batch::Store,
        inbox::{BoxFuture, CommittedEvent, EventSink, HandOver},
    },
};
use messages::{DeadLetterMsg, RouterMsg};

/// What every actor shares.
pub struct Ctx {
    pub db: DatabaseConnection,
    pub store: Store,
    /// Accounts by `phone_number_id`, swapped whole when they change; the intake reads it too.
    pub accounts: RwLock<Arc<Directory>>,
    pub actors: ActorsConfig,
    pub processing: ProcessingConfig,
    /// Events dispatched and not yet finished (bounds the intake).
    pub in_flight: AtomicUsize,
    pub router: RwLock<Option<ActorRef<RouterMsg>>>,
    pub dead_letter: RwLock<Option<ActorRef<DeadLetterMsg>>>,
    /// Set when the root gives up; the process then exits non-zero.
    pub fatal: watch::Sender<Option<String>>,
    /// Set by the router once its start-up recovery has dispatched every pending event.
    pub recovered: watch::Sender<bool>,
    /// Set once the intake hands events over (after the first recovery).
    pub serving: std::sync::atomic::AtomicBool,
    /// What normalisation reported since start (shown by `/health`).
    pub notes: NoteCounts,
    /// How often payloads were read into typed events since start, and by whom (`/health`).
    pub reads: ReadCounts,
    /// The AI agent types and the send side.
    pub agents: Arc<crate::agent::Agents>,
    /// Where this node's events come from.
    pub feed: Feed,
}

/// Where a node's events come from: what it resumes at start, and whose timed work it runs.
pub enum Feed {
    /// Its own inbox (a single node): at start it resumes every unfinished thing — the
    /// inbox's pending events, the bursts a stopped process left unanswered, the job leases
    /// it held — and it runs every conversation's timed work.
    Inbox,
    /// The broker's partition queues (cluster mode): unacknowledged deliveries come back on
    /// their own and the sweeper publishes what never reached the broker, so nothing is
    /// resumed at start (every node would resume everything). Holds the partition count and
    /// the partitions this node consumes (set by the cluster's rebalance): timed work
    /// (follow-ups) runs only for conversations in them.
    Partitions(RwLock<Option<(u32, Arc<Vec<u32>>)>>),
}

impl Feed {
    /// Whether this node alone holds what is unfinished and resumes it at start.
    pub fn resumes_at_start(&self) -> bool {
        matches!(self, Feed::Inbox)
    }

    /// The partitions this node consumes now, of `n` (cluster mode).
    pub fn set_owned(&self, n: u32, owned: Vec<u32>) {
        if let Feed::Partitions(lock) = self {
            write(lock, Some((n, Arc::new(owned))));
        }
    }
}

/// Lines normalisation reported since start: notes (value-level errors, parts stored but not
/// processed) and parts no conversation could be found for (their events went to the DLQ).
#[derive(Default)]
pub struct NoteCounts {
    notes: AtomicUsize,
    unattributed: AtomicUsize,
}

impl NoteCounts {
    pub fn record(&self, notes: usize, unattributed: usize) {
        self.notes.fetch_add(notes, Ordering::Relaxed);
        self.unattributed.fetch_add(unattributed, Ordering::Relaxed);
    }

    /// `(notes, unattributed)`.
    pub fn get(&self) -> (usize, usize) {
        (
            self.notes.load(Ordering::Relaxed),
            self.unattributed.load(Ordering::Relaxed),
        )
    }
}

/// Readings of payloads into typed events since start: by the intake (once per request kept)
/// and by processing (events read back: recovery, re-drives, replays; a broker delivery
/// carries the publishing node's reading).
/// Each also counts in `wahook_payload_reads_total{by}`.
#[derive(Default)]
pub struct ReadCounts {
    intake: AtomicUsize,
    processing: AtomicUsize,
}

impl ReadCounts {
    pub fn intake(&self) {
        self.intake.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::metrics::PAYLOAD_READS, "by" => "intake").increment(1);
    }

    pub fn processing(&self) {
        self.processing.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::metrics::PAYLOAD_READS, "by" => "processing").increment(1);
    }

    /// `(intake, processing)`.
    pub fn get(&self) -> (usize, usize) {
        (
            self.intake.load(Ordering::Relaxed),
            self.processing.load(Ordering::Relaxed),
        )
    }
}

impl Ctx {
    pub fn router(&self) -> Option<ActorRef<RouterMsg>> {
        read(&self.router)
    }

    pub fn dead_letter(&self) -> Option<ActorRef<DeadLetterMsg>> {
        read(&self.dead_letter)
    }

    pub fn directory(&self) -> Arc<Directory> {
        read(&self.accounts)
    }

    /// Whether this node runs the timed work of a conversation: always on a single node; in
    /// cluster mode only for the partitions it consumes.
    pub fn owns(&self, workspace_id: i64, contact: &crate::ingest::event::ContactKey) -> bool {
        match &self.feed {
            Feed::Inbox => true,
            Feed::Partitions(lock) => match read(lock) {
                Some((n, owned)) => {
                    owned.contains(&crate::ingest::partition_of(workspace_id, contact, n))
                }
                None => false,
            },
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

pub(crate) fn read<T: Clone>(lock: &RwLock<T>) -> T {
    match lock.read() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

pub(crate) fn write<T>(lock: &RwLock<T>, value: T) {
    match lock.write() {
        Ok(mut g) => *g = value,
        Err(p) => *p.into_inner() = value,
    }
}

/// The inbox's hand-over to processing on a single node: a cast to the router per event,
/// never an await.
pub struct RouterSink(pub Arc<Ctx>);

impl EventSink for RouterSink {
    fn hand_over(&self, events: Vec<CommittedEvent>) -> BoxFuture<'_, HandOver> {
        // While the router restarts there is no one to tell: the events stay `pending` in
        // the inbox, and the new router's recovery dispatches them.
        if let Some(router) = self.0.router() {
            for event in events {
                let _ = router.cast(RouterMsg::Dispatch(event));
            }
        }
        Box::pin(std::future::ready(HandOver::Taken))
    }
}
