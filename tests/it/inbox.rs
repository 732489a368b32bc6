//! The operator's inbox through the API: conversations newest activity first with a cursor,
//! found by phone (as people write it), name or BSUID, and the ones that need a reply.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wahook::store::users::Role;

use crate::{
    agent::{messages_with, now_ts},
    api::{call, user_with_token},
    both_backends,
    common::{ACME_SECRET, Backend, GLOBEX_PNID, GLOBEX_SECRET, TestApp},
};

both_backends!(
    conversations_are_found_and_listed_by_activity,
    the_stream_tells_a_workspace_what_changed_and_what_it_missed,
);

fn from(phone: &str, name: &str, wamid: &str, ts: i64) -> String {
    messages_with(
        json!([{"profile": {"name": name}, "wa_id": phone}]),
        vec![
            json!({"from": phone, "id": wamid, "timestamp": ts.to_string(), "type": "text",
            "text": {"body": format!("hello from {name}")}}),
        ],
    )
}

fn names(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["contact_name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn conversations_are_found_and_listed_by_activity(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t0 = now_ts() - 300;
    for (phone, name, wamid, ts) in [
        ("4915112345678", "Ana Lima", "wamid.a", t0),
        ("5511999990000", "Bruno", "wamid.b", t0 + 10),
        ("34600111222", "Carla", "wamid.c", t0 + 20),
    ] {
        let res = app
            .post_meta(from(phone, name, wamid, ts), ACME_SECRET)
            .await;
        assert_eq!(res.status(), 200);
    }
    app.wait_for("SELECT COUNT(*) FROM messages", 3).await;
    let (_, op) = user_with_token(&app, "acme", "otto@acme.test", Role::Operator).await;
    let get = |q: &str| {
        let (app, op, q) = (&app, op.clone(), q.to_owned());
        async move {
            let (status, body) = call(
                app,
                Method::GET,
                &format!("/api/v1/conversations{q}"),
                Some(&op),
                None,
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{q}: {body}");
            body
        }
    };
    // Someone answered Carla (recorded from another system): she needs no reply.
    let carla = app
        .scalar("SELECT v.id FROM conversations v JOIN contacts c ON c.id = v.contact_id WHERE c.name = 'Carla'")
        .await;
    let (status, body) = call(
        &app,
        Method::POST,
        "/api/v1/messages/outbound",
        Some(&op),
        Some(json!({"conversation_id": carla, "wamid": "wamid.out.c", "text": "hi Carla"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Newest activity first, in pages.
    assert_eq!(names(&get("").await), ["Carla", "Bruno", "Ana Lima"]);
    let first = get("?limit=2").await;
    assert_eq!(names(&first), ["Carla", "Bruno"]);
    let next = first["next"].as_str().unwrap();
    let second = get(&format!("?limit=2&after={next}")).await;
    assert_eq!(names(&second), ["Ana Lima"]);
    assert!(second["next"].is_null());
    // By id, for an export (the three conversations were made concurrently: any ids).
    let by_id = get("?order=id").await;
    let ids: Vec<i64> = by_id["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // Found by name (any case), by the phone as people write it, by part of it.
    assert_eq!(names(&get("?search=ana").await), ["Ana Lima"]);
    assert_eq!(names(&get("?search=%2B55%2011%209999").await), ["Bruno"]);
    assert_eq!(names(&get("?search=600111").await), ["Carla"]);
    assert_eq!(names(&get("?search=nobody").await), Vec::<String>::new());
    // A message's wamid finds its conversation.
    assert_eq!(names(&get("?search=wamid.b").await), ["Bruno"]);
    // A LIKE wildcard is a character, not a pattern.
    assert_eq!(names(&get("?search=%25").await), Vec::<String>::new());
    // The ones nobody answered.
    let waiting = get("?needs_reply=true").await;
    assert_eq!(names(&waiting), ["Bruno", "Ana Lima"]);
    assert_eq!(waiting["items"][0]["needs_reply"], true);
    let all = get("").await;
    assert_eq!(all["items"][0]["needs_reply"], false, "Carla was answered");
    // Assigned to Otto: shown, filterable, audited; back to nobody.
    let otto_id = app
        .scalar("SELECT id FROM users WHERE email = 'otto@acme.test'")
        .await;
    let bruno = app
        .scalar("SELECT v.id FROM conversations v JOIN contacts c ON c.id = v.contact_id WHERE c.name = 'Bruno'")
        .await;
    let assign = |user: Value| {
        let (app, op) = (&app, op.clone());
        async move {
            call(
                app,
                Method::PUT,
                &format!("/api/v1/conversations/{bruno}/assignee"),
                Some(&op),
                Some(json!({"user_id": user})),
            )
            .await
        }
    };
    let (status, body) = assign(json!(otto_id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["assignee_id"], otto_id);
    assert_eq!(body["assignee_name"], "otto");
    assert_eq!(
        names(&get(&format!("?assignee_id={otto_id}")).await),
        ["Bruno"]
    );
    assert_eq!(names(&get("?unassigned=true").await), ["Carla", "Ana Lima"]);
    let (gus, _) = user_with_token(&app, "globex", "gus@globex.test", Role::Viewer).await;
    let (status, _) = assign(json!(gus)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "another workspace's user");
    let (status, body) = assign(Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["assignee_id"].is_null());
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM audit_log WHERE action = 'conversation.assign'")
            .await,
        2
    );
    // Bad parameters are a 400 with the reason.
    for q in ["?order=name", "?after=xyz"] {
        let (status, body) = call(
            &app,
            Method::GET,
            &format!("/api/v1/conversations{q}"),
            Some(&op),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}: {body}");
    }
    app.stop().await;
}

/// An open `GET /api/v1/stream`: what it has sent so far.
pub(crate) struct Stream {
    res: reqwest::Response,
    pub(crate) text: String,
}

impl Stream {
    pub(crate) async fn open(app: &TestApp, token: &str, last_event_id: Option<&str>) -> Self {
        let mut req = app.client.get(app.url("/api/v1/stream")).bearer_auth(token);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Self {
            res,
            text: String::new(),
        }
    }

    /// Reads until the stream has sent `what` (waiting on its bytes, never a fixed sleep).
    pub(crate) async fn until(&mut self, what: &str) -> &str {
        self.until_times(what, 1).await
    }

    /// Reads until the stream has sent `what` `n` times.
    pub(crate) async fn until_times(&mut self, what: &str, n: usize) -> &str {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while self.text.matches(what).count() < n {
            let chunk = tokio::time::timeout_at(deadline, self.res.chunk())
                .await
                .unwrap_or_else(|_| panic!("no {what:?} in the stream: {}", self.text))
                .unwrap()
                .unwrap_or_else(|| panic!("the stream ended before {what:?}: {}", self.text));
            self.text.push_str(&String::from_utf8_lossy(&chunk));
        }
        &self.text
    }

    /// The id of the last event whose data names `conversation_id`.
    fn id_of(&self, event: &str, conversation_id: i64) -> String {
        let data = format!("data: {{\"conversation_id\":{conversation_id}}}");
        self.text
            .split("\n\n")
            .filter(|e| e.contains(&format!("event: {event}")) && e.contains(&data))
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("id: ")))
            .last()
            .unwrap_or_else(|| panic!("no {event} of {conversation_id} in {}", self.text))
            .to_owned()
    }
}

async fn the_stream_tells_a_workspace_what_changed_and_what_it_missed(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (_, acme) = user_with_token(&app, "acme", "vera@acme.test", Role::Viewer).await;
    let (_, globex) = user_with_token(&app, "globex", "gus@globex.test", Role::Viewer).await;
    let mut stream = Stream::open(&app, &acme, None).await;
    let mut theirs = Stream::open(&app, &globex, None).await;
    stream.until("event: ready").await;
    theirs.until("event: ready").await;
    // A customer writes to Acme: Acme's stream says so at once, with the conversation.
    let res = app
        .post_meta(
            from("4915112345678", "Ana Lima", "wamid.s.1", now_ts()),
            ACME_SECRET,
        )
        .await;
    assert_eq!(res.status(), 200);
    let conversation = {
        app.wait_for("SELECT COUNT(*) FROM messages", 1).await;
        app.scalar("SELECT id FROM conversations").await
    };
    stream
        .until(&format!("data: {{\"conversation_id\":{conversation}}}"))
        .await;
    let first = stream.id_of("message", conversation);
    // Globex hears nothing of it, only of its own.
    let globex_body = from("4915112345678", "Ana Lima", "wamid.s.g", now_ts())
        .replace(crate::common::ACME_PNID, GLOBEX_PNID);
    assert_eq!(
        app.post_meta(globex_body, GLOBEX_SECRET).await.status(),
        200
    );
    app.wait_for("SELECT COUNT(*) FROM messages", 2).await;
    let globex_conversation = app.scalar("SELECT MAX(id) FROM conversations").await;
    theirs
        .until(&format!(
            "data: {{\"conversation_id\":{globex_conversation}}}"
        ))
        .await;
    assert!(
        !theirs
            .text
            .contains(&format!("\"conversation_id\":{conversation}}}")),
        "another workspace's change: {}",
        theirs.text
    );
    // Away for a while: the client comes back with its last id and gets what it missed.
    drop(stream);
    let res = app
        .post_meta(
            from("4915112345678", "Ana Lima", "wamid.s.2", now_ts()),
            ACME_SECRET,
        )
        .await;
    assert_eq!(res.status(), 200);
    app.wait_for("SELECT COUNT(*) FROM messages", 3).await;
    let mut back = Stream::open(&app, &acme, Some(&first)).await;
    back.until("event: ready").await;
    back.until(&format!("data: {{\"conversation_id\":{conversation}}}"))
        .await;
    assert_ne!(back.id_of("message", conversation), first);
    // An id of another life of the server: start over.
    let mut other = Stream::open(&app, &acme, Some("0123456789ab-7")).await;
    other.until("event: reset").await;
    app.stop().await;
}
