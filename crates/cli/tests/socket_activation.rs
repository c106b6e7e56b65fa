//! Listening sockets that outlive cutover: `cutover run` under Debian's real
//! `systemd-socket-activate` (the launcher holds the listeners, as `cutover.socket` does), killed
//! with `kill -9` under continuous load and restarted by a loop standing in for systemd's
//! `Restart=always`. Connections made while no cutover runs wait in the kernel's backlog: not
//! one is refused. The issue-12 crash test kills it at three points of a rollout (mid-step,
//! inside `hold_previous`, during an abort's drain) with a wrapper-script app, HTTP load and
//! WebSocket order clients, and checks the apps, the rollout, the history and the orders.

mod common;

use common::{eventually, group, processes};
use cutover_core::engine::Phase;
use cutover_host::status::StatusView;
use cutover_loadgen::{FailureKind, Load, LoadConfig, Orders, OrdersConfig};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const LAUNCHER: &str = "/usr/bin/systemd-socket-activate";

/// A free port on 127.0.0.1 for the launcher to bind (it cannot bind port 0 and say which port
/// it got). Freed just before the launcher binds it; nothing else in the test binds ports
/// explicitly.
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The pids of `pid`'s children.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// `systemd-socket-activate` holding `public` and `admin`, running a loop that restarts
/// `cutover run` whenever it exits, until `<cfg>.stop` exists. The launcher sets `LISTEN_PID`
/// to its own pid, which it gives the loop by `exec`; each `cutover` is then started with
/// `LISTEN_PID` set to its own pid, as systemd does for a service's main process.
struct Launched {
    launcher: Child,
    cfg: PathBuf,
}

impl Launched {
    fn start(cfg: &Path, public: SocketAddr, admin: SocketAddr) -> Launched {
        let script = r#"while [ ! -e "$2.stop" ]; do sh -c 'LISTEN_PID=$$ exec "$0" -c "$1" run' "$1" "$2" 2>>"$2.log"; done"#;
        let launcher = Command::new(LAUNCHER)
            .arg(format!("--listen={public}"))
            .arg(format!("--listen={admin}"))
            .arg("--fdname=public:admin")
            .args(["sh", "-c", script, "sh"])
            .arg(env!("CARGO_BIN_EXE_cutover"))
            .arg(cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Launched {
            launcher,
            cfg: cfg.to_path_buf(),
        }
    }

    /// The running cutover's pid (the loop's one child).
    fn cutover(&self) -> Option<u32> {
        children(self.launcher.id()).first().copied()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.cfg.with_extension("toml.log")).unwrap_or_default()
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        // The loop ends at the next exit of cutover, which a SIGTERM makes graceful (it stops
        // its instances).
        let _ = std::fs::write(self.cfg.with_extension("toml.stop"), "");
        match self.cutover() {
            Some(pid) => {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            // Not started yet (it waits for a first connection): nothing to stop gracefully.
            None => {
                let _ = self.launcher.kill();
            }
        }
        // At most 30 s (a drop must not panic, so no `eventually` here).
        for _ in 0..1500 {
            if let Ok(Some(_)) = self.launcher.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.launcher.kill();
        let _ = self.launcher.wait();
    }
}

async fn status(client: &cutover_admin::AdminClient) -> Result<serde_json::Value, String> {
    client.get("/v1/status").await.map_err(|e| e.to_string())
}

/// The stable version's instances all ready, as `status` reports them.
fn stable_ready(s: &serde_json::Value, version: &str) -> bool {
    let instances = s["instances"].as_array().cloned().unwrap_or_default();
    s["stable"]["version"] == version
        && !instances.is_empty()
        && instances
            .iter()
            .filter(|i| i["version"] == version)
            .all(|i| i["state"] == "ready")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_under_the_launcher_refuses_no_connection() {
    assert!(
        Path::new(LAUNCHER).exists(),
        "{LAUNCHER} is missing: apt-get install systemd"
    );
    let _g = common::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cutover.toml");
    let (public, admin) = (free_addr(), free_addr());
    let text = common::config()
        .set("service.listen", public.to_string())
        .admin_listen(admin)
        .log_level("info");
    std::fs::write(&cfg, text.to_toml()).unwrap();
    let launched = Launched::start(&cfg, public, admin);

    // The launcher starts cutover on the first connection: this one, which waits in the
    // backlog meanwhile.
    let _first = common::eventually(Duration::from_secs(10), "the launcher listening", || {
        tokio::net::TcpStream::connect(admin)
    })
    .await;
    let token = dir.path().join("state/admin.token");
    let client = common::eventually(Duration::from_secs(30), "cutover's admin API", || async {
        let t = std::fs::read_to_string(&token).map_err(|e| format!("{e}\n{}", launched.log()))?;
        let c = cutover_admin::AdminClient::new(admin, t.trim().to_string());
        status(&c).await.map(|_| c)
    })
    .await;
    assert!(
        launched
            .log()
            .contains("listening on sockets the launcher passed"),
        "{}",
        launched.log()
    );
    client
        .post("/v1/deploy", &serde_json::json!({ "version": "v1" }))
        .await
        .unwrap();
    common::eventually(Duration::from_secs(30), "v1 stable and ready", || async {
        let s = status(&client).await?;
        if stable_ready(&s, "v1") && s["rollout"]["phase"]["phase"] == "done" {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await;

    let mut load_cfg = LoadConfig::new(public);
    load_cfg.rate_per_sec = 150;
    load_cfg.clients = 200;
    load_cfg.max_in_flight = 512;
    // Long enough to ride out a restart and the instances' start.
    load_cfg.timeout = Duration::from_secs(20);
    let load = Load::start(load_cfg);
    common::eventually(Duration::from_secs(10), "load served", || async {
        let r = load.snapshot();
        if r.ok >= 100 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    })
    .await;

    let killed = launched.cutover().expect("cutover runs");
    let in_flight_at_kill = load.snapshot().in_flight;
    assert!(Command::new("kill")
        .args(["-9", &killed.to_string()])
        .status()
        .unwrap()
        .success());
    let served_before = load.snapshot().ok;
    common::eventually(
        Duration::from_secs(60),
        "a restarted cutover serving v1 again",
        || async {
            let pid = launched.cutover();
            let s = status(&client).await?;
            let r = load.snapshot();
            if pid.is_some_and(|p| p != killed)
                && stable_ready(&s, "v1")
                && r.ok >= served_before + 300
            {
                Ok(())
            } else {
                Err(format!("pid {pid:?}, ok {}, status {s}", r.ok))
            }
        },
    )
    .await;
    let report = load.stop().await;
    let refused: Vec<_> = report
        .failures
        .iter()
        .filter(|f| f.kind == FailureKind::Connect)
        .collect();
    assert!(
        refused.is_empty(),
        "{} connections refused while cutover restarted (the launcher holds the listeners): {:?}\n{}",
        refused.len(),
        refused,
        launched.log()
    );
    assert!(
        report.ok > served_before,
        "nothing served after the restart: {report:?}"
    );
    // The restarted cutover holds requests until v1's instance is ready again (cold start):
    // what fails is only what was in flight on the killed process (its connections reset),
    // never a 503 nor a timeout.
    let other: Vec<_> = report
        .failures
        .iter()
        .filter(|f| !matches!(f.kind, FailureKind::Other(_)))
        .collect();
    assert!(
        other.is_empty(),
        "failures besides the requests in flight on the killed process: {other:?}"
    );
    assert!(
        report.failed <= 512,
        "more failures than requests can be in flight: {report:?}"
    );
    eprintln!(
        "kill -9 under load ({in_flight_at_kill} in flight at the kill): {} sent, {} ok, {} failed ({:?})",
        report.sent,
        report.ok,
        report.failed,
        report.failures.iter().map(|f| &f.kind).collect::<Vec<_>>()
    );

    // SIGHUP (systemd's ExecReload) reloads the file: differs before, the same after.
    std::fs::write(
        &cfg,
        text.clone()
            .abort_rule("name = \"p99-over-300ms\"\nmetric = \"latency\"\nquantile = 0.99\nabove = \"300ms\"\nfor = \"1s\"")
            .to_toml(),
    )
    .unwrap();
    assert_eq!(status(&client).await.unwrap()["config"]["file"], "differs");
    let pid = launched.cutover().expect("cutover runs");
    assert!(Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    common::eventually(
        Duration::from_secs(10),
        "the file reloaded on SIGHUP",
        || async {
            let c = status(&client).await?["config"].clone();
            if c["file"] == "same" {
                Ok(())
            } else {
                Err(c.to_string())
            }
        },
    )
    .await;
    assert!(
        launched.log().contains("SIGHUP: reload"),
        "{}",
        launched.log()
    );
    drop(launched);
}

/// A passed socket on another address than the config's is refused, naming both: cutover
/// does not serve a port its config does not mention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_socket_on_another_address_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cutover.toml");
    let (passed, configured) = (free_addr(), free_addr());
    let text = common::config().set("service.listen", configured.to_string());
    std::fs::write(&cfg, text.to_toml()).unwrap();
    let mut launcher = Command::new(LAUNCHER)
        .arg(format!("--listen={passed}"))
        .arg("--fdname=public")
        .arg(env!("CARGO_BIN_EXE_cutover"))
        .arg("-c")
        .arg(&cfg)
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The launcher starts cutover on the first connection.
    let _first = common::eventually(
        Duration::from_secs(10),
        "the launcher listening",
        || async { tokio::net::TcpStream::connect(passed).await },
    )
    .await;
    let out = tokio::task::spawn_blocking(move || {
        let exited = (0..1500).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            matches!(launcher.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = launcher.kill();
        }
        (exited, launcher.wait_with_output().unwrap())
    })
    .await
    .unwrap();
    let (exited, out) = out;
    assert!(
        exited,
        "cutover did not exit within 30 s on a mismatched socket"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains(&format!("listens on {passed}"))
            && err.contains(&format!("service.listen = {configured}")),
        "{err}"
    );
}

/// Starts the app without `exec`: the shell is the instance's process (its group leader) and
/// demo-app its child, as an operator's start script often is.
const WRAPPER: &str = "#!/bin/sh\n\"$@\"\necho \"wrapper: the app exited with $?\"\n";

fn of_version(
    procs: &BTreeMap<String, (u32, Vec<u32>)>,
    version: &str,
) -> BTreeMap<String, (u32, Vec<u32>)> {
    procs
        .iter()
        .filter(|(id, _)| id.starts_with(&format!("{version}-")))
        .map(|(id, p)| (id.clone(), p.clone()))
        .collect()
}

fn ready_count(s: &StatusView, version: &str) -> usize {
    s.instances
        .iter()
        .filter(|i| i.version == version && i.state == "ready")
        .count()
}

fn phase_is(s: &StatusView, f: impl Fn(&Phase) -> bool) -> bool {
    s.rollout.as_ref().is_some_and(|r| f(&r.phase))
}

/// Every order id every instance executed, with how many times.
fn executed(dir: &Path) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir.join("exec"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(entry.path().join("executed.log")) else {
            continue;
        };
        for line in text.lines() {
            if let Some(id) = line.split_whitespace().next() {
                *out.entry(id.to_string()).or_insert(0) += 1;
            }
        }
    }
    out
}

/// What one `kill -9` may cost, measured around it.
#[derive(Debug, Default)]
struct KillCost {
    /// HTTP requests that can have been in flight on the killed process: those in flight just
    /// before the kill plus every one sent between that moment and the process being gone.
    http_in_flight: u64,
    /// The same, counted until the restarted cutover answered: a request sent after the kill
    /// on a pooled keep-alive connection of the dead process (before the client saw it closed)
    /// fails too. Requests on new connections in that time wait in the launcher's backlog and
    /// are served. This is what the test asserts the failures against.
    http_exposed: u64,
    /// Orders whose ack had not reached their client when the process was gone (a union of
    /// the unacked orders just before the kill and just after it): the only orders a resend
    /// may execute a second time, on another instance.
    orders_unacked: BTreeSet<String>,
}

struct Fleet<'a> {
    launched: &'a Launched,
    client: &'a cutover_admin::AdminClient,
    load: &'a Load,
}

impl Fleet<'_> {
    async fn status(&self) -> Result<StatusView, String> {
        let v = status(self.client).await?;
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    async fn wait_for(&self, what: &str, pred: impl Fn(&StatusView) -> bool) -> StatusView {
        eventually(Duration::from_secs(60), what, || async {
            let s = self.status().await?;
            if pred(&s) {
                Ok(s)
            } else {
                Err(format!(
                    "{}\n{}",
                    cutover_host::render::status(&s),
                    self.launched.log()
                ))
            }
        })
        .await
    }

    async fn post(&self, path: &str, body: serde_json::Value) {
        self.client.post(path, &body).await.unwrap();
    }

    /// `kill -9` of the running cutover; waits for the launcher's loop to start the next one
    /// and for that one's admin API to answer.
    async fn kill_9(&self, orders: &[&Orders]) -> KillCost {
        let unacked =
            || -> Vec<String> { orders.iter().flat_map(|o| o.snapshot().unacked).collect() };
        let killed = self.launched.cutover().expect("cutover runs");
        let (http0, orders0) = (self.load.snapshot(), unacked());
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(killed as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        // Gone: reaped by the loop, or a zombie (its sockets are closed either way).
        eventually(Duration::from_secs(10), "the killed cutover gone", || {
            let stat = std::fs::read_to_string(format!("/proc/{killed}/stat"));
            std::future::ready(match stat {
                Ok(s) if !s[s.rfind(')').unwrap() + 1..].trim_start().starts_with('Z') => Err(s),
                _ => Ok(()),
            })
        })
        .await;
        let (http1, orders1) = (self.load.snapshot(), unacked());
        let mut cost = KillCost {
            http_in_flight: http0.in_flight + (http1.sent - http0.sent),
            http_exposed: 0,
            orders_unacked: orders0.into_iter().chain(orders1).collect(),
        };
        eventually(
            Duration::from_secs(60),
            "a restarted cutover answering",
            || async {
                match self.launched.cutover() {
                    Some(p) if p != killed => self.status().await.map(|_| ()),
                    p => Err(format!("cutover pid {p:?}")),
                }
            },
        )
        .await;
        cost.http_exposed = http0.in_flight + (self.load.snapshot().sent - http0.sent);
        cost
    }
}

/// Every decision of the rollout to `version`, as history returns them.
async fn decisions(client: &cutover_admin::AdminClient, version: &str) -> Vec<serde_json::Value> {
    {
        let hist = client.get("/v1/history?limit=10").await.unwrap();
        let rollouts = hist["rollouts"].as_array().cloned().unwrap_or_default();
        let r = rollouts
            .iter()
            .find(|r| r["to_version"] == version)
            .unwrap_or_else(|| panic!("no rollout to {version} in {hist}"));
        r["decisions"].as_array().unwrap().clone()
    }
}

/// Issue 12's crash test, under the socket-activating launcher with a wrapper-script app
/// (sh without `exec`, so each instance is a group of two processes), continuous HTTP load and
/// WebSocket order clients: `cutover run` is `kill -9`ed at three points of one launcher run
/// — mid-step, inside `hold_previous`, during an abort's drain — and each time restarted by
/// the launcher's loop. No connection is refused (HTTP nor WebSocket); the only failed
/// requests are at most those in flight on the killed process; every process of every
/// instance's group is the same one; each rollout continues at the step and weight it had and
/// finishes; each restart is one `recovered` decision and nothing else is decided twice; no
/// order is lost, and an order is executed twice only if its ack was cut by a kill; after the
/// final SIGTERM no process of any group is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_three_points_under_the_launcher_keeps_every_app_and_connection() {
    assert!(
        Path::new(LAUNCHER).exists(),
        "{LAUNCHER} is missing: apt-get install systemd"
    );
    let _g = common::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cutover.toml");
    let wrapper = dir.path().join("wrapper.sh");
    std::fs::write(&wrapper, WRAPPER).unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (public, admin) = (free_addr(), free_addr());
    let state = format!(
        "{}/{{version}}-{{instance}}",
        dir.path().join("exec").display()
    );
    let text = common::config()
        .set("service.listen", public.to_string())
        .admin_listen(admin)
        .log_level("info")
        .set(
            "app.command",
            vec![
                wrapper.display().to_string(),
                common::demo_app().display().to_string(),
                "--port".into(),
                "{port}".into(),
                "--version".into(),
                "{version}".into(),
            ],
        )
        .set("app.instances", 2)
        .env(&[
            ("DEMO_LATENCY", "1ms"),
            ("DEMO_STATE_DIR", &state),
            ("DEMO_ORDER_DELAY", "20ms"),
        ])
        // 25 % → 50 % → 100 %, 6 s a step: a restart has seconds to spare inside a step.
        .initial_weight(25.0)
        .step_interval("6s")
        .hold_previous("6s")
        // Long enough for a kill inside the abort's drain: the canary's order sessions keep
        // it draining for the whole window.
        .drain_timeout("6s")
        // The abort here is the operator's: no rule may abort on the noise of the kills.
        .no_aborts();
    std::fs::write(&cfg, text.to_toml()).unwrap();
    let launched = Launched::start(&cfg, public, admin);
    let _first = eventually(Duration::from_secs(10), "the launcher listening", || {
        tokio::net::TcpStream::connect(admin)
    })
    .await;
    let token = dir.path().join("state/admin.token");
    let client = eventually(Duration::from_secs(30), "cutover's admin API", || async {
        let t = std::fs::read_to_string(&token).map_err(|e| format!("{e}\n{}", launched.log()))?;
        let c = cutover_admin::AdminClient::new(admin, t.trim().to_string());
        status(&c).await.map(|_| c)
    })
    .await;
    client
        .post("/v1/deploy", &serde_json::json!({ "version": "v1" }))
        .await
        .unwrap();

    let mut load_cfg = LoadConfig::new(public);
    load_cfg.rate_per_sec = 150;
    load_cfg.clients = 300;
    load_cfg.max_in_flight = 512;
    load_cfg.timeout = Duration::from_secs(20);
    let mut orders_cfg = OrdersConfig::new(public);
    orders_cfg.clients = 8;
    orders_cfg.rate_per_client = 10.0;
    orders_cfg.reconnect_delay = Duration::from_millis(50);
    orders_cfg.stop_timeout = Duration::from_secs(30);
    // The load starts once v1 serves: before any release there is nothing to serve it.
    eventually(Duration::from_secs(30), "v1 stable and ready", || async {
        let s = status(&client).await?;
        if stable_ready(&s, "v1") && s["rollout"]["phase"]["phase"] == "done" {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await;
    let (load, orders) = (Load::start(load_cfg), Orders::start(orders_cfg));
    let f = Fleet {
        launched: &launched,
        client: &client,
        load: &load,
    };
    f.wait_for("v1 stable and ready", |s| {
        ready_count(s, "v1") == 2 && phase_is(s, |p| matches!(p, Phase::Done { .. }))
    })
    .await;
    eventually(Duration::from_secs(30), "orders acked by v1", || {
        let n = orders.snapshot().acked.len();
        std::future::ready(if n > 20 { Ok(()) } else { Err(n) })
    })
    .await;
    let mut costs = Vec::new();

    // 1. Mid-step: v2 at 50 %.
    f.post("/v1/deploy", serde_json::json!({ "version": "v2" }))
        .await;
    let before = f
        .wait_for("v2 progressing at 50 %", |s| {
            ready_count(s, "v2") == 2
                && s.rollout.as_ref().is_some_and(|r| {
                    matches!(r.phase, Phase::Progressing { .. }) && r.weight.bp() == 5000
                })
        })
        .await;
    let procs = processes(&before);
    assert_eq!(procs.len(), 4, "{procs:?}");
    for (id, (pid, members)) in &procs {
        assert_eq!(
            members.len(),
            2,
            "{id}: the wrapper and demo-app: {members:?}"
        );
        assert!(members.contains(pid));
    }
    costs.push(f.kill_9(&[&orders]).await);
    let after = f
        .wait_for("every instance re-adopted and ready", |s| {
            ready_count(s, "v1") == 2 && ready_count(s, "v2") == 2
        })
        .await;
    assert_eq!(
        processes(&after),
        procs,
        "every app process is the same one"
    );
    let (r0, r1) = (before.rollout.unwrap(), after.rollout.unwrap());
    assert_eq!(
        (r1.id, r1.step, r1.weight, r1.salt),
        (r0.id, r0.step, r0.weight, r0.salt),
        "the rollout resumes at the same step and weight"
    );
    assert!(
        matches!(r1.phase, Phase::Progressing { .. }),
        "{:?}",
        r1.phase
    );

    // 2. Inside hold_previous: v2 promoted, v1 held without traffic.
    let held = f
        .wait_for("v2 promoted, v1 held", |s| {
            phase_is(s, |p| matches!(p, Phase::Promoted { .. })) && ready_count(s, "v1") == 2
        })
        .await;
    let procs = processes(&held);
    assert_eq!(procs.len(), 4, "{procs:?}");
    costs.push(f.kill_9(&[&orders]).await);
    let after = f
        .wait_for("v2 and the held v1 re-adopted", |s| {
            ready_count(s, "v2") == 2 && (ready_count(s, "v1") == 2 || !is_held(s))
        })
        .await;
    // Compared per instance still there: the hold may have ended meanwhile.
    for (id, p) in processes(&after) {
        assert_eq!(procs.get(&id), Some(&p), "{id} is the same process");
    }
    assert_eq!(
        after.rollout.as_ref().map(|r| r.id),
        held.rollout.as_ref().map(|r| r.id)
    );
    let done = f
        .wait_for("the hold over: v1 stopped, the rollout done", |s| {
            phase_is(s, |p| matches!(p, Phase::Done { .. }))
                && s.instances.iter().all(|i| i.version == "v2")
        })
        .await;
    for (id, (pid, _)) in of_version(&procs, "v1") {
        assert!(group(pid).is_empty(), "{id}: left behind: {:?}", group(pid));
    }
    let v2_procs = of_version(&procs, "v2");
    assert_eq!(processes(&done), v2_procs, "v2's processes kept throughout");

    // 3. During an abort's drain: v3 at 25 % with order sessions on it, aborted, killed while
    // its instances drain.
    f.post("/v1/deploy", serde_json::json!({ "version": "v3" }))
        .await;
    let v3 = f
        .wait_for("v3 progressing at 50 %", |s| {
            ready_count(s, "v3") == 2
                && s.rollout.as_ref().is_some_and(|r| {
                    matches!(r.phase, Phase::Progressing { .. }) && r.weight.bp() == 5000
                })
        })
        .await;
    f.post("/v1/pause", serde_json::json!({})).await;
    // The first clients' sessions stay where they are (on v2): new ones, at least 16 and
    // enough that the sticky hash gives 4 of them to the canary (the order clients send
    // `x-client-id: client-<n>`).
    let salt = v3.rollout.as_ref().unwrap().salt;
    let half = cutover_core::Weight::from_bp(5000).unwrap();
    let mut clients = 0;
    let mut canary = 0;
    while clients < 16 || canary < 4 {
        let key = format!("client-{clients}");
        canary += usize::from(cutover_core::sticky::is_canary(salt, key.as_bytes(), half));
        clients += 1;
    }
    let mut orders_cfg = OrdersConfig::new(public);
    orders_cfg.clients = clients;
    orders_cfg.rate_per_client = 10.0;
    orders_cfg.reconnect_delay = Duration::from_millis(50);
    orders_cfg.stop_timeout = Duration::from_secs(30);
    let orders3 = Orders::start(orders_cfg);
    eventually(Duration::from_secs(30), "orders acked by v3", || {
        let n = orders3
            .snapshot()
            .acked_by_version
            .get("v3")
            .copied()
            .unwrap_or(0);
        std::future::ready(if n > 10 { Ok(()) } else { Err(n) })
    })
    .await;
    f.post("/v1/abort", serde_json::json!({})).await;
    let draining = f
        .wait_for("v3 aborted and draining", |s| {
            phase_is(s, |p| matches!(p, Phase::Aborted { .. }))
                && s.instances
                    .iter()
                    .any(|i| i.version == "v3" && i.state == "draining")
        })
        .await;
    let procs = processes(&draining);
    costs.push(f.kill_9(&[&orders, &orders3]).await);
    let after = f
        .wait_for("v3 gone, v2 serving", |s| {
            ready_count(s, "v2") == 2 && s.instances.iter().all(|i| i.version == "v2")
        })
        .await;
    assert_eq!(
        processes(&after),
        v2_procs,
        "v2's processes kept throughout"
    );
    assert!(phase_is(&after, |p| matches!(p, Phase::Aborted { .. })));
    for (id, (pid, _)) in of_version(&procs, "v3") {
        assert!(group(pid).is_empty(), "{id}: left behind: {:?}", group(pid));
    }
    // Traffic flows again on v2 before the load stops.
    let seen = load.snapshot().ok;
    eventually(Duration::from_secs(30), "more traffic served", || {
        let n = load.snapshot().ok;
        std::future::ready(if n > seen + 150 { Ok(()) } else { Err(n) })
    })
    .await;

    let report = load.stop().await;
    let orders_reports = [orders.stop().await, orders3.stop().await];
    let bound: u64 = costs.iter().map(|c| c.http_exposed).sum();
    eprintln!(
                        "kill -9 ×3 under the launcher: {} requests sent, {} ok, {} failed (in flight at each kill until the process was gone: {:?}; until the next one answered: {bound}); orders (sent, reconnects, closes): {:?}",
        report.sent,
        report.ok,
        report.failed,
        costs.iter().map(|c| c.http_in_flight).collect::<Vec<_>>(),
                orders_reports
            .iter()
            .map(|o| (o.sent_unique, o.reconnects, &o.closes))
            .collect::<Vec<_>>()
    );
    let not_cut: Vec<_> = report
        .failures
        .iter()
        .filter(|f| !matches!(f.kind, FailureKind::Other(_)))
        .collect();
    assert!(
        not_cut.is_empty(),
        "refused, timed out or answered with an error (only cut connections may fail): {not_cut:?}\n{}",
        launched.log()
    );
    assert!(
        report.failed <= bound,
        "{} failed, more than the {bound} that can have been in flight on the killed processes",
        report.failed
    );
    let exec = executed(dir.path());
    for o in &orders_reports {
        assert_eq!(
            o.connect_failures, 0,
            "WebSocket connections refused or rejected: {o:?}"
        );
        assert!(o.unacked.is_empty(), "{:?}", o.unacked);
        assert_eq!(o.acked.len() as u64, o.sent_unique);
        let lost: Vec<_> = o
            .acked
            .iter()
            .filter(|id| !exec.contains_key(*id))
            .collect();
        assert!(lost.is_empty(), "acked but never executed: {lost:?}");
    }
    let cut: BTreeSet<&String> = costs.iter().flat_map(|c| &c.orders_unacked).collect();
    let twice: Vec<_> = exec.iter().filter(|(_, n)| **n > 1).collect();
    let unexplained: Vec<_> = twice.iter().filter(|(id, _)| !cut.contains(id)).collect();
    assert!(
        unexplained.is_empty(),
        "executed twice though no kill cut its ack: {unexplained:?}"
    );
    eprintln!(
        "orders: {} executed, {} twice (each one whose ack a kill cut; {} were unacked at the kills)",
        exec.len(),
        twice.len(),
        cut.len()
    );

    // History: one `recovered` per restart in each rollout, and nothing else twice.
    for (version, restarts) in [("v2", 2), ("v3", 1)] {
        let decisions = decisions(&client, version).await;
        let kinds: Vec<&str> = decisions
            .iter()
            .map(|d| d["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds.iter().filter(|k| **k == "recovered").count(),
            restarts,
            "{version}: {kinds:?}"
        );
        for once in ["deploy", "ready", "promoted", "aborted"] {
            assert!(
                kinds.iter().filter(|k| **k == once).count() <= 1,
                "{version}: {once} twice: {kinds:?}"
            );
        }
        let advances: Vec<&str> = decisions
            .iter()
            .filter(|d| d["kind"] == "advance")
            .map(|d| d["reason"].as_str().unwrap())
            .collect();
        let distinct: BTreeSet<&&str> = advances.iter().collect();
        assert_eq!(distinct.len(), advances.len(), "{version}: {advances:?}");
    }
    let v2_decisions = decisions(&client, "v2").await;
    assert!(v2_decisions.iter().any(|d| d["kind"] == "promoted"));

    // A deliberate stop: no process of any group is left, the wrapper's demo-app included.
    drop(launched);
    for (id, (pid, _)) in &v2_procs {
        assert!(
            group(*pid).is_empty(),
            "{id}: left behind: {:?}",
            group(*pid)
        );
    }
}

fn is_held(s: &StatusView) -> bool {
    phase_is(s, |p| matches!(p, Phase::Promoted { .. }))
}
