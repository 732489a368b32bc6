//! The media worker: looks for due jobs after every store commit (at most every 100 ms) and
//! every `media.poll_ms`, claims each with a lease (so nodes sharing a database never fetch
//! one twice at once), fetches up to `media.concurrency` at a time, and records the outcome.
//! With `media.keep_days` it also deletes old files.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use tokio::{
    sync::{Semaphore, watch},
    task::JoinSet,
};

use super::{
    Media,
    fetch::{self, Fetched},
};
use crate::{
    config::MediaConfig,
    metrics as m,
    store::media::{self as jobs, Media as Job, Stored},
};

pub async fn run(media: Arc<Media>, db: DatabaseConnection, mut progress: watch::Receiver<u64>) {
    let poll = Duration::from_millis(media.cfg.poll_ms);
    let slots = Arc::new(Semaphore::new(media.cfg.concurrency));
    let mut running: JoinSet<()> = JoinSet::new();
    let mut last_retention: Option<tokio::time::Instant> = None;
    loop {
        while running.try_join_next().is_some() {}
        let now = Utc::now();
        let free = slots.available_permits();
        if free > 0 {
            match jobs::due(&db, now, free as u64).await {
                Ok(due) => {
                    for job in due {
                        let lease = now + chrono::Duration::milliseconds(media.cfg.lease_ms as i64);
                        match jobs::claim(&db, job.id, now, lease).await {
                            Ok(true) => {}
                            Ok(false) => continue,
                            Err(e) => {
                                tracing::warn!(error = %e, "media: cannot claim a job");
                                break;
                            }
                        }
                        let Ok(permit) = slots.clone().acquire_owned().await else {
                            return;
                        };
                        let (media, db) = (media.clone(), db.clone());
                        running.spawn(async move {
                            run_job(&media, &db, job).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "media: cannot read due jobs"),
            }
        }
        if media.cfg.keep_days > 0
            && last_retention
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(media.cfg.retention_every_ms))
        {
            last_retention = Some(tokio::time::Instant::now());
            retention(&media, &db).await;
        }
        // Woken by a commit (a new job may be there), a finished job, or the poll.
        tokio::select! {
            changed = progress.changed() => {
                if changed.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some(_) = running.join_next(), if !running.is_empty() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

async fn run_job(media: &Media, db: &DatabaseConnection, job: Job) {
    let started = std::time::Instant::now();
    let now = Utc::now();
    let token = match job.account_id {
        Some(account) => match jobs::phone_number_id(db, account).await {
            Ok(Some(pnid)) => media.token(&pnid).map(|t| (pnid.clone(), t.to_owned())),
            Ok(None) => None,
            Err(e) => {
                let _ = retry_or_fail(
                    &media.cfg,
                    db,
                    &job,
                    &format!("cannot read the account: {e}"),
                    None,
                )
                .await;
                return;
            }
        },
        None => None,
    };
    let outcome = match token {
        Some((pnid, token)) => {
            let fetched = fetch::fetch(media, &job, &pnid, &token).await;
            metrics::histogram!(m::MEDIA_FETCH_SECONDS).record(started.elapsed().as_secs_f64());
            fetched
        }
        None => Fetched::Failed(
            "the account has no Graph API access token (accounts[].access_token_env), so its files cannot be fetched".into(),
        ),
    };
    let result = match outcome {
        Fetched::Stored {
            mime_type,
            size,
            sha256,
            key,
        } => {
            metrics::counter!(m::MEDIA_JOBS, "outcome" => "stored").increment(1);
            metrics::counter!(m::MEDIA_BYTES, "store" => media.store.kind).increment(size as u64);
            tracing::info!(media = job.id, message = job.message_id, kind = %job.kind, size, attempts = job.attempts + 1, "media stored");
            jobs::mark_stored(
                db,
                job.id,
                Stored {
                    mime_type: &mime_type,
                    size,
                    sha256: &sha256,
                    storage_key: &key,
                },
                now,
            )
            .await
        }
        Fetched::Failed(reason) => fail(db, &job, &reason).await,
        Fetched::Retry { error, after } => retry_or_fail(&media.cfg, db, &job, &error, after).await,
    };
    if let Err(e) = result {
        // The lease lapses and the job is tried again.
        tracing::warn!(media = job.id, error = %e, "media: cannot record the outcome");
    }
}

async fn fail(db: &DatabaseConnection, job: &Job, reason: &str) -> Result<(), sea_orm::DbErr> {
    metrics::counter!(m::MEDIA_JOBS, "outcome" => "failed").increment(1);
    tracing::warn!(media = job.id, message = job.message_id, kind = %job.kind, reason, "media failed");
    jobs::mark_failed(db, job.id, reason, Utc::now()).await
}

/// Another try after the backoff (or the server's `Retry-After`), unless the media id is
/// dead by then.
async fn retry_or_fail(
    cfg: &MediaConfig,
    db: &DatabaseConnection,
    job: &Job,
    error: &str,
    after: Option<Duration>,
) -> Result<(), sea_orm::DbErr> {
    let attempts = job.attempts + 1;
    let now = Utc::now();
    let at = now + backoff(cfg, attempts, after);
    if at >= job.expires_at {
        let reason = format!("the media id expired after {attempts} attempts; last error: {error}");
        return fail(db, job, &reason).await;
    }
    metrics::counter!(m::MEDIA_JOBS, "outcome" => "retry").increment(1);
    tracing::info!(media = job.id, attempts, error, next = %at, "media: will try again");
    jobs::mark_retry(db, job.id, error, at, now).await
}

/// `retry_base_ms` doubling per attempt up to `retry_max_ms`; never sooner than the server
/// asked.
fn backoff(cfg: &MediaConfig, attempts: i32, after: Option<Duration>) -> chrono::Duration {
    let exp = cfg
        .retry_base_ms
        .saturating_mul(1u64 << (attempts.clamp(1, 20) - 1));
    let ms = exp
        .min(cfg.retry_max_ms)
        .max(after.map_or(0, |a| a.as_millis() as u64));
    chrono::Duration::milliseconds(ms as i64)
}

/// Deletes files stored more than `keep_days` ago (an object still used by a newer row of the
/// same bytes stays) and marks their rows `deleted`.
async fn retention(media: &Media, db: &DatabaseConnection) {
    let now = Utc::now();
    let cutoff: DateTime<Utc> = now - chrono::Duration::days(media.cfg.keep_days as i64);
    let rows = match jobs::stored_before(db, cutoff, 500).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "media retention: cannot read old files");
            return;
        }
    };
    let mut deleted = 0;
    for row in rows {
        if let Some(key) = &row.storage_key {
            match jobs::key_kept(db, key, cutoff).await {
                Ok(true) => {}
                Ok(false) => {
                    if let Err(e) = media.store.delete(key).await {
                        tracing::warn!(media = row.id, error = %e, "media retention: cannot delete");
                        continue;
                    }
                }
                Err(_) => continue,
            }
        }
        let reason = format!("deleted after media.keep_days = {}", media.cfg.keep_days);
        if jobs::mark_deleted(db, row.id, &reason, now).await.is_ok() {
            deleted += 1;
        }
    }
    if deleted > 0 {
        metrics::counter!(m::MEDIA_JOBS, "outcome" => "deleted").increment(deleted);
        tracing::info!(
            deleted,
            keep_days = media.cfg.keep_days,
            "media retention deleted old files"
        );
    }
}
