//! `handoff_notifications`: a conversation handed to a person is announced to the account's
//! `notify_url` by a durable job (one row per hand-off, made in the store transaction that
//! moves the conversation to `human`): `pending` → `delivered` | `failed` (with the reason) |
//! `skipped` (no `notify_url` for the conversation's account).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum HandoffNotifications {
    Table,
    Id,
    WorkspaceId,
    ConversationId,
    Reason,
    CorrelationId,
    Status,
    Url,
    Attempts,
    NextAttemptAt,
    LeaseUntil,
    LastStatus,
    Error,
    CreatedAt,
    UpdatedAt,
    DeliveredAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(HandoffNotifications::Table)
                .col(big_pk_auto(HandoffNotifications::Id))
                .col(big_integer(HandoffNotifications::WorkspaceId))
                .col(big_integer(HandoffNotifications::ConversationId))
                .col(string(HandoffNotifications::Reason))
                .col(string(HandoffNotifications::CorrelationId))
                .col(string(HandoffNotifications::Status))
                .col(text_null(HandoffNotifications::Url))
                .col(integer(HandoffNotifications::Attempts).default(0))
                .col(timestamp_with_time_zone(
                    HandoffNotifications::NextAttemptAt,
                ))
                .col(timestamp_with_time_zone_null(
                    HandoffNotifications::LeaseUntil,
                ))
                .col(integer_null(HandoffNotifications::LastStatus))
                .col(text_null(HandoffNotifications::Error))
                .col(timestamp_with_time_zone(HandoffNotifications::CreatedAt))
                .col(timestamp_with_time_zone(HandoffNotifications::UpdatedAt))
                .col(timestamp_with_time_zone_null(
                    HandoffNotifications::DeliveredAt,
                ))
                .take(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("handoff_notifications_due")
                .table(HandoffNotifications::Table)
                .col(HandoffNotifications::Status)
                .col(HandoffNotifications::NextAttemptAt)
                .take(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("handoff_notifications_conversation")
                .table(HandoffNotifications::Table)
                .col(HandoffNotifications::ConversationId)
                .take(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(HandoffNotifications::Table).take())
            .await
    }
}
