//! Delivery statuses (columns of `messages`), step 4 of a store transaction: the highest rank
//! per wamid over the batch; a wamid not stored yet leaves a placeholder row (outbound, type
//! `pending`, no content) that keeps the status until its message arrives.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr};

use super::{
    batch::ChangeSet,
    contacts::ContactIds,
    conversations::Conversations,
    messages::INSERT,
    sql::{CHUNK, Sql, run},
};
use crate::ingest::event::StatusItem;

pub async fn apply(
    tx: &DatabaseTransaction,
    sets: &[&ChangeSet],
    contacts: &ContactIds,
    conversations: &Conversations,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let statuses = best_per_wamid(sets, contacts, conversations)?;
    for chunk in statuses.chunks(CHUNK) {
        let mut sql = Sql::new(tx.get_database_backend(), INSERT);
        sql.values(chunk.iter().map(|((ws, wamid), (conv, st, event_id))| {
            vec![
                (*ws).into(),
                (*conv).into(),
                "outbound".into(),
                wamid.to_string().into(),
                "pending".into(),
                None::<String>.into(),
                st.status.as_str().into(),
                st.status.rank().into(),
                st.error.clone().into(),
                st.timestamp.into(),
                "{}".into(),
                (*event_id).into(),
                now.into(),
                now.into(),
            ]
        }));
        sql.push(
            " ON CONFLICT (workspace_id, wamid) DO UPDATE SET \
             status = CASE WHEN excluded.status_rank > messages.status_rank THEN excluded.status ELSE messages.status END, \
             status_rank = CASE WHEN excluded.status_rank > messages.status_rank THEN excluded.status_rank ELSE messages.status_rank END, \
             status_error = COALESCE(excluded.status_error, messages.status_error), \
             updated_at = excluded.updated_at",
        );
        run(tx, sql).await?;
    }
    Ok(())
}

type Best<'a> = Vec<((i64, &'a str), (i64, StatusItem, i64))>;

/// Per (workspace, wamid): its conversation, the highest-ranked status (with the first error
/// seen) and the event it came with.
fn best_per_wamid<'a>(
    sets: &[&'a ChangeSet],
    contacts: &ContactIds,
    conversations: &Conversations,
) -> Result<Best<'a>, DbErr> {
    let mut best: BTreeMap<(i64, &str), (i64, StatusItem, i64)> = BTreeMap::new();
    for set in sets {
        let conversation_id = conversations.id_of(contacts, set)?;
        for st in &set.statuses {
            match best.get_mut(&(set.workspace_id, st.wamid.as_str())) {
                Some((_, cur, _)) => {
                    let error = st.error.clone().or_else(|| cur.error.clone());
                    if st.status.rank() > cur.status.rank() {
                        *cur = st.clone();
                    }
                    cur.error = error;
                }
                None => {
                    best.insert(
                        (set.workspace_id, st.wamid.as_str()),
                        (conversation_id, st.clone(), set.event_id),
                    );
                }
            }
        }
    }
    Ok(best.into_iter().collect())
}
