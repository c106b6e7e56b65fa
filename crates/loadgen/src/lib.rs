//! `cutover-loadgen`: a small open-loop HTTP load generator that attributes every response to
//! the version that served it (the `x-app-version` response header).
//!
//! Used by `cutover demo`, the end-to-end tests and the benchmarks.
//!
//! - **Open loop**: requests are fired on a fixed schedule (`rate_per_sec`), independent of how
//!   fast the target answers. When `max_in_flight` requests are outstanding, a scheduled request
//!   is counted as `skipped` instead of being queued.
//! - **Attribution**: every response is counted under its `x-app-version` (or
//!   [`UNKNOWN_VERSION`] when the header is missing); timeouts and connection failures have no
//!   version and are counted in [`LoadReport::unattributed_failed`].
//! - **Stickiness**: each request carries a client id (`client-0` .. `client-{N-1}`, chosen at
//!   random) in a configurable header; the report keeps, per client, the run-length sequence of
//!   versions that served it, so a test can check sticky monotonicity.
//!
//! - **Orders over WebSockets** ([`Orders`]): long-lived clients that place orders on a
//!   WebSocket, reconnect when the socket ends (1012 during a rollout, or an abrupt drop) and
//!   resend every unacknowledged order, so a test can check that no order was lost and
//!   none acknowledged twice. See the [`orders`] module.
//!
//! ```no_run
//! # async fn demo(addr: std::net::SocketAddr) {
//! use cutover_loadgen::{Load, LoadConfig};
//! let load = Load::start(LoadConfig { rate_per_sec: 500, ..LoadConfig::new(addr) });
//! tokio::time::sleep(std::time::Duration::from_secs(5)).await;
//! let report = load.stop().await;
//! assert_eq!(report.sent, report.ok + report.failed);
//! # }
//! ```
//!
//! ```no_run
//! # async fn demo(addr: std::net::SocketAddr) {
//! use cutover_loadgen::{Orders, OrdersConfig};
//! let orders = Orders::start(OrdersConfig { clients: 20, ..OrdersConfig::new(addr) });
//! tokio::time::sleep(std::time::Duration::from_secs(5)).await;
//! let report = orders.stop().await;
//! assert!(report.unacked.is_empty());
//! assert_eq!(report.acked.len() as u64, report.sent_unique);
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod orders;

pub use orders::{Orders, OrdersConfig, OrdersReport, ABNORMAL_CLOSE};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng as _;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// The response header that names the version that served a request.
pub const VERSION_HEADER: &str = "x-app-version";

/// Version key used in [`LoadReport::by_version`] for responses without [`VERSION_HEADER`].
pub const UNKNOWN_VERSION: &str = "unknown";

/// At most this many [`Failure`]s are stored; all of them are counted.
pub const MAX_STORED_FAILURES: usize = 10_000;

/// What to send, where and how fast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadConfig {
    /// Address to send requests to (plain HTTP/1.1).
    pub target: SocketAddr,
    /// Request path (and query), e.g. `/` or `/api/orders`.
    pub path: String,
    /// Requests per second, on a fixed schedule. 0 sends nothing.
    pub rate_per_sec: u32,
    /// Maximum outstanding requests; beyond it scheduled requests are `skipped`.
    pub max_in_flight: usize,
    /// Per-request deadline (connect + response + body).
    pub timeout: Duration,
    /// Number of distinct client ids (`client-0` ..); 0 sends no client header.
    pub clients: u32,
    /// Header that carries the client id.
    pub client_header: String,
}

impl LoadConfig {
    /// Defaults: `/`, 100 rps, 256 in flight, 2 s timeout, 100 clients, `x-client-id`.
    pub fn new(target: SocketAddr) -> Self {
        Self {
            target,
            path: "/".to_owned(),
            rate_per_sec: 100,
            max_in_flight: 256,
            timeout: Duration::from_secs(2),
            clients: 100,
            client_header: "x-client-id".to_owned(),
        }
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum FailureKind {
    /// The response status was not 2xx.
    Status(u16),
    /// No complete response within [`LoadConfig::timeout`].
    Timeout,
    /// The connection could not be established.
    Connect,
    /// Anything else (reset connection, protocol error, ...).
    Other(String),
}

/// One failed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// When the failure was observed, since the load started.
    pub at: Duration,
    /// The client id sent (empty when `clients == 0`).
    pub client: String,
    /// The version that answered, when there was an answer with [`VERSION_HEADER`].
    pub version: Option<String>,
    /// What went wrong.
    pub kind: FailureKind,
}

/// Counts and latencies of the responses one version served.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VersionCounts {
    /// 2xx responses.
    pub ok: u64,
    /// Non-2xx responses.
    pub failed: u64,
    /// Median latency of all responses from this version (request start to full body).
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Maximum latency.
    pub max: Duration,
}

/// A view of the counters, live ([`Load::snapshot`]) or final ([`Load::stop`]).
///
/// After [`Load::stop`]: `sent == ok + failed` and
/// `sent == Σ by_version (ok + failed) + unattributed_failed`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LoadReport {
    /// Time since the load started.
    pub elapsed: Duration,
    /// Requests sent (scheduled and not skipped).
    pub sent: u64,
    /// 2xx responses.
    pub ok: u64,
    /// Non-2xx responses, timeouts and connection failures.
    pub failed: u64,
    /// Scheduled requests not sent because `max_in_flight` was reached.
    pub skipped: u64,
    /// Requests sent whose outcome is not known yet (0 after stop).
    pub in_flight: u64,
    /// Per serving version.
    pub by_version: BTreeMap<String, VersionCounts>,
    /// Failures without a serving version (timeouts, connection errors).
    pub unattributed_failed: u64,
    /// The first [`MAX_STORED_FAILURES`] failures, in the order observed.
    pub failures: Vec<Failure>,
    /// The first failure observed.
    pub first_failure: Option<Failure>,
    /// The last failure observed.
    pub last_failure: Option<Failure>,
    /// Per client id: run-length encoded sequence of the versions that served it, in the order
    /// the responses completed, e.g. `[("v1", 40), ("v2", 60)]`.
    pub per_client: BTreeMap<String, Vec<(String, u64)>>,
    /// Number of times a client was served by a version it had already left earlier
    /// (`v1 → v2 → v1` counts one). 0 for a sticky, monotone rollout.
    pub client_flips: u64,
}

impl LoadReport {
    /// Failed / sent (0 when nothing was sent).
    pub fn error_ratio(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.failed as f64 / self.sent as f64
        }
    }
}

#[derive(Debug, Default)]
struct VersionData {
    ok: u64,
    failed: u64,
    /// Raw latencies in microseconds (saturating).
    latencies_us: Vec<u32>,
}

#[derive(Debug, Default)]
struct Counters {
    sent: u64,
    ok: u64,
    failed: u64,
    skipped: u64,
    unattributed_failed: u64,
    by_version: BTreeMap<String, VersionData>,
    failures: Vec<Failure>,
    first_failure: Option<Failure>,
    last_failure: Option<Failure>,
    per_client: BTreeMap<String, Vec<(String, u64)>>,
}

impl Counters {
    fn record_failure(&mut self, f: Failure) {
        self.failed += 1;
        if self.first_failure.is_none() {
            self.first_failure = Some(f.clone());
        }
        if self.failures.len() < MAX_STORED_FAILURES {
            self.failures.push(f.clone());
        }
        self.last_failure = Some(f);
    }

    fn record_response(
        &mut self,
        client: &str,
        version: Option<String>,
        status: u16,
        latency: Duration,
        at: Duration,
    ) {
        let ok = (200..300).contains(&status);
        let key = version
            .clone()
            .unwrap_or_else(|| UNKNOWN_VERSION.to_owned());
        if !client.is_empty() {
            let runs = self.per_client.entry(client.to_owned()).or_default();
            match runs.last_mut() {
                Some((v, n)) if *v == key => *n += 1,
                _ => runs.push((key.clone(), 1)),
            }
        }
        let data = self.by_version.entry(key).or_default();
        data.latencies_us
            .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
        if ok {
            data.ok += 1;
            self.ok += 1;
        } else {
            data.failed += 1;
            self.record_failure(Failure {
                at,
                client: client.to_owned(),
                version,
                kind: FailureKind::Status(status),
            });
        }
    }

    fn record_error(&mut self, client: &str, kind: FailureKind, at: Duration) {
        self.unattributed_failed += 1;
        self.record_failure(Failure {
            at,
            client: client.to_owned(),
            version: None,
            kind,
        });
    }

    fn report(&self, elapsed: Duration) -> LoadReport {
        let by_version = self
            .by_version
            .iter()
            .map(|(v, d)| {
                let mut lat = d.latencies_us.clone();
                lat.sort_unstable();
                let counts = VersionCounts {
                    ok: d.ok,
                    failed: d.failed,
                    p50: percentile(&lat, 0.50),
                    p99: percentile(&lat, 0.99),
                    max: lat
                        .last()
                        .map_or(Duration::ZERO, |&us| Duration::from_micros(us.into())),
                };
                (v.clone(), counts)
            })
            .collect();
        let client_flips = self.per_client.values().map(|runs| flips(runs)).sum();
        LoadReport {
            elapsed,
            sent: self.sent,
            ok: self.ok,
            failed: self.failed,
            skipped: self.skipped,
            in_flight: self.sent - self.ok - self.failed,
            by_version,
            unattributed_failed: self.unattributed_failed,
            failures: self.failures.clone(),
            first_failure: self.first_failure.clone(),
            last_failure: self.last_failure.clone(),
            per_client: self.per_client.clone(),
            client_flips,
        }
    }
}

/// Nearest-rank percentile of sorted microsecond samples.
fn percentile(sorted_us: &[u32], q: f64) -> Duration {
    if sorted_us.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted_us.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted_us.len()) - 1;
    Duration::from_micros(sorted_us[idx].into())
}

/// Number of runs whose version already appeared in an earlier run.
fn flips(runs: &[(String, u64)]) -> u64 {
    let mut seen: Vec<&str> = Vec::new();
    let mut n = 0;
    for (v, _) in runs {
        if seen.contains(&v.as_str()) {
            n += 1;
        } else {
            seen.push(v);
        }
    }
    n
}

#[derive(Debug)]
struct Shared {
    started: Instant,
    counters: Mutex<Counters>,
}

impl Shared {
    fn snapshot(&self) -> LoadReport {
        let elapsed = self.started.elapsed();
        self.counters.lock().unwrap().report(elapsed)
    }
}

/// A running load. Dropping it stops firing new requests (in-flight ones finish in the
/// background); [`Load::stop`] also waits for them and returns the final report.
#[derive(Debug)]
pub struct Load {
    cfg: LoadConfig,
    shared: Arc<Shared>,
    stop_tx: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Load {
    /// Starts firing requests on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(cfg: LoadConfig) -> Load {
        let shared = Arc::new(Shared {
            started: Instant::now(),
            counters: Mutex::new(Counters::default()),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(generate(cfg.clone(), Arc::clone(&shared), stop_rx));
        Load {
            cfg,
            shared,
            stop_tx,
            task,
        }
    }

    /// The configuration this load runs with.
    pub fn config(&self) -> &LoadConfig {
        &self.cfg
    }

    /// The counters so far (requests still in flight are in [`LoadReport::in_flight`]).
    pub fn snapshot(&self) -> LoadReport {
        self.shared.snapshot()
    }

    /// Stops firing, waits for every in-flight request to finish (each is bounded by the
    /// timeout) and returns the final report.
    pub async fn stop(mut self) -> LoadReport {
        self.stop_tx.send_replace(true);
        let _ = (&mut self.task).await;
        self.shared.snapshot()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop_tx.send_replace(true);
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Shortest pause of the scheduler; requests due in between are fired together.
const TICK: Duration = Duration::from_millis(1);

async fn generate(cfg: LoadConfig, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let max_in_flight = cfg
        .max_in_flight
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(cfg.timeout));
    let http: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(max_in_flight)
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let uri: Option<Uri> = format!("http://{}{}", cfg.target, cfg.path).parse().ok();
    let header = HeaderName::try_from(cfg.client_header.as_str()).ok();
    let client_ids: Arc<[String]> = (0..cfg.clients).map(|i| format!("client-{i}")).collect();

    if cfg.rate_per_sec > 0 {
        let period = (Duration::from_secs(1) / cfg.rate_per_sec).max(TICK);
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut fired: u64 = 0;
        loop {
            tokio::select! {
                biased;
                _ = async { stop.wait_for(|s| *s).await.is_ok() } => break,
                _ = interval.tick() => {}
            }
            // Token schedule: everything due by now, so timer granularity does not cap the rate.
            let elapsed = shared.started.elapsed();
            let due =
                (elapsed.as_nanos() * u128::from(cfg.rate_per_sec) / 1_000_000_000) as u64 + 1;
            while fired < due {
                fired += 1;
                let client = if client_ids.is_empty() {
                    String::new()
                } else {
                    client_ids[rand::thread_rng().gen_range(0..client_ids.len())].clone()
                };
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    shared.counters.lock().unwrap().skipped += 1;
                    continue;
                };
                shared.counters.lock().unwrap().sent += 1;
                let req = build_request(uri.as_ref(), header.as_ref(), &client);
                let (http, shared) = (http.clone(), Arc::clone(&shared));
                let timeout = cfg.timeout;
                tokio::spawn(async move {
                    one_request(http, req, client, timeout, &shared).await;
                    drop(permit);
                });
            }
        }
    } else {
        let _ = stop.wait_for(|s| *s).await;
    }
    // Wait for every outstanding request.
    let _ = permits.acquire_many(max_in_flight as u32).await;
}

fn build_request(
    uri: Option<&Uri>,
    header: Option<&HeaderName>,
    client: &str,
) -> Option<Request<Empty<Bytes>>> {
    let mut builder = Request::get(uri?.clone());
    if let (Some(h), false) = (header, client.is_empty()) {
        builder = builder.header(h, HeaderValue::from_str(client).ok()?);
    }
    builder.body(Empty::new()).ok()
}

async fn one_request(
    http: HttpClient,
    req: Option<Request<Empty<Bytes>>>,
    client: String,
    timeout: Duration,
    shared: &Shared,
) {
    let start = Instant::now();
    let Some(req) = req else {
        let at = shared.started.elapsed();
        let kind = FailureKind::Other("invalid request (check path and client_header)".to_owned());
        shared
            .counters
            .lock()
            .unwrap()
            .record_error(&client, kind, at);
        return;
    };
    let outcome = tokio::time::timeout(timeout, async {
        let resp = http.request(req).await?;
        let (parts, body) = resp.into_parts();
        // Read the whole body so the latency covers it and the connection can be reused.
        let body_ok = body.collect().await.is_ok();
        Ok::<_, hyper_util::client::legacy::Error>((parts, body_ok))
    })
    .await;
    let latency = start.elapsed();
    let at = shared.started.elapsed();
    let mut c = shared.counters.lock().unwrap();
    match outcome {
        Err(_) => c.record_error(&client, FailureKind::Timeout, at),
        Ok(Err(e)) if e.is_connect() => c.record_error(&client, FailureKind::Connect, at),
        Ok(Err(e)) => c.record_error(&client, FailureKind::Other(error_chain(&e)), at),
        Ok(Ok((parts, body_ok))) => {
            let version = parts
                .headers
                .get(VERSION_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if body_ok {
                c.record_response(&client, version, parts.status.as_u16(), latency, at);
            } else {
                c.record_error(
                    &client,
                    FailureKind::Other("response body interrupted".to_owned()),
                    at,
                );
            }
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_micros(50));
        assert_eq!(percentile(&v, 0.99), Duration::from_micros(99));
        assert_eq!(percentile(&[7], 0.99), Duration::from_micros(7));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn flips_count_returns_to_earlier_versions() {
        let r = |v: &[&str]| v.iter().map(|s| (s.to_string(), 1)).collect::<Vec<_>>();
        assert_eq!(flips(&r(&["v1", "v2"])), 0);
        assert_eq!(flips(&r(&["v1", "v2", "v1"])), 1);
        assert_eq!(flips(&r(&["v1", "v2", "v1", "v2"])), 2);
        assert_eq!(flips(&r(&["v1", "v2", "v3"])), 0);
    }

    #[test]
    fn run_length_per_client_and_failure_cap() {
        let mut c = Counters::default();
        for (v, s) in [
            ("v1", 200),
            ("v1", 200),
            ("v2", 500),
            ("v2", 200),
            ("v1", 200),
        ] {
            c.sent += 1;
            c.record_response(
                "client-1",
                Some(v.to_owned()),
                s,
                Duration::from_millis(1),
                Duration::ZERO,
            );
        }
        let r = c.report(Duration::from_secs(1));
        assert_eq!(
            r.per_client["client-1"],
            vec![
                ("v1".to_owned(), 2),
                ("v2".to_owned(), 2),
                ("v1".to_owned(), 1)
            ]
        );
        assert_eq!(r.client_flips, 1);
        assert_eq!((r.ok, r.failed, r.in_flight), (4, 1, 0));
        assert_eq!(r.by_version["v2"].failed, 1);

        let mut c = Counters::default();
        for _ in 0..MAX_STORED_FAILURES + 5 {
            c.record_error("", FailureKind::Timeout, Duration::ZERO);
        }
        c.record_error("x", FailureKind::Connect, Duration::from_secs(1));
        c.sent = c.failed;
        let r = c.report(Duration::ZERO);
        assert_eq!(r.failures.len(), MAX_STORED_FAILURES);
        assert_eq!(r.failed, MAX_STORED_FAILURES as u64 + 6);
        assert_eq!(r.last_failure.unwrap().kind, FailureKind::Connect);
        assert_eq!(r.first_failure.unwrap().kind, FailureKind::Timeout);
    }
}
