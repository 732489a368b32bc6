//! The edge of the payload formats. Intake only needs to know which accounts a body names
//! (to pick the secret); the full normalisation into typed events lives here too as it grows.

pub mod event;
pub mod kapso;
pub mod meta;
pub mod route;
pub mod signature;
pub mod tenant;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

pub use event::Normalized;
pub use route::Routing;
pub use tenant::{Admit, Tenant};

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

/// Normalises one inbox event's payload. `scope` says, for each `phone_number_id` the payload
/// names, whether the tenant that signed the event may act on it, and in which workspace
/// (`store::accounts::Directory::scope`): what lies outside the signer is never applied.
pub fn normalize(
    source: Source,
    event_type: Option<&str>,
    payload: &str,
    received_at: DateTime<Utc>,
    scope: &dyn Fn(&str) -> Admit,
) -> Result<Normalized, String> {
    match source {
        Source::Meta => meta::normalize(payload, received_at, scope),
        Source::Kapso => kapso::normalize(event_type, payload, received_at, scope),
    }
}

/// A typed event made elsewhere (another node, through the broker), checked against `scope` as
/// [`normalize`] would have made it: every conversation it names and every status it carries
/// is on a number the signer may act on, in that number's workspace. An event that names
/// anything else is refused whole (the router parks it with the reason): whatever a message on
/// the broker says, it acts only inside the tenant that signed its request.
pub fn confined(
    normalized: Normalized,
    scope: &dyn Fn(&str) -> Admit,
) -> Result<Normalized, String> {
    let named = normalized
        .items
        .iter()
        .map(|i| (i.phone_number_id.as_str(), i.workspace_id))
        .chain(
            normalized
                .orphan_statuses
                .iter()
                .map(|o| (o.phone_number_id.as_str(), o.workspace_id)),
        );
    for (pnid, workspace_id) in named {
        if scope(pnid) != Admit::In(workspace_id) {
            return Err(format!(
                "the event as another node read it names phone_number_id {pnid:?} in workspace \
                 {workspace_id}, outside the tenant whose secret signed it: not applied"
            ));
        }
    }
    Ok(normalized)
}

/// The workspace a change for `pnid` is applied in, or `None` with the reason recorded: a note
/// for a number no account has (`what` names the change), an unattributed part (the event is
/// parked) for another tenant's number.
pub(crate) fn admitted(
    scope: &dyn Fn(&str) -> Admit,
    pnid: &str,
    what: &str,
    out: &mut Normalized,
) -> Option<i64> {
    match scope(pnid) {
        Admit::In(w) => Some(w),
        Admit::Unknown => {
            out.notes.push(format!(
                "{what} for unknown phone_number_id {pnid:?} skipped"
            ));
            None
        }
        Admit::Foreign => {
            out.unattributed.push(format!(
                "phone_number_id {pnid:?} belongs to another tenant than the one whose secret signed the event: not applied"
            ));
            None
        }
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

/// A WhatsApp Flow's answers (`interactive.nfm_reply.response_json`, a JSON string): the
/// fields the person filled in, `name: value` a line each (the Flow's own `flow_token` left
/// out), by name; `None` when it names none or is not JSON.
pub fn flow_answers(m: &Value) -> Option<String> {
    let response = flow_response(m)?;
    let lines: Vec<String> = response
        .as_object()?
        .iter()
        .filter(|(k, _)| k.as_str() != "flow_token")
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}: {s}"),
            other => format!("{k}: {other}"),
        })
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// The parsed `response_json` of a Flow answer.
pub fn flow_response(m: &Value) -> Option<Value> {
    let raw = m
        .get("interactive")?
        .get("nfm_reply")?
        .get("response_json")?
        .as_str()?;
    serde_json::from_str::<Value>(raw)
        .ok()
        .filter(Value::is_object)
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
            .or_else(|| flow_answers(m))
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
