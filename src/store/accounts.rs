//! Workspaces and WhatsApp accounts: the start-up upsert of `[[accounts]]` and the in-memory
//! directory the intake looks secrets up in.

use std::collections::HashMap;

use chrono::Utc;
use entity::{whatsapp_accounts, workspaces};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter,
    sea_query::OnConflict,
};

use crate::{
    config::AccountConfig,
    ingest::{Admit, Tenant},
};

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
    /// The WhatsApp Business Account the number belongs to (routes account-level webhooks).
    pub waba_id: Option<String>,
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
            waba_id: m.waba_id.filter(|w| !w.is_empty()),
        }
    }
}

/// Accounts by `phone_number_id`, read once and swapped whole when accounts change; with them
/// what the intake picks a secret by: the accounts of each WhatsApp Business Account, and the
/// distinct Meta app secrets (accounts of one Meta app share one), each with its accounts.
#[derive(Debug, Default, Clone)]
pub struct Directory {
    by_phone_number_id: HashMap<String, Account>,
    by_waba: HashMap<String, Vec<String>>,
    app_secrets: Vec<(String, Vec<String>)>,
    kapso_secrets: Vec<(String, Vec<String>)>,
}

impl Directory {
    pub fn new(accounts: impl IntoIterator<Item = Account>) -> Self {
        let by_phone_number_id: HashMap<String, Account> = accounts
            .into_iter()
            .map(|a| (a.phone_number_id.clone(), a))
            .collect();
        let mut by_waba: HashMap<String, Vec<String>> = HashMap::new();
        for a in by_phone_number_id.values() {
            if let Some(w) = &a.waba_id {
                by_waba
                    .entry(w.clone())
                    .or_default()
                    .push(a.phone_number_id.clone());
            }
        }
        let app_secrets = distinct_secrets(&by_phone_number_id, |a| Some(&a.app_secret));
        let kapso_secrets = distinct_secrets(&by_phone_number_id, |a| a.kapso_secret.as_ref());
        Self {
            by_phone_number_id,
            by_waba,
            app_secrets,
            kapso_secrets,
        }
    }

    pub fn get(&self, phone_number_id: &str) -> Option<&Account> {
        self.by_phone_number_id.get(phone_number_id)
    }

    /// Every account, by id.
    pub fn all(&self) -> Vec<&Account> {
        let mut all: Vec<&Account> = self.by_phone_number_id.values().collect();
        all.sort_by_key(|a| a.id);
        all
    }

    /// The `phone_number_id`s of a WhatsApp Business Account.
    pub fn of_waba(&self, waba_id: &str) -> &[String] {
        self.by_waba.get(waba_id).map_or(&[], Vec::as_slice)
    }

    /// Each distinct Meta app secret with the `phone_number_id`s of its accounts.
    pub fn app_secrets(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.app_secrets
            .iter()
            .map(|(s, ids)| (s.as_str(), ids.as_slice()))
    }

    /// Each distinct Kapso secret with the `phone_number_id`s of its accounts.
    pub fn kapso_secrets(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.kapso_secrets
            .iter()
            .map(|(s, ids)| (s.as_str(), ids.as_slice()))
    }

    /// The tenant of these accounts (by `phone_number_id`; unknown ones are left out).
    pub fn tenant_of<'a>(&self, phone_number_ids: impl IntoIterator<Item = &'a String>) -> Tenant {
        let accounts: Vec<&Account> = phone_number_ids
            .into_iter()
            .filter_map(|p| self.get(p))
            .collect();
        let first = accounts.first().map(|a| a.workspace_id);
        let one_workspace = accounts.iter().all(|a| Some(a.workspace_id) == first);
        let mut account_ids: Vec<i64> = accounts.iter().map(|a| a.id).collect();
        account_ids.sort_unstable();
        account_ids.dedup();
        Tenant::Accounts {
            workspace_id: first.filter(|_| one_workspace),
            account_ids,
        }
    }

    /// Whether the event's signer may act on a number, and in which workspace.
    pub fn scope<'a>(&'a self, tenant: &'a Tenant) -> impl Fn(&str) -> Admit + 'a {
        move |pnid: &str| match self.get(pnid) {
            None => Admit::Unknown,
            Some(a) if tenant.admits(a.id, a.workspace_id) => Admit::In(a.workspace_id),
            Some(_) => Admit::Foreign,
        }
    }

    /// Accounts per workspace.
    pub fn count_in(&self, workspace_id: i64) -> usize {
        self.iter()
            .filter(|a| a.workspace_id == workspace_id)
            .count()
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

/// Each distinct non-empty secret with its accounts' numbers (sorted, in a stable order).
fn distinct_secrets(
    accounts: &HashMap<String, Account>,
    secret_of: impl Fn(&Account) -> Option<&String>,
) -> Vec<(String, Vec<String>)> {
    let mut by_secret: HashMap<&str, Vec<String>> = HashMap::new();
    for a in accounts.values() {
        if let Some(s) = secret_of(a).filter(|s| !s.is_empty()) {
            by_secret
                .entry(s.as_str())
                .or_default()
                .push(a.phone_number_id.clone());
        }
    }
    let mut out: Vec<(String, Vec<String>)> = by_secret
        .into_iter()
        .map(|(s, mut ids)| {
            ids.sort_unstable();
            (s.to_owned(), ids)
        })
        .collect();
    out.sort_unstable_by(|a, b| a.1.cmp(&b.1));
    out
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
            waba_id: Set(a.waba_id.clone()),
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
                    whatsapp_accounts::Column::WabaId,
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

/// A workspace's name.
pub async fn workspace_name(
    db: &impl ConnectionTrait,
    workspace_id: i64,
) -> Result<Option<String>, DbErr> {
    Ok(workspaces::Entity::find_by_id(workspace_id)
        .one(db)
        .await?
        .map(|w| w.name))
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
    pub waba_id: Option<String>,
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
        waba_id: Set(f.waba_id),
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
    if let Some(v) = f.waba_id {
        row.waba_id = Set(Some(v));
    }
    row.updated_at = Set(Utc::now());
    whatsapp_accounts::Entity::update(row)
        .exec(db)
        .await
        .map(Some)
}
