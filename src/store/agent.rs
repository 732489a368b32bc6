//! `agent_contexts` (the agent's memory per conversation) and `agent_sessions` (its figures
//! per conversation session: a session ends after 24 hours without a turn).

use chrono::{DateTime, Duration, Utc};
use entity::{agent_contexts, agent_sessions};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    sea_query::{Expr, ExprTrait, OnConflict},
};

/// The stored context (JSON turns) of a conversation for an agent type.
pub async fn load_context(
    db: &impl ConnectionTrait,
    conversation_id: i64,
    agent_type: &str,
) -> Result<Option<String>, DbErr> {
    Ok(agent_contexts::Entity::find()
        .filter(agent_contexts::Column::ConversationId.eq(conversation_id))
        .filter(agent_contexts::Column::AgentType.eq(agent_type))
        .one(db)
        .await?
        .map(|c| c.messages))
}

/// When the agent's context of a conversation was last saved (its last turn that reached the
/// model), if ever.
pub async fn context_saved_at(
    db: &impl ConnectionTrait,
    conversation_id: i64,
    agent_type: &str,
) -> Result<Option<DateTime<Utc>>, DbErr> {
    Ok(agent_contexts::Entity::find()
        .filter(agent_contexts::Column::ConversationId.eq(conversation_id))
        .filter(agent_contexts::Column::AgentType.eq(agent_type))
        .one(db)
        .await?
        .map(|c| c.updated_at))
}

pub async fn save_context(
    db: &impl ConnectionTrait,
    conversation_id: i64,
    agent_type: &str,
    messages: &str,
    token_count: usize,
) -> Result<(), DbErr> {
    let now = Utc::now();
    agent_contexts::Entity::insert(agent_contexts::ActiveModel {
        conversation_id: Set(conversation_id),
        agent_type: Set(agent_type.to_owned()),
        messages: Set(messages.to_owned()),
        token_count: Set(token_count as i32),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    })
    .on_conflict(
        OnConflict::columns([
            agent_contexts::Column::ConversationId,
            agent_contexts::Column::AgentType,
        ])
        .update_columns([
            agent_contexts::Column::Messages,
            agent_contexts::Column::TokenCount,
            agent_contexts::Column::UpdatedAt,
        ])
        .to_owned(),
    )
    .exec(db)
    .await
    .map(|_| ())
}

/// What one turn adds to its session's figures.
#[derive(Debug, Default, Clone)]
pub struct TurnFigures {
    pub replied: bool,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub latency_ms: i64,
    pub failed: bool,
    pub skipped: bool,
    pub breaker_trip: bool,
}

/// Adds a turn to the conversation's current session (a new one after 24 h without a turn).
pub async fn record_turn(
    db: &impl ConnectionTrait,
    conversation_id: i64,
    agent_type: &str,
    f: &TurnFigures,
) -> Result<(), DbErr> {
    use agent_sessions::Column as C;
    let now = Utc::now();
    let current = agent_sessions::Entity::find()
        .filter(C::ConversationId.eq(conversation_id))
        .filter(C::AgentType.eq(agent_type))
        .filter(C::EndedAt.is_null())
        .order_by_desc(C::Id)
        .one(db)
        .await?;
    let id = match current {
        Some(s) if s.last_turn_at.unwrap_or(s.started_at) > now - Duration::hours(24) => s.id,
        stale => {
            if let Some(s) = stale {
                agent_sessions::Entity::update_many()
                    .col_expr(C::EndedAt, s.last_turn_at.unwrap_or(s.started_at).into())
                    .filter(C::Id.eq(s.id))
                    .exec(db)
                    .await?;
            }
            agent_sessions::Entity::insert(agent_sessions::ActiveModel {
                conversation_id: Set(conversation_id),
                agent_type: Set(agent_type.to_owned()),
                started_at: Set(now),
                ..Default::default()
            })
            .exec(db)
            .await?
            .last_insert_id
        }
    };
    let add = |col: C, n: i64| (col, Expr::col(col).add(n));
    let mut update = agent_sessions::Entity::update_many()
        .col_expr(C::LastTurnAt, now.into())
        .filter(C::Id.eq(id));
    for (col, expr) in [
        add(C::Turns, f.replied as i64),
        add(C::PromptTokens, f.prompt_tokens),
        add(C::CompletionTokens, f.completion_tokens),
        add(C::LatencyMsTotal, f.latency_ms),
        add(C::Failures, f.failed as i64),
        add(C::Skips, f.skipped as i64),
        add(C::BreakerTrips, f.breaker_trip as i64),
    ] {
        update = update.col_expr(col, expr);
    }
    update.exec(db).await.map(|_| ())
}

/// The agent's figures in one conversation, as the console's agent panel shows them.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AgentPanel {
    pub agent: String,
    pub turns: i32,
    pub skips: i32,
    pub failures: i32,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// Mean provider latency of its turns, in milliseconds.
    pub mean_latency_ms: Option<i64>,
    pub last_turn_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Its newest failed turn's reason, if any.
    pub last_error: Option<String>,
}

/// Every agent's figures in a conversation.
pub async fn panels(
    db: &impl ConnectionTrait,
    conversation_id: i64,
) -> Result<Vec<AgentPanel>, DbErr> {
    use sea_orm::QueryOrder;
    let sessions = agent_sessions::Entity::find()
        .filter(agent_sessions::Column::ConversationId.eq(conversation_id))
        .all(db)
        .await?;
    let mut out = Vec::new();
    for s in sessions {
        let last_error = entity::outbound_messages::Entity::find()
            .filter(entity::outbound_messages::Column::ConversationId.eq(conversation_id))
            .filter(entity::outbound_messages::Column::AgentType.eq(s.agent_type.clone()))
            .filter(entity::outbound_messages::Column::State.eq("failed"))
            .order_by_desc(entity::outbound_messages::Column::Id)
            .one(db)
            .await?
            .and_then(|r| r.error.or(r.error_code));
        let answered = i64::from(std::cmp::Ord::max(s.turns - s.skips, 0));
        out.push(AgentPanel {
            agent: s.agent_type,
            turns: s.turns,
            skips: s.skips,
            failures: s.failures,
            prompt_tokens: s.prompt_tokens,
            completion_tokens: s.completion_tokens,
            mean_latency_ms: (answered > 0).then(|| s.latency_ms_total / answered),
            last_turn_at: s.last_turn_at,
            last_error,
        });
    }
    Ok(out)
}
