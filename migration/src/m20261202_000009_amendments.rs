//! Reactions, edits and revokes change the message they point at instead of being messages of
//! their own. `message_reactions`: one row per message and side (the customer's, the
//! business's), the latest reaction winning, a removal kept as a NULL emoji (so an older
//! reaction delivered late cannot bring it back). `message_amendments`: every edit and revoke,
//! keyed by its own wamid (a redelivery adds nothing), waiting for its message if that has not
//! arrived yet. Both keep the conversation they came in: an amendment changes a message of its
//! own conversation only. `messages` gains `edited_at` and `revoked_at`.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum MessageReactions {
    Table,
    WorkspaceId,
    ConversationId,
    Wamid,
    Side,
    Emoji,
    ReactionWamid,
    ReactedAt,
    EventId,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum MessageAmendments {
    Table,
    Id,
    WorkspaceId,
    ConversationId,
    Wamid,
    AmendmentWamid,
    Kind,
    Content,
    Metadata,
    AmendedAt,
    EventId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    EditedAt,
    RevokedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(MessageReactions::Table)
                .col(big_integer(MessageReactions::WorkspaceId))
                .col(big_integer(MessageReactions::ConversationId))
                .col(string(MessageReactions::Wamid))
                .col(string(MessageReactions::Side))
                .col(string_null(MessageReactions::Emoji))
                .col(string(MessageReactions::ReactionWamid))
                .col(timestamp_with_time_zone(MessageReactions::ReactedAt))
                .col(big_integer(MessageReactions::EventId))
                .col(timestamp_with_time_zone(MessageReactions::UpdatedAt))
                .primary_key(
                    Index::create()
                        .col(MessageReactions::WorkspaceId)
                        .col(MessageReactions::Wamid)
                        .col(MessageReactions::Side),
                )
                .take(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(MessageAmendments::Table)
                .col(big_pk_auto(MessageAmendments::Id))
                .col(big_integer(MessageAmendments::WorkspaceId))
                .col(big_integer(MessageAmendments::ConversationId))
                .col(string(MessageAmendments::Wamid))
                .col(string(MessageAmendments::AmendmentWamid))
                .col(string(MessageAmendments::Kind))
                .col(text_null(MessageAmendments::Content))
                .col(text(MessageAmendments::Metadata))
                .col(timestamp_with_time_zone(MessageAmendments::AmendedAt))
                .col(big_integer(MessageAmendments::EventId))
                .col(timestamp_with_time_zone(MessageAmendments::CreatedAt))
                .take(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("uq_message_amendments_wamid")
                .table(MessageAmendments::Table)
                .col(MessageAmendments::WorkspaceId)
                .col(MessageAmendments::AmendmentWamid)
                .unique()
                .take(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_message_amendments_target")
                .table(MessageAmendments::Table)
                .col(MessageAmendments::WorkspaceId)
                .col(MessageAmendments::Wamid)
                .take(),
        )
        .await?;
        for col in [Messages::EditedAt, Messages::RevokedAt] {
            m.alter_table(
                Table::alter()
                    .table(Messages::Table)
                    .add_column(timestamp_with_time_zone_null(col))
                    .take(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for col in [Messages::RevokedAt, Messages::EditedAt] {
            m.alter_table(
                Table::alter()
                    .table(Messages::Table)
                    .drop_column(col)
                    .take(),
            )
            .await?;
        }
        m.drop_table(Table::drop().table(MessageAmendments::Table).take())
            .await?;
        m.drop_table(Table::drop().table(MessageReactions::Table).take())
            .await
    }
}
