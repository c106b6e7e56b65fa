//! The driver on its own, on paused time, against fakes of its seams that record every call
//! in one log: what the driver does, in what order, for a scenario. No sockets, no processes,
//! no SQLite: a whole rollout with a one-minute hold runs in milliseconds.

use super::driver::{Driver, Request, Scraping, Seams};
use super::persist::PersistError;
use super::seams::{Instances, Notifications, Routing, StateStore};
use crate::config::Loaded;
use crate::status::StatusView;
use cutover_admin::{ApiError, DeployRequest};
use cutover_clock::Clock;
use cutover_core::engine::{Engine, Verb};
use cutover_core::spec::Config;
use cutover_notify::Notice;
use cutover_proxy::{RouteTable, WsDrainReport};
use cutover_store::{Commit, Head, InUse, ReleaseRecord};
use cutover_supervisor::{
    Closer, CrashLoop, Fleet, InFlight, InstanceState, InstanceStatus, Release as SupRelease,
    StopReport, SupervisorError, VersionFleet,
};
use cutover_telemetry::Recorder;
use futures_util::future::BoxFuture;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// Every call the driver made on a seam, in order.
type Log = Arc<Mutex<Vec<String>>>;

fn push(log: &Log, entry: String) {
    log.lock().unwrap().push(entry);
}

/// Wall-clock milliseconds that follow tokio's (paused) clock from a fixed start.
struct PausedClock {
    origin: Instant,
}

const EPOCH_MS: u64 = 1_800_000_000_000;

impl Clock for PausedClock {
    fn unix_millis(&self) -> u64 {
        EPOCH_MS + self.origin.elapsed().as_millis() as u64
    }
    fn monotonic(&self) -> Instant {
        Instant::now()
    }
}

struct FakeRouting {
    log: Log,
}

impl Routing for FakeRouting {
    /// `route v1[1]` or `route v1[1] + v2[1]@5%` (instances in each pool).
    fn set_table(&self, t: RouteTable) {
        let pool = |p: &cutover_proxy::Pool| format!("{}[{}]", p.version, p.backends.len());
        let mut e = format!("route {}", t.stable.as_ref().map(pool).unwrap_or_default());
        if let Some((c, w)) = &t.canary {
            e.push_str(&format!(" + {}@{w}", pool(c)));
        }
        if let Some(token) = t.fencing {
            e.push_str(&format!(" token {token}"));
        }
        // The table is rebuilt on every fleet change; the log keeps the changes only.
        let mut log = self.log.lock().unwrap();
        if log.iter().rev().find(|l| l.starts_with("route ")) != Some(&e) {
            log.push(e);
        }
    }
    fn in_flight(&self, _: SocketAddr) -> usize {
        0
    }
    fn websocket_sessions(&self, _: SocketAddr) -> usize {
        0
    }
    fn drain_websockets(&self, _: SocketAddr, _: Duration) -> BoxFuture<'static, WsDrainReport> {
        Box::pin(async {
            WsDrainReport {
                sessions: 0,
                closed_by_app: 0,
                closed_by_client: 0,
                closed_by_cutover: 0,
                lost: 0,
            }
        })
    }
    fn refused_requests(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    fn hold(&self, bound: Duration) {
        push(&self.log, format!("hold {bound:?}"));
    }
}

/// What a started release's instances do at once.
#[derive(Clone, Copy, PartialEq)]
enum OnStart {
    /// Start, and turn ready when the test says so.
    Start,
    /// Cannot be spawned.
    Fail,
    /// Ready at once, and crash-looping at once (two follow-ups from one fleet change).
    ReadyAndCrashLooping,
}

struct FakeInstances {
    log: Log,
    fleet: watch::Sender<Fleet>,
    on_start: Mutex<OnStart>,
    /// What the handoff call answers (`Err`: why it failed).
    handoff: Mutex<Result<(), String>>,
}

impl Instances for FakeInstances {
    fn resolve(&self, req: &DeployRequest) -> Result<SupRelease, SupervisorError> {
        Ok(SupRelease {
            name: req.version.clone(),
            digest: format!("sha-{}", req.version),
            exe: PathBuf::from("/bin/app"),
            exe_sha256: "0".repeat(64),
            argv: vec!["/bin/app".into()],
            env: req.env.clone(),
            extra_args: req.args.clone(),
            workdir: None,
            files: BTreeMap::new(),
            secrets: BTreeMap::new(),
            secret_values: Default::default(),
        })
    }
    fn start(&self, release: SupRelease) -> Result<(), SupervisorError> {
        let role = match release.env.get("CUTOVER_FENCING_ROLE") {
            Some(role) => format!(
                " as {role} ({})",
                release
                    .env
                    .get("CUTOVER_FENCING_TOKEN")
                    .cloned()
                    .unwrap_or_default()
            ),
            None => String::new(),
        };
        push(&self.log, format!("start {}{role}", release.name));
        let on_start = *self.on_start.lock().unwrap();
        if on_start == OnStart::Fail {
            return Err(SupervisorError::Port(std::io::Error::other("no port left")));
        }
        let ready = on_start == OnStart::ReadyAndCrashLooping;
        self.fleet.send_modify(|f| {
            let port = 4000 + f.len() as u16;
            let id = format!("{}-0", release.name);
            f.insert(
                release.name.clone(),
                VersionFleet {
                    digest: release.digest.clone(),
                    instances: vec![InstanceStatus {
                        id: id.clone(),
                        index: 0,
                        addr: SocketAddr::from(([127, 0, 0, 1], port)),
                        pid: Some(100 + u32::from(port)),
                        state: if ready {
                            InstanceState::Ready
                        } else {
                            InstanceState::Starting
                        },
                        restarts: 0,
                        starts: 1,
                        last_exit: None,
                        last_probe: None,
                        adopted: false,
                    }],
                    crash_loop: ready.then(|| CrashLoop {
                        instance: id,
                        restarts: 3,
                        window: cutover_core::Dur::from_secs(20),
                        last_exit: Some("exit status: 1".into()),
                    }),
                },
            );
        });
        Ok(())
    }
    fn stop(
        &self,
        version: &str,
        _: InFlight,
        _: Option<Closer>,
    ) -> BoxFuture<'static, StopReport> {
        push(&self.log, format!("stop {version}"));
        self.fleet.send_modify(|f| {
            f.remove(version);
        });
        let version = version.to_string();
        Box::pin(async move {
            StopReport {
                version,
                instances: Vec::new(),
            }
        })
    }
    fn fleet(&self) -> watch::Receiver<Fleet> {
        self.fleet.subscribe()
    }
    /// Nothing was left by a previous cutover in these scenarios.
    fn stop_unclaimed(&self) {}
    /// Releases are resolved from the deploy request alone here.
    fn set_app(&self, _: cutover_core::spec::AppSpec) {}
    fn log_path(&self, id: &str) -> PathBuf {
        PathBuf::from(format!("/nonexistent/{id}.log"))
    }
    fn handoff(
        &self,
        addr: SocketAddr,
        path: &str,
        token: u64,
        _: Duration,
    ) -> BoxFuture<'static, Result<(), String>> {
        push(
            &self.log,
            format!("POST {path} token {token} to :{}", addr.port()),
        );
        let answer = self.handoff.lock().unwrap().clone();
        Box::pin(async move { answer })
    }
}

#[derive(Default)]
struct FakeStore {
    log: Log,
    /// Set: every commit fails with this reason.
    fail: Mutex<Option<String>>,
    releases: Mutex<HashMap<String, ReleaseRecord>>,
    commits: Mutex<Vec<Commit>>,
}

impl StateStore for FakeStore {
    /// Logs `commit [deploy, ready]` for a commit with decisions (evaluations that decided
    /// nothing are counted, not logged).
    fn commit(&self, c: Commit) -> BoxFuture<'static, Result<Vec<Head>, PersistError>> {
        let res = match self.fail.lock().unwrap().clone() {
            Some(reason) => {
                push(&self.log, "commit failed".into());
                Err(PersistError(reason))
            }
            None => {
                assert!(c.snapshot.is_some(), "every commit carries the state");
                if !c.decisions.is_empty() {
                    let kinds: Vec<&str> = c.decisions.iter().map(|d| d.kind.as_str()).collect();
                    push(&self.log, format!("commit [{}]", kinds.join(", ")));
                }
                let mut releases = self.releases.lock().unwrap();
                for r in &c.releases {
                    releases.insert(r.digest.clone(), r.clone());
                }
                let mut commits = self.commits.lock().unwrap();
                let anchors = (0..c.decisions.len())
                    .map(|i| Head {
                        seq: (commits.len() * 100 + i) as i64,
                        mac: format!("mac-{}-{i}", commits.len()),
                    })
                    .collect();
                commits.push(c);
                Ok(anchors)
            }
        };
        Box::pin(async move { res })
    }
    /// Retention is the store's own business (tested in cutover-store); the hourly call is
    /// not part of a scenario's sequence.
    fn prune(&self, _: InUse, _: Duration, _: i64) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
    /// What `cutover report` counts as downtime is the store's business (tested with it).
    fn record_serving(
        &self,
        _: String,
        _: Option<bool>,
        _: bool,
        _: bool,
        _: u64,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
    fn release(
        &self,
        digest: &str,
    ) -> BoxFuture<'static, Result<Option<ReleaseRecord>, PersistError>> {
        let r = self.releases.lock().unwrap().get(digest).cloned();
        Box::pin(async move { Ok(r) })
    }
}

struct FakeNotifier {
    log: Log,
}

impl Notifications for FakeNotifier {
    fn notify(&self, n: Notice) {
        push(&self.log, format!("notify {}", n.kind.as_str()));
    }
}

/// Compressed time: 50 ms evaluations over a 1 s window, 400 ms steps from 5 % doubling, a
/// 2 s hold of the previous release, a 20 s start timeout, aborts on p99 > 800 ms for 500 ms.
const CONFIG: &str = r#"
[service]
name = "shop"
[app]
command = ["/bin/app", "{port}"]
start_timeout = "20s"
[rollout]
initial_weight = 5.0
step_interval = "400ms"
interval = "50ms"
window = "1s"
min_samples = 10
max_hold = "60s"
hold_previous = "2s"
[[rollout.gates]]
name = "p99-vs-stable"
metric = "latency"
quantile = 0.99
max_increase_percent = 5.0
slack = "50ms"
[[rollout.aborts]]
name = "p99-over-800ms"
metric = "latency"
quantile = 0.99
above = "800ms"
for = "500ms"
"#;

struct Harness {
    log: Log,
    store: Arc<FakeStore>,
    instances: Arc<FakeInstances>,
    requests: mpsc::Sender<Request>,
    /// Latency of the requests fed to each version (none: no traffic).
    traffic: Arc<Mutex<BTreeMap<String, Duration>>>,
    _shutdown: watch::Sender<bool>,
    _scraped: mpsc::Sender<crate::scrape::Scraped>,
}

impl Harness {
    fn new() -> Harness {
        Harness::with(CONFIG)
    }

    fn with(config: &str) -> Harness {
        let config = Config::from_toml_str(config).unwrap();
        let log: Log = Arc::default();
        let store = Arc::new(FakeStore {
            log: log.clone(),
            ..FakeStore::default()
        });
        let instances = Arc::new(FakeInstances {
            log: log.clone(),
            fleet: watch::channel(Fleet::new()).0,
            on_start: Mutex::new(OnStart::Start),
            handoff: Mutex::new(Ok(())),
        });
        let recorder = Recorder::new(Duration::from_millis(50), Duration::from_secs(2));
        let seams = Seams {
            routing: Arc::new(FakeRouting { log: log.clone() }),
            instances: instances.clone(),
            store: store.clone(),
            notifier: Arc::new(FakeNotifier { log: log.clone() }),
            clock: Arc::new(PausedClock {
                origin: Instant::now(),
            }),
            feed: Default::default(),
        };
        let (scraped_tx, scraped) = mpsc::channel(1);
        let scraping = Scraping {
            targets: watch::channel(Vec::new()).0,
            scraped,
            remote_work: None,
            remote_results: Arc::default(),
        };
        let engine = Engine::new("shop", config.rollout.clone());
        let loaded = Loaded {
            config,
            path: PathBuf::from("/nonexistent/cutover.toml"),
            dir: PathBuf::from("/nonexistent"),
        };
        let driver = Driver::new(
            loaded,
            engine,
            seams,
            recorder.clone(),
            scraping,
            SocketAddr::from(([127, 0, 0, 1], 8080)),
        );
        let (requests, requests_rx) = mpsc::channel(8);
        let (shutdown, shutdown_rx) = watch::channel(false);
        tokio::spawn(driver.run(requests_rx, shutdown_rx));
        // Clients: 5 requests to each version with traffic every 20 ms (250/s per version).
        let traffic: Arc<Mutex<BTreeMap<String, Duration>>> = Arc::default();
        let feed = traffic.clone();
        tokio::spawn(async move {
            loop {
                for (version, latency) in feed.lock().unwrap().clone() {
                    let track = recorder.track(&version);
                    for _ in 0..5 {
                        track.record(200, latency, false);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Harness {
            log,
            store,
            instances,
            requests,
            traffic,
            _shutdown: shutdown,
            _scraped: scraped_tx,
        }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> T {
        let (tx, rx) = oneshot::channel();
        self.requests.send(make(tx)).await.expect("the driver runs");
        rx.await.expect("the driver answers")
    }

    async fn deploy(&self, version: &str) -> Result<Value, ApiError> {
        let req = DeployRequest {
            version: version.into(),
            env: BTreeMap::new(),
            args: Vec::new(),
            force: false,
            reason: None,
            secret_env: BTreeMap::new(),
            commit: None,
            committed_at: None,
        };
        self.ask(|tx| Request::Deploy(req, tx)).await
    }

    async fn verb(&self, verb: Verb) -> Result<Value, ApiError> {
        self.ask(|tx| Request::Verb(verb, None, tx)).await
    }

    async fn status(&self) -> StatusView {
        serde_json::from_value(self.ask(Request::Status).await).unwrap()
    }

    async fn phase(&self) -> String {
        let s = self.status().await;
        s.rollout
            .map(|r| r.phase.name().to_string())
            .unwrap_or_default()
    }

    /// Waits (on paused time) until the rollout is in `phase`; fails after `within`.
    async fn until_phase(&self, phase: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.phase().await == phase {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not {phase} within {within:?}: {:#?}\n{:#?}",
                self.status().await.rollout,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The version's instances pass their readiness probe.
    fn ready(&self, version: &str) {
        self.instances.fleet.send_modify(|f| {
            for i in &mut f.get_mut(version).expect("started").instances {
                i.state = InstanceState::Ready;
            }
        });
    }

    fn serve(&self, version: &str, latency: Duration) {
        self.traffic.lock().unwrap().insert(version.into(), latency);
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Where `entry` is in the log; fails if it is not there.
    fn at(&self, entry: &str) -> usize {
        let log = self.log();
        log.iter()
            .position(|e| e == entry)
            .unwrap_or_else(|| panic!("no {entry:?} in {log:#?}"))
    }

    /// v1 is stable with traffic; v2 is the canary at its first step, with traffic.
    async fn progressing() -> Harness {
        let h = Harness::new();
        h.deploy("v1").await.unwrap();
        h.ready("v1");
        h.until_phase("done", Duration::from_secs(1)).await;
        h.serve("v1", Duration::from_millis(5));
        h.deploy("v2").await.unwrap();
        h.ready("v2");
        h.until_phase("progressing", Duration::from_secs(1)).await;
        h.serve("v2", Duration::from_millis(5));
        h
    }
}

const WITHIN: Duration = Duration::from_secs(60);

/// A singleton (`strategy = "handoff"`): v1 holds the role with token 1; v2 starts as a
/// standby; once it is ready the requests are held, the handoff call gives it token 2, the
/// route moves with the token, and only then is v1 stopped. The token is committed before
/// anything is done with it.
#[tokio::test(start_paused = true)]
async fn a_singleton_is_handed_over_with_its_token_before_the_old_holder_stops() {
    let h =
        Harness::with(&CONFIG.replacen("[rollout]\n", "[rollout]\nstrategy = \"handoff\"\n", 1));
    h.deploy("v1").await.unwrap();
    h.ready("v1");
    h.until_phase("done", WITHIN).await;
    h.deploy("v2").await.unwrap();
    h.ready("v2");
    h.until_phase("done", WITHIN).await;
    let s = h.status().await;
    let f = s.fencing.unwrap();
    assert_eq!((f.holder.version.as_str(), f.token), ("v2", 2));
    let expected = [
        "commit [deploy]",
        "notify started",
        "start v1 as active (1)",
        "commit [promoted]",
        "notify promoted",
        "route v1[1] token 1",
        "commit [deploy]",
        "notify started",
        "start v2 as standby (1)",
        "commit [handoff]",
        "notify step",
        // Held: the pool is empty and the proxy waits for the next table, at most
        // 2 × (drain_timeout 10s + timeout 5s) + interval.
        "hold 30.05s",
        "route v1[0] token 1",
        "POST /cutover/handoff token 2 to :4001",
        "commit [promoted]",
        "notify promoted",
        "route v2[1] token 2",
        "stop v1",
    ];
    assert_eq!(h.log(), expected);
}

/// The handoff call fails: v1 keeps the role with token 3 (2 was offered), the held requests
/// go back to it, it is told its new token, v2 is stopped; the failure is a decision.
#[tokio::test(start_paused = true)]
async fn a_failed_handoff_call_routes_back_to_the_old_holder_with_a_higher_token() {
    let h =
        Harness::with(&CONFIG.replacen("[rollout]\n", "[rollout]\nstrategy = \"handoff\"\n", 1));
    *h.instances.handoff.lock().unwrap() = Err("answered 500".into());
    h.deploy("v1").await.unwrap();
    h.ready("v1");
    h.until_phase("done", WITHIN).await;
    h.deploy("v2").await.unwrap();
    h.ready("v2");
    h.until_phase("aborted", WITHIN).await;
    let s = h.status().await;
    let f = s.fencing.unwrap();
    assert_eq!((f.holder.version.as_str(), f.token), ("v1", 3));
    let log = h.log();
    let tail = &log[log.len() - 6..];
    assert_eq!(
        tail,
        [
            "POST /cutover/handoff token 2 to :4001",
            "commit [aborted]",
            "notify aborted",
            "route v1[1] token 3",
            "stop v2",
            "POST /cutover/handoff token 3 to :4000",
        ],
        "{log:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_healthy_rollout_steps_up_promotes_and_lets_the_previous_go() {
    let h = Harness::progressing().await;
    let started = Instant::now();
    h.until_phase("promoted", WITHIN).await;
    h.until_phase("done", WITHIN).await;
    // Six steps of 400 ms (5 → 10 → 20 → 40 → 80 → 100), then the 2 s hold.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(2000 + 4 * 400), "{took:?}");
    let s = h.status().await;
    assert_eq!(s.stable.unwrap().version, "v2");
    assert!(s.previous.is_none());
    // Each effect after the commit that decided it, in the order decided.
    let expected = [
        "commit [deploy]",
        "notify started",
        "start v1",
        "commit [promoted]",
        "notify promoted",
        "route v1[1]",
        "commit [deploy]",
        "notify started",
        "start v2",
        "commit [ready]",
        "notify step",
        "route v1[1] + v2[1]@5%",
        "commit [advance]",
        "notify step",
        "route v1[1] + v2[1]@10%",
        "commit [advance]",
        "notify step",
        "route v1[1] + v2[1]@20%",
        "commit [advance]",
        "notify step",
        "route v1[1] + v2[1]@40%",
        "commit [advance]",
        "notify step",
        "route v1[1] + v2[1]@80%",
        "commit [promoted]",
        "notify promoted",
        "route v2[1]",
        "commit [previous_released]",
        "notify previous_released",
        "stop v1",
    ];
    assert_eq!(h.log(), expected);
}

#[tokio::test(start_paused = true)]
async fn a_measured_breach_aborts_and_routes_back_before_the_stop() {
    let h = Harness::progressing().await;
    h.serve("v2", Duration::from_millis(1500));
    h.until_phase("aborted", WITHIN).await;
    let s = h.status().await;
    assert!(s.failed.contains_key("sha-v2"), "{:?}", s.failed);
    let back = (h.log().iter())
        .rposition(|e| e == "route v1[1]")
        .unwrap_or_else(|| panic!("no route back to stable: {:#?}", h.log()));
    let stop = h.at("stop v2");
    assert!(back < stop, "{:#?}", h.log());
    assert!(h.at("notify aborted") < back, "{:#?}", h.log());
    assert_eq!(s.stable.unwrap().version, "v1");
}

#[tokio::test(start_paused = true)]
async fn a_failed_commit_carries_out_nothing_and_is_reported() {
    let h = Harness::new();
    // A deploy whose commit fails starts nothing.
    *h.store.fail.lock().unwrap() = Some("disk I/O error".into());
    let err = h.deploy("v1").await.unwrap_err();
    assert_eq!(err.status, 500, "{err:?}");
    assert!(err.message.contains("disk I/O error"), "{err:?}");
    assert!(err.message.contains("nothing was changed"), "{err:?}");
    assert_eq!(h.log(), ["commit failed"]);
    let s = h.status().await;
    assert!(s.rollout.is_none());
    assert!(
        s.persist_failure
            .as_deref()
            .is_some_and(|f| f.contains("disk I/O error")),
        "{:?}",
        s.persist_failure
    );
    assert!(
        crate::render::status(&s).contains("STATE STORE FAILING"),
        "{}",
        crate::render::status(&s)
    );
    // Once the store works again, the same deploy goes through and the failure is cleared.
    *h.store.fail.lock().unwrap() = None;
    h.deploy("v1").await.unwrap();
    assert!(h.status().await.persist_failure.is_none());
    h.ready("v1");
    h.until_phase("done", Duration::from_secs(1)).await;

    // During a rollout: a verb whose commit fails changes nothing, the rollout goes on.
    h.serve("v1", Duration::from_millis(5));
    h.deploy("v2").await.unwrap();
    h.ready("v2");
    h.until_phase("progressing", Duration::from_secs(1)).await;
    let before = h.log().len();
    *h.store.fail.lock().unwrap() = Some("database is locked".into());
    let err = h.verb(Verb::Pause).await.unwrap_err();
    assert_eq!(err.status, 500, "{err:?}");
    assert!(err.message.contains("database is locked"), "{err:?}");
    // Nothing but failed commits while the store fails: no route, no stop, no notice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during: Vec<String> = h.log()[before..].to_vec();
    assert!(during.iter().all(|e| e == "commit failed"), "{during:#?}");
    assert_eq!(h.phase().await, "progressing");
    *h.store.fail.lock().unwrap() = None;
    h.verb(Verb::Pause).await.unwrap();
    assert_eq!(h.phase().await, "paused");
}

#[tokio::test(start_paused = true)]
async fn queued_follow_ups_are_handled_after_the_outcome_in_their_order() {
    let h = Harness::new();
    h.deploy("v1").await.unwrap();
    h.ready("v1");
    h.until_phase("done", Duration::from_secs(1)).await;
    // v2's instances are ready at once and crash-loop at once: one fleet change, two
    // follow-ups, Ready first. Handled in that order the canary takes traffic and is then
    // aborted for its crash loop (the other way round, Ready would find nothing to start).
    *h.instances.on_start.lock().unwrap() = OnStart::ReadyAndCrashLooping;
    h.deploy("v2").await.unwrap();
    // Both were handled before the deploy was answered.
    assert_eq!(h.phase().await, "aborted");
    let (deploy, start) = (h.at("commit [deploy]"), h.at("start v2"));
    let ready = (h.log().iter())
        .rposition(|e| e == "commit [ready]")
        .unwrap_or_else(|| panic!("no ready committed: {:#?}", h.log()));
    let canary = h.at("route v1[1] + v2[1]@5%");
    let crash = h
        .log()
        .iter()
        .position(|e| e.starts_with("commit [crash_loop") || e == "commit [aborted]")
        .unwrap_or_else(|| panic!("{:#?}", h.log()));
    let stop = h.at("stop v2");
    assert!(
        deploy < start && start < ready && ready < canary && canary < crash && crash < stop,
        "{:#?}",
        h.log()
    );
}

#[tokio::test(start_paused = true)]
async fn a_release_that_cannot_start_aborts_through_a_queued_start_failure() {
    let h = Harness::new();
    h.deploy("v1").await.unwrap();
    h.ready("v1");
    h.until_phase("done", Duration::from_secs(1)).await;
    *h.instances.on_start.lock().unwrap() = OnStart::Fail;
    h.deploy("v2").await.unwrap();
    assert_eq!(h.phase().await, "aborted");
    let s = h.status().await;
    assert!(
        s.failed["sha-v2"].reason.contains("no port left"),
        "{:?}",
        s.failed
    );
    // It never took traffic: no route to it, and the stable table was never touched.
    assert!(!h.log().iter().any(|e| e.contains("v2[")), "{:#?}", h.log());
}

#[tokio::test(start_paused = true)]
async fn the_start_timeout_fires_on_paused_time() {
    let h = Harness::new();
    h.deploy("v1").await.unwrap();
    h.ready("v1");
    h.until_phase("done", Duration::from_secs(1)).await;
    let deployed = Instant::now();
    h.deploy("v2").await.unwrap();
    // Never ready.
    h.until_phase("aborted", Duration::from_secs(25)).await;
    let took = deployed.elapsed();
    assert!(took >= Duration::from_secs(20), "{took:?}");
    let s = h.status().await;
    assert!(
        s.failed["sha-v2"]
            .reason
            .contains("app.start_timeout (20s)"),
        "{:?}",
        s.failed
    );
    h.at("stop v2");
    assert!(!h.log().iter().any(|e| e.contains("v2[")), "{:#?}", h.log());
}

#[tokio::test(start_paused = true)]
async fn a_verb_the_engine_refuses_changes_nothing() {
    let h = Harness::new();
    h.deploy("v1").await.unwrap();
    h.ready("v1");
    h.until_phase("done", Duration::from_secs(1)).await;
    let (log, commits) = (h.log(), h.store.commits.lock().unwrap().len());
    let status = serde_json::to_value(h.status().await.rollout).unwrap();
    for verb in [Verb::Resume, Verb::Pause, Verb::Promote, Verb::Abort] {
        let err = h.verb(verb).await.unwrap_err();
        assert_eq!(err.status, 409, "{verb}: {err:?}");
    }
    // The stable release again is refused too.
    assert_eq!(h.deploy("v1").await.unwrap_err().status, 409);
    assert_eq!(h.log(), log);
    assert_eq!(h.store.commits.lock().unwrap().len(), commits);
    assert_eq!(
        serde_json::to_value(h.status().await.rollout).unwrap(),
        status
    );
}
