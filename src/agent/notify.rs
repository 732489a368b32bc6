//! The hand-off notifier: a conversation handed to a person (the customer's keywords, Kapso's
//! hand-off, an operator) is announced to its account's `notify_url` as a Standard Webhooks
//! POST — `webhook-id` (the same on every attempt, so the receiver can drop a repeat),
//! `webhook-timestamp`, `webhook-signature` (HMAC-SHA256 with the account's `whsec_` secret)
//! — carrying the conversation and its newest messages.
//!
//! The job is the `handoff_notifications` row the store wrote with the hand-off; the worker
//! looks for due rows after every store commit (at most every 100 ms) and every
//! `notify.poll_ms`, claims each with a lease (nodes sharing a database never send one twice
//! at once) and records the outcome: `delivered` (2xx), `failed` (410 Gone, or
//! `notify.max_attempts` spent), `skipped` (no `notify_url` for the conversation's number),
//! else tried again after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, or the receiver's
//! `Retry-After`. A process that dies mid-attempt leaves the lease to expire and the same
//! `webhook-id` is sent again: the receiver, not a guess, decides it was a repeat.

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use sea_orm::{DatabaseConnection, EntityTrait};
use serde::Serialize;
use standardwebhooks::Webhook;
use tokio::sync::watch;

use crate::{
    config::{Config, NotifyConfig},
    metrics as m,
    store::{
        accounts::Directory,
        conversations::{self, ConversationView},
        handoffs::{self, Handoff, Line, Outcome},
    },
};

/// The waits before the 2nd, 3rd, … attempt (Svix's schedule).
const SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Where a number's hand-offs go.
struct Target {
    url: String,
    signer: Webhook,
}

pub struct Notifier {
    cfg: NotifyConfig,
    http: reqwest::Client,
    /// By `phone_number_id`.
    targets: HashMap<String, Arc<Target>>,
    /// A workspace's first number with a target (for a conversation whose number is unknown).
    by_workspace: HashMap<i64, String>,
}

/// What the receiver gets.
#[derive(Serialize)]
struct Notification<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: DateTime<Utc>,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    workspace: &'a str,
    phone_number_id: &'a str,
    /// Why it went to a person (the state transition's reason).
    reason: &'a str,
    correlation_id: &'a str,
    conversation: &'a ConversationView,
    /// The newest messages, oldest first.
    messages: &'a [Line],
}

impl Notifier {
    /// Without any `notify_url` it still runs: each hand-off's row is marked `skipped` (and
    /// none is sent, stale, once a `notify_url` is configured later).
    pub fn new(config: &Config, directory: &Directory) -> anyhow::Result<Self> {
        let mut targets = HashMap::new();
        for a in &config.accounts {
            let (Some(url), Some(secret)) = (
                a.notify_url.as_ref(),
                a.resolve_notify_secret().map_err(anyhow::Error::msg)?,
            ) else {
                continue;
            };
            let signer = Webhook::new(&secret)
                .map_err(|e| anyhow::anyhow!("accounts.notify_secret: {e}"))?;
            targets.insert(
                a.phone_number_id.clone(),
                Arc::new(Target {
                    url: url.clone(),
                    signer,
                }),
            );
        }
        let mut numbers: Vec<&crate::store::accounts::Account> = directory
            .iter()
            .filter(|a| targets.contains_key(&a.phone_number_id))
            .collect();
        numbers.sort_by(|a, b| a.phone_number_id.cmp(&b.phone_number_id));
        let mut by_workspace = HashMap::new();
        for a in numbers {
            by_workspace
                .entry(a.workspace_id)
                .or_insert_with(|| a.phone_number_id.clone());
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.notify.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            cfg: config.notify.clone(),
            http,
            targets,
            by_workspace,
        })
    }
}

pub async fn run(n: Arc<Notifier>, db: DatabaseConnection, mut progress: watch::Receiver<u64>) {
    let poll = Duration::from_millis(n.cfg.poll_ms);
    loop {
        let now = Utc::now();
        match handoffs::due(&db, now, 20).await {
            Ok(due) => {
                for job in due {
                    let lease = now + chrono::Duration::milliseconds(n.cfg.lease_ms as i64);
                    match handoffs::claim(&db, job.id, now, lease).await {
                        Ok(true) => deliver(&n, &db, job).await,
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "hand-off notifications: cannot claim one");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "hand-off notifications: cannot read due ones"),
        }
        tokio::select! {
            changed = progress.changed() => {
                if changed.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

async fn deliver(n: &Notifier, db: &DatabaseConnection, job: Handoff) {
    let correlation_id = job.correlation_id.clone();
    let attempts = job.attempts + 1;
    let outcome = attempt(n, db, &job, attempts).await;
    let label = match outcome.status {
        handoffs::PENDING => "retry",
        s => s,
    };
    metrics::counter!(m::HANDOFF_NOTIFICATIONS, "outcome" => label).increment(1);
    match label {
        "delivered" => {
            tracing::info!(%correlation_id, notification = job.id, conversation_id = job.conversation_id, attempts, "hand-off notified")
        }
        "skipped" => {}
        _ => {
            tracing::warn!(%correlation_id, notification = job.id, conversation_id = job.conversation_id, attempts, outcome = label, error = ?outcome.error, status = ?outcome.http_status, "hand-off notification not delivered")
        }
    }
    if let Err(e) = handoffs::record(db, job.id, outcome, Utc::now()).await {
        // The lease runs out and the row is tried again (same webhook-id).
        tracing::warn!(%correlation_id, notification = job.id, error = %e, "hand-off notifications: cannot record an outcome");
    }
}

/// One attempt; the row's outcome.
async fn attempt(n: &Notifier, db: &DatabaseConnection, job: &Handoff, attempts: i32) -> Outcome {
    let number = match handoffs::number_of(db, job.conversation_id).await {
        Ok(Some(p)) if n.targets.contains_key(&p) => Some(p),
        Ok(_) => n.by_workspace.get(&job.workspace_id).cloned(),
        Err(e) => {
            let error = format!("cannot read the conversation: {e}");
            return retry(n, None, None, error, attempts, None);
        }
    };
    let Some((number, target)) = number.and_then(|p| n.targets.get(&p).map(|t| (p, t))) else {
        return Outcome {
            status: handoffs::SKIPPED,
            url: None,
            http_status: None,
            error: Some("no notify_url for the conversation's number".into()),
            retry_at: None,
        };
    };
    let url = Some(target.url.clone());
    let body = match body(n, db, job, &number).await {
        Ok(b) => b,
        Err(e) => {
            let error = format!("cannot read the conversation: {e}");
            return retry(n, url, None, error, attempts, None);
        }
    };
    let id = format!("handoff_{}", job.id);
    let ts = Utc::now().timestamp();
    let signature = match target.signer.sign(&id, ts, &body) {
        Ok(s) => s,
        Err(e) => return failed(url, None, format!("cannot sign: {e}")),
    };
    let res = n
        .http
        .post(&target.url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    match res {
        Err(e) => {
            let what = if e.is_timeout() {
                "timed out"
            } else {
                "cannot connect"
            };
            retry(n, url, None, format!("{what}: {e}"), attempts, None)
        }
        Ok(r) if r.status().is_success() => Outcome {
            status: handoffs::DELIVERED,
            url,
            http_status: Some(r.status().as_u16()),
            error: None,
            retry_at: None,
        },
        Ok(r) => {
            let status = r.status();
            let after = retry_after(r.headers());
            let said = beginning(r).await;
            let error = format!("the receiver answered {status}: {said}");
            if status == reqwest::StatusCode::GONE {
                failed(url, Some(status.as_u16()), error)
            } else {
                retry(n, url, Some(status.as_u16()), error, attempts, after)
            }
        }
    }
}

async fn body(
    n: &Notifier,
    db: &DatabaseConnection,
    job: &Handoff,
    number: &str,
) -> Result<Vec<u8>, sea_orm::DbErr> {
    let workspace = entity::workspaces::Entity::find_by_id(job.workspace_id)
        .one(db)
        .await?
        .map(|w| w.name)
        .unwrap_or_default();
    let conversation = conversations::get(db, job.workspace_id, job.conversation_id)
        .await?
        .ok_or_else(|| sea_orm::DbErr::RecordNotFound("the conversation".into()))?;
    let lines = handoffs::last_lines(db, job.conversation_id, n.cfg.last_messages).await?;
    let notification = Notification {
        kind: "conversation.handed_off",
        timestamp: job.created_at,
        data: Data {
            workspace: &workspace,
            phone_number_id: number,
            reason: &job.reason,
            correlation_id: &job.correlation_id,
            conversation: &conversation,
            messages: &lines,
        },
    };
    Ok(serde_json::to_vec(&notification).expect("a notification serialises"))
}

fn failed(url: Option<String>, http_status: Option<u16>, error: String) -> Outcome {
    Outcome {
        status: handoffs::FAILED,
        url,
        http_status,
        error: Some(error),
        retry_at: None,
    }
}

/// Another attempt after the schedule's wait (or the receiver's `Retry-After`), unless
/// `notify.max_attempts` are spent.
fn retry(
    n: &Notifier,
    url: Option<String>,
    http_status: Option<u16>,
    error: String,
    attempts: i32,
    after: Option<Duration>,
) -> Outcome {
    if attempts >= n.cfg.max_attempts as i32 {
        return failed(
            url,
            http_status,
            format!("{error} (after {attempts} attempts)"),
        );
    }
    let wait =
        after.unwrap_or_else(|| SCHEDULE[(attempts.max(1) as usize - 1).min(SCHEDULE.len() - 1)]);
    Outcome {
        status: handoffs::PENDING,
        url,
        http_status,
        error: Some(error),
        retry_at: Some(Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default()),
    }
}

/// The first 200 characters of a receiver's answer: read a chunk at a time up to 1 KB (within
/// the request's timeout), never buffered whole — a receiver may answer with anything.
async fn beginning(mut r: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < 1024 {
        match r.chunk().await {
            Ok(Some(c)) => bytes.extend_from_slice(&c[..c.len().min(1024 - bytes.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&bytes).chars().take(200).collect()
}

fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs = h
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}
