//! Cluster mode (`cluster.mode = "rabbitmq"`): the live nodes and which node consumes which
//! partition queue. Both tables stay empty on a single node.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ClusterNodes {
    Table,
    QueuePrefix,
    NodeId,
    SeenAt,
}

#[derive(DeriveIden)]
enum ClusterLeases {
    Table,
    QueuePrefix,
    Partition,
    NodeId,
    ExpiresAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(ClusterNodes::Table)
                .col(
                    ColumnDef::new(ClusterNodes::QueuePrefix)
                        .string()
                        .not_null(),
                )
                .col(ColumnDef::new(ClusterNodes::NodeId).string().not_null())
                .col(
                    ColumnDef::new(ClusterNodes::SeenAt)
                        .timestamp_with_time_zone()
                        .not_null(),
                )
                .primary_key(
                    Index::create()
                        .col(ClusterNodes::QueuePrefix)
                        .col(ClusterNodes::NodeId),
                )
                .take(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(ClusterLeases::Table)
                .col(
                    ColumnDef::new(ClusterLeases::QueuePrefix)
                        .string()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(ClusterLeases::Partition)
                        .integer()
                        .not_null(),
                )
                .col(ColumnDef::new(ClusterLeases::NodeId).string().not_null())
                .col(
                    ColumnDef::new(ClusterLeases::ExpiresAt)
                        .timestamp_with_time_zone()
                        .not_null(),
                )
                .primary_key(
                    Index::create()
                        .col(ClusterLeases::QueuePrefix)
                        .col(ClusterLeases::Partition),
                )
                .take(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(ClusterLeases::Table).to_owned())
            .await?;
        m.drop_table(Table::drop().table(ClusterNodes::Table).to_owned())
            .await
    }
}
