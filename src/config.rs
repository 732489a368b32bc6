//! Layered configuration: `config/default.toml` (every default), then the file named by
//! `WAHOOK_CONFIG`, then `DATABASE_URL`, then `WAHOOK_<SECTION>__<KEY>` environment variables.

use std::{net::SocketAddr, path::Path};

use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use serde::{Deserialize, Serialize};

/// The defaults file, compiled in as a fallback for a binary run outside the source tree.
const EMBEDDED_DEFAULTS: &str = include_str!("../config/default.toml");
const DEFAULTS_PATH: &str = "config/default.toml";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub intake: IntakeConfig,
    pub actors: ActorsConfig,
    pub processing: ProcessingConfig,
    pub health: HealthConfig,
    pub log: LogConfig,
    pub graph: GraphConfig,
    pub cluster: ClusterConfig,
    pub tenants: TenantsConfig,
    pub media: MediaConfig,
    pub notify: NotifyConfig,
    /// AI agent types by name.
    #[serde(default)]
    pub agents: std::collections::BTreeMap<String, AgentConfig>,
    #[serde(default)]
    pub accounts: Vec<AccountConfig>,
    /// Kapso projects whose project webhooks (`workflow.execution.*`) wahook takes.
    #[serde(default)]
    pub kapso_projects: Vec<KapsoProjectConfig>,
}

/// A Kapso project: its webhooks name no phone number, so they are routed to a workspace by
/// `project_id` and verified with the project webhook's secret.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KapsoProjectConfig {
    pub workspace: String,
    pub project_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
}

impl KapsoProjectConfig {
    pub fn resolve_secret(&self) -> Result<String, String> {
        secret(&self.secret, &self.secret_env)?
            .ok_or_else(|| "a Kapso project needs secret or secret_env".into())
    }
}

/// The WhatsApp Cloud API the agent sends through.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GraphConfig {
    pub base_url: String,
    pub version: String,
    pub request_timeout_ms: u64,
}

/// One AI agent type: an OpenAI-compatible chat-completions provider and how turns use it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub base_url: String,
    pub model: String,
    /// Name of the variable holding the API key (optional for local servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// The key itself (prefer `api_key_env`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    #[serde(default)]
    pub system_prompt: String,
    #[serde(default = "d::max_context_tokens")]
    pub max_context_tokens: usize,
    #[serde(default = "d::max_reply_tokens")]
    pub max_reply_tokens: usize,
    #[serde(default = "d::temperature")]
    pub temperature: f32,
    /// Send `temperature` (off for models that take only their default, e.g. OpenAI's
    /// reasoning models).
    #[serde(default = "d::yes")]
    pub send_temperature: bool,
    /// The request field of the reply limit: `max_tokens` (most servers) or
    /// `max_completion_tokens` (OpenAI's newer models).
    #[serde(default)]
    pub token_param: TokenParam,
    /// The server's real context limit in its own tokens (llama.cpp's `n_ctx`, Ollama's
    /// `num_ctx`), when it is smaller than `max_context_tokens`: the context is kept under it
    /// with a margin, counted at the ratio learned from the server's `usage.prompt_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<usize>,
    /// Send the system prompt as a `system` turn (off for chat templates that refuse the role:
    /// it is then folded into the first user turn).
    #[serde(default = "d::yes")]
    pub system_role: bool,
    #[serde(default = "d::request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// The whole turn's time with the provider, retries included: a hung server cannot hold
    /// a conversation longer.
    #[serde(default = "d::turn_timeout_ms")]
    pub turn_timeout_ms: u64,
    #[serde(default = "d::max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "d::backoff_base_ms")]
    pub backoff_base_ms: u64,
    #[serde(default = "d::backoff_max_ms")]
    pub backoff_max_ms: u64,
    #[serde(default = "d::breaker_failures")]
    pub breaker_failures: u32,
    #[serde(default = "d::breaker_cooldown_ms")]
    pub breaker_cooldown_ms: u64,
    #[serde(default = "d::reply_debounce_ms")]
    pub reply_debounce_ms: u64,
    #[serde(default = "d::reply_max_wait_ms")]
    pub reply_max_wait_ms: u64,
    /// Whether the agent answers messages written in a group (default: it stays silent there).
    #[serde(default)]
    pub answer_groups: bool,
    /// The workspaces (by name) whose accounts may use this agent; empty: any. An agent
    /// carries its provider key and system prompt, so a tenant should not pick another's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workspaces: Vec<String>,
    /// Follow up when the customer has not written for this long after our last message.
    #[serde(default = "d::follow_up_after_ms")]
    pub follow_up_after_ms: u64,
    /// At most this many follow-ups in a row (until the customer writes); 0: none.
    #[serde(default)]
    pub follow_up_max: u32,
    /// The template sent as a follow-up once the 24-hour window has closed (none: no
    /// follow-up then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_up_template: Option<String>,
    #[serde(default = "d::follow_up_template_language")]
    pub follow_up_template_language: String,
    /// The template's body values, in order (positional) — `{name}` becomes the contact's
    /// name and `{phone}` its number.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub follow_up_template_parameters: Vec<String>,
    /// What the model is asked for a follow-up inside the window.
    #[serde(default = "d::follow_up_prompt")]
    pub follow_up_prompt: String,
    /// A conversation whose follow-up came due longer ago than this is left alone (turning
    /// follow-ups on does not write to every old lead at once).
    #[serde(default = "d::follow_up_within_ms")]
    pub follow_up_within_ms: u64,
    /// Images of the burst go to the model as `image_url` parts (a model that sees).
    #[serde(default)]
    pub vision: bool,
    /// An image larger than this (bytes, or pixels on its longer side) is scaled down first.
    #[serde(default = "d::vision_max_bytes")]
    pub vision_max_bytes: usize,
    #[serde(default = "d::vision_max_side")]
    pub vision_max_side: u32,
    /// Voice notes and audio are transcribed with this model (`POST /audio/transcriptions`)
    /// and the transcript put in the context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcribe_model: Option<String>,
    /// How long a turn waits for the burst's files to be fetched before it goes on without.
    #[serde(default = "d::media_wait_ms")]
    pub media_wait_ms: u64,
    /// After a person replies (an operator through the API or console, or the business phone's
    /// WhatsApp Business app) the agent keeps quiet in that conversation this long; each human
    /// reply starts it again. 0: the agent never yields.
    #[serde(default = "d::human_silence_ms")]
    pub human_silence_ms: u64,
    /// A customer message with one of these words (whole words, any case) hands the
    /// conversation to a person (`human`) instead of a reply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub handoff_keywords: Vec<String>,
}

/// The field a chat-completions request names its reply limit with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenParam {
    #[default]
    MaxTokens,
    MaxCompletionTokens,
}

impl TokenParam {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenParam::MaxTokens => "max_tokens",
            TokenParam::MaxCompletionTokens => "max_completion_tokens",
        }
    }
}

/// The agent defaults (an agent table is optional, so they live here, not in default.toml).
mod d {
    pub fn yes() -> bool {
        true
    }
    pub fn turn_timeout_ms() -> u64 {
        45_000
    }
    pub fn max_context_tokens() -> usize {
        4000
    }
    pub fn max_reply_tokens() -> usize {
        300
    }
    pub fn temperature() -> f32 {
        0.7
    }
    pub fn header_read_timeout_ms() -> u64 {
        10_000
    }

    pub fn server_request_timeout_ms() -> u64 {
        30_000
    }

    pub fn max_connections() -> usize {
        10_000
    }

    pub fn request_timeout_ms() -> u64 {
        30_000
    }
    pub fn max_attempts() -> u32 {
        3
    }
    pub fn backoff_base_ms() -> u64 {
        500
    }
    pub fn backoff_max_ms() -> u64 {
        8000
    }
    pub fn breaker_failures() -> u32 {
        5
    }
    pub fn breaker_cooldown_ms() -> u64 {
        30_000
    }
    pub fn reply_debounce_ms() -> u64 {
        1500
    }
    pub fn reply_max_wait_ms() -> u64 {
        8000
    }
    pub fn follow_up_after_ms() -> u64 {
        24 * 3_600_000
    }
    pub fn follow_up_template_language() -> String {
        "en_US".into()
    }
    pub fn follow_up_prompt() -> String {
        "The customer has not answered your last message. Write one short, friendly follow-up \
         that picks up where the conversation left off. Do not repeat yourself."
            .into()
    }
    pub fn follow_up_within_ms() -> u64 {
        7 * 24 * 3_600_000
    }
    pub fn vision_max_bytes() -> usize {
        1_000_000
    }
    pub fn vision_max_side() -> u32 {
        1536
    }
    pub fn media_wait_ms() -> u64 {
        15_000
    }
    pub fn human_silence_ms() -> u64 {
        30 * 60_000
    }
}

impl AgentConfig {
    /// A provider at `base_url` with every default (tests and tools change fields after).
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key_env: None,
            api_key: None,
            system_prompt: String::new(),
            max_context_tokens: d::max_context_tokens(),
            max_reply_tokens: d::max_reply_tokens(),
            temperature: d::temperature(),
            send_temperature: true,
            token_param: TokenParam::MaxTokens,
            context_window: None,
            system_role: true,
            request_timeout_ms: d::request_timeout_ms(),
            turn_timeout_ms: d::turn_timeout_ms(),
            max_attempts: d::max_attempts(),
            backoff_base_ms: d::backoff_base_ms(),
            backoff_max_ms: d::backoff_max_ms(),
            breaker_failures: d::breaker_failures(),
            breaker_cooldown_ms: d::breaker_cooldown_ms(),
            reply_debounce_ms: d::reply_debounce_ms(),
            reply_max_wait_ms: d::reply_max_wait_ms(),
            answer_groups: false,
            workspaces: Vec::new(),
            follow_up_after_ms: d::follow_up_after_ms(),
            follow_up_max: 0,
            follow_up_template: None,
            follow_up_template_language: d::follow_up_template_language(),
            follow_up_template_parameters: Vec::new(),
            follow_up_prompt: d::follow_up_prompt(),
            follow_up_within_ms: d::follow_up_within_ms(),
            vision: false,
            vision_max_bytes: d::vision_max_bytes(),
            vision_max_side: d::vision_max_side(),
            transcribe_model: None,
            media_wait_ms: d::media_wait_ms(),
            human_silence_ms: d::human_silence_ms(),
            handoff_keywords: Vec::new(),
        }
    }

    /// Whether accounts of `workspace` (by name) may use this agent.
    pub fn allows(&self, workspace: &str) -> bool {
        self.workspaces.is_empty() || self.workspaces.iter().any(|w| w == workspace)
    }

    /// The API key: inline, or from the variable `api_key_env` names; `None` for none.
    pub fn resolve_api_key(&self) -> Result<Option<String>, String> {
        secret(&self.api_key, &self.api_key_env)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub body_limit_bytes: usize,
    /// A connection must send a request's headers within this (slow-loris clients are cut).
    #[serde(default = "d::header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// A request must be read and answered within this, or it gets 408 (bodies trickled in
    /// slowly are cut).
    #[serde(default = "d::server_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Connections open at once; past it a new one is closed at once.
    #[serde(default = "d::max_connections")]
    pub max_connections: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
    #[serde(default)]
    pub schema: String,
    pub sqlite_synchronous: SqliteSynchronous,
    /// Whether the store's transactions (processing) wait for their own fsync. The inbox always
    /// does (per `sqlite_synchronous`); without it a crash can lose the last store commits,
    /// whose events are then still `pending` in the inbox and are processed again.
    pub store_fsync: bool,
    /// Prepared statements kept per connection. The writers' statements differ with their
    /// batch size, so the driver's default of 100 made them prepare most statements anew.
    pub statement_cache: usize,
    /// SQLite: how often the write-ahead log is copied into the database file, mostly off the
    /// writers' path (`store::checkpoint_every`).
    pub sqlite_checkpoint_ms: u64,
    pub acquire_timeout_ms: u64,
}

impl DatabaseConfig {
    /// Whether an inbox commit waits for the disk before its requests get their 200.
    pub fn inbox_durable(&self) -> bool {
        matches!(
            self.sqlite_synchronous,
            SqliteSynchronous::Full | SqliteSynchronous::Extra
        )
    }

    /// Whether a store commit waits for the disk before the actors hear of it.
    pub fn store_durable(&self) -> bool {
        self.store_fsync && self.inbox_durable()
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    Off,
    Normal,
    Full,
    Extra,
}

impl SqliteSynchronous {
    pub fn pragma(self) -> &'static str {
        match self {
            Self::Off => "OFF",
            Self::Normal => "NORMAL",
            Self::Full => "FULL",
            Self::Extra => "EXTRA",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IntakeConfig {
    /// A body that names no known phone number or WhatsApp Business Account is checked against
    /// each distinct secret; past this size it is refused without any (account-level webhooks
    /// are a few hundred bytes).
    pub unrouted_max_bytes: usize,
    pub batch_max: usize,
    pub batch_wait_us: u64,
    pub queue_capacity: usize,
    pub retry_after_seconds: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActorsConfig {
    pub idle_timeout_ms: u64,
    /// Conversation actors alive at once, in all workspaces; past it the least recently used
    /// idle ones stop early (0: no bound).
    pub max_live: usize,
    pub restart_budget: u32,
    pub restart_window_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessingConfig {
    pub batch_max: usize,
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub dlq_max_attempts: u32,
    pub dlq_backoff_base_ms: u64,
    pub dlq_backoff_max_ms: u64,
    pub dlq_poll_ms: u64,
    pub max_in_flight: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    pub max_pending_age_seconds: u64,
    pub stuck_after_seconds: u64,
    pub gauge_interval_ms: u64,
}

/// How hand-offs are announced to an account's `notify_url` (Standard Webhooks).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// A receiver that has not answered by then failed this attempt.
    pub timeout_ms: u64,
    /// Attempts before a notification is `failed` (after 0 s, 5 s, 5 min, 30 min, 2 h, 5 h,
    /// 10 h, 10 h; a `Retry-After` is honoured).
    pub max_attempts: u32,
    pub poll_ms: u64,
    /// A worker that died holding a notification gives it up after this.
    pub lease_ms: u64,
    /// The conversation's newest messages the notification carries.
    pub last_messages: u64,
}

/// Where the files customers send are kept, and how their jobs fetch them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// `fs` (a folder) or `s3` (a bucket, `[media.s3]`).
    pub store: MediaStoreKind,
    /// The folder of the `fs` store (created if missing).
    pub path: String,
    /// Files stored longer ago are deleted (and their rows marked `deleted`); 0: kept.
    pub keep_days: u64,
    /// Downloads at once.
    pub concurrency: usize,
    /// How often due jobs are looked for (also after every store commit).
    pub poll_ms: u64,
    /// A worker holds a job this long; one that died holding it gives it up then.
    pub lease_ms: u64,
    /// A failed fetch is tried again after this, doubling up to `retry_max_ms`, until the
    /// media id expires (7 days after the message).
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// One fetch (metadata and download) may take this long.
    pub download_timeout_ms: u64,
    /// No file is larger (on top of WhatsApp's limits per type).
    pub max_bytes: u64,
    /// No file an operator uploads (`POST /api/v1/media`, held in memory while it goes to the
    /// Graph API) is larger (on top of WhatsApp's limits per type).
    pub upload_max_bytes: u64,
    /// How often old files are looked for when `keep_days` is set.
    pub retention_every_ms: u64,
    #[serde(default)]
    pub s3: S3Config,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaStoreKind {
    Fs,
    S3,
}

/// An S3 bucket (AWS or any S3-protocol server). Credentials come from the environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, …) unless given here.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    #[serde(default)]
    pub bucket: String,
    /// Keys start with this (e.g. `wahook/`).
    #[serde(default)]
    pub prefix: String,
    /// Another S3-protocol server (MinIO, moto, …); empty: AWS.
    #[serde(default)]
    pub endpoint: String,
    #[serde(default)]
    pub region: String,
    /// Allow an `http://` endpoint.
    #[serde(default)]
    pub allow_http: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
}

/// What one workspace may hold.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantsConfig {
    /// WhatsApp accounts per workspace (a body naming no number is checked against each
    /// distinct secret, so their number bounds what an unsigned request costs).
    pub max_accounts_per_workspace: usize,
}

/// Several nodes on one PostgreSQL and RabbitMQ (`mode = "rabbitmq"`), or one on its own.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub mode: ClusterMode,
    pub amqp_url: String,
    pub partitions: u32,
    /// Empty: the host name and the process id.
    pub node_id: String,
    pub queue_prefix: String,
    /// A node that has not renewed its partitions for this long has lost them.
    pub lease_ms: u64,
    /// How often a node renews its partitions, counts the live nodes and rebalances.
    pub tick_ms: u64,
    /// Inbox events still `pending` this long after their commit were never published (a
    /// crash between the commit and the broker's confirm): the sweeper publishes them.
    pub sweep_after_ms: u64,
    /// Deliveries a partition's consumer holds unacknowledged.
    pub prefetch: u16,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClusterMode {
    Single,
    Rabbitmq,
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        self.mode == ClusterMode::Rabbitmq
    }

    /// This node's name: `node_id`, or the host name and process id.
    pub fn node_name(&self) -> String {
        if !self.node_id.trim().is_empty() {
            return self.node_id.trim().to_owned();
        }
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "node".into());
        format!("{host}-{}", std::process::id())
    }
}

/// Exponential backoff with "equal jitter": half fixed, half random, capped.
pub fn backoff(attempt: u32, base_ms: u64, max_ms: u64) -> std::time::Duration {
    let exp = base_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(30));
    let capped = exp.min(max_ms).max(1);
    let half = capped / 2;
    let jitter = if capped - half > 0 {
        rand::random_range(0..=capped - half)
    } else {
        0
    };
    std::time::Duration::from_millis(half + jitter)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub filter: String,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    pub workspace: String,
    pub phone_number_id: String,
    /// Informational (Meta sends it in every payload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_phone_number: Option<String>,
    /// The WhatsApp Business Account the number belongs to: webhooks that name no phone
    /// number (account and template updates) are checked against this account's secret only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waba_id: Option<String>,
    #[serde(default)]
    pub app_secret: Option<String>,
    /// Name of an environment variable holding the app secret.
    #[serde(default)]
    pub app_secret_env: Option<String>,
    pub verify_token: String,
    #[serde(default)]
    pub kapso_secret: Option<String>,
    /// The AI agent type (`[agents.<name>]`) that answers this number; none: no replies.
    #[serde(default)]
    pub agent: Option<String>,
    /// Name of the variable holding the Graph API access token the agent sends with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token_env: Option<String>,
    /// The token itself (prefer `access_token_env`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// A conversation of this number handed to a person is announced here: a signed POST
    /// (Standard Webhooks) with the conversation and its last messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_url: Option<String>,
    /// The signing secret (`whsec_` + base64), or the variable holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_secret_env: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(String),
    #[error("configuration key `{key}` ({origin}): {message}")]
    Invalid {
        key: String,
        origin: String,
        message: String,
    },
    /// More than one problem, each on its own line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
}

impl Config {
    /// Loads the layered configuration from the process environment.
    pub fn load() -> Result<Self, ConfigError> {
        Self::from_figment(Self::figment(
            std::env::var_os("WAHOOK_CONFIG").map(Into::into),
        ))
    }

    /// Like [`Config::load`], with `file` in place of the one `WAHOOK_CONFIG` names.
    pub fn load_file(file: &Path) -> Result<Self, ConfigError> {
        if !file.is_file() {
            return Err(ConfigError::Load(format!(
                "configuration file {} does not exist",
                file.display()
            )));
        }
        Self::from_figment(Self::figment(Some(file.to_path_buf())))
    }

    /// Only the defaults file: what tests and tools start from before changing fields.
    pub fn defaults() -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(defaults_provider()))
    }

    fn figment(file: Option<std::path::PathBuf>) -> Figment {
        let mut figment = Figment::from(defaults_provider());
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
        }
        figment
            .merge(
                Env::raw()
                    .only(&["DATABASE_URL"])
                    .map(|_| "database.url".into()),
            )
            // Every override has a section, so `__` separates them; this also keeps
            // WAHOOK_CONFIG itself out of the tree.
            .merge(
                Env::prefixed("WAHOOK_")
                    .filter(|k| k.as_str().contains("__"))
                    .split("__"),
            )
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment.extract().map_err(describe_errors)?;
        config.validate(&figment)?;
        Ok(config)
    }

    /// Every problem of the configuration, not only the first (`wahook config --check` lists
    /// them all).
    fn validate(&self, figment: &Figment) -> Result<(), ConfigError> {
        let mut errs: Vec<ConfigError> = Vec::new();
        let origin = |key: &str| origin_of(key, figment.find_metadata(key));
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: key.into(),
            origin: origin(key),
            message: message.into(),
        };
        if self.database.url.trim().is_empty() {
            errs.push(invalid("database.url", "must not be empty"));
        } else if !(self.database.url.starts_with("sqlite:")
            || self.database.url.starts_with("postgres"))
        {
            errs.push(invalid(
                "database.url",
                "must start with sqlite: or postgres:// (postgresql://)",
            ));
        }
        // Sizes, counts and intervals where 0 would stop wahook from working.
        let positive = [
            (
                "server.body_limit_bytes",
                self.server.body_limit_bytes as u64,
            ),
            (
                "server.header_read_timeout_ms",
                self.server.header_read_timeout_ms,
            ),
            ("server.request_timeout_ms", self.server.request_timeout_ms),
            ("server.max_connections", self.server.max_connections as u64),
            (
                "database.max_connections",
                self.database.max_connections.into(),
            ),
            (
                "database.sqlite_checkpoint_ms",
                self.database.sqlite_checkpoint_ms,
            ),
            ("intake.batch_max", self.intake.batch_max as u64),
            ("intake.queue_capacity", self.intake.queue_capacity as u64),
            ("processing.batch_max", self.processing.batch_max as u64),
            (
                "processing.max_attempts",
                self.processing.max_attempts.into(),
            ),
            ("processing.dlq_poll_ms", self.processing.dlq_poll_ms),
            ("health.gauge_interval_ms", self.health.gauge_interval_ms),
            ("actors.idle_timeout_ms", self.actors.idle_timeout_ms),
            ("cluster.partitions", self.cluster.partitions.into()),
            ("cluster.lease_ms", self.cluster.lease_ms),
            ("cluster.tick_ms", self.cluster.tick_ms),
            ("cluster.sweep_after_ms", self.cluster.sweep_after_ms),
            ("cluster.prefetch", self.cluster.prefetch.into()),
            (
                "tenants.max_accounts_per_workspace",
                self.tenants.max_accounts_per_workspace as u64,
            ),
            ("media.concurrency", self.media.concurrency as u64),
            ("media.poll_ms", self.media.poll_ms),
            ("media.lease_ms", self.media.lease_ms),
            ("media.retry_base_ms", self.media.retry_base_ms),
            ("media.retry_max_ms", self.media.retry_max_ms),
            ("media.download_timeout_ms", self.media.download_timeout_ms),
            ("media.max_bytes", self.media.max_bytes),
            ("media.upload_max_bytes", self.media.upload_max_bytes),
            ("media.retention_every_ms", self.media.retention_every_ms),
            ("notify.timeout_ms", self.notify.timeout_ms),
            ("notify.max_attempts", self.notify.max_attempts as u64),
            ("notify.poll_ms", self.notify.poll_ms),
            ("notify.lease_ms", self.notify.lease_ms),
            ("notify.last_messages", self.notify.last_messages),
        ];
        for (key, _) in positive.iter().filter(|(_, value)| *value == 0) {
            errs.push(invalid(key, "must be at least 1"));
        }
        match self.media.store {
            MediaStoreKind::Fs if self.media.path.trim().is_empty() => {
                errs.push(invalid(
                    "media.path",
                    "must name a folder for store = \"fs\"",
                ));
            }
            MediaStoreKind::S3 => {
                if self.media.s3.bucket.trim().is_empty() {
                    errs.push(invalid(
                        "media.s3.bucket",
                        "must name a bucket for store = \"s3\"",
                    ));
                }
                let e = &self.media.s3.endpoint;
                if !(e.is_empty() || e.starts_with("http://") || e.starts_with("https://")) {
                    errs.push(invalid(
                        "media.s3.endpoint",
                        "must start with http:// or https://",
                    ));
                } else if e.starts_with("http://") && !self.media.s3.allow_http {
                    errs.push(invalid(
                        "media.s3.endpoint",
                        "is http://: set media.s3.allow_http = true to allow it",
                    ));
                }
            }
            MediaStoreKind::Fs => {}
        }
        if self.cluster.enabled() {
            if !self.database.url.starts_with("postgres") {
                errs.push(invalid(
                    "cluster.mode",
                    "\"rabbitmq\" needs a shared PostgreSQL database (database.url = postgres://…)",
                ));
            }
            if !self.cluster.amqp_url.starts_with("amqp://") {
                errs.push(invalid("cluster.amqp_url", "must start with amqp://"));
            }
            if self.cluster.partitions > 1024 {
                errs.push(invalid("cluster.partitions", "must be at most 1024"));
            }
            if self.cluster.tick_ms * 2 > self.cluster.lease_ms {
                errs.push(invalid(
                    "cluster.lease_ms",
                    "must be at least twice cluster.tick_ms (a lease is renewed every tick)",
                ));
            }
            let prefix = &self.cluster.queue_prefix;
            if prefix.is_empty()
                || !prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                errs.push(invalid(
                    "cluster.queue_prefix",
                    "must be letters, digits, '-', '_' or '.'",
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        let mut per_workspace: std::collections::HashMap<&str, usize> = Default::default();
        for (i, account) in self.accounts.iter().enumerate() {
            let n = per_workspace.entry(account.workspace.as_str()).or_default();
            *n += 1;
            if *n > self.tenants.max_accounts_per_workspace {
                errs.push(ConfigError::Invalid {
                    key: format!("accounts[{i}].workspace"),
                    origin: origin("accounts"),
                    message: format!(
                        "workspace `{}` has more accounts than tenants.max_accounts_per_workspace ({})",
                        account.workspace, self.tenants.max_accounts_per_workspace
                    ),
                });
            }
            let key = |field: &str| format!("accounts[{i}].{field}");
            if account.phone_number_id.trim().is_empty() {
                errs.push(invalid(&key("phone_number_id"), "must not be empty"));
            }
            if !seen.insert(account.phone_number_id.as_str()) {
                errs.push(invalid(&key("phone_number_id"), "is declared twice"));
            }
            if account.workspace.trim().is_empty() {
                errs.push(invalid(&key("workspace"), "must not be empty"));
            }
            if account.verify_token.is_empty() {
                errs.push(invalid(&key("verify_token"), "must not be empty"));
            }
            if let Some(agent) = &account.agent {
                if !self.agents.contains_key(agent) {
                    let known: Vec<&str> = self.agents.keys().map(String::as_str).collect();
                    errs.push(ConfigError::Invalid {
                        key: key("agent"),
                        origin: origin("accounts"),
                        message: format!(
                            "names the agent `{agent}`, which no [agents.{agent}] table defines (defined: {})",
                            if known.is_empty() {
                                "none".to_owned()
                            } else {
                                known.join(", ")
                            }
                        ),
                    });
                } else if !self.agents[agent].allows(&account.workspace) {
                    errs.push(ConfigError::Invalid {
                        key: format!("agents.{agent}.workspaces"),
                        origin: origin("agents"),
                        message: format!(
                            "does not list workspace `{}`, whose account accounts[{i}] uses the agent",
                            account.workspace
                        ),
                    });
                }
                if let Err(message) = account.resolve_access_token() {
                    errs.push(ConfigError::Invalid {
                        key: key("access_token_env"),
                        origin: origin("accounts"),
                        message,
                    });
                }
            }
            if let Some(url) = &account.notify_url {
                match reqwest::Url::parse(url) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                    _ => errs.push(invalid(&key("notify_url"), "must be an http(s) URL")),
                }
            }
            if let Err(message) = account.resolve_notify_secret() {
                errs.push(ConfigError::Invalid {
                    key: key(if account.notify_secret_env.is_some() {
                        "notify_secret_env"
                    } else {
                        "notify_secret"
                    }),
                    origin: origin("accounts"),
                    message,
                });
            }
            if let Err(message) = account.resolve_app_secret() {
                errs.push(ConfigError::Invalid {
                    key: key(if account.app_secret_env.is_some() {
                        "app_secret_env"
                    } else {
                        "app_secret"
                    }),
                    origin: origin("accounts"),
                    message,
                });
            }
        }
        for (i, project) in self.kapso_projects.iter().enumerate() {
            if let Err(message) = project.resolve_secret() {
                errs.push(invalid(
                    &format!("kapso_projects[{i}].secret_env"),
                    &message,
                ));
            }
        }
        for (name, agent) in &self.agents {
            let key = |field: &str| format!("agents.{name}.{field}");
            if let Err(message) = agent.resolve_api_key() {
                errs.push(invalid(&key("api_key_env"), &message));
            }
            if !(agent.base_url.starts_with("http://") || agent.base_url.starts_with("https://")) {
                errs.push(invalid(
                    &key("base_url"),
                    "must start with http:// or https://",
                ));
            }
            if agent.model.trim().is_empty() {
                errs.push(invalid(&key("model"), "must not be empty"));
            }
            if agent.max_reply_tokens == 0 || agent.max_reply_tokens >= agent.max_context_tokens {
                errs.push(invalid(
                    &key("max_reply_tokens"),
                    "must be at least 1 and below max_context_tokens",
                ));
            }
            if let Some(window) = agent.context_window
                && window <= agent.max_reply_tokens
            {
                errs.push(invalid(
                    &key("context_window"),
                    "must be above max_reply_tokens (it is the server's whole window)",
                ));
            }
            if agent.turn_timeout_ms == 0 {
                errs.push(invalid(&key("turn_timeout_ms"), "must be at least 1"));
            }
            if agent.follow_up_max > 0 && agent.follow_up_after_ms < 1000 {
                errs.push(invalid(
                    &key("follow_up_after_ms"),
                    "must be at least 1000 when follow_up_max is above 0",
                ));
            }
            if agent.follow_up_max > 20 {
                errs.push(invalid(&key("follow_up_max"), "must be 0 to 20"));
            }
            if agent
                .follow_up_template
                .as_deref()
                .is_some_and(|t| t.trim().is_empty())
            {
                errs.push(invalid(&key("follow_up_template"), "must not be empty"));
            }
            if agent.max_attempts == 0 || agent.breaker_failures == 0 {
                errs.push(invalid(
                    &key(if agent.max_attempts == 0 {
                        "max_attempts"
                    } else {
                        "breaker_failures"
                    }),
                    "must be at least 1",
                ));
            }
        }
        match errs.len() {
            0 => Ok(()),
            1 => Err(errs.remove(0)),
            _ => Err(ConfigError::Several(errs)),
        }
    }

    /// The effective configuration as TOML with every secret replaced.
    pub fn redacted_toml(&self) -> String {
        let mut copy = self.clone();
        copy.database.url = redact_url(&copy.database.url);
        copy.cluster.amqp_url = redact_url(&copy.cluster.amqp_url);
        for a in &mut copy.accounts {
            for secret in [&mut a.app_secret, &mut a.kapso_secret] {
                if secret.is_some() {
                    *secret = Some("<redacted>".into());
                }
            }
            a.verify_token = "<redacted>".into();
            if a.access_token.is_some() {
                a.access_token = Some("<redacted>".into());
            }
        }
        if copy.media.s3.secret_access_key.is_some() {
            copy.media.s3.secret_access_key = Some("<redacted>".into());
        }
        for p in &mut copy.kapso_projects {
            if p.secret.is_some() {
                p.secret = Some("<redacted>".into());
            }
        }
        for agent in copy.agents.values_mut() {
            if agent.api_key.is_some() {
                agent.api_key = Some("<redacted>".into());
            }
        }
        toml_string(&copy)
    }

    pub fn is_postgres(&self) -> bool {
        self.database.url.starts_with("postgres")
    }
}

impl AccountConfig {
    /// The Graph API access token: inline, or from the variable `access_token_env` names.
    pub fn resolve_access_token(&self) -> Result<String, String> {
        secret(&self.access_token, &self.access_token_env)?.ok_or_else(|| {
            "an account with an agent needs access_token_env (or access_token) to send its replies"
                .into()
        })
    }

    /// The hand-off notification's signing secret (checked to be a Standard Webhooks
    /// secret); `None` without a `notify_url`.
    pub fn resolve_notify_secret(&self) -> Result<Option<String>, String> {
        if self.notify_url.is_none() {
            return Ok(None);
        }
        let s = secret(&self.notify_secret, &self.notify_secret_env)?.ok_or_else(|| {
            "a notify_url needs notify_secret_env (or notify_secret) to sign with".to_owned()
        })?;
        let decoded = s
            .strip_prefix("whsec_")
            .and_then(|b| {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.decode(b).ok()
            })
            .ok_or_else(|| "must be `whsec_` followed by base64".to_owned())?;
        if !(24..=64).contains(&decoded.len()) {
            return Err(format!(
                "must hold 24 to 64 random bytes (it holds {})",
                decoded.len()
            ));
        }
        Ok(Some(s))
    }

    /// The app secret, from the file or from the environment variable it names.
    pub fn resolve_app_secret(&self) -> Result<String, String> {
        secret(&self.app_secret, &self.app_secret_env)?
            .ok_or_else(|| "an account needs app_secret or app_secret_env".into())
    }
}

/// A secret given inline, or by the name of the variable holding it; `None` for neither. A
/// named variable that is unset or empty is an error (naming it).
fn secret(inline: &Option<String>, var: &Option<String>) -> Result<Option<String>, String> {
    match (inline, var) {
        (Some(s), _) if !s.is_empty() => Ok(Some(s.clone())),
        (_, Some(var)) => match std::env::var(var) {
            Ok(s) if !s.is_empty() => Ok(Some(s)),
            _ => Err(format!("environment variable {var} is not set or empty")),
        },
        _ => Ok(None),
    }
}

fn defaults_provider() -> figment::providers::Data<Toml> {
    if Path::new(DEFAULTS_PATH).is_file() {
        Toml::file_exact(DEFAULTS_PATH)
    } else {
        Toml::string(EMBEDDED_DEFAULTS)
    }
}

/// Where a key's value came from: the file, or the exact environment variable.
fn origin_of(key: &str, metadata: Option<&figment::Metadata>) -> String {
    match metadata {
        Some(md) if md.name.contains("environment") => {
            if key == "database.url" && std::env::var_os("WAHOOK_DATABASE__URL").is_none() {
                "environment variable DATABASE_URL".to_string()
            } else {
                format!(
                    "environment variable WAHOOK_{}",
                    key.replace('.', "__").to_uppercase()
                )
            }
        }
        Some(md) => md
            .source
            .as_ref()
            .map(|s| format!("file {s}"))
            .unwrap_or_else(|| md.name.to_string()),
        None => "defaults".to_string(),
    }
}

/// One line per problem, each naming the key (`server.listen`) and where its value came from
/// (the file, or the exact environment variable); an unknown key also names the nearest known
/// one.
fn describe_errors(errors: figment::Error) -> ConfigError {
    let lines: Vec<String> = errors
        .into_iter()
        .map(|e| {
            let key = dotted(&e.path);
            if let figment::error::Kind::UnknownField(field, expected) = &e.kind {
                let parent = match e.path.split_last() {
                    Some((last, parent)) if last == field => dotted(parent),
                    _ => key,
                };
                return unknown_key(&parent, field, expected, e.metadata.as_ref());
            }
            let origin = origin_of(&key, e.metadata.as_ref());
            if key.is_empty() {
                format!("configuration ({origin}): {}", e.kind)
            } else {
                format!("configuration key `{key}` ({origin}): {}", e.kind)
            }
        })
        .collect();
    ConfigError::Load(lines.join("\n"))
}

/// `accounts[0].agent` from figment's path `["accounts", "0", "agent"]`.
fn dotted(path: &[String]) -> String {
    let mut key = String::new();
    for part in path {
        if part.chars().all(|c| c.is_ascii_digit()) {
            key.push_str(&format!("[{part}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(&part.to_lowercase());
        }
    }
    key
}

/// "unknown key `server.listen_adress` in file wahook.toml — did you mean `server.listen`?"
fn unknown_key(
    parent: &str,
    field: &str,
    expected: &[&str],
    metadata: Option<&figment::Metadata>,
) -> String {
    let join = |name: &str| {
        if parent.is_empty() {
            name.to_owned()
        } else {
            format!("{parent}.{name}")
        }
    };
    let (key, origin) = match metadata {
        // An environment variable: name the exact variable, whose key may go deeper than the
        // unknown part (`WAHOOK_PROCESING__BATCH_MAX` → `procesing.batch_max`).
        Some(md) if md.name.contains("environment") => {
            let prefix = format!("WAHOOK_{}", join(field).replace('.', "__").to_uppercase());
            let var = std::env::vars()
                .map(|(k, _)| k)
                .find(|k| *k == prefix || k.starts_with(&format!("{prefix}__")));
            match var {
                Some(var) => {
                    let key = var["WAHOOK_".len()..].replace("__", ".").to_lowercase();
                    (key, format!("environment variable {var}"))
                }
                None => (join(field), "an environment variable".to_owned()),
            }
        }
        Some(md) => (
            join(field),
            md.source
                .as_ref()
                .map(|s| format!("file {s}"))
                .unwrap_or_else(|| md.name.to_string()),
        ),
        None => (join(field), "defaults".to_owned()),
    };
    // Jaro-Winkler favours a shared start, which is how keys are mistyped or run on
    // (`listen_adress` for `listen`).
    let nearest = expected
        .iter()
        .map(|candidate| (strsim::jaro_winkler(field, candidate), *candidate))
        .filter(|(similarity, _)| *similarity >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let rest = key[join(field).len()..].to_owned();
    match nearest {
        Some((_, name)) => format!(
            "unknown key `{key}` in {origin} — did you mean `{}{rest}`?",
            join(name)
        ),
        None => format!(
            "unknown key `{key}` in {origin} — the keys here are: {}",
            expected.join(", ")
        ),
    }
}

/// Hides the secrets of a URL (database, broker): the password of its user part, and the
/// values of query parameters that carry one (`password`, `pass`, `secret`, `token`, and names
/// containing them, such as `sslpassword` or `auth_token`).
pub fn redact_url(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let head = match (head.find("://"), head.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &head[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    format!("{}{user}:<redacted>{}", &head[..scheme + 3], &head[at..])
                }
                None => head.to_string(),
            }
        }
        _ => head.to_string(),
    };
    let Some(query) = query else { return head };
    let params: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_secret_param(name) => format!("{name}=<redacted>"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{head}?{}", params.join("&"))
}

fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "pass", "secret", "token", "pwd"]
        .iter()
        .any(|s| name.contains(s))
}

fn toml_string(config: &Config) -> String {
    toml::to_string_pretty(config).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}
