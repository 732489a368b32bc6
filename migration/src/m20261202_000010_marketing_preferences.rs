//! `user_preferences` webhooks: a contact who asked to stop marketing messages is marked
//! (`marketing_opt_out`, since `marketing_opt_out_at`); `resume` clears it. The newest preference
//! wins, whatever order the webhooks come in (`marketing_preference_at`).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Contacts {
    Table,
    MarketingOptOut,
    MarketingOptOutAt,
    MarketingPreferenceAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Contacts::Table)
                .add_column(boolean(Contacts::MarketingOptOut).default(false))
                .take(),
        )
        .await?;
        for col in [Contacts::MarketingOptOutAt, Contacts::MarketingPreferenceAt] {
            m.alter_table(
                Table::alter()
                    .table(Contacts::Table)
                    .add_column(timestamp_with_time_zone_null(col))
                    .take(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for col in [
            Contacts::MarketingPreferenceAt,
            Contacts::MarketingOptOutAt,
            Contacts::MarketingOptOut,
        ] {
            m.alter_table(
                Table::alter()
                    .table(Contacts::Table)
                    .drop_column(col)
                    .take(),
            )
            .await?;
        }
        Ok(())
    }
}
