//! `api_tokens`: random operator tokens (32 bytes), shown once and stored only as their
//! SHA-256; revocable; only an active user's unrevoked tokens authenticate.

use chrono::Utc;
use entity::{api_tokens, users};
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter};
use sha2::{Digest, Sha256};

use super::users::{Role, audit};

/// Who a token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub token_id: i64,
    pub user_id: i64,
    pub workspace_id: i64,
    pub role: Role,
    /// `name <email>`, as the audit log names the actor.
    pub actor: String,
}

pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Creates a token for a user of the workspace; the plain token is returned once.
pub async fn create(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    user_id: i64,
    name: &str,
    actor: &str,
) -> Result<(api_tokens::Model, String), DbErr> {
    let plain = format!("whk_{}", hex::encode(rand::random::<[u8; 32]>()));
    let row = api_tokens::Entity::insert(api_tokens::ActiveModel {
        workspace_id: Set(workspace_id),
        user_id: Set(user_id),
        name: Set(name.to_owned()),
        token_hash: Set(hash(&plain)),
        created_at: Set(Utc::now()),
        ..Default::default()
    })
    .exec_with_returning(db)
    .await?;
    audit(
        db,
        workspace_id,
        actor,
        "token.create",
        &format!("token:{}", row.id),
        None,
        Some(&format!("user:{user_id} {name}")),
    )
    .await?;
    Ok((row, plain))
}

/// A user's tokens (never the secret): live ones first, newest first.
pub async fn of_user(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    user_id: i64,
) -> Result<Vec<api_tokens::Model>, DbErr> {
    use sea_orm::{QueryOrder, QuerySelect};
    let mut rows = api_tokens::Entity::find()
        .filter(api_tokens::Column::WorkspaceId.eq(workspace_id))
        .filter(api_tokens::Column::UserId.eq(user_id))
        .order_by_desc(api_tokens::Column::Id)
        .limit(200)
        .all(db)
        .await?;
    rows.sort_by_key(|r| r.revoked_at.is_some());
    Ok(rows)
}

/// Revokes a token of the workspace; false when there is none.
pub async fn revoke(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    id: i64,
    actor: &str,
) -> Result<bool, DbErr> {
    let r = api_tokens::Entity::update_many()
        .col_expr(api_tokens::Column::RevokedAt, Utc::now().into())
        .filter(api_tokens::Column::Id.eq(id))
        .filter(api_tokens::Column::WorkspaceId.eq(workspace_id))
        .filter(api_tokens::Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    if r.rows_affected > 0 {
        audit(
            db,
            workspace_id,
            actor,
            "token.revoke",
            &format!("token:{id}"),
            None,
            None,
        )
        .await?;
    }
    Ok(r.rows_affected > 0)
}

/// The principal of a token hash, if the token is unrevoked and its user active.
pub async fn principal(
    db: &impl ConnectionTrait,
    token_hash: &str,
) -> Result<Option<Principal>, DbErr> {
    let Some(token) = api_tokens::Entity::find()
        .filter(api_tokens::Column::TokenHash.eq(token_hash))
        .filter(api_tokens::Column::RevokedAt.is_null())
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let user = users::Entity::find_by_id(token.user_id)
        .filter(users::Column::IsActive.eq(true))
        .one(db)
        .await?;
    Ok(user.and_then(|u| {
        Some(Principal {
            token_id: token.id,
            user_id: u.id,
            workspace_id: u.workspace_id,
            role: Role::parse(&u.role)?,
            actor: format!("{} <{}>", u.name, u.email),
        })
    }))
}

/// Records when a token was last used.
pub async fn touch(db: &impl ConnectionTrait, token_id: i64) -> Result<(), DbErr> {
    api_tokens::Entity::update_many()
        .col_expr(api_tokens::Column::LastUsedAt, Utc::now().into())
        .filter(api_tokens::Column::Id.eq(token_id))
        .exec(db)
        .await
        .map(|_| ())
}
