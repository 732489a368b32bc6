//! `media`: the file a message carries, fetched from the Graph API by a durable job (one row
//! per message, made in the store transaction that stores the message) and kept in the media
//! store: `pending` → `stored` | `failed` (with the reason), and `deleted` after
//! `media.keep_days`.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
#[allow(clippy::enum_variant_names)]
enum Media {
    Table,
    Id,
    WorkspaceId,
    MessageId,
    AccountId,
    MediaId,
    Kind,
    Status,
    MimeType,
    Filename,
    Voice,
    Size,
    Sha256,
    ExpectedSha256,
    StorageKey,
    Error,
    Attempts,
    NextAttemptAt,
    LeaseUntil,
    ExpiresAt,
    Transcript,
    CreatedAt,
    UpdatedAt,
    StoredAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Media::Table)
                .col(big_pk_auto(Media::Id))
                .col(big_integer(Media::WorkspaceId))
                .col(big_integer(Media::MessageId))
                .col(big_integer_null(Media::AccountId))
                .col(string(Media::MediaId))
                .col(string(Media::Kind))
                .col(string(Media::Status))
                .col(string_null(Media::MimeType))
                .col(text_null(Media::Filename))
                .col(boolean(Media::Voice).default(false))
                .col(big_integer_null(Media::Size))
                .col(string_null(Media::Sha256))
                .col(string_null(Media::ExpectedSha256))
                .col(text_null(Media::StorageKey))
                .col(text_null(Media::Error))
                .col(integer(Media::Attempts).default(0))
                .col(timestamp_with_time_zone(Media::NextAttemptAt))
                .col(timestamp_with_time_zone_null(Media::LeaseUntil))
                .col(timestamp_with_time_zone(Media::ExpiresAt))
                .col(text_null(Media::Transcript))
                .col(timestamp_with_time_zone(Media::CreatedAt))
                .col(timestamp_with_time_zone(Media::UpdatedAt))
                .col(timestamp_with_time_zone_null(Media::StoredAt))
                .take(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("media_message")
                .table(Media::Table)
                .col(Media::MessageId)
                .unique()
                .take(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("media_due")
                .table(Media::Table)
                .col(Media::Status)
                .col(Media::NextAttemptAt)
                .take(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(Media::Table).take()).await
    }
}
