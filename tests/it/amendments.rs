//! Reactions, edits and revokes change the message they point at: they are not messages of
//! their own, are never counted, and give the same result whichever arrives first.

use reqwest::Method;
use serde_json::{Value, json};
use wahook::store::users::Role;

use crate::{
    api::{call, user_with_token},
    both_backends,
    common::{ACME_PNID, ACME_SECRET, Backend, TestApp},
};

both_backends!(
    reactions_edits_and_revokes_change_their_message,
    an_amendment_before_its_message_waits_for_it,
    an_amendment_changes_only_its_own_conversation,
);

const CUSTOMER: &str = "4915144440001";

fn change(field: &str, key: &str, objects: Vec<Value>) -> String {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": field, "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15551111111", "phone_number_id": ACME_PNID},
        "contacts": [{"profile": {"name": "Ana"}, "wa_id": CUSTOMER}],
        key: objects}}]}]})
    .to_string()
}

/// The customer's message object of `ty` with its `body`, sent at `ts`.
fn inbound(id: &str, ts: i64, ty: &str, body: Value) -> String {
    let mut m = json!({"from": CUSTOMER, "id": id, "timestamp": ts.to_string(), "type": ty});
    m[ty] = body;
    change("messages", "messages", vec![m])
}

fn echo(id: &str, ts: i64, ty: &str, body: Value) -> String {
    let mut m = json!({"from": "15551111111", "to": CUSTOMER, "id": id, "timestamp": ts.to_string(), "type": ty});
    m[ty] = body;
    change("smb_message_echoes", "message_echoes", vec![m])
}

/// Posts the bodies in order and waits until they are processed.
async fn post_all(app: &TestApp, bodies: &[String]) {
    let before = app
        .scalar("SELECT COUNT(*) FROM webhook_events WHERE status = 'processed'")
        .await;
    for b in bodies {
        assert_eq!(app.post_meta(b.clone(), ACME_SECRET).await.status(), 200);
    }
    app.wait_processed(before + bodies.len() as i64).await;
}

async fn messages(app: &TestApp) -> Vec<Value> {
    let email = format!("v{}@acme.test", uuid::Uuid::now_v7().simple());
    let (_, token) = user_with_token(app, "acme", &email, Role::Viewer).await;
    let id = app.scalar("SELECT id FROM conversations").await;
    let (status, body) = call(
        app,
        Method::GET,
        &format!("/api/v1/conversations/{id}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["messages"].as_array().unwrap().clone()
}

fn by_wamid<'a>(messages: &'a [Value], wamid: &str) -> &'a Value {
    messages
        .iter()
        .find(|m| m["wamid"] == wamid)
        .unwrap_or_else(|| panic!("{wamid} not among {messages:?}"))
}

/// The issue's scene: a customer asks, we answer, they react 👍 to our answer, edit their
/// question and delete another message (their card number).
async fn reactions_edits_and_revokes_change_their_message(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = 1_767_225_600;
    post_all(
        &app,
        &[
            inbound(
                "wamid.q1",
                t,
                "text",
                json!({"body": "Do you ship to Spain?"}),
            ),
            echo(
                "wamid.a1",
                t + 10,
                "text",
                json!({"body": "Yes, in 3 days."}),
            ),
            inbound(
                "wamid.r1",
                t + 20,
                "reaction",
                json!({"message_id": "wamid.a1", "emoji": "👍"}),
            ),
            inbound(
                "wamid.e1",
                t + 30,
                "edit",
                json!({"original_message_id": "wamid.q1",
                "message": {"type": "text", "text": {"body": "Do you ship to Portugal?"}}}),
            ),
            inbound(
                "wamid.c1",
                t + 40,
                "text",
                json!({"body": "my card is 4242 4242 4242 4242"}),
            ),
            inbound(
                "wamid.d1",
                t + 50,
                "revoke",
                json!({"original_message_id": "wamid.c1"}),
            ),
        ],
    )
    .await;
    // Three real messages; the reaction, edit and revoke are none.
    assert_eq!(app.count("messages").await, 3);
    assert_eq!(
        app.scalar("SELECT message_count FROM conversations").await,
        3
    );
    let list = messages(&app).await;
    assert_eq!(list.len(), 3);
    let q1 = by_wamid(&list, "wamid.q1");
    assert_eq!(q1["content"], "Do you ship to Portugal?");
    assert_eq!(q1["edited"], true);
    let history: Vec<&str> = q1["edits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        history,
        vec!["Do you ship to Spain?", "Do you ship to Portugal?"]
    );
    let a1 = by_wamid(&list, "wamid.a1");
    assert_eq!(a1["reactions"][0]["emoji"], "👍");
    assert_eq!(a1["reactions"][0]["side"], "inbound");
    let c1 = by_wamid(&list, "wamid.c1");
    assert_eq!(c1["revoked"], true);
    assert!(c1["content"].is_null());
    // The card number is gone from the message row (content and metadata); the raw inbox
    // payload stays the audit record.
    assert_eq!(
        app.scalar(
            "SELECT COUNT(*) FROM messages WHERE content LIKE '%4242%' OR metadata LIKE '%4242%'"
        )
        .await,
        0
    );

    // A later reaction by the same side replaces it; an empty emoji takes it back; a
    // redelivery of the first changes nothing.
    post_all(
        &app,
        &[
            inbound(
                "wamid.r2",
                t + 60,
                "reaction",
                json!({"message_id": "wamid.a1", "emoji": "❤️"}),
            ),
            inbound(
                "wamid.r1",
                t + 20,
                "reaction",
                json!({"message_id": "wamid.a1", "emoji": "👍"}),
            )
            .replace("\"1\"", "\"redelivered\""),
        ],
    )
    .await;
    let list = messages(&app).await;
    let reactions = by_wamid(&list, "wamid.a1")["reactions"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(reactions.len(), 1);
    assert_eq!(reactions[0]["emoji"], "❤️");
    post_all(
        &app,
        &[inbound(
            "wamid.r3",
            t + 70,
            "reaction",
            json!({"message_id": "wamid.a1", "emoji": ""}),
        )],
    )
    .await;
    let list = messages(&app).await;
    assert!(
        by_wamid(&list, "wamid.a1")["reactions"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        app.scalar("SELECT message_count FROM conversations").await,
        3
    );
    app.stop().await;
}

async fn an_amendment_before_its_message_waits_for_it(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = 1_767_225_600;
    // The edit and the reaction come before the message they point at.
    post_all(
        &app,
        &[
            inbound(
                "wamid.e2",
                t + 30,
                "edit",
                json!({"original_message_id": "wamid.q2",
                "message": {"type": "text", "text": {"body": "edited first"}}}),
            ),
            inbound(
                "wamid.r4",
                t + 20,
                "reaction",
                json!({"message_id": "wamid.q2", "emoji": "🙏"}),
            ),
            inbound(
                "wamid.v2",
                t + 40,
                "revoke",
                json!({"original_message_id": "wamid.q3"}),
            ),
            inbound("wamid.q2", t, "text", json!({"body": "original"})),
            inbound("wamid.q3", t + 5, "text", json!({"body": "delete me"})),
        ],
    )
    .await;
    let list = messages(&app).await;
    assert_eq!(list.len(), 2);
    let q2 = by_wamid(&list, "wamid.q2");
    assert_eq!(q2["content"], "edited first");
    assert_eq!(q2["reactions"][0]["emoji"], "🙏");
    let q3 = by_wamid(&list, "wamid.q3");
    assert_eq!(q3["revoked"], true);
    assert!(q3["content"].is_null());
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM messages WHERE metadata LIKE '%delete me%'")
            .await,
        0
    );
    // Replaying everything changes nothing.
    app.exec("UPDATE webhook_events SET status = 'pending'")
        .await;
    let (_, admin) = user_with_token(&app, "acme", "op@acme.test", Role::Operator).await;
    let ids = app
        .column("SELECT id FROM webhook_events ORDER BY id")
        .await;
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/v1/events/replay",
        Some(&admin),
        Some(json!({"ids": ids})),
    )
    .await;
    assert_eq!(status, 200);
    app.wait_processed(5).await;
    let again = messages(&app).await;
    assert_eq!(again.len(), 2);
    assert_eq!(by_wamid(&again, "wamid.q2")["content"], "edited first");
    assert_eq!(by_wamid(&again, "wamid.q3")["revoked"], true);
    assert_eq!(
        app.scalar("SELECT message_count FROM conversations").await,
        2
    );
    app.stop().await;
}

/// Another customer of the same workspace naming this customer's message in an edit, a revoke
/// or a reaction changes nothing of it: an amendment acts inside its own conversation.
async fn an_amendment_changes_only_its_own_conversation(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = 1_767_225_600;
    let other = |id: &str, ty: &str, body: Value| {
        inbound(id, t + 10, ty, body).replace(CUSTOMER, "4915144449999")
    };
    post_all(
        &app,
        &[
            inbound("wamid.own.1", t, "text", json!({"body": "my own words"})),
            other(
                "wamid.x.e",
                "edit",
                json!({"original_message_id": "wamid.own.1",
                "message": {"type": "text", "text": {"body": "words put in my mouth"}}}),
            ),
            other(
                "wamid.x.v",
                "revoke",
                json!({"original_message_id": "wamid.own.1"}),
            ),
            other(
                "wamid.x.r",
                "reaction",
                json!({"message_id": "wamid.own.1", "emoji": "💩"}),
            ),
        ],
    )
    .await;
    let conversation = app
        .scalar(&format!("SELECT c.id FROM conversations c JOIN contacts k ON k.id = c.contact_id WHERE k.phone = '{CUSTOMER}'"))
        .await;
    let (_, token) = user_with_token(&app, "acme", "vera@acme.test", Role::Viewer).await;
    let (_, body) = call(
        &app,
        Method::GET,
        &format!("/api/v1/conversations/{conversation}"),
        Some(&token),
        None,
    )
    .await;
    let own = by_wamid(body["messages"].as_array().unwrap(), "wamid.own.1").clone();
    assert_eq!(own["content"], "my own words", "{own}");
    assert_eq!(own["edited"], false);
    assert_eq!(own["revoked"], false);
    assert_eq!(own["reactions"], json!([]));
    app.stop().await;
}
