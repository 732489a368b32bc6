//! The agent against a model server nobody here wrote: llama.cpp's OpenAI-compatible server
//! (llama-cpp-python, `python -m llama_cpp.server`) over tiny random-weight models that
//! `scripts/llama/make-model.py` writes (no downloads). Their tokenizer counts several times
//! more tokens than ours, their replies hold control bytes and end at the token limit, and one
//! has a Gemma-style template that refuses a system turn and two turns of one role in a row.
//!
//! `.ci/run` installs llama-cpp-python and sets `WAHOOK_LLAMA_PYTHON`; elsewhere these tests
//! say they were skipped (and fail under `CI`, so CI cannot skip them).

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};

use crate::{
    agent::{CUSTOMER, agent_app, messages_with, now_ts, post, wait_outbound},
    both_backends,
    common::{Backend, TestApp},
    fakes::{self, Fake, is_send},
};

both_backends!(
    a_small_context_keeps_answering_and_blocks_no_one,
    a_strict_template_answers_bursts,
);

const OTHER: &str = "4915177770001";

/// A llama.cpp server on a model of `ctx` tokens with the `template` chat template; `None`
/// (the test is skipped) when llama-cpp-python is not installed outside CI.
struct Llama {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Llama {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn llama(ctx: usize, template: &str) -> Option<Llama> {
    let Ok(python) = std::env::var("WAHOOK_LLAMA_PYTHON") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs the llama.cpp tests: WAHOOK_LLAMA_PYTHON must name llama-cpp-python's python"
        );
        eprintln!("skipped: WAHOOK_LLAMA_PYTHON is not set (see .ci/run)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.gguf");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/llama/make-model.py");
    let made = Command::new(&python)
        .arg(script)
        .arg(&model)
        .args(["--ctx", &ctx.to_string(), "--template", template])
        .output()
        .expect("python runs");
    assert!(made.status.success(), "make-model.py: {made:?}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(&python)
        .args(["-m", "llama_cpp.server", "--model"])
        .arg(&model)
        .args(["--n_ctx", &ctx.to_string(), "--n_threads", "1"])
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("llama_cpp.server starts");
    // Ready when uvicorn says so; the rest of its log is drained (and kept for a failure).
    let stderr = child.stderr.take().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    std::thread::spawn(move || {
        let mut seen = String::new();
        let mut ready = Some(ready_tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(tx) = ready.as_ref() {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains("Uvicorn running on") {
                    let _ = tx.send(Ok(()));
                    ready = None;
                }
            }
        }
        if let Some(tx) = ready {
            let _ = tx.send(Err(seen));
        }
    });
    let ready =
        tokio::task::spawn_blocking(move || ready_rx.recv_timeout(Duration::from_secs(120)))
            .await
            .unwrap();
    match ready {
        Ok(Ok(())) => {}
        Ok(Err(log)) => panic!("llama_cpp.server stopped before it was ready:\n{log}"),
        Err(e) => panic!("llama_cpp.server not ready in 120 s: {e}"),
    }
    Some(Llama {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    })
}

/// An app whose agent talks to the llama server.
async fn app_on(
    backend: Backend,
    server: &Llama,
    graph: &Fake,
    tune: impl FnOnce(&mut wahook::config::AgentConfig),
) -> TestApp {
    // The agent helper points the provider at `{base}/v1`.
    let provider = Fake::at(&server.base);
    agent_app(backend, &provider, graph, |a| {
        a.model = "tiny-random".into();
        a.max_reply_tokens = 48;
        a.reply_debounce_ms = 50;
        a.request_timeout_ms = 60_000;
        a.turn_timeout_ms = 120_000;
        a.max_attempts = 2;
        a.breaker_failures = 1;
        a.breaker_cooldown_ms = 3_600_000;
        tune(a);
    })
    .await
}

/// About `words` words of a customer's prose (the same every run).
fn prose(seed: usize, words: usize) -> String {
    const WORDS: [&str; 16] = [
        "delivery", "order", "price", "tomorrow", "please", "shipping", "address", "invoice",
        "colour", "size", "return", "thanks", "question", "weekend", "refund", "parcel",
    ];
    (0..words)
        .map(|i| WORDS[(seed * 7 + i * 13) % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

fn burst(from: &str, tag: &str, bodies: &[String]) -> String {
    let ts = now_ts().to_string();
    let msgs = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| json!({"from": from, "id": format!("wamid.llama.{tag}.{i}"), "timestamp": ts, "type": "text", "text": {"body": b}}))
        .collect();
    messages_with(json!([{"profile": {"name": "Ana"}, "wa_id": from}]), msgs)
}

/// What reached the Graph fake: no control character but newline and tab.
fn assert_sends_are_clean(graph: &Fake) {
    for (path, body) in graph.requests() {
        if !is_send(&path, &body) {
            continue;
        }
        let text = body["text"]["body"].as_str().unwrap();
        assert!(!text.trim().is_empty(), "an empty send: {body}");
        assert!(
            !text
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t'),
            "a control character reached WhatsApp: {text:?}"
        );
    }
}

/// The scene on a real 2,048-token server: a conversation of 60 messages of 200 words
/// (3 per burst) is answered turn after turn although each burst alone is longer than the
/// server's window by its own count; another customer on the same agent, in the middle, is
/// answered too; every turn leaves its row, with the server's finish reason.
async fn a_small_context_keeps_answering_and_blocks_no_one(backend: Backend) {
    let Some(server) = llama(2048, "chatml").await else {
        return;
    };
    let graph = fakes::graph().await;
    let app = app_on(backend, &server, &graph, |_| {}).await;
    let bursts = 20;
    for b in 0..bursts {
        let bodies: Vec<String> = (0..3).map(|i| prose(b * 3 + i, 200)).collect();
        post(&app, burst(CUSTOMER, &b.to_string(), &bodies)).await;
        if b == 5 {
            post(&app, burst(OTHER, "other", &["hello".to_owned()])).await;
            app.wait_for(
                "SELECT COUNT(*) FROM outbound_messages o JOIN conversations v ON v.id = o.conversation_id \
                 JOIN contacts c ON c.id = v.contact_id WHERE c.phone = '4915177770001' AND o.state = 'sent'",
                1,
            )
            .await;
        }
        app.wait_for(
            "SELECT COUNT(*) FROM outbound_messages WHERE state <> 'pending_send'",
            b as i64 + 1 + i64::from(b >= 5),
        )
        .await;
    }
    let states = app
        .strings(
            "SELECT state || ':' || COALESCE(error_code, '') FROM outbound_messages ORDER BY id",
        )
        .await;
    assert_eq!(
        states.iter().filter(|s| s.starts_with("sent")).count(),
        bursts + 1,
        "every turn answered: {states:?}"
    );
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM outbound_messages WHERE finish_reason IS NULL")
            .await,
        0
    );
    assert_eq!(
        app.scalar("SELECT COALESCE(SUM(breaker_trips), 0) FROM agent_sessions")
            .await,
        0
    );
    assert_sends_are_clean(&graph);
    app.stop().await;
}

/// A Gemma-style template refuses a system turn and two user turns in a row (llama.cpp answers
/// 500): with a system turn the turn fails as the request's fault; with `system_role = false` a
/// burst of two messages (one user turn, the prompt folded in) and the next single message are
/// answered.
async fn a_strict_template_answers_bursts(backend: Backend) {
    let Some(server) = llama(2048, "strict").await else {
        return;
    };
    let graph = fakes::graph().await;
    // With a system turn the template refuses every request (a 500): the turn fails with the
    // template's code, once, and the breaker (one server failure would open it) stays shut.
    let app = app_on(backend, &server, &graph, |a| {
        a.system_prompt = "You are Acme's assistant.".into();
    })
    .await;
    post(&app, burst(CUSTOMER, "s0", &["hi".to_owned()])).await;
    wait_outbound(&app, "failed", 1).await;
    assert_eq!(
        app.strings("SELECT error_code FROM outbound_messages")
            .await,
        ["chat_template"]
    );
    assert_eq!(
        app.column("SELECT provider_status FROM outbound_messages")
            .await,
        [500]
    );
    assert_eq!(
        app.scalar("SELECT COALESCE(SUM(breaker_trips), 0) FROM agent_sessions")
            .await,
        0
    );
    app.stop().await;
    let app = app_on(backend, &server, &graph, |a| {
        a.system_role = false;
        a.system_prompt = "You are Acme's assistant.".into();
    })
    .await;
    post(
        &app,
        burst(
            CUSTOMER,
            "s1",
            &["hi".to_owned(), "are you open today?".to_owned()],
        ),
    )
    .await;
    wait_outbound(&app, "sent", 1).await;
    post(&app, burst(CUSTOMER, "s2", &["and tomorrow?".to_owned()])).await;
    wait_outbound(&app, "sent", 2).await;
    let failed: Vec<Value> = app
        .strings("SELECT COALESCE(error, '') FROM outbound_messages WHERE state <> 'sent'")
        .await
        .into_iter()
        .map(Value::from)
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert_sends_are_clean(&graph);
    app.stop().await;
}
