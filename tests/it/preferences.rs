//! `user_preferences`: a marketing opt-out is applied to the contact (and shown by the API);
//! `resume` clears it; the newest preference wins whatever order they come in.

use reqwest::Method;
use serde_json::json;
use wahook::store::users::Role;

use crate::{
    api::{call, user_with_token},
    both_backends,
    common::{ACME_PNID, ACME_SECRET, Backend, TestApp},
};

both_backends!(marketing_opt_outs_are_applied_to_the_contact);

const CUSTOMER: &str = "4915166660001";

fn preference(value: &str, ts: i64, tag: &str) -> String {
    json!({"object": "whatsapp_business_account", "entry": [{"id": tag, "changes": [{"field": "user_preferences", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15551111111", "phone_number_id": ACME_PNID},
        "contacts": [{"profile": {"name": "Ana"}, "wa_id": CUSTOMER, "user_id": "DE.1234"}],
        "user_preferences": [{"wa_id": CUSTOMER, "user_id": "DE.1234",
            "detail": "User requested to stop marketing messages",
            "category": "marketing_messages", "value": value, "timestamp": ts}]}}]}]})
    .to_string()
}

async fn opted_out(app: &TestApp) -> (i64, Option<chrono::DateTime<chrono::Utc>>) {
    (
        app.scalar(&format!(
            "SELECT CASE WHEN marketing_opt_out THEN 1 ELSE 0 END FROM contacts WHERE phone = '{CUSTOMER}'"
        ))
        .await,
        app.db_time(&format!(
            "SELECT marketing_opt_out_at FROM contacts WHERE phone = '{CUSTOMER}'"
        ))
        .await,
    )
}

async fn marketing_opt_outs_are_applied_to_the_contact(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = 1_767_225_600;
    let post = |body: String| {
        let app = &app;
        async move {
            assert_eq!(app.post_meta(body, ACME_SECRET).await.status(), 200);
        }
    };
    post(preference("stop", t, "1")).await;
    app.wait_processed(1).await;
    let (flag, since) = opted_out(&app).await;
    assert_eq!(flag, 1);
    assert_eq!(since.map(|s| s.timestamp()), Some(t));
    // The API shows it.
    let (_, token) = user_with_token(&app, "acme", "vera@acme.test", Role::Viewer).await;
    let (status, contacts) = call(&app, Method::GET, "/api/v1/contacts", Some(&token), None).await;
    assert_eq!(status, 200, "{contacts}");
    let contact = contacts["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["phone"] == CUSTOMER)
        .expect("the contact is listed")
        .clone();
    assert_eq!(contact["marketing_opt_out"], true, "{contact}");
    // `resume` clears it; an older `stop` delivered late changes nothing.
    post(preference("resume", t + 100, "2")).await;
    post(preference("stop", t + 50, "3")).await;
    app.wait_processed(3).await;
    assert_eq!(opted_out(&app).await, (0, None));
    // Nothing about it is a message.
    assert_eq!(app.count("messages").await, 0);
    app.stop().await;
}
