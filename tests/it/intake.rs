//! Signed intake: handshake, signatures over raw bytes, tenant isolation, the durable inbox
//! with dedup, Kapso's format, and 503 when the store cannot commit.

use futures_util::future::join_all;
use wahook::ingest::signature;

use crate::{both_backends, common::*};

both_backends!(
    handshake_echoes_the_challenge_only_for_a_known_token,
    signatures_are_checked_over_the_raw_bytes,
    missing_malformed_and_wrong_signatures_are_refused_and_store_nothing,
    tenants_cannot_sign_each_others_events,
    oversized_bodies_get_413,
    a_signed_body_that_is_not_json_is_kept_and_refused,
    account_level_payloads_are_stored_in_the_signers_workspace,
    redeliveries_sequential_and_concurrent_leave_one_row,
    kapso_single_and_batch_events_are_accepted_with_bare_hex_signatures,
    an_unreachable_store_answers_503_and_recovers_by_itself,
    loadgen_records_what_was_acknowledged_and_its_poison_is_parked,
    slow_headers_are_cut_and_slow_bodies_get_408,
    a_row_the_database_refuses_fails_only_its_own_request,
);

async fn handshake_echoes_the_challenge_only_for_a_known_token(backend: Backend) {
    let app = TestApp::start(backend).await;
    let get = |q: String| {
        let c = app.client.clone();
        let url = app.url(&format!("/webhooks/whatsapp?{q}"));
        async move { c.get(url).send().await.unwrap() }
    };
    let res = get(format!(
        "hub.mode=subscribe&hub.verify_token={ACME_VERIFY}&hub.challenge=1158201444"
    ))
    .await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(
        res.text().await.unwrap(),
        "1158201444",
        "verbatim, not JSON-quoted"
    );

    let res = get("hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1".into()).await;
    assert_eq!(res.status(), 403);
    let res = get(format!(
        "hub.mode=unsubscribe&hub.verify_token={ACME_VERIFY}&hub.challenge=1"
    ))
    .await;
    assert_eq!(res.status(), 403);
    let res = get(format!("hub.mode=subscribe&hub.verify_token={ACME_VERIFY}")).await;
    assert_eq!(res.status(), 403);
    app.stop().await;
}

async fn signatures_are_checked_over_the_raw_bytes(backend: Backend) {
    let app = TestApp::start(backend).await;
    // `\/`, `\u00e4`-style escapes, surrogate pairs and raw emoji: re-serialising would
    // change these bytes, so only a raw-bytes HMAC accepts them.
    let body = fixture("meta/text_unicode_escapes.json");
    let res = app.post_meta(body.clone(), ACME_SECRET).await;
    assert_eq!(res.status(), 200);
    let json: serde_json::Value = res.json().await.unwrap();
    assert_eq!(json["status"], "accepted");
    assert!(json["event_id"].as_i64().unwrap() > 0);

    // Upper-case hex is the same signature.
    let mut other = body.clone();
    other.extend_from_slice(b"\n");
    let upper = format!(
        "sha256={}",
        signature::sign_hex(ACME_SECRET.as_bytes(), &other).to_uppercase()
    );
    let res = app.post_meta_with(other, Some(&upper)).await;
    assert_eq!(res.status(), 200);

    // The stored payload is byte-for-byte what was signed.
    let row = app
        .scalar(&format!(
            "SELECT COUNT(*) FROM webhook_events WHERE payload = '{}'",
            String::from_utf8(body).unwrap().replace('\'', "''")
        ))
        .await;
    assert_eq!(row, 1);
    assert_eq!(app.count("webhook_events").await, 2);
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM webhook_events WHERE workspace_id IS NOT NULL AND account_id IS NOT NULL")
            .await,
        2
    );
    app.stop().await;
}

async fn missing_malformed_and_wrong_signatures_are_refused_and_store_nothing(backend: Backend) {
    let app = TestApp::start(backend).await;
    let body = meta_text(ACME_PNID, "4915100000001", "wamid.sig.1", "hi");
    let before = rejected_count(&app, "bad_signature").await;

    let res = app.post_meta_with(body.clone(), None).await;
    assert_eq!(res.status(), 401);
    let res = app.post_meta_with(body.clone(), Some("sha256=zz")).await;
    assert_eq!(res.status(), 401);
    let bare = signature::sign_hex(ACME_SECRET.as_bytes(), body.as_bytes());
    let res = app.post_meta_with(body.clone(), Some(&bare)).await;
    assert_eq!(res.status(), 401, "Meta's header needs the sha256= prefix");
    let res = app.post_meta(body.clone(), "not-the-secret").await;
    assert_eq!(res.status(), 403);
    let tampered = body.replace("hi", "hI");
    let sig = signature::meta_header(ACME_SECRET.as_bytes(), body.as_bytes());
    let res = app.post_meta_with(tampered, Some(&sig)).await;
    assert_eq!(res.status(), 403);
    let res = app
        .post_meta(
            meta_text("999999999", "49151", "wamid.x", "hi"),
            ACME_SECRET,
        )
        .await;
    assert_eq!(res.status(), 403, "unknown phone number");

    assert_eq!(app.count("webhook_events").await, 0);
    assert!(rejected_count(&app, "bad_signature").await >= before + 2.0);
    app.stop().await;
}

async fn tenants_cannot_sign_each_others_events(backend: Backend) {
    let app = TestApp::start(backend).await;
    // globex's number signed with acme's secret.
    let res = app
        .post_meta(
            meta_text(GLOBEX_PNID, "4915100000002", "wamid.t.1", "x"),
            ACME_SECRET,
        )
        .await;
    assert_eq!(res.status(), 403);
    // One payload naming numbers of both tenants: refused whoever signed it.
    let mixed = two_numbers(ACME_PNID, GLOBEX_PNID);
    assert_eq!(
        app.post_meta(mixed.clone(), ACME_SECRET).await.status(),
        403
    );
    assert_eq!(app.post_meta(mixed, GLOBEX_SECRET).await.status(), 403);
    assert_eq!(app.count("webhook_events").await, 0);
    // Two numbers of one tenant that share a secret: accepted, for that workspace.
    let res = app
        .post_meta(two_numbers(ACME_PNID, ACME2_PNID), ACME_SECRET)
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        app.scalar(
            "SELECT COUNT(*) FROM webhook_events e JOIN workspaces w ON w.id = e.workspace_id WHERE w.name = 'acme' AND e.account_id IS NULL"
        )
        .await,
        1
    );
    app.stop().await;
}

fn two_numbers(a: &str, b: &str) -> String {
    let first = meta_text(a, "4915100000003", "wamid.two.1", "one");
    let second = meta_text(b, "4915100000004", "wamid.two.2", "two");
    let v1: serde_json::Value = serde_json::from_str(&first).unwrap();
    let v2: serde_json::Value = serde_json::from_str(&second).unwrap();
    serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [v1["entry"][0], v2["entry"][0]],
    })
    .to_string()
}

async fn oversized_bodies_get_413(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.server.body_limit_bytes = 2048).await;
    let big = meta_text(ACME_PNID, "4915100000005", "wamid.big", &"a".repeat(4096));
    let res = app.post_meta(big, ACME_SECRET).await;
    assert_eq!(res.status(), 413);
    let small = meta_text(ACME_PNID, "4915100000005", "wamid.small", "ok");
    assert_eq!(app.post_meta(small, ACME_SECRET).await.status(), 200);
    assert_eq!(app.count("webhook_events").await, 1);
    app.stop().await;
}

async fn a_signed_body_that_is_not_json_is_kept_and_refused(backend: Backend) {
    let app = TestApp::start(backend).await;
    let res = app.post_meta("this is {not json", ACME_SECRET).await;
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "payload_not_json");
    // Kept for the record, never processed.
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM webhook_events WHERE status = 'dead' AND last_error LIKE 'payload is not JSON%'")
            .await,
        1
    );
    // JSON nested past the parser's depth limit cannot be read downstream: the same answer.
    let deep = format!("{}{}", "[".repeat(1_000), "]".repeat(1_000));
    let res = app.post_meta(deep, ACME_SECRET).await;
    assert_eq!(res.status(), 400);
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM webhook_events WHERE status = 'dead' AND last_error LIKE 'payload is not JSON: recursion limit exceeded%'")
            .await,
        1
    );
    // Bytes that are not text (NUL, invalid UTF-8: PostgreSQL cannot hold them in text) are
    // kept exactly, as base64, and never fail the inbox's commit.
    let binary: Vec<u8> = vec![0x00, 0xff, b'{', 0x00, 0xfe, b'x'];
    let res = app.post_meta(binary.clone(), ACME_SECRET).await;
    assert_eq!(res.status(), 400);
    let kept = app
        .strings("SELECT payload FROM webhook_events WHERE payload LIKE 'base64:%'")
        .await;
    assert_eq!(kept.len(), 1);
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(kept[0].trim_start_matches("base64:"))
        .unwrap();
    assert_eq!(decoded, binary);
    // Unsigned garbage is refused before anything is kept.
    assert_eq!(app.post_meta("garbage", "wrong").await.status(), 403);
    assert_eq!(app.count("webhook_events").await, 3);
    // A replay cannot make them readable: they stay dead (decided by reading the payload, not
    // by the wording of its error).
    let (_, operator) = crate::api::user_with_token(
        &app,
        "acme",
        "otto@acme.test",
        wahook::store::users::Role::Operator,
    )
    .await;
    let ids: Vec<i64> = app
        .strings("SELECT CAST(id AS TEXT) FROM webhook_events")
        .await
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let (status, replayed) = crate::api::call(
        &app,
        reqwest::Method::POST,
        "/api/v1/events/replay",
        Some(&operator),
        Some(serde_json::json!({ "ids": ids })),
    )
    .await;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(replayed["replayed"], 0, "{replayed}");
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM webhook_events WHERE status = 'dead'")
            .await,
        3
    );
    app.stop().await;
}

/// A body that names no phone number is stored under the tenant whose secret signed it (one
/// app secret of one workspace here), so that workspace sees it.
async fn account_level_payloads_are_stored_in_the_signers_workspace(backend: Backend) {
    let app = TestApp::start(backend).await;
    let body = fixture("meta/account_update_no_phone_number_id.json");
    assert_eq!(app.post_meta(body.clone(), "nobody").await.status(), 403);
    let res = app.post_meta(body, GLOBEX_SECRET).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM webhook_events e JOIN workspaces w ON w.id = e.workspace_id WHERE w.name = 'globex'")
            .await,
        1
    );
    // Nothing in it for a conversation: processed with no effect.
    app.wait_processed(1).await;
    assert_eq!(app.count("messages").await, 0);
    app.stop().await;
}

async fn redeliveries_sequential_and_concurrent_leave_one_row(backend: Backend) {
    let app = TestApp::start(backend).await;
    let body = meta_text(ACME_PNID, "4915100000006", "wamid.dup.1", "same");
    let first: serde_json::Value = app
        .post_meta(body.clone(), ACME_SECRET)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["status"], "accepted");
    let again = app.post_meta(body.clone(), ACME_SECRET).await;
    assert_eq!(again.status(), 200);
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(again["status"], "duplicate");
    assert_eq!(app.count("webhook_events").await, 1);

    // 20 copies of a new payload at once: one accepted, 19 duplicates, one row.
    let body = meta_text(ACME_PNID, "4915100000006", "wamid.dup.2", "burst");
    let answers = join_all((0..20).map(|_| app.post_meta(body.clone(), ACME_SECRET))).await;
    let mut accepted = 0;
    for res in answers {
        assert_eq!(res.status(), 200);
        let v: serde_json::Value = res.json().await.unwrap();
        if v["status"] == "accepted" {
            accepted += 1;
        } else {
            assert_eq!(v["status"], "duplicate");
        }
    }
    assert_eq!(accepted, 1);
    assert_eq!(app.count("webhook_events").await, 2);
    app.stop().await;
}

async fn kapso_single_and_batch_events_are_accepted_with_bare_hex_signatures(backend: Backend) {
    let app = TestApp::start(backend).await;
    let single = fixture("kapso/message_received.json");
    let res = app
        .post_kapso(
            single.clone(),
            ACME_KAPSO,
            "whatsapp.message.received",
            "idem-1",
            false,
        )
        .await;
    assert_eq!(res.status(), 200);
    // Redelivery under the same idempotency key.
    let res = app
        .post_kapso(
            single.clone(),
            ACME_KAPSO,
            "whatsapp.message.received",
            "idem-1",
            false,
        )
        .await;
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["status"], "duplicate");
    // Meta's secret does not sign Kapso events, and the sha256= prefix is not Kapso's.
    let res = app
        .post_kapso(
            single.clone(),
            ACME_SECRET,
            "whatsapp.message.received",
            "idem-2",
            false,
        )
        .await;
    assert_eq!(res.status(), 403);
    let prefixed = app
        .client
        .post(app.url("/webhooks/kapso"))
        .header(
            "x-webhook-signature",
            signature::meta_header(ACME_KAPSO.as_bytes(), &single),
        )
        .body(single.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(prefixed.status(), 401);

    let batch = fixture("kapso/message_received_batch.json");
    let res = app
        .post_kapso(
            batch,
            ACME_KAPSO,
            "whatsapp.message.received",
            "idem-batch-1",
            true,
        )
        .await;
    assert_eq!(res.status(), 200);
    // The same signed bytes under another event name and key are the same event: the name
    // and the key are outside the signature, so they cannot make an old body new.
    let res = app
        .post_kapso(
            single,
            ACME_KAPSO,
            "workflow.execution.handoff",
            "idem-3",
            false,
        )
        .await;
    assert_eq!(res.status(), 200);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["status"], "duplicate");
    // An event name wahook does not process is stored all the same.
    let other = String::from_utf8(fixture("kapso/message_received.json"))
        .unwrap()
        .replace("wamid.", "wamid.other.");
    let res = app
        .post_kapso(other, ACME_KAPSO, "whatsapp.unknown.event", "idem-4", false)
        .await;
    assert_eq!(res.status(), 200);

    assert_eq!(app.count("webhook_events").await, 3);
    // Dedup keys are the tenant's own.
    let acme = app
        .scalar("SELECT id FROM workspaces WHERE name = 'acme'")
        .await;
    assert_eq!(
        app.scalar(&format!("SELECT COUNT(*) FROM webhook_events WHERE source = 'kapso' AND event_type = 'whatsapp.message.received' AND dedup_key IN ('kapso:w{acme}:idem-1', 'kapso:w{acme}:idem-batch-1')"))
            .await,
        2
    );
    assert_eq!(
        app.scalar(
            "SELECT COUNT(*) FROM webhook_events WHERE event_type = 'whatsapp.unknown.event'"
        )
        .await,
        1
    );
    app.stop().await;
}

async fn an_unreachable_store_answers_503_and_recovers_by_itself(backend: Backend) {
    let app = TestApp::start(backend).await;
    // Take the inbox away underneath the running server.
    app.exec("ALTER TABLE webhook_events RENAME TO webhook_events_away")
        .await;
    let body = meta_text(ACME_PNID, "4915100000007", "wamid.outage.1", "during");
    let res = app.post_meta(body.clone(), ACME_SECRET).await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "5");
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["error"], "store_unavailable");

    app.exec("ALTER TABLE webhook_events_away RENAME TO webhook_events")
        .await;
    // Meta retries the same payload: now it is accepted, once.
    let res = app.post_meta(body, ACME_SECRET).await;
    assert_eq!(res.status(), 200);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["status"], "accepted");
    assert_eq!(app.count("webhook_events").await, 1);
    app.stop().await;
}

async fn rejected_count(app: &TestApp, outcome: &str) -> f64 {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("wahook_webhooks_received_total{")
                && l.contains("source=\"meta\"")
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A TCP proxy in front of PostgreSQL that the test can cut: a real network outage.
struct CuttableProxy {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl CuttableProxy {
    async fn start(upstream: String) -> Self {
        use std::sync::{Arc, Mutex, atomic::AtomicBool};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (c, l) = (cut.clone(), links.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // refused: dropped at once
                }
                let upstream = upstream.clone();
                l.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Self {
            port,
            cut,
            links,
            accept,
        }
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// PostgreSQL only (SQLite is in-process): the database goes away under a running server;
/// webhooks get 503 + Retry-After and /ready says why; when it is back, both recover by
/// themselves and Meta's retry is accepted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_network_outage_answers_503_and_recovers_by_itself() {
    let test_db = TestDb::new(Backend::Postgres).await;
    let url = test_db.url.clone();
    let host_port = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("127.0.0.1:5432")
        .to_string();
    let upstream = if host_port.contains(':') {
        host_port.clone()
    } else {
        format!("{host_port}:5432")
    };
    let proxy = CuttableProxy::start(upstream).await;
    let mut config = test_config(&test_db);
    config.database.url = url.replacen(&host_port, &format!("127.0.0.1:{}", proxy.port), 1);
    config.database.acquire_timeout_ms = 500;
    let app = TestApp::start_on(test_db, config).await;

    let first = meta_text(ACME_PNID, "4915100000011", "wamid.net.1", "before");
    assert_eq!(app.post_meta(first, ACME_SECRET).await.status(), 200);
    app.wait_processed(1).await;

    proxy.cut();
    let during = meta_text(ACME_PNID, "4915100000011", "wamid.net.2", "during");
    let res = app.post_meta(during.clone(), ACME_SECRET).await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "5");
    let ready = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);

    proxy.restore();
    let res = app.post_meta(during, ACME_SECRET).await;
    assert_eq!(res.status(), 200);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["status"], "accepted");
    app.wait_processed(2).await;
    assert_eq!(
        app.client
            .get(app.url("/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(app.count("messages").await, 2);
    app.stop().await;
}

/// The drills' instrument: loadgen writes one line per acknowledged payload (what the database
/// must then hold exactly once), and its poison payloads end in the DLQ with their reason.
async fn loadgen_records_what_was_acknowledged_and_its_poison_is_parked(backend: Backend) {
    let app = TestApp::start(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("acked.tsv");
    let mut args =
        wahook::loadgen::Args::new(app.url("/webhooks/whatsapp"), ACME_SECRET, ACME_PNID);
    args.requests = 50;
    args.poison_every = 10;
    args.quiet = true;
    args.record = Some(record.clone());
    let report = wahook::loadgen::run(args).await.unwrap();
    assert_eq!((report.ok, report.non_200, report.status_503), (50, 0, 0));
    let text = std::fs::read_to_string(&record).unwrap();
    // kind, wamids, sent µs, answered µs
    let lines: Vec<(&str, &str)> = text
        .lines()
        .map(|l| {
            let mut cols = l.split('\t');
            (cols.next().unwrap(), cols.next().unwrap())
        })
        .collect();
    assert_eq!(lines.len(), 50);
    let poison = lines.iter().filter(|(kind, _)| *kind == "poison").count();
    assert_eq!(poison, 5);
    app.wait_for(
        "SELECT COUNT(*) FROM webhook_dlq WHERE error LIKE '%cannot be attributed%'",
        5,
    )
    .await;
    app.wait_for("SELECT COUNT(*) FROM messages", 45).await;
    for (kind, wamids) in lines.iter().filter(|(kind, _)| *kind == "messages") {
        assert_eq!(*kind, "messages");
        assert_eq!(
            app.scalar(&format!(
                "SELECT COUNT(*) FROM messages WHERE wamid = '{wamids}'"
            ))
            .await,
            1,
            "{wamids} stored once"
        );
    }
    app.stop().await;
}

/// A client that trickles its headers is disconnected after `server.header_read_timeout_ms`;
/// one that sends headers but not the whole body gets 408 after `server.request_timeout_ms`.
/// The server keeps answering everyone else meanwhile.
async fn slow_headers_are_cut_and_slow_bodies_get_408(backend: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::start_with(backend, |c| {
        c.server.header_read_timeout_ms = 300;
        c.server.request_timeout_ms = 300;
    })
    .await;
    let addr = app.url("").trim_start_matches("http://").to_owned();
    // Bounds for the test only: the server is expected to act within its 300 ms.
    let limit = std::time::Duration::from_secs(10);
    // Headers never finished: the server closes the connection (read returns 0 bytes).
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(limit, slow.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the server did not cut a connection that never sent its headers"
    );
    // Meanwhile a good request is answered.
    let res = app
        .post_meta(
            meta_text(ACME_PNID, "4917611110001", "wamid.slow.ok", "hi"),
            ACME_SECRET,
        )
        .await;
    assert_eq!(res.status(), 200);
    // Headers complete, body short of its Content-Length: 408.
    let mut short = tokio::net::TcpStream::connect(&addr).await.unwrap();
    short
        .write_all(b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Hub-Signature-256: sha256=00\r\nContent-Length: 100\r\n\r\n{\"object\":")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(limit, short.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer to a body that never arrived");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(
        app.count("webhook_events").await,
        1,
        "only the good request was stored"
    );
    app.stop().await;
}

/// A group commit is one statement: a row the database refuses would fail every request
/// grouped with it. The writer then commits them one by one, so only that request gets 503.
async fn a_row_the_database_refuses_fails_only_its_own_request(backend: Backend) {
    let _turn = FAILPOINTS.lock().await;
    let refused = format!("wamid.refused.{backend:?}");
    fail::cfg("inbox::refuse_row", &format!("return({refused})")).unwrap();
    // Requests arriving within 300 ms form one group.
    let app = TestApp::start_with(backend, |c| c.intake.batch_wait_us = 300_000).await;
    let mut bodies: Vec<String> = (0..5)
        .map(|i| {
            meta_text(
                ACME_PNID,
                "4915100000300",
                &format!("wamid.grouped.{i}"),
                "hi",
            )
        })
        .collect();
    bodies.push(meta_text(ACME_PNID, "4915100000300", &refused, "refused"));
    let answers = join_all(bodies.into_iter().map(|b| app.post_meta(b, ACME_SECRET))).await;
    fail::remove("inbox::refuse_row");
    let statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 503]);
    assert_eq!(app.count("webhook_events").await, 5);
    app.wait_processed(5).await;
    assert_eq!(app.count("messages").await, 5);
    app.stop().await;
}
