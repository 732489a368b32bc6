//! `/api/v1/media/{id}`: a stored file of the workspace, streamed from the media store with
//! its type. Files come from customers, so nothing is trusted: only images, audio and video
//! of known types are shown inline, everything else is a download; the answer may never be
//! sniffed or run as a page (`nosniff`, a sandboxing CSP).

use axum::{
    body::Body,
    extract::State,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Caller, Errors, Failure, Id};
use crate::{
    http::AppState,
    store::{media as store, users::Role},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_file))
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
