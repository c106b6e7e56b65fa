//! The supervisor's own test kit: a tiny Python HTTP app written into a temp dir, fast-timed
//! app specs, and waits on fleet conditions with deadlines ([`wait_for`] wakes on each fleet
//! change rather than polling). Everything generic (the condition waits) comes from
//! `cutover_testkit`; what is here is about instances, probes and signals.
//!
//! Why Python here and demo-app elsewhere: these tests drive an instance's probes and signals
//! from outside while it runs (/ready and /live answers switched by files, SIGTERM ignored, an
//! exit at start, a drain marker on SIGUSR1 or `POST /drain`), which demo-app does not offer,
//! and `release.rs` tests the digest of an interpreted app (`python3 app.py` plus its files).
#![allow(dead_code)]

use cutover_core::spec::{AppSpec, ProbeSpec, RestartSpec, StopSignal, StopSpec};
use cutover_core::Dur;
use cutover_supervisor::{Fleet, InstanceState, Release, Supervisor, VersionFleet};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;

/// Generous: the conditions are reached in milliseconds, the deadline only bounds a failure.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The test app. Flags:
/// `--port P` (required) · `--exit-now` (exit 3 at once) · `--ignore-term` ·
/// `--ready-file F` (/ready is 503 until F exists) · `--unready-file F` (/ready is 503 while F
/// exists) · `--live-fail-file F` (/live is 500 while F exists; removed at startup, so a
/// restarted process is healthy) · `--drain-file F` (SIGUSR1 or `POST /drain` creates F).
/// Anything else is echoed in the startup line.
pub const APP: &str = r#"#!/usr/bin/env python3
import os, signal, sys
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

args = sys.argv[1:]
def opt(name):
    return args[args.index(name) + 1] if name in args else None

port = int(opt("--port"))
print(f"app argv={args} GREETING={os.environ.get('GREETING', '')}", flush=True)
print("hello on stderr", file=sys.stderr, flush=True)
if "--exit-now" in args:
    sys.exit(3)
if "--ignore-term" in args:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
ready_file, unready_file, live_fail_file = opt("--ready-file"), opt("--unready-file"), opt("--live-fail-file")
drain_file = opt("--drain-file")
def drained(*_):
    if drain_file:
        open(drain_file, "w").close()
signal.signal(signal.SIGUSR1, drained)
if live_fail_file and os.path.exists(live_fail_file):
    os.remove(live_fail_file)

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        code = 200
        if self.path == "/ready":
            if (ready_file and not os.path.exists(ready_file)) or (unready_file and os.path.exists(unready_file)):
                code = 503
                print("ready 503", flush=True)
        elif self.path == "/live":
            if live_fail_file and os.path.exists(live_fail_file):
                code = 500
        body = str(code).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        code = 404
        if self.path == "/drain":
            drained()
            code = 200
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass

ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

pub struct Kit {
    pub dir: tempfile::TempDir,
}

impl Kit {
    pub fn new() -> Kit {
        let dir = tempfile::tempdir().unwrap();
        let kit = Kit { dir };
        kit.write_app(APP);
        kit
    }

    pub fn write_app(&self, text: &str) {
        let path = self.path("app.py");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn logs(&self) -> PathBuf {
        self.path("logs")
    }

    pub fn log(&self, id: &str) -> String {
        std::fs::read_to_string(self.logs().join(format!("{id}.log"))).unwrap_or_default()
    }

    /// One instance of the test app with `args`, probes every 20 ms, fast restarts and stops.
    pub fn app(&self, args: &[&str]) -> AppSpec {
        let probe = |path: &str| ProbeSpec {
            path: path.into(),
            interval: Dur::from_millis(20),
            timeout: Dur::from_millis(1000),
            success_threshold: 1,
            failure_threshold: 3,
        };
        let mut command = vec!["./app.py".to_string(), "--port".into(), "{port}".into()];
        command.extend(args.iter().map(|s| s.to_string()));
        AppSpec {
            command,
            env: BTreeMap::new(),
            secret_env: Vec::new(),
            log_max_size: 10 * 1024 * 1024,
            log_keep: 5,
            workdir: None,
            digest_paths: Vec::new(),
            instances: 1,
            start_timeout: Dur::from_secs(10),
            readiness: probe("/ready"),
            liveness: probe("/live"),
            stop: StopSpec {
                drain_timeout: Dur::from_secs(10),
                signal: StopSignal::Term,
                grace: Dur::from_secs(5),
                ..StopSpec::default()
            },
            restart: RestartSpec {
                backoff_initial: Dur::from_millis(20),
                backoff_max: Dur::from_millis(100),
                crash_loop_restarts: 3,
                crash_loop_window: Dur::from_secs(30),
            },
            upstream_protocol: Default::default(),
        }
    }

    pub fn release(&self, name: &str, app: &AppSpec) -> Release {
        Release::resolve(name, app, self.dir.path(), BTreeMap::new(), Vec::new()).unwrap()
    }

    /// A supervisor already running `app` as version `v1`.
    pub fn start(&self, app: AppSpec) -> (Supervisor, watch::Receiver<Fleet>) {
        let release = self.release("v1", &app);
        let (sup, rx) = Supervisor::new(app, self.logs());
        sup.start(release).unwrap();
        (sup, rx)
    }

    /// Processes whose command line mentions this kit's directory: the instances (and
    /// anything they spawned). Must be empty after a test.
    pub fn processes(&self) -> Vec<String> {
        let needle = self.dir.path().to_string_lossy().into_owned();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                if cmd.contains(&needle) {
                    found.push(format!("{name}: {cmd}"));
                }
            }
        }
        found
    }

    /// Shuts the supervisor down and checks that no process is left behind.
    pub async fn finish(&self, sup: &Supervisor) {
        sup.shutdown().await;
        assert!(
            sup.fleet().is_empty(),
            "fleet after shutdown: {:?}",
            sup.fleet()
        );
        let left = self.processes();
        assert!(left.is_empty(), "processes left behind: {left:?}");
    }
}

/// Waits until `pred` holds for the fleet, or panics with the fleet after `DEADLINE`.
pub async fn wait_for(
    rx: &mut watch::Receiver<Fleet>,
    what: &str,
    mut pred: impl FnMut(&Fleet) -> bool,
) -> Fleet {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        {
            let fleet = rx.borrow_and_update();
            if pred(&fleet) {
                return fleet.clone();
            }
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            panic!("timed out waiting for {what}; fleet: {:#?}", *rx.borrow());
        }
    }
}

/// Waits until the first instance of `v1` satisfies `pred`.
pub async fn wait_v1(
    rx: &mut watch::Receiver<Fleet>,
    what: &str,
    mut pred: impl FnMut(&VersionFleet) -> bool,
) -> VersionFleet {
    let fleet = wait_for(rx, what, |f| f.get("v1").is_some_and(&mut pred)).await;
    fleet["v1"].clone()
}

pub fn state(v: &VersionFleet) -> InstanceState {
    v.instances[0].state
}

/// Polls a non-fleet condition (a file, a counter) until it holds, or panics after `DEADLINE`.
pub async fn poll_until(what: &str, cond: impl FnMut() -> bool) {
    cutover_testkit::eventually_holds(DEADLINE, what, cond).await
}

/// A plain HTTP/1.0 GET; the status code, or None if the app does not answer.
pub async fn http_status(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

pub fn touch(p: &Path) {
    std::fs::write(p, b"").unwrap();
}
