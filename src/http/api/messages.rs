//! `/api/v1/messages`: operators send a text, a template or a file to a conversation through the Graph API under the
//! agent's rules (recorded before it leaves, never sent twice for one idempotency key, not
//! outside the 24-hour window), and record messages another system sent (which moves
//! `last_contact_at` like any outbound message).

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Body, Caller, ErrorBody, Errors, Failure, sane_time};
use crate::{
    agent::{
        outbox::{self, OutMedia, Outcome, Outgoing},
        templates::{self, NotSent, Refusal, TemplateRequest, TemplateSend},
    },
    http::AppState,
    ingest::event::{Author, ContactKey, Direction, MediaRef, MessageItem, MessageStatus},
    store::{
        change::{ChangeSet, Known},
        conversations::{self, ConversationView},
        users::{Role, audit},
    },
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(send))
        .routes(routes!(record))
}

async fn conversation(
    state: &AppState,
    caller: &Caller,
    id: i64,
) -> Result<ConversationView, Failure> {
    conversations::get(&state.db, caller.0.workspace_id, id)
        .await?
        .ok_or_else(|| Failure::not_found("conversation"))
}

fn check_text(text: &str) -> Result<(), Failure> {
    let n = text.chars().count();
    if text.trim().is_empty() || n > 4096 {
        return Err(Failure::bad_request(format!(
            "text must have 1 to 4096 characters, not {n}"
        )));
    }
    Ok(())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SendBody {
    conversation_id: i64,
    /// The business number to send from (one of the workspace's accounts).
    #[schema(pattern = "^[0-9]{1,64}$")]
    phone_number_id: String,
    /// A text (inside the 24-hour window); give `text` or `template`.
    #[schema(min_length = 1, max_length = 4096, pattern = "\\S")]
    text: Option<String>,
    /// A template (any time): checked against the catalog before it leaves.
    template: Option<TemplateRequest>,
    /// A file (inside the 24-hour window): a media id from `POST /api/v1/media`, or an
    /// `https` link Meta fetches itself.
    media: Option<MediaSend>,
    /// The same key twice sends once.
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    idempotency_key: Option<String>,
}

/// A file to send: `id` (of an upload) or `link`, with a caption (image, video, document) and
/// a filename (document).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MediaSend {
    #[serde(rename = "type")]
    kind: MediaKind,
    #[schema(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    id: Option<String>,
    /// An `https` URL of the file (Meta downloads it when the message is sent).
    #[schema(max_length = 2000)]
    link: Option<String>,
    #[schema(min_length = 1, max_length = 1024)]
    caption: Option<String>,
    #[schema(min_length = 1, max_length = 240)]
    filename: Option<String>,
}

#[derive(Deserialize, ToSchema, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum MediaKind {
    Image,
    Audio,
    Video,
    Document,
    Sticker,
}

impl MediaKind {
    fn name(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
            MediaKind::Document => "document",
            MediaKind::Sticker => "sticker",
        }
    }
}

/// The checked file of a send, or 400 naming what is wrong.
fn media_of(m: &MediaSend, phone_number_id: &str) -> Result<OutMedia, Failure> {
    let kind = m.kind.name();
    let mut object = json!({});
    let file = match (&m.id, &m.link) {
        (Some(id), None) => {
            if !MediaRef::is_media_id(id) {
                return Err(Failure::bad_request(
                    "media.id must be 1 to 128 letters, digits, '_' or '-'",
                ));
            }
            object["id"] = json!(id);
            Some(MediaRef {
                kind: kind.into(),
                media_id: id.clone(),
                filename: m.filename.clone(),
                voice: false,
                phone_number_id: Some(phone_number_id.to_owned()),
                ..Default::default()
            })
        }
        (None, Some(link)) => {
            let ok = link.len() <= 2000
                && reqwest::Url::parse(link).is_ok_and(|u| {
                    u.scheme() == "https"
                        && u.host_str().is_some()
                        && u.username().is_empty()
                        && u.password().is_none()
                });
            if !ok {
                return Err(Failure::bad_request(
                    "media.link must be an https URL (at most 2000 characters, no credentials)",
                ));
            }
            object["link"] = json!(link);
            None
        }
        _ => return Err(Failure::bad_request("media needs either id or link")),
    };
    let caption = match &m.caption {
        Some(_)
            if !matches!(
                m.kind,
                MediaKind::Image | MediaKind::Video | MediaKind::Document
            ) =>
        {
            return Err(Failure::bad_request(format!("a {kind} has no caption")));
        }
        Some(c) => {
            let n = c.chars().count();
            if c.trim().is_empty() || n > 1024 {
                return Err(Failure::bad_request(format!(
                    "media.caption must have 1 to 1024 characters, not {n}"
                )));
            }
            object["caption"] = json!(c);
            Some(c.clone())
        }
        None => None,
    };
    if let Some(f) = &m.filename {
        let n = f.chars().count();
        if m.kind != MediaKind::Document {
            return Err(Failure::bad_request("only a document has a filename"));
        }
        if f.trim().is_empty() || n > 240 || f.chars().any(char::is_control) {
            return Err(Failure::bad_request(
                "media.filename must have 1 to 240 characters and no control characters",
            ));
        }
        object["filename"] = json!(f);
    }
    Ok(OutMedia {
        kind: kind.into(),
        object,
        caption,
        file,
    })
}

/// What became of a send: `sent` (with its wamid), `already_recorded` (this idempotency key was
/// sent before: nothing is sent again) or `unknown` (the Graph API did not answer clearly: it is
/// not retried blindly).
#[derive(Serialize, ToSchema)]
struct Sent {
    state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    wamid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl Sent {
    fn state(state: &str) -> Self {
        Self {
            state: state.into(),
            wamid: None,
            error_code: None,
            message: None,
        }
    }
}

/// Sends a text, a template or a file to a conversation through the Graph API (operator):
/// recorded before it leaves, sent once per idempotency key. A text or a file is refused
/// outside the 24-hour window (a file sent by media id is fetched back into the media store,
/// so the conversation shows it); a template is checked first (it exists, is `APPROVED`, its parameters match its
/// placeholders, a marketing one never goes to a contact who opted out).
#[utoipa::path(post, path = "/api/v1/messages", tag = "messages", operation_id = "messages_send", request_body = SendBody,
    responses(
        (status = 201, body = Sent, description = "sent"),
        (status = 200, body = Sent, description = "already sent with this idempotency key"),
        (status = 202, body = Sent, description = "the outcome is unknown; not retried"),
        (status = 404, body = ErrorBody, description = "no such conversation, account or template"),
        (status = 409, body = ErrorBody, description = "outside the window (text, media), template not approved, or the contact opted out of marketing"),
        (status = 502, body = ErrorBody, description = "the Graph API refused it"),
        Errors))]
async fn send(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<SendBody>,
) -> Result<Response, Failure> {
    caller.require(Role::Operator)?;
    let media = match (&body.text, &body.template, &body.media) {
        (Some(text), None, None) => {
            check_text(text)?;
            None
        }
        (None, Some(_), None) => None,
        (None, None, Some(m)) => Some(media_of(m, &body.phone_number_id)?),
        _ => {
            return Err(Failure::bad_request("give one of text, template or media"));
        }
    };
    let ws = caller.0.workspace_id;
    let conv = conversation(&state, &caller, body.conversation_id).await?;
    let directory = state.directory();
    let token = workspace_token(&state, ws, &body.phone_number_id)?;
    let window = conversations::service_window(&state.db, conv.id, Utc::now()).await?;
    if body.template.is_none() && !window.service_window_open {
        return Err(Failure::new(
            StatusCode::CONFLICT,
            "service_window_closed",
            "the customer has not written in the last 24 hours: only a template may be sent",
        ));
    }
    let contact = ContactKey::stored(conv.contact.clone());
    let Some(to) = outbox::recipient(&contact) else {
        return Err(Failure::new(
            StatusCode::CONFLICT,
            "no_address",
            "the contact has no address to send to",
        ));
    };
    let key = match body.idempotency_key.as_deref().map(str::trim) {
        Some(k) if !k.is_empty() && k.len() <= 200 => format!("api:{ws}:{k}"),
        Some(_) => {
            return Err(Failure::bad_request(
                "idempotency_key must have 1 to 200 characters",
            ));
        }
        None => format!("api:{ws}:{}", uuid::Uuid::now_v7()),
    };
    let correlation_id = format!("api:user:{}", caller.0.user_id);
    if let Some(request) = &body.template {
        let waba_id = directory
            .get(&body.phone_number_id)
            .and_then(|a| a.waba_id.clone());
        let outcome = templates::send(TemplateSend {
            db: &state.db,
            store: &state.processing.store,
            graph: &state.processing.agents.graph,
            token,
            phone_number_id: &body.phone_number_id,
            waba_id: waba_id.as_deref(),
            workspace_id: ws,
            conversation_id: conv.id,
            contact_id: conv.contact_id,
            contact: &contact,
            request,
            key: &key,
            sender: "operator",
            author: Author::Operator(Some(caller.0.user_id)),
            correlation_id: &correlation_id,
        })
        .await;
        let outcome = match outcome {
            Ok(o) => o,
            Err(NotSent::Refused(r)) => return Err(refusal(r)),
            Err(NotSent::Store(e)) => {
                return Err(Failure::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    format!("not sent: {e}"),
                ));
            }
            Err(NotSent::NoAddress) => {
                return Err(Failure::new(
                    StatusCode::CONFLICT,
                    "no_address",
                    "the contact has no address to send to",
                ));
            }
        };
        audit(
            &state.db,
            ws,
            &caller.0.actor,
            "message.send_template",
            &format!("conversation:{}", conv.id),
            None,
            Some(&format!(
                "{} {}: {}",
                request.name,
                request.language,
                outcome.label()
            )),
        )
        .await?;
        return Ok(respond(outcome));
    }
    let marker = media.as_ref().map(|m| match &m.caption {
        Some(c) => c.clone(),
        None => format!("[{}]", m.kind),
    });
    let text = marker
        .as_deref()
        .or(body.text.as_deref())
        .unwrap_or_default();
    let outcome = outbox::send_once(Outgoing {
        db: &state.db,
        store: &state.processing.store,
        graph: &state.processing.agents.graph,
        token,
        phone_number_id: &body.phone_number_id,
        workspace_id: ws,
        conversation_id: conv.id,
        contact_id: conv.contact_id,
        contact: &contact,
        to: &to,
        key: &key,
        body: text,
        template: None,
        media: media.as_ref(),
        answers: None,
        sender: "operator",
        author: Author::Operator(Some(caller.0.user_id)),
        correlation_id: &correlation_id,
        prompt_tokens: 0,
        completion_tokens: 0,
        finish_reason: None,
    })
    .await;
    audit(
        &state.db,
        ws,
        &caller.0.actor,
        if media.is_some() {
            "message.send_media"
        } else {
            "message.send"
        },
        &format!("conversation:{}", conv.id),
        None,
        Some(outcome.label()),
    )
    .await?;
    Ok(respond(outcome))
}

/// The Graph API token of one of the workspace's accounts: 404 for a number of another
/// workspace (or none), 409 `no_graph_token` for one without a token.
pub(super) fn workspace_token<'a>(
    state: &'a AppState,
    workspace_id: i64,
    phone_number_id: &str,
) -> Result<&'a str, Failure> {
    if state
        .directory()
        .get(phone_number_id)
        .is_none_or(|a| a.workspace_id != workspace_id)
    {
        return Err(Failure::not_found("account"));
    }
    graph_token(state, phone_number_id)
}

/// The Graph API token of an account, or 409 `no_graph_token`.
pub(super) fn graph_token<'a>(
    state: &'a AppState,
    phone_number_id: &str,
) -> Result<&'a str, Failure> {
    state
        .processing
        .agents
        .token(phone_number_id)
        .ok_or_else(|| {
            Failure::new(
                StatusCode::CONFLICT,
                "no_graph_token",
                "the account has no Graph API token configured (access_token_env)",
            )
        })
}

/// A refused template send: 404 for a template the catalog lacks, 409 for one that may not be
/// sent (not approved, opted out), 400 for parameters that do not match.
pub(super) fn refusal(r: Refusal) -> Failure {
    let status = match r {
        Refusal::NotFound => StatusCode::NOT_FOUND,
        Refusal::Parameters(_) => StatusCode::BAD_REQUEST,
        Refusal::NotApproved(_) | Refusal::OptedOut => StatusCode::CONFLICT,
    };
    Failure::new(status, r.reason(), r.message())
}

fn respond(outcome: Outcome) -> Response {
    match outcome {
        Outcome::Sent(wamid) => (
            StatusCode::CREATED,
            Json(Sent {
                wamid: Some(wamid),
                ..Sent::state("sent")
            }),
        )
            .into_response(),
        Outcome::AlreadyRecorded => Json(Sent::state("already_recorded")).into_response(),
        Outcome::Unknown { code, message } => (
            StatusCode::ACCEPTED,
            Json(Sent {
                error_code: Some(code),
                message: Some(message),
                ..Sent::state("unknown")
            }),
        )
            .into_response(),
        Outcome::Failed { code, message } => Failure::new(
            StatusCode::BAD_GATEWAY,
            "graph_error",
            format!("the Graph API refused it ({code}): {message}"),
        )
        .into_response(),
        Outcome::NotRecorded(e) => Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!("not sent: it could not be recorded first ({e})"),
        )
        .into_response(),
        Outcome::Stopped => Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopped",
            "the outcome is unknown",
        )
        .into_response(),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RecordBody {
    conversation_id: i64,
    /// The id the other system's send got from the Graph API.
    #[schema(min_length = 1, max_length = 256, pattern = "\\S")]
    wamid: String,
    #[schema(min_length = 1, max_length = 4096, pattern = "\\S")]
    text: String,
    /// When it was sent (default now).
    timestamp: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
struct Recorded {
    recorded: String,
}

/// Records a message another system sent (operator); it moves the contact's `last_contact_at`.
/// The same wamid twice is recorded once.
#[utoipa::path(post, path = "/api/v1/messages/outbound", tag = "messages", operation_id = "messages_record", request_body = RecordBody,
    responses((status = 201, body = Recorded), Errors))]
async fn record(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<RecordBody>,
) -> Result<impl IntoResponse, Failure> {
    caller.require(Role::Operator)?;
    check_text(&body.text)?;
    sane_time("timestamp", body.timestamp)?;
    if body.wamid.trim().is_empty() || body.wamid.len() > 256 {
        return Err(Failure::bad_request("wamid must have 1 to 256 characters"));
    }
    let conv = conversation(&state, &caller, body.conversation_id).await?;
    let set = ChangeSet {
        messages: vec![MessageItem {
            direction: Direction::Outbound,
            wamid: body.wamid.trim().to_owned(),
            timestamp: body.timestamp.unwrap_or_else(Utc::now),
            message_type: "text".into(),
            content: Some(body.text.clone()),
            metadata: json!({"recorded_by": caller.0.actor}).to_string(),
            status: MessageStatus::Sent,
            sender: None,
            media: None,
            author: Author::Api,
        }],
        ..ChangeSet::ours(
            caller.0.workspace_id,
            ContactKey::stored(conv.contact.clone()),
            Known {
                contact_id: conv.contact_id,
                conversation_id: conv.id,
            },
            format!("api:user:{}", caller.0.user_id),
        )
    };
    state.processing.store.apply(set).await.map_err(|e| {
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!("not recorded: {e}"),
        )
    })?;
    audit(
        &state.db,
        caller.0.workspace_id,
        &caller.0.actor,
        "message.record",
        &format!("conversation:{}", conv.id),
        None,
        Some(&body.wamid),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(Recorded {
            recorded: body.wamid,
        }),
    ))
}
