//! `contacts`, step 1 of a store transaction: one upsert row per (workspace, contact), merged
//! over the batch in set order; names and user ids only ever filled in, activity timestamps
//! only ever moved forward.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr};

use super::{
    change::ChangeSet,
    sql::{CHUNK, Sql, query},
};
use crate::ingest::event::{ContactKey, Direction};

/// The contact id of every (workspace, contact key) the batch touched.
pub struct ContactIds(HashMap<(i64, String), i64>);

impl ContactIds {
    /// The contact of a change set; an error (never a panic, which would stop the writer) if
    /// it was not upserted.
    pub fn of(&self, set: &ChangeSet) -> Result<i64, DbErr> {
        self.0
            .get(&(set.workspace_id, set.contact.as_str().to_owned()))
            .copied()
            .ok_or_else(|| DbErr::Custom(format!("contact of {:?} not upserted", set.origin)))
    }
}

struct ContactRow {
    user_id: Option<String>,
    name: Option<String>,
    last_activity: Option<DateTime<Utc>>,
    last_contact: Option<DateTime<Utc>>,
}

pub async fn upsert(
    tx: &DatabaseTransaction,
    sets: &[&ChangeSet],
    now: DateTime<Utc>,
) -> Result<ContactIds, DbErr> {
    let backend = tx.get_database_backend();
    let rows = merge(sets);
    let later = |col: &str| {
        format!(
            "{col} = CASE WHEN contacts.{col} IS NULL OR excluded.{col} > contacts.{col} \
             THEN excluded.{col} ELSE contacts.{col} END"
        )
    };
    let mut ids = HashMap::new();
    for chunk in rows.chunks(CHUNK) {
        let mut sql = Sql::new(
            backend,
            "INSERT INTO contacts (workspace_id, phone, user_id, name, lead_status, lead_score, \
             last_activity_at, last_contact_at, created_at, updated_at) VALUES ",
        );
        sql.values(chunk.iter().map(|((ws, phone), row)| {
            vec![
                (*ws).into(),
                phone.to_string().into(),
                row.user_id.clone().into(),
                row.name.clone().into(),
                "prospect".into(),
                50i32.into(),
                row.last_activity.into(),
                row.last_contact.into(),
                now.into(),
                now.into(),
            ]
        }));
        sql.push(&format!(
            " ON CONFLICT (workspace_id, phone) DO UPDATE SET \
             user_id = COALESCE(excluded.user_id, contacts.user_id), \
             name = COALESCE(excluded.name, contacts.name), {}, {}, \
             updated_at = excluded.updated_at RETURNING id, workspace_id, phone",
            later("last_activity_at"),
            later("last_contact_at")
        ));
        for r in query(tx, sql).await? {
            ids.insert(
                (r.try_get("", "workspace_id")?, r.try_get("", "phone")?),
                r.try_get("", "id")?,
            );
        }
    }
    Ok(ContactIds(ids))
}

/// One row per (workspace, contact), later sets' names and user ids winning.
fn merge<'a>(sets: &[&'a ChangeSet]) -> Vec<((i64, &'a str), ContactRow)> {
    let mut contacts: BTreeMap<(i64, &str), ContactRow> = BTreeMap::new();
    for set in sets {
        let row = contacts
            .entry((set.workspace_id, set.contact.as_str()))
            .or_insert(ContactRow {
                user_id: None,
                name: None,
                last_activity: None,
                last_contact: None,
            });
        if set.user_id.is_some() {
            row.user_id.clone_from(&set.user_id);
        }
        if set.contact_name.is_some() {
            row.name.clone_from(&set.contact_name);
        }
        for msg in &set.messages {
            row.last_activity = max_opt(row.last_activity, msg.timestamp);
            if msg.direction == Direction::Outbound {
                row.last_contact = max_opt(row.last_contact, msg.timestamp);
            }
        }
    }
    contacts.into_iter().collect()
}

fn max_opt(a: Option<DateTime<Utc>>, b: DateTime<Utc>) -> Option<DateTime<Utc>> {
    Some(a.map_or(b, |a| a.max(b)))
}

/// A contact's marketing preference (`user_preferences`): the newest one wins, whatever order
/// the webhooks come in; `stop` marks the contact opted out since then, `resume` clears it.
pub async fn set_marketing(
    tx: &DatabaseTransaction,
    sets: &[&ChangeSet],
    contacts: &ContactIds,
) -> Result<(), DbErr> {
    for set in sets {
        let Some((opt_out, at)) = set.marketing else {
            continue;
        };
        let id = contacts.of(set)?;
        super::sql::run(tx, preference(tx, id, opt_out, at)).await?;
    }
    Ok(())
}

/// The newest marketing preference wins: `opt_out` as of `at`, unless a later one is stored.
fn preference(db: &impl ConnectionTrait, id: i64, opt_out: bool, at: DateTime<Utc>) -> Sql {
    let mut sql = Sql::new(
        db.get_database_backend(),
        "UPDATE contacts SET marketing_opt_out = ",
    );
    sql.param(opt_out)
        .push(", marketing_opt_out_at = ")
        .param(opt_out.then_some(at))
        .push(", marketing_preference_at = ")
        .param(at)
        .push(" WHERE id = ")
        .param(id)
        .push(" AND (marketing_preference_at IS NULL OR marketing_preference_at <= ")
        .param(at)
        .push(")");
    sql
}

/// The key of the contact each `(workspace, user id)` belongs to, where one holds that user id
/// under another key (a phone): a message naming the user id alone goes to that contact.
pub async fn keys_of_users(
    db: &impl ConnectionTrait,
    users: &[(i64, String)],
) -> Result<HashMap<(i64, String), String>, DbErr> {
    let mut out = HashMap::new();
    for chunk in users.chunks(500) {
        let mut sql = Sql::new(
            db.get_database_backend(),
            "SELECT workspace_id, user_id, phone FROM contacts WHERE (workspace_id, user_id) IN (",
        );
        sql.values(
            chunk
                .iter()
                .map(|(ws, u)| vec![(*ws).into(), u.clone().into()]),
        );
        sql.push(") ORDER BY id");
        for r in db.query_all_raw(sql.build()).await? {
            let user: String = r.try_get("", "user_id")?;
            let phone: String = r.try_get("", "phone")?;
            // The oldest contact with the user id wins; its own lone-id key is no match.
            if phone != ContactKey::user(&user).as_str() {
                out.entry((r.try_get("", "workspace_id")?, user))
                    .or_insert(phone);
            }
        }
    }
    Ok(out)
}

/// One change of who a contact is (`contact_identity_changes`).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct IdentityChangeView {
    /// `user_changed_number`, `customer_changed_number`, `user_changed_user_id`, `linked`,
    /// `identity_changed`.
    pub kind: String,
    /// The key the contact was known by before (a phone, `bsuid:<user id>`).
    pub from: Option<String>,
    /// The key it is known by since.
    pub to: Option<String>,
    pub user_id: Option<String>,
    /// The contact merged into this one (its messages are this contact's conversation's now).
    pub merged_contact_id: Option<i64>,
    pub event_id: Option<i64>,
    pub at: DateTime<Utc>,
}

/// A contact's identity history, oldest first; `None` when the workspace has no such contact.
pub async fn identity_changes(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    contact_id: i64,
) -> Result<Option<Vec<IdentityChangeView>>, DbErr> {
    let backend = db.get_database_backend();
    let mut sql = Sql::new(backend, "SELECT id FROM contacts WHERE workspace_id = ");
    sql.param(workspace_id).push(" AND id = ").param(contact_id);
    if db.query_one_raw(sql.build()).await?.is_none() {
        return Ok(None);
    }
    let mut sql = Sql::new(
        backend,
        "SELECT kind, from_key, to_key, user_id, merged_contact_id, event_id, at \
         FROM contact_identity_changes WHERE workspace_id = ",
    );
    sql.param(workspace_id)
        .push(" AND contact_id = ")
        .param(contact_id)
        .push(" ORDER BY at, id LIMIT 1000");
    let mut out = Vec::new();
    for r in db.query_all_raw(sql.build()).await? {
        out.push(IdentityChangeView {
            kind: r.try_get("", "kind")?,
            from: r.try_get("", "from_key")?,
            to: r.try_get("", "to_key")?,
            user_id: r.try_get("", "user_id")?,
            merged_contact_id: r.try_get("", "merged_contact_id")?,
            event_id: r.try_get("", "event_id")?,
            at: r.try_get("", "at")?,
        });
    }
    Ok(Some(out))
}

/// The Graph API refused a marketing template because the person stopped marketing messages
/// (131050): the contact is marked opted out from now on, unless a newer preference says
/// otherwise.
pub async fn mark_opted_out(
    db: &impl ConnectionTrait,
    contact_id: i64,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), DbErr> {
    db.execute_raw(preference(db, contact_id, true, at).build())
        .await
        .map(|_| ())
}

/// Whether the contact asked to stop marketing messages.
pub async fn opted_out(db: &impl ConnectionTrait, contact_id: i64) -> Result<bool, DbErr> {
    let mut sql = Sql::new(
        db.get_database_backend(),
        "SELECT marketing_opt_out FROM contacts WHERE id = ",
    );
    sql.param(contact_id);
    Ok(match db.query_one_raw(sql.build()).await? {
        Some(row) => row
            .try_get::<bool>("", "marketing_opt_out")
            .unwrap_or(false),
        None => false,
    })
}
