//! The two hot writers (the inbox's group commit and the store's batches): the connection they
//! commit on and, on SQLite, the gate between them.

use std::{path::PathBuf, sync::Arc};

use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr};

use crate::config::{DatabaseConfig, SqliteSynchronous};

/// Serialises the writers on SQLite, which allows one writing transaction at a time: a writer
/// that finds the database locked would otherwise wait in SQLite's busy handler, which
/// *sleeps* (1, 2, 5 … 100 ms steps) instead of waking when the lock frees, and the inbox's ack
/// latency paid for it (p99 65 ms, max 354 ms under full load). Here the waiter is woken the
/// moment the other commits. On PostgreSQL there is no gate: writers do not block each other.
#[derive(Clone, Default)]
pub struct WriteGate(Option<Arc<tokio::sync::Mutex<()>>>);

impl WriteGate {
    pub fn for_backend(db: &impl ConnectionTrait) -> Self {
        match db.get_database_backend() {
            DatabaseBackend::Sqlite => Self(Some(Default::default())),
            _ => Self(None),
        }
    }

    pub async fn enter(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.0 {
            Some(m) => Some(m.lock().await),
            None => None,
        }
    }
}

/// Makes a SQLite writer's commits durable after it has left the gate.
///
/// The writer connection commits with `synchronous = NORMAL`: a commit is appended to the
/// write-ahead log but not yet flushed. Flushing the log file (`fdatasync`) then puts every
/// commit written to it so far on disk, and on recovery SQLite replays the log's valid frames
/// in order. Done by SQLite itself (`synchronous = FULL`), that flush happened while the commit
/// still held the one write lock, so the store waited for the inbox's disk on every cycle; done
/// here, the store commits while the inbox's flush runs, and nobody is told "on disk" before it
/// is. A log that is gone was checkpointed into the database file and synced by SQLite.
#[derive(Clone, Debug, Default)]
pub struct WalSync(Option<Arc<PathBuf>>);

impl WalSync {
    /// For a SQLite file database whose commits must wait for the disk; nothing otherwise.
    pub fn new(cfg: &DatabaseConfig, durable: bool) -> Self {
        match super::sqlite_path(&cfg.url) {
            Some(db) if durable => {
                let mut wal = db.as_os_str().to_owned();
                wal.push("-wal");
                Self(Some(Arc::new(PathBuf::from(wal))))
            }
            _ => Self(None),
        }
    }

    /// Flushes the log: every commit written to it before this call is then on disk.
    pub async fn sync(&self) -> std::io::Result<()> {
        let Some(path) = self.0.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || match std::fs::File::open(&*path) {
            Ok(log) => log.sync_data(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    /// [`Self::sync`], timed as writer step `step` when there is a log to flush, with a
    /// failure as a lost connection: the commit happened, but whether it is on disk is unknown
    /// (the inbox keeps such keys in doubt; the store retries).
    pub async fn flush(&self, step: &'static str) -> Result<(), DbErr> {
        if self.0.is_none() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let result = self.sync().await.map_err(|e| {
            DbErr::Conn(sea_orm::RuntimeErr::Internal(format!(
                "the commit could not be flushed to disk: {e}"
            )))
        });
        crate::metrics::step(step, started);
        result
    }
}

/// The connection the inbox and store writers commit on. SQLite: one connection of their own,
/// shared behind the [`WriteGate`] (a write by one connection makes every other connection of
/// the file drop its page cache at its next transaction, so two writers on two of the pool's
/// connections each started cold, rereading the pages the other had just written), with
/// `synchronous = NORMAL`: the writers flush the log themselves ([`WalSync`]).
/// PostgreSQL: the pool itself (its writers do not block each other).
pub async fn connect_writer(
    cfg: &DatabaseConfig,
    pool: &DatabaseConnection,
) -> Result<DatabaseConnection, DbErr> {
    if pool.get_database_backend() != DatabaseBackend::Sqlite {
        return Ok(pool.clone());
    }
    let mut one = cfg.clone();
    one.max_connections = 1;
    if one.sqlite_synchronous != SqliteSynchronous::Off {
        one.sqlite_synchronous = SqliteSynchronous::Normal;
    }
    super::connect_with(&one, |o| {
        o.pragma("wal_autocheckpoint", WRITER_CHECKPOINT_FRAMES)
    })
    .await
}

/// Past this many frames (128 MB) in the write-ahead log, the checkpointer finishes its copy
/// with the writers held ([`checkpoint_every`]), so that the log starts again from its
/// beginning.
const FINISH_AT_FRAMES: i64 = 32_000;

/// The writer connection's own limit (192 MB of log), a safety net: past it, a commit copies
/// the log into the database file itself, holding the write lock.
const WRITER_CHECKPOINT_FRAMES: &str = "48000";

/// A pass that copied at most this many frames leaves few for the pass under the gate.
const FEW_FRAMES: i64 = 256;

/// SQLite: copies the write-ahead log into the database file every `every`, from a pool
/// connection, while the writers go on (a PASSIVE checkpoint takes no write lock). Once the log
/// is past [`FINISH_AT_FRAMES`], it repeats the pass until one copies few frames (each copies
/// what was committed during the one before), then copies those last few with the writers held
/// at the [`WriteGate`]: the log is then wholly copied, and the next writer starts it again from
/// its beginning.
///
/// A log restarts only when it is wholly copied as a writer begins. Under a steady load the
/// passes alone always ended a few commits behind, so the log grew to the writer connection's
/// limit and the writer checkpointed it itself inside a commit, holding the write lock for
/// 25–100 ms, 58 times in 20 s (ack p99 at 11,000 webhooks/s: 39–41 ms). A pass under the gate
/// at every tick took 9–18 ms on average, five times a second (p99 26–33 ms). Now, at 12,000
/// webhooks/s, the pass under the gate runs about once a second and takes 12–17 ms on average
/// (ack p99 17–22 ms; BENCHMARKS.md).
///
/// The writer connection keeps its limit as a safety net: without one, after a full disk the
/// log never restarted and refilled the disk (the disk-full drill). SQLite's default of 1,000
/// pages made a commit copy the whole log — and sync the database file — under the write lock
/// every 1,000 pages.
pub async fn checkpoint_every(db: DatabaseConnection, gate: WriteGate, every: std::time::Duration) {
    checkpoint_loop(db, gate, every, FINISH_AT_FRAMES).await
}

async fn checkpoint_loop(
    db: DatabaseConnection,
    gate: WriteGate,
    every: std::time::Duration,
    finish_at: i64,
) {
    if db.get_database_backend() != DatabaseBackend::Sqlite {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut finish = false;
        let mut last: Option<(i64, i64)> = None;
        for _ in 0..8 {
            let t = std::time::Instant::now();
            let (log, copied) = match checkpoint(&db).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "WAL checkpoint skipped");
                    finish = false;
                    break;
                }
            };
            crate::metrics::step("checkpoint", t);
            finish = log > finish_at;
            // Frames this pass copied (all it reports when the log started again meanwhile).
            let this_pass = match last {
                Some((l, c)) if log >= l => copied - c,
                Some(_) => copied,
                None => i64::MAX,
            };
            last = Some((log, copied));
            if !finish || this_pass <= FEW_FRAMES {
                break;
            }
        }
        if finish {
            let _writers = gate.enter().await;
            let t = std::time::Instant::now();
            match checkpoint(&db).await {
                Ok(_) => crate::metrics::step("checkpoint_finish", t),
                Err(e) => tracing::debug!(error = %e, "WAL checkpoint skipped"),
            }
        }
    }
}

/// One PASSIVE checkpoint: (frames in the log, frames copied into the database file).
async fn checkpoint(db: &DatabaseConnection) -> Result<(i64, i64), DbErr> {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            DatabaseBackend::Sqlite,
            "PRAGMA wal_checkpoint(PASSIVE)",
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("wal_checkpoint returned no row".into()))?;
    Ok((row.try_get_by_index(1)?, row.try_get_by_index(2)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn level(db: &DatabaseConnection) -> i64 {
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                DatabaseBackend::Sqlite,
                "PRAGMA synchronous",
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get_by_index::<i64>(0).unwrap()
    }

    /// Commits `pages` rows of 4,000 bytes (a page each) into the table `big`.
    async fn write_pages(db: &DatabaseConnection, pages: u32) {
        db.execute_unprepared(&format!(
            "INSERT INTO big SELECT zeroblob(4000) FROM (WITH RECURSIVE n(i) AS \
             (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {pages}) SELECT i FROM n)"
        ))
        .await
        .unwrap();
    }

    /// Salt-1 of the write-ahead log's header, which SQLite adds one to at each restart.
    fn log_restarts(dir: &tempfile::TempDir) -> u32 {
        use std::io::Read;
        let mut header = [0u8; 20];
        std::fs::File::open(dir.path().join("w.db-wal"))
            .unwrap()
            .read_exact(&mut header)
            .unwrap();
        u32::from_be_bytes(header[16..20].try_into().unwrap())
    }

    /// A SQLite file `w.db` in `dir`, its pool's connections at `synchronous = FULL`.
    fn sqlite_in(dir: &tempfile::TempDir) -> DatabaseConfig {
        DatabaseConfig {
            url: format!("sqlite://{}/w.db", dir.path().display()),
            max_connections: 4,
            schema: String::new(),
            sqlite_synchronous: SqliteSynchronous::Full,
            store_fsync: false,
            statement_cache: 1024,
            sqlite_checkpoint_ms: 1000,
            acquire_timeout_ms: 2000,
        }
    }

    /// The writer connection commits without SQLite's own flush (NORMAL = 1) and the writers
    /// flush the log themselves; the pool's connections keep the configured level (FULL = 2).
    #[tokio::test]
    async fn the_writer_connection_leaves_the_flush_to_the_writers() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = sqlite_in(&dir);
        let pool = crate::store::connect(&cfg).await.unwrap();
        let writer = connect_writer(&cfg, &pool).await.unwrap();
        assert_eq!(level(&writer).await, 1);
        assert_eq!(level(&pool).await, 2);
        writer
            .execute_unprepared("CREATE TABLE t (x INTEGER)")
            .await
            .unwrap();
        let wal = WalSync::new(&cfg, true);
        assert_eq!(
            wal.0.as_deref(),
            Some(&dir.path().join("w.db-wal")),
            "the log beside the database"
        );
        assert!(dir.path().join("w.db-wal").exists());
        wal.sync().await.unwrap();
        assert!(WalSync::new(&cfg, false).0.is_none());

        // The writer connection leaves checkpoints to the pool (up to 48,000 pages): 2,000
        // pages written through it stay in the log until a checkpoint from another connection
        // copies them all.
        writer
            .execute_unprepared("CREATE TABLE big (x BLOB)")
            .await
            .unwrap();
        for _ in 0..40 {
            write_pages(&writer, 50).await;
        }
        let (log, copied) = checkpoint(&pool).await.unwrap();
        assert!(
            log >= 2000,
            "no automatic checkpoint emptied the log ({log} frames)"
        );
        assert_eq!(
            copied, log,
            "a passive checkpoint with no reader copies every frame"
        );
        // No log (checkpointed and removed by the last connection): nothing left to flush.
        pool.close().await.unwrap();
        writer.close().await.unwrap();
        assert!(!dir.path().join("w.db-wal").exists());
        wal.sync().await.unwrap();
        cfg.url = "postgres://localhost/x".into();
        assert!(WalSync::new(&cfg, true).0.is_none());
    }

    /// Under writers that never pause, the log still starts again from its beginning: the
    /// checkpointer copies the last frames with the writers held at the gate. Without that
    /// pass, every PASSIVE pass ends a few commits behind and the log grows to the writer
    /// connection's own limit (48,000 pages).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_starts_again_under_a_steady_load() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = sqlite_in(&dir);
        let pool = crate::store::connect(&cfg).await.unwrap();
        let writer = connect_writer(&cfg, &pool).await.unwrap();
        let gate = WriteGate::for_backend(&writer);
        writer
            .execute_unprepared("CREATE TABLE big (x BLOB)")
            .await
            .unwrap();
        let checkpointer = tokio::spawn(checkpoint_loop(
            pool.clone(),
            gate.clone(),
            std::time::Duration::from_millis(10),
            1000,
        ));
        // 20,000 pages of commits, 20 pages each, one right after the other. The log's header
        // counts its restarts (salt-1 grows by one at each).
        let restarts_before = log_restarts(&dir);
        for _ in 0..1000 {
            let _g = gate.enter().await;
            write_pages(&writer, 20).await;
        }
        checkpointer.abort();
        let restarts = log_restarts(&dir).wrapping_sub(restarts_before);
        // Measured: 6–18 restarts (11–18 beside two CPU hogs); 0 in every run without the pass
        // under the gate.
        assert!(
            restarts >= 3,
            "the log started again {restarts} times in 20,000 pages"
        );
        pool.close().await.unwrap();
        writer.close().await.unwrap();
    }
}
