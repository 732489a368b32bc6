//! wahook: receives signed WhatsApp webhooks (Meta and Kapso), appends them to a durable
//! inbox before acknowledging, and hands them to processing.
//!
//! `main.rs` only parses the command line; [`run`] and [`start`] start everything, and tests
//! call [`start`] with a listener on port 0.

pub mod actors;
pub mod agent;
pub mod calibrate;
pub mod cluster;
pub mod config;
pub mod error;
pub mod http;
pub mod ingest;
pub mod loadgen;
pub mod media;
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

use ractor::{Actor, ActorRef};

use crate::{
    actors::{Ctx, RouterSink, messages::RootMsg, messages::RouterMsg, supervisor::Root},
    config::Config,
    http::{AppInner, AppState},
    store::{batch::Store, inbox::Inbox},
};

/// A started server.
pub struct Running {
    pub addr: SocketAddr,
    pub db: DatabaseConnection,
    pub ctx: Arc<Ctx>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    writer: JoinHandle<()>,
    store_writer: JoinHandle<()>,
    gauges: JoinHandle<()>,
    checkpointer: JoinHandle<()>,
    /// The follow-up sweep, the start-up catalog sync and the media worker.
    background: Vec<JoinHandle<()>>,
    root: ActorRef<RootMsg>,
    /// Cluster mode: this node's part and its task (leases, consumers, sweeper).
    pub cluster: Option<(Arc<cluster::Cluster>, JoinHandle<()>)>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, and waits for the server.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        // Live streams end, so the server's graceful stop does not wait on them.
        self.ctx.store.live().close();
        let _ = self.shutdown.send(true);
        (&mut self.server).await.context("server task")??;
        // The writer drains what was queued once every handler (and so every sender) is gone.
        let _ = (&mut self.writer).await;
        // What the actors have not finished stays `pending` and is recovered at next start.
        // An actor may be sleeping in a retry backoff: it gets seconds of grace, not minutes.
        let stopped = self
            .root
            .stop_and_wait(
                Some("shutdown".into()),
                Some(std::time::Duration::from_secs(5)),
            )
            .await;
        if stopped.is_err() {
            self.root.kill();
        }
        // After processing stopped: what this node held goes back to the queues and its
        // partitions to the other nodes, which then apply it after everything this node did.
        if let Some((cluster, task)) = self.cluster.take() {
            task.abort();
            cluster.leave().await;
        }
        Ok(())
    }

    /// Waits for Ctrl-C or SIGTERM (then shuts down gracefully), or for the supervisor to
    /// give up (then fails).
    pub async fn until_signal(self) -> anyhow::Result<()> {
        let mut fatal = self.ctx.fatal.subscribe();
        tokio::select! {
            _ = shutdown_signal() => {
                tracing::info!("shutdown signal received");
                self.shutdown().await
            }
            reason = async { fatal.wait_for(Option::is_some).await.map(|r| r.clone()) } => {
                let reason = reason.ok().flatten().unwrap_or_default();
                anyhow::bail!("processing stopped: {reason}")
            }
        }
    }

    /// Changes whenever processing makes progress (a commit, a DLQ park, an actor stop).
    pub fn progress(&self) -> watch::Receiver<u64> {
        self.ctx.store.progress()
    }

    /// Conversation actors alive now.
    pub async fn live_conversations(&self) -> usize {
        match self.ctx.router() {
            Some(router) => ractor::call!(router, RouterMsg::LiveConversations).unwrap_or(0),
            None => 0,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Dropping without `shutdown` is a crash as far as the process is concerned: the
        // tasks stop where they are and only what was committed survives.
        self.server.abort();
        self.writer.abort();
        self.store_writer.abort();
        self.gauges.abort();
        self.checkpointer.abort();
        for task in &self.background {
            task.abort();
        }
        if let Some((cluster, task)) = self.cluster.take() {
            task.abort();
            // As a crash: the broker takes back what this node held; the leases lapse.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { cluster.disconnect().await });
            }
        }
        self.root.stop_children(None);
        self.root.stop(None);
        actors::write(&self.ctx.router, None);
        actors::write(&self.ctx.dead_letter, None);
    }
}

/// Connects, migrates, upserts the configured accounts, and serves until Ctrl-C / SIGTERM.
pub async fn run(config: Config, listener: Option<TcpListener>) -> anyhow::Result<()> {
    start(config, listener).await?.until_signal().await
}

/// `wahook templates sync`: the catalog of every account's WhatsApp Business Account, read
/// from the Graph API into the database (migrated first), without starting the server.
pub async fn sync_templates(config: &Config) -> anyhow::Result<agent::templates::Synced> {
    install_tls();
    let agents = agent::Agents::new(config).context("setting up the Graph API client")?;
    let db = store::connect(&config.database).await?;
    store::migrate(&db).await.context("running migrations")?;
    store::accounts::upsert_from_config(&db, &config.accounts).await?;
    let directory = store::accounts::load_directory(&db).await?;
    let wabas = agent::templates::wabas(&directory, |p| agents.token(p).map(str::to_owned), None);
    if wabas.is_empty() {
        anyhow::bail!("no account has both a waba_id and a Graph token (access_token_env)");
    }
    Ok(agent::templates::sync(&db, &agents.graph, &wabas).await)
}

/// Makes `ring` the process's TLS crypto provider (the HTTP clients of the agent use rustls;
/// ring builds with a C compiler alone). Idempotent.
pub fn install_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Connects, migrates, upserts the configured accounts and starts serving on `listener`
/// (or on `server.listen` when `None`): the database made ready, processing started (and its
/// recovery of unprocessed events done), then the intake handing over to it, then the server.
pub async fn start(config: Config, listener: Option<TcpListener>) -> anyhow::Result<Running> {
    let metrics = metrics::install();
    install_tls();
    let agents = Arc::new(agent::Agents::new(&config).context("setting up the AI agents")?);
    let ready = prepare(&config).await?;
    let listener = match listener {
        Some(l) => l,
        None => TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("binding server.listen = {}", config.server.listen))?,
    };
    let addr = listener.local_addr()?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        backend = store::backend_name(&ready.db),
        listen = %addr,
        accounts = ready.directory.len(),
        "wahook started"
    );
    let db = ready.db.clone();
    let processing = start_processing(&config, ready.db, ready.directory, agents).await?;
    let ctx = processing.ctx.clone();
    let (inbox, writer, cluster) = start_intake(&config, &processing).await;
    let gate = processing.gate.clone();
    let state = AppState::new(AppInner {
        db: db.clone(),
        config: Arc::new(config),
        inbox,
        metrics,
        processing: ctx.clone(),
        cluster: cluster.as_ref().map(|(c, _)| c.clone()),
        kapso_projects: Arc::new(ready.kapso_projects),
        auth: Default::default(),
    });
    let checkpointer = tokio::spawn(store::checkpoint_every(
        db.clone(),
        gate,
        std::time::Duration::from_millis(state.config.database.sqlite_checkpoint_ms),
    ));
    let gauges = tokio::spawn(refresh_gauges(
        state.db.clone(),
        std::time::Duration::from_millis(state.config.health.gauge_interval_ms),
        state.config.health.max_pending_age_seconds,
        ctx.clone(),
    ));
    let background = background(&ctx, &db, &state.config).await?;
    let limits = connection_limits(&state.config.server);
    let app = http::router(state);
    let (shutdown, rx) = watch::channel(false);
    let server = tokio::spawn(http::serve::serve(listener, app, limits, rx));
    Ok(Running {
        addr,
        db,
        ctx,
        gauges,
        shutdown,
        server,
        writer,
        store_writer: processing.store_writer,
        checkpointer,
        background,
        root: processing.root,
        cluster,
    })
}

/// The database, ready to serve: connected, migrated, the configured accounts upserted and
/// read, Kapso projects' workspaces made, and sends a previous process left unconfirmed
/// settled.
struct Ready {
    db: DatabaseConnection,
    directory: store::accounts::Directory,
    kapso_projects: std::collections::HashMap<String, (i64, String)>,
}

async fn prepare(config: &Config) -> anyhow::Result<Ready> {
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
    let mut kapso_projects = std::collections::HashMap::new();
    for p in &config.kapso_projects {
        let workspace_id = store::accounts::ensure_workspace(&db, &p.workspace)
            .await
            .context("creating the workspaces of [[kapso_projects]]")?;
        let secret = p.resolve_secret().map_err(anyhow::Error::msg)?;
        kapso_projects.insert(p.project_id.clone(), (workspace_id, secret));
    }
    // A reply recorded but never confirmed by a previous process may have left: never resend.
    let interrupted = store::outbound::settle_interrupted(&db, chrono::Utc::now())
        .await
        .context("settling interrupted agent sends")?;
    if interrupted > 0 {
        tracing::warn!(
            interrupted,
            "agent replies whose send outcome is unknown after a restart were marked `unknown`; they are not resent"
        );
    }
    Ok(Ready {
        db,
        directory,
        kapso_projects,
    })
}

/// Processing, started: the store's writer and the actor tree, whose router has re-dispatched
/// every pending inbox event before this returns (new traffic is taken in after it).
struct Processing {
    ctx: Arc<Ctx>,
    root: ActorRef<RootMsg>,
    store_writer: JoinHandle<()>,
    gate: store::WriteGate,
    writer_db: DatabaseConnection,
}

async fn start_processing(
    config: &Config,
    db: DatabaseConnection,
    directory: store::accounts::Directory,
    agents: Arc<agent::Agents>,
) -> anyhow::Result<Processing> {
    let gate = store::WriteGate::for_backend(&db);
    let writer_db = store::connect_writer(&config.database, &db)
        .await
        .context("opening the writer connection")?;
    let (store, store_writer) = Store::spawn(
        writer_db.clone(),
        gate.clone(),
        config.processing.batch_max,
        &config.database,
    );
    let ctx = Arc::new(Ctx {
        db,
        store,
        accounts: RwLock::new(Arc::new(directory)),
        actors: config.actors.clone(),
        processing: config.processing.clone(),
        in_flight: Default::default(),
        router: RwLock::new(None),
        dead_letter: RwLock::new(None),
        fatal: watch::channel(None).0,
        recovered: watch::channel(false).0,
        serving: Default::default(),
        notes: Default::default(),
        reads: Default::default(),
        agents,
        feed: match config.cluster.enabled() {
            true => actors::Feed::Partitions(RwLock::new(None)),
            false => actors::Feed::Inbox,
        },
    });
    let mut recovered = ctx.recovered.subscribe();
    let (root, _) = Actor::spawn(None, Root, ctx.clone())
        .await
        .context("starting the actor tree")?;
    let mut fatal = ctx.fatal.subscribe();
    tokio::select! {
        done = recovered.wait_for(|done| *done) => {
            done.context("the router stopped during recovery")?;
        }
        reason = fatal.wait_for(Option::is_some) => {
            let reason = reason.ok().and_then(|r| r.clone()).unwrap_or_default();
            anyhow::bail!("recovering unprocessed events failed: {reason}");
        }
    }
    ctx.serving
        .store(true, std::sync::atomic::Ordering::Release);
    Ok(Processing {
        ctx,
        root,
        store_writer,
        gate,
        writer_db,
    })
}

/// The intake's inbox, handing committed events over to this node's router, or in cluster
/// mode to the broker (whose partition queues feed the routers of the nodes that own them).
async fn start_intake(
    config: &Config,
    processing: &Processing,
) -> (
    Inbox,
    JoinHandle<()>,
    Option<(Arc<cluster::Cluster>, JoinHandle<()>)>,
) {
    let ctx = &processing.ctx;
    let cluster = match config.cluster.enabled() {
        true => Some(cluster::Cluster::start(config.cluster.clone(), ctx.clone()).await),
        false => None,
    };
    let sink: Arc<dyn store::inbox::EventSink> = match &cluster {
        Some((cluster, _)) => cluster.clone(),
        None => Arc::new(RouterSink(ctx.clone())),
    };
    let (inbox, writer) = Inbox::spawn(
        processing.writer_db.clone(),
        processing.gate.clone(),
        &config.intake,
        store::WalSync::new(&config.database, config.database.inbox_durable()),
        sink,
    );
    (inbox, writer, cluster)
}

/// Keeps the backlog gauges (and readiness) current between scrapes.
async fn refresh_gauges(
    db: DatabaseConnection,
    every: std::time::Duration,
    max_pending_age_seconds: u64,
    ctx: Arc<Ctx>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ready = match store::health::backlog(&db, chrono::Utc::now()).await {
            Ok(b) => {
                ::metrics::gauge!(crate::metrics::INBOX_PENDING).set(b.pending_events as f64);
                ::metrics::gauge!(crate::metrics::INBOX_OLDEST_PENDING_AGE)
                    .set(b.oldest_pending_age_seconds);
                for (status, n) in &b.dlq {
                    ::metrics::gauge!(crate::metrics::DLQ_ROWS, "status" => status.clone())
                        .set(*n as f64);
                }
                b.oldest_pending_age_seconds <= max_pending_age_seconds as f64
            }
            Err(_) => false,
        };
        let actors_up = ctx.router().is_some() && ctx.dead_letter().is_some();
        ::metrics::gauge!(crate::metrics::READY).set(if ready && actors_up { 1.0 } else { 0.0 });
    }
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

/// The durable jobs' workers: follow-ups, media, hand-off notifications, and the start-up
/// template catalog sync.
async fn background(
    ctx: &Arc<Ctx>,
    db: &DatabaseConnection,
    config: &Config,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let follow_ups = tokio::spawn(actors::followups::run(ctx.clone()));
    // Media jobs: on a single node nobody else can hold one, so a dead process's leases go.
    if ctx.feed.resumes_at_start() {
        let released = store::media::release_leases(db)
            .await
            .context("releasing media jobs held by a previous process")?;
        if released > 0 {
            tracing::info!(
                released,
                "media jobs a previous process held are taken up again"
            );
        }
    }
    let media_jobs = tokio::spawn(media::worker::run(
        ctx.agents.media.clone(),
        db.clone(),
        ctx.store.progress(),
    ));
    // The template catalog, read once at start (it is kept current by the template webhooks).
    let catalog = {
        let (db, agents, directory) = (db.clone(), ctx.agents.clone(), ctx.directory());
        tokio::spawn(async move {
            let wabas =
                agent::templates::wabas(&directory, |p| agents.token(p).map(str::to_owned), None);
            if wabas.is_empty() {
                return;
            }
            let synced = agent::templates::sync(&db, &agents.graph, &wabas).await;
            if synced.errors.is_empty() {
                tracing::info!(
                    templates = synced.templates,
                    accounts = synced.accounts,
                    "template catalog synced"
                );
            } else {
                tracing::warn!(errors = ?synced.errors, templates = synced.templates, "template catalog sync had errors");
            }
        })
    };
    // Hand-off notifications: the same, for a dead process's leases.
    let notifier = agent::notify::Notifier::new(config, &ctx.directory())?;
    if ctx.feed.resumes_at_start() {
        store::handoffs::release_leases(db)
            .await
            .context("releasing hand-off notifications held by a previous process")?;
    }
    let notifications = tokio::spawn(agent::notify::run(
        Arc::new(notifier),
        db.clone(),
        ctx.store.progress(),
    ));
    Ok(vec![follow_ups, catalog, media_jobs, notifications])
}

/// The accept loop's bounds: `server.max_connections`, kept below the descriptors the process
/// may open (raised to the hard limit first) with room for the database and the files.
fn connection_limits(cfg: &config::ServerConfig) -> http::serve::Limits {
    let mut max_connections = cfg.max_connections;
    if let Some(fds) = http::serve::raise_descriptor_limit() {
        let room = usize::try_from(fds.saturating_sub(256)).unwrap_or(usize::MAX);
        if max_connections > room {
            tracing::warn!(
                max_connections,
                descriptors = fds,
                using = room.max(1),
                "server.max_connections is above what the process may open; using less"
            );
            max_connections = room.max(1);
        }
    }
    http::serve::Limits {
        header_read_timeout: std::time::Duration::from_millis(cfg.header_read_timeout_ms),
        max_connections,
    }
}
