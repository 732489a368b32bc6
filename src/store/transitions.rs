//! `conversation_state_transitions`, step 6 of a store transaction: the state machine run
//! from each conversation's stored state over the batch's intents, an audit row per change
//! (and one for every conversation this transaction started), and a notification job for
//! every conversation handed to a person (`handoffs.rs`).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sea_orm::DbErr;

use super::{
    change::{Applied, ChangeSet},
    contacts::ContactIds,
    conversations::{self, Conversations},
    handoffs,
    sql::{CHUNK, Chain, Sql},
};
use crate::ingest::event::ConversationState;

struct TransitionRow {
    conversation_id: i64,
    from: Option<ConversationState>,
    to: ConversationState,
    reason: &'static str,
    correlation_id: String,
}

/// Moves the conversations' states and writes their audit rows; returns, per set, the ids it
/// was applied to.
pub fn apply(
    sets: &[&ChangeSet],
    contacts: &ContactIds,
    mut conversations: Conversations,
    now: DateTime<Utc>,
    chain: &mut Chain,
) -> Result<Vec<Applied>, DbErr> {
    let mut transitions: Vec<TransitionRow> = Vec::new();
    let mut handed_off: Vec<handoffs::New> = Vec::new();
    let mut state: HashMap<i64, ConversationState> = HashMap::new();
    let mut changed: BTreeMap<i64, ConversationState> = BTreeMap::new();
    let mut applied = Vec::with_capacity(sets.len());
    for set in sets {
        let contact_id = contacts.of(set)?;
        let (conversation_id, stored) = conversations.of(contact_id)?;
        let current = state.entry(conversation_id).or_insert(stored);
        if conversations.created.remove(&contact_id) {
            transitions.push(TransitionRow {
                conversation_id,
                from: None,
                to: ConversationState::Open,
                reason: "conversation started",
                correlation_id: set.correlation_id.clone(),
            });
        }
        for intent in &set.intents {
            if let Some((to, reason)) = current.after(*intent) {
                if to == ConversationState::Human {
                    handed_off.push(handoffs::New {
                        workspace_id: set.workspace_id,
                        conversation_id,
                        reason,
                        correlation_id: set.correlation_id.clone(),
                    });
                }
                transitions.push(TransitionRow {
                    conversation_id,
                    from: Some(*current),
                    to,
                    reason,
                    correlation_id: set.correlation_id.clone(),
                });
                *current = to;
                changed.insert(conversation_id, to);
            }
        }
        applied.push(Applied {
            contact_id,
            conversation_id,
            state: *current,
            new_inbound: Vec::new(),
            reported: false,
        });
    }
    conversations::set_states(&changed, chain);
    insert(&transitions, now, chain);
    handoffs::enqueue(&handed_off, now, chain);
    Ok(applied)
}

fn insert(transitions: &[TransitionRow], now: DateTime<Utc>, chain: &mut Chain) {
    for chunk in transitions.chunks(CHUNK) {
        let mut sql = Sql::new(
            chain.backend(),
            "INSERT INTO conversation_state_transitions (conversation_id, from_state, to_state, reason, correlation_id, at) VALUES ",
        );
        sql.values(chunk.iter().map(|t| {
            vec![
                t.conversation_id.into(),
                t.from.map(|s| s.as_str().to_owned()).into(),
                t.to.as_str().into(),
                t.reason.into(),
                t.correlation_id.clone().into(),
                now.into(),
            ]
        }));
        chain.push(sql);
    }
}
