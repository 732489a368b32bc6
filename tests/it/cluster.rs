//! Cluster mode: real nodes on one PostgreSQL schema and the local RabbitMQ (each test with
//! its own queue prefix, so tests run in parallel; its queues are deleted at the end).

use std::time::Duration;

use lapin::{Connection, ConnectionProperties, options::QueueDeleteOptions};
use serde_json::Value;
use tokio::net::TcpListener;
use wahook::{Running, config::Config};

use crate::common::{
    ACME_PNID, ACME_SECRET, Backend, FAILPOINTS, TestDb, client, meta_text, test_config,
};
use crate::foundation::wahook as wahook_bin;

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const PARTITIONS: u32 = 8;

struct Cluster {
    test_db: TestDb,
    prefix: String,
    nodes: Vec<Option<Node>>,
}

struct Node {
    running: Running,
    base: String,
}

impl Cluster {
    async fn new() -> Self {
        Self {
            test_db: TestDb::new(Backend::Postgres).await,
            prefix: format!("wt{}", uuid::Uuid::now_v7().simple()),
            nodes: Vec::new(),
        }
    }

    fn config(&self, name: &str) -> Config {
        let mut config = test_config(&self.test_db);
        config.cluster.mode = wahook::config::ClusterMode::Rabbitmq;
        config.cluster.amqp_url = AMQP.into();
        config.cluster.partitions = PARTITIONS;
        config.cluster.node_id = name.into();
        config.cluster.queue_prefix = self.prefix.clone();
        config.cluster.lease_ms = 1000;
        config.cluster.tick_ms = 100;
        config
    }

    /// Starts a node; returns its index.
    async fn start(&mut self, config: Config) -> usize {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = wahook::start(config, Some(listener))
            .await
            .expect("node starts");
        let base = format!("http://{}", running.addr);
        self.nodes.push(Some(Node { running, base }));
        self.nodes.len() - 1
    }

    fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("node is running")
    }

    async fn health(&self, i: usize) -> Value {
        client()
            .get(format!("{}/health", self.node(i).base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn owned(&self, i: usize) -> Vec<u64> {
        self.health(i).await["cluster"]["partitions_owned"]
            .as_array()
            .expect("partitions_owned is a list")
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect()
    }

    /// Polls (every 50 ms, up to 30 s) until every live node's share is as expected.
    async fn wait_owned(&self, expected: &[(usize, usize)]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut now = Vec::new();
            for (i, _) in expected {
                now.push((*i, self.owned(*i).await.len()));
            }
            if now == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "partitions owned {now:?}, expected {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn post(&self, i: usize, body: String) -> reqwest::Response {
        let sig = wahook::ingest::signature::meta_header(ACME_SECRET.as_bytes(), body.as_bytes());
        client()
            .post(format!("{}/webhooks/whatsapp", self.node(i).base))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", sig)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// One text from each of `senders` senders to node `i`, each wamid `wamid(k)`; each
    /// answered 200.
    async fn post_texts(&self, i: usize, senders: usize, wamid: impl Fn(usize) -> String) {
        for k in 0..senders {
            let body = meta_text(ACME_PNID, &sender(k), &wamid(k), "x");
            assert_eq!(self.post(i, body).await.status(), 200, "{}", wamid(k));
        }
    }

    async fn scalar(&self, sql: &str) -> i64 {
        use sea_orm::ConnectionTrait;
        let db = &self.running_any().db;
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                sql,
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get_by_index::<i64>(0).unwrap()
    }

    /// Conversation actors alive on node `i`: the conversations it applied (they outlive the
    /// test: `actors.idle_timeout_ms` is minutes).
    async fn live(&self, i: usize) -> usize {
        self.node(i).running.live_conversations().await
    }

    fn running_any(&self) -> &Running {
        &self
            .nodes
            .iter()
            .flatten()
            .next()
            .expect("a node runs")
            .running
    }

    /// Until `sql` yields `expected`, waiting on any node's processing progress.
    async fn wait_for(&self, sql: &str, expected: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut progress: Vec<_> = self
            .nodes
            .iter()
            .flatten()
            .map(|n| n.running.progress())
            .collect();
        loop {
            let now = self.scalar(sql).await;
            if now == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for `{sql}` to be {expected}; it is {now}"
            );
            // Wake on any node's store commit, or every 100 ms (the sweeper and the broker
            // move work without a commit here).
            let changed = futures_util::future::select_all(
                progress.iter_mut().map(|p| Box::pin(p.changed())),
            );
            let _ = tokio::time::timeout(Duration::from_millis(100), changed).await;
        }
    }

    /// Kills node `i` as a crash would: no goodbye to the database (its leases lapse); the
    /// broker takes back what it held unacknowledged.
    fn crash(&mut self, i: usize) {
        self.nodes[i] = None;
    }

    async fn finish(mut self) {
        for node in self.nodes.iter_mut() {
            if let Some(n) = node.take() {
                n.running.shutdown().await.expect("clean shutdown");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Also after a failed assertion; outside the test's runtime.
        let prefix = self.prefix.clone();
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(delete_queues(&prefix)))
        })
        .join();
    }
}

async fn delete_queues(prefix: &str) {
    let conn = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .expect("RabbitMQ at 127.0.0.1:5672 (the cluster tests need it)");
    let channel = conn.create_channel().await.unwrap();
    for p in 0..PARTITIONS {
        let _ = channel
            .queue_delete(
                format!("{prefix}.p.{p}").as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
}

fn sender(k: usize) -> String {
    format!("4917{:08}", 1000 + k)
}

/// Messages of one conversation, in the order they were stored.
const STORED_ORDER: &str = "SELECT COUNT(*) FROM (SELECT m.id, m.wamid, \
    LAG(m.wamid) OVER (PARTITION BY m.conversation_id ORDER BY m.id) AS prev FROM messages m) x \
    WHERE prev IS NOT NULL AND prev > wamid";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_split_the_partitions_and_process_every_webhook_once_in_order() {
    let mut cluster = Cluster::new().await;
    let a = cluster.start(cluster.config("node-a")).await;
    let b = cluster.start(cluster.config("node-b")).await;
    cluster.wait_owned(&[(a, 4), (b, 4)]).await;
    let (owned_a, owned_b) = (cluster.owned(a).await, cluster.owned(b).await);
    assert!(
        owned_a.iter().all(|p| !owned_b.contains(p)),
        "{owned_a:?} / {owned_b:?}"
    );
    let health = cluster.health(a).await;
    assert_eq!(health["cluster"]["broker_connected"], true);
    assert_eq!(health["cluster"]["node_id"], "node-a");

    // 20 conversations × 10 messages, each conversation's messages one after the other, the
    // webhooks alternating between the nodes.
    let senders = 20;
    for round in 0..10 {
        let mut sends = Vec::new();
        for k in 0..senders {
            let wamid = format!("wamid.cl.{k:02}.{round:02}");
            let body = meta_text(ACME_PNID, &sender(k), &wamid, "hi");
            sends.push(cluster.post((k + round) % 2, body));
        }
        for r in futures_util::future::join_all(sends).await {
            assert_eq!(r.status(), 200);
        }
    }
    cluster
        .wait_for(
            "SELECT COUNT(*) FROM webhook_events WHERE status = 'processed'",
            200,
        )
        .await;
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM messages").await, 200);
    assert_eq!(
        cluster
            .scalar("SELECT COALESCE(SUM(message_count), 0)::bigint FROM conversations")
            .await,
        200
    );
    assert_eq!(
        cluster.scalar("SELECT COUNT(*) FROM conversations").await,
        20
    );
    assert_eq!(cluster.scalar(STORED_ORDER).await, 0, "order kept");
    // Each conversation was applied by one node only, and both nodes applied some.
    let (live_a, live_b) = (cluster.live(a).await, cluster.live(b).await);
    assert_eq!(live_a + live_b, 20, "{live_a} + {live_b}");
    assert!(live_a > 0 && live_b > 0, "{live_a} / {live_b}");
    // Each payload was read once, by the node that took its request; the node that applied
    // it through the broker applied that reading (half the events crossed between nodes).
    let mut read_at_intake = 0;
    for node in [a, b] {
        let health = cluster.health(node).await;
        read_at_intake += health["processing"]["payloads_read_at_intake"]
            .as_i64()
            .unwrap();
        assert_eq!(
            health["processing"]["payloads_read_again"], 0,
            "node {node} parsed a payload the broker brought it"
        );
    }
    assert_eq!(read_at_intake, 200);
    cluster.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_for_two_conversations_in_two_partitions_is_applied_by_both_owners() {
    let mut cluster = Cluster::new().await;
    let a = cluster.start(cluster.config("node-a")).await;
    let b = cluster.start(cluster.config("node-b")).await;
    cluster.wait_owned(&[(a, 4), (b, 4)]).await;
    // Two senders whose conversations fall in partitions of different nodes.
    let workspace = cluster
        .scalar(
            "SELECT workspace_id FROM whatsapp_accounts WHERE phone_number_id = '111111111111111'",
        )
        .await;
    let part = |k: usize| {
        let key = wahook::ingest::event::ContactKey::phone(&sender(k)).unwrap();
        wahook::ingest::partition_of(workspace, &key, PARTITIONS) as u64
    };
    let owned_a = cluster.owned(a).await;
    let first = (0..).find(|k| owned_a.contains(&part(*k))).unwrap();
    let second = (0..).find(|k| !owned_a.contains(&part(*k))).unwrap();
    let one = meta_text(ACME_PNID, &sender(first), "wamid.two.1", "one");
    let other = meta_text(ACME_PNID, &sender(second), "wamid.two.2", "two");
    // One change whose value holds both messages (Meta batches like this).
    let mut payload: Value = serde_json::from_str(&one).unwrap();
    let other: Value = serde_json::from_str(&other).unwrap();
    let value = &other["entry"][0]["changes"][0]["value"];
    payload["entry"][0]["changes"][0]["value"]["contacts"]
        .as_array_mut()
        .unwrap()
        .push(value["contacts"][0].clone());
    payload["entry"][0]["changes"][0]["value"]["messages"]
        .as_array_mut()
        .unwrap()
        .push(value["messages"][0].clone());
    let r = cluster.post(b, payload.to_string()).await;
    assert_eq!(r.status(), 200);
    cluster
        .wait_for(
            "SELECT COUNT(*) FROM messages WHERE wamid LIKE 'wamid.two.%'",
            2,
        )
        .await;
    cluster
        .wait_for(
            "SELECT COUNT(*) FROM webhook_events WHERE status = 'processed'",
            1,
        )
        .await;
    assert_eq!(
        cluster.scalar("SELECT COUNT(*) FROM conversations").await,
        2
    );
    // Each owner applied its own conversation only (not both, not the receiving node alone).
    assert_eq!((cluster.live(a).await, cluster.live(b).await), (1, 1));
    cluster.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_nodes_partitions_move_to_the_survivor_and_nothing_is_lost() {
    let mut cluster = Cluster::new().await;
    let a = cluster.start(cluster.config("node-a")).await;
    let b = cluster.start(cluster.config("node-b")).await;
    cluster.wait_owned(&[(a, 4), (b, 4)]).await;
    cluster
        .post_texts(a, 20, |k| format!("wamid.cr.{k:02}.0"))
        .await;
    cluster.crash(a);
    // The survivor takes every partition once the dead node's leases lapse (1 s here).
    cluster.wait_owned(&[(b, PARTITIONS as usize)]).await;
    cluster
        .post_texts(b, 20, |k| format!("wamid.cr.{k:02}.1"))
        .await;
    cluster
        .wait_for(
            "SELECT COUNT(*) FROM messages WHERE wamid LIKE 'wamid.cr.%'",
            40,
        )
        .await;
    cluster
        .wait_for(
            "SELECT COUNT(*) FROM webhook_events WHERE status = 'processed'",
            40,
        )
        .await;
    assert_eq!(
        cluster
            .scalar("SELECT COALESCE(SUM(message_count), 0)::bigint FROM conversations")
            .await,
        40
    );
    assert_eq!(cluster.scalar(STORED_ORDER).await, 0, "order kept");
    // A node that joins gets its share back within seconds.
    let c = cluster.start(cluster.config("node-c")).await;
    cluster.wait_owned(&[(b, 4), (c, 4)]).await;
    cluster.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_cleanly_gives_its_partitions_up_at_once() {
    let mut cluster = Cluster::new().await;
    let a = cluster.start(cluster.config("node-a")).await;
    let b = cluster.start(cluster.config("node-b")).await;
    cluster.wait_owned(&[(a, 4), (b, 4)]).await;
    let node = cluster.nodes[a].take().unwrap();
    node.running.shutdown().await.expect("clean shutdown");
    // Its leases are gone when it has stopped, not `lease_ms` later.
    assert_eq!(
        cluster
            .scalar("SELECT COUNT(*) FROM cluster_leases WHERE node_id = 'node-a'")
            .await,
        0
    );
    cluster.wait_owned(&[(b, PARTITIONS as usize)]).await;
    cluster
        .post_texts(b, 10, |k| format!("wamid.left.{k}"))
        .await;
    cluster
        .wait_for(
            "SELECT COUNT(*) FROM messages WHERE wamid LIKE 'wamid.left.%'",
            10,
        )
        .await;
    cluster.finish().await;
}

/// A node that cannot publish after the commit answers 503; the committed copy is published
/// by the sweeper (no retry) or by the retry itself (answered "duplicate" after its confirm).
async fn unpublished(retry: bool) {
    let _turn = FAILPOINTS.lock().await;
    let mut cluster = Cluster::new().await;
    let mut config = cluster.config("node-a");
    config.cluster.sweep_after_ms = if retry { 600_000 } else { 300 };
    let a = cluster.start(config).await;
    cluster.wait_owned(&[(a, PARTITIONS as usize)]).await;
    let body = meta_text(
        ACME_PNID,
        &sender(1),
        "wamid.unpublished",
        "lost in between",
    );
    fail::cfg("cluster::publish", "return(wamid.unpublished)").unwrap();
    let r = cluster.post(a, body.clone()).await;
    fail::remove("cluster::publish");
    assert_eq!(r.status(), 503, "not published: the sender must retry");
    let reason: Value = r.json().await.unwrap();
    assert!(
        reason.to_string().contains("broker_unavailable"),
        "{reason}"
    );
    assert_eq!(
        cluster
            .scalar("SELECT COUNT(*) FROM webhook_events WHERE status = 'pending'")
            .await,
        1,
        "kept"
    );
    if retry {
        let r = cluster.post(a, body).await;
        assert_eq!(r.status(), 200);
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["status"], "duplicate");
    }
    cluster
        .wait_for(
            "SELECT COUNT(*) FROM messages WHERE wamid = 'wamid.unpublished'",
            1,
        )
        .await;
    cluster
        .wait_for(
            "SELECT COUNT(*) FROM webhook_events WHERE status = 'processed'",
            1,
        )
        .await;
    cluster.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_but_not_published_is_published_by_the_sweeper() {
    unpublished(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_of_an_event_committed_but_not_published_publishes_it() {
    unpublished(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_broker_ready_is_503_and_webhooks_are_kept_but_not_acknowledged() {
    let mut cluster = Cluster::new().await;
    let mut config = cluster.config("node-a");
    // Nothing listens on port 1.
    config.cluster.amqp_url = "amqp://guest:guest@127.0.0.1:1/%2f".into();
    let a = cluster.start(config).await;
    let ready = client()
        .get(format!("{}/ready", cluster.node(a).base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert!(
        body["reasons"].to_string().contains("message broker"),
        "{body}"
    );
    let health = cluster.health(a).await;
    assert_eq!(health["cluster"]["broker_connected"], false);
    let r = cluster
        .post(a, meta_text(ACME_PNID, &sender(1), "wamid.nobroker", "x"))
        .await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    // Kept for the sweeper once the broker is back.
    assert_eq!(
        cluster
            .scalar("SELECT COUNT(*) FROM webhook_events WHERE status = 'pending'")
            .await,
        1
    );
    cluster.finish().await;
}

#[test]
fn cluster_mode_on_sqlite_fails_start_up_naming_the_key() {
    let out = wahook_bin()
        .args(["config", "--check"])
        .env("WAHOOK_CLUSTER__MODE", "rabbitmq")
        .env("WAHOOK_DATABASE__URL", "sqlite://x.db")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster.mode"), "{err}");
    assert!(err.contains("PostgreSQL"), "{err}");
}

/// Through the broker too, an event acts only inside the tenant that signed it: a Kapso
/// project webhook of globex naming acme's number is published, delivered, and parked with the
/// reason; nothing lands in acme's workspace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_number_in_a_signed_event_is_not_applied_through_the_broker() {
    let mut cluster = Cluster::new().await;
    let mut config = cluster.config("node-a");
    config
        .kapso_projects
        .push(wahook::config::KapsoProjectConfig {
            workspace: "globex".into(),
            project_id: "proj-beta".into(),
            secret: Some("beta-project-secret".into()),
            secret_env: None,
        });
    let a = cluster.start(config).await;
    cluster.wait_owned(&[(a, PARTITIONS as usize)]).await;
    let body = serde_json::json!({
        "project_id": "proj-beta",
        "phone_number_id": ACME_PNID,
        "conversation": {"phone_number": "+4915199999999", "phone_number_id": ACME_PNID},
        "message": {"id": "wamid.cluster.attack", "timestamp": "1767225700", "type": "text",
                    "text": {"body": "hi"}, "kapso": {"direction": "inbound"}},
    })
    .to_string();
    let sig = wahook::ingest::signature::sign_hex(b"beta-project-secret", body.as_bytes());
    let res = client()
        .post(format!("{}/webhooks/kapso", cluster.node(a).base))
        .header("content-type", "application/json")
        .header("x-webhook-signature", sig)
        .header("x-webhook-event", "whatsapp.message.received")
        .header("x-idempotency-key", "cluster-attack")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    cluster
        .wait_for(
            "SELECT COUNT(*) FROM webhook_dlq WHERE error LIKE '%another tenant%'",
            1,
        )
        .await;
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM messages").await, 0);
    assert_eq!(
        cluster.scalar("SELECT COUNT(*) FROM conversations").await,
        0
    );
    cluster.finish().await;
}
