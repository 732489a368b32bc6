//! Sending a text, a template or a file at most once: the reply is recorded `pending_send` under its key (unique in
//! `outbound_messages`) before it leaves; after the Graph API answers it becomes `sent` with its
//! wamid (and an outbound `messages` row through the store, which moves `last_contact_at` and
//! lets the status webhooks find it), `failed` with the Graph code, or `unknown`. Used by the
//! agent's turns and by operators' sends.

use chrono::Utc;
use sea_orm::DatabaseConnection;

use super::graph::{Graph, Recipient};
use crate::{
    ingest::event::{Author, ContactKey, Direction, MediaRef, MessageItem, MessageStatus},
    store::{
        batch::Store,
        change::{ChangeSet, Known},
        outbound::{self, NewOutbound, OutboundState},
    },
};

pub struct Outgoing<'a> {
    pub db: &'a DatabaseConnection,
    pub store: &'a Store,
    pub graph: &'a Graph,
    pub token: &'a str,
    pub phone_number_id: &'a str,
    pub workspace_id: i64,
    pub conversation_id: i64,
    pub contact_id: i64,
    pub contact: &'a ContactKey,
    pub to: &'a Recipient,
    /// Unique per send: a second send with the same key never leaves.
    pub key: &'a str,
    /// The text sent, or for a template the text it renders to (what the conversation shows).
    pub body: &'a str,
    /// A template send: the Graph API's `template` object (name, language, components).
    pub template: Option<&'a serde_json::Value>,
    /// A file send (an operator's): `body` is its caption or marker.
    pub media: Option<&'a OutMedia>,
    /// The inbox event it answers (for the message row), if any.
    pub answers: Option<i64>,
    /// `agent_type` of the row: the agent's name, or `operator`.
    pub sender: &'a str,
    /// Who the message is by (the agent, an operator, a campaign through the API).
    pub author: Author,
    pub correlation_id: &'a str,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// How the model's reply ended (none for an operator's text).
    pub finish_reason: Option<&'a str>,
}

/// A file to send: by the media id of an upload, or by a link Meta fetches itself.
#[derive(Debug, Clone)]
pub struct OutMedia {
    /// `image`, `audio`, `video`, `document` or `sticker`.
    pub kind: String,
    /// The Graph API's media object: `{id | link, caption?, filename?}`.
    pub object: serde_json::Value,
    /// What the conversation shows as its text.
    pub caption: Option<String>,
    /// For a media id: the file, fetched back into the media store like a customer's (so the
    /// conversation shows what was sent).
    pub file: Option<MediaRef>,
}

#[derive(Debug)]
pub enum Outcome {
    Sent(String),
    Failed {
        code: String,
        message: String,
    },
    Unknown {
        code: String,
        message: String,
    },
    /// The key was recorded before: nothing was sent.
    AlreadyRecorded,
    /// It could not be recorded first, so it was not sent.
    NotRecorded(String),
    /// Fault injection: the process "stopped" after the send, before its record.
    Stopped,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Sent(_) => "sent",
            Outcome::Failed { .. } => "failed",
            Outcome::Unknown { .. } => "unknown",
            Outcome::AlreadyRecorded => "already_answered",
            Outcome::NotRecorded(_) | Outcome::Stopped => "error",
        }
    }
}

pub async fn send_once(o: Outgoing<'_>) -> Outcome {
    let row = NewOutbound {
        workspace_id: o.workspace_id,
        conversation_id: o.conversation_id,
        agent_type: o.sender,
        turn_key: o.key,
        state: OutboundState::PendingSend,
        body: Some(o.body),
        error: None,
        error_code: None,
        provider_status: None,
        finish_reason: o.finish_reason,
        prompt_tokens: o.prompt_tokens,
        completion_tokens: o.completion_tokens,
    };
    let id = match outbound::reserve(o.db, row).await {
        Ok(Some(id)) => id,
        Ok(None) => return Outcome::AlreadyRecorded,
        Err(e) => return Outcome::NotRecorded(e.to_string()),
    };
    let sent = match (o.template, o.media) {
        (Some(t), _) => {
            o.graph
                .send_template(o.phone_number_id, o.token, o.to, t)
                .await
        }
        (None, Some(m)) => {
            o.graph
                .send_media(o.phone_number_id, o.token, o.to, &m.kind, &m.object)
                .await
        }
        (None, None) => {
            o.graph
                .send_text(o.phone_number_id, o.token, o.to, o.body)
                .await
        }
    };
    if injected_stop(o.key) || injected_stop_to(o.key, o.contact.as_str()) {
        return Outcome::Stopped;
    }
    let log = |what: &str, e: &dyn std::fmt::Display| {
        tracing::error!(correlation_id = %o.correlation_id, key = %o.key, error = %e, "send: {what}");
    };
    match sent {
        Ok(wamid) => {
            let sent = outbound::finish(o.db, id, OutboundState::Sent, Some(&wamid), None, None);
            if let Err(e) = sent.await {
                log("cannot record the sent message", &e);
            }
            let message = MessageItem {
                direction: Direction::Outbound,
                wamid: wamid.clone(),
                timestamp: Utc::now(),
                message_type: match (o.template, o.media) {
                    (Some(_), _) => "template".into(),
                    (None, Some(m)) => m.kind.clone(),
                    (None, None) => "text".into(),
                },
                content: match o.media {
                    Some(m) => m.caption.clone(),
                    None => Some(o.body.to_owned()),
                },
                metadata: match (o.template, o.media) {
                    (Some(t), _) => serde_json::json!({"sender": o.sender, "key": o.key, "template": {"name": t["name"], "language": t["language"]["code"]}}),
                    (None, Some(m)) => serde_json::json!({"sender": o.sender, "key": o.key, m.kind.as_str(): m.object}),
                    (None, None) => serde_json::json!({"sender": o.sender, "key": o.key}),
                }
                .to_string(),
                status: MessageStatus::Accepted,
                sender: None,
                media: o.media.and_then(|m| m.file.clone()).map(Box::new),
                author: o.author,
            };
            let set = ChangeSet {
                messages: vec![message],
                ..ChangeSet::ours(
                    o.workspace_id,
                    o.contact.clone(),
                    Known {
                        contact_id: o.contact_id,
                        conversation_id: o.conversation_id,
                    },
                    o.correlation_id,
                )
                .answering(o.answers)
            };
            if let Err(e) = o.store.apply(set).await {
                log("cannot store the sent message", &e);
            }
            Outcome::Sent(wamid)
        }
        Err(e) => {
            let state = if e.unknown {
                OutboundState::Unknown
            } else {
                OutboundState::Failed
            };
            tracing::warn!(correlation_id = %o.correlation_id, key = %o.key, code = %e.code, error = %e.message, state = state.as_str(), "the message was not sent");
            if let Err(err) =
                outbound::finish(o.db, id, state, None, Some(&e.code), Some(&e.message)).await
            {
                log("cannot record the send's failure", &err);
            }
            if e.unknown {
                Outcome::Unknown {
                    code: e.code,
                    message: e.message,
                }
            } else {
                Outcome::Failed {
                    code: e.code,
                    message: e.message,
                }
            }
        }
    }
}

/// Where a message to this contact goes: its phone, or its business-scoped user id.
pub fn recipient(contact: &ContactKey) -> Option<Recipient> {
    let key = contact.as_str();
    if let Some(user) = contact.bsuid() {
        return Some(Recipient::User(user.to_owned()));
    }
    if let Some(group) = contact.group_id() {
        return Some(Recipient::Group(group.to_owned()));
    }
    (!key.starts_with("raw:")).then(|| Recipient::Phone(key.to_owned()))
}

/// Fault injection for the test suite: true (the send stops as if the process died) when the
/// point's argument is in the send's key.
#[allow(unused_variables)]
fn injected_stop(key: &str) -> bool {
    fail::fail_point!("agent::after_send", |arg: Option<String>| {
        arg.is_some_and(|marker| key.contains(&marker))
    });
    false
}

/// The same, for sends whose key starts with the argument's `<prefix>@` to the contact after
/// it (a test's own customer: follow-up keys are not unique across test databases).
#[allow(unused_variables)]
fn injected_stop_to(key: &str, contact: &str) -> bool {
    fail::fail_point!("outbox::after_send_to", |arg: Option<String>| {
        arg.as_deref()
            .and_then(|a| a.split_once('@'))
            .is_some_and(|(prefix, to)| key.starts_with(prefix) && contact == to)
    });
    false
}
