//! The takeover loop between people and the agent: a reply from the business phone (an
//! `smb_message_echoes` echo) or from an operator (the API the console uses) silences the agent
//! in that conversation for `human_silence_ms` — sliding, each human reply starts it again —
//! and the agent answers the next customer message after it by itself; a hand-off keyword gives
//! the conversation to a person. Every silenced turn is recorded with its reason, and every
//! message says who wrote it.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wahook::store::users::Role;

use crate::{
    agent::{CUSTOMER, agent_app, now_ts, post, text, wait_outbound},
    api::{call, user_with_token},
    both_backends,
    common::{ACME_PNID, Backend},
    fakes,
};

both_backends!(the_agent_yields_to_a_person_and_comes_back_by_itself);

/// What the business wrote in the WhatsApp Business app at `ts`, as Meta echoes it.
fn echo(wamid: &str, body: &str, ts: i64) -> String {
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"{wamid}","changes":[{{"field":"smb_message_echoes","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15551111111","phone_number_id":"{ACME_PNID}"}},"message_echoes":[{{"from":"15551111111","to":"{CUSTOMER}","id":"{wamid}","timestamp":"{ts}","type":"text","text":{{"body":"{body}"}}}}]}}}}]}}]}}"#
    )
}

async fn skipped(app: &crate::common::TestApp) -> Vec<String> {
    app.strings("SELECT error FROM outbound_messages WHERE state = 'skipped' ORDER BY id")
        .await
}

async fn the_agent_yields_to_a_person_and_comes_back_by_itself(backend: Backend) {
    let (provider, graph) = (fakes::provider().await, fakes::graph().await);
    let app = agent_app(backend, &provider, &graph, |a| {
        a.human_silence_ms = 60_000;
        a.handoff_keywords = vec!["human".into(), "talk to a person".into()];
    })
    .await;
    // Ten minutes of a conversation, in the customer's and the business's own times.
    let t0 = now_ts() - 600;
    post(&app, text("wamid.t.1", "hello", t0, "t1")).await;
    wait_outbound(&app, "sent", 1).await;

    // The business answers from its phone: the next customer message gets no agent reply.
    post(&app, echo("wamid.echo.1", "I will take this one", t0 + 10)).await;
    app.wait_for(
        "SELECT COUNT(*) FROM messages WHERE author = 'business_app'",
        1,
    )
    .await;
    post(&app, text("wamid.t.2", "great, thanks", t0 + 30, "t2")).await;
    wait_outbound(&app, "skipped", 1).await;
    // It answers again 50 s after a second echo: still quiet (the silence slides; 90 s
    // after the first it would have answered).
    post(&app, echo("wamid.echo.2", "one more thing", t0 + 50)).await;
    app.wait_for(
        "SELECT COUNT(*) FROM messages WHERE author = 'business_app'",
        2,
    )
    .await;
    post(&app, text("wamid.t.3", "ok", t0 + 100, "t3")).await;
    wait_outbound(&app, "skipped", 2).await;
    // 150 s after the last human reply: the agent is back by itself.
    post(
        &app,
        text("wamid.t.4", "are you still there?", t0 + 200, "t4"),
    )
    .await;
    wait_outbound(&app, "sent", 2).await;
    assert_eq!(provider.requests().len(), 2, "two turns reached the model");
    // Back, the agent knows what the person told the customer meanwhile, in order (turns of
    // one role in a row reach the model as one).
    let asked: Vec<(String, String)> = provider.requests()[1].1["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let said = |role: &str, content: &str| (role.to_owned(), content.to_owned());
    assert_eq!(
        asked[1..],
        [
            said("user", "hello"),
            said("assistant", "Reply 1\nI will take this one"),
            said("user", "great, thanks"),
            said("assistant", "one more thing"),
            said("user", "ok\nare you still there?"),
        ],
        "{asked:?}"
    );

    // An operator replies from the console (the API it uses): quiet again.
    let conversation = app.scalar("SELECT id FROM conversations").await;
    let (op_id, op) = user_with_token(&app, "acme", "otto@acme.test", Role::Operator).await;
    let (status, body) = call(
        &app,
        Method::POST,
        "/api/v1/messages",
        Some(&op),
        Some(
            json!({"conversation_id": conversation, "phone_number_id": ACME_PNID,
            "text": "Hi Ana, Otto here", "idempotency_key": "otto-1"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    post(&app, text("wamid.t.5", "hi Otto", now_ts(), "t5")).await;
    wait_outbound(&app, "skipped", 3).await;

    // Asking for a person hands the conversation over; then nothing the customer says is
    // answered by the agent, and each turn says why.
    post(
        &app,
        text("wamid.t.6", "can I talk to a person please", now_ts(), "t6"),
    )
    .await;
    wait_outbound(&app, "skipped", 4).await;
    assert_eq!(
        app.strings("SELECT status FROM conversations").await,
        vec!["human".to_owned()]
    );
    post(&app, text("wamid.t.7", "hello?", now_ts(), "t7")).await;
    wait_outbound(&app, "skipped", 5).await;
    assert_eq!(
        skipped(&app).await,
        [
            "human_replied",
            "human_replied",
            "human_replied",
            "handoff_keyword",
            "handed_to_person"
        ]
    );
    assert_eq!(
        provider.requests().len(),
        2,
        "no other turn reached the model"
    );

    // Who said what.
    let (status, detail) = call(
        &app,
        Method::GET,
        &format!("/api/v1/conversations/{conversation}"),
        Some(&op),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let authors: Vec<(String, String)> = detail["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["content"].as_str().unwrap_or_default().to_owned(),
                m["author"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let by = |content: &str| {
        authors
            .iter()
            .find(|(c, _)| c == content)
            .map(|(_, a)| a.as_str())
            .unwrap_or_else(|| panic!("{content:?} not in {authors:?}"))
    };
    assert_eq!(by("hello"), "customer");
    assert_eq!(by("Reply 1"), "agent");
    assert_eq!(by("I will take this one"), "business_app");
    assert_eq!(by("Hi Ana, Otto here"), "operator");
    let otto: &Value = detail["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["author"] == "operator")
        .unwrap();
    assert_eq!(otto["author_user_id"], op_id);
    assert!(otto["author_name"].is_string(), "{otto}");
    app.stop().await;
}
