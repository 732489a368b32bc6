//! The WhatsApp Cloud API (Graph API): text, template and media sends, media uploads, "mark
//! read + typing indicator" for the inbound message being answered, and the template catalog.

use std::time::Duration;

use serde_json::{Value, json};

use crate::config::GraphConfig;

pub struct Graph {
    base: String,
    http: reqwest::Client,
}

/// Where a reply goes: a phone number (`to`), a business-scoped user id (`recipient`), or a
/// group (`recipient_type: "group"`, `to`: the group id).
#[derive(Debug, Clone)]
pub enum Recipient {
    Phone(String),
    User(String),
    Group(String),
}

/// Why a send did not give a wamid.
#[derive(Debug, Clone)]
pub struct SendError {
    /// The Graph error code (`131047`, `130429`, …), or `timeout` / `connect` / `http_<status>`.
    pub code: String,
    pub message: String,
    /// The message may have been sent (the request left and no answer came): never resend.
    pub unknown: bool,
}

impl Graph {
    pub fn new(cfg: &GraphConfig) -> anyhow::Result<Self> {
        Ok(Self {
            base: format!("{}/{}", cfg.base_url.trim_end_matches('/'), cfg.version),
            http: reqwest::Client::builder()
                .timeout(Duration::from_millis(cfg.request_timeout_ms))
                .build()?,
        })
    }

    /// Sends a text; the wamid Meta gave it.
    pub async fn send_text(
        &self,
        phone_number_id: &str,
        token: &str,
        to: &Recipient,
        body: &str,
    ) -> Result<String, SendError> {
        let payload = json!({
            "type": "text",
            "text": {"body": truncate_chars(body, 4096), "preview_url": false},
        });
        self.send(phone_number_id, token, to, payload).await
    }

    /// Sends a template (`template`: the Graph API's object with name, language and
    /// components); the wamid Meta gave it.
    pub async fn send_template(
        &self,
        phone_number_id: &str,
        token: &str,
        to: &Recipient,
        template: &Value,
    ) -> Result<String, SendError> {
        let payload = json!({"type": "template", "template": template});
        self.send(phone_number_id, token, to, payload).await
    }

    /// Sends a file (`kind`: `image`, `audio`, `video`, `document` or `sticker`; `object`:
    /// the Graph API's media object, `{id | link, caption?, filename?}`); the wamid Meta gave it.
    pub async fn send_media(
        &self,
        phone_number_id: &str,
        token: &str,
        to: &Recipient,
        kind: &str,
        object: &Value,
    ) -> Result<String, SendError> {
        let mut payload = json!({"type": kind});
        payload[kind] = object.clone();
        self.send(phone_number_id, token, to, payload).await
    }

    /// Uploads a file for a later send (`POST /{phone_number_id}/media`, multipart: `file`,
    /// `type`, `messaging_product`); the media id Meta gave it (usable for 30 days).
    pub async fn upload_media(
        &self,
        phone_number_id: &str,
        token: &str,
        bytes: Vec<u8>,
        mime_type: &str,
        filename: &str,
    ) -> Result<String, SendError> {
        let fail = |code: &str, message: String| SendError {
            code: code.into(),
            message,
            unknown: false,
        };
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name(filename.to_owned())
            .mime_str(mime_type)
            .map_err(|e| fail("bad_type", e.to_string()))?;
        let form = reqwest::multipart::Form::new()
            .text("messaging_product", "whatsapp")
            .text("type", mime_type.to_owned())
            .part("file", part);
        let url = format!("{}/{phone_number_id}/media", self.base);
        let res = self
            .http
            .post(&url)
            .bearer_auth(token)
            .multipart(form)
            .send()
            .await
            .map_err(|e| {
                fail(
                    if e.is_connect() {
                        "connect"
                    } else if e.is_timeout() {
                        "timeout"
                    } else {
                        "transport"
                    },
                    e.to_string(),
                )
            })?;
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(graph_error(status.as_u16(), &v, &text));
        }
        v["id"]
            .as_str()
            .filter(|id| crate::ingest::event::MediaRef::is_media_id(id))
            .map(str::to_owned)
            .ok_or_else(|| fail("no_id", format!("the upload answered without an id: {v}")))
    }

    async fn send(
        &self,
        phone_number_id: &str,
        token: &str,
        to: &Recipient,
        mut payload: Value,
    ) -> Result<String, SendError> {
        payload["messaging_product"] = json!("whatsapp");
        payload["recipient_type"] = json!("individual");
        match to {
            Recipient::Phone(p) => payload["to"] = json!(p),
            Recipient::User(u) => payload["recipient"] = json!(u),
            Recipient::Group(g) => {
                payload["recipient_type"] = json!("group");
                payload["to"] = json!(g);
            }
        }
        let v = self.post(phone_number_id, token, &payload).await?;
        v["messages"][0]["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| SendError {
                code: "no_wamid".into(),
                message: format!("the send API answered without messages[0].id: {v}"),
                // A 200 means Meta took it; without its id we cannot know what it became.
                unknown: true,
            })
    }

    /// Every template of a WhatsApp Business Account, following the paging cursors (never
    /// the `next` URL, so the token goes to the configured Graph host only); with the number
    /// of pages read.
    pub async fn list_templates(
        &self,
        waba_id: &str,
        token: &str,
    ) -> Result<(Vec<Value>, usize), SendError> {
        const FIELDS: &str = "name,language,status,category,components,parameter_format,quality_score,rejected_reason,id";
        let url = format!("{}/{waba_id}/message_templates", self.base);
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        for page in 1..=MAX_PAGES {
            let mut page_url = reqwest::Url::parse(&url).map_err(|e| SendError {
                code: "bad_url".into(),
                message: e.to_string(),
                unknown: false,
            })?;
            page_url
                .query_pairs_mut()
                .append_pair("fields", FIELDS)
                .append_pair("limit", "100");
            if let Some(a) = &after {
                page_url.query_pairs_mut().append_pair("after", a);
            }
            let res = self
                .http
                .get(page_url)
                .bearer_auth(token)
                .send()
                .await
                .map_err(|e| SendError {
                    code: if e.is_timeout() {
                        "timeout"
                    } else {
                        "transport"
                    }
                    .into(),
                    message: e.to_string(),
                    unknown: false,
                })?;
            let status = res.status();
            let v: Value = res.json().await.unwrap_or(Value::Null);
            if !status.is_success() {
                return Err(graph_error(status.as_u16(), &v, ""));
            }
            out.extend(v["data"].as_array().cloned().unwrap_or_default());
            let next = v["paging"]["cursors"]["after"].as_str().map(str::to_owned);
            if v["paging"]["next"].is_null() || next.is_none() || next == after {
                return Ok((out, page));
            }
            after = next;
        }
        Err(SendError {
            code: "too_many_pages".into(),
            message: format!("the catalog has more than {MAX_PAGES} pages; stopped"),
            unknown: false,
        })
    }

    /// Marks the inbound message read and shows the typing indicator (best effort).
    pub async fn typing(
        &self,
        phone_number_id: &str,
        token: &str,
        wamid: &str,
    ) -> Result<(), SendError> {
        let payload = json!({
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": wamid,
            "typing_indicator": {"type": "text"},
        });
        self.post(phone_number_id, token, &payload)
            .await
            .map(|_| ())
    }

    /// Whether `token` can read the phone number (`GET /{version}/{phone_number_id}` answers
    /// 200): the proof that whoever adds the number through the API owns it. `Err` carries what
    /// Graph answered instead.
    pub async fn can_read_number(&self, phone_number_id: &str, token: &str) -> Result<(), String> {
        let url = format!("{}/{phone_number_id}", self.base);
        let res = self
            .http
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| format!("Graph API unreachable: {e}"))?;
        let status = res.status();
        if status.is_success() {
            let v: Value = res.json().await.unwrap_or(Value::Null);
            // The number it read must be the one asked for.
            return match v["id"].as_str() {
                Some(id) if id == phone_number_id => Ok(()),
                _ => Err("Graph API answered for another object".into()),
            };
        }
        Err(format!("Graph API answered {}", status.as_u16()))
    }

    async fn post(
        &self,
        phone_number_id: &str,
        token: &str,
        payload: &Value,
    ) -> Result<Value, SendError> {
        let url = format!("{}/{phone_number_id}/messages", self.base);
        let res = self
            .http
            .post(&url)
            .bearer_auth(token)
            .json(payload)
            .send()
            .await
            .map_err(|e| SendError {
                code: if e.is_connect() {
                    "connect"
                } else if e.is_timeout() {
                    "timeout"
                } else {
                    "transport"
                }
                .into(),
                message: e.to_string(),
                // Only a refused connection proves the request never left.
                unknown: !e.is_connect(),
            })?;
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(v);
        }
        Err(graph_error(status.as_u16(), &v, &text))
    }
}

/// At most this many catalog pages (of 100) are read.
const MAX_PAGES: usize = 100;

fn graph_error(status: u16, v: &Value, text: &str) -> SendError {
    let error = &v["error"];
    SendError {
        code: error["code"]
            .as_i64()
            .map(|c| c.to_string())
            .unwrap_or_else(|| format!("http_{status}")),
        message: error["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| text.chars().take(300).collect()),
        unknown: false,
    }
}

fn truncate_chars(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}
