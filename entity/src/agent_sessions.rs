//! `agent_sessions`: AI-agent figures per session.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "agent_sessions")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub conversation_id: i64,
    pub agent_type: String,
    pub turns: i32,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub latency_ms_total: i64,
    pub failures: i32,
    pub started_at: DateTimeUtc,
    pub last_turn_at: Option<DateTimeUtc>,
    pub ended_at: Option<DateTimeUtc>,
    pub skips: i32,
    pub breaker_trips: i32,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
