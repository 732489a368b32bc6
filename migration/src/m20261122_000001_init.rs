//! The whole data contract of DESIGN.md: tenants, the durable inbox, the domain tables, the
//! dead-letter queue, AI memory, the audit trail and operators.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Workspaces {
    Table,
    Id,
    Name,
    CreatedAt,
}

#[derive(DeriveIden)]
enum WhatsappAccounts {
    Table,
    Id,
    WorkspaceId,
    PhoneNumberId,
    DisplayPhoneNumber,
    AppSecret,
    VerifyToken,
    KapsoSecret,
    AgentType,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum WebhookEvents {
    Table,
    Id,
    WorkspaceId,
    AccountId,
    Source,
    EventType,
    DedupKey,
    Payload,
    Headers,
    ReceivedAt,
    Status,
    Attempts,
    ProcessedAt,
    LastError,
    CorrelationId,
}

#[derive(DeriveIden)]
enum Contacts {
    Table,
    Id,
    WorkspaceId,
    Phone,
    UserId,
    Name,
    LeadStatus,
    LeadScore,
    LastActivityAt,
    LastContactAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Conversations {
    Table,
    Id,
    WorkspaceId,
    ContactId,
    Status,
    MessageCount,
    LastMessageAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    Id,
    WorkspaceId,
    ConversationId,
    Direction,
    Wamid,
    MessageType,
    Content,
    Status,
    StatusError,
    Timestamp,
    Metadata,
    EventId,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum WebhookDlq {
    Table,
    Id,
    EventId,
    Error,
    Attempts,
    NextRetryAt,
    ResolutionStatus,
    ResolvedBy,
    ResolvedAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum AgentContexts {
    Table,
    Id,
    ConversationId,
    AgentType,
    Messages,
    TokenCount,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum AgentSessions {
    Table,
    Id,
    ConversationId,
    AgentType,
    Turns,
    PromptTokens,
    CompletionTokens,
    LatencyMsTotal,
    Failures,
    StartedAt,
    LastTurnAt,
    EndedAt,
}

#[derive(DeriveIden)]
enum ConversationStateTransitions {
    Table,
    Id,
    ConversationId,
    FromState,
    ToState,
    Reason,
    CorrelationId,
    At,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    WorkspaceId,
    Name,
    Email,
    Role,
    IsActive,
    CreatedAt,
    UpdatedAt,
    CreatedBy,
    UpdatedBy,
}

fn fk(
    name: &str,
    from: (impl IntoIden, impl IntoIden),
    to: (impl IntoIden, impl IntoIden),
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(name)
        .from(from.0, from.1)
        .to(to.0, to.1)
        .on_delete(ForeignKeyAction::Cascade)
        .take()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Workspaces::Table)
                .col(big_pk_auto(Workspaces::Id))
                .col(string_uniq(Workspaces::Name))
                .col(timestamp_with_time_zone(Workspaces::CreatedAt))
                .take(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(WhatsappAccounts::Table)
                .col(big_pk_auto(WhatsappAccounts::Id))
                .col(big_integer(WhatsappAccounts::WorkspaceId))
                .col(string_uniq(WhatsappAccounts::PhoneNumberId))
                .col(string(WhatsappAccounts::DisplayPhoneNumber))
                .col(string(WhatsappAccounts::AppSecret))
                .col(string(WhatsappAccounts::VerifyToken))
                .col(string_null(WhatsappAccounts::KapsoSecret))
                .col(string_null(WhatsappAccounts::AgentType))
                .col(timestamp_with_time_zone(WhatsappAccounts::CreatedAt))
                .col(timestamp_with_time_zone(WhatsappAccounts::UpdatedAt))
                .foreign_key(&mut fk(
                    "fk_accounts_workspace",
                    (WhatsappAccounts::Table, WhatsappAccounts::WorkspaceId),
                    (Workspaces::Table, Workspaces::Id),
                ))
                .take(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(WebhookEvents::Table)
                .col(big_pk_auto(WebhookEvents::Id))
                .col(big_integer_null(WebhookEvents::WorkspaceId))
                .col(big_integer_null(WebhookEvents::AccountId))
                .col(string(WebhookEvents::Source))
                .col(string_null(WebhookEvents::EventType))
                .col(string_uniq(WebhookEvents::DedupKey))
                .col(text(WebhookEvents::Payload))
                .col(text(WebhookEvents::Headers))
                .col(timestamp_with_time_zone(WebhookEvents::ReceivedAt))
                .col(string(WebhookEvents::Status))
                .col(integer(WebhookEvents::Attempts).default(0))
                .col(timestamp_with_time_zone_null(WebhookEvents::ProcessedAt))
                .col(text_null(WebhookEvents::LastError))
                .col(string(WebhookEvents::CorrelationId))
                .foreign_key(&mut fk(
                    "fk_events_workspace",
                    (WebhookEvents::Table, WebhookEvents::WorkspaceId),
                    (Workspaces::Table, Workspaces::Id),
                ))
                .foreign_key(&mut fk(
                    "fk_events_account",
                    (WebhookEvents::Table, WebhookEvents::AccountId),
                    (WhatsappAccounts::Table, WhatsappAccounts::Id),
                ))
                .take(),
        )
        .await?;
        // Recovery and the backlog gauges read pending events oldest first.
        m.create_index(
            Index::create()
                .name("idx_events_status_received")
                .table(WebhookEvents::Table)
                .col(WebhookEvents::Status)
                .col(WebhookEvents::ReceivedAt)
                .col(WebhookEvents::Id)
                .take(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Contacts::Table)
                .col(big_pk_auto(Contacts::Id))
                .col(big_integer(Contacts::WorkspaceId))
                .col(string(Contacts::Phone))
                .col(string_null(Contacts::UserId))
                .col(string_null(Contacts::Name))
                .col(string(Contacts::LeadStatus).default("prospect"))
                .col(integer(Contacts::LeadScore).default(50))
                .col(timestamp_with_time_zone_null(Contacts::LastActivityAt))
                .col(timestamp_with_time_zone_null(Contacts::LastContactAt))
                .col(timestamp_with_time_zone(Contacts::CreatedAt))
                .col(timestamp_with_time_zone(Contacts::UpdatedAt))
                .foreign_key(&mut fk(
                    "fk_contacts_workspace",
                    (Contacts::Table, Contacts::WorkspaceId),
                    (Workspaces::Table, Workspaces::Id),
                ))
                .take(),
        )
        .await?;
        for (name, cols) in [
            (
                "uq_contacts_workspace_phone",
                vec![Contacts::WorkspaceId, Contacts::Phone],
            ),
            (
                "idx_contacts_last_contact",
                vec![Contacts::WorkspaceId, Contacts::LastContactAt],
            ),
            (
                "idx_contacts_last_activity",
                vec![Contacts::WorkspaceId, Contacts::LastActivityAt],
            ),
        ] {
            let mut idx = Index::create().name(name).table(Contacts::Table).take();
            for c in cols {
                idx.col(c);
            }
            if name.starts_with("uq_") {
                idx.unique();
            }
            m.create_index(idx).await?;
        }

        m.create_table(
            Table::create()
                .table(Conversations::Table)
                .col(big_pk_auto(Conversations::Id))
                .col(big_integer(Conversations::WorkspaceId))
                .col(big_integer_uniq(Conversations::ContactId))
                .col(string(Conversations::Status).default("open"))
                .col(integer(Conversations::MessageCount).default(0))
                .col(timestamp_with_time_zone_null(Conversations::LastMessageAt))
                .col(timestamp_with_time_zone(Conversations::CreatedAt))
                .col(timestamp_with_time_zone(Conversations::UpdatedAt))
                .foreign_key(&mut fk(
                    "fk_conversations_workspace",
                    (Conversations::Table, Conversations::WorkspaceId),
                    (Workspaces::Table, Workspaces::Id),
                ))
                .foreign_key(&mut fk(
                    "fk_conversations_contact",
                    (Conversations::Table, Conversations::ContactId),
                    (Contacts::Table, Contacts::Id),
                ))
                .take(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Messages::Table)
                .col(big_pk_auto(Messages::Id))
                .col(big_integer(Messages::WorkspaceId))
                .col(big_integer(Messages::ConversationId))
                .col(string(Messages::Direction))
                .col(string(Messages::Wamid))
                .col(string(Messages::MessageType))
                .col(text_null(Messages::Content))
                .col(string_null(Messages::Status))
                .col(text_null(Messages::StatusError))
                .col(timestamp_with_time_zone(Messages::Timestamp))
                .col(text(Messages::Metadata))
                .col(big_integer_null(Messages::EventId))
                .col(timestamp_with_time_zone(Messages::CreatedAt))
                .col(timestamp_with_time_zone(Messages::UpdatedAt))
                .foreign_key(&mut fk(
                    "fk_messages_workspace",
                    (Messages::Table, Messages::WorkspaceId),
                    (Workspaces::Table, Workspaces::Id),
                ))
                .foreign_key(&mut fk(
                    "fk_messages_conversation",
                    (Messages::Table, Messages::ConversationId),
                    (Conversations::Table, Conversations::Id),
                ))
                .take(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("uq_messages_workspace_wamid")
                .table(Messages::Table)
                .col(Messages::WorkspaceId)
                .col(Messages::Wamid)
                .unique()
                .take(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_messages_conversation_ts")
                .table(Messages::Table)
                .col(Messages::ConversationId)
                .col(Messages::Timestamp)
                .take(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(WebhookDlq::Table)
                .col(big_pk_auto(WebhookDlq::Id))
                .col(big_integer_uniq(WebhookDlq::EventId))
                .col(text(WebhookDlq::Error))
                .col(integer(WebhookDlq::Attempts).default(0))
                .col(timestamp_with_time_zone_null(WebhookDlq::NextRetryAt))
                .col(string(WebhookDlq::ResolutionStatus).default("pending"))
                .col(string_null(WebhookDlq::ResolvedBy))
                .col(timestamp_with_time_zone_null(WebhookDlq::ResolvedAt))
                .col(timestamp_with_time_zone(WebhookDlq::CreatedAt))
                .col(timestamp_with_time_zone(WebhookDlq::UpdatedAt))
                .foreign_key(&mut fk(
                    "fk_dlq_event",
                    (WebhookDlq::Table, WebhookDlq::EventId),
                    (WebhookEvents::Table, WebhookEvents::Id),
                ))
                .take(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_dlq_status_next_retry")
                .table(WebhookDlq::Table)
                .col(WebhookDlq::ResolutionStatus)
                .col(WebhookDlq::NextRetryAt)
                .take(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(AgentContexts::Table)
                .col(big_pk_auto(AgentContexts::Id))
                .col(big_integer(AgentContexts::ConversationId))
                .col(string(AgentContexts::AgentType))
                .col(text(AgentContexts::Messages))
                .col(integer(AgentContexts::TokenCount).default(0))
                .col(timestamp_with_time_zone(AgentContexts::CreatedAt))
                .col(timestamp_with_time_zone(AgentContexts::UpdatedAt))
                .foreign_key(&mut fk(
                    "fk_agent_contexts_conversation",
                    (AgentContexts::Table, AgentContexts::ConversationId),
                    (Conversations::Table, Conversations::Id),
                ))
                .take(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("uq_agent_contexts_conversation_agent")
                .table(AgentContexts::Table)
                .col(AgentContexts::ConversationId)
                .col(AgentContexts::AgentType)
                .unique()
                .take(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(AgentSessions::Table)
                .col(big_pk_auto(AgentSessions::Id))
                .col(big_integer(AgentSessions::ConversationId))
                .col(string(AgentSessions::AgentType))
                .col(integer(AgentSessions::Turns).default(0))
                .col(big_integer(AgentSessions::PromptTokens).default(0))
                .col(big_integer(AgentSessions::CompletionTokens).default(0))
                .col(big_integer(AgentSessions::LatencyMsTotal).default(0))
                .col(integer(AgentSessions::Failures).default(0))
                .col(timestamp_with_time_zone(AgentSessions::StartedAt))
                .col(timestamp_with_time_zone_null(AgentSessions::LastTurnAt))
                .col(timestamp_with_time_zone_null(AgentSessions::EndedAt))
                .foreign_key(&mut fk(
                    "fk_agent_sessions_conversation",
                    (AgentSessions::Table, AgentSessions::ConversationId),
                    (Conversations::Table, Conversations::Id),
                ))
                .take(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_agent_sessions_conversation")
                .table(AgentSessions::Table)
                .col(AgentSessions::ConversationId)
                .take(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(ConversationStateTransitions::Table)
                .col(big_pk_auto(ConversationStateTransitions::Id))
                .col(big_integer(ConversationStateTransitions::ConversationId))
                .col(string_null(ConversationStateTransitions::FromState))
                .col(string(ConversationStateTransitions::ToState))
                .col(string(ConversationStateTransitions::Reason))
                .col(string_null(ConversationStateTransitions::CorrelationId))
                .col(timestamp_with_time_zone(ConversationStateTransitions::At))
                .foreign_key(&mut fk(
                    "fk_transitions_conversation",
                    (
                        ConversationStateTransitions::Table,
                        ConversationStateTransitions::ConversationId,
                    ),
                    (Conversations::Table, Conversations::Id),
                ))
                .take(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_transitions_conversation")
                .table(ConversationStateTransitions::Table)
                .col(ConversationStateTransitions::ConversationId)
                .col(ConversationStateTransitions::At)
                .take(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Users::Table)
                .col(big_pk_auto(Users::Id))
                .col(big_integer(Users::WorkspaceId))
                .col(string(Users::Name))
                .col(string(Users::Email))
                .col(string(Users::Role))
                .col(boolean(Users::IsActive).default(true))
                .col(timestamp_with_time_zone(Users::CreatedAt))
                .col(timestamp_with_time_zone(Users::UpdatedAt))
                .col(string_null(Users::CreatedBy))
                .col(string_null(Users::UpdatedBy))
                .foreign_key(&mut fk(
                    "fk_users_workspace",
                    (Users::Table, Users::WorkspaceId),
                    (Workspaces::Table, Workspaces::Id),
                ))
                .take(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("uq_users_workspace_email")
                .table(Users::Table)
                .col(Users::WorkspaceId)
                .col(Users::Email)
                .unique()
                .take(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Users::Table.into_iden(),
            ConversationStateTransitions::Table.into_iden(),
            AgentSessions::Table.into_iden(),
            AgentContexts::Table.into_iden(),
            WebhookDlq::Table.into_iden(),
            Messages::Table.into_iden(),
            Conversations::Table.into_iden(),
            Contacts::Table.into_iden(),
            WebhookEvents::Table.into_iden(),
            WhatsappAccounts::Table.into_iden(),
            Workspaces::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(table).take()).await?;
        }
        Ok(())
    }
}
