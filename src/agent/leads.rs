//! A template to many leads: who would get it and who is skipped and why (the dry run), then
//! one send per lead per campaign key through the outbox, paced under the number's throughput
//! and backing off when the Graph API says it is over it (130429, 131056). A throttled send is
//! one Meta refused, so it is released and tried again; any other outcome stands.

use std::time::Duration;

use chrono::Utc;
use entity::contacts::Model as Contact;
use sea_orm::DatabaseConnection;
use serde::Serialize;

use super::{
    graph::Graph,
    outbox::Outcome,
    templates::{self, NotSent, Refusal, TemplateRequest, TemplateSend},
};
use crate::{
    ingest::event::ContactKey,
    metrics as m,
    store::{batch::Store, conversations, outbound, templates as catalog},
};

/// One lead of the plan.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Lead {
    pub contact_id: i64,
    pub phone: String,
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<i64>,
    /// Why it is skipped: `marketing_opted_out`, `service_window_open`, `already_sent`,
    /// `no_conversation`, `no_address`, `template_not_approved`, `template_not_found`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Plan {
    pub send: Vec<Lead>,
    pub skipped: Vec<Lead>,
}

/// The per-lead key of a campaign.
pub fn key(workspace_id: i64, campaign: &str, contact_id: i64) -> String {
    format!("lead:{workspace_id}:{campaign}:{contact_id}")
}

/// The template request for one lead: `{name}` and `{phone}` in the values become the lead's.
pub fn for_lead(req: &TemplateRequest, lead: &Lead) -> TemplateRequest {
    let name = lead.name.clone().unwrap_or_default();
    let mut r = req.clone();
    r.parameters = req.parameters.as_ref().map(|p| {
        p.map(|v| {
            let out = v.replace("{name}", &name).replace("{phone}", &lead.phone);
            if out.trim().is_empty() {
                "there".into()
            } else {
                out
            }
        })
    });
    r
}

/// Who would get the template and who not. `Err` when the template itself cannot go to
/// anyone: not found, not approved, or parameters that do not match (checked with the first
/// lead's values).
#[allow(clippy::too_many_arguments)]
pub async fn plan(
    db: &DatabaseConnection,
    workspace_id: i64,
    waba_id: Option<&str>,
    leads: Vec<Contact>,
    req: &TemplateRequest,
    campaign: &str,
    skip_open_window: bool,
) -> Result<Result<Plan, Refusal>, sea_orm::DbErr> {
    let template = match waba_id {
        Some(w) => catalog::find(db, workspace_id, w, &req.name, &req.language).await?,
        None => None,
    };
    let probe = Lead {
        contact_id: 0,
        phone: String::new(),
        name: Some("x".into()),
        conversation_id: None,
        reason: None,
    };
    let prepared = templates::prepare(template.as_ref(), &for_lead(req, &probe), false);
    if let Err(r) = &prepared
        && !matches!(r, Refusal::OptedOut)
    {
        return Ok(Err(r.clone()));
    }
    let marketing = prepared.is_ok_and(|p| p.category == "MARKETING");
    // Three queries for the whole list, not two per lead.
    let ids: Vec<i64> = leads.iter().map(|c| c.id).collect();
    let convs = conversations::of_contacts(db, workspace_id, &ids).await?;
    let keys: Vec<String> = ids
        .iter()
        .map(|id| key(workspace_id, campaign, *id))
        .collect();
    let sent = outbound::existing(db, &keys).await?;
    let conv_ids: Vec<i64> = convs.values().copied().collect();
    let open = if skip_open_window {
        conversations::open_windows(db, &conv_ids, Utc::now()).await?
    } else {
        Default::default()
    };
    let mut plan = Plan::default();
    for c in leads {
        let mut lead = Lead {
            contact_id: c.id,
            phone: c.phone.clone(),
            name: c.name.clone(),
            conversation_id: convs.get(&c.id).copied(),
            reason: None,
        };
        lead.reason = if marketing && c.marketing_opt_out {
            Some("marketing_opted_out")
        } else if c.phone.starts_with("group:") || c.phone.starts_with("raw:") {
            Some("no_address")
        } else if lead.conversation_id.is_none() {
            Some("no_conversation")
        } else if sent.contains(&key(workspace_id, campaign, c.id)) {
            Some("already_sent")
        } else if lead.conversation_id.is_some_and(|id| open.contains(&id)) {
            Some("service_window_open")
        } else {
            None
        }
        .map(str::to_owned);
        if lead.reason.is_some() {
            plan.skipped.push(lead);
        } else {
            plan.send.push(lead);
        }
    }
    Ok(Ok(plan))
}

/// Where and how to send a campaign.
pub struct Campaign {
    pub db: DatabaseConnection,
    pub store: Store,
    pub graph: std::sync::Arc<Graph>,
    pub token: String,
    pub phone_number_id: String,
    pub waba_id: Option<String>,
    pub workspace_id: i64,
    pub request: TemplateRequest,
    pub campaign: String,
    pub per_second: u32,
    pub actor: String,
}

/// What a campaign did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub sent: usize,
    pub failed: usize,
    pub refused: usize,
    pub throttled: usize,
}

/// Sends the plan's leads one by one at `per_second`; on 130429 / 131056 it waits (doubling,
/// up to a minute) and tries the same lead again.
pub async fn run(c: Campaign, leads: Vec<Lead>) -> Report {
    let mut report = Report::default();
    let gap = Duration::from_millis(1000 / u64::from(c.per_second.max(1)));
    let mut tick = tokio::time::interval(gap);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for lead in leads {
        let Some(conversation_id) = lead.conversation_id else {
            continue;
        };
        let key = key(c.workspace_id, &c.campaign, lead.contact_id);
        let request = for_lead(&c.request, &lead);
        let contact = ContactKey::stored(lead.phone.clone());
        let mut backoff = Duration::from_secs(1);
        for _attempt in 0..6 {
            tick.tick().await;
            let sent = templates::send(TemplateSend {
                db: &c.db,
                store: &c.store,
                graph: &c.graph,
                token: &c.token,
                phone_number_id: &c.phone_number_id,
                waba_id: c.waba_id.as_deref(),
                workspace_id: c.workspace_id,
                conversation_id,
                contact_id: lead.contact_id,
                contact: &contact,
                request: &request,
                key: &key,
                sender: "leads",
                author: crate::ingest::event::Author::Api,
                correlation_id: &format!("leads:{}", c.campaign),
            })
            .await;
            match sent {
                Ok(Outcome::Failed { code, .. }) if code == "130429" || code == "131056" => {
                    report.throttled += 1;
                    metrics::counter!(m::TEMPLATES_SENT, "outcome" => "throttled").increment(1);
                    // Meta refused it: nothing left; the key is freed for the retry.
                    if let Err(e) = outbound::release_failed(&c.db, &key).await {
                        tracing::error!(error = %e, key, "cannot release a throttled send");
                        report.failed += 1;
                        break;
                    }
                    tracing::info!(
                        key,
                        code,
                        wait_ms = backoff.as_millis() as u64,
                        "throughput limit: waiting before the next send"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
                Ok(Outcome::Sent(_)) => {
                    report.sent += 1;
                    break;
                }
                Ok(_) | Err(NotSent::Store(_)) | Err(NotSent::NoAddress) => {
                    report.failed += 1;
                    break;
                }
                Err(NotSent::Refused(_)) => {
                    report.refused += 1;
                    break;
                }
            }
        }
    }
    tracing::info!(campaign = %c.campaign, actor = %c.actor, sent = report.sent, failed = report.failed, refused = report.refused, throttled = report.throttled, "lead follow-up finished");
    report
}
