//! Workspaces and WhatsApp accounts: the start-up upsert of `[[accounts]]` and the in-memory
//! directory the intake looks secrets up in.

use std::collections::HashMap;

use chrono::Utc;
use entity::{whatsapp_accounts, workspaces};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter,
    sea_query::OnConflict,
};

use crate::config::AccountConfig;

/// What the intake needs to know of an account.
#[derive(Debug, Clone)]
pub struct Account {
    pub id: i64,
    pub workspace_id: i64,
    pub phone_number_id: String,
    pub app_secret: String,
    pub verify_token: String,
    pub kapso_secret: Option<String>,
    pub agent_type: Option<String>,
}

impl From<whatsapp_accounts::Model> for Account {
    fn from(m: whatsapp_accounts::Model) -> Self {
        Self {
            id: m.id,
            workspace_id: m.workspace_id,
            phone_number_id: m.phone_number_id,
            app_secret: m.app_secret,
            verify_token: m.verify_token,
            kapso_secret: m.kapso_secret,
            agent_type: m.agent_type,
        }
    }
}

/// Accounts by `phone_number_id`, read once and swapped whole when accounts change.
#[derive(Debug, Default, Clone)]
pub struct Directory {
    by_phone_number_id: HashMap<String, Account>,
}

impl Directory {
    pub fn new(accounts: impl IntoIterator<Item = Account>) -> Self {
        Self {
            by_phone_number_id: accounts
                .into_iter()
                .map(|a| (a.phone_number_id.clone(), a))
                .collect(),
        }
    }

    pub fn get(&self, phone_number_id: &str) -> Option<&Account> {
        self.by_phone_number_id.get(phone_number_id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Account> {
        self.by_phone_number_id.values()
    }

    pub fn len(&self) -> usize {
        self.by_phone_number_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_phone_number_id.is_empty()
    }
}

/// Get-or-create a workspace by name; safe to race (unique name, insert-or-ignore, then read).
pub async fn ensure_workspace(db: &impl ConnectionTrait, name: &str) -> Result<i64, DbErr> {
    workspaces::Entity::insert(workspaces::ActiveModel {
        name: Set(name.to_string()),
        created_at: Set(Utc::now()),
        ..Default::default()
    })
    .on_conflict_do_nothing_on([workspaces::Column::Name])
    .exec(db)
    .await?;
    workspaces::Entity::find()
        .filter(workspaces::Column::Name.eq(name))
        .one(db)
        .await?
        .map(|w| w.id)
        .ok_or_else(|| DbErr::RecordNotFound(format!("workspace {name}")))
}

/// Upserts the configured accounts by `phone_number_id`: running it twice leaves one row each.
pub async fn upsert_from_config(
    db: &impl ConnectionTrait,
    accounts: &[AccountConfig],
) -> Result<(), DbErr> {
    for a in accounts {
        let workspace_id = ensure_workspace(db, &a.workspace).await?;
        let app_secret = a.resolve_app_secret().map_err(DbErr::Custom)?;
        let now = Utc::now();
        whatsapp_accounts::Entity::insert(whatsapp_accounts::ActiveModel {
            workspace_id: Set(workspace_id),
            phone_number_id: Set(a.phone_number_id.clone()),
            display_phone_number: Set(a.display_phone_number.clone().unwrap_or_default()),
            app_secret: Set(app_secret),
            verify_token: Set(a.verify_token.clone()),
            kapso_secret: Set(a.kapso_secret.clone()),
            agent_type: Set(a.agent.clone()),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        })
        .on_conflict(
            OnConflict::column(whatsapp_accounts::Column::PhoneNumberId)
                .update_columns([
                    whatsapp_accounts::Column::WorkspaceId,
                    whatsapp_accounts::Column::DisplayPhoneNumber,
                    whatsapp_accounts::Column::AppSecret,
                    whatsapp_accounts::Column::VerifyToken,
                    whatsapp_accounts::Column::KapsoSecret,
                    whatsapp_accounts::Column::AgentType,
                    whatsapp_accounts::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec(db)
        .await?;
    }
    Ok(())
}

pub async fn load_directory(db: &impl ConnectionTrait) -> Result<Directory, DbErr> {
    let rows = whatsapp_accounts::Entity::find().all(db).await?;
    Ok(Directory::new(rows.into_iter().map(Account::from)))
}

/// A workspace's accounts (secrets are never serialized).
pub async fn list(
    db: &impl ConnectionTrait,
    workspace_id: i64,
) -> Result<Vec<whatsapp_accounts::Model>, DbErr> {
    use sea_orm::QueryOrder;
    whatsapp_accounts::Entity::find()
        .filter(whatsapp_accounts::Column::WorkspaceId.eq(workspace_id))
        .order_by_asc(whatsapp_accounts::Column::Id)
        .all(db)
        .await
}

/// An account's fields as an operator gives them (all optional on an update).
#[derive(Debug, Default)]
pub struct AccountFields {
    pub phone_number_id: Option<String>,
    pub display_phone_number: Option<String>,
    pub app_secret: Option<String>,
    pub verify_token: Option<String>,
    pub kapso_secret: Option<String>,
    pub agent: Option<Option<String>>,
}

/// Creates an account in the workspace; `Ok(None)` when its `phone_number_id` is taken.
pub async fn create_one(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    f: AccountFields,
) -> Result<Option<whatsapp_accounts::Model>, DbErr> {
    let now = Utc::now();
    let result = whatsapp_accounts::Entity::insert(whatsapp_accounts::ActiveModel {
        workspace_id: Set(workspace_id),
        phone_number_id: Set(f.phone_number_id.unwrap_or_default()),
        display_phone_number: Set(f.display_phone_number.unwrap_or_default()),
        app_secret: Set(f.app_secret.unwrap_or_default()),
        verify_token: Set(f.verify_token.unwrap_or_default()),
        kapso_secret: Set(f.kapso_secret),
        agent_type: Set(f.agent.flatten()),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    })
    .exec_with_returning(db)
    .await;
    match result {
        Ok(m) => Ok(Some(m)),
        Err(e)
            if matches!(
                e.sql_err(),
                Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Changes an account of the workspace; `None` when there is none there.
pub async fn update_one(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    id: i64,
    f: AccountFields,
) -> Result<Option<whatsapp_accounts::Model>, DbErr> {
    let Some(current) = whatsapp_accounts::Entity::find_by_id(id)
        .filter(whatsapp_accounts::Column::WorkspaceId.eq(workspace_id))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let mut row: whatsapp_accounts::ActiveModel = current.into();
    if let Some(v) = f.display_phone_number {
        row.display_phone_number = Set(v);
    }
    if let Some(v) = f.app_secret {
        row.app_secret = Set(v);
    }
    if let Some(v) = f.verify_token {
        row.verify_token = Set(v);
    }
    if let Some(v) = f.kapso_secret {
        row.kapso_secret = Set(Some(v));
    }
    if let Some(v) = f.agent {
        row.agent_type = Set(v);
    }
    row.updated_at = Set(Utc::now());
    whatsapp_accounts::Entity::update(row)
        .exec(db)
        .await
        .map(Some)
}
