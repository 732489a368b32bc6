//! The follow-up sweep: every few seconds, for each account whose agent has follow-ups on
//! (`follow_up_max` > 0), the conversations whose follow-up is due are handed to their
//! conversation actors through the router (which starts the actor if it is not alive). What
//! is due is read from the database each time (`store/followups.rs`), so nothing is lost in a
//! restart and a follow-up recorded before is never found due again; in cluster mode a node
//! hands over only the conversations of the partitions it consumes.

use std::{sync::Arc, time::Duration};

use chrono::Utc;

use super::{
    Ctx,
    messages::{FollowUpDue, RouterMsg},
};
use crate::{
    ingest::event::ContactKey,
    metrics as m,
    store::{change::Known, followups},
};

/// Due conversations handed over per account per sweep.
const PAGE: u64 = 200;

/// How often to look: a quarter of the shortest `follow_up_after_ms`, between 250 ms and a
/// minute; `None` when no agent follows up.
pub fn interval(ctx: &Ctx) -> Option<Duration> {
    ctx.agents
        .configs()
        .filter(|c| c.follow_up_max > 0)
        .map(|c| Duration::from_millis(c.follow_up_after_ms / 4))
        .min()
        .map(|d| d.clamp(Duration::from_millis(250), Duration::from_secs(60)))
}

pub async fn run(ctx: Arc<Ctx>) {
    let Some(every) = interval(&ctx) else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !ctx.serving.load(std::sync::atomic::Ordering::Acquire) {
            continue;
        }
        if let Err(e) = sweep(&ctx).await {
            tracing::warn!(error = %e, "follow-ups: cannot read what is due; trying again");
        }
    }
}

/// One pass: hands every due follow-up to its conversation.
pub async fn sweep(ctx: &Ctx) -> Result<usize, sea_orm::DbErr> {
    sweep_at(ctx, Utc::now()).await
}

/// [`sweep`] as if it were `now` (how many it handed over).
pub async fn sweep_at(ctx: &Ctx, now: chrono::DateTime<Utc>) -> Result<usize, sea_orm::DbErr> {
    let Some(router) = ctx.router() else {
        return Ok(0);
    };
    let directory = ctx.directory();
    let mut seen_workspaces = Vec::new();
    let mut handed = 0;
    for account in directory.all() {
        let Some(agent) = account.agent_type.as_deref() else {
            continue;
        };
        let Some(cfg) = ctx.agents.config(agent) else {
            continue;
        };
        // One number per workspace follows up (a conversation belongs to the workspace), one
        // that can send.
        if cfg.follow_up_max == 0
            || seen_workspaces.contains(&account.workspace_id)
            || ctx.agents.token(&account.phone_number_id).is_none()
        {
            continue;
        }
        seen_workspaces.push(account.workspace_id);
        let after = chrono::Duration::milliseconds(cfg.follow_up_after_ms as i64);
        let within = chrono::Duration::milliseconds(cfg.follow_up_within_ms as i64);
        let due = followups::due(
            &ctx.db,
            account.workspace_id,
            now - after,
            now - after - within,
            cfg.follow_up_max,
            PAGE,
        )
        .await?;
        for d in due {
            let contact = ContactKey::stored(d.contact.clone());
            if !ctx.owns(account.workspace_id, &contact) {
                continue;
            }
            metrics::counter!(m::FOLLOW_UPS, "stage" => "due", "kind" => "any").increment(1);
            let key = (account.workspace_id, contact);
            let msg = FollowUpDue {
                phone_number_id: account.phone_number_id.clone(),
                known: Known {
                    contact_id: d.contact_id,
                    conversation_id: d.conversation_id,
                },
                due: d,
            };
            if router.cast(RouterMsg::FollowUp(key, Box::new(msg))).is_ok() {
                handed += 1;
            }
        }
    }
    Ok(handed)
}
