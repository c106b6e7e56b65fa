//! cutover never causes downtime itself (issue 12, part A): the real `cutover run` binary is
//! `kill -9`ed mid-rollout under continuous load and started again (a plain restart: the
//! socket-activated one is tested with the listeners), with demo-app instances started
//! through a wrapper script that does not `exec`.
//!
//! - the instances outlive the crash and are re-adopted: every app pid (and every process of
//!   each instance's group) is unchanged, the rollout resumes at the step and weight it had,
//!   finishes, and history has one `recovered` decision and nothing twice;
//! - a second `run` on the same state directory is refused with 64, naming the holder's pid;
//! - a deliberate stop leaves no process of any instance's group behind;
//! - while stable's instances start again after a restart, the canary gets no request of a
//!   client that is not the canary's (its weight holds exactly, client by client);
//! - `rollback` right after a restart waits for the previous release to be ready: no 503.

mod common;

use common::{demo_app, eventually, group, processes, ConfigBuilder};
use cutover_admin::AdminClient;
use cutover_core::engine::Phase;
use cutover_core::Weight;
use cutover_host::status::StatusView;
use cutover_loadgen::{FailureKind, Load, LoadConfig};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// Starts the app without `exec`: the shell is the instance's process (its group leader) and
/// demo-app its child, as an operator's start script often is.
const WRAPPER: &str = "#!/bin/sh\n\"$@\"\necho \"wrapper: the app exited with $?\"\n";

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// One `cutover run` process on a state directory that outlives it.
struct Cutover {
    dir: PathBuf,
    child: Option<Child>,
}

impl Cutover {
    /// Writes the config (fixed ports, so a restarted cutover is found where the load and
    /// the client expect it) and the wrapper script into `dir`.
    fn configure(dir: &Path, config: ConfigBuilder) -> SocketAddr {
        let wrapper = dir.join("wrapper.sh");
        std::fs::write(&wrapper, WRAPPER).unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let exe = demo_app().display().to_string();
        let (proxy, admin) = (free_addr(), free_addr());
        let config = config
            .set("service.listen", proxy.to_string())
            .set("admin.listen", admin.to_string())
            .set(
                "app.command",
                vec![
                    "./wrapper.sh".to_string(),
                    exe,
                    "--port".into(),
                    "{port}".into(),
                    "--version".into(),
                    "{version}".into(),
                ],
            )
            .set("app.instances", 2);
        std::fs::write(dir.join("cutover.toml"), config.to_toml()).unwrap();
        proxy
    }

    fn spawn(dir: &Path, args: &[&str]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("cutover.log"))
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_cutover"))
            .arg("run")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    async fn start(dir: &Path) -> Cutover {
        Self::start_with(dir, &[]).await
    }

    async fn start_with(dir: &Path, args: &[&str]) -> Cutover {
        let c = Cutover {
            dir: dir.to_path_buf(),
            child: Some(Self::spawn(dir, args)),
        };
        eventually(LONG, "cutover's admin API to answer", || async {
            match c.client() {
                Ok(client) => client
                    .get("/v1/status")
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            }
        })
        .await;
        c
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn client(&self) -> Result<AdminClient, String> {
        cutover_host::commands::client(&self.dir.join("cutover.toml")).map_err(|e| e.to_string())
    }

    async fn status(&self) -> StatusView {
        serde_json::from_value(self.client().unwrap().get("/v1/status").await.unwrap()).unwrap()
    }

    async fn wait_for(&self, what: &str, pred: impl Fn(&StatusView) -> bool) -> StatusView {
        eventually(LONG, what, || async {
            let s = self.status().await;
            if pred(&s) {
                Ok(s)
            } else {
                Err(cutover_host::render::status(&s))
            }
        })
        .await
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, cutover_admin::ClientError> {
        self.client().unwrap().post(path, &body).await
    }

    /// `kill -9`: no destructor, no drain, no stop of anything.
    fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, and wait for it to exit.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        child.wait().unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("cutover.log")).unwrap_or_default()
    }

    /// Every decision of the last rollout, as history returns them.
    async fn decisions(&self) -> Vec<Value> {
        let hist = self
            .client()
            .unwrap()
            .get("/v1/history?limit=1")
            .await
            .unwrap();
        hist["rollouts"][0]["decisions"].as_array().unwrap().clone()
    }
}

impl Drop for Cutover {
    fn drop(&mut self) {
        // A failed test must not leave cutover (or, through the ledger, its instances)
        // running: kill it, then every group the ledger names.
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let ledger = cutover_supervisor::Ledger::new(self.dir.join("state/instances.json"));
        for r in ledger.load().unwrap_or_default() {
            if r.is_alive() {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(r.pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

fn load(proxy: SocketAddr, clients: u32) -> Load {
    let mut cfg = LoadConfig::new(proxy);
    cfg.rate_per_sec = 150;
    cfg.clients = clients;
    cfg.max_in_flight = 256;
    cfg.timeout = Duration::from_secs(5);
    Load::start(cfg)
}

fn ready(s: &StatusView, version: &str) -> usize {
    s.instances
        .iter()
        .filter(|i| i.version == version && i.state == "ready")
        .count()
}

fn progressing_at(s: &StatusView, bp: u16) -> bool {
    s.rollout
        .as_ref()
        .is_some_and(|r| matches!(r.phase, Phase::Progressing { .. }) && r.weight.bp() == bp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_step_readopts_every_app_and_the_rollout_resumes_where_it_was() {
    let _g = common::serial().await;
    let dir = tempfile::tempdir().unwrap();
    // 25 % → 50 % → 100 %, 4 s a step: the kill comes right after the step to 50 % began,
    // with seconds to spare before the next one.
    let proxy = Cutover::configure(
        dir.path(),
        common::config()
            .set("rollout.initial_weight", 25.0)
            .set("rollout.step_interval", "4s"),
    );
    let mut c = Cutover::start(dir.path()).await;
    c.post("/v1/deploy", json!({ "version": "v1" }))
        .await
        .unwrap();
    c.wait_for("v1 stable", |s| {
        s.rollout
            .as_ref()
            .is_some_and(|r| matches!(r.phase, Phase::Done { .. }))
    })
    .await;

    // One cutover per state directory.
    let second = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("run")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(64), "{err}");
    assert!(err.contains(&format!("pid {}", c.pid())), "{err}");

    let load = load(proxy, 300);
    c.post("/v1/deploy", json!({ "version": "v2" }))
        .await
        .unwrap();
    let before = c.wait_for("v2 at 50 %", |s| progressing_at(s, 5000)).await;
    let killed_at = load.snapshot();
    c.kill9();
    let procs = processes(&before);
    assert_eq!(procs.len(), 4, "{procs:?}");
    for (id, (pid, members)) in &procs {
        assert_eq!(
            members.len(),
            2,
            "{id}: the wrapper shell and demo-app: {members:?}"
        );
        assert!(members.contains(pid));
    }
    let r0 = before.rollout.clone().unwrap();

    // Restarted: the same processes, re-adopted.
    let c2 = Cutover::start(dir.path()).await;
    let mut c = c2;
    let after = c
        .wait_for("every instance re-adopted and ready", |s| {
            ready(s, "v1") == 2 && ready(s, "v2") == 2
        })
        .await;
    assert_eq!(
        processes(&after),
        procs,
        "every app process is the same one"
    );
    assert!(
        after.instances.iter().all(|i| i.starts == 0 && i.adopted),
        "{:?}",
        after.instances
    );
    // And `cutover status` says so, per instance.
    let text = cutover_host::render::status(&after);
    assert_eq!(
        text.matches("(re-adopted from the previous cutover)")
            .count(),
        4,
        "{text}"
    );
    let r1 = after.rollout.clone().unwrap();
    assert_eq!(
        (r1.id, r1.step, r1.weight, r1.salt),
        (r0.id, r0.step, r0.weight, r0.salt)
    );

    let done = c
        .wait_for("v2 promoted after the crash", |s| {
            matches!(
                s.rollout.as_ref().map(|r| &r.phase),
                Some(Phase::Promoted { .. })
            )
        })
        .await;
    let report = load.stop().await;
    let decisions = c.decisions().await;
    let kinds: Vec<&str> = decisions
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    let recovered: Vec<&Value> = decisions
        .iter()
        .filter(|d| d["kind"] == "recovered")
        .collect();
    assert_eq!(recovered.len(), 1, "{kinds:?}");
    let rec = recovered[0];
    assert_eq!(
        rec["numbers"]["adopted"],
        json!(["v1-0", "v1-1", "v2-0", "v2-1"]),
        "{rec}"
    );
    assert_eq!(rec["numbers"]["replaced"], json!([]), "{rec}");
    assert_eq!(rec["numbers"]["weight"], json!("50%"), "{rec}");
    // Nothing twice: one deploy, one ready, one advance per weight, one promotion.
    for once in ["deploy", "ready", "promoted"] {
        assert_eq!(
            kinds.iter().filter(|k| **k == once).count(),
            1,
            "{once}: {kinds:?}"
        );
    }
    let advances: Vec<&str> = decisions
        .iter()
        .filter(|d| d["kind"] == "advance")
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    let distinct: BTreeSet<&&str> = advances.iter().collect();
    assert_eq!(distinct.len(), advances.len(), "{advances:?}");

    // What the crash cost, with a plain restart (no socket activation): requests refused
    // while nothing listened, and those in flight on the killed process. Nothing else: no
    // response from an instance failed, and no 503 (instances were ready at once).
    let statuses: Vec<&FailureKind> = report
        .failures
        .iter()
        .map(|f| &f.kind)
        .filter(|k| !matches!(k, FailureKind::Connect | FailureKind::Other(_)))
        .collect();
    assert!(statuses.is_empty(), "{statuses:?}; {:?}", report.failures);
    assert!(report.ok > killed_at.ok, "traffic flowed after the restart");
    eprintln!(
        "kill -9 mid-step at 150 req/s: {} sent, {} failed ({} before the kill), all refused or cut connections",
        report.sent, report.failed, killed_at.failed
    );
    // The canary's instances served after the restart too: curl, a client we did not write.
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{proxy}/"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    assert!(done.stable.is_some());

    // A deliberate stop: every process of every instance's group is gone, the wrapper's
    // demo-app included.
    let status = c.terminate();
    assert!(status.success(), "{status:?}\n{}", c.log());
    for (id, (pid, _)) in &procs {
        assert!(
            group(*pid).is_empty(),
            "{id}: left behind: {:?}",
            group(*pid)
        );
    }
}

/// Stable's instances died with the crash and start slowly; the canary's were re-adopted and
/// are ready at once. Until stable is ready, its clients get 503 (or wait), never the canary:
/// every client that reached v2 is one the sticky hash gives the canary at its weight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_starting_stable_after_a_restart_does_not_widen_the_canary() {
    let _g = common::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Cutover::configure(
        dir.path(),
        common::config()
            .set("rollout.initial_weight", 10.0)
            .set("rollout.step_interval", "30s"),
    );
    let mut c = Cutover::start(dir.path()).await;
    c.post(
        "/v1/deploy",
        json!({ "version": "v1", "env": { "DEMO_READY_DELAY": "2s" } }),
    )
    .await
    .unwrap();
    c.wait_for("v1 stable", |s| {
        s.rollout
            .as_ref()
            .is_some_and(|r| matches!(r.phase, Phase::Done { .. }))
    })
    .await;
    c.post("/v1/deploy", json!({ "version": "v2" }))
        .await
        .unwrap();
    let before = c.wait_for("v2 at 10 %", |s| progressing_at(s, 1000)).await;
    let r0 = before.rollout.clone().unwrap();
    c.kill9();
    // Stable's instances die while cutover is down: they are replaced, and take 2 s.
    for i in before.instances.iter().filter(|i| i.version == "v1") {
        let pid = i.pid.unwrap();
        nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        eventually(LONG, "v1's group gone", || {
            std::future::ready(if group(pid).is_empty() {
                Ok(())
            } else {
                Err(pid)
            })
        })
        .await;
    }

    let c2 = Cutover::start(dir.path()).await;
    let mut c = c2;
    let load = load(proxy, 400);
    let starting = c.status().await;
    assert!(
        ready(&starting, "v1") < 2,
        "v1 is still starting: {starting:?}"
    );
    c.wait_for("v1 ready again", |s| ready(s, "v1") == 2).await;
    // Some more traffic once both are ready.
    let seen = load.snapshot().sent;
    eventually(LONG, "more traffic", || {
        let n = load.snapshot().sent;
        std::future::ready(if n > seen + 150 { Ok(()) } else { Err(n) })
    })
    .await;
    let report = load.stop().await;

    let weight = Weight::from_bp(1000).unwrap();
    let canary_clients: BTreeSet<String> = (0..400)
        .map(|n| format!("client-{n}"))
        .filter(|k| cutover_core::sticky::is_canary(r0.salt, k.as_bytes(), weight))
        .collect();
    let mut widened = Vec::new();
    for (client, seq) in &report.per_client {
        if seq.iter().any(|(v, _)| v == "v2") && !canary_clients.contains(client) {
            widened.push(client.clone());
        }
    }
    assert!(
        widened.is_empty(),
        "stable clients served by the canary: {widened:?}"
    );
    let v2 = report.by_version.get("v2").map_or(0, |c| c.ok);
    assert!(v2 > 0, "the canary kept serving its clients");
    let unavailable = report
        .failures
        .iter()
        .filter(|f| f.kind == FailureKind::Status(503))
        .count();
    eprintln!(
        "slow stable after a restart: {} sent, v2 served {v2} (only its {} of 400 clients), {unavailable} × 503 while v1 started",
        report.sent,
        canary_clients.len()
    );
    let decisions = c.decisions().await;
    let rec: Vec<&Value> = decisions
        .iter()
        .filter(|d| d["kind"] == "recovered")
        .collect();
    assert_eq!(rec.len(), 1);
    assert_eq!(
        rec[0]["numbers"]["replaced"],
        json!(["v1-0", "v1-1"]),
        "{}",
        rec[0]
    );
    assert_eq!(
        rec[0]["numbers"]["adopted"],
        json!(["v2-0", "v2-1"]),
        "{}",
        rec[0]
    );
    assert!(
        !decisions.iter().any(|d| d["kind"] == "spilled"),
        "stable never had no instance"
    );
    assert!(c.terminate().success());
}

/// Promoted, v1 held. cutover crashes and v1's instances with it; after the restart v1 is
/// starting again (slowly) when the operator rolls back. The rollback waits for v1 to be
/// ready, switches, and says it was not "with no process start". Zero 503s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_right_after_a_restart_waits_for_ready_instances() {
    let _g = common::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Cutover::configure(dir.path(), common::config());
    let mut c = Cutover::start(dir.path()).await;
    c.post(
        "/v1/deploy",
        json!({ "version": "v1", "env": { "DEMO_READY_DELAY": "1500ms" } }),
    )
    .await
    .unwrap();
    c.wait_for("v1 stable", |s| {
        s.rollout
            .as_ref()
            .is_some_and(|r| matches!(r.phase, Phase::Done { .. }))
    })
    .await;
    c.post("/v1/deploy", json!({ "version": "v2" }))
        .await
        .unwrap();
    c.wait_for("v2 progressing", |s| {
        s.rollout
            .as_ref()
            .is_some_and(|r| matches!(r.phase, Phase::Progressing { .. }))
    })
    .await;
    c.post("/v1/promote", json!({})).await.unwrap();
    let before = c
        .wait_for("v2 promoted, v1 held", |s| {
            matches!(
                s.rollout.as_ref().map(|r| &r.phase),
                Some(Phase::Promoted { .. })
            )
        })
        .await;
    c.kill9();
    for i in before.instances.iter().filter(|i| i.version == "v1") {
        let pid = i.pid.unwrap();
        nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }

    let c2 = Cutover::start(dir.path()).await;
    let mut c = c2;
    c.wait_for("v2 re-adopted and ready", |s| ready(s, "v2") == 2)
        .await;
    let load = load(proxy, 300);
    let s = c.status().await;
    assert!(ready(&s, "v1") < 2, "v1 is not ready yet: {s:?}");
    let rb = c.post("/v1/rollback", json!({})).await.unwrap();
    let message = rb["message"].as_str().unwrap();
    assert!(!message.contains("no process start"), "{message}");
    assert!(
        message.contains("restarted when cutover recovered"),
        "{message}"
    );
    let s = c.status().await;
    assert_eq!(s.stable.as_ref().unwrap().version, "v1");
    assert_eq!(ready(&s, "v1"), 2, "switched only once ready");
    let seen = load.snapshot();
    eventually(LONG, "traffic on v1", || {
        let n = load.snapshot().by_version.get("v1").map_or(0, |c| c.ok);
        let before = seen.by_version.get("v1").map_or(0, |c| c.ok);
        std::future::ready(if n > before + 150 { Ok(()) } else { Err(n) })
    })
    .await;
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.failures);
    assert!(c.terminate().success());
}

/// A deliberate stop with `--keep-apps` (what an upgrade of cutover does) leaves the apps
/// running and recorded; the next `cutover run` re-adopts them, and a plain stop then stops
/// them, whole groups. The retention's log prune at that start, with everything past it,
/// deletes an old log but not those of the instances it re-adopts: they still write to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_apps_leaves_the_apps_to_the_next_cutover() {
    let _g = common::serial().await;
    let dir = tempfile::tempdir().unwrap();
    Cutover::configure(dir.path(), common::config());
    let mut c = Cutover::start_with(dir.path(), &["--keep-apps"]).await;
    c.post("/v1/deploy", json!({ "version": "v1" }))
        .await
        .unwrap();
    let before = c.wait_for("v1 stable", |s| ready(s, "v1") == 2).await;
    let procs = processes(&before);
    assert!(c.terminate().success(), "{}", c.log());
    for (id, (pid, members)) in &procs {
        assert_eq!(&group(*pid), members, "{id} kept running");
    }

    let logs = dir.path().join("state/logs");
    std::fs::write(logs.join("v0-0.log"), "a stopped version's\n").unwrap();
    let mut toml = std::fs::read_to_string(dir.path().join("cutover.toml")).unwrap();
    toml.push_str("\n[state]\nretention = \"1ms\"\n");
    std::fs::write(dir.path().join("cutover.toml"), toml).unwrap();
    // Every log, the re-adopted instances' too, last written an hour ago: past the retention.
    let hour_ago = std::time::UNIX_EPOCH + Duration::from_millis(cutover_clock::unix_millis())
        - Duration::from_secs(3600);
    for e in std::fs::read_dir(&logs).unwrap() {
        let f = std::fs::File::options()
            .write(true)
            .open(e.unwrap().path())
            .unwrap();
        f.set_modified(hour_ago).unwrap();
    }

    let mut c = Cutover::start(dir.path()).await;
    let after = c.wait_for("v1 re-adopted", |s| ready(s, "v1") == 2).await;
    assert_eq!(processes(&after), procs);
    assert!(!logs.join("v0-0.log").exists(), "{}", c.log());
    for id in procs.keys() {
        assert!(logs.join(format!("{id}.log")).exists(), "{id}: {}", c.log());
    }
    assert!(c.terminate().success(), "{}", c.log());
    for (id, (pid, _)) in &procs {
        assert!(
            group(*pid).is_empty(),
            "{id}: left behind: {:?}",
            group(*pid)
        );
    }
}

/// A singleton (`strategy = "handoff"`, docs/handoff.md) whose cutover is killed in the middle
/// of the handoff call (the new instance takes its time to answer): the snapshot says v1 holds
/// token 1 and token 2 was offered; the restarted cutover cannot know whether v2 took it, so
/// v1 keeps the role with token 3, v2 is stopped, the abort says why, and v1 serves on with
/// the same process (re-adopted, not restarted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_handoff_leaves_the_role_with_the_old_holder_and_a_higher_token() {
    let _g = common::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Cutover::configure(
        dir.path(),
        common::config()
            .insert("rollout.strategy", "handoff")
            .merge("[rollout.handoff]\ntimeout = \"20s\"\ndrain_timeout = \"2s\""),
    );
    // A singleton runs one instance (configure gives everything else two).
    let path = dir.path().join("cutover.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let one = ConfigBuilder::parse(&text).set("app.instances", 1);
    std::fs::write(&path, one.to_toml()).unwrap();

    let mut c = Cutover::start(dir.path()).await;
    c.post("/v1/deploy", json!({ "version": "v1" }))
        .await
        .unwrap();
    let before = c
        .wait_for("v1 holds the role", |s| {
            ready(s, "v1") == 1 && s.fencing.as_ref().is_some_and(|f| f.token == 1)
        })
        .await;
    c.post(
        "/v1/deploy",
        json!({ "version": "v2", "env": { "DEMO_HANDOFF_DELAY": "30s" } }),
    )
    .await
    .unwrap();
    c.wait_for("the handoff under way", |s| {
        matches!(
            s.rollout.as_ref().map(|r| &r.phase),
            Some(Phase::HandingOff { token: 2, .. })
        )
    })
    .await;
    c.kill9();

    let mut c = Cutover::start(dir.path()).await;
    let s = c
        .wait_for("v1 keeps the role, v2 stopped", |s| {
            s.fencing
                .as_ref()
                .is_some_and(|f| f.holder.version == "v1" && f.token == 3)
                && s.instances.iter().all(|i| i.version == "v1")
                && ready(s, "v1") == 1
        })
        .await;
    let Some(Phase::Aborted { reason, .. }) = s.rollout.as_ref().map(|r| &r.phase) else {
        panic!("{}", cutover_host::render::status(&s))
    };
    assert!(reason.contains("restarted during the handoff"), "{reason}");
    assert_eq!(
        processes(&s),
        processes(&before),
        "v1 was re-adopted, not restarted"
    );
    let kinds: Vec<String> = c
        .decisions()
        .await
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(
        kinds.ends_with(&["aborted".to_string(), "recovered".to_string()]),
        "{kinds:?}"
    );
    let load = load(proxy, 10);
    eventually(LONG, "v1 serving", || async {
        let r = load.snapshot();
        if r.ok > 100 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    })
    .await;
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.failures);
    assert!(c.terminate().success(), "{}", c.log());
}
