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
