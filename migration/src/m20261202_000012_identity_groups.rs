//! Groups and identity. `messages.sender`: who wrote a group message (phone, business-scoped
//! user id, name, as JSON), since a group's conversation is with the group, not a person.
//! `contact_identity_changes`: an audit row per number change, user-id change, link of a
//! phone to a user id seen alone before, merge of two contacts found to be one person, and
//! identity-key change (`customer_identity_changed`), which also stamps
//! `contacts.identity_changed_at`. Contacts are looked up by user id as well as by key, so
//! that column gets an index.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Messages {
    Table,
    Sender,
}

#[derive(DeriveIden)]
enum Contacts {
    Table,
    WorkspaceId,
    UserId,
    IdentityChangedAt,
}

#[derive(DeriveIden)]
enum ContactIdentityChanges {
    Table,
    Id,
    WorkspaceId,
    ContactId,
    Kind,
    FromKey,
    ToKey,
    UserId,
    MergedContactId,
    EventId,
    At,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Messages::Table)
                .add_column(text_null(Messages::Sender))
                .take(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Contacts::Table)
                .add_column(timestamp_with_time_zone_null(Contacts::IdentityChangedAt))
                .take(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_contacts_workspace_user_id")
                .table(Contacts::Table)
                .col(Contacts::WorkspaceId)
                .col(Contacts::UserId)
                .take(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(ContactIdentityChanges::Table)
                .col(big_pk_auto(ContactIdentityChanges::Id))
                .col(big_integer(ContactIdentityChanges::WorkspaceId))
                .col(big_integer(ContactIdentityChanges::ContactId))
                .col(string(ContactIdentityChanges::Kind))
                .col(string_null(ContactIdentityChanges::FromKey))
                .col(string_null(ContactIdentityChanges::ToKey))
                .col(string_null(ContactIdentityChanges::UserId))
                .col(big_integer_null(ContactIdentityChanges::MergedContactId))
                .col(big_integer_null(ContactIdentityChanges::EventId))
                .col(timestamp_with_time_zone(ContactIdentityChanges::At))
                .col(timestamp_with_time_zone(ContactIdentityChanges::CreatedAt))
                .take(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_identity_changes_contact")
                .table(ContactIdentityChanges::Table)
                .col(ContactIdentityChanges::ContactId)
                .take(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(ContactIdentityChanges::Table).take())
            .await?;
        m.drop_index(
            Index::drop()
                .name("idx_contacts_workspace_user_id")
                .table(Contacts::Table)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Contacts::Table)
                .drop_column(Contacts::IdentityChangedAt)
                .take(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Messages::Table)
                .drop_column(Messages::Sender)
                .take(),
        )
        .await?;
        Ok(())
    }
}
