//! `POST /webhooks/whatsapp` (Meta), `GET /webhooks/whatsapp` (Meta's handshake) and
//! `POST /webhooks/kapso`.
//!
//! The order is fixed: raw bytes → the accounts the body names → their secret → HMAC over the
//! raw bytes → append to the durable inbox → 200. Nothing is re-serialised before the HMAC.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use chrono::Utc;
use serde_json::json;

use super::AppState;
use crate::{
    error::ApiError,
    ingest::{Routing, Source, Tenant, route, signature},
    metrics as m,
    store::{
        accounts::{Account, Directory},
        inbox::{self, AppendError, AppendOutcome, EventStatus, NewEvent},
    },
    telemetry::LogSampler,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/webhooks/whatsapp", get(handshake).post(meta))
        .route("/webhooks/kapso", axum::routing::post(kapso))
}

/// Headers worth keeping with the raw payload.
const KEPT_HEADERS: &[&str] = &[
    "content-type",
    "user-agent",
    "x-hub-signature-256",
    "x-webhook-event",
    "x-webhook-signature",
    "x-idempotency-key",
    "x-webhook-batch",
    "x-batch-size",
    "x-webhook-payload-version",
];

/// Meta's verification handshake: echo `hub.challenge` verbatim as text/plain when the token
/// is some account's verify token.
async fn handshake(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    // PHP-style `hub_mode` spellings are accepted too; they name the same parameters.
    let param = |k: &str| q.get(k).or_else(|| q.get(&k.replace('.', "_")));
    let (Some(mode), Some(token), Some(challenge)) = (
        param("hub.mode"),
        param("hub.verify_token"),
        param("hub.challenge"),
    ) else {
        count(Source::Meta, "handshake_incomplete");
        return ApiError::Forbidden("handshake_incomplete").into_response();
    };
    let known = state
        .directory()
        .iter()
        .any(|a| signature::constant_time_eq(a.verify_token.as_bytes(), token.as_bytes()));
    if mode != "subscribe" || !known {
        count(Source::Meta, "handshake_refused");
        if let Some(left_out) = REJECTION_LOG.admit("handshake_refused") {
            tracing::warn!(
                reason = "handshake_refused",
                mode,
                left_out,
                "verification handshake refused"
            );
        }
        return ApiError::Forbidden("handshake_refused").into_response();
    }
    count(Source::Meta, "handshake_ok");
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        challenge.clone(),
    )
        .into_response()
}

async fn meta(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let correlation_id = uuid::Uuid::now_v7().to_string();
    let result = accept_meta(&state, &headers, &body, &correlation_id).await;
    respond(Source::Meta, result, &correlation_id)
}

async fn kapso(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let correlation_id = uuid::Uuid::now_v7().to_string();
    let result = accept_kapso(&state, &headers, &body, &correlation_id).await;
    respond(Source::Kapso, result, &correlation_id)
}

async fn accept_meta(
    state: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
    correlation_id: &str,
) -> Result<AppendOutcome, ApiError> {
    let expected = signature::parse_meta_header(header_bytes(headers, "x-hub-signature-256"))
        .map_err(signature_error)?;
    let directory = state.directory();
    // The secret is picked from the routing ids alone: no document is built before the HMAC.
    let routing = route::meta(body);
    let tenant = match &routing {
        Routing::Refused(_) => return Err(ApiError::BadRequest("ambiguous_routing_id")),
        Routing::Json(ids) if !ids.phone_number_ids.is_empty() => verify_accounts(
            &directory,
            &ids.phone_number_ids,
            body,
            &expected,
            |a: &Account| Some(a.app_secret.as_str()),
        )?,
        // Account-level fields name the WhatsApp Business Account only: its accounts' secret.
        Routing::Json(ids)
            if ids
                .waba_ids
                .iter()
                .any(|w| !directory.of_waba(w).is_empty()) =>
        {
            let pnids: Vec<String> = ids
                .waba_ids
                .iter()
                .flat_map(|w| directory.of_waba(w).iter().cloned())
                .collect();
            verify_waba_accounts(&directory, &pnids, body, &expected)?
        }
        // Naming neither: each distinct app secret once (accounts of one Meta app share one),
        // for a body small enough to be an account-level webhook.
        _ => unrouted(state, &directory, body, &expected, Directory::app_secrets)?,
    };
    // What the body is about (`messages`, `smb_message_echoes`, …), for the operator's lists.
    let event_type = match &routing {
        Routing::Json(ids) => ids.event_type.clone(),
        _ => None,
    };
    let event = new_event(
        Source::Meta,
        event_type,
        format!("meta:{}", signature::sha256_hex(body)),
        None,
        body,
        headers,
        correlation_id,
        tenant,
        &routing,
        &directory,
        &state.processing.reads,
    );
    append(state, event).await
}

async fn accept_kapso(
    state: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
    correlation_id: &str,
) -> Result<AppendOutcome, ApiError> {
    let expected = signature::parse_kapso_header(header_bytes(headers, "x-webhook-signature"))
        .map_err(signature_error)?;
    let directory = state.directory();
    let routing = route::kapso(body);
    let project = |ids: &route::Ids| {
        ids.project_id
            .as_ref()
            .and_then(|id| state.kapso_projects.get(id))
            .filter(|(_, secret)| signature::verify(secret.as_bytes(), body, &expected))
            .map(|(workspace_id, _)| Tenant::Workspace(*workspace_id))
    };
    let tenant = match &routing {
        Routing::Refused(_) => return Err(ApiError::BadRequest("ambiguous_routing_id")),
        // Phone-number webhooks name the number and are signed with its account's secret; a
        // project webhook is signed with its project's secret and may act only inside the
        // project's workspace, whatever numbers it names.
        Routing::Json(ids) if !ids.phone_number_ids.is_empty() => {
            match verify_accounts(
                &directory,
                &ids.phone_number_ids,
                body,
                &expected,
                |a: &Account| a.kapso_secret.as_deref(),
            ) {
                Ok(tenant) => tenant,
                Err(e) => project(ids).ok_or(e)?,
            }
        }
        Routing::Json(ids) => project(ids).ok_or(if ids.project_id.is_some() {
            ApiError::Forbidden("bad_signature")
        } else {
            ApiError::Forbidden("unknown_phone_number")
        })?,
        Routing::NotJson(_) => {
            unrouted(state, &directory, body, &expected, Directory::kapso_secrets)?
        }
    };
    // The event name a batch carries in its signed body counts over the header, which no
    // signature covers.
    let event_type = match &routing {
        Routing::Json(ids) => ids.event_type.clone(),
        _ => None,
    }
    .or_else(|| header_str(headers, "x-webhook-event").map(str::to_owned));
    // Keys are per tenant: one tenant's idempotency key can never shadow another's event.
    // The body key makes the same signed bytes one event, whatever key or name they come with.
    let tenant_key = tenant.key();
    let hash = signature::sha256_hex(body);
    let dedup_key = match header_str(headers, "x-idempotency-key") {
        Some(key) if !key.is_empty() => format!("kapso:{tenant_key}:{key}"),
        _ => format!("kapso:{tenant_key}:sha256:{hash}"),
    };
    let event = new_event(
        Source::Kapso,
        event_type,
        dedup_key,
        Some(format!("kapso:{tenant_key}:body:{hash}")),
        body,
        headers,
        correlation_id,
        tenant,
        &routing,
        &directory,
        &state.processing.reads,
    );
    append(state, event).await
}

/// The signer of a body that names no account: the accounts of the first distinct secret
/// (`secrets` of the directory) that signs it — tried only when the body is small enough
/// (`intake.unrouted_max_bytes`), so that an unsigned request costs at most that many bytes
/// hashed per distinct secret. A larger one is refused without any.
fn unrouted<'d, I>(
    state: &AppState,
    directory: &'d Directory,
    body: &[u8],
    expected: &signature::Digest32,
    secrets: impl FnOnce(&'d Directory) -> I,
) -> Result<Tenant, ApiError>
where
    I: Iterator<Item = (&'d str, &'d [String])>,
{
    if body.len() > state.config.intake.unrouted_max_bytes {
        return Err(ApiError::Forbidden("unroutable_body"));
    }
    secrets(directory)
        .find(|(secret, _)| signature::verify(secret.as_bytes(), body, expected))
        .map(|(_, pnids)| directory.tenant_of(pnids))
        .ok_or(ApiError::Forbidden("bad_signature"))
}

/// Tenant isolation: every phone number the body names must be known, and all of them must
/// share one secret, which must sign the raw body. The tenant is those accounts.
fn verify_accounts<'d>(
    directory: &'d Directory,
    ids: &[String],
    body: &[u8],
    expected: &signature::Digest32,
    secret_of: impl Fn(&'d Account) -> Option<&'d str>,
) -> Result<Tenant, ApiError> {
    let mut secret: Option<&str> = None;
    for id in ids {
        let account = directory
            .get(id)
            .ok_or(ApiError::Forbidden("unknown_phone_number"))?;
        let own = secret_of(account).ok_or(ApiError::Forbidden("no_secret_for_source"))?;
        match secret {
            None => secret = Some(own),
            Some(s) if s == own => {}
            Some(_) => return Err(ApiError::Forbidden("cross_tenant")),
        }
    }
    let secret = secret.ok_or(ApiError::Forbidden("unknown_phone_number"))?;
    if !signature::verify(secret.as_bytes(), body, expected) {
        return Err(ApiError::Forbidden("bad_signature"));
    }
    Ok(directory.tenant_of(ids))
}

/// At most this many distinct secrets are tried for a body that names only a WABA.
const MAX_WABA_SECRETS: usize = 8;

/// A body that names only WhatsApp Business Accounts. Their accounts may have several signers
/// (a WABA id is not proven: another tenant can give its own number any WABA id), so the body
/// is tried against each distinct app secret of those accounts, oldest account first, and may
/// act only on the accounts of the secret that verifies it. One signer can therefore never
/// make another's account-level webhooks fail (as requiring one secret for all did).
fn verify_waba_accounts(
    directory: &Directory,
    ids: &[String],
    body: &[u8],
    expected: &signature::Digest32,
) -> Result<Tenant, ApiError> {
    let mut accounts: Vec<&Account> = ids.iter().filter_map(|id| directory.get(id)).collect();
    accounts.sort_by_key(|a| a.id);
    let mut secrets: Vec<(&str, Vec<String>)> = Vec::new();
    for a in accounts {
        match secrets.iter_mut().find(|(s, _)| *s == a.app_secret) {
            Some((_, ids)) => ids.push(a.phone_number_id.clone()),
            None => secrets.push((a.app_secret.as_str(), vec![a.phone_number_id.clone()])),
        }
    }
    for (secret, ids) in secrets.iter().take(MAX_WABA_SECRETS) {
        if signature::verify(secret.as_bytes(), body, expected) {
            return Ok(directory.tenant_of(ids));
        }
    }
    Err(ApiError::Forbidden("bad_signature"))
}

/// UTF-8 without NUL: what a text column holds on both backends (PostgreSQL refuses NUL).
fn is_text(body: &[u8]) -> bool {
    std::str::from_utf8(body).is_ok() && !body.contains(&0)
}

/// The body as stored: JSON is its own text; other text as it is; anything else (invalid
/// UTF-8, NUL bytes) as `base64:` and its exact bytes, so nothing is lost or mangled.
fn kept_text(body: &[u8], not_json: bool) -> String {
    match not_json {
        true if !is_text(body) => {
            use base64::Engine;
            format!(
                "base64:{}",
                base64::engine::general_purpose::STANDARD.encode(body)
            )
        }
        _ => String::from_utf8_lossy(body).into_owned(),
    }
}

/// A verified request as its inbox row, and the 400 to answer once it is kept, if it is one.
/// A signed body that is not JSON, or JSON that two readers could read two ways (a key given
/// twice), is kept for the record (status `dead`, with the reason) and refused; a JSON body is
/// exactly its UTF-8 text. A body kept to be processed is read here, once, within its tenant:
/// processing applies that reading (the typed event) rather than parsing the payload again.
#[allow(clippy::too_many_arguments)]
fn new_event(
    source: Source,
    event_type: Option<String>,
    dedup_key: String,
    body_key: Option<String>,
    body: &[u8],
    headers: &HeaderMap,
    correlation_id: &str,
    tenant: Tenant,
    routing: &Routing,
    directory: &Directory,
    reads: &crate::actors::ReadCounts,
) -> (NewEvent, Option<ApiError>) {
    let not_json = match routing {
        Routing::NotJson(err) => Some(err.as_str()),
        _ => None,
    };
    let (status, last_error, refusal) = match not_json {
        None => match route::strict(body) {
            route::Strict::Fine => (EventStatus::Pending, None, None),
            route::Strict::Duplicate(key) => (
                EventStatus::Dead,
                Some(format!(
                    "{}: the key {key:?} is given twice in one object (readers would differ on which counts)",
                    inbox::REFUSED
                )),
                Some(ApiError::BadRequest("ambiguous_payload")),
            ),
            route::Strict::Unreadable(err) => (
                EventStatus::Dead,
                Some(format!("payload is not JSON: {err}")),
                Some(ApiError::BadRequest("payload_not_json")),
            ),
        },
        Some(err) if is_text(body) => (
            EventStatus::Dead,
            Some(format!("payload is not JSON: {err}")),
            Some(ApiError::BadRequest("payload_not_json")),
        ),
        Some(err) => (
            EventStatus::Dead,
            Some(format!(
                "payload is not JSON: {err} (not text either: kept as `base64:` and its bytes)"
            )),
            Some(ApiError::BadRequest("payload_not_json")),
        ),
    };
    let payload: Arc<str> = kept_text(body, not_json.is_some()).into();
    let received_at = Utc::now();
    let normalized = (status == EventStatus::Pending).then(|| {
        reads.intake();
        Arc::new(crate::ingest::normalize(
            source,
            event_type.as_deref(),
            &payload,
            received_at,
            &directory.scope(&tenant),
        ))
    });
    let kept: serde_json::Map<String, serde_json::Value> = KEPT_HEADERS
        .iter()
        .filter_map(|name| header_str(headers, name).map(|v| ((*name).to_owned(), json!(v))))
        .collect();
    let event = NewEvent {
        source,
        event_type,
        dedup_key,
        body_key,
        payload,
        headers: serde_json::Value::Object(kept).to_string(),
        tenant,
        correlation_id: correlation_id.to_owned(),
        received_at,
        status,
        last_error,
        normalized,
    };
    (event, refusal)
}

/// Keeps the event (and, in cluster mode, publishes it); then answers with `refusal` if the
/// body was kept but refused.
async fn append(
    state: &AppState,
    (event, refusal): (NewEvent, Option<ApiError>),
) -> Result<AppendOutcome, ApiError> {
    let retry_after_seconds = state.config.intake.retry_after_seconds;
    // Bounded memory: past this much unfinished work, Meta is asked to come back later.
    if state.processing.in_flight() >= state.config.processing.max_in_flight {
        return Err(ApiError::Unavailable {
            reason: "processing_backlog",
            retry_after_seconds,
        });
    }
    // The 200 waits for the hand-over (in cluster mode, the broker's confirms; an event
    // committed but not confirmed is published by the sweeper if the sender's retry does
    // not come).
    let outcome = state.inbox.append(event).await.map_err(|e| {
        let reason = match e {
            AppendError::QueueFull => "intake_queue_full",
            AppendError::Closed => "intake_stopped",
            AppendError::Store(_) => "store_unavailable",
            AppendError::HandOver(e) => {
                tracing::warn!(error = %e, "cannot publish a committed event");
                "broker_unavailable"
            }
        };
        ApiError::Unavailable {
            reason,
            retry_after_seconds,
        }
    })?;
    match refusal {
        Some(refusal) => Err(refusal),
        None => Ok(outcome),
    }
}

fn respond(
    source: Source,
    result: Result<AppendOutcome, ApiError>,
    correlation_id: &str,
) -> Response {
    let mut response = match result {
        Ok(AppendOutcome::Accepted { event_id }) => {
            count(source, "accepted");
            tracing::debug!(
                correlation_id,
                event_id,
                source = source.as_str(),
                "webhook accepted"
            );
            Json(json!({ "status": "accepted", "event_id": event_id })).into_response()
        }
        Ok(AppendOutcome::Duplicate) => {
            count(source, "duplicate");
            tracing::info!(
                correlation_id,
                source = source.as_str(),
                "redelivered webhook acknowledged as duplicate"
            );
            Json(json!({ "status": "duplicate" })).into_response()
        }
        Err(e) => {
            count(source, e.code());
            if let Some(left_out) = REJECTION_LOG.admit(e.code()) {
                tracing::warn!(
                    correlation_id,
                    source = source.as_str(),
                    reason = e.code(),
                    status = e.status().as_u16(),
                    left_out,
                    "webhook rejected"
                );
            }
            e.into_response()
        }
    };
    if let Ok(v) = HeaderValue::from_str(correlation_id) {
        response.headers_mut().insert("x-correlation-id", v);
    }
    response
}

/// Rejections are logged as samples (per reason, a few a second): a flood of bad requests must
/// not become a flood of log lines. `wahook_webhooks_received_total` counts every one.
static REJECTION_LOG: std::sync::LazyLock<LogSampler> =
    std::sync::LazyLock::new(LogSampler::default);

fn count(source: Source, outcome: &'static str) {
    metrics::counter!(m::WEBHOOKS_RECEIVED, "source" => source.as_str(), "outcome" => outcome)
        .increment(1);
}

fn signature_error(e: signature::SignatureError) -> ApiError {
    match e {
        signature::SignatureError::Missing => ApiError::Unauthorized("missing_signature"),
        signature::SignatureError::Malformed => ApiError::Unauthorized("malformed_signature"),
    }
}

fn header_bytes<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get(name).map(HeaderValue::as_bytes)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}
