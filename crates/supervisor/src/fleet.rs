//! What the supervisor publishes: the observable state of every version's instances.
//!
//! These are plain values sent on a `tokio::sync::watch` channel; the host reads them to build
//! the proxy's route table (only `Ready` instances get traffic, DESIGN.md invariant 3) and to
//! feed crash loops to the engine.

use cutover_core::Dur;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Every version the supervisor runs, by version name.
pub type Fleet = BTreeMap<String, VersionFleet>;

/// One version's instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionFleet {
    /// The [`crate::Release::digest`] these instances run.
    pub digest: String,
    pub instances: Vec<InstanceStatus>,
    /// Set when one instance restarted `restart.crash_loop_restarts` times within
    /// `restart.crash_loop_window`. Cleared once every instance is `Ready` again. The
    /// supervisor keeps restarting regardless (a stable version must keep trying); aborting a
    /// canary on it is the host's decision.
    pub crash_loop: Option<CrashLoop>,
}

impl VersionFleet {
    /// True when every instance is `Ready` (and there is at least one).
    pub fn all_ready(&self) -> bool {
        !self.instances.is_empty()
            && self
                .instances
                .iter()
                .all(|i| i.state == InstanceState::Ready)
    }
}

/// A detected crash loop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashLoop {
    /// The instance id that crash-looped.
    pub instance: String,
    /// Restarts counted within the window.
    pub restarts: u32,
    pub window: Dur,
    pub last_exit: Option<String>,
}

/// One instance (one process at a time, always on the same port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// `<version>-<index>`, e.g. `v2-0`; also the log file's stem.
    pub id: String,
    pub index: usize,
    /// `127.0.0.1:<port>`; stays the same across restarts.
    pub addr: SocketAddr,
    /// The current process (also its process group id); `None` between processes.
    pub pid: Option<u32>,
    pub state: InstanceState,
    /// Restarts after an exit, a liveness failure or a failed spawn.
    pub restarts: u32,
    /// Processes spawned for this instance in total: a changed value means a process start.
    /// 0 for an instance re-adopted from a previous cutover that this one has not restarted.
    pub starts: u64,
    /// True while the current process is one a previous cutover started and this one
    /// re-adopted (see `crate::adopt`).
    #[serde(default)]
    pub adopted: bool,
    /// How the previous process ended, in words.
    pub last_exit: Option<String>,
    /// The last readiness probe's result for the current process, e.g. `GET /ready → passed`
    /// or `GET /ready → connect 127.0.0.1:41234: Connection refused (os error 111)`; `None`
    /// until one completed. What a failure message quotes when the instance never got ready.
    #[serde(default)]
    pub last_probe: Option<String>,
}

/// Where an instance is in its life. Only `Ready` may receive traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Spawned, readiness not yet passed `success_threshold` times in a row.
    Starting,
    /// Readiness passed; may receive traffic.
    Ready,
    /// Was ready, then readiness failed `failure_threshold` times in a row: out of rotation,
    /// but not restarted (that is liveness's job).
    NotReady,
    /// The process ended (or failed liveness) and a new one is due after the backoff.
    Restarting,
    /// Leaving: no new traffic, in-flight requests finishing, then the stop signal.
    Draining,
    /// The process is gone and will not be restarted.
    Stopped,
    /// Reserved for an instance the supervisor gave up on; the current policy never gives up
    /// (it keeps restarting with backoff), so this is not produced today.
    Failed,
}
