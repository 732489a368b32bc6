//! wahook: receives signed WhatsApp webhooks (Meta and Kapso), appends them to a durable
//! inbox before acknowledging, and hands them to processing.
//!
//! `main.rs` only parses the command line; [`run`] and [`start`] start everything, and tests
//! call [`start`] with a listener on port 0.

pub mod config;
pub mod error;
pub mod http;
pub mod ingest;
pub mod loadgen;
pub mod metrics;
pub mod store;
pub mod telemetry;

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
};

use anyhow::Context;
use sea_orm::DatabaseConnection;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{
    config::Config,
    http::{AppInner, AppState},
    store::inbox::{Inbox, NoProcessing},
};

/// A started server.
pub struct Running {
    pub addr: SocketAddr,
    pub db: DatabaseConnection,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    writer: JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, and waits for the server.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        (&mut self.server).await.context("server task")??;
        // The writer drains what was queued once every handler (and so every sender) is gone.
        let _ = (&mut self.writer).await;
        Ok(())
    }

    /// Waits for Ctrl-C or SIGTERM, then shuts down gracefully.
    pub async fn until_signal(self) -> anyhow::Result<()> {
        shutdown_signal().await;
        tracing::info!("shutdown signal received");
        self.shutdown().await
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Dropping without `shutdown` is a crash as far as the process is concerned: the
        // tasks stop where they are and only what was committed survives.
        self.server.abort();
        self.writer.abort();
    }
}

/// Connects, migrates, upserts the configured accounts, and serves until Ctrl-C / SIGTERM.
pub async fn run(config: Config, listener: Option<TcpListener>) -> anyhow::Result<()> {
    start(config, listener).await?.until_signal().await
}

/// Connects, migrates, upserts the configured accounts and starts serving on `listener`
/// (or on `server.listen` when `None`).
pub async fn start(config: Config, listener: Option<TcpListener>) -> anyhow::Result<Running> {
    let metrics = metrics::install();
    let db = store::connect(&config.database)
        .await
        .with_context(|| format!("connecting to {}", config::redact_url(&config.database.url)))?;
    store::migrate(&db).await.context("running migrations")?;
    store::accounts::upsert_from_config(&db, &config.accounts)
        .await
        .context("upserting [[accounts]]")?;
    let directory = store::accounts::load_directory(&db)
        .await
        .context("loading accounts")?;

    let listener = match listener {
        Some(l) => l,
        None => TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("binding server.listen = {}", config.server.listen))?,
    };
    let addr = listener.local_addr()?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        backend = store::backend_name(&db),
        listen = %addr,
        accounts = directory.len(),
        "wahook started"
    );

    let (inbox, writer) = Inbox::spawn(db.clone(), &config.intake, Arc::new(NoProcessing));
    let state = AppState::new(AppInner {
        db: db.clone(),
        config: Arc::new(config),
        accounts: Arc::new(RwLock::new(Arc::new(directory))),
        inbox,
        metrics,
    });
    let app = http::router(state);
    let (shutdown, mut rx) = watch::channel(false);
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|stop| *stop).await;
            })
            .await
    });
    Ok(Running {
        addr,
        db,
        shutdown,
        server,
        writer,
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
