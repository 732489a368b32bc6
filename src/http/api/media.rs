//! `/api/v1/media`: an operator's file uploaded to the Graph API for a send (its media id then
//! goes into `POST /api/v1/messages`), and `/api/v1/media/{id}`: a stored file of the
//! workspace, streamed from the media store with its type. Files come from customers, so nothing is trusted: only images, audio and video
//! of known types are shown inline, everything else is a download; the answer may never be
//! sniffed or run as a page (`nosniff`, a sandboxing CSP).

use axum::{
    Json,
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Caller, ErrorBody, Errors, Failure, Id, Params, messages::workspace_token};
use crate::{
    http::AppState,
    media::{essence, fetch::limit_of},
    store::{
        media as store,
        users::{Role, audit},
    },
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_file))
        .routes(routes!(upload))
}

/// The file types the Cloud API takes, and the message type each is sent as.
const UPLOAD_TYPES: [(&str, &str); 16] = [
    ("image/jpeg", "image"),
    ("image/png", "image"),
    ("image/webp", "sticker"),
    ("audio/aac", "audio"),
    ("audio/amr", "audio"),
    ("audio/mpeg", "audio"),
    ("audio/mp4", "audio"),
    ("audio/ogg", "audio"),
    ("video/mp4", "video"),
    ("video/3gpp", "video"),
    ("application/pdf", "document"),
    ("text/plain", "document"),
    ("application/msword", "document"),
    (
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "document",
    ),
    ("application/vnd.ms-excel", "document"),
    (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "document",
    ),
];

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    /// The business number whose Graph API token uploads it (one of the workspace's accounts).
    #[param(pattern = "^[0-9]{1,64}$")]
    phone_number_id: String,
    /// The file's type, when the request's `Content-Type` does not give it.
    #[param(max_length = 128)]
    mime_type: Option<String>,
    /// The file's name (a document is shown with it).
    #[param(min_length = 1, max_length = 240)]
    filename: Option<String>,
}

/// A file's bytes.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
struct FileBytes(Vec<u8>);

/// An uploaded file: its media id (for `POST /api/v1/messages`, `media.id`; Meta keeps it 30
/// days), the message type it goes as, its type, size and sha256.
#[derive(Serialize, ToSchema)]
struct Uploaded {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    mime_type: String,
    size: u64,
    sha256: String,
}

/// Uploads a file to the Graph API for a send (operator): the body is the file, its type the
/// request's `Content-Type` (or `mime_type`): one the Cloud API takes (JPEG and PNG images,
/// WebP stickers, AAC/AMR/MP3/MP4/Ogg audio, MP4/3GPP video, PDF, text and Office documents),
/// within WhatsApp's size for it and `media.upload_max_bytes`.
#[utoipa::path(post, path = "/api/v1/media", tag = "media", operation_id = "media_upload",
    params(UploadQuery),
    request_body(content = FileBytes, content_type = "application/octet-stream", description = "The file's bytes"),
    responses(
        (status = 201, body = Uploaded, description = "uploaded"),
        (status = 404, body = ErrorBody, description = "no such account in the workspace"),
        (status = 409, body = ErrorBody, description = "the account has no Graph API token"),
        (status = 413, body = ErrorBody, description = "larger than WhatsApp or media.upload_max_bytes allow"),
        (status = 415, body = ErrorBody, description = "a type the Cloud API does not take"),
        (status = 502, body = ErrorBody, description = "the Graph API refused it"),
        Errors))]
async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    Params(q): Params<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Failure> {
    caller.require(Role::Operator)?;
    let ws = caller.0.workspace_id;
    let token = workspace_token(&state, ws, &q.phone_number_id)?.to_owned();
    let declared = q
        .mime_type
        .clone()
        .or_else(|| {
            headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let mime = essence(&declared);
    let Some(&(mime, kind)) = UPLOAD_TYPES.iter().find(|(m, _)| *m == mime) else {
        return Err(Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_type",
            format!(
                "the Cloud API does not take {:?}; give one of: {}",
                declared.chars().take(128).collect::<String>(),
                UPLOAD_TYPES.map(|(m, _)| m).join(", ")
            ),
        ));
    };
    let filename = match &q.filename {
        Some(f)
            if f.trim().is_empty()
                || f.chars().count() > 240
                || f.chars().any(char::is_control) =>
        {
            return Err(Failure::bad_request(
                "filename must have 1 to 240 characters and no control characters",
            ));
        }
        Some(f) => f.clone(),
        None => format!(
            "{kind}.{}",
            mime.rsplit(['/', '.', '-']).next().unwrap_or("bin")
        ),
    };
    let limit = limit_of(kind).min(state.config.media.upload_max_bytes);
    let too_large = || {
        Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a {kind} may have at most {limit} bytes"),
        )
    };
    let declared_len = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_len.is_some_and(|n| n > limit) {
        // What the client has already sent (up to 1 MB) is read and dropped first, so it
        // reads the 413 rather than a connection reset by unread bytes.
        let _ = axum::body::to_bytes(body, 1 << 20).await;
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .await
        .map_err(|_| too_large())?;
    if bytes.is_empty() {
        return Err(Failure::bad_request("the file is empty"));
    }
    let size = bytes.len() as u64;
    let sha256 = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    let graph = &state.processing.agents.graph;
    let id = graph
        .upload_media(&q.phone_number_id, &token, bytes.to_vec(), mime, &filename)
        .await
        .map_err(|e| {
            tracing::warn!(code = %e.code, error = %e.message, "a media upload was refused");
            Failure::new(
                StatusCode::BAD_GATEWAY,
                "graph_refused",
                format!(
                    "the Graph API did not take the file ({}): {}",
                    e.code, e.message
                ),
            )
        })?;
    audit(
        &state.db,
        ws,
        &caller.0.actor,
        "media.upload",
        &format!("account:{}", q.phone_number_id),
        None,
        Some(&format!("{id} {mime} {size} bytes")),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(Uploaded {
            id,
            kind: kind.into(),
            mime_type: mime.into(),
            size,
            sha256,
        }),
    )
        .into_response())
}

/// A stored file of the workspace (viewer), byte for byte, with its content type and a
/// `Content-Disposition` (inline for images, audio and video; a download with the file's name
/// otherwise). A file not stored (yet, or `failed`, or `deleted`) answers 404 with its status.
#[utoipa::path(get, path = "/api/v1/media/{id}", tag = "media", operation_id = "media_get",
    params(("id" = i64, Path, description = "The media id of a message's `media`")),
    responses((status = 200, description = "The file", content_type = "application/octet-stream", body = Vec<u8>), Errors))]
async fn get_file(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
) -> Result<Response, Failure> {
    caller.require(Role::Viewer)?;
    let Some(row) = store::find(&state.db, caller.0.workspace_id, id).await? else {
        return Err(Failure::not_found("media"));
    };
    let key = match (row.status.as_str(), &row.storage_key) {
        (store::STORED, Some(key)) => key.clone(),
        (status, _) => {
            return Err(Failure::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                match &row.error {
                    Some(e) => format!("media {id} is {status}: {e}"),
                    None => format!("media {id} is {status}"),
                },
            ));
        }
    };
    let media = &state.processing.agents.media;
    let (stream, size) = media.store.stream(&key).await.map_err(|e| {
        tracing::warn!(media = id, error = %e, "a stored file cannot be read");
        Failure::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the media store cannot give the file now",
        )
    })?;
    let mime = safe_mime(row.mime_type.as_deref());
    let disposition = disposition(&row.kind, &mime, row.filename.as_deref(), id);
    let mut res = Body::from_stream(stream).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&mime)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=86400"),
    );
    if let Some(sha) = &row.sha256
        && let Ok(v) = HeaderValue::from_str(&format!("\"{sha}\""))
    {
        h.insert(header::ETAG, v);
    }
    Ok(res)
}

/// The stored type if it reads as `type/subtype` (parameters kept), else
/// `application/octet-stream`.
fn safe_mime(mime: Option<&str>) -> String {
    let Some(m) = mime.map(str::trim) else {
        return "application/octet-stream".into();
    };
    let essence = crate::media::essence(m);
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match essence.split_once('/') {
        Some((t, s)) if token(t) && token(s) && m.is_ascii() && !m.contains(['\r', '\n']) => {
            m.to_owned()
        }
        _ => "application/octet-stream".into(),
    }
}

/// Inline only for what a browser shows without running it; a download otherwise, named.
fn disposition(kind: &str, mime: &str, filename: Option<&str>, id: i64) -> String {
    let essence = crate::media::essence(mime);
    let inline = matches!(
        essence.as_str(),
        "image/jpeg" | "image/png" | "image/webp" | "image/gif"
    ) || (essence.starts_with("audio/") || essence.starts_with("video/"))
        && kind != "document";
    if inline && filename.is_none() {
        return "inline".into();
    }
    let name = filename
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{kind}-{id}"));
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ' ' | '(' | ')') {
                c
            } else {
                '_'
            }
        })
        .take(150)
        .collect();
    let encoded: String = name
        .bytes()
        .take(600)
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let kind = if inline { "inline" } else { "attachment" };
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_shown_only_when_a_browser_cannot_run_it() {
        assert_eq!(disposition("image", "image/jpeg", None, 1), "inline");
        assert_eq!(
            disposition("audio", "audio/ogg; codecs=opus", None, 1),
            "inline"
        );
        let d = disposition("document", "text/html", Some("x\"; evil.html"), 7);
        assert!(
            d.starts_with("attachment; filename=\"x__ evil.html\""),
            "{d}"
        );
        assert!(d.contains("filename*=UTF-8''x%22%3B%20evil.html"), "{d}");
        assert_eq!(
            disposition("image", "image/svg+xml", None, 3),
            "attachment; filename=\"image-3\"; filename*=UTF-8''image-3"
        );
        assert_eq!(
            safe_mime(Some("text/html\r\nX: y")),
            "application/octet-stream"
        );
        assert_eq!(
            safe_mime(Some("audio/ogg; codecs=opus")),
            "audio/ogg; codecs=opus"
        );
        assert_eq!(safe_mime(None), "application/octet-stream");
    }
}
