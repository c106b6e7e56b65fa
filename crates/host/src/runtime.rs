//! The single-host runtime: binds the proxy and the admin API, supervises instances, and runs
//! the driver loop that feeds the core engine and carries out its actions.
//!
//! The driver is the only owner of the engine. Every event goes through [`Driver::apply`]:
//! the engine decides, the new state and its decisions are committed to SQLite in one
//! transaction, and only then are the actions carried out (DESIGN.md invariant 8). A store
//! failure puts the engine back as it was and carries out nothing (invariant 9).

use crate::config::Loaded;
use crate::metrics;
use crate::remote;
use crate::router::{Intent, Router};
use crate::rules::{self, Rule};
use crate::scrape::{self, Scraped, Target};
use crate::status::{InstanceView, Settings, StatusView};
use cutover_admin::{
    AlertmanagerPayload, ApiError, BoxFuture, DeployRequest, Handler, HistoryQuery, LogsQuery,
    Verb as ApiVerb,
};
use cutover_core::engine::{
    Action, Decision, Engine, EngineError, Event, InstanceFacts, Phase, Release, Rollout, State,
    Verb,
};
use cutover_core::judge::External;
use cutover_core::lookback::{self, Wider};
use cutover_core::spec::AlertsSpec;
use cutover_core::{Timestamp, Track, WindowStats};
use cutover_notify::{Notice, Notifier};
use cutover_promql::{EvalOptions, Labels, MemStore};
use cutover_proxy::{CertReloader, Proxy, ProxyConfig, TlsError};
use cutover_store::{Commit, DecisionRecord, EventRecord, ReleaseRecord, RolloutRecord, Store};
use cutover_supervisor::{Fleet, InFlight, InstanceState, Release as SupRelease, Supervisor};
use cutover_telemetry::{History, Recorder};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{error, info};

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the state directory {path} ({source}) (fix: check service.state_dir and its permissions)")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{field} = {addr}: cannot listen ({source}) (fix: choose a free address for {field}, or stop what is using it)")]
    Bind {
        field: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Activation(Box<crate::listeners::ActivationError>),
    #[error("service.workers: {0}")]
    Workers(cutover_proxy::ProxyError),
    #[error(transparent)]
    Token(#[from] cutover_admin::AdminError),
    #[error("state store: {0}")]
    Store(#[from] cutover_store::StoreError),
    #[error(
        "the stored engine state cannot be read ({0}); it was written by an incompatible cutover"
    )]
    Snapshot(serde_json::Error),
    #[error(transparent)]
    Config(#[from] cutover_core::spec::ConfigError),
    #[error("notify: {0}")]
    Notify(String),
    #[error("service.tls.cert / service.tls.key: {source} (fix: point service.tls.cert at a PEM certificate chain and service.tls.key at its PEM private key; relative paths are relative to the config file)")]
    Tls {
        #[source]
        source: TlsError,
    },
}

/// Lines of an instance's log quoted in a start failure or crash loop.
const FAILURE_TAIL_LINES: usize = 5;

/// Instance logs of releases that stopped longer ago than this are deleted (DESIGN.md: anything
/// older than 72 h is pruned). A running instance appends to its log, which keeps it fresh.
pub const RETENTION: Duration = Duration::from_secs(72 * 3600);

/// Deletes log files not written to for `max_age`; returns how many.
pub fn prune_logs(dir: &std::path::Path, max_age: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut pruned = 0;
    for e in entries.flatten() {
        let old = e
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > max_age);
        if old
            && e.path().extension().is_some_and(|x| x == "log")
            && std::fs::remove_file(e.path()).is_ok()
        {
            pruned += 1;
        }
    }
    if pruned > 0 {
        info!(pruned, dir = %dir.display(), "pruned instance logs older than 72 h");
    }
    pruned
}

/// A running cutover: the handles tests and the demo need.
pub struct Running {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub token: String,
    pub state_dir: PathBuf,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    supervisor: Supervisor,
    /// To the driver: `reload` (SIGHUP) goes the admin API's way.
    requests: mpsc::Sender<Request>,
}

impl Running {
    /// A client for this runtime's admin API.
    pub fn client(&self) -> cutover_admin::AdminClient {
        cutover_admin::AdminClient::new(self.admin_addr, self.token.clone())
    }

    /// `cutover reload` without the admin API (SIGHUP): re-reads and validates the config file
    /// and applies it, or refuses it whole (see [`crate::reload`]).
    pub async fn reload(&self) -> Result<Value, ApiError> {
        let (tx, rx) = oneshot::channel();
        let gone = || ApiError::internal("cutover is shutting down");
        self.requests
            .send(Request::Reload(tx))
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Graceful shutdown: stop accepting, let in-flight requests finish, stop every instance.
    /// The persisted state is kept, so a new `start` resumes where this one was.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.supervisor.shutdown().await;
    }
}

/// Sleeps until `wake`, or forever when there is nothing to wake for.
async fn sleep_until_some(wake: Option<tokio::time::Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn now() -> Timestamp {
    Timestamp(cutover_clock::unix_millis())
}

/// What the proxy takes from the config.
fn proxy_config(c: &cutover_core::spec::Config) -> ProxyConfig {
    ProxyConfig {
        sticky: c.sticky.clone(),
        shutdown_timeout: c.app.stop.drain_timeout.get(),
        upstream_protocol: c.app.upstream_protocol,
        upstream_timeout: c.service.upstream_timeout.get(),
        workers: c
            .service
            .workers
            .map_or_else(cutover_proxy::default_workers, usize::from),
        trusted_proxies: c.service.trusted_proxies.clone(),
        ..ProxyConfig::default()
    }
}

/// Starts the runtime for a loaded config and returns once it listens.
pub async fn start(loaded: Loaded) -> Result<Running, StartError> {
    start_with(loaded, crate::listeners::Inherited::none()).await
}

/// [`start`], on the listening sockets a launcher passed where it passed them.
pub async fn start_with(
    loaded: Loaded,
    inherited: crate::listeners::Inherited,
) -> Result<Running, StartError> {
    let c = loaded.config.clone();
    // Queries are checked before anything is created, so a bad rule changes nothing.
    rules::validate(&c)?;
    let state_dir = loaded.state_dir();
    std::fs::create_dir_all(state_dir.join("logs")).map_err(|source| StartError::StateDir {
        path: state_dir.clone(),
        source,
    })?;
    // Checked before anything listens: a config naming a certificate that does not load must
    // not come up serving plaintext, nor come up at all.
    let tls = c
        .service
        .tls
        .as_ref()
        .map(|t| {
            CertReloader::load(
                crate::config::resolve(&loaded.dir, &t.cert),
                crate::config::resolve(&loaded.dir, &t.key),
            )
            .map(|r| (r, t.reload_interval.get()))
            .map_err(|source| StartError::Tls { source })
        })
        .transpose()?;
    let token = cutover_admin::ensure_token(&state_dir)?;
    prune_logs(&state_dir.join("logs"), RETENTION);
    let store = Store::open(&state_dir.join("cutover.db"))?;
    let engine = match store.load_snapshot()? {
        Some(v) => {
            let state: State = serde_json::from_value(v).map_err(StartError::Snapshot)?;
            Engine::restore(c.rollout.clone(), state)
        }
        None => Engine::new(c.service.name.clone(), c.rollout.clone()),
    };

    let window = c.rollout.window.get();
    // Twenty slots per window keeps the window's edge within 5 % of its length.
    let slot = (window / 20).max(Duration::from_millis(5));
    let recorder = Recorder::new(slot, window + slot * 4);
    let proxy = Proxy::new(proxy_config(&c), recorder.clone());
    // A restart with releases to bring back: requests wait for the first ready instance
    // (at most app.start_timeout) instead of 503s.
    if engine.state().stable.is_some() || engine.active().is_some() {
        proxy.hold_while_cold(c.app.start_timeout.get());
    }
    let (proxy_listener, admin_listener) =
        crate::listeners::open(c.service.listen, c.admin.listen, inherited).await?;
    let proxy_addr = proxy_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            field: "service.listen",
            addr: c.service.listen,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            field: "admin.listen",
            addr: c.admin.listen,
            source,
        })?;

    let (supervisor, fleet_rx) = Supervisor::new(c.app.clone(), state_dir.join("logs"));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (req_tx, req_rx) = mpsc::channel(64);
    let store = Arc::new(Mutex::new(store));

    let mut tasks = Vec::new();
    {
        let proxy = proxy.clone();
        let mut rx = shutdown_rx.clone();
        let stop = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let serving = proxy
            .start(
                proxy_listener,
                tls.as_ref().map(|(reloader, _)| reloader.server_config()),
            )
            .map_err(StartError::Workers)?;
        if let Some((reloader, interval)) = tls {
            let mut rx = shutdown_rx.clone();
            tasks.push(tokio::spawn(reloader.run(interval, async move {
                let _ = rx.wait_for(|s| *s).await;
            })));
        }
        tasks.push(tokio::spawn(async move {
            let outcome = serving.until(stop).await;
            info!(outcome = proxy_stopped(outcome), "proxy stopped");
        }));
    }
    {
        let handler: Arc<dyn Handler> = Arc::new(AdminHandler {
            tx: req_tx.clone(),
            store: store.clone(),
            supervisor: supervisor.clone(),
            log_dir: state_dir.join("logs"),
        });
        let mut rx = shutdown_rx.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = cutover_admin::serve(admin_listener, token, handler, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
            {
                error!(error = %e, "admin API stopped");
            }
        }));
    }
    let (targets_tx, targets_rx) = watch::channel(Vec::<Target>::new());
    let (scraped_tx, scraped_rx) = mpsc::channel(16);
    if !c.metrics.path.is_empty() {
        tasks.push(tokio::spawn(scrape::run(
            c.metrics.path.clone(),
            c.rollout.interval.get(),
            targets_rx,
            scraped_tx,
        )));
    }
    let remote_results: remote::Results = Arc::default();
    let remote_work = c.prometheus.clone().map(|spec| {
        let (tx, rx) = watch::channel(None);
        tasks.push(tokio::spawn(remote::run(
            spec,
            c.rollout.interval.get(),
            rx,
            remote_results.clone(),
        )));
        tx
    });
    let notifier = if c.notify.is_empty() {
        None
    } else {
        let sinks = c
            .notify
            .iter()
            .map(|n| cutover_notify::SinkConfig {
                name: n.name.clone(),
                url: n.url.clone(),
                format: match n.format {
                    cutover_core::spec::NotifyFormat::Json => cutover_notify::Format::Json,
                    cutover_core::spec::NotifyFormat::Slack => cutover_notify::Format::Slack,
                },
                kinds: n.events.clone(),
                timeout: n.timeout.get(),
                max_attempts: n.max_attempts,
                backoff_initial: Duration::from_millis(200),
                backoff_max: Duration::from_secs(30),
            })
            .collect();
        Some(Notifier::start(sinks, 1024).map_err(|e| StartError::Notify(e.to_string()))?)
    };
    let driver = Driver {
        series: MemStore::new(c.metrics.retention.get().as_millis() as i64),
        embedded: rules::Embedded::default(),
        rules: rules::rules(&c),
        targets: targets_tx,
        scraped: scraped_rx,
        remote_work,
        remote_results,
        notifier,
        decision_counts: BTreeMap::new(),
        loaded: loaded.clone(),
        engine,
        store,
        supervisor: supervisor.clone(),
        fleet_rx,
        proxy,
        recorder,
        history: History::new(c.rollout.max_lookback.get()),
        router: Router::default(),
        releases: HashMap::new(),
        exposition: scrape::ExpositionHealth::default(),
        proxy_addr,
        reloader: crate::reload::Reloader::new(&c),
    };
    tasks.push(tokio::spawn(driver.run(req_rx, shutdown_rx)));
    info!(%proxy_addr, %admin_addr, service = %c.service.name, state_dir = %state_dir.display(), "cutover is running");
    Ok(Running {
        proxy_addr,
        admin_addr,
        token,
        state_dir,
        shutdown: shutdown_tx,
        tasks,
        supervisor,
        requests: req_tx,
    })
}

/// What the admin API asks the driver.
enum Request {
    Status(oneshot::Sender<Value>),
    Deploy(DeployRequest, oneshot::Sender<Result<Value, ApiError>>),
    Verb(
        Verb,
        Option<String>,
        oneshot::Sender<Result<Value, ApiError>>,
    ),
    Metrics(oneshot::Sender<String>),
    Alerts(
        AlertmanagerPayload,
        oneshot::Sender<Result<Value, ApiError>>,
    ),
    Reload(oneshot::Sender<Result<Value, ApiError>>),
}

struct AdminHandler {
    tx: mpsc::Sender<Request>,
    store: Arc<Mutex<Store>>,
    /// Read-only here: which instances still run (`logs` answers `running`).
    supervisor: Supervisor,
    log_dir: PathBuf,
}

impl AdminHandler {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| ApiError::internal("cutover is shutting down"))?;
        rx.await
            .map_err(|_| ApiError::internal("cutover is shutting down"))
    }
}

impl Handler for AdminHandler {
    fn status(&self) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move { self.ask(Request::Status).await })
    }
    fn deploy(&self, req: DeployRequest) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move { self.ask(|tx| Request::Deploy(req, tx)).await? })
    }
    fn verb(
        &self,
        verb: ApiVerb,
        reason: Option<String>,
    ) -> BoxFuture<'_, Result<Value, ApiError>> {
        let verb = match verb {
            ApiVerb::Pause => Verb::Pause,
            ApiVerb::Resume => Verb::Resume,
            ApiVerb::Promote => Verb::Promote,
            ApiVerb::Abort => Verb::Abort,
            ApiVerb::Rollback => Verb::Rollback,
        };
        Box::pin(async move { self.ask(|tx| Request::Verb(verb, reason, tx)).await? })
    }
    fn history(&self, q: HistoryQuery) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || history(&store, q))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
        })
    }
    fn metrics(&self) -> BoxFuture<'_, Result<String, ApiError>> {
        Box::pin(async move { self.ask(Request::Metrics).await })
    }
    fn logs(&self, version: String, q: LogsQuery) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move {
            let running = self.supervisor.fleet().get(&version).is_some_and(|vf| {
                vf.instances
                    .get(q.instance as usize)
                    .is_some_and(|i| i.state != InstanceState::Stopped)
            });
            let dir = self.log_dir.clone();
            let chunk = tokio::task::spawn_blocking(move || {
                crate::logs::read_chunk(&dir, &version, &q, running)
            })
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??;
            Ok(serde_json::to_value(chunk).unwrap_or_default())
        })
    }
    fn reload(&self) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move { self.ask(Request::Reload).await? })
    }
    fn alerts(&self, payload: AlertmanagerPayload) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move { self.ask(|tx| Request::Alerts(payload, tx)).await? })
    }
}

fn history(store: &Mutex<Store>, q: HistoryQuery) -> Result<Value, ApiError> {
    let store = store.lock().unwrap_or_else(|e| e.into_inner());
    let internal = |e: cutover_store::StoreError| ApiError::internal(e.to_string());
    let limit = q.limit.unwrap_or(20).clamp(1, 1000);
    let rollouts = match q.rollout {
        Some(id) => vec![store.rollout(id).map_err(internal)?.ok_or_else(|| {
            ApiError::not_found(format!("no rollout {id}; `cutover history` lists them"))
        })?],
        None => store.rollouts(limit).map_err(internal)?,
    };
    // Times are RFC 3339 strings (UTC, milliseconds): what a reader of the JSON wants, and
    // what `cutover history` parses back.
    let mut out = Vec::new();
    for r in rollouts {
        let decisions = store.decisions(Some(r.id), 10_000).map_err(internal)?;
        let mut v = serde_json::to_value(&r).unwrap_or_default();
        crate::render::rfc3339_fields(&mut v, &["started_at", "ended_at"]);
        let mut ds = serde_json::to_value(decisions).unwrap_or_default();
        for d in ds.as_array_mut().into_iter().flatten() {
            crate::render::rfc3339_fields(d, &["at"]);
        }
        v["decisions"] = ds;
        out.push(v);
    }
    let mut doc = json!({ "rollouts": out });
    if q.verify {
        let report = store.verify_chain().map_err(internal)?;
        doc["verify"] = serde_json::to_value(report).unwrap_or_default();
    }
    Ok(doc)
}

/// How the proxy's shutdown ended, for the log (not `Debug`: operators read these lines).
fn proxy_stopped(outcome: cutover_proxy::ShutdownOutcome) -> &'static str {
    match outcome {
        cutover_proxy::ShutdownOutcome::Drained => "drained: every connection finished",
        cutover_proxy::ShutdownOutcome::TimedOut => {
            "timed out: connections still open were abandoned"
        }
    }
}

/// `3 sessions: 1 closed by the app, 0 by clients, 2 by cutover (1012), 0 lost`.
fn ws_drained(r: &cutover_proxy::WsDrainReport) -> String {
    format!(
        "{} session(s): {} closed by the app, {} by clients, {} by cutover (1012), {} lost",
        r.sessions, r.closed_by_app, r.closed_by_client, r.closed_by_cutover, r.lost
    )
}

/// `v2-0 (127.0.0.1:4100): drained after 12ms, exited (exit status: 0); ...`.
fn stopped(r: &cutover_supervisor::StopReport) -> String {
    use cutover_supervisor::{DrainOutcome, StopExit};
    if r.instances.is_empty() {
        return "nothing was running".to_string();
    }
    let one = |i: &cutover_supervisor::InstanceStopReport| {
        let drain = match &i.drain {
            DrainOutcome::Drained { waited } => format!(
                "drained after {}",
                crate::render::span(Timestamp(0), Timestamp(waited.get().as_millis() as u64))
            ),
            DrainOutcome::TimedOut { in_flight } => {
                format!("drain timed out with {in_flight} request(s) in flight")
            }
        };
        let exit = match &i.exit {
            StopExit::Exited { status } => format!("exited ({status})"),
            StopExit::Killed { status } => format!("killed after the grace period ({status})"),
            StopExit::NotRunning { last_exit: Some(e) } => format!("was not running (last: {e})"),
            StopExit::NotRunning { last_exit: None } => "was not running".to_string(),
        };
        format!("{} ({}): {drain}, {exit}", i.id, i.addr)
    };
    r.instances.iter().map(one).collect::<Vec<_>>().join("; ")
}

/// The `(id, ended_at, outcome)` to record when this event ended the rollout: its outcome is
/// how it ended, so a promotion is recorded when it happens (not an hour later, when the held
/// previous release is let go: `promoted` → `done` keeps `promoted`), and a rollback after a
/// promotion replaces it.
fn ended_record(
    before: Option<&Rollout>,
    after: Option<&Rollout>,
    at: Option<Timestamp>,
) -> Option<(i64, i64, String)> {
    let a = after?;
    let was = before.filter(|b| b.id == a.id).map(|b| &b.phase);
    let ended = match (was, &a.phase) {
        (_, p) if p.is_active() => false,
        (Some(Phase::Promoted { .. }), Phase::Done) => false,
        (Some(b), p) if !b.is_active() => {
            matches!(p, Phase::RolledBack { .. }) && !matches!(b, Phase::RolledBack { .. })
        }
        _ => true,
    };
    let when = a.ended.or(at)?;
    ended.then(|| {
        (
            a.id as i64,
            when.millis() as i64,
            a.phase.name().to_string(),
        )
    })
}

struct Driver {
    /// Scraped series (cutover's own and the instances'), read by embedded PromQL rules.
    series: MemStore,
    embedded: rules::Embedded,
    rules: Vec<Rule>,
    targets: watch::Sender<Vec<Target>>,
    scraped: mpsc::Receiver<Scraped>,
    remote_work: Option<watch::Sender<remote::Work>>,
    remote_results: remote::Results,
    notifier: Option<Notifier>,
    /// Decisions made since this cutover started, by kind (exposed on /metrics).
    decision_counts: BTreeMap<&'static str, u64>,
    loaded: Loaded,
    engine: Engine,
    store: Arc<Mutex<Store>>,
    supervisor: Supervisor,
    fleet_rx: watch::Receiver<Fleet>,
    proxy: Proxy,
    recorder: Recorder,
    /// The recorder's slots folded per interval, for look-backs beyond its window.
    history: History,
    router: Router,
    /// Resolved releases by digest: what `Action::Start` runs.
    releases: HashMap<String, SupRelease>,
    /// Which instances serve an exposition that does not parse (warned once each).
    exposition: scrape::ExpositionHealth,
    proxy_addr: SocketAddr,
    /// The config file against the running config (`cutover reload`, SIGHUP).
    reloader: crate::reload::Reloader,
}

impl Driver {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        if let Err(e) = self.apply(Event::Recover, None) {
            error!(error = %e, "could not recover the persisted rollout state");
        }
        let mut ticker = tokio::time::interval(self.loaded.config.rollout.interval.get());
        let mut gc = tokio::time::interval(Duration::from_secs(3600));
        gc.tick().await; // the first tick is immediate; start() already pruned
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // The engine's next timer (a step's end, hold_previous, an abort rule's `for`),
            // as an instant on tokio's clock; measurements keep their own interval.
            let wake = self.engine.poll_timeout().map(|t| {
                let ms = t.millis().saturating_sub(now().millis());
                tokio::time::Instant::now() + Duration::from_millis(ms)
            });
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                _ = sleep_until_some(wake) => self.on_timeout(),
                Some(req) = requests.recv() => self.request(req),
                changed = self.fleet_rx.changed() => {
                    if changed.is_err() { break; }
                    self.on_fleet();
                }
                _ = ticker.tick() => self.on_tick(),
                Some(scraped) = self.scraped.recv() => self.on_scraped(scraped),
                _ = gc.tick() => {
                    prune_logs(&self.loaded.state_dir().join("logs"), RETENTION);
                }
            }
        }
    }

    /// Engine, then store, then actions. On a store failure the engine is put back as it was.
    fn apply(
        &mut self,
        event: Event,
        operator_reason: Option<&str>,
    ) -> Result<Vec<Decision>, ApiError> {
        let before = self.engine.clone();
        let at = now();
        let recorded = event.clone();
        // Every refusal conflicts with the current state; its message says what to do.
        let mut outcome = self
            .engine
            .handle(at, event)
            .map_err(|e: EngineError| ApiError::conflict(e.to_string()))?;
        if let Some(r) = operator_reason.filter(|r| !r.trim().is_empty()) {
            for d in &mut outcome.decisions {
                d.reason = format!("{} (operator: {r})", d.reason);
            }
        }
        if outcome.actions.is_empty()
            && outcome.decisions.is_empty()
            && before.state() == self.engine.state()
        {
            return Ok(Vec::new());
        }
        let mut commit = self.commit_for(before.state(), &outcome.decisions);
        commit.events = self.recording(before.state(), at, &recorded);
        let stored = {
            let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
            store.commit(commit)
        };
        if let Err(e) = stored {
            self.engine = before;
            error!(error = %e, "could not persist the rollout state; nothing was changed");
            return Err(ApiError::internal(format!(
                "could not persist the rollout state ({e}); nothing was changed"
            )));
        }
        for d in &outcome.decisions {
            info!(rollout = d.rollout, kind = d.kind.as_str(), numbers = %d.numbers, "{}", d.reason);
            *self.decision_counts.entry(d.kind.as_str()).or_default() += 1;
            self.notify(d);
        }
        for action in outcome.actions {
            self.act(action);
        }
        Ok(outcome.decisions)
    }

    /// The event, recorded with the rollout it belongs to (for `cutover simulate`); the state
    /// before a deploy is kept with it, as the replay's starting point.
    fn recording(&self, before: &State, at: Timestamp, event: &Event) -> Vec<EventRecord> {
        if matches!(event, Event::Recover) {
            return Vec::new();
        }
        let after = self.engine.state();
        let active = |s: &State| {
            s.rollout
                .as_ref()
                .filter(|r| r.phase.is_active())
                .map(|r| r.id)
        };
        let Some(id) = active(before).or(active(after)) else {
            return Vec::new();
        };
        let state_before = matches!(event, Event::Deploy { .. })
            .then(|| serde_json::to_value(before).unwrap_or_default());
        vec![EventRecord {
            rollout_id: id as i64,
            at: at.millis() as i64,
            event: serde_json::to_value(event).unwrap_or_default(),
            state_before,
        }]
    }

    /// Hands a decision to the notification sinks; never blocks (the notifier drops rather
    /// than waits when a sink is behind).
    fn notify(&self, d: &Decision) {
        let Some(n) = &self.notifier else { return };
        let Some(kind) = d.kind.notify_kind() else {
            return;
        };
        let st = self.engine.state();
        let version = st
            .rollout
            .as_ref()
            .filter(|r| Some(r.id) == d.rollout)
            .map(|r| r.to.version.clone());
        n.notify(Notice {
            kind,
            service: st.service.clone(),
            rollout: d.rollout,
            version,
            at_ms: d.at.millis(),
            reason: d.reason.clone(),
            numbers: d.numbers.clone(),
        });
    }

    /// Alertmanager's webhook: every firing alert whose labels include all of `[alerts] match`
    /// aborts the rollout in progress; the rest are ignored (and said so in the answer).
    fn alerts(&mut self, payload: AlertmanagerPayload) -> Result<Value, ApiError> {
        let Some(spec) = self.loaded.config.alerts.clone() else {
            return Err(ApiError::not_found(
                "alert webhooks are not enabled; add an [alerts] section with match = { ... }",
            ));
        };
        let service = self.engine.state().service.clone();
        let (mut matched, mut ignored) = (Vec::new(), Vec::new());
        for alert in payload.alerts {
            let name = AlertsSpec::name(&alert.labels);
            let firing = alert.status == cutover_admin::AlertStatus::Firing;
            if !spec.matches(&service, firing, &alert.labels) {
                ignored.push(name);
                continue;
            }
            if self.engine.active().is_none() {
                ignored.push(format!("{name} (no rollout in progress)"));
                continue;
            }
            self.apply(
                Event::Alert {
                    name: name.clone(),
                    labels: alert.labels.clone(),
                },
                None,
            )?;
            matched.push(name);
        }
        Ok(json!({ "matched": matched, "ignored": ignored }))
    }

    fn on_scraped(&mut self, s: Scraped) {
        // Each round covers every current target: forget instances no longer scraped.
        self.exposition.retain(|instance| {
            s.results
                .iter()
                .any(|(l, _)| l.get("instance").is_some_and(|i| i == instance))
        });
        for (labels, res) in s.results {
            match res {
                Ok(text) => {
                    let parsed = self
                        .series
                        .append_exposition(&text, s.t_ms, &labels)
                        .map(|_| ())
                        .map_err(|e| e.to_string());
                    let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
                    let (version, instance) = (label("version"), label("instance"));
                    let error = parsed.as_ref().err().cloned().unwrap_or_default();
                    match self.exposition.observe(&version, &instance, parsed) {
                        scrape::Change::Broke => tracing::warn!(
                            %version, %instance, %error,
                            "bad metrics exposition; its samples are dropped (warned once: counted in cutover_scrape_rejected_total and shown in status until it parses again)"
                        ),
                        scrape::Change::Recovered => {
                            info!(%version, %instance, "metrics exposition parses again")
                        }
                        scrape::Change::Same => {}
                    }
                }
                Err(e) => {
                    tracing::debug!(instance = labels.get("instance").map(String::as_str), error = %e, "scrape failed")
                }
            }
        }
    }

    fn track_of(&self, version: &str) -> Option<Track> {
        metrics::track_of(self.router.intent(), version)
    }

    /// Scrape targets: every ready instance of a version in the route table.
    fn publish_targets(&self, fleet: &Fleet) {
        let mut targets = Vec::new();
        for (version, vf) in fleet {
            let Some(track) = self.track_of(version) else {
                continue;
            };
            for i in vf
                .instances
                .iter()
                .filter(|i| i.state == cutover_supervisor::InstanceState::Ready)
            {
                let labels: Labels = BTreeMap::from([
                    ("job".to_string(), self.engine.state().service.clone()),
                    ("instance".to_string(), i.addr.to_string()),
                    ("version".to_string(), version.clone()),
                    ("track".to_string(), track.as_str().to_string()),
                ]);
                targets.push(Target {
                    addr: i.addr,
                    labels,
                });
            }
        }
        self.targets.send_if_modified(|t| {
            if *t == targets {
                false
            } else {
                *t = targets;
                true
            }
        });
    }

    fn commit_for(&self, before: &State, decisions: &[Decision]) -> Commit {
        let after = self.engine.state();
        let mut commit = Commit {
            snapshot: serde_json::to_value(after).ok(),
            ..Commit::default()
        };
        commit.decisions = decisions
            .iter()
            .map(|d| DecisionRecord {
                seq: None,
                rollout_id: d.rollout.map(|r| r as i64),
                at: d.at.millis() as i64,
                kind: d.kind.as_str().to_string(),
                reason: d.reason.clone(),
                numbers: d.numbers.clone(),
                hash: None,
            })
            .collect();
        if let Some(r) = &after.rollout {
            let new = before.rollout.as_ref().is_none_or(|b| b.id != r.id);
            if new {
                if let Some(rel) = self.releases.get(&r.to.digest) {
                    commit.releases.push(ReleaseRecord {
                        digest: rel.digest.clone(),
                        name: rel.name.clone(),
                        exe_sha256: rel.exe_sha256.clone(),
                        spec: serde_json::to_value(rel).unwrap_or_default(),
                        created_at: r.started.millis() as i64,
                        failed_at: None,
                        failed_reason: None,
                    });
                }
                commit.rollouts_started.push(RolloutRecord {
                    id: r.id as i64,
                    service: after.service.clone(),
                    from_version: r.from.as_ref().map(|f| f.version.clone()),
                    from_digest: r.from.as_ref().map(|f| f.digest.clone()),
                    to_version: r.to.version.clone(),
                    to_digest: r.to.digest.clone(),
                    started_at: r.started.millis() as i64,
                    ended_at: None,
                    outcome: None,
                });
            }
        }
        let at = decisions.first().map(|d| d.at);
        if let Some(ended) = ended_record(before.rollout.as_ref(), after.rollout.as_ref(), at) {
            commit.rollouts_ended.push(ended);
        }
        for (digest, f) in &after.failed {
            if !before.failed.contains_key(digest) {
                commit
                    .failed
                    .push((digest.clone(), f.at.millis() as i64, f.reason.clone()));
            }
        }
        commit
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Start { release } => self.start_release(&release),
            Action::Route {
                stable,
                canary,
                weight,
                salt,
            } => {
                let fleet = self.fleet_rx.borrow().clone();
                self.router.set_intent(
                    Intent {
                        stable,
                        canary,
                        weight,
                        salt,
                    },
                    &fleet,
                    &self.proxy,
                );
                // The scrape targets follow the route table (a canary is scraped, labelled
                // track="canary", from its first traffic).
                self.publish_targets(&fleet);
            }
            Action::Stop { release, reason } => {
                info!(version = %release.version, %reason, "stopping");
                let proxy = self.proxy.clone();
                let in_flight: InFlight = Arc::new(move |addr| proxy.in_flight(addr));
                // What is still open when the drain window ends (WebSockets): cutover stops
                // forwarding client frames, lets the instance's acks through for the quiet
                // period, then closes the client with 1012 (DESIGN.md invariant 4).
                let (proxy, quiet) = (
                    self.proxy.clone(),
                    self.loaded.config.app.stop.quiet_period.get(),
                );
                let closer: cutover_supervisor::Closer = Arc::new(move |addr| {
                    let drained = proxy.drain_websockets(addr, quiet);
                    Box::pin(async move {
                        let report = drained.await;
                        info!(%addr, "websockets drained: {}", ws_drained(&report));
                    })
                });
                let stop = self
                    .supervisor
                    .stop_with(&release.version, in_flight, Some(closer));
                tokio::spawn(async move {
                    let report = stop.await;
                    info!(version = %report.version, "stopped: {}", stopped(&report));
                });
            }
        }
    }

    fn release_for(&mut self, release: &Release) -> Option<SupRelease> {
        if let Some(r) = self.releases.get(&release.digest) {
            return Some(r.clone());
        }
        let stored = self
            .store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release(&release.digest)
            .ok()
            .flatten()?;
        let r: SupRelease = serde_json::from_value(stored.spec).ok()?;
        self.releases.insert(release.digest.clone(), r.clone());
        Some(r)
    }

    fn start_release(&mut self, release: &Release) {
        let canary = self
            .engine
            .active()
            .is_some_and(|r| r.to.digest == release.digest);
        let failure = match self.release_for(release) {
            None => Some(format!(
                "release {} is not in the state store",
                release.label()
            )),
            Some(r) => match self.supervisor.start(r) {
                Ok(()) => None,
                Err(e) => Some(e.to_string()),
            },
        };
        if let Some(reason) = failure {
            error!(version = %release.version, %reason, "could not start");
            if canary {
                let _ = self.apply(
                    Event::StartFailed {
                        digest: release.digest.clone(),
                        reason,
                        facts: Vec::new(),
                    },
                    None,
                );
            }
        } else {
            self.on_fleet();
        }
    }

    /// Readiness and crash loops, as the fleet reports them.
    fn on_fleet(&mut self) {
        let fleet = self.fleet_rx.borrow_and_update().clone();
        self.router.publish(&fleet, &self.proxy);
        self.publish_targets(&fleet);
        let starting = self
            .engine
            .active()
            .filter(|r| r.phase == Phase::Starting)
            .map(|r| r.to.clone());
        if let Some(to) = starting {
            if fleet
                .get(&to.version)
                .is_some_and(|vf| vf.digest == to.digest && vf.all_ready())
            {
                let _ = self.apply(
                    Event::Ready {
                        digest: to.digest.clone(),
                    },
                    None,
                );
            }
        }
        for vf in fleet.values() {
            // The engine decides on the first report of a crash loop and ignores the rest; it
            // is asked only when it would listen, so the facts are read from disk once.
            if let Some(cl) = &vf.crash_loop {
                if !self.engine.crash_looping(&vf.digest) {
                    let detail = format!(
                        "instance {} restarted {} times within {}{}",
                        cl.instance,
                        cl.restarts,
                        cl.window,
                        cl.last_exit
                            .as_ref()
                            .map(|e| format!(", last exit: {e}"))
                            .unwrap_or_default()
                    );
                    // The detail already says how it last exited.
                    let facts = self
                        .facts(vf, |i| i.id == cl.instance)
                        .into_iter()
                        .map(|f| InstanceFacts {
                            last_exit: None,
                            ..f
                        })
                        .collect();
                    let _ = self.apply(
                        Event::CrashLoop {
                            digest: vf.digest.clone(),
                            detail,
                            facts,
                        },
                        None,
                    );
                }
            } else if self.engine.crash_looping(&vf.digest) {
                let _ = self.apply(
                    Event::CrashLoopEnded {
                        digest: vf.digest.clone(),
                    },
                    None,
                );
            }
        }
    }

    /// What the engine needs to explain a failure of these instances: the last readiness
    /// probe, how the last process ended, the last lines of its log, and the log's path.
    fn facts(
        &self,
        vf: &cutover_supervisor::VersionFleet,
        which: impl Fn(&cutover_supervisor::InstanceStatus) -> bool,
    ) -> Vec<InstanceFacts> {
        vf.instances
            .iter()
            .filter(|i| which(i))
            .map(|i| {
                let log = self.supervisor.log_path(&i.id);
                let output_tail = cutover_supervisor::logs::tail(&log, FAILURE_TAIL_LINES)
                    .unwrap_or_else(|e| vec![format!("(could not read the log: {e})")]);
                InstanceFacts {
                    instance: i.id.clone(),
                    last_probe: i.last_probe.clone(),
                    last_exit: i.last_exit.clone(),
                    output_tail,
                    log: Some(log.display().to_string()),
                }
            })
            .collect()
    }

    /// The instant the engine asked for has come: its timers decide on the last measurement.
    /// While a release starts, the timeout carries what its instances that are not ready show
    /// (the engine explains a start timeout with them).
    fn on_timeout(&mut self) {
        let starting = self
            .engine
            .active()
            .filter(|r| r.phase == Phase::Starting)
            .map(|r| r.to.digest.clone());
        let facts = match starting {
            Some(digest) => {
                let fleet = self.fleet_rx.borrow().clone();
                fleet
                    .values()
                    .find(|vf| vf.digest == digest)
                    .map(|vf| self.facts(vf, |i| i.state != InstanceState::Ready))
                    .unwrap_or_default()
            }
            None => Vec::new(),
        };
        let _ = self.apply(Event::Timeout { facts }, None);
    }

    fn on_tick(&mut self) {
        let window = self.loaded.config.rollout.window.get();
        let min_samples = self.loaded.config.rollout.min_samples;
        self.history.collect(&self.recorder);
        let measured = self.engine.active().filter(|r| r.phase != Phase::Starting);
        let versions = measured.map(|r| {
            (
                r.from.as_ref().map(|f| f.version.clone()),
                r.to.version.clone(),
            )
        });
        let measure = |d: Duration, wide: bool| match &versions {
            Some((stable, canary)) => {
                let read = |v: &str| {
                    if wide {
                        self.history.window(&self.recorder, v, d)
                    } else {
                        self.recorder.window(v, d)
                    }
                };
                WindowStats {
                    stable: stable.as_deref().map(read).unwrap_or_default(),
                    canary: read(canary),
                }
            }
            None => WindowStats::default(),
        };
        let stats = measure(window, false);
        // The longer look-backs the engine asks for, shortest first, until one holds enough
        // of both versions for every rule (the engine decides which it may use).
        let mut wider = Vec::new();
        let mut enough = lookback::enough(&stats, min_samples);
        for d in self.engine.lookback_windows(now()) {
            if enough {
                break;
            }
            let s = measure(d.get(), true);
            enough = lookback::enough(&s, min_samples);
            wider.push(Wider {
                window: d,
                stats: s,
            });
        }
        let external = self.evaluate_rules();
        let _ = self.apply(
            Event::Measured {
                stats,
                wider,
                external,
            },
            None,
        );
    }

    /// Records cutover's own exposition into the series store, then evaluates the PromQL
    /// rules: embedded ones here, Prometheus ones by the remote task (its latest results).
    fn evaluate_rules(&mut self) -> BTreeMap<String, External> {
        let t = now().millis() as i64;
        let mut own = String::new();
        let service = self.engine.state().service.clone();
        let tracks: HashMap<String, Track> = self
            .recorder
            .versions()
            .into_iter()
            .filter_map(|v| self.track_of(&v).map(|t| (v, t)))
            .collect();
        self.recorder
            .render(&service, &|v: &str| tracks.get(v).copied(), &mut own);
        let job: Labels = BTreeMap::from([("job".to_string(), "cutover".to_string())]);
        if let Err(e) = self.series.append_exposition(&own, t, &job) {
            error!(error = %e, "cutover's own exposition does not parse");
        }
        let Some(r) = self.engine.active().filter(|r| r.phase != Phase::Starting) else {
            if let Some(w) = &self.remote_work {
                let _ = w.send(None);
            }
            return BTreeMap::new();
        };
        if self.rules.is_empty() {
            return BTreeMap::new();
        }
        let vars = rules::vars(&service, &r.to, r.from.as_ref());
        if let Some(w) = &self.remote_work {
            let work = Some((self.rules.clone(), vars.clone()));
            w.send_if_modified(|cur| {
                if *cur == work {
                    false
                } else {
                    *cur = work;
                    true
                }
            });
        }
        let opts = EvalOptions {
            lookback_delta_ms: self.loaded.config.metrics.lookback_delta.get().as_millis() as i64,
            compat: if self.loaded.config.metrics.prometheus_version == 2 {
                cutover_promql::Compat::V2
            } else {
                cutover_promql::Compat::V3
            },
        };
        let mut external = self
            .embedded
            .eval(&self.rules, &vars, &self.series, t, &opts);
        external.extend(remote::fresh(
            &self.remote_results,
            t,
            self.loaded.config.rollout.interval.get(),
        ));
        external
    }

    fn request(&mut self, req: Request) {
        match req {
            Request::Status(tx) => {
                let _ = tx.send(serde_json::to_value(self.status()).unwrap_or_default());
            }
            Request::Metrics(tx) => {
                let _ = tx.send(metrics::render(
                    &self.engine,
                    &self.recorder,
                    self.router.intent(),
                    &self.decision_counts,
                    self.exposition.rejected(),
                    &self.proxy.refused_requests(),
                ));
            }
            Request::Alerts(payload, tx) => {
                let _ = tx.send(self.alerts(payload));
            }
            Request::Deploy(req, tx) => {
                let _ = tx.send(self.deploy(req));
            }
            Request::Reload(tx) => {
                let _ = tx.send(self.reload());
            }
            Request::Verb(verb, reason, tx) => {
                let res = self.apply(Event::Command(verb), reason.as_deref()).map(|decisions| {
                    let message = decisions.iter().map(|d| d.reason.clone()).collect::<Vec<_>>().join("; ");
                    json!({ "message": if message.is_empty() { format!("{verb}: done") } else { message } })
                });
                let _ = tx.send(res);
            }
        }
    }

    /// `cutover reload`: see [`crate::reload`].
    fn reload(&mut self) -> Result<Value, ApiError> {
        let in_progress = self.engine.active().is_some();
        let accepted = self
            .reloader
            .reload(&self.loaded.path, &self.loaded.config, in_progress)?;
        let policy = accepted
            .policy_changed
            .then(|| accepted.config.rollout.clone());
        self.loaded.config = accepted.config;
        if let Some(spec) = policy {
            self.set_policy(spec);
        }
        info!(reply = %accepted.reply["message"].as_str().unwrap_or_default(), "config reloaded");
        Ok(accepted.reply)
    }

    /// A new `[rollout]` policy, with no rollout in progress: the engine judges by it, and the
    /// PromQL rules are rebuilt from it.
    fn set_policy(&mut self, spec: cutover_core::spec::RolloutSpec) {
        self.loaded.config.rollout = spec.clone();
        self.engine = Engine::restore(spec, self.engine.state().clone());
        self.rules = rules::rules(&self.loaded.config);
    }

    fn deploy(&mut self, req: DeployRequest) -> Result<Value, ApiError> {
        // A policy reloaded during the last rollout applies from this one on.
        if self.engine.active().is_none() {
            if let Some(spec) = self.reloader.take_pending() {
                self.set_policy(spec);
            }
        }
        let c = &self.loaded.config;
        let rel = SupRelease::resolve(
            &req.version,
            &c.app,
            &self.loaded.dir,
            req.env.clone(),
            req.args.clone(),
        )
        .map_err(|e| ApiError::invalid(format!("cannot deploy {}: {e}", req.version)))?;
        let release = Release::new(rel.name.clone(), rel.digest.clone());
        // One process set per version name: the engine refuses a name that is running.
        let running: Vec<String> = self.fleet_rx.borrow().keys().cloned().collect();
        self.engine
            .check_version_free(&release, &running)
            .map_err(|e| ApiError::conflict(e.to_string()))?;
        self.releases.insert(rel.digest.clone(), rel);
        let decisions = self.apply(
            Event::Deploy {
                release: release.clone(),
                force: req.force,
                start_timeout: Some(c.app.start_timeout),
            },
            req.reason.as_deref(),
        )?;
        let id = self.engine.state().rollout.as_ref().map(|r| r.id);
        let message = decisions
            .first()
            .map(|d| d.reason.clone())
            .unwrap_or_default();
        Ok(
            json!({ "rollout": id, "version": release.version, "digest": release.digest, "message": message }),
        )
    }

    fn status(&self) -> StatusView {
        let c = &self.loaded.config;
        let st = self.engine.state();
        let fleet = self.fleet_rx.borrow().clone();
        let instances = fleet
            .iter()
            .flat_map(|(v, vf)| {
                vf.instances.iter().map(move |i| InstanceView {
                    version: v.clone(),
                    id: i.id.clone(),
                    addr: i.addr.to_string(),
                    pid: i.pid,
                    state: serde_json::to_value(i.state)
                        .ok()
                        .and_then(|s| s.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    restarts: i.restarts,
                    starts: i.starts,
                    in_flight: self.proxy.in_flight(i.addr),
                    last_probe: i.last_probe.clone(),
                    last_exit: i.last_exit.clone(),
                    log: self.supervisor.log_path(&i.id).display().to_string(),
                    metrics_problem: self
                        .exposition
                        .problem(&i.addr.to_string())
                        .map(str::to_string),
                })
            })
            .collect();
        StatusView {
            service: st.service.clone(),
            now: now(),
            proxy: self.proxy_addr.to_string(),
            stable: st.stable.clone(),
            previous: st.previous.clone(),
            rollout: st.rollout.clone(),
            eta: self.engine.eta(now()),
            instances,
            failed: st.failed.clone(),
            config: Some(self.reloader.view(&self.loaded.path, &self.loaded.config)),
            settings: Settings {
                interval: c.rollout.interval,
                window: c.rollout.window,
                step_interval: c.rollout.step_interval,
                min_samples: c.rollout.min_samples,
                max_hold: c.rollout.max_hold,
                hold_previous: c.rollout.hold_previous,
                drain_timeout: c.app.stop.drain_timeout,
                quiet_period: c.app.stop.quiet_period,
                grace: c.app.stop.grace,
                readiness_thresholds: (
                    c.app.readiness.success_threshold,
                    c.app.readiness.failure_threshold,
                ),
                liveness_failure_threshold: c.app.liveness.failure_threshold,
                max_lookback: c.rollout.max_lookback,
                max_inconclusive: c.rollout.max_inconclusive,
                traffic_need: {
                    let weight = self
                        .engine
                        .active()
                        .map(|r| r.weight)
                        .filter(|w| *w > cutover_core::Weight::ZERO)
                        .unwrap_or_else(|| c.rollout.initial());
                    lookback::traffic_need_at(&c.rollout, weight).sentence()
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rollout's outcome is recorded when it ends: at promotion (not when the held previous
    /// release is let go, which `history` would show as "in progress" until then), replaced by a
    /// rollback after it, and an abort's too.
    #[test]
    fn outcomes_are_recorded_when_the_rollout_ends() {
        let spec = cutover_core::spec::RolloutSpec::default();
        let mut e = Engine::new("shop", spec);
        let t = |s: u64| Timestamp(1_000_000 + s * 1000);
        let step = |e: &mut Engine, at: Timestamp, ev: Event| {
            let before = e.state().rollout.clone();
            e.handle(at, ev).unwrap();
            ended_record(before.as_ref(), e.state().rollout.as_ref(), Some(at))
        };
        let deploy = |v: &str, d: &str| Event::Deploy {
            release: Release::new(v, d),
            force: false,
            start_timeout: None,
        };
        assert_eq!(step(&mut e, t(0), deploy("v1", "a")), None);
        let first = step(&mut e, t(1), Event::Ready { digest: "a".into() });
        assert_eq!(first, Some((1, t(1).millis() as i64, "done".into())));
        assert_eq!(step(&mut e, t(2), deploy("v2", "b")), None);
        assert_eq!(
            step(&mut e, t(3), Event::Ready { digest: "b".into() }),
            None
        );
        let promoted = step(&mut e, t(4), Event::Command(Verb::Promote));
        assert_eq!(promoted, Some((2, t(4).millis() as i64, "promoted".into())));
        let rolled_back = step(&mut e, t(5), Event::Command(Verb::Rollback));
        assert_eq!(
            rolled_back,
            Some((2, t(5).millis() as i64, "rolled_back".into()))
        );
        assert_eq!(step(&mut e, t(6), deploy("v3", "c")), None);
        assert_eq!(
            step(&mut e, t(7), Event::Command(Verb::Abort)).map(|r| r.2),
            Some("aborted".into())
        );
    }

    #[test]
    fn prunes_only_old_log_files() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("v1-0.log");
        let fresh = dir.path().join("v2-0.log");
        let other = dir.path().join("keep.txt");
        for p in [&old, &fresh, &other] {
            std::fs::write(p, "x").unwrap();
        }
        let long_ago = std::time::UNIX_EPOCH + Duration::from_millis(cutover_clock::unix_millis())
            - Duration::from_secs(73 * 3600);
        for p in [&old, &other] {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
        assert_eq!(prune_logs(dir.path(), RETENTION), 1);
        assert!(!old.exists() && fresh.exists() && other.exists());
    }

    /// The proxy settings of `[service]` and `[app]` reach the proxy (`upstream_timeout` once
    /// did not, and every hung instance waited the 60 s default).
    #[test]
    fn the_proxy_gets_its_settings_from_the_config() {
        let c = cutover_core::spec::Config::from_toml_str(
            "[service]\nname = \"shop\"\nupstream_timeout = \"250ms\"\nworkers = 3\n\
             trusted_proxies = [\"10.0.0.0/8\"]\n\
             [app]\ncommand = [\"./app\", \"{port}\"]\nupstream_protocol = \"http2\"\n\
             [app.stop]\ndrain_timeout = \"7s\"\n",
        )
        .unwrap();
        let p = proxy_config(&c);
        assert_eq!(p.upstream_timeout, Duration::from_millis(250));
        assert_eq!(p.workers, 3);
        assert_eq!(
            p.trusted_proxies,
            ["10.0.0.0/8".parse::<cutover_core::Cidr>().unwrap()]
        );
        assert_eq!(p.shutdown_timeout, Duration::from_secs(7));
        assert_eq!(
            p.upstream_protocol,
            cutover_core::spec::UpstreamProtocol::Http2
        );
        let defaults = proxy_config(
            &cutover_core::spec::Config::from_toml_str(
                "[service]\nname = \"shop\"\n[app]\ncommand = [\"./app\", \"{port}\"]\n",
            )
            .unwrap(),
        );
        assert_eq!(defaults.upstream_timeout, Duration::from_secs(60));
        assert_eq!(defaults.workers, cutover_proxy::default_workers());
        assert!(defaults.trusted_proxies.is_empty());
    }
}
