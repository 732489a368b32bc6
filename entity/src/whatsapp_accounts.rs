//! `whatsapp_accounts`: A phone number of a workspace, with the secrets that authenticate its webhooks.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, utoipa::ToSchema)]
#[schema(as = Account)]
#[sea_orm(table_name = "whatsapp_accounts")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub workspace_id: i64,
    #[sea_orm(unique)]
    pub phone_number_id: String,
    pub display_phone_number: String,
    #[serde(skip_serializing)]
    pub app_secret: String,
    #[serde(skip_serializing)]
    pub verify_token: String,
    #[serde(skip_serializing)]
    pub kapso_secret: Option<String>,
    pub agent_type: Option<String>,
    /// The WhatsApp Business Account the number belongs to (`entry[].id` of account-level
    /// webhooks, which name no number).
    pub waba_id: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
