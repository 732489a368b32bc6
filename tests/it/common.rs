//! The harness: every test starts the real server (`wahook::start`) on port 0 against its own
//! database — a temp SQLite file, or its own PostgreSQL schema — and talks real HTTP to it.

use std::{path::PathBuf, time::Duration};

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, Statement};
use tokio::net::TcpListener;
use wahook::{
    Running,
    config::{AccountConfig, Config},
    ingest::signature,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates `sqlite::NAME` and `postgres::NAME` tests from `async fn NAME(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Postgres).await
                }
            )*
        }
    };
}

pub const ACME_PNID: &str = "111111111111111";
pub const ACME2_PNID: &str = "333333333333333";
pub const GLOBEX_PNID: &str = "222222222222222";
pub const ACME_SECRET: &str = "acme-app-secret";
pub const GLOBEX_SECRET: &str = "globex-app-secret";
pub const ACME_KAPSO: &str = "acme-kapso-secret";
pub const ACME_VERIFY: &str = "acme-verify-token";

pub fn test_accounts() -> Vec<AccountConfig> {
    let account =
        |ws: &str, pnid: &str, secret: &str, verify: &str, kapso: Option<&str>| AccountConfig {
            workspace: ws.into(),
            phone_number_id: pnid.into(),
            display_phone_number: Some(format!("1555{}", &pnid[..7])),
            waba_id: None,
            app_secret: Some(secret.into()),
            app_secret_env: None,
            verify_token: verify.into(),
            kapso_secret: kapso.map(Into::into),
            agent: None,
            access_token_env: None,
            access_token: None,
            ..Default::default()
        };
    vec![
        account(
            "acme",
            ACME_PNID,
            ACME_SECRET,
            ACME_VERIFY,
            Some(ACME_KAPSO),
        ),
        account("acme", ACME2_PNID, ACME_SECRET, "acme-2-verify", None),
        account("globex", GLOBEX_PNID, GLOBEX_SECRET, "globex-verify", None),
    ]
}

fn postgres_url() -> String {
    std::env::var("WAHOOK_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Where a test's data lives.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    pub schema: String,
    _dir: Option<tempfile::TempDir>,
    /// The `fs` media store's folder (kept across a test's restarts, like the database).
    pub media: tempfile::TempDir,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("wahook.db").display());
                Self {
                    backend,
                    url,
                    schema: String::new(),
                    _dir: Some(dir),
                    media: tempfile::tempdir().expect("temp dir"),
                }
            }
            Backend::Postgres => {
                let url = postgres_url();
                let mut opts = ConnectOptions::new(url.clone());
                opts.max_connections(1)
                    .connect_timeout(Duration::from_secs(5))
                    .sqlx_logging(false);
                if let Err(e) = Database::connect(opts).await {
                    panic!(
                        "PostgreSQL is not reachable at {url} ({e}). The PostgreSQL half of the \
                         suite needs a server: start one, or set WAHOOK_TEST_POSTGRES_URL=\
                         postgres://user@host:port/db to point the tests at yours."
                    );
                }
                // A schema per test keeps parallel tests apart; wahook creates it on connect.
                let schema = format!("wt_{}", uuid::Uuid::now_v7().simple());
                Self {
                    backend,
                    url,
                    schema,
                    _dir: None,
                    media: tempfile::tempdir().expect("temp dir"),
                }
            }
        }
    }

    pub fn apply(&self, config: &mut Config) {
        config.database.url = self.url.clone();
        config.database.schema = self.schema.clone();
        config.database.max_connections = 4;
        config.media.path = self.media.path().display().to_string();
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.backend == Backend::Postgres && !self.schema.is_empty() {
            // Best effort, outside the test's runtime: the schema is unique to this test.
            let (url, schema) = (self.url.clone(), self.schema.clone());
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async {
                    let db = Database::connect(url).await.ok()?;
                    db.execute_unprepared(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                        .await
                        .ok()?;
                    db.close().await.ok()
                })
            })
            .join();
        }
    }
}

/// A running server and what a test needs to talk to it.
pub struct TestApp {
    pub running: Option<Running>,
    pub base: String,
    pub client: reqwest::Client,
    pub db: DatabaseConnection,
    pub config: Config,
    pub test_db: TestDb,
}

pub fn test_config(test_db: &TestDb) -> Config {
    let mut config = Config::defaults().expect("config/default.toml loads");
    test_db.apply(&mut config);
    config.accounts = test_accounts();
    config
}

impl TestApp {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, change: impl FnOnce(&mut Config)) -> Self {
        let test_db = TestDb::new(backend).await;
        let mut config = test_config(&test_db);
        change(&mut config);
        Self::start_on(test_db, config).await
    }

    pub async fn start_on(test_db: TestDb, config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let running = wahook::start(config.clone(), Some(listener))
            .await
            .expect("server starts");
        let base = format!("http://{}", running.addr);
        let db = running.db.clone();
        Self {
            running: Some(running),
            base,
            client: client(),
            db,
            config,
            test_db,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// POSTs a body to the Meta endpoint signed with `secret`.
    pub async fn post_meta(&self, body: impl Into<Vec<u8>>, secret: &str) -> reqwest::Response {
        let body = body.into();
        let sig = signature::meta_header(secret.as_bytes(), &body);
        self.post_meta_with(body, Some(&sig)).await
    }

    pub async fn post_meta_with(
        &self,
        body: impl Into<Vec<u8>>,
        signature_header: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .client
            .post(self.url("/webhooks/whatsapp"))
            .header("content-type", "application/json")
            .body(body.into());
        if let Some(sig) = signature_header {
            req = req.header("x-hub-signature-256", sig);
        }
        req.send().await.expect("request sent")
    }

    /// POSTs a Kapso event, signed (bare hex) with `secret`.
    pub async fn post_kapso(
        &self,
        body: impl Into<Vec<u8>>,
        secret: &str,
        event: &str,
        idempotency_key: &str,
        batch: bool,
    ) -> reqwest::Response {
        let body = body.into();
        let sig = signature::sign_hex(secret.as_bytes(), &body);
        let mut req = self
            .client
            .post(self.url("/webhooks/kapso"))
            .header("content-type", "application/json")
            .header("x-webhook-signature", sig)
            .header("x-webhook-event", event)
            .header("x-idempotency-key", idempotency_key)
            .header("x-webhook-payload-version", "v2")
            .body(body);
        if batch {
            req = req.header("x-webhook-batch", "true");
        }
        req.send().await.expect("request sent")
    }

    pub async fn count(&self, table: &str) -> i64 {
        self.scalar(&format!("SELECT COUNT(*) FROM {table}")).await
    }

    /// The rows of a test query (the one place tests read the database).
    async fn rows(&self, sql: &str) -> Vec<sea_orm::QueryResult> {
        let backend = self.db.get_database_backend();
        self.db
            .query_all_raw(Statement::from_string(backend, sql.to_owned()))
            .await
            .unwrap_or_else(|e| panic!("`{sql}` runs: {e}"))
    }

    /// The first column of every row, as integers (INT4 or INT8).
    pub async fn column(&self, sql: &str) -> Vec<i64> {
        self.rows(sql)
            .await
            .iter()
            .map(|r| {
                r.try_get_by_index::<i64>(0)
                    .or_else(|_| r.try_get_by_index::<i32>(0).map(i64::from))
                    .expect("an integer")
            })
            .collect()
    }

    /// The text of a one-row, one-column query (`None` for NULL).
    pub async fn text(&self, sql: &str) -> Option<String> {
        let rows = self.rows(sql).await;
        assert_eq!(rows.len(), 1, "`{sql}` yields one row");
        rows[0]
            .try_get_by_index::<Option<String>>(0)
            .expect("a text")
    }

    /// The integer of a one-row query.
    pub async fn scalar(&self, sql: &str) -> i64 {
        let values = self.column(sql).await;
        assert_eq!(values.len(), 1, "`{sql}` yields one row");
        values[0]
    }

    /// Waits until `sql` yields `expected`: re-checked on processing progress, and every
    /// 50 ms for work that commits outside the store writer (catalog syncs, media jobs).
    pub async fn wait_for(&self, sql: &str, expected: i64) {
        let mut progress = self.running().progress();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            progress.borrow_and_update();
            let now = self.scalar(sql).await;
            if now == expected {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("timed out waiting for `{sql}` to be {expected}; it is {now}");
            }
            let poll = tokio::time::Instant::now() + Duration::from_millis(50);
            let _ = tokio::time::timeout_at(poll.min(deadline), progress.changed()).await;
        }
    }

    /// Waits until every accepted event is processed and `n` are.
    pub async fn wait_processed(&self, n: i64) {
        self.wait_for(
            "SELECT COUNT(*) FROM webhook_events WHERE status = 'processed'",
            n,
        )
        .await;
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("the server is running")
    }

    pub async fn strings(&self, sql: &str) -> Vec<String> {
        self.rows(sql)
            .await
            .iter()
            .map(|r| {
                r.try_get_by_index::<Option<String>>(0)
                    .expect("a string")
                    .unwrap_or_default()
            })
            .collect()
    }

    pub async fn db_time(&self, sql: &str) -> Option<chrono::DateTime<chrono::Utc>> {
        self.rows(sql)
            .await
            .first()?
            .try_get_by_index::<Option<chrono::DateTime<chrono::Utc>>>(0)
            .expect("a timestamp")
    }

    /// `GET /health` as JSON.
    pub async fn health(&self) -> serde_json::Value {
        self.client
            .get(self.url("/health"))
            .send()
            .await
            .expect("health")
            .json()
            .await
            .expect("JSON")
    }

    /// The value of the first `/metrics` line starting with `series` (name and labels), or 0.
    /// The registry is the process's: tests compare before and after.
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    }

    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    pub async fn exec(&self, sql: &str) {
        self.db
            .execute_unprepared(sql)
            .await
            .expect("statement runs");
    }

    pub async fn stop(mut self) -> (TestDb, Config) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.expect("clean shutdown");
        }
        (self.test_db, self.config)
    }
}

/// An HTTP client for the tests (TLS set up the way wahook sets it up).
pub fn client() -> reqwest::Client {
    wahook::install_tls();
    reqwest::Client::new()
}

pub fn fixture(path: &str) -> Vec<u8> {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("fixture {}: {e}", full.display()))
}

/// A minimal Meta text-message payload for `phone_number_id`.
pub fn meta_text(phone_number_id: &str, from: &str, wamid: &str, body: &str) -> String {
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"4000","changes":[{{"value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15551234567","phone_number_id":"{phone_number_id}"}},"contacts":[{{"profile":{{"name":"Test User"}},"wa_id":"{from}"}}],"messages":[{{"from":"{from}","id":"{wamid}","timestamp":"1767225600","type":"text","text":{{"body":"{body}"}}}}]}},"field":"messages"}}]}}]}}"#
    )
}

/// Failpoints are process-wide: the tests that configure them take turns.
pub static FAILPOINTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
