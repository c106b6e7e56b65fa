//! The rollout state machine: `handle(now, event) -> Outcome { actions, decisions }`.
//!
//! One [`Engine`] owns one service's rollout state: which release is stable, the rollout in
//! progress (or the last one), the previous release held after a promotion, and the releases
//! that failed. The shell feeds it [`Event`]s (deploys, readiness, crash loops, metric windows,
//! operator verbs) with the current time and carries out the [`Action`]s it returns, *after*
//! persisting [`Engine::state`] together with the returned [`Decision`]s (DESIGN.md invariant 8).
//!
//! Phases (`Rollout::phase`):
//!
//! ```text
//! Starting ──ready──▶ Progressing(step) ⇄ Paused ──last step passes / promote──▶ Promoted ──hold_previous──▶ Done
//!     │                    │                │                                     │
//!     └──────── abort ─────┴────────────────┘                       rollback ─────┴──▶ RolledBack
//!                 ▼
//!              Aborted
//! ```
//!
//! Invariants kept here: an abort is one [`Action::Route`] back to 100 % stable *before* the
//! canary is stopped; a rejected command changes nothing (validation happens before mutation);
//! weights only grow during a rollout, so sticky clients only move stable → canary.

use crate::judge::{self, External, Outcome as RuleOutcome, Verdict};
use crate::lookback::{self, Wider};
use crate::spec::{AbortSpec, GateSpec, PauseSpec, RolloutSpec, ScheduleKind, Strategy};
use crate::stats::{TrackStats, WindowStats};
use crate::time::{Dur, Timestamp};
use crate::weight::Weight;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// `max_hold` and `max_inconclusive` abort once *exceeded*: their timers fire one millisecond
/// (the resolution of [`Timestamp`]) after they run out.
const MILLI: std::time::Duration = std::time::Duration::from_millis(1);

/// A release as the engine knows it: a version name and the digest that identifies its build
/// and settings (a rebuilt binary under the same name is a different release).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub version: String,
    pub digest: String,
}

impl Release {
    pub fn new(version: impl Into<String>, digest: impl Into<String>) -> Self {
        Release {
            version: version.into(),
            digest: digest.into(),
        }
    }
    /// `v2 (sha256:1a2b3c4d)`: the form used in messages.
    pub fn label(&self) -> String {
        let short: String = self.digest.chars().take(12).collect();
        format!("{} ({short})", self.version)
    }
}

/// One step of a rollout plan: the canary's weight and how long it stays there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub weight: Weight,
    pub hold: StepHold,
}

/// How a step ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepHold {
    /// After this long, the advance gates are checked.
    For(Dur),
    /// When an operator resumes or promotes.
    UntilPromoted,
}

impl Step {
    /// The steps a rollout walks through before promotion to 100 %.
    ///
    /// `double`: `initial_weight`, doubled every `step_interval` (2, 4, 8, 16, 32, 64 %) — the
    /// next doubling reaches 100 % and is the promotion. `steps`: the explicit list, each step
    /// inheriting the previous weight when it sets none; a step at 100 % ends the plan.
    pub fn plan(r: &RolloutSpec) -> Vec<Step> {
        let mut plan = Vec::new();
        match r.schedule {
            ScheduleKind::Double => {
                let mut w = r.initial();
                while w > Weight::ZERO && !w.is_full() {
                    plan.push(Step {
                        weight: w,
                        hold: StepHold::For(r.step_interval),
                    });
                    w = w.doubled();
                }
            }
            ScheduleKind::Steps => {
                let mut w = r.initial();
                for s in &r.steps {
                    if let Some(p) = s.weight.and_then(Weight::from_percent) {
                        w = p;
                    }
                    if w.is_full() {
                        break;
                    }
                    let hold = match s.pause {
                        Some(PauseSpec::UntilPromoted) => StepHold::UntilPromoted,
                        Some(PauseSpec::For(d)) => StepHold::For(d),
                        None => StepHold::For(r.step_interval),
                    };
                    plan.push(Step { weight: w, hold });
                }
            }
        }
        plan
    }
}

/// Where a rollout is, with what only means something there: the start deadline while
/// starting, the [`Watch`] on the canary while it takes traffic, when a finished rollout ended.
///
/// Persisted inside [`Rollout`], in the form snapshots have always had (`RolloutWire`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// The canary's instances are starting; it gets no traffic until all are ready.
    Starting {
        /// `app.start_timeout` and when it runs out; `None`: no deadline (a deploy recorded
        /// before the engine kept it).
        deadline: Option<StartDeadline>,
    },
    /// The canary serves `weight` at `step`; gates are checked at the step's end.
    Progressing { watch: Watch },
    /// `strategy = "handoff"`: the new release is ready and the active role is moving to it
    /// with `token` (already persisted as given out): the proxy holds new requests, the old
    /// holder's in-flight ones finish, then the handoff call. `deadline`: when the engine
    /// gives up waiting for the shell's result (a backstop: the shell's own steps are bounded
    /// by `rollout.handoff`).
    HandingOff {
        token: u64,
        since: Timestamp,
        deadline: Timestamp,
    },
    /// No advance until `resume` or `promote`. Abort rules still watch the canary.
    Paused {
        /// `true` for `cutover pause`, `false` for a `pause = "until_promoted"` step.
        manual: bool,
        since: Timestamp,
        watch: Watch,
    },
    /// The new release serves 100 %; the previous one runs without traffic until `until`.
    Promoted { until: Timestamp },
    /// Finished: promoted and the previous release stopped (or the first release is live).
    Done { ended: Timestamp },
    /// Stopped before promotion; all traffic went back to stable.
    Aborted {
        reason: String,
        automatic: bool,
        ended: Timestamp,
    },
    /// Promoted, then rolled back to the previous release inside `hold_previous`.
    RolledBack { reason: String, ended: Timestamp },
}

/// While a release starts: how long it may take (`app.start_timeout`, as given with the
/// deploy) and when that runs out, or the rollout aborts. A restarted cutover gives the
/// instances it re-adopts the whole `timeout` again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartDeadline {
    pub timeout: Dur,
    pub at: Timestamp,
}

/// What the engine keeps on a canary that takes traffic (progressing or paused): it goes with
/// the rollout from one of these phases to the other, and is gone once the rollout ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watch {
    /// A gate that failed (or could not be judged) at a step's end, holding the weight.
    pub hold: Option<Hold>,
    /// Abort rules currently breached, and since when.
    pub breaches: BTreeMap<String, Timestamp>,
    /// Since when the rules could not be judged (no data, too few samples); see
    /// `max_inconclusive`.
    pub inconclusive_since: Option<Timestamp>,
}

impl Phase {
    /// Which phase this is, without its data.
    pub fn kind(&self) -> PhaseKind {
        match self {
            Phase::Starting { .. } => PhaseKind::Starting,
            Phase::Progressing { .. } => PhaseKind::Progressing,
            Phase::HandingOff { .. } => PhaseKind::HandingOff,
            Phase::Paused { .. } => PhaseKind::Paused,
            Phase::Promoted { .. } => PhaseKind::Promoted,
            Phase::Done { .. } => PhaseKind::Done,
            Phase::Aborted { .. } => PhaseKind::Aborted,
            Phase::RolledBack { .. } => PhaseKind::RolledBack,
        }
    }
    /// The phase's name in status output, metrics labels and the store.
    pub fn name(&self) -> &'static str {
        self.kind().as_str()
    }
    /// Starting, progressing, paused or handing off: a new release exists and may take
    /// traffic.
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            Phase::Starting { .. }
                | Phase::Progressing { .. }
                | Phase::Paused { .. }
                | Phase::HandingOff { .. }
        )
    }
    /// Starting: the canary takes no traffic yet.
    pub fn is_starting(&self) -> bool {
        matches!(self, Phase::Starting { .. })
    }
    /// The watch on the canary, while it takes traffic (progressing or paused).
    pub fn watch(&self) -> Option<&Watch> {
        match self {
            Phase::Progressing { watch } | Phase::Paused { watch, .. } => Some(watch),
            _ => None,
        }
    }
    fn watch_mut(&mut self) -> Option<&mut Watch> {
        match self {
            Phase::Progressing { watch } | Phase::Paused { watch, .. } => Some(watch),
            _ => None,
        }
    }
    /// The watch, for the phase that follows (empty if there was none).
    fn take_watch(&mut self) -> Watch {
        self.watch_mut().map(std::mem::take).unwrap_or_default()
    }
    /// When a finished rollout ended (done, aborted or rolled back).
    pub fn ended(&self) -> Option<Timestamp> {
        match self {
            Phase::Done { ended }
            | Phase::Aborted { ended, .. }
            | Phase::RolledBack { ended, .. } => Some(*ended),
            _ => None,
        }
    }
}

/// A [`Phase`] without its data: the names that status, the `cutover_rollout_phase` metric and
/// a recorded rollout outcome use, in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PhaseKind {
    Starting,
    Progressing,
    HandingOff,
    Paused,
    Promoted,
    Done,
    Aborted,
    RolledBack,
}

impl PhaseKind {
    /// Every phase, in the order a rollout goes through them.
    pub const ALL: [PhaseKind; 8] = [
        PhaseKind::Starting,
        PhaseKind::Progressing,
        PhaseKind::HandingOff,
        PhaseKind::Paused,
        PhaseKind::Promoted,
        PhaseKind::Done,
        PhaseKind::Aborted,
        PhaseKind::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PhaseKind::Starting => "starting",
            PhaseKind::Progressing => "progressing",
            PhaseKind::HandingOff => "handing_off",
            PhaseKind::Paused => "paused",
            PhaseKind::Promoted => "promoted",
            PhaseKind::Done => "done",
            PhaseKind::Aborted => "aborted",
            PhaseKind::RolledBack => "rolled_back",
        }
    }

    /// By its name, as [`PhaseKind::as_str`] writes it; `None` for anything else.
    pub fn from_name(name: &str) -> Option<PhaseKind> {
        PhaseKind::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// A gate that failed (or could not be judged) at a step boundary, holding the weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub since: Timestamp,
    /// Since when gates have been *failing* (not merely inconclusive); `max_hold` counts from here.
    pub failing_since: Option<Timestamp>,
    pub reason: String,
}

/// One rollout: from a stable release to a new one. What only one phase has is in its
/// [`Phase`]; what is here means something in every phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "RolloutWire", into = "RolloutWire")]
pub struct Rollout {
    pub id: u64,
    /// The stable release when the rollout began; `None` for a service's first release.
    pub from: Option<Release>,
    pub to: Release,
    pub phase: Phase,
    /// The plan fixed at deploy time, so a config change never reshapes a running rollout.
    pub plan: Vec<Step>,
    pub step: usize,
    /// The canary's current weight.
    pub weight: Weight,
    pub step_started: Timestamp,
    pub started: Timestamp,
    /// Salt for sticky assignment: fixed for the rollout (invariant 2).
    pub salt: u64,
    /// When the canary first took traffic (the fault's earliest possible onset); kept after
    /// the rollout ends, for its history.
    pub traffic_since: Option<Timestamp>,
    /// The last evaluation, kept after the rollout ends (what `status` shows).
    pub last_evaluation: Option<Evaluation>,
}

impl Rollout {
    /// When the rollout ended; `None` while it runs or holds the previous release.
    pub fn ended(&self) -> Option<Timestamp> {
        self.phase.ended()
    }
    /// The gate holding the weight, while the canary takes traffic.
    pub fn hold(&self) -> Option<&Hold> {
        self.phase.watch().and_then(|w| w.hold.as_ref())
    }
    /// The abort rules breached now, and since when (empty unless the canary takes traffic).
    pub fn breaches(&self) -> impl Iterator<Item = (&String, &Timestamp)> {
        self.phase
            .watch()
            .into_iter()
            .flat_map(|w| w.breaches.iter())
    }
}

/// [`Rollout`] as snapshots store it: the one flat form every release has written, with the
/// phase's own data beside the phase. Reading keeps what belongs to the phase the rollout is
/// in and drops the rest (a stale value another phase left, which meant nothing); writing
/// leaves a field out (or null) when the phase has none.
#[derive(Serialize, Deserialize)]
struct RolloutWire {
    id: u64,
    from: Option<Release>,
    to: Release,
    phase: PhaseWire,
    plan: Vec<Step>,
    step: usize,
    weight: Weight,
    step_started: Timestamp,
    started: Timestamp,
    ended: Option<Timestamp>,
    salt: u64,
    hold: Option<Hold>,
    breaches: BTreeMap<String, Timestamp>,
    traffic_since: Option<Timestamp>,
    last_evaluation: Option<Evaluation>,
    #[serde(default)]
    inconclusive_since: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start_timeout: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start_deadline: Option<Timestamp>,
}

/// [`Phase`] as snapshots store it: its name under `phase`, and the data that was always in it.
#[derive(Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
enum PhaseWire {
    Starting,
    Progressing,
    HandingOff {
        token: u64,
        since: Timestamp,
        deadline: Timestamp,
    },
    Paused {
        manual: bool,
        since: Timestamp,
    },
    Promoted {
        until: Timestamp,
    },
    Done,
    Aborted {
        reason: String,
        automatic: bool,
    },
    RolledBack {
        reason: String,
    },
}

impl From<RolloutWire> for Rollout {
    fn from(w: RolloutWire) -> Rollout {
        let watch = Watch {
            hold: w.hold,
            breaches: w.breaches,
            inconclusive_since: w.inconclusive_since,
        };
        // A finished rollout has always been written with its end; one without (hand-edited)
        // is taken to have ended when its last step started, the latest instant it is known
        // to have still run.
        let ended = w.ended.unwrap_or(w.step_started);
        let phase = match w.phase {
            PhaseWire::Starting => Phase::Starting {
                deadline: w.start_timeout.map(|timeout| StartDeadline {
                    timeout,
                    at: w.start_deadline.unwrap_or(w.started.plus(timeout.get())),
                }),
            },
            PhaseWire::Progressing => Phase::Progressing { watch },
            PhaseWire::HandingOff {
                token,
                since,
                deadline,
            } => Phase::HandingOff {
                token,
                since,
                deadline,
            },
            PhaseWire::Paused { manual, since } => Phase::Paused {
                manual,
                since,
                watch,
            },
            PhaseWire::Promoted { until } => Phase::Promoted { until },
            PhaseWire::Done => Phase::Done { ended },
            PhaseWire::Aborted { reason, automatic } => Phase::Aborted {
                reason,
                automatic,
                ended,
            },
            PhaseWire::RolledBack { reason } => Phase::RolledBack { reason, ended },
        };
        Rollout {
            id: w.id,
            from: w.from,
            to: w.to,
            phase,
            plan: w.plan,
            step: w.step,
            weight: w.weight,
            step_started: w.step_started,
            started: w.started,
            salt: w.salt,
            traffic_since: w.traffic_since,
            last_evaluation: w.last_evaluation,
        }
    }
}

impl From<Rollout> for RolloutWire {
    fn from(r: Rollout) -> RolloutWire {
        let ended = r.phase.ended();
        let (mut start, mut watch) = (None, Watch::default());
        let phase = match r.phase {
            Phase::Starting { deadline } => {
                start = deadline;
                PhaseWire::Starting
            }
            Phase::Progressing { watch: w } => {
                watch = w;
                PhaseWire::Progressing
            }
            Phase::HandingOff {
                token,
                since,
                deadline,
            } => PhaseWire::HandingOff {
                token,
                since,
                deadline,
            },
            Phase::Paused {
                manual,
                since,
                watch: w,
            } => {
                watch = w;
                PhaseWire::Paused { manual, since }
            }
            Phase::Promoted { until } => PhaseWire::Promoted { until },
            Phase::Done { .. } => PhaseWire::Done,
            Phase::Aborted {
                reason, automatic, ..
            } => PhaseWire::Aborted { reason, automatic },
            Phase::RolledBack { reason, .. } => PhaseWire::RolledBack { reason },
        };
        RolloutWire {
            id: r.id,
            from: r.from,
            to: r.to,
            phase,
            plan: r.plan,
            step: r.step,
            weight: r.weight,
            step_started: r.step_started,
            started: r.started,
            ended,
            salt: r.salt,
            hold: watch.hold,
            breaches: watch.breaches,
            traffic_since: r.traffic_since,
            last_evaluation: r.last_evaluation,
            inconclusive_since: watch.inconclusive_since,
            start_timeout: start.map(|d| d.timeout),
            start_deadline: start.map(|d| d.at),
        }
    }
}

/// A release that failed, refused on redeploy without `--force`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub version: String,
    pub at: Timestamp,
    pub reason: String,
}

/// What the shell saw of one instance of a release that could not start or crash-looped: the
/// facts behind the failure message. The shell gathers them; [`explain`] formats them, so the
/// text in `deploy --wait`, `status` and `history` is decided here, in one place.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceFacts {
    /// The instance id, e.g. `v3-0`.
    pub instance: String,
    /// The last readiness probe's result, e.g. `GET /ready → connect 127.0.0.1:41234:
    /// Connection refused`; `None` when no probe has completed yet.
    #[serde(default)]
    pub last_probe: Option<String>,
    /// How its last process ended, e.g. `exited with code 3`.
    #[serde(default)]
    pub last_exit: Option<String>,
    /// The last lines its current (or last) process wrote; stdout and stderr share the log.
    #[serde(default)]
    pub output_tail: Vec<String>,
    /// The instance's log file.
    #[serde(default)]
    pub log: Option<String>,
}

/// `; v3-0: last readiness probe GET /ready → …; last exit: …; last output lines: «a» «b»; log: …`
/// for each instance, or `""` when there are no facts.
pub fn explain(facts: &[InstanceFacts]) -> String {
    let mut out = String::new();
    for f in facts {
        let mut parts = Vec::new();
        if let Some(p) = &f.last_probe {
            parts.push(format!("last readiness probe {p}"));
        }
        if let Some(e) = &f.last_exit {
            parts.push(format!("last exit: {e}"));
        }
        if !f.output_tail.is_empty() {
            let lines: Vec<String> = f.output_tail.iter().map(|l| format!("«{l}»")).collect();
            parts.push(format!("last output lines: {}", lines.join(" ")));
        }
        if let Some(l) = &f.log {
            parts.push(format!("log: {l}"));
        }
        if !parts.is_empty() {
            out.push_str(&format!("; {}: {}", f.instance, parts.join("; ")));
        }
    }
    out
}

/// `numbers` of a promotion decision with the cleared failure added.
fn with_cleared(numbers: serde_json::Value, f: &Failure) -> serde_json::Value {
    let cleared = serde_json::json!({ "failed_at": f.at, "reason": f.reason });
    match numbers {
        serde_json::Value::Object(mut m) => {
            m.insert("cleared_failure".into(), cleared);
            serde_json::Value::Object(m)
        }
        serde_json::Value::Null => serde_json::json!({ "cleared_failure": cleared }),
        other => serde_json::json!({ "detail": other, "cleared_failure": cleared }),
    }
}

/// The previous release, kept running without traffic after a promotion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    pub release: Release,
    pub until: Timestamp,
}

/// Everything the engine knows; persisted as a whole before any action is carried out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub service: String,
    pub stable: Option<Release>,
    pub previous: Option<Held>,
    /// The current rollout, or the last finished one.
    pub rollout: Option<Rollout>,
    pub last_rollout_id: u64,
    /// Failed releases by digest.
    pub failed: BTreeMap<String, Failure>,
    /// Releases (by digest) whose crash loop was decided on and has not ended: a crash loop
    /// is one decision however often the shell reports it.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub crash_looping: BTreeSet<String>,
    /// `strategy = "handoff"`: who holds the active role, with which token (DESIGN.md
    /// invariant 7). Persisted before the token is given out (invariant 8), so after a crash
    /// the snapshot says who holds which token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing: Option<Fencing>,
    /// The highest fencing token ever given out (to a holder, or offered in a handoff that
    /// may have failed): the next one is always higher. 0: none yet.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last_token: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The singleton's active role: the release whose instance holds it, and its fencing token,
/// the one the proxy sends with every request to it (`X-Cutover-Fencing-Token`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fencing {
    pub holder: Release,
    pub token: u64,
}

/// What an instance is told at start under `strategy = "handoff"` (`CUTOVER_FENCING_ROLE`,
/// `CUTOVER_FENCING_TOKEN`): `active` with its own token, or a standby that must not act
/// (`token`: the current holder's, for information; 0 when there is none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub active: bool,
    pub token: u64,
}

/// What the shell tells the engine. Serializable: the shell records every event it applied, so
/// `cutover simulate` can replay a rollout through the same engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// `cutover deploy`: start a rollout of `release`. `force` deploys a failed digest again.
    /// `start_timeout` (`app.start_timeout`): how long its instances may take to become ready
    /// before the engine aborts the rollout; `None` in recordings made before the engine kept
    /// this deadline (their `start_failed` events say when it passed).
    Deploy {
        release: Release,
        force: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_timeout: Option<Dur>,
    },
    /// Every instance of the release with this digest passed its readiness probe.
    Ready { digest: String },
    /// The release could not be started (a spawn error; in older recordings also the start
    /// timeout, which the engine now keeps itself). `facts`: what the shell saw of the
    /// instances (probe results, output, log files).
    StartFailed {
        digest: String,
        reason: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        facts: Vec<InstanceFacts>,
    },
    /// An instance of the release is crash-looping. The shell may report it for as long as
    /// it lasts: the engine decides on the first report and ignores the rest until
    /// [`Event::CrashLoopEnded`].
    CrashLoop {
        digest: String,
        detail: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        facts: Vec<InstanceFacts>,
    },
    /// A measurement, taken every evaluation interval: stats cover the last `window` for
    /// stable and canary, `wider` the longer look-backs [`Engine::lookback_windows`] asked for
    /// (ascending; the shell may stop measuring once one holds `min_samples` of both
    /// versions), and `external` holds the results of the rules the shell evaluates (PromQL),
    /// by rule name. The abort rules are judged on it; the engine keeps it as the evidence its
    /// timers ([`Event::Timeout`]) decide on until the next one arrives, and runs the timers
    /// that are due. Recordings made before this event had its name call it `tick`.
    #[serde(alias = "tick")]
    Measured {
        stats: WindowStats,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        wider: Vec<Wider>,
        external: BTreeMap<String, External>,
    },
    /// The release reported by [`Event::CrashLoop`] is no longer crash-looping (its instances
    /// run again, or it was started anew): a new crash loop is decided on again.
    CrashLoopEnded { digest: String },
    /// A firing alert matched this service's `[alerts]` selector
    /// ([`crate::spec::AlertsSpec::matches`]).
    Alert {
        name: String,
        labels: BTreeMap<String, String>,
    },
    /// An operator verb.
    Command(Verb),
    /// cutover (re)started: re-issue what rebuilds the world from the persisted state.
    /// `alive` and `dead`: the instance processes a previous cutover left, as the shell found
    /// them (same pid and process start time, or gone). The engine decides what they mean:
    /// those of a release it starts again are re-adopted (alive) or replaced (dead); live ones
    /// of any other release are stopped. One `recovered` decision says so.
    Recover {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        alive: Vec<RecoveredInstance>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        dead: Vec<RecoveredInstance>,
    },
    /// The shell found that stable has no instance at all (`gone`: none running, starting or
    /// restarting; `detail` says why), or has some again. While it has none, its clients
    /// are sent to the canary: recorded as a `spilled` decision, as is the end of it.
    StableGone { gone: bool, detail: String },
    /// [`Action::Handoff`] succeeded: the new release's instance answered the handoff call
    /// with `token` (2xx in time), after the old holder's in-flight requests finished.
    HandoffDone { digest: String, token: u64 },
    /// [`Action::Handoff`] failed: the old holder's requests did not finish in time, or the
    /// handoff call errored or timed out (`reason`). The old holder keeps the role.
    HandoffFailed {
        digest: String,
        token: u64,
        reason: String,
    },
    /// The instant [`Engine::poll_timeout`] asked for has come (or passed): the start
    /// deadline, step ends, `hold_previous` expiry, abort rules' `for` windows, `max_hold`,
    /// `max_inconclusive`. The timers decide on the last [`Event::Measured`]; a timeout that
    /// finds nothing due changes nothing. `facts`: while a release is starting, what the shell
    /// sees of its instances that are not ready, so a start that times out is explained.
    Timeout {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        facts: Vec<InstanceFacts>,
    },
    /// The shell's retention (`[state] retention`, docs/audit.md "Retention"): failure marks
    /// set before `before` expire, so a release that failed that long ago may be deployed again
    /// without `--force` (and is judged by the canary analysis like any other). The mark of
    /// the current (or last) rollout's release is kept whatever its age: it is what `status`
    /// shows. Each expired mark is a `failure_expired` decision; the release's crash loop, if
    /// one was recorded and nothing runs it any more, is forgotten with it.
    ExpireFailures { before: Timestamp },
}

/// An instance process a previous cutover left, as [`Event::Recover`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveredInstance {
    /// `<version>-<index>`.
    pub instance: String,
    /// The release digest it runs.
    pub digest: String,
    pub pid: u32,
}

/// The manual verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verb {
    Pause,
    Resume,
    Promote,
    Abort,
    Rollback,
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verb::Pause => "pause",
            Verb::Resume => "resume",
            Verb::Promote => "promote",
            Verb::Abort => "abort",
            Verb::Rollback => "rollback",
        })
    }
}

/// What the engine asks the shell to do, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Start the release's instances (idempotent: a running release is left alone).
    /// `role`: under `strategy = "handoff"`, what its instance is told at start.
    Start {
        release: Release,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<Role>,
    },
    /// Atomically replace the route table: `canary` gets `weight`, `stable` the rest.
    /// `fencing`: the holder's token, sent with every request to stable (handoff only).
    Route {
        stable: Release,
        canary: Option<Release>,
        weight: Weight,
        salt: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fencing: Option<u64>,
    },
    /// Move the active role from `from` to `to` with `token`: hold new requests in the proxy
    /// (bounded), wait until `from`'s in-flight requests finish, then call the handoff path on
    /// `to`. The result comes back as [`Event::HandoffDone`] or [`Event::HandoffFailed`]; the
    /// route switch that releases the held requests is the engine's next `Route`.
    Handoff {
        from: Release,
        to: Release,
        token: u64,
    },
    /// Tell the holder its new token after a failed handoff (the handoff call with `token`);
    /// best effort: the proxy sends the token with every request to it anyway.
    Reclaim { release: Release, token: u64 },
    /// Take the release out of service: drain, signal, grace, SIGKILL. Always after a `Route`
    /// that no longer sends it traffic.
    Stop { release: Release, reason: String },
}

/// A recorded decision: what happened, why, and the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub at: Timestamp,
    pub rollout: Option<u64>,
    pub kind: DecisionKind,
    pub reason: String,
    pub numbers: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    Deploy,
    Ready,
    Advance,
    Hold,
    Paused,
    Resumed,
    Promoted,
    Aborted,
    RolledBack,
    PreviousReleased,
    BreachStarted,
    BreachCleared,
    CrashLoop,
    Recovered,
    /// Stable has no instance left at all, so its clients go to the canary (or it has
    /// instances again, and the canary is back to its weight): the one time a canary gets
    /// more than its weight (DESIGN.md invariant 10).
    Spilled,
    /// A release's failure mark is older than the retention and no longer refuses a deploy
    /// ([`Event::ExpireFailures`]).
    FailureExpired,
    /// `strategy = "handoff"`: the new release is ready and the role moves to it with a new
    /// fencing token (recorded before the token is given out).
    Handoff,
}

impl DecisionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Deploy => "deploy",
            DecisionKind::Ready => "ready",
            DecisionKind::Advance => "advance",
            DecisionKind::Hold => "hold",
            DecisionKind::Paused => "paused",
            DecisionKind::Resumed => "resumed",
            DecisionKind::Promoted => "promoted",
            DecisionKind::Aborted => "aborted",
            DecisionKind::RolledBack => "rolled_back",
            DecisionKind::PreviousReleased => "previous_released",
            DecisionKind::BreachStarted => "breach_started",
            DecisionKind::BreachCleared => "breach_cleared",
            DecisionKind::CrashLoop => "crash_loop",
            DecisionKind::Recovered => "recovered",
            DecisionKind::Spilled => "spilled",
            DecisionKind::FailureExpired => "failure_expired",
            DecisionKind::Handoff => "handoff",
        }
    }

    /// The notification this decision sends, if any: breaches opening and clearing, and
    /// recovery after a restart of cutover, are for the audit log only.
    pub fn notify_kind(self) -> Option<crate::spec::NotifyKind> {
        use crate::spec::NotifyKind;
        Some(match self {
            DecisionKind::Deploy => NotifyKind::Started,
            DecisionKind::Ready | DecisionKind::Advance | DecisionKind::Handoff => NotifyKind::Step,
            DecisionKind::Hold => NotifyKind::Held,
            DecisionKind::Paused => NotifyKind::Paused,
            DecisionKind::Resumed => NotifyKind::Resumed,
            DecisionKind::Promoted => NotifyKind::Promoted,
            DecisionKind::Aborted => NotifyKind::Aborted,
            DecisionKind::RolledBack => NotifyKind::RolledBack,
            DecisionKind::PreviousReleased => NotifyKind::PreviousReleased,
            DecisionKind::CrashLoop => NotifyKind::CrashLoop,
            DecisionKind::BreachStarted
            | DecisionKind::BreachCleared
            | DecisionKind::Recovered
            | DecisionKind::Spilled
            | DecisionKind::FailureExpired => return None,
        })
    }
}

/// A summary of one track in an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackSummary {
    pub requests: u64,
    pub errors: u64,
    pub error_ratio: Option<f64>,
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
}

impl From<&TrackStats> for TrackSummary {
    fn from(t: &TrackStats) -> Self {
        TrackSummary {
            requests: t.requests,
            errors: t.errors,
            error_ratio: t.error_ratio(),
            p50_seconds: t.latency_quantile_secs(0.5),
            p99_seconds: t.latency_quantile_secs(0.99),
        }
    }
}

/// The last evaluation of a rollout: what `status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub at: Timestamp,
    pub stable: TrackSummary,
    pub canary: TrackSummary,
    /// Gate verdicts from the last step-boundary check (empty before the first boundary).
    pub gates: Vec<Verdict>,
    pub aborts: Vec<Verdict>,
}

/// A command the engine refused; nothing changed. Each refusal conflicts with the current
/// state (the admin API answers 409 with the message), and the message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// A deploy while another rollout is starting, progressing or paused.
    #[error(
        "rollout {id} of {release} is {phase}; wait for it to finish, or `cutover abort` it first"
    )]
    RolloutInProgress {
        id: u64,
        /// [`Release::label`] of the rollout's new release.
        release: String,
        phase: &'static str,
    },
    /// A deploy of the release that is already stable.
    #[error("{release} is already the stable release; nothing to deploy")]
    AlreadyStable { release: String },
    /// The release failed before and `--force` was not given.
    #[error("release {release} failed at {at}: {reason}; fix the release (a changed program, script, app.digest_paths file or setting gives a new digest) or pass --force to deploy it anyway")]
    FailedRelease {
        release: String,
        /// RFC 3339.
        at: String,
        reason: String,
    },
    /// A verb with no rollout at all.
    #[error("no rollout is in progress; nothing to {verb}")]
    NoRollout { verb: Verb },
    /// A verb after the last rollout ended (`phase`: the phase it ended in).
    #[error(
        "the last rollout is {phase}; no rollout is in progress, so there is nothing to {verb}"
    )]
    Finished { phase: &'static str, verb: Verb },
    /// `pause` while paused.
    #[error("the rollout is already paused; `cutover resume` continues it")]
    AlreadyPaused,
    /// `pause` while the canary starts.
    #[error("the canary is still starting and takes no traffic yet; pause once it does, or `cutover abort`")]
    PauseWhileStarting,
    /// `resume` while progressing.
    #[error("the rollout is not paused; nothing to resume")]
    NotPaused,
    /// `pause`, `resume` or `promote` while the role moves (`strategy = "handoff"`).
    #[error("the active role is moving to the new release with fencing token {token} (for at most rollout.handoff.drain_timeout + timeout); wait for it, or `cutover abort` to leave the role with the old holder")]
    HandingOff { token: u64 },
    /// `promote` while the canary starts.
    #[error("the canary is still starting; it can be promoted once it is ready and takes traffic")]
    PromoteWhileStarting,
    /// `abort` after a promotion (inside `hold_previous`).
    #[error("the rollout was already promoted; use `cutover rollback` to return to the previous release")]
    AlreadyPromoted,
    /// A deploy under a version name whose processes are still running as another build.
    #[error("version name {version} is already running (as the stable, held or a draining release); give the new build its own version name, e.g. {version}.1")]
    VersionInUse { version: String },
    /// `rollback` after `hold_previous` stopped the previous release.
    #[error("the previous release {previous} is no longer running (hold_previous {hold} has passed); deploy it again with `cutover deploy {previous}`")]
    PreviousGone { previous: String, hold: Dur },
    /// `rollback` to a held release whose instances are not ready (right after cutover
    /// restarted, say): switching would send requests to nothing that answers.
    #[error("the previous release {previous} is not ready ({ready} of {instances} instances ready after waiting {waited}); nothing was switched: retry `cutover rollback` once `cutover status` shows its instances ready")]
    PreviousNotReady {
        previous: String,
        ready: usize,
        instances: usize,
        waited: Dur,
    },
}

/// The engine's answer to one event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub actions: Vec<Action>,
    pub decisions: Vec<Decision>,
}

/// The evidence the timers decide on: the last [`Event::Measured`] of a rollout.
#[derive(Debug, Clone, PartialEq)]
struct Measurement {
    rollout: u64,
    at: Timestamp,
    stats: WindowStats,
    wider: Vec<Wider>,
    external: BTreeMap<String, External>,
}

/// One service's rollout engine.
#[derive(Debug, Clone)]
pub struct Engine {
    spec: RolloutSpec,
    state: State,
    /// Not persisted: after a restart the timers wait for the first measurement, as a
    /// rollout is never judged on evidence from before the restart.
    measured: Option<Measurement>,
    /// Releases that had an instance process started when cutover last recovered (a dead
    /// one replaced, or none to re-adopt): a rollback to one of them is not "with no process
    /// start". In memory only: it describes this run of cutover.
    started_at_recovery: std::collections::BTreeSet<String>,
}

impl Engine {
    /// A fresh engine for a service with no history.
    pub fn new(service: impl Into<String>, spec: RolloutSpec) -> Self {
        Engine {
            spec,
            state: State {
                service: service.into(),
                ..State::default()
            },
            measured: None,
            started_at_recovery: Default::default(),
        }
    }

    /// An engine resumed from persisted state (the spec may have changed; a running rollout
    /// keeps its plan).
    pub fn restore(spec: RolloutSpec, state: State) -> Self {
        Engine {
            spec,
            state,
            measured: None,
            started_at_recovery: Default::default(),
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn spec(&self) -> &RolloutSpec {
        &self.spec
    }

    /// One process set per version name: refuses to deploy `release` under a name that the
    /// stable or held release has, or that still runs (`running`: the version names the shell
    /// has processes for, e.g. a release still draining) — unless it *is* the stable release,
    /// which [`Event::Deploy`] refuses with its own reason.
    pub fn check_version_free(
        &self,
        release: &Release,
        running: &[String],
    ) -> Result<(), EngineError> {
        let st = &self.state;
        let is_stable_name = st
            .stable
            .as_ref()
            .is_some_and(|s| s.version == release.version);
        let busy = [st.stable.as_ref(), st.previous.as_ref().map(|h| &h.release)]
            .into_iter()
            .flatten()
            .any(|r| r.version == release.version)
            || running.contains(&release.version) && !is_stable_name;
        let is_stable = st
            .stable
            .as_ref()
            .is_some_and(|s| s.digest == release.digest);
        if busy && !is_stable {
            return Err(EngineError::VersionInUse {
                version: release.version.clone(),
            });
        }
        Ok(())
    }

    /// Whether a crash loop of this release was decided on and has not ended (the shell need
    /// not gather facts for a report the engine would ignore).
    pub fn crash_looping(&self, digest: &str) -> bool {
        self.state.crash_looping.contains(digest)
    }

    /// The rollout in progress, if any.
    pub fn active(&self) -> Option<&Rollout> {
        self.state.rollout.as_ref().filter(|r| r.phase.is_active())
    }

    /// The canary release that should be measured, and since when it has had traffic.
    pub fn canary(&self) -> Option<&Release> {
        self.active()
            .filter(|r| !matches!(r.phase.kind(), PhaseKind::Starting | PhaseKind::HandingOff))
            .map(|r| &r.to)
    }

    /// When the rollout is expected to reach 100 %, if it is progressing on timed steps.
    pub fn eta(&self, now: Timestamp) -> Option<Timestamp> {
        let r = self.active()?;
        if r.phase.kind() != PhaseKind::Progressing {
            return None;
        }
        let mut t = r.step_started;
        for (i, s) in r.plan.iter().enumerate().skip(r.step) {
            match s.hold {
                StepHold::For(d) => t = t.plus(d.get()),
                StepHold::UntilPromoted => return None,
            }
            if i == r.step && t < now {
                t = now; // a held step ends no earlier than now
            }
        }
        Some(t)
    }

    /// The look-backs longer than `window` the next `Measured` should carry (see
    /// [`crate::lookback`]), ascending: the ladder up to `max_lookback`, no further back than
    /// the canary's first traffic (abort rules) and, ending exactly there, the start of the
    /// current step (gates). Empty when nothing is being judged.
    pub fn lookback_windows(&self, now: Timestamp) -> Vec<Dur> {
        let Some(r) = self.judged() else {
            return Vec::new();
        };
        let (w, max) = (self.spec.window, self.spec.max_lookback);
        let mut all = lookback::ladder(w, max, now.since(r.traffic_since.unwrap_or(r.started)));
        if r.phase.kind() == PhaseKind::Progressing {
            all.extend(lookback::ladder(w, max, now.since(r.step_started)));
        }
        all.sort();
        all.dedup();
        all
    }

    /// The rollout whose canary is being judged: progressing or paused.
    fn judged(&self) -> Option<&Rollout> {
        self.state
            .rollout
            .as_ref()
            .filter(|r| r.phase.watch().is_some())
    }

    /// `judge` on the window, then — while it is inconclusive and the rule is a built-in one —
    /// on each longer look-back that reaches no further back than `reach`. The first
    /// conclusive verdict wins; otherwise the one over the longest look-back, which says how
    /// few samples even that had. Invariant 11: low traffic leads to a verdict by looking
    /// further back, never by guessing.
    fn judge_wide(
        base: &WindowStats,
        wider: &[Wider],
        reach: std::time::Duration,
        builtin: bool,
        judge: impl Fn(&WindowStats) -> Verdict,
    ) -> Verdict {
        let mut v = judge(base);
        if !builtin {
            return v;
        }
        for w in wider.iter().filter(|w| w.window.get() <= reach) {
            if v.outcome != RuleOutcome::Inconclusive {
                break;
            }
            v = judge(&w.stats);
            v.window = Some(w.window);
            v.detail = format!("{} (over the last {})", v.detail, w.window);
        }
        v
    }

    /// Handles one event at `now`. On `Err`, the state is unchanged.
    pub fn handle(&mut self, now: Timestamp, event: Event) -> Result<Outcome, EngineError> {
        let mut out = self.handle_unfenced(now, event)?;
        self.fence(&mut out);
        Ok(out)
    }

    fn handle_unfenced(&mut self, now: Timestamp, event: Event) -> Result<Outcome, EngineError> {
        let mut out = Outcome::default();
        match event {
            Event::HandoffDone { digest, token } => {
                if self.handing_off(&digest, token) {
                    self.handed_over(now, &mut out);
                }
            }
            Event::HandoffFailed {
                digest,
                token,
                reason,
            } => {
                if self.handing_off(&digest, token) {
                    self.handoff_failed(now, reason, true, &mut out);
                }
            }
            Event::Deploy {
                release,
                force,
                start_timeout,
            } => self.deploy(now, release, force, start_timeout, &mut out)?,
            Event::Ready { digest } => self.ready(now, &digest, &mut out),
            Event::StartFailed {
                digest,
                reason,
                facts,
            } => {
                if self
                    .active()
                    .is_some_and(|r| r.to.digest == digest && r.phase.kind() == PhaseKind::Starting)
                {
                    self.start_failed(now, &reason, facts, &mut out);
                }
            }
            Event::CrashLoop {
                digest,
                detail,
                facts,
            } => {
                if self.state.crash_looping.insert(digest.clone()) {
                    let detail = format!("{detail}{}", explain(&facts));
                    self.crash_loop(now, &digest, detail, &mut out)
                }
            }
            Event::CrashLoopEnded { digest } => {
                self.state.crash_looping.remove(&digest);
            }
            Event::Measured {
                stats,
                wider,
                external,
            } => {
                self.expire_previous(now, &mut out);
                self.measure(now, stats, wider, external, &mut out);
                self.due(now, &mut out);
            }
            Event::Timeout { facts } => {
                let timed_out = match self.active().map(|r| &r.phase) {
                    Some(Phase::Starting { deadline: Some(d) }) if d.at <= now => Some(d.timeout),
                    _ => None,
                };
                if let Some(timeout) = timed_out {
                    let reason = format!("not ready within app.start_timeout ({timeout})");
                    self.start_failed(now, &reason, facts, &mut out);
                }
                if let Some(Phase::HandingOff {
                    since, deadline, ..
                }) = self.active().map(|r| r.phase.clone())
                {
                    if deadline <= now {
                        let reason = format!(
                            "no result of the handoff within {} of its start",
                            Dur(deadline.since(since))
                        );
                        self.handoff_failed(now, reason, true, &mut out);
                    }
                }
                self.expire_previous(now, &mut out);
                self.due(now, &mut out);
            }
            Event::Alert { name, labels } => {
                if self.active().is_some() {
                    let shown: Vec<String> =
                        labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
                    let reason = format!("alert {name} is firing {{{}}}", shown.join(", "));
                    self.abort(
                        now,
                        reason,
                        true,
                        serde_json::json!({ "alert": name, "labels": labels }),
                        &mut out,
                    );
                }
            }
            Event::Command(verb) => self.command(now, verb, &mut out)?,
            Event::Recover { alive, dead } => self.recover(now, alive, dead, &mut out),
            Event::ExpireFailures { before } => self.expire_failures(now, before, &mut out),
            Event::StableGone { gone, detail } => {
                let stable = self
                    .state
                    .stable
                    .as_ref()
                    .map_or("-".into(), Release::label);
                let canary = self.active().map(|r| (r.to.label(), r.weight));
                let reason = match (gone, canary) {
                    (true, Some((c, _))) => format!(
                        "stable {stable} has no instance left at all ({detail}): all its clients go to the canary {c} until it has one again"
                    ),
                    (false, Some((c, w))) => format!(
                        "stable {stable} has instances again: the canary {c} is back to its weight {w}"
                    ),
                    (true, None) => format!("stable {stable} has no instance left at all ({detail})"),
                    (false, None) => format!("stable {stable} has instances again"),
                };
                self.decide(
                    &mut out,
                    now,
                    DecisionKind::Spilled,
                    reason,
                    serde_json::json!({ "stable_gone": gone }),
                );
            }
        }
        Ok(out)
    }

    /// The next fencing token: higher than every one given out before, across handoffs,
    /// failures and restarts (it is in the snapshot, committed before any action).
    fn grant(&mut self) -> u64 {
        let floor = self.state.fencing.as_ref().map_or(0, |f| f.token);
        self.state.last_token = self.state.last_token.max(floor) + 1;
        self.state.last_token
    }

    /// Under `strategy = "handoff"`, what the actions need of the role once the event is
    /// handled: each `Start` says whether its instance is the holder (and its token) or a
    /// standby, and a `Route` to the holder alone carries its token for the proxy to send.
    fn fence(&self, out: &mut Outcome) {
        if self.spec.strategy != Strategy::Handoff {
            return;
        }
        let fencing = self.state.fencing.as_ref();
        for a in &mut out.actions {
            match a {
                Action::Start { release, role } => {
                    *role = Some(match fencing {
                        Some(f) if f.holder.digest == release.digest => Role {
                            active: true,
                            token: f.token,
                        },
                        f => Role {
                            active: false,
                            token: f.map_or(0, |f| f.token),
                        },
                    });
                }
                Action::Route {
                    stable,
                    canary: None,
                    fencing: token,
                    ..
                } => {
                    *token = fencing
                        .filter(|f| f.holder.digest == stable.digest)
                        .map(|f| f.token);
                }
                _ => {}
            }
        }
    }

    /// Whether the rollout is handing the role to the release `digest` with `token`: a
    /// result for anything else (a handoff given up already) changes nothing.
    fn handing_off(&self, digest: &str, token: u64) -> bool {
        self.active().is_some_and(|r| {
            r.to.digest == digest
                && matches!(r.phase, Phase::HandingOff { token: t, .. } if t == token)
        })
    }

    /// The new singleton release is ready: the role moves to it with a new token, given out
    /// (and persisted) before the shell holds requests and calls it.
    fn start_handoff(&mut self, now: Timestamp, from: Release, to: Release, out: &mut Outcome) {
        let token = self.grant();
        let bound = self.spec.handoff.bound();
        let held = self.state.fencing.as_ref().map(|f| f.token);
        let Some(r) = self.state.rollout.as_mut() else {
            return;
        };
        // A backstop for a result that never comes: the shell's own steps take at most
        // `bound`; twice that leaves room for a slow host.
        r.phase = Phase::HandingOff {
            token,
            since: now,
            deadline: now.plus(bound.get() * 2),
        };
        out.actions.push(Action::Handoff {
            from: from.clone(),
            to: to.clone(),
            token,
        });
        let old = held.map_or(String::new(), |t| format!(" (token {t})"));
        self.decide(
            out,
            now,
            DecisionKind::Handoff,
            format!(
                "{} is ready: handing the active role over from {}{old} with fencing token {token}; new requests are held while {}'s in-flight requests finish",
                to.label(),
                from.label(),
                from.version
            ),
            serde_json::json!({ "token": token, "from_token": held, "bound_ms": bound.get().as_millis() as u64 }),
        );
    }

    /// The new release took the role: it is the holder and stable; the held requests go to
    /// it (one route switch), then the old holder is drained and stopped.
    fn handed_over(&mut self, now: Timestamp, out: &mut Outcome) {
        let Some(r) = self.state.rollout.as_mut() else {
            return;
        };
        let Phase::HandingOff { token, since, .. } = r.phase else {
            return;
        };
        let to = r.to.clone();
        let from = r.from.clone();
        r.phase = Phase::Done { ended: now };
        r.weight = Weight::FULL;
        out.actions.push(Action::Route {
            stable: to.clone(),
            canary: None,
            weight: Weight::ZERO,
            salt: r.salt,
            fencing: None,
        });
        let from_token = self.state.fencing.as_ref().map(|f| f.token);
        self.state.fencing = Some(Fencing {
            holder: to.clone(),
            token,
        });
        self.state.stable = Some(to.clone());
        let mut stopped = String::new();
        if let Some(from) = from {
            stopped = format!("; {} is drained and stopped", from.label());
            out.actions.push(Action::Stop {
                release: from,
                reason: "handed the active role over".into(),
            });
        }
        let mut numbers = serde_json::json!({
            "token": token,
            "from_token": from_token,
            "took_ms": now.since(since).as_millis() as u64,
        });
        let cleared = match self.clear_failure(&to) {
            Some((text, f)) => {
                numbers = with_cleared(numbers, &f);
                text
            }
            None => String::new(),
        };
        self.decide(
            out,
            now,
            DecisionKind::Promoted,
            format!(
                "{} holds the active role with fencing token {token} (handed over in {}){stopped}{cleared}",
                to.label(),
                Dur(now.since(since))
            ),
            numbers,
        );
    }

    /// The handoff failed (or was aborted, or cutover restarted in the middle of it): the old
    /// holder keeps the role with a new, higher token, so that whatever the new release may
    /// have done with the offered one is fenced; the held requests go back to it; the new
    /// release is stopped (and marked failed when `automatic`).
    fn handoff_failed(
        &mut self,
        now: Timestamp,
        reason: String,
        automatic: bool,
        out: &mut Outcome,
    ) {
        let Some(r) = self.active() else {
            return;
        };
        let Phase::HandingOff { token: offered, .. } = r.phase else {
            return;
        };
        let Some(from) = r.from.clone() else {
            return;
        };
        let token = self.grant();
        self.state.fencing = Some(Fencing {
            holder: from.clone(),
            token,
        });
        let why = format!(
            "handoff failed: {reason}; {} keeps the active role with a new fencing token {token} (token {offered}, offered to the new release, is fenced)",
            from.label()
        );
        self.abort(
            now,
            why,
            automatic,
            serde_json::json!({ "token": token, "offered_token": offered, "cause": reason }),
            out,
        );
        out.actions.push(Action::Reclaim {
            release: from,
            token,
        });
    }

    fn decide(
        &self,
        out: &mut Outcome,
        now: Timestamp,
        kind: DecisionKind,
        reason: String,
        numbers: serde_json::Value,
    ) {
        let rollout = self.state.rollout.as_ref().map(|r| r.id);
        out.decisions.push(Decision {
            at: now,
            rollout,
            kind,
            reason,
            numbers,
        });
    }

    /// The starting release could not start (`reason`): the rollout aborts, explained by
    /// what the shell saw of its instances.
    fn start_failed(
        &mut self,
        now: Timestamp,
        reason: &str,
        facts: Vec<InstanceFacts>,
        out: &mut Outcome,
    ) {
        let Some(r) = self.active() else {
            return;
        };
        let what = if r.from.is_some() {
            "canary"
        } else {
            "first release"
        };
        let why = format!(
            "{what} {} could not start: {reason}{}",
            r.to.version,
            explain(&facts)
        );
        let numbers = serde_json::json!({ "facts": facts });
        self.abort(now, why, true, numbers, out);
    }

    fn deploy(
        &mut self,
        now: Timestamp,
        release: Release,
        force: bool,
        start_timeout: Option<Dur>,
        out: &mut Outcome,
    ) -> Result<(), EngineError> {
        if let Some(r) = self.active() {
            return Err(EngineError::RolloutInProgress {
                id: r.id,
                release: r.to.label(),
                phase: r.phase.name(),
            });
        }
        if let Some(stable) = &self.state.stable {
            if stable.digest == release.digest {
                return Err(EngineError::AlreadyStable {
                    release: release.label(),
                });
            }
        }
        if let Some(f) = self.state.failed.get(&release.digest) {
            if !force {
                return Err(EngineError::FailedRelease {
                    release: release.label(),
                    at: f.at.rfc3339(),
                    reason: f.reason.clone(),
                });
            }
        }
        // A new rollout ends the hold of the previous release: only one fallback is kept.
        if let Some(held) = self.state.previous.clone() {
            let why = format!(
                "stopped {}, held since the last promotion, because a new rollout started",
                held.release.label()
            );
            self.release_previous(now, "a new rollout started", why, out);
        }
        let id = self.state.last_rollout_id + 1;
        self.state.last_rollout_id = id;
        let salt = xxhash_rust::xxh3::xxh3_64_with_seed(self.state.service.as_bytes(), id);
        let plan = Step::plan(&self.spec);
        let from = self.state.stable.clone();
        self.state.rollout = Some(Rollout {
            id,
            from: from.clone(),
            to: release.clone(),
            phase: Phase::Starting {
                deadline: start_timeout.map(|timeout| StartDeadline {
                    timeout,
                    at: now.plus(timeout.get()),
                }),
            },
            weight: Weight::ZERO,
            step: 0,
            step_started: now,
            started: now,
            salt,
            traffic_since: None,
            last_evaluation: None,
            plan: plan.clone(),
        });
        // A first singleton release takes the role at start: nobody else holds it. Granted
        // here, before the start, so the snapshot has it first (invariant 8).
        let mut granted = None;
        let mut adopted = None;
        if self.spec.strategy == Strategy::Handoff {
            match &from {
                None => {
                    let token = self.grant();
                    self.state.fencing = Some(Fencing {
                        holder: release.clone(),
                        token,
                    });
                    granted = Some(token);
                }
                // A service that became a singleton with a stable release already running:
                // that release holds the role from now, with a token of its own, so the one
                // the handoff gives out fences it.
                Some(stable) if self.state.fencing.is_none() => {
                    let token = self.grant();
                    self.state.fencing = Some(Fencing {
                        holder: stable.clone(),
                        token,
                    });
                    out.actions.push(Action::Route {
                        stable: stable.clone(),
                        canary: None,
                        weight: Weight::ZERO,
                        salt,
                        fencing: None,
                    });
                    out.actions.push(Action::Reclaim {
                        release: stable.clone(),
                        token,
                    });
                    adopted = Some(token);
                }
                Some(_) => {}
            }
        }
        out.actions.push(Action::Start {
            release: release.clone(),
            role: None,
        });
        let reason = match &from {
            Some(s) => format!(
                "rollout {id}: {} → {}{}",
                s.label(),
                release.label(),
                if force && self.state.failed.contains_key(&release.digest) {
                    " (forced over an earlier failure)"
                } else {
                    ""
                }
            ),
            None => format!(
                "rollout {id}: first release {} (no stable yet: it takes all traffic once ready)",
                release.label()
            ),
        };
        let weights: Vec<String> = plan.iter().map(|s| s.weight.to_string()).collect();
        let (reason, numbers) = match (self.spec.strategy, granted) {
            (Strategy::Handoff, Some(token)) => (
                format!(
                    "{reason}; it holds the singleton's active role with fencing token {token}"
                ),
                serde_json::json!({ "strategy": "handoff", "token": token, "force": force }),
            ),
            (Strategy::Handoff, None) => {
                let held = match (&from, adopted) {
                    (Some(s), Some(t)) => format!(
                        "; {} had no fencing token (the service was not a singleton before) and holds the role with token {t} from now",
                        s.label()
                    ),
                    _ => String::new(),
                };
                (
                    format!(
                        "{reason}; it starts as a standby: the active role moves to it once it is ready{held}"
                    ),
                    serde_json::json!({ "strategy": "handoff", "token": adopted, "force": force }),
                )
            }
            (Strategy::Canary, _) => (
                reason,
                serde_json::json!({ "plan": weights, "force": force }),
            ),
        };
        self.decide(out, now, DecisionKind::Deploy, reason, numbers);
        Ok(())
    }

    fn ready(&mut self, now: Timestamp, digest: &str, out: &mut Outcome) {
        let Some(r) = self.state.rollout.as_mut() else {
            return;
        };
        if r.phase.kind() != PhaseKind::Starting || r.to.digest != digest {
            return;
        }
        let to = r.to.clone();
        if self.spec.strategy == Strategy::Handoff {
            if let Some(from) = r.from.clone() {
                self.start_handoff(now, from, to, out);
                return;
            }
        }
        match r.from.clone() {
            None => {
                r.phase = Phase::Done { ended: now };
                r.weight = Weight::FULL;
                let salt = r.salt;
                self.state.stable = Some(to.clone());
                out.actions.push(Action::Route {
                    stable: to.clone(),
                    canary: None,
                    weight: Weight::ZERO,
                    salt,
                    fencing: None,
                });
                let (cleared, numbers) = match self.clear_failure(&to) {
                    Some((text, f)) => (text, with_cleared(serde_json::Value::Null, &f)),
                    None => (String::new(), serde_json::Value::Null),
                };
                self.decide(
                    out,
                    now,
                    DecisionKind::Promoted,
                    format!(
                        "{} is ready and serves 100 % as the first release{cleared}",
                        to.label()
                    ),
                    numbers,
                );
            }
            Some(from) => {
                let Some(first) = r.plan.first().cloned() else {
                    // An empty plan (only possible with steps that jump straight to 100 %).
                    self.promote(
                        now,
                        "the plan goes straight to 100 %".into(),
                        serde_json::Value::Null,
                        out,
                    );
                    return;
                };
                r.step = 0;
                r.weight = first.weight;
                r.step_started = now;
                r.traffic_since = Some(now);
                let watch = Watch::default();
                if first.hold == StepHold::UntilPromoted {
                    r.phase = Phase::Paused {
                        manual: false,
                        since: now,
                        watch,
                    };
                } else {
                    r.phase = Phase::Progressing { watch };
                }
                let salt = r.salt;
                out.actions.push(Action::Route {
                    stable: from.clone(),
                    canary: Some(to.clone()),
                    weight: first.weight,
                    salt,
                    fencing: None,
                });
                self.decide(
                    out,
                    now,
                    DecisionKind::Ready,
                    format!(
                        "canary {} is ready; it now takes {} of traffic",
                        to.label(),
                        first.weight
                    ),
                    serde_json::json!({ "weight_bp": first.weight.bp() }),
                );
            }
        }
    }

    fn crash_loop(&mut self, now: Timestamp, digest: &str, detail: String, out: &mut Outcome) {
        if let Some(r) = self.active().filter(|r| r.to.digest == digest) {
            let what = if r.from.is_some() {
                "canary"
            } else {
                "first release"
            };
            self.abort(
                now,
                format!("{what} is crash-looping: {detail}"),
                true,
                serde_json::json!({ "detail": detail }),
                out,
            );
        } else {
            let who = match &self.state.stable {
                Some(s) if s.digest == digest => format!("stable {}", s.label()),
                _ => format!("release {digest}"),
            };
            self.decide(
                out,
                now,
                DecisionKind::CrashLoop,
                format!("{who} is crash-looping: {detail}; it keeps being restarted"),
                serde_json::Value::Null,
            );
        }
    }

    /// Failure marks set before `before` expire, but the current (or last) rollout's.
    fn expire_failures(&mut self, now: Timestamp, before: Timestamp, out: &mut Outcome) {
        let last = self.state.rollout.as_ref().map(|r| r.to.digest.clone());
        let expired: Vec<String> = self
            .state
            .failed
            .iter()
            .filter(|(digest, f)| f.at < before && last.as_ref() != Some(*digest))
            .map(|(digest, _)| digest.clone())
            .collect();
        for digest in expired {
            let Some(f) = self.state.failed.remove(&digest) else {
                continue;
            };
            // A crash loop is forgotten with the mark when nothing runs the release any more:
            // the shell reports its end only while it has instances, so the entry of a stopped
            // release would stay forever (and a new start of it is judged afresh anyway).
            let used = self.state.stable.iter().any(|r| r.digest == digest)
                || self
                    .state
                    .previous
                    .iter()
                    .any(|p| p.release.digest == digest)
                || self
                    .state
                    .rollout
                    .iter()
                    .any(|r| r.from.as_ref().is_some_and(|f| f.digest == digest));
            if !used {
                self.state.crash_looping.remove(&digest);
            }
            // Not the current rollout's decision: the mark belongs to whichever rollout failed.
            out.decisions.push(Decision {
                at: now,
                rollout: None,
                kind: DecisionKind::FailureExpired,
                reason: format!(
                    "release {} ({digest}) failed at {} ({}), longer ago than the retention: \
                     the mark has expired and it may be deployed again without --force",
                    f.version,
                    f.at.rfc3339(),
                    f.reason
                ),
                numbers: serde_json::json!({
                    "digest": digest, "version": f.version, "failed_at": f.at,
                    "reason": f.reason, "before": before,
                }),
            });
        }
    }

    /// The previous release's hold ends on its own clock, whatever else is going on.
    fn expire_previous(&mut self, now: Timestamp, out: &mut Outcome) {
        if let Some(held) = self.state.previous.clone() {
            if now >= held.until {
                let why = format!(
                    "hold_previous ({}) expired: stopping {}; rollback is no longer instant",
                    self.spec.hold_previous,
                    held.release.label()
                );
                self.release_previous(now, "hold_previous expired", why, out);
            }
        }
    }

    /// Judges the abort rules on a new measurement and keeps it as the timers' evidence.
    /// Only evidence moves a breach (invariant 11): a failing verdict starts it, a passing one
    /// clears it, and an inconclusive one does neither — it neither aborts on noise nor
    /// forgets a breach because the canary's traffic thinned out.
    fn measure(
        &mut self,
        now: Timestamp,
        stats: WindowStats,
        wider: Vec<Wider>,
        external: BTreeMap<String, External>,
        out: &mut Outcome,
    ) {
        let Some(r) = self.judged() else {
            return;
        };
        let min = self.spec.min_samples;
        // Abort rules may use every request of the canary since it first took traffic.
        let reach = now.since(r.traffic_since.unwrap_or(r.started));
        let aborts: Vec<Verdict> = self
            .spec
            .aborts
            .iter()
            .map(|a| {
                let builtin = !matches!(a, AbortSpec::Promql { .. });
                Self::judge_wide(&stats, &wider, reach, builtin, |s| {
                    judge::judge_abort(a, s, min, &external)
                })
            })
            .collect();
        let evaluation = Evaluation {
            at: now,
            stable: TrackSummary::from(&stats.stable),
            canary: TrackSummary::from(&stats.canary),
            gates: r
                .last_evaluation
                .as_ref()
                .map(|e| e.gates.clone())
                .unwrap_or_default(),
            aborts: aborts.clone(),
        };
        let id = r.id;
        let mut breaches = r
            .phase
            .watch()
            .map(|w| w.breaches.clone())
            .unwrap_or_default();
        for (rule, v) in self.spec.aborts.iter().zip(&aborts) {
            let name = rule.name().to_string();
            if v.outcome == RuleOutcome::Fail {
                let since = *breaches.entry(name.clone()).or_insert(now);
                if since == now {
                    self.decide(
                        out,
                        now,
                        DecisionKind::BreachStarted,
                        format!(
                            "abort rule {name} breached: {} (aborts after {} of breach)",
                            v.detail,
                            rule.for_()
                        ),
                        serde_json::to_value(v).unwrap_or_default(),
                    );
                }
            } else if v.outcome == RuleOutcome::Pass && breaches.remove(&name).is_some() {
                self.decide(
                    out,
                    now,
                    DecisionKind::BreachCleared,
                    format!("abort rule {name} no longer breached: {}", v.detail),
                    serde_json::to_value(v).unwrap_or_default(),
                );
            }
        }
        if let Some(r) = self.state.rollout.as_mut() {
            if let Some(w) = r.phase.watch_mut() {
                w.breaches = breaches;
            }
            r.last_evaluation = Some(evaluation);
        }
        self.measured = Some(Measurement {
            rollout: id,
            at: now,
            stats,
            wider,
            external,
        });
    }

    /// The abort rules' verdicts of the last measurement, in the spec's order, when they
    /// belong to the rollout being judged.
    fn last_aborts(&self) -> Option<&[Verdict]> {
        let r = self.judged()?;
        self.measured.as_ref().filter(|m| m.rollout == r.id)?;
        r.last_evaluation.as_ref().map(|e| e.aborts.as_slice())
    }

    /// The abort rule whose breach has lasted its `for` (the first in the spec's order), with
    /// the verdict that keeps it breached and when its `for` ends.
    fn abort_window(&self) -> Vec<(String, Verdict, Timestamp)> {
        let (Some(r), Some(aborts)) = (self.judged(), self.last_aborts()) else {
            return Vec::new();
        };
        self.spec
            .aborts
            .iter()
            .filter_map(|rule| {
                let v = aborts
                    .iter()
                    .find(|v| v.rule == rule.name() && v.outcome == RuleOutcome::Fail)?;
                let since = *r.phase.watch()?.breaches.get(rule.name())?;
                Some((
                    rule.name().to_string(),
                    v.clone(),
                    since.plus(rule.for_().get()),
                ))
            })
            .collect()
    }

    /// The timers, decided on the last measurement: an abort rule breached for its `for`, the
    /// advance gates at a step's end (and while held), `max_inconclusive`.
    fn due(&mut self, now: Timestamp, out: &mut Outcome) {
        let Some(m) = self.measured.clone() else {
            return;
        };
        let Some(aborts) = self.last_aborts().map(<[Verdict]>::to_vec) else {
            return;
        };
        if let Some((name, v, _)) = self
            .abort_window()
            .into_iter()
            .find(|(_, _, end)| *end <= now)
        {
            let since = self
                .state
                .rollout
                .as_ref()
                .and_then(|r| r.phase.watch()?.breaches.get(&name).copied())
                .unwrap_or(now);
            let reason = format!(
                "abort rule {name}: {} for {}",
                v.detail,
                Dur(now.since(since))
            );
            self.abort(
                now,
                reason,
                true,
                serde_json::to_value(&v).unwrap_or_default(),
                out,
            );
            return;
        }

        let mut unsure = aborts
            .iter()
            .find(|v| v.outcome == RuleOutcome::Inconclusive)
            .map(|v| format!("{}: {}", v.rule, v.detail));
        // A blind abort rule is named first: it is why the rollout cannot be judged at all.
        if let Some(gates_unsure) = self.check_gates(now, &m, unsure.clone(), out) {
            unsure = unsure.or(Some(gates_unsure));
        }
        self.watch_inconclusive(now, unsure, out);
    }

    /// The next instant the engine wants to be woken with [`Event::Timeout`], if any: a
    /// starting release's start deadline, the previous release's `hold_previous` expiry, the current step's end, an abort rule's `for`
    /// running out on a breach the last measurement upheld, `max_hold` on failing gates, and
    /// `max_inconclusive`. The timers of a judged rollout wait for its first measurement.
    /// Handling the timeout at (or after) this instant always moves it past that instant, so
    /// a shell that sleeps until it never spins.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let mut next: Option<Timestamp> = None;
        let mut at = |t: Timestamp| next = Some(next.map_or(t, |n| n.min(t)));
        if let Some(held) = &self.state.previous {
            at(held.until);
        }
        match self.active().map(|r| &r.phase) {
            Some(Phase::Starting { deadline: Some(d) }) => at(d.at),
            Some(Phase::HandingOff { deadline, .. }) => at(*deadline),
            _ => {}
        }
        if self.last_aborts().is_some() {
            for (_, _, end) in self.abort_window() {
                at(end);
            }
            if let Some(r) = self.judged() {
                if let Some(since) = r.phase.watch().and_then(|w| w.inconclusive_since) {
                    at(since.plus(self.spec.max_inconclusive.get() + MILLI));
                }
                let step_end = match (&r.phase, r.plan.get(r.step).map(|s| s.hold)) {
                    (Phase::Progressing { .. }, Some(StepHold::For(d))) => {
                        Some(r.step_started.plus(d.get()))
                    }
                    _ => None,
                };
                let gates_failing = r
                    .last_evaluation
                    .as_ref()
                    .is_some_and(|e| e.gates.iter().any(|v| v.outcome == RuleOutcome::Fail));
                match (step_end, r.hold()) {
                    (Some(end), None) => at(end),
                    // Failing gates are re-judged when max_hold runs out (on a step that
                    // has ended: a resumed pause moves the step's end).
                    (
                        Some(end),
                        Some(Hold {
                            failing_since: Some(since),
                            ..
                        }),
                    ) if gates_failing => {
                        at(end.max(since.plus(self.spec.max_hold.get() + MILLI)));
                    }
                    _ => {}
                }
            }
        }
        next
    }

    /// At a step boundary (and at every interval while held): the advance gates. Returns why,
    /// when the rollout could not be judged. An abort rule that cannot be judged (`blind`)
    /// holds the rollout too: more traffic must not go to a canary nobody can watch.
    fn check_gates(
        &mut self,
        now: Timestamp,
        m: &Measurement,
        blind: Option<String>,
        out: &mut Outcome,
    ) -> Option<String> {
        let (stats, wider, external) = (&m.stats, &m.wider, &m.external);
        let min = self.spec.min_samples;
        let r = self.state.rollout.as_ref()?;
        if r.phase.kind() != PhaseKind::Progressing {
            return None;
        }
        let step = r.plan.get(r.step)?;
        let StepHold::For(d) = step.hold else {
            return None;
        };
        if now < r.step_started.plus(d.get()) {
            return None;
        }
        // Gates judge the weight they would raise on traffic at that weight: they look back at
        // most to the start of the step (a held step keeps collecting), from when the
        // measurement was taken.
        let reach = m.at.since(r.step_started);
        let gates: Vec<Verdict> = self
            .spec
            .gates
            .iter()
            .map(|g| {
                let builtin = !matches!(g, GateSpec::Promql { .. });
                Self::judge_wide(stats, wider, reach, builtin, |s| {
                    judge::judge_gate(g, s, min, external)
                })
            })
            .collect();
        if let Some(e) = self
            .state
            .rollout
            .as_mut()
            .and_then(|r| r.last_evaluation.as_mut())
        {
            e.gates = gates.clone();
        }
        let numbers = serde_json::json!({ "gates": gates, "stable": TrackSummary::from(&stats.stable), "canary": TrackSummary::from(&stats.canary) });
        let failing: Vec<&Verdict> = gates
            .iter()
            .filter(|v| v.outcome == RuleOutcome::Fail)
            .collect();
        let unsure: Vec<&Verdict> = gates
            .iter()
            .filter(|v| v.outcome == RuleOutcome::Inconclusive)
            .collect();
        if failing.is_empty() && unsure.is_empty() && blind.is_none() {
            self.advance(now, numbers, out);
            return None;
        }
        let (reason, failing_now) = if let Some(v) = failing.first() {
            (format!("gate {} failed: {}", v.rule, v.detail), true)
        } else if let Some(v) = unsure.first() {
            (format!("inconclusive: {}", v.detail), false)
        } else {
            (
                format!("inconclusive: abort rule {}", blind.unwrap_or_default()),
                false,
            )
        };
        let max_hold = self.spec.max_hold;
        let r = self.state.rollout.as_mut()?;
        let weight = r.weight;
        let watch = r.phase.watch_mut()?;
        let prev = watch.hold.clone();
        let failing_since = match (&prev, failing_now) {
            (_, false) => prev.as_ref().and_then(|h| h.failing_since),
            (
                Some(Hold {
                    failing_since: Some(s),
                    ..
                }),
                true,
            ) => Some(*s),
            (_, true) => Some(now),
        };
        watch.hold = Some(Hold {
            since: prev.as_ref().map_or(now, |h| h.since),
            failing_since,
            reason: reason.clone(),
        });
        if let Some(since) = failing_since.filter(|_| failing_now) {
            if now.since(since) > max_hold.get() {
                let why = format!(
                    "{reason}; failing for {} > max_hold {max_hold}",
                    Dur(now.since(since))
                );
                self.abort(now, why, true, numbers, out);
                return None;
            }
        }
        if prev.as_ref().map(|h| &h.reason) != Some(&reason) {
            self.decide(
                out,
                now,
                DecisionKind::Hold,
                format!("holding at {weight}: {reason}"),
                numbers,
            );
        }
        (!failing_now).then_some(reason)
    }

    /// `max_inconclusive`: a rollout that cannot be judged for too long is aborted rather than
    /// left holding forever (e.g. Prometheus down, or a canary that never gets traffic).
    fn watch_inconclusive(&mut self, now: Timestamp, unsure: Option<String>, out: &mut Outcome) {
        let limit = self.spec.max_inconclusive;
        let Some(w) = self
            .state
            .rollout
            .as_mut()
            .and_then(|r| r.phase.watch_mut())
        else {
            return;
        };
        let Some(detail) = unsure else {
            w.inconclusive_since = None;
            return;
        };
        let since = *w.inconclusive_since.get_or_insert(now);
        if now.since(since) > limit.get() {
            let why = format!(
                "inconclusive for {} > max_inconclusive {limit}: {detail}",
                Dur(now.since(since))
            );
            let numbers = serde_json::json!({
                "max_inconclusive": limit,
                "inconclusive_since": since,
                "detail": detail,
            });
            self.abort(now, why, true, numbers, out);
        }
    }

    /// A release that serves 100 % has proven itself: an earlier failure mark on its digest
    /// (it was deployed with `--force`) no longer holds. Returns the sentence for the
    /// promotion decision, so the clearing is on record.
    fn clear_failure(&mut self, to: &Release) -> Option<(String, Failure)> {
        let f = self.state.failed.remove(&to.digest)?;
        let text = format!(
            "; it was deployed over a failure recorded at {} ({}), which is now cleared",
            f.at.rfc3339(),
            f.reason
        );
        Some((text, f))
    }

    /// Stops the release held after the last promotion; that rollout is then done.
    fn release_previous(
        &mut self,
        now: Timestamp,
        stop_reason: &str,
        why: String,
        out: &mut Outcome,
    ) {
        let Some(held) = self.state.previous.take() else {
            return;
        };
        out.actions.push(Action::Stop {
            release: held.release,
            reason: stop_reason.into(),
        });
        if let Some(r) = self.state.rollout.as_mut() {
            if matches!(r.phase, Phase::Promoted { .. }) {
                r.phase = Phase::Done { ended: now };
            }
        }
        self.decide(
            out,
            now,
            DecisionKind::PreviousReleased,
            why,
            serde_json::Value::Null,
        );
    }

    fn advance(&mut self, now: Timestamp, numbers: serde_json::Value, out: &mut Outcome) {
        let Some(r) = self.state.rollout.as_mut() else {
            return;
        };
        let next = r.step + 1;
        let Some(step) = r.plan.get(next).cloned() else {
            self.promote(now, "every step passed its gates".into(), numbers, out);
            return;
        };
        let from_weight = r.weight;
        r.step = next;
        r.weight = step.weight;
        r.step_started = now;
        // A new step is judged afresh: the hold was the last step's.
        let watch = Watch {
            hold: None,
            ..r.phase.take_watch()
        };
        r.phase = if step.hold == StepHold::UntilPromoted {
            Phase::Paused {
                manual: false,
                since: now,
                watch,
            }
        } else {
            Phase::Progressing { watch }
        };
        let (salt, to) = (r.salt, r.to.clone());
        let from = r.from.clone();
        if let Some(from) = from {
            if step.weight != from_weight {
                out.actions.push(Action::Route {
                    stable: from,
                    canary: Some(to),
                    weight: step.weight,
                    salt,
                    fencing: None,
                });
            }
        }
        let paused = if step.hold == StepHold::UntilPromoted {
            "; pausing until promoted"
        } else {
            ""
        };
        self.decide(
            out,
            now,
            DecisionKind::Advance,
            format!("gates passed: step {} at {}{paused}", next + 1, step.weight),
            numbers,
        );
    }

    fn promote(
        &mut self,
        now: Timestamp,
        why: String,
        numbers: serde_json::Value,
        out: &mut Outcome,
    ) {
        let hold = self.spec.hold_previous;
        let Some(r) = self.state.rollout.as_mut() else {
            return;
        };
        let to = r.to.clone();
        let from = r.from.clone();
        r.weight = Weight::FULL;
        let until = now.plus(hold.get());
        out.actions.push(Action::Route {
            stable: to.clone(),
            canary: None,
            weight: Weight::ZERO,
            salt: r.salt,
            fencing: None,
        });
        if let Some(from) = from.clone() {
            if hold.is_zero() {
                r.phase = Phase::Done { ended: now };
                out.actions.push(Action::Stop {
                    release: from,
                    reason: "promoted; hold_previous is 0".into(),
                });
            } else {
                r.phase = Phase::Promoted { until };
                self.state.previous = Some(Held {
                    release: from,
                    until,
                });
            }
        } else {
            r.phase = Phase::Done { ended: now };
        }
        self.state.stable = Some(to.clone());
        let cleared = self.clear_failure(&to);
        let mut numbers = numbers;
        if let Some((_, f)) = &cleared {
            numbers = with_cleared(numbers, f);
        }
        let cleared = cleared.map(|(text, _)| text).unwrap_or_default();
        let keep = match &from {
            Some(f) if !hold.is_zero() => format!(
                "; {} keeps running without traffic for {hold} so a rollback is instant",
                f.label()
            ),
            _ => String::new(),
        };
        self.decide(
            out,
            now,
            DecisionKind::Promoted,
            format!("{} promoted to 100 % ({why}){keep}{cleared}", to.label()),
            numbers,
        );
    }

    /// One atomic switch of all traffic back to stable, then the canary is stopped.
    fn abort(
        &mut self,
        now: Timestamp,
        reason: String,
        automatic: bool,
        numbers: serde_json::Value,
        out: &mut Outcome,
    ) {
        let Some(r) = self.state.rollout.as_mut() else {
            return;
        };
        let to = r.to.clone();
        let had_traffic = r.phase.kind() != PhaseKind::Starting;
        // Say where the traffic is only when that is true: a first release has no stable.
        let traffic = match (&r.from, had_traffic) {
            (Some(_), true) => "all traffic is back on stable".to_string(),
            (Some(from), false) => format!(
                "it never took traffic; stable {} keeps serving all of it",
                from.label()
            ),
            (None, _) => {
                "there is no stable release yet, so nothing serves traffic until a release becomes ready".to_string()
            }
        };
        r.phase = Phase::Aborted {
            reason: reason.clone(),
            automatic,
            ended: now,
        };
        r.weight = Weight::ZERO;
        let salt = r.salt;
        if let (Some(from), true) = (r.from.clone(), had_traffic) {
            out.actions.push(Action::Route {
                stable: from,
                canary: None,
                weight: Weight::ZERO,
                salt,
                fencing: None,
            });
        }
        out.actions.push(Action::Stop {
            release: to.clone(),
            reason: format!("aborted: {reason}"),
        });
        if automatic {
            self.state.failed.insert(
                to.digest.clone(),
                Failure {
                    version: to.version.clone(),
                    at: now,
                    reason: reason.clone(),
                },
            );
        }
        let who = if automatic {
            "automatically"
        } else {
            "by the operator"
        };
        let mut numbers = numbers;
        if let serde_json::Value::Object(m) = &mut numbers {
            m.insert("automatic".into(), automatic.into());
        } else {
            numbers = serde_json::json!({ "automatic": automatic, "detail": numbers });
        }
        self.decide(
            out,
            now,
            DecisionKind::Aborted,
            format!("{} aborted {who}: {reason}; {traffic}", to.label()),
            numbers,
        );
    }

    fn command(
        &mut self,
        now: Timestamp,
        verb: Verb,
        out: &mut Outcome,
    ) -> Result<(), EngineError> {
        let r = self.state.rollout.as_ref();
        let phase = r.map(|r| r.phase.clone());
        let previous = r.and_then(|r| r.from.as_ref()).map(|f| f.version.clone());
        let effect = verb_effect(verb, phase.as_ref(), previous, self.spec.hold_previous)?;
        let none = || EngineError::NoRollout { verb };
        match effect {
            VerbEffect::Pause => {
                let r = self.state.rollout.as_mut().ok_or_else(none)?;
                r.phase = Phase::Paused {
                    manual: true,
                    since: now,
                    watch: r.phase.take_watch(),
                };
                let w = r.weight;
                self.decide(
                    out,
                    now,
                    DecisionKind::Paused,
                    format!("paused by the operator at {w}; abort rules still watch the canary"),
                    serde_json::Value::Null,
                );
            }
            VerbEffect::Resume { manual, since } => {
                let r = self.state.rollout.as_mut().ok_or_else(none)?;
                r.phase = Phase::Progressing {
                    watch: r.phase.take_watch(),
                };
                if manual {
                    // The time spent paused does not count towards the step.
                    r.step_started = r.step_started.plus(now.since(since));
                    self.decide(
                        out,
                        now,
                        DecisionKind::Resumed,
                        "resumed by the operator".into(),
                        serde_json::Value::Null,
                    );
                } else {
                    self.decide(
                        out,
                        now,
                        DecisionKind::Resumed,
                        "resumed by the operator past a pause-until-promoted step".into(),
                        serde_json::Value::Null,
                    );
                    self.advance(now, serde_json::Value::Null, out);
                }
            }
            VerbEffect::Promote => {
                self.promote(
                    now,
                    "promoted by the operator, skipping the remaining steps".into(),
                    serde_json::Value::Null,
                    out,
                );
            }
            VerbEffect::Abort if matches!(phase, Some(Phase::HandingOff { .. })) => {
                self.handoff_failed(now, format!("{verb} requested by the operator"), false, out);
            }
            VerbEffect::Abort => {
                self.abort(
                    now,
                    format!("{verb} requested by the operator"),
                    false,
                    serde_json::Value::Null,
                    out,
                );
            }
            VerbEffect::RollBack => {
                let held = self.state.previous.take().ok_or_else(none)?;
                let r = self.state.rollout.as_mut().ok_or_else(none)?;
                let to = r.to.clone();
                let reason = "rolled back by the operator inside hold_previous".to_string();
                r.phase = Phase::RolledBack {
                    reason: reason.clone(),
                    ended: now,
                };
                r.weight = Weight::ZERO;
                out.actions.push(Action::Route {
                    stable: held.release.clone(),
                    canary: None,
                    weight: Weight::ZERO,
                    salt: r.salt,
                    fencing: None,
                });
                out.actions.push(Action::Stop {
                    release: to.clone(),
                    reason: "rolled back".into(),
                });
                self.state.stable = Some(held.release.clone());
                self.state.failed.insert(
                    to.digest.clone(),
                    Failure {
                        version: to.version.clone(),
                        at: now,
                        reason: reason.clone(),
                    },
                );
                // The shell switches only to ready instances (`rollback_target`); whether
                // any of them is a process started since cutover's last restart is said.
                let how = if self.started_at_recovery.contains(&held.release.digest) {
                    "on instances restarted when cutover recovered (ready before the switch)"
                } else {
                    "with no process start"
                };
                self.decide(
                    out,
                    now,
                    DecisionKind::RolledBack,
                    format!(
                        "{}: all traffic back on {} {how}; {} stopped",
                        reason,
                        held.release.label(),
                        to.label()
                    ),
                    serde_json::Value::Null,
                );
            }
        }
        Ok(())
    }

    fn recover(
        &mut self,
        now: Timestamp,
        alive: Vec<RecoveredInstance>,
        dead: Vec<RecoveredInstance>,
        out: &mut Outcome,
    ) {
        if let Some(Phase::HandingOff { token, .. }) = self.active().map(|r| r.phase.clone()) {
            // Whether the new instance took the token is unknown: the old holder, which the
            // snapshot names, keeps the role with a higher token, which fences the offered one.
            let reason = format!(
                "cutover restarted during the handoff; whether the new release took token {token} is unknown"
            );
            self.handoff_failed(now, reason, true, out);
        }
        let mut started: Vec<Release> = Vec::new();
        if let Some(s) = self.state.stable.clone() {
            out.actions.push(Action::Start {
                release: s.clone(),
                role: None,
            });
            started.push(s);
        }
        if let Some(h) = self.state.previous.clone() {
            out.actions.push(Action::Start {
                release: h.release.clone(),
                role: None,
            });
            started.push(h.release);
        }
        if let Some(r) = self.state.rollout.as_mut() {
            if let Phase::Starting { deadline: Some(d) } = &mut r.phase {
                // The instances it re-adopts get the whole start_timeout again, as they did
                // when the shell kept this deadline.
                d.at = now.plus(d.timeout.get());
            }
        }
        if let Some(r) = self.state.rollout.clone() {
            if r.phase.is_active() {
                out.actions.push(Action::Start {
                    release: r.to.clone(),
                    role: None,
                });
                started.push(r.to);
            }
        }
        // Routes are re-established as they were; instances join only once ready (invariant 3).
        if let Some(stable) = self.state.stable.clone() {
            let (canary, weight, salt) = match self.active() {
                Some(r) if r.phase.kind() != PhaseKind::Starting => {
                    (Some(r.to.clone()), r.weight, r.salt)
                }
                Some(r) => (None, Weight::ZERO, r.salt),
                None => (
                    None,
                    Weight::ZERO,
                    self.state.rollout.as_ref().map_or(0, |r| r.salt),
                ),
            };
            out.actions.push(Action::Route {
                stable,
                canary,
                weight,
                salt,
                fencing: None,
            });
        }
        let wanted = |i: &&RecoveredInstance| started.iter().any(|r| r.digest == i.digest);
        let adopted: Vec<&RecoveredInstance> = alive.iter().filter(wanted).collect();
        let replaced: Vec<&RecoveredInstance> = dead.iter().filter(wanted).collect();
        let unwanted: Vec<&RecoveredInstance> = alive.iter().filter(|i| !wanted(i)).collect();
        // A release none of whose instances is re-adopted is started anew.
        let fresh: Vec<&Release> = started
            .iter()
            .filter(|r| !adopted.iter().any(|i| i.digest == r.digest))
            .collect();
        self.started_at_recovery = replaced
            .iter()
            .map(|i| i.digest.clone())
            .chain(fresh.iter().map(|r| r.digest.clone()))
            .collect();
        if started.is_empty() && unwanted.is_empty() {
            return;
        }
        let list = |is: &[&RecoveredInstance]| {
            is.iter()
                .map(|i| format!("{} (pid {})", i.instance, i.pid))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = Vec::new();
        if !adopted.is_empty() {
            parts.push(format!(
                "re-adopted {} without restarting {}",
                list(&adopted),
                if adopted.len() == 1 { "it" } else { "them" }
            ));
        }
        if !replaced.is_empty() {
            parts.push(format!("replacing {}, which had died", list(&replaced)));
        }
        if !fresh.is_empty() {
            let labels: Vec<String> = fresh.iter().map(|r| r.label()).collect();
            parts.push(format!("starting {}", labels.join(", ")));
        }
        if !unwanted.is_empty() {
            parts.push(format!(
                "stopping {}, no longer part of the rollout",
                list(&unwanted)
            ));
        }
        let resumes = match self.state.rollout.as_ref() {
            Some(r) if r.phase.is_active() => format!(
                "rollout {} resumes {} at step {} and weight {}",
                r.id,
                r.phase.name(),
                r.step + 1,
                r.weight
            ),
            Some(r) => format!("rollout {} is {}", r.id, r.phase.name()),
            None => "no rollout yet".to_string(),
        };
        let ids = |is: &[&RecoveredInstance]| -> Vec<String> {
            is.iter().map(|i| i.instance.clone()).collect()
        };
        let numbers = serde_json::json!({
            "adopted": ids(&adopted),
            "replaced": ids(&replaced),
            "stopped": ids(&unwanted),
            "started": fresh.iter().map(|r| r.version.clone()).collect::<Vec<_>>(),
            "step": self.state.rollout.as_ref().map(|r| r.step),
            "weight": self.state.rollout.as_ref().map(|r| r.weight.to_string()),
        });
        self.decide(
            out,
            now,
            DecisionKind::Recovered,
            format!("cutover restarted: {}; {resumes}", parts.join("; ")),
            numbers,
        );
    }

    /// The release an operator's `rollback` would switch all traffic to, when it would switch
    /// to a release that is already running (inside `hold_previous`): the shell lets the
    /// rollback through only once that release's instances are ready, so that it "needs no
    /// process start" and sends no request to an instance that is not ready (DESIGN.md
    /// invariants 3 and 6).
    pub fn rollback_target(&self) -> Option<&Release> {
        let r = self.state.rollout.as_ref()?;
        match r.phase {
            Phase::Promoted { .. } => self.state.previous.as_ref().map(|h| &h.release),
            _ => None,
        }
    }
}

/// What an operator verb does, once [`verb_effect`] allowed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerbEffect {
    /// Stop advancing; abort rules keep watching.
    Pause,
    /// Continue: after a manual pause the paused time does not count towards the step; past
    /// a `pause = "until_promoted"` step the rollout advances at once.
    Resume { manual: bool, since: Timestamp },
    /// Skip the remaining steps to 100 %.
    Promote,
    /// All traffic back to stable, stop the canary (`abort`, or `rollback` before promotion).
    Abort,
    /// Inside `hold_previous`: the held release serves everything again, at once.
    RollBack,
}

/// The verb × phase table, in one place: what `verb` does when the last rollout is in `phase`
/// (`None`: no rollout yet), or why it is refused. `previous`: the version the rollout
/// started from, and `hold` the `hold_previous` setting, both named when a rollback comes
/// too late.
pub fn verb_effect(
    verb: Verb,
    phase: Option<&Phase>,
    previous: Option<String>,
    hold: Dur,
) -> Result<VerbEffect, EngineError> {
    use Phase::*;
    use Verb::*;
    let Some(phase) = phase else {
        return Err(EngineError::NoRollout { verb });
    };
    match (verb, phase) {
        (Pause, Progressing { .. }) => Ok(VerbEffect::Pause),
        (Pause, Paused { .. }) => Err(EngineError::AlreadyPaused),
        (Pause, Starting { .. }) => Err(EngineError::PauseWhileStarting),
        (Resume, Paused { manual, since, .. }) => Ok(VerbEffect::Resume {
            manual: *manual,
            since: *since,
        }),
        (Resume, Progressing { .. }) => Err(EngineError::NotPaused),
        (Promote, Progressing { .. } | Paused { .. }) => Ok(VerbEffect::Promote),
        (Promote, Starting { .. }) => Err(EngineError::PromoteWhileStarting),
        (Pause | Resume | Promote, HandingOff { token, .. }) => {
            Err(EngineError::HandingOff { token: *token })
        }
        (
            Abort | Rollback,
            Starting { .. } | Progressing { .. } | Paused { .. } | HandingOff { .. },
        ) => Ok(VerbEffect::Abort),
        (Rollback, Promoted { .. }) => Ok(VerbEffect::RollBack),
        (Rollback, Done { .. }) if previous.is_some() => Err(EngineError::PreviousGone {
            previous: previous.unwrap_or_default(),
            hold,
        }),
        (Abort, Promoted { .. }) => Err(EngineError::AlreadyPromoted),
        (_, p) => Err(EngineError::Finished {
            phase: p.name(),
            verb,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole verb × phase table, enumerated: one row per phase, one column per verb.
    #[test]
    fn the_verb_phase_table() {
        let t = Timestamp::from_millis(1);
        let phases: [(&str, Option<Phase>); 9] = [
            ("none", None),
            ("starting", Some(Phase::Starting { deadline: None })),
            (
                "progressing",
                Some(Phase::Progressing {
                    watch: Watch::default(),
                }),
            ),
            (
                "paused",
                Some(Phase::Paused {
                    manual: true,
                    since: t,
                    watch: Watch::default(),
                }),
            ),
            (
                "paused-step",
                Some(Phase::Paused {
                    manual: false,
                    since: t,
                    watch: Watch::default(),
                }),
            ),
            ("promoted", Some(Phase::Promoted { until: t })),
            ("done", Some(Phase::Done { ended: t })),
            (
                "aborted",
                Some(Phase::Aborted {
                    reason: "x".into(),
                    automatic: true,
                    ended: t,
                }),
            ),
            (
                "rolled_back",
                Some(Phase::RolledBack {
                    reason: "x".into(),
                    ended: t,
                }),
            ),
        ];
        let verbs = [
            Verb::Pause,
            Verb::Resume,
            Verb::Promote,
            Verb::Abort,
            Verb::Rollback,
        ];
        let cell = |r: Result<VerbEffect, EngineError>| match r {
            Ok(VerbEffect::Pause) => "PAUSE",
            Ok(VerbEffect::Resume { .. }) => "RESUME",
            Ok(VerbEffect::Promote) => "PROMOTE",
            Ok(VerbEffect::Abort) => "ABORT",
            Ok(VerbEffect::RollBack) => "ROLLBACK",
            Err(EngineError::NoRollout { .. }) => "no-rollout",
            Err(EngineError::AlreadyPaused) => "already-paused",
            Err(EngineError::PauseWhileStarting | EngineError::PromoteWhileStarting) => "starting",
            Err(EngineError::NotPaused) => "not-paused",
            Err(EngineError::AlreadyPromoted) => "promoted",
            Err(EngineError::PreviousGone { .. }) => "gone",
            Err(EngineError::Finished { .. }) => "finished",
            Err(_) => "?",
        };
        let mut table = String::new();
        for (name, phase) in &phases {
            let row: Vec<&str> = verbs
                .iter()
                .map(|v| {
                    cell(verb_effect(
                        *v,
                        phase.as_ref(),
                        Some("v1".into()),
                        Dur::from_secs(60),
                    ))
                })
                .collect();
            table.push_str(&format!("{name:<12}{}\n", row.join(" ")));
        }
        //                pause          resume     promote  abort    rollback
        let expected = "\
none        no-rollout no-rollout no-rollout no-rollout no-rollout
starting    starting finished starting ABORT ABORT
progressing PAUSE not-paused PROMOTE ABORT ABORT
paused      already-paused RESUME PROMOTE ABORT ABORT
paused-step already-paused RESUME PROMOTE ABORT ABORT
promoted    finished finished finished promoted ROLLBACK
done        finished finished finished finished gone
aborted     finished finished finished finished finished
rolled_back finished finished finished finished finished
";
        assert_eq!(table, expected, "\n{table}");
        // A first release has no previous version: a rollback after it is simply finished.
        assert_eq!(
            verb_effect(
                Verb::Rollback,
                Some(&Phase::Done { ended: t }),
                None,
                Dur::from_secs(60)
            ),
            Err(EngineError::Finished {
                phase: "done",
                verb: Verb::Rollback
            })
        );
    }
}
