//! The agent against model servers' real behaviours, through the protocol fake: a request
//! error (a context too long, a chat-template error) stays in its conversation and never opens
//! the shared breaker; a context too long is cut and asked again; what the model says is made
//! safe before it is recorded or sent; a reply cut at the token limit ends at a sentence; the
//! request speaks the agent's dialect; a hung server is given up after the turn's budget; a
//! customer's NUL is stored on both backends. `llama.rs` does the same against llama.cpp's own
//! server.

use serde_json::{Value, json};

use crate::{
    agent::{SYSTEM, agent_app, messages_with, now_ts, post, sends, user_contents, wait_outbound},
    both_backends,
    common::{ACME_SECRET, Backend, TestApp},
    fakes::{self, Reply, is_send},
};

both_backends!(
    a_request_error_stays_in_its_conversation,
    what_the_model_says_is_made_safe_before_it_is_sent,
    a_template_error_is_not_retried_and_blocks_no_one,
    the_request_speaks_the_agents_dialect,
    a_hung_server_is_given_up_after_the_turn_budget,
    a_customers_nul_is_stored,
);

const OTHER: &str = "4915199990001";

/// A Meta text from `from`.
fn text_from(from: &str, wamid: &str, body: &str) -> String {
    messages_with(
        json!([{"profile": {"name": "Kim"}, "wa_id": from}]),
        vec![
            json!({"from": from, "id": wamid, "timestamp": now_ts().to_string(), "type": "text", "text": {"body": body}}),
        ],
    )
}

fn completion(content: &str, finish_reason: &str) -> Reply {
    Reply::status(
        200,
        json!({"id": "c", "object": "chat.completion",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
               "usage": {"prompt_tokens": 50, "completion_tokens": 9, "total_tokens": 59}}),
    )
}

fn sent_texts(graph: &fakes::Fake) -> Vec<String> {
    graph
        .requests()
        .into_iter()
        .filter(|(p, b)| is_send(p, b))
        .map(|(_, b)| b["text"]["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A conversation too long for the server: the 400 is cut to fit and asked again within the
/// turn; when even that is refused the turn fails with the server's code and status, the
/// breaker stays closed (one failure would open it), and another customer on the same agent
/// is answered.
async fn a_request_error_stays_in_its_conversation(backend: Backend) {
    let (provider, graph) = (fakes::provider().await, fakes::graph().await);
    let overflow = || {
        Reply::status(
            400,
            json!({"error": {"message": "Requested tokens (5200) exceed context window of 2048",
                             "type": "invalid_request_error", "code": "context_length_exceeded"}}),
        )
    };
    // Turn 1: refused, cut, answered. Turn 2: refused twice.
    provider.script([
        overflow(),
        completion("Fine.", "stop"),
        overflow(),
        overflow(),
    ]);
    let app = agent_app(backend, &provider, &graph, |a| {
        a.breaker_failures = 1;
        a.breaker_cooldown_ms = 3_600_000;
    })
    .await;
    let long = "word ".repeat(400);
    post(
        &app,
        text_from(crate::agent::CUSTOMER, "wamid.long.1", &long),
    )
    .await;
    wait_outbound(&app, "sent", 1).await;
    let calls = provider.requests();
    assert_eq!(calls.len(), 2, "refused once, asked again within the turn");
    post(
        &app,
        text_from(crate::agent::CUSTOMER, "wamid.long.2", &long),
    )
    .await;
    wait_outbound(&app, "failed", 1).await;
    assert_eq!(
        app.strings("SELECT error_code FROM outbound_messages WHERE state = 'failed'")
            .await,
        ["context_length_exceeded"]
    );
    assert_eq!(
        app.column("SELECT provider_status FROM outbound_messages WHERE state = 'failed'")
            .await,
        [400]
    );
    // Someone else on the same agent: answered (the breaker never opened).
    post(&app, text_from(OTHER, "wamid.other.1", "hello")).await;
    wait_outbound(&app, "sent", 2).await;
    assert_eq!(
        app.scalar("SELECT COALESCE(SUM(breaker_trips), 0) FROM agent_sessions")
            .await,
        0
    );
    // The refused context was not kept as it was: the next turn of the long conversation is
    // answered.
    post(
        &app,
        text_from(crate::agent::CUSTOMER, "wamid.long.3", "still there?"),
    )
    .await;
    wait_outbound(&app, "sent", 3).await;
    assert_eq!(sends(&graph), 3);
    app.stop().await;
}

/// NUL, escape sequences, C1 controls, noncharacters and the model's reasoning never reach
/// WhatsApp; a reply cut at its token limit is sent up to its last sentence; the recorded body
/// is the sent one, with its finish reason, on both backends.
async fn what_the_model_says_is_made_safe_before_it_is_sent(backend: Backend) {
    let (provider, graph) = (fakes::provider().await, fakes::graph().await);
    provider.script([completion(
        "<think>they want a price</think>Hi\u{0} there\u{1b}[0m!\u{85} It costs 5\u{fffe} EUR. And deliv",
        "length",
    )]);
    let app = agent_app(backend, &provider, &graph, |_| {}).await;
    post(
        &app,
        text_from(crate::agent::CUSTOMER, "wamid.safe.1", "price?"),
    )
    .await;
    wait_outbound(&app, "sent", 1).await;
    let sent = sent_texts(&graph);
    assert_eq!(sent, ["Hi there[0m! It costs 5 EUR."]);
    assert_eq!(
        app.strings("SELECT body FROM outbound_messages").await,
        sent
    );
    assert_eq!(
        app.strings("SELECT finish_reason FROM outbound_messages")
            .await,
        ["length"]
    );
    // A cut reply with no complete sentence: asked once more with room, then cut at a word.
    provider.script([
        completion("and then we will", "length"),
        completion("and then we will see about", "length"),
    ]);
    post(&app, text_from(OTHER, "wamid.safe.2", "well?")).await;
    wait_outbound(&app, "sent", 2).await;
    let calls = provider.requests();
    assert_eq!(
        calls[2].1["max_tokens"],
        calls[1].1["max_tokens"].as_i64().unwrap() * 2
    );
    assert_eq!(sent_texts(&graph)[1], "and then we will see…");
    app.stop().await;
}

/// llama.cpp answers a chat-template error with a 500: it is the request's, so it is not
/// retried (it would repeat) and opens no breaker; the turn records why.
async fn a_template_error_is_not_retried_and_blocks_no_one(backend: Backend) {
    let (provider, graph) = (fakes::provider().await, fakes::graph().await);
    provider.script([Reply::status(
        500,
        json!({"error": {"message": "Conversation roles must alternate user/assistant/user/assistant/...", "type": "internal_server_error"}}),
    )]);
    let app = agent_app(backend, &provider, &graph, |a| {
        a.breaker_failures = 1;
        a.breaker_cooldown_ms = 3_600_000;
    })
    .await;
    post(&app, text_from(crate::agent::CUSTOMER, "wamid.tpl.1", "hi")).await;
    wait_outbound(&app, "failed", 1).await;
    assert_eq!(provider.requests().len(), 1, "not retried");
    assert_eq!(
        app.strings("SELECT error_code FROM outbound_messages")
            .await,
        ["chat_template"]
    );
    post(&app, text_from(OTHER, "wamid.tpl.2", "hello")).await;
    wait_outbound(&app, "sent", 1).await;
    app.stop().await;
}

/// `token_param`, `send_temperature` and `system_role`: OpenAI's newer models take
/// `max_completion_tokens` and no temperature; Gemma-style templates refuse a system turn.
async fn the_request_speaks_the_agents_dialect(backend: Backend) {
    let (provider, graph) = (fakes::provider().await, fakes::graph().await);
    let app = agent_app(backend, &provider, &graph, |a| {
        a.token_param = wahook::config::TokenParam::MaxCompletionTokens;
        a.send_temperature = false;
        a.system_role = false;
    })
    .await;
    post(&app, text_from(crate::agent::CUSTOMER, "wamid.dia.1", "hi")).await;
    wait_outbound(&app, "sent", 1).await;
    let body = &provider.requests()[0].1;
    assert_eq!(body["max_completion_tokens"], 300, "{body}");
    assert!(body.get("max_tokens").is_none(), "{body}");
    assert!(body.get("temperature").is_none(), "{body}");
    let roles: Vec<&Value> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["role"])
        .collect();
    assert_eq!(roles, [&json!("user")], "{body}");
    assert_eq!(user_contents(body), [format!("{SYSTEM}\n\nhi")]);
    app.stop().await;
}

/// A server that takes the request and never answers holds the conversation for the turn's
/// budget, not for every attempt's timeout.
async fn a_hung_server_is_given_up_after_the_turn_budget(backend: Backend) {
    let (provider, graph) = (fakes::provider().await, fakes::graph().await);
    let mut hung = completion("late", "stop");
    hung.delay = std::time::Duration::from_secs(30);
    provider.always(hung);
    let app = agent_app(backend, &provider, &graph, |a| {
        a.request_timeout_ms = 20_000;
        a.turn_timeout_ms = 200;
    })
    .await;
    post(
        &app,
        text_from(crate::agent::CUSTOMER, "wamid.hung.1", "hi"),
    )
    .await;
    wait_outbound(&app, "failed", 1).await;
    assert_eq!(
        app.strings("SELECT error_code FROM outbound_messages")
            .await,
        ["turn_timeout"]
    );
    assert_eq!(sends(&graph), 0);
    app.stop().await;
}

/// `\u0000` in a customer's text is valid JSON; PostgreSQL refuses NUL in text, so it is stored
/// as U+FFFD (on SQLite too): the message is kept, not parked.
async fn a_customers_nul_is_stored(backend: Backend) {
    let app = TestApp::start(backend).await;
    let body = text_from(crate::agent::CUSTOMER, "wamid.nul.1", "card\u{0}number");
    assert!(body.contains("\\u0000"), "{body}");
    assert_eq!(app.post_meta(body, ACME_SECRET).await.status(), 200);
    app.wait_processed(1).await;
    assert_eq!(
        app.strings("SELECT content FROM messages").await,
        ["card\u{fffd}number"]
    );
    assert_eq!(app.count("webhook_dlq").await, 0);
    app.stop().await;
}
