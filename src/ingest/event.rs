//! The internal event type: everything past `ingest/` sees these, never raw JSON.

use chrono::{DateTime, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Who wrote a message: the customer, or on the business's side the agent, an operator (with
/// their user id, through wahook's API or console), the WhatsApp Business app (an
/// `smb_message_echoes` echo, Kapso's `business_app` or `history_sync` origin), or another
/// system (recorded through the API, Kapso's `cloud_api` origin). Stored by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Author {
    #[default]
    Customer,
    Agent,
    Operator(Option<i64>),
    BusinessApp,
    Api,
}

impl Author {
    pub fn as_str(self) -> &'static str {
        match self {
            Author::Customer => "customer",
            Author::Agent => "agent",
            Author::Operator(_) => "operator",
            Author::BusinessApp => "business_app",
            Author::Api => "api",
        }
    }

    /// The operator's user id, if any.
    pub fn user_id(self) -> Option<i64> {
        match self {
            Author::Operator(u) => u,
            _ => None,
        }
    }

    /// A person on the business's side wrote it: the agent keeps quiet for a while after.
    pub fn is_human_reply(self) -> bool {
        matches!(self, Author::Operator(_) | Author::BusinessApp)
    }

    /// As stored (`author`, `author_user_id`); `None` for a name it does not know.
    pub fn from_stored(name: &str, user_id: Option<i64>) -> Option<Self> {
        Some(match name {
            "customer" => Author::Customer,
            "agent" => Author::Agent,
            "operator" => Author::Operator(user_id),
            "business_app" => Author::BusinessApp,
            "api" => Author::Api,
            _ => return None,
        })
    }
}

/// A message's delivery status, ordered: a status only ever moves to a higher rank.
/// `failed` outranks only a message not yet delivered; after that it is recorded with its
/// error without changing the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MessageStatus {
    /// An inbound message as received.
    Received,
    /// An outbound message accepted by the send API, no webhook yet.
    Accepted,
    Sent,
    Failed,
    Delivered,
    Read,
    /// First play of a voice message.
    Played,
}

impl MessageStatus {
    pub fn rank(self) -> i32 {
        match self {
            MessageStatus::Received | MessageStatus::Accepted => 0,
            MessageStatus::Sent => 10,
            MessageStatus::Failed => 15,
            MessageStatus::Delivered => 20,
            MessageStatus::Read => 30,
            MessageStatus::Played => 40,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Received => "received",
            MessageStatus::Accepted => "accepted",
            MessageStatus::Sent => "sent",
            MessageStatus::Failed => "failed",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Read => "read",
            MessageStatus::Played => "played",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "received" => MessageStatus::Received,
            "accepted" => MessageStatus::Accepted,
            "sent" => MessageStatus::Sent,
            "failed" => MessageStatus::Failed,
            "delivered" => MessageStatus::Delivered,
            "read" => MessageStatus::Read,
            "played" => MessageStatus::Played,
            _ => return None,
        })
    }
}

/// A conversation's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ConversationState {
    Open,
    Inactive,
    Closed,
    /// Handed to a person: the AI agent stays silent until it is given back.
    Human,
}

impl ConversationState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationState::Open => "open",
            ConversationState::Inactive => "inactive",
            ConversationState::Closed => "closed",
            ConversationState::Human => "human",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "open" => ConversationState::Open,
            "inactive" => ConversationState::Inactive,
            "closed" => ConversationState::Closed,
            "human" => ConversationState::Human,
            _ => return None,
        })
    }
}

/// What an event asks of a conversation's state; [`ConversationState::after`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Intent {
    InboundMessage,
    Lifecycle(Lifecycle),
    /// An operator sets the state (close, hand to a person, give back to the agent).
    Set(ConversationState),
    /// The customer asked for a person (the agent's `handoff_keywords`).
    AskedForPerson,
}

impl ConversationState {
    /// The conversation state machine: the state after `intent`, or `None` when it stays.
    pub fn after(self, intent: Intent) -> Option<(ConversationState, &'static str)> {
        use ConversationState::*;
        match (self, intent) {
            (from, Intent::Set(to)) if from != to => Some((to, "set by an operator")),
            (Inactive | Closed, Intent::InboundMessage) => {
                Some((Open, "reopened by an inbound message"))
            }
            (Inactive | Closed, Intent::Lifecycle(Lifecycle::Opened)) => {
                Some((Open, "conversation created"))
            }
            (Open | Inactive | Human, Intent::Lifecycle(Lifecycle::Ended)) => {
                Some((Closed, "conversation ended"))
            }
            (Open, Intent::Lifecycle(Lifecycle::Inactive)) => {
                Some((Inactive, "conversation inactive"))
            }
            (Open | Inactive | Closed, Intent::Lifecycle(Lifecycle::Handoff)) => {
                Some((Human, "handed to a person"))
            }
            (Open | Inactive | Closed, Intent::AskedForPerson) => {
                Some((Human, "the customer asked for a person"))
            }
            _ => None,
        }
    }
}

/// Who the conversation is with: the phone (digits, no "+"); for a username adopter with no
/// phone, `bsuid:<user_id>`; for a sender id that is present but not a phone number (e.g. a
/// placeholder such as `PHONE_NUMBER`), `raw:<id as given>`. A sender is never dropped for its
/// shape.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ContactKey(String);

impl ContactKey {
    /// From a phone number and/or a business-scoped user id: the phone's digits when it reads
    /// as a phone number, else the user id, else the phone as given; `None` when both are
    /// empty.
    pub fn new(phone: Option<&str>, user_id: Option<&str>) -> Option<Self> {
        let phone = phone.map(str::trim).filter(|p| !p.is_empty());
        if let Some(key) = phone.and_then(Self::phone) {
            return Some(key);
        }
        if let Some(u) = user_id.filter(|u| !u.is_empty()) {
            return Some(Self::user(u));
        }
        phone.map(Self::raw)
    }

    /// A phone number: digits with the usual `+`, spaces, dashes, dots and brackets; `None`
    /// for anything else (letters, or no digit at all).
    pub fn phone(s: &str) -> Option<Self> {
        let mut digits = String::with_capacity(s.len());
        for c in s.trim().chars() {
            match c {
                '0'..='9' => digits.push(c),
                '+' | ' ' | '-' | '.' | '(' | ')' => {}
                _ => return None,
            }
        }
        (!digits.is_empty()).then_some(Self(digits))
    }

    /// A business-scoped user id (a username adopter without a phone).
    pub fn user(user_id: &str) -> Self {
        Self(format!("bsuid:{user_id}"))
    }

    /// A WhatsApp group (Groups API): its conversation is with the group, each message
    /// records which participant wrote it.
    pub fn group(group_id: &str) -> Self {
        Self(format!("group:{group_id}"))
    }

    /// The group id, when this is a group's key.
    pub fn group_id(&self) -> Option<&str> {
        self.0.strip_prefix("group:")
    }

    /// The business-scoped user id, when this key is one (a contact known by it alone).
    pub fn bsuid(&self) -> Option<&str> {
        self.0.strip_prefix("bsuid:")
    }

    /// A sender id that is not a phone number, kept as given.
    pub fn raw(id: &str) -> Self {
        Self(format!("raw:{id}"))
    }

    /// As stored in `contacts.phone`.
    pub fn stored(key: String) -> Self {
        Self(key)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MessageItem {
    pub direction: Direction,
    pub wamid: String,
    pub timestamp: DateTime<Utc>,
    /// As the payload names it (`text`, `image`, …, `unsupported`, or a type we do not know).
    pub message_type: String,
    /// A human-readable rendering where the type has one.
    pub content: Option<String>,
    /// The raw message object.
    pub metadata: String,
    /// The status it arrives with (Kapso's `sent`, our own send API's `accepted`).
    pub status: MessageStatus,
    /// Who wrote it, for a group message (the conversation is the group's).
    pub sender: Option<Sender>,
    /// The file it carries (image, audio, video, document, sticker), fetched by a media job.
    pub media: Option<Box<MediaRef>>,
    /// Who wrote it.
    pub author: Author,
}

/// A file a message names: what the webhook says of it. The bytes are fetched later from the
/// Graph API by the media id (the download URL lives minutes, the id 7 days).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct MediaRef {
    /// The message type: `image`, `audio`, `video`, `document` or `sticker`.
    pub kind: String,
    pub media_id: String,
    pub mime_type: Option<String>,
    /// As the webhook gives it (hex or base64).
    pub sha256: Option<String>,
    pub filename: Option<String>,
    /// A voice note (`audio.voice`).
    pub voice: bool,
    /// Kapso's own transcript of a voice note (`kapso.transcript.text`).
    pub transcript: Option<String>,
    /// The number whose token fetches it when no webhook brought it (a file we sent); a
    /// webhook's file is fetched with its event's account.
    pub phone_number_id: Option<String>,
}

/// The message types that carry a file.
pub const MEDIA_TYPES: [&str; 5] = ["image", "audio", "video", "document", "sticker"];

impl MediaRef {
    /// Whether `id` may be a media id (it goes into a Graph URL path): 1 to 128 ASCII letters,
    /// digits, `_` and `-`.
    pub fn is_media_id(id: &str) -> bool {
        !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }

    /// The file of a message object `m` of type `message_type`; `None` for other types, or
    /// when the media id is missing or not an id (it goes into a Graph URL path: only ASCII
    /// letters, digits, `_` and `-`, at most 128).
    pub fn of(message_type: &str, m: &serde_json::Value) -> Option<Self> {
        if !MEDIA_TYPES.contains(&message_type) {
            return None;
        }
        let obj = m.get(message_type)?;
        let text = |v: Option<&serde_json::Value>, max: usize| {
            v.and_then(serde_json::Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.chars().take(max).collect::<String>())
        };
        let media_id = obj.get("id")?.as_str()?;
        if !Self::is_media_id(media_id) {
            return None;
        }
        Some(Self {
            kind: message_type.to_owned(),
            media_id: media_id.to_owned(),
            mime_type: text(obj.get("mime_type"), 128),
            sha256: text(obj.get("sha256"), 128),
            filename: text(obj.get("filename"), 255),
            voice: obj.get("voice").and_then(serde_json::Value::as_bool) == Some(true),
            transcript: text(
                m.get("kapso")
                    .and_then(|k| k.get("transcript"))
                    .and_then(|t| t.get("text")),
                20_000,
            ),
            phone_number_id: None,
        })
    }
}

/// The participant who wrote a group message.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Sender {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl MessageItem {
    /// Whether a person wrote this to the business — text, a button or list answer, media,
    /// a location, contacts, an order, or the greeting of a first chat (`request_welcome`).
    /// Only these start an agent turn: a reaction, an edit, a revoke, a system notice, an
    /// unsupported or unknown type never does (a bot must not answer a thumbs-up).
    pub fn is_spoken(&self) -> bool {
        matches!(
            self.message_type.as_str(),
            "text"
                | "interactive"
                | "button"
                | "image"
                | "audio"
                | "video"
                | "document"
                | "sticker"
                | "location"
                | "contacts"
                | "order"
                | "request_welcome"
        )
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StatusItem {
    pub wamid: String,
    pub status: MessageStatus,
    pub timestamp: DateTime<Utc>,
    /// `code: title` of the first error of a `failed` status.
    pub error: Option<String>,
    /// What Meta bills for the message (`sent` and one of `delivered`/`read` carry it).
    pub pricing: Option<Pricing>,
}

/// `statuses[].pricing`: `pricing_model` (CBP, PMP), `category` (marketing, utility,
/// authentication, service, …) and `type` (regular, free_customer_service, free_entry_point).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Pricing {
    pub model: Option<String>,
    pub category: Option<String>,
    pub kind: Option<String>,
}

/// A change to an earlier message — a reaction, an edit, a revoke. It is not a message of its
/// own: it changes the one it points at (once that has arrived) and is never counted.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Amendment {
    /// Its own id (a redelivery of it changes nothing).
    pub wamid: String,
    /// The message it changes.
    pub target: String,
    /// Who made it: the customer (inbound) or the business (an echo of ours).
    pub side: Direction,
    pub at: DateTime<Utc>,
    pub kind: AmendmentKind,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum AmendmentKind {
    /// `None`: the reaction was taken back (emoji missing or empty).
    Reaction(Option<String>),
    /// The new content and the edited message object.
    Edit {
        content: Option<String>,
        metadata: String,
    },
    /// Deleted for everyone: its text is removed from the message row.
    Revoke,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IdentityChange {
    /// `user_changed_number`, `customer_changed_number`, `user_changed_user_id`, `linked` (a
    /// message named a phone and a user id first seen alone), `identity_changed`
    /// (`customer_identity_changed`: the same contact, a new identity key).
    #[serde(with = "identity_kind")]
    pub kind: IdentityKind,
    /// The identity the contact was known by (the same as the item's for `identity_changed`).
    pub from: ContactKey,
    /// The new business-scoped user id, when the change names one.
    pub user_id: Option<String>,
    pub at: DateTime<Utc>,
}

/// An identity change's kind: one of the names in [`identity_kind`]'s list.
pub type IdentityKind = &'static str;

/// An identity change's kind travels by its name (between nodes, through the broker) and is
/// read back as one of the names the intake gives.
mod identity_kind {
    const KINDS: [&str; 5] = [
        "user_changed_number",
        "customer_changed_number",
        "user_changed_user_id",
        "linked",
        "identity_changed",
    ];

    pub fn serialize<S: serde::Serializer>(kind: &&'static str, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(kind)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
        let name = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
        KINDS
            .into_iter()
            .find(|k| *k == name)
            .ok_or_else(|| serde::de::Error::unknown_variant(&name, &KINDS))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Lifecycle {
    Opened,
    Ended,
    Inactive,
    /// A workflow handed the conversation to a person.
    Handoff,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ItemKind {
    Message(MessageItem),
    /// A reaction, edit or revoke of an earlier message.
    Amendment(Amendment),
    Status(StatusItem),
    /// The contact's profile name as WhatsApp shows it.
    Profile {
        name: String,
    },
    Lifecycle(Lifecycle),
    /// The platform's own id of the conversation (Kapso's `conversation.id`).
    ExternalId(String),
    /// WhatsApp says who the conversation is with changed (a system message). The item goes
    /// to the conversation of the new identity: the contact found under `from` moves there,
    /// keeping its conversation (merged into one the new identity already has).
    IdentityChange(IdentityChange),
    /// The contact asked to stop (`true`) or resume (`false`) marketing messages, at this time.
    MarketingPreference {
        opt_out: bool,
        at: DateTime<Utc>,
    },
}

/// One thing that happened in one conversation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Item {
    pub workspace_id: i64,
    /// The business number it concerns (where a reply goes out from).
    pub phone_number_id: String,
    pub contact: ContactKey,
    pub user_id: Option<String>,
    pub kind: ItemKind,
}

/// A status whose recipient the payload does not name: it belongs to the conversation of the
/// stored message with its wamid, if there is one.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OrphanStatus {
    pub workspace_id: i64,
    pub phone_number_id: String,
    pub status: StatusItem,
}

/// A template webhook (keyed by the WhatsApp Business Account, no phone number): what changed
/// of one template of the catalog.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TemplateUpdate {
    pub waba_id: String,
    /// Meta's id of the template (an integer in the payload).
    pub template_id: Option<String>,
    pub name: Option<String>,
    pub language: Option<String>,
    pub change: TemplateChange,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum TemplateChange {
    /// `message_template_status_update`: the new status (`event`) and why.
    Status {
        status: String,
        reason: Option<String>,
        category: Option<String>,
    },
    /// `message_template_quality_update`: the new score.
    Quality(String),
    /// `message_template_components_update`: the new texts and buttons.
    Components {
        body: Option<String>,
        header: Option<String>,
        footer: Option<String>,
        buttons: Option<Vec<serde_json::Value>>,
    },
    /// `template_category_update`: the category now, and the one it will become.
    Category {
        category: String,
        upcoming: Option<String>,
    },
}

/// Everything one inbox event says, in payload order.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalized {
    pub items: Vec<Item>,
    /// Statuses to attribute by their message's wamid (processing looks them up).
    pub orphan_statuses: Vec<OrphanStatus>,
    /// Hand-offs to a person, by the platform's conversation id (processing looks it up in
    /// the event's workspace).
    pub handoffs: Vec<String>,
    /// Template catalog changes, by WhatsApp Business Account (processing applies them in the
    /// workspaces of the accounts of that WABA the signer may act on).
    pub templates: Vec<TemplateUpdate>,
    /// What could not be attributed to any conversation, with the reason: the event is parked
    /// in the dead-letter queue with these, never marked processed.
    pub unattributed: Vec<String>,
    /// Value-level errors and things stored but not processed (kept with the event).
    pub notes: Vec<String>,
}

#[cfg(test)]
mod media_tests {
    use super::*;

    #[test]
    fn a_file_reference_is_read_from_meta_and_kapso_messages() {
        let meta = serde_json::json!({"type": "document", "document": {"id": "622684793477189",
            "mime_type": "application/pdf", "sha256": "V5OPpLD/gEG6Xjg0MbmQDLFgcKsL+j5LfY4ny/pZ4MY=",
            "filename": "receipt.pdf", "caption": "my receipt"}});
        let f = MediaRef::of("document", &meta).unwrap();
        assert_eq!(f.media_id, "622684793477189");
        assert_eq!(f.filename.as_deref(), Some("receipt.pdf"));
        assert!(!f.voice);
        // Kapso's voice note with its own transcript.
        let kapso = serde_json::json!({"type": "audio", "audio": {"id": "media_id_456", "voice": true},
            "kapso": {"transcript": {"text": "Hello, I need help with my order"}}});
        let f = MediaRef::of("audio", &kapso).unwrap();
        assert!(f.voice);
        assert_eq!(
            f.transcript.as_deref(),
            Some("Hello, I need help with my order")
        );
        // Not a file, or an id that is not an id (it goes into a URL path).
        assert_eq!(
            MediaRef::of("text", &serde_json::json!({"text": {"body": "hi"}})),
            None
        );
        for bad in ["../../me", "1/2", "", "a b"] {
            let m = serde_json::json!({"type": "image", "image": {"id": bad}});
            assert_eq!(MediaRef::of("image", &m), None, "{bad}");
        }
    }
}
