//! `conversations.assignee_id`: the user a conversation is assigned to (none: anyone's).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Conversations {
    Table,
    WorkspaceId,
    AssigneeId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Conversations::Table)
                .add_column(
                    ColumnDef::new(Conversations::AssigneeId)
                        .big_integer()
                        .null(),
                )
                .take(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("conversations_assignee")
                .table(Conversations::Table)
                .col(Conversations::WorkspaceId)
                .col(Conversations::AssigneeId)
                .take(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("conversations_assignee")
                .table(Conversations::Table)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Conversations::Table)
                .drop_column(Conversations::AssigneeId)
                .take(),
        )
        .await
    }
}
