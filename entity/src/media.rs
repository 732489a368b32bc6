//! `media`: the file a message carries, as the media job last left it.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "media")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub workspace_id: i64,
    /// The message it belongs to (one file per message).
    pub message_id: i64,
    /// The account whose token fetches it (the event's).
    pub account_id: Option<i64>,
    /// The Graph API's media id (lives 7 days).
    pub media_id: String,
    /// `image`, `audio`, `video`, `document` or `sticker`.
    pub kind: String,
    /// `pending`, `stored`, `failed` or `deleted`.
    pub status: String,
    pub mime_type: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub filename: Option<String>,
    pub voice: bool,
    pub size: Option<i64>,
    /// Hex sha256 of the stored bytes.
    pub sha256: Option<String>,
    /// What the webhook said the sha256 is (hex or base64).
    pub expected_sha256: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub storage_key: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub error: Option<String>,
    pub attempts: i32,
    pub next_attempt_at: DateTimeUtc,
    /// A worker holds the job until then.
    pub lease_until: Option<DateTimeUtc>,
    /// The media id's end of life: a job still failing then is `failed`.
    pub expires_at: DateTimeUtc,
    /// What a voice note or audio says (Kapso's, or the agent's transcription).
    #[sea_orm(column_type = "Text")]
    pub transcript: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub stored_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
