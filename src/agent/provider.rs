//! An OpenAI-compatible chat-completions provider (`POST {base_url}/chat/completions`): a
//! timeout per request; retries with exponential backoff and jitter on timeouts, connection
//! errors, 429 (honouring `Retry-After`) and 5xx, never on other 4xx; behind the agent type's
//! circuit breaker.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{
    breaker::{Breaker, Permit},
    context::Turn,
};
use crate::{
    config::{AgentConfig, backoff},
    metrics as m,
};

/// The longest `Retry-After` honoured before giving up on the turn.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

pub struct Provider {
    pub name: String,
    pub cfg: AgentConfig,
    api_key: Option<String>,
    http: reqwest::Client,
    pub breaker: Breaker,
}

/// A reply and what it cost.
#[derive(Debug, Clone)]
pub struct Completion {
    pub content: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub attempts: u32,
}

#[derive(Debug, Clone)]
pub enum ProviderError {
    /// The breaker is open: the provider was not called.
    BreakerOpen,
    /// Every attempt failed (or one that must not be retried did); `opened`: this failure
    /// opened the breaker.
    Failed { message: String, opened: bool },
}

impl std::fmt::Display for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProviderError::BreakerOpen => f.write_str("the provider's circuit breaker is open"),
            ProviderError::Failed { message, .. } => f.write_str(message),
        }
    }
}

enum Attempt {
    Done(Completion),
    Retry {
        message: String,
        after: Option<Duration>,
    },
    Fatal(String),
}

impl Provider {
    pub fn new(name: &str, cfg: AgentConfig) -> anyhow::Result<Self> {
        let api_key = cfg.resolve_api_key().map_err(anyhow::Error::msg)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.request_timeout_ms))
            .build()?;
        Ok(Self {
            name: name.to_owned(),
            breaker: Breaker::new(
                cfg.breaker_failures,
                Duration::from_millis(cfg.breaker_cooldown_ms),
            ),
            cfg,
            api_key,
            http,
        })
    }

    /// One completion for `turns` after the system prompt.
    pub async fn complete(&self, turns: &[Turn]) -> Result<Completion, ProviderError> {
        if self.breaker.permit() == Permit::Refused {
            metrics::counter!(m::AGENT_PROVIDER_REQUESTS, "agent" => self.name.clone(), "outcome" => "breaker_open").increment(1);
            return Err(ProviderError::BreakerOpen);
        }
        let result = self.attempts(turns).await;
        let opened = match &result {
            Ok(_) => {
                self.breaker.success();
                false
            }
            Err(_) => self.breaker.failure(),
        };
        metrics::gauge!(m::AGENT_BREAKER_OPEN, "agent" => self.name.clone())
            .set(self.breaker.level());
        result.map_err(|message| ProviderError::Failed { message, opened })
    }

    async fn attempts(&self, turns: &[Turn]) -> Result<Completion, String> {
        let body = self.request_body(turns);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            let outcome = self.attempt(&body, attempt).await;
            let label = match &outcome {
                Attempt::Done(_) => "ok",
                Attempt::Retry { .. } => "retryable",
                Attempt::Fatal(_) => "error",
            };
            metrics::histogram!(m::AGENT_PROVIDER_DURATION, "outcome" => label)
                .record(started.elapsed().as_secs_f64());
            metrics::counter!(m::AGENT_PROVIDER_REQUESTS, "agent" => self.name.clone(), "outcome" => label).increment(1);
            match outcome {
                Attempt::Done(c) => return Ok(c),
                Attempt::Fatal(message) => return Err(message),
                Attempt::Retry { message, after } => {
                    if attempt >= self.cfg.max_attempts {
                        return Err(format!("{message} (after {attempt} attempts)"));
                    }
                    let wait = match after {
                        Some(after) if after > MAX_RETRY_AFTER => {
                            return Err(format!("{message}; Retry-After {after:?} is too long"));
                        }
                        Some(after) => after,
                        None => backoff(attempt, self.cfg.backoff_base_ms, self.cfg.backoff_max_ms),
                    };
                    tracing::info!(agent = %self.name, attempt, ?wait, %message, "provider call failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    fn request_body(&self, turns: &[Turn]) -> Value {
        let mut messages = Vec::with_capacity(turns.len() + 1);
        if !self.cfg.system_prompt.is_empty() {
            messages.push(json!({"role": "system", "content": self.cfg.system_prompt}));
        }
        messages.extend(
            turns
                .iter()
                .map(|t| json!({"role": t.role, "content": t.content})),
        );
        json!({
            "model": self.cfg.model,
            "messages": messages,
            "max_tokens": self.cfg.max_reply_tokens,
            "temperature": self.cfg.temperature,
        })
    }

    async fn attempt(&self, body: &Value, attempt: u32) -> Attempt {
        let url = format!(
            "{}/chat/completions",
            self.cfg.base_url.trim_end_matches('/')
        );
        let mut req = self.http.post(&url).json(body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let res = match req.send().await {
            Ok(res) => res,
            Err(e) if e.is_timeout() => {
                return Attempt::Retry {
                    message: format!(
                        "the provider did not answer within {} ms",
                        self.cfg.request_timeout_ms
                    ),
                    after: None,
                };
            }
            Err(e) => {
                return Attempt::Retry {
                    message: format!("cannot reach the provider: {e}"),
                    after: None,
                };
            }
        };
        let status = res.status();
        let retry_after = res
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = match res.text().await {
            Ok(t) => t,
            Err(e) => {
                return Attempt::Retry {
                    message: format!("reading the provider's answer failed: {e}"),
                    after: None,
                };
            }
        };
        if status.as_u16() == 429 || status.is_server_error() {
            return Attempt::Retry {
                message: format!("provider answered {status}: {}", snippet(&text)),
                after: retry_after,
            };
        }
        if !status.is_success() {
            return Attempt::Fatal(format!("provider answered {status}: {}", snippet(&text)));
        }
        let v: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => return Attempt::Fatal(format!("the provider's answer is not JSON: {e}")),
        };
        let Some(content) = v["choices"][0]["message"]["content"].as_str() else {
            return Attempt::Fatal(format!(
                "the provider's answer has no choices[0].message.content: {}",
                snippet(&text)
            ));
        };
        if content.trim().is_empty() {
            return Attempt::Fatal("the provider answered an empty reply".into());
        }
        Attempt::Done(Completion {
            content: content.to_owned(),
            prompt_tokens: v["usage"]["prompt_tokens"].as_i64().unwrap_or(0),
            completion_tokens: v["usage"]["completion_tokens"].as_i64().unwrap_or(0),
            attempts: attempt,
        })
    }
}

fn snippet(text: &str) -> String {
    text.chars().take(300).collect()
}
