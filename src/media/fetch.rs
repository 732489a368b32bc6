//! One fetch of one file: `GET /{version}/{media_id}` with the account's token gives a URL
//! (living minutes), downloaded with the same token; the bytes are checked against the size
//! limit of their type and the sha256 WhatsApp gave (hex or base64), then stored.

use std::time::Duration;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Media;
use crate::store::media::Media as Job;

/// What one fetch came to.
#[derive(Debug)]
pub enum Fetched {
    Stored {
        mime_type: String,
        size: i64,
        sha256: String,
        key: String,
    },
    /// Worth another try later (after the server's `Retry-After`, when it gave one).
    Retry {
        error: String,
        after: Option<Duration>,
    },
    /// Never worth another try: the id is gone, the bytes are wrong or too large.
    Failed(String),
}

/// WhatsApp's size limit of a file type (DOMAIN §10.6).
pub fn limit_of(kind: &str) -> u64 {
    const MB: u64 = 1024 * 1024;
    match kind {
        "image" => 5 * MB,
        "audio" | "video" => 16 * MB,
        "sticker" => 500 * 1024,
        _ => 100 * MB,
    }
}

/// A sha256 as WhatsApp writes it (64 hex digits or base64), as bytes.
pub fn sha256_bytes(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return hex::decode(s).ok();
    }
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(s))
        .ok()
        .filter(|b| b.len() == 32)
}

pub async fn fetch(media: &Media, job: &Job, phone_number_id: &str, token: &str) -> Fetched {
    let limit = limit_of(&job.kind).min(media.cfg.max_bytes);
    let mut renewed = false;
    loop {
        let info = match info(media, job, phone_number_id, token).await {
            Ok(info) => info,
            Err(f) => return f,
        };
        if let Some(size) = info.size
            && size > limit
        {
            return Fetched::Failed(format!(
                "too large: the Graph API says {size} bytes; a {} may have {limit}",
                job.kind
            ));
        }
        match download(media, &info.url, token, limit, &job.kind).await {
            Ok(bytes) => return check_and_store(media, job, info, bytes).await,
            // The URL lived out its minutes: a new one, once.
            Err(Download::Expired(status)) if !renewed => {
                tracing::info!(
                    media = job.id,
                    status,
                    "the download URL expired; asking the Graph API for a new one"
                );
                renewed = true;
            }
            Err(Download::Expired(status)) => {
                return Fetched::Retry {
                    error: format!("the download URL answered {status} twice"),
                    after: None,
                };
            }
            Err(Download::Fatal(f)) => return f,
        }
    }
}

struct Info {
    url: String,
    mime_type: Option<String>,
    sha256: Option<String>,
    size: Option<u64>,
}

enum Download {
    /// 404 or 410: the URL expired.
    Expired(u16),
    Fatal(Fetched),
}

async fn info(
    media: &Media,
    job: &Job,
    phone_number_id: &str,
    token: &str,
) -> Result<Info, Fetched> {
    // Both ids are digits and letters (checked at intake and in the config).
    let url = format!(
        "{}/{}?phone_number_id={phone_number_id}",
        media.graph_base, job.media_id
    );
    let res = media
        .http
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| transport("the Graph API", &e))?;
    let status = res.status().as_u16();
    let after = retry_after(res.headers());
    let body: Value = res.json().await.unwrap_or(Value::Null);
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or("")
        .chars()
        .take(300)
        .collect::<String>();
    match status {
        200..=299 => {}
        // The id is gone (expired or deleted): Graph answers 404, or 400 with code 100.
        404 => {
            return Err(Fetched::Failed(format!(
                "media id not found at the Graph API (expired or deleted): {message}"
            )));
        }
        400 if body["error"]["code"].as_i64() == Some(100) => {
            return Err(Fetched::Failed(format!(
                "media id not found at the Graph API (expired or deleted): {message}"
            )));
        }
        _ => {
            return Err(Fetched::Retry {
                error: format!("the Graph API answered {status}: {message}"),
                after,
            });
        }
    }
    let Some(url) = body["url"]
        .as_str()
        .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
    else {
        return Err(Fetched::Retry {
            error: "the Graph API gave no download URL".into(),
            after: None,
        });
    };
    let size = match &body["file_size"] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    Ok(Info {
        url: url.to_owned(),
        mime_type: body["mime_type"].as_str().map(str::to_owned),
        sha256: body["sha256"].as_str().map(str::to_owned),
        size,
    })
}

async fn download(
    media: &Media,
    url: &str,
    token: &str,
    limit: u64,
    kind: &str,
) -> Result<Bytes, Download> {
    let mut res = media
        .http
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| Download::Fatal(transport("the download URL", &e)))?;
    let status = res.status().as_u16();
    match status {
        200..=299 => {}
        404 | 410 => return Err(Download::Expired(status)),
        _ => {
            return Err(Download::Fatal(Fetched::Retry {
                error: format!("the download URL answered {status}"),
                after: retry_after(res.headers()),
            }));
        }
    }
    if let Some(n) = res.content_length()
        && n > limit
    {
        return Err(Download::Fatal(Fetched::Failed(format!(
            "too large: {n} bytes; a {kind} may have {limit}"
        ))));
    }
    let mut buf = BytesMut::new();
    loop {
        match res.chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() as u64 + chunk.len() as u64 > limit {
                    return Err(Download::Fatal(Fetched::Failed(format!(
                        "too large: more than {limit} bytes, the limit of a {kind}"
                    ))));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(e) => return Err(Download::Fatal(transport("the download", &e))),
        }
    }
}

async fn check_and_store(media: &Media, job: &Job, info: Info, bytes: Bytes) -> Fetched {
    let digest = Sha256::digest(&bytes);
    let hex_digest = hex::encode(digest);
    // What the webhook and the Graph API said the file hashes to: both must hold.
    for (whose, claimed) in [
        ("the webhook", job.expected_sha256.as_deref()),
        ("the Graph API", info.sha256.as_deref()),
    ] {
        let Some(claimed) = claimed else { continue };
        match sha256_bytes(claimed) {
            Some(want) if want.as_slice() == digest.as_slice() => {}
            Some(want) => {
                return Fetched::Failed(format!(
                    "sha256 mismatch: {whose} says {}, the {} downloaded bytes hash to {hex_digest}",
                    hex::encode(want),
                    bytes.len()
                ));
            }
            None => tracing::warn!(
                media = job.id,
                claimed,
                "a sha256 that is neither hex nor base64; not checked"
            ),
        }
    }
    if bytes.is_empty() {
        return Fetched::Failed("the download was empty".into());
    }
    let key = media.store.key(job.workspace_id, &hex_digest);
    let size = bytes.len() as i64;
    if let Err(e) = media.store.put(&key, bytes).await {
        return Fetched::Retry {
            error: e,
            after: None,
        };
    }
    Fetched::Stored {
        mime_type: info
            .mime_type
            .or_else(|| job.mime_type.clone())
            .unwrap_or_else(|| "application/octet-stream".into()),
        size,
        sha256: hex_digest,
        key,
    }
}

fn transport(what: &str, e: &reqwest::Error) -> Fetched {
    Fetched::Retry {
        error: if e.is_timeout() {
            format!("{what} timed out")
        } else {
            format!("{what} could not be reached: {e}")
        },
        after: None,
    }
}

fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    h.get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sha256_reads_as_hex_or_base64() {
        let hex = "49f227634806293b0995459bc310b593e1400f41591efcf07e9bced335f41942";
        let b64 = "SfInY0gGKTsJlUWbwxC1k+FAD0FZHvzwfpvO0zX0GUI=";
        assert_eq!(sha256_bytes(hex), sha256_bytes(b64));
        assert_eq!(sha256_bytes(hex).unwrap().len(), 32);
        assert_eq!(sha256_bytes("not a hash"), None);
        assert_eq!(sha256_bytes("AAAA"), None);
    }
}
