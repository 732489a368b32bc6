//! One follow-up: when a customer has not written for `follow_up_after_ms` after our last
//! message, the conversation's actor runs this (one at a time with its turns). Inside the
//! 24-hour window the model writes it; once the window has closed the configured template is
//! sent. Its key (`followup:<conversation>:<customer's last message>:<n>`) is recorded before
//! anything leaves, so the same follow-up is never sent twice — not by a second node, not
//! after a restart.

use chrono::Utc;
use sea_orm::DatabaseConnection;

use super::{
    Answerer,
    context::{self, Turn},
    outbox::{self, Outcome, Outgoing},
    reply,
    templates::{self, NotSent, TemplateRequest, TemplateSend},
    turn::{TurnOutcome, TurnReport},
};
use crate::{
    ingest::event::{ContactKey, ConversationState},
    metrics as m,
    store::{
        agent as agent_store,
        batch::Store,
        conversations, followups,
        outbound::{self, NewOutbound, OutboundState},
    },
};

pub struct FollowUpInput {
    pub answerer: Answerer,
    pub db: DatabaseConnection,
    pub store: Store,
    pub workspace_id: i64,
    pub contact_id: i64,
    pub conversation_id: i64,
    pub contact: ContactKey,
    pub contact_name: Option<String>,
    pub waba_id: Option<String>,
    /// The customer's last message when it was found due, and the key.
    pub anchor: i64,
    pub key: String,
    /// The actor's kept context, if any.
    pub context: Option<Vec<Turn>>,
}

/// Counts a follow-up that ends without a send, with why; its report's outcome.
pub fn cancelled(reason: &'static str) -> TurnOutcome {
    metrics::counter!(m::FOLLOW_UPS, "stage" => "cancelled", "kind" => "any", "reason" => reason)
        .increment(1);
    TurnOutcome::Cancelled
}

/// What became of it (`sent`, `cancelled`, `error`) is reported like a turn's: the actor
/// treats both alike.
pub async fn run(mut input: FollowUpInput) -> TurnReport {
    let agent = input.answerer.provider.name.clone();
    let cid = format!("followup-{}", input.conversation_id);
    let context = input.context.take();
    let done = |context, outcome| TurnReport { context, outcome };
    // Still due? The customer may have written, a person may have taken over, the key may be
    // recorded (another node, an earlier life of this one).
    match followups::anchor_of(&input.db, input.conversation_id).await {
        Ok(a) if a == input.anchor => {}
        Ok(_) => return done(context, cancelled("customer_wrote")),
        Err(e) => {
            tracing::warn!(error = %e, conversation_id = input.conversation_id, "follow-up: cannot read the conversation; it is tried again later");
            return done(context, TurnOutcome::Error);
        }
    }
    if matches!(
        conversations::state_of(&input.db, input.conversation_id).await,
        Ok(Some(ConversationState::Human))
    ) {
        return done(context, cancelled("handed_to_person"));
    }
    if matches!(outbound::exists(&input.db, &input.key).await, Ok(true)) {
        return done(context, cancelled("already_recorded"));
    }
    let window =
        match conversations::service_window(&input.db, input.conversation_id, Utc::now()).await {
            Ok(w) => w.service_window_open,
            Err(e) => {
                tracing::warn!(error = %e, "follow-up: cannot read the service window");
                return done(context, TurnOutcome::Error);
            }
        };
    let Some(to) = outbox::recipient(&input.contact) else {
        skip(&input, "no_sendable_address").await;
        return done(context, cancelled("no_sendable_address"));
    };
    let cfg = &input.answerer.provider.cfg;
    tracing::info!(correlation_id = %cid, agent, key = %input.key, window_open = window, "follow-up due");
    if !window {
        let Some(name) = cfg.follow_up_template.clone() else {
            skip(&input, "service_window_closed").await;
            return done(context, cancelled("window_closed_no_template"));
        };
        let name_or = input.contact_name.clone().unwrap_or_default();
        let phone = input.contact.as_str().to_owned();
        let parameters: Vec<String> = cfg
            .follow_up_template_parameters
            .iter()
            .map(|p| {
                let v = p.replace("{name}", &name_or).replace("{phone}", &phone);
                if v.trim().is_empty() {
                    "there".into()
                } else {
                    v
                }
            })
            .collect();
        let request = TemplateRequest {
            name,
            language: cfg.follow_up_template_language.clone(),
            parameters: Some(templates::Parameters::List(parameters)),
            header: None,
            buttons: None,
        };
        let a = &input.answerer;
        let sent = templates::send(TemplateSend {
            db: &input.db,
            store: &input.store,
            graph: &a.graph,
            token: &a.token,
            phone_number_id: &a.phone_number_id,
            waba_id: input.waba_id.as_deref(),
            workspace_id: input.workspace_id,
            conversation_id: input.conversation_id,
            contact_id: input.contact_id,
            contact: &input.contact,
            request: &request,
            key: &input.key,
            sender: &agent,
            author: crate::ingest::event::Author::Agent,
            correlation_id: &cid,
        })
        .await;
        let outcome = match sent {
            Ok(Outcome::Sent(_)) => {
                metrics::counter!(m::FOLLOW_UPS, "stage" => "sent", "kind" => "template")
                    .increment(1);
                TurnOutcome::Sent
            }
            Ok(Outcome::AlreadyRecorded) => cancelled("already_recorded"),
            Ok(o) => {
                tracing::warn!(correlation_id = %cid, key = %input.key, outcome = o.label(), "follow-up template not sent");
                cancelled("send_failed")
            }
            Err(NotSent::Refused(r)) => {
                // Recorded, so the same follow-up is not tried again; it counts as one.
                skip(&input, r.reason()).await;
                cancelled(r.reason())
            }
            Err(NotSent::NoAddress) => cancelled("no_sendable_address"),
            Err(NotSent::Store(e)) => {
                tracing::warn!(error = %e, "follow-up: cannot read the catalog");
                TurnOutcome::Error
            }
        };
        return done(context, outcome);
    }

    // Inside the window: the model writes it, from the conversation's context.
    let provider = input.answerer.provider.clone();
    let mut turns = match context {
        Some(t) => t,
        None => agent_store::load_context(&input.db, input.conversation_id, &agent)
            .await
            .ok()
            .flatten()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default(),
    };
    let bpe = context::tokenizer_for(&cfg.model);
    let mut ask = turns.clone();
    ask.push(Turn::user(format!("[{}]", cfg.follow_up_prompt)));
    context::truncate(bpe, &cfg.system_prompt, &mut ask, provider.budget());
    let completion = match provider.complete(&ask, cfg.max_reply_tokens).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(correlation_id = %cid, error = %e, "follow-up: the model gave no text; it is recorded failed and not retried");
            let why = format!("provider: {e}");
            record(&input, OutboundState::Failed, &why, Some(e.code())).await;
            return done(Some(turns), cancelled("provider_failed"));
        }
    };
    let text = reply::clean(&completion.content);
    let text = if completion.finish_reason.as_deref() == Some("length") {
        reply::last_sentence(&text).unwrap_or(text)
    } else {
        text
    };
    if text.is_empty() {
        record(&input, OutboundState::Skipped, "empty_reply", None).await;
        return done(Some(turns), cancelled("empty_reply"));
    }
    let a = &input.answerer;
    let sent = outbox::send_once(Outgoing {
        db: &input.db,
        store: &input.store,
        graph: &a.graph,
        token: &a.token,
        phone_number_id: &a.phone_number_id,
        workspace_id: input.workspace_id,
        conversation_id: input.conversation_id,
        contact_id: input.contact_id,
        contact: &input.contact,
        to: &to,
        key: &input.key,
        body: &text,
        template: None,
        media: None,
        answers: None,
        sender: &agent,
        author: crate::ingest::event::Author::Agent,
        correlation_id: &cid,
        prompt_tokens: completion.prompt_tokens,
        completion_tokens: completion.completion_tokens,
        finish_reason: completion.finish_reason.as_deref(),
    })
    .await;
    let outcome = match sent {
        Outcome::Sent(_) => {
            turns.push(Turn::assistant(text));
            let json = serde_json::to_string(&turns).unwrap_or_else(|_| "[]".into());
            let tokens = context::request_tokens(bpe, &cfg.system_prompt, &turns);
            if let Err(e) =
                agent_store::save_context(&input.db, input.conversation_id, &agent, &json, tokens)
                    .await
            {
                tracing::error!(error = %e, "follow-up: cannot save the context");
            }
            metrics::counter!(m::FOLLOW_UPS, "stage" => "sent", "kind" => "text").increment(1);
            TurnOutcome::Sent
        }
        Outcome::AlreadyRecorded => cancelled("already_recorded"),
        _ => cancelled("send_failed"),
    };
    done(Some(turns), outcome)
}

async fn skip(input: &FollowUpInput, why: &str) {
    record(input, OutboundState::Skipped, why, None).await;
}

async fn record(input: &FollowUpInput, state: OutboundState, why: &str, code: Option<&str>) {
    let row = NewOutbound {
        workspace_id: input.workspace_id,
        conversation_id: input.conversation_id,
        agent_type: &input.answerer.provider.name,
        turn_key: &input.key,
        state,
        body: None,
        error: Some(why),
        error_code: code,
        provider_status: None,
        finish_reason: None,
        prompt_tokens: 0,
        completion_tokens: 0,
    };
    if let Err(e) = outbound::reserve(&input.db, row).await {
        tracing::error!(error = %e, key = %input.key, "cannot record the follow-up's end");
    }
}
