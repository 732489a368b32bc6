//! `outbound_messages`: the agent's replies, recorded durably before the send (`pending_send`,
//! unique per turn, so a burst can never be sent twice) and after it.

use chrono::{DateTime, Utc};
use entity::outbound_messages;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter,
    sea_query::OnConflict,
};

/// A reply about to be sent or a turn that ends without one.
pub struct NewOutbound<'a> {
    pub workspace_id: i64,
    pub conversation_id: i64,
    pub agent_type: &'a str,
    pub turn_key: &'a str,
    pub state: &'a str,
    pub body: Option<&'a str>,
    pub error: Option<&'a str>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

/// Has this turn been recorded (answered, tried, or skipped) already?
pub async fn exists(db: &impl ConnectionTrait, turn_key: &str) -> Result<bool, DbErr> {
    Ok(outbound_messages::Entity::find()
        .filter(outbound_messages::Column::TurnKey.eq(turn_key))
        .one(db)
        .await?
        .is_some())
}

/// Records the turn; `None` when its key is already recorded (then nothing may be sent).
pub async fn reserve(
    db: &impl ConnectionTrait,
    row: NewOutbound<'_>,
) -> Result<Option<i64>, DbErr> {
    let now = Utc::now();
    let result = outbound_messages::Entity::insert(outbound_messages::ActiveModel {
        workspace_id: Set(row.workspace_id),
        conversation_id: Set(row.conversation_id),
        agent_type: Set(row.agent_type.to_owned()),
        turn_key: Set(row.turn_key.to_owned()),
        state: Set(row.state.to_owned()),
        body: Set(row.body.map(str::to_owned)),
        error: Set(row.error.map(str::to_owned)),
        prompt_tokens: Set(row.prompt_tokens as i32),
        completion_tokens: Set(row.completion_tokens as i32),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    })
    .on_conflict(
        OnConflict::column(outbound_messages::Column::TurnKey)
            .do_nothing()
            .to_owned(),
    )
    .exec(db)
    .await;
    match result {
        Ok(r) => Ok(Some(r.last_insert_id)),
        Err(DbErr::RecordNotInserted) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The send's outcome: `sent` with its wamid, `failed` with the Graph error code, `unknown`.
pub async fn finish(
    db: &impl ConnectionTrait,
    id: i64,
    state: &str,
    wamid: Option<&str>,
    error_code: Option<&str>,
    error: Option<&str>,
) -> Result<(), DbErr> {
    outbound_messages::Entity::update_many()
        .col_expr(outbound_messages::Column::State, state.into())
        .col_expr(
            outbound_messages::Column::Wamid,
            wamid.map(str::to_owned).into(),
        )
        .col_expr(
            outbound_messages::Column::ErrorCode,
            error_code.map(str::to_owned).into(),
        )
        .col_expr(
            outbound_messages::Column::Error,
            error.map(str::to_owned).into(),
        )
        .col_expr(outbound_messages::Column::UpdatedAt, Utc::now().into())
        .filter(outbound_messages::Column::Id.eq(id))
        .exec(db)
        .await
        .map(|_| ())
}

/// After a crash: a reply still `pending_send` may or may not have left. It becomes
/// `unknown` (for an operator to look at), and is never sent again.
pub async fn settle_interrupted(
    db: &impl ConnectionTrait,
    before: DateTime<Utc>,
) -> Result<u64, DbErr> {
    let r = outbound_messages::Entity::update_many()
        .col_expr(outbound_messages::Column::State, "unknown".into())
        .col_expr(
            outbound_messages::Column::Error,
            "interrupted between recording and the send's outcome (process stopped); not resent"
                .into(),
        )
        .col_expr(outbound_messages::Column::UpdatedAt, Utc::now().into())
        .filter(outbound_messages::Column::State.eq("pending_send"))
        .filter(outbound_messages::Column::CreatedAt.lt(before))
        .exec(db)
        .await?;
    Ok(r.rows_affected)
}
