//! `webhook_dlq`: Events parked after repeated processing failures.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, utoipa::ToSchema)]
#[schema(as = DlqRow)]
#[sea_orm(table_name = "webhook_dlq")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub event_id: i64,
    #[sea_orm(column_type = "Text")]
    pub error: String,
    pub attempts: i32,
    pub next_retry_at: Option<chrono::DateTime<chrono::Utc>>,
    pub resolution_status: String,
    pub resolved_by: Option<String>,
    pub resolved_at: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
