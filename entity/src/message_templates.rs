//! `message_templates`: a WhatsApp Business Account's templates as the Graph API and the
//! template webhooks last described them.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "message_templates")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub workspace_id: i64,
    pub waba_id: String,
    /// Meta's id of the template (the webhooks' `message_template_id`).
    pub template_id: Option<String>,
    pub name: String,
    pub language: String,
    /// `MARKETING`, `UTILITY` or `AUTHENTICATION`.
    pub category: String,
    /// `APPROVED`, `PAUSED`, `DISABLED`, `REJECTED`, `PENDING`, …
    pub status: String,
    /// `GREEN`, `YELLOW`, `RED` or `UNKNOWN`.
    pub quality: Option<String>,
    /// `POSITIONAL` or `NAMED`.
    pub parameter_format: String,
    /// The Graph API's `components` array, as JSON.
    #[sea_orm(column_type = "Text")]
    pub components: String,
    /// Why the last status change happened (rejection, pause), when Meta said.
    #[sea_orm(column_type = "Text")]
    pub reason: Option<String>,
    pub synced_at: Option<DateTimeUtc>,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
