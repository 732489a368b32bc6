//! `webhook_events`: The durable inbox: every acknowledged webhook request, raw.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "webhook_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub workspace_id: Option<i64>,
    pub account_id: Option<i64>,
    pub source: String,
    pub event_type: Option<String>,
    #[sea_orm(unique)]
    pub dedup_key: String,
    #[sea_orm(column_type = "Text")]
    pub payload: String,
    #[sea_orm(column_type = "Text")]
    pub headers: String,
    pub received_at: DateTimeUtc,
    pub status: String,
    pub attempts: i32,
    pub processed_at: Option<DateTimeUtc>,
    #[sea_orm(column_type = "Text")]
    pub last_error: Option<String>,
    pub correlation_id: String,
    /// What normalisation said about the event, one line each.
    #[sea_orm(column_type = "Text")]
    pub notes: Option<String>,
    /// The tenant whose secret verified it (`ingest::Tenant`'s stored form): processing
    /// applies the event only inside it.
    #[serde(skip_serializing)]
    pub signed_by: Option<String>,
    /// One row per distinct signed body of a tenant: the same bytes under another event name
    /// or idempotency key are a duplicate (Kapso; Meta's dedup key is the body's hash).
    #[sea_orm(unique)]
    #[serde(skip_serializing)]
    pub body_key: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
