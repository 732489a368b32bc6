//! The template catalog of each WhatsApp Business Account a workspace has (synced from the
//! Graph API, kept current by the template webhooks): one row per (workspace, WABA, name,
//! language).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum MessageTemplates {
    Table,
    Id,
    WorkspaceId,
    WabaId,
    TemplateId,
    Name,
    Language,
    Category,
    Status,
    Quality,
    ParameterFormat,
    Components,
    Reason,
    SyncedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(MessageTemplates::Table)
                .col(big_pk_auto(MessageTemplates::Id))
                .col(big_integer(MessageTemplates::WorkspaceId))
                .col(string(MessageTemplates::WabaId))
                .col(string_null(MessageTemplates::TemplateId))
                .col(string(MessageTemplates::Name))
                .col(string(MessageTemplates::Language))
                .col(string(MessageTemplates::Category))
                .col(string(MessageTemplates::Status))
                .col(string_null(MessageTemplates::Quality))
                .col(string(MessageTemplates::ParameterFormat))
                .col(text(MessageTemplates::Components))
                .col(text_null(MessageTemplates::Reason))
                .col(timestamp_with_time_zone_null(MessageTemplates::SyncedAt))
                .col(timestamp_with_time_zone(MessageTemplates::UpdatedAt))
                .take(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("message_templates_identity")
                .table(MessageTemplates::Table)
                .col(MessageTemplates::WorkspaceId)
                .col(MessageTemplates::WabaId)
                .col(MessageTemplates::Name)
                .col(MessageTemplates::Language)
                .unique()
                .take(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("message_templates_template_id")
                .table(MessageTemplates::Table)
                .col(MessageTemplates::TemplateId)
                .take(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(MessageTemplates::Table).take())
            .await
    }
}
