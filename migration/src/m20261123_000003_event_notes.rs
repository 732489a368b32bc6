//! `webhook_events.notes`: what normalisation said about an event (value-level errors, parts
//! stored but not processed, parts that could not be attributed), one line each.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WebhookEvents {
    Table,
    Notes,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(WebhookEvents::Table)
                .add_column(ColumnDef::new(WebhookEvents::Notes).text().null())
                .take(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(WebhookEvents::Table)
                .drop_column(WebhookEvents::Notes)
                .take(),
        )
        .await
    }
}
