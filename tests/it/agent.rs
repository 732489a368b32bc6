//! The AI agent, against local servers speaking the chat-completions and Graph protocols:
//! one reply per burst, sent and logged exactly once, the 24-hour window, hand-off, retries,
//! the circuit breaker, truncation with the real tokenizer, and a stop mid-send.

use serde_json::Value;
use wahook::{
    agent::context::{self, Turn},
    config::AgentConfig,
};

use crate::{
    both_backends,
    common::{ACME_KAPSO, ACME_PNID, ACME_SECRET, Backend, TestApp, fixture},
    fakes::{self, Fake, Reply, is_send, is_typing},
};

both_backends!(
    a_reply_is_generated_sent_and_logged,
    a_burst_of_three_messages_gets_one_turn_and_one_send,
    a_long_context_is_cut_to_the_token_budget,
    rate_limits_and_server_errors_are_retried_to_one_reply,
    a_dead_provider_opens_the_breaker,
    redelivered_messages_are_answered_once,
    a_message_older_than_24_hours_gets_no_free_form_reply,
    a_conversation_with_a_person_gets_no_agent_reply,
    a_kapso_handoff_hands_the_conversation_to_a_person,
    a_stop_between_send_and_record_never_sends_twice,
    a_burst_cut_short_by_a_stop_is_answered_after_the_restart,
    only_a_persons_words_start_a_turn,
    a_real_conversation_keeps_one_answer_one_contact_and_one_conversation,
);

pub(crate) const CUSTOMER: &str = "4915112345678";
pub(crate) const SYSTEM: &str = "You are the assistant of Acme. Answer briefly.";

pub(crate) fn now_ts() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A Meta text message sent `ts` (Unix seconds); `tag` makes the body bytes distinct (a
/// redelivery in another envelope).
pub(crate) fn text(wamid: &str, body: &str, ts: i64, tag: &str) -> String {
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"{tag}","changes":[{{"value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15551111111","phone_number_id":"{ACME_PNID}"}},"contacts":[{{"profile":{{"name":"Ana"}},"wa_id":"{CUSTOMER}"}}],"messages":[{{"from":"{CUSTOMER}","id":"{wamid}","timestamp":"{ts}","type":"text","text":{{"body":"{body}"}}}}]}},"field":"messages"}}]}}]}}"#
    )
}

pub(crate) async fn agent_app(
    backend: Backend,
    provider: &Fake,
    graph: &Fake,
    tune: impl FnOnce(&mut AgentConfig),
) -> TestApp {
    agent_app_with(backend, provider, graph, tune, |_| {}).await
}

/// [`agent_app`], and more of the configuration changed after it.
pub(crate) async fn agent_app_with(
    backend: Backend,
    provider: &Fake,
    graph: &Fake,
    tune: impl FnOnce(&mut AgentConfig),
    more: impl FnOnce(&mut wahook::config::Config),
) -> TestApp {
    let (provider, graph) = (provider.base.clone(), graph.base.clone());
    TestApp::start_with(backend, move |c| {
        let mut a = AgentConfig::new(format!("{provider}/v1"), "gpt-4o-mini");
        a.system_prompt = SYSTEM.into();
        a.reply_debounce_ms = 150;
        a.reply_max_wait_ms = 5000;
        a.backoff_base_ms = 10;
        a.backoff_max_ms = 40;
        a.request_timeout_ms = 5000;
        tune(&mut a);
        c.agents.insert("sales".into(), a);
        c.graph.base_url = graph;
        c.accounts[0].agent = Some("sales".into());
        c.accounts[0].access_token = Some("graph-token".into());
        more(c);
    })
    .await
}

pub(crate) async fn post(app: &TestApp, body: String) {
    let res = app.post_meta(body, ACME_SECRET).await;
    assert_eq!(res.status(), 200);
}

pub(crate) async fn wait_outbound(app: &TestApp, state: &str, n: i64) {
    app.wait_for(
        &format!("SELECT COUNT(*) FROM outbound_messages WHERE state = '{state}'"),
        n,
    )
    .await;
}

/// Texts sent through the Graph API.
pub(crate) fn sends(graph: &Fake) -> usize {
    graph
        .requests()
        .iter()
        .filter(|(p, b)| is_send(p, b))
        .count()
}

async fn window_of(app: &TestApp) -> wahook::store::conversations::ServiceWindow {
    let conversation_id = app.scalar("SELECT id FROM conversations").await;
    wahook::store::conversations::service_window(&app.db, conversation_id, chrono::Utc::now())
        .await
        .unwrap()
}

pub(crate) fn user_contents(request: &Value) -> Vec<String> {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect()
}

async fn a_reply_is_generated_sent_and_logged(backend: Backend) {
    let (provider, graph) = (fakes::provider().await, fakes::graph().await);
    let app = agent_app(backend, &provider, &graph, |_| {}).await;
    post(&app, text("wamid.in.hello", "Hola, precio?", now_ts(), "1")).await;
    wait_outbound(&app, "sent", 1).await;

    let calls = provider.requests();
    assert_eq!(calls.len(), 1);
    let request = &calls[0].1;
    assert_eq!(request["model"], "gpt-4o-mini");
    assert_eq!(request["messages"][0]["role"], "system");
    assert_eq!(request["messages"][0]["content"], SYSTEM);
    assert_eq!(user_contents(request), vec!["Hola, precio?"]);

    // Marked read with the typing indicator for the inbound wamid, then one send.
    graph.wait_for(1, is_typing).await;
    let graph_calls = graph.requests();
    let typing: Vec<_> = graph_calls
        .iter()
        .filter(|(p, b)| is_typing(p, b))
        .collect();
    assert_eq!(typing[0].1["message_id"], "wamid.in.hello");
    assert_eq!(typing[0].1["status"], "read");
    let sends: Vec<_> = graph_calls.iter().filter(|(p, b)| is_send(p, b)).collect();
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].0, format!("/v23.0/{ACME_PNID}/messages"));
    assert_eq!(sends[0].1["to"], CUSTOMER);
    assert_eq!(sends[0].1["text"]["body"], "Reply 1");

    // Logged: the outbound row with its wamid, the message in the conversation, the lead
    // timestamp, the session's figures.
    assert_eq!(
        app.strings("SELECT wamid FROM outbound_messages WHERE state = 'sent'")
            .await,
        vec!["wamid.out.1".to_owned()]
    );
    app.wait_for(
        "SELECT COUNT(*) FROM messages WHERE direction = 'outbound' AND wamid = 'wamid.out.1' AND content = 'Reply 1'",
        1,
    )
    .await;
    assert!(
        app.db_time("SELECT last_contact_at FROM contacts")
            .await
            .is_some(),
        "last_contact_at moved"
    );
    let window = window_of(&app).await;
    assert!(window.service_window_open);
    assert!(
        window.service_window_closes_at.unwrap() > chrono::Utc::now() + chrono::Duration::hours(23)
    );
    assert_eq!(
        app.scalar("SELECT message_count FROM conversations").await,
        2
    );
    app.wait_for("SELECT COUNT(*) FROM agent_sessions WHERE turns = 1", 1)
        .await;
    assert_eq!(
        app.column("SELECT completion_tokens FROM agent_sessions")
            .await,
        vec![7]
    );
    // The later status webhooks find the reply.
    let status = format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15551111111","phone_number_id":"{ACME_PNID}"}},"statuses":[{{"id":"wamid.out.1","status":"delivered","timestamp":"{}","recipient_id":"{CUSTOMER}"}}]}}}}]}}]}}"#,
        now_ts()
    );
    post(&app, status).await;
    app.wait_for(
        "SELECT COUNT(*) FROM messages WHERE wamid = 'wamid.out.1' AND status = 'delivered'",
        1,
    )
    .await;
    app.stop().await;
}

async fn a_burst_of_three_messages_gets_one_turn_and_one_send(backend: Backend) {
    let (provider, graph) = (fakes::provider().await, fakes::graph().await);
    let app = agent_app(backend, &provider, &graph, |a| {
        a.reply_debounce_ms = 1500;
        a.reply_max_wait_ms = 10_000;
    })
    .await;
    let ts = now_ts();
    for (i, body) in ["hi", "I want", "two pizzas"].iter().enumerate() {
        post(
            &app,
            text(&format!("wamid.burst.{i}"), body, ts + i as i64, "b"),
        )
        .await;
    }
    wait_outbound(&app, "sent", 1).await;
    let calls = provider.requests();
    assert_eq!(calls.len(), 1, "one provider call for the burst");
    // The burst is one user turn, its messages joined in order.
    assert_eq!(user_contents(&calls[0].1), vec!["hi\nI want\ntwo pizzas"]);
    assert_eq!(sends(&graph), 1);
    app.stop().await;
}

async fn a_long_context_is_cut_to_the_token_budget(backend: Backend) {
    let (provider, graph) = (fakes::provider().await, fakes::graph().await);
    let (max_context, max_reply) = (1200, 200);
    let app = agent_app(backend, &provider, &graph, |a| {
        a.max_context_tokens = max_context;
        a.max_reply_tokens = max_reply;
    })
    .await;
    // The first turn creates the conversation; then its stored context gets 50 long turns.
    post(&app, text("wamid.ctx.0", "first", now_ts(), "c0")).await;
    wait_outbound(&app, "sent", 1).await;
    // The turn's figures come after its context is saved.
    app.wait_for("SELECT COUNT(*) FROM agent_sessions WHERE turns = 1", 1)
        .await;
    let long: Vec<Turn> = (0..50)
        .map(|i| {
            let words =
                format!("turn {i}: ") + &"the quick brown fox jumps over the lazy dog ".repeat(12);
            if i % 2 == 0 {
                Turn::user(words)
            } else {
                Turn::assistant(words)
            }
        })
        .collect();
    let json = serde_json::to_string(&long).unwrap().replace('\'', "''");
    app.exec(&format!("UPDATE agent_contexts SET messages = '{json}'"))
        .await;
    // A new actor life loads it (the idle stop is what a restart would do).
    let (test_db, config) = app.stop().await;
    let app = TestApp::start_on(test_db, config).await;
    post(
        &app,
        text("wamid.ctx.1", "and the newest question", now_ts(), "c1"),
    )
    .await;
    wait_outbound(&app, "sent", 2).await;

    let request = provider.requests()[1].1.clone();
    let messages = request["messages"].as_array().unwrap();
    assert_eq!(messages[0]["content"], SYSTEM, "the system prompt is kept");
    assert_eq!(
        messages.last().unwrap()["content"],
        "and the newest question",
        "the newest turn is kept"
    );
    let turns: Vec<Turn> = messages[1..]
        .iter()
        .map(|m| Turn {
            role: m["role"].as_str().unwrap().into(),
            content: m["content"].as_str().unwrap().into(),
            wamid: None,
            images: Vec::new(),
        })
        .collect();
    let bpe = context::tokenizer_for("gpt-4o-mini");
    let tokens = context::request_tokens(bpe, SYSTEM, &turns);
    assert!(tokens <= max_context - max_reply, "{tokens} tokens sent");
    assert!(
        turns.len() < 50,
        "old turns were dropped: {} kept",
        turns.len()
    );
    assert!(
        turns.len() > 5,
        "as many newest turns as fit: {} kept",
        turns.len()
    );
    // The kept turns are the newest, in order: the last long turn comes right before.
    assert!(turns[turns.len() - 2].content.starts_with("turn 49:"));
    app.stop().await;
}

async fn rate_limits_and_server_errors_are_retried_to_one_reply(backend: Backend) {
    let (provider, graph) = (fakes::provider().await, fakes::graph().await);
    provider.script([
        Reply::status(
            429,
            serde_json::json!({"error": {"message": "Rate limit reached", "type": "requests"}}),
        )
        .header("retry-after", "1"),
        Reply::status(500, serde_json::json!({"error": {"message": "boom"}})),
    ]);
    let app = agent_app(backend, &provider, &graph, |a| a.max_attempts = 4).await;
    post(&app, text("wamid.retry.1", "hello?", now_ts(), "r")).await;
    wait_outbound(&app, "sent", 1).await;
    assert_eq!(provider.requests().len(), 3, "429, 500, then success");
    assert_eq!(sends(&graph), 1);
    assert_eq!(app.count("outbound_messages").await, 1);
    app.stop().await;
}

async fn a_dead_provider_opens_the_breaker(backend: Backend) {
    let (provider, graph) = (fakes::provider().await, fakes::graph().await);
    provider.always(Reply::status(
        503,
        serde_json::json!({"error": {"message": "down"}}),
    ));
    let app = agent_app(backend, &provider, &graph, |a| {
        a.max_attempts = 1;
        a.breaker_failures = 2;
        a.breaker_cooldown_ms = 3_600_000;
    })
    .await;
    for i in 0..3 {
        post(
            &app,
            text(
                &format!("wamid.dead.{i}"),
                "anyone?",
                now_ts(),
                &format!("d{i}"),
            ),
        )
        .await;
        wait_outbound(&app, "failed", i + 1).await;
    }
    assert_eq!(
        provider.requests().len(),
        2,
        "the third turn did not call it"
    );
    let errors = app
        .strings("SELECT error FROM outbound_messages ORDER BY id")
        .await;
    assert!(errors[0].starts_with("provider_failed"), "{errors:?}");
    assert!(errors[2].starts_with("breaker_open"), "{errors:?}");
    app.wait_for("SELECT COUNT(*) FROM agent_sessions WHERE failures = 3", 1)
        .await;
    assert_eq!(
        app.column("SELECT breaker_trips FROM agent_sessions").await,
        vec![1]
    );
    // The operator's agent view sums the same figures (on both backends' SUM types).
    let ws = app
        .scalar("SELECT id FROM workspaces WHERE name = 'acme'")
        .await;
    let stats = wahook::store::stats::agents(&app.db, ws).await.unwrap();
    assert_eq!(stats["agents"]["sales"]["failures"], 3, "{stats}");
    assert_eq!(stats["agents"]["sales"]["breaker_trips"], 1, "{stats}");
    assert_eq!(stats["agents"]["sales"]["turns"]["failed"], 3, "{stats}");
    assert_eq!(sends(&graph), 0);
    app.stop().await;
}

async fn redelivered_messages_are_answered_once(backend: Backend) {
    let (provider, graph) = (fakes::provider().await, fakes::graph().await);
    let app = agent_app(backend, &provider, &graph, |_| {}).await;
    let ts = now_ts();
    // The same payload three times (Meta redelivering), and the same message in two other
    // envelopes (a redelivery batched differently).
    for _ in 0..3 {
        post(&app, text("wamid.again", "same question", ts, "x")).await;
    }
    wait_outbound(&app, "sent", 1).await;
    for tag in ["y", "z"] {
        post(&app, text("wamid.again", "same question", ts, tag)).await;
    }
    app.wait_processed(3).await;
    // Replayed from the inbox as after a crash: reset to pending and restart.
    app.exec("UPDATE webhook_events SET status = 'pending'")
        .await;
    let (test_db, config) = app.stop().await;
    let app = TestApp::start_on(test_db, config).await;
    app.wait_processed(3).await;
    // A later message is answered: the conversation still works, and proves the turn queue
    // drained (everything before it was decided).
    post(&app, text("wamid.later", "another one", now_ts(), "w")).await;
    wait_outbound(&app, "sent", 2).await;
    assert_eq!(provider.requests().len(), 2);
    assert_eq!(sends(&graph), 2);
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM messages WHERE wamid = 'wamid.again'")
            .await,
        1
    );
    app.stop().await;
}

async fn a_message_older_than_24_hours_gets_no_free_form_reply(backend: Backend) {
    let (provider, graph) = (fakes::provider().await, fakes::graph().await);
    let app = agent_app(backend, &provider, &graph, |_| {}).await;
    post(
        &app,
        text(
            "wamid.old",
            "yesterday's question",
            now_ts() - 25 * 3600,
            "o",
        ),
    )
    .await;
    wait_outbound(&app, "skipped", 1).await;
    let window = window_of(&app).await;
    assert!(!window.service_window_open);
    let closes = window
        .service_window_closes_at
        .expect("a last inbound message");
    assert!(closes < chrono::Utc::now() - chrono::Duration::minutes(59));
    assert_eq!(
        app.strings("SELECT error FROM outbound_messages").await,
        vec!["service_window_closed".to_owned()]
    );
    assert!(provider.requests().is_empty());
    assert_eq!(sends(&graph), 0);
    app.wait_for("SELECT COUNT(*) FROM agent_sessions WHERE skips = 1", 1)
        .await;
    app.stop().await;
}

async fn a_conversation_with_a_person_gets_no_agent_reply(backend: Backend) {
    let (provider, graph) = (fakes::provider().await, fakes::graph().await);
    let app = agent_app(backend, &provider, &graph, |_| {}).await;
    post(&app, text("wamid.h.1", "hello", now_ts(), "h1")).await;
    wait_outbound(&app, "sent", 1).await;
    app.exec("UPDATE conversations SET status = 'human'").await;
    post(&app, text("wamid.h.2", "I want a person", now_ts(), "h2")).await;
    wait_outbound(&app, "skipped", 1).await;
    assert_eq!(
        app.strings("SELECT error FROM outbound_messages WHERE state = 'skipped'")
            .await,
        vec!["handed_to_person".to_owned()]
    );
    assert_eq!(provider.requests().len(), 1);
    assert_eq!(
        app.strings("SELECT status FROM conversations").await,
        vec!["human".to_owned()],
        "an inbound message does not take it back from the person"
    );
    // Given back to the agent: it answers again.
    app.exec("UPDATE conversations SET status = 'open'").await;
    post(&app, text("wamid.h.3", "thanks, bot", now_ts(), "h3")).await;
    wait_outbound(&app, "sent", 2).await;
    assert_eq!(provider.requests().len(), 2);
    app.stop().await;
}

async fn a_stop_between_send_and_record_never_sends_twice(backend: Backend) {
    // The same marker for both backends' runs: the failpoint is global to the process.
    const MARKER: &str = "wamid.crash.mid.send";
    fail::cfg("agent::after_send", &format!("return({MARKER})")).unwrap();
    let (provider, graph) = (fakes::provider().await, fakes::graph().await);
    let app = agent_app(backend, &provider, &graph, |_| {}).await;
    let ts = now_ts();
    post(&app, text(MARKER, "will you answer?", ts, "k1")).await;
    graph.wait_for(1, is_send).await;
    app.wait_processed(1).await;
    assert_eq!(
        app.strings("SELECT state FROM outbound_messages").await,
        vec!["pending_send".to_owned()],
        "sent, but the outcome was never recorded"
    );
    // The process stops and starts again; Meta redelivers the message, and the inbox is
    // replayed as after a crash.
    let (test_db, config) = app.stop().await;
    let app = TestApp::start_on(test_db, config).await;
    assert_eq!(
        app.strings("SELECT state FROM outbound_messages").await,
        vec!["unknown".to_owned()]
    );
    post(&app, text(MARKER, "will you answer?", ts, "k2")).await;
    app.exec("UPDATE webhook_events SET status = 'pending'")
        .await;
    let (test_db, config) = app.stop().await;
    let app = TestApp::start_on(test_db, config).await;
    app.wait_processed(2).await;
    // A later message is answered normally, after everything before it was decided.
    post(
        &app,
        text("wamid.after.crash", "hello again", now_ts(), "k3"),
    )
    .await;
    wait_outbound(&app, "sent", 1).await;
    let sends: Vec<_> = graph
        .requests()
        .into_iter()
        .filter(|(p, b)| is_send(p, b))
        .collect();
    assert_eq!(
        sends.len(),
        2,
        "the interrupted burst was sent once, never again"
    );
    assert_eq!(provider.requests().len(), 2);
    app.stop().await;
}

async fn a_kapso_handoff_hands_the_conversation_to_a_person(backend: Backend) {
    let test_db = crate::common::TestDb::new(backend).await;
    let mut config = crate::common::test_config(&test_db);
    config
        .kapso_projects
        .push(wahook::config::KapsoProjectConfig {
            workspace: "acme".into(),
            project_id: "proj-acme".into(),
            secret: Some("acme-project-secret".into()),
            secret_env: None,
        });
    let app = TestApp::start_on(test_db, config).await;
    let handoff = fixture("kapso/workflow_handoff.json");
    // Before Kapso's conversation is known: 200, kept, and waiting in the DLQ.
    let res = app
        .post_kapso(
            handoff.clone(),
            "acme-project-secret",
            "workflow.execution.handoff",
            "h-early",
            false,
        )
        .await;
    assert_eq!(res.status(), 200);
    app.wait_for("SELECT COUNT(*) FROM webhook_dlq", 1).await;
    let errors = app.strings("SELECT error FROM webhook_dlq").await;
    assert!(errors[0].contains("not known yet"), "{errors:?}");
    // Another project's secret is refused.
    let res = app
        .post_kapso(
            handoff.clone(),
            ACME_KAPSO,
            "workflow.execution.handoff",
            "h-bad",
            false,
        )
        .await;
    assert_eq!(res.status(), 403);

    // A message event stores Kapso's conversation id; then the hand-off finds it.
    let res = app
        .post_kapso(
            fixture("kapso/message_received.json"),
            ACME_KAPSO,
            "whatsapp.message.received",
            "m-1",
            false,
        )
        .await;
    assert_eq!(res.status(), 200);
    app.wait_for(
        "SELECT COUNT(*) FROM conversations WHERE external_id = '7b0e4c7a-3f6e-4b8e-9d5a-2f1c0e9a8b71'",
        1,
    )
    .await;
    let res = app
        .post_kapso(
            handoff,
            "acme-project-secret",
            "workflow.execution.handoff",
            "h-1",
            false,
        )
        .await;
    assert_eq!(res.status(), 200);
    app.wait_for(
        "SELECT COUNT(*) FROM conversations WHERE status = 'human'",
        1,
    )
    .await;
    assert_eq!(
        app.strings("SELECT reason FROM conversation_state_transitions WHERE to_state = 'human'")
            .await,
        vec!["handed to a person".to_owned()]
    );
    app.stop().await;
}

async fn a_burst_cut_short_by_a_stop_is_answered_after_the_restart(backend: Backend) {
    let (provider, graph) = (fakes::provider().await, fakes::graph().await);
    // A long quiet time: the process stops while the burst waits for its turn.
    let app = agent_app(backend, &provider, &graph, |a| {
        a.reply_debounce_ms = 600_000;
        a.reply_max_wait_ms = 600_000;
    })
    .await;
    let ts = now_ts();
    post(&app, text("wamid.cut.1", "are you open", ts, "c1")).await;
    post(&app, text("wamid.cut.2", "on sunday?", ts + 1, "c2")).await;
    app.wait_processed(2).await;
    let since = chrono::Utc::now() - chrono::Duration::hours(24);
    let left = wahook::store::outbound::unanswered(&app.db, since, chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(left.len(), 2, "both messages wait for a turn");
    let (test_db, mut config) = app.stop().await;
    assert!(provider.requests().is_empty(), "no turn before the stop");
    config.agents.get_mut("sales").unwrap().reply_debounce_ms = 100;
    let app = TestApp::start_on(test_db, config).await;
    wait_outbound(&app, "sent", 1).await;
    let calls = provider.requests();
    assert_eq!(calls.len(), 1);
    assert_eq!(user_contents(&calls[0].1), vec!["are you open\non sunday?"]);
    assert_eq!(sends(&graph), 1);
    // Answered messages are not answered again at the next start: the recovery finds none
    // (asserted on its query: a resumed burst would otherwise merge, unseen, with the next one).
    app.wait_for("SELECT COUNT(*) FROM agent_sessions WHERE turns = 1", 1)
        .await;
    let since = chrono::Utc::now() - chrono::Duration::hours(24);
    let left = wahook::store::outbound::unanswered(&app.db, since, chrono::Utc::now())
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    let (test_db, config) = app.stop().await;
    let app = TestApp::start_on(test_db, config).await;
    post(&app, text("wamid.cut.3", "thanks", now_ts(), "c3")).await;
    wait_outbound(&app, "sent", 2).await;
    assert_eq!(provider.requests().len(), 2);
    assert_eq!(
        user_contents(&provider.requests()[1].1).last().unwrap(),
        "thanks"
    );
    app.stop().await;
}

/// A Meta body carrying one message object from the customer (any type).
fn message(msg: Value) -> String {
    serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15551111111", "phone_number_id": ACME_PNID},
        "contacts": [{"profile": {"name": "Ana"}, "wa_id": CUSTOMER}],
        "messages": [msg]}}]}]})
    .to_string()
}

/// The thing users fear most: a bot that answers when nobody spoke to it. A question gets one
/// answer; a reaction to it, an edit, a revoke, a system notice, an unsupported type and a
/// group message start no turn (and show no typing indicator); the next question is answered,
/// the reaction and the edit shown to the model as context, the revoked text gone.
async fn only_a_persons_words_start_a_turn(backend: Backend) {
    let (provider, graph) = (fakes::provider().await, fakes::graph().await);
    let app = agent_app(backend, &provider, &graph, |_| {}).await;
    let ts = now_ts().to_string();
    post(
        &app,
        text("wamid.q.1", "Do you ship to Spain?", now_ts(), "1"),
    )
    .await;
    wait_outbound(&app, "sent", 1).await;
    let typing_before = graph
        .requests()
        .iter()
        .filter(|(p, b)| is_typing(p, b))
        .count();
    let from = |id: &str, ty: &str, body: Value| {
        let mut m = serde_json::json!({"from": CUSTOMER, "id": id, "timestamp": ts, "type": ty});
        m[ty] = body;
        m
    };
    let silent = [
        from(
            "wamid.r.1",
            "reaction",
            serde_json::json!({"message_id": "wamid.out.1", "emoji": "👍"}),
        ),
        from(
            "wamid.e.1",
            "edit",
            serde_json::json!({"original_message_id": "wamid.q.1",
            "message": {"type": "text", "text": {"body": "Do you ship to Portugal?"}}}),
        ),
        from(
            "wamid.v.1",
            "revoke",
            serde_json::json!({"original_message_id": "wamid.q.1"}),
        ),
        from(
            "wamid.s.1",
            "system",
            serde_json::json!({"body": "Ana's security code changed", "identity": "b1c2", "type": "customer_identity_changed"}),
        ),
        from(
            "wamid.u.1",
            "unsupported",
            serde_json::json!({"type": "poll"}),
        ),
        {
            let mut m = from(
                "wamid.g.1",
                "text",
                serde_json::json!({"body": "hello group"}),
            );
            m["group_id"] = serde_json::json!("120363000000000001");
            m
        },
    ];
    for m in silent {
        post(&app, message(m)).await;
    }
    app.wait_processed(7).await;
    post(&app, text("wamid.q.2", "And to France?", now_ts(), "2")).await;
    wait_outbound(&app, "sent", 2).await;
    let calls = provider.requests();
    assert_eq!(calls.len(), 2, "one turn per question, none for the rest");
    let last = user_contents(&calls[1].1);
    // The reaction and the edit reach the model as context before the question, never as a
    // question; the revoked question no longer says anything it said.
    // One user turn for the notes and the burst (strict chat templates want the roles to
    // alternate).
    assert_eq!(
        last,
        [
            "[deleted a message]",
            "[reacted 👍 to: Reply 1]\n[edited a message]\n[deleted a message]\nAnd to France?",
        ],
        "{last:?}"
    );
    for word in ["Spain", "Portugal", "security code", "hello group", "poll"] {
        assert!(
            !last.iter().any(|c| c.contains(word)),
            "{word} reached the model: {last:?}"
        );
    }
    assert_eq!(sends(&graph), 2);
    // The typing indicator came for the second question only.
    graph.wait_for(typing_before + 1, is_typing).await;
    let typing: Vec<_> = graph
        .requests()
        .into_iter()
        .filter(|(p, b)| is_typing(p, b))
        .collect();
    assert_eq!(typing.len(), typing_before + 1);
    assert_eq!(typing.last().unwrap().1["message_id"], "wamid.q.2");
    app.stop().await;
}

/// A Meta body carrying these message objects, with these contacts.
pub(crate) fn messages_with(contacts: Value, msgs: Vec<Value>) -> String {
    serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15551111111", "phone_number_id": ACME_PNID},
        "contacts": contacts,
        "messages": msgs}}]}]})
    .to_string()
}

/// Issue 25's "must show": a customer who asks, reacts 👍, edits their question and deletes
/// another message gets exactly one answer, and the conversation shows the edited question, the
/// reply with the reaction and the deleted message, counting only the three; a group is one
/// conversation of its own and gets no reply; a number change and a message naming only the
/// user id keep one contact and one conversation.
async fn a_real_conversation_keeps_one_answer_one_contact_and_one_conversation(backend: Backend) {
    use reqwest::Method;
    use serde_json::json;

    use crate::api::{call, user_with_token};
    let (provider, graph) = (fakes::provider().await, fakes::graph().await);
    let app = agent_app(backend, &provider, &graph, |_| {}).await;
    let ts = now_ts().to_string();
    let from = |sender: &str, id: &str, ty: &str, body: Value| {
        let mut m = json!({"from": sender, "id": id, "timestamp": ts, "type": ty});
        m[ty] = body;
        m
    };
    let ana = json!([{"profile": {"name": "Ana"}, "wa_id": CUSTOMER}]);
    // A question and another message: one burst, one answer (`wamid.out.1`).
    post(
        &app,
        messages_with(
            ana.clone(),
            vec![
                from(
                    CUSTOMER,
                    "wamid.q.1",
                    "text",
                    json!({"body": "Do you ship to Spain?"}),
                ),
                from(
                    CUSTOMER,
                    "wamid.c.1",
                    "text",
                    json!({"body": "my card is 4242 4242 4242 4242"}),
                ),
            ],
        ),
    )
    .await;
    wait_outbound(&app, "sent", 1).await;
    // 👍 to the answer, the question edited, the card number deleted.
    post(
        &app,
        messages_with(
            ana.clone(),
            vec![
                from(
                    CUSTOMER,
                    "wamid.r.1",
                    "reaction",
                    json!({"message_id": "wamid.out.1", "emoji": "👍"}),
                ),
                from(
                    CUSTOMER,
                    "wamid.e.1",
                    "edit",
                    json!({"original_message_id": "wamid.q.1",
                    "message": {"type": "text", "text": {"body": "Do you ship to Portugal?"}}}),
                ),
                from(
                    CUSTOMER,
                    "wamid.d.1",
                    "revoke",
                    json!({"original_message_id": "wamid.c.1"}),
                ),
            ],
        ),
    )
    .await;
    // The group: the same person writes in a group of the business.
    let mut in_group = from(CUSTOMER, "wamid.g.1", "text", json!({"body": "hello team"}));
    in_group["group_id"] = json!("120363000000000042");
    post(&app, messages_with(ana.clone(), vec![in_group])).await;
    app.wait_processed(3).await;
    assert_eq!(provider.requests().len(), 1, "one answer, none to the rest");
    assert_eq!(sends(&graph), 1);

    let (_, token) = user_with_token(
        &app,
        "acme",
        "viewer@acme.test",
        wahook::store::users::Role::Viewer,
    )
    .await;
    let get = |path: String| {
        let (app, token) = (&app, token.clone());
        async move {
            let (status, body) = call(app, Method::GET, &path, Some(&token), None).await;
            assert_eq!(status, 200, "{path}: {body}");
            body
        }
    };
    let private = app
        .scalar(&format!(
            "SELECT v.id FROM conversations v JOIN contacts c ON c.id = v.contact_id WHERE c.phone = '{CUSTOMER}'"
        ))
        .await;
    let conv = get(format!("/api/v1/conversations/{private}")).await;
    let msgs = conv["messages"].as_array().unwrap();
    let by = |w: &str| msgs.iter().find(|m| m["wamid"] == w).unwrap().clone();
    assert_eq!(msgs.len(), 3, "{msgs:?}");
    assert_eq!(by("wamid.q.1")["content"], "Do you ship to Portugal?");
    assert_eq!(by("wamid.q.1")["edited"], true);
    assert_eq!(by("wamid.out.1")["reactions"][0]["emoji"], "👍");
    assert_eq!(by("wamid.out.1")["reactions"][0]["side"], "inbound");
    assert_eq!(by("wamid.c.1")["revoked"], true);
    assert_eq!(by("wamid.c.1")["content"], Value::Null);
    assert_eq!(conv["conversation"]["message_count"], 3, "{conv}");

    let group = app
        .scalar("SELECT v.id FROM conversations v JOIN contacts c ON c.id = v.contact_id WHERE c.phone = 'group:120363000000000042'")
        .await;
    let g = get(format!("/api/v1/conversations/{group}")).await;
    assert_eq!(g["conversation"]["group_id"], "120363000000000042");
    assert_eq!(g["messages"][0]["sender"]["phone"], CUSTOMER);
    assert_eq!(g["messages"][0]["sender"]["name"], "Ana");
    assert_eq!(app.scalar("SELECT COUNT(*) FROM conversations").await, 2);

    // Ana changes her number (a system notice, no contacts), writes from the new one with her
    // user id, then with the user id alone: one contact, one conversation, two more answers.
    const NEW: &str = "4915100000999";
    post(
        &app,
        messages_with(
            json!([]),
            vec![from(
                CUSTOMER,
                "wamid.s.1",
                "system",
                json!({"body": format!("User Ana changed from {CUSTOMER} to {NEW}"), "wa_id": NEW, "type": "user_changed_number"}),
            )],
        ),
    )
    .await;
    let mut new_number = from(
        NEW,
        "wamid.n.1",
        "text",
        json!({"body": "I have a new phone"}),
    );
    new_number["from_user_id"] = json!("US.777");
    post(
        &app,
        messages_with(
            json!([{"profile": {"name": "Ana"}, "wa_id": NEW, "user_id": "US.777"}]),
            vec![new_number],
        ),
    )
    .await;
    wait_outbound(&app, "sent", 2).await;
    let mut by_id = from("", "wamid.b.1", "text", json!({"body": "still me"}));
    by_id["from_user_id"] = json!("US.777");
    post(
        &app,
        messages_with(
            json!([{"profile": {"name": "Ana"}, "wa_id": "", "user_id": "US.777"}]),
            vec![by_id],
        ),
    )
    .await;
    wait_outbound(&app, "sent", 3).await;
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM contacts WHERE phone NOT LIKE 'group:%'")
            .await,
        1,
        "one contact for Ana"
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT COUNT(*) FROM contacts WHERE phone = '{NEW}' AND user_id = 'US.777'"
        ))
        .await,
        1
    );
    assert_eq!(app.scalar("SELECT COUNT(*) FROM conversations").await, 2);
    let conv = get(format!("/api/v1/conversations/{private}")).await;
    // The three, the notice, the new number's message, our answer to it, the last message
    // and its answer.
    assert_eq!(conv["conversation"]["message_count"], 8, "{conv}");
    assert_eq!(conv["conversation"]["contact"], NEW);
    let contact_id = conv["conversation"]["contact_id"].as_i64().unwrap();
    let history = get(format!("/api/v1/contacts/{contact_id}/identity")).await;
    assert_eq!(
        history["items"][0]["kind"], "user_changed_number",
        "{history}"
    );
    assert_eq!(history["items"][0]["from"], CUSTOMER);
    assert_eq!(history["items"][0]["to"], NEW);
    // The answers went to the new number; nobody was answered in the group.
    let to: Vec<Value> = graph
        .requests()
        .into_iter()
        .filter(|(p, b)| is_send(p, b))
        .map(|(_, b)| b["to"].clone())
        .collect();
    assert_eq!(to, [json!(CUSTOMER), json!(NEW), json!(NEW)]);
    app.stop().await;
}
