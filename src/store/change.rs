//! What the store applies: a change set — one conversation's share of an inbox event, or a
//! change of ours (a reply, a send, an operator's state) — where it comes from ([`Origin`]),
//! and what applying it gives back ([`Applied`] or [`ApplyError`]). The store's step files
//! (`contacts.rs`, `messages.rs`, …) read these types; `batch.rs` commits them.

use std::sync::{Arc, Mutex};

use sea_orm::DbErr;

use crate::ingest::event::{
    Amendment, ContactKey, ConversationState, IdentityChange, Intent, MessageItem, StatusItem,
};

/// Where a change set comes from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A share of an inbox event (taken from the inbox, re-driven from the dead-letter queue,
    /// or delivered by the broker), naming the event's [`Ticket`]: the store marks the event
    /// processed in the transaction that commits its last share. `report`: the set's newly
    /// stored inbound messages are handed back (the number has an agent that answers them).
    Event { share: Share, report: bool },
    /// Ours — the agent's reply (`answers`: the inbox event it answers), an operator's or
    /// another system's send, a follow-up, a template, a state an operator set: it finishes
    /// no event.
    Ours { answers: Option<i64> },
}

impl Origin {
    /// The inbox event the set's rows name (`messages.event_id`, …), if any.
    pub fn event_id(&self) -> Option<i64> {
        match self {
            Origin::Event { share, .. } => Some(share.ticket.event_id),
            Origin::Ours { answers } => *answers,
        }
    }

    /// The share of an inbox event this set is, which it finishes with the others.
    pub fn share(&self) -> Option<&Share> {
        match self {
            Origin::Event { share, .. } => Some(share),
            Origin::Ours { .. } => None,
        }
    }

    /// Whether the store hands back the set's newly stored inbound messages.
    pub fn reports(&self) -> bool {
        matches!(self, Origin::Event { report: true, .. })
    }
}

/// One dispatched event's completion: the router makes it with the number of shares the event
/// was split into (one per conversation) and hands each conversation its [`Share`]; the store
/// finishes a share when it commits it, a conversation when it parks it in the dead-letter
/// queue. Nothing else counts, and a share finished twice (applied again after its lane
/// failed) counts once: when every share is finished, the ticket runs what the router gave it
/// (the broker's acknowledgement, the in-flight bound). An event is marked `processed` — in
/// the transaction of its last share — only if no share was parked.
pub struct Ticket {
    pub event_id: i64,
    /// Re-driven from the dead-letter queue: its DLQ row resolves with it.
    pub redrive: bool,
    shares: Mutex<Shares>,
    then: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

struct Shares {
    finished: Vec<bool>,
    left: usize,
    parked: bool,
}

/// One conversation's share of an event: its ticket and its place in it.
#[derive(Debug, Clone)]
pub struct Share {
    pub ticket: Arc<Ticket>,
    pub index: usize,
}

impl Share {
    /// Parked in the dead-letter queue (which owns the event until a re-drive dispatches it
    /// afresh): finished, and the event is never marked processed.
    pub fn park(&self) {
        self.ticket.lock().parked = true;
        self.ticket.finish(&[self.index]);
    }
}

impl Ticket {
    pub fn new(event_id: i64, shares: usize, redrive: bool) -> Arc<Self> {
        Arc::new(Self {
            event_id,
            redrive,
            shares: Mutex::new(Shares {
                finished: vec![false; shares],
                left: shares,
                parked: false,
            }),
            then: Mutex::new(None),
        })
    }

    /// Share `index` of this ticket.
    pub fn share(self: &Arc<Self>, index: usize) -> Share {
        Share {
            ticket: self.clone(),
            index,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shares> {
        self.shares.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What to run once every share is finished (replacing what was set before).
    pub fn then(&self, f: impl FnOnce() + Send + 'static) {
        *self.then.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(f));
    }

    /// Part of the event could not be attributed (it went to the dead-letter queue whole):
    /// its shares still apply, but it is never marked processed.
    pub fn park(&self) {
        self.lock().parked = true;
    }

    /// Whether committing these shares (all in one transaction) leaves none unfinished and
    /// none parked: that transaction marks the event processed. Asked by the store's one
    /// writer, which alone finishes shares by committing them.
    pub fn last_in(&self, shares: &[usize]) -> bool {
        let s = self.lock();
        let mut unfinished: Vec<usize> = shares
            .iter()
            .copied()
            .filter(|&i| s.finished.get(i) == Some(&false))
            .collect();
        unfinished.sort_unstable();
        unfinished.dedup();
        !s.parked && s.left > 0 && unfinished.len() == s.left
    }

    /// These shares are finished (committed or parked); each counts once.
    pub fn finish(&self, shares: &[usize]) {
        let all_done = {
            let mut s = self.lock();
            let before = s.left;
            for &i in shares {
                if let Some(f) = s.finished.get_mut(i)
                    && !*f
                {
                    *f = true;
                    s.left -= 1;
                }
            }
            before > 0 && s.left == 0
        };
        if all_done {
            let then = self.then.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(f) = then {
                f();
            }
        }
    }

    /// Whether every share is finished.
    pub fn is_done(&self) -> bool {
        self.lock().left == 0
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("Ticket")
            .field("event_id", &self.event_id)
            .field("left", &s.left)
            .field("parked", &s.parked)
            .finish()
    }
}

/// What one conversation asks the store to apply: its share of an inbox event, or a change of
/// ours. Made by [`ChangeSet::of_event`] or [`ChangeSet::ours`], then filled in.
#[derive(Debug, Clone)]
pub struct ChangeSet {
    pub origin: Origin,
    pub correlation_id: String,
    pub workspace_id: i64,
    pub contact: ContactKey,
    pub user_id: Option<String>,
    pub contact_name: Option<String>,
    pub messages: Vec<MessageItem>,
    pub statuses: Vec<StatusItem>,
    /// Reactions, edits and revokes of earlier messages.
    pub amendments: Vec<Amendment>,
    /// Number, user-id and identity-key changes: the contact found under the old identity
    /// moves to this set's (`store/identities.rs`).
    pub identity: Vec<IdentityChange>,
    pub intents: Vec<Intent>,
    /// The platform's own id of the conversation (Kapso's), when the event names it.
    pub external_id: Option<String>,
    /// The contact's newest marketing preference in the set: opted out or not, and when.
    pub marketing: Option<(bool, chrono::DateTime<chrono::Utc>)>,
    /// The ids the actor already knows (saves a read).
    pub known: Option<Known>,
}

impl ChangeSet {
    fn empty(
        origin: Origin,
        workspace_id: i64,
        contact: ContactKey,
        known: Option<Known>,
        correlation_id: String,
    ) -> Self {
        Self {
            origin,
            correlation_id,
            workspace_id,
            contact,
            user_id: None,
            contact_name: None,
            messages: Vec::new(),
            statuses: Vec::new(),
            amendments: Vec::new(),
            identity: Vec::new(),
            intents: Vec::new(),
            external_id: None,
            marketing: None,
            known,
        }
    }

    /// A conversation's share of an inbox event: nothing in it yet.
    pub fn of_event(
        share: Share,
        report: bool,
        workspace_id: i64,
        contact: ContactKey,
        known: Option<Known>,
        correlation_id: impl Into<String>,
    ) -> Self {
        let origin = Origin::Event { share, report };
        Self::empty(origin, workspace_id, contact, known, correlation_id.into())
    }

    /// A set of ours (no inbox event) for a conversation already known: nothing in it yet.
    pub fn ours(
        workspace_id: i64,
        contact: ContactKey,
        known: Known,
        correlation_id: impl Into<String>,
    ) -> Self {
        let origin = Origin::Ours { answers: None };
        Self::empty(
            origin,
            workspace_id,
            contact,
            Some(known),
            correlation_id.into(),
        )
    }

    /// Ours, answering inbox event `event` (the agent's reply names the event it answers).
    pub fn answering(mut self, event: Option<i64>) -> Self {
        if let Origin::Ours { answers } = &mut self.origin {
            *answers = event;
        }
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    pub contact_id: i64,
    pub conversation_id: i64,
}

/// Why a change set did not apply.
#[derive(Debug, Clone)]
pub struct ApplyError {
    pub message: String,
    /// The database could not be reached: the change set itself is fine and will apply once
    /// the database answers again, so retrying it spends no attempt.
    pub transient: bool,
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<&DbErr> for ApplyError {
    fn from(e: &DbErr) -> Self {
        Self {
            message: e.to_string(),
            transient: is_unreachable(e),
        }
    }
}

/// An error that says "the database cannot take this now" rather than "this data is wrong": no
/// connection to be had, a broken connection, a server shutting down or refusing connections
/// (SQLSTATE classes 08 and 57P), or no space left (class 53; SQLite's SQLITE_FULL).
pub fn is_unreachable(e: &DbErr) -> bool {
    use sea_orm::{RuntimeErr, sqlx::Error as Sqlx};
    match e {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            match &**e {
                Sqlx::Io(_) | Sqlx::PoolTimedOut | Sqlx::PoolClosed | Sqlx::WorkerCrashed => true,
                // PostgreSQL: connection exceptions (08), shutdowns (57P), insufficient
                // resources such as a full disk (53); SQLite: SQLITE_FULL (13).
                Sqlx::Database(db) => db.code().is_some_and(|c| {
                    c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") || c == "13"
                }),
                _ => false,
            }
        }
        _ => false,
    }
}

/// The store's answer to a committed change set.
#[derive(Debug, Clone)]
pub struct Applied {
    pub contact_id: i64,
    pub conversation_id: i64,
    /// The conversation's state after the set.
    pub state: ConversationState,
    /// The set's inbound messages this transaction stored for the first time.
    pub new_inbound: Vec<MessageItem>,
    /// The set asked for `new_inbound` (its account has an agent).
    pub reported: bool,
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::Ticket;

    /// The last share's commit marks the event processed and runs the ticket's work once; a
    /// share finished twice (applied again after its lane failed) counts once; a parked share
    /// means the event is never marked processed, though the work still runs when all finish.
    #[test]
    fn each_share_counts_once_and_a_parked_one_keeps_the_event_unprocessed() {
        let runs = Arc::new(AtomicUsize::new(0));
        let ticket = Ticket::new(7, 3, false);
        let counter = runs.clone();
        ticket.then(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        assert!(!ticket.last_in(&[0]), "two more shares to go");
        ticket.finish(&[0]);
        ticket.finish(&[0]);
        assert!(!ticket.last_in(&[1]), "share 0 finished twice counts once");
        assert!(
            ticket.last_in(&[1, 2, 2]),
            "the batch holding both others is the last"
        );
        ticket.finish(&[1, 2]);
        assert!(ticket.is_done());
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        ticket.finish(&[2]);
        assert_eq!(runs.load(Ordering::SeqCst), 1, "runs once");
        assert!(!ticket.last_in(&[2]), "nothing is left to mark");

        let parked = Ticket::new(8, 2, false);
        parked.share(1).park();
        assert!(!parked.last_in(&[0]), "a parked share keeps it unprocessed");
        assert!(!parked.is_done());
        parked.finish(&[0]);
        assert!(parked.is_done());
        // An index the ticket does not have is ignored, never a panic.
        parked.finish(&[9]);
    }
}
