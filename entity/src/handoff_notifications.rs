//! `handoff_notifications`: a hand-off to a person, announced to the account's `notify_url`.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "handoff_notifications")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub workspace_id: i64,
    pub conversation_id: i64,
    /// Why the conversation went to a person (the state transition's reason).
    pub reason: String,
    pub correlation_id: String,
    /// `pending`, `delivered`, `failed` or `skipped`.
    pub status: String,
    /// Where it was (or is being) delivered.
    #[sea_orm(column_type = "Text")]
    pub url: Option<String>,
    pub attempts: i32,
    pub next_attempt_at: DateTimeUtc,
    /// A worker holds the job until then.
    pub lease_until: Option<DateTimeUtc>,
    /// The receiver's last HTTP status.
    pub last_status: Option<i32>,
    #[sea_orm(column_type = "Text")]
    pub error: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub delivered_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
