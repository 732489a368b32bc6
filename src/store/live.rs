//! What changed, as it commits: the store's writer announces every change set it committed
//! (a conversation's new or amended messages, delivery statuses, its state) on a broadcast
//! hub, which `GET /api/v1/stream` turns into server-sent events for the workspace. The hub
//! keeps the last [`RECENT`] changes, so a client that reconnects with `Last-Event-ID` gets
//! what it missed, or a `reset` when that is gone (or the process restarted: ids carry the
//! process's boot id). The dead-letter queue announces its rows' changes (parked, re-driven,
//! resolved, discarded) on the same hub. Only this process's changes: in cluster mode each
//! node announces its own.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use tokio::sync::{broadcast, watch};

/// Changes kept for clients that reconnect.
pub const RECENT: usize = 4096;

/// What changed in a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// New, edited, revoked or reacted-to messages.
    Message,
    /// Delivery statuses of its messages.
    Status,
    /// Its state (open, human, closed, …) or another change to it.
    Conversation,
    /// An agent turn ended (sent, skipped, failed).
    Turn,
    /// An event's dead-letter row changed (its id is the event's).
    Dlq,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Message => "message",
            Kind::Status => "status",
            Kind::Conversation => "conversation",
            Kind::Turn => "turn",
            Kind::Dlq => "dlq",
        }
    }

    /// The JSON key of the change's id in a stream event.
    pub fn subject(self) -> &'static str {
        match self {
            Kind::Dlq => "event_id",
            _ => "conversation_id",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Change {
    pub seq: u64,
    pub workspace_id: i64,
    /// The conversation's id, or for [`Kind::Dlq`] the inbox event's.
    pub id: i64,
    pub kind: Kind,
}

struct Inner {
    tx: broadcast::Sender<Arc<Change>>,
    recent: Mutex<(u64, VecDeque<Arc<Change>>)>,
    boot: String,
    closed: watch::Sender<bool>,
}

/// The hub (cheap to clone).
#[derive(Clone)]
pub struct Live(Arc<Inner>);

/// A subscription: what was missed since the client's last id (or `gap`: too much was), then
/// the changes as they come.
pub struct Subscription {
    /// The newest change's sequence number when it began.
    pub head: u64,
    pub missed: Vec<Arc<Change>>,
    pub gap: bool,
    pub rx: broadcast::Receiver<Arc<Change>>,
    pub closed: watch::Receiver<bool>,
}

impl Default for Live {
    fn default() -> Self {
        Self::new()
    }
}

impl Live {
    pub fn new() -> Self {
        Self(Arc::new(Inner {
            tx: broadcast::channel(1024).0,
            recent: Mutex::new((0, VecDeque::with_capacity(RECENT))),
            boot: uuid::Uuid::now_v7().simple().to_string()[..12].to_owned(),
            closed: watch::channel(false).0,
        }))
    }

    /// This process's id in event ids (`<boot>-<seq>`).
    pub fn boot(&self) -> &str {
        &self.0.boot
    }

    pub fn publish(&self, workspace_id: i64, id: i64, kind: Kind) {
        let mut recent = self.0.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.0 += 1;
        let change = Arc::new(Change {
            seq: recent.0,
            workspace_id,
            id,
            kind,
        });
        if recent.1.len() == RECENT {
            recent.1.pop_front();
        }
        recent.1.push_back(change.clone());
        // Sent under the lock: a subscriber's snapshot and its receiver never overlap or miss.
        let _ = self.0.tx.send(change);
    }

    /// A subscription after `last` (the sequence number of the client's last event of this
    /// process), or from now.
    pub fn subscribe(&self, last: Option<u64>) -> Subscription {
        let recent = self.0.recent.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.0.tx.subscribe();
        let (missed, gap) = match last {
            None => (Vec::new(), false),
            Some(last) => {
                let oldest = recent.1.front().map_or(recent.0 + 1, |c| c.seq);
                let missed: Vec<_> = recent.1.iter().filter(|c| c.seq > last).cloned().collect();
                (missed, last.saturating_add(1) < oldest || last > recent.0)
            }
        };
        Subscription {
            head: recent.0,
            missed,
            gap,
            rx,
            closed: self.0.closed.subscribe(),
        }
    }

    /// The process stops: every stream ends.
    pub fn close(&self) {
        let _ = self.0.closed.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_that_comes_back_gets_what_it_missed_or_a_reset() {
        let live = Live::new();
        live.publish(1, 10, Kind::Message);
        live.publish(1, 11, Kind::Status);
        let s = live.subscribe(Some(1));
        assert!(!s.gap);
        assert_eq!(s.missed.iter().map(|c| c.seq).collect::<Vec<_>>(), [2]);
        // From a later process, or from the future: a reset.
        assert!(live.subscribe(Some(99)).gap);
        for i in 0..RECENT as i64 {
            live.publish(1, i, Kind::Message);
        }
        let s = live.subscribe(Some(1));
        assert!(s.gap, "the changes after 1 are no longer all kept");
        assert!(!live.subscribe(Some(3)).gap);
        assert!(live.subscribe(None).missed.is_empty());
    }
}
