//! The driver loop: the only owner of the engine. It turns what happens (admin requests, the
//! fleet, the evaluation ticker, the engine's own timers) into events, and each event into a
//! committed outcome and then its actions.
//!
//! One event at a time, never re-entrant: carrying out an action may produce a follow-up
//! event (a release that cannot be spawned → `StartFailed`; instances already ready →
//! `Ready`), which is queued and handled after the actions of the outcome that caused it, in
//! the order it was queued. The loop drains the queue after each thing it woke for.
//!
//! Every event goes through [`Driver::apply`]: the engine decides on a clone, the outcome is
//! committed to the store and awaited, and only then are its actions carried out (DESIGN.md
//! invariant 8). A failed commit puts the engine back, carries out nothing, is logged at
//! ERROR, returned to an admin caller (500) and shown in `status` (invariant 9).
//!
//! Time comes from one injected [`Clock`]: the wall clock for the engine's timestamps, and
//! tokio's clock for sleeping until the engine's next timer, so the driver runs on paused
//! time in its tests.

use super::persist::{self, PersistError};
use super::seams::{Instances, Notifications, Routing, StateStore};
use crate::config::Loaded;
use crate::metrics;
use crate::remote;
use crate::router::Router;
use crate::rules::{self, Rule};
use crate::scrape::{self, Scraped, Target};
use crate::status::{InstanceView, Settings, StatusView};
use cutover_admin::{AlertmanagerPayload, ApiError, DeployRequest};
use cutover_clock::Clock;
use cutover_core::engine::{Decision, Engine, EngineError, Event, InstanceFacts, Release, Verb};
use cutover_core::judge::External;
use cutover_core::lookback::{self, Wider};
use cutover_core::spec::AlertsSpec;
use cutover_core::{Timestamp, Track, WindowStats};
use cutover_promql::{EvalOptions, Labels, MemStore};
use cutover_supervisor::{Fleet, InstanceState, Release as SupRelease};
use cutover_telemetry::{History, Recorder};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

/// Lines of an instance's log quoted in a start failure or crash loop.
const FAILURE_TAIL_LINES: usize = 5;

/// What the admin API asks the driver.
pub(super) enum Request {
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
    /// `cutover reload` (and SIGHUP).
    Reload(oneshot::Sender<Result<Value, ApiError>>),
    /// The release a `rollback` would switch to now, if it is one already running.
    RollbackTarget(oneshot::Sender<Option<cutover_core::engine::Release>>),
    /// `cutover upgrade`: stop deciding and writing until told (the first sender is answered
    /// once the driver is idle). `true` from the second resumes (the new binary failed);
    /// `false` (handed over) ends the driver without another write, for the new process owns
    /// the state directory now. A dropped sender resumes.
    Hold(oneshot::Sender<()>, oneshot::Receiver<bool>),
}

/// Why an event changed nothing.
#[derive(Debug, thiserror::Error)]
pub(super) enum ApplyError {
    /// The engine refused it (a verb in the wrong phase, a failed release, ...).
    #[error(transparent)]
    Refused(#[from] EngineError),
    /// Its outcome could not be committed, so none of its actions was carried out.
    #[error("could not persist the rollout state ({0}); nothing was changed")]
    Persist(PersistError),
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        match e {
            // Every refusal conflicts with the current state; its message says what to do.
            ApplyError::Refused(e) => ApiError::conflict(e.to_string()),
            ApplyError::Persist(_) => ApiError::internal(e.to_string()),
        }
    }
}

/// The driver's seams (`seams.rs`) and its one clock.
pub(super) struct Seams {
    pub routing: Arc<dyn Routing>,
    pub instances: Arc<dyn Instances>,
    pub store: Arc<dyn StateStore>,
    pub notifier: Arc<dyn Notifications>,
    pub clock: Arc<dyn Clock>,
    /// The dashboard's live feed: a status after every change, each decision as it is made
    /// (built only while a dashboard is open).
    pub feed: crate::dashboard::Feed,
}

/// The PromQL side: scrape targets out, scraped series and Prometheus' results in.
pub(super) struct Scraping {
    pub targets: watch::Sender<Vec<Target>>,
    pub scraped: mpsc::Receiver<Scraped>,
    pub remote_work: Option<watch::Sender<remote::Work>>,
    pub remote_results: remote::Results,
}

pub(super) struct Driver {
    /// Scraped series (cutover's own and the instances'), read by embedded PromQL rules.
    series: MemStore,
    embedded: rules::Embedded,
    rules: Vec<Rule>,
    scraping: Scraping,
    /// Decisions made since this cutover started, by kind (exposed on /metrics).
    decision_counts: BTreeMap<&'static str, u64>,
    pub(super) loaded: Loaded,
    pub(super) engine: Engine,
    pub(super) routing: Arc<dyn Routing>,
    pub(super) instances: Arc<dyn Instances>,
    pub(super) store: Arc<dyn StateStore>,
    pub(super) notifier: Arc<dyn Notifications>,
    clock: Arc<dyn Clock>,
    fleet_rx: watch::Receiver<Fleet>,
    recorder: Recorder,
    /// The recorder's slots folded per interval, for look-backs beyond its window.
    history: History,
    pub(super) router: Router,
    /// Resolved releases by digest: what `Action::Start` runs.
    pub(super) releases: HashMap<String, SupRelease>,
    /// Which instances serve an exposition that does not parse (warned once each).
    exposition: scrape::ExpositionHealth,
    proxy_addr: SocketAddr,
    /// Follow-up events, handled in order after the outcome that queued them.
    queue: VecDeque<Event>,
    /// The config file against the running config (`cutover reload`, SIGHUP).
    reloader: crate::reload::Reloader,
    /// The recovery event, taken when the driver starts.
    recover: Option<Event>,
    /// Something changed: the dashboard's feed gets a status once the queue is settled.
    publish_after: bool,
    /// The dashboard's live feed (see [`Seams::feed`]).
    feed: crate::dashboard::Feed,
    /// The `commit` / `committed_at` of the deploy being applied, recorded with its rollout.
    pending_commit: Option<(String, i64)>,
    /// Whether an instance was ready at the last recorded serving change (`cutover report`).
    serving: Option<bool>,
    /// The last failed commit, shown in `status` until a commit succeeds again.
    persist_failure: Option<String>,
    /// After a failed commit the engine's timers wait this long before they are tried again:
    /// the engine was put back, so its timer is still due, and retrying at once would spin.
    timers_after: Option<tokio::time::Instant>,
    /// Failures of commits written behind (evaluations that decided nothing).
    behind_tx: mpsc::UnboundedSender<PersistError>,
    behind_rx: mpsc::UnboundedReceiver<PersistError>,
    /// Results of handoffs (`Action::Handoff`), carried out off the driver's task.
    handoff_tx: mpsc::UnboundedSender<Event>,
    handoff_rx: mpsc::UnboundedReceiver<Event>,
}

/// Sleeps until `wake`, or forever when there is nothing to wake for.
async fn sleep_until_some(wake: Option<tokio::time::Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    pub(super) fn new(
        loaded: Loaded,
        engine: Engine,
        seams: Seams,
        recorder: Recorder,
        scraping: Scraping,
        proxy_addr: SocketAddr,
    ) -> Driver {
        let c = &loaded.config;
        let (behind_tx, behind_rx) = mpsc::unbounded_channel();
        let (handoff_tx, handoff_rx) = mpsc::unbounded_channel();
        let reloader = crate::reload::Reloader::new(&loaded.config);
        Driver {
            series: MemStore::new(c.metrics.retention.get().as_millis() as i64),
            embedded: rules::Embedded::default(),
            rules: rules::rules(c),
            scraping,
            decision_counts: BTreeMap::new(),
            history: History::new(c.rollout.max_lookback.get()),
            fleet_rx: seams.instances.fleet(),
            routing: seams.routing,
            instances: seams.instances,
            store: seams.store,
            notifier: seams.notifier,
            clock: seams.clock,
            feed: seams.feed,
            loaded,
            engine,
            recorder,
            router: Router::default(),
            releases: HashMap::new(),
            exposition: scrape::ExpositionHealth::default(),
            proxy_addr,
            queue: VecDeque::new(),
            reloader,
            recover: Some(Event::Recover {
                alive: Vec::new(),
                dead: Vec::new(),
            }),
            publish_after: false,
            pending_commit: None,
            serving: None,
            persist_failure: None,
            timers_after: None,
            behind_tx,
            behind_rx,
            handoff_tx,
            handoff_rx,
        }
    }

    /// Where a handoff carried out off the driver's task sends its result.
    pub(super) fn handoff_events(&self) -> mpsc::UnboundedSender<Event> {
        self.handoff_tx.clone()
    }

    fn now(&self) -> Timestamp {
        Timestamp(self.clock.unix_millis())
    }

    pub(super) async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        self.recover().await;
        self.expire_failures();
        self.settle().await;
        let mut ticker = tokio::time::interval(self.loaded.config.rollout.interval.get());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // `[state] retention`: the store is pruned hourly (start() pruned it once), off the
        // driver's task, keeping what the engine still uses.
        let mut gc = tokio::time::interval(Duration::from_secs(3600));
        gc.tick().await;
        loop {
            // The engine's next timer (a step's end, hold_previous, an abort rule's `for`,
            // the start deadline), as an instant on tokio's clock; measurements keep their
            // own interval.
            let wake = self.engine.poll_timeout().map(|t| {
                let ms = t.millis().saturating_sub(self.now().millis());
                let at = self.clock.monotonic() + Duration::from_millis(ms);
                self.timers_after.map_or(at, |after| at.max(after))
            });
            tokio::select! {
                // (The guard `wait_for` returns must not live across the handlers' awaits.)
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                    // Shutdown stops every instance on purpose: planned, not downtime.
                    self.record_serving(false, true);
                    break;
                }
                _ = sleep_until_some(wake) => { self.on_timeout(); self.publish_after = true; }
                Some(req) = requests.recv() => {
                    if let Request::Hold(idle, release) = req {
                        let _ = idle.send(());
                        if release.await == Ok(false) {
                            info!("handed over to the new cutover: the driver stops here, without a write");
                            return;
                        }
                        info!("the upgrade did not complete: the driver resumes");
                        continue;
                    }
                    let reads = matches!(req, Request::Status(_) | Request::Metrics(_) | Request::RollbackTarget(_));
                    self.request(req).await;
                    self.publish_after |= !reads;
                }
                changed = self.fleet_rx.changed() => {
                    if changed.is_err() { break; }
                    self.on_fleet();
                    self.publish_after = true;
                }
                _ = ticker.tick() => { self.on_tick(); self.publish_after = true; }
                Some(scraped) = self.scraping.scraped.recv() => self.on_scraped(scraped),
                Some(e) = self.behind_rx.recv() => self.behind_failed(&e),
                Some(event) = self.handoff_rx.recv() => { self.follow(event); self.publish_after = true; }
                _ = gc.tick() => {
                    self.expire_failures();
                    let keep = super::in_use(self.engine.state());
                    let retention = self.loaded.config.state.retention.get();
                    tokio::spawn(self.store.prune(keep, retention, self.now().millis() as i64));
                }
            }
            self.settle().await;
            if std::mem::take(&mut self.publish_after) {
                self.publish();
            }
        }
    }

    /// A fresh status on the dashboard's feed, when a dashboard is open.
    fn publish(&self) {
        self.feed
            .status(|| serde_json::to_value(self.status()).unwrap_or_default());
    }

    /// The recovery event to start with: what a previous cutover left running, as the shell
    /// found it (`crate::recovery`). Without it the driver recovers with nothing found.
    pub(super) fn recovering(mut self, event: Event) -> Driver {
        self.recover = Some(event);
        self
    }

    /// The recovery event (once): re-adopt, replace, restart, route as before; then stop
    /// what a previous cutover left that no release claimed (whole process groups).
    pub(super) async fn recover(&mut self) {
        let Some(recover) = self.recover.take() else {
            return;
        };
        if let Err(e) = self.handle(recover, None).await {
            error!(error = %e, "could not recover the persisted rollout state");
        }
        self.instances.stop_unclaimed();
    }

    /// Queues the expiry of the failure marks older than `[state] retention`, when there are
    /// any: like the rollouts that set them, they are kept that long (docs/audit.md).
    fn expire_failures(&mut self) {
        let retention = self.loaded.config.state.retention.get().as_millis() as u64;
        let before = Timestamp(self.now().millis().saturating_sub(retention));
        if self.engine.state().failed.values().any(|f| f.at < before) {
            self.follow(Event::ExpireFailures { before });
        }
    }

    /// Queues a follow-up event (once: the same event already waiting is not queued again).
    pub(super) fn follow(&mut self, event: Event) {
        if !self.queue.contains(&event) {
            self.queue.push_back(event);
        }
    }

    /// Handles the queued events in order, including those they queue in turn.
    async fn settle(&mut self) {
        while let Some(event) = self.queue.pop_front() {
            let name = event_name(&event);
            match self.apply(event, None).await {
                Ok(_) => {}
                // Already logged at ERROR and shown in status by `apply`.
                Err(ApplyError::Persist(_)) => {}
                Err(ApplyError::Refused(e)) => {
                    warn!(event = name, reason = %e, "the engine refused an event")
                }
            }
        }
    }

    /// One event and then its follow-ups; the result is the event's own.
    async fn handle(
        &mut self,
        event: Event,
        operator_reason: Option<&str>,
    ) -> Result<Vec<Decision>, ApplyError> {
        let res = self.apply(event, operator_reason).await;
        self.settle().await;
        res
    }

    /// Engine, then store, then actions. On a store failure the engine is put back as it was
    /// and nothing is carried out.
    async fn apply(
        &mut self,
        event: Event,
        operator_reason: Option<&str>,
    ) -> Result<Vec<Decision>, ApplyError> {
        let before = self.engine.clone();
        let at = self.now();
        let recorded = event.clone();
        let mut outcome = self.engine.handle(at, event)?;
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
        let commit = persist::commit_for(
            before.state(),
            self.engine.state(),
            &outcome.decisions,
            &self.releases,
            self.pending_commit.as_ref(),
        )
        .and_then(|mut c| {
            c.events = persist::recording(before.state(), self.engine.state(), at, &recorded)?;
            Ok(c)
        });
        let commit = match commit {
            Ok(c) => c,
            Err(e) => {
                self.engine = before;
                return Err(self.persist_failed(&e));
            }
        };
        // An evaluation that decided nothing and asks for nothing only records its numbers:
        // it is written behind (in order, before anything committed after it).
        if outcome.actions.is_empty()
            && outcome.decisions.is_empty()
            && matches!(recorded, Event::Measured { .. })
        {
            let done = self.store.commit(commit);
            let failed = self.behind_tx.clone();
            tokio::spawn(async move {
                if let Err(e) = done.await {
                    let _ = failed.send(e);
                }
            });
            return Ok(Vec::new());
        }
        let anchors = match self.store.commit(commit).await {
            Ok(anchors) => anchors,
            Err(e) => {
                self.engine = before;
                return Err(self.persist_failed(&e));
            }
        };
        self.persist_failure = None;
        self.timers_after = None;
        for (i, d) in outcome.decisions.iter().enumerate() {
            info!(rollout = d.rollout, kind = d.kind.as_str(), numbers = %d.numbers, "{}", d.reason);
            *self.decision_counts.entry(d.kind.as_str()).or_default() += 1;
            self.notify(d, anchors.get(i));
            self.feed.decision(d);
        }
        for action in outcome.actions {
            self.act(action).await;
        }
        Ok(outcome.decisions)
    }

    /// Logs a failed commit at ERROR and keeps it for `status`.
    fn persist_failed(&mut self, e: &PersistError) -> ApplyError {
        let err = ApplyError::Persist(e.clone());
        self.timers_after =
            Some(self.clock.monotonic() + self.loaded.config.rollout.interval.get());
        error!(error = %e, "could not persist the rollout state; nothing was changed");
        self.persist_failure = Some(format!("{err} (at {})", crate::render::rfc3339(self.now())));
        err
    }

    /// A commit written behind failed: it held an evaluation's numbers and no decision, so
    /// nothing was carried out on it; the next commit writes the whole state again.
    fn behind_failed(&mut self, e: &PersistError) {
        error!(error = %e, "could not record an evaluation; the next commit writes the state again");
        self.persist_failure = Some(format!(
            "could not record an evaluation ({e}) (at {})",
            crate::render::rfc3339(self.now())
        ));
    }

    /// Alertmanager's webhook: every firing alert whose labels include all of `[alerts] match`
    /// aborts the rollout in progress; the rest are ignored (and said so in the answer).
    async fn alerts(&mut self, payload: AlertmanagerPayload) -> Result<Value, ApiError> {
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
            self.handle(
                Event::Alert {
                    name: name.clone(),
                    labels: alert.labels.clone(),
                },
                None,
            )
            .await?;
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
    pub(super) fn publish_targets(&self, fleet: &Fleet) {
        let mut targets = Vec::new();
        for (version, vf) in fleet {
            let Some(track) = self.track_of(version) else {
                continue;
            };
            for i in vf
                .instances
                .iter()
                .filter(|i| i.state == InstanceState::Ready)
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
        self.scraping.targets.send_if_modified(|t| {
            if *t == targets {
                false
            } else {
                *t = targets;
                true
            }
        });
    }

    /// The fleet as it is now (not marking it seen: `on_fleet` reacts to changes).
    pub(super) fn fleet(&self) -> Fleet {
        self.fleet_rx.borrow().clone()
    }

    /// Readiness and crash loops, as the fleet reports them: the route table and the scrape
    /// targets follow the fleet at once; what the engine must hear is queued.
    /// Records a change of "an instance is ready" (`cutover report`'s downtime), through the
    /// store's thread; the store compares with its last record when this cutover has none.
    fn record_serving(&mut self, serving: bool, planned: bool) {
        if self.serving == Some(serving) {
            return;
        }
        let prior = self.serving.replace(serving);
        let service = self.engine.state().service.clone();
        let at = self.now().millis();
        // Queued on the store's thread now, in order; the task only reports a failure.
        let done = self
            .store
            .record_serving(service, prior, serving, planned, at);
        tokio::spawn(done);
    }

    pub(super) fn on_fleet(&mut self) {
        let fleet = self.fleet_rx.borrow_and_update().clone();
        self.router.publish(&fleet, &*self.routing);
        // Stable has no instance at all (or has again): its clients spill to the canary,
        // recorded as a decision (invariant 10), queued like every follow-up.
        if let Some((gone, detail)) = self.router.take_stable_change() {
            self.follow(Event::StableGone { gone, detail });
        }
        self.publish_targets(&fleet);
        self.record_serving(crate::delivery::serving(&fleet), false);
        let starting = self
            .engine
            .active()
            .filter(|r| r.phase.is_starting())
            .map(|r| r.to.clone());
        if let Some(to) = starting {
            if fleet
                .get(&to.version)
                .is_some_and(|vf| vf.digest == to.digest && vf.all_ready())
            {
                self.follow(Event::Ready {
                    digest: to.digest.clone(),
                });
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
                    self.follow(Event::CrashLoop {
                        digest: vf.digest.clone(),
                        detail,
                        facts,
                    });
                }
            } else if self.engine.crash_looping(&vf.digest) {
                self.follow(Event::CrashLoopEnded {
                    digest: vf.digest.clone(),
                });
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
                let log = self.instances.log_path(&i.id);
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
            .filter(|r| r.phase.is_starting())
            .map(|r| r.to.digest.clone());
        let facts = match starting {
            Some(digest) => {
                let fleet = self.fleet();
                fleet
                    .values()
                    .find(|vf| vf.digest == digest)
                    .map(|vf| self.facts(vf, |i| i.state != InstanceState::Ready))
                    .unwrap_or_default()
            }
            None => Vec::new(),
        };
        self.follow(Event::Timeout { facts });
    }

    fn on_tick(&mut self) {
        let window = self.loaded.config.rollout.window.get();
        let min_samples = self.loaded.config.rollout.min_samples;
        self.history.collect(&self.recorder);
        let measured = self.engine.active().filter(|r| !r.phase.is_starting());
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
        for d in self.engine.lookback_windows(self.now()) {
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
        self.follow(Event::Measured {
            stats,
            wider,
            external,
        });
    }

    /// Records cutover's own exposition into the series store, then evaluates the PromQL
    /// rules: embedded ones here, Prometheus ones by the remote task (its latest results).
    fn evaluate_rules(&mut self) -> BTreeMap<String, External> {
        let t = self.now().millis() as i64;
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
        let Some(r) = self.engine.active().filter(|r| !r.phase.is_starting()) else {
            if let Some(w) = &self.scraping.remote_work {
                let _ = w.send(None);
            }
            return BTreeMap::new();
        };
        if self.rules.is_empty() {
            return BTreeMap::new();
        }
        let vars = rules::vars(&service, &r.to, r.from.as_ref());
        if let Some(w) = &self.scraping.remote_work {
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
            &self.scraping.remote_results,
            t,
            self.loaded.config.rollout.interval.get(),
        ));
        external
    }

    async fn request(&mut self, req: Request) {
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
                    &self.routing.refused_requests(),
                ));
            }
            Request::Alerts(payload, tx) => {
                let _ = tx.send(self.alerts(payload).await);
            }
            Request::Deploy(req, tx) => {
                let _ = tx.send(self.deploy(req).await);
            }
            Request::Reload(tx) => {
                let _ = tx.send(self.reload());
            }
            Request::RollbackTarget(tx) => {
                let _ = tx.send(self.engine.rollback_target().cloned());
            }
            // Handled in `run` (it suspends the loop itself); here it only lets go at once.
            Request::Hold(idle, _) => {
                let _ = idle.send(());
            }
            Request::Verb(verb, reason, tx) => {
                // Honest rollback: checked again here, on the fleet as it is now.
                let fleet = self.fleet_rx.borrow().clone();
                let target = self
                    .engine
                    .rollback_target()
                    .filter(|_| verb == Verb::Rollback);
                if let Err(e) = crate::rollback::check(target, &fleet, Duration::ZERO) {
                    let _ = tx.send(Err(ApiError::conflict(e.to_string())));
                    return;
                }
                let res = self.handle(Event::Command(verb), reason.as_deref()).await.map(|decisions| {
                    let message = decisions.iter().map(|d| d.reason.clone()).collect::<Vec<_>>().join("; ");
                    json!({ "message": if message.is_empty() { format!("{verb}: done") } else { message } })
                });
                let _ = tx.send(res.map_err(ApiError::from));
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
        self.instances.set_app(accepted.config.app.clone());
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

    async fn deploy(&mut self, req: DeployRequest) -> Result<Value, ApiError> {
        // A policy reloaded during the last rollout applies from this one on.
        if self.engine.active().is_none() {
            if let Some(spec) = self.reloader.take_pending() {
                self.set_policy(spec);
            }
        }
        let c = &self.loaded.config;
        let start_timeout = c.app.start_timeout;
        let rel = self
            .instances
            .resolve(&req)
            .and_then(|rel| {
                let secrets = crate::secure::deploy_secrets(&c.app.secret_env, &req.secret_env)?;
                Ok(rel.with_secrets(secrets)?)
            })
            .map_err(|e| ApiError::invalid(format!("cannot deploy {}: {e}", req.version)))?;
        let release = Release::new(rel.name.clone(), rel.digest.clone());
        // One process set per version name: the engine refuses a name that is running.
        let running: Vec<String> = self.fleet_rx.borrow().keys().cloned().collect();
        self.engine
            .check_version_free(&release, &running)
            .map_err(|e| ApiError::conflict(e.to_string()))?;
        self.releases.insert(rel.digest.clone(), rel);
        self.pending_commit = crate::delivery::commit_of(&req)?;
        let decisions = self
            .handle(
                Event::Deploy {
                    release: release.clone(),
                    force: req.force,
                    start_timeout: Some(start_timeout),
                },
                req.reason.as_deref(),
            )
            .await;
        self.pending_commit = None;
        let decisions = decisions?;
        let id = self.engine.state().rollout.as_ref().map(|r| r.id);
        let message = decisions
            .first()
            .map(|d| d.reason.clone())
            .unwrap_or_default();
        Ok(
            json!({ "rollout": id, "version": release.version, "digest": release.digest, "message": message }),
        )
    }

    pub(super) fn status(&self) -> StatusView {
        let c = &self.loaded.config;
        let st = self.engine.state();
        let fleet = self.fleet();
        let now = self.now();
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
                    in_flight: self.routing.in_flight(i.addr),
                    websockets: self.routing.websocket_sessions(i.addr),
                    adopted: i.adopted,
                    last_probe: i.last_probe.clone(),
                    last_exit: i.last_exit.clone(),
                    log: self.instances.log_path(&i.id).display().to_string(),
                    metrics_problem: self
                        .exposition
                        .problem(&i.addr.to_string())
                        .map(str::to_string),
                })
            })
            .collect();
        StatusView {
            service: st.service.clone(),
            now,
            proxy: self.proxy_addr.to_string(),
            stable: st.stable.clone(),
            previous: st.previous.clone(),
            rollout: st.rollout.clone(),
            eta: self.engine.eta(now),
            instances,
            failed: st.failed.clone(),
            strategy: c.rollout.strategy,
            fencing: st.fencing.clone(),
            config: Some(self.reloader.view(&self.loaded.path, &self.loaded.config)),
            persist_failure: self.persist_failure.clone(),
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
                handoff: (c.rollout.strategy == cutover_core::spec::Strategy::Handoff)
                    .then(|| c.rollout.handoff.clone()),
            },
        }
    }
}

/// An event's name, for a log line.
fn event_name(e: &Event) -> &'static str {
    match e {
        Event::Deploy { .. } => "deploy",
        Event::Ready { .. } => "ready",
        Event::StartFailed { .. } => "start_failed",
        Event::CrashLoop { .. } => "crash_loop",
        Event::Measured { .. } => "measured",
        Event::CrashLoopEnded { .. } => "crash_loop_ended",
        Event::Alert { .. } => "alert",
        Event::Command(_) => "command",
        Event::Recover { .. } => "recover",
        Event::StableGone { .. } => "stable_gone",
        Event::Timeout { .. } => "timeout",
        Event::ExpireFailures { .. } => "expire_failures",
        Event::HandoffDone { .. } => "handoff_done",
        Event::HandoffFailed { .. } => "handoff_failed",
    }
}
