//! The edge of the payload formats. Intake only needs to know which accounts a body names
//! (to pick the secret); the full normalisation into typed events lives here too as it grows.

pub mod event;
pub mod kapso;
pub mod meta;
pub mod signature;

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::Value;

pub use event::Normalized;

/// Where a webhook came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Meta,
    Kapso,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Meta => "meta",
            Source::Kapso => "kapso",
        }
    }

    /// From its stored name (`webhook_events.source`); anything else is Meta's.
    pub fn from_name(name: &str) -> Self {
        match name {
            "kapso" => Source::Kapso,
            _ => Source::Meta,
        }
    }
}

/// Normalises one inbox event's payload. `workspace_of` maps a `phone_number_id` to its
/// workspace (tenant routing happens per change, not per request).
pub fn normalize(
    source: Source,
    event_type: Option<&str>,
    payload: &str,
    received_at: DateTime<Utc>,
    workspace_of: &dyn Fn(&str) -> Option<i64>,
) -> Result<Normalized, String> {
    match source {
        Source::Meta => meta::normalize(payload, received_at, workspace_of),
        Source::Kapso => kapso::normalize(event_type, payload, received_at, workspace_of),
    }
}

/// The partition (of `n`) a conversation belongs to when several nodes share the work: FNV-1a
/// over the workspace and the contact key, so every node and every version computes the same.
pub fn partition_of(workspace_id: i64, contact: &event::ContactKey, n: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = workspace_id.to_le_bytes();
    for b in bytes.iter().chain(contact.as_str().as_bytes()) {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(n.max(1))) as u32
}

/// The partitions an event's conversations fall in, in the order they first appear; empty
/// when it names none (malformed, or only statuses and hand-offs that need the database to
/// find their conversation).
pub fn partitions_of(normalized: &Normalized, n: u32) -> Vec<u32> {
    let mut parts = Vec::new();
    for item in &normalized.items {
        let p = partition_of(item.workspace_id, &item.contact, n);
        if !parts.contains(&p) {
            parts.push(p);
        }
    }
    parts
}

/// Unix seconds as a JSON string (Meta's usual) or number (older payloads); never ms.
pub fn parse_timestamp(v: Option<&Value>) -> Option<DateTime<Utc>> {
    let secs = match v? {
        Value::String(s) => s.trim().parse::<i64>().ok()?,
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64))?,
        _ => return None,
    };
    Utc.timestamp_opt(secs, 0).single()
}

/// A readable rendering of a message, where its type has one.
pub fn content_of(message_type: &str, m: &Value) -> Option<String> {
    let s = |path: &[&str]| {
        let mut v = m;
        for p in path {
            v = v.get(p)?;
        }
        v.as_str().map(str::to_owned)
    };
    match message_type {
        "text" => s(&["text", "body"]),
        "button" => s(&["button", "text"]),
        "interactive" => s(&["interactive", "button_reply", "title"])
            .or_else(|| s(&["interactive", "list_reply", "title"]))
            .or_else(|| s(&["interactive", "nfm_reply", "body"]))
            .or_else(|| s(&["interactive", "nfm_reply", "response_json"])),
        "image" | "video" | "document" => {
            s(&[message_type, "caption"]).or_else(|| s(&[message_type, "filename"]))
        }
        "reaction" => Some(s(&["reaction", "emoji"]).unwrap_or_default()),
        "location" => {
            let loc = m.get("location")?;
            let coords = format!(
                "{},{}",
                loc.get("latitude")
                    .map(Value::to_string)
                    .unwrap_or_default(),
                loc.get("longitude")
                    .map(Value::to_string)
                    .unwrap_or_default()
            );
            Some(match loc.get("name").and_then(Value::as_str) {
                Some(name) => format!("{name} ({coords})"),
                None => coords,
            })
        }
        "contacts" => {
            let names: Vec<String> = m
                .get("contacts")?
                .as_array()?
                .iter()
                .filter_map(|c| {
                    c.get("name")?
                        .get("formatted_name")?
                        .as_str()
                        .map(str::to_owned)
                })
                .collect();
            Some(names.join(", "))
        }
        "order" => s(&["order", "text"]).or_else(|| Some("order".into())),
        "edit" => s(&["edit", "message", "text", "body"]),
        "system" => s(&["system", "body"]),
        _ => None,
    }
}

/// What the intake reads of a Meta body: the `phone_number_id`s it names, nothing else.
#[derive(Debug, Deserialize)]
struct MetaEnvelope {
    #[serde(default)]
    entry: Vec<MetaEntry>,
}

#[derive(Debug, Deserialize)]
struct MetaEntry {
    #[serde(default)]
    changes: Vec<MetaChange>,
}

#[derive(Debug, Deserialize)]
struct MetaChange {
    #[serde(default)]
    value: Option<MetaValue>,
}

#[derive(Debug, Deserialize)]
struct MetaValue {
    #[serde(default)]
    metadata: Option<MetaMetadata>,
}

#[derive(Debug, Deserialize)]
struct MetaMetadata {
    #[serde(default)]
    phone_number_id: Option<String>,
}

/// How a body reads at the edge.
#[derive(Debug, PartialEq, Eq)]
pub enum Routing {
    /// JSON naming these phone number ids (sorted, distinct; empty for account-level fields
    /// or a JSON body of an unexpected shape, which processing will report).
    Json { phone_number_ids: Vec<String> },
    /// Not JSON at all.
    NotJson(String),
}

/// The distinct `entry[].changes[].value.metadata.phone_number_id` of a Meta body.
pub fn meta_routing(body: &[u8]) -> Routing {
    match serde_json::from_slice::<MetaEnvelope>(body) {
        Ok(env) => {
            let ids = env
                .entry
                .into_iter()
                .flat_map(|e| e.changes)
                .filter_map(|c| c.value?.metadata?.phone_number_id);
            Routing::Json {
                phone_number_ids: distinct(ids),
            }
        }
        Err(e) => json_or_not(body, e),
    }
}

/// What the intake reads of a Kapso body: the phone number id(s), single or batched, and the
/// batch's event type.
#[derive(Debug, Deserialize)]
struct KapsoEnvelope {
    #[serde(default)]
    phone_number_id: Option<String>,
    #[serde(default)]
    conversation: Option<KapsoConversation>,
    #[serde(default, rename = "type")]
    event_type: Option<String>,
    #[serde(default)]
    data: Option<Vec<KapsoEnvelopeItem>>,
}

#[derive(Debug, Deserialize)]
struct KapsoEnvelopeItem {
    #[serde(default)]
    phone_number_id: Option<String>,
    #[serde(default)]
    conversation: Option<KapsoConversation>,
}

#[derive(Debug, Deserialize)]
struct KapsoConversation {
    #[serde(default)]
    phone_number_id: Option<String>,
}

/// The phone number ids of a Kapso body (single or `{"batch":true,"data":[…]}`) and the
/// event type a batch body carries.
pub fn kapso_routing(body: &[u8]) -> (Routing, Option<String>) {
    match serde_json::from_slice::<KapsoEnvelope>(body) {
        Ok(env) => {
            let mut ids: Vec<String> = Vec::new();
            ids.extend(env.phone_number_id);
            ids.extend(env.conversation.and_then(|c| c.phone_number_id));
            for item in env.data.into_iter().flatten() {
                ids.extend(item.phone_number_id);
                ids.extend(item.conversation.and_then(|c| c.phone_number_id));
            }
            (
                Routing::Json {
                    phone_number_ids: distinct(ids),
                },
                env.event_type,
            )
        }
        Err(e) => (json_or_not(body, e), None),
    }
}

/// The `project_id` of a Kapso project webhook (`workflow.execution.*`), which names no
/// phone number.
pub fn kapso_project(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Project {
        project_id: Option<String>,
    }
    serde_json::from_slice::<Project>(body)
        .ok()?
        .project_id
        .filter(|p| !p.is_empty())
}

fn distinct(ids: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = ids.into_iter().filter(|s| !s.is_empty()).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// A body that does not fit the envelope may still be JSON (of another shape): that is kept
/// and processed (and reported there); a body that is not JSON at all is refused, and so is
/// JSON nested deeper than the parser's limit (128 levels), which nothing downstream could read.
fn json_or_not(body: &[u8], shape_error: serde_json::Error) -> Routing {
    // `IgnoredAny` skips values without a depth limit; a `Value` counts the depth.
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(_) => Routing::Json {
            phone_number_ids: Vec::new(),
        },
        Err(e) if e.to_string().starts_with("recursion limit exceeded") => {
            Routing::NotJson(e.to_string())
        }
        Err(_) => Routing::NotJson(shape_error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_routing_reads_every_entry_and_change() {
        let body = br#"{"object":"whatsapp_business_account","entry":[
            {"id":"1","changes":[{"field":"messages","value":{"metadata":{"phone_number_id":"B"}}},
                                 {"value":{"metadata":{"phone_number_id":"A"}},"field":"messages"}]},
            {"id":"2","changes":[{"field":"messages","value":{"metadata":{"phone_number_id":"B"}}}]}]}"#;
        assert_eq!(
            meta_routing(body),
            Routing::Json {
                phone_number_ids: vec!["A".into(), "B".into()]
            }
        );
        assert_eq!(
            meta_routing(br#"{"entry":"odd"}"#),
            Routing::Json {
                phone_number_ids: vec![]
            }
        );
        assert!(matches!(meta_routing(b"not json"), Routing::NotJson(_)));
    }

    #[test]
    fn kapso_routing_reads_single_and_batch() {
        let (r, t) = kapso_routing(
            br#"{"message":{},"conversation":{"phone_number_id":"P"},"phone_number_id":"P"}"#,
        );
        assert_eq!(
            r,
            Routing::Json {
                phone_number_ids: vec!["P".into()]
            }
        );
        assert_eq!(t, None);
        let (r, t) = kapso_routing(
            br#"{"type":"whatsapp.message.received","batch":true,"data":[{"phone_number_id":"P"},{"phone_number_id":"Q"}]}"#,
        );
        assert_eq!(
            r,
            Routing::Json {
                phone_number_ids: vec!["P".into(), "Q".into()]
            }
        );
        assert_eq!(t.as_deref(), Some("whatsapp.message.received"));
    }
}
