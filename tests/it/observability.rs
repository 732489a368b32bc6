//! What an operator sees: real histogram buckets, readiness that follows the store, the
//! backlog in /health, and logs that never show a phone number.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use crate::{both_backends, common::*};

both_backends!(
    metrics_expose_real_buckets_for_every_histogram,
    ready_goes_503_without_the_store_and_recovers_by_itself,
    health_reports_the_backlog_and_the_dlq,
);

async fn metrics_expose_real_buckets_for_every_histogram(backend: Backend) {
    let app = TestApp::start(backend).await;
    let phone = "4917688880001";
    let res = app
        .post_meta(
            meta_text(ACME_PNID, phone, "wamid.metrics.1", "hi"),
            ACME_SECRET,
        )
        .await;
    assert_eq!(res.status(), 200);
    app.wait_processed(1).await;
    let text = app.metrics_text().await;
    for name in wahook::metrics::HISTOGRAMS {
        assert!(
            text.contains(&format!("{name}_bucket{{")),
            "{name} has buckets, not a summary"
        );
        assert!(
            !text.contains(&format!("{name}{{quantile=")),
            "{name} is no summary"
        );
    }
    assert!(text.contains(r#"http_server_request_duration_seconds_bucket{http_route="/webhooks/whatsapp",http_request_method="POST",http_response_status_code="200",le="0.00025"}"#));
    assert!(text.contains("# HELP wahook_processing_lag_seconds"));
    assert!(
        text.contains(r#"wahook_webhooks_received_total{source="kapso",outcome="cross_tenant"}"#)
    );
    assert!(!text.contains(phone), "no phone number as a label");
    assert!(!text.contains("wamid.metrics.1"), "no wamid as a label");
    app.stop().await;
}

async fn ready_goes_503_without_the_store_and_recovers_by_itself(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ready = || async {
        let res = app.client.get(app.url("/ready")).send().await.unwrap();
        (
            res.status().as_u16(),
            res.json::<serde_json::Value>().await.unwrap(),
        )
    };
    assert_eq!(ready().await.0, 200);
    app.exec("ALTER TABLE webhook_events RENAME TO webhook_events_away")
        .await;
    let (status, body) = ready().await;
    assert_eq!(status, 503);
    assert!(
        body["reasons"][0]
            .as_str()
            .unwrap()
            .contains("the store does not answer"),
        "{body}"
    );
    app.exec("ALTER TABLE webhook_events_away RENAME TO webhook_events")
        .await;
    assert_eq!(ready().await.0, 200);
    app.stop().await;
}

async fn health_reports_the_backlog_and_the_dlq(backend: Backend) {
    let app = TestApp::start(backend).await;
    post_ok(
        &app,
        meta_text(ACME_PNID, "4917688880002", "wamid.health.1", "hi"),
    )
    .await;
    app.wait_processed(1).await;
    let body = app.health().await;
    assert_eq!(body["inbox"]["pending_events"], 0);
    assert_eq!(body["inbox"]["oldest_pending_age_seconds"], 0.0);
    assert_eq!(body["dlq"]["pending"], 0);
    assert_eq!(body["errors_last_hour"], 0);
    assert_eq!(body["processing"]["actors_up"], true);
    assert_eq!(body["processing"]["stuck_conversations"], 0);
    app.stop().await;
}

async fn post_ok(app: &TestApp, body: String) {
    assert_eq!(app.post_meta(body, ACME_SECRET).await.status(), 200);
}

/// The real binary at debug level: every line it writes while processing messages, echoes
/// and statuses for three phones is free of those phone numbers.
#[tokio::test]
async fn logs_never_show_a_phone_number_unmasked() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wahook.toml");
    std::fs::write(
        &config,
        format!(
            "[[accounts]]\nworkspace = \"acme\"\nphone_number_id = \"{ACME_PNID}\"\n\
             display_phone_number = \"15551111111\"\napp_secret = \"{ACME_SECRET}\"\n\
             verify_token = \"{ACME_VERIFY}\"\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wahook"))
        .arg("serve")
        .current_dir(dir.path())
        .env("WAHOOK_CONFIG", &config)
        .env("WAHOOK_SERVER__LISTEN", "127.0.0.1:0")
        .env(
            "WAHOOK_DATABASE__URL",
            format!("sqlite://{}/w.db", dir.path().display()),
        )
        .env("RUST_LOG", "debug")
        .env_remove("DATABASE_URL")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines: Vec<String> = Vec::new();
    let next = |lines: &mut Vec<String>| {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a log line");
        lines.push(line.clone());
        line
    };
    let listen = loop {
        let line = next(&mut lines);
        if line.contains("wahook started") {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            break v["listen"].as_str().unwrap().to_owned();
        }
    };
    let phones = ["4915112340001", "16505550002", "447700900003"];
    let bodies = [
        meta_text(
            ACME_PNID,
            phones[0],
            "wamid.log.1",
            "my number is 4915112340001",
        ),
        meta_text(ACME_PNID, phones[1], "wamid.log.2", "hello"),
        format!(
            r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15551111111","phone_number_id":"{ACME_PNID}"}},"statuses":[{{"id":"wamid.log.out","status":"delivered","timestamp":"1767225600","recipient_id":"{}"}}]}}}}]}}]}}"#,
            phones[2]
        ),
    ];
    let client = crate::common::client();
    for body in bodies {
        let sig = wahook::ingest::signature::meta_header(ACME_SECRET.as_bytes(), body.as_bytes());
        let res = client
            .post(format!("http://{listen}/webhooks/whatsapp"))
            .header("x-hub-signature-256", sig)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let mut applied = 0;
    while applied < 3 {
        if next(&mut lines).contains("event applied") {
            applied += 1;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let all = lines.join("\n");
    for phone in phones {
        assert!(!all.contains(phone), "{phone} unmasked in the log:\n{all}");
    }
    assert!(
        all.contains("49*******0001"),
        "masked, with prefix and last 4"
    );
    assert!(
        all.contains("correlation_id"),
        "event lines carry the correlation id"
    );
}
