//! `outbound_messages`: every reply the AI agent decided on, recorded before it is sent
//! (`pending_send`, unique per turn) and after (`sent` with its wamid, `failed` with the Graph
//! error code, `unknown` when the outcome cannot be known, `skipped` with the reason). The
//! turn key makes a second send of the same burst impossible. `agent_sessions` gains the
//! figures the agent reports (skips, breaker trips).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum OutboundMessages {
    Table,
    Id,
    WorkspaceId,
    ConversationId,
    AgentType,
    TurnKey,
    State,
    Body,
    Wamid,
    ErrorCode,
    Error,
    PromptTokens,
    CompletionTokens,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum AgentSessions {
    Table,
    Skips,
    BreakerTrips,
}

#[derive(DeriveIden)]
enum Conversations {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(OutboundMessages::Table)
                .col(big_pk_auto(OutboundMessages::Id))
                .col(big_integer(OutboundMessages::WorkspaceId))
                .col(big_integer(OutboundMessages::ConversationId))
                .col(string(OutboundMessages::AgentType))
                .col(string(OutboundMessages::TurnKey).unique_key())
                .col(string(OutboundMessages::State))
                .col(text_null(OutboundMessages::Body))
                .col(string_null(OutboundMessages::Wamid))
                .col(string_null(OutboundMessages::ErrorCode))
                .col(text_null(OutboundMessages::Error))
                .col(integer(OutboundMessages::PromptTokens).default(0))
                .col(integer(OutboundMessages::CompletionTokens).default(0))
                .col(timestamp_with_time_zone(OutboundMessages::CreatedAt))
                .col(timestamp_with_time_zone(OutboundMessages::UpdatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_outbound_messages_conversation")
                        .from(OutboundMessages::Table, OutboundMessages::ConversationId)
                        .to(Conversations::Table, Conversations::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .take(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_outbound_messages_conversation")
                .table(OutboundMessages::Table)
                .col(OutboundMessages::ConversationId)
                .col(OutboundMessages::CreatedAt)
                .take(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_outbound_messages_state")
                .table(OutboundMessages::Table)
                .col(OutboundMessages::State)
                .take(),
        )
        .await?;
        for col in [AgentSessions::Skips, AgentSessions::BreakerTrips] {
            m.alter_table(
                Table::alter()
                    .table(AgentSessions::Table)
                    .add_column(ColumnDef::new(col).integer().not_null().default(0))
                    .take(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for col in [AgentSessions::Skips, AgentSessions::BreakerTrips] {
            m.alter_table(
                Table::alter()
                    .table(AgentSessions::Table)
                    .drop_column(col)
                    .take(),
            )
            .await?;
        }
        m.drop_table(Table::drop().table(OutboundMessages::Table).take())
            .await
    }
}
