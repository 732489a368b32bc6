//! The operator API under `/api/v1`: bearer tokens, roles, one file per resource. Every query
//! is scoped to the token's workspace; another workspace's id answers 404.
//!
//! Token checks cost no database round trip: principals are cached by token hash for
//! `CACHE_TTL` and the cache is dropped on every change to users or tokens made here (a change
//! made by the CLI in another process is seen within the TTL). Unknown tokens are looked up
//! once each, and a client that keeps sending bad ones is refused with 429 for a while. Only
//! failures count, per address, and a valid token always passes: users behind one reverse
//! proxy are never locked out by a neighbour's bad tokens. Past the limit, an address's bad
//! tokens are looked up one at a time (a flood of them holds one database connection at most),
//! and a bad token seen again is refused from memory.

pub mod accounts;
pub mod contacts;
pub mod conversations;
pub mod dlq;
pub mod events;
pub mod leads;
pub mod media;
pub mod messages;
pub mod stats;
pub mod stream;
pub mod templates;
pub mod tokens;
pub mod users;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Mutex, RwLock},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request, State},
    http::{StatusCode, header, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use chrono::{DateTime, Datelike, Utc};
use serde::{Serialize, de::DeserializeOwned};
use utoipa::{
    IntoResponses, Modify, OpenApi, ToSchema,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_axum::router::OpenApiRouter;

use super::AppState;
use crate::store::{
    tokens::{self as token_store, Principal},
    users::{Role, UserError},
};

const CACHE_TTL: Duration = Duration::from_secs(30);
/// Bad tokens allowed per client address per window before 429.
const BAD_TOKENS_PER_WINDOW: u32 = 20;
const BAD_TOKEN_WINDOW: Duration = Duration::from_secs(60);

#[derive(OpenApi)]
#[openapi(
    info(
        title = "wahook operator API",
        description = "Users, tokens, accounts, events and replay, the DLQ, conversations and \
hand-off, contacts and leads, outbound messages and stats of one workspace. Every route needs \
`Authorization: Bearer <token>`; viewers read, operators act, admins manage accounts, users and \
tokens. Errors are `{\"error\": {\"code\", \"message\"}}`."
    ),
    modifiers(&BearerAuth),
    components(schemas(ErrorBody, ErrorDetail)),
    security(("bearer" = [])),
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every route with its document: registered together, so neither can drift from the other.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(users::router())
        .merge(accounts::router())
        .merge(dlq::router())
        .merge(contacts::router())
        .merge(events::router())
        .merge(messages::router())
        .merge(stats::router())
        .merge(conversations::router())
        .merge(tokens::router())
        .merge(templates::router())
        .merge(leads::router())
        .merge(media::router())
        .merge(stream::router())
}

/// The OpenAPI 3.1 document of the operator API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

/// The API behind the bearer-token layer, and its document at `/api/v1/openapi.json` (open).
pub fn router(state: AppState) -> Router<AppState> {
    let (api, doc) = routes().split_for_parts();
    let doc = doc.to_pretty_json().unwrap_or_default() + "\n";
    api.route_layer(middleware::from_fn_with_state(state, authenticate))
        .route(
            "/api/v1/openapi.json",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], doc) }),
        )
        .fallback(|| async { Failure::not_found("route") })
}

/// Cached principals and the bad-token counters.
#[derive(Default)]
pub struct Auth {
    cache: RwLock<HashMap<String, (Principal, Instant)>>,
    bad: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    /// Hashes of tokens found bad lately (bounded): refused again without a lookup.
    known_bad: Mutex<HashMap<String, Instant>>,
    /// Lookups for addresses past the limit, one at a time.
    limited_lookups: tokio::sync::Mutex<()>,
    touched: Mutex<HashMap<i64, Instant>>,
}

/// Bad token hashes remembered at most.
const KNOWN_BAD_MAX: usize = 10_000;

impl Auth {
    /// Forgets every cached principal (after a change to users or tokens).
    pub fn invalidate(&self) {
        match self.cache.write() {
            Ok(mut c) => c.clear(),
            Err(p) => p.into_inner().clear(),
        }
    }

    fn cached(&self, hash: &str) -> Option<Principal> {
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        cache
            .get(hash)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(p, _)| p.clone())
    }

    fn remember(&self, hash: String, principal: Principal) {
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        cache.insert(hash, (principal, Instant::now()));
    }

    fn refused(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip else { return false };
        let bad = self.bad.lock().unwrap_or_else(|p| p.into_inner());
        bad.get(&ip).is_some_and(|(n, since)| {
            *n >= BAD_TOKENS_PER_WINDOW && since.elapsed() < BAD_TOKEN_WINDOW
        })
    }

    fn count_bad(&self, ip: Option<IpAddr>, hash: &str) {
        {
            let mut known = self.known_bad.lock().unwrap_or_else(|p| p.into_inner());
            if known.len() >= KNOWN_BAD_MAX {
                known.retain(|_, at| at.elapsed() < BAD_TOKEN_WINDOW);
                if known.len() >= KNOWN_BAD_MAX {
                    known.clear();
                }
            }
            known.insert(hash.to_owned(), Instant::now());
        }
        let Some(ip) = ip else { return };
        let mut bad = self.bad.lock().unwrap_or_else(|p| p.into_inner());
        if bad.len() >= KNOWN_BAD_MAX {
            bad.retain(|_, (_, since)| since.elapsed() < BAD_TOKEN_WINDOW);
        }
        let entry = bad.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= BAD_TOKEN_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }

    fn known_bad(&self, hash: &str) -> bool {
        let known = self.known_bad.lock().unwrap_or_else(|p| p.into_inner());
        known
            .get(hash)
            .is_some_and(|at| at.elapsed() < BAD_TOKEN_WINDOW)
    }

    /// True at most once a minute per token: when its last-used time is worth writing.
    fn due_touch(&self, token_id: i64) -> bool {
        let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        match touched.get(&token_id) {
            Some(at) if at.elapsed() < Duration::from_secs(60) => false,
            _ => {
                touched.insert(token_id, Instant::now());
                true
            }
        }
    }
}

/// An API error: a status, a machine-readable code and a message.
#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Failure {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

/// Every error answer of the API.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`, …
    pub code: String,
    pub message: String,
}

/// The error answers every route may give (documented once, used by every path).
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum Errors {
    /// Bad JSON, unknown fields, values out of range, a malformed id or cursor.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No token, or an unknown, revoked or inactive user's token.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The token's role is not enough.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// No such thing in the token's workspace.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The change conflicts with the current state.
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// Too many bad tokens from this address.
    #[response(status = 429)]
    TooMany(ErrorBody),
    /// The database (or the processing actors) did not answer; try again.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        });
        let mut res = (self.status, body).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            res.headers_mut()
                .insert(header::RETRY_AFTER, BAD_TOKEN_WINDOW.as_secs().into());
        }
        res
    }
}

impl From<sea_orm::DbErr> for Failure {
    fn from(e: sea_orm::DbErr) -> Self {
        tracing::warn!(error = %e, "operator API: store error");
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the database did not answer; try again",
        )
    }
}

impl From<UserError> for Failure {
    fn from(e: UserError) -> Self {
        match e {
            UserError::Invalid(m) => Failure::bad_request(m),
            UserError::Conflict(_) => Failure::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            UserError::NotFound => Failure::not_found("user"),
            UserError::Db(e) => e.into(),
        }
    }
}

/// A JSON body whose problems (not JSON, wrong types, unknown fields) answer 400 with the
/// reason.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = Failure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::trim)
            .is_some_and(|v| {
                v.eq_ignore_ascii_case("application/json")
                    || (v.starts_with("application/") && v.ends_with("+json"))
            });
        if !json {
            return Err(Failure::bad_request(
                "send a JSON body with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| Failure::new(e.status(), "bad_request", e.body_text()))?;
        // Text columns cannot hold NUL (PostgreSQL refuses it): refused here, not at the store.
        if bytes.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\u0000")) {
            return Err(Failure::bad_request("text may not contain NUL (\\u0000)"));
        }
        Json::<T>::from_bytes(&bytes)
            .map(|Json(v)| Body(v))
            .map_err(|e| Failure::bad_request(e.body_text()))
    }
}

/// Query parameters whose problems answer 400 with the reason, as JSON.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if parts.uri.query().is_some_and(|q| q.contains("%00")) {
            return Err(Failure::bad_request("parameters may not contain NUL (%00)"));
        }
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Params(v))
            .map_err(|e| Failure::bad_request(e.body_text()))
    }
}

/// The `{id}` of a path, or 400 when it is not a number.
pub struct Id(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<i64>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| Id(id))
            .map_err(|e| Failure::bad_request(e.body_text()))
    }
}

/// A time given by a client, between 1970 and 9999 (what both databases store), or 400.
pub fn sane_time(key: &str, time: Option<DateTime<Utc>>) -> Result<(), Failure> {
    match time {
        Some(t) if !(1970..=9999).contains(&t.year()) => Err(Failure::bad_request(format!(
            "{key} must be between 1970 and 9999, not {t}"
        ))),
        _ => Ok(()),
    }
}

/// The caller, as the auth layer found it.
#[derive(Clone, Debug)]
pub struct Caller(pub Principal);

impl Caller {
    /// 403 unless the caller's role reaches `role`.
    pub fn require(&self, role: Role) -> Result<(), Failure> {
        if self.0.role >= role {
            Ok(())
        } else {
            Err(Failure::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this needs the {} role; the token's user is {}",
                    role.as_str(),
                    self.0.role.as_str()
                ),
            ))
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = Failure;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            Failure::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a bearer token is needed",
            )
        })
    }
}

/// Bearer token → principal (cached) → the request's `Caller`; 401 without a valid one.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let auth = &state.auth;
    let too_many = || {
        metrics::counter!(crate::metrics::BAD_TOKENS, "answer" => "429").increment(1);
        Failure::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_bad_tokens",
            "too many requests with a bad token from this address; wait a minute",
        )
        .into_response()
    };
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Failure::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <token>",
        )
        .into_response();
    };
    let hash = token_store::hash(token);
    let limited = auth.refused(ip);
    let principal = match auth.cached(&hash) {
        Some(p) => Some(p),
        // A valid token always passes; one found bad lately is refused from memory.
        None if limited && auth.known_bad(&hash) => return too_many(),
        None => {
            let _one_at_a_time = if limited {
                Some(auth.limited_lookups.lock().await)
            } else {
                None
            };
            match token_store::principal(&state.db, &hash).await {
                Ok(Some(p)) => {
                    auth.remember(hash.clone(), p.clone());
                    Some(p)
                }
                Ok(None) => None,
                Err(e) => return Failure::from(e).into_response(),
            }
        }
    };
    let Some(principal) = principal else {
        auth.count_bad(ip, &hash);
        if limited {
            return too_many();
        }
        metrics::counter!(crate::metrics::BAD_TOKENS, "answer" => "401").increment(1);
        return Failure::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the token is unknown, revoked, or its user is inactive",
        )
        .into_response();
    };
    if auth.due_touch(principal.token_id) {
        let (db, id) = (state.db.clone(), principal.token_id);
        tokio::spawn(async move {
            let _ = token_store::touch(&db, id).await;
        });
    }
    req.extensions_mut().insert(Caller(principal));
    next.run(req).await
}

/// A page of a list: its items, and the cursor of the next page (`after=`) when there may be one.
#[derive(Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// A list without pages.
#[derive(Serialize, ToSchema)]
pub struct Items<T> {
    pub items: Vec<T>,
}

/// A page of `limit` rows: the items, and the cursor of the next page when it is full.
pub fn page<T: Serialize>(items: Vec<T>, limit: u64, id: impl Fn(&T) -> i64) -> Json<Page<T>> {
    let next = (items.len() as u64 == limit)
        .then(|| items.last().map(&id))
        .flatten();
    Json(Page {
        items,
        next: next.map(|n| n.to_string()),
    })
}

/// `limit` between 1 and 200 (default 50), or 400.
pub fn limit(limit: Option<u64>) -> Result<u64, Failure> {
    match limit.unwrap_or(50) {
        n @ 1..=200 => Ok(n),
        n => Err(Failure::bad_request(format!(
            "limit must be 1 to 200, not {n}"
        ))),
    }
}

/// An optional filter value that must be one of `allowed`, or 400 naming them.
pub fn one_of<'a>(
    key: &str,
    value: Option<&'a str>,
    allowed: &[&str],
) -> Result<Option<&'a str>, Failure> {
    match value {
        Some(v) if !allowed.contains(&v) => Err(Failure::bad_request(format!(
            "{key} `{v}` is not one of {}",
            allowed.join(", ")
        ))),
        v => Ok(v),
    }
}

/// A cursor from a previous page, or 400.
pub fn cursor(after: Option<&str>) -> Result<Option<i64>, Failure> {
    after
        .map(|a| {
            a.parse::<i64>()
                .map_err(|_| Failure::bad_request(format!("`{a}` is not a cursor")))
        })
        .transpose()
}
