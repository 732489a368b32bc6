//! `contacts`: One per (workspace, phone): the lead.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, utoipa::ToSchema)]
#[schema(as = Contact)]
#[sea_orm(table_name = "contacts")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub workspace_id: i64,
    pub phone: String,
    pub user_id: Option<String>,
    pub name: Option<String>,
    pub lead_status: String,
    pub lead_score: i32,
    pub last_activity_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_contact_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Asked to stop marketing messages (`user_preferences`); a marketing template is never
    /// sent to them.
    pub marketing_opt_out: bool,
    pub marketing_opt_out_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When the newest preference applied was made (an older one delivered late changes
    /// nothing).
    #[serde(skip_serializing)]
    pub marketing_preference_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When WhatsApp last said the person's identity key changed (`customer_identity_changed`).
    pub identity_changed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
