//! The durable inbox (`webhook_events`) and its group-commit writer.
//!
//! Every accepted webhook request is appended here before it is acknowledged. One writer task
//! takes whatever requests are waiting (up to `intake.batch_max`, waiting at most
//! `intake.batch_wait_us` for more) and appends them with a single multi-row
//! `INSERT … ON CONFLICT (dedup_key) DO NOTHING RETURNING id, dedup_key`: one statement, one
//! implicit transaction, one fsync for the whole group. A request learns its fate only after
//! that commit, so a 200 always means "on disk", and "duplicate" always means "the first copy
//! is on disk".
//!
//! When the connection breaks while that statement is on its way, its fate is unknown: the
//! database may have committed it while the requests got 503. The writer keeps those dedup
//! keys and, as soon as the database answers again, looks them up: rows it finds `pending`
//! were committed and are handed to processing then (a redelivery of them is a duplicate and
//! would otherwise leave them waiting until the next restart).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use entity::webhook_events;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbErr, QueryResult,
    sea_query::{OnConflict, Query},
};
use tokio::sync::{mpsc, oneshot};

use crate::ingest::{Source, Tenant, event::Normalized};
use crate::{config::IntakeConfig, metrics as m};

/// The inbox status of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStatus {
    Pending,
    Processed,
    Failed,
    /// Kept for the record but never processed (e.g. a signed body that is not JSON).
    Dead,
}

impl EventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Pending => "pending",
            EventStatus::Processed => "processed",
            EventStatus::Failed => "failed",
            EventStatus::Dead => "dead",
        }
    }
}

/// How the reason of a signed body that was kept but refused begins (it is never replayed).
pub const REFUSED: &str = "payload refused";

/// A verified request, ready to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub source: Source,
    pub event_type: Option<String>,
    pub dedup_key: String,
    /// The tenant and the body's hash: the same signed bytes are stored once per tenant,
    /// whatever headers outside the signature say (Kapso; `None` where `dedup_key` is it).
    pub body_key: Option<String>,
    /// The raw body as received (JSON is UTF-8), shared with the hand-over to processing.
    pub payload: Arc<str>,
    pub headers: String,
    /// Whose secret verified it: processing applies it only there.
    pub tenant: Tenant,
    pub correlation_id: String,
    pub received_at: DateTime<Utc>,
    pub status: EventStatus,
    pub last_error: Option<String>,
    /// What the intake read of it (normalised within its tenant), handed to processing with
    /// the committed event so the payload is parsed once; `None` for a refused body.
    pub normalized: Option<Reading>,
}

/// The typed event the intake made of a payload, or why it could not.
pub type Reading = Arc<Result<Normalized, String>>;

/// An event that is committed to the inbox, as handed to processing.
#[derive(Debug, Clone)]
pub struct CommittedEvent {
    pub id: i64,
    /// Re-driven from the dead-letter queue (its DLQ row resolves when it succeeds).
    pub redrive: bool,
    pub source: Source,
    pub event_type: Option<String>,
    /// Whose secret verified it: processing applies it only there.
    pub tenant: Tenant,
    pub correlation_id: String,
    pub received_at: DateTime<Utc>,
    /// The raw payload (empty for a broker delivery: the broker carries the reading).
    pub payload: Arc<str>,
    /// The intake's reading of the payload, when it came straight from a request or through
    /// the broker (recovery, re-drives and replays read the stored payload again).
    pub normalized: Option<Reading>,
}

impl CommittedEvent {
    /// A request's event, as committed with `id`.
    pub fn new(id: i64, e: &NewEvent) -> Self {
        Self {
            id,
            redrive: false,
            source: e.source,
            event_type: e.event_type.clone(),
            tenant: e.tenant.clone(),
            correlation_id: e.correlation_id.clone(),
            received_at: e.received_at,
            payload: e.payload.clone(),
            normalized: e.normalized.clone(),
        }
    }

    /// Reads the stored payload into its typed event, within the tenant that signed it (an
    /// event read back: the intake's reading is not there).
    pub fn read_payload(
        &self,
        directory: &super::accounts::Directory,
    ) -> Result<Normalized, String> {
        crate::ingest::normalize(
            self.source,
            self.event_type.as_deref(),
            &self.payload,
            self.received_at,
            &directory.scope(&self.tenant),
        )
    }

    pub fn from_row(e: webhook_events::Model, redrive: bool) -> Self {
        Self {
            id: e.id,
            redrive,
            source: Source::from_name(&e.source),
            event_type: e.event_type,
            tenant: Tenant::decode(e.signed_by.as_deref(), e.workspace_id, e.account_id),
            correlation_id: e.correlation_id,
            received_at: e.received_at,
            payload: Arc::from(e.payload),
            normalized: None,
        }
    }
}

/// Pending inbox events after `after` (`(received_at, id)`), oldest first: what crash
/// recovery re-dispatches, page by page.
pub async fn pending_page(
    db: &impl ConnectionTrait,
    after: Option<(DateTime<Utc>, i64)>,
    limit: u64,
) -> Result<Vec<CommittedEvent>, DbErr> {
    use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
    use webhook_events::Column as C;
    let mut q = webhook_events::Entity::find().filter(C::Status.eq(EventStatus::Pending.as_str()));
    if let Some((at, id)) = after {
        q = q.filter(
            Condition::any()
                .add(C::ReceivedAt.gt(at))
                .add(Condition::all().add(C::ReceivedAt.eq(at)).add(C::Id.gt(id))),
        );
    }
    let rows = q
        .order_by_asc(C::ReceivedAt)
        .order_by_asc(C::Id)
        .limit(limit)
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|e| CommittedEvent::from_row(e, false))
        .collect())
}

/// The stored first copies of duplicates (by dedup key or body key) that are still
/// `pending`, one query for them all: per event given, its copy or `None`.
async fn pending_copies(
    db: &impl ConnectionTrait,
    events: &[&NewEvent],
) -> Result<Vec<Option<CommittedEvent>>, DbErr> {
    use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter};
    use webhook_events::Column as C;
    let dedup_keys = events.iter().map(|e| e.dedup_key.clone());
    let body_keys: Vec<String> = events.iter().filter_map(|e| e.body_key.clone()).collect();
    let mut same = Condition::any().add(C::DedupKey.is_in(dedup_keys));
    if !body_keys.is_empty() {
        same = same.add(C::BodyKey.is_in(body_keys));
    }
    let rows = webhook_events::Entity::find()
        .filter(same)
        .filter(C::Status.eq(EventStatus::Pending.as_str()))
        .all(db)
        .await?;
    Ok(events
        .iter()
        .map(|e| {
            rows.iter()
                .find(|r| {
                    r.dedup_key == e.dedup_key || (e.body_key.is_some() && r.body_key == e.body_key)
                })
                .map(|r| CommittedEvent::from_row(r.clone(), false))
        })
        .collect())
}

/// Marks inbox rows `processed`, inside the store's transaction with their last effects.
pub fn mark_processed(done: &[i64], now: DateTime<Utc>, chain: &mut super::sql::Chain) {
    for chunk in done.chunks(super::sql::CHUNK) {
        let mut sql = super::sql::Sql::new(
            chain.backend(),
            "UPDATE webhook_events SET status = 'processed', last_error = NULL, attempts = attempts + 1, processed_at = ",
        );
        sql.param(now).push(" WHERE id IN ");
        sql.tuple(chunk.iter().copied());
        chain.push(sql);
    }
}

/// Keeps what normalisation said about an event with it (`webhook_events.notes`).
pub async fn record_notes(
    db: &impl ConnectionTrait,
    event_id: i64,
    notes: &[String],
) -> Result<(), DbErr> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    webhook_events::Entity::update_many()
        .col_expr(webhook_events::Column::Notes, notes.join("\n").into())
        .filter(webhook_events::Column::Id.eq(event_id))
        .exec(db)
        .await
        .map(|_| ())
}

/// The one narrow interface between the inbox and processing, on one node as in a cluster:
/// the inbox's writer hands over each committed group's pending events, in commit order, right
/// after the commit, and answers the group's requests once the hand-over is confirmed. A
/// single node's router takes them at once (a cast each, never an await); a cluster node
/// publishes them to the broker and confirms once the broker has confirmed them all — waited
/// for apart from the writer, so the next group commits meanwhile.
pub trait EventSink: Send + Sync + 'static {
    /// Hands the events over (in order: the writer awaits it before its next commit) and says
    /// how the hand-over is confirmed.
    fn hand_over(&self, events: Vec<CommittedEvent>) -> BoxFuture<'_, HandOver>;

    /// Whether a request that is a duplicate of an event still `pending` hands that event
    /// over again (a cluster node: its first node may have died between commit and publish,
    /// so what its sender sends next must not be applied before it). A single node's router
    /// has every pending event already.
    fn hands_over_pending_duplicates(&self) -> bool {
        false
    }
}

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// How a group's hand-over is confirmed.
pub enum HandOver {
    /// Taken: the requests are answered now.
    Taken,
    /// Confirmed when this resolves, per event in the order given: `Err` says why an event
    /// may not have been handed over (its request is answered 503; the event stays `pending`
    /// in the inbox, and the cluster's sweeper hands it over later).
    Confirming(BoxFuture<'static, Vec<Result<(), String>>>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    Accepted { event_id: i64 },
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("the intake queue is full")]
    QueueFull,
    #[error("the inbox writer has stopped")]
    Closed,
    #[error("the inbox could not commit: {0}")]
    Store(String),
    #[error("committed, but not handed over to processing: {0}")]
    HandOver(String),
}

struct Request {
    event: NewEvent,
    reply: oneshot::Sender<Result<AppendOutcome, AppendError>>,
}

/// Handle to the inbox writer; cheap to clone.
#[derive(Clone)]
pub struct Inbox {
    tx: mpsc::Sender<Request>,
    failing: Failing,
}

/// Why the inbox's last write failed, until one succeeds (readiness reports it).
type Failing = Arc<std::sync::Mutex<Option<String>>>;

impl Inbox {
    /// Starts the writer task; `db` is [`super::connect_writer`]'s.
    pub fn spawn(
        db: DatabaseConnection,
        gate: super::WriteGate,
        cfg: &IntakeConfig,
        wal: super::WalSync,
        sink: Arc<dyn EventSink>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(cfg.queue_capacity);
        let failing = Failing::default();
        let writer = Writer {
            failing: failing.clone(),
            db,
            gate,
            wal,
            rx,
            sink,
            batch_max: cfg.batch_max,
            batch_wait: Duration::from_micros(cfg.batch_wait_us),
            in_doubt: HashSet::new(),
        };
        (Self { tx, failing }, tokio::spawn(writer.run()))
    }

    /// Appends one event and waits for its group's commit.
    pub async fn append(&self, event: NewEvent) -> Result<AppendOutcome, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Request { event, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => AppendError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => AppendError::Closed,
            })?;
        rx.await.map_err(|_| AppendError::Closed)?
    }

    /// Why the last write to the inbox failed, while no later one has succeeded (the
    /// database is away or its disk is full: webhooks get 503 meanwhile).
    pub fn failing(&self) -> Option<String> {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Requests waiting for the writer.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

struct Writer {
    db: DatabaseConnection,
    gate: super::WriteGate,
    /// SQLite: flushes the log after each group commit (a 200 means on disk).
    wal: super::WalSync,
    rx: mpsc::Receiver<Request>,
    sink: Arc<dyn EventSink>,
    batch_max: usize,
    batch_wait: Duration,
    /// Dedup keys of groups whose commit broke off with an unknown outcome.
    in_doubt: HashSet<String>,
    failing: Failing,
}

/// Most dedup keys kept in doubt; past it the rest wait for the next start's recovery.
const MAX_IN_DOUBT: usize = 100_000;
/// How often an idle writer tries to settle its doubts.
const DOUBT_RETRY: Duration = Duration::from_secs(1);

impl Writer {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.batch_max);
        loop {
            let idle_work = !self.in_doubt.is_empty() || self.is_failing();
            let first = if !idle_work {
                self.rx.recv().await
            } else {
                match tokio::time::timeout(DOUBT_RETRY, self.rx.recv()).await {
                    Ok(next) => next,
                    Err(_) => {
                        // No traffic (a balancer may hold it back while we are not ready):
                        // find out whether the inbox takes writes again.
                        if self.is_failing() {
                            self.probe().await;
                        }
                        if !self.in_doubt.is_empty() {
                            self.settle_doubts().await;
                        }
                        continue;
                    }
                }
            };
            let Some(first) = first else { return };
            batch.push(first);
            self.fill(&mut batch).await;
            metrics::gauge!(m::INTAKE_QUEUE_DEPTH).set(self.rx.len() as f64);
            let committed = self.commit(&mut batch).await;
            if committed && !self.in_doubt.is_empty() {
                self.settle_doubts().await;
            }
        }
    }

    fn is_failing(&self) -> bool {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn set_failing(&self, why: Option<String>) {
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    /// A write that changes nothing but needs the database and room in it.
    async fn probe(&self) {
        let backend = self.db.get_database_backend();
        let sql = "UPDATE webhook_events SET attempts = attempts \
                   WHERE id = (SELECT MAX(id) FROM webhook_events)";
        let result = {
            let _gate = self.gate.enter().await;
            self.db
                .execute_raw(sea_orm::Statement::from_string(backend, sql))
                .await
        };
        match result {
            Ok(_) => {
                tracing::info!("the inbox takes writes again");
                self.set_failing(None);
            }
            Err(e) => self.set_failing(Some(e.to_string())),
        }
    }

    /// Looks up the keys in doubt: those found `pending` were committed after all and go to
    /// processing now. Keys a later commit inserted were dispatched by it and are gone already.
    async fn settle_doubts(&mut self) {
        let keys: Vec<String> = self.in_doubt.iter().cloned().collect();
        let mut found = Vec::new();
        for chunk in keys.chunks(500) {
            match pending_by_keys(&self.db, chunk).await {
                Ok(rows) => found.extend(rows),
                Err(e) => {
                    tracing::debug!(error = %e, "the inbox cannot settle its doubts yet");
                    return;
                }
            }
        }
        found.sort_by_key(|e| e.id);
        tracing::warn!(
            in_doubt = keys.len(),
            committed = found.len(),
            "settled inbox commits whose outcome was unknown; dispatching the committed ones"
        );
        metrics::counter!(m::INBOX_DOUBTFUL, "outcome" => "committed")
            .increment(found.len() as u64);
        metrics::counter!(m::INBOX_DOUBTFUL, "outcome" => "not_committed")
            .increment((keys.len() - found.len()) as u64);
        self.in_doubt.clear();
        // Nobody waits for these: a cluster's sweeper publishes any whose publish fails.
        if let HandOver::Confirming(confirms) = self.sink.hand_over(found).await {
            tokio::spawn(confirms);
        }
    }

    /// Takes what is already queued, then waits (bounded) for stragglers.
    async fn fill(&mut self, batch: &mut Vec<Request>) {
        let deadline = tokio::time::Instant::now() + self.batch_wait;
        while batch.len() < self.batch_max {
            match self.rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(mpsc::error::TryRecvError::Disconnected) => return,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if self.batch_wait.is_zero() {
                        return;
                    }
                    match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                        Ok(Some(r)) => batch.push(r),
                        _ => return,
                    }
                }
            }
        }
    }

    /// Commits one group and answers its requests; true when the database took it.
    async fn commit(&mut self, batch: &mut Vec<Request>) -> bool {
        // The first request of a dedup key in the batch is the one inserted; later copies in
        // the same batch are duplicates of it (they share its commit).
        let mut first_of: HashMap<&str, usize> = HashMap::with_capacity(batch.len());
        let mut unique = Vec::with_capacity(batch.len());
        for (i, r) in batch.iter().enumerate() {
            if !first_of.contains_key(r.event.dedup_key.as_str()) {
                first_of.insert(r.event.dedup_key.as_str(), i);
                unique.push(&r.event);
            }
        }
        let started = Instant::now();
        let result = match injected_refusal(&unique) {
            Err(e) => Err(e),
            Ok(()) => {
                let _gate = self.gate.enter().await;
                metrics::histogram!(m::WRITE_GATE_WAIT, "writer" => "inbox")
                    .record(started.elapsed().as_secs_f64());
                let t = Instant::now();
                let result = append_many(&self.db, &unique).await;
                m::step("inbox_append", t);
                result
            }
        };
        // On disk before anyone hears of it: SQLite's log is flushed after the gate is left,
        // so the store commits while the disk works. A failed flush leaves the group in doubt.
        let result = match result {
            Ok(inserted) => self.wal.flush("inbox_flush").await.map(|()| inserted),
            Err(e) => Err(e),
        };
        let result = result.and_then(|inserted| injected_lost_reply(&unique).map(|()| inserted));
        let elapsed = started.elapsed().as_secs_f64();
        metrics::histogram!(m::INBOX_COMMIT_DURATION).record(elapsed);
        metrics::histogram!(m::INBOX_BATCH_SIZE).record(batch.len() as f64);
        metrics::counter!(m::DB_STATEMENTS, "component" => "inbox").increment(1);

        match &result {
            Ok(_) => self.set_failing(None),
            Err(e) => self.set_failing(Some(e.to_string())),
        }
        match result {
            Ok(inserted) => {
                let mut outcomes: Vec<AppendOutcome> = vec![AppendOutcome::Duplicate; batch.len()];
                let mut committed = Vec::with_capacity(inserted.len());
                for (id, key) in inserted {
                    if let Some(&i) = first_of.get(key.as_str()) {
                        outcomes[i] = AppendOutcome::Accepted { event_id: id };
                        committed.push((id, i));
                    }
                }
                committed.sort_unstable();
                // What is handed over, and the request each answers.
                let mut handed = Vec::with_capacity(committed.len());
                let mut answers = Vec::with_capacity(committed.len());
                for (id, i) in committed {
                    let e = &mut batch[i].event;
                    self.in_doubt.remove(e.dedup_key.as_str());
                    if e.status == EventStatus::Pending {
                        // The intake's reading goes with it (moved, not shared: processing
                        // then owns it outright).
                        let normalized = e.normalized.take();
                        handed.push(CommittedEvent {
                            normalized,
                            ..CommittedEvent::new(id, e)
                        });
                        answers.push(i);
                    }
                }
                let mut failed: Vec<Option<String>> = vec![None; batch.len()];
                let duplicates: Vec<usize> = (0..batch.len())
                    .filter(|&i| {
                        outcomes[i] == AppendOutcome::Duplicate
                            && batch[i].event.status == EventStatus::Pending
                    })
                    .collect();
                if self.sink.hands_over_pending_duplicates() && !duplicates.is_empty() {
                    let events: Vec<&NewEvent> =
                        duplicates.iter().map(|&i| &batch[i].event).collect();
                    match pending_copies(&self.db, &events).await {
                        Ok(copies) => {
                            for (&i, copy) in duplicates.iter().zip(copies) {
                                if let Some(first) = copy {
                                    handed.push(first);
                                    answers.push(i);
                                }
                            }
                        }
                        // Their first copies stay pending for the sweeper; the senders retry.
                        Err(e) => {
                            for &i in &duplicates {
                                failed[i] = Some(e.to_string());
                            }
                        }
                    }
                }
                let hand_over = self.sink.hand_over(handed).await;
                let replies: Vec<_> = batch.drain(..).map(|r| r.reply).collect();
                match hand_over {
                    HandOver::Taken => answer(replies, outcomes, failed, answers, Vec::new()),
                    HandOver::Confirming(confirms) => {
                        tokio::spawn(async move {
                            let confirmed = confirms.await;
                            answer(replies, outcomes, failed, answers, confirmed);
                        });
                    }
                }
                true
            }
            Err(e) if unique.len() > 1 && !super::change::is_unreachable(&e) => {
                // The database refused the statement for something in it (a row it cannot
                // hold): each request is committed alone, so a bad row fails only itself and
                // the good events grouped with it are still acknowledged.
                tracing::warn!(error = %e, batch = batch.len(), "the database refused an inbox group; committing its requests one by one");
                let mut any = false;
                for r in std::mem::take(batch) {
                    any |= Box::pin(self.commit(&mut vec![r])).await;
                }
                any
            }
            Err(e) => {
                let doubtful = outcome_unknown(&e);
                tracing::error!(error = %e, batch = batch.len(), doubtful, "inbox commit failed; answering 503");
                if doubtful {
                    for e in unique
                        .iter()
                        .take(MAX_IN_DOUBT.saturating_sub(self.in_doubt.len()))
                    {
                        self.in_doubt.insert(e.dedup_key.clone());
                    }
                }
                let message = e.to_string();
                for r in batch.drain(..) {
                    let _ = r.reply.send(Err(AppendError::Store(message.clone())));
                }
                false
            }
        }
    }
}

/// Answers a group's requests: each with its outcome, or — where the hand-over of the event it
/// answers for (`answers[k]` is the request of the `k`-th event handed over) was not
/// confirmed — with why.
fn answer(
    replies: Vec<oneshot::Sender<Result<AppendOutcome, AppendError>>>,
    outcomes: Vec<AppendOutcome>,
    mut failed: Vec<Option<String>>,
    answers: Vec<usize>,
    confirmed: Vec<Result<(), String>>,
) {
    for (k, result) in confirmed.into_iter().enumerate() {
        if let (Err(e), Some(&i)) = (result, answers.get(k)) {
            failed[i] = Some(e);
        }
    }
    for ((reply, outcome), failed) in replies.into_iter().zip(outcomes).zip(failed) {
        let _ = reply.send(match failed {
            None => Ok(outcome),
            Some(e) => Err(AppendError::HandOver(e)),
        });
    }
}

/// A failed statement may still have committed when the connection broke after it was sent;
/// it cannot have when no connection was had, or when the database answered with an error.
fn outcome_unknown(e: &DbErr) -> bool {
    use sea_orm::{RuntimeErr, sqlx::Error as Sqlx};
    match e {
        DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            matches!(&**e, Sqlx::Io(_) | Sqlx::WorkerCrashed | Sqlx::Protocol(_))
        }
        _ => false,
    }
}

/// Pending rows among these dedup keys.
async fn pending_by_keys(
    db: &impl ConnectionTrait,
    keys: &[String],
) -> Result<Vec<CommittedEvent>, DbErr> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    use webhook_events::Column as C;
    let rows = webhook_events::Entity::find()
        .filter(C::DedupKey.is_in(keys.iter().cloned()))
        .filter(C::Status.eq(EventStatus::Pending.as_str()))
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|e| CommittedEvent::from_row(e, false))
        .collect())
}

/// Whether a test hook's argument (a text, typically a wamid) is in one of the group's payloads.
#[allow(dead_code)] // used only where the `fail` crate's points are compiled in
fn holds(events: &[&NewEvent], arg: Option<String>) -> bool {
    arg.is_some_and(|needle| events.iter().any(|e| e.payload.contains(needle.as_str())))
}

/// Test hook: the database refuses the statement of a group holding the point's text, as
/// PostgreSQL refuses a row it cannot store.
#[allow(unused_variables)] // without failpoints the macro expands to nothing
fn injected_refusal(events: &[&NewEvent]) -> Result<(), DbErr> {
    fail::fail_point!("inbox::refuse_row", |arg: Option<String>| {
        if holds(events, arg) {
            Err(DbErr::Query(sea_orm::RuntimeErr::Internal(
                "injected: the database refused a row".into(),
            )))
        } else {
            Ok(())
        }
    });
    Ok(())
}

/// Test hook: the group was committed, but its answer is lost on the way back, as when the
/// connection breaks after the database committed (for groups holding the point's text).
#[allow(unused_variables)] // without failpoints the macro expands to nothing
fn injected_lost_reply(events: &[&NewEvent]) -> Result<(), DbErr> {
    fail::fail_point!("inbox::lost_reply", |arg: Option<String>| {
        if holds(events, arg) {
            Err(DbErr::Conn(sea_orm::RuntimeErr::Internal(
                "injected: the connection broke after the commit".into(),
            )))
        } else {
            Ok(())
        }
    });
    Ok(())
}

/// One statement for the whole group; returns `(id, dedup_key)` of the rows it inserted.
pub async fn append_many(
    db: &impl ConnectionTrait,
    events: &[&NewEvent],
) -> Result<Vec<(i64, String)>, DbErr> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    use webhook_events::Column as C;
    let columns = [
        C::WorkspaceId,
        C::AccountId,
        C::SignedBy,
        C::Source,
        C::EventType,
        C::DedupKey,
        C::BodyKey,
        C::Payload,
        C::Headers,
        C::ReceivedAt,
        C::Status,
        C::Attempts,
        C::LastError,
        C::CorrelationId,
    ];
    let mut insert = Query::insert();
    insert
        .into_table(webhook_events::Entity)
        .columns(columns)
        // Either unique key (the dedup key, the body key) makes a request a duplicate.
        .on_conflict(OnConflict::new().do_nothing().to_owned())
        .returning(Query::returning().columns([C::Id, C::DedupKey]));
    for e in events {
        insert.values_panic([
            e.tenant.workspace_id().into(),
            e.tenant.account_id().into(),
            e.tenant.encode().into(),
            e.source.as_str().into(),
            e.event_type.clone().into(),
            e.dedup_key.clone().into(),
            e.body_key.clone().into(),
            e.payload.to_string().into(),
            e.headers.clone().into(),
            e.received_at.into(),
            e.status.as_str().into(),
            0i32.into(),
            e.last_error.clone().into(),
            e.correlation_id.clone().into(),
        ]);
    }
    let stmt = db.get_database_backend().build(&insert);
    let rows: Vec<QueryResult> = db.query_all_raw(stmt).await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get::<i64>("", "id")?,
                r.try_get::<String>("", "dedup_key")?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: &str) -> NewEvent {
        NewEvent {
            source: Source::Meta,
            event_type: None,
            dedup_key: key.into(),
            body_key: None,
            payload: "{}".into(),
            headers: "{}".into(),
            tenant: Tenant::nobody(),
            correlation_id: "c".into(),
            received_at: Utc::now(),
            status: EventStatus::Pending,
            last_error: None,
            normalized: None,
        }
    }

    /// A full queue refuses at once (the endpoint answers 503 + Retry-After) instead of
    /// waiting or growing; a stopped writer is reported as such.
    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let (tx, rx) = mpsc::channel(1);
        let inbox = Inbox {
            tx,
            failing: Failing::default(),
        };
        // Fill the only slot; nobody drains it.
        let (reply, _keep) = oneshot::channel();
        inbox
            .tx
            .try_send(Request {
                event: event("a"),
                reply,
            })
            .expect("one slot");
        assert_eq!(inbox.queue_depth(), 1);
        assert!(matches!(
            inbox.append(event("b")).await,
            Err(AppendError::QueueFull)
        ));
        drop(rx);
        assert!(matches!(
            inbox.append(event("c")).await,
            Err(AppendError::Closed)
        ));
    }
}

/// Filters of the operator's event list.
#[derive(Debug, Default)]
pub struct EventFilter<'a> {
    pub status: Option<&'a str>,
    pub source: Option<&'a str>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub ids: Option<&'a [i64]>,
    /// A wamid, phone or other text the payload holds, or the correlation id.
    pub search: Option<&'a str>,
    /// Newest first (the cursor is then the last id seen, and the page goes below it);
    /// otherwise oldest first.
    pub newest: bool,
}

/// What a list of events shows: every column but the payload and the headers, which may be
/// megabytes each (they are read for one event at a time).
#[derive(Debug, Clone, sea_orm::FromQueryResult)]
pub struct EventSummary {
    pub id: i64,
    pub source: String,
    pub event_type: Option<String>,
    pub status: String,
    pub attempts: i32,
    pub received_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub correlation_id: String,
    pub notes: Option<String>,
}

/// A workspace's events by id after the cursor, without their payloads.
pub async fn list_summaries(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    filter: &EventFilter<'_>,
    after: Option<i64>,
    limit: u64,
) -> Result<Vec<EventSummary>, DbErr> {
    use sea_orm::QuerySelect;
    use webhook_events::Column as C;
    filtered(workspace_id, filter, after, limit)
        .select_only()
        .columns([
            C::Id,
            C::Source,
            C::EventType,
            C::Status,
            C::Attempts,
            C::ReceivedAt,
            C::ProcessedAt,
            C::LastError,
            C::CorrelationId,
            C::Notes,
        ])
        .into_model::<EventSummary>()
        .all(db)
        .await
}

/// The ids of a workspace's events (a range replay pages through them).
pub async fn list_ids(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    filter: &EventFilter<'_>,
    limit: u64,
) -> Result<Vec<i64>, DbErr> {
    use sea_orm::QuerySelect;
    filtered(workspace_id, filter, None, limit)
        .select_only()
        .column(webhook_events::Column::Id)
        .into_tuple::<i64>()
        .all(db)
        .await
}

/// A workspace's events by id after the cursor, whole (payloads too: page small).
pub async fn list(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    filter: &EventFilter<'_>,
    after: Option<i64>,
    limit: u64,
) -> Result<Vec<webhook_events::Model>, DbErr> {
    filtered(workspace_id, filter, after, limit).all(db).await
}

fn filtered(
    workspace_id: i64,
    filter: &EventFilter<'_>,
    after: Option<i64>,
    limit: u64,
) -> sea_orm::Select<webhook_events::Entity> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
    use webhook_events::Column as C;
    let mut q = webhook_events::Entity::find().filter(C::WorkspaceId.eq(workspace_id));
    if let Some(s) = filter.status {
        q = q.filter(C::Status.eq(s));
    }
    if let Some(s) = filter.source {
        q = q.filter(C::Source.eq(s));
    }
    if let Some(from) = filter.from {
        q = q.filter(C::ReceivedAt.gte(from));
    }
    if let Some(to) = filter.to {
        q = q.filter(C::ReceivedAt.lt(to));
    }
    if let Some(ids) = filter.ids {
        q = q.filter(C::Id.is_in(ids.iter().copied()));
    }
    if let Some(term) = filter.search.map(str::trim).filter(|t| !t.is_empty()) {
        use sea_orm::{
            ExprTrait,
            sea_query::{Expr, LikeExpr},
        };
        let like = LikeExpr::new(super::sql::contains(term)).escape(super::sql::LIKE_ESCAPE);
        q = q.filter(
            sea_orm::Condition::any()
                .add(C::CorrelationId.eq(term))
                .add(Expr::col(C::Payload).like(like)),
        );
    }
    if filter.newest {
        if let Some(after) = after {
            q = q.filter(C::Id.lt(after));
        }
        return q.order_by_desc(C::Id).limit(limit);
    }
    if let Some(after) = after {
        q = q.filter(C::Id.gt(after));
    }
    q.order_by_asc(C::Id).limit(limit)
}

/// Sets events back to `pending` (a replay: processing them again changes nothing twice) and
/// returns them for dispatch; a body that cannot be read one way (not JSON, a key given twice:
/// the intake's strict reading, run on the stored payload) stays `dead`.
pub async fn reset_for_replay(
    db: &impl ConnectionTrait,
    events: &[webhook_events::Model],
) -> Result<Vec<CommittedEvent>, DbErr> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let replayable: Vec<&webhook_events::Model> = events
        .iter()
        .filter(|e| {
            e.status != EventStatus::Dead.as_str()
                || crate::ingest::route::strict(e.payload.as_bytes())
                    == crate::ingest::route::Strict::Fine
        })
        .collect();
    for chunk in replayable.chunks(super::sql::CHUNK) {
        webhook_events::Entity::update_many()
            .col_expr(
                webhook_events::Column::Status,
                EventStatus::Pending.as_str().into(),
            )
            .filter(webhook_events::Column::Id.is_in(chunk.iter().map(|e| e.id)))
            .exec(db)
            .await?;
    }
    Ok(replayable
        .into_iter()
        .map(|e| CommittedEvent::from_row(e.clone(), false))
        .collect())
}
