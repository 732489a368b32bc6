//! What the model server said about each turn: `finish_reason` of a reply (`stop`, `length`,
//! …) and the HTTP status of a failed call (`provider_status`; its code goes in the existing
//! `error_code`), so a turn that failed shows why without reading logs.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum OutboundMessages {
    Table,
    FinishReason,
    ProviderStatus,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(OutboundMessages::Table)
                .add_column(string_null(OutboundMessages::FinishReason))
                .take(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(OutboundMessages::Table)
                .add_column(integer_null(OutboundMessages::ProviderStatus))
                .take(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for col in [
            OutboundMessages::ProviderStatus,
            OutboundMessages::FinishReason,
        ] {
            m.alter_table(
                Table::alter()
                    .table(OutboundMessages::Table)
                    .drop_column(col)
                    .take(),
            )
            .await?;
        }
        Ok(())
    }
}
