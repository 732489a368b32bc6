//! Lead queries over the contact timestamps: `last_activity_at` (any message, either way) and
//! `last_contact_at` (outbound only).

use chrono::{DateTime, Duration, Utc};
use entity::contacts;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    sea_query::{Expr, ExprTrait},
};

/// Contacts we have not written to in `days` days (or ever), most recently active first.
pub async fn not_contacted_in(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    days: i64,
    now: DateTime<Utc>,
) -> Result<Vec<contacts::Model>, DbErr> {
    let cutoff = now - Duration::days(days);
    contacts::Entity::find()
        .filter(contacts::Column::WorkspaceId.eq(workspace_id))
        .filter(
            Condition::any()
                .add(contacts::Column::LastContactAt.is_null())
                .add(contacts::Column::LastContactAt.lt(cutoff)),
        )
        .order_by_desc(contacts::Column::LastActivityAt)
        .all(db)
        .await
}

/// Contacts whose last activity came after our last outbound message: they are waiting.
pub async fn needs_follow_up(
    db: &impl ConnectionTrait,
    workspace_id: i64,
) -> Result<Vec<contacts::Model>, DbErr> {
    contacts::Entity::find()
        .filter(contacts::Column::WorkspaceId.eq(workspace_id))
        .filter(contacts::Column::LastActivityAt.is_not_null())
        .filter(
            Condition::any()
                .add(contacts::Column::LastContactAt.is_null())
                .add(ExprTrait::gt(
                    Expr::col(contacts::Column::LastActivityAt),
                    Expr::col(contacts::Column::LastContactAt),
                )),
        )
        .order_by_asc(contacts::Column::LastActivityAt)
        .all(db)
        .await
}

/// Contacts active (a message either way) since `since`, most recent first.
pub async fn recently_active(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    since: DateTime<Utc>,
) -> Result<Vec<contacts::Model>, DbErr> {
    contacts::Entity::find()
        .filter(contacts::Column::WorkspaceId.eq(workspace_id))
        .filter(contacts::Column::LastActivityAt.gte(since))
        .order_by_desc(contacts::Column::LastActivityAt)
        .all(db)
        .await
}

/// A workspace's contacts by id after the cursor, optionally searched by name or phone.
pub async fn list_contacts(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    search: Option<&str>,
    after: Option<i64>,
    limit: u64,
) -> Result<Vec<contacts::Model>, DbErr> {
    use sea_orm::QuerySelect;
    let mut q = contacts::Entity::find().filter(contacts::Column::WorkspaceId.eq(workspace_id));
    if let Some(s) = search.map(str::trim).filter(|s| !s.is_empty()) {
        let like = format!("%{}%", s.to_lowercase());
        q = q.filter(
            Condition::any()
                .add(
                    Expr::expr(sea_orm::sea_query::Func::lower(Expr::col(
                        contacts::Column::Name,
                    )))
                    .like(like.clone()),
                )
                .add(contacts::Column::Phone.like(like)),
        );
    }
    if let Some(after) = after {
        q = q.filter(contacts::Column::Id.gt(after));
    }
    q.order_by_asc(contacts::Column::Id)
        .limit(limit)
        .all(db)
        .await
}

/// What an operator may change of a contact.
#[derive(Debug, Default)]
pub struct ContactPatch {
    pub name: Option<String>,
    pub lead_status: Option<String>,
    pub lead_score: Option<i32>,
}

/// Changes a contact of the workspace; `None` when there is none. The lead columns are
/// written only here (the store's batches leave them alone); a name set here is replaced by
/// the next WhatsApp profile name the contact's messages carry.
pub async fn update_contact(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    id: i64,
    patch: ContactPatch,
) -> Result<Option<(contacts::Model, contacts::Model)>, DbErr> {
    use sea_orm::ActiveValue::Set;
    let Some(before) = contacts::Entity::find_by_id(id)
        .filter(contacts::Column::WorkspaceId.eq(workspace_id))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let mut row: contacts::ActiveModel = before.clone().into();
    if let Some(name) = patch.name {
        row.name = Set(Some(name));
    }
    if let Some(status) = patch.lead_status {
        row.lead_status = Set(status);
    }
    if let Some(score) = patch.lead_score {
        row.lead_score = Set(score);
    }
    row.updated_at = Set(Utc::now());
    let after = contacts::Entity::update(row).exec(db).await?;
    Ok(Some((before, after)))
}
