//! The batched store: conversation actors hand in their change sets; one writer commits the
//! sets of many conversations in one transaction with multi-row upserts, then answers each.
//!
//! Effects happen once because every write is idempotent by construction: contacts and
//! conversations are upserted on their unique keys, messages on `(workspace_id, wamid)`,
//! statuses only raise `status_rank`, timestamps take the max, and `message_count` grows by
//! the rows the message upsert returns — only those it inserted, never a duplicate — in the
//! same transaction. A re-applied event (redelivery, replay, retry, restart) therefore
//! changes nothing.
//! Inbox rows become `processed` in the same transaction as their last effects.

use std::{
    collections::{HashMap, HashSet},
    time::Instant,
};

use chrono::{DateTime, Utc};
use sea_orm::{
    ConnectionTrait, DatabaseBackend, DatabaseConnection, DatabaseTransaction, DbErr,
    TransactionTrait,
};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    amendments,
    change::{Applied, ApplyError, ChangeSet, Ticket, is_unreachable},
    contacts, conversations, dlq, identities, inbox, media, messages,
    sql::{Chain, count_statement},
    statuses, transitions,
};
use crate::{config::DatabaseConfig, ingest::event::Direction, metrics as m};

enum StoreMsg {
    Apply {
        set: Box<ChangeSet>,
        reply: oneshot::Sender<Result<Applied, ApplyError>>,
    },
    /// An event with nothing to apply: mark it processed (`redrive`: it comes from the
    /// dead-letter queue, whose row is resolved with it).
    Complete { event_id: i64, redrive: bool },
}

/// Handle to the store writer.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<StoreMsg>,
    progress: std::sync::Arc<watch::Sender<u64>>,
    live: super::live::Live,
}

impl Store {
    /// Starts the writer; `db` is [`super::connect_writer`]'s.
    pub fn spawn(
        db: DatabaseConnection,
        gate: super::WriteGate,
        batch_max: usize,
        cfg: &DatabaseConfig,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(65_536);
        let progress = std::sync::Arc::new(watch::channel(0).0);
        let live = super::live::Live::new();
        let writer = Writer {
            live: live.clone(),
            committer: Committer::new(db, gate, cfg),
            rx,
            batch_max,
            completed: Vec::new(),
            processed: progress.clone(),
        };
        (Self { tx, progress, live }, tokio::spawn(writer.run()))
    }

    /// What the writer committed, as it commits (`GET /api/v1/stream`).
    pub fn live(&self) -> &super::live::Live {
        &self.live
    }

    pub async fn apply(&self, set: ChangeSet) -> Result<Applied, ApplyError> {
        let stopped = || ApplyError {
            message: "the store writer has stopped".into(),
            transient: false,
        };
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(StoreMsg::Apply {
                set: Box::new(set),
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    pub async fn complete(&self, event_id: i64, redrive: bool) {
        let _ = self.tx.send(StoreMsg::Complete { event_id, redrive }).await;
    }

    /// Processing progress: changes after every commit, DLQ park and actor stop (tests and
    /// tools wait on it instead of sleeping).
    pub fn progress(&self) -> watch::Receiver<u64> {
        self.progress.subscribe()
    }

    /// Signals progress made outside the store writer.
    pub fn bump(&self) {
        self.progress.send_modify(|n| *n += 1);
    }
}

struct Writer {
    live: super::live::Live,
    committer: Committer,
    rx: mpsc::Receiver<StoreMsg>,
    batch_max: usize,
    /// Events with nothing to apply, to mark processed in the next commit (and whether each
    /// was re-driven).
    completed: Vec<(i64, bool)>,
    processed: std::sync::Arc<watch::Sender<u64>>,
}

type Pending = (ChangeSet, oneshot::Sender<Result<Applied, ApplyError>>);

impl Writer {
    async fn run(mut self) {
        let mut batch: Vec<Pending> = Vec::with_capacity(self.batch_max);
        while let Some(first) = self.rx.recv().await {
            self.take(first, &mut batch);
            while batch.len() < self.batch_max {
                match self.rx.try_recv() {
                    Ok(msg) => self.take(msg, &mut batch),
                    Err(_) => break,
                }
            }
            if batch.is_empty() && self.completed.is_empty() {
                continue;
            }
            self.commit(std::mem::take(&mut batch)).await;
        }
    }

    fn take(&mut self, msg: StoreMsg, batch: &mut Vec<Pending>) {
        match msg {
            StoreMsg::Apply { set, reply } => batch.push((*set, reply)),
            StoreMsg::Complete { event_id, redrive } => self.completed.push((event_id, redrive)),
        }
    }

    async fn commit(&mut self, batch: Vec<Pending>) {
        let started = Instant::now();
        let sets: Vec<&ChangeSet> = batch.iter().map(|(s, _)| s).collect();
        let completed = std::mem::take(&mut self.completed);
        let mut finishing = Finishing::of(&sets);
        finishing.add(&completed);
        let result = self.committer.transact(&sets, &finishing).await;
        metrics::histogram!(m::STORE_COMMIT_DURATION).record(started.elapsed().as_secs_f64());
        metrics::histogram!(m::STORE_BATCH_SIZE).record(sets.len() as f64);
        match result {
            Ok(applied) => {
                self.announce_resolved(&sets, &finishing);
                finishing.finished();
                metrics::counter!(m::EVENTS_PROCESSED, "outcome" => "processed")
                    .increment(finishing.done.len() as u64);
                self.processed
                    .send_modify(|n| *n += finishing.done.len() as u64);
                for ((set, reply), a) in batch.into_iter().zip(applied) {
                    self.announce(&set, &a);
                    let _ = reply.send(Ok(a));
                }
            }
            // The database is away: no change set is to blame, none is tried alone.
            Err(e) if is_unreachable(&e) => {
                self.completed = completed;
                let error = ApplyError::from(&e);
                for (_, reply) in batch {
                    let _ = reply.send(Err(error.clone()));
                }
            }
            Err(e) if batch.len() > 1 || !completed.is_empty() => {
                // One bad set must not sink the others: apply each alone.
                let correlation_ids: Vec<&str> = batch
                    .iter()
                    .take(10)
                    .map(|(s, _)| s.correlation_id.as_str())
                    .collect();
                tracing::warn!(error = %e, sets = batch.len(), ?correlation_ids, "store batch failed; applying its change sets one by one");
                self.completed = completed;
                for (set, reply) in batch {
                    let finishing = Finishing::of(&[&set]);
                    match self.committer.transact(&[&set], &finishing).await {
                        Ok(mut applied) => {
                            if let Some(a) = applied.first() {
                                self.announce(&set, a);
                            }
                            self.announce_resolved(&[&set], &finishing);
                            finishing.finished();
                            let done = finishing.done.len() as u64;
                            self.processed.send_modify(|n| *n += done);
                            metrics::counter!(m::EVENTS_PROCESSED, "outcome" => "processed")
                                .increment(done);
                            let _ = reply.send(Ok(applied.remove(0)));
                        }
                        Err(e) => {
                            let _ = reply.send(Err(ApplyError::from(&e)));
                        }
                    }
                }
                if !self.completed.is_empty() {
                    let completed = std::mem::take(&mut self.completed);
                    let mut finishing = Finishing::default();
                    finishing.add(&completed);
                    match self.committer.transact(&[], &finishing).await {
                        Ok(_) => self.processed.send_modify(|n| *n += completed.len() as u64),
                        Err(e) => {
                            tracing::warn!(error = %e, "marking events processed failed; they stay pending for recovery");
                        }
                    }
                }
            }
            Err(e) => {
                let error = ApplyError::from(&e);
                for (_, reply) in batch {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
        self.processed.send_modify(|n| *n += 1);
    }

    /// Tells the live stream which re-driven events' DLQ rows this commit resolved.
    fn announce_resolved(&self, sets: &[&ChangeSet], finishing: &Finishing) {
        let mut seen = HashSet::new();
        for set in sets {
            let Some(event) = set.origin.share().map(|s| s.ticket.event_id) else {
                continue;
            };
            if finishing.resolve.contains(&event) && seen.insert(event) {
                self.live
                    .publish(set.workspace_id, event, super::live::Kind::Dlq);
            }
        }
    }

    /// Tells the live stream what a committed set changed.
    fn announce(&self, set: &ChangeSet, a: &Applied) {
        use super::live::Kind;
        let (ws, conv) = (set.workspace_id, a.conversation_id);
        if !set.messages.is_empty() || !set.amendments.is_empty() {
            self.live.publish(ws, conv, Kind::Message);
        }
        if !set.statuses.is_empty() {
            self.live.publish(ws, conv, Kind::Status);
        }
        let changes_state = set
            .intents
            .iter()
            .any(|i| !matches!(i, crate::ingest::event::Intent::InboundMessage));
        if changes_state || !set.identity.is_empty() {
            self.live.publish(ws, conv, Kind::Conversation);
        }
    }
}

/// What one commit finishes: each event ticket's shares in it, and the events it marks
/// `processed` (those whose last unfinished shares these are) and whose DLQ rows it resolves.
#[derive(Default)]
struct Finishing {
    shares: Vec<(std::sync::Arc<Ticket>, Vec<usize>)>,
    done: Vec<i64>,
    resolve: Vec<i64>,
}

impl Finishing {
    fn of(sets: &[&ChangeSet]) -> Self {
        let mut shares: Vec<(std::sync::Arc<Ticket>, Vec<usize>)> = Vec::new();
        let mut index: HashMap<*const Ticket, usize> = HashMap::new();
        for share in sets.iter().filter_map(|s| s.origin.share()) {
            match index.entry(std::sync::Arc::as_ptr(&share.ticket)) {
                std::collections::hash_map::Entry::Occupied(i) => {
                    shares[*i.get()].1.push(share.index)
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(shares.len());
                    shares.push((share.ticket.clone(), vec![share.index]));
                }
            }
        }
        let mut f = Self {
            shares,
            ..Self::default()
        };
        for (ticket, n) in &f.shares {
            if ticket.last_in(n) {
                f.done.push(ticket.event_id);
                if ticket.redrive {
                    f.resolve.push(ticket.event_id);
                }
            }
        }
        f
    }

    /// Events with nothing to apply, marked processed too.
    fn add(&mut self, completed: &[(i64, bool)]) {
        for &(event_id, redrive) in completed {
            self.done.push(event_id);
            if redrive {
                self.resolve.push(event_id);
            }
        }
    }

    /// The commit succeeded: its shares count finished on their tickets.
    fn finished(&self) {
        for (ticket, n) in &self.shares {
            ticket.finish(n);
        }
    }
}

/// One store transaction for `sets`, marking `done` processed, outside the writer task (for
/// `wahook calibrate`, which measures the database's limit for exactly these statements).
pub async fn apply_once(
    db: &DatabaseConnection,
    gate: &super::WriteGate,
    cfg: &DatabaseConfig,
    sets: &[ChangeSet],
    done: &[i64],
) -> Result<(), DbErr> {
    let committer = Committer::new(db.clone(), gate.clone(), cfg);
    let refs: Vec<&ChangeSet> = sets.iter().collect();
    let finishing = Finishing {
        done: done.to_vec(),
        ..Finishing::default()
    };
    committer.transact(&refs, &finishing).await.map(|_| ())
}

/// Where and how the store commits.
struct Committer {
    db: DatabaseConnection,
    gate: super::WriteGate,
    /// SQLite: flushes the log after a commit (`store_fsync`); nothing otherwise.
    wal: super::WalSync,
    /// PostgreSQL: the store's commits do not wait for their WAL flush.
    async_commit: bool,
}

impl Committer {
    fn new(db: DatabaseConnection, gate: super::WriteGate, cfg: &DatabaseConfig) -> Self {
        Self {
            db,
            gate,
            wal: super::WalSync::new(cfg, cfg.store_durable()),
            async_commit: !cfg.store_fsync,
        }
    }

    async fn transact(
        &self,
        sets: &[&ChangeSet],
        finishing: &Finishing,
    ) -> Result<Vec<Applied>, DbErr> {
        let t0 = std::time::Instant::now();
        let applied = {
            let _gate = self.gate.enter().await;
            metrics::histogram!(m::WRITE_GATE_WAIT, "writer" => "store")
                .record(t0.elapsed().as_secs_f64());
            self.transact_in(sets, finishing).await?
        };
        // With `store_fsync` on SQLite: on disk before the actors hear of it, flushed after
        // leaving the gate so the inbox commits meanwhile.
        self.wal.flush("flush").await?;
        Ok(applied)
    }

    async fn transact_in(
        &self,
        sets: &[&ChangeSet],
        finishing: &Finishing,
    ) -> Result<Vec<Applied>, DbErr> {
        let t = std::time::Instant::now();
        let tx = self.db.begin().await?;
        m::step("begin", t);
        count_statement();
        if self.async_commit && tx.get_database_backend() == DatabaseBackend::Postgres {
            // The inbox row stays `pending` until this commits: a crash of PostgreSQL that
            // loses it leaves the event to be processed again, never lost.
            tx.execute_unprepared("SET LOCAL synchronous_commit = off")
                .await?;
            count_statement();
        }
        let now = Utc::now();
        let mut chain = Chain::new(tx.get_database_backend());
        let applied = apply_sets(&tx, sets, now, &mut chain).await?;
        // Inbox rows become `processed`; a DLQ row being retried is resolved with them.
        inbox::mark_processed(&finishing.done, now, &mut chain);
        dlq::resolve_retried(&finishing.resolve, now, &mut chain);
        // What follows the messages step, in one round trip (SQLite).
        let t = std::time::Instant::now();
        chain.flush(&tx).await?;
        m::step("tail", t);
        let t = std::time::Instant::now();
        tx.commit().await?;
        m::step("commit", t);
        count_statement();
        Ok(applied)
    }
}

/// Applies the sets in order, one step per table, and returns per set the ids it ended with.
/// The steps after the messages step read nothing back: their statements go into `chain`, run
/// after the processed marks in one round trip on SQLite (the caller flushes it).
async fn apply_sets(
    tx: &DatabaseTransaction,
    sets: &[&ChangeSet],
    now: DateTime<Utc>,
    chain: &mut Chain,
) -> Result<Vec<Applied>, DbErr> {
    if sets.is_empty() {
        return Ok(Vec::new());
    }
    // 0. Identities: a contact known by an old number or a lone user id moves to the new one
    //    (merged with a contact the new one already has).
    let t = std::time::Instant::now();
    let identity = identities::apply(tx, sets).await?;
    m::step("identities", t);
    // 1. Contacts: one row per (workspace, contact), merged in set order.
    let t = std::time::Instant::now();
    let contacts = contacts::upsert(tx, sets, now).await?;
    identities::record(tx, sets, &contacts, identity, now).await?;
    m::step("contacts", t);
    // 2. Conversations: create the missing ones; read those neither created nor known.
    let t = std::time::Instant::now();
    let conversations = conversations::ensure(tx, sets, &contacts, now).await?;
    m::step("conversations", t);
    conversations::set_external_ids(tx, sets, &contacts, &conversations).await?;
    contacts::set_marketing(tx, sets, &contacts).await?;
    // 3. Messages: the first copy of a wamid wins; returns what each conversation gained.
    let report = sets.iter().any(|s| s.origin.reports());
    let t = std::time::Instant::now();
    let inserted = messages::insert(tx, sets, &contacts, &conversations, report, now).await?;
    m::step("messages", t);
    // 3b. Media: a fetch job for each stored message that carries a file.
    if sets
        .iter()
        .any(|s| s.messages.iter().any(|m| m.media.is_some()))
    {
        media::enqueue(tx, sets, now).await?;
    }
    // 4. Statuses: the highest rank per wamid; placeholders for wamids not stored yet.
    statuses::apply(sets, &contacts, &conversations, now, chain)?;
    // 5. Reactions, edits, revokes: they change their message, whichever came first.
    amendments::apply(tx, sets, &contacts, &conversations, now, chain).await?;
    // 6. Counters: each conversation gains exactly the messages step 3 added.
    conversations::add_counts(inserted.added, now, chain);
    // 7. The state machine, from the stored state, with an audit row per change.
    let mut applied = transitions::apply(sets, &contacts, conversations, now, chain)?;
    // What is new to the conversation (for the agent): never a redelivered copy, and once
    // only when two copies of one event (a re-dispatch) meet in one batch.
    let mut fresh = inserted.rows;
    for (a, set) in applied
        .iter_mut()
        .zip(sets)
        .filter(|(_, s)| s.origin.reports())
    {
        a.reported = true;
        a.new_inbound = set
            .messages
            .iter()
            .filter(|m| m.direction == Direction::Inbound)
            .filter(|m| fresh.remove(&(m.wamid.clone(), set.origin.event_id())))
            .cloned()
            .collect();
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sea_orm::{ConnAcquireErr, RuntimeErr, sqlx};

    use super::*;

    #[test]
    fn unreachable_means_no_connection_not_bad_data() {
        assert!(is_unreachable(&DbErr::ConnectionAcquire(
            ConnAcquireErr::Timeout
        )));
        assert!(is_unreachable(&DbErr::Conn(RuntimeErr::Internal(
            "refused".into()
        ))));
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(is_unreachable(&DbErr::Exec(RuntimeErr::SqlxError(
            Arc::new(io)
        ))));
        assert!(is_unreachable(&DbErr::Query(RuntimeErr::SqlxError(
            Arc::new(sqlx::Error::PoolTimedOut)
        ))));
        assert!(!is_unreachable(&DbErr::Exec(RuntimeErr::SqlxError(
            Arc::new(sqlx::Error::RowNotFound)
        ))));
        assert!(!is_unreachable(&DbErr::Custom("no such table".into())));
        assert!(!is_unreachable(&DbErr::RecordNotInserted));
    }
}
