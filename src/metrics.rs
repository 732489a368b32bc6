//! Every metric name, its help text and unit, and the Prometheus exporter set-up.
//! Histograms get real buckets (never summaries) so Grafana's `histogram_quantile` works.

use std::{sync::OnceLock, time::Duration};

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUEST_DURATION: &str = "http_server_request_duration_seconds";
pub const WEBHOOKS_RECEIVED: &str = "wahook_webhooks_received_total";
pub const INTAKE_QUEUE_DEPTH: &str = "wahook_intake_queue_depth";
pub const INBOX_BATCH_SIZE: &str = "wahook_inbox_batch_size";
pub const INBOX_COMMIT_DURATION: &str = "wahook_inbox_commit_duration_seconds";
pub const DB_STATEMENTS: &str = "wahook_db_statements_total";
pub const STORE_BATCH_SIZE: &str = "wahook_store_batch_size";
pub const STORE_COMMIT_DURATION: &str = "wahook_store_commit_duration_seconds";
pub const EVENTS_PROCESSED: &str = "wahook_events_processed_total";
pub const PROCESSING_LAG: &str = "wahook_processing_lag_seconds";
pub const RETRIES: &str = "wahook_processing_retries_total";
pub const ACTOR_RESTARTS: &str = "wahook_actor_restarts_total";
pub const LIVE_CONVERSATIONS: &str = "wahook_conversation_actors";
pub const IN_FLIGHT: &str = "wahook_events_in_flight";
pub const DLQ_PARKED: &str = "wahook_dlq_parked_total";
pub const INBOX_DOUBTFUL: &str = "wahook_inbox_doubtful_events_total";
pub const MAILBOX_DEPTH: &str = "wahook_conversation_mailbox_depth";
pub const INBOX_PENDING: &str = "wahook_inbox_pending_events";
pub const INBOX_OLDEST_PENDING_AGE: &str = "wahook_inbox_oldest_pending_age_seconds";
pub const DLQ_ROWS: &str = "wahook_dlq_rows";
pub const READY: &str = "wahook_ready";
pub const REQUEST_TIMEOUTS: &str = "wahook_http_request_timeouts_total";
pub const OPEN_CONNECTIONS: &str = "wahook_http_open_connections";
pub const CONNECTIONS_REFUSED: &str = "wahook_http_connections_refused_total";
pub const BAD_TOKENS: &str = "wahook_api_bad_tokens_total";
pub const ACTORS_EVICTED: &str = "wahook_conversation_actors_evicted_total";
pub const PAYLOAD_NOTES: &str = "wahook_payload_notes_total";
pub const AGENT_TURNS: &str = "wahook_agent_turns_total";
pub const AGENT_TURN_DURATION: &str = "wahook_agent_turn_duration_seconds";
pub const AGENT_PROVIDER_DURATION: &str = "wahook_agent_provider_request_duration_seconds";
pub const AGENT_PROVIDER_REQUESTS: &str = "wahook_agent_provider_requests_total";
pub const AGENT_TOKENS: &str = "wahook_agent_tokens_total";
pub const AGENT_BREAKER_OPEN: &str = "wahook_agent_breaker_open";
pub const AGENT_REPLIES: &str = "wahook_agent_replies_total";
/// Template sends by outcome (sent, failed, unknown) or the refusal's reason.
pub const TEMPLATES_SENT: &str = "wahook_templates_sent_total";
pub const TEMPLATE_SYNCS: &str = "wahook_template_syncs_total";
pub const TEMPLATE_UPDATES: &str = "wahook_template_updates_total";
/// Media jobs by outcome: stored, failed, retry, deleted (retention).
pub const MEDIA_JOBS: &str = "wahook_media_jobs_total";
/// Full readings of a payload into a typed event, by who read it: `intake` (once per request
/// kept), `processing` (an event read back: recovery, re-drives, replays, broker deliveries),
/// `publish` (the cluster sweeper).
pub const PAYLOAD_READS: &str = "wahook_payload_reads_total";
/// Hand-off notifications by outcome: delivered, retry, failed, skipped.
pub const HANDOFF_NOTIFICATIONS: &str = "wahook_handoff_notifications_total";
/// Bytes of files stored, by store (fs, s3).
pub const MEDIA_BYTES: &str = "wahook_media_bytes_stored_total";
/// One fetch of a file (Graph metadata and download).
pub const MEDIA_FETCH_SECONDS: &str = "wahook_media_fetch_duration_seconds";
/// What the agent did with the burst's files: image (sent as a part), transcript (made by the
/// provider, or Kapso's), marker (neither), by outcome.
pub const AGENT_MEDIA: &str = "wahook_agent_media_total";
/// Follow-ups by stage: due (found by the sweep), sent (text or template), cancelled (reason).
pub const FOLLOW_UPS: &str = "wahook_follow_ups_total";
/// Wall time of each step of the two hot writers' commits (`step`: inbox_append, inbox_flush, begin,
/// contacts, conversations, messages, statuses, counts, transitions, mark_processed, commit).
pub const DB_STEP_DURATION: &str = "wahook_db_step_duration_seconds";
/// How long a writer waited for the SQLite write gate (`writer`: inbox, store).
pub const WRITE_GATE_WAIT: &str = "wahook_write_gate_wait_seconds";

/// Cluster mode: partitions this node consumes (is the active consumer of).
pub const CLUSTER_PARTITIONS_OWNED: &str = "wahook_cluster_partitions_owned";
/// Cluster mode: 1 while the broker connection is up (0 on a single node).
pub const CLUSTER_BROKER_UP: &str = "wahook_cluster_broker_connected";
/// Cluster mode: partition messages published (`via`: intake, sweeper; `outcome`: confirmed, failed).
pub const CLUSTER_PUBLISHED: &str = "wahook_cluster_published_total";
/// Cluster mode: deliveries finished (`outcome`: acked, requeued, rejected).
pub const CLUSTER_CONSUMED: &str = "wahook_cluster_consumed_total";
/// Cluster mode: time from publishing an event's messages to the broker's confirms.
pub const CLUSTER_PUBLISH_DURATION: &str = "wahook_cluster_publish_duration_seconds";
/// Cluster mode: partitions this node took or handed back (`change`: claimed, released).
pub const CLUSTER_REBALANCES: &str = "wahook_cluster_partition_changes_total";

/// Records one writer step's wall time since `started`.
pub fn step(step: &'static str, started: std::time::Instant) {
    metrics::histogram!(DB_STEP_DURATION, "step" => step).record(started.elapsed().as_secs_f64());
}

/// Every histogram, for the test that checks each is exposed with real buckets.
pub const HISTOGRAMS: &[&str] = &[
    HTTP_REQUEST_DURATION,
    INBOX_BATCH_SIZE,
    INBOX_COMMIT_DURATION,
    STORE_BATCH_SIZE,
    STORE_COMMIT_DURATION,
    PROCESSING_LAG,
    DB_STEP_DURATION,
    WRITE_GATE_WAIT,
    CLUSTER_PUBLISH_DURATION,
    MEDIA_FETCH_SECONDS,
];

/// Webhook outcomes, registered at zero so dashboards and alerts see series before the first
/// rejection happens.
const OUTCOMES: &[&str] = &[
    "accepted",
    "duplicate",
    "missing_signature",
    "malformed_signature",
    "bad_signature",
    "unknown_phone_number",
    "cross_tenant",
    "no_secret_for_source",
    "payload_not_json",
    "store_unavailable",
    "intake_queue_full",
    "processing_backlog",
    "broker_unavailable",
];

/// Seconds, from a quarter millisecond (a sub-millisecond ack must be visible) to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once per process (tests start many apps in one process and
/// share it) and starts its upkeep task on the current runtime.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(INBOX_BATCH_SIZE.into()), BATCH_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(STORE_BATCH_SIZE.into()), BATCH_BUCKETS)
                })
                .expect("bucket lists are non-empty constants");
            let handle = match builder.install_recorder() {
                Ok(h) => h,
                // Another recorder is already global (an embedding program's): render ours
                // anyway so /metrics still answers.
                Err(_) => builder_fallback(),
            };
            describe();
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .ok();
            handle
        })
        .clone()
}

fn builder_fallback() -> PrometheusHandle {
    PrometheusBuilder::new().build_recorder().handle()
}

fn describe() {
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "Duration of HTTP server requests, by route template, method and status."
    );
    describe_counter!(
        WEBHOOKS_RECEIVED,
        "Webhook requests received, by source and outcome (accepted, duplicate, or the rejection reason)."
    );
    describe_gauge!(INTAKE_QUEUE_DEPTH, "Requests waiting for the inbox writer.");
    describe_counter!(
        REQUEST_TIMEOUTS,
        "Requests not read and answered within server.request_timeout_ms (answered 408)."
    );
    describe_gauge!(OPEN_CONNECTIONS, "HTTP connections open now.");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections closed at accept because server.max_connections were open."
    );
    describe_counter!(
        BAD_TOKENS,
        "Operator API requests with an unknown token, by answer (401, or 429 past the per-address limit)."
    );
    describe_counter!(
        ACTORS_EVICTED,
        "Idle conversation actors asked to stop early because actors.max_live were alive."
    );
    describe_histogram!(
        INBOX_BATCH_SIZE,
        "Webhook requests committed together by one inbox group commit."
    );
    describe_histogram!(
        INBOX_COMMIT_DURATION,
        Unit::Seconds,
        "Duration of one inbox group commit."
    );
    describe_counter!(
        DB_STATEMENTS,
        "Database statements issued, by component (inbox, store)."
    );
    describe_histogram!(
        STORE_BATCH_SIZE,
        "Change sets (one conversation's share of one event) committed per store transaction."
    );
    describe_histogram!(
        DB_STEP_DURATION,
        Unit::Seconds,
        "Wall time of one step of an inbox or store commit, by step."
    );
    describe_histogram!(
        WRITE_GATE_WAIT,
        Unit::Seconds,
        "Time a writer waited for SQLite's write gate (zero on PostgreSQL), by writer."
    );
    describe_histogram!(
        STORE_COMMIT_DURATION,
        Unit::Seconds,
        "Duration of one store transaction."
    );
    describe_counter!(
        EVENTS_PROCESSED,
        "Inbox events finished, by outcome (processed, parked in the DLQ, dead)."
    );
    describe_histogram!(
        PROCESSING_LAG,
        Unit::Seconds,
        "From the ack (received_at) to the event's effects being committed."
    );
    describe_counter!(
        RETRIES,
        "Processing retries of a change set by its conversation actor."
    );
    describe_counter!(
        ACTOR_RESTARTS,
        "Actors restarted by their supervisor, by actor kind."
    );
    describe_gauge!(LIVE_CONVERSATIONS, "Conversation actors alive.");
    describe_gauge!(
        IN_FLIGHT,
        "Events dispatched to processing and not yet finished."
    );
    describe_counter!(DLQ_PARKED, "Events parked in the dead-letter queue.");
    describe_counter!(
        INBOX_DOUBTFUL,
        "Events of inbox commits whose connection broke (503 answered), by what the lookup found: committed (then processed) or not_committed."
    );
    describe_gauge!(
        MAILBOX_DEPTH,
        "Slices handed to conversation actors and not yet finished, summed over actors."
    );
    describe_gauge!(INBOX_PENDING, "Inbox events not yet processed.");
    describe_gauge!(
        INBOX_OLDEST_PENDING_AGE,
        Unit::Seconds,
        "Age of the oldest inbox event not yet processed."
    );
    describe_gauge!(DLQ_ROWS, "Dead-letter queue rows by resolution status.");
    describe_gauge!(
        READY,
        "1 when /ready would answer 200 (store answers, actors up, backlog young)."
    );
    describe_counter!(
        PAYLOAD_NOTES,
        "Lines normalisation reported, by kind: note (value-level error, part stored but not \
         processed) or unattributed (no conversation found; the event went to the DLQ)."
    );
    describe_counter!(
        AGENT_TURNS,
        "AI agent turns (one per burst of inbound messages) by agent and outcome."
    );
    describe_histogram!(
        AGENT_TURN_DURATION,
        Unit::Seconds,
        "An AI agent turn from its start to the reply's record, provider call included."
    );
    describe_histogram!(
        AGENT_PROVIDER_DURATION,
        Unit::Seconds,
        "One chat-completions request, by outcome (ok, retryable, error)."
    );
    describe_counter!(
        AGENT_PROVIDER_REQUESTS,
        "Chat-completions requests by agent and outcome (ok, retryable, error, breaker_open)."
    );
    describe_counter!(
        AGENT_TOKENS,
        "Tokens the provider reported, by kind (prompt, completion)."
    );
    describe_gauge!(
        AGENT_BREAKER_OPEN,
        "The agent's circuit breaker: 0 closed, 0.5 half-open, 1 open."
    );
    describe_counter!(
        AGENT_REPLIES,
        "Agent replies by outcome (sent, failed, unknown, skipped) and reason."
    );
    describe_counter!(
        TEMPLATES_SENT,
        "Template sends by outcome: sent, failed, unknown, or the reason it was refused before leaving (template_not_approved, template_parameters, marketing_opted_out, template_not_found)."
    );
    describe_counter!(
        TEMPLATE_SYNCS,
        "Template catalog syncs from the Graph API, by outcome."
    );
    describe_counter!(
        TEMPLATE_UPDATES,
        "Template webhooks applied to the catalog, by outcome."
    );
    describe_counter!(
        FOLLOW_UPS,
        "Agent follow-ups by stage (due, sent, cancelled), kind (text, template) and reason."
    );
    // Registered at zero, so dashboards and alerts see series before the first event.
    for outcome in [
        "sent",
        "failed",
        "unknown",
        "template_not_approved",
        "template_parameters",
        "marketing_opted_out",
        "template_not_found",
    ] {
        metrics::counter!(TEMPLATES_SENT, "outcome" => outcome).increment(0);
    }
    for (stage, kind) in [
        ("due", "any"),
        ("sent", "text"),
        ("sent", "template"),
        ("cancelled", "any"),
    ] {
        metrics::counter!(FOLLOW_UPS, "stage" => stage, "kind" => kind).increment(0);
    }
    for source in ["meta", "kapso"] {
        for outcome in OUTCOMES {
            metrics::counter!(WEBHOOKS_RECEIVED, "source" => source, "outcome" => *outcome)
                .increment(0);
        }
    }
    for outcome in ["processed", "parked", "dead"] {
        metrics::counter!(EVENTS_PROCESSED, "outcome" => outcome).increment(0);
    }
    for actor in ["router", "dead_letter", "conversation"] {
        metrics::counter!(ACTOR_RESTARTS, "actor" => actor).increment(0);
    }
    metrics::counter!(RETRIES).increment(0);
    describe_gauge!(
        CLUSTER_PARTITIONS_OWNED,
        "Cluster mode: partition queues this node is the active consumer of."
    );
    describe_gauge!(
        CLUSTER_BROKER_UP,
        "Cluster mode: 1 while the RabbitMQ connection is up."
    );
    describe_counter!(
        CLUSTER_PUBLISHED,
        "Cluster mode: partition messages published, by path (intake, sweeper) and outcome."
    );
    describe_counter!(
        CLUSTER_CONSUMED,
        "Cluster mode: broker deliveries finished, by outcome (acked, requeued, rejected)."
    );
    describe_histogram!(
        CLUSTER_PUBLISH_DURATION,
        Unit::Seconds,
        "Cluster mode: time from publishing an event's messages to the broker's confirms."
    );
    describe_counter!(
        CLUSTER_REBALANCES,
        "Cluster mode: partitions taken (claimed) or handed back (released) by this node."
    );
    describe_counter!(
        MEDIA_JOBS,
        "Media jobs by outcome: stored, failed (with the reason on the row), retry, deleted (media.keep_days)."
    );
    describe_counter!(MEDIA_BYTES, "Bytes of files stored, by store (fs, s3).");
    describe_counter!(
        PAYLOAD_READS,
        "Readings of a payload into a typed event, by who read it: intake (once per kept request), processing (an event read back: recovery, re-drives, replays, broker deliveries), publish (the cluster sweeper)."
    );
    describe_counter!(
        HANDOFF_NOTIFICATIONS,
        "Hand-off notifications to an account's notify_url by outcome: delivered, retry, failed (with the reason on the row), skipped (no notify_url)."
    );
    describe_histogram!(
        MEDIA_FETCH_SECONDS,
        Unit::Seconds,
        "One fetch of a file from the Graph API: the media id's URL and the download."
    );
    describe_counter!(
        AGENT_MEDIA,
        "Files of a burst as the agent used them: kind (image, transcript), outcome (sent, made, kapso, unsupported, failed, not_stored)."
    );
    let _ = metrics::histogram!(MEDIA_FETCH_SECONDS);
    for outcome in ["stored", "failed", "retry", "deleted"] {
        metrics::counter!(MEDIA_JOBS, "outcome" => outcome).increment(0);
    }
    for store in ["fs", "s3"] {
        metrics::counter!(MEDIA_BYTES, "store" => store).increment(0);
    }
    for by in ["intake", "processing", "publish"] {
        metrics::counter!(PAYLOAD_READS, "by" => by).increment(0);
    }
    for outcome in ["delivered", "retry", "failed", "skipped"] {
        metrics::counter!(HANDOFF_NOTIFICATIONS, "outcome" => outcome).increment(0);
    }
    // Registered (no observation) so its series exist on a single node too.
    let _ = metrics::histogram!(CLUSTER_PUBLISH_DURATION);
    metrics::gauge!(CLUSTER_PARTITIONS_OWNED).set(0.0);
    metrics::gauge!(CLUSTER_BROKER_UP).set(0.0);
    for via in ["intake", "sweeper"] {
        for outcome in ["confirmed", "failed"] {
            metrics::counter!(CLUSTER_PUBLISHED, "via" => via, "outcome" => outcome).increment(0);
        }
    }
    for outcome in ["acked", "requeued", "rejected"] {
        metrics::counter!(CLUSTER_CONSUMED, "outcome" => outcome).increment(0);
    }
    for change in ["claimed", "released"] {
        metrics::counter!(CLUSTER_REBALANCES, "change" => change).increment(0);
    }
    metrics::counter!(DLQ_PARKED).increment(0);
    for component in ["inbox", "store"] {
        metrics::counter!(DB_STATEMENTS, "component" => component).increment(0);
    }
    for outcome in ["sent", "failed", "unknown", "skipped"] {
        metrics::counter!(AGENT_REPLIES, "outcome" => outcome, "reason" => "none").increment(0);
    }
    for kind in ["prompt", "completion"] {
        metrics::counter!(AGENT_TOKENS, "kind" => kind).increment(0);
    }
    for kind in ["note", "unattributed"] {
        metrics::counter!(PAYLOAD_NOTES, "kind" => kind).increment(0);
    }
    metrics::gauge!(READY).set(0.0);
}
