//! Cluster mode: several wahook nodes on one PostgreSQL and one RabbitMQ.
//!
//! Any node takes any webhook: it verifies it and commits it to the shared inbox as a single
//! node does, then publishes one message per partition its conversations fall in (quorum
//! queues `<queue_prefix>.p.<n>`, partition = [`ingest::partition_of`]) and waits for the
//! broker's confirms before it answers 200. Each partition queue is consumed by exactly one
//! live node (a lease in PostgreSQL says which; the queue's single-active-consumer flag makes
//! sure of it even while a lease changes hands), so every conversation has one owner at a time.
//! A delivery goes to this node's router like an inbox event, restricted to its partition, and
//! is acknowledged only after the store committed its effects; a node that dies leaves its
//! unacknowledged deliveries to the next owner, and effects are idempotent, so a delivery seen
//! twice changes nothing. The actors, the store and the agent are the single node's.
//!
//! [`partitions`] keeps the leases, the consumers and the sweeper that publishes events a crash
//! left committed but unpublished.

mod partitions;

use std::{
    borrow::Cow,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, PublisherConfirm,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::{
    actors::{
        Ctx,
        delivery::{Delivery, Done},
        messages::RouterMsg,
    },
    config::ClusterConfig,
    ingest::{self, Normalized, Source, Tenant},
    metrics as m,
    store::inbox::{BoxFuture, CommittedEvent, EventSink, HandOver},
};

/// Redeliveries after which the broker drops a message (a poison message must not loop for
/// ever; the inbox still holds the event, `pending`, and the sweeper publishes it again).
const DELIVERY_LIMIT: i64 = 50;
/// How long a broker connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A node's part in the cluster; cheap to share.
pub struct Cluster {
    cfg: ClusterConfig,
    node: String,
    ctx: Arc<Ctx>,
    broker: tokio::sync::RwLock<Option<Broker>>,
    status: Mutex<Status>,
}

struct Broker {
    conn: Connection,
    publish: Channel,
}

#[derive(Default, Clone)]
struct Status {
    /// Why the broker cannot be used, while it cannot.
    broker_error: Option<String>,
    /// Partitions whose queues this node consumes.
    owned: Vec<u32>,
}

/// What `/health` shows of the cluster.
#[derive(Debug, Serialize)]
pub struct Health {
    pub mode: &'static str,
    pub node_id: String,
    pub broker_connected: bool,
    pub broker_error: Option<String>,
    pub partitions: u32,
    pub partitions_owned: Vec<u32>,
}

/// One partition message: the committed event as the intake read it (its typed event, not its
/// raw payload: the consuming node applies that reading instead of parsing the payload again)
/// and which share of it this is. Its text fields borrow (from the event when publishing, from
/// the delivery when one needs no unescaping).
#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    id: i64,
    #[serde(borrow)]
    source: Cow<'a, str>,
    #[serde(borrow)]
    event_type: Option<Cow<'a, str>>,
    workspace_id: Option<i64>,
    account_id: Option<i64>,
    /// The tenant that signed it (`Tenant::encode`); a message from a node without it is
    /// confined to `workspace_id` / `account_id`.
    #[serde(default, borrow)]
    signed_by: Option<Cow<'a, str>>,
    #[serde(borrow)]
    correlation_id: Cow<'a, str>,
    received_at: DateTime<Utc>,
    /// The typed event (or why the payload could not be read), made once within the signing
    /// tenant by the node that took the request (or by the sweeper, from the stored payload).
    #[serde(default)]
    reading: Option<Cow<'a, Result<Normalized, String>>>,
    /// The raw payload: sent only by nodes older than `reading`, whose messages the consumer
    /// then reads as before (the inbox keeps the payload itself).
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    payload: Option<Cow<'a, str>>,
    partition: u32,
    of: u32,
    primary: bool,
}

impl<'a> Wire<'a> {
    fn decode(data: &'a [u8]) -> Result<Self, String> {
        serde_json::from_slice(data).map_err(|e| e.to_string())
    }
}

impl Cluster {
    /// Starts the node's cluster work (broker connection, leases, consumers, sweeper). The
    /// broker is tried once first, so a node that can publish does so from its first request
    /// (if it cannot, the node serves anyway: `/ready` and webhooks say 503 until it can).
    pub async fn start(cfg: ClusterConfig, ctx: Arc<Ctx>) -> (Arc<Self>, JoinHandle<()>) {
        let cluster = Arc::new(Self {
            node: cfg.node_name(),
            cfg,
            ctx,
            broker: tokio::sync::RwLock::new(None),
            status: Mutex::new(Status {
                broker_error: Some("not connected yet".into()),
                owned: Vec::new(),
            }),
        });
        partitions::keep_broker(&cluster).await;
        let task = tokio::spawn(partitions::run(cluster.clone()));
        (cluster, task)
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn queue(&self, partition: u32) -> String {
        format!("{}.p.{partition}", self.cfg.queue_prefix)
    }

    fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_status(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Why the node cannot take webhooks now (the broker is away), for `/ready`.
    pub fn unready(&self) -> Option<String> {
        self.status()
            .broker_error
            .map(|e| format!("the message broker is unreachable: {e}"))
    }

    pub fn health(&self) -> Health {
        let status = self.status();
        Health {
            mode: "rabbitmq",
            node_id: self.node.clone(),
            broker_connected: status.broker_error.is_none(),
            broker_error: status.broker_error,
            partitions: self.cfg.partitions,
            partitions_owned: status.owned,
        }
    }

    /// Publishes a committed event to the partition queues of its conversations and waits for
    /// the broker's confirms (the sweeper's publish). An error means it may not be published:
    /// the event stays `pending` in the inbox and the sweeper publishes it later.
    pub async fn publish(&self, event: &CommittedEvent, via: &'static str) -> Result<(), String> {
        let started = Instant::now();
        let result = match self.channel().await {
            Ok(channel) => match self.send(&channel, event).await {
                Ok(confirms) => confirmed(confirms).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        count_published(via, &result, started);
        result
    }

    /// The publishing channel, while the broker is there.
    async fn channel(&self) -> Result<Channel, String> {
        match &*self.broker.read().await {
            Some(b) => Ok(b.publish.clone()),
            None => Err(self.unready().unwrap_or_else(|| "no broker".into())),
        }
    }

    /// Publishes one message per partition of the event; their confirms are to be awaited.
    async fn send(
        &self,
        channel: &Channel,
        event: &CommittedEvent,
    ) -> Result<Vec<PublisherConfirm>, String> {
        injected_failure(event)?;
        // The intake's reading of it; the sweeper's event, read back from the inbox, is read
        // here (once: what is published is that reading).
        let reading = match event.normalized.clone() {
            Some(reading) => reading,
            None => {
                metrics::counter!(crate::metrics::PAYLOAD_READS, "by" => "publish").increment(1);
                Arc::new(event.read_payload(&self.ctx.directory()))
            }
        };
        let parts = self.partitions_of(event.id, &reading);
        let mut confirms = Vec::with_capacity(parts.len());
        for (i, partition) in parts.iter().enumerate() {
            let body = serde_json::to_vec(&Wire {
                id: event.id,
                source: event.source.as_str().into(),
                event_type: event.event_type.as_deref().map(Cow::Borrowed),
                workspace_id: event.tenant.workspace_id(),
                account_id: event.tenant.account_id(),
                signed_by: Some(event.tenant.encode().into()),
                correlation_id: event.correlation_id.as_str().into(),
                received_at: event.received_at,
                reading: Some(Cow::Borrowed(&*reading)),
                payload: None,
                partition: *partition,
                of: self.cfg.partitions,
                primary: i == 0,
            })
            .map_err(|e| e.to_string())?;
            let confirm = channel
                .basic_publish(
                    "".into(),
                    self.queue(*partition).as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/json".into()),
                )
                .await
                .map_err(|e| e.to_string())?;
            confirms.push(confirm);
        }
        Ok(confirms)
    }

    /// The partitions of an event's conversations, first-named first (that one is primary);
    /// an event that names none (it cannot be read, or only the database can tell its
    /// conversation) goes whole to one partition chosen by its id.
    fn partitions_of(&self, id: i64, reading: &Result<Normalized, String>) -> Vec<u32> {
        let n = self.cfg.partitions;
        let parts = reading
            .as_ref()
            .map(|normalized| ingest::partitions_of(normalized, n))
            .unwrap_or_default();
        if parts.is_empty() {
            vec![(id.unsigned_abs() % u64::from(n)) as u32]
        } else {
            parts
        }
    }

    /// Opens the broker connection, declares every partition queue and readies the publisher.
    async fn connect(&self) -> Result<Broker, String> {
        let conn = tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::connect(
                &self.cfg.amqp_url,
                ConnectionProperties::default()
                    .with_connection_name(format!("wahook {}", self.node).into()),
            ),
        )
        .await
        .map_err(|_| "connecting timed out".to_string())?
        .map_err(|e| e.to_string())?;
        let declare = conn.create_channel().await.map_err(|e| e.to_string())?;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        for p in 0..self.cfg.partitions {
            declare
                .queue_declare(
                    self.queue(p).as_str().into(),
                    QueueDeclareOptions::durable(),
                    args.clone(),
                )
                .await
                .map_err(|e| format!("declaring {}: {e}", self.queue(p)))?;
        }
        let _ = declare.close(200, "declared".into()).await;
        let publish = conn.create_channel().await.map_err(|e| e.to_string())?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok(Broker { conn, publish })
    }

    /// Hands one delivery to the router; `done` acknowledges it.
    fn dispatch(&self, wire: Wire<'_>, done: Arc<Done>) {
        let tenant = Tenant::decode(
            wire.signed_by.as_deref(),
            wire.workspace_id,
            wire.account_id,
        );
        // The publisher's reading, applied as it is once it is confined to the signer (the
        // router reads the payload only for a message that carries no reading).
        let directory = self.ctx.directory();
        let normalized = wire.reading.map(|r| {
            Arc::new(
                r.into_owned()
                    .and_then(|n| ingest::confined(n, &directory.scope(&tenant))),
            )
        });
        let event = CommittedEvent {
            id: wire.id,
            redrive: false,
            source: Source::from_name(&wire.source),
            event_type: wire.event_type.map(Cow::into_owned),
            tenant,
            correlation_id: wire.correlation_id.into_owned(),
            received_at: wire.received_at,
            payload: wire
                .payload
                .as_deref()
                .map(Arc::from)
                .unwrap_or_else(|| Arc::from("")),
            normalized,
        };
        let delivery = Delivery {
            partition: wire.partition,
            of: wire.of,
            primary: wire.primary,
            done,
        };
        // No router (it is restarting): `done` is dropped with the event and the delivery
        // comes back.
        if let Some(router) = self.ctx.router() {
            let _ = router.cast(RouterMsg::Deliver(Box::new((event, delivery))));
        }
    }
}

/// Waits for the broker's confirms of one event's messages.
async fn confirmed(confirms: Vec<PublisherConfirm>) -> Result<(), String> {
    for confirm in confirms {
        let confirmation = confirm.await.map_err(|e| e.to_string())?;
        if !confirmation.is_ack() {
            return Err("the broker did not confirm the message".into());
        }
    }
    Ok(())
}

fn count_published(via: &'static str, result: &Result<(), String>, started: Instant) {
    let outcome = if result.is_ok() {
        "confirmed"
    } else {
        "failed"
    };
    metrics::counter!(m::CLUSTER_PUBLISHED, "via" => via, "outcome" => outcome).increment(1);
    metrics::histogram!(m::CLUSTER_PUBLISH_DURATION).record(started.elapsed().as_secs_f64());
}

/// The inbox's hand-over in cluster mode: a committed group's events are published in commit
/// order (the writer awaits only that), then their confirms are awaited together — one wait
/// per group, not per event — before the group's requests are answered.
impl EventSink for Cluster {
    fn hand_over(&self, events: Vec<CommittedEvent>) -> BoxFuture<'_, HandOver> {
        Box::pin(async move {
            if events.is_empty() {
                return HandOver::Taken;
            }
            let started = Instant::now();
            let mut sent = Vec::with_capacity(events.len());
            match self.channel().await {
                Ok(channel) => {
                    for event in &events {
                        sent.push(self.send(&channel, event).await);
                    }
                }
                Err(e) => sent.extend(events.iter().map(|_| Err(e.clone()))),
            }
            HandOver::Confirming(Box::pin(async move {
                let mut results = Vec::with_capacity(sent.len());
                for s in sent {
                    let result = match s {
                        Ok(confirms) => confirmed(confirms).await,
                        Err(e) => Err(e),
                    };
                    count_published("intake", &result, started);
                    results.push(result);
                }
                results
            }))
        })
    }

    fn hands_over_pending_duplicates(&self) -> bool {
        true
    }
}

/// Fault injection for the tests (`fail` crate): fails the publish of an event whose payload
/// holds the point's argument.
#[allow(unused_variables)] // without failpoints the macro expands to nothing
fn injected_failure(event: &CommittedEvent) -> Result<(), String> {
    fail::fail_point!("cluster::publish", |marker: Option<String>| {
        match marker.filter(|m| event.payload.contains(m.as_str())) {
            Some(_) => Err("injected publish failure".into()),
            None => Ok(()),
        }
    });
    Ok(())
}

impl Cluster {
    /// Leaves the cluster: closes the broker connection (what this node held unacknowledged
    /// goes back to the queues) and deletes this node's leases, so the others take its
    /// partitions at their next tick instead of after `lease_ms`.
    pub async fn leave(&self) {
        if let Some(b) = self.broker.write().await.take() {
            let _ = b.conn.close(200, "leaving".into()).await;
        }
        metrics::gauge!(m::CLUSTER_BROKER_UP).set(0.0);
        metrics::gauge!(m::CLUSTER_PARTITIONS_OWNED).set(0.0);
        let (db, prefix) = (&self.ctx.db, self.cfg.queue_prefix.as_str());
        if let Err(e) = crate::store::cluster::leave(db, prefix, &self.node).await {
            tracing::warn!(error = %e, "cluster: could not delete this node's leases; they lapse");
        }
    }

    /// Drops the broker connection without a word to the database, as a crash would (the
    /// leases lapse after `lease_ms`).
    pub async fn disconnect(&self) {
        if let Some(b) = self.broker.write().await.take() {
            let _ = b.conn.close(320, "gone".into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::ingest::event::{
        Author, ContactKey, Direction, IdentityChange, Item, ItemKind, MediaRef, MessageItem,
        MessageStatus, TemplateChange, TemplateUpdate,
    };

    fn reading() -> Result<Normalized, String> {
        let at = Utc.timestamp_opt(1_767_225_600, 0).unwrap();
        let item = |kind| Item {
            workspace_id: 7,
            phone_number_id: "106540352242922".into(),
            contact: ContactKey::phone("+49 176 1111 0000").unwrap(),
            user_id: Some("US.13491208655302741918".into()),
            kind,
        };
        Ok(Normalized {
            items: vec![
                item(ItemKind::Message(MessageItem {
                    direction: Direction::Inbound,
                    wamid: "wamid.wire.1".into(),
                    timestamp: at,
                    message_type: "image".into(),
                    content: Some("a \"quoted\" caption\n".into()),
                    metadata: r#"{"type":"image","image":{"id":"1"}}"#.into(),
                    status: MessageStatus::Received,
                    sender: None,
                    media: Some(Box::new(MediaRef {
                        kind: "image".into(),
                        media_id: "1".into(),
                        voice: false,
                        ..MediaRef::default()
                    })),
                    author: Author::Operator(Some(3)),
                })),
                item(ItemKind::IdentityChange(IdentityChange {
                    kind: "user_changed_number",
                    from: ContactKey::user("US.1"),
                    user_id: None,
                    at,
                })),
                item(ItemKind::MarketingPreference { opt_out: true, at }),
            ],
            templates: vec![TemplateUpdate {
                waba_id: "102290129340398".into(),
                template_id: Some("1".into()),
                name: Some("order_update".into()),
                language: Some("en".into()),
                change: TemplateChange::Components {
                    body: Some("Hi {{1}}".into()),
                    header: None,
                    footer: None,
                    buttons: Some(vec![serde_json::json!({"type": "URL"})]),
                },
            }],
            notes: vec!["a note".into()],
            ..Normalized::default()
        })
    }

    fn wire<'a>(reading: &'a Result<Normalized, String>, payload: Option<&'a str>) -> Wire<'a> {
        Wire {
            id: 42,
            source: "meta".into(),
            event_type: Some("messages".into()),
            workspace_id: Some(7),
            account_id: Some(1),
            signed_by: Some("account:1".into()),
            correlation_id: "c-1".into(),
            received_at: Utc.timestamp_opt(1_767_225_601, 0).unwrap(),
            reading: payload.is_none().then_some(Cow::Borrowed(reading)),
            payload: payload.map(Cow::Borrowed),
            partition: 3,
            of: 8,
            primary: true,
        }
    }

    /// What a consuming node applies is exactly what the publishing node read: every kind of
    /// item comes back equal, with text that needs escaping and an identity change's kind.
    #[test]
    fn the_typed_event_crosses_the_broker_unchanged() {
        let sent = reading();
        let body = serde_json::to_vec(&wire(&sent, None)).unwrap();
        let got = Wire::decode(&body).unwrap();
        assert!(got.payload.is_none(), "the raw payload is not sent");
        assert_eq!(got.reading.map(Cow::into_owned), Some(sent));
        let refused: Result<Normalized, String> = Err("not JSON".into());
        let body = serde_json::to_vec(&wire(&refused, None)).unwrap();
        assert_eq!(
            Wire::decode(&body).unwrap().reading.map(Cow::into_owned),
            Some(refused)
        );
    }

    fn account(id: i64, workspace_id: i64, pnid: &str) -> crate::store::accounts::Account {
        crate::store::accounts::Account {
            id,
            workspace_id,
            phone_number_id: pnid.into(),
            app_secret: format!("secret-{id}"),
            verify_token: format!("token-{id}"),
            kapso_secret: None,
            agent_type: None,
            waba_id: None,
        }
    }

    /// A reading on the broker acts only inside the tenant that signed its request, as the
    /// intake's own reading does: one naming another tenant's number (or the right number in
    /// another workspace) is refused whole, with the reason the router parks it with.
    #[test]
    fn a_reading_from_the_broker_is_confined_to_its_signer() {
        let directory = crate::store::accounts::Directory::new([
            account(1, 7, "106540352242922"),
            account(2, 8, "109999999999999"),
        ]);
        let acme = Tenant::decode(Some("accounts:7:1"), Some(7), Some(1));
        let sent = reading().unwrap();
        let body = serde_json::to_vec(&wire(&Ok(sent.clone()), None)).unwrap();
        let got = Wire::decode(&body).unwrap().reading.unwrap().into_owned();
        assert_eq!(
            ingest::confined(got.unwrap(), &directory.scope(&acme)),
            Ok(sent.clone())
        );
        // Globex's number, or acme's number claimed for globex's workspace.
        for (pnid, ws) in [("109999999999999", 8), ("106540352242922", 8)] {
            let mut forged = sent.clone();
            forged.items[1].phone_number_id = pnid.into();
            forged.items[1].workspace_id = ws;
            let refused = ingest::confined(forged, &directory.scope(&acme)).unwrap_err();
            assert!(
                refused.contains(pnid) && refused.contains("outside the tenant"),
                "{refused}"
            );
        }
        // A status to attribute by wamid, on a number the signer does not have.
        let mut forged = sent.clone();
        forged
            .orphan_statuses
            .push(crate::ingest::event::OrphanStatus {
                workspace_id: 8,
                phone_number_id: "109999999999999".into(),
                status: crate::ingest::event::StatusItem {
                    wamid: "wamid.x".into(),
                    status: MessageStatus::Read,
                    timestamp: Utc.timestamp_opt(1_767_225_600, 0).unwrap(),
                    error: None,
                    pricing: None,
                },
            });
        assert!(ingest::confined(forged, &directory.scope(&acme)).is_err());
        // The project tenant of globex's workspace may not act on acme's number either.
        let globex = Tenant::Workspace(8);
        assert!(ingest::confined(sent, &directory.scope(&globex)).is_err());
    }

    /// A message from a node older than the reading on the wire (payload, no reading) is still
    /// taken: the router reads its payload; an identity kind no intake gives is refused.
    #[test]
    fn an_older_nodes_message_and_an_unknown_kind() {
        let unused = reading();
        let body = serde_json::to_vec(&wire(&unused, Some(r#"{"entry":[]}"#))).unwrap();
        let got = Wire::decode(&body).unwrap();
        assert!(got.reading.is_none());
        assert_eq!(got.payload.as_deref(), Some(r#"{"entry":[]}"#));
        let body = String::from_utf8(serde_json::to_vec(&wire(&unused, None)).unwrap())
            .unwrap()
            .replace("user_changed_number", "made_up_kind");
        assert!(Wire::decode(body.as_bytes()).is_err());
    }
}
