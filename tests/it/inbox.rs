//! The operator's inbox through the API: conversations newest activity first with a cursor,
//! found by phone (as people write it), name or BSUID, and the ones that need a reply.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wahook::store::users::Role;

use crate::{
    agent::{messages_with, now_ts},
    api::{call, user_with_token},
    both_backends,
    common::{ACME_SECRET, Backend, TestApp},
};

both_backends!(conversations_are_found_and_listed_by_activity);

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
    // A LIKE wildcard is a character, not a pattern.
    assert_eq!(names(&get("?search=%25").await), Vec::<String>::new());
    // The ones nobody answered.
    let waiting = get("?needs_reply=true").await;
    assert_eq!(names(&waiting), ["Bruno", "Ana Lima"]);
    assert_eq!(waiting["items"][0]["needs_reply"], true);
    let all = get("").await;
    assert_eq!(all["items"][0]["needs_reply"], false, "Carla was answered");
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
