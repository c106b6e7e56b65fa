//! The end-to-end tests' own kit: a real cutover runtime (in process) on 127.0.0.1 with
//! ephemeral ports, real demo-app child processes, real HTTP load, and waits on the rollout's
//! status with deadlines. Time is shrunk through the config, never slept away.
//!
//! The generic parts come from `cutover_testkit` (re-exported below): the config builder, the
//! demo-app location, upstreams, `eventually`. What is here is specific to driving a whole
//! cutover: the [`Harness`] (state directory, admin client, restart), status predicates, and
//! [`serial`], which keeps loaded rollouts from running at once.
#![allow(dead_code)]

use cutover_admin::{AdminClient, ClientError};
use cutover_core::engine::Phase;
use cutover_core::spec::Config;
use cutover_host::config::Loaded;
use cutover_host::status::StatusView;
use cutover_host::Running;
use cutover_loadgen::{Load, LoadConfig};
use serde_json::{json, Value};
use std::time::Duration;

#[allow(unused_imports)] // not every test file uses every item
pub use cutover_testkit::{dead_addr, demo_app, eventually, upstream, ConfigBuilder, Reply};

/// The time-compressed end-to-end config: 50 ms evaluations over 1 s windows, 400 ms steps
/// from 5 % (see `ConfigBuilder::e2e`). Tests change it through the builder's checked setters.
pub fn config() -> ConfigBuilder {
    ConfigBuilder::e2e()
}

/// One isolated cutover with its own state directory.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub running: Option<Running>,
    pub client: AdminClient,
    /// The config this cutover runs, as written to `cutover.toml`.
    pub text: String,
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// End-to-end tests run one at a time, for CPU alone: two cores cannot carry several loaded
/// rollouts at once without the latency noise the gates are there to catch (a p99 gate with
/// 50 ms of slack fails when another test's load and demo-apps compete for the cores). It is not
/// for shared state: every harness has its own temporary state directory and binds port 0.
/// Tests that put no load on a rollout (config validation, start errors) need not take it.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with(config()).await
    }

    pub async fn start_with(config: ConfigBuilder) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        Harness::start_in(dir, config).await
    }

    pub async fn start_in(dir: tempfile::TempDir, config: ConfigBuilder) -> Harness {
        Harness::start_text(dir, config.to_toml()).await
    }

    async fn start_text(dir: tempfile::TempDir, text: String) -> Harness {
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
        let dir = tempfile::tempdir().unwrap();
        let old = std::mem::replace(&mut self.dir, dir);
        Harness::start_text(old, std::mem::take(&mut self.text)).await
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
        eventually(deadline, what, || async {
            let s = self.status().await;
            if pred(&s) {
                Ok(s)
            } else {
                Err(cutover_host::render::status(&s))
            }
        })
        .await
    }

    /// Deploys `version` as the first release and waits until it is stable.
    pub async fn first_release(&self, version: &str) {
        self.deploy(version, json!({})).await.unwrap();
        self.wait_for(&format!("{version} stable"), Duration::from_secs(20), |s| {
            s.stable.as_ref().is_some_and(|r| r.version == version)
                && s.rollout
                    .as_ref()
                    .is_some_and(|r| matches!(r.phase, Phase::Done { .. }))
        })
        .await;
    }
}

/// Instances outlive the cutover that started them: a harness dropped without a shutdown (a
/// failed assertion) kills its instances so that no test leaves processes behind.
impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(r) = &self.running {
            r.kill_apps();
        }
    }
}

pub fn phase(s: &StatusView) -> Option<&Phase> {
    s.rollout.as_ref().map(|r| &r.phase)
}

pub fn is_promoted(s: &StatusView) -> bool {
    matches!(phase(s), Some(Phase::Promoted { .. } | Phase::Done { .. }))
}

pub fn is_aborted(s: &StatusView) -> bool {
    matches!(phase(s), Some(Phase::Aborted { .. }))
}

/// The pids of every live process in process group `pgid`, sorted.
pub fn group(pgid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let rest = &stat[stat.rfind(')').unwrap() + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f[0] != "Z" && f[2] == pgid.to_string() {
            found.push(pid);
        }
    }
    found.sort_unstable();
    found
}

/// Each instance's id → its pid and every process of its group.
pub fn processes(s: &StatusView) -> std::collections::BTreeMap<String, (u32, Vec<u32>)> {
    s.instances
        .iter()
        .map(|i| {
            let pid = i.pid.expect("a running instance has a pid");
            (i.id.clone(), (pid, group(pid)))
        })
        .collect()
}
