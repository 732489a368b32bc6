//! `messages.author` (`customer`, `agent`, `operator`, `business_app`, `api`) and
//! `author_user_id` (the operator's user): who wrote each message, so the console can tell the
//! agent's lines from a person's and the agent can keep quiet after a person replied. Rows from
//! before are given what can be told of them: inbound ones are the customer's, outbound ones
//! with no webhook event were sent by wahook (`operator` when the outbox says so, else the
//! agent; recorded ones `api`), and the rest came in as echoes of the business app.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Messages {
    Table,
    ConversationId,
    Author,
    AuthorUserId,
    Timestamp,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Messages::Table)
                .add_column(ColumnDef::new(Messages::Author).string().null())
                .take(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Messages::Table)
                .add_column(ColumnDef::new(Messages::AuthorUserId).big_integer().null())
                .take(),
        )
        .await?;
        let db = m.get_connection();
        for sql in [
            "UPDATE messages SET author = 'customer' WHERE direction = 'inbound'",
            "UPDATE messages SET author = 'api' WHERE author IS NULL AND metadata LIKE '{\"recorded_by\"%'",
            "UPDATE messages SET author = 'operator' WHERE author IS NULL AND event_id IS NULL \
             AND metadata LIKE '%\"sender\":\"operator\"%'",
            "UPDATE messages SET author = 'agent' WHERE author IS NULL AND event_id IS NULL",
            "UPDATE messages SET author = 'business_app' WHERE author IS NULL",
        ] {
            db.execute_unprepared(sql).await?;
        }
        // The agent's "did a person reply lately" reads a conversation's newest rows by author.
        m.create_index(
            Index::create()
                .name("messages_conversation_author")
                .table(Messages::Table)
                .col(Messages::ConversationId)
                .col(Messages::Author)
                .col(Messages::Timestamp)
                .take(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("messages_conversation_author")
                .table(Messages::Table)
                .to_owned(),
        )
        .await?;
        for col in [Messages::Author, Messages::AuthorUserId] {
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
