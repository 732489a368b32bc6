//! `wahook calibrate`: this machine's limits for wahook's own rows, with nothing else running.
//!
//! It writes through the server's own code on the server's own writer connection:
//! first the inbox's group-commit statement (`store::inbox::append_many`, groups of
//! `--group`), then the store's transaction (`store::batch::apply_once`, batches of `--batch`
//! one-message change sets from `--senders` contacts, each marking its event processed). No
//! HTTP, no signatures, no actors, no other writer: what is left is the database and its driver.
//! The whole product's figures are then read as a fraction of these (BENCHMARKS.md).

use std::time::Instant;

use anyhow::Context;
use chrono::Utc;

use crate::{
    config::Config,
    ingest::{
        Source,
        event::{ContactKey, Direction, MessageItem, MessageStatus},
    },
    store::{
        self,
        change::ChangeSet,
        inbox::{EventStatus, NewEvent},
    },
};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Events to write.
    #[arg(long, default_value_t = 60_000)]
    pub events: usize,
    /// Inbox rows per group commit (the server's mean under load is about 30).
    #[arg(long, default_value_t = 30)]
    pub group: usize,
    /// Change sets per store transaction.
    #[arg(long, default_value_t = 50)]
    pub batch: usize,
    /// Distinct contacts the events come from.
    #[arg(long, default_value_t = 1_000)]
    pub senders: usize,
}

pub async fn run(config: Config, args: Args) -> anyhow::Result<String> {
    anyhow::ensure!(
        args.events > 0 && args.group > 0 && args.batch > 0 && args.senders > 0,
        "--events, --group, --batch and --senders must be positive"
    );
    crate::install_tls();
    let db = store::connect(&config.database).await?;
    store::migrate(&db).await?;
    store::accounts::upsert_from_config(&db, &config.accounts).await?;
    let account = store::accounts::load_directory(&db)
        .await?
        .iter()
        .next()
        .cloned()
        .context("calibrate writes as the first configured account: add one [[accounts]]")?;
    let backend = store::backend_name(&db);
    let writer_db = store::connect_writer(&config.database, &db).await?;
    let gate = store::WriteGate::for_backend(&writer_db);
    let run = uuid::Uuid::now_v7().simple().to_string();
    let cfg = config.database.clone();
    let wal = store::WalSync::new(&cfg, cfg.inbox_durable());

    let task = async move {
        let now = Utc::now();
        let events: Vec<NewEvent> = (0..args.events)
            .map(|i| NewEvent {
                source: Source::Meta,
                event_type: None,
                dedup_key: format!("calibrate:{run}:{i}"),
                body_key: None,
                payload: payload(&account.phone_number_id, &run, i, args.senders).into(),
                headers: "{}".into(),
                tenant: crate::ingest::Tenant::Accounts {
                    workspace_id: Some(account.workspace_id),
                    account_ids: vec![account.id],
                },
                correlation_id: format!("calibrate-{i}"),
                received_at: now,
                status: EventStatus::Pending,
                last_error: None,
                normalized: None,
            })
            .collect();

        let started = Instant::now();
        let mut ids = Vec::with_capacity(events.len());
        for group in events.chunks(args.group) {
            let refs: Vec<&NewEvent> = group.iter().collect();
            let mut inserted = {
                let _gate = gate.enter().await;
                store::inbox::append_many(&writer_db, &refs).await?
            };
            wal.flush("inbox_flush").await?;
            inserted.sort_unstable();
            ids.extend(inserted.into_iter().map(|(id, _)| id));
        }
        let inbox = started.elapsed().as_secs_f64();

        let started = Instant::now();
        for (n, chunk) in ids.chunks(args.batch).enumerate() {
            let sets: Vec<ChangeSet> = chunk
                .iter()
                .enumerate()
                .map(|(k, &id)| {
                    let i = n * args.batch + k;
                    let phone = sender(i, args.senders);
                    let contact = ContactKey::new(Some(&phone), None).expect("a phone number");
                    let set = ChangeSet::of_event(
                        crate::store::change::Ticket::new(id, 1, false).share(0),
                        false,
                        account.workspace_id,
                        contact,
                        None,
                        format!("calibrate-{i}"),
                    );
                    ChangeSet {
                        contact_name: Some(format!("Lead {}", i % args.senders)),
                        messages: vec![MessageItem {
                            direction: Direction::Inbound,
                            wamid: format!("wamid.calibrate.{run}.{i}"),
                            timestamp: now,
                            message_type: "text".into(),
                            content: Some(format!("Hola, ¿tienen el modelo {i} en stock?")),
                            metadata: "{}".into(),
                            status: MessageStatus::Received,
                            sender: None,
                            media: None,
                            author: crate::ingest::event::Author::Customer,
                        }],
                        ..set
                    }
                })
                .collect();
            store::batch::apply_once(&writer_db, &gate, &cfg, &sets, chunk).await?;
        }
        let stored = started.elapsed().as_secs_f64();
        anyhow::Ok((inbox, stored))
    };
    let (inbox, stored) = task.await?;
    let n = args.events as f64;
    // On SQLite the two share one write lock, so an event costs both; on PostgreSQL they run
    // side by side and the slower one bounds the rate.
    let ceiling = if backend == "sqlite" {
        n / (inbox + stored)
    } else {
        n / inbox.max(stored)
    };
    Ok(format!(
        "calibrate [{backend}]: inbox {} rows in groups of {}: {:.0} rows/s ({:.2} ms per group); \
         store {} events in batches of {}: {:.0} events/s ({:.2} ms per batch); \
         writer ceiling {:.0} events/s",
        args.events,
        args.group,
        n / inbox,
        inbox * 1e3 / (n / args.group as f64).ceil(),
        args.events,
        args.batch,
        n / stored,
        stored * 1e3 / (n / args.batch as f64).ceil(),
        ceiling,
    ))
}

fn sender(i: usize, senders: usize) -> String {
    format!("49170{:07}", i % senders)
}

/// A Meta text webhook like the ones `wahook loadgen` and `scripts/bench-wrk.py` send.
fn payload(phone_number_id: &str, run: &str, i: usize, senders: usize) -> String {
    let from = sender(i, senders);
    serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000001", "phone_number_id": phone_number_id},
            "contacts": [{"profile": {"name": format!("Lead {}", i % senders)}, "wa_id": from}],
            "messages": [{"from": from, "id": format!("wamid.calibrate.{run}.{i}"),
                          "timestamp": Utc::now().timestamp().to_string(), "type": "text",
                          "text": {"body": format!("Hola, ¿tienen el modelo {i} en stock?")}}]}}]}]
    })
    .to_string()
}
