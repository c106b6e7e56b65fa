//! `demo-app`: a small HTTP service used by the cutover demo, the tests and the benchmarks.
//!
//! Every answer carries the header `x-app-version`, so a load generator (or a test) can tell
//! which version served it. Latency, errors, slow readiness and crash loops can be injected
//! from the command line (or `DEMO_*` environment variables).
//!
//! Endpoints:
//! - `GET /`, `GET /api/{*rest}`: 200 with `{"version": "...", "instance": "<pid>"}`
//!   (`/` honours `--error-rate` and `--body-size`; both honour `--latency` and `--latency-jitter`).
//! - `GET /ready`: 200 `ready`, or 503 during `--ready-delay` and once shutting down.
//! - `GET /live`: 200.
//! - `GET /metrics`: Prometheus text exposition (`demo_requests_total{version,code}`,
//!   `demo_in_flight`); with `--bad-metrics`, a body that does not parse.
//!
//! `--stderr-line TEXT` writes TEXT to stderr at startup.
//! - `GET /ws`: WebSocket echo; the first message is `{"version":"..."}`; on shutdown the
//!   socket is closed with code 1012 (service restart).
//! - `POST /echo`: echoes the request body.
//! - `GET /orders`: WebSocket order endpoint. Each text message is an order `{"id": "..."}`;
//!   it is executed after `--order-delay` (+ `--order-delay-jitter`), recorded as a line
//!   `<id> <version>` in `<state-dir>/executed.log` (in memory only without `--state-dir`),
//!   then acked with `{"id": "...", "version": "..."}`. An id is executed at most once per
//!   process and acked every time it is received. Invalid messages get `{"error": "..."}`.
//! - `POST /drain`: starts draining (SIGTERM does too): `/ready` answers 503, new `/orders`
//!   connections get 503, open ones answer new orders with `{"id": "...", "error":
//!   "draining"}`, finish and ack the orders in progress, then close with 1012.
//!
//! Metrics also include `demo_orders_executed_total{version}` and `demo_orders_in_progress`.
//!
//! The reference singleton for `strategy = "handoff"` (see `signer.rs`, docs/handoff.md):
//! - `POST /cutover/handoff`: takes the active role with `{"token": N}`.
//! - `POST /sign` (`GET` too): with `--ledger ADDR`, records a signature in the ledger with
//!   the request's `X-Cutover-Fencing-Token` (or its own token), after `--latency`; 409 when
//!   fenced.
//! - `POST /ledger`, `GET /ledger`: the downstream that rejects a token lower than the
//!   highest it has accepted.
#![forbid(unsafe_code)]

mod orders;
mod signer;

pub use signer::FENCING_HEADER;

pub use orders::{EXECUTED_LOG, MAX_ID_LEN};

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use clap::Parser;
use cutover_telemetry::escape_label;
use rand::Rng as _;
use tokio::sync::{mpsc, watch};

/// The response header that names the version that served a request.
pub const VERSION_HEADER: &str = "x-app-version";

/// Command line (each flag also reads a `DEMO_*` environment variable).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "demo-app",
    about = "A small service for cutover demos, tests and benchmarks"
)]
pub struct Config {
    /// Port to listen on (0 picks a free port; the startup line names the real address).
    #[arg(long, env = "DEMO_PORT")]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, env = "DEMO_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Version reported in `x-app-version` and in bodies.
    #[arg(long, env = "DEMO_VERSION", default_value = "v1")]
    pub version: String,
    /// Delay added to each request to `/` and `/api/*` (e.g. `200ms`).
    #[arg(long, env = "DEMO_LATENCY", default_value = "0", value_parser = parse_duration)]
    pub latency: Duration,
    /// Uniform extra delay in `0..=jitter` on top of `--latency`.
    #[arg(long, env = "DEMO_LATENCY_JITTER", default_value = "0", value_parser = parse_duration)]
    pub latency_jitter: Duration,
    /// Fraction (0.0–1.0) of requests to `/` answered with 500.
    #[arg(long, env = "DEMO_ERROR_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub error_rate: f64,
    /// Exit with code 1 this long after start (simulates a crash-looping release).
    #[arg(long, env = "DEMO_FAIL_AFTER", value_parser = parse_duration)]
    pub fail_after: Option<Duration>,
    /// `/ready` answers 503 until this long after start.
    #[arg(long, env = "DEMO_READY_DELAY", default_value = "0", value_parser = parse_duration)]
    pub ready_delay: Duration,
    /// Size in bytes of the body of `/` (the JSON is padded; 0 = natural size).
    #[arg(long, env = "DEMO_BODY_SIZE", default_value_t = 0)]
    pub body_size: usize,
    /// State directory: executed orders are appended to `executed.log` in it (created if
    /// missing). Without it executed orders are only kept in memory.
    #[arg(long, env = "DEMO_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Time to execute one order received on `/orders` (e.g. `200ms`).
    #[arg(long, env = "DEMO_ORDER_DELAY", default_value = "0", value_parser = parse_duration)]
    pub order_delay: Duration,
    /// Uniform extra execution time in `0..=jitter` on top of `--order-delay`.
    #[arg(long, env = "DEMO_ORDER_DELAY_JITTER", default_value = "0", value_parser = parse_duration)]
    pub order_delay_jitter: Duration,
    /// A line written to stderr at startup (to test what a supervisor shows of an app's output).
    #[arg(long, env = "DEMO_STDERR_LINE")]
    pub stderr_line: Option<String>,
    /// Serve a `/metrics` body that is not a valid Prometheus exposition.
    #[arg(long, env = "DEMO_BAD_METRICS", default_value_t = false)]
    pub bad_metrics: bool,
    /// The ledger a signer writes to (`host:port` of a demo-app): turns on `/sign`.
    #[arg(long, env = "DEMO_LEDGER")]
    pub ledger: Option<SocketAddr>,
    /// Answer `POST /cutover/handoff` with 500 (a handoff that fails).
    #[arg(long, env = "DEMO_HANDOFF_FAIL", default_value_t = false)]
    pub handoff_fail: bool,
    /// Answer `POST /cutover/handoff` this late (a handoff that times out).
    #[arg(long, env = "DEMO_HANDOFF_DELAY", default_value = "0", value_parser = parse_duration)]
    pub handoff_delay: Duration,
}

/// Parses a duration in cutover's one grammar (`250ms`, `1s`, `1m30s`; a bare `0` is zero), so
/// what works in `cutover.toml` works in `DEMO_LATENCY` too.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    cutover_core::time::parse_duration(s).map_err(|e| {
        format!(
            "{s:?} is not a duration: {e}; {}",
            cutover_core::time::DURATION_GRAMMAR
        )
    })
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|e| format!("invalid error rate {s:?}: {e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "error rate {v} out of range: use a fraction between 0.0 and 1.0"
        ))
    }
}

/// Shared state of a running app.
#[derive(Debug)]
pub struct AppState {
    cfg: Config,
    instance: String,
    started: Instant,
    root_body: Bytes,
    small_body: Bytes,
    shutting_down: AtomicBool,
    /// Set (before `drain_tx`) by `POST /drain` and by shutdown.
    draining: AtomicBool,
    drain_tx: watch::Sender<bool>,
    drain_rx: watch::Receiver<bool>,
    orders: orders::OrderBook,
    in_flight: AtomicI64,
    requests: Mutex<BTreeMap<u16, u64>>,
    shutdown_rx: watch::Receiver<bool>,
    shutdown_tx: watch::Sender<bool>,
    /// Each WebSocket task (`/ws` and `/orders`) holds a clone; taken (dropped) on shutdown to
    /// wait for them.
    ws_guard: Mutex<Option<mpsc::Sender<()>>>,
    /// The singleton's role (`/cutover/handoff`, `/sign`).
    signer: signer::Signer,
    /// The downstream that fences stale holders (`/ledger`).
    ledger: signer::Ledger,
}

impl AppState {
    /// Builds the state for `cfg`. Returns the receiver that yields once all WebSocket tasks
    /// have ended after [`AppState::begin_shutdown`].
    ///
    /// # Errors
    /// When `--state-dir` is set and `executed.log` cannot be created or opened.
    pub fn new(cfg: Config) -> std::io::Result<(Arc<Self>, mpsc::Receiver<()>)> {
        let orders = orders::OrderBook::open(
            &cfg.version,
            cfg.order_delay,
            cfg.order_delay_jitter,
            cfg.state_dir.as_deref(),
        )?;
        let instance = std::process::id().to_string();
        let small_body = Bytes::from(body_json(&cfg.version, &instance, 0));
        let root_body = Bytes::from(body_json(&cfg.version, &instance, cfg.body_size));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (ws_tx, ws_rx) = mpsc::channel(1);
        let (drain_tx, drain_rx) = watch::channel(false);
        let state = Arc::new(Self {
            cfg,
            instance,
            started: Instant::now(),
            root_body,
            small_body,
            shutting_down: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            drain_tx,
            drain_rx,
            orders,
            in_flight: AtomicI64::new(0),
            requests: Mutex::new(BTreeMap::new()),
            shutdown_rx,
            shutdown_tx,
            ws_guard: Mutex::new(Some(ws_tx)),
            signer: signer::Signer::from_env(),
            ledger: signer::Ledger::default(),
        });
        Ok((state, ws_rx))
    }

    /// Marks the app as shutting down: drains (see [`AppState::begin_drain`]), `/ready`
    /// answers 503 and `/ws` sockets get close 1012.
    pub fn begin_shutdown(&self) {
        self.begin_drain();
        self.shutting_down.store(true, Ordering::SeqCst);
        self.shutdown_tx.send_replace(true);
        self.ws_guard.lock().unwrap().take();
    }

    /// Starts draining (idempotent): `/ready` answers 503, new `/orders` connections are
    /// refused, open ones refuse new orders, ack those in progress and close with 1012.
    pub fn begin_drain(&self) {
        // The flag first: order sockets read it for every order, the watch only wakes them.
        self.draining.store(true, Ordering::SeqCst);
        self.drain_tx.send_replace(true);
    }

    /// Whether a drain (or shutdown) has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Order ids executed by this process, in execution order.
    pub fn executed_orders(&self) -> Vec<String> {
        self.orders.executed()
    }

    /// The pid-based instance id reported in bodies.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn is_ready(&self) -> bool {
        !self.is_draining() && self.started.elapsed() >= self.cfg.ready_delay
    }

    fn version_header(&self) -> HeaderValue {
        HeaderValue::from_str(&self.cfg.version)
            .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }

    async fn inject_latency(&self) {
        let mut delay = self.cfg.latency;
        let jitter = self.cfg.latency_jitter;
        if !jitter.is_zero() {
            let nanos = u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX);
            delay += Duration::from_nanos(rand::thread_rng().gen_range(0..=nanos));
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    /// Prometheus text exposition of the app's own metrics.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write as _;
        let version = escape_label(&self.cfg.version);
        let mut out = String::new();
        out.push_str("# HELP demo_requests_total Requests served, by version and status code.\n");
        out.push_str("# TYPE demo_requests_total counter\n");
        for (code, n) in self.requests.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "demo_requests_total{{version=\"{version}\",code=\"{code}\"}} {n}"
            );
        }
        out.push_str("# HELP demo_in_flight Requests currently being served.\n");
        out.push_str("# TYPE demo_in_flight gauge\n");
        let _ = writeln!(
            out,
            "demo_in_flight {}",
            self.in_flight.load(Ordering::SeqCst)
        );
        out.push_str("# HELP demo_orders_executed_total Orders executed (each id once).\n");
        out.push_str("# TYPE demo_orders_executed_total counter\n");
        let _ = writeln!(
            out,
            "demo_orders_executed_total{{version=\"{version}\"}} {}",
            self.orders.executed_total()
        );
        out.push_str("# HELP demo_orders_in_progress Orders received and not yet on record.\n");
        out.push_str("# TYPE demo_orders_in_progress gauge\n");
        let _ = writeln!(out, "demo_orders_in_progress {}", self.orders.in_progress());
        out
    }
}

/// `{"version":..,"instance":..}`, padded with a `pad` field to exactly `size` bytes when
/// `size` is larger than the natural size.
fn body_json(version: &str, instance: &str, size: usize) -> Vec<u8> {
    let natural = serde_json::json!({ "version": version, "instance": instance }).to_string();
    // `,"pad":""` adds 9 bytes before any padding characters.
    if size < natural.len() + 9 {
        return natural.into_bytes();
    }
    let pad = "x".repeat(size - natural.len() - 9);
    let v = serde_json::json!({ "version": version, "instance": instance, "pad": pad }).to_string();
    debug_assert_eq!(v.len(), size);
    v.into_bytes()
}

/// The app's router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/api/{*rest}", get(api))
        .route("/ready", get(ready))
        .route("/live", get(live))
        .route("/metrics", get(metrics))
        .route("/ws", get(ws))
        .route("/echo", post(echo))
        .route("/orders", get(orders_ws))
        .route("/drain", post(drain))
        .route("/cutover/handoff", post(signer::handoff))
        .route("/sign", get(signer::sign).post(signer::sign))
        .route(
            "/ledger",
            get(signer::ledger_show).post(signer::ledger_append),
        )
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Counts requests by status code, tracks in-flight requests, stamps `x-app-version`.
async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    struct InFlight<'a>(&'a AtomicI64);
    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    state.in_flight.fetch_add(1, Ordering::SeqCst);
    let _guard = InFlight(&state.in_flight);
    let mut resp = next.run(req).await;
    *state
        .requests
        .lock()
        .unwrap()
        .entry(resp.status().as_u16())
        .or_default() += 1;
    resp.headers_mut()
        .insert(VERSION_HEADER, state.version_header());
    resp
}

fn json_response(status: StatusCode, body: Bytes) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn root(State(state): State<Arc<AppState>>) -> Response {
    state.inject_latency().await;
    let rate = state.cfg.error_rate;
    let fail = rate >= 1.0 || (rate > 0.0 && rand::thread_rng().gen_bool(rate));
    if fail {
        let body = serde_json::json!({
            "version": state.cfg.version,
            "instance": state.instance,
            "error": "injected failure",
        });
        return json_response(StatusCode::INTERNAL_SERVER_ERROR, body.to_string().into());
    }
    json_response(StatusCode::OK, state.root_body.clone())
}

async fn api(State(state): State<Arc<AppState>>) -> Response {
    state.inject_latency().await;
    json_response(StatusCode::OK, state.small_body.clone())
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else if state.shutting_down.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else if state.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn live() -> &'static str {
    "live"
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if state.cfg.bad_metrics {
        return (
            [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))],
            "this is { not an exposition\n",
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.render_metrics(),
    )
        .into_response()
}

async fn echo(body: Bytes) -> Response {
    Response::new(Body::from(body))
}

async fn ws(State(state): State<Arc<AppState>>, upgrade: WebSocketUpgrade) -> Response {
    let guard = state.ws_guard.lock().unwrap().clone();
    upgrade.on_upgrade(move |socket| async move {
        ws_session(state, socket).await;
        drop(guard);
    })
}

async fn drain(State(state): State<Arc<AppState>>) -> Response {
    state.begin_drain();
    (StatusCode::OK, "draining").into_response()
}

async fn orders_ws(State(state): State<Arc<AppState>>, upgrade: WebSocketUpgrade) -> Response {
    // Refused before the upgrade, so the client (or a proxy) can retry another instance.
    if state.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    let guard = state.ws_guard.lock().unwrap().clone();
    upgrade.on_upgrade(move |socket| async move {
        orders::session(state, socket).await;
        drop(guard);
    })
}

async fn ws_session(state: Arc<AppState>, mut socket: WebSocket) {
    let hello = serde_json::json!({ "version": state.cfg.version }).to_string();
    if socket.send(Message::Text(hello.into())).await.is_err() {
        return;
    }
    let mut shutdown = state.shutdown_rx.clone();
    loop {
        tokio::select! {
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if socket.send(Message::Text(t)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Binary(b))) => {
                    if socket.send(Message::Binary(b)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
            },
            _ = async { shutdown.wait_for(|s| *s).await.is_ok() } => {
                let frame = CloseFrame { code: 1012, reason: "service restart".into() };
                let _ = socket.send(Message::Close(Some(frame))).await;
                return;
            }
        }
    }
}

/// Installs the SIGTERM and SIGINT handlers now and returns a future that resolves on the
/// first of those signals (including one that arrives before the future is first polled).
///
/// Installing them here rather than in the future matters: axum first polls its shutdown
/// future on a task of its own, which a busy machine may not run before requests are being
/// served, and until a handler is installed SIGTERM's default action kills the process with
/// its in-flight requests.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Binds, prints `demo-app <version> listening on <addr>`, serves until SIGTERM/SIGINT, then
/// drains in-flight requests and returns.
///
/// The SIGTERM/SIGINT handlers are installed before the startup line is printed, so a
/// supervisor may signal the process as soon as it has read that line.
pub async fn run(cfg: Config) -> std::io::Result<()> {
    let signal = shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port)).await?;
    let addr: SocketAddr = listener.local_addr()?;
    if let Some(after) = cfg.fail_after {
        let version = cfg.version.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            eprintln!("demo-app {version}: --fail-after {after:?} elapsed, exiting with code 1");
            std::process::exit(1);
        });
    }
    if let Some(line) = &cfg.stderr_line {
        eprintln!("{line}");
    }
    let (state, mut ws_done) = AppState::new(cfg)?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "demo-app {} listening on {addr}", state.cfg.version)?;
        out.flush()?;
    }
    let app = router(state.clone());
    let st = state.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            signal.await;
            eprintln!("demo-app {}: shutting down, draining", st.cfg.version);
            st.begin_shutdown();
        })
        .await?;
    // Give WebSocket sessions time to finish: order sockets first execute and ack the orders
    // in progress (each takes at most the order delay plus jitter), then send their close.
    let grace = Duration::from_secs(2) + state.cfg.order_delay + state.cfg.order_delay_jitter;
    let _ = tokio::time::timeout(grace, ws_done.recv()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_body_has_exact_size() {
        for size in [0, 10, 40, 41, 100, 4096] {
            let b = body_json("v1", "123", size);
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(v["version"], "v1");
            let natural = body_json("v1", "123", 0).len();
            if size >= natural + 9 {
                assert_eq!(b.len(), size);
            } else {
                assert_eq!(b.len(), natural);
            }
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("200ms").unwrap(), Duration::from_millis(200));
        assert!(parse_duration("soon").is_err());
        assert!(parse_rate("1.5").is_err());
        assert_eq!(parse_rate("0.25").unwrap(), 0.25);
    }

    #[test]
    fn label_escaping() {
        assert_eq!(escape_label("a\"b\\c"), "a\\\"b\\\\c");
    }
}
