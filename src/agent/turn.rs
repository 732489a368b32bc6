//! One agent turn: the answer to one burst of inbound messages, sent at most once.
//!
//! 1. A turn already recorded for this burst (its key: conversation + newest inbound wamid) is
//!    never run again: redeliveries, replays and restarts call neither the provider nor Meta.
//! 2. The 24-hour window: no free-form reply when the burst's newest message is older.
//! 3. The context gets the burst's user turns and is cut to the token budget.
//! 4. The provider call (retries, breaker) — a failure is recorded, nothing is sent.
//! 5. The reply is recorded `pending_send` (unique per turn) before the send; after it,
//!    `sent` + wamid (and the outbound message through the store, which moves
//!    `last_contact_at`), `failed` + Graph code, or `unknown` (never resent).

use std::time::Instant;

use chrono::Utc;
use sea_orm::DatabaseConnection;

use super::{
    Answerer,
    context::{self, Turn},
    graph::Recipient,
    provider::ProviderError,
};
use crate::{
    ingest::event::{ContactKey, ConversationState, Direction, MessageItem, MessageStatus},
    metrics as m,
    store::{
        agent::{self as agent_store, TurnFigures},
        batch::{ChangeSet, Store},
        conversations,
        outbound::{self, NewOutbound},
    },
};

/// An inbound message of the burst and the inbox event it came with.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub message: MessageItem,
    pub event_id: i64,
}

pub struct TurnInput {
    pub answerer: Answerer,
    pub db: DatabaseConnection,
    pub store: Store,
    pub workspace_id: i64,
    pub contact_id: i64,
    pub conversation_id: i64,
    pub contact: ContactKey,
    pub correlation_id: String,
    /// The context kept by the actor; `None` the first time (loaded from `agent_contexts`).
    pub context: Option<Vec<Turn>>,
    pub burst: Vec<Inbound>,
    /// A person has the conversation (`human`): the turn is recorded as skipped.
    pub handed_off: bool,
}

/// What the actor keeps after a turn.
pub struct TurnReport {
    pub context: Option<Vec<Turn>>,
    /// `sent`, `failed`, `unknown`, `skipped`, `already_answered`, `error`.
    pub outcome: &'static str,
}

pub async fn run(input: TurnInput) -> TurnReport {
    let started = Instant::now();
    let agent = input.answerer.provider.name.clone();
    let report = turn(input).await;
    metrics::histogram!(m::AGENT_TURN_DURATION).record(started.elapsed().as_secs_f64());
    metrics::counter!(m::AGENT_TURNS, "agent" => agent, "outcome" => report.outcome).increment(1);
    report
}

async fn turn(mut input: TurnInput) -> TurnReport {
    let Some(newest) = input
        .burst
        .iter()
        .max_by_key(|i| i.message.timestamp)
        .cloned()
    else {
        return TurnReport {
            context: input.context,
            outcome: "skipped",
        };
    };
    let key = format!("{}:{}", input.conversation_id, newest.message.wamid);
    let provider = input.answerer.provider.clone();
    let agent = provider.name.as_str();
    let log = |what: &str, e: &dyn std::fmt::Display| {
        tracing::error!(correlation_id = %input.correlation_id, agent, turn = %key, error = %e, "agent turn: {what}");
    };
    match outbound::exists(&input.db, &key).await {
        Ok(true) => {
            return TurnReport {
                context: input.context,
                outcome: "already_answered",
            };
        }
        Ok(false) => {}
        Err(e) => {
            log("cannot read the turn's record", &e);
            return TurnReport {
                context: input.context,
                outcome: "error",
            };
        }
    }
    // The actor's state, or the stored one if an operator changed it since.
    let handed_off = input.handed_off
        || matches!(
            conversations::state_of(&input.db, input.conversation_id).await,
            Ok(Some(ConversationState::Human))
        );
    if handed_off {
        return skip(&input, &key, "handed_to_person").await;
    }
    // The customer-service window: free-form replies only within 24 h of the last inbound.
    if Utc::now() - newest.message.timestamp > chrono::Duration::hours(24) {
        return skip(&input, &key, "service_window_closed").await;
    }
    let Some(to) = recipient(&input.contact) else {
        return skip(&input, &key, "no_sendable_address").await;
    };

    // The context: loaded once per actor life, then kept by the actor.
    let mut turns = match input.context.take() {
        Some(turns) => turns,
        None => match agent_store::load_context(&input.db, input.conversation_id, agent).await {
            Ok(stored) => stored
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or_default(),
            Err(e) => {
                log("cannot load the context", &e);
                return TurnReport {
                    context: None,
                    outcome: "error",
                };
            }
        },
    };
    let mut burst = input.burst.clone();
    burst.sort_by_key(|i| i.message.timestamp);
    turns.extend(
        burst
            .iter()
            .map(|i| Turn::user(context::user_text(&i.message))),
    );
    let cfg = &provider.cfg;
    let bpe = context::tokenizer_for(&cfg.model);
    let budget = cfg.max_context_tokens.saturating_sub(cfg.max_reply_tokens);
    let mut tokens = context::truncate(bpe, &cfg.system_prompt, &mut turns, budget);

    let called = Instant::now();
    let completion = provider.complete(&turns).await;
    let latency_ms = called.elapsed().as_millis() as i64;
    let completion = match completion {
        Ok(c) => c,
        Err(e) => {
            let (state, breaker_trip) = match &e {
                ProviderError::BreakerOpen => ("breaker_open", false),
                ProviderError::Failed { opened, .. } => ("provider_failed", *opened),
            };
            tracing::warn!(correlation_id = %input.correlation_id, agent, turn = %key, error = %e, "the agent got no reply; the conversation waits for its next message or a person");
            let row = NewOutbound {
                workspace_id: input.workspace_id,
                conversation_id: input.conversation_id,
                agent_type: agent,
                turn_key: &key,
                state: "failed",
                body: None,
                error: Some(&format!("{state}: {e}")),
                prompt_tokens: 0,
                completion_tokens: 0,
            };
            if let Err(e) = outbound::reserve(&input.db, row).await {
                log("cannot record the failed turn", &e);
            }
            save_context(&input, &turns, tokens).await;
            figures(
                &input,
                TurnFigures {
                    failed: true,
                    breaker_trip,
                    latency_ms,
                    ..Default::default()
                },
            )
            .await;
            metrics::counter!(m::AGENT_REPLIES, "outcome" => "failed", "reason" => state)
                .increment(1);
            return TurnReport {
                context: Some(turns),
                outcome: "failed",
            };
        }
    };
    metrics::counter!(m::AGENT_TOKENS, "kind" => "prompt")
        .increment(completion.prompt_tokens.max(0) as u64);
    metrics::counter!(m::AGENT_TOKENS, "kind" => "completion")
        .increment(completion.completion_tokens.max(0) as u64);

    // Recorded durably before it leaves; the unique turn key forbids a second send.
    let row = NewOutbound {
        workspace_id: input.workspace_id,
        conversation_id: input.conversation_id,
        agent_type: agent,
        turn_key: &key,
        state: "pending_send",
        body: Some(&completion.content),
        error: None,
        prompt_tokens: completion.prompt_tokens,
        completion_tokens: completion.completion_tokens,
    };
    let id = match outbound::reserve(&input.db, row).await {
        Ok(Some(id)) => id,
        Ok(None) => {
            return TurnReport {
                context: Some(turns),
                outcome: "already_answered",
            };
        }
        Err(e) => {
            log("cannot record the reply before sending it; not sending", &e);
            return TurnReport {
                context: Some(turns),
                outcome: "error",
            };
        }
    };
    let a = &input.answerer;
    let sent = a
        .graph
        .send_text(&a.phone_number_id, &a.token, &to, &completion.content)
        .await;
    if injected_stop(&key) {
        // The process "stops" between the send and the record of its outcome.
        return TurnReport {
            context: None,
            outcome: "error",
        };
    }
    let mut f = TurnFigures {
        prompt_tokens: completion.prompt_tokens,
        completion_tokens: completion.completion_tokens,
        latency_ms,
        ..Default::default()
    };
    let outcome = match sent {
        Ok(wamid) => {
            if let Err(e) = outbound::finish(&input.db, id, "sent", Some(&wamid), None, None).await
            {
                log("cannot record the sent reply", &e);
            }
            let message = MessageItem {
                direction: Direction::Outbound,
                wamid: wamid.clone(),
                timestamp: Utc::now(),
                message_type: "text".into(),
                content: Some(completion.content.clone()),
                metadata: serde_json::json!({"agent": agent, "turn": key}).to_string(),
                status: MessageStatus::Accepted,
            };
            let set = ChangeSet {
                event_id: newest.event_id,
                marks_event: false,
                correlation_id: input.correlation_id.clone(),
                workspace_id: input.workspace_id,
                contact: input.contact.clone(),
                user_id: None,
                contact_name: None,
                messages: vec![message],
                statuses: Vec::new(),
                intents: Vec::new(),
                external_id: None,
                known: Some(crate::store::batch::Known {
                    contact_id: input.contact_id,
                    conversation_id: input.conversation_id,
                }),
            };
            if let Err(e) = input.store.apply(set).await {
                log("cannot store the sent reply as a message", &e);
            }
            turns.push(Turn::assistant(completion.content.clone()));
            tokens += context::message_tokens(bpe, &completion.content);
            f.replied = true;
            "sent"
        }
        Err(e) => {
            let state = if e.unknown { "unknown" } else { "failed" };
            tracing::warn!(correlation_id = %input.correlation_id, agent, turn = %key, code = %e.code, error = %e.message, state, "the reply was not sent");
            if let Err(e) =
                outbound::finish(&input.db, id, state, None, Some(&e.code), Some(&e.message)).await
            {
                log("cannot record the send's failure", &e);
            }
            f.failed = true;
            state
        }
    };
    metrics::counter!(m::AGENT_REPLIES, "outcome" => outcome, "reason" => if outcome == "sent" { "ok" } else { "send" }).increment(1);
    save_context(&input, &turns, tokens).await;
    figures(&input, f).await;
    TurnReport {
        context: Some(turns),
        outcome,
    }
}

/// Where a reply to this contact goes: its phone, or its business-scoped user id.
fn recipient(contact: &ContactKey) -> Option<Recipient> {
    let key = contact.as_str();
    if let Some(user) = key.strip_prefix("bsuid:") {
        return Some(Recipient::User(user.to_owned()));
    }
    (!key.starts_with("raw:")).then(|| Recipient::Phone(key.to_owned()))
}

async fn skip(input: &TurnInput, key: &str, reason: &'static str) -> TurnReport {
    let agent = input.answerer.provider.name.as_str();
    tracing::info!(correlation_id = %input.correlation_id, agent, turn = %key, reason, "agent turn skipped");
    let row = NewOutbound {
        workspace_id: input.workspace_id,
        conversation_id: input.conversation_id,
        agent_type: agent,
        turn_key: key,
        state: "skipped",
        body: None,
        error: Some(reason),
        prompt_tokens: 0,
        completion_tokens: 0,
    };
    if let Err(e) = outbound::reserve(&input.db, row).await {
        tracing::error!(error = %e, "cannot record the skipped turn");
    }
    figures(
        input,
        TurnFigures {
            skipped: true,
            ..Default::default()
        },
    )
    .await;
    metrics::counter!(m::AGENT_REPLIES, "outcome" => "skipped", "reason" => reason).increment(1);
    TurnReport {
        context: input.context.clone(),
        outcome: "skipped",
    }
}

async fn save_context(input: &TurnInput, turns: &[Turn], tokens: usize) {
    let agent = input.answerer.provider.name.as_str();
    let json = serde_json::to_string(turns).unwrap_or_else(|_| "[]".into());
    if let Err(e) =
        agent_store::save_context(&input.db, input.conversation_id, agent, &json, tokens).await
    {
        tracing::error!(error = %e, conversation_id = input.conversation_id, "cannot save the agent context");
    }
}

async fn figures(input: &TurnInput, f: TurnFigures) {
    let agent = input.answerer.provider.name.as_str();
    if let Err(e) = agent_store::record_turn(&input.db, input.conversation_id, agent, &f).await {
        tracing::error!(error = %e, conversation_id = input.conversation_id, "cannot record the agent session figures");
    }
}

/// Fault injection for the test suite: true (the turn stops as if the process died) when the
/// point's argument is in the turn's key.
#[allow(unused_variables)]
fn injected_stop(key: &str) -> bool {
    fail::fail_point!("agent::after_send", |arg: Option<String>| {
        arg.is_some_and(|marker| key.contains(&marker))
    });
    false
}
