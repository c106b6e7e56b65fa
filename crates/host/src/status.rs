//! The status document the admin API serves and `cutover status` renders.

use cutover_core::engine::{Failure, Held, Release, Rollout};
use cutover_core::{Dur, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything `cutover status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    pub service: String,
    pub now: Timestamp,
    /// Where clients reach the service.
    pub proxy: String,
    pub stable: Option<Release>,
    pub previous: Option<Held>,
    /// The rollout in progress, or the last one.
    pub rollout: Option<Rollout>,
    /// When the rollout should reach 100 % if every gate passes.
    pub eta: Option<Timestamp>,
    pub instances: Vec<InstanceView>,
    pub failed: BTreeMap<String, Failure>,
    /// `rollout.strategy`: `canary` or `handoff`.
    #[serde(default)]
    pub strategy: cutover_core::spec::Strategy,
    /// `strategy = "handoff"`: the release holding the singleton's active role, and its
    /// fencing token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing: Option<cutover_core::engine::Fencing>,
    /// Why the last commit to the state store failed (nothing of that outcome was carried
    /// out), until a commit succeeds again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persist_failure: Option<String>,
    /// The config file against the config cutover runs (`cutover reload`).
    #[serde(default)]
    pub config: Option<crate::reload::ConfigView>,
    pub settings: Settings,
}

/// One running instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceView {
    pub version: String,
    pub id: String,
    pub addr: String,
    pub pid: Option<u32>,
    pub state: String,
    pub restarts: u32,
    pub starts: u64,
    pub in_flight: usize,
    /// WebSocket sessions the proxy relays to it.
    #[serde(default)]
    pub websockets: usize,
    /// Its process was started by a previous cutover and re-adopted (not restarted since).
    #[serde(default)]
    pub adopted: bool,
    /// The last readiness probe's result (`GET /ready → passed`, or why it failed).
    #[serde(default)]
    pub last_probe: Option<String>,
    /// How its last process ended, if one did.
    #[serde(default)]
    pub last_exit: Option<String>,
    /// The instance's log file (`cutover logs VERSION --instance N` prints it).
    #[serde(default)]
    pub log: String,
    /// Why its last `/metrics` exposition was rejected, while it is.
    #[serde(default)]
    pub metrics_problem: Option<String>,
}

/// The evaluation and stop settings in force, so an operator reading `status` knows the
/// hysteresis behind every number (STYLE.md: hysteresis is explicit).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub interval: Dur,
    pub window: Dur,
    pub step_interval: Dur,
    pub min_samples: u64,
    pub max_hold: Dur,
    pub hold_previous: Dur,
    pub drain_timeout: Dur,
    /// WebSockets still open at the end of `drain_timeout`: how long the instance's frames
    /// still reach the client before the 1012.
    #[serde(default)]
    pub quiet_period: Dur,
    pub grace: Dur,
    pub readiness_thresholds: (u32, u32),
    pub liveness_failure_threshold: u32,
    #[serde(default)]
    pub max_lookback: Dur,
    #[serde(default)]
    pub max_inconclusive: Dur,
    /// The traffic a verdict needs at the canary's current (else first) weight:
    /// `needs ≥ 83.4 req/s at 2 % …` (`cutover_core::lookback::traffic_need`).
    #[serde(default)]
    pub traffic_need: String,
    /// `[rollout.handoff]`, with `strategy = "handoff"` (the canary settings above do not
    /// apply then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<cutover_core::spec::HandoffSpec>,
}
