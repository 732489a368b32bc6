//! The operator API's people and auth: tokens, roles, workspace scoping, deactivation, bad
//! input, the bad-token limit, the audit log, and the CLI bootstrap.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wahook::store::{
    accounts, tokens,
    users::{self, NewUser, Role},
};

use crate::{
    both_backends,
    common::{
        ACME_PNID, ACME_SECRET, Backend, FAILPOINTS, GLOBEX_PNID, GLOBEX_SECRET, TestApp, TestDb,
        fixture, meta_text, test_config,
    },
    foundation::wahook,
};

both_backends!(
    every_documented_route_checks_the_role,
    a_dlq_row_retried_after_its_fault_is_removed_ends_resolved,
    each_role_is_allowed_and_refused_where_it_should_be,
    another_workspace_is_invisible_and_untouched,
    a_deactivated_users_token_stops_at_once,
    bad_requests_get_400_with_a_message,
    the_cli_bootstraps_the_first_admin,
    dlq_rows_are_listed_retried_resolved_and_discarded,
    conversations_are_listed_read_and_handed_to_a_person,
    events_are_read_and_replayed_without_doubling_anything,
    lead_filters_and_contact_edits_work_on_real_webhooks,
    accounts_are_managed_with_write_only_secrets,
    operators_send_once_and_record_outside_sends,
    the_monitoring_views_answer_per_workspace,
);

/// A user of `workspace` with `role`, and a token for it (through the store, as the CLI does).
pub(crate) async fn user_with_token(
    app: &TestApp,
    workspace: &str,
    email: &str,
    role: Role,
) -> (i64, String) {
    let ws = accounts::ensure_workspace(&app.db, workspace)
        .await
        .unwrap();
    let user = users::create(
        &app.db,
        NewUser {
            workspace_id: ws,
            name: email.split('@').next().unwrap(),
            email,
            role,
            is_active: true,
        },
        "test",
    )
    .await
    .unwrap();
    let (_, token) = tokens::create(&app.db, ws, user.id, "test", "test")
        .await
        .unwrap();
    (user.id, token)
}

pub(crate) async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = app.client.request(method, app.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Every operation of the served OpenAPI document, for no token and each role: 401, 403 below
/// the operation's role, and neither (nor a 5xx) from it up. An operation missing from the
/// table fails the test, so a new route cannot arrive without its role.
async fn every_documented_route_checks_the_role(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (admin_id, admin) = user_with_token(&app, "acme", "ada@acme.test", Role::Admin).await;
    let (_, operator) = user_with_token(&app, "acme", "otto@acme.test", Role::Operator).await;
    let (_, viewer) = user_with_token(&app, "acme", "vera@acme.test", Role::Viewer).await;
    // operationId → (lowest role, query, body); ids in paths are ids nobody has.
    let table = |op: &str, n: usize| -> Option<(Role, &str, Option<Value>)> {
        use Role::{Admin as A, Operator as O, Viewer as V};
        Some(match op {
            "accounts_list" | "contacts_list" | "conversations_list" | "conversations_one"
            | "dlq_list" | "dlq_one" | "events_list" | "events_one" | "stats_view"
            | "users_list" | "users_one" | "users_me" | "stats_live" | "templates_list"
            | "media_get" => (V, "", None),
            "templates_sync" => (A, "", None),
            "media_upload" => (O, "?phone_number_id=111111111111111", None),
            // The stream would stay open: ended after a second.
            "stream_changes" => (V, "?max_seconds=1", None),
            "leads_follow_up" => (
                O,
                "",
                Some(
                    json!({"phone_number_id": ACME_PNID, "leads": {"filter": "needs_follow_up"},
                            "template": {"name": "none", "language": "en_US"}, "key": "k", "dry_run": true}),
                ),
            ),
            "contacts_lead_filter" => (V, "?filter=needs_follow_up", None),
            "accounts_create" => (
                A,
                "",
                Some(json!({"phone_number_id": format!("19990000{n}"),
                            "app_secret": "app-secret-1", "verify_token": "verify-token-1"})),
            ),
            "accounts_update" => (A, "", Some(json!({"display_phone_number": "+1 555"}))),
            "users_create" => (
                A,
                "",
                Some(json!({"name": "New", "email": format!("new{n}@acme.test")})),
            ),
            "users_update" => (A, "", Some(json!({"name": "Renamed"}))),
            "users_deactivate" | "tokens_revoke" => (A, "", None),
            "tokens_create" => (A, "", Some(json!({"user_id": admin_id, "name": "t"}))),
            "tokens_list" => (A, "?user_id=1", None),
            "contacts_update" => (O, "", Some(json!({"lead_score": 5}))),
            "contacts_identity" => (V, "", None),
            "conversations_set_state" => (O, "", Some(json!({"state": "human"}))),
            "conversations_assign" => (O, "", Some(json!({"user_id": null}))),
            "dlq_bulk_retry" => (O, "", Some(json!({}))),
            "dlq_retry" | "dlq_resolve" | "dlq_discard" => (O, "", None),
            "events_replay" => (O, "", Some(json!({"ids": [999999]}))),
            "messages_send" => (
                O,
                "",
                Some(
                    json!({"conversation_id": 999999, "phone_number_id": ACME_PNID, "text": "hi"}),
                ),
            ),
            "messages_record" => (
                O,
                "",
                Some(json!({"conversation_id": 999999, "wamid": "wamid.x", "text": "hi"})),
            ),
            _ => return None,
        })
    };
    // The document is served without a token.
    let (status, doc) = call(&app, Method::GET, "/api/v1/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let mut checked = 0;
    for (template, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap();
            let (lowest, query, body) = table(id, checked)
                .unwrap_or_else(|| panic!("{id} ({method} {template}) has no row in the table"));
            let path = template
                .replace("{id}", "999999")
                .replace("{view}", "health")
                + query;
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (status, _) = call(&app, method.clone(), &path, None, body.clone()).await;
            assert_eq!(status, 401, "{method} {path} without a token");
            for (role, token) in [
                (Role::Viewer, &viewer),
                (Role::Operator, &operator),
                (Role::Admin, &admin),
            ] {
                let (status, reply) =
                    call(&app, method.clone(), &path, Some(token), body.clone()).await;
                if role >= lowest {
                    assert!(
                        ![401, 403].contains(&status.as_u16()) && !status.is_server_error(),
                        "{role:?} may {method} {path}: {status} {reply}"
                    );
                } else {
                    assert_eq!(status, 403, "{role:?} may not {method} {path}: {reply}");
                    assert_eq!(reply["error"]["code"], "forbidden");
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 39, "every documented operation was checked");
    app.stop().await;
}

/// A real fault parks an event; once it is removed, an operator's retry through the API
/// resolves the row and the message appears in its conversation.
async fn a_dlq_row_retried_after_its_fault_is_removed_ends_resolved(backend: Backend) {
    let _turn = FAILPOINTS.lock().await;
    let wamid = format!("wamid.api.fault.{backend:?}");
    fail::cfg("conversation::apply", &format!("return({wamid})")).unwrap();
    let app = TestApp::start_with(backend, |c| {
        c.processing.max_attempts = 2;
        c.processing.backoff_base_ms = 1;
        c.processing.backoff_max_ms = 2;
        c.processing.dlq_backoff_base_ms = 3_600_000;
        c.processing.dlq_poll_ms = 20;
    })
    .await;
    let (_, operator) = user_with_token(&app, "acme", "otto@acme.test", Role::Operator).await;
    let (_, other) = user_with_token(&app, "globex", "gus@globex.test", Role::Viewer).await;
    // The DLQ screen follows the stream: every change of the row is announced to its
    // workspace only.
    let mut stream = crate::inbox::Stream::open(&app, &operator, None).await;
    let mut theirs = crate::inbox::Stream::open(&app, &other, None).await;
    stream.until("event: ready").await;
    theirs.until("event: ready").await;
    let res = app
        .post_meta(
            meta_text(ACME_PNID, "4917655550001", &wamid, "parked"),
            ACME_SECRET,
        )
        .await;
    assert_eq!(res.status(), 200);
    app.wait_for("SELECT COUNT(*) FROM webhook_dlq", 1).await;
    let (_, listed) = call(&app, Method::GET, "/api/v1/dlq", Some(&operator), None).await;
    let row = &listed["items"][0];
    assert!(
        row["error"].as_str().unwrap().contains("injected failure"),
        "{listed}"
    );
    let (id, event_id) = (
        row["id"].as_i64().unwrap(),
        row["event_id"].as_i64().unwrap(),
    );
    let dlq_event = format!("event: dlq\ndata: {{\"event_id\":{event_id}}}");
    stream.until(&dlq_event).await;
    // Nothing of the event was applied: no conversation, no message.
    let (_, convs) = call(
        &app,
        Method::GET,
        "/api/v1/conversations",
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(convs["items"].as_array().unwrap().len(), 0, "{convs}");

    fail::remove("conversation::apply");
    let (status, retried) = call(
        &app,
        Method::POST,
        &format!("/api/v1/dlq/{id}/retry"),
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(status, 200, "{retried}");
    app.wait_for(
        "SELECT COUNT(*) FROM webhook_dlq WHERE resolution_status = 'resolved'",
        1,
    )
    .await;
    let (_, row) = call(
        &app,
        Method::GET,
        &format!("/api/v1/dlq/{id}"),
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(row["resolution_status"], "resolved", "{row}");
    // Parked, retried by the operator, claimed by the re-drive, resolved by its commit.
    stream.until_times(&dlq_event, 4).await;
    assert!(!theirs.text.contains("event: dlq"), "{}", theirs.text);
    let (_, event) = call(
        &app,
        Method::GET,
        &format!("/api/v1/events/{event_id}"),
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(event["status"], "processed", "{event}");
    let (_, convs) = call(
        &app,
        Method::GET,
        "/api/v1/conversations",
        Some(&operator),
        None,
    )
    .await;
    let conv = convs["items"][0]["id"].as_i64().unwrap();
    let (_, after) = call(
        &app,
        Method::GET,
        &format!("/api/v1/conversations/{conv}"),
        Some(&operator),
        None,
    )
    .await;
    let messages = after["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{after}");
    assert_eq!(messages[0]["wamid"], wamid.as_str());
    assert_eq!(messages[0]["content"], "parked");
    app.stop().await;
}

async fn each_role_is_allowed_and_refused_where_it_should_be(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (admin_id, admin) = user_with_token(&app, "acme", "ada@acme.test", Role::Admin).await;
    let (_, operator) = user_with_token(&app, "acme", "otto@acme.test", Role::Operator).await;
    let (_, viewer) = user_with_token(&app, "acme", "vera@acme.test", Role::Viewer).await;
    let new_user = || json!({"name": "New Person", "email": "new@acme.test"});
    let token_body = || json!({"user_id": admin_id, "name": "ci"});
    // (method, path, body, lowest role allowed)
    let routes: Vec<(Method, String, Option<Value>, Role)> = vec![
        (Method::GET, "/api/v1/users".into(), None, Role::Viewer),
        (
            Method::GET,
            format!("/api/v1/users/{admin_id}"),
            None,
            Role::Viewer,
        ),
        (
            Method::POST,
            "/api/v1/users".into(),
            Some(new_user()),
            Role::Admin,
        ),
        (
            Method::PATCH,
            format!("/api/v1/users/{admin_id}"),
            Some(json!({"name": "Ada L."})),
            Role::Admin,
        ),
        (
            Method::POST,
            "/api/v1/tokens".into(),
            Some(token_body()),
            Role::Admin,
        ),
    ];
    for (method, path, body, lowest) in &routes {
        // No token, and a made-up one: 401.
        let (status, _) = call(&app, method.clone(), path, None, body.clone()).await;
        assert_eq!(status, 401, "{method} {path} without a token");
        let (status, _) = call(
            &app,
            method.clone(),
            path,
            Some("whk_nonsense"),
            body.clone(),
        )
        .await;
        assert_eq!(status, 401, "{method} {path} with a bad token");
        for (role, token) in [
            (Role::Viewer, &viewer),
            (Role::Operator, &operator),
            (Role::Admin, &admin),
        ] {
            let (status, reply) = call(&app, method.clone(), path, Some(token), body.clone()).await;
            if role >= *lowest {
                assert!(
                    status.is_success(),
                    "{role:?} may {method} {path}: {status} {reply}"
                );
            } else {
                assert_eq!(status, 403, "{role:?} may not {method} {path}: {reply}");
                assert_eq!(reply["error"]["code"], "forbidden");
            }
        }
    }
    // The admin's POST made one user; the viewer's and operator's made none.
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM users WHERE email = 'new@acme.test'")
            .await,
        1
    );
    // DELETE (deactivate) and token revocation: admin only.
    let (status, _) = call(
        &app,
        Method::DELETE,
        "/api/v1/tokens/999999",
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &app,
        Method::DELETE,
        "/api/v1/tokens/999999",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 404);
    // Every change is in the audit log with who made it.
    let actors = app
        .strings("SELECT actor FROM audit_log WHERE action = 'user.create' AND target <> 'user:1' ORDER BY id DESC LIMIT 1")
        .await;
    assert_eq!(actors, vec!["ada <ada@acme.test>".to_owned()]);
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM audit_log WHERE action = 'user.update'")
            .await,
        1
    );
    // A token is shown once and stored only as its hash.
    let (status, created) = call(
        &app,
        Method::POST,
        "/api/v1/tokens",
        Some(&admin),
        Some(token_body()),
    )
    .await;
    assert_eq!(status, 201);
    let plain = created["token"].as_str().unwrap();
    assert!(plain.starts_with("whk_") && plain.len() >= 4 + 64);
    assert_eq!(
        app.scalar(&format!(
            "SELECT COUNT(*) FROM api_tokens WHERE token_hash = '{plain}'"
        ))
        .await,
        0
    );
    let (status, listed) = call(&app, Method::GET, "/api/v1/users", Some(&viewer), None).await;
    assert_eq!(status, 200);
    assert!(!listed.to_string().contains("token_hash"));
    app.stop().await;
}

async fn another_workspace_is_invisible_and_untouched(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (acme_user, _) = user_with_token(&app, "acme", "ada@acme.test", Role::Admin).await;
    let (_, globex) = user_with_token(&app, "globex", "gus@globex.test", Role::Admin).await;
    let path = format!("/api/v1/users/{acme_user}");
    let (status, reply) = call(&app, Method::GET, &path, Some(&globex), None).await;
    assert_eq!(status, 404, "{reply}");
    let (status, _) = call(
        &app,
        Method::PATCH,
        &path,
        Some(&globex),
        Some(json!({"role": "viewer"})),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = call(&app, Method::DELETE, &path, Some(&globex), None).await;
    assert_eq!(status, 404);
    assert_eq!(
        app.strings(&format!("SELECT role FROM users WHERE id = {acme_user}"))
            .await,
        vec!["admin".to_owned()],
        "nothing changed"
    );
    let (_, listed) = call(&app, Method::GET, "/api/v1/users", Some(&globex), None).await;
    let emails: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, vec!["gus@globex.test"]);
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/v1/tokens",
        Some(&globex),
        Some(json!({"user_id": acme_user, "name": "x"})),
    )
    .await;
    assert_eq!(status, 404, "no token for another workspace's user");
    app.stop().await;
}

async fn a_deactivated_users_token_stops_at_once(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (_, admin) = user_with_token(&app, "acme", "ada@acme.test", Role::Admin).await;
    let (vera, viewer) = user_with_token(&app, "acme", "vera@acme.test", Role::Viewer).await;
    let (status, _) = call(&app, Method::GET, "/api/v1/users", Some(&viewer), None).await;
    assert_eq!(status, 200, "cached now");
    let (status, user) = call(
        &app,
        Method::DELETE,
        &format!("/api/v1/users/{vera}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(user["is_active"], false);
    let (status, _) = call(&app, Method::GET, "/api/v1/users", Some(&viewer), None).await;
    assert_eq!(status, 401, "the next request is refused");
    // A revoked token too.
    let ada = app
        .scalar("SELECT id FROM users WHERE email = 'ada@acme.test'")
        .await;
    let (_, second) = call(
        &app,
        Method::POST,
        "/api/v1/tokens",
        Some(&admin),
        Some(json!({"user_id": ada, "name": "two"})),
    )
    .await;
    let second_token = second["token"].as_str().unwrap().to_owned();
    let (status, _) = call(
        &app,
        Method::GET,
        "/api/v1/users",
        Some(&second_token),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &app,
        Method::DELETE,
        &format!("/api/v1/tokens/{}", second["id"]),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = call(
        &app,
        Method::GET,
        "/api/v1/users",
        Some(&second_token),
        None,
    )
    .await;
    assert_eq!(status, 401);
    // An admin cannot lock themself out: no self-deactivation, no self-demotion (409, nothing
    // changed); another admin's token could.
    for (method, body) in [
        (Method::DELETE, None),
        (Method::PATCH, Some(json!({"is_active": false}))),
        (Method::PATCH, Some(json!({"role": "viewer"}))),
    ] {
        let (status, answer) = call(
            &app,
            method,
            &format!("/api/v1/users/{ada}"),
            Some(&admin),
            body,
        )
        .await;
        assert_eq!(status, 409, "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("yourself")
        );
    }
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM users WHERE email = 'ada@acme.test' AND is_active AND role = 'admin'")
            .await,
        1
    );
    let (status, _) = call(&app, Method::GET, "/api/v1/users", Some(&admin), None).await;
    assert_eq!(status, 200);
    app.stop().await;
}

async fn bad_requests_get_400_with_a_message(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (_, admin) = user_with_token(&app, "acme", "ada@acme.test", Role::Admin).await;
    let raw = app
        .client
        .post(app.url("/api/v1/users"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    let cases = [
        json!({"name": "X", "email": "x@acme.test", "colour": "red"}),
        json!({"name": "X", "email": "not-an-email"}),
        json!({"name": "", "email": "x@acme.test"}),
        json!({"name": "X", "email": "x@acme.test", "role": "superuser"}),
        json!({"name": 7, "email": "x@acme.test"}),
    ];
    for body in cases {
        let (status, reply) = call(
            &app,
            Method::POST,
            "/api/v1/users",
            Some(&admin),
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 400, "{body} → {reply}");
        assert!(
            !reply["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{reply}"
        );
    }
    let (status, _) = call(
        &app,
        Method::GET,
        "/api/v1/users?limit=0",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 400);
    // Email is unique per workspace, whatever its case.
    let (status, reply) = call(
        &app,
        Method::POST,
        "/api/v1/users",
        Some(&admin),
        Some(json!({"name": "A", "email": "ADA@acme.test"})),
    )
    .await;
    assert_eq!(status, 409, "{reply}");
    assert_eq!(app.count("users").await, 1);
    // A burst of bad tokens from one address is cut off with 429.
    let mut last = StatusCode::OK;
    for i in 0..25 {
        let (status, _) = call(
            &app,
            Method::GET,
            "/api/v1/users",
            Some(&format!("whk_bad{i}")),
            None,
        )
        .await;
        last = status;
    }
    assert_eq!(last, 429);
    // Only the bad ones: a valid token from the same address (everyone behind one proxy)
    // still passes, cached or not, and so does a user whose token was never seen.
    let (status, _) = call(&app, Method::GET, "/api/v1/users", Some(&admin), None).await;
    assert_eq!(
        status, 200,
        "a valid token passes beside a neighbour's bad ones"
    );
    let (_, fresh) = user_with_token(&app, "acme", "fresh@acme.test", Role::Viewer).await;
    let (status, _) = call(&app, Method::GET, "/api/v1/contacts", Some(&fresh), None).await;
    assert_eq!(status, 200, "a never-seen valid token passes too");
    let (status, _) = call(&app, Method::GET, "/api/v1/users", Some("whk_bad0"), None).await;
    assert_eq!(status, 429, "the bad ones are still refused");
    app.stop().await;
}

async fn the_cli_bootstraps_the_first_admin(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let config = test_config(&test_db);
    let out = wahook()
        .args([
            "user",
            "create",
            "--workspace",
            "acme",
            "--name",
            "Ada",
            "--email",
            "Ada@Acme.test",
            "--role",
            "admin",
        ])
        .env("WAHOOK_DATABASE__URL", &test_db.url)
        .env("WAHOOK_DATABASE__SCHEMA", &test_db.schema)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let token = stdout.lines().last().unwrap().trim().to_owned();
    assert!(token.starts_with("whk_"), "{stdout}");
    let app = TestApp::start_on(test_db, config).await;
    let (status, listed) = call(&app, Method::GET, "/api/v1/users", Some(&token), None).await;
    assert_eq!(status, 200);
    assert_eq!(listed["items"][0]["email"], "ada@acme.test");
    assert_eq!(listed["items"][0]["role"], "admin");
    app.stop().await;
}

async fn dlq_rows_are_listed_retried_resolved_and_discarded(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.processing.dlq_backoff_base_ms = 3_600_000;
        c.processing.dlq_poll_ms = 20;
    })
    .await;
    // Two events no conversation can be found for: parked with their reason.
    for name in [
        "meta/sender_nowhere.json",
        "meta/echo_without_recipient.json",
    ] {
        let res = app.post_meta(fixture(name), ACME_SECRET).await;
        assert_eq!(res.status(), 200);
    }
    app.wait_for("SELECT COUNT(*) FROM webhook_dlq", 2).await;
    let (_, operator) = user_with_token(&app, "acme", "otto@acme.test", Role::Operator).await;
    let (_, viewer) = user_with_token(&app, "acme", "vera@acme.test", Role::Viewer).await;
    let (_, globex) = user_with_token(&app, "globex", "gus@globex.test", Role::Admin).await;

    let (status, listed) = call(
        &app,
        Method::GET,
        "/api/v1/dlq?status=pending&order=oldest",
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(
        items[0]["error"]
            .as_str()
            .unwrap()
            .contains("names no sender"),
        "{listed}"
    );
    assert_eq!(items[0]["source"], "meta");
    let (first, second) = (
        items[0]["id"].as_i64().unwrap(),
        items[1]["id"].as_i64().unwrap(),
    );
    let (_, globex_list) = call(&app, Method::GET, "/api/v1/dlq", Some(&globex), None).await;
    assert_eq!(
        globex_list["items"].as_array().unwrap().len(),
        0,
        "another workspace sees none"
    );
    let (status, _) = call(
        &app,
        Method::POST,
        &format!("/api/v1/dlq/{first}/retry"),
        Some(&globex),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = call(
        &app,
        Method::POST,
        &format!("/api/v1/dlq/{first}/retry"),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, bulk) = call(
        &app,
        Method::POST,
        "/api/v1/dlq/retry",
        Some(&operator),
        Some(json!({"error_contains": "names no recipient"})),
    )
    .await;
    assert_eq!(status, 200, "{bulk}");
    assert_eq!(bulk["retried"], 1, "only the echo's row matches");
    app.wait_for(&format!("SELECT COUNT(*) FROM webhook_dlq WHERE id = {second} AND attempts = 2 AND resolution_status = 'pending'"), 1)
        .await;
    let (status, _) = call(
        &app,
        Method::GET,
        "/api/v1/dlq?status=lost",
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(status, 400);

    // Retry now: re-driven through the same actors; the fault is still there, so it is parked
    // again with one more attempt.
    let (status, row) = call(
        &app,
        Method::POST,
        &format!("/api/v1/dlq/{first}/retry"),
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(status, 200, "{row}");
    app.wait_for(&format!("SELECT COUNT(*) FROM webhook_dlq WHERE id = {first} AND attempts = 2 AND resolution_status = 'pending'"), 1)
        .await;
    let (status, row) = call(
        &app,
        Method::POST,
        &format!("/api/v1/dlq/{first}/resolve"),
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(row["resolution_status"], "resolved");
    assert_eq!(row["resolved_by"], "otto <otto@acme.test>");
    let (status, row) = call(
        &app,
        Method::POST,
        &format!("/api/v1/dlq/{second}/discard"),
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(row["resolution_status"], "discarded");
    let (status, _) = call(
        &app,
        Method::POST,
        &format!("/api/v1/dlq/{first}/retry"),
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(status, 409, "a resolved row is not retried");
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM audit_log WHERE action LIKE 'dlq.%'")
            .await,
        4
    );
    app.stop().await;
}

async fn conversations_are_listed_read_and_handed_to_a_person(backend: Backend) {
    let app = TestApp::start(backend).await;
    for (pnid, secret, from, wamid, body) in [
        (
            ACME_PNID,
            ACME_SECRET,
            "15550001001",
            "wamid.api.c1a",
            "first",
        ),
        (
            ACME_PNID,
            ACME_SECRET,
            "15550001001",
            "wamid.api.c1b",
            "second",
        ),
        (
            ACME_PNID,
            ACME_SECRET,
            "15550001002",
            "wamid.api.c2",
            "other",
        ),
        (
            GLOBEX_PNID,
            GLOBEX_SECRET,
            "15550001003",
            "wamid.api.g1",
            "globex",
        ),
    ] {
        let res = app
            .post_meta(meta_text(pnid, from, wamid, body), secret)
            .await;
        assert_eq!(res.status(), 200);
    }
    app.wait_processed(4).await;
    let (_, operator) = user_with_token(&app, "acme", "otto@acme.test", Role::Operator).await;
    let (_, viewer) = user_with_token(&app, "acme", "vera@acme.test", Role::Viewer).await;
    let (_, globex) = user_with_token(&app, "globex", "gus@globex.test", Role::Admin).await;

    let (status, listed) = call(
        &app,
        Method::GET,
        "/api/v1/conversations?state=open",
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "only acme's: {listed}");
    let id = items
        .iter()
        .find(|c| c["contact"] == "15550001001")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let (status, one) = call(
        &app,
        Method::GET,
        &format!("/api/v1/conversations/{id}"),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let texts: Vec<&str> = one["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(texts, vec!["first", "second"], "in order");
    assert_eq!(one["messages"][0]["status"], "received");
    assert_eq!(
        one["service_window_open"], false,
        "the fixture's messages are old"
    );
    assert_eq!(one["conversation"]["message_count"], 2);

    let path = format!("/api/v1/conversations/{id}/state");
    let human = json!({"state": "human", "reason": "customer asked for a person"});
    let (status, _) = call(
        &app,
        Method::POST,
        &path,
        Some(&viewer),
        Some(human.clone()),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &app,
        Method::POST,
        &path,
        Some(&globex),
        Some(human.clone()),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = call(
        &app,
        Method::GET,
        &format!("/api/v1/conversations/{id}"),
        Some(&globex),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = call(
        &app,
        Method::POST,
        &path,
        Some(&operator),
        Some(json!({"state": "asleep"})),
    )
    .await;
    assert_eq!(status, 400);
    let (status, changed) = call(&app, Method::POST, &path, Some(&operator), Some(human)).await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["state"], "human");
    assert_eq!(changed["previous"], "open");
    assert_eq!(
        app.strings(&format!("SELECT status FROM conversations WHERE id = {id}"))
            .await,
        vec!["human".to_owned()]
    );
    let transitions = app
        .strings(&format!(
            "SELECT reason || ' ' || correlation_id FROM conversation_state_transitions WHERE conversation_id = {id} AND to_state = 'human'"
        ))
        .await;
    assert_eq!(transitions.len(), 1);
    assert!(
        transitions[0].starts_with("set by an operator api:user:"),
        "{transitions:?}"
    );
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM audit_log WHERE action = 'conversation.state'")
            .await,
        1
    );
    // An inbound message does not take it back from the person; the operator gives it back.
    let res = app
        .post_meta(
            meta_text(ACME_PNID, "15550001001", "wamid.api.c1c", "third"),
            ACME_SECRET,
        )
        .await;
    assert_eq!(res.status(), 200);
    app.wait_processed(5).await;
    let (_, listed) = call(
        &app,
        Method::GET,
        "/api/v1/conversations?state=human",
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    let (status, back) = call(
        &app,
        Method::POST,
        &path,
        Some(&operator),
        Some(json!({"state": "open"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(back["state"], "open");
    app.stop().await;
}

async fn events_are_read_and_replayed_without_doubling_anything(backend: Backend) {
    let app = TestApp::start(backend).await;
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    for i in 0..5 {
        let body = meta_text(
            ACME_PNID,
            &format!("1555000200{i}"),
            &format!("wamid.api.ev{i}"),
            "hello",
        );
        assert_eq!(app.post_meta(body, ACME_SECRET).await.status(), 200);
    }
    let globex_body = meta_text(GLOBEX_PNID, "15550003000", "wamid.api.gev", "hi");
    assert_eq!(
        app.post_meta(globex_body, GLOBEX_SECRET).await.status(),
        200
    );
    app.wait_processed(6).await;
    let after = chrono::Utc::now() + chrono::Duration::seconds(1);
    let (_, operator) = user_with_token(&app, "acme", "otto@acme.test", Role::Operator).await;
    let (_, viewer) = user_with_token(&app, "acme", "vera@acme.test", Role::Viewer).await;
    let (_, globex) = user_with_token(&app, "globex", "gus@globex.test", Role::Admin).await;

    let (status, listed) = call(
        &app,
        Method::GET,
        "/api/v1/events?status=processed&source=meta&limit=3",
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(listed["items"].as_array().unwrap().len(), 3);
    assert!(
        listed["items"][0].get("payload").is_none(),
        "no payloads in the list"
    );
    let next = listed["next"].as_str().unwrap().to_owned();
    let (_, rest) = call(
        &app,
        Method::GET,
        &format!("/api/v1/events?after={next}"),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(
        rest["items"].as_array().unwrap().len(),
        2,
        "the second page has acme's last two"
    );
    let id = listed["items"][0]["id"].as_i64().unwrap();
    let (status, one) = call(
        &app,
        Method::GET,
        &format!("/api/v1/events/{id}"),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(one["payload"]["object"], "whatsapp_business_account");
    assert_eq!(one["status"], "processed");
    let (status, _) = call(
        &app,
        Method::GET,
        &format!("/api/v1/events/{id}"),
        Some(&globex),
        None,
    )
    .await;
    assert_eq!(status, 404);

    // Replay the time range twice: everything is processed again, nothing new appears.
    let counts = || async {
        (
            app.count("messages").await,
            app.count("contacts").await,
            app.scalar("SELECT SUM(message_count) FROM conversations")
                .await,
            app.count("conversation_state_transitions").await,
        )
    };
    let snapshot = counts().await;
    let range = json!({"from": before, "to": after});
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/v1/events/replay",
        Some(&viewer),
        Some(range.clone()),
    )
    .await;
    assert_eq!(status, 403);
    for _ in 0..2 {
        let (status, replayed) = call(
            &app,
            Method::POST,
            "/api/v1/events/replay",
            Some(&operator),
            Some(range.clone()),
        )
        .await;
        assert_eq!(status, 200, "{replayed}");
        assert_eq!(replayed["replayed"], 5, "acme's five, not globex's");
        app.wait_processed(6).await;
    }
    assert_eq!(counts().await, snapshot);
    assert_eq!(
        app.scalar("SELECT MIN(attempts) FROM webhook_events WHERE workspace_id = (SELECT id FROM workspaces WHERE name = 'acme')").await,
        3,
        "each acme event was processed three times"
    );
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/v1/events/replay",
        Some(&operator),
        Some(json!({"from": after, "to": before})),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/v1/events/replay",
        Some(&operator),
        Some(json!({"ids": []})),
    )
    .await;
    assert_eq!(status, 400);
    app.stop().await;
}

fn text_at(from: &str, wamid: &str, ts: i64) -> String {
    meta_text(ACME_PNID, from, wamid, "hi").replace("1767225600", &ts.to_string())
}

pub(crate) fn echo_at(to: &str, wamid: &str, ts: i64) -> String {
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"smb_message_echoes","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15551111111","phone_number_id":"{ACME_PNID}"}},"message_echoes":[{{"from":"15551111111","to":"{to}","id":"{wamid}","timestamp":"{ts}","type":"text","text":{{"body":"we answered"}}}}]}}}}]}}]}}"#
    )
}

async fn lead_filters_and_contact_edits_work_on_real_webhooks(backend: Backend) {
    let app = TestApp::start(backend).await;
    let now = chrono::Utc::now().timestamp();
    // A wrote long ago and nobody answered; B wrote a minute ago and we answered just now.
    for body in [
        text_at("15550004001", "wamid.lead.a", now - 40 * 86_400),
        text_at("15550004002", "wamid.lead.b", now - 60),
        echo_at("15550004002", "wamid.lead.b.reply", now - 5),
    ] {
        assert_eq!(app.post_meta(body, ACME_SECRET).await.status(), 200);
    }
    app.wait_processed(3).await;
    let (_, operator) = user_with_token(&app, "acme", "otto@acme.test", Role::Operator).await;
    let (_, viewer) = user_with_token(&app, "acme", "vera@acme.test", Role::Viewer).await;
    let (_, globex) = user_with_token(&app, "globex", "gus@globex.test", Role::Admin).await;
    let phones = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["phone"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, v) = call(
        &app,
        Method::GET,
        "/api/v1/leads?filter=not_contacted&days=7",
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(phones(&v), vec!["15550004001"]);
    let (_, v) = call(
        &app,
        Method::GET,
        "/api/v1/leads?filter=needs_follow_up",
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(phones(&v), vec!["15550004001"]);
    let since = (chrono::Utc::now() - chrono::Duration::hours(1))
        .to_rfc3339()
        .replace('+', "%2B");
    let (_, v) = call(
        &app,
        Method::GET,
        &format!("/api/v1/leads?filter=recently_active&since={since}"),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(phones(&v), vec!["15550004002"]);
    let (_, v) = call(
        &app,
        Method::GET,
        "/api/v1/leads?filter=needs_follow_up",
        Some(&globex),
        None,
    )
    .await;
    assert!(
        phones(&v).is_empty(),
        "another workspace's leads are not listed"
    );
    for bad in [
        "/api/v1/leads?filter=hot",
        "/api/v1/leads?filter=not_contacted",
        "/api/v1/leads?filter=not_contacted&days=-1",
    ] {
        let (status, _) = call(&app, Method::GET, bad, Some(&viewer), None).await;
        assert_eq!(status, 400, "{bad}");
    }

    // Edit a contact's lead status and score.
    let (_, contacts) = call(
        &app,
        Method::GET,
        "/api/v1/contacts?search=4001",
        Some(&viewer),
        None,
    )
    .await;
    let id = contacts["items"][0]["id"].as_i64().unwrap();
    let path = format!("/api/v1/contacts/{id}");
    let edit = json!({"lead_status": "qualified", "lead_score": 80});
    let (status, _) = call(
        &app,
        Method::PATCH,
        &path,
        Some(&viewer),
        Some(edit.clone()),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &app,
        Method::PATCH,
        &path,
        Some(&globex),
        Some(edit.clone()),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = call(
        &app,
        Method::PATCH,
        &path,
        Some(&operator),
        Some(json!({"lead_score": 101})),
    )
    .await;
    assert_eq!(status, 400);
    let (status, c) = call(&app, Method::PATCH, &path, Some(&operator), Some(edit)).await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["lead_status"], "qualified");
    assert_eq!(c["lead_score"], 80);
    assert_eq!(
        app.scalar(&format!("SELECT lead_score FROM contacts WHERE id = {id}"))
            .await,
        80
    );
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM audit_log WHERE action = 'contact.update'")
            .await,
        1
    );
    app.stop().await;
}

async fn accounts_are_managed_with_write_only_secrets(backend: Backend) {
    let graph = crate::fakes::graph().await;
    let base = graph.base.clone();
    let app = TestApp::start_with(backend, move |c| {
        c.graph.base_url = base;
        c.tenants.max_accounts_per_workspace = 4;
        let mut private = wahook::config::AgentConfig::new("http://127.0.0.1:9/v1", "m");
        private.workspaces = vec!["globex".into()];
        c.agents.insert("globex-only".into(), private);
    })
    .await;
    let (_, admin) = user_with_token(&app, "acme", "ada@acme.test", Role::Admin).await;
    let (_, viewer) = user_with_token(&app, "acme", "vera@acme.test", Role::Viewer).await;
    let (_, globex) = user_with_token(&app, "globex", "gus@globex.test", Role::Admin).await;
    let owner = crate::fakes::OWNER_TOKEN;
    let new = json!({"phone_number_id": "444444444444444", "app_secret": "new-account-secret",
                     "verify_token": "new-verify-token", "access_token": owner});
    // Ownership: no token, or one that cannot read the number, is refused before anything
    // is stored; a number another workspace has gets the very same answer.
    let mut without = new.clone();
    without.as_object_mut().unwrap().remove("access_token");
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/v1/accounts",
        Some(&admin),
        Some(without),
    )
    .await;
    assert_eq!(status, 400);
    let mut wrong = new.clone();
    wrong["access_token"] = json!("someone-elses-token");
    let (status, not_owner) = call(
        &app,
        Method::POST,
        "/api/v1/accounts",
        Some(&admin),
        Some(wrong),
    )
    .await;
    assert_eq!(status, 403, "{not_owner}");
    let taken = json!({"phone_number_id": ACME_PNID, "app_secret": "stolen-secret-1",
                       "verify_token": "stolen-verify", "access_token": owner});
    let (status, taken_answer) = call(
        &app,
        Method::POST,
        "/api/v1/accounts",
        Some(&globex),
        Some(taken),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        taken_answer["error"]["code"], not_owner["error"]["code"],
        "a taken number reads like any refusal"
    );
    assert!(
        !taken_answer.to_string().contains("taken"),
        "{taken_answer}"
    );
    // An agent limited to another workspace is refused.
    let mut other_agent = new.clone();
    other_agent["agent"] = json!("globex-only");
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/v1/accounts",
        Some(&admin),
        Some(other_agent),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(app.count("whatsapp_accounts").await, 3, "nothing stored");
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/v1/accounts",
        Some(&viewer),
        Some(new.clone()),
    )
    .await;
    assert_eq!(status, 403);
    let (status, created) = call(
        &app,
        Method::POST,
        "/api/v1/accounts",
        Some(&admin),
        Some(new.clone()),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert!(!created.to_string().contains("new-account-secret"));
    assert!(!created.to_string().contains("new-verify-token"));
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/v1/accounts",
        Some(&admin),
        Some(new),
    )
    .await;
    assert_eq!(status, 403, "its own number again: the same refusal");
    // The intake knows it at once.
    let body = meta_text(
        "444444444444444",
        "15550005001",
        "wamid.api.acc1",
        "hello new number",
    );
    assert_eq!(
        app.post_meta(body, "new-account-secret").await.status(),
        200
    );
    // Secrets are never returned, and rotate.
    let (_, listed) = call(&app, Method::GET, "/api/v1/accounts", Some(&viewer), None).await;
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        3,
        "acme's two configured and the new one"
    );
    for secret in [
        ACME_SECRET,
        "new-account-secret",
        "acme-verify-token",
        "acme-kapso-secret",
    ] {
        assert!(!listed.to_string().contains(secret), "{secret} leaked");
    }
    let id = created["id"].as_i64().unwrap();
    let path = format!("/api/v1/accounts/{id}");
    let (status, _) = call(
        &app,
        Method::PATCH,
        &path,
        Some(&globex),
        Some(json!({"app_secret": "stolen-secret-1"})),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = call(
        &app,
        Method::PATCH,
        &path,
        Some(&admin),
        Some(json!({"app_secret": "short"})),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = call(
        &app,
        Method::PATCH,
        &path,
        Some(&admin),
        Some(json!({"agent": "nobody"})),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = call(
        &app,
        Method::PATCH,
        &path,
        Some(&admin),
        Some(json!({"app_secret": "rotated-secret-2"})),
    )
    .await;
    assert_eq!(status, 200);
    let body = meta_text(
        "444444444444444",
        "15550005001",
        "wamid.api.acc2",
        "after rotation",
    );
    assert_eq!(
        app.post_meta(body.clone(), "new-account-secret")
            .await
            .status(),
        403
    );
    assert_eq!(app.post_meta(body, "rotated-secret-2").await.status(), 200);
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM audit_log WHERE action LIKE 'account.%'")
            .await,
        2
    );
    // The workspace's cap (4 here): a fourth account, then no fifth.
    let more = |pnid: &str| {
        json!({"phone_number_id": pnid, "app_secret": "more-secret-1",
                                   "verify_token": "more-verify", "access_token": owner})
    };
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/v1/accounts",
        Some(&admin),
        Some(more("555555555555555")),
    )
    .await;
    assert_eq!(status, 201);
    let (status, full) = call(
        &app,
        Method::POST,
        "/api/v1/accounts",
        Some(&admin),
        Some(more("666666666666666")),
    )
    .await;
    assert_eq!(status, 409, "{full}");
    assert_eq!(full["error"]["code"], "account_limit");
    app.stop().await;
}

async fn operators_send_once_and_record_outside_sends(backend: Backend) {
    let graph = crate::fakes::graph().await;
    let graph_base = graph.base.clone();
    let app = TestApp::start_with(backend, move |c| {
        c.graph.base_url = graph_base;
        c.accounts[0].access_token = Some("acme-graph-token".into());
    })
    .await;
    let now = chrono::Utc::now().timestamp();
    // A customer who wrote a minute ago, and one who wrote two days ago.
    assert_eq!(
        app.post_meta(
            text_at("15550006001", "wamid.msg.fresh", now - 60),
            ACME_SECRET
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        app.post_meta(
            text_at("15550006002", "wamid.msg.old", now - 2 * 86_400),
            ACME_SECRET
        )
        .await
        .status(),
        200
    );
    app.wait_processed(2).await;
    let (_, operator) = user_with_token(&app, "acme", "otto@acme.test", Role::Operator).await;
    let (_, viewer) = user_with_token(&app, "acme", "vera@acme.test", Role::Viewer).await;
    let (_, globex) = user_with_token(&app, "globex", "gus@globex.test", Role::Admin).await;
    let conv = |phone: &str| {
        format!(
            "SELECT v.id FROM conversations v JOIN contacts c ON c.id = v.contact_id WHERE c.phone = '{phone}'"
        )
    };
    let fresh = app.scalar(&conv("15550006001")).await;
    let old = app.scalar(&conv("15550006002")).await;
    let send = |conversation_id: i64, key: &str| json!({"conversation_id": conversation_id, "phone_number_id": ACME_PNID, "text": "Hello from a person", "idempotency_key": key});
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/v1/messages",
        Some(&viewer),
        Some(send(fresh, "k1")),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/v1/messages",
        Some(&globex),
        Some(send(fresh, "k1")),
    )
    .await;
    assert_eq!(status, 404);
    let (status, sent) = call(
        &app,
        Method::POST,
        "/api/v1/messages",
        Some(&operator),
        Some(send(fresh, "k1")),
    )
    .await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!(sent["state"], "sent");
    let (status, again) = call(
        &app,
        Method::POST,
        "/api/v1/messages",
        Some(&operator),
        Some(send(fresh, "k1")),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(again["state"], "already_recorded");
    let sends: Vec<_> = graph
        .requests()
        .into_iter()
        .filter(|(p, b)| crate::fakes::is_send(p, b))
        .collect();
    assert_eq!(sends.len(), 1, "one key, one send");
    assert_eq!(sends[0].1["to"], "15550006001");
    let wamid = sent["wamid"].as_str().unwrap();
    assert_eq!(
        app.scalar(&format!(
            "SELECT COUNT(*) FROM messages WHERE wamid = '{wamid}' AND direction = 'outbound'"
        ))
        .await,
        1
    );
    // Outside the window: refused before anything is recorded or sent.
    let (status, refused) = call(
        &app,
        Method::POST,
        "/api/v1/messages",
        Some(&operator),
        Some(send(old, "k2")),
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(refused["error"]["code"], "service_window_closed");
    assert_eq!(app.count("outbound_messages").await, 1);
    // A message another system sent, recorded: it moves last_contact_at, once.
    let record =
        json!({"conversation_id": old, "wamid": "wamid.crm.1", "text": "Sent from the CRM"});
    for _ in 0..2 {
        let (status, _) = call(
            &app,
            Method::POST,
            "/api/v1/messages/outbound",
            Some(&operator),
            Some(record.clone()),
        )
        .await;
        assert_eq!(status, 201);
    }
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM messages WHERE wamid = 'wamid.crm.1'")
            .await,
        1
    );
    assert!(
        app.db_time("SELECT last_contact_at FROM contacts WHERE phone = '15550006002'")
            .await
            .is_some()
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT message_count FROM conversations WHERE id = {old}"
        ))
        .await,
        2
    );
    app.stop().await;
}

async fn the_monitoring_views_answer_per_workspace(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.processing.dlq_backoff_base_ms = 3_600_000;
    })
    .await;
    let now = chrono::Utc::now().timestamp();
    for (from, wamid) in [("15550007001", "wamid.st.1"), ("15550007002", "wamid.st.2")] {
        assert_eq!(
            app.post_meta(text_at(from, wamid, now - 30), ACME_SECRET)
                .await
                .status(),
            200
        );
    }
    assert_eq!(
        app.post_meta(fixture("meta/sender_nowhere.json"), ACME_SECRET)
            .await
            .status(),
        200
    );
    app.wait_processed(2).await;
    app.wait_for("SELECT COUNT(*) FROM webhook_dlq", 1).await;
    let (_, viewer) = user_with_token(&app, "acme", "vera@acme.test", Role::Viewer).await;
    let (_, globex) = user_with_token(&app, "globex", "gus@globex.test", Role::Viewer).await;
    let get = |path: &'static str, token: String| {
        let app = &app;
        async move { call(app, Method::GET, path, Some(&token), None).await }
    };
    let (status, health) = get("/api/v1/stats/health", viewer.clone()).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["conversations_by_state"]["open"], 2);
    assert_eq!(health["messages_last_24h"]["inbound"], 2);
    assert_eq!(health["contacts"], 2);
    let (_, other) = get("/api/v1/stats/health", globex.clone()).await;
    assert_eq!(
        other["contacts"], 0,
        "another workspace's figures are its own"
    );
    let (_, processing) = get("/api/v1/stats/processing", viewer.clone()).await;
    assert_eq!(processing["hours"][0]["events"], 2, "{processing}");
    let (_, dlq) = get("/api/v1/stats/dlq", viewer.clone()).await;
    assert_eq!(dlq["by_status"]["pending"], 1, "{dlq}");
    assert_eq!(dlq["open_by_error"].as_object().unwrap().len(), 1);
    let (status, stuck) = get("/api/v1/stats/stuck", viewer.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(
        stuck["events"].as_array().unwrap().len(),
        0,
        "nothing older than the bound"
    );
    let (status, agents) = get("/api/v1/stats/agents", viewer.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(agents["agents"].as_object().unwrap().len(), 0);
    let (status, _) = get("/api/v1/stats/weather", viewer).await;
    assert_eq!(status, 404);
    app.stop().await;
}
