//! Follow-ups that know the window, against the provider and Graph fakes: a quiet customer
//! gets one written by the model while the window is open and the configured template once it
//! has closed; at most `follow_up_max` in a row; the customer's message starts the count
//! again; none in `human` state; a marketing template never after an opt-out; exactly once
//! across a crash before it was due and a crash between its send and its record.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wahook::{actors::followups, config::AgentConfig, store::users::Role};

use crate::{
    agent::{CUSTOMER, SYSTEM, now_ts, post, sends, text, user_contents, wait_outbound},
    api::{call, user_with_token},
    both_backends,
    common::{ACME_PNID, ACME_SECRET, Backend, TestApp},
    fakes::{self, Fake, is_send, is_template},
    templates::{WABA, catalog, wait_catalog},
};

both_backends!(
    a_quiet_customer_gets_one_follow_up_per_silence_written_by_the_model,
    after_the_window_the_follow_up_is_the_template_and_an_opt_out_stops_it,
    a_due_follow_up_is_sent_once_across_crashes,
);

const PROMPT: &str = "Gently ask whether the customer is still interested.";

async fn followup_app(
    backend: Backend,
    provider: &Fake,
    graph: &Fake,
    tune: impl FnOnce(&mut AgentConfig),
) -> TestApp {
    graph.catalog(catalog());
    let (p, g) = (provider.base.clone(), graph.base.clone());
    let app = TestApp::start_with(backend, move |c| {
        let mut a = AgentConfig::new(format!("{p}/v1"), "gpt-4o-mini");
        a.system_prompt = SYSTEM.into();
        a.reply_debounce_ms = 100;
        a.backoff_base_ms = 10;
        a.follow_up_after_ms = 1000;
        a.follow_up_max = 1;
        a.follow_up_prompt = PROMPT.into();
        a.follow_up_template = Some("reengage".into());
        a.follow_up_template_parameters = vec!["{name}".into(), "your order".into()];
        tune(&mut a);
        c.agents.insert("sales".into(), a);
        c.graph.base_url = g;
        c.accounts[0].agent = Some("sales".into());
        c.accounts[0].access_token = Some("graph-token".into());
        c.accounts[0].waba_id = Some(WABA.into());
    })
    .await;
    wait_catalog(&app, 5).await;
    app
}

/// Hands over whatever would be due an hour from now: 0 proves none is left to send.
async fn due_later(app: &TestApp) -> usize {
    followups::sweep_at(
        &app.running().ctx,
        chrono::Utc::now() + chrono::Duration::hours(1),
    )
    .await
    .unwrap()
}

fn follow_up_keys(rows: Vec<String>) -> Vec<String> {
    rows.into_iter()
        .filter(|k| k.starts_with("followup:"))
        .collect()
}

async fn a_quiet_customer_gets_one_follow_up_per_silence_written_by_the_model(backend: Backend) {
    let (provider, graph) = (fakes::provider().await, fakes::graph().await);
    let app = followup_app(backend, &provider, &graph, |_| {}).await;
    post(
        &app,
        text("wamid.f.1", "do you have blue bikes?", now_ts(), "f1"),
    )
    .await;
    wait_outbound(&app, "sent", 1).await;
    // Not due yet: nothing is handed over a moment after our answer.
    assert_eq!(followups::sweep(&app.running().ctx).await.unwrap(), 0);
    // A second later the model writes the follow-up from the conversation.
    graph.wait_for(2, is_send).await;
    wait_outbound(&app, "sent", 2).await;
    let calls = provider.requests();
    assert_eq!(calls.len(), 2);
    let asked = user_contents(&calls[1].1);
    assert_eq!(asked.first().unwrap(), "do you have blue bikes?");
    assert!(asked.last().unwrap().contains(PROMPT), "{asked:?}");
    let sent: Vec<Value> = graph
        .requests()
        .into_iter()
        .filter(|(p, b)| is_send(p, b))
        .map(|(_, b)| b)
        .collect();
    assert_eq!(sent[1]["text"]["body"], "Reply 2");
    let keys = follow_up_keys(
        app.strings("SELECT turn_key FROM outbound_messages ORDER BY id")
            .await,
    );
    assert_eq!(keys.len(), 1);
    assert!(keys[0].ends_with(":1"), "{keys:?}");
    // follow_up_max = 1: nothing more until she writes.
    assert_eq!(due_later(&app).await, 0);
    // She writes: answered, and a new silence gets its own follow-up (with the reply in its
    // context).
    post(&app, text("wamid.f.2", "maybe red then", now_ts(), "f2")).await;
    wait_outbound(&app, "sent", 4).await;
    assert_eq!(sends(&graph), 4);
    let keys = follow_up_keys(
        app.strings("SELECT turn_key FROM outbound_messages ORDER BY id")
            .await,
    );
    assert_eq!(keys.len(), 2);
    assert_ne!(
        keys[0].rsplit_once(':').map(|x| x.0),
        keys[1].rsplit_once(':').map(|x| x.0),
        "a new anchor: {keys:?}"
    );
    assert_eq!(due_later(&app).await, 0);
    // A person takes the conversation: no follow-up while it is theirs.
    app.exec("UPDATE conversations SET status = 'human'").await;
    app.exec("DELETE FROM outbound_messages WHERE turn_key LIKE 'followup:%'")
        .await;
    assert_eq!(due_later(&app).await, 0, "none in human state");
    let m = app.metrics_text().await;
    assert!(
        m.lines().any(|l| l.starts_with("wahook_follow_ups_total")
            && l.contains("stage=\"sent\"")
            && l.contains("kind=\"text\"")
            && !l.ends_with(" 0")),
        "counted"
    );
    app.stop().await;
}

async fn after_the_window_the_follow_up_is_the_template_and_an_opt_out_stops_it(backend: Backend) {
    let (provider, graph) = (fakes::provider().await, fakes::graph().await);
    let app = followup_app(backend, &provider, &graph, |a| a.follow_up_max = 2).await;
    // Ana wrote 30 hours ago; our last message (from another system) a moment ago.
    post(
        &app,
        text("wamid.w.1", "call me back", now_ts() - 30 * 3600, "w1"),
    )
    .await;
    wait_outbound(&app, "skipped", 1).await;
    let conv = app.scalar("SELECT id FROM conversations").await;
    let (_, op) = user_with_token(&app, "acme", "otto@acme.test", Role::Operator).await;
    let (status, _) = call(&app, Method::POST, "/api/v1/messages/outbound", Some(&op),
        Some(json!({"conversation_id": conv, "wamid": "wamid.other.1", "text": "We tried to call you."}))).await;
    assert_eq!(status, StatusCode::CREATED);
    // The window is closed: the follow-up is the configured template, filled in.
    graph.wait_for(1, is_template).await;
    let t: Vec<Value> = graph
        .requests()
        .into_iter()
        .filter(|(p, b)| is_template(p, b))
        .map(|(_, b)| b)
        .collect();
    assert_eq!(t[0]["to"], CUSTOMER);
    assert_eq!(t[0]["template"]["name"], "reengage");
    assert_eq!(
        t[0]["template"]["components"][0]["parameters"][0]["text"],
        "Ana"
    );
    assert!(
        provider.requests().is_empty(),
        "the model is not asked outside the window"
    );
    app.wait_for(
        "SELECT COUNT(*) FROM messages WHERE message_type = 'template'",
        1,
    )
    .await;
    // She stops marketing messages: the next follow-up (a marketing template) is refused
    // before it leaves, and recorded with why.
    let stop = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "user_preferences", "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "15551111111", "phone_number_id": ACME_PNID},
        "contacts": [{"profile": {"name": "Ana"}, "wa_id": CUSTOMER}],
        "user_preferences": [{"wa_id": CUSTOMER, "detail": "User requested to stop marketing messages", "category": "marketing_messages", "value": "stop", "timestamp": now_ts()}]}}]}]});
    assert_eq!(
        app.post_meta(stop.to_string(), ACME_SECRET).await.status(),
        200
    );
    app.wait_for(
        "SELECT COUNT(*) FROM outbound_messages WHERE turn_key LIKE 'followup:%' AND error = 'marketing_opted_out'",
        1,
    )
    .await;
    assert_eq!(
        graph
            .requests()
            .iter()
            .filter(|(p, b)| is_template(p, b))
            .count(),
        1
    );
    assert_eq!(due_later(&app).await, 0, "follow_up_max = 2 reached");
    app.stop().await;
}

async fn a_due_follow_up_is_sent_once_across_crashes(backend: Backend) {
    // Its own customer: the failpoint names the contact (global to the test process).
    const LEAD: &str = "4915100000777";
    fail::cfg(
        "outbox::after_send_to",
        &format!("return(followup:@{LEAD})"),
    )
    .unwrap();
    let (provider, graph) = (fakes::provider().await, fakes::graph().await);
    let app = followup_app(backend, &provider, &graph, |_| {}).await;
    let body = text("wamid.k.1", "how much is it?", now_ts(), "k1").replace(CUSTOMER, LEAD);
    post(&app, body).await;
    wait_outbound(&app, "sent", 1).await;
    // Crash before the follow-up is due: nothing of it is in memory anywhere.
    let mut app = app;
    drop(app.running.take());
    let (test_db, config) = app.stop().await;
    let app = TestApp::start_on(test_db, config).await;
    // Found due again after the restart, sent — and the process "dies" between the send and
    // its record.
    graph.wait_for(2, is_send).await;
    app.wait_for(
        "SELECT COUNT(*) FROM outbound_messages WHERE turn_key LIKE 'followup:%'",
        1,
    )
    .await;
    assert_eq!(
        app.strings("SELECT state FROM outbound_messages WHERE turn_key LIKE 'followup:%'")
            .await,
        vec!["pending_send".to_owned()]
    );
    let mut app = app;
    drop(app.running.take());
    let (test_db, config) = app.stop().await;
    let app = TestApp::start_on(test_db, config).await;
    // Its outcome is unknown: never sent again.
    assert_eq!(
        app.strings("SELECT state FROM outbound_messages WHERE turn_key LIKE 'followup:%'")
            .await,
        vec!["unknown".to_owned()]
    );
    assert_eq!(due_later(&app).await, 0);
    assert_eq!(sends(&graph), 2, "the reply and one follow-up");
    assert_eq!(provider.requests().len(), 2);
    app.stop().await;
}
