//! Kapso's v2 platform webhooks → [`Normalized`]. The event name comes from the
//! `X-Webhook-Event` header (stored with the event); batches carry `data[]`.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{
    Admit,
    event::{
        Author, ContactKey, Direction, Item, ItemKind, Lifecycle, MessageStatus, Normalized,
        StatusItem,
    },
    meta::{error_text, message_kind},
};

pub fn normalize(
    event_type: Option<&str>,
    body: &str,
    received_at: DateTime<Utc>,
    scope: &dyn Fn(&str) -> Admit,
) -> Result<Normalized, String> {
    let root: Value =
        serde_json::from_str(body).map_err(|e| format!("not a Kapso webhook payload: {e}"))?;
    let event_type = event_type
        .or_else(|| root.get("type").and_then(Value::as_str))
        .or_else(|| root.get("event").and_then(Value::as_str))
        .unwrap_or("");
    let mut out = Normalized::default();
    // Project webhooks name no phone number, only Kapso's conversation id.
    if event_type == "workflow.execution.handoff" {
        match root.get("whatsapp_conversation_id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => out.handoffs.push(id.to_owned()),
            _ => out
                .unattributed
                .push("workflow.execution.handoff without whatsapp_conversation_id".into()),
        }
        return Ok(out);
    }
    let items: Vec<&Value> = match root.get("data").and_then(Value::as_array) {
        Some(batch) if root.get("batch").and_then(Value::as_bool) == Some(true) => {
            batch.iter().collect()
        }
        _ => vec![&root],
    };
    for data in items {
        normalize_one(event_type, data, received_at, scope, &mut out);
    }
    Ok(out)
}

fn normalize_one(
    event_type: &str,
    data: &Value,
    received_at: DateTime<Utc>,
    scope: &dyn Fn(&str) -> Admit,
    out: &mut Normalized,
) {
    let conversation = data.get("conversation");
    let pnid = data
        .get("phone_number_id")
        .and_then(Value::as_str)
        .or_else(|| conversation?.get("phone_number_id")?.as_str())
        .unwrap_or("");
    let Some(workspace_id) = super::admitted(scope, pnid, "Kapso event", out) else {
        return;
    };
    if !KNOWN.contains(&event_type) {
        out.notes
            .push(format!("Kapso event {event_type:?} stored, not processed"));
        return;
    }
    let message = data.get("message");
    let direction = match message
        .and_then(|m| m.get("kapso")?.get("direction")?.as_str())
        .unwrap_or(if event_type == "whatsapp.message.received" {
            "inbound"
        } else {
            "outbound"
        }) {
        "inbound" => Direction::Inbound,
        _ => Direction::Outbound,
    };
    let text = |v: Option<&Value>, k: &str| {
        v.and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let phone = text(conversation, "phone_number")
        .or_else(|| match direction {
            Direction::Inbound => text(message, "from"),
            Direction::Outbound => text(message, "to"),
        })
        .or_else(|| text(data.get("contact"), "wa_id"))
        .or_else(|| text(data.get("contact"), "phone_number"));
    let user_id = text(conversation, "business_scoped_user_id")
        .or_else(|| text(data.get("contact"), "user_id"));
    let Some(contact) = ContactKey::new(phone.as_deref(), user_id.as_deref()) else {
        out.unattributed
            .push(format!("Kapso {event_type} names no contact"));
        return;
    };
    let push = |out: &mut Normalized, kind| {
        out.items.push(Item {
            workspace_id,
            phone_number_id: pnid.to_owned(),
            contact: contact.clone(),
            user_id: user_id.clone(),
            kind,
        })
    };

    if let Some(id) = conversation
        .and_then(|c| c.get("id")?.as_str())
        .filter(|id| !id.is_empty())
    {
        push(out, ItemKind::ExternalId(id.to_owned()));
    }
    match event_type {
        "whatsapp.message.received"
        | "whatsapp.message.sent"
        | "whatsapp.message.delivered"
        | "whatsapp.message.read"
        | "whatsapp.message.failed" => {
            let Some(m) = message else {
                out.unattributed
                    .push(format!("Kapso {event_type} without a message"));
                return;
            };
            if let Some(name) = conversation
                .and_then(|c| c.get("kapso")?.get("contact_name")?.as_str())
                .filter(|n| !n.is_empty())
            {
                push(
                    out,
                    ItemKind::Profile {
                        name: name.to_owned(),
                    },
                );
            }
            let mut item = match message_kind(m, direction, received_at) {
                Some(ItemKind::Message(item)) => item,
                // A reaction, edit or revoke changes the message it names.
                Some(amendment) => {
                    push(out, amendment);
                    return;
                }
                None => {
                    out.unattributed
                        .push(format!("Kapso {event_type} without a message id"));
                    return;
                }
            };
            if let Some(content) = text(m.get("kapso"), "content").filter(|c| !c.is_empty()) {
                item.content = Some(content);
            }
            // Who sent an outbound message: the business app (or its history), or an API.
            if direction == Direction::Outbound {
                item.author = match text(m.get("kapso"), "origin").as_deref() {
                    Some("business_app" | "history_sync") => Author::BusinessApp,
                    _ => Author::Api,
                };
            }
            let status = match event_type {
                "whatsapp.message.sent" => Some(MessageStatus::Sent),
                "whatsapp.message.delivered" => Some(MessageStatus::Delivered),
                "whatsapp.message.read" => Some(MessageStatus::Read),
                "whatsapp.message.failed" => Some(MessageStatus::Failed),
                _ => None,
            };
            let wamid = item.wamid.clone();
            let timestamp = item.timestamp;
            push(out, ItemKind::Message(item));
            if let Some(status) = status {
                let error = m
                    .get("errors")
                    .and_then(Value::as_array)
                    .and_then(|e| e.first())
                    .or_else(|| m.get("kapso")?.get("error"))
                    .map(error_text);
                push(
                    out,
                    ItemKind::Status(StatusItem {
                        pricing: None,
                        wamid,
                        status,
                        timestamp,
                        error,
                    }),
                );
            }
        }
        "whatsapp.conversation.created" => push(out, ItemKind::Lifecycle(Lifecycle::Opened)),
        "whatsapp.conversation.ended" => push(out, ItemKind::Lifecycle(Lifecycle::Ended)),
        "whatsapp.conversation.inactive" => push(out, ItemKind::Lifecycle(Lifecycle::Inactive)),
        "whatsapp.contact.updated" => {
            let c = data.get("contact");
            if let Some(name) = text(c, "name")
                .or_else(|| text(c, "profile_name"))
                .or_else(|| text(c, "display_name"))
                .filter(|n| !n.is_empty())
            {
                push(out, ItemKind::Profile { name });
            }
        }
        _ => {}
    }
}

/// The Kapso events that processing applies; others are stored with a note.
const KNOWN: &[&str] = &[
    "whatsapp.message.received",
    "whatsapp.message.sent",
    "whatsapp.message.delivered",
    "whatsapp.message.read",
    "whatsapp.message.failed",
    "whatsapp.conversation.created",
    "whatsapp.conversation.ended",
    "whatsapp.conversation.inactive",
    "whatsapp.contact.updated",
];
