//! `wahook loadgen`: builds realistic, signed Meta payloads (unique wamids, many senders,
//! statuses mixed in), POSTs them over N keep-alive connections at a target rate or at full
//! speed, and reports throughput, ack latency percentiles and non-200 answers; with
//! `--until-processed`, also the end-to-end processed rate and the processing lag of the run.

mod server;

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, client::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::ingest::signature;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Webhook URL (Meta format); several, comma-separated, spread the connections over
    /// them in turn (the nodes of a cluster).
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/whatsapp")]
    pub url: String,
    /// App secret of the account the payloads are for.
    #[arg(long, default_value = "demo-app-secret-change-me")]
    pub secret: String,
    /// `metadata.phone_number_id` of that account.
    #[arg(long, default_value = "100000000000001")]
    pub phone_number_id: String,
    /// Total requests to send.
    #[arg(long, default_value_t = 100_000)]
    pub requests: u64,
    /// Stop after this many seconds even if requests remain.
    #[arg(long, default_value_t = 300)]
    pub max_seconds: u64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Target requests per second over all connections; 0 = as fast as answers come.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Messages in each payload.
    #[arg(long, default_value_t = 1)]
    pub messages_per_payload: u32,
    /// Distinct senders (contact phone numbers) cycled through.
    #[arg(long, default_value_t = 1000)]
    pub senders: u64,
    /// Every Nth payload carries statuses instead of messages (0 = none).
    #[arg(long, default_value_t = 0)]
    pub status_every: u64,
    /// Every Nth payload is poison: signed and valid JSON, but its message names no sender, so
    /// processing parks it in the DLQ (0 = none).
    #[arg(long, default_value_t = 0)]
    pub poison_every: u64,
    /// Distinguishes wamids of separate runs against the same database.
    #[arg(long, default_value_t = default_run_id())]
    pub run_id: String,
    /// No progress while running (on a terminal a live line, otherwise a plain line every
    /// few seconds, both on stderr); the summary is printed either way.
    #[arg(long)]
    pub quiet: bool,
    /// Append one line per acknowledged (200) request to this file — `messages` or `statuses`,
    /// a tab, the payload's wamids comma-separated, then when it was sent and answered (µs
    /// since the start, tab-separated) — so a drill can check afterwards that each
    /// was processed exactly once.
    #[arg(long)]
    pub record: Option<std::path::PathBuf>,
    /// After the last answer, wait (up to `--max-seconds` more) until the server has processed
    /// every event it accepted during the run, and report the end-to-end processed rate and
    /// the processing lag from its `/metrics`.
    #[arg(long)]
    pub until_processed: bool,
    /// Keep going when the server goes away (a drill restarts it): reconnect until the
    /// deadline instead of stopping at the first refused connection.
    #[arg(long)]
    pub persist: bool,
}

fn default_run_id() -> String {
    format!("{:x}", chrono::Utc::now().timestamp_millis())
}

impl Args {
    /// Defaults aimed at `url`, for tests and benchmarks.
    pub fn new(
        url: impl Into<String>,
        secret: impl Into<String>,
        phone_number_id: impl Into<String>,
    ) -> Self {
        Self {
            url: url.into(),
            secret: secret.into(),
            phone_number_id: phone_number_id.into(),
            requests: 1000,
            max_seconds: 60,
            connections: 8,
            rate: 0,
            messages_per_payload: 1,
            senders: 100,
            status_every: 0,
            poison_every: 0,
            run_id: default_run_id(),
            record: None,
            persist: false,
            until_processed: false,
            quiet: true,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub sent: u64,
    pub ok: u64,
    pub non_200: u64,
    /// Of the non-200 answers: 503 (could not persist: the client retries) and any other 5xx.
    pub status_503: u64,
    pub status_5xx_other: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Ack latencies in microseconds, sorted.
    pub latencies_us: Vec<u32>,
    /// With `--until-processed`: the processing side of the same run.
    pub processing: Option<server::Processing>,
}

impl Report {
    /// Nothing counted yet; room for `latencies` answers.
    fn empty(latencies: usize) -> Self {
        Self {
            sent: 0,
            ok: 0,
            non_200: 0,
            status_503: 0,
            status_5xx_other: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latencies_us: Vec::with_capacity(latencies),
            processing: None,
        }
    }

    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The q-quantile (0..=1) of ack latency in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let idx = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        self.latencies_us[idx] as f64 / 1000.0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "requests: {} sent, {} ok (200), {} non-200 ({} × 503, {} other 5xx), {} transport errors in {:.2} s",
            self.sent,
            self.ok,
            self.non_200,
            self.status_503,
            self.status_5xx_other,
            self.errors,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "throughput: {:.0} acknowledged webhooks/s",
            self.throughput()
        )?;
        write!(
            f,
            "ack latency ms: p50 {:.3}  p95 {:.3}  p99 {:.3}  max {:.3}",
            self.quantile_ms(0.50),
            self.quantile_ms(0.95),
            self.quantile_ms(0.99),
            self.quantile_ms(1.0)
        )?;
        match &self.processing {
            Some(p) => write!(f, "\n{p}"),
            None => Ok(()),
        }
    }
}

struct Target {
    host: String,
    authority: String,
    path: String,
}

fn parse_url(url: &str) -> anyhow::Result<Target> {
    let rest = url
        .strip_prefix("http://")
        .context("loadgen speaks plain http:// only")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        bail!("no host in {url}");
    }
    let host = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok(Target {
        host,
        authority: authority.to_string(),
        path: path.to_string(),
    })
}

/// Builds payload `n` of a run: a Meta `messages` change with `messages_per_payload`
/// messages from one sender, or (every `status_every`th) the statuses of earlier sends.
pub fn payload(args: &Args, n: u64) -> String {
    let sender = 491_700_000_000u64 + (n % args.senders.max(1));
    let ts = chrono::Utc::now().timestamp();
    let value_body = if is_poison(args, n) {
        format!(
            r#""messages":[{{"id":"wamid.poison.{run}.{n}","timestamp":"{ts}","type":"text","text":{{"body":"from nobody"}}}}]"#,
            run = args.run_id
        )
    } else if args.status_every > 0 && n % args.status_every == args.status_every - 1 {
        let statuses: Vec<String> = (0..args.messages_per_payload)
            .map(|i| {
                format!(
                    r#"{{"id":"wamid.out.{run}.{n}.{i}","status":"delivered","timestamp":"{ts}","recipient_id":"{sender}","pricing":{{"billable":true,"pricing_model":"PMP","category":"service"}}}}"#,
                    run = args.run_id
                )
            })
            .collect();
        format!(r#""statuses":[{}]"#, statuses.join(","))
    } else {
        let messages: Vec<String> = (0..args.messages_per_payload)
            .map(|i| {
                format!(
                    r#"{{"from":"{sender}","id":"wamid.lg.{run}.{n}.{i}","timestamp":"{ts}","type":"text","text":{{"body":"Hola, ¿tienen el modelo {n}-{i} en stock? \/ price?"}}}}"#,
                    run = args.run_id
                )
            })
            .collect();
        format!(
            r#""contacts":[{{"profile":{{"name":"Load Sender {sender}"}},"wa_id":"{sender}"}}],"messages":[{}]"#,
            messages.join(",")
        )
    };
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"102290129340398","changes":[{{"value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550000001","phone_number_id":"{pnid}"}},{value_body}}},"field":"messages"}}]}}]}}"#,
        pnid = args.phone_number_id
    )
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    let targets: Vec<Arc<Target>> = args
        .url
        .split(',')
        .map(|u| parse_url(u.trim()).map(Arc::new))
        .collect::<anyhow::Result<_>>()?;
    let target = targets[0].clone();
    let args = Arc::new(args);
    let next = Arc::new(AtomicU64::new(0));
    let live = Arc::new(Live::default());
    let before = match args.until_processed {
        true => Some(server::snapshot(&target.host, &target.authority).await?),
        false => None,
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.max_seconds);
    let record = match &args.record {
        Some(path) => Some(Arc::new(std::sync::Mutex::new(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?,
        )))),
        None => None,
    };
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections.max(1) {
        let target = targets[i % targets.len()].clone();
        let (args, next, live) = (args.clone(), next.clone(), live.clone());
        let record = record.clone();
        tasks.push(tokio::spawn(async move {
            connection(target, args, next, live, record, started, deadline).await
        }));
    }
    let progress = (!args.quiet).then(|| tokio::spawn(show_progress(live, args.requests)));
    let mut report = Report::empty(args.requests as usize);
    for t in tasks {
        let part = t.await.context("loadgen connection task")??;
        report.sent += part.sent;
        report.ok += part.ok;
        report.non_200 += part.non_200;
        report.status_503 += part.status_503;
        report.status_5xx_other += part.status_5xx_other;
        report.errors += part.errors;
        report.latencies_us.extend(part.latencies_us);
    }
    report.elapsed = started.elapsed();
    report.latencies_us.sort_unstable();
    if let Some(record) = record {
        use std::io::Write;
        record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush()
            .context("writing the record file")?;
    }
    if let Some(progress) = progress {
        progress.abort();
        let _ = progress.await;
    }
    if let Some(before) = before {
        let acked = Instant::now();
        report.processing = Some(
            server::until_processed(
                &target.host,
                &target.authority,
                &before,
                started,
                acked,
                Duration::from_secs(args.max_seconds),
            )
            .await?,
        );
    }
    Ok(report)
}

/// Running totals the connections update and the progress line reads.
struct Live {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    /// Ack latencies in quarter-octave buckets of microseconds (bucket `i` holds values below
    /// 2^((i+1)/4) µs): enough for a p99 so far without sorting.
    buckets: [AtomicU64; 128],
}

impl Default for Live {
    fn default() -> Self {
        Self {
            sent: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Live {
    fn record(&self, latency_us: u32) {
        let i = ((f64::from(latency_us.max(1))).log2() * 4.0) as usize;
        self.buckets[i.min(127)].fetch_add(1, Ordering::Relaxed);
    }

    /// The upper bound of the bucket holding the p99, in ms.
    fn p99_ms(&self) -> f64 {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if total > 0 && seen * 100 >= total * 99 {
                return 2f64.powf((i + 1) as f64 / 4.0) / 1000.0;
            }
        }
        0.0
    }
}

/// A live line on a terminal (indicatif), otherwise a plain line every 5 s; on stderr, so
/// the summary on stdout stays the same for scripts.
async fn show_progress(live: Arc<Live>, total: u64) {
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::new(total);
    if terminal {
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let every = Duration::from_millis(if terminal { 250 } else { 5000 });
    let started = Instant::now();
    let (mut last_ok, mut last_at) = (0u64, started);
    loop {
        tokio::time::sleep(every).await;
        let (sent, ok, failed) = (
            live.sent.load(Ordering::Relaxed),
            live.ok.load(Ordering::Relaxed),
            live.failed.load(Ordering::Relaxed),
        );
        let rate = (ok - last_ok) as f64 / last_at.elapsed().as_secs_f64().max(1e-9);
        (last_ok, last_at) = (ok, Instant::now());
        let line = format!(
            "{ok} acknowledged, {failed} errors, {rate:.0}/s now, p99 so far ≤ {:.1} ms",
            live.p99_ms()
        );
        if terminal {
            bar.set_position(sent);
            bar.set_message(line);
        } else {
            eprintln!(
                "loadgen: {sent}/{total} sent, {line} ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
}

fn is_poison(args: &Args, n: u64) -> bool {
    args.poison_every > 0 && n % args.poison_every == args.poison_every - 1
}

/// One line of the record file: what the payload `n` carried.
fn record_line(args: &Args, n: u64) -> String {
    if is_poison(args, n) {
        return format!("poison\twamid.poison.{}.{n}\n", args.run_id);
    }
    let statuses = args.status_every > 0 && n % args.status_every == args.status_every - 1;
    let (kind, prefix) = if statuses {
        ("statuses", "wamid.out")
    } else {
        ("messages", "wamid.lg")
    };
    let wamids: Vec<String> = (0..args.messages_per_payload)
        .map(|i| format!("{prefix}.{}.{n}.{i}", args.run_id))
        .collect();
    format!("{kind}\t{}\n", wamids.join(","))
}

type Recorder = Arc<std::sync::Mutex<std::io::BufWriter<std::fs::File>>>;

/// A connection; with `--persist`, retried (every 50 ms) until the deadline.
async fn reconnect(
    target: &Target,
    args: &Args,
    part: &mut Report,
    deadline: Instant,
) -> anyhow::Result<Option<http1::SendRequest<Full<Bytes>>>> {
    loop {
        match connect(target).await {
            Ok(sender) => return Ok(Some(sender)),
            Err(e) if !args.persist => return Err(e),
            Err(_) if Instant::now() >= deadline => return Ok(None),
            Err(_) => {
                part.errors += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connect(target: &Target) -> anyhow::Result<http1::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(&target.host)
        .await
        .with_context(|| format!("connecting to {}", target.host))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn connection(
    target: Arc<Target>,
    args: Arc<Args>,
    next: Arc<AtomicU64>,
    live: Arc<Live>,
    record: Option<Recorder>,
    started: Instant,
    deadline: Instant,
) -> anyhow::Result<Report> {
    let mut part = Report::empty(0);
    let Some(mut sender) = reconnect(&target, &args, &mut part, deadline).await? else {
        return Ok(part);
    };
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= args.requests || Instant::now() >= deadline {
            break;
        }
        if args.rate > 0 {
            let due = started + Duration::from_secs_f64(n as f64 / args.rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let body = payload(&args, n);
        let sig = signature::meta_header(args.secret.as_bytes(), body.as_bytes());
        let request = Request::post(&target.path)
            .header("host", &target.authority)
            .header("content-type", "application/json")
            .header("x-hub-signature-256", sig)
            .body(Full::new(Bytes::from(body)))?;
        let sent_at = Instant::now();
        part.sent += 1;
        live.sent.fetch_add(1, Ordering::Relaxed);
        if sender.ready().await.is_err() {
            match reconnect(&target, &args, &mut part, deadline).await? {
                Some(s) => sender = s,
                None => break,
            }
        }
        match sender.send_request(request).await {
            Ok(response) => {
                let status = response.status();
                let _ = response.into_body().collect().await;
                let latency = sent_at.elapsed().as_micros().min(u32::MAX as u128) as u32;
                part.latencies_us.push(latency);
                live.record(latency);
                if status == hyper::StatusCode::OK {
                    part.ok += 1;
                    live.ok.fetch_add(1, Ordering::Relaxed);
                    if let Some(record) = &record {
                        use std::io::Write;
                        let line = format!(
                            "{}\t{}\t{}\n",
                            record_line(&args, n).trim_end(),
                            sent_at.duration_since(started).as_micros(),
                            started.elapsed().as_micros()
                        );
                        let mut file = record.lock().unwrap_or_else(|p| p.into_inner());
                        file.write_all(line.as_bytes())
                            .context("writing the record file")?;
                    }
                } else {
                    if status == hyper::StatusCode::SERVICE_UNAVAILABLE {
                        part.status_503 += 1;
                    } else if status.is_server_error() {
                        part.status_5xx_other += 1;
                    }
                    part.non_200 += 1;
                    live.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                part.errors += 1;
                live.failed.fetch_add(1, Ordering::Relaxed);
                match reconnect(&target, &args, &mut part, deadline).await? {
                    Some(s) => sender = s,
                    None => break,
                }
            }
        }
    }
    Ok(part)
}
