//! Who a message is from: every sender shape becomes a conversation, and what truly names no
//! sender is parked in the DLQ with its reason, never marked processed (issue: messages were
//! dropped silently).

use std::collections::BTreeSet;

use serde_json::Value;
use wahook::config::AccountConfig;

use crate::{
    both_backends,
    common::{ACME_PNID, ACME_SECRET, Backend, TestApp, fixture},
};

both_backends!(
    every_sender_shape_becomes_a_message_row,
    a_message_with_no_sender_anywhere_is_parked_with_its_reason,
    a_status_without_recipient_finds_its_message_by_wamid,
    notes_are_kept_with_the_event,
    every_message_in_the_reference_payloads_is_stored_once,
);

/// No automatic re-drive during the test: the DLQ row stays as parked.
fn park_and_hold(c: &mut wahook::config::Config) {
    c.processing.dlq_backoff_base_ms = 3_600_000;
    c.processing.dlq_poll_ms = 20;
}

async fn post(app: &TestApp, name: &str) {
    let res = app.post_meta(fixture(name), ACME_SECRET).await;
    assert_eq!(res.status(), 200, "{name} is acknowledged");
}

async fn every_sender_shape_becomes_a_message_row(backend: Backend) {
    let app = TestApp::start(backend).await;
    let shapes = [
        // (fixture, wamid, contact key, text, profile name)
        (
            "meta/sender_only_in_contacts.json",
            "wamid.attr.nofrom",
            "bsuid:US.555000111222333",
            "hello without from",
            Some("quietfox"),
        ),
        (
            "meta/sender_empty_from.json",
            "wamid.attr.emptyfrom",
            "bsuid:US.999888777666555",
            "hello with empty from",
            Some("emptyfrom"),
        ),
        (
            "meta/sender_placeholder.json",
            "wamid.attr.placeholder",
            "raw:PHONE_NUMBER",
            "hello from a placeholder",
            Some("Placeholder Person"),
        ),
        (
            "meta/sender_formatted_phone.json",
            "wamid.attr.formatted",
            "15550102030",
            "hello from a formatted number",
            Some("Formatted"),
        ),
        (
            "meta/sender_from_user_id_two_contacts.json",
            "wamid.attr.userid",
            "bsuid:US.424242",
            "hello via from_user_id",
            None,
        ),
        (
            "meta/text_bsuid_no_phone.json",
            "wamid.bsuid.1",
            "bsuid:US.13491208655302741918",
            "hi from a username",
            Some("nightowl"),
        ),
    ];
    for (name, ..) in &shapes {
        post(&app, name).await;
    }
    app.wait_processed(shapes.len() as i64).await;
    for (name, wamid, key, text, profile) in shapes {
        let rows = app
            .strings(&format!(
                "SELECT m.content FROM messages m JOIN conversations v ON v.id = m.conversation_id \
                 JOIN contacts c ON c.id = v.contact_id \
                 WHERE m.wamid = '{wamid}' AND c.phone = '{key}' AND m.direction = 'inbound'"
            ))
            .await;
        assert_eq!(
            rows,
            vec![text.to_owned()],
            "{name}: one row, its text, its contact"
        );
        let names = app
            .strings(&format!("SELECT name FROM contacts WHERE phone = '{key}'"))
            .await;
        assert_eq!(
            names,
            vec![profile.unwrap_or_default().to_owned()],
            "{name}"
        );
        let count = app
            .scalar(&format!(
                "SELECT v.message_count FROM conversations v JOIN contacts c ON c.id = v.contact_id \
                 WHERE c.phone = '{key}'"
            ))
            .await;
        assert_eq!(count, 1, "{name}: the conversation counts it");
    }
    assert_eq!(app.count("webhook_dlq").await, 0);
    app.stop().await;
}

async fn a_message_with_no_sender_anywhere_is_parked_with_its_reason(backend: Backend) {
    let app = TestApp::start_with(backend, park_and_hold).await;
    post(&app, "meta/sender_nowhere.json").await;
    post(&app, "meta/echo_without_recipient.json").await;
    app.wait_for("SELECT COUNT(*) FROM webhook_dlq", 2).await;
    app.wait_for(
        "SELECT COUNT(*) FROM webhook_events WHERE status = 'failed'",
        2,
    )
    .await;
    let errors = app
        .strings("SELECT d.error FROM webhook_dlq d JOIN webhook_events e ON e.id = d.event_id ORDER BY e.id")
        .await;
    assert!(
        errors[0].contains("message wamid.attr.nowhere names no sender"),
        "the reason names the message: {errors:?}"
    );
    assert!(
        errors[1].contains("echo wamid.attr.echo.noto names no recipient"),
        "{errors:?}"
    );
    // The raw payload is kept, the reason is on the event, nothing was invented.
    let payload = app
        .strings("SELECT payload FROM webhook_events ORDER BY id LIMIT 1")
        .await;
    assert!(payload[0].contains("who sent this?"));
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM webhook_events WHERE status = 'processed'")
            .await,
        0
    );
    assert_eq!(app.count("messages").await, 0);
    app.wait_for(
        "SELECT COUNT(*) FROM webhook_events WHERE notes LIKE '%unattributed: message wamid.attr.nowhere%'",
        1,
    )
    .await;
    let health = app.health().await;
    assert_eq!(health["processing"]["unattributed"], 2, "{health}");
    // The recorder is shared by every test in this process: at least this test's two.
    let metrics = app.metrics_text().await;
    let unattributed: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("wahook_payload_notes_total{kind=\"unattributed\"} "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the series is exported");
    assert!(unattributed >= 2.0, "{unattributed}");
    app.stop().await;
}

async fn a_status_without_recipient_finds_its_message_by_wamid(backend: Backend) {
    let app = TestApp::start_with(backend, park_and_hold).await;
    post(&app, "meta/sender_formatted_phone.json").await;
    app.wait_processed(1).await;
    post(&app, "meta/status_without_recipient_known.json").await;
    app.wait_processed(2).await;
    assert_eq!(
        app.strings("SELECT status FROM messages WHERE wamid = 'wamid.attr.formatted'")
            .await,
        vec!["read".to_owned()]
    );
    assert_eq!(app.count("messages").await, 1, "no placeholder elsewhere");
    // A status for a wamid nobody stored, without a recipient: the DLQ, with the reason.
    post(&app, "meta/status_without_recipient_unknown.json").await;
    app.wait_for("SELECT COUNT(*) FROM webhook_dlq", 1).await;
    let errors = app.strings("SELECT error FROM webhook_dlq").await;
    assert!(
        errors[0].contains(
            "delivered status for wamid.attr.never.stored names no recipient and matches no stored message"
        ),
        "{errors:?}"
    );
    assert_eq!(app.count("messages").await, 1);
    // A status without a recipient for a message of the same payload finds it there.
    let metadata =
        serde_json::json!({"display_phone_number": "15551111111", "phone_number_id": ACME_PNID});
    let same = serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
        {"field": "smb_message_echoes", "value": {"messaging_product": "whatsapp", "metadata": metadata,
            "message_echoes": [{"from": "15551111111", "to": "4917655500001", "id": "wamid.attr.same",
                                "timestamp": "1767225950", "type": "text", "text": {"body": "from the app"}}]}},
        {"field": "messages", "value": {"messaging_product": "whatsapp", "metadata": metadata,
            "statuses": [{"id": "wamid.attr.same", "status": "delivered", "timestamp": "1767225951"}]}}]}]});
    assert_eq!(
        app.post_meta(same.to_string(), ACME_SECRET).await.status(),
        200
    );
    app.wait_processed(3).await;
    assert_eq!(
        app.strings("SELECT status FROM messages WHERE wamid = 'wamid.attr.same'")
            .await,
        vec!["delivered".to_owned()]
    );
    assert_eq!(app.count("webhook_dlq").await, 1, "not parked");
    app.stop().await;
}

async fn notes_are_kept_with_the_event(backend: Backend) {
    let app = TestApp::start(backend).await;
    post(&app, "meta/errors_value_level_rate_limit.json").await;
    app.wait_processed(1).await;
    app.wait_for(
        "SELECT COUNT(*) FROM webhook_events WHERE notes LIKE 'value-level error: 130429%'",
        1,
    )
    .await;
    let health = app.health().await;
    assert_eq!(health["processing"]["payload_notes"], 1, "{health}");
    assert_eq!(health["processing"]["unattributed"], 0, "{health}");
    app.stop().await;
}

/// The reference payloads collected from Meta's documentation, libraries and bug reports,
/// beside the repository in `shared/payloads/meta` (CI runs with it there).
fn reference_payloads() -> Vec<(String, Vec<u8>)> {
    let dir = std::env::var("WAHOOK_REFERENCE_PAYLOADS")
        .unwrap_or_else(|_| format!("{}/../shared/payloads/meta", env!("CARGO_MANIFEST_DIR")));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!("the reference payloads are not at {dir} ({e}); set WAHOOK_REFERENCE_PAYLOADS")
        })
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let body = std::fs::read(&p).expect("readable");
            (p.display().to_string(), body)
        })
        .collect()
}

/// Every message and echo id a Meta body carries in a `messages` / `smb_message_echoes` change.
fn wamids_of(body: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let entries = body["entry"].as_array().cloned().unwrap_or_default();
    for change in entries
        .iter()
        .flat_map(|e| e["changes"].as_array().cloned().unwrap_or_default())
    {
        if !matches!(
            change["field"].as_str(),
            Some("messages" | "smb_message_echoes")
        ) {
            continue;
        }
        for list in ["messages", "message_echoes"] {
            for m in change["value"][list]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                out.extend(m["id"].as_str().map(str::to_owned));
            }
        }
    }
    out
}

async fn every_message_in_the_reference_payloads_is_stored_once(backend: Backend) {
    let files = reference_payloads();
    let mut pnids = BTreeSet::new();
    let mut wamids = BTreeSet::new();
    for (_, body) in &files {
        let v: Value = serde_json::from_slice(body).expect("JSON");
        for e in v["entry"].as_array().cloned().unwrap_or_default() {
            for c in e["changes"].as_array().cloned().unwrap_or_default() {
                pnids.extend(
                    c["value"]["metadata"]["phone_number_id"]
                        .as_str()
                        .map(str::to_owned),
                );
            }
        }
        wamids.extend(wamids_of(&v));
    }
    assert!(
        wamids.len() >= 10,
        "the reference set has messages: {}",
        wamids.len()
    );
    let app = TestApp::start_with(backend, |c| {
        for pnid in &pnids {
            c.accounts.push(AccountConfig {
                workspace: "reference".into(),
                phone_number_id: pnid.clone(),
                display_phone_number: None,
                waba_id: None,
                app_secret: Some("reference-secret".into()),
                app_secret_env: None,
                verify_token: "reference-verify".into(),
                kapso_secret: None,
                agent: None,
                access_token_env: None,
                access_token: None,
                ..Default::default()
            });
        }
    })
    .await;
    let mut accepted = 0;
    for (name, body) in &files {
        let res = app.post_meta(body.clone(), "reference-secret").await;
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        // Every body that names one of the accounts is acknowledged (account-level fields
        // that name none may be refused at the door).
        let names_account = String::from_utf8_lossy(body).contains("phone_number_id");
        if names_account {
            assert_eq!(status, 200, "{name}: {text}");
        }
        if status == 200 {
            accepted += 1;
        }
    }
    app.wait_for(
        "SELECT COUNT(*) FROM webhook_events WHERE status <> 'pending'",
        accepted,
    )
    .await;
    let unprocessed = app
        .strings("SELECT status || ': ' || COALESCE(last_error, '') FROM webhook_events WHERE status <> 'processed'")
        .await;
    assert!(
        unprocessed.is_empty(),
        "every reference event is processed: {unprocessed:?}"
    );
    for wamid in &wamids {
        let rows = app
            .scalar(&format!(
                "SELECT COUNT(*) FROM messages WHERE wamid = '{wamid}' AND message_type <> 'pending'"
            ))
            .await;
        assert_eq!(rows, 1, "{wamid} is stored exactly once");
    }
    let stored = app
        .scalar("SELECT COUNT(*) FROM messages WHERE message_type <> 'pending'")
        .await;
    assert_eq!(
        stored,
        wamids.len() as i64,
        "no message beyond the payloads'"
    );
    app.stop().await;
}
