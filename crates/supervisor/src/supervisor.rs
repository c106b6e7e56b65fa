//! The supervisor: one task per instance owns its process, probes it, restarts it, and stops
//! it when told. State changes are published on a `watch` channel as a [`Fleet`].
//!
//! Invariant 3 (DESIGN.md): an instance is `Ready` only after `readiness.success_threshold`
//! consecutive passing readiness probes of its *current* process; every spawn starts at
//! `Starting`. Readiness failing makes it `NotReady` (out of rotation, not restarted);
//! liveness failing restarts it.
//!
//! Invariant 4: [`Supervisor::stop`] drains before it signals: the instance is `Draining`
//! until the caller's in-flight count reaches zero (or `stop.drain_timeout`), only then comes
//! `stop.signal`, and SIGKILL after `stop.grace`.

use crate::adopt::{InstanceRecord, Ledger};
use crate::fleet::{CrashLoop, Fleet, InstanceState, InstanceStatus, VersionFleet};
use crate::health::{CrashWindow, Flip, Liveness, Readiness, Restarts};
use crate::process::{self, signal_group, signal_of, terminate, Ended, Proc};
use crate::release::Release;
use crate::{probe, SupervisorError};
use cutover_core::spec::{AppSpec, ProbeSpec};
use cutover_core::Dur;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

/// How many requests are in flight to an address; the proxy knows, the supervisor asks.
pub type InFlight = Arc<dyn Fn(SocketAddr) -> usize + Send + Sync>;

/// Called for an instance whose drain window ended with connections still open: closes what
/// is left (the host's proxy ends WebSockets with 1012 after a quiet period). The returned
/// future ends when it is done.
pub type Closer =
    Arc<dyn Fn(SocketAddr) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// How often `stop` re-asks [`InFlight`] while draining.
const DRAIN_POLL: Duration = Duration::from_millis(5);

/// A cheap, cloneable handle on the supervisor. All clones drive the same instances.
///
/// Must be used from within a Tokio runtime (it spawns tasks and processes).
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

struct Inner {
    app: AppSpec,
    log_dir: PathBuf,
    fleet: watch::Sender<Fleet>,
    /// Running versions. An entry stays (with its handles taken) while a stop is under way,
    /// so that the same version name cannot be started again until its processes are gone.
    versions: Mutex<BTreeMap<String, Vec<InstanceHandle>>>,
    /// Where the processes are recorded for a restarted cutover (`None`: nowhere; tests).
    ledger: Option<Ledger>,
    /// What was last written to the ledger.
    recorded: Mutex<Vec<InstanceRecord>>,
    /// Instances a previous cutover left running, not yet claimed by a `start` of their
    /// release.
    adoptable: Mutex<Vec<InstanceRecord>>,
    /// The adoptable processes (by pid) whose readiness probe passed in
    /// [`Supervisor::probe_adoptable`]: they rejoin rotation at once when adopted.
    adoptable_ready: Mutex<std::collections::BTreeSet<u32>>,
    /// Whether this supervisor may act on its processes: see [`Ownership`].
    ownership: watch::Sender<Ownership>,
}

/// Whether a supervisor may act on its processes (restart, stop, record them in the ledger).
/// `cutover upgrade` hands the instances to a new cutover while the old one still runs: from
/// the moment the new one reads the ledger the old one must neither rewrite the ledger nor
/// restart or kill an instance, or two supervisors would act on one process (two restarts on
/// one port, a ledger that no longer says what runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// The normal case: probe, restart, record.
    Own,
    /// An upgrade is handing the instances over: probes go on (the old proxy still routes),
    /// but an instance that exits or fails liveness waits, untouched, for the outcome; the
    /// ledger is not written.
    Paused,
    /// Handed over: the instance tasks end without touching their processes, and nothing is
    /// written again. Final.
    Released,
}

struct InstanceHandle {
    id: String,
    addr: SocketAddr,
    ctl: watch::Sender<Ctl>,
    task: JoinHandle<StopExit>,
}

/// What the supervisor wants an instance task to do. Only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctl {
    /// Keep the process running: probe, restart on exit or liveness failure.
    Run,
    /// Leaving rotation: no more restarts, no more probes, the process keeps serving.
    Drain,
    /// Signal, grace, SIGKILL; then the task ends.
    Terminate,
}

/// What [`Supervisor::stop`] did, per instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopReport {
    pub version: String,
    /// Empty when the version was not running (or another stop of it is already under way).
    pub instances: Vec<InstanceStopReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStopReport {
    pub id: String,
    pub addr: SocketAddr,
    pub drain: DrainOutcome,
    pub exit: StopExit,
}

/// How the drain went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum DrainOutcome {
    /// No request was in flight any more after this long.
    Drained { waited: Dur },
    /// `stop.drain_timeout` elapsed with this many requests still in flight; they were cut.
    TimedOut { in_flight: usize },
}

/// How the process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum StopExit {
    /// It exited within `stop.grace` of the stop signal.
    Exited { status: String },
    /// It was still running after `stop.grace` and was SIGKILLed.
    Killed { status: String },
    /// There was no process to stop (it had exited, or was between restarts).
    NotRunning { last_exit: Option<String> },
}

impl Supervisor {
    /// A supervisor for instances of `app`, writing their output to `log_dir/<version>-<n>.log`.
    /// The receiver sees every state change.
    pub fn new(app: AppSpec, log_dir: PathBuf) -> (Supervisor, watch::Receiver<Fleet>) {
        Self::build(app, log_dir, None, Vec::new())
    }

    /// A supervisor that records its processes in `ledger` and re-adopts `adoptable` ones (the
    /// live records a previous cutover left, see [`crate::Survey`]) when their release is
    /// started: an adopted instance keeps its process and port, and is probed like any other
    /// (it joins rotation once its readiness probe passes). Must be called within a Tokio
    /// runtime: a task rewrites the ledger whenever the set of processes changes.
    pub fn with_ledger(
        app: AppSpec,
        log_dir: PathBuf,
        ledger: Ledger,
        adoptable: Vec<InstanceRecord>,
    ) -> (Supervisor, watch::Receiver<Fleet>) {
        let (sup, rx) = Self::build(app, log_dir, Some(ledger), adoptable);
        let weak = Arc::downgrade(&sup.inner);
        let mut changes = sup.subscribe();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let Some(inner) = weak.upgrade() else { return };
                inner.record();
            }
        });
        (sup, rx)
    }

    fn build(
        app: AppSpec,
        log_dir: PathBuf,
        ledger: Option<Ledger>,
        adoptable: Vec<InstanceRecord>,
    ) -> (Supervisor, watch::Receiver<Fleet>) {
        let (fleet, rx) = watch::channel(Fleet::new());
        let inner = Inner {
            app,
            log_dir,
            fleet,
            versions: Mutex::new(BTreeMap::new()),
            ledger,
            recorded: Mutex::new(Vec::new()),
            adoptable: Mutex::new(adoptable),
            adoptable_ready: Mutex::new(Default::default()),
            ownership: watch::channel(Ownership::Own).0,
        };
        (
            Supervisor {
                inner: Arc::new(inner),
            },
            rx,
        )
    }

    /// Probes the readiness of every adoptable process once (concurrently, each bounded by
    /// `readiness.timeout`). One that passes is re-adopted `Ready`, so it is back in
    /// rotation the moment its release is started, with no gap in which its clients would
    /// find no ready instance; one that fails is re-adopted `Starting`, and its probes decide
    /// as for any new process. Returns how many passed.
    pub async fn probe_adoptable(&self) -> usize {
        let records = lock(&self.inner.adoptable).clone();
        let spec = self.inner.app.readiness.clone();
        let probes = records.iter().map(|r| {
            let addr = SocketAddr::from(([127, 0, 0, 1], r.port));
            let (path, timeout) = (spec.path.clone(), spec.timeout.get());
            async move { (r.pid, probe::probe(addr, &path, timeout).await) }
        });
        let results = futures_util::future::join_all(probes).await;
        let mut ready = lock(&self.inner.adoptable_ready);
        for (pid, result) in results {
            match result {
                Ok(()) => {
                    ready.insert(pid);
                }
                Err(e) => {
                    tracing::info!(pid, error = %e, "a process to re-adopt is not ready (yet); it starts out of rotation")
                }
            }
        }
        ready.len()
    }

    /// `cutover upgrade` begins: stop acting on the processes (see [`Ownership::Paused`]).
    pub fn pause_ownership(&self) {
        self.inner.ownership.send_if_modified(|o| {
            let paused = *o == Ownership::Own;
            if paused {
                *o = Ownership::Paused;
            }
            paused
        });
        // A ledger write under way finishes before this returns; none starts after.
        drop(lock(&self.inner.recorded));
    }

    /// The upgrade failed: act on the processes again. An instance that exited (or failed
    /// liveness) meanwhile is dealt with now, and the ledger is brought up to date.
    pub fn resume_ownership(&self) {
        let resumed = self.inner.ownership.send_if_modified(|o| {
            let resumed = *o == Ownership::Paused;
            if resumed {
                *o = Ownership::Own;
            }
            resumed
        });
        if resumed {
            self.inner.record();
        }
    }

    /// The upgrade succeeded: the processes are the new cutover's. Instance tasks end without
    /// touching them; the ledger is never written again by this supervisor.
    pub fn release_ownership(&self) {
        self.inner.ownership.send_replace(Ownership::Released);
    }

    /// Whether this supervisor may act on its processes.
    pub fn ownership(&self) -> Ownership {
        *self.inner.ownership.borrow()
    }

    /// SIGKILLs every instance's process group at once, without drain or grace: for a
    /// harness that is being dropped (a failed test) and must not leave processes behind now
    /// that instances outlive the process that started them.
    pub fn kill_all(&self) {
        for vf in self.inner.fleet.borrow().values() {
            for pid in vf.instances.iter().filter_map(|i| i.pid) {
                signal_group(pid, Signal::SIGKILL);
            }
        }
    }

    /// Stops the instances a previous cutover left running that no `start` claimed (their
    /// release is no longer wanted, or `app.instances` shrank): their process group gets
    /// `stop.signal`, then SIGKILL after `stop.grace`. Returns their ids; the stops go on in
    /// the background.
    pub fn stop_unclaimed(&self) -> Vec<String> {
        let left = std::mem::take(&mut *lock(&self.inner.adoptable));
        let stop = self.inner.app.stop.clone();
        left.into_iter()
            .filter(InstanceRecord::is_alive)
            .map(|rec| {
                let id = rec.id();
                tracing::info!(instance = %id, pid = rec.pid, "stopping an instance a previous cutover left running, which is no longer wanted");
                let mut proc = Proc::Adopted {
                    pid: rec.pid,
                    start_time: rec.start_time,
                    gone: false,
                };
                tokio::spawn(async move {
                    terminate(&mut proc, signal_of(stop.signal), stop.grace.get()).await;
                });
                id
            })
            .collect()
    }

    /// The log file of instance `id` (`<version>-<n>`): its processes' stdout and stderr,
    /// kept after it stopped (pruned after `[state] retention` by the host).
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.inner.log_dir.join(format!("{id}.log"))
    }

    /// Another receiver of fleet changes.
    pub fn subscribe(&self) -> watch::Receiver<Fleet> {
        self.inner.fleet.subscribe()
    }

    /// The fleet as it is now.
    pub fn fleet(&self) -> Fleet {
        self.inner.fleet.borrow().clone()
    }

    /// Starts `app.instances` instances of `release`, each on a free port of 127.0.0.1.
    ///
    /// All first processes are spawned before this returns; if one cannot be spawned, the
    /// ones already spawned are killed and nothing is left running (no half-started version).
    /// Instances begin `Starting` and become `Ready` through their readiness probe.
    pub fn start(&self, release: Release) -> Result<(), SupervisorError> {
        let inner = &self.inner;
        let name = release.name.clone();
        let mut versions = inner.versions.lock().unwrap_or_else(|e| e.into_inner());
        if versions.contains_key(&name) {
            return Err(SupervisorError::AlreadyRunning(name));
        }
        let release = Arc::new(release);
        let count = inner.app.instances.max(1) as usize;
        let mut spawned: Vec<(usize, SocketAddr, PathBuf, Proc)> = Vec::with_capacity(count);
        let mut claimed = Vec::new();
        for index in 0..count {
            let log = inner.log_dir.join(format!("{name}-{index}.log"));
            if let Some(rec) = inner.claim(&name, &release.digest, index) {
                tracing::info!(version = %name, index, pid = rec.pid, port = rec.port, "re-adopting the instance a previous cutover left running");
                let proc = Proc::Adopted {
                    pid: rec.pid,
                    start_time: rec.start_time,
                    gone: false,
                };
                spawned.push((
                    index,
                    SocketAddr::from(([127, 0, 0, 1], rec.port)),
                    log,
                    proc,
                ));
                claimed.push(rec);
                continue;
            }
            let child = process::pick_port()
                .and_then(|addr| Ok((addr, process::spawn(&release, addr, index, &log)?)));
            match child {
                Ok((addr, child)) => spawned.push((index, addr, log, Proc::Child(child))),
                Err(e) => {
                    for (_, _, _, proc) in &mut spawned {
                        if let Proc::Child(child) = proc {
                            if let Some(pid) = child.id() {
                                signal_group(pid, Signal::SIGKILL);
                            }
                        }
                    }
                    // Adopted ones stay adoptable; dropped children are reaped by tokio.
                    lock(&inner.adoptable).extend(claimed);
                    return Err(e);
                }
            }
        }

        let adopted_ready = lock(&inner.adoptable_ready).clone();
        let ready_at_start = |proc: &Proc| match proc {
            Proc::Adopted { pid, .. } => adopted_ready.contains(pid),
            Proc::Child(_) => false,
        };
        let statuses = spawned
            .iter()
            .map(|(index, addr, _, proc)| InstanceStatus {
                id: format!("{name}-{index}"),
                index: *index,
                addr: *addr,
                pid: proc.id(),
                state: if ready_at_start(proc) {
                    InstanceState::Ready
                } else {
                    InstanceState::Starting
                },
                restarts: 0,
                starts: u64::from(matches!(proc, Proc::Child(_))),
                adopted: matches!(proc, Proc::Adopted { .. }),
                last_exit: None,
                last_probe: ready_at_start(proc)
                    .then(|| format!("GET {} → passed (re-adopted)", inner.app.readiness.path)),
            })
            .collect();
        inner.fleet.send_modify(|fleet| {
            fleet.insert(
                name.clone(),
                VersionFleet {
                    digest: release.digest.clone(),
                    instances: statuses,
                    crash_loop: None,
                },
            );
        });

        let mut handles = Vec::with_capacity(count);
        for (index, addr, log, child) in spawned {
            tracing::info!(version = %name, index, %addr, pid = child.id(), digest = %release.digest, "instance started");
            let (ctl, ctl_rx) = watch::channel(Ctl::Run);
            let instance = Instance {
                inner: self.inner.clone(),
                release: release.clone(),
                index,
                addr,
                log,
                ready_at_start: ready_at_start(&child),
            };
            handles.push(InstanceHandle {
                id: format!("{name}-{index}"),
                addr,
                ctl,
                task: tokio::spawn(instance.run(child, ctl_rx)),
            });
        }
        versions.insert(name, handles);
        lock(&inner.adoptable_ready).retain(|pid| !claimed.iter().any(|r| r.pid == *pid));
        Ok(())
    }

    /// Waits until every instance of `version` is `Ready`. Fails at once on a crash loop or
    /// when the version is stopped, and after `timeout` with each instance's state.
    pub async fn wait_ready(
        &self,
        version: &str,
        timeout: Duration,
    ) -> Result<(), SupervisorError> {
        let mut rx = self.subscribe();
        let deadline = Instant::now() + timeout;
        let mut seen = false;
        loop {
            let states = {
                let fleet = rx.borrow_and_update();
                let Some(v) = fleet.get(version) else {
                    return Err(if seen {
                        SupervisorError::Stopped(version.into())
                    } else {
                        SupervisorError::UnknownVersion(version.into())
                    });
                };
                seen = true;
                if let Some(cl) = &v.crash_loop {
                    return Err(SupervisorError::CrashLoop {
                        version: version.into(),
                        instance: cl.instance.clone(),
                        restarts: cl.restarts,
                        window: cl.window,
                        last_exit: cl.last_exit.clone().unwrap_or_else(|| "unknown".into()),
                    });
                }
                if v.all_ready() {
                    return Ok(());
                }
                summarize(v)
            };
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(SupervisorError::Stopped(version.into())),
                Err(_) => {
                    return Err(SupervisorError::NotReady {
                        version: version.into(),
                        timeout,
                        states,
                    })
                }
            }
        }
    }

    /// Stops `version`. The caller has already taken its instances out of rotation.
    ///
    /// Per instance, concurrently: `Draining` until `in_flight(addr) == 0` or
    /// `stop.drain_timeout`; then `stop.signal` to its process group, SIGKILL after
    /// `stop.grace`; then `Stopped`. Once all are stopped the version is removed from the
    /// fleet (and its name may be started again).
    ///
    /// The stop begins when this is called (not when the future is first polled), and it
    /// runs to the end even if the returned future is dropped.
    pub fn stop(
        &self,
        version: &str,
        in_flight: InFlight,
    ) -> impl Future<Output = StopReport> + Send + 'static {
        self.stop_with(version, in_flight, None)
    }

    /// [`Supervisor::stop`], plus the drain protocol for long-lived connections: when an
    /// instance leaves rotation it is asked to drain (`app.stop.drain_signal` or a `POST` to
    /// `app.stop.drain_path`), so an app that knows its protocol can finish and close its own
    /// sockets; if the drain window ends with connections still open, `closer` closes them
    /// before the stop signal (DESIGN.md invariant 4).
    pub fn stop_with(
        &self,
        version: &str,
        in_flight: InFlight,
        closer: Option<Closer>,
    ) -> impl Future<Output = StopReport> + Send + 'static {
        let inner = self.inner.clone();
        let version = version.to_string();
        let task = tokio::spawn(inner.stop_version(version.clone(), in_flight, closer));
        async move {
            match task.await {
                Ok(report) => report,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => StopReport {
                    version,
                    instances: Vec::new(),
                },
            }
        }
    }

    /// Stops every version without waiting for in-flight requests (cutover is exiting; the
    /// proxy has already drained). Signals and grace still apply.
    pub async fn shutdown(&self) -> Vec<StopReport> {
        let names: Vec<String> = {
            let versions = self
                .inner
                .versions
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            versions.keys().cloned().collect()
        };
        let idle: InFlight = Arc::new(|_| 0);
        let stops: Vec<_> = names.iter().map(|n| self.stop(n, idle.clone())).collect();
        let mut reports = Vec::with_capacity(stops.len());
        for s in stops {
            reports.push(s.await);
        }
        self.inner.record();
        reports
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    /// `(app.log_max_size, app.log_keep)`.
    fn log_policy(&self) -> (u64, u32) {
        (self.app.log_max_size, self.app.log_keep)
    }

    /// Takes the adoptable record of instance `index` of this release, if its process still
    /// runs.
    fn claim(&self, version: &str, digest: &str, index: usize) -> Option<InstanceRecord> {
        let mut adoptable = lock(&self.adoptable);
        let at = adoptable
            .iter()
            .position(|r| r.version == version && r.digest == digest && r.index == index)?;
        Some(adoptable.remove(at)).filter(InstanceRecord::is_alive)
    }

    /// Waits while [`Ownership::Paused`]; whether the processes are (again) this
    /// supervisor's.
    async fn owned(&self) -> bool {
        let mut rx = self.ownership.subscribe();
        rx.wait_for(|o| *o != Ownership::Paused)
            .await
            .map(|o| *o == Ownership::Own)
            // The sender lives in `self`: it cannot be gone.
            .unwrap_or(false)
    }

    /// Writes the processes of the fleet (and the adoptable ones not yet claimed or stopped)
    /// to the ledger, when they changed. A failed write is logged: the instances run on, but
    /// a restarted cutover would not find them.
    fn record(&self) {
        let Some(ledger) = &self.ledger else { return };
        if *self.ownership.borrow() != Ownership::Own {
            return;
        }
        let mut records: Vec<InstanceRecord> = {
            let fleet = self.fleet.borrow();
            let previous = lock(&self.recorded);
            fleet
                .iter()
                .flat_map(|(version, vf)| {
                    vf.instances.iter().filter_map(|i| {
                        let pid = i.pid?;
                        // The start time of a pid already recorded is known; a new one is
                        // read once.
                        let start_time = previous
                            .iter()
                            .find(|r| r.pid == pid)
                            .map(|r| r.start_time)
                            .or_else(|| crate::adopt::start_time(pid))?;
                        Some(InstanceRecord {
                            version: version.clone(),
                            digest: vf.digest.clone(),
                            index: i.index,
                            port: i.addr.port(),
                            pid,
                            start_time,
                        })
                    })
                })
                .collect()
        };
        records.extend(lock(&self.adoptable).iter().cloned());
        let mut recorded = lock(&self.recorded);
        // Checked again under the lock that `pause_ownership` takes: no write after it.
        if *recorded == records || *self.ownership.borrow() != Ownership::Own {
            return;
        }
        match ledger.save(&records) {
            Ok(()) => *recorded = records,
            Err(e) => {
                tracing::error!(path = %ledger.path().display(), error = %e, "could not write the instance ledger; a restarted cutover would not re-adopt these instances")
            }
        }
    }

    async fn stop_version(
        self: Arc<Self>,
        version: String,
        in_flight: InFlight,
        closer: Option<Closer>,
    ) -> StopReport {
        let handles = {
            let mut versions = self.versions.lock().unwrap_or_else(|e| e.into_inner());
            versions
                .get_mut(&version)
                .map(std::mem::take)
                .unwrap_or_default()
        };
        if handles.is_empty() {
            return StopReport {
                version,
                instances: Vec::new(),
            };
        }
        tracing::info!(%version, "stopping: drain, then {}", signal_of(self.app.stop.signal).as_str());
        let tasks: Vec<_> = handles
            .into_iter()
            .map(|h| {
                let pid = self
                    .fleet
                    .borrow()
                    .get(&version)
                    .and_then(|vf| vf.instances.iter().find(|i| i.id == h.id))
                    .and_then(|i| i.pid);
                let drain = Drain {
                    spec: self.app.stop.clone(),
                    probe_timeout: self.app.readiness.timeout.get(),
                    pid,
                    closer: closer.clone(),
                };
                tokio::spawn(stop_instance(h, in_flight.clone(), drain))
            })
            .collect();
        let mut instances = Vec::with_capacity(tasks.len());
        for t in tasks {
            match t.await {
                Ok(r) => instances.push(r),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => {}
            }
        }
        self.versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&version);
        self.fleet.send_modify(|f| {
            f.remove(&version);
        });
        // Each instance's drain and exit are the caller's to report (the host logs them as text).
        tracing::info!(%version, instances = instances.len(), "stopped");
        StopReport { version, instances }
    }
}

/// How one instance is drained.
struct Drain {
    spec: cutover_core::spec::StopSpec,
    probe_timeout: Duration,
    pid: Option<u32>,
    closer: Option<Closer>,
}

async fn stop_instance(h: InstanceHandle, in_flight: InFlight, d: Drain) -> InstanceStopReport {
    h.ctl.send_replace(Ctl::Drain);
    // Ask the app to drain: it knows its protocol (it can finish an order and close its socket
    // with 1012 itself), cutover only knows frames.
    if let (Some(sig), Some(pid)) = (d.spec.drain_signal, d.pid) {
        tracing::info!(instance = %h.id, signal = signal_of(sig).as_str(), "asking the instance to drain");
        signal_group(pid, signal_of(sig));
    }
    if let Some(path) = &d.spec.drain_path {
        tracing::info!(instance = %h.id, %path, "asking the instance to drain");
        if let Err(e) = probe::post(h.addr, path, d.probe_timeout).await {
            tracing::warn!(instance = %h.id, error = %e, "drain request failed; draining anyway");
        }
    }
    let drain = d.spec.drain_timeout.get();
    let started = Instant::now();
    let deadline = started + drain;
    let drain = loop {
        let n = in_flight(h.addr);
        if n == 0 {
            break DrainOutcome::Drained {
                waited: started.elapsed().into(),
            };
        }
        if Instant::now() >= deadline {
            if let Some(close) = &d.closer {
                // Long-lived connections still open: close them cleanly (1012 after a quiet
                // period) rather than let the stop signal reset them.
                tracing::info!(instance = %h.id, in_flight = n, "drain window over; closing what is left");
                let bound = d.spec.quiet_period.get() + Duration::from_secs(10);
                let _ = tokio::time::timeout(bound, close(h.addr)).await;
                let left = in_flight(h.addr);
                if left == 0 {
                    break DrainOutcome::Drained {
                        waited: started.elapsed().into(),
                    };
                }
                tracing::warn!(instance = %h.id, in_flight = left, "still in flight after closing; stopping anyway");
                break DrainOutcome::TimedOut { in_flight: left };
            }
            tracing::warn!(instance = %h.id, in_flight = n, "drain timed out; stopping anyway");
            break DrainOutcome::TimedOut { in_flight: n };
        }
        tokio::time::sleep(DRAIN_POLL).await;
    };
    h.ctl.send_replace(Ctl::Terminate);
    let exit = match h.task.await {
        Ok(exit) => exit,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => StopExit::NotRunning {
            last_exit: Some(format!("supervision task ended: {e}")),
        },
    };
    InstanceStopReport {
        id: h.id,
        addr: h.addr,
        drain,
        exit,
    }
}

fn summarize(v: &VersionFleet) -> String {
    v.instances
        .iter()
        .map(|i| {
            let mut s = format!(
                "{} {:?} (starts {}, restarts {}",
                i.id, i.state, i.starts, i.restarts
            );
            if let Some(e) = &i.last_exit {
                s.push_str(&format!(", last exit: {e}"));
            }
            if let Some(p) = &i.last_probe {
                s.push_str(&format!(", last readiness probe: {p}"));
            }
            s.push(')');
            s
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why supervising one process ended.
enum Why {
    /// The supervisor said drain or terminate.
    Stop,
    /// The process exited by itself.
    Exited(String),
    /// Liveness failed `failure_threshold` times in a row.
    LivenessFailed(String),
    /// The processes were handed to another cutover ([`Ownership::Released`]).
    Released,
}

#[derive(Debug, Clone, Copy)]
enum ProbeKind {
    Readiness,
    Liveness,
}

/// Aborts a spawned task when dropped, so probes never outlive the process they probe.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One instance's supervision task.
struct Instance {
    inner: Arc<Inner>,
    release: Arc<Release>,
    index: usize,
    addr: SocketAddr,
    log: PathBuf,
    /// A re-adopted process whose readiness probe passed just before: it starts `Ready`.
    ready_at_start: bool,
}

impl Instance {
    /// Runs processes for this instance until told to terminate; returns how the last one
    /// ended.
    async fn run(self, mut child: Proc, mut ctl: watch::Receiver<Ctl>) -> StopExit {
        let restart = self.inner.app.restart.clone();
        let stop = self.inner.app.stop.clone();
        let initial = restart.backoff_initial.get();
        let max = restart.backoff_max.get().max(initial);
        let window = restart.crash_loop_window.get();
        let mut backoff = initial;
        let mut restarts = CrashWindow::new(window, restart.crash_loop_restarts);
        let mut ready = self.ready_at_start;
        loop {
            let started = Instant::now();
            let pid = child.id();
            let supervised = self
                .supervise(&mut child, &mut ctl, std::mem::take(&mut ready))
                .await;
            // An upgrade may be handing this process over: act on it only once it is ours
            // again, and not at all once it is not.
            if matches!(supervised, Why::Exited(_) | Why::LivenessFailed(_))
                && !self.inner.owned().await
            {
                return self.released(Some(&supervised));
            }
            let mut last_exit = match supervised {
                Why::Stop => return self.stop_phase(Some(child), ctl).await,
                Why::Released => return self.released(None),
                Why::Exited(how) => {
                    // The leader is gone; anything it left in its group goes too.
                    if let Some(pid) = pid {
                        signal_group(pid, Signal::SIGKILL);
                    }
                    how
                }
                Why::LivenessFailed(why) => {
                    self.update(|st, _| st.state = InstanceState::Restarting);
                    let how = match terminate(&mut child, signal_of(stop.signal), stop.grace.get())
                        .await
                    {
                        Ended::Exited(s) | Ended::Killed(s) => s,
                    };
                    format!("restarted: {why}; then {how}")
                }
            };
            // A process that ran longer than the crash-loop window was healthy for a while:
            // its successor starts over with the initial backoff.
            if started.elapsed() >= window {
                backoff = initial;
            }
            child = loop {
                tracing::warn!(instance = %self.id(), last_exit = %last_exit, backoff = ?backoff, "instance ended; restarting");
                self.note_restart(last_exit, &mut restarts, window);
                if !sleep_while_running(backoff, &mut ctl).await {
                    return self.stop_phase(None, ctl).await;
                }
                if !self.inner.owned().await {
                    return self.released(None);
                }
                backoff = (backoff * 2).min(max);
                match process::spawn(&self.release, self.addr, self.index, &self.log) {
                    Ok(child) => break Proc::Child(child),
                    Err(e) => last_exit = e.to_string(),
                }
            };
            let pid = child.id();
            tracing::info!(instance = %self.id(), pid, "instance restarted");
            self.update(|st, _| {
                st.state = InstanceState::Starting;
                st.pid = pid;
                st.starts += 1;
                st.adopted = false;
            });
        }
    }

    /// Probes the running process until it exits, fails liveness, or a stop arrives.
    async fn supervise(
        &self,
        child: &mut Proc,
        ctl: &mut watch::Receiver<Ctl>,
        already_ready: bool,
    ) -> Why {
        let app = &self.inner.app;
        let (tx, mut rx) = mpsc::channel(4);
        let _readiness = AbortOnDrop(tokio::spawn(probe_loop(
            ProbeKind::Readiness,
            self.addr,
            app.readiness.clone(),
            tx.clone(),
        )));
        // The instance appends to its log itself; it is rotated by size from here while the
        // instance runs (crate::rotate).
        let (max_size, keep) = self.inner.log_policy();
        let _rotation = AbortOnDrop(tokio::spawn(crate::rotate::watch(
            self.log.clone(),
            max_size,
            keep,
            crate::rotate::check_interval(app.readiness.interval.get()),
        )));
        // Liveness starts only once the process was ready: it doubles as a startup probe, so a
        // slow starter is not killed for not answering `/live` yet.
        let mut liveness: Option<AbortOnDrop> = None;
        let mut readiness = if already_ready {
            liveness = Some(AbortOnDrop(tokio::spawn(probe_loop(
                ProbeKind::Liveness,
                self.addr,
                app.liveness.clone(),
                tx.clone(),
            ))));
            Readiness::already_ready(
                app.readiness.success_threshold,
                app.readiness.failure_threshold,
            )
        } else {
            Readiness::new(
                app.readiness.success_threshold,
                app.readiness.failure_threshold,
            )
        };
        let mut live = Liveness::new(app.liveness.failure_threshold);
        let mut ownership = self.inner.ownership.subscribe();
        loop {
            if *ctl.borrow_and_update() != Ctl::Run {
                return Why::Stop;
            }
            if *ownership.borrow_and_update() == Ownership::Released {
                return Why::Released;
            }
            tokio::select! {
                status = child.wait() => return Why::Exited(status),
                r = ctl.changed() => if r.is_err() { return Why::Stop },
                _ = ownership.changed() => {}
                Some((kind, result)) = rx.recv() => match kind {
                    ProbeKind::Readiness => match (readiness.observe(result.is_ok()), result) {
                        (Flip::Ready, _) => {
                            tracing::info!(instance = %self.id(), "ready");
                            let passed = format!("GET {} → passed", app.readiness.path);
                            self.update(|st, _| {
                                st.state = InstanceState::Ready;
                                st.last_probe = Some(passed);
                            });
                            if liveness.is_none() {
                                liveness = Some(AbortOnDrop(tokio::spawn(probe_loop(
                                    ProbeKind::Liveness,
                                    self.addr,
                                    app.liveness.clone(),
                                    tx.clone(),
                                ))));
                            }
                        }
                        (Flip::NotReady, Err(e)) => {
                            tracing::warn!(instance = %self.id(), error = %e, "not ready");
                            self.update(|st, _| {
                                st.state = InstanceState::NotReady;
                                st.last_probe = Some(e);
                            });
                        }
                        // Still starting (or out of rotation): remember why, for the failure
                        // message.
                        (Flip::Unchanged, Err(e)) if !readiness.is_ready() => {
                            self.update(|st, _| st.last_probe = Some(e));
                        }
                        _ => {}
                    },
                    ProbeKind::Liveness => {
                        if let Some(n) = live.observe(result.is_ok()) {
                            let e = result.err().unwrap_or_default();
                            return Why::LivenessFailed(format!(
                                "liveness failed {n} times in a row (last: {e})"
                            ));
                        }
                    }
                },
            }
        }
    }

    /// The end of a task whose process was handed over: the process is left as it is (it may
    /// have exited: its new owner sees that too).
    fn released(&self, why: Option<&Why>) -> StopExit {
        let last_exit = match why {
            Some(Why::Exited(how)) => Some(how.clone()),
            Some(Why::LivenessFailed(why)) => Some(why.clone()),
            _ => self.last_exit(),
        };
        tracing::info!(instance = %self.id(), "handed over to the new cutover");
        StopExit::NotRunning { last_exit }
    }

    /// Draining, then (on `Terminate`) signal, grace, SIGKILL; marks the instance `Stopped`.
    async fn stop_phase(&self, child: Option<Proc>, mut ctl: watch::Receiver<Ctl>) -> StopExit {
        self.update(|st, _| st.state = InstanceState::Draining);
        let exit = match child {
            Some(mut child) => {
                let pid = child.id();
                // The process keeps serving its in-flight requests; it may also exit by itself.
                let exited = loop {
                    if *ctl.borrow_and_update() == Ctl::Terminate {
                        break None;
                    }
                    tokio::select! {
                        status = child.wait() => break Some(status),
                        r = ctl.changed() => if r.is_err() { break None },
                    }
                };
                match exited {
                    Some(how) => {
                        if let Some(pid) = pid {
                            signal_group(pid, Signal::SIGKILL);
                        }
                        self.update(|st, _| {
                            st.pid = None;
                            st.last_exit = Some(how.clone());
                        });
                        wait_terminate(&mut ctl).await;
                        StopExit::NotRunning {
                            last_exit: Some(how),
                        }
                    }
                    None => {
                        let stop = &self.inner.app.stop;
                        match terminate(&mut child, signal_of(stop.signal), stop.grace.get()).await
                        {
                            Ended::Exited(status) => StopExit::Exited { status },
                            Ended::Killed(status) => StopExit::Killed { status },
                        }
                    }
                }
            }
            None => {
                wait_terminate(&mut ctl).await;
                StopExit::NotRunning {
                    last_exit: self.last_exit(),
                }
            }
        };
        self.update(|st, _| {
            st.state = InstanceState::Stopped;
            st.pid = None;
            if let StopExit::Exited { status } | StopExit::Killed { status } = &exit {
                st.last_exit = Some(status.clone());
            }
        });
        exit
    }

    /// Records a restart and, if this instance restarted too often within the window, the
    /// version's crash loop.
    fn note_restart(&self, last_exit: String, restarts: &mut CrashWindow, window: Duration) {
        let Restarts {
            within_window: n,
            looping,
        } = restarts.record(Instant::now());
        if looping {
            tracing::error!(instance = %self.id(), restarts = n, ?window, %last_exit, "crash loop");
        }
        self.update(|st, crash_loop| {
            st.state = InstanceState::Restarting;
            st.pid = None;
            st.restarts += 1;
            st.last_exit = Some(last_exit.clone());
            if looping {
                *crash_loop = Some(CrashLoop {
                    instance: st.id.clone(),
                    restarts: n,
                    window: window.into(),
                    last_exit: Some(last_exit),
                });
            }
        });
    }

    fn id(&self) -> String {
        format!("{}-{}", self.release.name, self.index)
    }

    fn last_exit(&self) -> Option<String> {
        let fleet = self.inner.fleet.borrow();
        fleet
            .get(&self.release.name)
            .and_then(|v| v.instances.get(self.index))
            .and_then(|i| i.last_exit.clone())
    }

    /// Changes this instance's status and publishes it if anything changed. A crash loop is
    /// cleared once every instance of the version is ready again.
    fn update(&self, f: impl FnOnce(&mut InstanceStatus, &mut Option<CrashLoop>)) {
        self.inner.fleet.send_if_modified(|fleet| {
            let Some(v) = fleet.get_mut(&self.release.name) else {
                return false;
            };
            if v.digest != self.release.digest {
                return false;
            }
            let Some(st) = v.instances.get_mut(self.index) else {
                return false;
            };
            let before = (st.clone(), v.crash_loop.clone());
            f(st, &mut v.crash_loop);
            if v.all_ready() {
                v.crash_loop = None;
            }
            before != (v.instances[self.index].clone(), v.crash_loop.clone())
        });
    }
}

/// Sleeps for `d` unless a stop arrives first; false means stop.
async fn sleep_while_running(d: Duration, ctl: &mut watch::Receiver<Ctl>) -> bool {
    let sleep = tokio::time::sleep(d);
    tokio::pin!(sleep);
    loop {
        if *ctl.borrow_and_update() != Ctl::Run {
            return false;
        }
        tokio::select! {
            _ = &mut sleep => return true,
            r = ctl.changed() => if r.is_err() { return false },
        }
    }
}

/// Waits for `Terminate` (or for the handle to be gone, which means the same).
async fn wait_terminate(ctl: &mut watch::Receiver<Ctl>) {
    while *ctl.borrow_and_update() != Ctl::Terminate {
        if ctl.changed().await.is_err() {
            return;
        }
    }
}

async fn probe_loop(
    kind: ProbeKind,
    addr: SocketAddr,
    spec: ProbeSpec,
    tx: mpsc::Sender<(ProbeKind, Result<(), String>)>,
) {
    let mut tick = tokio::time::interval(spec.interval.get().max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = probe::probe(addr, &spec.path, spec.timeout.get()).await;
        if tx.send((kind, result)).await.is_err() {
            return;
        }
    }
}
