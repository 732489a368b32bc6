//! Processing: per-conversation actors applying every acknowledged event once, in order, in
//! batches; statuses only moving forward; poison events parked; restarts and crashes losing
//! nothing.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use futures_util::future::join_all;

use crate::{both_backends, common::*};

both_backends!(
    concurrent_messages_from_one_sender_are_applied_once_each_in_ack_order,
    redelivery_and_replay_create_nothing_new,
    statuses_in_any_order_end_in_the_right_state,
    a_poison_event_is_parked_while_its_conversation_and_others_go_on,
    a_panicking_conversation_actor_is_restarted_and_loses_nothing,
    a_crash_mid_stream_loses_no_acknowledged_event,
    every_message_type_and_payload_shape_is_stored,
    kapso_events_drive_messages_and_the_conversation_state_machine,
    lead_queries_find_the_right_contacts,
    idle_conversation_actors_stop_and_come_back,
    a_failed_router_is_restarted_and_recovers_from_the_inbox,
    a_router_crash_loop_exhausts_the_restart_budget_and_stops_loudly,
    a_full_processing_backlog_answers_503_and_loses_nothing,
    an_event_across_conversations_with_one_poison_slice_stays_with_the_dlq,
    an_unreachable_database_makes_events_wait_not_park,
    an_inbox_commit_whose_answer_was_lost_is_processed_once,
);

fn value(phone_number_id: &str, inner: &str) -> String {
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"4000","changes":[{{"value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15551111111","phone_number_id":"{phone_number_id}"}},{inner}}},"field":"messages"}}]}}]}}"#
    )
}

fn text_at(from: &str, wamid: &str, ts: i64, body: &str) -> String {
    value(
        ACME_PNID,
        &format!(
            r#""contacts":[{{"profile":{{"name":"Lead {from}"}},"wa_id":"{from}"}}],"messages":[{{"from":"{from}","id":"{wamid}","timestamp":"{ts}","type":"text","text":{{"body":"{body}"}}}}]"#
        ),
    )
}

fn echo(to: &str, wamid: &str, ts: i64, kind: &str) -> String {
    let body = match kind {
        "audio" => {
            r#""type":"audio","audio":{"id":"55","mime_type":"audio/ogg","voice":true}"#.to_string()
        }
        _ => format!(r#""type":"text","text":{{"body":"reply {wamid}"}}"#),
    };
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"4000","changes":[{{"value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15551111111","phone_number_id":"{ACME_PNID}"}},"message_echoes":[{{"from":"15551111111","to":"{to}","id":"{wamid}","timestamp":"{ts}",{body}}}]}},"field":"smb_message_echoes"}}]}}]}}"#
    )
}

fn status(to: &str, wamid: &str, status: &str, ts: i64) -> String {
    let errors = if status == "failed" {
        r#","errors":[{"code":131049,"title":"Not delivered to maintain healthy ecosystem engagement."}]"#
    } else {
        ""
    };
    value(
        ACME_PNID,
        &format!(
            r#""statuses":[{{"id":"{wamid}","status":"{status}","timestamp":"{ts}","recipient_id":"{to}"{errors}}}]"#
        ),
    )
}

async fn post_ok(app: &TestApp, body: String) -> i64 {
    let res = app.post_meta(body, ACME_SECRET).await;
    assert_eq!(res.status(), 200);
    let v: serde_json::Value = res.json().await.unwrap();
    v["event_id"].as_i64().unwrap_or(0)
}

async fn concurrent_messages_from_one_sender_are_applied_once_each_in_ack_order(backend: Backend) {
    let app = TestApp::start(backend).await;
    let sender = "4917611110000";
    let posts = (0..200).map(|i| {
        app.post_meta(
            text_at(
                sender,
                &format!("wamid.burst.{i}"),
                1_767_225_600 + i,
                "burst",
            ),
            ACME_SECRET,
        )
    });
    for res in join_all(posts).await {
        assert_eq!(res.status(), 200);
    }
    app.wait_processed(200).await;
    assert_eq!(app.count("messages").await, 200);
    assert_eq!(
        app.scalar("SELECT message_count FROM conversations").await,
        200
    );
    assert_eq!(app.count("contacts").await, 1);
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM contacts WHERE lead_status = 'prospect' AND lead_score = 50 AND last_contact_at IS NULL AND name = 'Lead 4917611110000'")
            .await,
        1
    );
    // Applied in the order acknowledged: message ids follow event ids.
    let order = app
        .column("SELECT event_id FROM messages ORDER BY id")
        .await;
    assert_eq!(order.len(), 200);
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "messages applied out of ack order"
    );
    // Batching is a measured figure: far fewer statements than messages.
    app.stop().await;
}

async fn redelivery_and_replay_create_nothing_new(backend: Backend) {
    let app = TestApp::start(backend).await;
    let bodies = [
        fixture("meta/all_message_types.json"),
        fixture("meta/batched_entries_changes_statuses.json"),
        fixture("meta/text_bsuid_no_phone.json"),
        echo("4917600000001", "wamid.replay.out", 1_767_225_700, "text").into_bytes(),
    ];
    for b in &bodies {
        assert_eq!(app.post_meta(b.clone(), ACME_SECRET).await.status(), 200);
    }
    app.wait_processed(4).await;
    let before = snapshot(&app).await;
    assert_eq!(
        before[0],
        18 + 4 + 1 + 1 + 1,
        "messages incl. one status placeholder (the fixture's 22 less its two reactions, edit and revoke)"
    );

    // Meta redelivers everything: duplicates, nothing new.
    for b in &bodies {
        let v: serde_json::Value = app
            .post_meta(b.clone(), ACME_SECRET)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(v["status"], "duplicate");
    }
    // Each request was read once, at the intake (a duplicate too, before the inbox finds it
    // is one), and processing applied that reading instead of reading the payload again.
    let reads = |h: serde_json::Value| {
        (
            h["processing"]["payloads_read_at_intake"].as_i64().unwrap(),
            h["processing"]["payloads_read_again"].as_i64().unwrap(),
        )
    };
    assert_eq!(
        reads(app.health().await),
        (8, 0),
        "intake reads each kept request once"
    );
    // Replay: every event pending again, processed again after a restart — read back from
    // the inbox, once each.
    app.exec("UPDATE webhook_events SET status = 'pending'")
        .await;
    let (test_db, config) = app.stop().await;
    let app = TestApp::start_on(test_db, config).await;
    app.wait_processed(4).await;
    assert_eq!(snapshot(&app).await, before);
    assert_eq!(reads(app.health().await), (0, 4));
    app.stop().await;
}

async fn snapshot(app: &TestApp) -> Vec<i64> {
    vec![
        app.count("messages").await,
        app.count("contacts").await,
        app.count("conversations").await,
        app.scalar("SELECT COALESCE(SUM(message_count), 0) FROM conversations")
            .await,
        app.count("conversation_state_transitions").await,
        app.scalar("SELECT COUNT(*) FROM messages WHERE message_type = 'pending'")
            .await,
    ]
}

async fn statuses_in_any_order_end_in_the_right_state(backend: Backend) {
    let app = TestApp::start(backend).await;
    let to = "4917622220000";
    let t = 1_767_225_600;
    let steps = [
        // A: read before sent before delivered → read.
        echo(to, "wamid.A", t, "text"),
        status(to, "wamid.A", "read", t + 30),
        status(to, "wamid.A", "sent", t + 10),
        status(to, "wamid.A", "delivered", t + 20),
        // B: the status arrives before its message → kept, then applied when it lands.
        status(to, "wamid.B", "delivered", t + 40),
        echo(to, "wamid.B", t + 35, "text"),
        // C: failed after read → stays read, the error is recorded.
        echo(to, "wamid.C", t + 50, "text"),
        status(to, "wamid.C", "read", t + 55),
        status(to, "wamid.C", "failed", t + 56),
        // D: failed before delivery → failed.
        echo(to, "wamid.D", t + 60, "text"),
        status(to, "wamid.D", "sent", t + 61),
        status(to, "wamid.D", "failed", t + 62),
        // E: a voice message played, then a late read → played.
        echo(to, "wamid.E", t + 70, "audio"),
        status(to, "wamid.E", "played", t + 80),
        status(to, "wamid.E", "read", t + 75),
    ];
    let n = steps.len() as i64;
    for body in steps {
        post_ok(&app, body).await;
    }
    app.wait_processed(n).await;
    let status_of =
        |wamid: &str| format!("SELECT status_rank FROM messages WHERE wamid = '{wamid}'");
    assert_eq!(app.scalar(&status_of("wamid.A")).await, 30, "read");
    assert_eq!(app.scalar(&status_of("wamid.B")).await, 20, "delivered");
    assert_eq!(app.scalar(&status_of("wamid.C")).await, 30, "still read");
    assert_eq!(app.scalar(&status_of("wamid.D")).await, 15, "failed");
    assert_eq!(app.scalar(&status_of("wamid.E")).await, 40, "played");
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM messages WHERE wamid IN ('wamid.C', 'wamid.D') AND status_error LIKE '131049:%'")
            .await,
        2
    );
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM messages WHERE wamid = 'wamid.B' AND message_type = 'text' AND content = 'reply wamid.B' AND status = 'delivered'")
            .await,
        1,
        "the placeholder became the message and kept its status"
    );
    assert_eq!(
        app.scalar("SELECT message_count FROM conversations").await,
        5
    );
    let last_contact = app.db_time("SELECT last_contact_at FROM contacts").await;
    assert_eq!(last_contact, Utc.timestamp_opt(t + 70, 0).single());
    app.stop().await;
}

async fn a_poison_event_is_parked_while_its_conversation_and_others_go_on(backend: Backend) {
    let _turn = FAILPOINTS.lock().await;
    let poison = format!("wamid.poison.{backend:?}");
    // This point is only ever configured by this test; it fails only slices naming `poison`.
    fail::cfg("conversation::apply", &format!("return({poison})")).unwrap();
    let app = TestApp::start_with(backend, |c| {
        c.processing.max_attempts = 3;
        c.processing.backoff_base_ms = 1;
        c.processing.backoff_max_ms = 2;
        c.processing.dlq_backoff_base_ms = 3_600_000;
        c.processing.dlq_poll_ms = 20;
    })
    .await;
    let x = "4917633330001";
    let y = "4917633330002";
    post_ok(&app, text_at(x, &poison, 1_767_225_600, "poison")).await;
    post_ok(
        &app,
        text_at(x, "wamid.after.poison", 1_767_225_601, "later"),
    )
    .await;
    post_ok(&app, text_at(y, "wamid.other.conv", 1_767_225_602, "other")).await;
    app.wait_processed(2).await;
    app.wait_for("SELECT COUNT(*) FROM webhook_dlq", 1).await;
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM webhook_dlq WHERE attempts = 1 AND resolution_status = 'pending' AND next_retry_at IS NOT NULL AND error LIKE 'failed after 3 attempts: injected failure%'")
            .await,
        1
    );
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM webhook_events WHERE status = 'failed' AND attempts = 3")
            .await,
        1
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT COUNT(*) FROM messages WHERE wamid = '{poison}'"
        ))
        .await,
        0
    );
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM messages WHERE wamid IN ('wamid.after.poison', 'wamid.other.conv')")
            .await,
        2
    );

    // The cause is fixed; the operator replays it; the retry worker re-drives it once.
    fail::remove("conversation::apply");
    replay_the_parked_event(&app).await;
    app.wait_processed(3).await;
    assert_eq!(
        app.scalar(&format!(
            "SELECT COUNT(*) FROM messages WHERE wamid = '{poison}'"
        ))
        .await,
        1
    );
    let x_count = app
        .scalar(&format!(
            "SELECT c.message_count FROM conversations c JOIN contacts k ON k.id = c.contact_id WHERE k.phone = '{x}'"
        ))
        .await;
    assert_eq!(x_count, 2);
    app.stop().await;
}

async fn a_panicking_conversation_actor_is_restarted_and_loses_nothing(backend: Backend) {
    let _turn = FAILPOINTS.lock().await;
    let panic_wamid = format!("wamid.panic.{backend:?}");
    fail::cfg("conversation::panic", &format!("return({panic_wamid})")).unwrap();
    let app = TestApp::start(backend).await;
    let restarts = || app.metric("wahook_actor_restarts_total{actor=\"conversation\"}");
    let before = restarts().await;
    let sender = "4917644440000";
    // The first slice panics the actor; the two behind it were in its mailbox.
    let posts = [
        text_at(sender, &panic_wamid, 1_767_225_600, "boom"),
        text_at(sender, "wamid.panic.next1", 1_767_225_601, "one"),
        text_at(sender, "wamid.panic.next2", 1_767_225_602, "two"),
    ];
    for p in posts {
        post_ok(&app, p).await;
    }
    app.wait_processed(3).await;
    assert_eq!(app.count("messages").await, 3);
    assert_eq!(
        app.scalar("SELECT message_count FROM conversations").await,
        3
    );
    assert_eq!(restarts().await - before, 1.0, "one restart, counted");
    fail::remove("conversation::panic");
    app.stop().await;
}

async fn a_crash_mid_stream_loses_no_acknowledged_event(backend: Backend) {
    let mut app = TestApp::start(backend).await;
    let posts = (0..120).map(|i| {
        app.post_meta(
            text_at(
                &format!("49176555500{:02}", i % 12),
                &format!("wamid.crash.{i}"),
                1_767_225_600 + i,
                "x",
            ),
            ACME_SECRET,
        )
    });
    for res in join_all(posts).await {
        assert_eq!(res.status(), 200);
    }
    // Crash: no graceful shutdown, tasks and actors stop wherever they are.
    drop(app.running.take());
    let unprocessed = app
        .scalar("SELECT COUNT(*) FROM webhook_events WHERE status <> 'processed'")
        .await;
    let (test_db, config) = app.stop().await;
    let app = TestApp::start_on(test_db, config).await;
    app.wait_processed(120).await;
    assert_eq!(app.count("messages").await, 120);
    assert_eq!(app.count("contacts").await, 12);
    assert_eq!(
        app.scalar("SELECT SUM(message_count) FROM conversations")
            .await,
        120
    );
    eprintln!("crash test: {unprocessed} of 120 events were unprocessed at the crash");
    app.stop().await;
}

async fn every_message_type_and_payload_shape_is_stored(backend: Backend) {
    let app = TestApp::start(backend).await;
    for f in [
        "meta/all_message_types.json",
        "meta/batched_entries_changes_statuses.json",
        "meta/text_bsuid_no_phone.json",
        "meta/errors_value_level_rate_limit.json",
        "meta/text_unicode_escapes.json",
    ] {
        assert_eq!(
            app.post_meta(fixture(f), ACME_SECRET).await.status(),
            200,
            "{f}"
        );
    }
    app.wait_processed(5).await;
    let types = app
        .strings("SELECT DISTINCT message_type FROM messages ORDER BY message_type")
        .await;
    for t in [
        "audio",
        "button",
        "contacts",
        "document",
        "hologram_v9",
        "image",
        "interactive",
        "location",
        "media_placeholder",
        "order",
        "request_welcome",
        "sticker",
        "system",
        "text",
        "unsupported",
        "video",
    ] {
        assert!(types.iter().any(|x| x == t), "type {t} stored: {types:?}");
    }
    let content = |wamid: &str| format!("SELECT content FROM messages WHERE wamid = '{wamid}'");
    assert_eq!(
        app.strings(&content("wamid.types.09.interactive")).await,
        ["Yes, please"]
    );
    assert_eq!(
        app.strings(&content("wamid.types.08.contacts")).await,
        ["Barbara Johnson"]
    );
    // A Flow answer shows the fields filled in, not its "Sent", and keeps them parsed.
    assert_eq!(
        app.strings(&content("wamid.types.11.interactive")).await,
        ["size: L"]
    );
    assert_eq!(
        app.scalar(r#"SELECT COUNT(*) FROM messages WHERE wamid = 'wamid.types.11.interactive' AND metadata LIKE '%"response":{"flow_token":"t","size":"L"}%'"#)
            .await,
        1
    );
    // Reactions, edits and revokes change their message instead of being messages.
    for t in ["reaction", "edit", "revoke"] {
        assert!(!types.iter().any(|x| x == t), "a {t} stored as a message");
    }
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM message_reactions WHERE wamid = 'wamid.types.01.text' AND side = 'inbound' AND emoji IS NULL")
            .await,
        1,
        "the ❤️ reaction, then its removal"
    );
    assert_eq!(
        app.strings(&content("wamid.types.01.text")).await,
        ["Hi! Do you ship to Hamburg?"],
        "edited"
    );
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM messages WHERE wamid = 'wamid.types.02.image' AND content IS NULL AND revoked_at IS NOT NULL")
            .await,
        1,
        "revoked"
    );
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM messages WHERE wamid = 'wamid.types.22.hologram_v9' AND metadata LIKE '%future%'")
            .await,
        1,
        "an unknown type keeps its raw JSON"
    );
    // Every entry, change, message and status: three senders and a status placeholder.
    for w in [
        "wamid.multi.a1",
        "wamid.multi.b1",
        "wamid.multi.a2",
        "wamid.multi.c1",
    ] {
        assert_eq!(
            app.scalar(&format!(
                "SELECT COUNT(*) FROM messages WHERE wamid = '{w}'"
            ))
            .await,
            1,
            "{w}"
        );
    }
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM messages WHERE wamid = 'wamid.multi.out1' AND status = 'delivered' AND message_type = 'pending'")
            .await,
        1
    );
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM contacts WHERE phone = 'bsuid:US.13491208655302741918' AND user_id = 'US.13491208655302741918'")
            .await,
        1,
        "a username adopter without a phone"
    );
    assert_eq!(
        app.strings("SELECT name FROM contacts WHERE phone = '4915112345678'")
            .await,
        ["Jürgen Ärger"],
        "escaped profile names decoded"
    );
    // The fixture's `user_changed_number` moved the contact to the new number, with every
    // message of the payload (those before the notice and those after).
    assert_eq!(
        app.scalar("SELECT message_count FROM conversations c JOIN contacts k ON k.id = c.contact_id WHERE k.phone = '4917612345002'")
            .await,
        18,
        "22 message objects, of which two reactions, an edit and a revoke are not messages"
    );
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM contacts WHERE phone = '4917612345001'")
            .await,
        0,
        "no contact left under the old number"
    );
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM contact_identity_changes WHERE kind = 'user_changed_number' AND from_key = '4917612345001' AND to_key = '4917612345002'")
            .await,
        1
    );
    app.stop().await;
}

async fn kapso_events_drive_messages_and_the_conversation_state_machine(backend: Backend) {
    let app = TestApp::start(backend).await;
    let received = fixture("kapso/message_received.json");
    let kapso = |body: Vec<u8>, event: &'static str, key: &'static str| {
        app.post_kapso(body, ACME_KAPSO, event, key, false)
    };
    assert_eq!(
        kapso(received.clone(), "whatsapp.message.received", "k1")
            .await
            .status(),
        200
    );
    let conv = |status: &str| {
        format!(
            r#"{{"conversation":{{"id":"c-1","phone_number":"+15550102030","status":"{status}","phone_number_id":"{ACME_PNID}"}},"phone_number_id":"{ACME_PNID}"}}"#
        )
        .into_bytes()
    };
    assert_eq!(
        kapso(conv("ended"), "whatsapp.conversation.ended", "k2")
            .await
            .status(),
        200
    );
    let again = String::from_utf8(received).unwrap().replace(
        "wamid.HBgLMTU1NTAxMDIwMzAVAgASGBQzQUQ3NUE2RjBBMTk1RDJGOEMyQgA=",
        "wamid.kapso.second",
    );
    assert_eq!(
        kapso(again.into_bytes(), "whatsapp.message.received", "k3")
            .await
            .status(),
        200
    );
    let sent = format!(
        r#"{{"message":{{"id":"wamid.kapso.out","timestamp":"1767225800","type":"text","text":{{"body":"On it"}},"kapso":{{"direction":"outbound","status":"sent","content":"On it"}}}},"conversation":{{"phone_number":"+15550102030","phone_number_id":"{ACME_PNID}"}},"phone_number_id":"{ACME_PNID}"}}"#
    );
    assert_eq!(
        kapso(sent.into_bytes(), "whatsapp.message.sent", "k4")
            .await
            .status(),
        200
    );
    let batch = fixture("kapso/message_received_batch.json");
    assert_eq!(
        app.post_kapso(batch, ACME_KAPSO, "whatsapp.message.received", "k5", true)
            .await
            .status(),
        200
    );
    app.wait_processed(5).await;

    assert_eq!(app.count("contacts").await, 1);
    assert_eq!(
        app.strings("SELECT name FROM contacts").await,
        ["Dana Buyer"],
        "profile name from Kapso's conversation"
    );
    assert_eq!(
        app.scalar("SELECT message_count FROM conversations").await,
        5
    );
    assert_eq!(
        app.strings("SELECT status FROM messages WHERE wamid = 'wamid.kapso.out'")
            .await,
        ["sent"]
    );
    assert_eq!(
        app.strings("SELECT COALESCE(from_state, '-') || '>' || to_state FROM conversation_state_transitions ORDER BY id")
            .await,
        ["->open", "open>closed", "closed>open"]
    );
    assert_eq!(
        app.strings("SELECT status FROM conversations").await,
        ["open"]
    );
    assert!(
        app.db_time("SELECT last_contact_at FROM contacts")
            .await
            .is_some()
    );
    app.stop().await;
}

async fn lead_queries_find_the_right_contacts(backend: Backend) {
    let app = TestApp::start(backend).await;
    let now = Utc::now();
    let days_ago = |d: i64| (now - chrono::Duration::days(d)).timestamp();
    // waiting: wrote to us 3 days ago, never answered.
    post_ok(
        &app,
        text_at("4917666660001", "wamid.l1", days_ago(3), "hello?"),
    )
    .await;
    // answered: wrote 10 days ago, we answered 9 days ago.
    post_ok(
        &app,
        text_at("4917666660002", "wamid.l2", days_ago(10), "hi"),
    )
    .await;
    post_ok(
        &app,
        echo("4917666660002", "wamid.l2r", days_ago(9), "text"),
    )
    .await;
    // came back: we wrote 2 days ago, they answered 1 day ago.
    post_ok(
        &app,
        echo("4917666660003", "wamid.l3r", days_ago(2), "text"),
    )
    .await;
    post_ok(
        &app,
        text_at("4917666660003", "wamid.l3", days_ago(1), "yes"),
    )
    .await;
    app.wait_processed(5).await;
    let ws = app
        .scalar("SELECT id FROM workspaces WHERE name = 'acme'")
        .await;
    let phones = |v: Vec<entity::contacts::Model>| {
        let mut p: Vec<String> = v.into_iter().map(|c| c.phone).collect();
        p.sort();
        p
    };
    use wahook::store::leads;
    assert_eq!(
        phones(leads::needs_follow_up(&app.db, ws).await.unwrap()),
        ["4917666660001", "4917666660003"]
    );
    assert_eq!(
        phones(leads::not_contacted_in(&app.db, ws, 5, now).await.unwrap()),
        ["4917666660001", "4917666660002"]
    );
    assert_eq!(
        phones(
            leads::recently_active(&app.db, ws, now - chrono::Duration::days(4))
                .await
                .unwrap()
        ),
        ["4917666660001", "4917666660003"]
    );
    // Another workspace sees none of them.
    let other = app
        .scalar("SELECT id FROM workspaces WHERE name = 'globex'")
        .await;
    assert!(
        leads::needs_follow_up(&app.db, other)
            .await
            .unwrap()
            .is_empty()
    );
    app.stop().await;
}

async fn idle_conversation_actors_stop_and_come_back(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.actors.idle_timeout_ms = 50).await;
    post_ok(
        &app,
        text_at("4917677770001", "wamid.idle.1", 1_767_225_600, "one"),
    )
    .await;
    app.wait_processed(1).await;
    let mut progress = app.running().progress();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while app.running().live_conversations().await > 0 {
        tokio::time::timeout_at(deadline, progress.changed())
            .await
            .expect("the idle actor stops")
            .unwrap();
    }
    post_ok(
        &app,
        text_at("4917677770001", "wamid.idle.2", 1_767_225_601, "two"),
    )
    .await;
    app.wait_processed(2).await;
    assert_eq!(
        app.scalar("SELECT message_count FROM conversations").await,
        2
    );
    app.stop().await;
}

async fn a_failed_router_is_restarted_and_recovers_from_the_inbox(backend: Backend) {
    let _turn = FAILPOINTS.lock().await;
    let marker = format!("router-panics-once-{backend:?}");
    fail::cfg("router::dispatch", &format!("1*return({marker})")).unwrap();
    let app = TestApp::start(backend).await;
    post_ok(
        &app,
        text_at("4917699990001", "wamid.router.1", 1_767_225_600, &marker),
    )
    .await;
    post_ok(
        &app,
        text_at("4917699990002", "wamid.router.2", 1_767_225_601, "after"),
    )
    .await;
    app.wait_processed(2).await;
    assert_eq!(app.count("messages").await, 2);
    assert_eq!(
        app.scalar("SELECT SUM(message_count) FROM conversations")
            .await,
        2
    );
    assert!(
        app.running().ctx.fatal.borrow().is_none(),
        "within the budget"
    );
    assert!(app.running().ctx.router().is_some());
    fail::remove("router::dispatch");
    app.stop().await;
}

async fn a_router_crash_loop_exhausts_the_restart_budget_and_stops_loudly(backend: Backend) {
    let _turn = FAILPOINTS.lock().await;
    let marker = format!("router-panics-always-{backend:?}");
    fail::cfg("router::dispatch", &format!("return({marker})")).unwrap();
    let app = TestApp::start_with(backend, |c| c.actors.restart_budget = 2).await;
    // Every new router recovers the event from the inbox and dies on it again.
    post_ok(
        &app,
        text_at("4917699990003", "wamid.router.3", 1_767_225_602, &marker),
    )
    .await;
    let mut fatal = app.running().ctx.fatal.subscribe();
    let reason = tokio::time::timeout(Duration::from_secs(60), fatal.wait_for(Option::is_some))
        .await
        .expect("the supervisor gives up")
        .unwrap()
        .clone()
        .unwrap();
    assert!(reason.contains("restart budget"), "{reason}");
    fail::remove("router::dispatch");
    // The event is still pending: nothing acknowledged was lost.
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM webhook_events WHERE status = 'pending'")
            .await,
        1
    );
    let (test_db, config) = app.stop().await;
    // After the fix (here: the fault removed) a restart processes it.
    let app = TestApp::start_on(test_db, config).await;
    app.wait_processed(1).await;
    app.stop().await;
}

async fn a_full_processing_backlog_answers_503_and_loses_nothing(backend: Backend) {
    let _turn = FAILPOINTS.lock().await;
    let stuck = format!("wamid.backlog.{backend:?}");
    fail::cfg("conversation::apply", &format!("return({stuck})")).unwrap();
    let app = TestApp::start_with(backend, |c| {
        c.processing.max_in_flight = 1;
        c.processing.max_attempts = 20;
        c.processing.backoff_base_ms = 100;
        c.processing.backoff_max_ms = 200;
    })
    .await;
    // One event held in flight by a failing apply (its actor retries with backoff).
    post_ok(
        &app,
        text_at("4917610100001", &stuck, 1_767_225_600, "held"),
    )
    .await;
    let ctx = app.running().ctx.clone();
    tokio::time::timeout(Duration::from_secs(30), async {
        while ctx.in_flight() < 1 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the event is dispatched");
    let other = text_at(
        "4917610100002",
        "wamid.backlog.other",
        1_767_225_601,
        "later",
    );
    let res = app.post_meta(other.clone(), ACME_SECRET).await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "5");
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["error"], "processing_backlog");
    assert_eq!(
        app.count("webhook_events").await,
        1,
        "a refused request stores nothing"
    );
    // The fault clears; the held event is applied; Meta's retry of the refused one is taken.
    fail::remove("conversation::apply");
    app.wait_processed(1).await;
    tokio::time::timeout(Duration::from_secs(30), async {
        while ctx.in_flight() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("nothing left in flight");
    post_ok(&app, other).await;
    app.wait_processed(2).await;
    assert_eq!(app.count("messages").await, 2);
    assert_eq!(app.count("webhook_dlq").await, 0);
    app.stop().await;
}

async fn an_event_across_conversations_with_one_poison_slice_stays_with_the_dlq(backend: Backend) {
    let _turn = FAILPOINTS.lock().await;
    let poison = format!("wamid.split.poison.{backend:?}");
    fail::cfg("conversation::apply", &format!("return({poison})")).unwrap();
    let app = TestApp::start_with(backend, |c| {
        c.processing.max_attempts = 2;
        c.processing.backoff_base_ms = 1;
        c.processing.backoff_max_ms = 2;
        c.processing.dlq_backoff_base_ms = 3_600_000;
        c.processing.dlq_poll_ms = 20;
    })
    .await;
    // One payload, two senders: one slice is poison, the other is fine.
    let body = value(
        ACME_PNID,
        &format!(
            r#""messages":[{{"from":"4917620200001","id":"{poison}","timestamp":"1767225600","type":"text","text":{{"body":"bad"}}}},{{"from":"4917620200002","id":"wamid.split.good","timestamp":"1767225601","type":"text","text":{{"body":"good"}}}}]"#
        ),
    );
    post_ok(&app, body).await;
    app.wait_for("SELECT COUNT(*) FROM webhook_dlq", 1).await;
    app.wait_for(
        "SELECT COUNT(*) FROM messages WHERE wamid = 'wamid.split.good'",
        1,
    )
    .await;
    // Whichever slice finished first, the event belongs to the DLQ, not to `processed`.
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM webhook_events WHERE status = 'failed'")
            .await,
        1
    );
    // Fixed and replayed: the whole event is applied again, idempotently, and resolves.
    fail::remove("conversation::apply");
    replay_the_parked_event(&app).await;
    app.wait_processed(1).await;
    assert_eq!(app.count("messages").await, 2);
    assert_eq!(
        app.scalar("SELECT SUM(message_count) FROM conversations")
            .await,
        2
    );
    app.stop().await;
}

/// The operator's replay of the one DLQ row, and the retry worker resolving it.
async fn replay_the_parked_event(app: &TestApp) {
    let dlq_id = app.scalar("SELECT id FROM webhook_dlq").await;
    assert!(wahook::store::dlq::replay(&app.db, dlq_id).await.unwrap());
    app.wait_for(
        "SELECT COUNT(*) FROM webhook_dlq WHERE resolution_status = 'resolved'",
        1,
    )
    .await;
}

/// A database outage is no fault of the event: it waits (in order) without spending attempts,
/// and is applied once the database answers, with nothing in the dead-letter queue.
async fn an_unreachable_database_makes_events_wait_not_park(backend: Backend) {
    let _turn = FAILPOINTS.lock().await;
    let wamid = format!("wamid.outage.{backend:?}");
    fail::cfg("store::unreachable", &format!("return({wamid})")).unwrap();
    let app = TestApp::start_with(backend, |c| {
        c.processing.max_attempts = 2;
        c.processing.backoff_base_ms = 1;
        c.processing.backoff_max_ms = 4;
        c.processing.dlq_poll_ms = 20;
    })
    .await;
    let retries = || app.metric("wahook_processing_retries_total ");
    let before = retries().await;
    post_ok(
        &app,
        text_at("4917630300001", &wamid, 1_767_225_600, "waits"),
    )
    .await;
    post_ok(
        &app,
        text_at(
            "4917630300001",
            "wamid.outage.next",
            1_767_225_601,
            "behind it",
        ),
    )
    .await;
    // Far more tries than max_attempts allows for a faulty event.
    let mut progress = app.running().progress();
    while retries().await - before < 10.0 {
        tokio::time::timeout(Duration::from_secs(30), progress.changed())
            .await
            .expect("the event keeps waiting")
            .unwrap();
    }
    assert_eq!(app.count("webhook_dlq").await, 0, "nothing parked");
    assert_eq!(
        app.count("messages").await,
        0,
        "the conversation waits in order"
    );
    fail::remove("store::unreachable");
    app.wait_processed(2).await;
    assert_eq!(app.count("messages").await, 2);
    assert_eq!(app.count("webhook_dlq").await, 0);
    app.stop().await;
}

/// The connection breaks after the database committed a group: the sender got 503, the row is
/// `pending`, and a redelivery is a duplicate. The writer looks its doubtful keys up once the
/// database answers, so the event is processed (once) without a restart, with or without more
/// traffic.
async fn an_inbox_commit_whose_answer_was_lost_is_processed_once(backend: Backend) {
    let _turn = FAILPOINTS.lock().await;
    let lost = format!("wamid.lost.reply.{backend:?}");
    fail::cfg("inbox::lost_reply", &format!("1*return({lost})")).unwrap();
    let app = TestApp::start(backend).await;
    let committed_doubts =
        || app.metric("wahook_inbox_doubtful_events_total{outcome=\"committed\"}");
    let before = committed_doubts().await;
    let sender = "4917655550000";
    let body = text_at(sender, &lost, 1_767_225_600, "did it land?");
    let res = app.post_meta(body.clone(), ACME_SECRET).await;
    assert_eq!(res.status(), 503, "the group's answer was lost: 503");
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM webhook_events").await,
        1,
        "yet the database committed it"
    );
    // No other traffic: the idle writer settles the doubt by itself.
    app.wait_processed(1).await;
    // Meta's redelivery of the same bytes is a duplicate and changes nothing.
    let res = app.post_meta(body, ACME_SECRET).await;
    assert_eq!(res.status(), 200);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["status"], "duplicate");
    post_ok(
        &app,
        text_at(sender, "wamid.after.lost", 1_767_225_601, "next"),
    )
    .await;
    app.wait_processed(2).await;
    fail::remove("inbox::lost_reply");
    assert_eq!(app.count("messages").await, 2);
    assert_eq!(
        app.scalar(&format!(
            "SELECT COUNT(*) FROM messages WHERE wamid = '{lost}'"
        ))
        .await,
        1
    );
    assert_eq!(
        app.scalar("SELECT message_count FROM conversations").await,
        2,
        "applied once"
    );
    assert_eq!(committed_doubts().await - before, 1.0);
}
