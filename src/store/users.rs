//! `users`: the people who operate a workspace (email unique per workspace, kept lower-case),
//! and `audit_log`, where every change a person makes is written with who and when.

use chrono::Utc;
use entity::{audit_log, users};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, SqlErr, sea_query::ExprTrait,
};

/// What a user may do: a viewer reads; an operator also acts on events, the DLQ and
/// conversations; an admin also manages accounts, users and tokens.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "viewer" => Role::Viewer,
            "operator" => Role::Operator,
            "admin" => Role::Admin,
            _ => return None,
        })
    }
}

/// Why a user change was refused.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0}")]
    Invalid(String),
    #[error("a user with the email {0} exists in this workspace")]
    Conflict(String),
    #[error("no such user")]
    NotFound,
    #[error(transparent)]
    Db(#[from] DbErr),
}

/// A checked, lower-cased email.
pub fn normalize_email(email: &str) -> Result<String, UserError> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 254
        && !email.contains(char::is_whitespace)
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if valid {
        Ok(email)
    } else {
        Err(UserError::Invalid(format!(
            "`{email}` is not an email address"
        )))
    }
}

fn check_name(name: &str) -> Result<String, UserError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(UserError::Invalid(
            "name must have 1 to 200 characters".into(),
        ));
    }
    Ok(name.to_owned())
}

fn conflict_or(e: DbErr, email: &str) -> UserError {
    match e.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => UserError::Conflict(email.to_owned()),
        _ => UserError::Db(e),
    }
}

pub struct NewUser<'a> {
    pub workspace_id: i64,
    pub name: &'a str,
    pub email: &'a str,
    pub role: Role,
    pub is_active: bool,
}

pub async fn create(
    db: &impl ConnectionTrait,
    new: NewUser<'_>,
    actor: &str,
) -> Result<users::Model, UserError> {
    let (name, email) = (check_name(new.name)?, normalize_email(new.email)?);
    let now = Utc::now();
    let user = users::Entity::insert(users::ActiveModel {
        workspace_id: Set(new.workspace_id),
        name: Set(name),
        email: Set(email.clone()),
        role: Set(new.role.as_str().into()),
        is_active: Set(new.is_active),
        created_at: Set(now),
        updated_at: Set(now),
        created_by: Set(Some(actor.to_owned())),
        updated_by: Set(Some(actor.to_owned())),
        ..Default::default()
    })
    .exec_with_returning(db)
    .await
    .map_err(|e| conflict_or(e, &email))?;
    audit(
        db,
        new.workspace_id,
        actor,
        "user.create",
        &format!("user:{}", user.id),
        None,
        Some(&summary(&user)),
    )
    .await?;
    Ok(user)
}

pub async fn get(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    id: i64,
) -> Result<users::Model, UserError> {
    users::Entity::find_by_id(id)
        .filter(users::Column::WorkspaceId.eq(workspace_id))
        .one(db)
        .await?
        .ok_or(UserError::NotFound)
}

/// A page of a workspace's users by id, after the cursor, optionally searched by name or email.
pub async fn list(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    search: Option<&str>,
    after: Option<i64>,
    limit: u64,
) -> Result<Vec<users::Model>, DbErr> {
    let mut q = users::Entity::find().filter(users::Column::WorkspaceId.eq(workspace_id));
    if let Some(s) = search.map(str::trim).filter(|s| !s.is_empty()) {
        let like = format!("%{}%", s.to_lowercase());
        q = q.filter(
            Condition::any()
                .add(
                    sea_orm::sea_query::Expr::expr(sea_orm::sea_query::Func::lower(
                        sea_orm::sea_query::Expr::col(users::Column::Name),
                    ))
                    .like(like.clone()),
                )
                .add(users::Column::Email.like(like)),
        );
    }
    if let Some(after) = after {
        q = q.filter(users::Column::Id.gt(after));
    }
    q.order_by_asc(users::Column::Id).limit(limit).all(db).await
}

#[derive(Debug, Default)]
pub struct UserPatch {
    pub name: Option<String>,
    pub email: Option<String>,
    pub role: Option<Role>,
    pub is_active: Option<bool>,
}

pub async fn update(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    id: i64,
    patch: UserPatch,
    actor: &str,
) -> Result<users::Model, UserError> {
    let before = get(db, workspace_id, id).await?;
    let mut row: users::ActiveModel = before.clone().into();
    if let Some(name) = &patch.name {
        row.name = Set(check_name(name)?);
    }
    let email = match &patch.email {
        Some(email) => {
            let email = normalize_email(email)?;
            row.email = Set(email.clone());
            email
        }
        None => before.email.clone(),
    };
    if let Some(role) = patch.role {
        row.role = Set(role.as_str().into());
    }
    if let Some(active) = patch.is_active {
        row.is_active = Set(active);
    }
    row.updated_at = Set(Utc::now());
    row.updated_by = Set(Some(actor.to_owned()));
    let after = users::Entity::update(row)
        .exec(db)
        .await
        .map_err(|e| conflict_or(e, &email))?;
    let action = if patch.is_active == Some(false) {
        "user.deactivate"
    } else {
        "user.update"
    };
    audit(
        db,
        workspace_id,
        actor,
        action,
        &format!("user:{id}"),
        Some(&summary(&before)),
        Some(&summary(&after)),
    )
    .await?;
    Ok(after)
}

fn summary(u: &users::Model) -> String {
    serde_json::json!({"name": u.name, "email": u.email, "role": u.role, "is_active": u.is_active})
        .to_string()
}

/// Writes who changed what.
pub async fn audit(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    actor: &str,
    action: &str,
    target: &str,
    before: Option<&str>,
    after: Option<&str>,
) -> Result<(), DbErr> {
    audit_log::Entity::insert(audit_log::ActiveModel {
        workspace_id: Set(workspace_id),
        actor: Set(actor.to_owned()),
        action: Set(action.to_owned()),
        target: Set(target.to_owned()),
        before: Set(before.map(str::to_owned)),
        after: Set(after.map(str::to_owned)),
        at: Set(Utc::now()),
        ..Default::default()
    })
    .exec(db)
    .await
    .map(|_| ())
}
