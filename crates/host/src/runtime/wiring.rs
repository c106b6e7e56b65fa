//! Wiring: `start()` binds the listeners, builds the real seams (the proxy, the supervisor,
//! the store actor, the notifier) around the driver, spawns the tasks, and returns
//! [`Running`]. Nothing here decides or handles an event.

use super::admin::AdminHandler;
use super::driver::{Driver, Request, Scraping, Seams};
use super::persist::StoreActor;
use super::prune_logs;
use super::seams::{Notifications, Silent, Supervised};
use crate::config::Loaded;
use crate::remote;
use crate::rules;
use crate::scrape::{self, Target};
use cutover_admin::Handler;
use cutover_core::engine::{Engine, State};
use cutover_notify::Notifier;
use cutover_proxy::{CertReloader, Proxy, ProxyConfig, TlsError};
use cutover_store::{AuditPaths, Store};
use cutover_supervisor::Supervisor;
use cutover_telemetry::Recorder;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info};

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
    #[error("admin.tls.cert / admin.tls.key: {source} (fix: point admin.tls.cert at a PEM certificate chain and admin.tls.key at its PEM private key; relative paths are relative to the config file)")]
    AdminTls {
        #[source]
        source: TlsError,
    },
    #[error(
        "the state database {db} failed audit verification: {summary}{more}. cutover will not \
         run on a tampered store (fix: find out what changed it, `cutover history --verify` \
         lists every problem; restore the state dir from a backup, or start with \
         --accept-tampered to go on with it as it is, which is recorded in the audit chain)",
        db = db.display(),
        summary = report.problems.first().map(|p| p.to_string()).unwrap_or_default(),
        more = match report.problems.len() { 0 | 1 => String::new(), n => format!(" (and {} more)", n - 1) },
    )]
    Tampered {
        db: PathBuf,
        report: Box<cutover_store::ChainReport>,
    },
    #[error("state store: cannot start its thread ({0})")]
    StoreThread(std::io::Error),
    #[error(
        "the stored engine state cannot be read ({0}); it was written by an incompatible cutover"
    )]
    Snapshot(serde_json::Error),
    #[error(transparent)]
    Config(#[from] cutover_core::spec::ConfigError),
    #[error("notify: {0}")]
    Notify(String),
    #[error(transparent)]
    Recovery(#[from] crate::recovery::RecoveryError),
    #[error("service.tls.cert / service.tls.key: {source} (fix: point service.tls.cert at a PEM certificate chain and service.tls.key at its PEM private key; relative paths are relative to the config file)")]
    Tls {
        #[source]
        source: TlsError,
    },
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
    store: StoreActor,
    /// The state directory's lock, released when this is dropped or the process ends.
    recovery: crate::recovery::Recovery,
    /// To the driver: `reload` (SIGHUP) goes the admin API's way.
    requests: mpsc::Sender<Request>,
    /// The public and admin listeners, for `cutover upgrade` to pass on.
    handover: (OwnedFd, OwnedFd),
    /// To close the WebSockets still open when an upgrade's drain window ends.
    proxy: Proxy,
    /// `app.stop.drain_timeout`: how long the proxy drains on shutdown.
    drain_timeout: Duration,
}

impl Running {
    /// A client for this runtime's admin API.
    pub fn client(&self) -> cutover_admin::AdminClient {
        cutover_admin::AdminClient::new(self.admin_addr, self.token.clone())
    }

    /// `cutover reload` without the admin API (SIGHUP): re-reads and validates the config file
    /// and applies it, or refuses it whole (see [`crate::reload`]).
    pub async fn reload(&self) -> Result<serde_json::Value, cutover_admin::ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let gone = || cutover_admin::ApiError::internal("cutover is shutting down");
        self.requests
            .send(Request::Reload(tx))
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// `cutover upgrade`: stops the driver once it is idle (no decision, no write until
    /// [`crate::upgrade::Held::resume`] or [`Running::shutdown_handed_over`]) and flushes what
    /// it wrote behind. `None` when the driver is gone (shutting down).
    pub async fn hold(&self) -> Option<crate::upgrade::Held> {
        let (idle_tx, idle_rx) = tokio::sync::oneshot::channel();
        let (release, release_rx) = tokio::sync::oneshot::channel();
        self.requests
            .send(Request::Hold(idle_tx, release_rx))
            .await
            .ok()?;
        idle_rx.await.ok()?;
        self.store.flush().await;
        // From here the new cutover may read the ledger: this one neither rewrites it nor
        // restarts or stops an instance until the upgrade's outcome is known.
        self.supervisor.pause_ownership();
        Some(crate::upgrade::Held {
            release,
            supervisor: self.supervisor.clone(),
        })
    }

    /// A failed upgrade: this cutover takes back what it lent — the lock file names it again
    /// (the new one may have written its pid), its supervisor acts on the instances again, its
    /// driver goes on.
    pub fn resume(&self, held: crate::upgrade::Held) {
        if let Err(e) = self.recovery.lock.reclaim() {
            tracing::warn!(error = %e, "could not write this cutover's pid into the state dir's lock file (a second `cutover run` would name another pid)");
        }
        held.resume();
    }

    /// What an upgrade passes to the new cutover: the public listener, the admin listener, and
    /// the state directory's locked file.
    pub fn handover_fds(&self) -> [BorrowedFd<'_>; 3] {
        [
            self.handover.0.as_fd(),
            self.handover.1.as_fd(),
            self.recovery.lock.fd(),
        ]
    }

    /// After a successful upgrade: the driver ends without another write (the new cutover owns
    /// the state directory), the proxy stops accepting and drains as on shutdown, the instances
    /// are left to the new cutover.
    /// WebSocket sessions (which the proxy's shutdown does not wait for) are relayed until
    /// they end or three quarters of `app.stop.drain_timeout` have passed; the ones still
    /// open then are closed with 1012 (their clients reconnect, to the new cutover), and the
    /// process waits for those closes (at most the last quarter) before it exits.
    pub async fn shutdown_handed_over(self, held: crate::upgrade::Held) {
        self.supervisor.release_ownership();
        let _ = held.release.send(false);
        let proxy = self.proxy.clone();
        let window = self.drain_timeout;
        let sessions = tokio::spawn(async move {
            let relay_until = tokio::time::Instant::now() + window * 3 / 4;
            while proxy.websocket_sessions_total() > 0 && tokio::time::Instant::now() < relay_until
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let open = proxy.websocket_sessions_total();
            if open > 0 {
                info!(
                    open,
                    "upgrade: closing the WebSockets still open with 1012; their clients reconnect to the new cutover"
                );
                let _ =
                    tokio::time::timeout(window / 4, proxy.drain_all_websockets(Duration::ZERO))
                        .await;
            }
        });
        self.shutdown_keeping(true).await;
        let _ = sessions.await;
    }

    /// SIGKILLs every instance at once (no drain): for test harnesses dropped without a
    /// shutdown, since instances outlive the process that started them.
    pub fn kill_apps(&self) {
        self.supervisor.kill_all();
    }

    /// Graceful shutdown: stop accepting, let in-flight requests finish, stop every instance.
    /// The persisted state is kept, so a new `start` resumes where this one was.
    pub async fn shutdown(self) {
        self.shutdown_keeping(false).await
    }

    /// [`Running::shutdown`], but with `keep_apps` the instances are left running (and
    /// recorded in the ledger) for the next cutover on this state directory to re-adopt
    /// (`run --keep-apps`, used by upgrades).
    pub async fn shutdown_keeping(self, keep_apps: bool) {
        // The copies kept for an upgrade would keep the sockets listening (connections
        // accepted into the backlog, never served) after the proxy closes its listener.
        drop(self.handover);
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        // What the driver wrote behind is on disk before the instances go.
        self.store.flush().await;
        if !keep_apps {
            self.supervisor.shutdown().await;
        }
    }
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

/// How `cutover run` was asked to treat the audit chain.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// The audit key file (default: `audit.key` in the state dir, created at first run).
    pub audit_key_file: Option<PathBuf>,
    /// Start even if the store fails verification, recording that in the chain.
    pub accept_tampered: bool,
    /// On shutdown, leave the instances running for the next cutover on this state directory
    /// to re-adopt (`run --keep-apps`).
    pub keep_apps: bool,
}

/// Starts the runtime for a loaded config and returns once it listens.
pub async fn start(loaded: Loaded) -> Result<Running, StartError> {
    start_with(
        loaded,
        StartOptions::default(),
        crate::listeners::Inherited::none(),
    )
    .await
}

/// Opens the state store and verifies its audit chain before anything else uses it: a tampered
/// store is refused unless `opts.accept_tampered`, which is recorded in the chain.
pub fn open_store(state_dir: &std::path::Path, opts: &StartOptions) -> Result<Store, StartError> {
    let db = state_dir.join(crate::secure::DB_FILE);
    let mut paths = AuditPaths::beside(&db);
    if let Some(k) = &opts.audit_key_file {
        paths.key_file = k.clone();
    }
    let mut store = Store::open_with(&db, paths)?;
    let report = store.verify_chain()?;
    if !report.ok {
        if !opts.accept_tampered {
            return Err(StartError::Tampered {
                db,
                report: Box::new(report),
            });
        }
        let head = store.accept_tampered(
            &report,
            cutover_clock::unix_millis() as i64,
            "cutover run --accept-tampered",
        )?;
        tracing::warn!(
            problems = report.problems.len(),
            first = %report.summary(),
            recorded_at = head.seq,
            "starting on a store that failed audit verification, as --accept-tampered asked; \
             this is recorded in the audit chain"
        );
    }
    Ok(store)
}

/// [`start`] with the options of `cutover run`, on the listening sockets a launcher passed
/// where it passed them (`inherited`, socket activation).
pub async fn start_with(
    loaded: Loaded,
    opts: StartOptions,
    mut inherited: crate::listeners::Inherited,
) -> Result<Running, StartError> {
    let c = loaded.config.clone();
    // Queries are checked before anything is created, so a bad rule changes nothing.
    rules::validate(&c)?;
    let state_dir = loaded.state_dir();
    // Owner-only before anything is written into it (docs/security.md).
    let narrowed =
        crate::secure::prepare_state_dir(&state_dir).map_err(|source| StartError::StateDir {
            path: state_dir.clone(),
            source,
        })?;
    for (path, mode) in narrowed {
        tracing::warn!(path = %path.display(), "was mode {mode:o}, readable by others: narrowed to owner-only");
    }
    // One cutover per state directory; then what a previous one left running.
    let recovery = crate::recovery::prepare(&state_dir, inherited.take_lock())?;
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
    let admin_tls =
        crate::secure::admin_tls(&loaded).map_err(|source| StartError::AdminTls { source })?;
    let token = cutover_admin::ensure_token(&state_dir)?;
    // Instance logs past `[state] retention`, but those of the instances a previous cutover
    // left running (re-adopted below): a quiet one still writes to its log.
    {
        let logs = state_dir.join("logs");
        let running = recovery
            .survey
            .alive
            .iter()
            .map(|r| logs.join(format!("{}.log", r.id())))
            .collect();
        prune_logs(&logs, c.state.retention.get(), &running);
    }
    let mut store = open_store(&state_dir, &opts)?;
    let engine = match store.load_snapshot()? {
        Some(v) => {
            let state: State = serde_json::from_value(v).map_err(StartError::Snapshot)?;
            Engine::restore(c.rollout.clone(), state)
        }
        None => Engine::new(c.service.name.clone(), c.rollout.clone()),
    };
    super::prune_store(
        &mut store,
        &super::in_use(engine.state()),
        c.state.retention.get(),
        cutover_clock::unix_millis() as i64,
    );

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

    // Copies of the listeners, to pass to the next cutover on an upgrade.
    let dup = |l: &TcpListener, field: &'static str, addr: SocketAddr| {
        socket2::SockRef::from(l)
            .try_clone()
            .map(OwnedFd::from)
            .map_err(|source| StartError::Bind {
                field,
                addr,
                source,
            })
    };
    let handover = (
        dup(&proxy_listener, "service.listen", c.service.listen)?,
        dup(&admin_listener, "admin.listen", c.admin.listen)?,
    );

    let (supervisor, _) = Supervisor::with_ledger(
        c.app.clone(),
        state_dir.join("logs"),
        recovery.ledger.clone(),
        recovery.survey.alive.clone(),
    );
    // Which of the processes to re-adopt pass their readiness probe: they rejoin rotation at
    // once.
    supervisor.probe_adoptable().await;
    let log_fleet = supervisor.subscribe();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (req_tx, req_rx) = mpsc::channel(64);
    let store = StoreActor::spawn(store).map_err(StartError::StoreThread)?;

    let feed = crate::dashboard::Feed::default();
    let mut tasks = Vec::new();
    {
        let handler: Arc<dyn Handler> = Arc::new(AdminHandler {
            tx: req_tx.clone(),
            store: store.clone(),
            supervisor: supervisor.clone(),
            log_dir: state_dir.join("logs"),
            feed: feed.clone(),
            spec: c.rollout.clone(),
            rollback_wait: c.app.start_timeout.get(),
        });
        let mut rx = shutdown_rx.clone();
        let token = token.clone();
        let stop = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let served = match admin_tls {
            None => tokio::spawn(cutover_admin::serve(admin_listener, token, handler, stop)),
            Some((reloader, interval)) => {
                let current = reloader.server_config();
                let mut rx = shutdown_rx.clone();
                tasks.push(tokio::spawn(reloader.run(interval, async move {
                    let _ = rx.wait_for(|s| *s).await;
                })));
                let source: cutover_admin::ServerConfigSource =
                    Arc::new(move || current.load_full());
                tokio::spawn(cutover_admin::serve_tls(
                    admin_listener,
                    token,
                    handler,
                    source,
                    stop,
                ))
            }
        };
        tasks.push(tokio::spawn(async move {
            if let Ok(Err(e)) = served.await {
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
    let notifier: Arc<dyn Notifications> = if c.notify.is_empty() {
        Arc::new(Silent)
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
        Arc::new(Notifier::start(sinks, 1024).map_err(|e| StartError::Notify(e.to_string()))?)
    };
    let seams = Seams {
        routing: Arc::new(proxy.clone()),
        instances: Arc::new(Supervised {
            supervisor: supervisor.clone(),
            app: std::sync::RwLock::new(c.app.clone()),
            dir: loaded.dir.clone(),
        }),
        store: Arc::new(store.clone()),
        notifier,
        clock: Arc::new(cutover_clock::SystemClock),
        feed,
    };
    let scraping = Scraping {
        targets: targets_tx,
        scraped: scraped_rx,
        remote_work,
        remote_results,
    };
    let mut driver = Driver::new(
        loaded.clone(),
        engine,
        seams,
        recorder,
        scraping,
        proxy_addr,
    )
    .recovering(crate::recovery::event(&recovery.survey));
    // The instances are re-adopted (or started) and the route table set before the proxy
    // accepts its first connection: no request finds an empty table after a restart.
    driver.recover().await;
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
    tasks.push(tokio::spawn(driver.run(req_rx, shutdown_rx.clone())));
    {
        // Instance logs are pruned hourly (start() already pruned once), except those of
        // running instances: one quiet for that long still writes to its log.
        let logs = state_dir.join("logs");
        let retention = c.state.retention.get();
        let mut rx = shutdown_rx;
        tasks.push(tokio::spawn(async move {
            let mut gc = tokio::time::interval(Duration::from_secs(3600));
            gc.tick().await;
            loop {
                tokio::select! {
                    _ = rx.wait_for(|s| *s) => break,
                    _ = gc.tick() => {
                        let in_use = log_fleet
                            .borrow()
                            .values()
                            .flat_map(|vf| vf.instances.iter().map(|i| logs.join(format!("{}.log", i.id))))
                            .collect();
                        prune_logs(&logs, retention, &in_use);
                    }
                }
            }
        }));
    }
    info!(%proxy_addr, %admin_addr, service = %c.service.name, state_dir = %state_dir.display(), "cutover is running");
    Ok(Running {
        proxy_addr,
        admin_addr,
        token,
        state_dir,
        shutdown: shutdown_tx,
        tasks,
        supervisor,
        store,
        recovery,
        requests: req_tx,
        handover,
        proxy,
        drain_timeout: c.app.stop.drain_timeout.get(),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

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
