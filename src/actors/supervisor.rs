//! The root supervisor: starts the router and the dead-letter actor, restarts them when they
//! fail (within a budget), and past the budget shuts the process down loudly.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::{Ctx, dead_letter::DeadLetter, messages::RootMsg, router::Router, write};
use crate::metrics as m;

pub struct Root;

pub struct RootState {
    ctx: Arc<Ctx>,
    restarts: VecDeque<Instant>,
    stopping: bool,
}

impl Actor for Root {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = Arc<Ctx>;

    async fn pre_start(
        &self,
        myself: ActorRef<RootMsg>,
        ctx: Arc<Ctx>,
    ) -> Result<RootState, ActorProcessingErr> {
        spawn_router(&myself, &ctx).await?;
        spawn_dead_letter(&myself, &ctx).await?;
        Ok(RootState {
            ctx,
            restarts: VecDeque::new(),
            stopping: false,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<RootMsg>,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        state.stopping = true;
        write(&state.ctx.router, None);
        write(&state.ctx.dead_letter, None);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMsg>,
        event: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("failed: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, format!("stopped: {}", reason.unwrap_or_default()))
            }
            _ => return Ok(()),
        };
        if state.stopping {
            return Ok(());
        }
        let is_router = state
            .ctx
            .router()
            .is_some_and(|r| r.get_id() == cell.get_id());
        let is_dead_letter = state
            .ctx
            .dead_letter()
            .is_some_and(|r| r.get_id() == cell.get_id());
        if !is_router && !is_dead_letter {
            return Ok(());
        }
        let kind = if is_router { "router" } else { "dead_letter" };
        let now = Instant::now();
        let window = Duration::from_millis(state.ctx.actors.restart_window_ms);
        while state
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            state.restarts.pop_front();
        }
        if state.restarts.len() as u32 >= state.ctx.actors.restart_budget {
            let reason = format!(
                "the {kind} {why}; {} restarts within {} ms exhaust the restart budget",
                state.restarts.len(),
                state.ctx.actors.restart_window_ms
            );
            tracing::error!(actor = kind, "{reason}; shutting down");
            state.stopping = true;
            let _ = state.ctx.fatal.send(Some(reason));
            myself.stop(Some("restart budget exhausted".into()));
            return Ok(());
        }
        state.restarts.push_back(now);
        metrics::counter!(m::ACTOR_RESTARTS, "actor" => kind).increment(1);
        tracing::error!(actor = kind, reason = %why, "restarting");
        if is_router {
            write(&state.ctx.router, None);
            spawn_router(&myself, &state.ctx).await?;
        } else {
            write(&state.ctx.dead_letter, None);
            spawn_dead_letter(&myself, &state.ctx).await?;
        }
        Ok(())
    }
}

async fn spawn_router(
    myself: &ActorRef<RootMsg>,
    ctx: &Arc<Ctx>,
) -> Result<(), ActorProcessingErr> {
    let (router, _) = Actor::spawn_linked(None, Router, ctx.clone(), myself.get_cell()).await?;
    write(&ctx.router, Some(router));
    Ok(())
}

async fn spawn_dead_letter(
    myself: &ActorRef<RootMsg>,
    ctx: &Arc<Ctx>,
) -> Result<(), ActorProcessingErr> {
    let (dl, _) = Actor::spawn_linked(None, DeadLetter, ctx.clone(), myself.get_cell()).await?;
    write(&ctx.dead_letter, Some(dl));
    Ok(())
}
