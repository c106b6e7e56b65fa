//! Test kit for the end-to-end tests: a real cutover runtime (in process) on 127.0.0.1 with
//! ephemeral ports, real demo-app child processes, real HTTP load, and waits on conditions
//! with deadlines. Time is shrunk through the config, never slept away.
#![allow(dead_code)]

use cutover_admin::{AdminClient, ClientError};
use cutover_core::engine::Phase;
use cutover_core::spec::Config;
use cutover_host::config::Loaded;
use cutover_host::status::StatusView;
use cutover_host::Running;
use cutover_loadgen::{Load, LoadConfig};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;

/// The demo-app binary, built by `cargo test --workspace` next to this test's target dir.
pub fn demo_app() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let p = debug.join("demo-app");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace` (or `cargo test --workspace`) first",
        p.display()
    );
    p
}

/// A time-compressed config: 50 ms evaluations over 1 s windows, 400 ms steps from 5 %.
pub fn config_text() -> String {
    format!(
        r#"
[service]
name = "e2e"
listen = "127.0.0.1:0"
state_dir = "state"
[admin]
listen = "127.0.0.1:0"
[app]
command = [{exe:?}, "--port", "{{port}}", "--version", "{{version}}"]
env = {{ DEMO_LATENCY = "1ms" }}
instances = 1
start_timeout = "20s"
[app.readiness]
path = "/ready"
interval = "20ms"
timeout = "500ms"
[app.liveness]
path = "/live"
interval = "50ms"
timeout = "500ms"
failure_threshold = 5
[app.stop]
drain_timeout = "3s"
grace = "2s"
[app.restart]
backoff_initial = "50ms"
backoff_max = "200ms"
crash_loop_restarts = 3
crash_loop_window = "20s"
[rollout]
initial_weight = 5.0
step_interval = "400ms"
interval = "50ms"
window = "1s"
min_samples = 10
max_hold = "60s"
hold_previous = "60s"
[[rollout.gates]]
name = "p99-vs-stable"
metric = "latency"
quantile = 0.99
max_increase_percent = 5.0
slack = "50ms"
[[rollout.gates]]
name = "error-budget"
metric = "error_ratio"
max = 0.001
[[rollout.aborts]]
name = "p99-over-800ms"
metric = "latency"
quantile = 0.99
above = "800ms"
for = "500ms"
[[rollout.aborts]]
name = "error-budget-fast-burn"
metric = "error_ratio"
above = 0.0144
for = "300ms"
[log]
level = "warn"
"#,
        exe = demo_app().display().to_string()
    )
}

/// One isolated cutover with its own state directory.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub running: Option<Running>,
    pub client: AdminClient,
    pub text: String,
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// End-to-end tests run one at a time: two cores cannot carry several loaded rollouts at once
/// without the latency noise the gates are there to catch.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with(config_text()).await
    }

    pub async fn start_with(text: String) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        Harness::start_in(dir, text).await
    }

    pub async fn start_in(dir: tempfile::TempDir, text: String) -> Harness {
        std::fs::write(dir.path().join("cutover.toml"), &text).unwrap();
        let config = Config::from_toml_str(&text).unwrap();
        let loaded = Loaded {
            config,
            path: dir.path().join("cutover.toml"),
            dir: dir.path().to_path_buf(),
        };
        let running = cutover_host::start(loaded).await.unwrap();
        let client = running.client();
        Harness {
            dir,
            running: Some(running),
            client,
            text,
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    /// Stops this cutover (gracefully) and starts a new one on the same state directory.
    pub async fn restart(mut self) -> Harness {
        self.running.take().unwrap().shutdown().await;
        let Harness { dir, text, .. } = self;
        Harness::start_in(dir, text).await
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    pub fn load(&self, rate: u32, timeout: Duration) -> Load {
        let mut cfg = LoadConfig::new(self.running().proxy_addr);
        cfg.rate_per_sec = rate;
        cfg.clients = 2000;
        cfg.max_in_flight = 512;
        cfg.timeout = timeout;
        Load::start(cfg)
    }

    pub async fn deploy(&self, version: &str, env: Value) -> Result<Value, ClientError> {
        self.client
            .post("/v1/deploy", &json!({ "version": version, "env": env }))
            .await
    }

    pub async fn verb(&self, verb: &str) -> Result<Value, ClientError> {
        self.client.post(&format!("/v1/{verb}"), &json!({})).await
    }

    pub async fn status(&self) -> StatusView {
        serde_json::from_value(self.client.get("/v1/status").await.unwrap()).unwrap()
    }

    pub async fn status_json(&self) -> Value {
        let mut v = self.client.get("/v1/status").await.unwrap();
        v.as_object_mut().unwrap().remove("now");
        v
    }

    /// Polls status until `pred` holds, failing with the last status after `deadline`.
    pub async fn wait_for(
        &self,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&StatusView) -> bool,
    ) -> StatusView {
        let t = Instant::now();
        loop {
            let s = self.status().await;
            if pred(&s) {
                return s;
            }
            if t.elapsed() > deadline {
                panic!(
                    "timed out after {deadline:?} waiting for {what}; last status:\n{}",
                    cutover_host::render::status(&s)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Deploys `version` as the first release and waits until it is stable.
    pub async fn first_release(&self, version: &str) {
        self.deploy(version, json!({})).await.unwrap();
        self.wait_for(&format!("{version} stable"), Duration::from_secs(20), |s| {
            s.stable.as_ref().is_some_and(|r| r.version == version)
                && s.rollout.as_ref().is_some_and(|r| r.phase == Phase::Done)
        })
        .await;
    }
}

pub fn phase(s: &StatusView) -> Option<&Phase> {
    s.rollout.as_ref().map(|r| &r.phase)
}

pub fn is_promoted(s: &StatusView) -> bool {
    matches!(phase(s), Some(Phase::Promoted { .. } | Phase::Done))
}

pub fn is_aborted(s: &StatusView) -> bool {
    matches!(phase(s), Some(Phase::Aborted { .. }))
}
