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
