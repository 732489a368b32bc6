//! One contact per person and one conversation per group: number changes, user ids seen alone,
//! merges of two contacts found to be one person, identity-key notices; group messages with
//! their senders, sends to a group, and a group's aggregated statuses. Payload shapes as
//! DOMAIN §10.2–10.3 give them.

use reqwest::Method;
use serde_json::{Value, json};
use wahook::store::users::Role;

use crate::{
    api::{call, user_with_token},
    both_backends,
    common::{ACME_PNID, ACME_SECRET, Backend, TestApp},
};

both_backends!(
    a_number_change_after_the_new_number_wrote_merges_the_two,
    a_user_id_seen_alone_is_linked_to_its_phone,
    a_group_is_one_conversation_with_its_senders_and_statuses,
);

const OLD: &str = "4915120000001";
const NEW: &str = "4915120000002";
const GROUP: &str = "120363000000000777";
const T: i64 = 1_767_225_600;

fn change(field: &str, contacts: Value, key: &str, objects: Vec<Value>) -> String {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": field, "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15551111111", "phone_number_id": ACME_PNID},
        "contacts": contacts,
        key: objects}}]}]})
    .to_string()
}

fn contact(wa_id: &str, user_id: Option<&str>, name: &str) -> Value {
    let mut c = json!({"profile": {"name": name}, "wa_id": wa_id});
    if let Some(u) = user_id {
        c["user_id"] = json!(u);
    }
    c
}

fn text(from: &str, id: &str, ts: i64, body: &str) -> Value {
    json!({"from": from, "id": id, "timestamp": ts.to_string(), "type": "text", "text": {"body": body}})
}

fn system(from: &str, id: &str, ts: i64, system: Value) -> String {
    change(
        "messages",
        json!([]),
        "messages",
        vec![
            json!({"from": from, "id": id, "timestamp": ts.to_string(), "type": "system", "system": system}),
        ],
    )
}

async fn post_all(app: &TestApp, bodies: &[String]) {
    let before = app
        .scalar("SELECT COUNT(*) FROM webhook_events WHERE status = 'processed'")
        .await;
    for b in bodies {
        assert_eq!(app.post_meta(b.clone(), ACME_SECRET).await.status(), 200);
    }
    app.wait_processed(before + bodies.len() as i64).await;
}

async fn identity_of(app: &TestApp, contact_id: i64) -> Vec<Value> {
    let email = format!("v{}@acme.test", uuid::Uuid::now_v7().simple());
    let (_, token) = user_with_token(app, "acme", &email, Role::Viewer).await;
    let path = format!("/api/v1/contacts/{contact_id}/identity");
    let (status, body) = call(app, Method::GET, &path, Some(&token), None).await;
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().unwrap().clone()
}

/// Ana writes twice from her old number and once from her new one before WhatsApp's notice
/// comes: the notice merges the two contacts into the older one, every message kept in one
/// conversation with the counts summed; the same notice delivered again changes nothing.
async fn a_number_change_after_the_new_number_wrote_merges_the_two(backend: Backend) {
    let app = TestApp::start(backend).await;
    let notice = system(
        OLD,
        "wamid.sys.1",
        T + 30,
        json!({"body": format!("User Ana changed from {OLD} to {NEW}"), "wa_id": NEW, "type": "user_changed_number"}),
    );
    post_all(
        &app,
        &[
            change(
                "messages",
                json!([contact(OLD, None, "Ana")]),
                "messages",
                vec![
                    text(OLD, "wamid.o.1", T, "hi"),
                    text(OLD, "wamid.o.2", T + 1, "price?"),
                ],
            ),
            change(
                "messages",
                json!([contact(NEW, None, "Ana N")]),
                "messages",
                vec![text(NEW, "wamid.n.1", T + 20, "new phone")],
            ),
        ],
    )
    .await;
    assert_eq!(app.scalar("SELECT COUNT(*) FROM conversations").await, 2);
    let older = app
        .scalar(&format!("SELECT id FROM contacts WHERE phone = '{OLD}'"))
        .await;
    let newer = app
        .scalar(&format!("SELECT id FROM contacts WHERE phone = '{NEW}'"))
        .await;
    post_all(&app, std::slice::from_ref(&notice)).await;

    assert_eq!(app.scalar("SELECT COUNT(*) FROM contacts").await, 1);
    assert_eq!(app.scalar("SELECT COUNT(*) FROM conversations").await, 1);
    assert_eq!(
        app.scalar(&format!("SELECT id FROM contacts WHERE phone = '{NEW}'"))
            .await,
        older,
        "the older contact holds the new number"
    );
    assert_eq!(
        app.scalar("SELECT message_count FROM conversations").await,
        4,
        "two, one and the notice"
    );
    assert_eq!(
        app.scalar(
            "SELECT COUNT(*) FROM messages m JOIN conversations v ON v.id = m.conversation_id"
        )
        .await,
        4
    );
    // The older contact keeps its name.
    assert_eq!(
        app.text("SELECT name FROM contacts").await.as_deref(),
        Some("Ana")
    );
    let history = identity_of(&app, older).await;
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["kind"], "user_changed_number");
    assert_eq!(history[0]["from"], OLD);
    assert_eq!(history[0]["to"], NEW);
    assert_eq!(history[0]["merged_contact_id"], newer);

    // Redelivered in another envelope: already done.
    post_all(&app, &[notice.replace("\"id\":\"1\"", "\"id\":\"2\"")]).await;
    assert_eq!(app.scalar("SELECT COUNT(*) FROM contacts").await, 1);
    assert_eq!(
        app.scalar("SELECT message_count FROM conversations").await,
        4
    );
    assert_eq!(identity_of(&app, older).await.len(), 1);
    app.stop().await;
}

/// A username adopter writes with their user id alone, then with a phone and the user id: one
/// contact (the phone linked to it), one conversation. A new user id and a changed identity
/// key are recorded on the same contact.
async fn a_user_id_seen_alone_is_linked_to_its_phone(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut alone = text("", "wamid.u.1", T, "hello");
    alone["from_user_id"] = json!("US.100");
    let mut both = text(OLD, "wamid.u.2", T + 10, "it's me");
    both["from_user_id"] = json!("US.100");
    post_all(
        &app,
        &[change(
            "messages",
            json!([contact("", Some("US.100"), "Bo")]),
            "messages",
            vec![alone],
        )],
    )
    .await;
    let first = app
        .scalar("SELECT id FROM contacts WHERE phone = 'bsuid:US.100'")
        .await;
    post_all(
        &app,
        &[change(
            "messages",
            json!([contact(OLD, Some("US.100"), "Bo")]),
            "messages",
            vec![both],
        )],
    )
    .await;
    assert_eq!(app.scalar("SELECT COUNT(*) FROM contacts").await, 1);
    assert_eq!(
        app.scalar(&format!(
            "SELECT id FROM contacts WHERE phone = '{OLD}' AND user_id = 'US.100'"
        ))
        .await,
        first
    );
    assert_eq!(
        app.scalar("SELECT message_count FROM conversations").await,
        2
    );

    // WhatsApp regenerated the user id; then the person's identity key changed.
    post_all(
        &app,
        &[
            system(
                OLD,
                "wamid.sys.2",
                T + 20,
                json!({"body": "User Bo changed their user id", "user_id": "US.200", "type": "user_changed_user_id"}),
            ),
            system(
                OLD,
                "wamid.sys.3",
                T + 30,
                json!({"body": "Bo's security code changed", "identity": "h-1", "type": "customer_identity_changed"}),
            ),
        ],
    )
    .await;
    assert_eq!(app.scalar("SELECT COUNT(*) FROM contacts").await, 1);
    assert_eq!(
        app.text("SELECT user_id FROM contacts").await.as_deref(),
        Some("US.200")
    );
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM contacts WHERE identity_changed_at IS NOT NULL")
            .await,
        1
    );
    let kinds: Vec<Value> = identity_of(&app, first)
        .await
        .into_iter()
        .map(|c| c["kind"].clone())
        .collect();
    assert_eq!(
        kinds,
        [
            json!("linked"),
            json!("user_changed_user_id"),
            json!("identity_changed")
        ]
    );
    app.stop().await;
}

/// Two participants write in a group: one conversation with the group, each message naming
/// its writer, and no private conversation for either. An operator's reply goes to the group;
/// its statuses, several per webhook, land on it.
async fn a_group_is_one_conversation_with_its_senders_and_statuses(backend: Backend) {
    let graph = crate::fakes::graph().await;
    let graph_base = graph.base.clone();
    let app = TestApp::start_with(backend, move |c| {
        c.graph.base_url = graph_base;
        c.accounts[0].access_token = Some("acme-graph-token".into());
    })
    .await;
    let now = chrono::Utc::now().timestamp();
    let mut a = text(OLD, "wamid.g.1", now - 20, "hi all");
    a["group_id"] = json!(GROUP);
    let mut b = text(NEW, "wamid.g.2", now - 10, "hello");
    b["group_id"] = json!(GROUP);
    post_all(
        &app,
        &[change(
            "messages",
            json!([contact(OLD, None, "Ana"), contact(NEW, None, "Ben")]),
            "messages",
            vec![a, b],
        )],
    )
    .await;
    assert_eq!(app.scalar("SELECT COUNT(*) FROM conversations").await, 1);
    assert_eq!(
        app.text("SELECT phone FROM contacts").await.as_deref(),
        Some(format!("group:{GROUP}").as_str())
    );
    let conv = app.scalar("SELECT id FROM conversations").await;
    let (_, operator) = user_with_token(&app, "acme", "otto@acme.test", Role::Operator).await;
    let (status, body) = call(
        &app,
        Method::GET,
        &format!("/api/v1/conversations/{conv}"),
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["conversation"]["group_id"], GROUP);
    let senders: Vec<(Value, Value)> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["sender"]["phone"].clone(), m["sender"]["name"].clone()))
        .collect();
    assert_eq!(
        senders,
        [(json!(OLD), json!("Ana")), (json!(NEW), json!("Ben"))]
    );

    let (status, sent) = call(
        &app,
        Method::POST,
        "/api/v1/messages",
        Some(&operator),
        Some(json!({"conversation_id": conv, "phone_number_id": ACME_PNID, "text": "Hi both", "idempotency_key": "g1"})),
    )
    .await;
    assert_eq!(status, 201, "{sent}");
    let wamid = sent["wamid"].as_str().unwrap().to_owned();
    let send = graph
        .requests()
        .into_iter()
        .find(|(p, b)| p.ends_with("/messages") && b["type"] == "text")
        .unwrap()
        .1;
    assert_eq!(send["recipient_type"], "group");
    assert_eq!(send["to"], GROUP);

    // delivered and read come aggregated: one status per participant, all in one webhook.
    let status_of = |st: &str, participant: &str| {
        json!({"id": wamid, "status": st, "timestamp": now.to_string(), "recipient_id": GROUP,
               "recipient_type": "group", "recipient_participant_id": participant})
    };
    post_all(
        &app,
        &[
            change(
                "messages",
                json!([]),
                "statuses",
                vec![status_of("delivered", OLD), status_of("delivered", NEW)],
            ),
            change(
                "messages",
                json!([]),
                "statuses",
                vec![status_of("read", OLD), status_of("read", NEW)],
            ),
        ],
    )
    .await;
    assert_eq!(
        app.text(&format!(
            "SELECT status FROM messages WHERE wamid = '{wamid}'"
        ))
        .await
        .as_deref(),
        Some("read")
    );
    assert_eq!(app.scalar("SELECT COUNT(*) FROM contacts").await, 1);
    assert_eq!(app.scalar("SELECT COUNT(*) FROM conversations").await, 1);
    assert_eq!(
        app.scalar("SELECT message_count FROM conversations").await,
        3
    );
    app.stop().await;
}
