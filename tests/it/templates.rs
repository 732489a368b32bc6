//! Message templates against a local Graph API fake that pages its catalog and records sends:
//! the catalog synced (start-up, API, CLI), kept current by the four template webhooks (told
//! apart by their keys), template sends checked before anything leaves and sent once per key
//! across a restart, 131050 marking the contact opted out, and leads sent one template each
//! per campaign key with a dry run.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wahook::store::users::Role;

use crate::{
    agent::{CUSTOMER, now_ts, text},
    api::{call, user_with_token},
    both_backends,
    common::{ACME_PNID, ACME_SECRET, Backend, GLOBEX_SECRET, TestApp},
    fakes::{self, Fake, Reply, is_template},
};

both_backends!(
    the_catalog_is_synced_page_by_page_and_kept_current_by_webhooks,
    a_template_send_is_checked_before_it_leaves_and_sent_once,
    leads_get_one_template_each_per_campaign_key,
    the_templates_sync_command_reads_the_catalog,
    a_tenant_claiming_another_tenants_waba_changes_only_its_own_catalog,
);

pub(crate) const WABA: &str = "102290129340398";

/// A catalog of five templates (three pages at the fake's two per page).
pub(crate) fn catalog() -> Vec<Value> {
    vec![
        json!({"id": "9001", "name": "reengage", "language": "en_US", "status": "APPROVED", "category": "MARKETING",
               "parameter_format": "POSITIONAL", "quality_score": {"score": "GREEN"},
               "components": [{"type": "BODY", "text": "Hi {{1}}, still interested in {{2}}?"}, {"type": "FOOTER", "text": "Acme Shop"}]}),
        json!({"id": "9002", "name": "order_update", "language": "en_US", "status": "APPROVED", "category": "UTILITY",
               "parameter_format": "NAMED",
               "components": [{"type": "BODY", "text": "Order {{order_id}} is {{state}}."}]}),
        json!({"id": "9003", "name": "spring_sale", "language": "en_US", "status": "PAUSED", "category": "MARKETING",
               "parameter_format": "POSITIONAL", "components": [{"type": "BODY", "text": "Spring sale!"}]}),
        json!({"id": "9004", "name": "hello", "language": "es", "status": "APPROVED", "category": "UTILITY",
               "parameter_format": "POSITIONAL", "components": [{"type": "BODY", "text": "Hola, ¿seguimos?"}]}),
        json!({"id": "9005", "name": "promo_photo", "language": "en_US", "status": "APPROVED", "category": "MARKETING",
               "parameter_format": "POSITIONAL",
               "components": [{"type": "HEADER", "format": "IMAGE"}, {"type": "BODY", "text": "New in: {{1}}"},
                              {"type": "BUTTONS", "buttons": [{"type": "URL", "text": "Shop", "url": "https://shop.test/{{1}}"}]}]}),
    ]
}

/// An app whose first Acme number has the WABA and a Graph token (no agent), with the fake's
/// catalog.
pub(crate) async fn template_app(backend: Backend, graph: &Fake) -> TestApp {
    graph.catalog(catalog());
    let base = graph.base.clone();
    TestApp::start_with(backend, move |c| {
        c.graph.base_url = base;
        c.accounts[0].waba_id = Some(WABA.into());
        c.accounts[0].access_token = Some("graph-token".into());
    })
    .await
}

pub(crate) async fn wait_catalog(app: &TestApp, n: i64) {
    app.wait_for("SELECT COUNT(*) FROM message_templates", n)
        .await;
}

/// A template webhook (keyed by the WABA, no phone number).
fn template_webhook(waba: &str, field: &str, value: Value) -> String {
    json!({"object": "whatsapp_business_account", "entry": [{"id": waba, "time": 1_767_225_600,
        "changes": [{"field": field, "value": value}]}]})
    .to_string()
}

fn template_sends(graph: &Fake) -> Vec<Value> {
    graph
        .requests()
        .into_iter()
        .filter(|(p, b)| is_template(p, b))
        .map(|(_, b)| b)
        .collect()
}

async fn the_catalog_is_synced_page_by_page_and_kept_current_by_webhooks(backend: Backend) {
    let graph = fakes::graph().await;
    let app = template_app(backend, &graph).await;
    // At start-up, every page.
    wait_catalog(&app, 5).await;
    let pages = graph
        .requests()
        .iter()
        .filter(|(p, _)| p.ends_with("/message_templates"))
        .count();
    assert_eq!(pages, 3, "three pages of two");
    let (_, admin) = user_with_token(&app, "acme", "ada@acme.test", Role::Admin).await;
    let (_, viewer) = user_with_token(&app, "acme", "vera@acme.test", Role::Viewer).await;
    let (status, body) = call(
        &app,
        Method::POST,
        "/api/v1/templates/sync",
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = call(
        &app,
        Method::POST,
        "/api/v1/templates/sync",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["templates"], 5);
    assert_eq!(body["pages"], 3);
    assert_eq!(body["errors"], json!([]));
    // The list shows each template's placeholders.
    let (status, list) = call(&app, Method::GET, "/api/v1/templates", Some(&viewer), None).await;
    assert_eq!(status, StatusCode::OK);
    let by = |name: &str| {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(by("reengage")["placeholders"]["body"], json!(["1", "2"]));
    assert_eq!(by("reengage")["quality"], "GREEN");
    assert_eq!(
        by("order_update")["placeholders"]["body"],
        json!(["order_id", "state"])
    );
    assert_eq!(by("promo_photo")["placeholders"]["header_media"], "IMAGE");
    assert_eq!(by("promo_photo")["placeholders"]["url_buttons"], json!([0]));
    // Another workspace sees none of them.
    let (_, globex) = user_with_token(&app, "globex", "gus@globex.test", Role::Viewer).await;
    let (_, other) = call(&app, Method::GET, "/api/v1/templates", Some(&globex), None).await;
    assert_eq!(other["items"], json!([]));

    // The four webhooks, told apart by their keys.
    let hooks = [
        // Paused, with its reason; the id is an integer.
        template_webhook(
            WABA,
            "message_template_status_update",
            json!({
            "event": "PAUSED", "message_template_id": 9001, "message_template_name": "reengage",
            "message_template_language": "en_US", "reason": "NONE", "message_template_category": "MARKETING",
            "other_info": {"title": "FIRST_PAUSE", "description": "Paused for 3 hours: low quality"}}),
        ),
        // Meta's own sample labels the quality update as a status update.
        template_webhook(
            WABA,
            "message_template_status_update",
            json!({
            "previous_quality_score": "GREEN", "new_quality_score": "YELLOW", "message_template_id": 9001,
            "message_template_name": "reengage", "message_template_language": "en_US"}),
        ),
        template_webhook(
            WABA,
            "message_template_components_update",
            json!({
            "message_template_id": 9002, "message_template_name": "order_update", "message_template_language": "en_US",
            "message_template_element": "Your order {{order_id}} is now {{state}}.", "message_template_footer": "Thanks"}),
        ),
        template_webhook(
            WABA,
            "template_category_update",
            json!({
            "message_template_id": 9004, "message_template_name": "hello", "message_template_language": "es",
            "previous_category": "UTILITY", "new_category": "MARKETING"}),
        ),
        // A template created in Meta's tools: its first news is its status.
        template_webhook(
            WABA,
            "message_template_status_update",
            json!({
            "event": "APPROVED", "message_template_id": 9010, "message_template_name": "brand_new",
            "message_template_language": "de", "reason": null, "message_template_category": "UTILITY"}),
        ),
    ];
    for h in hooks {
        let res = app.post_meta(h, ACME_SECRET).await;
        assert_eq!(res.status(), 200);
    }
    app.wait_processed(5).await;
    assert_eq!(
        app.text("SELECT status FROM message_templates WHERE name = 'reengage'")
            .await
            .unwrap(),
        "PAUSED"
    );
    assert!(
        app.text("SELECT reason FROM message_templates WHERE name = 'reengage'")
            .await
            .unwrap()
            .contains("low quality")
    );
    assert_eq!(
        app.text("SELECT quality FROM message_templates WHERE name = 'reengage'")
            .await
            .unwrap(),
        "YELLOW"
    );
    assert!(
        app.text("SELECT components FROM message_templates WHERE name = 'order_update'")
            .await
            .unwrap()
            .contains("is now {{state}}")
    );
    assert_eq!(
        app.text("SELECT category FROM message_templates WHERE name = 'hello'")
            .await
            .unwrap(),
        "MARKETING"
    );
    assert_eq!(
        app.count("message_templates").await,
        6,
        "brand_new was added"
    );

    // Signed by another tenant's secret (Globex), naming Acme's WABA: refused at the door.
    let forged = template_webhook(
        WABA,
        "message_template_status_update",
        json!({
        "event": "DISABLED", "message_template_id": 9002, "message_template_name": "order_update",
        "message_template_language": "en_US", "reason": "NONE"}),
    );
    let res = app.post_meta(forged, GLOBEX_SECRET).await;
    assert_ne!(res.status(), 200);
    assert_eq!(
        app.text("SELECT status FROM message_templates WHERE name = 'order_update'")
            .await
            .unwrap(),
        "APPROVED"
    );
    // A sync brings the Graph API's truth back, and a template it no longer lists is DELETED.
    let mut shorter = catalog();
    shorter.retain(|t| t["name"] != "hello");
    graph.catalog(shorter);
    let (_, body) = call(
        &app,
        Method::POST,
        "/api/v1/templates/sync",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(
        body["gone"], 2,
        "hello and brand_new are no longer listed: {body}"
    );
    assert_eq!(
        app.text("SELECT status FROM message_templates WHERE name = 'hello'")
            .await
            .unwrap(),
        "DELETED"
    );
    app.stop().await;
}

/// A conversation whose window closed: Ana wrote 30 hours ago.
async fn closed_window(app: &TestApp) -> i64 {
    let old = now_ts() - 30 * 3600;
    let res = app
        .post_meta(text("wamid.t.old", "tell me more", old, "t0"), ACME_SECRET)
        .await;
    assert_eq!(res.status(), 200);
    app.wait_processed(1).await;
    app.scalar("SELECT id FROM conversations").await
}

fn send_body(conversation_id: i64, template: Value, key: &str) -> Value {
    json!({"conversation_id": conversation_id, "phone_number_id": ACME_PNID, "template": template, "idempotency_key": key})
}

async fn a_template_send_is_checked_before_it_leaves_and_sent_once(backend: Backend) {
    let graph = fakes::graph().await;
    let app = template_app(backend, &graph).await;
    wait_catalog(&app, 5).await;
    let conv = closed_window(&app).await;
    let (_, op) = user_with_token(&app, "acme", "otto@acme.test", Role::Operator).await;
    let send = |body: Value| {
        let (app, op) = (&app, op.clone());
        async move { call(app, Method::POST, "/api/v1/messages", Some(&op), Some(body)).await }
    };
    // Outside the window a text is refused; a template is the way.
    let (status, body) =
        send(json!({"conversation_id": conv, "phone_number_id": ACME_PNID, "text": "hi"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "service_window_closed");
    // Refused before anything leaves: missing and extra parameters, named ones, a paused
    // template, one the catalog lacks, a media header not given.
    let (status, body) = send(send_body(
        conv,
        json!({"name": "reengage", "language": "en_US", "parameters": ["Ana"]}),
        "k1",
    ))
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing {{2}}"),
        "{body}"
    );
    let (status, body) = send(send_body(conv, json!({"name": "order_update", "language": "en_US", "parameters": {"order_id": "42", "colour": "red"}}), "k2")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("missing state") && message.contains("extra colour"),
        "{message}"
    );
    let (status, body) = send(send_body(
        conv,
        json!({"name": "spring_sale", "language": "en_US"}),
        "k3",
    ))
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "template_not_approved");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("PAUSED")
    );
    let (status, body) = send(send_body(
        conv,
        json!({"name": "reengage", "language": "fr"}),
        "k4",
    ))
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "template_not_found");
    let (status, _) = send(send_body(
        conv,
        json!({"name": "promo_photo", "language": "en_US", "parameters": ["shoes"]}),
        "k5",
    ))
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        template_sends(&graph).is_empty(),
        "nothing left for a refused send"
    );
    assert_eq!(
        app.count("outbound_messages").await,
        0,
        "and nothing was recorded"
    );

    // A good one leaves once, with its components, and reads naturally in the conversation.
    let good = send_body(
        conv,
        json!({"name": "reengage", "language": "en_US", "parameters": ["Ana", "the blue bike"]}),
        "reengage-ana-1",
    );
    let (status, body) = send(good.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let sent = template_sends(&graph);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["to"], CUSTOMER);
    assert_eq!(sent[0]["template"]["name"], "reengage");
    assert_eq!(sent[0]["template"]["language"]["code"], "en_US");
    assert_eq!(
        sent[0]["template"]["components"][0]["parameters"][1]["text"],
        "the blue bike"
    );
    app.wait_for(
        "SELECT COUNT(*) FROM messages WHERE message_type = 'template'",
        1,
    )
    .await;
    assert_eq!(
        app.text("SELECT content FROM messages WHERE message_type = 'template'")
            .await
            .unwrap(),
        "Hi Ana, still interested in the blue bike?\n\nAcme Shop"
    );
    let (status, body) = send(good.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], "already_recorded");
    // A restart changes nothing: the key is in the database.
    let (test_db, config) = app.stop().await;
    let app = TestApp::start_on(test_db, config).await;
    let (status, body) = call(
        &app,
        Method::POST,
        "/api/v1/messages",
        Some(&op),
        Some(good),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        template_sends(&graph).len(),
        1,
        "one send per key, across the restart"
    );

    // Graph's 131050 (the person stopped marketing messages): kept with its code, the contact
    // is marked opted out, and the next marketing template is refused before it leaves.
    graph.script([Reply::status(400, json!({"error": {"message": "(#131050) Unable to deliver the message. This recipient has chosen to stop receiving marketing messages on WhatsApp from your business", "type": "OAuthException", "code": 131050}}))]);
    let (status, body) = call(
        &app,
        Method::POST,
        "/api/v1/messages",
        Some(&op),
        Some(send_body(
            conv,
            json!({"name": "reengage", "language": "en_US", "parameters": ["Ana", "bikes"]}),
            "reengage-ana-2",
        )),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("131050")
    );
    assert_eq!(
        app.text("SELECT error_code FROM outbound_messages WHERE turn_key LIKE '%reengage-ana-2'")
            .await
            .unwrap(),
        "131050"
    );
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM contacts WHERE marketing_opt_out = true")
            .await,
        1
    );
    let before = template_sends(&graph).len();
    let (status, body) = call(
        &app,
        Method::POST,
        "/api/v1/messages",
        Some(&op),
        Some(send_body(
            conv,
            json!({"name": "reengage", "language": "en_US", "parameters": ["Ana", "bikes"]}),
            "reengage-ana-3",
        )),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "marketing_opted_out");
    assert_eq!(template_sends(&graph).len(), before);
    // A wrong type is a 400, not a send.
    let (status, _) = call(&app, Method::POST, "/api/v1/messages", Some(&op),
        Some(send_body(conv, json!({"name": "order_update", "language": "en_US", "parameters": {"order_id": 42, "state": ["x"]}}), "typed"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A utility template still goes.
    let (status, _) = call(&app, Method::POST, "/api/v1/messages", Some(&op),
        Some(send_body(conv, json!({"name": "order_update", "language": "en_US", "parameters": {"order_id": "42", "state": "shipped"}}), "order-42"))).await;
    assert_eq!(status, StatusCode::CREATED);
    // Meta says the template is paused (132015): the catalog learns it at once, and the next
    // send is refused before it leaves.
    graph.script([Reply::status(400, json!({"error": {"message": "(#132015) Cannot send message as the template has been paused", "type": "OAuthException", "code": 132015}}))]);
    let (status, _) = call(&app, Method::POST, "/api/v1/messages", Some(&op),
        Some(send_body(conv, json!({"name": "order_update", "language": "en_US", "parameters": {"order_id": "43", "state": "late"}}), "order-43"))).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        app.text("SELECT status FROM message_templates WHERE name = 'order_update'")
            .await
            .unwrap(),
        "PAUSED"
    );
    let before = template_sends(&graph).len();
    let (status, body) = call(&app, Method::POST, "/api/v1/messages", Some(&op),
        Some(send_body(conv, json!({"name": "order_update", "language": "en_US", "parameters": {"order_id": "44", "state": "late"}}), "order-44"))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(template_sends(&graph).len(), before);
    // Another workspace's operator cannot send into this conversation.
    let (_, globex) = user_with_token(&app, "globex", "gus@globex.test", Role::Operator).await;
    let (status, _) = call(&app, Method::POST, "/api/v1/messages", Some(&globex),
        Some(send_body(conv, json!({"name": "order_update", "language": "en_US", "parameters": {"order_id": "1", "state": "x"}}), "x"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let m = app.metrics_text().await;
    assert!(
        m.contains("wahook_templates_sent_total{outcome=\"template_parameters\"}"),
        "refusals are counted"
    );
    app.stop().await;
}

/// A Meta message from `from` at `ts`.
fn message_from(from: &str, name: &str, wamid: &str, ts: i64) -> String {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15551111111", "phone_number_id": ACME_PNID},
        "contacts": [{"profile": {"name": name}, "wa_id": from}],
        "messages": [{"from": from, "id": wamid, "timestamp": ts.to_string(), "type": "text", "text": {"body": "hello"}}]}}]}]})
    .to_string()
}

fn stop_marketing(from: &str, ts: i64) -> String {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "user_preferences", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15551111111", "phone_number_id": ACME_PNID},
        "contacts": [{"profile": {"name": "x"}, "wa_id": from}],
        "user_preferences": [{"wa_id": from, "detail": "User requested to stop marketing messages", "category": "marketing_messages", "value": "stop", "timestamp": ts}]}}]}]})
    .to_string()
}

async fn leads_get_one_template_each_per_campaign_key(backend: Backend) {
    let graph = fakes::graph().await;
    let app = template_app(backend, &graph).await;
    wait_catalog(&app, 5).await;
    let old = now_ts() - 3 * 24 * 3600;
    // Three leads: Bea quiet for three days, Cy too but opted out of marketing, Dee writing now.
    for body in [
        message_from("4915100000001", "Bea", "wamid.l.1", old),
        message_from("4915100000002", "Cy", "wamid.l.2", old),
        stop_marketing("4915100000002", old + 10),
        message_from("4915100000003", "Dee", "wamid.l.3", now_ts()),
    ] {
        assert_eq!(app.post_meta(body, ACME_SECRET).await.status(), 200);
    }
    app.wait_processed(4).await;
    let (_, op) = user_with_token(&app, "acme", "otto@acme.test", Role::Operator).await;
    let (_, viewer) = user_with_token(&app, "acme", "vera@acme.test", Role::Viewer).await;
    let campaign = |dry_run: bool| {
        json!({"phone_number_id": ACME_PNID, "leads": {"filter": "not_contacted", "days": 2},
               "template": {"name": "reengage", "language": "en_US", "parameters": ["{name}", "our spring models"]},
               "key": "spring-2026", "dry_run": dry_run})
    };
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/v1/leads/follow-up",
        Some(&viewer),
        Some(campaign(true)),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, plan) = call(
        &app,
        Method::POST,
        "/api/v1/leads/follow-up",
        Some(&op),
        Some(campaign(true)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    let names = |list: &Value| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["name"].as_str().unwrap().to_owned(),
                    l["reason"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&plan["send"]), vec![("Bea".into(), "".into())]);
    assert_eq!(
        names(&plan["skipped"]),
        vec![
            ("Cy".into(), "marketing_opted_out".into()),
            ("Dee".into(), "service_window_open".into())
        ]
    );
    assert!(template_sends(&graph).is_empty(), "a dry run sends nothing");
    // A paused template is refused for everyone; so are parameters that do not fit.
    let mut paused = campaign(true);
    paused["template"] = json!({"name": "spring_sale", "language": "en_US"});
    let (status, body) = call(
        &app,
        Method::POST,
        "/api/v1/leads/follow-up",
        Some(&op),
        Some(paused),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let mut wrong = campaign(false);
    wrong["template"]["parameters"] = json!(["{name}"]);
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/v1/leads/follow-up",
        Some(&op),
        Some(wrong),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // The real run: the Graph API says "throughput limit" once; the send waits and goes.
    graph.script([Reply::status(400, json!({"error": {"message": "(#130429) Rate limit hit", "type": "OAuthException", "code": 130429}}))]);
    let (status, plan) = call(
        &app,
        Method::POST,
        "/api/v1/leads/follow-up",
        Some(&op),
        Some(campaign(false)),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{plan}");
    graph.wait_for(2, is_template).await;
    app.wait_for(
        "SELECT COUNT(*) FROM outbound_messages WHERE state = 'sent'",
        1,
    )
    .await;
    let sent = template_sends(&graph);
    assert_eq!(sent[1]["to"], "4915100000001");
    assert_eq!(
        sent[1]["template"]["components"][0]["parameters"][0]["text"],
        "Bea"
    );
    // Her message row (which moves last_contact_at) is stored right after the send's record.
    app.wait_for(
        "SELECT COUNT(*) FROM messages WHERE message_type = 'template'",
        1,
    )
    .await;
    // Bea was contacted now: "not contacted in 2 days" no longer finds her.
    let (_, plan) = call(
        &app,
        Method::POST,
        "/api/v1/leads/follow-up",
        Some(&op),
        Some(campaign(true)),
    )
    .await;
    assert!(
        !names(&plan["send"])
            .iter()
            .chain(names(&plan["skipped"]).iter())
            .any(|(n, _)| n == "Bea")
    );
    // Asked for everyone again with the same key: Bea is skipped, nothing more leaves.
    let mut again = campaign(false);
    again["leads"]["days"] = json!(0);
    let (status, plan) = call(
        &app,
        Method::POST,
        "/api/v1/leads/follow-up",
        Some(&op),
        Some(again),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(plan["send"], json!([]));
    assert!(names(&plan["skipped"]).contains(&("Bea".into(), "already_sent".into())));
    assert_eq!(template_sends(&graph).len(), 2, "one throttled, one sent");
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM messages WHERE message_type = 'template'")
            .await,
        1
    );
    app.stop().await;
}

async fn the_templates_sync_command_reads_the_catalog(backend: Backend) {
    let graph = fakes::graph().await;
    graph.catalog(catalog());
    let test_db = crate::common::TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wahook.toml");
    std::fs::write(
        &file,
        format!(
            r#"[database]
url = "{url}"
schema = "{schema}"

[graph]
base_url = "{graph}"

[[accounts]]
workspace = "acme"
phone_number_id = "{ACME_PNID}"
waba_id = "{WABA}"
app_secret = "s"
verify_token = "v"
access_token = "graph-token"
"#,
            url = test_db.url,
            schema = test_db.schema,
            graph = graph.base,
        ),
    )
    .unwrap();
    let out = crate::foundation::wahook()
        .args(["templates", "sync"])
        .env("WAHOOK_CONFIG", &file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("5 templates from 1 WhatsApp Business Accounts (3 pages)"),
        "{stdout}"
    );
    let mut config = crate::common::test_config(&test_db);
    config.accounts.truncate(1);
    let app = TestApp::start_on(test_db, config).await;
    assert_eq!(app.count("message_templates").await, 5);
    app.stop().await;
}

/// Globex's admin gives Globex's number Acme's WABA id (nothing checks a WABA id) and signs a
/// status update for it with Globex's own secret: it is applied in Globex's workspace only,
/// Acme's catalog does not move, and Acme's own template webhooks still pass (one secret for
/// all of a WABA's accounts used to refuse them all as cross-tenant).
async fn a_tenant_claiming_another_tenants_waba_changes_only_its_own_catalog(backend: Backend) {
    let graph = fakes::graph().await;
    graph.catalog(catalog());
    let base = graph.base.clone();
    let app = TestApp::start_with(backend, move |c| {
        c.graph.base_url = base;
        c.accounts[0].waba_id = Some(WABA.into());
        c.accounts[0].access_token = Some("graph-token".into());
        c.accounts[2].waba_id = Some(WABA.into());
    })
    .await;
    wait_catalog(&app, 5).await;
    let forged = template_webhook(
        WABA,
        "message_template_status_update",
        json!({
        "event": "DISABLED", "message_template_id": 9002, "message_template_name": "order_update",
        "message_template_language": "en_US", "reason": "NONE", "message_template_category": "UTILITY"}),
    );
    let res = app.post_meta(forged, GLOBEX_SECRET).await;
    assert_eq!(
        res.status(),
        200,
        "validly signed by Globex for its own number's WABA"
    );
    app.wait_processed(1).await;
    let acme = app
        .text("SELECT w.name FROM message_templates t JOIN workspaces w ON w.id = t.workspace_id WHERE t.status = 'DISABLED'")
        .await;
    assert_eq!(
        acme.as_deref(),
        Some("globex"),
        "only Globex's catalog has it"
    );
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM message_templates t JOIN workspaces w ON w.id = t.workspace_id WHERE w.name = 'acme' AND t.status = 'APPROVED'").await,
        4,
        "Acme's catalog is as the Graph API gave it"
    );
    // And Acme's own webhooks for its WABA still pass and act in Acme's catalog.
    let paused = template_webhook(
        WABA,
        "message_template_status_update",
        json!({
        "event": "PAUSED", "message_template_id": 9001, "message_template_name": "reengage",
        "message_template_language": "en_US", "reason": "NONE"}),
    );
    assert_eq!(app.post_meta(paused, ACME_SECRET).await.status(), 200);
    app.wait_processed(2).await;
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM message_templates t JOIN workspaces w ON w.id = t.workspace_id WHERE w.name = 'acme' AND t.status = 'PAUSED' AND t.name = 'reengage'").await,
        1
    );
    app.stop().await;
}
