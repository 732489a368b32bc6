//! A conversation handed to a person is announced to the account's `notify_url`: a Standard
//! Webhooks POST, verified here with the spec's reference library, retried with the same
//! `webhook-id` after a failure (and the receiver's `Retry-After`), recorded on its row.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode as AxumStatus},
    response::{IntoResponse, Response},
    routing::post as route_post,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wahook::store::users::Role;

use crate::{
    agent::{agent_app_with, now_ts, post, text, wait_outbound},
    api::{call, user_with_token},
    both_backends,
    common::{Backend, GLOBEX_PNID, GLOBEX_SECRET, TestApp},
    fakes,
};

both_backends!(a_hand_off_is_announced_signed_and_retried_with_the_same_id);

/// 32 random bytes, as Standard Webhooks writes a secret.
const SECRET: &str = "whsec_9q6dbH2ETsk9ErfRU1V4VDaVLdTAEYThdZ6AOOqS0bQ=";

/// A status and, maybe, a `Retry-After`.
type Answer = (u16, Option<&'static str>);

/// A receiver: what it was sent (headers, bytes) and what it answers next.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    /// Answers in order; then 200.
    answers: Arc<Mutex<Vec<Answer>>>,
    seen: Arc<tokio::sync::Notify>,
}

impl Receiver {
    async fn start() -> (Self, SocketAddr) {
        let r = Self::default();
        let app = Router::new()
            .route("/handoff", route_post(receive))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (r, addr)
    }

    fn answer(&self, status: u16, retry_after: Option<&'static str>) {
        self.answers.lock().unwrap().push((status, retry_after));
    }

    fn got(&self) -> Vec<(HeaderMap, Bytes)> {
        self.got.lock().unwrap().clone()
    }

    /// Waits (on the receiver's own signal, never a fixed sleep) until it has `n` requests.
    async fn until(&self, n: usize) -> Vec<(HeaderMap, Bytes)> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let seen = self.seen.notified();
            let got = self.got();
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, seen).await.is_err() {
                panic!("the receiver got {} of {n} notifications", got.len());
            }
        }
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    // The answer is chosen before the request counts as seen: one the test sets after
    // `until(n)` returned is for a later request, never for the one it just waited for.
    let next = {
        let mut answers = r.answers.lock().unwrap();
        (!answers.is_empty()).then(|| answers.remove(0))
    };
    r.got.lock().unwrap().push((headers, body));
    r.seen.notify_waiters();
    match next {
        Some((status, after)) => {
            let mut res = (AxumStatus::from_u16(status).unwrap(), "not now").into_response();
            if let Some(a) = after {
                res.headers_mut().insert("retry-after", a.parse().unwrap());
            }
            res
        }
        None => (AxumStatus::OK, "thanks").into_response(),
    }
}

/// The notification's JSON, after checking its signature with the reference library.
fn verified(headers: &HeaderMap, body: &Bytes) -> Value {
    standardwebhooks::Webhook::new(SECRET)
        .unwrap()
        .verify(body, headers)
        .unwrap_or_else(|e| panic!("the signature does not verify: {e:?}"));
    serde_json::from_slice(body).unwrap()
}

fn id_of(headers: &HeaderMap) -> String {
    headers["webhook-id"].to_str().unwrap().to_owned()
}

async fn rows(app: &TestApp) -> Vec<String> {
    app.strings(
        "SELECT status || ' ' || CAST(attempts AS TEXT) || ' ' || COALESCE(CAST(last_status AS TEXT), '-') \
         FROM handoff_notifications ORDER BY id",
    )
    .await
}

async fn a_hand_off_is_announced_signed_and_retried_with_the_same_id(backend: Backend) {
    let (provider, graph) = (fakes::provider().await, fakes::graph().await);
    let (receiver, addr) = Receiver::start().await;
    let url = format!("http://{addr}/handoff");
    let app = agent_app_with(
        backend,
        &provider,
        &graph,
        |a| a.handoff_keywords = vec!["talk to a person".into()],
        |c| {
            c.accounts[0].notify_url = Some(url.clone());
            c.accounts[0].notify_secret = Some(SECRET.into());
        },
    )
    .await;
    // The receiver is busy the first time and says when to come back.
    receiver.answer(503, Some("0"));
    // (The customer's clock has seconds, ours more: a minute apart, the order is plain.)
    post(&app, text("wamid.h.1", "hello", now_ts() - 60, "h1")).await;
    wait_outbound(&app, "sent", 1).await;
    post(
        &app,
        text("wamid.h.2", "can I talk to a person", now_ts() + 1, "h2"),
    )
    .await;
    let got = receiver.until(2).await;
    // The same notification twice: the same id (the receiver can drop a repeat), each
    // signed for its own attempt.
    assert_eq!(id_of(&got[0].0), id_of(&got[1].0));
    assert_eq!(got[0].1, got[1].1, "the same body");
    let n = verified(&got[1].0, &got[1].1);
    let conversation = app.scalar("SELECT id FROM conversations").await;
    assert_eq!(n["type"], "conversation.handed_off", "{n}");
    let data = &n["data"];
    assert_eq!(data["workspace"], "acme");
    assert_eq!(data["reason"], "the customer asked for a person", "{n}");
    assert_eq!(data["conversation"]["id"], conversation);
    assert_eq!(data["conversation"]["state"], "human");
    assert_eq!(data["conversation"]["contact_name"], "Ana");
    let lines: Vec<(String, String)> = data["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["author"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            ("customer".to_owned(), "hello".to_owned()),
            ("agent".to_owned(), "Reply 1".to_owned()),
            ("customer".to_owned(), "can I talk to a person".to_owned()),
        ],
        "{n}"
    );
    app.wait_for(
        "SELECT COUNT(*) FROM handoff_notifications WHERE status = 'delivered'",
        1,
    )
    .await;
    assert_eq!(rows(&app).await, ["delivered 2 200"]);
    // The operator sees it on the conversation.
    let (_, op) = user_with_token(&app, "acme", "otto@acme.test", Role::Operator).await;
    let (_, detail) = call(
        &app,
        Method::GET,
        &format!("/api/v1/conversations/{conversation}"),
        Some(&op),
        None,
    )
    .await;
    let h = &detail["handoffs"][0];
    assert_eq!(
        (&h["status"], &h["attempts"], &h["last_status"], &h["url"]),
        (&json!("delivered"), &json!(2), &json!(200), &json!(url)),
        "{detail}"
    );

    // Given back, then handed over by an operator: a second notification, its own id.
    for state in ["open", "human"] {
        let (status, body) = call(
            &app,
            Method::POST,
            &format!("/api/v1/conversations/{conversation}/state"),
            Some(&op),
            Some(json!({"state": state, "reason": "Otto takes it"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let got = receiver.until(3).await;
    let n = verified(&got[2].0, &got[2].1);
    assert_ne!(id_of(&got[2].0), id_of(&got[0].0));
    assert_eq!(n["data"]["reason"], "set by an operator", "{n}");

    // A receiver that is gone (410) is not asked again.
    receiver.answer(410, None);
    for state in ["open", "human"] {
        call(
            &app,
            Method::POST,
            &format!("/api/v1/conversations/{conversation}/state"),
            Some(&op),
            Some(json!({"state": state})),
        )
        .await;
    }
    receiver.until(4).await;
    app.wait_for(
        "SELECT COUNT(*) FROM handoff_notifications WHERE status = 'failed'",
        1,
    )
    .await;
    assert_eq!(
        rows(&app).await,
        ["delivered 2 200", "delivered 1 200", "failed 1 410"]
    );

    // Globex's number has no notify_url: its hand-off is recorded as skipped, and nothing
    // of it reaches Acme's receiver.
    let kapso_like =
        text("wamid.g.1", "hi", now_ts(), "g1").replace(crate::common::ACME_PNID, GLOBEX_PNID);
    assert_eq!(app.post_meta(kapso_like, GLOBEX_SECRET).await.status(), 200);
    app.wait_for("SELECT COUNT(*) FROM conversations", 2).await;
    let theirs = app.scalar("SELECT MAX(id) FROM conversations").await;
    let (_, gus) = user_with_token(&app, "globex", "gus@globex.test", Role::Operator).await;
    let (status, body) = call(
        &app,
        Method::POST,
        &format!("/api/v1/conversations/{theirs}/state"),
        Some(&gus),
        Some(json!({"state": "human"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.wait_for(
        "SELECT COUNT(*) FROM handoff_notifications WHERE status = 'skipped'",
        1,
    )
    .await;
    assert_eq!(receiver.got().len(), 4, "nothing of Globex's was sent");
    app.stop().await;
}
