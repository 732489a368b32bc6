//! Follow-ups due: conversations whose last message is ours, older than the agent's
//! `follow_up_after_ms`, with fewer follow-ups since the customer last wrote than its
//! `follow_up_max`. Nothing is kept besides `outbound_messages`: a follow-up's key is
//! `followup:<conversation>:<last inbound message id>:<n>`, so a restart finds the same ones
//! due, and a key already recorded is never sent again.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbErr};

use super::sql::Sql;

/// A conversation whose follow-up is due.
#[derive(Debug, Clone)]
pub struct Due {
    pub contact_id: i64,
    pub contact: String,
    pub contact_name: Option<String>,
    pub conversation_id: i64,
    pub state: String,
    /// The customer's last message (0: they never wrote).
    pub anchor: i64,
    /// Follow-ups recorded since then.
    pub sent: i64,
    pub last_contact_at: DateTime<Utc>,
}

impl Due {
    /// The key of the next follow-up.
    pub fn key(&self) -> String {
        format!(
            "followup:{}:{}:{}",
            self.conversation_id,
            self.anchor,
            self.sent + 1
        )
    }
}

/// Up to `limit` due conversations of a workspace, oldest first: our last message (and our
/// last follow-up attempt) at or before `due_before`, after `not_before`, the customer silent
/// since, not in `human` state, not a group, under `max` follow-ups since their last message.
pub async fn due(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    due_before: DateTime<Utc>,
    not_before: DateTime<Utc>,
    max: u32,
    limit: u64,
) -> Result<Vec<Due>, DbErr> {
    let backend = db.get_database_backend();
    let anchor = "COALESCE((SELECT MAX(m.id) FROM messages m WHERE m.conversation_id = v.id AND m.direction = 'inbound'), 0)";
    let mut sql = Sql::new(
        backend,
        &format!(
            "SELECT * FROM (SELECT c.id AS contact_id, c.phone AS phone, c.name AS name, v.id AS conversation_id, \
             v.status AS state, c.last_contact_at AS last_contact_at, {anchor} AS anchor, \
             (SELECT COUNT(*) FROM outbound_messages o WHERE o.conversation_id = v.id \
               AND o.turn_key LIKE 'followup:' || CAST(v.id AS TEXT) || ':' || CAST({anchor} AS TEXT) || ':%') AS sent, \
             (SELECT MAX(o.created_at) FROM outbound_messages o WHERE o.conversation_id = v.id \
               AND o.turn_key LIKE 'followup:%') AS last_try \
             FROM contacts c JOIN conversations v ON v.contact_id = c.id \
             WHERE c.workspace_id = "
        ),
    );
    sql.param(workspace_id)
        .push(" AND c.last_contact_at IS NOT NULL AND c.last_contact_at <= ")
        .param(due_before)
        .push(" AND c.last_contact_at > ")
        .param(not_before)
        .push(
            " AND (c.last_activity_at IS NULL OR c.last_activity_at <= c.last_contact_at) \
             AND v.status <> 'human' AND c.phone NOT LIKE 'group:%' AND c.phone NOT LIKE 'raw:%') d \
             WHERE d.sent < ",
        )
        .param(i64::from(max))
        .push(" AND (d.last_try IS NULL OR d.last_try <= ")
        .param(due_before)
        .push(") ORDER BY d.last_contact_at LIMIT ")
        .param(limit as i64);
    let rows = db.query_all_raw(sql.build()).await?;
    rows.into_iter()
        .map(|r| {
            Ok(Due {
                contact_id: r.try_get("", "contact_id")?,
                contact: r.try_get("", "phone")?,
                contact_name: r.try_get("", "name")?,
                conversation_id: r.try_get("", "conversation_id")?,
                state: r.try_get("", "state")?,
                anchor: r.try_get("", "anchor")?,
                sent: r.try_get("", "sent")?,
                last_contact_at: r.try_get("", "last_contact_at")?,
            })
        })
        .collect()
}

/// The customer's last message in a conversation (0: none), to tell whether they wrote since
/// a follow-up was found due.
pub async fn anchor_of(db: &impl ConnectionTrait, conversation_id: i64) -> Result<i64, DbErr> {
    let mut sql = Sql::new(
        db.get_database_backend(),
        "SELECT COALESCE(MAX(id), 0) AS anchor FROM messages WHERE direction = 'inbound' AND conversation_id = ",
    );
    sql.param(conversation_id);
    Ok(match db.query_one_raw(sql.build()).await? {
        Some(r) => r.try_get("", "anchor")?,
        None => 0,
    })
}
