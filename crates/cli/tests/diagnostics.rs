//! Failures that explain themselves (issue 10 item 5), end to end: a real cutover runtime and
//! real demo-app processes that never get ready, crash at start or serve garbage metrics.

mod common;

use common::{is_aborted, phase, serial, Harness};
use cutover_core::engine::Phase;
use serde_json::json;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

trait HistoryExt {
    /// The reason of the last rollout's `aborted` decision, as `cutover history` shows it.
    async fn aborted_decision(&self) -> String;
}

impl HistoryExt for Harness {
    async fn aborted_decision(&self) -> String {
        let hist = self.client.get("/v1/history?limit=1").await.unwrap();
        let decisions = hist["rollouts"][0]["decisions"].as_array().unwrap();
        let d = decisions.iter().find(|d| d["kind"] == "aborted").unwrap();
        d["reason"].as_str().unwrap().to_string()
    }
}

fn aborted_reason(s: &cutover_host::status::StatusView) -> String {
    match phase(s) {
        Some(Phase::Aborted { reason, .. }) => reason.clone(),
        other => panic!("not aborted: {other:?}"),
    }
}

/// A first release that never gets ready: the abort says why (the probe's answer), what the
/// app wrote, where its log is, and does not claim a stable that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_never_gets_ready_explains_itself() {
    let _g = serial().await;
    let text = common::config().start_timeout("1s");
    let h = Harness::start_with(text).await;
    h.deploy(
        "v1",
        json!({ "DEMO_READY_DELAY": "1h", "DEMO_STDERR_LINE": "loading model.bin: no such file" }),
    )
    .await
    .unwrap();
    let s = h.wait_for("v1 aborted", LONG, is_aborted).await;
    let reason = aborted_reason(&s);
    let log = h.dir.path().join("state/logs/v1-0.log");
    for part in [
        "first release v1 could not start: not ready within app.start_timeout (1s)",
        "v1-0: last readiness probe GET /ready → answered 503 Service Unavailable",
        "«loading model.bin: no such file»",
        &format!("log: {}", log.display()),
    ] {
        assert!(reason.contains(part), "{part:?} missing from: {reason}");
    }

    // history carries the same text, and where the traffic is.
    let text = h.aborted_decision().await;
    assert!(text.contains(&reason), "{text}");
    assert!(text.contains("there is no stable release yet"), "{text}");
    assert!(!text.contains("back on stable"), "{text}");
    h.shutdown().await;
}

/// A canary that crashes right after it starts: the abort names the exit, quotes its last
/// words and the log, and says stable kept the traffic (it never had any).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_canary_explains_itself() {
    let _g = serial().await;
    let h = Harness::start().await;
    h.first_release("v1").await;
    // Never ready (so it never takes traffic) and dead within a millisecond of each start.
    h.deploy(
        "v2",
        json!({ "DEMO_FAIL_AFTER": "1ms", "DEMO_READY_DELAY": "1h" }),
    )
    .await
    .unwrap();
    let s = h.wait_for("v2 aborted", LONG, is_aborted).await;
    let reason = aborted_reason(&s);
    let log = h.dir.path().join("state/logs/v2-0.log");
    for part in [
        "canary is crash-looping: instance v2-0 restarted",
        "last exit: exited with code 1",
        "--fail-after 1ms elapsed, exiting with code 1»",
        &format!("log: {}", log.display()),
    ] {
        assert!(reason.contains(part), "{part:?} missing from: {reason}");
    }
    let text = h.aborted_decision().await;
    assert!(text.contains(&reason), "{text}");
    assert!(text.contains("it never took traffic; stable v1"), "{text}");
    h.shutdown().await;
}

/// What cutover logged at WARN and above while this test binary ran (one global subscriber).
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .init();
        buf
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An app serving a `/metrics` that does not parse is warned about once, not every interval:
/// then it is counted on cutover's own /metrics and shown in status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_metrics_exposition_is_warned_about_once() {
    let _g = serial().await;
    let logs = captured_logs();
    let h = Harness::start().await;
    h.deploy("v1", json!({ "DEMO_BAD_METRICS": "true" }))
        .await
        .unwrap();
    h.wait_for("v1 stable", LONG, |s| s.stable.is_some()).await;
    let addr = h.status().await.instances[0].addr.clone();
    // Scrapes every 50 ms: wait for 20 rejected expositions, i.e. 20 intervals.
    let rejected = |text: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with("cutover_scrape_rejected_total{") && l.contains(&addr))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let text = common::eventually(LONG, "20 rejected expositions", || async {
        let text = h.client.get_text("/metrics").await.unwrap();
        if rejected(&text) >= 20 {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await;
    assert!(text.contains("version=\"v1\""), "{text}");
    let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("bad metrics exposition") && l.contains(&addr))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].contains("WARN"), "{}", warnings[0]);

    let s = h.status().await;
    let problem = s.instances[0].metrics_problem.clone();
    assert!(problem.is_some(), "{:?}", s.instances[0]);
    let shown = cutover_host::render::status(&s);
    assert!(shown.contains("/metrics rejected"), "{shown}");
    h.shutdown().await;
}

/// A config for the `cutover` binary that points at this harness's admin API (the harness
/// binds port 0; the binary reads the address from the config).
fn cli_config(h: &Harness) -> std::path::PathBuf {
    let addr = h.running().admin_addr;
    let text = common::ConfigBuilder::parse(&h.text)
        .admin_listen(addr)
        .to_toml();
    assert_ne!(text, h.text);
    let path = h.dir.path().join("cli.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Reads the follower's lines until one contains `want`, within the deadline.
async fn read_until(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    seen: &mut Vec<String>,
    want: &str,
) {
    let found = tokio::time::timeout(LONG, async {
        while let Some(l) = lines.next_line().await.unwrap() {
            let hit = l.contains(want);
            seen.push(l);
            if hit {
                return true;
            }
        }
        false
    })
    .await;
    assert!(found == Ok(true), "{want:?} never followed: {seen:#?}");
}

fn cutover(cfg: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("-c")
        .arg(cfg)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `cutover logs VERSION [--instance N] [--follow]` with the real binary: prints what the
/// instance wrote, refuses unknown versions and instances saying what exists, and `--follow`
/// prints new lines until the instance is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_logs_prints_and_follows_an_instance_log() {
    use tokio::io::AsyncBufReadExt;
    let _g = serial().await;
    let h = Harness::start().await;
    h.deploy(
        "v1",
        json!({ "DEMO_STDERR_LINE": "v1 says hello on stderr" }),
    )
    .await
    .unwrap();
    h.wait_for("v1 stable", LONG, |s| s.stable.is_some()).await;
    let cfg = cli_config(&h);

    let (code, out, err) = cutover(&cfg, &["logs", "v1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("v1 says hello on stderr"), "{out}");
    assert!(out.contains("demo-app v1 listening on"), "{out}");

    let (code, _, err) = cutover(&cfg, &["logs", "v9"]);
    assert_eq!(code, 66, "a missing thing, as for a missing rollout: {err}");
    assert!(err.contains("no instance of version v9"), "{err}");
    let (code, _, err) = cutover(&cfg, &["logs", "v1", "--instance", "4"]);
    assert_eq!(code, 66, "{err}");
    assert!(err.contains("pass --instance 0"), "{err}");
    let (code, _, err) = cutover(&cfg, &["logs", "../state/admin.token"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("not a valid version"), "{err}");

    // --follow on a canary, which is then aborted: its shutdown line arrives, then the
    // follower ends by itself.
    h.deploy("v2", json!({})).await.unwrap();
    h.wait_for("v2 takes traffic", LONG, |s| {
        matches!(
            phase(s),
            Some(Phase::Progressing { .. } | Phase::Paused { .. })
        )
    })
    .await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("-c")
        .arg(&cfg)
        .args(["logs", "v2", "--follow"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    read_until(&mut lines, &mut seen, "demo-app v2 listening on").await;
    h.verb("abort").await.unwrap();
    read_until(&mut lines, &mut seen, "demo-app v2: shutting down").await;
    let status = tokio::time::timeout(LONG, child.wait())
        .await
        .expect("the follower ends once the instance is stopped")
        .unwrap();
    assert!(status.success(), "{status}");
    h.shutdown().await;
}

/// A Python app: `BROKEN = True` makes it exit at start with a line on stderr.
const PY_APP: &str = r#"import sys
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
BROKEN = True
port = int(sys.argv[sys.argv.index("--port") + 1])
if BROKEN:
    print("app.py: BROKEN is set, giving up", file=sys.stderr, flush=True)
    sys.exit(2)
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

/// Issue 10 item 4 end to end: for `python3 app.py` the release is the script, not the
/// interpreter. A failed script is refused (with a readable time); the edited script is a new
/// release and deploys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_script_is_a_new_release() {
    let _g = serial().await;
    let text = common::config().command(&["python3", "app.py", "--port", "{port}"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.py"), PY_APP).unwrap();
    let h = Harness::start_in(dir, text).await;

    let broken = h.deploy("v1", json!({})).await.unwrap();
    let s = h.wait_for("v1 aborted", LONG, is_aborted).await;
    let reason = aborted_reason(&s);
    assert!(
        reason.contains("first release is crash-looping"),
        "{reason}"
    );
    assert!(reason.contains("BROKEN is set, giving up"), "{reason}");
    h.wait_for("v1 stopped", LONG, |s| s.instances.is_empty())
        .await;

    let err = h.deploy("v1", json!({})).await.unwrap_err().to_string();
    assert!(err.contains("--force"), "{err}");
    let at = s.failed[broken["digest"].as_str().unwrap()].at.rfc3339();
    assert!(err.contains(&format!("failed at {at}")), "{err}");

    std::fs::write(
        h.dir.path().join("app.py"),
        PY_APP.replace("BROKEN = True", "BROKEN = False"),
    )
    .unwrap();
    let fixed = h.deploy("v1", json!({})).await.unwrap();
    assert_ne!(fixed["digest"], broken["digest"]);
    h.wait_for("the fixed v1 stable", LONG, |s| {
        s.stable.as_ref().is_some_and(|r| r.version == "v1")
    })
    .await;
    h.shutdown().await;
}
