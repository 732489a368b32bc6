//! Reactions, edits and revokes, step 5 of a store transaction (after messages and statuses):
//! they change the message they point at and are never messages of their own.
//!
//! - A reaction is one row per message and side (`message_reactions`): a later one by the same
//!   side replaces the earlier, a removal is kept as a NULL emoji, so one delivered late never
//!   brings an older reaction back.
//! - An edit or revoke is kept (`message_amendments`, once per its own wamid), and the message
//!   row is brought in line with every amendment it has: the latest edit's content, or, once
//!   revoked, no text at all (content and the text in `metadata` removed, the earlier texts of
//!   its edits too; the raw inbox payload stays the audit record).
//!
//! Whichever arrives first, the result is the same: the messages of the batch and the targets
//! of its amendments are reconciled in the same transaction, so an edit that came before its
//! message is applied when the message comes.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseTransaction, DbErr};

use super::{
    change::ChangeSet,
    contacts::ContactIds,
    conversations::Conversations,
    sql::{CHUNK, Chain, Sql},
};
use crate::ingest::event::AmendmentKind;

/// What a revoked message keeps in `metadata`.
pub const REVOKED_METADATA: &str = r#"{"revoked":true}"#;

pub async fn apply(
    tx: &DatabaseTransaction,
    sets: &[&ChangeSet],
    contacts: &ContactIds,
    conversations: &Conversations,
    now: DateTime<Utc>,
    chain: &mut Chain,
) -> Result<(), DbErr> {
    let backend = tx.get_database_backend();
    let mut reactions = Vec::new();
    let mut amendments = Vec::new();
    for set in sets {
        if set.amendments.is_empty() {
            continue;
        }
        // An amendment changes a message of its own conversation only.
        let conv = conversations.id_of(contacts, set)?;
        for a in &set.amendments {
            match &a.kind {
                AmendmentKind::Reaction(emoji) => reactions.push((set, conv, a, emoji.clone())),
                AmendmentKind::Edit { content, metadata } => {
                    amendments.push((set, conv, a, "edit", content.clone(), metadata.clone()))
                }
                AmendmentKind::Revoke => {
                    amendments.push((set, conv, a, "revoke", None, "{}".to_owned()))
                }
            }
        }
    }
    // One row per message and side per statement (PostgreSQL refuses to update a row twice in
    // one upsert): the latest of the batch, as the upsert itself would choose.
    reactions.sort_by(|(s1, _, a1, _), (s2, _, a2, _)| {
        (
            s1.workspace_id,
            &a1.target,
            a1.side.as_str(),
            a1.at,
            &a1.wamid,
        )
            .cmp(&(
                s2.workspace_id,
                &a2.target,
                a2.side.as_str(),
                a2.at,
                &a2.wamid,
            ))
    });
    let mut latest: Vec<_> = Vec::with_capacity(reactions.len());
    for r in reactions {
        match latest.last_mut() {
            Some(last) if same_slot(last, &r) => *last = r,
            _ => latest.push(r),
        }
    }
    for chunk in latest.chunks(CHUNK) {
        let mut sql = Sql::new(
            backend,
            "INSERT INTO message_reactions (workspace_id, conversation_id, wamid, side, emoji, \
             reaction_wamid, reacted_at, event_id, updated_at) VALUES ",
        );
        sql.values(chunk.iter().map(|(set, conv, a, emoji)| {
            vec![
                set.workspace_id.into(),
                (*conv).into(),
                a.target.clone().into(),
                a.side.as_str().into(),
                emoji.clone().into(),
                a.wamid.clone().into(),
                a.at.into(),
                set.origin.event_id().into(),
                now.into(),
            ]
        }));
        // The latest wins (ties broken by the reaction's own id, so every order agrees).
        sql.push(
            " ON CONFLICT (workspace_id, wamid, side) DO UPDATE SET emoji = excluded.emoji, \
             reaction_wamid = excluded.reaction_wamid, reacted_at = excluded.reacted_at, \
             event_id = excluded.event_id, updated_at = excluded.updated_at \
             WHERE excluded.reacted_at > message_reactions.reacted_at \
             OR (excluded.reacted_at = message_reactions.reacted_at \
                 AND excluded.reaction_wamid > message_reactions.reaction_wamid)",
        );
        chain.push(sql);
    }
    for chunk in amendments.chunks(CHUNK) {
        let mut sql = Sql::new(
            backend,
            "INSERT INTO message_amendments (workspace_id, conversation_id, wamid, amendment_wamid, \
             kind, content, metadata, amended_at, event_id, created_at) VALUES ",
        );
        sql.values(chunk.iter().map(|(set, conv, a, kind, content, metadata)| {
            vec![
                set.workspace_id.into(),
                (*conv).into(),
                a.target.clone().into(),
                a.wamid.clone().into(),
                (*kind).into(),
                content.clone().into(),
                metadata.clone().into(),
                a.at.into(),
                set.origin.event_id().into(),
                now.into(),
            ]
        }));
        sql.push(" ON CONFLICT (workspace_id, amendment_wamid) DO NOTHING");
        chain.push(sql);
    }
    // The messages to bring in line: the targets of this batch's edits and revokes, and this
    // batch's messages (an amendment may have been waiting for them).
    let amended: BTreeSet<(i64, &str)> = amendments
        .iter()
        .map(|(set, _, a, ..)| (set.workspace_id, a.target.as_str()))
        .collect();
    let mut targets = amended.clone();
    for set in sets {
        for m in &set.messages {
            targets.insert((set.workspace_id, m.wamid.as_str()));
        }
    }
    let targets: Vec<(i64, &str)> = targets.into_iter().collect();
    for chunk in targets.chunks(CHUNK) {
        chain.push(reconcile(backend, chunk));
    }
    // A revoked message's edits keep no text either (only an amendment can add one).
    let amended: Vec<(i64, &str)> = amended.into_iter().collect();
    for chunk in amended.chunks(CHUNK) {
        chain.push(forget_revoked_edits(backend, chunk));
    }
    let revoked: Vec<(i64, &str)> = amendments
        .iter()
        .filter(|(.., kind, _, _)| *kind == "revoke")
        .map(|(_, conv, a, ..)| (*conv, a.target.as_str()))
        .collect();
    forget_in_agent_contexts(tx, &revoked, chain).await
}

/// A revoked message's text leaves the agent's saved context too: its turn (kept with the
/// message's wamid) says only that a message was deleted.
async fn forget_in_agent_contexts(
    tx: &DatabaseTransaction,
    revoked: &[(i64, &str)],
    chain: &mut Chain,
) -> Result<(), DbErr> {
    if revoked.is_empty() {
        return Ok(());
    }
    // It reads what the statements before it wrote.
    chain.flush(tx).await?;
    let backend = tx.get_database_backend();
    let mut sql = Sql::new(
        backend,
        "SELECT id, conversation_id, messages FROM agent_contexts WHERE conversation_id IN ",
    );
    let convs: BTreeSet<i64> = revoked.iter().map(|(c, _)| *c).collect();
    sql.tuple(convs);
    for r in super::sql::query(tx, sql).await? {
        let (id, conv): (i64, i64) = (r.try_get("", "id")?, r.try_get("", "conversation_id")?);
        let text: String = r.try_get("", "messages")?;
        let Ok(mut turns) = serde_json::from_str::<Vec<serde_json::Value>>(&text) else {
            continue;
        };
        let mut changed = false;
        for t in &mut turns {
            let hit = t["wamid"]
                .as_str()
                .is_some_and(|w| revoked.contains(&(conv, w)));
            if hit && t["content"] != DELETED_TURN {
                t["content"] = DELETED_TURN.into();
                changed = true;
            }
        }
        if changed {
            let mut sql = Sql::new(backend, "UPDATE agent_contexts SET messages = ");
            sql.param(serde_json::Value::Array(turns).to_string())
                .push(" WHERE id = ")
                .param(id);
            chain.push(sql);
        }
    }
    Ok(())
}

/// What a revoked message's turn in a saved agent context says (the agent's `DELETED`).
pub const DELETED_TURN: &str = "[deleted a message]";

type Reaction<'a> = (
    &'a &'a ChangeSet,
    i64,
    &'a crate::ingest::event::Amendment,
    Option<String>,
);

fn same_slot(a: &Reaction<'_>, b: &Reaction<'_>) -> bool {
    a.0.workspace_id == b.0.workspace_id && a.2.target == b.2.target && a.2.side == b.2.side
}

/// `(workspace_id, wamid) IN ((…), …)`: row values, which both backends take.
fn pairs(sql: &mut Sql, targets: &[(i64, &str)]) {
    sql.push("(workspace_id, wamid) IN (");
    for (i, (ws, wamid)) in targets.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.push("(");
        sql.param(*ws).push(", ").param(wamid.to_string()).push(")");
    }
    sql.push(")");
}

/// One statement: each listed message that has amendments takes the latest edit's content (and
/// when), or, revoked, loses its text.
fn reconcile(backend: DatabaseBackend, targets: &[(i64, &str)]) -> Sql {
    const AMENDED: &str = "FROM message_amendments a WHERE a.workspace_id = messages.workspace_id \
                           AND a.wamid = messages.wamid \
                           AND a.conversation_id = messages.conversation_id";
    let mut sql = Sql::new(backend, "UPDATE messages SET ");
    sql.push(&format!(
        "revoked_at = COALESCE(revoked_at, (SELECT MIN(a.amended_at) {AMENDED} AND a.kind = 'revoke')), \
         content = CASE WHEN EXISTS (SELECT 1 {AMENDED} AND a.kind = 'revoke') THEN NULL \
             WHEN EXISTS (SELECT 1 {AMENDED} AND a.kind = 'edit') THEN \
                 (SELECT a.content {AMENDED} AND a.kind = 'edit' ORDER BY a.amended_at DESC, a.amendment_wamid DESC LIMIT 1) \
             ELSE content END, \
         metadata = CASE WHEN EXISTS (SELECT 1 {AMENDED} AND a.kind = 'revoke') THEN '{REVOKED_METADATA}' ELSE metadata END, \
         edited_at = (SELECT MAX(a.amended_at) {AMENDED} AND a.kind = 'edit') \
         WHERE message_type <> 'pending' AND EXISTS (SELECT 1 {AMENDED}) AND "
    ));
    pairs(&mut sql, targets);
    sql
}

fn forget_revoked_edits(backend: DatabaseBackend, targets: &[(i64, &str)]) -> Sql {
    let mut sql = Sql::new(
        backend,
        "UPDATE message_amendments SET content = NULL, metadata = '{}' \
         WHERE kind = 'edit' AND content IS NOT NULL AND EXISTS (SELECT 1 FROM message_amendments r \
         WHERE r.workspace_id = message_amendments.workspace_id \
         AND r.wamid = message_amendments.wamid AND r.kind = 'revoke' \
         AND r.conversation_id = message_amendments.conversation_id) AND ",
    );
    pairs(&mut sql, targets);
    sql
}
