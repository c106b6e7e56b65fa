//! `cutover upgrade` (issue 12 item 3): the running `cutover run` binary is replaced by another
//! one under continuous HTTP load and with WebSocket order clients connected, mid-rollout.
//!
//! - to a copy of the binary: no failed request, no abnormal WebSocket close (only 1000 and
//!   1012), no lost order, every app pid unchanged, the old process exits, and the rollout
//!   goes on to its promotion under the new one;
//! - to a binary that does not start (`/bin/false`, a script exiting 1): the command fails
//!   saying why, and the old cutover keeps serving and deciding.

mod common;

use common::{demo_app, eventually, ConfigBuilder};
use cutover_admin::AdminClient;
use cutover_core::engine::Phase;
use cutover_host::status::StatusView;
use cutover_loadgen::{Load, LoadConfig, Orders, OrdersConfig, ABNORMAL_CLOSE};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// The cutovers run on one state directory: the first one a child of the test, its successor
/// known by its pid.
struct Cutovers {
    dir: PathBuf,
    first: Option<Child>,
    successor: Option<u32>,
    /// Stands in for systemd's `$NOTIFY_SOCKET` (`Type=notify`): what the cutovers said.
    notify: std::os::unix::net::UnixDatagram,
}

impl Cutovers {
    fn configure(dir: &Path, config: ConfigBuilder) -> SocketAddr {
        let (proxy, admin) = (free_addr(), free_addr());
        let config = config
            .set("service.listen", proxy.to_string())
            .set("admin.listen", admin.to_string())
            .set(
                "app.command",
                vec![
                    demo_app().display().to_string(),
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

    async fn start(dir: &Path) -> Cutovers {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("cutover.log"))
            .unwrap();
        let notify = std::os::unix::net::UnixDatagram::bind(dir.join("notify")).unwrap();
        notify.set_nonblocking(true).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_cutover"))
            .arg("run")
            .env("NOTIFY_SOCKET", dir.join("notify"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let c = Cutovers {
            dir: dir.to_path_buf(),
            first: Some(child),
            successor: None,
            notify,
        };
        eventually(LONG, "cutover's admin API to answer", || async {
            cutover_host::commands::client(&dir.join("cutover.toml"))
                .map_err(|e| e.to_string())?
                .get("/v1/status")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await;
        c
    }

    fn client(&self) -> AdminClient {
        cutover_host::commands::client(&self.dir.join("cutover.toml")).unwrap()
    }

    async fn status(&self) -> StatusView {
        serde_json::from_value(self.client().get("/v1/status").await.unwrap()).unwrap()
    }

    async fn wait_for(&self, what: &str, pred: impl Fn(&StatusView) -> bool) -> StatusView {
        eventually(LONG, what, || async {
            let s: StatusView = match self.client().get("/v1/status").await {
                Ok(v) => serde_json::from_value(v).map_err(|e| e.to_string())?,
                Err(e) => return Err(e.to_string()),
            };
            if pred(&s) {
                Ok(s)
            } else {
                Err(cutover_host::render::status(&s))
            }
        })
        .await
    }

    /// `cutover upgrade [--binary PATH]`, run from the state directory's config.
    fn upgrade(&self, binary: &Path) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cutover"))
            .arg("upgrade")
            .arg("--binary")
            .arg(binary)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// The sd_notify datagrams received so far.
    fn notified(&self) -> Vec<String> {
        let mut said = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n) = self.notify.recv(&mut buf) {
            said.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        said
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("cutover.log")).unwrap_or_default()
    }
}

impl Drop for Cutovers {
    fn drop(&mut self) {
        if let Some(mut c) = self.first.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(pid) = self.successor.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
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

/// `text` (the test's cutover.toml) with `service.listen` set to `addr`.
fn config_with_listen(text: &str, addr: SocketAddr) -> String {
    ConfigBuilder::parse(text)
        .set("service.listen", addr.to_string())
        .to_toml()
}

fn alive(pid: u32) -> bool {
    // Not a zombie: /proc/<pid>/stat's state is not Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let rest = &s[s.rfind(')').unwrap() + 1..];
            !rest.trim_start().starts_with('Z')
        })
        .unwrap_or(false)
}

/// The pid of every instance that has a process (a stopped one, e.g. after its hold, has
/// none: comparing two of these maps also catches an instance that lost its process).
fn pids(s: &StatusView) -> BTreeMap<String, u32> {
    s.instances
        .iter()
        .filter_map(|i| Some((i.id.clone(), i.pid?)))
        .collect()
}

fn ready(s: &StatusView, version: &str) -> usize {
    s.instances
        .iter()
        .filter(|i| i.version == version && i.state == "ready")
        .count()
}

fn is_done(s: &StatusView) -> bool {
    matches!(
        s.rollout.as_ref().map(|r| &r.phase),
        Some(Phase::Done { .. })
    )
}

fn load(proxy: SocketAddr) -> Load {
    let mut cfg = LoadConfig::new(proxy);
    cfg.rate_per_sec = 150;
    cfg.clients = 100;
    cfg.max_in_flight = 256;
    cfg.timeout = Duration::from_secs(5);
    Load::start(cfg)
}

fn orders(proxy: SocketAddr) -> Orders {
    let mut cfg = OrdersConfig::new(proxy);
    cfg.clients = 4;
    cfg.rate_per_client = 10.0;
    cfg.reconnect_delay = Duration::from_millis(50);
    cfg.stop_timeout = Duration::from_secs(20);
    Orders::start(cfg)
}

fn config() -> ConfigBuilder {
    common::config()
        .set("rollout.initial_weight", 25.0)
        .set("rollout.step_interval", "3s")
        .hold_previous("1s")
        // The old cutover's WebSockets are closed (1012) this long after the hand-over.
        .set("app.stop.drain_timeout", "2s")
        .set("log.level", "info")
}

/// v1 stable, then v2's rollout started, load and order clients running.
async fn mid_rollout(dir: &Path) -> (Cutovers, Load, Orders) {
    let proxy = Cutovers::configure(dir, config());
    let c = Cutovers::start(dir).await;
    c.client()
        .post("/v1/deploy", &json!({ "version": "v1" }))
        .await
        .unwrap();
    c.wait_for("v1 stable", is_done).await;
    let load = load(proxy);
    let orders = orders(proxy);
    c.client()
        .post("/v1/deploy", &json!({ "version": "v2" }))
        .await
        .unwrap();
    c.wait_for("v2's rollout under way with every instance ready", |s| {
        matches!(
            s.rollout.as_ref().map(|r| &r.phase),
            Some(Phase::Progressing { .. })
        ) && ready(s, "v1") == 2
            && ready(s, "v2") == 2
    })
    .await;
    (c, load, orders)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_to_a_copy_of_the_binary_loses_nothing_and_the_rollout_goes_on() {
    let _g = common::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("cutover-new");
    std::fs::copy(env!("CARGO_BIN_EXE_cutover"), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (mut c, load, orders) = mid_rollout(dir.path()).await;
    let before = c.status().await;
    let old = c.first.as_ref().unwrap().id();
    let acked_before = orders.snapshot().acked.len();

    let out = c.upgrade(&copy);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.log()
    );
    let pid: u32 = stdout
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the new pid in {stdout:?}"));
    c.successor = Some(pid);
    assert_ne!(pid, old);
    assert!(alive(pid), "{}", c.log());

    // The old one drains (at most app.stop.drain_timeout) and exits by itself, successfully.
    let first = std::sync::Mutex::new(c.first.take().unwrap());
    let status = eventually(LONG, "the old cutover to exit", || async {
        match first.lock().unwrap().try_wait() {
            Ok(Some(s)) => Ok(s),
            _ => Err("still running".to_string()),
        }
    })
    .await;
    assert!(status.success(), "{status}\n{}", c.log());
    let after_exit = orders.snapshot();
    assert_eq!(
        after_exit.closes.get(ABNORMAL_CLOSE),
        None,
        "when the old one exited: {:?}\n{}",
        after_exit.closes,
        c.log()
    );
    let lock = std::fs::read_to_string(dir.path().join("state/lock")).unwrap();
    assert_eq!(
        lock.trim(),
        pid.to_string(),
        "the new one holds the state dir"
    );
    // systemd (`Type=notify`, `NotifyAccess=all`) follows the service to the new process:
    // the first said ready, the new one said it is the main process; the old one, handing
    // over, did not say it was stopping.
    assert_eq!(
        c.notified(),
        ["READY=1".to_string(), format!("MAINPID={pid}\nREADY=1")],
        "{}",
        c.log()
    );

    // The same instances, re-adopted; then the rollout goes on under the new cutover.
    let after = c.status().await;
    assert_eq!(
        pids(&after),
        pids(&before),
        "every app process is the same one"
    );
    assert_eq!(
        after.rollout.as_ref().map(|r| r.id),
        before.rollout.as_ref().map(|r| r.id)
    );
    c.wait_for("orders acked after the upgrade", |_| {
        orders.snapshot().acked.len() > acked_before + 20
    })
    .await;
    c.wait_for("v2 promoted by the new cutover", |s| {
        is_done(s) && ready(s, "v2") == 2
    })
    .await;

    let report = load.stop().await;
    let o = orders.stop().await;
    assert_eq!(report.failed, 0, "{:?}\n{}", report.failures, c.log());
    assert!(report.ok > 300, "{report:?}");
    assert_eq!(o.closes.get(ABNORMAL_CLOSE), None, "{:?}", o.closes);
    assert!(
        o.closes.keys().all(|code| code == "1000" || code == "1012"),
        "{:?}",
        o.closes
    );
    // The four sessions open on the old cutover were closed by it with 1012 (not dropped).
    assert!(
        o.closes.get("1012").copied().unwrap_or(0) >= 4,
        "{:?}",
        o.closes
    );
    assert!(o.unacked.is_empty(), "lost orders: {:?}", o.unacked);
    let log = c.log();
    assert!(log.contains("upgrade: took the listeners"), "{log}");
    assert!(
        log.contains("closing the WebSockets still open with 1012"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_binary_that_does_not_start_leaves_the_old_one_serving() {
    let _g = common::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("broken.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho 'broken: refusing to start' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (mut c, load, orders) = mid_rollout(dir.path()).await;
    let before = c.status().await;
    let old = c.first.as_ref().unwrap().id();

    for binary in [Path::new("/bin/false"), script.as_path()] {
        let out = c.upgrade(binary);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("{} exited", binary.display())) && err.contains("keeps serving"),
            "{err}"
        );
        assert!(c.first.as_mut().unwrap().try_wait().unwrap().is_none());
    }
    // A new cutover that fails *after* it took the sockets over (its config names another
    // public address than the socket it was given): the old one gets everything back, its
    // supervisor included, which restarts an instance that dies afterwards (checked last).
    let copy = dir.path().join("cutover-new");
    std::fs::copy(env!("CARGO_BIN_EXE_cutover"), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = dir.path().join("cutover.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let elsewhere = config_with_listen(&text, free_addr());
    std::fs::write(&file, elsewhere).unwrap();
    let out = c.upgrade(&copy);
    std::fs::write(&file, &text).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}\n{}", c.log());
    assert!(
        err.contains("service.listen") && err.contains("keeps serving"),
        "{err}"
    );
    assert!(c.first.as_mut().unwrap().try_wait().unwrap().is_none());
    let lock = std::fs::read_to_string(dir.path().join("state/lock")).unwrap();
    assert_eq!(lock.trim(), old.to_string());
    // Its driver resumed: the rollout goes on to its promotion under the old cutover.
    c.wait_for("v2 promoted by the old cutover", |s| {
        is_done(s) && ready(s, "v2") == 2
    })
    .await;
    let after = c.status().await;
    assert_eq!(
        pids(&after).get("v2-0"),
        pids(&before).get("v2-0"),
        "the canary's instance is the same one"
    );
    // Only the first cutover ever said anything to systemd: it is still the main process.
    assert_eq!(c.notified(), ["READY=1"], "{}", c.log());
    let report = load.stop().await;
    let o = orders.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.failures);
    assert_eq!(o.closes.get(ABNORMAL_CLOSE), None, "{:?}", o.closes);
    assert!(o.unacked.is_empty(), "lost orders: {:?}", o.unacked);
    // Its supervisor acts on the instances again: one killed now is restarted. (After the
    // load stopped: a killed instance cuts what it was serving.)
    let v2_1 = pids(&c.status().await)["v2-1"];
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(v2_1 as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    c.wait_for("v2-1 restarted by the old cutover", |s| {
        s.instances
            .iter()
            .any(|i| i.id == "v2-1" && i.state == "ready" && i.pid.is_some_and(|p| p != v2_1))
    })
    .await;
}

#[test]
fn an_upgrade_with_no_cutover_running_says_so() {
    let dir = tempfile::tempdir().unwrap();
    Cutovers::configure(dir.path(), config());
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("upgrade")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no cutover answers on") && err.contains("upgrade.sock"),
        "{err}"
    );
}
