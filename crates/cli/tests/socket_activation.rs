//! Listening sockets that outlive cutover: `cutover run` under Debian's real
//! `systemd-socket-activate` (the launcher holds the listeners, as `cutover.socket` does), killed
//! with `kill -9` under continuous load and restarted by a loop standing in for systemd's
//! `Restart=always`. Connections made while no cutover runs wait in the kernel's backlog: not
//! one is refused.

mod common;

use cutover_loadgen::{FailureKind, Load, LoadConfig};
use std::net::SocketAddr;
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
