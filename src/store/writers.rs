//! The two hot writers (the inbox's group commit and the store's batches): the connection they
//! commit on and, on SQLite, the gate between them.

use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr};

use super::connect;
use crate::config::DatabaseConfig;

/// Serialises the writers on SQLite, which allows one writing transaction at a time: a writer
/// that finds the database locked would otherwise wait in SQLite's busy handler, which
/// *sleeps* (1, 2, 5 … 100 ms steps) instead of waking when the lock frees, and the inbox's ack
/// latency paid for it (p99 65 ms, max 354 ms under full load). Here the waiter is woken the
/// moment the other commits. On PostgreSQL there is no gate: writers do not block each other.
///
/// On SQLite both writers also share one connection (see [`connect_writer`]), and the gate keeps
/// that connection's `synchronous` level as last set: the inbox commits with the configured
/// level, the store without waiting for its own fsync.
#[derive(Clone, Default)]
pub struct WriteGate(Option<std::sync::Arc<tokio::sync::Mutex<Level>>>);

/// The writer connection's `PRAGMA synchronous` as last set; `None` when unknown (after an
/// error the pool may have replaced the connection, which then has the configured level).
pub type Level = Option<&'static str>;

impl WriteGate {
    pub fn for_backend(db: &impl ConnectionTrait) -> Self {
        match db.get_database_backend() {
            DatabaseBackend::Sqlite => Self(Some(Default::default())),
            _ => Self(None),
        }
    }

    pub async fn enter(&self) -> Option<tokio::sync::MutexGuard<'_, Level>> {
        match &self.0 {
            Some(m) => Some(m.lock().await),
            None => None,
        }
    }

    /// Enters, and on SQLite sets the writer connection's `synchronous` to `level` first
    /// unless it is already there. A writer that fails afterwards calls [`forget`].
    pub async fn enter_at(
        &self,
        db: &impl ConnectionTrait,
        level: &'static str,
    ) -> Result<Option<tokio::sync::MutexGuard<'_, Level>>, DbErr> {
        let mut guard = self.enter().await;
        if let Some(current) = guard.as_deref_mut()
            && *current != Some(level)
        {
            *current = None;
            // Not inside a transaction: SQLite refuses to change it there.
            db.execute_unprepared(&format!("PRAGMA synchronous = {level}"))
                .await?;
            *current = Some(level);
        }
        Ok(guard)
    }
}

/// After a writer's error: the connection may be replaced, so its level is unknown.
pub fn forget(guard: &mut Option<tokio::sync::MutexGuard<'_, Level>>) {
    if let Some(current) = guard.as_deref_mut() {
        *current = None;
    }
}

/// The connection the inbox and store writers commit on. SQLite: one connection of their own,
/// shared behind the [`WriteGate`]: a write by one connection makes every other connection of
/// the file drop its page cache at its next transaction, so two writers on two of the pool's
/// connections each started cold, rereading the pages the other had just written.
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
    connect(&one).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SqliteSynchronous;

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

    /// The inbox commits at the configured level (FULL = 2: a 200 means on disk) and the store
    /// at NORMAL (1), on the one connection both share; with `store_fsync` both at FULL.
    #[tokio::test]
    async fn the_gate_sets_each_writers_level_on_the_shared_connection() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = DatabaseConfig {
            url: format!("sqlite://{}/w.db", dir.path().display()),
            max_connections: 4,
            schema: String::new(),
            sqlite_synchronous: SqliteSynchronous::Full,
            store_fsync: false,
            acquire_timeout_ms: 2000,
        };
        let pool = connect(&cfg).await.unwrap();
        let writer = connect_writer(&cfg, &pool).await.unwrap();
        let gate = WriteGate::for_backend(&writer);
        assert_eq!(
            level(&writer).await,
            2,
            "a new connection has the inbox's level"
        );
        for (wanted, expect) in [
            (cfg.store_level(), 1),
            (cfg.inbox_level(), 2),
            (cfg.store_level(), 1),
        ] {
            let _gate = gate.enter_at(&writer, wanted).await.unwrap();
            assert_eq!(level(&writer).await, expect);
        }
        // After an error the level is forgotten and set again, even if it looks unchanged.
        {
            let mut gate = gate.enter_at(&writer, cfg.store_level()).await.unwrap();
            writer
                .execute_unprepared("PRAGMA synchronous = FULL")
                .await
                .unwrap();
            forget(&mut gate);
        }
        let _gate = gate.enter_at(&writer, cfg.store_level()).await.unwrap();
        assert_eq!(level(&writer).await, 1);
        drop(_gate);
        cfg.store_fsync = true;
        assert_eq!(cfg.store_level(), "FULL");
        cfg.sqlite_synchronous = SqliteSynchronous::Off;
        assert_eq!(cfg.store_level(), "OFF");
    }
}
