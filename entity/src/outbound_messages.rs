//! `outbound_messages`: the AI agent's replies, recorded before and after the send.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "outbound_messages")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub workspace_id: i64,
    pub conversation_id: i64,
    pub agent_type: String,
    #[sea_orm(unique)]
    pub turn_key: String,
    /// `pending_send`, `sent`, `failed`, `unknown` or `skipped`.
    pub state: String,
    #[sea_orm(column_type = "Text")]
    pub body: Option<String>,
    pub wamid: Option<String>,
    pub error_code: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub error: Option<String>,
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
    /// How the model's reply ended (`stop`, `length`, …).
    pub finish_reason: Option<String>,
    /// The model server's HTTP status of a failed turn.
    pub provider_status: Option<i32>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
