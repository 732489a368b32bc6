//! One contact per person, step 0 of a store transaction (before contacts are upserted).
//!
//! - A number or user-id change (`user_changed_number`, `customer_changed_number`,
//!   `user_changed_user_id`) moves the contact known by the old identity to the new one: its
//!   key changes, its id and conversation stay.
//! - A message naming a phone and a user id, where a contact was first seen with the user id
//!   alone (`bsuid:<id>`), links them: that contact takes the phone.
//! - Where the new identity already has a contact of its own (the person wrote from the new
//!   number before the notice came), the two are merged: every message, reaction, edit, send,
//!   agent session and transition of the newer one moves to the older conversation, the
//!   counts are summed, and the newer contact is removed.
//!
//! Each move, link and merge leaves a `contact_identity_changes` row, as does a
//! `customer_identity_changed` notice (which also stamps `contacts.identity_changed_at`), and
//! so does a change whose old identity was never stored (the contact is the new one's). A
//! redelivered notice changes nothing: the old identity no longer has a contact to move, and
//! the row is written once per change (contact, kind, identities, time).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr, QueryResult};

use super::{
    change::ChangeSet,
    contacts::ContactIds,
    sql::{Sql, query, run},
};
use crate::ingest::event::ContactKey;

/// What step 0 did, for the audit rows written once the contacts are known.
pub struct Done {
    rows: Vec<(usize, Audit)>,
}

struct Audit {
    kind: &'static str,
    from: String,
    user_id: Option<String>,
    merged: Option<i64>,
    at: DateTime<Utc>,
}

/// The identity operations a set asks for: its explicit changes, and a link when it names a
/// phone with a user id.
fn wanted(set: &ChangeSet) -> Vec<(&'static str, ContactKey, Option<String>, DateTime<Utc>)> {
    let mut ops: Vec<_> = set
        .identity
        .iter()
        .map(|c| (c.kind, c.from.clone(), c.user_id.clone(), c.at))
        .collect();
    let phone_key = set.contact.bsuid().is_none()
        && set.contact.group_id().is_none()
        && !set.contact.as_str().starts_with("raw:");
    if let Some(user) = set.user_id.as_deref().filter(|_| phone_key) {
        let at = set.messages.first().map_or_else(Utc::now, |m| m.timestamp);
        ops.push(("linked", ContactKey::user(user), Some(user.to_owned()), at));
    }
    ops
}

pub async fn apply(tx: &DatabaseTransaction, sets: &[&ChangeSet]) -> Result<Done, DbErr> {
    let mut done = Done { rows: Vec::new() };
    // The old identities that exist, in one read (most sets name none).
    let mut froms: Vec<(i64, String)> = Vec::new();
    for set in sets {
        for (kind, from, ..) in wanted(set) {
            if kind != "identity_changed" && from != set.contact {
                froms.push((set.workspace_id, from.as_str().to_owned()));
            }
        }
    }
    let mut existing = if froms.is_empty() {
        HashMap::new()
    } else {
        ids_of(tx, &froms).await?
    };
    for (i, set) in sets.iter().enumerate() {
        for (kind, from, user_id, at) in wanted(set) {
            let ws = set.workspace_id;
            // The contact stored under the old identity, if the change moves one. Nothing to
            // move (a key-change notice, the same key, an identity first seen with the notice,
            // or one moved already): the contact is the new identity's, the change is still
            // recorded (a link only when it linked something).
            let moves = kind != "identity_changed" && from != set.contact;
            let Some(old) = moves
                .then(|| existing.remove(&(ws, from.as_str().to_owned())))
                .flatten()
            else {
                if kind != "linked" {
                    done.rows.push((
                        i,
                        Audit {
                            kind,
                            from: from.as_str().to_owned(),
                            user_id,
                            merged: None,
                            at,
                        },
                    ));
                }
                continue;
            };
            let to = set.contact.as_str().to_owned();
            let mut merged = None;
            if let Some(&newer) = ids_of(tx, &[(ws, to.clone())])
                .await?
                .get(&(ws, to.clone()))
            {
                merge(tx, old, newer).await?;
                merged = Some(newer);
            }
            let mut sql = Sql::new(tx.get_database_backend(), "UPDATE contacts SET phone = ");
            sql.param(to.clone())
                .push(", user_id = COALESCE(")
                .param(user_id.clone())
                .push(", user_id) WHERE id = ")
                .param(old);
            run(tx, sql).await?;
            tracing::info!(
                kind,
                contact_id = old,
                merged,
                "contact moved to its new identity"
            );
            done.rows.push((
                i,
                Audit {
                    kind,
                    from: from.as_str().to_owned(),
                    user_id,
                    merged,
                    at,
                },
            ));
        }
    }
    Ok(done)
}

/// The audit rows (and `identity_changed_at`), once every set's contact id is known.
pub async fn record(
    tx: &DatabaseTransaction,
    sets: &[&ChangeSet],
    contacts: &ContactIds,
    done: Done,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let backend = tx.get_database_backend();
    for (i, audit) in done.rows {
        let set = sets[i];
        let contact_id = contacts.of(set)?;
        if audit.kind == "identity_changed" {
            let mut sql = Sql::new(backend, "UPDATE contacts SET identity_changed_at = ");
            sql.param(audit.at)
                .push(" WHERE id = ")
                .param(contact_id)
                .push(" AND (identity_changed_at IS NULL OR identity_changed_at < ")
                .param(audit.at)
                .push(")");
            run(tx, sql).await?;
        }
        // Once per change (a redelivered notice, in any envelope, adds no second row).
        let mut sql = Sql::new(
            backend,
            "INSERT INTO contact_identity_changes (workspace_id, contact_id, kind, from_key, \
             to_key, user_id, merged_contact_id, event_id, at, created_at) SELECT ",
        );
        sql.param(set.workspace_id)
            .push(", ")
            .param(contact_id)
            .push(", ")
            .param(audit.kind)
            .push(", ")
            .param(audit.from.clone())
            .push(", ")
            .param(set.contact.as_str().to_owned())
            .push(", ")
            .param(audit.user_id)
            .push(", ")
            .param(audit.merged)
            .push(", ")
            .param(set.origin.event_id())
            .push(", ")
            .param(audit.at)
            .push(", ")
            .param(now)
            .push(" WHERE NOT EXISTS (SELECT 1 FROM contact_identity_changes WHERE contact_id = ")
            .param(contact_id)
            .push(" AND at = ")
            .param(audit.at)
            .push(" AND kind = ")
            .param(audit.kind)
            .push(" AND from_key = ")
            .param(audit.from)
            .push(")");
        run(tx, sql).await?;
    }
    Ok(())
}

/// The ids of the contacts stored under these keys.
async fn ids_of(
    tx: &DatabaseTransaction,
    keys: &[(i64, String)],
) -> Result<HashMap<(i64, String), i64>, DbErr> {
    let mut out = HashMap::new();
    for chunk in keys.chunks(500) {
        let mut sql = Sql::new(
            tx.get_database_backend(),
            "SELECT id, workspace_id, phone FROM contacts WHERE (workspace_id, phone) IN (",
        );
        sql.values(
            chunk
                .iter()
                .map(|(ws, k)| vec![(*ws).into(), k.clone().into()]),
        );
        sql.push(")");
        for r in query(tx, sql).await? {
            out.insert(
                (r.try_get("", "workspace_id")?, r.try_get("", "phone")?),
                r.try_get("", "id")?,
            );
        }
    }
    Ok(out)
}

/// Tables whose rows belong to a conversation and move with a merge.
const CONVERSATION_TABLES: [&str; 6] = [
    "messages",
    "message_reactions",
    "message_amendments",
    "outbound_messages",
    "agent_sessions",
    "conversation_state_transitions",
];

/// Merges contact `newer` into `keep`: one conversation with every row of both and the counts
/// summed; the contact keeps its name, user id and lead fields, fills what it lacks from the
/// other, and takes the later activity times and the newer marketing preference.
async fn merge(tx: &DatabaseTransaction, keep: i64, newer: i64) -> Result<(), DbErr> {
    let backend = tx.get_database_backend();
    let conversation = |contact: i64| {
        let mut sql = Sql::new(
            backend,
            "SELECT id, message_count, last_message_at FROM conversations WHERE contact_id = ",
        );
        sql.param(contact);
        sql
    };
    let kept = query(tx, conversation(keep)).await?.into_iter().next();
    let absorbed = query(tx, conversation(newer)).await?.into_iter().next();
    match (kept, absorbed) {
        (Some(kept), Some(absorbed)) => {
            let (a, b): (i64, i64) = (kept.try_get("", "id")?, absorbed.try_get("", "id")?);
            for table in CONVERSATION_TABLES {
                let mut sql = Sql::new(backend, &format!("UPDATE {table} SET conversation_id = "));
                sql.param(a).push(" WHERE conversation_id = ").param(b);
                run(tx, sql).await?;
            }
            // A saved agent context of the same agent stays the kept conversation's.
            let mut sql = Sql::new(backend, "UPDATE agent_contexts SET conversation_id = ");
            sql.param(a)
                .push(" WHERE conversation_id = ")
                .param(b)
                .push(
                    " AND agent_type NOT IN (SELECT agent_type FROM agent_contexts \
                     WHERE conversation_id = ",
                )
                .param(a)
                .push(")");
            run(tx, sql).await?;
            let mut sql = Sql::new(
                backend,
                "DELETE FROM agent_contexts WHERE conversation_id = ",
            );
            sql.param(b);
            run(tx, sql).await?;
            let count = |r: &QueryResult| r.try_get::<i32>("", "message_count");
            let latest = later(
                kept.try_get("", "last_message_at")?,
                absorbed.try_get("", "last_message_at")?,
            );
            let mut sql = Sql::new(backend, "UPDATE conversations SET message_count = ");
            sql.param(count(&kept)? + count(&absorbed)?)
                .push(", last_message_at = ")
                .param(latest)
                .push(" WHERE id = ")
                .param(a);
            run(tx, sql).await?;
            let mut sql = Sql::new(backend, "DELETE FROM conversations WHERE id = ");
            sql.param(b);
            run(tx, sql).await?;
        }
        (None, Some(absorbed)) => {
            let b: i64 = absorbed.try_get("", "id")?;
            let mut sql = Sql::new(backend, "UPDATE conversations SET contact_id = ");
            sql.param(keep).push(" WHERE id = ").param(b);
            run(tx, sql).await?;
        }
        (_, None) => {}
    }
    let contact = |id: i64| {
        let mut sql = Sql::new(
            backend,
            "SELECT name, user_id, last_activity_at, last_contact_at, marketing_opt_out, \
             marketing_opt_out_at, marketing_preference_at FROM contacts WHERE id = ",
        );
        sql.param(id);
        sql
    };
    let (Some(k), Some(n)) = (
        query(tx, contact(keep)).await?.into_iter().next(),
        query(tx, contact(newer)).await?.into_iter().next(),
    ) else {
        return Ok(());
    };
    let text = |r: &QueryResult, c: &str| r.try_get::<Option<String>>("", c);
    let time = |r: &QueryResult, c: &str| r.try_get::<Option<DateTime<Utc>>>("", c);
    // The newer contact's marketing preference wins if it was made later.
    let pref = |r: &QueryResult| time(r, "marketing_preference_at");
    let from_newer = pref(&n)? > pref(&k)?;
    let m = if from_newer { &n } else { &k };
    let mut sql = Sql::new(backend, "DELETE FROM contacts WHERE id = ");
    sql.param(newer);
    run(tx, sql).await?;
    let mut sql = Sql::new(backend, "UPDATE contacts SET name = ");
    sql.param(text(&k, "name")?.or(text(&n, "name")?))
        .push(", user_id = ")
        .param(text(&k, "user_id")?.or(text(&n, "user_id")?))
        .push(", last_activity_at = ")
        .param(later(
            time(&k, "last_activity_at")?,
            time(&n, "last_activity_at")?,
        ))
        .push(", last_contact_at = ")
        .param(later(
            time(&k, "last_contact_at")?,
            time(&n, "last_contact_at")?,
        ))
        .push(", marketing_opt_out = ")
        .param(m.try_get::<bool>("", "marketing_opt_out")?)
        .push(", marketing_opt_out_at = ")
        .param(time(m, "marketing_opt_out_at")?)
        .push(", marketing_preference_at = ")
        .param(time(m, "marketing_preference_at")?)
        .push(" WHERE id = ")
        .param(keep);
    run(tx, sql).await?;
    Ok(())
}

fn later(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    a.max(b)
}
