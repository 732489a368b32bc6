//! An OpenAI-compatible chat-completions provider (`POST {base_url}/chat/completions`): a
//! timeout per request and a time budget per turn; retries with exponential backoff and jitter
//! on what is the server's passing trouble (timeouts, connection errors, 429 honouring
//! `Retry-After`, 5xx), never on what is the request's (other 4xx, a chat-template error, a
//! context too long). Only the server's trouble counts toward the agent type's circuit
//! breaker: one conversation's bad request never silences the others.
//!
//! Requests take the shape the strictest chat templates accept (`context::alternate`), name
//! the reply limit and temperature as the agent's dialect wants, and the server's
//! `usage.prompt_tokens` teaches the provider how its tokenizer counts against ours.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{
    breaker::{Breaker, Permit},
    context::{self, Turn},
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
    /// The server's prompt tokens per token of ours, as last learned (1 until it answers).
    ratio: Mutex<f64>,
    /// The server's window as an overflow answer gave it (when `context_window` is not set).
    window: Mutex<Option<usize>>,
    /// The server answered that it has no `/audio/transcriptions` (said once in the log; not
    /// asked again).
    no_transcriptions: std::sync::atomic::AtomicBool,
}

/// Why a voice note has no transcript.
#[derive(Debug)]
pub enum TranscribeError {
    /// The server has no transcription endpoint (Ollama, llama.cpp's server).
    Unsupported,
    Failed(String),
}

/// A reply and what it cost.
#[derive(Debug, Clone)]
pub struct Completion {
    pub content: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub attempts: u32,
    /// `stop`, `length`, … as the server gave it.
    pub finish_reason: Option<String>,
}

/// Whose trouble a failed call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The server's or the way to it (timeouts, connection errors, 429, 5xx, a refused key):
    /// counts toward the agent type's breaker.
    Server,
    /// This conversation's request (400, 422, a chat-template error): never the breaker's.
    Request,
    /// The context is longer than the server takes; `server_tokens`: how many it counted,
    /// `server_limit`: its window, when it said.
    ContextOverflow {
        server_tokens: Option<usize>,
        server_limit: Option<usize>,
    },
}

#[derive(Debug, Clone)]
pub enum ProviderError {
    /// The breaker is open: the provider was not called.
    BreakerOpen,
    /// Every attempt failed (or one that must not be retried did); `opened`: this failure
    /// opened the breaker.
    Failed {
        message: String,
        opened: bool,
        fault: Fault,
        /// The HTTP status of the last answer, if one came.
        status: Option<u16>,
        /// The provider's error code (`context_length_exceeded`, …), else `http_<status>`,
        /// `timeout` or `connect`.
        code: String,
    },
}

impl ProviderError {
    /// The code recorded with the failed turn.
    pub fn code(&self) -> &str {
        match self {
            ProviderError::BreakerOpen => "breaker_open",
            ProviderError::Failed { code, .. } => code,
        }
    }
}

impl std::fmt::Display for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProviderError::BreakerOpen => f.write_str("the provider's circuit breaker is open"),
            ProviderError::Failed { message, .. } => f.write_str(message),
        }
    }
}

/// A failed attempt: what happened, whose fault, the status and code.
#[derive(Debug, Clone)]
struct Failure {
    message: String,
    fault: Fault,
    status: Option<u16>,
    code: String,
}

enum Attempt {
    Done(Completion),
    Retry {
        failure: Failure,
        after: Option<Duration>,
    },
    Fatal(Failure),
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
            ratio: Mutex::new(1.0),
            window: Mutex::new(None),
            no_transcriptions: Default::default(),
        })
    }

    /// What a voice note or audio file says: `POST {base_url}/audio/transcriptions`
    /// (multipart `file` and `model`, OpenAI's shape), once, within the request timeout.
    pub async fn transcribe(
        &self,
        model: &str,
        bytes: Vec<u8>,
        mime: &str,
    ) -> Result<String, TranscribeError> {
        use std::sync::atomic::Ordering;
        if self.no_transcriptions.load(Ordering::Relaxed) {
            return Err(TranscribeError::Unsupported);
        }
        let essence = crate::media::essence(mime);
        // The format is read from the file name (whisper-1 and its peers).
        let name = match essence.as_str() {
            "audio/mpeg" | "audio/mp3" => "audio.mp3",
            "audio/mp4" | "audio/m4a" | "audio/x-m4a" => "audio.m4a",
            "audio/wav" | "audio/x-wav" => "audio.wav",
            "audio/webm" => "audio.webm",
            "audio/flac" => "audio.flac",
            "audio/aac" => "audio.aac",
            "audio/amr" => "audio.amr",
            _ => "voice.ogg",
        };
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name(name)
            .mime_str(if essence.contains('/') {
                &essence
            } else {
                "audio/ogg"
            })
            .map_err(|e| TranscribeError::Failed(e.to_string()))?;
        let form = reqwest::multipart::Form::new()
            .text("model", model.to_owned())
            .text("response_format", "json")
            .part("file", part);
        let url = format!(
            "{}/audio/transcriptions",
            self.cfg.base_url.trim_end_matches('/')
        );
        let mut req = self.http.post(&url).multipart(form);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let res = req.send().await.map_err(|e| {
            TranscribeError::Failed(format!("the provider could not be reached: {e}"))
        })?;
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        match status {
            200..=299 => {}
            404 | 405 | 501 => {
                if !self.no_transcriptions.swap(true, Ordering::Relaxed) {
                    tracing::warn!(agent = %self.name, url, status, "the provider has no /audio/transcriptions endpoint: voice notes stay markers in the context (unset transcribe_model, or point the agent at a server that transcribes)");
                }
                return Err(TranscribeError::Unsupported);
            }
            _ => {
                return Err(TranscribeError::Failed(format!(
                    "the provider answered {status}: {}",
                    snippet(&text)
                )));
            }
        }
        let v: Value = serde_json::from_str(&text)
            .map_err(|_| TranscribeError::Failed(format!("not JSON: {}", snippet(&text))))?;
        v["text"]
            .as_str()
            .map(|t| t.trim().chars().take(20_000).collect())
            .ok_or_else(|| TranscribeError::Failed("the answer has no text".into()))
    }

    /// The server's prompt tokens per token of ours.
    pub fn ratio(&self) -> f64 {
        *self.ratio.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Learns from the server's count of a prompt we counted `ours`: a higher ratio is taken
    /// at once, a lower one only slowly (a margin stays).
    pub fn learn(&self, ours: usize, server: usize) {
        if ours == 0 || server == 0 {
            return;
        }
        let seen = server as f64 / ours as f64;
        let mut ratio = self.ratio.lock().unwrap_or_else(|p| p.into_inner());
        *ratio = if seen > *ratio {
            seen
        } else {
            *ratio * 0.9 + seen * 0.1
        };
    }

    /// Remembers the window a server said it has (the smallest it said).
    pub fn learn_window(&self, limit: usize) {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        *window = Some(window.map_or(limit, |w| w.min(limit)));
    }

    /// The tokens (ours) the context may take: the budget aimed for, and under the server's
    /// real limit (`context_window`) with a tenth to spare, both at the learned ratio, less
    /// the reply.
    pub fn budget(&self) -> usize {
        let ratio = self.ratio().max(0.01);
        let reply = self.cfg.max_reply_tokens;
        let aimed = self.cfg.max_context_tokens.saturating_sub(reply) as f64 / ratio;
        let window = self
            .cfg
            .context_window
            .or(*self.window.lock().unwrap_or_else(|p| p.into_inner()));
        let limit = window.map_or(f64::MAX, |w| w.saturating_sub(reply) as f64 * 0.9 / ratio);
        aimed.min(limit).max(1.0) as usize
    }

    /// One completion for `turns` after the system prompt, with at most `max_tokens` of reply,
    /// within the turn's time budget.
    pub async fn complete(
        &self,
        turns: &[Turn],
        max_tokens: usize,
    ) -> Result<Completion, ProviderError> {
        if self.breaker.permit() == Permit::Refused {
            metrics::counter!(m::AGENT_PROVIDER_REQUESTS, "agent" => self.name.clone(), "outcome" => "breaker_open").increment(1);
            self.show_breaker();
            return Err(ProviderError::BreakerOpen);
        }
        let budget = Duration::from_millis(self.cfg.turn_timeout_ms);
        let result = match tokio::time::timeout(budget, self.attempts(turns, max_tokens)).await {
            Ok(result) => result,
            // The request in flight is dropped (its connection closed).
            Err(_) => Err(Failure {
                message: format!(
                    "the turn's {} ms with the provider ran out",
                    self.cfg.turn_timeout_ms
                ),
                fault: Fault::Server,
                status: None,
                code: "turn_timeout".into(),
            }),
        };
        let opened = match &result {
            Ok(_) => {
                self.breaker.success();
                false
            }
            Err(f) if f.fault == Fault::Server => self.breaker.failure(),
            // The server answered: it is up, whatever it thought of this request.
            Err(_) => {
                self.breaker.success();
                false
            }
        };
        self.show_breaker();
        if opened {
            // The gauge drops when the cool-down ends, not at the next call.
            let (name, wait) = (
                self.name.clone(),
                Duration::from_millis(self.cfg.breaker_cooldown_ms),
            );
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                metrics::gauge!(m::AGENT_BREAKER_OPEN, "agent" => name).set(0.5);
            });
        }
        result.map_err(|f| ProviderError::Failed {
            message: f.message,
            opened,
            fault: f.fault,
            status: f.status,
            code: f.code,
        })
    }

    fn show_breaker(&self) {
        metrics::gauge!(m::AGENT_BREAKER_OPEN, "agent" => self.name.clone())
            .set(self.breaker.level());
    }

    async fn attempts(&self, turns: &[Turn], max_tokens: usize) -> Result<Completion, Failure> {
        let body = self.request_body(turns, max_tokens);
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
                Attempt::Fatal(failure) => return Err(failure),
                Attempt::Retry { mut failure, after } => {
                    if attempt >= self.cfg.max_attempts {
                        failure.message = format!("{} (after {attempt} attempts)", failure.message);
                        return Err(failure);
                    }
                    let wait = match after {
                        Some(after) if after > MAX_RETRY_AFTER => {
                            failure.message =
                                format!("{}; Retry-After {after:?} is too long", failure.message);
                            return Err(failure);
                        }
                        Some(after) => after,
                        None => backoff(attempt, self.cfg.backoff_base_ms, self.cfg.backoff_max_ms),
                    };
                    tracing::info!(agent = %self.name, attempt, ?wait, message = %failure.message, "provider call failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// The request: roles alternating after the system prompt (or the prompt folded into
    /// the first user turn), the reply limit under the agent's field name, the temperature
    /// unless the agent leaves it to the server.
    pub fn request_body(&self, turns: &[Turn], max_tokens: usize) -> Value {
        let mut turns = context::alternate(turns);
        let prompt = self.cfg.system_prompt.as_str();
        let mut messages = Vec::with_capacity(turns.len() + 1);
        if !prompt.is_empty() {
            if self.cfg.system_role {
                messages.push(json!({"role": "system", "content": prompt}));
            } else if let Some(first) = turns.first_mut() {
                first.content = format!("{prompt}\n\n{}", first.content);
            }
        }
        // A turn with images is OpenAI's content parts: the text, then each image.
        messages.extend(turns.iter().map(|t| match t.images.is_empty() {
            true => json!({"role": t.role, "content": t.content}),
            false => {
                let mut parts = vec![json!({"type": "text", "text": t.content})];
                parts.extend(
                    t.images
                        .iter()
                        .map(|url| json!({"type": "image_url", "image_url": {"url": url}})),
                );
                json!({"role": t.role, "content": parts})
            }
        }));
        let mut body = json!({
            "model": self.cfg.model,
            "messages": messages,
        });
        body[self.cfg.token_param.as_str()] = json!(max_tokens);
        if self.cfg.send_temperature {
            body["temperature"] = json!(self.cfg.temperature);
        }
        body
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
                    failure: Failure {
                        message: format!(
                            "the provider did not answer within {} ms",
                            self.cfg.request_timeout_ms
                        ),
                        fault: Fault::Server,
                        status: None,
                        code: "timeout".into(),
                    },
                    after: None,
                };
            }
            Err(e) => {
                return Attempt::Retry {
                    failure: Failure {
                        message: format!("cannot reach the provider: {e}"),
                        fault: Fault::Server,
                        status: None,
                        code: "connect".into(),
                    },
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
                    failure: Failure {
                        message: format!("reading the provider's answer failed: {e}"),
                        fault: Fault::Server,
                        status: Some(status.as_u16()),
                        code: format!("http_{}", status.as_u16()),
                    },
                    after: None,
                };
            }
        };
        if !status.is_success() {
            let failure = classify(status.as_u16(), &text);
            return match failure.fault {
                Fault::Server if status.as_u16() == 429 || status.is_server_error() => {
                    Attempt::Retry {
                        failure,
                        after: retry_after,
                    }
                }
                _ => Attempt::Fatal(failure),
            };
        }
        let fatal = |message: String| {
            Attempt::Fatal(Failure {
                message,
                fault: Fault::Request,
                status: Some(status.as_u16()),
                code: "bad_answer".into(),
            })
        };
        let v: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => return fatal(format!("the provider's answer is not JSON: {e}")),
        };
        let Some(content) = v["choices"][0]["message"]["content"].as_str() else {
            return fatal(format!(
                "the provider's answer has no choices[0].message.content: {}",
                snippet(&text)
            ));
        };
        // An empty reply (a model that stopped at once) is the turn's to judge: it asks again.
        Attempt::Done(Completion {
            content: content.to_owned(),
            prompt_tokens: v["usage"]["prompt_tokens"].as_i64().unwrap_or(0),
            completion_tokens: v["usage"]["completion_tokens"].as_i64().unwrap_or(0),
            attempts: attempt,
            finish_reason: v["choices"][0]["finish_reason"].as_str().map(str::to_owned),
        })
    }
}

/// Whose trouble an error answer is. A context too long (OpenAI's and llama.cpp's
/// `context_length_exceeded`, vLLM's "maximum context length"), a chat-template error (which
/// llama.cpp answers with a 500) and any other 400/422 are the request's; 401/403/404 (a
/// wrong key, model or URL) and the rest are the server's.
fn classify(status: u16, text: &str) -> Failure {
    let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let error = if v["error"].is_object() {
        &v["error"]
    } else {
        &v
    };
    let message = error["message"]
        .as_str()
        .or_else(|| v["detail"].as_str())
        .or_else(|| v["error"].as_str())
        .unwrap_or(text);
    let lower = message.to_ascii_lowercase();
    let given_code = match &error["code"] {
        Value::String(c) if !c.is_empty() => Some(c.clone()),
        _ => None,
    };
    let overflow = given_code.as_deref() == Some("context_length_exceeded")
        || ((lower.contains("context") || lower.contains("too many tokens"))
            && (lower.contains("exceed")
                || lower.contains("maximum")
                || lower.contains("too long")
                || lower.contains("too many")));
    let template = lower.contains("template")
        || lower.contains("roles must alternate")
        || lower.contains("role not supported")
        || lower.contains("jinja");
    let fault = if overflow {
        Fault::ContextOverflow {
            server_tokens: number_after(
                &lower,
                &[
                    "requested tokens (",
                    "you requested ",
                    "requested ",
                    "resulted in ",
                ],
            ),
            server_limit: number_after(
                &lower,
                &[
                    "context window of ",
                    "maximum context length is ",
                    "context length of ",
                    "n_ctx = ",
                    "n_ctx: ",
                ],
            ),
        }
    } else if template || matches!(status, 400 | 413 | 422) {
        Fault::Request
    } else {
        Fault::Server
    };
    let code = given_code.unwrap_or_else(|| match fault {
        Fault::ContextOverflow { .. } => "context_length_exceeded".into(),
        Fault::Request if template => "chat_template".into(),
        _ => format!("http_{status}"),
    });
    Failure {
        message: format!("provider answered {status}: {}", snippet(message)),
        fault,
        status: Some(status),
        code,
    }
}

/// The number after the first of `markers` in an error message: how many tokens the request
/// had ("Requested tokens (3515) exceed…", "you requested 9364 tokens") or the server's window
/// ("context window of 2048", "maximum context length is 2048").
fn number_after(lower: &str, markers: &[&str]) -> Option<usize> {
    for marker in markers {
        if let Some(i) = lower.find(marker) {
            let digits: String = lower[i + marker.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(n) = digits.parse() {
                return Some(n);
            }
        }
    }
    None
}

fn snippet(text: &str) -> String {
    text.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_by_whose_trouble_they_are() {
        let llama = r#"{"error":{"message":"Requested tokens (3515) exceed context window of 2048","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        let f = classify(400, llama);
        assert_eq!(
            f.fault,
            Fault::ContextOverflow {
                server_tokens: Some(3515),
                server_limit: Some(2048)
            }
        );
        assert_eq!(f.code, "context_length_exceeded");
        let vllm = r#"{"object":"error","message":"This model's maximum context length is 2048 tokens. However, you requested 9364 tokens in the messages.","type":"BadRequestError","code":400}"#;
        assert_eq!(
            classify(400, vllm).fault,
            Fault::ContextOverflow {
                server_tokens: Some(9364),
                server_limit: Some(2048)
            }
        );
        let template = r#"{"error":{"message":"Conversation roles must alternate user/assistant/user/assistant/...","type":"internal_server_error"}}"#;
        let f = classify(500, template);
        assert_eq!(f.fault, Fault::Request);
        assert_eq!(f.code, "chat_template");
        let gemma = r#"{"error":{"message":"System role not supported","type":"internal_server_error","param":null,"code":null}}"#;
        assert_eq!(classify(500, gemma).code, "chat_template");
        assert_eq!(classify(422, "{}").fault, Fault::Request);
        assert_eq!(classify(503, "").fault, Fault::Server);
        assert_eq!(classify(500, "oops").code, "http_500");
        assert_eq!(classify(401, "{}").fault, Fault::Server);
    }
}
