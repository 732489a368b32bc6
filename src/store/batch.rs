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
    collections::{BTreeMap, HashMap, HashSet},
    time::Instant,
};

use chrono::{DateTime, Utc};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, QueryResult, TransactionTrait,
};
use tokio::sync::{mpsc, oneshot, watch};

use super::sql::Sql;
use crate::{
    ingest::event::{ContactKey, ConversationState, Direction, Intent, MessageItem, StatusItem},
    metrics as m,
};

/// Rows per multi-row statement: well under both backends' parameter limits.
const CHUNK: usize = 1000;

/// What one conversation actor asks the store to apply for one inbox event.
#[derive(Debug, Clone)]
pub struct ChangeSet {
    pub event_id: i64,
    pub correlation_id: String,
    pub workspace_id: i64,
    pub contact: ContactKey,
    pub user_id: Option<String>,
    pub contact_name: Option<String>,
    pub messages: Vec<MessageItem>,
    pub statuses: Vec<StatusItem>,
    pub intents: Vec<Intent>,
    /// The ids the actor already knows (saves a read).
    pub known: Option<Known>,
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

/// An error that says "the database is not there" rather than "this data is wrong": no
/// connection to be had, a broken connection, a server shutting down or refusing connections
/// (SQLSTATE classes 08 and 57P).
pub fn is_unreachable(e: &DbErr) -> bool {
    use sea_orm::{RuntimeErr, sqlx::Error as Sqlx};
    match e {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            match &**e {
                Sqlx::Io(_) | Sqlx::PoolTimedOut | Sqlx::PoolClosed | Sqlx::WorkerCrashed => true,
                Sqlx::Database(db) => db
                    .code()
                    .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
                _ => false,
            }
        }
        _ => false,
    }
}

/// The store's answer to a committed change set.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    pub contact_id: i64,
    pub conversation_id: i64,
}

enum StoreMsg {
    Apply {
        set: ChangeSet,
        reply: oneshot::Sender<Result<Applied, ApplyError>>,
    },
    /// The event was split into this many change sets; mark it processed after the last.
    /// `redrive`: it comes from the dead-letter queue, whose row is resolved with it.
    Expect {
        event_id: i64,
        slices: usize,
        redrive: bool,
    },
    /// An event with nothing to apply: mark it processed.
    Complete { event_id: i64, redrive: bool },
    /// The event went to the dead-letter queue; stop waiting for its other sets.
    Abandon { event_id: i64 },
}

/// Handle to the store writer.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<StoreMsg>,
    progress: std::sync::Arc<watch::Sender<u64>>,
}

impl Store {
    pub fn spawn(
        db: DatabaseConnection,
        gate: super::WriteGate,
        batch_max: usize,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(65_536);
        let progress = std::sync::Arc::new(watch::channel(0).0);
        let writer = Writer {
            db,
            gate,
            rx,
            batch_max,
            expected: HashMap::new(),
            completed: Vec::new(),
            redriven: HashSet::new(),
            abandoned: HashSet::new(),
            processed: progress.clone(),
        };
        (Self { tx, progress }, tokio::spawn(writer.run()))
    }

    pub async fn apply(&self, set: ChangeSet) -> Result<Applied, ApplyError> {
        let stopped = || ApplyError {
            message: "the store writer has stopped".into(),
            transient: false,
        };
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(StoreMsg::Apply { set, reply })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    pub async fn expect(&self, event_id: i64, slices: usize, redrive: bool) {
        let _ = self
            .tx
            .send(StoreMsg::Expect {
                event_id,
                slices,
                redrive,
            })
            .await;
    }

    pub async fn complete(&self, event_id: i64, redrive: bool) {
        let _ = self.tx.send(StoreMsg::Complete { event_id, redrive }).await;
    }

    pub async fn abandon(&self, event_id: i64) {
        let _ = self.tx.send(StoreMsg::Abandon { event_id }).await;
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
    db: DatabaseConnection,
    gate: super::WriteGate,
    rx: mpsc::Receiver<StoreMsg>,
    batch_max: usize,
    /// Change sets still to come per multi-set event.
    expected: HashMap<i64, usize>,
    /// Events with nothing (left) to apply, to mark processed in the next commit.
    completed: Vec<i64>,
    /// Events re-driven from the dead-letter queue, whose DLQ rows resolve with them.
    redriven: HashSet<i64>,
    /// Events parked in the DLQ: their other change sets still apply, but never mark them
    /// processed (the DLQ owns them until a re-drive dispatches them afresh).
    abandoned: HashSet<i64>,
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
            StoreMsg::Apply { set, reply } => batch.push((set, reply)),
            StoreMsg::Expect {
                event_id,
                slices,
                redrive,
            } => {
                self.abandoned.remove(&event_id);
                self.expected.insert(event_id, slices);
                if redrive {
                    self.redriven.insert(event_id);
                }
            }
            StoreMsg::Complete { event_id, redrive } => {
                self.completed.push(event_id);
                if redrive {
                    self.redriven.insert(event_id);
                }
            }
            StoreMsg::Abandon { event_id } => {
                self.expected.remove(&event_id);
                self.redriven.remove(&event_id);
                self.abandoned.insert(event_id);
            }
        }
    }

    /// The events this group of sets finishes, given what is still expected.
    fn finishing(&self, sets: &[&ChangeSet]) -> (Vec<i64>, HashMap<i64, usize>) {
        let mut remaining: HashMap<i64, usize> = HashMap::new();
        let mut done = Vec::new();
        for set in sets {
            if self.abandoned.contains(&set.event_id) {
                continue;
            }
            let left = remaining
                .entry(set.event_id)
                .or_insert_with(|| self.expected.get(&set.event_id).copied().unwrap_or(1));
            *left = left.saturating_sub(1);
            if *left == 0 {
                done.push(set.event_id);
            }
        }
        (done, remaining)
    }

    async fn commit(&mut self, batch: Vec<Pending>) {
        let started = Instant::now();
        let sets: Vec<&ChangeSet> = batch.iter().map(|(s, _)| s).collect();
        let (mut done, remaining) = self.finishing(&sets);
        let completed = std::mem::take(&mut self.completed);
        done.extend(completed.iter().copied());
        let result = transact(&self.db, &self.gate, &sets, &done, &self.redriven).await;
        metrics::histogram!(m::STORE_COMMIT_DURATION).record(started.elapsed().as_secs_f64());
        metrics::histogram!(m::STORE_BATCH_SIZE).record(sets.len() as f64);
        match result {
            Ok(applied) => {
                self.settle(remaining);
                metrics::counter!(m::EVENTS_PROCESSED, "outcome" => "processed")
                    .increment(done.len() as u64);
                self.processed.send_modify(|n| *n += done.len() as u64);
                for ((_, reply), a) in batch.into_iter().zip(applied) {
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
                    let (done, remaining) = self.finishing(&[&set]);
                    match transact(&self.db, &self.gate, &[&set], &done, &self.redriven).await {
                        Ok(mut applied) => {
                            self.settle(remaining);
                            self.processed.send_modify(|n| *n += done.len() as u64);
                            metrics::counter!(m::EVENTS_PROCESSED, "outcome" => "processed")
                                .increment(done.len() as u64);
                            let _ = reply.send(Ok(applied.remove(0)));
                        }
                        Err(e) => {
                            let _ = reply.send(Err(ApplyError::from(&e)));
                        }
                    }
                }
                if !self.completed.is_empty() {
                    let completed = std::mem::take(&mut self.completed);
                    match transact(&self.db, &self.gate, &[], &completed, &self.redriven).await {
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

    fn settle(&mut self, remaining: HashMap<i64, usize>) {
        for (event_id, left) in remaining {
            if left == 0 {
                self.expected.remove(&event_id);
                self.redriven.remove(&event_id);
            } else {
                self.expected.insert(event_id, left);
            }
        }
    }
}

async fn transact(
    db: &DatabaseConnection,
    gate: &super::WriteGate,
    sets: &[&ChangeSet],
    done: &[i64],
    redriven: &HashSet<i64>,
) -> Result<Vec<Applied>, DbErr> {
    let _gate = gate.enter().await;
    let tx = db.begin().await?;
    count_statement();
    let applied = apply_sets(&tx, sets, Utc::now()).await?;
    let resolve: Vec<i64> = done
        .iter()
        .copied()
        .filter(|e| redriven.contains(e))
        .collect();
    mark_processed(&tx, done, &resolve).await?;
    tx.commit().await?;
    count_statement();
    Ok(applied)
}

fn count_statement() {
    metrics::counter!(m::DB_STATEMENTS, "component" => "store").increment(1);
}

async fn run(tx: &DatabaseTransaction, sql: Sql) -> Result<(), DbErr> {
    count_statement();
    tx.execute_raw(sql.build()).await.map(|_| ())
}

async fn query(tx: &DatabaseTransaction, sql: Sql) -> Result<Vec<QueryResult>, DbErr> {
    count_statement();
    tx.query_all_raw(sql.build()).await
}

fn max_opt(a: Option<DateTime<Utc>>, b: DateTime<Utc>) -> Option<DateTime<Utc>> {
    Some(a.map_or(b, |a| a.max(b)))
}

/// Applies the sets in order and returns, per set, the ids and state it ended with.
async fn apply_sets(
    tx: &DatabaseTransaction,
    sets: &[&ChangeSet],
    now: DateTime<Utc>,
) -> Result<Vec<Applied>, DbErr> {
    if sets.is_empty() {
        return Ok(Vec::new());
    }
    let backend = tx.get_database_backend();

    // 1. Contacts: one row per (workspace, contact), merged in set order.
    struct ContactRow {
        user_id: Option<String>,
        name: Option<String>,
        last_activity: Option<DateTime<Utc>>,
        last_contact: Option<DateTime<Utc>>,
    }
    let mut contacts: BTreeMap<(i64, &str), ContactRow> = BTreeMap::new();
    for set in sets {
        let row = contacts
            .entry((set.workspace_id, set.contact.as_str()))
            .or_insert(ContactRow {
                user_id: None,
                name: None,
                last_activity: None,
                last_contact: None,
            });
        if set.user_id.is_some() {
            row.user_id.clone_from(&set.user_id);
        }
        if set.contact_name.is_some() {
            row.name.clone_from(&set.contact_name);
        }
        for msg in &set.messages {
            row.last_activity = max_opt(row.last_activity, msg.timestamp);
            if msg.direction == Direction::Outbound {
                row.last_contact = max_opt(row.last_contact, msg.timestamp);
            }
        }
    }
    let later = |col: &str| {
        format!(
            "{col} = CASE WHEN contacts.{col} IS NULL OR excluded.{col} > contacts.{col} \
             THEN excluded.{col} ELSE contacts.{col} END"
        )
    };
    let mut contact_ids: HashMap<(i64, String), i64> = HashMap::new();
    let rows: Vec<_> = contacts.into_iter().collect();
    for chunk in rows.chunks(CHUNK) {
        let mut sql = Sql::new(
            backend,
            "INSERT INTO contacts (workspace_id, phone, user_id, name, lead_status, lead_score, \
             last_activity_at, last_contact_at, created_at, updated_at) VALUES ",
        );
        sql.values(chunk.iter().map(|((ws, phone), row)| {
            vec![
                (*ws).into(),
                phone.to_string().into(),
                row.user_id.clone().into(),
                row.name.clone().into(),
                "prospect".into(),
                50i32.into(),
                row.last_activity.into(),
                row.last_contact.into(),
                now.into(),
                now.into(),
            ]
        }));
        sql.push(&format!(
            " ON CONFLICT (workspace_id, phone) DO UPDATE SET \
             user_id = COALESCE(excluded.user_id, contacts.user_id), \
             name = COALESCE(excluded.name, contacts.name), {}, {}, \
             updated_at = excluded.updated_at RETURNING id, workspace_id, phone",
            later("last_activity_at"),
            later("last_contact_at")
        ));
        for r in query(tx, sql).await? {
            contact_ids.insert(
                (r.try_get("", "workspace_id")?, r.try_get("", "phone")?),
                r.try_get("", "id")?,
            );
        }
    }
    let contact_of = |set: &ChangeSet| -> Result<i64, DbErr> {
        contact_ids
            .get(&(set.workspace_id, set.contact.as_str().to_owned()))
            .copied()
            .ok_or_else(|| DbErr::Custom(format!("contact of event {} not upserted", set.event_id)))
    };

    // 2. Conversations: create the missing ones; read those neither created nor known.
    let mut conv_of_contact: HashMap<i64, (i64, ConversationState)> = HashMap::new();
    let mut created: HashSet<i64> = HashSet::new();
    let mut wanted: BTreeMap<i64, i64> = BTreeMap::new(); // contact -> workspace
    let mut known: HashMap<i64, i64> = HashMap::new(); // contact -> conversation
    for set in sets {
        let contact_id = contact_of(set)?;
        wanted.insert(contact_id, set.workspace_id);
        if let Some(k) = set.known.filter(|k| k.contact_id == contact_id) {
            known.insert(contact_id, k.conversation_id);
        }
    }
    let to_create: Vec<(i64, i64)> = wanted
        .iter()
        .filter(|(c, _)| !known.contains_key(c))
        .map(|(c, w)| (*c, *w))
        .collect();
    for chunk in to_create.chunks(CHUNK) {
        let mut sql = Sql::new(
            backend,
            "INSERT INTO conversations (workspace_id, contact_id, status, message_count, created_at, updated_at) VALUES ",
        );
        sql.values(chunk.iter().map(|(contact_id, ws)| {
            vec![
                (*ws).into(),
                (*contact_id).into(),
                "open".into(),
                0i32.into(),
                now.into(),
                now.into(),
            ]
        }));
        sql.push(" ON CONFLICT (contact_id) DO NOTHING RETURNING id, contact_id, status");
        for r in query(tx, sql).await? {
            let contact_id: i64 = r.try_get("", "contact_id")?;
            conv_of_contact.insert(contact_id, (r.try_get("", "id")?, ConversationState::Open));
            created.insert(contact_id);
        }
    }
    let to_read: Vec<i64> = wanted
        .keys()
        .filter(|c| !conv_of_contact.contains_key(c))
        .copied()
        .collect();
    for chunk in to_read.chunks(CHUNK) {
        let mut sql = Sql::new(
            backend,
            "SELECT id, contact_id, status FROM conversations WHERE contact_id IN ",
        );
        sql.tuple(chunk.iter().copied());
        for r in query(tx, sql).await? {
            let status: String = r.try_get("", "status")?;
            conv_of_contact.insert(
                r.try_get("", "contact_id")?,
                (
                    r.try_get("", "id")?,
                    ConversationState::parse(&status).unwrap_or(ConversationState::Open),
                ),
            );
        }
    }

    // 3. Messages (first copy of a wamid wins; a stored one is only completed if it was a
    //    placeholder left by an early status).
    let mut seen: HashSet<(i64, &str)> = HashSet::new();
    let mut messages: Vec<(i64, i64, &MessageItem, i64)> = Vec::new();
    let mut added: BTreeMap<i64, (i32, DateTime<Utc>)> = BTreeMap::new();
    for set in sets {
        let (conversation_id, _) = conversation_of(&conv_of_contact, contact_of(set)?)?;
        for msg in &set.messages {
            if seen.insert((set.workspace_id, msg.wamid.as_str())) {
                messages.push((set.workspace_id, conversation_id, msg, set.event_id));
            }
        }
    }
    for chunk in messages.chunks(CHUNK) {
        let mut sql = Sql::new(backend, MESSAGE_INSERT);
        sql.values(chunk.iter().map(|(ws, conv, msg, event_id)| {
            vec![
                (*ws).into(),
                (*conv).into(),
                msg.direction.as_str().into(),
                msg.wamid.clone().into(),
                msg.message_type.clone().into(),
                msg.content.clone().into(),
                msg.status.as_str().into(),
                msg.status.rank().into(),
                None::<String>.into(),
                msg.timestamp.into(),
                msg.metadata.clone().into(),
                (*event_id).into(),
                now.into(),
                now.into(),
            ]
        }));
        sql.push(
            " ON CONFLICT (workspace_id, wamid) DO UPDATE SET \
             conversation_id = excluded.conversation_id, direction = excluded.direction, \
             message_type = excluded.message_type, content = excluded.content, \
             timestamp = excluded.timestamp, metadata = excluded.metadata, \
             event_id = excluded.event_id, updated_at = excluded.updated_at \
             WHERE messages.message_type = 'pending' \
             RETURNING conversation_id, timestamp",
        );
        // Only rows inserted (or placeholders completed) come back, never a duplicate: they
        // are the messages this transaction adds, counted in the same transaction.
        for r in query(tx, sql).await? {
            let conversation_id: i64 = r.try_get("", "conversation_id")?;
            let timestamp: DateTime<Utc> = r.try_get("", "timestamp")?;
            let (n, latest) = added.entry(conversation_id).or_insert((0, timestamp));
            *n += 1;
            *latest = (*latest).max(timestamp);
        }
    }

    // 4. Statuses: the highest rank per wamid; a wamid not stored yet leaves a placeholder
    //    that keeps the status until its message arrives.
    let mut best: BTreeMap<(i64, &str), (i64, StatusItem, i64)> = BTreeMap::new();
    for set in sets {
        let (conversation_id, _) = conversation_of(&conv_of_contact, contact_of(set)?)?;
        for st in &set.statuses {
            match best.get_mut(&(set.workspace_id, st.wamid.as_str())) {
                Some((_, cur, _)) => {
                    let error = st.error.clone().or_else(|| cur.error.clone());
                    if st.status.rank() > cur.status.rank() {
                        *cur = st.clone();
                    }
                    cur.error = error;
                }
                None => {
                    best.insert(
                        (set.workspace_id, st.wamid.as_str()),
                        (conversation_id, st.clone(), set.event_id),
                    );
                }
            }
        }
    }
    let statuses: Vec<_> = best.into_iter().collect();
    for chunk in statuses.chunks(CHUNK) {
        let mut sql = Sql::new(backend, MESSAGE_INSERT);
        // A placeholder row: outbound, type `pending`, no content, until its message arrives.
        sql.values(chunk.iter().map(|((ws, wamid), (conv, st, event_id))| {
            vec![
                (*ws).into(),
                (*conv).into(),
                "outbound".into(),
                wamid.to_string().into(),
                "pending".into(),
                None::<String>.into(),
                st.status.as_str().into(),
                st.status.rank().into(),
                st.error.clone().into(),
                st.timestamp.into(),
                "{}".into(),
                (*event_id).into(),
                now.into(),
                now.into(),
            ]
        }));
        sql.push(
            " ON CONFLICT (workspace_id, wamid) DO UPDATE SET \
             status = CASE WHEN excluded.status_rank > messages.status_rank THEN excluded.status ELSE messages.status END, \
             status_rank = CASE WHEN excluded.status_rank > messages.status_rank THEN excluded.status_rank ELSE messages.status_rank END, \
             status_error = COALESCE(excluded.status_error, messages.status_error), \
             updated_at = excluded.updated_at",
        );
        run(tx, sql).await?;
    }

    // 5. Counters: each conversation gains exactly the messages this transaction added, so
    //    a redelivered, replayed or retried message never counts twice; O(1) per conversation.
    let added: Vec<(i64, (i32, DateTime<Utc>))> = added.into_iter().collect();
    for chunk in added.chunks(CHUNK) {
        let mut sql = Sql::new(
            backend,
            "UPDATE conversations SET message_count = message_count + CASE id",
        );
        for (id, (n, _)) in chunk {
            sql.push(" WHEN ").param(*id).push(" THEN ").param(*n);
        }
        sql.push(" ELSE 0 END, last_message_at = CASE id");
        for (id, (_, latest)) in chunk {
            sql.push(" WHEN ")
                .param(*id)
                .push(" THEN (CASE WHEN last_message_at IS NULL OR last_message_at < ")
                .param(*latest)
                .push(" THEN ")
                .param(*latest)
                .push(" ELSE last_message_at END)");
        }
        sql.push(" ELSE last_message_at END, updated_at = ")
            .param(now)
            .push(" WHERE id IN ");
        sql.tuple(chunk.iter().map(|(id, _)| *id));
        run(tx, sql).await?;
    }

    // 6. The state machine, from the stored state, with an audit row per change.
    struct TransitionRow {
        conversation_id: i64,
        from: Option<ConversationState>,
        to: ConversationState,
        reason: &'static str,
        correlation_id: String,
    }
    let mut transitions: Vec<TransitionRow> = Vec::new();
    let mut state: HashMap<i64, ConversationState> = HashMap::new();
    let mut changed: BTreeMap<i64, ConversationState> = BTreeMap::new();
    let mut applied = Vec::with_capacity(sets.len());
    for set in sets {
        let contact_id = contact_of(set)?;
        let (conversation_id, stored) = conversation_of(&conv_of_contact, contact_id)?;
        let current = state.entry(conversation_id).or_insert(stored);
        if created.remove(&contact_id) {
            transitions.push(TransitionRow {
                conversation_id,
                from: None,
                to: ConversationState::Open,
                reason: "conversation started",
                correlation_id: set.correlation_id.clone(),
            });
        }
        for intent in &set.intents {
            if let Some((to, reason)) = current.after(*intent) {
                transitions.push(TransitionRow {
                    conversation_id,
                    from: Some(*current),
                    to,
                    reason,
                    correlation_id: set.correlation_id.clone(),
                });
                *current = to;
                changed.insert(conversation_id, to);
            }
        }
        applied.push(Applied {
            contact_id,
            conversation_id,
        });
    }
    if !changed.is_empty() {
        let mut sql = Sql::new(backend, "UPDATE conversations SET status = CASE id");
        for (id, to) in &changed {
            sql.push(" WHEN ")
                .param(*id)
                .push(" THEN ")
                .param(to.as_str());
        }
        sql.push(" ELSE status END WHERE id IN ");
        sql.tuple(changed.keys().copied());
        run(tx, sql).await?;
    }
    for chunk in transitions.chunks(CHUNK) {
        let mut sql = Sql::new(
            backend,
            "INSERT INTO conversation_state_transitions (conversation_id, from_state, to_state, reason, correlation_id, at) VALUES ",
        );
        sql.values(chunk.iter().map(|t| {
            vec![
                t.conversation_id.into(),
                t.from.map(|s| s.as_str().to_owned()).into(),
                t.to.as_str().into(),
                t.reason.into(),
                t.correlation_id.clone().into(),
                now.into(),
            ]
        }));
        run(tx, sql).await?;
    }
    Ok(applied)
}

/// A conversation the batch created or read; an error (never a panic: a panic would stop the
/// writer) if it vanished, e.g. deleted by an operator mid-batch.
fn conversation_of(
    map: &HashMap<i64, (i64, ConversationState)>,
    contact_id: i64,
) -> Result<(i64, ConversationState), DbErr> {
    map.get(&contact_id)
        .copied()
        .ok_or_else(|| DbErr::Custom(format!("no conversation for contact {contact_id}")))
}

const MESSAGE_INSERT: &str = "INSERT INTO messages (workspace_id, conversation_id, direction, wamid, \
     message_type, content, status, status_rank, status_error, timestamp, metadata, event_id, \
     created_at, updated_at) VALUES ";

/// Inbox rows become `processed`; a DLQ row being retried is resolved with them.
async fn mark_processed(
    tx: &DatabaseTransaction,
    done: &[i64],
    resolve: &[i64],
) -> Result<(), DbErr> {
    if done.is_empty() {
        return Ok(());
    }
    let backend = tx.get_database_backend();
    let now = Utc::now();
    for chunk in done.chunks(CHUNK) {
        let mut sql = Sql::new(
            backend,
            "UPDATE webhook_events SET status = 'processed', last_error = NULL, attempts = attempts + 1, processed_at = ",
        );
        sql.param(now).push(" WHERE id IN ");
        sql.tuple(chunk.iter().copied());
        run(tx, sql).await?;
    }
    for chunk in resolve.chunks(CHUNK) {
        let mut sql = Sql::new(
            backend,
            "UPDATE webhook_dlq SET resolution_status = 'resolved', resolved_by = 'retry', resolved_at = ",
        );
        sql.param(now)
            .push(", updated_at = ")
            .param(now)
            .push(" WHERE resolution_status = 'retrying' AND event_id IN ");
        sql.tuple(chunk.iter().copied());
        run(tx, sql).await?;
    }
    Ok(())
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
