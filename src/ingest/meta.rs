//! Meta's Cloud API payloads → [`Normalized`]. Every entry, change, message and status is read;
//! `contacts` and `profile` may be missing; `wa_id` may be empty with a `user_id`; unknown
//! message types are kept with their raw JSON.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::{
    content_of,
    event::{
        ContactKey, Direction, Item, ItemKind, MessageItem, MessageStatus, Normalized, StatusItem,
    },
    parse_timestamp,
};

#[derive(Deserialize)]
struct Payload {
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Deserialize)]
struct Change {
    #[serde(default)]
    field: String,
    #[serde(default)]
    value: Option<ChangeValue>,
}

#[derive(Deserialize, Default)]
struct ChangeValue {
    #[serde(default)]
    metadata: Option<Metadata>,
    #[serde(default)]
    contacts: Vec<Contact>,
    #[serde(default)]
    messages: Vec<Value>,
    #[serde(default)]
    message_echoes: Vec<Value>,
    #[serde(default)]
    statuses: Vec<Status>,
    #[serde(default)]
    errors: Vec<Value>,
}

#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    phone_number_id: Option<String>,
}

#[derive(Deserialize)]
struct Contact {
    #[serde(default)]
    wa_id: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    profile: Option<Profile>,
}

#[derive(Deserialize)]
struct Profile {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct Status {
    #[serde(default)]
    id: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    timestamp: Option<Value>,
    #[serde(default)]
    recipient_id: Option<String>,
    #[serde(default)]
    recipient_user_id: Option<String>,
    #[serde(default)]
    errors: Vec<Value>,
}

/// Normalises a Meta body. `workspace_of` maps a `phone_number_id` to its workspace.
pub fn normalize(
    body: &str,
    received_at: DateTime<Utc>,
    workspace_of: &dyn Fn(&str) -> Option<i64>,
) -> Result<Normalized, String> {
    let payload: Payload =
        serde_json::from_str(body).map_err(|e| format!("not a Meta webhook payload: {e}"))?;
    let mut out = Normalized::default();
    for change in payload.entry.into_iter().flat_map(|e| e.changes) {
        let Some(value) = change.value else { continue };
        if !matches!(change.field.as_str(), "messages" | "smb_message_echoes") {
            continue;
        }
        for e in &value.errors {
            out.notes
                .push(format!("value-level error: {}", error_text(e)));
        }
        let pnid = value
            .metadata
            .as_ref()
            .and_then(|m| m.phone_number_id.as_deref())
            .unwrap_or("");
        let Some(workspace_id) = workspace_of(pnid) else {
            out.notes.push(format!(
                "change for unknown phone_number_id {pnid:?} skipped"
            ));
            continue;
        };
        let item = |contact: ContactKey, user_id: Option<String>, kind: ItemKind| Item {
            workspace_id,
            contact,
            user_id,
            kind,
        };

        // Profiles first: a message from a contact carries its current name.
        let mut user_ids: HashMap<String, String> = HashMap::new();
        for c in &value.contacts {
            let user_id = c.user_id.clone().filter(|u| !u.is_empty());
            if let (Some(wa), Some(u)) = (c.wa_id.as_deref(), &user_id) {
                user_ids.insert(wa.to_string(), u.clone());
            }
            let Some(key) = ContactKey::new(c.wa_id.as_deref(), user_id.as_deref()) else {
                continue;
            };
            if let Some(name) = c
                .profile
                .as_ref()
                .and_then(|p| p.name.clone())
                .filter(|n| !n.is_empty())
            {
                out.items
                    .push(item(key, user_id, ItemKind::Profile { name }));
            }
        }

        for m in &value.messages {
            let from = str_field(m, "from");
            let user_id = str_field(m, "from_user_id")
                .map(str::to_owned)
                .or_else(|| from.and_then(|f| user_ids.get(f).cloned()));
            let Some(key) = ContactKey::new(from, user_id.as_deref()) else {
                out.notes.push("message without sender skipped".into());
                continue;
            };
            match message_item(m, Direction::Inbound, received_at) {
                Some(msg) => out.items.push(item(key, user_id, ItemKind::Message(msg))),
                None => out.notes.push("message without id skipped".into()),
            }
        }

        for m in &value.message_echoes {
            let Some(key) = ContactKey::new(str_field(m, "to"), str_field(m, "to_user_id")) else {
                out.notes.push("echo without recipient skipped".into());
                continue;
            };
            match message_item(m, Direction::Outbound, received_at) {
                Some(mut msg) => {
                    msg.status = MessageStatus::Sent;
                    out.items.push(item(key, None, ItemKind::Message(msg)));
                }
                None => out.notes.push("echo without id skipped".into()),
            }
        }

        for s in value.statuses {
            let recipient_user = s.recipient_user_id.filter(|u| !u.is_empty());
            let Some(key) = ContactKey::new(s.recipient_id.as_deref(), recipient_user.as_deref())
            else {
                out.notes.push("status without recipient skipped".into());
                continue;
            };
            let Some(status) = MessageStatus::parse(&s.status) else {
                out.notes
                    .push(format!("unknown status {:?} skipped", s.status));
                continue;
            };
            if s.id.is_empty() {
                out.notes.push("status without id skipped".into());
                continue;
            }
            out.items.push(item(
                key,
                recipient_user,
                ItemKind::Status(StatusItem {
                    wamid: s.id,
                    status,
                    timestamp: parse_timestamp(s.timestamp.as_ref()).unwrap_or(received_at),
                    error: s.errors.first().map(error_text),
                }),
            ));
        }
    }
    Ok(out)
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// A message or echo object as a [`MessageItem`]; `None` without an id.
pub(crate) fn message_item(
    m: &Value,
    direction: Direction,
    received_at: DateTime<Utc>,
) -> Option<MessageItem> {
    let wamid = str_field(m, "id").filter(|s| !s.is_empty())?.to_owned();
    let message_type = str_field(m, "type").unwrap_or("unknown").to_owned();
    Some(MessageItem {
        direction,
        wamid,
        timestamp: parse_timestamp(m.get("timestamp")).unwrap_or(received_at),
        content: content_of(&message_type, m),
        message_type,
        metadata: m.to_string(),
        status: match direction {
            Direction::Inbound => MessageStatus::Received,
            Direction::Outbound => MessageStatus::Accepted,
        },
    })
}

/// `code: title` (or whatever of it is there).
pub(crate) fn error_text(e: &Value) -> String {
    let code = e.get("code").map(|c| c.to_string());
    let title = e
        .get("title")
        .or_else(|| e.get("message"))
        .and_then(Value::as_str);
    match (code, title) {
        (Some(c), Some(t)) => format!("{c}: {t}"),
        (Some(c), None) => c,
        (None, Some(t)) => t.to_string(),
        (None, None) => e.to_string(),
    }
}
