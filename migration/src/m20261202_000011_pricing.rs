//! `statuses[].pricing` kept on the outbound message it is about (`pricing_model`: CBP or PMP,
//! `pricing_category`: marketing, utility, authentication, service, …, `pricing_type`: regular,
//! free_customer_service, free_entry_point), for the costs per category and day.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Messages {
    Table,
    PricingModel,
    PricingCategory,
    PricingType,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for col in [
            Messages::PricingModel,
            Messages::PricingCategory,
            Messages::PricingType,
        ] {
            m.alter_table(
                Table::alter()
                    .table(Messages::Table)
                    .add_column(string_null(col))
                    .take(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for col in [
            Messages::PricingType,
            Messages::PricingCategory,
            Messages::PricingModel,
        ] {
            m.alter_table(
                Table::alter()
                    .table(Messages::Table)
                    .drop_column(col)
                    .take(),
            )
            .await?;
        }
        Ok(())
    }
}
