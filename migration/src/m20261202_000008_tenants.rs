//! Tenants sealed: the tenant whose secret verified an event travels with it
//! (`webhook_events.signed_by`), one row per distinct signed body of a tenant
//! (`webhook_events.body_key`, unique), and accounts know their WhatsApp Business Account
//! (`whatsapp_accounts.waba_id`), which routes webhooks that name no phone number.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WebhookEvents {
    Table,
    SignedBy,
    BodyKey,
}

#[derive(DeriveIden)]
enum WhatsappAccounts {
    Table,
    WabaId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // SQLite takes one column per ALTER TABLE.
        m.alter_table(
            Table::alter()
                .table(WebhookEvents::Table)
                .add_column(ColumnDef::new(WebhookEvents::SignedBy).string().null())
                .take(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(WebhookEvents::Table)
                .add_column(ColumnDef::new(WebhookEvents::BodyKey).string().null())
                .take(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("webhook_events_body_key")
                .table(WebhookEvents::Table)
                .col(WebhookEvents::BodyKey)
                .unique()
                .take(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(WhatsappAccounts::Table)
                .add_column(ColumnDef::new(WhatsappAccounts::WabaId).string().null())
                .take(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("whatsapp_accounts_waba_id")
                .table(WhatsappAccounts::Table)
                .col(WhatsappAccounts::WabaId)
                .take(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("whatsapp_accounts_waba_id")
                .table(WhatsappAccounts::Table)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(WhatsappAccounts::Table)
                .drop_column(WhatsappAccounts::WabaId)
                .take(),
        )
        .await?;
        m.drop_index(
            Index::drop()
                .name("webhook_events_body_key")
                .table(WebhookEvents::Table)
                .to_owned(),
        )
        .await?;
        for col in [WebhookEvents::BodyKey, WebhookEvents::SignedBy] {
            m.alter_table(
                Table::alter()
                    .table(WebhookEvents::Table)
                    .drop_column(col)
                    .take(),
            )
            .await?;
        }
        Ok(())
    }
}
