//! Small local HTTP servers that speak the protocols wahook calls out to: an OpenAI-compatible
//! chat-completions provider and the WhatsApp Cloud API's send endpoint. They record every
//! request and answer from a script (status, headers, body), so tests can make them slow,
//! rate-limited or broken.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::watch};

/// One scripted answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Value,
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16, body: Value) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body,
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

#[derive(Default)]
struct Inner {
    /// Request bodies, in arrival order (with the path for Graph).
    requests: Vec<(String, Value)>,
    script: VecDeque<Reply>,
    /// Answer once the script is used up; `None`: the default success.
    fallback: Option<Reply>,
    /// Graph: the template catalog `GET /{version}/{waba}/message_templates` pages through.
    catalog: Vec<Value>,
    /// Graph: files by media id (`GET /{version}/{media_id}`, then its download URL).
    media: std::collections::HashMap<String, FakeMedia>,
    /// Graph: download URLs handed out (each works once, like Meta's short-lived ones).
    urls_used: std::collections::HashSet<String>,
    urls_issued: usize,
    /// Provider: answer 404 on `/audio/transcriptions`.
    no_transcriptions: bool,
    /// Media ids downloaded at least once.
    downloads: std::collections::HashSet<String>,
    /// URLs handed out per media id.
    issued: std::collections::HashMap<String, usize>,
}

/// A file the Graph fake serves.
#[derive(Clone, Default)]
pub struct FakeMedia {
    pub bytes: Vec<u8>,
    pub mime_type: String,
    /// The sha256 the Graph API claims (hex); `None`: the real one.
    pub sha256: Option<String>,
    /// The first URL handed out has already expired (404 on download).
    pub first_url_expired: bool,
    /// The media id no longer exists (Graph's 400, code 100).
    pub gone: bool,
    /// The first download never finishes (one in flight when the server dies).
    pub hold_first: bool,
}

impl FakeMedia {
    pub fn new(bytes: &[u8], mime_type: &str) -> Self {
        Self {
            bytes: bytes.to_vec(),
            mime_type: mime_type.into(),
            ..Default::default()
        }
    }
}

/// The hex sha256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A fake server: its base URL and what it was asked.
#[derive(Clone)]
pub struct Fake {
    pub base: String,
    inner: Arc<Mutex<Inner>>,
    seen: Arc<watch::Sender<usize>>,
}

impl Fake {
    /// A handle on a real server at `base` (nothing is recorded or scripted).
    pub fn at(base: &str) -> Self {
        Self {
            base: base.to_owned(),
            inner: Default::default(),
            seen: Arc::new(watch::channel(0).0),
        }
    }

    pub fn requests(&self) -> Vec<(String, Value)> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// Answers to give, in order, before the fallback.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.inner.lock().unwrap().script.extend(replies);
    }

    /// Graph: the templates the catalog endpoint lists.
    pub fn catalog(&self, templates: Vec<Value>) {
        self.inner.lock().unwrap().catalog = templates;
    }

    /// Graph: a file under a media id.
    pub fn media(&self, id: &str, file: FakeMedia) {
        self.inner.lock().unwrap().media.insert(id.into(), file);
    }

    /// Provider: behave as a server without `/audio/transcriptions`.
    pub fn no_transcriptions(&self) {
        self.inner.lock().unwrap().no_transcriptions = true;
    }

    /// Requests whose path starts with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|(p, _)| p.starts_with(prefix))
            .count()
    }

    pub fn always(&self, reply: Reply) {
        self.inner.lock().unwrap().fallback = Some(reply);
    }

    /// Waits (on arrivals, never a fixed sleep) until `n` requests matching `pred` came.
    pub async fn wait_for(&self, n: usize, pred: impl Fn(&str, &Value) -> bool) {
        let mut seen = self.seen.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            seen.borrow_and_update();
            let count = self.requests().iter().filter(|(p, v)| pred(p, v)).count();
            if count >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, seen.changed())
                .await
                .is_err()
            {
                panic!(
                    "timed out waiting for {n} requests at {}; saw {count}",
                    self.base
                );
            }
        }
    }

    /// Records a request without using the script.
    fn record(&self, path: String, body: Value) {
        self.inner.lock().unwrap().requests.push((path, body));
        self.seen.send_modify(|n| *n += 1);
    }

    fn take(&self, path: String, body: Value) -> Option<Reply> {
        let mut inner = self.inner.lock().unwrap();
        inner.requests.push((path, body));
        let reply = inner.script.pop_front().or_else(|| inner.fallback.clone());
        drop(inner);
        self.seen.send_modify(|n| *n += 1);
        reply
    }
}

async fn start(router: Router<Fake>) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake = Fake {
        base: format!("http://{}", listener.local_addr().unwrap()),
        inner: Default::default(),
        seen: Arc::new(watch::channel(0).0),
    };
    let app = router.with_state(fake.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    fake
}

async fn answer(reply: Reply) -> Response {
    tokio::time::sleep(reply.delay).await;
    let mut headers = HeaderMap::new();
    for (k, v) in reply.headers {
        headers.insert(k, v.parse().unwrap());
    }
    (
        StatusCode::from_u16(reply.status).unwrap(),
        headers,
        Json(reply.body),
    )
        .into_response()
}

/// An OpenAI-compatible provider at `{base}/v1`: by default it answers "Reply N" with usage.
pub async fn provider() -> Fake {
    async fn completions(State(fake): State<Fake>, body: Bytes) -> Response {
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let n = fake.requests().len() + 1;
        match fake.take("/v1/chat/completions".into(), body) {
            Some(reply) => answer(reply).await,
            None => Json(json!({
                "id": format!("chatcmpl-{n}"),
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("Reply {n}")}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 40 + n, "completion_tokens": 7, "total_tokens": 47 + n}
            }))
            .into_response(),
        }
    }
    /// `POST /v1/audio/transcriptions` (multipart): "Transcript N", or 404 like a server
    /// that has no such endpoint once `no_transcriptions` is set.
    async fn transcriptions(State(fake): State<Fake>, headers: HeaderMap, body: Bytes) -> Response {
        let raw = String::from_utf8_lossy(&body).into_owned();
        let n = fake.count("/v1/audio/transcriptions") + 1;
        let missing = fake.inner.lock().unwrap().no_transcriptions;
        fake.record(
            "/v1/audio/transcriptions".into(),
            json!({"content_type": headers.get("content-type").and_then(|v| v.to_str().ok()), "raw": raw}),
        );
        if missing {
            return (StatusCode::NOT_FOUND, Json(json!({"detail": "Not Found"}))).into_response();
        }
        Json(json!({"text": format!("I need a new pump, part {n}")})).into_response()
    }
    start(
        Router::new()
            .route("/v1/chat/completions", post(completions))
            .route("/v1/audio/transcriptions", post(transcriptions)),
    )
    .await
}

/// The Graph API's `/{version}/{phone_number_id}/messages`: sends get `wamid.out.N`, the
/// typing indicator `{"success": true}`.
pub async fn graph() -> Fake {
    async fn messages(
        State(fake): State<Fake>,
        Path((version, pnid)): Path<(String, String)>,
        body: Bytes,
    ) -> Response {
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let typing = body.get("status").is_some();
        let n = fake
            .requests()
            .iter()
            .filter(|(_, b)| b.get("status").is_none())
            .count()
            + 1;
        match fake.take(format!("/{version}/{pnid}/messages"), body.clone()) {
            Some(reply) => answer(reply).await,
            None if typing => Json(json!({"success": true})).into_response(),
            None => Json(json!({
                "messaging_product": "whatsapp",
                "contacts": [{"input": body["to"], "wa_id": body["to"]}],
                "messages": [{"id": format!("wamid.out.{n}")}]
            }))
            .into_response(),
        }
    }
    /// `GET /{version}/{phone_number_id}`: the number, for the token that owns it
    /// (`OWNER_TOKEN`); Graph's error otherwise.
    async fn number(
        State(fake): State<Fake>,
        Path((version, pnid)): Path<(String, String)>,
        headers: HeaderMap,
    ) -> Response {
        let token = bearer(&headers);
        fake.take(format!("GET /{version}/{pnid}"), json!({"token": token}));
        let file = fake.inner.lock().unwrap().media.get(&pnid).cloned();
        if let Some(file) = file {
            return media_info(&fake, &pnid, &token, file);
        }
        if token == OWNER_TOKEN {
            Json(json!({"id": pnid, "display_phone_number": "+1 555 000 0000", "verified_name": "Owner"})).into_response()
        } else {
            (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {"message": format!("Unsupported get request. Object with ID '{pnid}' does not exist, cannot be loaded due to missing permissions, or does not support this operation."), "type": "GraphMethodException", "code": 100, "error_subcode": 33}})),
            )
                .into_response()
        }
    }
    /// `GET /{version}/{waba}/message_templates?limit=&after=`: the catalog in pages, with
    /// Graph's cursors and `next` (absent on the last page); a wrong token gets Graph's 190.
    async fn templates(
        State(fake): State<Fake>,
        Path((version, waba)): Path<(String, String)>,
        axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
        headers: HeaderMap,
    ) -> Response {
        let token = bearer(&headers);
        fake.take(
            format!("GET /{version}/{waba}/message_templates"),
            json!({"token": token, "query": q}),
        );
        if token.is_empty() || token == "bad-token" {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": {"message": "Error validating access token", "type": "OAuthException", "code": 190}})),
            )
                .into_response();
        }
        let limit: usize = q
            .get("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(25)
            .clamp(1, 100);
        // The fake pages in twos whatever the limit, so paging is exercised.
        let limit = limit.min(2);
        let start: usize = q
            .get("after")
            .and_then(|a| a.strip_prefix("cur-"))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let all = fake.inner.lock().unwrap().catalog.clone();
        let page: Vec<Value> = all.iter().skip(start).take(limit).cloned().collect();
        let end = start + page.len();
        let mut paging =
            json!({"cursors": {"before": format!("cur-{start}"), "after": format!("cur-{end}")}});
        if end < all.len() {
            paging["next"] = json!(format!(
                "https://graph.facebook.com/{version}/{waba}/message_templates?limit={limit}&after=cur-{end}"
            ));
        }
        Json(json!({"data": page, "paging": paging})).into_response()
    }
    start(
        Router::new()
            .route("/files/{id}/{n}", axum::routing::get(download))
            .route("/{version}/{pnid}/messages", post(messages))
            .route("/{version}/{pnid}/media", post(upload))
            .route(
                "/{version}/{waba}/message_templates",
                axum::routing::get(templates),
            )
            .route("/{version}/{pnid}", axum::routing::get(number)),
    )
    .await
}

/// `POST /{version}/{phone_number_id}/media` (multipart: `messaging_product`, `type`, `file`):
/// the file is kept under a new media id (`99000N`), which `GET /{version}/{media_id}` then
/// serves like any other; Graph's errors for no token, a missing field or a type that does
/// not match the file part's.
async fn upload(
    State(fake): State<Fake>,
    Path((version, pnid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = bearer(&headers);
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let parts = multipart(&content_type, &body);
    let field = |name: &str| parts.iter().find(|p| p.name == name);
    let text = |name: &str| field(name).map(|p| String::from_utf8_lossy(&p.bytes).into_owned());
    fake.record(
        format!("/{version}/{pnid}/media"),
        json!({
            "token": token,
            "messaging_product": text("messaging_product"),
            "type": text("type"),
            "filename": field("file").and_then(|p| p.filename.clone()),
            "file_type": field("file").and_then(|p| p.content_type.clone()),
            "sha256": field("file").map(|p| sha256_hex(&p.bytes)),
        }),
    );
    let refuse = |status: StatusCode, code: i64, message: &str| {
        (
            status,
            Json(json!({"error": {"message": message, "type": "OAuthException", "code": code}})),
        )
            .into_response()
    };
    if token.is_empty() {
        return refuse(StatusCode::UNAUTHORIZED, 190, "An access token is required");
    }
    let (Some(file), Some(mime)) = (field("file"), text("type")) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            100,
            "(#100) The parameter file is required",
        );
    };
    if text("messaging_product").as_deref() != Some("whatsapp")
        || file.content_type.as_deref() != Some(mime.as_str())
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            100,
            "(#100) Param type must match the file",
        );
    }
    let id = {
        let mut inner = fake.inner.lock().unwrap();
        let id = format!("99000{}", inner.media.len() + 1);
        inner
            .media
            .insert(id.clone(), FakeMedia::new(&file.bytes, &mime));
        id
    };
    Json(json!({"id": id})).into_response()
}

/// One part of a `multipart/form-data` body.
struct Part {
    name: String,
    filename: Option<String>,
    content_type: Option<String>,
    bytes: Vec<u8>,
}

/// The parts of a `multipart/form-data` body (RFC 7578), by its boundary.
fn multipart(content_type: &str, body: &[u8]) -> Vec<Part> {
    let Some(boundary) = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
    else {
        return Vec::new();
    };
    let delimiter = format!("--{}", boundary.trim_matches('"')).into_bytes();
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay.get(from..)
            .and_then(|h| h.windows(needle.len()).position(|w| w == needle))
            .map(|i| i + from)
    };
    let mut out = Vec::new();
    let mut at = match find(body, &delimiter, 0) {
        Some(i) => i + delimiter.len(),
        None => return out,
    };
    while let Some(next) = find(body, &delimiter, at) {
        // Each part: CRLF, headers, CRLF CRLF, bytes, CRLF before the next delimiter.
        let part = &body[at..next];
        let part = part.strip_prefix(b"\r\n").unwrap_or(part);
        let part = part.strip_suffix(b"\r\n").unwrap_or(part);
        if let Some(split) = find(part, b"\r\n\r\n", 0) {
            let head = String::from_utf8_lossy(&part[..split]).into_owned();
            let param = |key: &str| {
                head.split([';', '\r', '\n']).find_map(|p| {
                    p.trim()
                        .strip_prefix(&format!("{key}=\""))
                        .map(|v| v.trim_end_matches('"').to_owned())
                })
            };
            let content_type = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .starts_with("content-type:")
                    .then(|| l[13..].trim().to_owned())
            });
            out.push(Part {
                name: param("name").unwrap_or_default(),
                filename: param("filename"),
                content_type,
                bytes: part[split + 4..].to_vec(),
            });
        }
        at = next + delimiter.len();
    }
    out
}

/// `GET /{version}/{media_id}`: the file's URL (new each time), type, sha256 and size.
fn media_info(fake: &Fake, id: &str, token: &str, file: FakeMedia) -> Response {
    if token.is_empty() {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"message": "An access token is required", "type": "OAuthException", "code": 190}})),
        )
            .into_response();
    }
    if file.gone {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": format!("Unsupported get request. Object with ID '{id}' does not exist"), "type": "GraphMethodException", "code": 100, "error_subcode": 33}})),
        )
            .into_response();
    }
    let n = {
        let mut inner = fake.inner.lock().unwrap();
        inner.urls_issued += 1;
        let n = inner.urls_issued;
        let first = *inner.issued.entry(id.to_owned()).or_default() == 0;
        *inner.issued.get_mut(id).unwrap() += 1;
        // Expired before its first use: as if the job had waited past its minutes.
        if first && file.first_url_expired {
            inner.urls_used.insert(format!("{id}/{n}"));
        }
        n
    };
    Json(json!({
        "messaging_product": "whatsapp",
        "url": format!("{}/files/{id}/{n}", fake.base),
        "mime_type": file.mime_type,
        "sha256": file.sha256.clone().unwrap_or_else(|| sha256_hex(&file.bytes)),
        "file_size": file.bytes.len().to_string(),
        "id": id,
    }))
    .into_response()
}

/// A download URL: the bytes once, with the bearer token; 404 when used or expired.
async fn download(
    State(fake): State<Fake>,
    Path((id, n)): Path<(String, usize)>,
    headers: HeaderMap,
) -> Response {
    let token = bearer(&headers);
    fake.take(format!("GET /files/{id}/{n}"), json!({"token": token}));
    let (file, used, first) = {
        let mut inner = fake.inner.lock().unwrap();
        let file = inner.media.get(&id).cloned();
        let used = !inner.urls_used.insert(format!("{id}/{n}"));
        let first = inner.downloads.insert(id.clone());
        (file, used, first)
    };
    let Some(file) = file else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if token.is_empty() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if used {
        return StatusCode::NOT_FOUND.into_response();
    }
    if file.hold_first && first {
        std::future::pending::<()>().await;
    }
    (
        [(axum::http::header::CONTENT_TYPE, file.mime_type.clone())],
        file.bytes.clone(),
    )
        .into_response()
}

/// The request's bearer token ("" for none).
fn bearer(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_owned()
}

/// The Graph token the fake treats as the owner of every number.
pub const OWNER_TOKEN: &str = "owner-token";

pub fn is_send(_: &str, body: &Value) -> bool {
    body.get("type").and_then(Value::as_str) == Some("text")
}

pub fn is_template(_: &str, body: &Value) -> bool {
    body.get("type").and_then(Value::as_str) == Some("template")
}

pub fn is_typing(_: &str, body: &Value) -> bool {
    body.get("typing_indicator").is_some()
}
