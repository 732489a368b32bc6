//! One agent turn: the answer to one burst of inbound messages, sent at most once.
//!
//! 1. A turn already recorded for this burst (its key: conversation + newest inbound wamid) is
//!    never run again: redeliveries, replays and restarts call neither the provider nor Meta.
//! 2. The 24-hour window: no free-form reply when the burst's newest message is older.
//! 3. The context gets the burst's user turns and is cut to the token budget (at the ratio
//!    learned from the server's own counts, under its real window).
//! 4. The provider call (retries, breaker). A context the server finds too long is cut and
//!    asked once more; a reply is made safe (`reply.rs`), and one cut at the token limit ends at
//!    its last sentence. A failure is recorded with the provider's code and status; nothing is
//!    sent.
//! 5. The reply is recorded `pending_send` (unique per turn) before the send; after it,
//!    `sent` + wamid (and the outbound message through the store, which moves
//!    `last_contact_at`), `failed` + Graph code, or `unknown` (never resent).

use std::time::Instant;

use chrono::Utc;
use sea_orm::DatabaseConnection;

use super::{
    Answerer,
    context::{self, Turn},
    outbox::{self, Outcome, Outgoing},
    provider::{Fault, ProviderError},
    reply,
};
use crate::{
    ingest::event::{ContactKey, ConversationState, Intent, MessageItem},
    metrics as m,
    store::{
        agent::{self as agent_store, TurnFigures},
        batch::Store,
        change::{ChangeSet, Known},
        conversations, messages,
        outbound::{self, NewOutbound, OutboundState},
    },
};

/// An inbound message of the burst and the inbox event it came with.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub message: MessageItem,
    pub event_id: i64,
}

/// A customer's reaction, edit or revoke since the last turn, shown to the model as context
/// ("[reacted 👍 to: …]") before the burst, never as a question of its own.
#[derive(Debug, Clone)]
pub struct Note {
    /// The amendment's own wamid.
    pub wamid: String,
    /// The message it changed.
    pub target: String,
    pub kind: NoteKind,
}

#[derive(Debug, Clone)]
pub enum NoteKind {
    Reaction(String),
    Edit(Option<String>),
    Revoke,
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
    /// The customer's amendments since the last turn.
    pub notes: Vec<Note>,
    pub burst: Vec<Inbound>,
    /// A person has the conversation (`human`): the turn is recorded as skipped.
    pub handed_off: bool,
}

/// What the actor keeps after a turn.
pub struct TurnReport {
    pub context: Option<Vec<Turn>>,
    pub outcome: TurnOutcome,
}

/// How a turn ended (`wahook_agent_turns_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnOutcome {
    Sent,
    /// The provider or the Graph API failed; recorded with why.
    Failed,
    /// The send's outcome is not known (recorded `unknown`, never resent).
    Unknown,
    /// Recorded `skipped` with its reason.
    Skipped,
    /// A turn for this burst was already recorded: nothing ran.
    AlreadyAnswered,
    /// The database could not be read or written: nothing was sent.
    Error,
    /// A follow-up that found it had nothing to do (the customer wrote, a person has it, …).
    Cancelled,
}

impl TurnOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            TurnOutcome::Sent => "sent",
            TurnOutcome::Failed => "failed",
            TurnOutcome::Unknown => "unknown",
            TurnOutcome::Skipped => "skipped",
            TurnOutcome::AlreadyAnswered => "already_answered",
            TurnOutcome::Error => "error",
            TurnOutcome::Cancelled => "cancelled",
        }
    }
}

pub async fn run(input: TurnInput) -> TurnReport {
    let started = Instant::now();
    let agent = input.answerer.provider.name.clone();
    let report = turn(input).await;
    metrics::histogram!(m::AGENT_TURN_DURATION).record(started.elapsed().as_secs_f64());
    metrics::counter!(m::AGENT_TURNS, "agent" => agent, "outcome" => report.outcome.as_str())
        .increment(1);
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
            outcome: TurnOutcome::Skipped,
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
                outcome: TurnOutcome::AlreadyAnswered,
            };
        }
        Ok(false) => {}
        Err(e) => {
            log("cannot read the turn's record", &e);
            return TurnReport {
                context: input.context,
                outcome: TurnOutcome::Error,
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
    // The customer asked for a person: the conversation is handed over instead of answered.
    if asks_for_a_person(&provider.cfg.handoff_keywords, &input.burst) {
        let set = ChangeSet {
            intents: vec![Intent::AskedForPerson],
            ..ChangeSet::ours(
                input.workspace_id,
                input.contact.clone(),
                Known {
                    contact_id: input.contact_id,
                    conversation_id: input.conversation_id,
                },
                input.correlation_id.clone(),
            )
        };
        if let Err(e) = input.store.apply(set).await {
            log("cannot hand the conversation to a person", &e);
            return TurnReport {
                context: input.context,
                outcome: TurnOutcome::Error,
            };
        }
        return skip(&input, &key, "handoff_keyword").await;
    }
    // A person replied (console, API, the business app) less than `human_silence_ms` before
    // the customer's newest message, or after it: the agent keeps quiet. Each human reply
    // starts the quiet again; a customer message after it is answered again.
    let silence = chrono::Duration::milliseconds(provider.cfg.human_silence_ms as i64);
    if silence > chrono::Duration::zero() {
        match messages::last_human_reply(&input.db, input.conversation_id).await {
            Ok(Some(at)) if newest.message.timestamp - at < silence => {
                return skip(&input, &key, "human_replied").await;
            }
            Ok(_) => {}
            Err(e) => {
                log("cannot read the conversation's human replies", &e);
                return TurnReport {
                    context: input.context,
                    outcome: TurnOutcome::Error,
                };
            }
        }
    }
    // The customer-service window: free-form replies only within 24 h of the last inbound.
    if Utc::now() - newest.message.timestamp > chrono::Duration::hours(24) {
        return skip(&input, &key, "service_window_closed").await;
    }
    let Some(to) = outbox::recipient(&input.contact) else {
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
                    outcome: TurnOutcome::Error,
                };
            }
        },
    };
    for n in &input.notes {
        match &n.kind {
            NoteKind::Edit(text) => context::amend(&mut turns, &n.target, text.as_deref()),
            NoteKind::Revoke => context::amend(&mut turns, &n.target, None),
            NoteKind::Reaction(_) => {}
        }
    }
    turns.extend(notes(&input).await);
    let mut burst = input.burst.clone();
    burst.sort_by_key(|i| i.message.timestamp);
    turns.extend(missed(&input, &turns, &burst).await);
    turns.extend(super::files::burst_turns(&input, &burst).await);
    let cfg = &provider.cfg;
    let bpe = context::tokenizer_for(&cfg.model);
    let mut tokens = context::truncate(bpe, &cfg.system_prompt, &mut turns, provider.budget());

    let called = Instant::now();
    let mut max_tokens = cfg.max_reply_tokens;
    let (mut shrunk, mut reasked, mut empty_again) = (false, false, false);
    let answer = loop {
        match provider.complete(&turns, max_tokens).await {
            // Too long for the server: learn how it counts, cut, ask once more.
            Err(ProviderError::Failed {
                fault:
                    Fault::ContextOverflow {
                        server_tokens,
                        server_limit,
                    },
                ..
            }) if !shrunk => {
                shrunk = true;
                if let Some(n) = server_tokens {
                    provider.learn(tokens, n);
                }
                if let Some(limit) = server_limit {
                    provider.learn_window(limit);
                }
                let budget = provider.budget().min(tokens * 2 / 3);
                let before = tokens;
                tokens = context::truncate(bpe, &cfg.system_prompt, &mut turns, budget);
                tracing::info!(correlation_id = %input.correlation_id, agent, turn = %key, before, after = tokens, ?server_tokens, ?server_limit, ratio = provider.ratio(), "the server found the context too long; cut it and asking once more");
            }
            Err(e) => break Err(e),
            Ok(c) => {
                provider.learn(tokens, c.prompt_tokens.max(0) as usize);
                let mut text = reply::clean(&c.content);
                if c.finish_reason.as_deref() == Some("length") {
                    match reply::last_sentence(&text) {
                        Some(t) => text = t,
                        // Nothing complete: once more with room for it.
                        None if !reasked => {
                            reasked = true;
                            max_tokens *= 2;
                            continue;
                        }
                        None if !text.is_empty() => text = reply::last_word(&text),
                        None => {}
                    }
                }
                // Nothing to send (the model stopped at once, or said only what is never
                // sent): once more.
                if text.is_empty() && !empty_again {
                    empty_again = true;
                    continue;
                }
                break Ok((c, text));
            }
        }
    };
    let latency_ms = called.elapsed().as_millis() as i64;
    // Images go with this request only: the kept context (and the next turn) has the markers.
    for t in &mut turns {
        t.images.clear();
    }
    let answer = match answer {
        Ok((c, text)) if !text.is_empty() => Ok((c, text)),
        Ok((c, _)) => Err(ProviderError::Failed {
            message: format!(
                "the model's reply had nothing to send once made safe ({} characters of control characters or reasoning)",
                c.content.chars().count()
            ),
            opened: false,
            fault: Fault::Request,
            status: None,
            code: "empty_reply".into(),
        }),
        Err(e) => Err(e),
    };
    let (completion, text) = match answer {
        Ok(answer) => answer,
        Err(e) => {
            let (state, breaker_trip) = match &e {
                ProviderError::BreakerOpen => ("breaker_open", false),
                ProviderError::Failed { opened, .. } => ("provider_failed", *opened),
            };
            let status = match &e {
                ProviderError::Failed { status, .. } => *status,
                ProviderError::BreakerOpen => None,
            };
            tracing::warn!(correlation_id = %input.correlation_id, agent, turn = %key, error = %e, code = e.code(), "the agent got no reply; the conversation waits for its next message or a person");
            record_end(
                &input,
                &key,
                OutboundState::Failed,
                &format!("{state}: {e}"),
                Some(e.code()),
                status,
            )
            .await;
            // A context the server refused is never kept as it was: the next turn starts from
            // half of it.
            if matches!(
                &e,
                ProviderError::Failed {
                    fault: Fault::ContextOverflow { .. },
                    ..
                }
            ) {
                tokens = context::truncate(bpe, &cfg.system_prompt, &mut turns, tokens / 2);
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
                outcome: TurnOutcome::Failed,
            };
        }
    };
    metrics::counter!(m::AGENT_TOKENS, "kind" => "prompt")
        .increment(completion.prompt_tokens.max(0) as u64);
    metrics::counter!(m::AGENT_TOKENS, "kind" => "completion")
        .increment(completion.completion_tokens.max(0) as u64);

    // Recorded durably before it leaves; the unique turn key forbids a second send.
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
        key: &key,
        body: &text,
        template: None,
        media: None,
        answers: Some(newest.event_id),
        sender: agent,
        author: crate::ingest::event::Author::Agent,
        correlation_id: &input.correlation_id,
        prompt_tokens: completion.prompt_tokens,
        completion_tokens: completion.completion_tokens,
        finish_reason: completion.finish_reason.as_deref(),
    })
    .await;
    let mut f = TurnFigures {
        prompt_tokens: completion.prompt_tokens,
        completion_tokens: completion.completion_tokens,
        latency_ms,
        ..Default::default()
    };
    let outcome = match sent {
        Outcome::Sent(_) => {
            tokens += context::message_tokens(bpe, &text);
            turns.push(Turn::assistant(text));
            f.replied = true;
            TurnOutcome::Sent
        }
        Outcome::Failed { .. } => {
            f.failed = true;
            TurnOutcome::Failed
        }
        Outcome::Unknown { .. } => {
            f.failed = true;
            TurnOutcome::Unknown
        }
        Outcome::AlreadyRecorded => {
            return TurnReport {
                context: Some(turns),
                outcome: TurnOutcome::AlreadyAnswered,
            };
        }
        Outcome::NotRecorded(e) => {
            log("cannot record the reply before sending it; not sending", &e);
            return TurnReport {
                context: Some(turns),
                outcome: TurnOutcome::Error,
            };
        }
        // The process "stopped" between the send and the record of its outcome.
        Outcome::Stopped => {
            return TurnReport {
                context: None,
                outcome: TurnOutcome::Error,
            };
        }
    };
    let reason = if outcome == TurnOutcome::Sent {
        "ok"
    } else {
        "send"
    };
    metrics::counter!(m::AGENT_REPLIES, "outcome" => outcome.as_str(), "reason" => reason)
        .increment(1);
    save_context(&input, &turns, tokens).await;
    figures(&input, f).await;
    TurnReport {
        context: Some(turns),
        outcome,
    }
}

async fn skip(input: &TurnInput, key: &str, reason: &'static str) -> TurnReport {
    let agent = input.answerer.provider.name.as_str();
    tracing::info!(correlation_id = %input.correlation_id, agent, turn = %key, reason, "agent turn skipped");
    record_end(input, key, OutboundState::Skipped, reason, None, None).await;
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
        outcome: TurnOutcome::Skipped,
    }
}

/// What was said while the agent kept quiet, so that, back, it knows what a person told the
/// customer: when people (an operator, the business app, another system) wrote since the
/// context was last saved, their lines (as the business's, `assistant`) and the customer's
/// unanswered ones between them (`user`), in order — none already in the context or the
/// burst. Nothing when no person wrote (the usual case): the context is as the agent left it.
async fn missed(input: &TurnInput, turns: &[Turn], burst: &[Inbound]) -> Vec<Turn> {
    let agent = input.answerer.provider.name.as_str();
    let since = match agent_store::context_saved_at(&input.db, input.conversation_id, agent).await {
        Ok(at) => at,
        Err(e) => {
            tracing::warn!(correlation_id = %input.correlation_id, agent, error = %e, "cannot read when the context was saved; going on without what people said");
            return Vec::new();
        }
    };
    let said = match messages::not_by_agent_since(&input.db, input.conversation_id, since, 30).await
    {
        Ok(said) => said,
        Err(e) => {
            tracing::warn!(correlation_id = %input.correlation_id, agent, error = %e, "cannot read what people said; going on without it");
            return Vec::new();
        }
    };
    if !said.iter().any(|m| m.author != "customer") {
        return Vec::new();
    }
    let known: std::collections::HashSet<&str> = turns
        .iter()
        .filter_map(|t| t.wamid.as_deref())
        .chain(burst.iter().map(|i| i.message.wamid.as_str()))
        .collect();
    said.iter()
        .filter(|m| !known.contains(m.wamid.as_str()))
        .map(|m| {
            let content = context::render(&m.message_type, m.content.as_deref());
            let turn = if m.author == "customer" {
                Turn::user(content)
            } else {
                Turn::assistant(content)
            };
            Turn {
                wamid: Some(m.wamid.clone()),
                ..turn
            }
        })
        .collect()
}

/// Records a turn that ends without a send (`failed` or `skipped`, with why, and for a failed
/// provider call its code and HTTP status).
async fn record_end(
    input: &TurnInput,
    key: &str,
    state: OutboundState,
    why: &str,
    code: Option<&str>,
    provider_status: Option<u16>,
) {
    let row = NewOutbound {
        workspace_id: input.workspace_id,
        conversation_id: input.conversation_id,
        agent_type: &input.answerer.provider.name,
        turn_key: key,
        state,
        body: None,
        error: Some(why),
        error_code: code,
        provider_status,
        finish_reason: None,
        prompt_tokens: 0,
        completion_tokens: 0,
    };
    if let Err(e) = outbound::reserve(&input.db, row).await {
        tracing::error!(error = %e, turn = %key, state = state.as_str(), "cannot record the turn's end");
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

/// The notes as user turns: what a reaction was to (the text of the message it points at),
/// what an edit says now, that a message was deleted (never what it said).
async fn notes(input: &TurnInput) -> Vec<Turn> {
    if input.notes.is_empty() {
        return Vec::new();
    }
    let targets: Vec<(i64, String)> = input
        .notes
        .iter()
        .filter(|n| matches!(n.kind, NoteKind::Reaction(_)))
        .map(|n| (input.workspace_id, n.target.clone()))
        .collect();
    let texts = crate::store::messages::contents_in(&input.db, input.conversation_id, &targets)
        .await
        .unwrap_or_default();
    let revoked = |target: &str| {
        input
            .notes
            .iter()
            .any(|n| n.target == target && matches!(n.kind, NoteKind::Revoke))
    };
    let snippet = |s: &str| {
        let mut out: String = s.chars().take(80).collect();
        if s.chars().count() > 80 {
            out.push('…');
        }
        out
    };
    input
        .notes
        .iter()
        .map(|n| {
            Turn::user(match &n.kind {
                NoteKind::Reaction(emoji) => match texts.get(&n.target) {
                    Some(text) => format!("[reacted {emoji} to: {}]", snippet(text)),
                    None => format!("[reacted {emoji} to a message]"),
                },
                // An edit of a message deleted since says nothing the customer took back.
                NoteKind::Edit(Some(text)) if !revoked(&n.target) => {
                    format!("[edited a message to: {}]", snippet(text))
                }
                NoteKind::Edit(_) => "[edited a message]".to_owned(),
                NoteKind::Revoke => context::DELETED.to_owned(),
            })
        })
        .collect()
}

/// Whether a message of the burst has one of the hand-off words (whole words, any case).
fn asks_for_a_person(keywords: &[String], burst: &[Inbound]) -> bool {
    if keywords.is_empty() {
        return false;
    }
    let words: Vec<String> = keywords
        .iter()
        .map(|k| k.trim().to_lowercase())
        .filter(|k| !k.is_empty())
        .collect();
    burst.iter().any(|i| {
        let text = i
            .message
            .content
            .as_deref()
            .unwrap_or_default()
            .to_lowercase();
        let tokens: Vec<&str> = text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|t| !t.is_empty())
            .collect();
        words.iter().any(|w| {
            let parts: Vec<&str> = w
                .split(|c: char| !c.is_alphanumeric())
                .filter(|t| !t.is_empty())
                .collect();
            !parts.is_empty()
                && tokens
                    .windows(parts.len())
                    .any(|win| win == parts.as_slice())
        })
    })
}
