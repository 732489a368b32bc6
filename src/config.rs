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
    #[serde(default)]
    pub accounts: Vec<AccountConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub body_limit_bytes: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
    #[serde(default)]
    pub schema: String,
    pub sqlite_synchronous: SqliteSynchronous,
    pub acquire_timeout_ms: u64,
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
    pub batch_max: usize,
    pub batch_wait_us: u64,
    pub queue_capacity: usize,
    pub retry_after_seconds: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActorsConfig {
    pub idle_timeout_ms: u64,
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

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    pub workspace: String,
    pub phone_number_id: String,
    /// Informational (Meta sends it in every payload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_phone_number: Option<String>,
    #[serde(default)]
    pub app_secret: Option<String>,
    /// Name of an environment variable holding the app secret.
    #[serde(default)]
    pub app_secret_env: Option<String>,
    pub verify_token: String,
    #[serde(default)]
    pub kapso_secret: Option<String>,
    #[serde(default)]
    pub agent: Option<String>,
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

    fn validate(&self, figment: &Figment) -> Result<(), ConfigError> {
        let origin = |key: &str| origin_of(key, figment.find_metadata(key));
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: key.into(),
            origin: origin(key),
            message: message.into(),
        };
        if self.database.url.trim().is_empty() {
            return Err(invalid("database.url", "must not be empty"));
        }
        if !(self.database.url.starts_with("sqlite:") || self.database.url.starts_with("postgres"))
        {
            return Err(invalid(
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
                "database.max_connections",
                self.database.max_connections.into(),
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
        ];
        if let Some((key, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(invalid(key, "must be at least 1"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, account) in self.accounts.iter().enumerate() {
            let key = |field: &str| format!("accounts[{i}].{field}");
            if account.phone_number_id.trim().is_empty() {
                return Err(invalid(&key("phone_number_id"), "must not be empty"));
            }
            if !seen.insert(account.phone_number_id.as_str()) {
                return Err(invalid(&key("phone_number_id"), "is declared twice"));
            }
            if account.workspace.trim().is_empty() {
                return Err(invalid(&key("workspace"), "must not be empty"));
            }
            if account.verify_token.is_empty() {
                return Err(invalid(&key("verify_token"), "must not be empty"));
            }
            if let Err(message) = account.resolve_app_secret() {
                return Err(ConfigError::Invalid {
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
        Ok(())
    }

    /// The effective configuration as TOML with every secret replaced.
    pub fn redacted_toml(&self) -> String {
        let mut copy = self.clone();
        copy.database.url = redact_url(&copy.database.url);
        for a in &mut copy.accounts {
            for secret in [&mut a.app_secret, &mut a.kapso_secret] {
                if secret.is_some() {
                    *secret = Some("<redacted>".into());
                }
            }
            a.verify_token = "<redacted>".into();
        }
        toml_string(&copy)
    }

    pub fn is_postgres(&self) -> bool {
        self.database.url.starts_with("postgres")
    }
}

impl AccountConfig {
    /// The app secret, from the file or from the environment variable it names.
    pub fn resolve_app_secret(&self) -> Result<String, String> {
        match (&self.app_secret, &self.app_secret_env) {
            (Some(s), _) if !s.is_empty() => Ok(s.clone()),
            (_, Some(var)) => match std::env::var(var) {
                Ok(s) if !s.is_empty() => Ok(s),
                _ => Err(format!("environment variable {var} is not set or empty")),
            },
            _ => Err("an account needs app_secret or app_secret_env".into()),
        }
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

/// Hides the password of a database URL.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:<redacted>{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn toml_string(config: &Config) -> String {
    toml::to_string_pretty(config).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}
