//! The workspace's foundation: schema on both backends, start-up upserts, health, and the
//! command line as an operator uses it.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use crate::{both_backends, common::*};

both_backends!(
    health_reports_the_backend_and_that_it_answers,
    migrations_create_the_contract_with_its_unique_constraints,
    configured_accounts_are_upserted_once_across_restarts,
    migrate_command_applies_the_schema,
);

async fn health_reports_the_backend_and_that_it_answers(backend: Backend) {
    let app = TestApp::start(backend).await;
    let res = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    let expected = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(body["database"]["backend"], expected);
    assert_eq!(body["database"]["ok"], true);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["accounts"], 3);
    app.stop().await;
}

async fn migrations_create_the_contract_with_its_unique_constraints(backend: Backend) {
    let app = TestApp::start(backend).await;
    // Every table exists (a missing one fails the query); only the configured accounts and
    // their two workspaces are in it yet.
    for (table, rows) in [
        ("workspaces", 2),
        ("whatsapp_accounts", 3),
        ("webhook_events", 0),
        ("contacts", 0),
        ("conversations", 0),
        ("messages", 0),
        ("webhook_dlq", 0),
        ("agent_contexts", 0),
        ("agent_sessions", 0),
        ("conversation_state_transitions", 0),
        ("users", 0),
    ] {
        assert_eq!(app.count(table).await, rows, "{table}");
    }
    // Running the migrations again is a no-op.
    wahook::store::migrate(&app.db).await.unwrap();

    let ws = app
        .scalar("SELECT id FROM workspaces WHERE name = 'acme'")
        .await;
    let now = "'2026-01-01 00:00:00+00:00'";
    let must_conflict = |sql: String| {
        let db = app.db.clone();
        async move {
            use sea_orm::ConnectionTrait;
            db.execute_unprepared(&sql).await.expect("first insert");
            let second = db.execute_unprepared(&sql).await;
            assert!(
                second.is_err(),
                "second insert must violate a unique constraint: {sql}"
            );
        }
    };
    must_conflict(format!(
        "INSERT INTO contacts (workspace_id, phone, lead_status, lead_score, created_at, updated_at) \
         VALUES ({ws}, '4917000000001', 'prospect', 50, {now}, {now})"
    ))
    .await;
    let contact = app.scalar("SELECT id FROM contacts").await;
    // Defaults of a new contact.
    assert_eq!(app.scalar("SELECT lead_score FROM contacts").await, 50);
    must_conflict(format!(
        "INSERT INTO conversations (workspace_id, contact_id, status, message_count, created_at, updated_at) \
         VALUES ({ws}, {contact}, 'open', 0, {now}, {now})"
    ))
    .await;
    let conversation = app.scalar("SELECT id FROM conversations").await;
    must_conflict(format!(
        "INSERT INTO messages (workspace_id, conversation_id, direction, wamid, message_type, timestamp, metadata, created_at, updated_at) \
         VALUES ({ws}, {conversation}, 'inbound', 'wamid.X', 'text', {now}, '{{}}', {now}, {now})"
    ))
    .await;
    must_conflict(format!(
        "INSERT INTO users (workspace_id, name, email, role, is_active, created_at, updated_at) \
         VALUES ({ws}, 'Ana', 'ana@example.com', 'admin', TRUE, {now}, {now})"
    ))
    .await;
    must_conflict(format!(
        "INSERT INTO webhook_events (source, dedup_key, payload, headers, received_at, status, attempts, correlation_id) \
         VALUES ('meta', 'k1', '{{}}', '{{}}', {now}, 'pending', 0, 'c')"
    ))
    .await;
    must_conflict(format!(
        "INSERT INTO whatsapp_accounts (workspace_id, phone_number_id, display_phone_number, app_secret, verify_token, created_at, updated_at) \
         VALUES ({ws}, '999', '999', 's', 't', {now}, {now})"
    ))
    .await;
    // The same wamid in another workspace is another message.
    let other = app
        .scalar("SELECT id FROM workspaces WHERE name = 'globex'")
        .await;
    app.exec(&format!(
        "INSERT INTO contacts (workspace_id, phone, lead_status, lead_score, created_at, updated_at) \
         VALUES ({other}, '4917000000001', 'prospect', 50, {now}, {now})"
    ))
    .await;
    assert_eq!(app.count("contacts").await, 2);
    app.stop().await;
}

async fn configured_accounts_are_upserted_once_across_restarts(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (test_db, mut config) = app.stop().await;
    config.accounts[0].display_phone_number = Some("15559990000".into());
    let app = TestApp::start_on(test_db, config).await;
    assert_eq!(app.count("whatsapp_accounts").await, 3);
    assert_eq!(app.count("workspaces").await, 2);
    assert_eq!(
        app.scalar(&format!(
            "SELECT COUNT(*) FROM whatsapp_accounts WHERE phone_number_id = '{ACME_PNID}' AND display_phone_number = '15559990000'"
        ))
        .await,
        1,
        "a changed account is updated in place"
    );
    app.stop().await;
}

async fn migrate_command_applies_the_schema(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let out = Command::new(env!("CARGO_BIN_EXE_wahook"))
        .arg("migrate")
        .env("WAHOOK_DATABASE__URL", &test_db.url)
        .env("WAHOOK_DATABASE__SCHEMA", &test_db.schema)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("migrations applied"));
    let mut config = test_config(&test_db);
    config.accounts.clear();
    let app = TestApp::start_on(test_db, config).await;
    assert_eq!(app.count("webhook_events").await, 0);
    app.stop().await;
}

/// Starts `wahook serve` on a free port, reads the address from its start-up line and
/// returns the child with its `/health` body.
pub(crate) async fn serve_and_health(mut cmd: Command) -> (std::process::Child, serde_json::Value) {
    let mut child = cmd
        .arg("serve")
        .env("WAHOOK_SERVER__LISTEN", "127.0.0.1:0")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let listen = tokio::task::spawn_blocking(move || {
        for line in BufReader::new(stderr).lines() {
            let line = line.ok()?;
            if line.contains("wahook started") {
                let v: serde_json::Value = serde_json::from_str(&line).ok()?;
                return v["listen"].as_str().map(str::to_owned);
            }
        }
        None
    })
    .await
    .unwrap();
    let listen = listen.expect("a start-up line with the listen address");
    let res = crate::common::client()
        .get(format!("http://{listen}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    (child, res.json().await.unwrap())
}

pub(crate) fn wahook() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wahook"));
    cmd.env_remove("DATABASE_URL").env_remove("WAHOOK_CONFIG");
    cmd
}

#[test]
fn a_bad_config_value_fails_start_up_naming_the_key_and_its_origin() {
    let out = wahook()
        .arg("serve")
        .env("WAHOOK_SERVER__LISTEN", "nonsense")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.listen"), "{err}");
    assert!(err.contains("WAHOOK_SERVER__LISTEN"), "{err}");

    // A value that parses but is invalid names its exact variable too.
    let out = wahook()
        .arg("serve")
        .env("WAHOOK_INTAKE__BATCH_MAX", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`intake.batch_max` (environment variable WAHOOK_INTAKE__BATCH_MAX)"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[intake]\nbatch_max = 0\n").unwrap();
    let out = wahook()
        .arg("serve")
        .env("WAHOOK_CONFIG", &file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("intake.batch_max"), "{err}");
    assert!(err.contains("bad.toml"), "{err}");

    std::fs::write(
        &file,
        "[[accounts]]\nworkspace = \"w\"\nphone_number_id = \"1\"\ndisplay_phone_number = \"1\"\nverify_token = \"t\"\napp_secret_env = \"WAHOOK_TEST_UNSET_SECRET\"\n",
    )
    .unwrap();
    let out = wahook()
        .arg("serve")
        .env("WAHOOK_CONFIG", &file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("accounts[0].app_secret_env"), "{err}");
}

#[test]
fn config_command_prints_the_effective_config_with_secrets_redacted() {
    let out = wahook()
        .arg("config")
        .env(
            "DATABASE_URL",
            "postgres://app:hunter2@db.internal:5432/wahook",
        )
        .env("WAHOOK_INTAKE__BATCH_MAX", "64")
        .env(
            "WAHOOK_CLUSTER__AMQP_URL",
            "amqp://wahook:rabbit-secret@mq.internal:5672/%2f",
        )
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("batch_max = 64"), "{text}");
    assert!(
        text.contains("amqp://wahook:<redacted>@mq.internal:5672/%2f"),
        "{text}"
    );
    assert!(!text.contains("rabbit-secret"), "{text}");
    assert!(
        text.contains("postgres://app:<redacted>@db.internal:5432/wahook"),
        "{text}"
    );
    assert!(!text.contains("hunter2"));
    assert!(!text.contains("demo-app-secret-change-me"), "{text}");
    assert!(!text.contains("demo-verify-token-change-me"), "{text}");

    // WAHOOK_DATABASE__URL wins over DATABASE_URL.
    let out = wahook()
        .arg("config")
        .env("DATABASE_URL", "postgres://a@x/y")
        .env("WAHOOK_DATABASE__URL", "sqlite://elsewhere.db")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("sqlite://elsewhere.db"));

    // A password given in the URL's query is hidden too.
    let out = wahook()
        .arg("config")
        .env(
            "DATABASE_URL",
            "postgres://db.internal/wahook?user=app&password=hunter3&sslmode=require&sslpassword=key-pass",
        )
        .env(
            "WAHOOK_CLUSTER__AMQP_URL",
            "amqp://mq.internal:5672/%2f?auth_token=rabbit-token&heartbeat=10",
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for secret in ["hunter3", "key-pass", "rabbit-token"] {
        assert!(!text.contains(secret), "{secret} printed: {text}");
    }
    assert!(
        text.contains("postgres://db.internal/wahook?user=app&password=<redacted>&sslmode=require&sslpassword=<redacted>"),
        "{text}"
    );
    assert!(text.contains("heartbeat=10"), "{text}");
}

#[test]
fn sign_command_prints_the_header_a_sender_would_send() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.json");
    // Kapso SDK's vector: CRLF, accents and emoji are signed as raw bytes.
    std::fs::write(&file, "{ \"text\": \"Olá 🌎\", \"a\": 1 }\r\n").unwrap();
    let out = wahook()
        .args(["sign", "--kapso", "--secret", "webhook-secret"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "f0988cf20f547de9fdaa8b5a31e0cbdb62162b73c52c0e90746ca691483fc026"
    );
    let out = wahook()
        .args(["sign", "--secret", "webhook-secret"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "sha256=f0988cf20f547de9fdaa8b5a31e0cbdb62162b73c52c0e90746ca691483fc026"
    );
}

/// `wahook serve` from a fresh folder: the embedded defaults, `data/wahook.db` created, and
/// /health answering on the address the start-up line names.
#[tokio::test]
async fn serve_on_a_fresh_folder_creates_the_sqlite_file_and_answers_health() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = wahook();
    cmd.current_dir(dir.path())
        .env_remove("WAHOOK_DATABASE__URL");
    let (mut child, body) = serve_and_health(cmd).await;
    assert_eq!(body["database"]["backend"], "sqlite");
    assert!(dir.path().join("data/wahook.db").is_file());
    child.kill().unwrap();
    child.wait().unwrap();
}
