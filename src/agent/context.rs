//! The agent's memory of a conversation: its turns, counted with the model's real tokenizer
//! (tiktoken), cut to a sliding window that keeps the system prompt and the newest turns.

use serde::{Deserialize, Serialize};
use tiktoken_rs::{CoreBPE, tokenizer::Tokenizer};

use crate::ingest::event::MessageItem;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub role: String,
    pub content: String,
    /// The customer's message it renders (never sent to the model): an edit replaces its text,
    /// a revoke removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wamid: Option<String>,
    /// Images the model is shown with this turn (`data:` URLs), for this request only: never
    /// kept in the stored context.
    #[serde(skip)]
    pub images: Vec<String>,
}

/// What a revoked message's turn says instead of its text.
pub const DELETED: &str = crate::store::amendments::DELETED_TURN;

impl Turn {
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user".into(),
            content: content.into(),
            wamid: None,
            images: Vec::new(),
        }
    }

    /// A user turn rendering the customer's message `wamid`.
    pub fn of_message(msg: &MessageItem) -> Self {
        Self {
            wamid: Some(msg.wamid.clone()),
            ..Self::user(user_text(msg))
        }
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: "assistant".into(),
            content: content.into(),
            wamid: None,
            images: Vec::new(),
        }
    }
}

/// Brings the turns in line with the customer's later edits and revokes: an edited message's
/// turn says the new text, a deleted one's no longer says anything it said.
pub fn amend(turns: &mut [Turn], target: &str, edit: Option<&str>) {
    for t in turns
        .iter_mut()
        .filter(|t| t.wamid.as_deref() == Some(target))
    {
        t.content = edit.unwrap_or(DELETED).to_owned();
    }
}

/// The tokenizer of a model: `o200k_base` unless tiktoken knows the model to use another.
pub fn tokenizer_for(model: &str) -> &'static CoreBPE {
    match tiktoken_rs::tokenizer::get_tokenizer(model) {
        Some(Tokenizer::Cl100kBase) => tiktoken_rs::cl100k_base_singleton(),
        Some(Tokenizer::P50kBase) => tiktoken_rs::p50k_base_singleton(),
        Some(Tokenizer::R50kBase) | Some(Tokenizer::Gpt2) => tiktoken_rs::r50k_base_singleton(),
        _ => tiktoken_rs::o200k_base_singleton(),
    }
}

/// Tokens a chat message costs: its content plus the framing of a message.
pub fn message_tokens(bpe: &CoreBPE, content: &str) -> usize {
    bpe.encode_with_special_tokens(content).len() + 4
}

/// Tokens of a whole request: the system prompt, the turns and the reply priming.
pub fn request_tokens(bpe: &CoreBPE, system: &str, turns: &[Turn]) -> usize {
    let system = if system.is_empty() {
        0
    } else {
        message_tokens(bpe, system)
    };
    system
        + turns
            .iter()
            .map(|t| message_tokens(bpe, &t.content))
            .sum::<usize>()
        + 3
}

/// Cuts the turns to fit `budget` tokens: the oldest go first, the window starts with a user
/// turn, and the newest turn always stays — shortened (its end kept) when it alone is over.
/// Returns the tokens of what is kept.
pub fn truncate(bpe: &CoreBPE, system: &str, turns: &mut Vec<Turn>, budget: usize) -> usize {
    let costs: Vec<usize> = turns
        .iter()
        .map(|t| message_tokens(bpe, &t.content))
        .collect();
    let fixed = if system.is_empty() {
        3
    } else {
        message_tokens(bpe, system) + 3
    };
    let mut total: usize = fixed + costs.iter().sum::<usize>();
    let mut drop = 0;
    while total > budget && drop + 1 < turns.len() {
        total -= costs[drop];
        drop += 1;
    }
    // Strict chat templates want the first turn after the system prompt to be the user's.
    while drop + 1 < turns.len() && turns[drop].role != "user" {
        total -= costs[drop];
        drop += 1;
    }
    turns.drain(..drop);
    if total > budget
        && let Some(last) = turns.last_mut()
    {
        let keep = budget.saturating_sub(total - message_tokens(bpe, &last.content));
        last.content = shorten(bpe, &last.content, keep.saturating_sub(5).max(16));
        total = total - costs[costs.len() - 1] + message_tokens(bpe, &last.content);
    }
    total
}

/// The last `tokens` tokens of a text (a long message's end is what was asked), marked as cut.
fn shorten(bpe: &CoreBPE, text: &str, tokens: usize) -> String {
    let all = bpe.encode_with_special_tokens(text);
    if all.len() <= tokens {
        return text.to_owned();
    }
    let tail = &all[all.len() - tokens..];
    match bpe.decode(tail.to_vec()) {
        Ok(t) => format!("…{t}"),
        Err(_) => {
            let n = text.chars().count();
            let keep: String = text.chars().skip(n.saturating_sub(tokens * 3)).collect();
            format!("…{keep}")
        }
    }
}

/// The turns as the strictest chat templates take them: one `user` turn for each run of
/// them (a burst's messages, the notes before it, joined by newlines), strictly alternating
/// with `assistant`, starting with `user`.
pub fn alternate(turns: &[Turn]) -> Vec<Turn> {
    let mut out: Vec<Turn> = Vec::with_capacity(turns.len());
    for t in turns.iter().skip_while(|t| t.role != "user") {
        match out.last_mut() {
            Some(last) if last.role == t.role => {
                last.content.push('\n');
                last.content.push_str(&t.content);
                last.images.extend(t.images.iter().cloned());
            }
            _ => out.push(Turn {
                role: t.role.clone(),
                content: t.content.clone(),
                wamid: None,
                images: t.images.clone(),
            }),
        }
    }
    out
}

/// What the agent reads of an inbound message: text, button and interactive replies give their
/// text; other types a short marker (`[image]`, `[location: …]`), with a caption if any.
pub fn user_text(msg: &MessageItem) -> String {
    render(&msg.message_type, msg.content.as_deref())
}

/// A stored message as a turn's text: the text itself, or what it is (`[image] caption`).
pub fn render(message_type: &str, content: Option<&str>) -> String {
    let content = content.unwrap_or_default();
    match message_type {
        "text" | "button" | "interactive" | "edit" => content.to_owned(),
        "location" => format!("[location: {content}]"),
        other if content.is_empty() => format!("[{other}]"),
        other => format!("[{other}] {content}"),
    }
}
