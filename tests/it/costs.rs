//! `statuses[].pricing` is kept on the outbound message and summed per day, category and type
//! by `GET /api/v1/stats/costs`.

use reqwest::Method;
use serde_json::{Value, json};
use wahook::store::users::Role;

use crate::{
    api::{call, user_with_token},
    both_backends,
    common::{ACME_PNID, ACME_SECRET, Backend, TestApp},
};

both_backends!(pricing_is_kept_and_summed_per_category);

const CUSTOMER: &str = "4915177770001";

fn value(key: &str, objects: Vec<Value>) -> String {
    let field = if key == "message_echoes" {
        "smb_message_echoes"
    } else {
        "messages"
    };
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": field, "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15551111111", "phone_number_id": ACME_PNID},
        key: objects}}]}]})
    .to_string()
}

fn status(wamid: &str, status: &str, ts: i64, category: &str, kind: &str) -> Value {
    json!({"id": wamid, "status": status, "timestamp": ts.to_string(), "recipient_id": CUSTOMER,
           "pricing": {"billable": true, "pricing_model": "PMP", "category": category, "type": kind}})
}

async fn pricing_is_kept_and_summed_per_category(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = chrono::Utc::now().timestamp() - 3600;
    let echo = |id: &str| {
        json!({"from": "15551111111", "to": CUSTOMER, "id": id,
        "timestamp": t.to_string(), "type": "text", "text": {"body": "hi"}})
    };
    let bodies = [
        value("message_echoes", vec![echo("wamid.p.1"), echo("wamid.p.2")]),
        // sent and delivered both carry pricing: counted once per message.
        value(
            "statuses",
            vec![
                status("wamid.p.1", "sent", t + 1, "marketing", "regular"),
                status("wamid.p.1", "delivered", t + 2, "marketing", "regular"),
            ],
        ),
        value(
            "statuses",
            vec![status(
                "wamid.p.2",
                "sent",
                t + 1,
                "service",
                "free_customer_service",
            )],
        ),
        // A status before its message keeps its pricing on the placeholder.
        value(
            "statuses",
            vec![status("wamid.p.3", "sent", t + 1, "utility", "regular")],
        ),
        value("message_echoes", vec![echo("wamid.p.3")]),
    ];
    for b in &bodies {
        assert_eq!(app.post_meta(b.clone(), ACME_SECRET).await.status(), 200);
    }
    app.wait_processed(bodies.len() as i64).await;
    assert_eq!(
        app.strings("SELECT pricing_category FROM messages WHERE wamid = 'wamid.p.1'")
            .await,
        vec!["marketing".to_owned()]
    );
    assert_eq!(
        app.strings("SELECT pricing_model FROM messages WHERE wamid = 'wamid.p.3'")
            .await,
        vec!["PMP".to_owned()]
    );
    let (_, token) = user_with_token(&app, "acme", "vera@acme.test", Role::Viewer).await;
    let (status, costs) = call(&app, Method::GET, "/api/v1/stats/costs", Some(&token), None).await;
    assert_eq!(status, 200, "{costs}");
    assert_eq!(costs["totals"]["marketing"]["regular"], 1, "{costs}");
    assert_eq!(
        costs["totals"]["service"]["free_customer_service"], 1,
        "{costs}"
    );
    assert_eq!(costs["totals"]["utility"]["regular"], 1, "{costs}");
    let day = chrono::DateTime::from_timestamp(t, 0)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string();
    assert!(
        costs["days"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["day"] == day.as_str()
                && d["category"] == "marketing"
                && d["messages"] == 1),
        "{costs}"
    );
    // Another workspace sees none of it.
    let (_, other) = user_with_token(&app, "globex", "gus@globex.test", Role::Viewer).await;
    let (_, theirs) = call(&app, Method::GET, "/api/v1/stats/costs", Some(&other), None).await;
    assert_eq!(theirs["days"], json!([]), "{theirs}");
    app.stop().await;
}
