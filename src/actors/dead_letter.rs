//! The dead-letter actor: parks events that failed `processing.max_attempts` times in
//! `webhook_dlq` (and marks their inbox row `failed`), and re-drives due rows with
//! exponential backoff until `processing.dlq_max_attempts`, after which the event is `dead`
//! and waits for an operator (replay, resolve or discard).

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::{
    Ctx,
    messages::{DeadLetterMsg, RouterMsg},
    write,
};
use crate::{
    config::backoff,
    metrics as m,
    store::{dlq, live::Kind},
};

pub struct DeadLetter;

pub struct DeadLetterState {
    ctx: Arc<Ctx>,
}

impl Actor for DeadLetter {
    type Msg = DeadLetterMsg;
    type State = DeadLetterState;
    type Arguments = Arc<Ctx>;

    async fn pre_start(
        &self,
        myself: ActorRef<DeadLetterMsg>,
        ctx: Arc<Ctx>,
    ) -> Result<DeadLetterState, ActorProcessingErr> {
        write(&ctx.dead_letter, Some(myself.clone()));
        myself.send_interval(Duration::from_millis(ctx.processing.dlq_poll_ms), || {
            DeadLetterMsg::Tick
        });
        Ok(DeadLetterState { ctx })
    }

    async fn handle(
        &self,
        myself: ActorRef<DeadLetterMsg>,
        msg: DeadLetterMsg,
        state: &mut DeadLetterState,
    ) -> Result<(), ActorProcessingErr> {
        let ctx = &state.ctx;
        match msg {
            DeadLetterMsg::Park {
                event_id,
                correlation_id,
                error,
                attempts,
            } => {
                let result = async {
                    let parked = dlq::attempts_of(&ctx.db, event_id).await? + 1;
                    let next = (parked < ctx.processing.dlq_max_attempts as i32).then(|| {
                        Utc::now()
                            + backoff(
                                parked as u32,
                                ctx.processing.dlq_backoff_base_ms,
                                ctx.processing.dlq_backoff_max_ms,
                            )
                    });
                    let message = format!("failed after {attempts} attempts: {error}");
                    let ws = dlq::park(&ctx.db, event_id, &message, parked, attempts, next).await?;
                    Ok::<_, sea_orm::DbErr>((parked, next.is_none(), ws))
                }
                .await;
                match result {
                    Ok((parked, dead, ws)) => {
                        if let Some(ws) = ws {
                            ctx.store.live().publish(ws, event_id, Kind::Dlq);
                        }
                        let outcome = if dead { "dead" } else { "parked" };
                        metrics::counter!(m::DLQ_PARKED).increment(1);
                        ctx.store.bump();
                        metrics::counter!(m::EVENTS_PROCESSED, "outcome" => outcome).increment(1);
                        tracing::warn!(%correlation_id, event_id, parked, dead, %error, "event parked in the dead-letter queue");
                    }
                    Err(e) => {
                        // The store is down: keep the event and try again shortly.
                        tracing::error!(%correlation_id, event_id, error = %e, "cannot park the event yet; retrying");
                        myself.send_after(Duration::from_secs(1), move || DeadLetterMsg::Park {
                            event_id,
                            correlation_id,
                            error,
                            attempts,
                        });
                    }
                }
            }
            DeadLetterMsg::Tick => {
                let Some(router) = ctx.router() else {
                    return Ok(());
                };
                match dlq::claim_due(&ctx.db, Utc::now(), 100).await {
                    Ok(events) => {
                        for (ws, event) in events {
                            if let Some(ws) = ws {
                                ctx.store.live().publish(ws, event.id, Kind::Dlq);
                            }
                            tracing::info!(correlation_id = %event.correlation_id, event_id = event.id, "re-driving an event from the dead-letter queue");
                            let _ = router.cast(RouterMsg::Dispatch(event));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "reading the dead-letter queue failed"),
                }
            }
        }
        Ok(())
    }
}
