//! `messages`: Messages in both directions, unique per (workspace, wamid).

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "messages")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub workspace_id: i64,
    pub conversation_id: i64,
    pub direction: String,
    pub wamid: String,
    pub message_type: String,
    #[sea_orm(column_type = "Text")]
    pub content: Option<String>,
    pub status: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub status_error: Option<String>,
    pub status_rank: i32,
    pub timestamp: DateTimeUtc,
    #[sea_orm(column_type = "Text")]
    pub metadata: String,
    pub event_id: Option<i64>,
    /// When its latest edit was made (its content is that edit's).
    pub edited_at: Option<DateTimeUtc>,
    /// When it was deleted for everyone (its text is gone from this row).
    pub revoked_at: Option<DateTimeUtc>,
    /// What Meta bills for it (`statuses[].pricing`): CBP or PMP, the category, the type.
    pub pricing_model: Option<String>,
    pub pricing_category: Option<String>,
    pub pricing_type: Option<String>,
    /// Who wrote a group message: `{"phone", "user_id", "name"}` as JSON.
    #[sea_orm(column_type = "Text", nullable)]
    pub sender: Option<String>,
    /// Who wrote it: `customer`, `agent`, `operator`, `business_app` or `api`.
    pub author: Option<String>,
    /// The operator's user, for `operator`.
    pub author_user_id: Option<i64>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
