//! What the server says about a load run: its `/metrics` before and after, so `loadgen
//! --until-processed` can report the end-to-end processed rate and the processing lag of the
//! same run, not only the acknowledgements.

use std::{
    fmt,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use axum::body::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, client::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The counters and the lag histogram, as read once.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Webhooks the server accepted (stored as new events).
    pub accepted: f64,
    /// Events finished: processed, or parked in the dead-letter queue.
    pub finished: f64,
    /// `wahook_processing_lag_seconds` buckets: (upper bound in seconds, cumulative count).
    pub lag: Vec<(f64, f64)>,
}

impl Snapshot {
    pub fn parse(text: &str) -> Self {
        let mut s = Self::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            if series.starts_with("wahook_webhooks_received_total{")
                && series.contains(r#"outcome="accepted""#)
            {
                s.accepted += value;
            } else if (series.starts_with("wahook_events_processed_total{")
                && series.contains(r#"outcome="processed""#))
                || series.starts_with("wahook_dlq_parked_total")
            {
                s.finished += value;
            } else if let Some(rest) = series.strip_prefix("wahook_processing_lag_seconds_bucket{")
            {
                let le = rest
                    .split("le=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or("");
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::NAN)
                };
                if !bound.is_nan() {
                    s.lag.push((bound, value));
                }
            }
        }
        s.lag.sort_by(|a, b| a.0.total_cmp(&b.0));
        s
    }
}

/// The processing side of a run.
#[derive(Debug, Clone)]
pub struct Processing {
    /// Events the server accepted during the run.
    pub accepted: u64,
    /// From the first request until the last of them was finished.
    pub elapsed: Duration,
    /// From the last acknowledgement until then.
    pub catch_up: Duration,
    /// Lag quantiles over the run (upper bounds of the histogram's buckets), seconds.
    pub lag_p50: f64,
    pub lag_p99: f64,
    /// Whether processing finished them before the wait ran out.
    pub complete: bool,
}

impl Processing {
    pub fn rate(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for Processing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "processed: {} accepted events finished in {:.2} s = {:.0} events/s end to end{} \
             (catch-up after the last ack {:.2} s); lag ms p50 ≤ {} p99 ≤ {}",
            self.accepted,
            self.elapsed.as_secs_f64(),
            self.rate(),
            if self.complete {
                ""
            } else {
                " (NOT all finished)"
            },
            self.catch_up.as_secs_f64(),
            ms(self.lag_p50),
            ms(self.lag_p99),
        )
    }
}

fn ms(seconds: f64) -> String {
    if seconds.is_finite() {
        format!("{:.0}", seconds * 1000.0)
    } else {
        "+Inf".into()
    }
}

/// The q-quantile of the lag recorded between two snapshots (the upper bound of its bucket).
pub fn lag_quantile(before: &Snapshot, after: &Snapshot, q: f64) -> f64 {
    let count = |s: &Snapshot, bound: f64| {
        s.lag
            .iter()
            .find(|(b, _)| *b == bound)
            .map_or(0.0, |(_, n)| *n)
    };
    let total = after.lag.last().map_or(0.0, |(b, n)| n - count(before, *b));
    if total <= 0.0 {
        return 0.0;
    }
    for (bound, n) in &after.lag {
        if n - count(before, *bound) >= total * q {
            return *bound;
        }
    }
    f64::INFINITY
}

/// Reads `/metrics` from the server at `host` (`host:port`).
pub async fn snapshot(host: &str, authority: &str) -> anyhow::Result<Snapshot> {
    let stream = TcpStream::connect(host)
        .await
        .with_context(|| format!("connecting to {host} for /metrics"))?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let res = sender
        .send_request(
            Request::get("/metrics")
                .header("host", authority)
                .body(Empty::<Bytes>::new())?,
        )
        .await?;
    if !res.status().is_success() {
        bail!("/metrics answered {}", res.status());
    }
    let body = res.into_body().collect().await?.to_bytes();
    Ok(Snapshot::parse(&String::from_utf8_lossy(&body)))
}

/// Waits (up to `limit`) until the server has finished every event it accepted since
/// `before`, polling `/metrics`.
pub async fn until_processed(
    host: &str,
    authority: &str,
    before: &Snapshot,
    started: Instant,
    acked: Instant,
    limit: Duration,
) -> anyhow::Result<Processing> {
    loop {
        let now = snapshot(host, authority).await?;
        let accepted = now.accepted - before.accepted;
        let complete = now.finished - before.finished >= accepted;
        if complete || acked.elapsed() >= limit {
            return Ok(Processing {
                accepted: accepted.max(0.0) as u64,
                elapsed: started.elapsed(),
                catch_up: acked.elapsed(),
                lag_p50: lag_quantile(before, &now, 0.50),
                lag_p99: lag_quantile(before, &now, 0.99),
                complete,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_counters_and_the_lag_quantiles_of_a_run() {
        let before = Snapshot::parse(
            "wahook_webhooks_received_total{source=\"meta\",outcome=\"accepted\"} 10\n\
             wahook_events_processed_total{outcome=\"processed\"} 10\n\
             wahook_processing_lag_seconds_bucket{le=\"0.01\"} 10\n\
             wahook_processing_lag_seconds_bucket{le=\"0.1\"} 10\n\
             wahook_processing_lag_seconds_bucket{le=\"+Inf\"} 10\n",
        );
        let after = Snapshot::parse(
            "# HELP x\n\
             wahook_webhooks_received_total{source=\"meta\",outcome=\"accepted\"} 110\n\
             wahook_webhooks_received_total{source=\"meta\",outcome=\"duplicate\"} 7\n\
             wahook_events_processed_total{outcome=\"processed\"} 105\n\
             wahook_dlq_parked_total 5\n\
             wahook_processing_lag_seconds_bucket{le=\"0.01\"} 60\n\
             wahook_processing_lag_seconds_bucket{le=\"0.1\"} 109\n\
             wahook_processing_lag_seconds_bucket{le=\"+Inf\"} 110\n",
        );
        assert_eq!(after.accepted - before.accepted, 100.0);
        assert_eq!(after.finished - before.finished, 100.0);
        assert_eq!(lag_quantile(&before, &after, 0.5), 0.01);
        assert_eq!(lag_quantile(&before, &after, 0.99), 0.1);
        assert_eq!(lag_quantile(&before, &after, 1.0), f64::INFINITY);
        assert_eq!(lag_quantile(&after, &after, 0.99), 0.0, "nothing recorded");
    }
}
