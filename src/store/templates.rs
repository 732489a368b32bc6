//! `message_templates`: each WhatsApp Business Account's catalog, replaced whole by a sync
//! from the Graph API and changed one template at a time by the template webhooks.

use chrono::Utc;
use entity::message_templates;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    sea_query::OnConflict,
};
use serde_json::{Value, json};

use crate::ingest::event::{TemplateChange, TemplateUpdate};

pub type Template = message_templates::Model;

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(|x| match x {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .filter(|s| !s.is_empty())
}

/// Stores one page's templates as the Graph API lists them; the catalog's templates of that
/// WABA the list no longer has become `DELETED`. How many did.
pub async fn replace_catalog(
    db: &sea_orm::DatabaseConnection,
    workspace_id: i64,
    waba_id: &str,
    list: &[Value],
) -> Result<usize, DbErr> {
    // One transaction: a reader sees the old catalog or the new one, never half of it.
    let tx = sea_orm::TransactionTrait::begin(db).await?;
    let gone = replace_in(&tx, workspace_id, waba_id, list).await?;
    tx.commit().await?;
    Ok(gone)
}

async fn replace_in(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    waba_id: &str,
    list: &[Value],
) -> Result<usize, DbErr> {
    let now = Utc::now();
    let mut seen: Vec<(String, String)> = Vec::new();
    for t in list {
        let (Some(name), Some(language)) = (text(t, "name"), text(t, "language")) else {
            continue;
        };
        let quality = t["quality_score"]["score"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| text(t, "quality_score"));
        let row = message_templates::ActiveModel {
            workspace_id: Set(workspace_id),
            waba_id: Set(waba_id.to_owned()),
            template_id: Set(text(t, "id")),
            name: Set(name.clone()),
            language: Set(language.clone()),
            category: Set(text(t, "category")
                .unwrap_or_else(|| "UNKNOWN".into())
                .to_ascii_uppercase()),
            status: Set(text(t, "status")
                .unwrap_or_else(|| "UNKNOWN".into())
                .to_ascii_uppercase()),
            quality: Set(quality),
            parameter_format: Set(text(t, "parameter_format")
                .unwrap_or_else(|| "POSITIONAL".into())
                .to_ascii_uppercase()),
            components: Set(t
                .get("components")
                .filter(|c| c.is_array())
                .cloned()
                .unwrap_or_else(|| json!([]))
                .to_string()),
            reason: Set(text(t, "rejected_reason").filter(|r| r != "NONE")),
            synced_at: Set(Some(now)),
            updated_at: Set(now),
            ..Default::default()
        };
        message_templates::Entity::insert(row)
            .on_conflict(
                OnConflict::columns([
                    message_templates::Column::WorkspaceId,
                    message_templates::Column::WabaId,
                    message_templates::Column::Name,
                    message_templates::Column::Language,
                ])
                .update_columns([
                    message_templates::Column::TemplateId,
                    message_templates::Column::Category,
                    message_templates::Column::Status,
                    message_templates::Column::Quality,
                    message_templates::Column::ParameterFormat,
                    message_templates::Column::Components,
                    message_templates::Column::Reason,
                    message_templates::Column::SyncedAt,
                    message_templates::Column::UpdatedAt,
                ])
                .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
        seen.push((name, language));
    }
    let mut gone = 0;
    for t in of_waba(db, workspace_id, waba_id).await? {
        if t.status != "DELETED" && !seen.iter().any(|(n, l)| *n == t.name && *l == t.language) {
            let mut row: message_templates::ActiveModel = t.into();
            row.status = Set("DELETED".into());
            row.reason = Set(Some("no longer listed by the Graph API".into()));
            row.updated_at = Set(now);
            message_templates::Entity::update(row).exec(db).await?;
            gone += 1;
        }
    }
    Ok(gone)
}

async fn of_waba(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    waba_id: &str,
) -> Result<Vec<Template>, DbErr> {
    message_templates::Entity::find()
        .filter(message_templates::Column::WorkspaceId.eq(workspace_id))
        .filter(message_templates::Column::WabaId.eq(waba_id))
        .all(db)
        .await
}

/// A workspace's templates, by name and language.
pub async fn list(db: &impl ConnectionTrait, workspace_id: i64) -> Result<Vec<Template>, DbErr> {
    message_templates::Entity::find()
        .filter(message_templates::Column::WorkspaceId.eq(workspace_id))
        .order_by_asc(message_templates::Column::Name)
        .order_by_asc(message_templates::Column::Language)
        .all(db)
        .await
}

/// One template of a WABA in a workspace.
pub async fn find(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    waba_id: &str,
    name: &str,
    language: &str,
) -> Result<Option<Template>, DbErr> {
    message_templates::Entity::find()
        .filter(message_templates::Column::WorkspaceId.eq(workspace_id))
        .filter(message_templates::Column::WabaId.eq(waba_id))
        .filter(message_templates::Column::Name.eq(name))
        .filter(message_templates::Column::Language.eq(language))
        .one(db)
        .await
}

/// Applies a template webhook in a workspace: the template is found by Meta's id, else by
/// name and language. A template the catalog does not have yet is added when the webhook says
/// enough (a status update with its name, language and category); otherwise the update is
/// skipped (the next sync brings it). Whether something changed.
pub async fn apply_update(
    db: &impl ConnectionTrait,
    workspace_id: i64,
    u: &TemplateUpdate,
) -> Result<bool, DbErr> {
    let now = Utc::now();
    let mut found = None;
    if let Some(id) = &u.template_id {
        found = message_templates::Entity::find()
            .filter(message_templates::Column::WorkspaceId.eq(workspace_id))
            .filter(message_templates::Column::WabaId.eq(&u.waba_id))
            .filter(message_templates::Column::TemplateId.eq(id))
            .one(db)
            .await?;
    }
    if found.is_none()
        && let (Some(name), Some(language)) = (&u.name, &u.language)
    {
        found = find(db, workspace_id, &u.waba_id, name, language).await?;
    }
    let Some(t) = found else {
        // A new template (created in Meta's tools): its status webhook is its first news.
        if let (
            TemplateChange::Status {
                status, category, ..
            },
            Some(name),
            Some(language),
        ) = (&u.change, &u.name, &u.language)
        {
            message_templates::Entity::insert(message_templates::ActiveModel {
                workspace_id: Set(workspace_id),
                waba_id: Set(u.waba_id.clone()),
                template_id: Set(u.template_id.clone()),
                name: Set(name.clone()),
                language: Set(language.clone()),
                category: Set(category.clone().unwrap_or_else(|| "UNKNOWN".into())),
                status: Set(status.clone()),
                quality: Set(None),
                parameter_format: Set("POSITIONAL".into()),
                components: Set("[]".into()),
                reason: Set(None),
                synced_at: Set(None),
                updated_at: Set(now),
                ..Default::default()
            })
            .on_conflict(
                OnConflict::columns([
                    message_templates::Column::WorkspaceId,
                    message_templates::Column::WabaId,
                    message_templates::Column::Name,
                    message_templates::Column::Language,
                ])
                .do_nothing()
                .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
            return Ok(true);
        }
        return Ok(false);
    };
    let mut row: message_templates::ActiveModel = t.clone().into();
    match &u.change {
        TemplateChange::Status {
            status,
            reason,
            category,
        } => {
            row.status = Set(status.clone());
            row.reason = Set(reason.clone());
            if let Some(c) = category {
                row.category = Set(c.clone());
            }
        }
        TemplateChange::Quality(q) => row.quality = Set(Some(q.clone())),
        TemplateChange::Category { category, upcoming } => {
            row.category = Set(category.clone());
            row.reason = Set(upcoming
                .as_ref()
                .map(|c| format!("the category will change to {c}")));
        }
        TemplateChange::Components {
            body,
            header,
            footer,
            buttons,
        } => {
            let mut comps: Vec<Value> = serde_json::from_str::<Value>(&t.components)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default();
            let mut set = |kind: &str, text: &Option<String>| {
                let Some(text) = text else { return };
                match comps.iter_mut().find(|c| {
                    c["type"]
                        .as_str()
                        .is_some_and(|k| k.eq_ignore_ascii_case(kind))
                }) {
                    Some(c) => c["text"] = json!(text),
                    None => comps.push(json!({"type": kind, "format": "TEXT", "text": text})),
                }
            };
            set("HEADER", header);
            set("BODY", body);
            set("FOOTER", footer);
            if let Some(buttons) = buttons {
                let defs: Vec<Value> = buttons
                    .iter()
                    .map(|b| {
                        let mut d = json!({
                            "type": b["message_template_button_type"].as_str().unwrap_or("QUICK_REPLY"),
                            "text": b["message_template_button_text"].as_str().unwrap_or_default(),
                        });
                        if let Some(url) = b["message_template_button_url"].as_str() {
                            d["url"] = json!(url);
                        }
                        if let Some(p) = b["message_template_button_phone_number"].as_str() {
                            d["phone_number"] = json!(p);
                        }
                        d
                    })
                    .collect();
                comps.retain(|c| c["type"].as_str() != Some("BUTTONS"));
                comps.push(json!({"type": "BUTTONS", "buttons": defs}));
            }
            row.components = Set(Value::Array(comps).to_string());
        }
    }
    if let Some(id) = &u.template_id {
        row.template_id = Set(Some(id.clone()));
    }
    row.updated_at = Set(now);
    message_templates::Entity::update(row).exec(db).await?;
    Ok(true)
}

/// A template's status as a send's Graph error revealed it (132015 paused, 132016 disabled).
pub async fn set_status(
    db: &impl ConnectionTrait,
    id: i64,
    status: &str,
    reason: &str,
) -> Result<(), DbErr> {
    message_templates::Entity::update_many()
        .col_expr(
            message_templates::Column::Status,
            sea_orm::sea_query::Expr::value(status),
        )
        .col_expr(
            message_templates::Column::Reason,
            sea_orm::sea_query::Expr::value(reason.chars().take(500).collect::<String>()),
        )
        .col_expr(
            message_templates::Column::UpdatedAt,
            sea_orm::sea_query::Expr::value(Utc::now()),
        )
        .filter(message_templates::Column::Id.eq(id))
        .exec(db)
        .await
        .map(|_| ())
}
