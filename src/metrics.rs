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
    describe_histogram!(
        INBOX_BATCH_SIZE,
        "Webhook requests committed together by one inbox group commit."
    );
    describe_histogram!(
        INBOX_COMMIT_DURATION,
        Unit::Seconds,
        "Duration of one inbox group commit."
    );
    describe_counter!(DB_STATEMENTS, "Database statements issued, by component.");
}
