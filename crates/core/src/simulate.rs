//! Replaying a recorded rollout through the engine: what `cutover simulate` prints.
//!
//! A recording is the engine's state just before the rollout's deploy, and every event the
//! runtime applied during it (deploy, readiness, each evaluation's window stats and rule
//! results, operator verbs, alerts), with their times. Replayed through an engine with the same
//! spec, it yields the same decisions — the engine is deterministic — and through an engine with
//! another spec, the decisions that policy would have made on the same measurements. The
//! measurements themselves cannot change: a recording made with a 30 s window replays with
//! 30 s windows, and after the live rollout ended there are no more measurements.

use crate::engine::{Decision, Engine, Event, State};
use crate::spec::RolloutSpec;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// The format tag of a recording file this cutover writes: `/2` writes latency histograms as
/// delta-encoded runs (see [`crate::histogram::Histogram`]).
pub const FORMAT: &str = "cutover-recording/2";

/// The format tags this cutover reads: `/1` (histograms as `[index, count]` pairs) and `/2`.
pub const READS: &[&str] = &["cutover-recording/1", FORMAT];

/// One recorded rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recording {
    pub format: String,
    pub service: String,
    pub rollout: u64,
    /// The engine's state before the rollout's deploy.
    pub initial_state: State,
    pub events: Vec<Recorded>,
    /// What the live engine decided, for comparison.
    pub decisions: Vec<Decision>,
}

/// One applied event and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    pub at: Timestamp,
    pub event: Event,
}

/// The outcome of a replay.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Replay {
    pub decisions: Vec<Decision>,
    /// Events the simulated engine refused (e.g. a verb that no longer applied), with why.
    pub refused: Vec<(Timestamp, String)>,
    /// The simulated rollout's phase when the recording ends.
    pub final_phase: String,
    pub ended: Option<Timestamp>,
}

/// Replays `recording` with `spec`.
pub fn replay(recording: &Recording, spec: &RolloutSpec) -> Replay {
    let mut engine = Engine::restore(spec.clone(), recording.initial_state.clone());
    let mut decisions = Vec::new();
    let mut refused = Vec::new();
    for r in &recording.events {
        // Once the simulated rollout has ended, later measurements belong to a live rollout
        // that this policy would not have been running; stop there.
        if engine
            .state()
            .rollout
            .as_ref()
            .is_some_and(|ro| ro.id == recording.rollout && ro.ended().is_some())
            && !matches!(r.event, Event::Command(_))
        {
            continue;
        }
        match engine.handle(r.at, r.event.clone()) {
            Ok(out) => decisions.extend(out.decisions),
            Err(e) => refused.push((r.at, e.to_string())),
        }
    }
    let ro = engine
        .state()
        .rollout
        .as_ref()
        .filter(|ro| ro.id == recording.rollout);
    Replay {
        decisions,
        refused,
        final_phase: ro.map_or("none".to_string(), |r| r.phase.name().to_string()),
        ended: ro.and_then(|r| r.ended()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Phase, Release};
    use crate::stats::{TrackStats, WindowStats};
    use crate::time::Dur;

    fn recording(latency_ms: u64) -> (Recording, Engine) {
        let spec = RolloutSpec {
            step_interval: Dur::from_secs(10),
            ..RolloutSpec::default()
        };
        let mut live = Engine::new("shop", spec.clone());
        let t0 = Timestamp(1_000_000);
        live.handle(
            t0,
            Event::Deploy {
                release: Release::new("v1", "a"),
                force: false,
                start_timeout: None,
            },
        )
        .unwrap();
        live.handle(t0, Event::Ready { digest: "a".into() })
            .unwrap();
        let initial_state = live.state().clone();
        let mut events = vec![
            Recorded {
                at: t0,
                event: Event::Deploy {
                    release: Release::new("v2", "b"),
                    force: false,
                    start_timeout: None,
                },
            },
            Recorded {
                at: t0,
                event: Event::Ready { digest: "b".into() },
            },
        ];
        for i in 1..=40 {
            let stats = WindowStats {
                stable: TrackStats::uniform(500, 0, 20),
                canary: TrackStats::uniform(100, 0, latency_ms),
            };
            events.push(Recorded {
                at: Timestamp(t0.0 + i * 5000),
                event: Event::Measured {
                    stats,
                    wider: Vec::new(),
                    external: Default::default(),
                },
            });
        }
        let mut decisions = Vec::new();
        for r in &events {
            if live
                .state()
                .rollout
                .as_ref()
                .is_some_and(|r| r.ended().is_some() && r.id == 2)
            {
                break;
            }
            decisions.extend(live.handle(r.at, r.event.clone()).unwrap().decisions);
        }
        let rec = Recording {
            format: FORMAT.into(),
            service: "shop".into(),
            rollout: 2,
            initial_state,
            events,
            decisions,
        };
        (rec, live)
    }

    #[test]
    fn same_spec_reproduces_the_live_decisions() {
        for latency in [20, 900] {
            let (rec, live) = recording(latency);
            let replay = replay(&rec, live.spec());
            assert_eq!(replay.decisions, rec.decisions, "latency {latency}");
            assert_eq!(
                replay.final_phase,
                live.state().rollout.as_ref().unwrap().phase.name()
            );
        }
    }

    #[test]
    fn another_spec_gives_that_policys_decisions() {
        let (rec, live) = recording(900);
        assert!(matches!(
            live.state().rollout.as_ref().unwrap().phase,
            Phase::Aborted { .. }
        ));
        // With a lenient abort rule and gate, the same measurements would have been promoted.
        let mut lenient = live.spec().clone();
        lenient.aborts.clear();
        lenient.gates.retain(|g| g.name() == "error-budget");
        let replay = replay(&rec, &lenient);
        assert_eq!(
            replay.final_phase,
            "promoted",
            "{:?}",
            replay
                .decisions
                .iter()
                .map(|d| &d.reason)
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn recordings_round_trip_as_json() {
        let (rec, _) = recording(20);
        let json = serde_json::to_string(&rec).unwrap();
        assert_eq!(serde_json::from_str::<Recording>(&json).unwrap(), rec);
    }
}
