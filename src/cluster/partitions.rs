//! Who consumes which partition, and the sweeper.
//!
//! Every `tick_ms` a node says it is alive, counts the live nodes and renews its leases.
//! Partition `p` belongs to the `p mod n`-th live node (by name), so n nodes hold 64/n each,
//! within one. A node takes the partitions that are its share and free (or whose holder let
//! the lease lapse: a dead node's, after `lease_ms`) and subscribes to their queues; it hands
//! back those that are no longer its share: it cancels the consumer, waits until the
//! deliveries it holds are committed and acknowledged, and only then deletes the lease, so the
//! next owner starts after the last message the previous one applied (order per conversation).
//! The queues' single-active-consumer flag covers the moments a lease is wrong (a node too slow
//! to renew): the other node stands by until the first cancels.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use lapin::{
    Channel,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicQosOptions, BasicRejectOptions,
    },
    types::FieldTable,
};

use super::Cluster;
use crate::{
    actors::delivery::Done,
    metrics as m,
    store::{cluster as leases, inbox},
};

/// Most deliveries a handed-back partition may wait for before its lease goes anyway.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// Events the sweeper publishes per round.
const SWEEP_PAGE: u64 = 1000;

struct Consumer {
    channel: Channel,
    tag: String,
    /// Deliveries received and not yet acknowledged or returned.
    in_flight: Arc<AtomicUsize>,
    /// Set when the consumer was cancelled: the partition is being handed back.
    draining: Option<Instant>,
}

struct State {
    consumers: BTreeMap<u32, Consumer>,
    last_sweep: Instant,
    /// Events the sweeper published, with when: not published again before `sweep_after`.
    swept: BTreeMap<i64, Instant>,
}

pub(super) async fn run(cluster: Arc<Cluster>) {
    let tick = Duration::from_millis(cluster.cfg.tick_ms);
    let mut state = State {
        consumers: BTreeMap::new(),
        last_sweep: Instant::now(),
        swept: BTreeMap::new(),
    };
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if !keep_broker(&cluster).await {
            // The consumers went with the connection (the broker put back what they held).
            state.consumers.clear();
        }
        if let Err(e) = rebalance(&cluster, &mut state).await {
            tracing::warn!(error = %e, "cluster: cannot read or renew the partition leases");
        }
        let owned: Vec<u32> = state
            .consumers
            .iter()
            .filter(|(_, c)| c.draining.is_none())
            .map(|(p, _)| *p)
            .collect();
        metrics::gauge!(m::CLUSTER_PARTITIONS_OWNED).set(owned.len() as f64);
        cluster
            .ctx
            .feed
            .set_owned(cluster.cfg.partitions, owned.clone());
        cluster.set_status(|s| s.owned = owned);
        sweep(&cluster, &mut state).await;
    }
}

/// Connects when there is no connection. `true` when the connection is the one the consumers
/// were made on; otherwise they are gone (the broker has put back what they held).
pub(super) async fn keep_broker(cluster: &Cluster) -> bool {
    let (connected, broke) = match &*cluster.broker.read().await {
        Some(b) => {
            let up = b.conn.status().connected() && b.publish.status().connected();
            (up, !up)
        }
        None => (false, false),
    };
    if connected {
        return true;
    }
    if broke {
        tracing::warn!("cluster: the broker connection broke; reconnecting");
        *cluster.broker.write().await = None;
        cluster.set_status(|s| s.broker_error = Some("the connection broke".into()));
    }
    match cluster.connect().await {
        Ok(broker) => {
            *cluster.broker.write().await = Some(broker);
            cluster.set_status(|s| s.broker_error = None);
            metrics::gauge!(m::CLUSTER_BROKER_UP).set(1.0);
            tracing::info!(node = %cluster.node, "cluster: connected to the broker");
        }
        Err(e) => {
            metrics::gauge!(m::CLUSTER_BROKER_UP).set(0.0);
            cluster.set_status(|s| s.broker_error = Some(e));
        }
    }
    // A new connection (or none): no consumer of the old one is alive.
    false
}

async fn rebalance(cluster: &Arc<Cluster>, state: &mut State) -> Result<(), sea_orm::DbErr> {
    let cfg = &cluster.cfg;
    let (db, prefix, node) = (&cluster.ctx.db, cfg.queue_prefix.as_str(), cluster.node());
    let mut live = leases::heartbeat(db, prefix, node, cfg.lease_ms).await?;
    if !live.iter().any(|n| n == node) {
        live.push(node.to_owned());
        live.sort();
    }
    let me = live.iter().position(|n| n == node).unwrap_or(0);
    let share: HashSet<u32> = (0..cfg.partitions)
        .filter(|p| *p as usize % live.len() == me)
        .collect();
    let held: HashSet<u32> = leases::renew(db, prefix, node, cfg.lease_ms)
        .await?
        .into_iter()
        .collect();

    // A consumer whose channel closed (the broker closed it over an error) takes nothing
    // more: it is dropped and subscribed again below; what it held unacknowledged is back in
    // the queue already.
    state.consumers.retain(|p, c| {
        let open = c.channel.status().connected();
        if !open && c.draining.is_none() {
            tracing::warn!(
                partition = p,
                "cluster: a partition's channel closed; consuming it again"
            );
        }
        open || c.draining.is_some()
    });
    // Consumers of partitions that are not (or no longer) ours, or not our share: hand back.
    let broker_up = cluster.broker.read().await.is_some();
    let mut released = Vec::new();
    for (p, c) in state.consumers.iter_mut() {
        let keep = held.contains(p) && share.contains(p) && broker_up;
        if !keep && c.draining.is_none() {
            let _ = c
                .channel
                .basic_cancel(c.tag.as_str().into(), BasicCancelOptions::default())
                .await;
            c.draining = Some(Instant::now());
        }
        if let Some(since) = c.draining
            && (c.in_flight.load(Ordering::Acquire) == 0 || since.elapsed() > DRAIN_LIMIT)
        {
            released.push(*p);
        }
    }
    for p in &released {
        if let Some(c) = state.consumers.remove(p) {
            let _ = c.channel.close(200, "handed back".into()).await;
        }
    }
    // Leases we hold without a consumer and that are not our share: give them back now.
    let idle: Vec<u32> = held
        .iter()
        .filter(|p| !share.contains(p) && !state.consumers.contains_key(p))
        .copied()
        .collect();
    let give_back: Vec<u32> = idle.into_iter().chain(released).collect();
    if !give_back.is_empty() {
        leases::release(db, prefix, node, &give_back).await?;
        metrics::counter!(m::CLUSTER_REBALANCES, "change" => "released")
            .increment(give_back.len() as u64);
        tracing::info!(node, partitions = ?give_back, "cluster: partitions handed back");
    }
    if !broker_up {
        return Ok(());
    }
    // Our share: take what is free, then consume what we hold.
    let wanted: Vec<u32> = share
        .iter()
        .filter(|p| !held.contains(p))
        .copied()
        .collect();
    let claimed = leases::claim(db, prefix, node, &wanted, cfg.lease_ms).await?;
    if !claimed.is_empty() {
        metrics::counter!(m::CLUSTER_REBALANCES, "change" => "claimed")
            .increment(claimed.len() as u64);
        tracing::info!(node, partitions = ?claimed, "cluster: partitions taken");
    }
    let mut to_consume: Vec<u32> = held
        .iter()
        .chain(claimed.iter())
        .filter(|p| share.contains(p) && !state.consumers.contains_key(p))
        .copied()
        .collect();
    to_consume.sort_unstable();
    for p in to_consume {
        match subscribe(cluster, p).await {
            Ok(c) => {
                state.consumers.insert(p, c);
            }
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "cluster: cannot consume the partition queue");
                break;
            }
        }
    }
    Ok(())
}

async fn subscribe(cluster: &Arc<Cluster>, partition: u32) -> Result<Consumer, lapin::Error> {
    let channel = {
        let broker = cluster.broker.read().await;
        let Some(b) = &*broker else {
            return Err(lapin::Error::from(
                lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed),
            ));
        };
        b.conn.create_channel().await?
    };
    channel
        .basic_qos(cluster.cfg.prefetch, BasicQosOptions::default())
        .await?;
    let tag = format!("{}.{partition}", cluster.node);
    let consumer = channel
        .basic_consume(
            cluster.queue(partition).as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let (settle, settled) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(acker(channel.clone(), settled, in_flight.clone()));
    // One task takes the partition's deliveries one after the other and hands them to the
    // router in that order (lapin's delegate would spawn a task per delivery, and tasks may
    // run in any order: that reordered conversations).
    let (counter, cluster) = (in_flight.clone(), cluster.clone());
    tokio::spawn(async move {
        let mut consumer = consumer;
        while let Some(delivery) = next(&mut consumer).await {
            let Ok(mut delivery) = delivery else { break };
            let data = std::mem::take(&mut delivery.data);
            let tag = delivery.delivery_tag;
            match super::Wire::decode(&data) {
                Ok(wire) => {
                    counter.fetch_add(1, Ordering::AcqRel);
                    cluster.dispatch(wire, on_done(tag, settle.clone()));
                }
                Err(e) => {
                    // Not one of ours (or corrupt): no node could apply it.
                    tracing::error!(error = %e, "cluster: dropping a message that is not a wahook event");
                    metrics::counter!(m::CLUSTER_CONSUMED, "outcome" => "rejected").increment(1);
                    let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
                    let _ = settle.send((tag, Settle::Gone));
                }
            }
        }
    });
    Ok(Consumer {
        channel,
        tag,
        in_flight,
        draining: None,
    })
}

async fn next(consumer: &mut lapin::Consumer) -> Option<lapin::Result<lapin::message::Delivery>> {
    std::future::poll_fn(|cx| {
        futures_core::Stream::poll_next(std::pin::Pin::new(&mut *consumer), cx)
    })
    .await
}

/// How a delivery of a partition's channel ended.
enum Settle {
    /// Finished: to be acknowledged.
    Ack,
    /// Dropped unfinished: given back to the queue.
    Requeue,
    /// Settled already (rejected by the consumer).
    Gone,
}

/// Finishing a delivery tells the channel's acker; dropping it unfinished gives it back.
fn on_done(tag: u64, settle: tokio::sync::mpsc::UnboundedSender<(u64, Settle)>) -> Arc<Done> {
    Done::new(move |ok| {
        let _ = settle.send((tag, if ok { Settle::Ack } else { Settle::Requeue }));
    })
}

/// Acknowledges a channel's finished deliveries in batches: whatever has finished when it
/// looks is settled together, the run of finished delivery tags from the lowest unsettled one
/// with one `basic.ack` (`multiple`), each finished out of order at once on its own (so a slow
/// conversation's delivery never holds the others back, nor the prefetch window full). Each
/// `basic.ack` is a broker command (a Raft entry on a quorum queue): in-order batches save most.
async fn acker(
    channel: Channel,
    mut settled: tokio::sync::mpsc::UnboundedReceiver<(u64, Settle)>,
    in_flight: Arc<AtomicUsize>,
) {
    let mut ledger = Ledger::default();
    let mut batch = Vec::with_capacity(256);
    while settled.recv_many(&mut batch, 1024).await > 0 {
        let plan = ledger.settle(batch.drain(..));
        let mut acked = 0usize;
        for &tag in &plan.requeue {
            let nack = BasicNackOptions {
                requeue: true,
                multiple: false,
            };
            // A broken channel's deliveries are back in the queue already.
            if channel.basic_nack(tag, nack).await.is_ok() {
                metrics::counter!(m::CLUSTER_CONSUMED, "outcome" => "requeued").increment(1);
            }
        }
        if let Some((last, n)) = plan.up_to {
            let all = BasicAckOptions { multiple: true };
            if channel.basic_ack(last, all).await.is_ok() {
                acked += n;
            }
        }
        for &tag in &plan.single {
            let one = BasicAckOptions::default();
            if channel.basic_ack(tag, one).await.is_ok() {
                acked += 1;
            }
        }
        if acked > 0 {
            metrics::counter!(m::CLUSTER_CONSUMED, "outcome" => "acked").increment(acked as u64);
        }
        in_flight.fetch_sub(plan.finished, Ordering::AcqRel);
    }
}

/// Which of a channel's delivery tags are settled (they count from 1; every one below `low`
/// is, and those in `above`).
struct Ledger {
    low: u64,
    above: std::collections::BTreeSet<u64>,
}

impl Default for Ledger {
    fn default() -> Self {
        Self {
            low: 1,
            above: Default::default(),
        }
    }
}

/// What to tell the broker about a batch of settled deliveries.
#[derive(Debug, PartialEq)]
struct Plan {
    /// One `multiple` ack up to this tag, covering this many finished deliveries.
    up_to: Option<(u64, usize)>,
    /// Acks of one delivery each (finished out of order).
    single: Vec<u64>,
    requeue: Vec<u64>,
    /// Deliveries of ours this batch finishes (acked or requeued), for the in-flight count.
    finished: usize,
}

impl Ledger {
    fn settle(&mut self, batch: impl IntoIterator<Item = (u64, Settle)>) -> Plan {
        let mut acks = Vec::new();
        let mut requeue = Vec::new();
        for (tag, how) in batch {
            match how {
                Settle::Ack => acks.push(tag),
                Settle::Requeue => requeue.push(tag),
                Settle::Gone => {}
            }
            self.above.insert(tag);
        }
        let start = self.low;
        while self.above.remove(&self.low) {
            self.low += 1;
        }
        acks.sort_unstable();
        let (run, single): (Vec<u64>, Vec<u64>) =
            acks.iter().partition(|t| (start..self.low).contains(t));
        Plan {
            // Up to the run's highest finished tag: one still outstanding (the broker refuses
            // a tag it no longer holds, and closes the channel: 406), and every tag below it
            // still outstanding is finished.
            up_to: run.last().map(|&last| (last, run.len())),
            single,
            finished: acks.len() + requeue.len(),
            requeue,
        }
    }
}

/// The node holding partition 0 publishes, every few seconds, the events that were committed
/// long ago and are still `pending` (never published: a crash between commit and confirm).
async fn sweep(cluster: &Cluster, state: &mut State) {
    let after = Duration::from_millis(cluster.cfg.sweep_after_ms);
    let every = (after / 4).max(Duration::from_secs(1));
    if state.last_sweep.elapsed() < every || !state.consumers.contains_key(&0) {
        return;
    }
    state.last_sweep = Instant::now();
    state.swept.retain(|_, at| at.elapsed() < after);
    let before = chrono::Utc::now() - chrono::Duration::from_std(after).unwrap_or_default();
    let mut cursor = None;
    let mut published = 0usize;
    // The inbox's own recovery query, oldest first, up to the first event too young to sweep.
    'pages: loop {
        let page = match inbox::pending_page(&cluster.ctx.db, cursor, SWEEP_PAGE).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: the sweeper cannot read the inbox");
                return;
            }
        };
        let Some(last) = page.last() else { break };
        cursor = Some((last.received_at, last.id));
        for event in page {
            if event.received_at >= before {
                break 'pages;
            }
            if state.swept.contains_key(&event.id) {
                continue;
            }
            if cluster.publish(&event, "sweeper").await.is_err() {
                return;
            }
            state.swept.insert(event.id, Instant::now());
            published += 1;
        }
    }
    if published > 0 {
        tracing::warn!(
            published,
            "cluster: published inbox events that were committed but never published"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{Ledger, Plan, Settle};

    /// In-order finishes are acknowledged with one ack; one finished out of order is acked
    /// alone at once, and the run that later closes the gap is acked up to its own highest
    /// tag, never past it to a tag acked already (RabbitMQ closes the channel on that).
    #[test]
    fn acks_are_batched_and_never_name_a_settled_tag() {
        let mut ledger = Ledger::default();
        let plan = ledger.settle([(2, Settle::Ack), (1, Settle::Ack), (3, Settle::Ack)]);
        assert_eq!(plan.up_to, Some((3, 3)));
        assert!(plan.single.is_empty());
        // 4 is slow; 5 and 6 finish first, 7 was rejected by the consumer.
        let plan = ledger.settle([(5, Settle::Ack), (7, Settle::Gone), (6, Settle::Ack)]);
        assert_eq!(plan.up_to, None);
        assert_eq!(plan.single, vec![5, 6]);
        let plan = ledger.settle([(4, Settle::Ack)]);
        assert_eq!(
            plan,
            Plan {
                up_to: Some((4, 1)),
                single: vec![],
                requeue: vec![],
                finished: 1,
            }
        );
        assert_eq!(ledger.low, 8, "every tag up to 7 is settled");
        // A requeued delivery is settled by its nack, and not named by the next ack.
        let plan = ledger.settle([(9, Settle::Ack), (8, Settle::Requeue)]);
        assert_eq!(
            (plan.up_to, plan.requeue, plan.finished),
            (Some((9, 1)), vec![8], 2)
        );
        assert!(ledger.above.is_empty());
    }
}
