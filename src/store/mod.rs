//! Storage: connection set-up for both backends, migrations, and small functions over
//! `&impl ConnectionTrait` so they run inside or outside a transaction.

pub mod accounts;
pub mod agent;
pub mod amendments;
pub mod batch;
pub mod change;
pub mod cluster;
pub mod contacts;
pub mod conversations;
pub mod dlq;
pub mod followups;
pub mod handoffs;
pub mod health;
mod identities;
pub mod inbox;
pub mod leads;
pub mod live;
pub mod media;
pub mod messages;
pub mod outbound;
mod sql;
pub mod stats;
mod statuses;
pub mod templates;
pub mod tokens;
mod transitions;
pub mod users;
mod writers;

pub use writers::{WalSync, WriteGate, checkpoint_every, connect_writer};

use std::{path::Path, time::Duration};

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseBackend, DatabaseConnection, DbErr,
    Statement,
    sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode},
};

use crate::config::DatabaseConfig;

/// Opens the pool. SQLite: the file and its folder are created, WAL, the configured
/// `synchronous`, and a busy timeout so the inbox writer and the processors share the file.
/// PostgreSQL: the configured schema is created if missing and put on the search path.
pub async fn connect(cfg: &DatabaseConfig) -> Result<DatabaseConnection, DbErr> {
    connect_with(cfg, |o| o).await
}

/// [`connect`], with SQLite's options adjusted by `sqlite` (the writer connection's own).
pub(crate) async fn connect_with(
    cfg: &DatabaseConfig,
    sqlite: impl Fn(SqliteConnectOptions) -> SqliteConnectOptions + Send + Sync + 'static,
) -> Result<DatabaseConnection, DbErr> {
    let mut opts = ConnectOptions::new(cfg.url.clone());
    opts.max_connections(cfg.max_connections)
        .acquire_timeout(Duration::from_millis(cfg.acquire_timeout_ms))
        .connect_timeout(Duration::from_millis(cfg.acquire_timeout_ms.max(1000)))
        .sqlx_logging(false);
    if cfg.url.starts_with("sqlite:") {
        if let Some(dir) = sqlite_path(&cfg.url).and_then(|p| p.parent().map(Path::to_path_buf))
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(&dir).map_err(|e| {
                DbErr::Custom(format!("cannot create the folder {}: {e}", dir.display()))
            })?;
        }
        let cache = cfg.statement_cache;
        let sync = match cfg.sqlite_synchronous {
            crate::config::SqliteSynchronous::Off => sea_orm::sqlx::sqlite::SqliteSynchronous::Off,
            crate::config::SqliteSynchronous::Normal => {
                sea_orm::sqlx::sqlite::SqliteSynchronous::Normal
            }
            crate::config::SqliteSynchronous::Full => {
                sea_orm::sqlx::sqlite::SqliteSynchronous::Full
            }
            crate::config::SqliteSynchronous::Extra => {
                sea_orm::sqlx::sqlite::SqliteSynchronous::Extra
            }
        };
        opts.map_sqlx_sqlite_opts(move |o: SqliteConnectOptions| {
            sqlite(
                o.statement_cache_capacity(cache)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(sync)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true),
            )
        });
        // SQLite rolls a transaction back by itself on some errors (SQLITE_FULL, IOERR, BUSY,
        // NOMEM); sqlx then still counts it open, its ROLLBACK fails, and the connection's
        // next transaction is a SAVEPOINT whose rollback leaves a real transaction — and the
        // write lock — open for good: "database is locked" for every other connection (the
        // disk-full drill). A connection that comes back to the pool still counting a
        // transaction is closed instead of handed out (closing rolls back whatever it holds).
        opts.map_sqlx_sqlite_before_acquire(|conn, _| {
            Box::pin(async move {
                use sea_orm::sqlx::Connection;
                if conn.is_in_transaction() {
                    tracing::warn!(
                        "a pooled SQLite connection came back inside a transaction; closing it"
                    );
                    return Ok(false);
                }
                Ok(true)
            })
        });
    } else {
        let cache = cfg.statement_cache;
        opts.map_sqlx_postgres_opts(move |o| o.statement_cache_capacity(cache));
        if !cfg.schema.is_empty() {
            ensure_schema(cfg).await?;
            opts.set_schema_search_path(cfg.schema.clone());
        }
    }
    Database::connect(opts).await
}

async fn ensure_schema(cfg: &DatabaseConfig) -> Result<(), DbErr> {
    if !cfg
        .schema
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(DbErr::Custom(format!(
            "database.schema `{}` may hold only letters, digits and _",
            cfg.schema
        )));
    }
    let mut opts = ConnectOptions::new(cfg.url.clone());
    opts.max_connections(1).sqlx_logging(false);
    let db = Database::connect(opts).await?;
    // Nodes of a cluster start together: PostgreSQL's IF NOT EXISTS is not safe against a
    // concurrent creation, so the schema is created under an advisory lock.
    db.execute_unprepared(&format!(
        "SELECT pg_advisory_lock({MIGRATION_LOCK}); \
         CREATE SCHEMA IF NOT EXISTS \"{}\"; SELECT pg_advisory_unlock({MIGRATION_LOCK})",
        cfg.schema
    ))
    .await?;
    db.close().await
}

/// The advisory lock nodes sharing one PostgreSQL take to create the schema and migrate.
const MIGRATION_LOCK: i64 = 0x7761_686f_6f6b; // "wahook"

fn sqlite_path(url: &str) -> Option<&Path> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && !path.starts_with(":memory:")).then(|| Path::new(path))
}

pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    if db.get_database_backend() != DatabaseBackend::Postgres {
        return Migrator::up(db, None).await;
    }
    // Several nodes may start at once: one migrates, the others wait for its lock and then
    // find nothing to do. The lock lasts as long as the transaction that migrates
    // (PostgreSQL's DDL is transactional).
    let tx = sea_orm::TransactionTrait::begin(db).await?;
    tx.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
        .await?;
    Migrator::up(&tx, None).await?;
    tx.commit().await
}

pub fn backend_name(db: &impl ConnectionTrait) -> &'static str {
    match db.get_database_backend() {
        DatabaseBackend::Sqlite => "sqlite",
        DatabaseBackend::Postgres => "postgres",
        _ => "other",
    }
}

/// One round trip that proves the store answers.
pub async fn ping(db: &impl ConnectionTrait) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    db.query_one_raw(Statement::from_string(backend, "SELECT 1"))
        .await
        .map(|_| ())
}
