//! sea-orm entities for every table of the data contract (DESIGN.md).

pub mod agent_contexts;
pub mod agent_sessions;
pub mod api_tokens;
pub mod audit_log;
pub mod contacts;
pub mod conversation_state_transitions;
pub mod conversations;
pub mod handoff_notifications;
pub mod media;
pub mod message_templates;
pub mod messages;
pub mod outbound_messages;
pub mod users;
pub mod webhook_dlq;
pub mod webhook_events;
pub mod whatsapp_accounts;
pub mod workspaces;

pub mod prelude {
    pub use super::agent_contexts::Entity as AgentContexts;
    pub use super::agent_sessions::Entity as AgentSessions;
    pub use super::api_tokens::Entity as ApiTokens;
    pub use super::audit_log::Entity as AuditLog;
    pub use super::contacts::Entity as Contacts;
    pub use super::conversation_state_transitions::Entity as ConversationStateTransitions;
    pub use super::conversations::Entity as Conversations;
    pub use super::handoff_notifications::Entity as HandoffNotifications;
    pub use super::media::Entity as Media;
    pub use super::message_templates::Entity as MessageTemplates;
    pub use super::messages::Entity as Messages;
    pub use super::outbound_messages::Entity as OutboundMessages;
    pub use super::users::Entity as Users;
    pub use super::webhook_dlq::Entity as WebhookDlq;
    pub use super::webhook_events::Entity as WebhookEvents;
    pub use super::whatsapp_accounts::Entity as WhatsappAccounts;
    pub use super::workspaces::Entity as Workspaces;
}
