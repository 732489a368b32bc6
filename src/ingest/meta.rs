//! Meta's Cloud API payloads → [`Normalized`]. Every entry, change, message and status is read;
//! `contacts` and `profile` may be missing; `wa_id` may be empty with a `user_id`; unknown
//! message types are kept with their raw JSON.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::{
    Admit, content_of,
    event::{
        Amendment, AmendmentKind, Author, ContactKey, Direction, IdentityChange, Item, ItemKind,
        MessageItem, MessageStatus, Normalized, OrphanStatus, Pricing, Sender, StatusItem,
        TemplateChange, TemplateUpdate,
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
    /// The WhatsApp Business Account (a string, or a number in some samples).
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Deserialize)]
struct Change {
    #[serde(default)]
    field: String,
    /// Read once, as the type its field calls for (a message change or a template change).
    #[serde(default)]
    value: Option<Box<serde_json::value::RawValue>>,
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
    #[serde(default)]
    user_preferences: Vec<Preference>,
}

#[derive(Deserialize)]
struct Preference {
    #[serde(default)]
    wa_id: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    category: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    timestamp: Option<Value>,
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
    /// `group` for a message sent to a group (`recipient_id` is then the group's id).
    #[serde(default)]
    recipient_type: Option<String>,
    #[serde(default)]
    errors: Vec<Value>,
    #[serde(default)]
    pricing: Option<Value>,
}

/// Normalises a Meta body. `scope` admits a `phone_number_id` into its workspace when the
/// event's signer may act on it.
pub fn normalize(
    body: &str,
    received_at: DateTime<Utc>,
    scope: &dyn Fn(&str) -> Admit,
) -> Result<Normalized, String> {
    let payload: Payload =
        serde_json::from_str(body).map_err(|e| format!("not a Meta webhook payload: {e}"))?;
    let mut out = Normalized::default();
    for entry in payload.entry {
        let waba_id = entry.id.as_ref().and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
        for change in entry.changes {
            change_of(change, waba_id.as_deref(), received_at, scope, &mut out)?;
        }
    }
    Ok(out)
}

/// A template webhook, told apart by its value's keys (Meta's own samples mislabel the
/// field: a quality update sent as `message_template_status_update`).
fn template_update(waba_id: Option<&str>, v: &Value) -> Option<TemplateUpdate> {
    let s = |k: &str| -> Option<String> {
        match v.get(k)? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let change = if let Some(q) = s("new_quality_score") {
        TemplateChange::Quality(q.to_ascii_uppercase())
    } else if v.get("message_template_element").is_some()
        || v.get("message_template_buttons").is_some()
    {
        TemplateChange::Components {
            body: s("message_template_element"),
            header: s("message_template_title"),
            footer: s("message_template_footer"),
            buttons: v["message_template_buttons"].as_array().cloned(),
        }
    } else if let Some(new) = s("new_category") {
        TemplateChange::Category {
            category: new.to_ascii_uppercase(),
            // Impending: `new_category` is the current one, `correct_category` what it becomes.
            upcoming: s("correct_category")
                .filter(|_| v.get("previous_category").is_none())
                .map(|c| c.to_ascii_uppercase()),
        }
    } else if let Some(event) = s("event") {
        let reason = s("reason")
            .filter(|r| r != "NONE")
            .or_else(|| v["rejection_info"]["reason"].as_str().map(str::to_owned))
            .or_else(|| v["other_info"]["description"].as_str().map(str::to_owned))
            .or_else(|| {
                v["disable_info"]["disable_date"]
                    .as_str()
                    .map(|d| format!("disabled on {d}"))
            });
        TemplateChange::Status {
            status: event.to_ascii_uppercase(),
            reason,
            category: s("message_template_category").map(|c| c.to_ascii_uppercase()),
        }
    } else {
        return None;
    };
    Some(TemplateUpdate {
        waba_id: waba_id?.to_owned(),
        template_id: s("message_template_id"),
        name: s("message_template_name"),
        language: s("message_template_language"),
        change,
    })
}

fn change_of(
    change: Change,
    waba_id: Option<&str>,
    received_at: DateTime<Utc>,
    scope: &dyn Fn(&str) -> Admit,
    out: &mut Normalized,
) -> Result<(), String> {
    {
        if change.field.starts_with("message_template")
            || change.field == "template_category_update"
        {
            let value: Option<Value> = change
                .value
                .as_ref()
                .and_then(|raw| serde_json::from_str(raw.get()).ok());
            match value.as_ref().and_then(|v| template_update(waba_id, v)) {
                Some(u) => out.templates.push(u),
                None => out.notes.push(format!(
                    "field {:?}: not a template change this version reads",
                    change.field
                )),
            }
            return Ok(());
        }
        let value: Option<ChangeValue> = match change.value {
            None => None,
            Some(raw) => serde_json::from_str(raw.get())
                .map_err(|e| format!("not a Meta webhook payload: {e}"))?,
        };
        if change.field == "user_preferences" {
            user_preferences(value, received_at, scope, out);
            return Ok(());
        }
        if !matches!(change.field.as_str(), "messages" | "smb_message_echoes") {
            out.notes
                .push(format!("field {:?} stored, not processed", change.field));
            return Ok(());
        }
        let Some(value) = value else { return Ok(()) };
        for e in &value.errors {
            out.notes
                .push(format!("value-level error: {}", error_text(e)));
        }
        let pnid = value
            .metadata
            .as_ref()
            .and_then(|m| m.phone_number_id.as_deref())
            .unwrap_or("");
        let Some(workspace_id) = super::admitted(scope, pnid, "change", out) else {
            return Ok(());
        };
        let item = |contact: ContactKey, user_id: Option<String>, kind: ItemKind| Item {
            workspace_id,
            phone_number_id: pnid.to_owned(),
            contact,
            user_id,
            kind,
        };

        let first_item = out.items.len();
        // Profiles first: a message from a contact carries its current name. A participant
        // who wrote only in a group is named on the group message, not given a conversation.
        let group_only = |c: &Contact| {
            let writes = |in_group: bool| {
                value.messages.iter().any(|m| {
                    group_of(m).is_some() == in_group
                        && str_field(m, "from").map(str::trim) == c.wa_id.as_deref().map(str::trim)
                })
            };
            // Or one whose number the change says is no longer theirs.
            let moved = value.messages.iter().any(|m| {
                m.get("system")
                    .and_then(|s| str_field(s, "type"))
                    .is_some_and(|t| t.ends_with("changed_number"))
                    && str_field(m, "from").map(str::trim) == c.wa_id.as_deref().map(str::trim)
            });
            moved || (writes(true) && !writes(false))
        };
        for c in &value.contacts {
            if group_only(c) {
                continue;
            }
            let user_id = c.user_id.clone().filter(|u| !u.is_empty());
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
            let Some(mut kind) = message_kind(m, Direction::Inbound, received_at) else {
                out.unattributed
                    .push("a message without an id cannot be stored".into());
                continue;
            };
            let Some((key, user_id)) = sender(m, &value.contacts) else {
                out.unattributed.push(format!(
                    "message {} names no sender (no `from`, `from_user_id` or single contact)",
                    str_field(m, "id").unwrap_or_default()
                ));
                continue;
            };
            // A group's message belongs to the group's conversation; it names its writer.
            if let Some(group) = group_of(m) {
                if let ItemKind::Message(msg) = &mut kind {
                    msg.sender = Some(participant(m, &key, user_id.as_deref(), &value.contacts));
                }
                out.items.push(item(ContactKey::group(group), None, kind));
                continue;
            }
            // A number or user-id change: the contact moves to its new identity, and the
            // notice goes to that conversation (the one the next messages will come to).
            if let Some(change) = identity_change(m, &key, user_id.as_deref(), received_at) {
                let (to, to_user) = change;
                out.items.push(item(
                    to.0.clone(),
                    to_user.clone(),
                    ItemKind::IdentityChange(to.1),
                ));
                out.items.push(item(to.0, to_user, kind));
                continue;
            }
            out.items.push(item(key, user_id, kind));
        }

        // A number change in this change: everything of the old identity in it (before the
        // notice and after) goes to the new one's conversation, in payload order, so the move
        // and the messages around it apply in one change set.
        let moves: Vec<(ContactKey, ContactKey)> = out.items[first_item..]
            .iter()
            .filter_map(|i| match &i.kind {
                ItemKind::IdentityChange(c) if c.from != i.contact => {
                    Some((c.from.clone(), i.contact.clone()))
                }
                _ => None,
            })
            .collect();
        for (from, to) in &moves {
            for i in &mut out.items[first_item..] {
                if &i.contact == from {
                    i.contact = to.clone();
                }
            }
        }

        for m in &value.message_echoes {
            let Some(mut kind) = message_kind(m, Direction::Outbound, received_at) else {
                out.unattributed
                    .push("an echo without an id cannot be stored".into());
                continue;
            };
            let to_user = str_field(m, "to_user_id").filter(|u| !u.is_empty());
            let Some(key) = ContactKey::new(str_field(m, "to"), to_user) else {
                out.unattributed.push(format!(
                    "echo {} names no recipient (no `to` or `to_user_id`)",
                    str_field(m, "id").unwrap_or_default()
                ));
                continue;
            };
            if let ItemKind::Message(msg) = &mut kind {
                msg.status = MessageStatus::Sent;
            }
            out.items.push(item(key, None, kind));
        }

        for s in value.statuses {
            let Some(status) = MessageStatus::parse(&s.status) else {
                out.notes
                    .push(format!("unknown status {:?} skipped", s.status));
                continue;
            };
            if s.id.is_empty() {
                out.unattributed
                    .push(format!("a {} status without a message id", s.status));
                continue;
            }
            let status_item = StatusItem {
                wamid: s.id,
                status,
                timestamp: parse_timestamp(s.timestamp.as_ref()).unwrap_or(received_at),
                error: s.errors.first().map(error_text),
                pricing: s.pricing.as_ref().and_then(pricing_of),
            };
            let recipient_user = s.recipient_user_id.filter(|u| !u.is_empty());
            // A group's statuses (delivered and read come several per webhook, one per
            // participant) land on the group's message.
            if s.recipient_type.as_deref() == Some("group")
                && let Some(group) = s.recipient_id.as_deref().filter(|g| !g.is_empty())
            {
                out.items.push(item(
                    ContactKey::group(group),
                    None,
                    ItemKind::Status(status_item),
                ));
                continue;
            }
            match ContactKey::new(s.recipient_id.as_deref(), recipient_user.as_deref()) {
                Some(key) => {
                    out.items
                        .push(item(key, recipient_user, ItemKind::Status(status_item)))
                }
                None => out.orphan_statuses.push(OrphanStatus {
                    workspace_id,
                    phone_number_id: pnid.to_owned(),
                    status: status_item,
                }),
            }
        }
    }
    Ok(())
}

/// `user_preferences`: a contact's marketing `stop` or `resume` (other categories and values
/// are noted, not applied).
fn user_preferences(
    value: Option<ChangeValue>,
    received_at: DateTime<Utc>,
    scope: &dyn Fn(&str) -> Admit,
    out: &mut Normalized,
) {
    let Some(value) = value else { return };
    let pnid = value
        .metadata
        .as_ref()
        .and_then(|m| m.phone_number_id.as_deref())
        .unwrap_or("");
    let Some(workspace_id) = super::admitted(scope, pnid, "user_preferences", out) else {
        return;
    };
    for p in value.user_preferences {
        let opt_out = match (p.category.as_str(), p.value.as_str()) {
            ("marketing_messages", "stop") => true,
            ("marketing_messages", "resume") => false,
            (category, v) => {
                out.notes.push(format!(
                    "user preference {category:?} = {v:?} stored, not applied"
                ));
                continue;
            }
        };
        let user_id = p.user_id.filter(|u| !u.is_empty());
        let Some(contact) = ContactKey::new(p.wa_id.as_deref(), user_id.as_deref()) else {
            out.unattributed
                .push("a user preference names no contact (no wa_id or user_id)".into());
            continue;
        };
        out.items.push(Item {
            workspace_id,
            phone_number_id: pnid.to_owned(),
            contact,
            user_id,
            kind: ItemKind::MarketingPreference {
                opt_out,
                at: parse_timestamp(p.timestamp.as_ref()).unwrap_or(received_at),
            },
        });
    }
}

/// Who sent a message, in this order: `from` when it reads as a phone number,
/// `from_user_id`, the `user_id` of the contact whose `wa_id` is `from`, `from` as given
/// (`raw:`), and, when the change has exactly one contact, that contact.
fn sender(m: &Value, contacts: &[Contact]) -> Option<(ContactKey, Option<String>)> {
    let from = str_field(m, "from")
        .map(str::trim)
        .filter(|f| !f.is_empty());
    let user_id = str_field(m, "from_user_id")
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .or_else(|| {
            let from = from?;
            contacts
                .iter()
                .find(|c| c.wa_id.as_deref().map(str::trim) == Some(from))?
                .user_id
                .clone()
                .filter(|u| !u.is_empty())
        });
    if let Some(key) = from.and_then(ContactKey::phone) {
        return Some((key, user_id));
    }
    if let Some(u) = &user_id {
        return Some((ContactKey::user(u), user_id));
    }
    if let Some(f) = from {
        return Some((ContactKey::raw(f), None));
    }
    match contacts {
        [only] => {
            let user_id = only.user_id.clone().filter(|u| !u.is_empty());
            ContactKey::new(only.wa_id.as_deref(), user_id.as_deref()).map(|k| (k, user_id))
        }
        _ => None,
    }
}

/// The group a message was written in (`group_id`).
fn group_of(m: &Value) -> Option<&str> {
    str_field(m, "group_id").filter(|g| !g.is_empty())
}

/// Who wrote a group message: the phone, the user id, and the name the change's contacts give.
fn participant(m: &Value, key: &ContactKey, user_id: Option<&str>, contacts: &[Contact]) -> Sender {
    let phone =
        ContactKey::phone(str_field(m, "from").unwrap_or_default()).map(|k| k.as_str().to_owned());
    let from = str_field(m, "from").map(str::trim);
    let name = contacts
        .iter()
        .find(|c| {
            (from.is_some() && c.wa_id.as_deref().map(str::trim) == from)
                || (user_id.is_some() && c.user_id.as_deref() == user_id)
        })
        .and_then(|c| c.profile.as_ref()?.name.clone())
        .filter(|n| !n.is_empty());
    Sender {
        phone: phone.or_else(|| key.as_str().strip_prefix("raw:").map(str::to_owned)),
        user_id: user_id.map(str::to_owned),
        name,
    }
}

/// A `system` message saying who the conversation is with changed: the new identity (its key
/// and user id) and the change. `user_changed_number` / `customer_changed_number` name the new
/// phone (`wa_id`, legacy `new_wa_id`); `user_changed_user_id` the new user id (the phone,
/// where given, stays); `customer_identity_changed` / `user_identity_changed` keep both (the
/// contact's identity key changed). Other system messages change nothing.
#[allow(clippy::type_complexity)]
fn identity_change(
    m: &Value,
    from: &ContactKey,
    from_user: Option<&str>,
    received_at: DateTime<Utc>,
) -> Option<((ContactKey, IdentityChange), Option<String>)> {
    if str_field(m, "type") != Some("system") {
        return None;
    }
    let system = m.get("system")?;
    let kind: &'static str = match str_field(system, "type")? {
        "user_changed_number" => "user_changed_number",
        "customer_changed_number" => "customer_changed_number",
        "user_changed_user_id" => "user_changed_user_id",
        "customer_identity_changed" | "user_identity_changed" => "identity_changed",
        _ => return None,
    };
    let at = parse_timestamp(m.get("timestamp")).unwrap_or(received_at);
    let text = |k: &str| {
        str_field(system, k)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let (to, to_user) = match kind {
        "user_changed_number" | "customer_changed_number" => {
            let phone = text("wa_id").or_else(|| text("new_wa_id"))?;
            let user = text("user_id").map(str::to_owned);
            (ContactKey::new(Some(phone), user.as_deref())?, user)
        }
        "user_changed_user_id" => {
            let user = text("user_id")?.to_owned();
            let phone = text("wa_id").or_else(|| from.bsuid().is_none().then_some(from.as_str()));
            (ContactKey::new(phone, Some(&user))?, Some(user))
        }
        _ => (from.clone(), from_user.map(str::to_owned)),
    };
    let change = IdentityChange {
        kind,
        from: from.clone(),
        user_id: to_user.clone(),
        at,
    };
    Some(((to, change), to_user))
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// What a message object is: a message, or an amendment of an earlier one (a reaction, an
/// edit, a revoke naming the message it changes); `None` without an id.
pub(crate) fn message_kind(
    m: &Value,
    direction: Direction,
    received_at: DateTime<Utc>,
) -> Option<ItemKind> {
    let item = message_item(m, direction, received_at)?;
    let target = |path: [&str; 2]| {
        m.get(path[0])?
            .get(path[1])?
            .as_str()
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
    };
    let amendment = |target: String, kind| {
        ItemKind::Amendment(Amendment {
            wamid: item.wamid.clone(),
            target,
            side: direction,
            at: item.timestamp,
            kind,
        })
    };
    Some(match item.message_type.as_str() {
        "reaction" => match target(["reaction", "message_id"]) {
            Some(t) => {
                let emoji = str_field(&m["reaction"], "emoji")
                    .filter(|e| !e.is_empty())
                    .map(str::to_owned);
                amendment(t, AmendmentKind::Reaction(emoji))
            }
            None => ItemKind::Message(item),
        },
        "edit" => match target(["edit", "original_message_id"]) {
            Some(t) => {
                let inner = &m["edit"]["message"];
                let inner_type = str_field(inner, "type").unwrap_or("text");
                amendment(
                    t,
                    AmendmentKind::Edit {
                        content: content_of(inner_type, inner),
                        metadata: inner.to_string(),
                    },
                )
            }
            None => ItemKind::Message(item),
        },
        "revoke" => match target(["revoke", "original_message_id"]) {
            Some(t) => amendment(t, AmendmentKind::Revoke),
            None => ItemKind::Message(item),
        },
        _ => ItemKind::Message(item),
    })
}

/// A message or echo object as a [`MessageItem`]; `None` without an id.
pub(crate) fn message_item(
    m: &Value,
    direction: Direction,
    received_at: DateTime<Utc>,
) -> Option<MessageItem> {
    let wamid = str_field(m, "id").filter(|s| !s.is_empty())?.to_owned();
    let message_type = str_field(m, "type").unwrap_or("unknown").to_owned();
    // A Flow's answers are kept parsed beside their JSON string (`nfm_reply.response`).
    let metadata = match super::flow_response(m) {
        Some(response) => {
            let mut m = m.clone();
            m["interactive"]["nfm_reply"]["response"] = response;
            m.to_string()
        }
        None => m.to_string(),
    };
    Some(MessageItem {
        direction,
        wamid,
        timestamp: parse_timestamp(m.get("timestamp")).unwrap_or(received_at),
        content: content_of(&message_type, m),
        media: super::event::MediaRef::of(&message_type, m).map(Box::new),
        message_type,
        metadata,
        status: match direction {
            Direction::Inbound => MessageStatus::Received,
            Direction::Outbound => MessageStatus::Accepted,
        },
        sender: None,
        // An echo is what the business wrote in the WhatsApp Business app.
        author: match direction {
            Direction::Inbound => Author::Customer,
            Direction::Outbound => Author::BusinessApp,
        },
    })
}

/// A status's `pricing` object; `None` when it names nothing.
fn pricing_of(p: &Value) -> Option<Pricing> {
    let text = |k: &str| str_field(p, k).filter(|s| !s.is_empty()).map(str::to_owned);
    let pricing = Pricing {
        model: text("pricing_model"),
        category: text("category"),
        kind: text("type"),
    };
    (pricing != Pricing::default()).then_some(pricing)
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
