//! Schema migrations, run at start-up and by `wahook migrate`.

pub use sea_orm_migration::prelude::*;

mod m20261122_000001_init;
mod m20261122_000002_message_status_rank;
mod m20261123_000003_event_notes;
mod m20261123_000004_outbound_messages;
mod m20261123_000005_conversation_external_id;
mod m20261123_000006_api_tokens_audit_log;
mod m20261129_000007_cluster;
mod m20261202_000008_tenants;
mod m20261202_000009_amendments;
mod m20261202_000010_marketing_preferences;
mod m20261202_000011_pricing;
mod m20261202_000012_identity_groups;
mod m20261202_000013_agent_turn_outcomes;
mod m20261202_000014_message_templates;
mod m20261202_000015_media;
mod m20261203_000016_authors;
mod m20261203_000017_assignee;
mod m20261203_000018_handoff_notifications;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_init::Migration),
            Box::new(m20261122_000002_message_status_rank::Migration),
            Box::new(m20261123_000003_event_notes::Migration),
            Box::new(m20261123_000004_outbound_messages::Migration),
            Box::new(m20261123_000005_conversation_external_id::Migration),
            Box::new(m20261123_000006_api_tokens_audit_log::Migration),
            Box::new(m20261129_000007_cluster::Migration),
            Box::new(m20261202_000008_tenants::Migration),
            Box::new(m20261202_000009_amendments::Migration),
            Box::new(m20261202_000010_marketing_preferences::Migration),
            Box::new(m20261202_000011_pricing::Migration),
            Box::new(m20261202_000012_identity_groups::Migration),
            Box::new(m20261202_000013_agent_turn_outcomes::Migration),
            Box::new(m20261202_000014_message_templates::Migration),
            Box::new(m20261202_000015_media::Migration),
            Box::new(m20261203_000016_authors::Migration),
            Box::new(m20261203_000017_assignee::Migration),
            Box::new(m20261203_000018_handoff_notifications::Migration),
        ]
    }
}
