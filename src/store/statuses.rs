//! Delivery statuses (columns of `messages`), step 4 of a store transaction: the highest rank
//! per wamid over the batch; a wamid not stored yet leaves a placeholder row (outbound, type
//! `pending`, no content) that keeps the status until its message arrives.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::DbErr;

use super::{
    change::ChangeSet,
    contacts::ContactIds,
    conversations::Conversations,
    sql::{CHUNK, Chain, Sql},
};

/// Status rows: a placeholder's columns, with what Meta bills for the message.
const INSERT: &str = "INSERT INTO messages (workspace_id, conversation_id, direction, wamid, \
     message_type, content, status, status_rank, status_error, timestamp, metadata, event_id, \
     created_at, updated_at, pricing_model, pricing_category, pricing_type) VALUES ";
use crate::ingest::event::StatusItem;

pub fn apply(
    sets: &[&ChangeSet],
    contacts: &ContactIds,
    conversations: &Conversations,
    now: DateTime<Utc>,
    chain: &mut Chain,
) -> Result<(), DbErr> {
    let statuses = best_per_wamid(sets, contacts, conversations)?;
    for chunk in statuses.chunks(CHUNK) {
        let mut sql = Sql::new(chain.backend(), INSERT);
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
                pricing(st, |p| &p.model),
                pricing(st, |p| &p.category),
                pricing(st, |p| &p.kind),
            ]
        }));
        sql.push(
            " ON CONFLICT (workspace_id, wamid) DO UPDATE SET \
             status = CASE WHEN excluded.status_rank > messages.status_rank THEN excluded.status ELSE messages.status END, \
             status_rank = CASE WHEN excluded.status_rank > messages.status_rank THEN excluded.status_rank ELSE messages.status_rank END, \
             status_error = COALESCE(excluded.status_error, messages.status_error), \
             pricing_model = COALESCE(excluded.pricing_model, messages.pricing_model), \
             pricing_category = COALESCE(excluded.pricing_category, messages.pricing_category), \
             pricing_type = COALESCE(excluded.pricing_type, messages.pricing_type), \
             updated_at = excluded.updated_at",
        );
        chain.push(sql);
    }
    Ok(())
}

fn pricing(
    st: &StatusItem,
    field: impl Fn(&crate::ingest::event::Pricing) -> &Option<String>,
) -> sea_orm::Value {
    st.pricing.as_ref().and_then(|p| field(p).clone()).into()
}

type Best<'a> = Vec<((i64, &'a str), (i64, StatusItem, Option<i64>))>;

/// Per (workspace, wamid): its conversation, the highest-ranked status (with the first error
/// seen) and the event it came with.
fn best_per_wamid<'a>(
    sets: &[&'a ChangeSet],
    contacts: &ContactIds,
    conversations: &Conversations,
) -> Result<Best<'a>, DbErr> {
    let mut best: BTreeMap<(i64, &str), (i64, StatusItem, Option<i64>)> = BTreeMap::new();
    for set in sets {
        let conversation_id = conversations.id_of(contacts, set)?;
        for st in &set.statuses {
            match best.get_mut(&(set.workspace_id, st.wamid.as_str())) {
                Some((_, cur, _)) => {
                    let error = st.error.clone().or_else(|| cur.error.clone());
                    let pricing = cur.pricing.clone().or_else(|| st.pricing.clone());
                    if st.status.rank() > cur.status.rank() {
                        *cur = st.clone();
                    }
                    cur.error = error;
                    cur.pricing = pricing;
                }
                None => {
                    best.insert(
                        (set.workspace_id, st.wamid.as_str()),
                        (conversation_id, st.clone(), set.origin.event_id()),
                    );
                }
            }
        }
    }
    Ok(best.into_iter().collect())
}
