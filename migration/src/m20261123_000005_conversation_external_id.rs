//! `conversations.external_id`: the platform's own id of the conversation (Kapso's
//! `conversation.id`), so project webhooks that name only it (`workflow.execution.handoff`)
//! find the conversation.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Conversations {
    Table,
    WorkspaceId,
    ExternalId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Conversations::Table)
                .add_column(ColumnDef::new(Conversations::ExternalId).string().null())
                .take(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_conversations_external_id")
                .table(Conversations::Table)
                .col(Conversations::WorkspaceId)
                .col(Conversations::ExternalId)
                .take(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("idx_conversations_external_id")
                .table(Conversations::Table)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Conversations::Table)
                .drop_column(Conversations::ExternalId)
                .take(),
        )
        .await
    }
}
