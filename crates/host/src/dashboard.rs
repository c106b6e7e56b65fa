//! What the dashboard needs from the host: the live feed the driver publishes (status documents
//! and decisions, fanned out to every `GET /v1/events` subscriber), and a past rollout's chart
//! series, computed from the same recording `cutover export` writes.

use crate::simulate::recording_from_store;
use cutover_admin::ApiError;
use cutover_core::engine::{Decision, Engine, Event};
use cutover_core::simulate::Recording;
use cutover_core::spec::RolloutSpec;
use cutover_store::Store;
use serde_json::{json, Value};
use tokio::sync::broadcast;

/// How many feed items a slow subscriber may fall behind before it is sent a fresh status
/// instead (`RecvError::Lagged`): the feed never waits for a browser.
pub const FEED_CAPACITY: usize = 64;

/// The driver's side of the live feed.
#[derive(Clone)]
pub struct Feed {
    tx: broadcast::Sender<Value>,
}

impl Default for Feed {
    fn default() -> Self {
        Feed {
            tx: broadcast::channel(FEED_CAPACITY).0,
        }
    }
}

impl Feed {
    /// A new subscriber (one per open dashboard).
    pub fn subscribe(&self) -> broadcast::Receiver<Value> {
        self.tx.subscribe()
    }

    /// Whether anyone listens: with no dashboard open, nothing is built.
    pub fn watched(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// A status document (`GET /v1/status`'s).
    pub fn status(&self, status: impl FnOnce() -> Value) {
        if self.watched() {
            let _ = self.tx.send(json!({"type": "status", "data": status()}));
        }
    }

    /// A decision, as it was made.
    pub fn decision(&self, d: &Decision) {
        if self.watched() {
            let data = serde_json::to_value(d).unwrap_or_default();
            let _ = self.tx.send(json!({"type": "decision", "data": data}));
        }
    }
}

/// `GET /v1/history/{rollout}/replay`: the rollout's recording (as `cutover export` reads it
/// from the store), replayed through the engine with `spec` for its measurements and weights,
/// with the decisions recorded live.
///
/// Two halves: [`replay_read`] runs where the store is (the runtime's store thread), and
/// [`replay_series`] replays the recording off it.
pub fn replay(store: &Store, spec: &RolloutSpec, rollout: i64) -> Result<Value, ApiError> {
    let (rec, decisions) = replay_read(store, rollout)?;
    Ok(replay_series(&rec, decisions, spec))
}

/// What a replay reads from the store: the recording, and the decisions and record of the
/// rollout as they were made live.
pub fn replay_read(store: &Store, rollout: i64) -> Result<(Recording, Value), ApiError> {
    Ok({
        let rec = recording_from_store(store, Some(rollout)).map_err(|e| match e {
            crate::commands::CommandError::NotFound(m) => ApiError::not_found(m),
            other => ApiError::internal(other.to_string()),
        })?;
        let decisions = store
            .decisions(Some(rollout), 100_000)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let record = store
            .rollout(rollout)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let mut ds = Vec::with_capacity(decisions.len());
        for d in decisions {
            ds.push(json!({
                "at": d.at, "kind": d.kind, "reason": d.reason, "numbers": d.numbers,
            }));
        }
        (rec, json!({ "decisions": ds, "record": record }))
    })
}

/// The replay's charts ([`series`]) with the decisions [`replay_read`] found.
pub fn replay_series(rec: &Recording, mut decisions: Value, spec: &RolloutSpec) -> Value {
    let mut out = series(rec, spec);
    out["decisions"] = decisions["decisions"].take();
    out["record"] = decisions["record"].clone();
    out
}

/// The chart series of a recording: after each measurement, the rollout as the engine then saw
/// it (weight, step, phase and its evaluation, the same shape `status` shows live), plus a
/// summary: the peak weight, the canary requests it served (estimated from the overlapping
/// measurement windows) and, for an abort, the time from the canary's first traffic to 100 %
/// back on stable.
pub fn series(rec: &Recording, spec: &RolloutSpec) -> Value {
    let mut engine = Engine::restore(spec.clone(), rec.initial_state.clone());
    let mut points = Vec::new();
    let (mut peak, mut canary_requests, mut canary_errors) = (0u16, 0f64, 0f64);
    let window = spec.window.get().as_secs_f64();
    let interval = spec.interval.get().as_secs_f64();
    // Each measurement covers `window`; one every `interval`: each request is in
    // `window / interval` of them.
    let share = if window > 0.0 {
        (interval / window).min(1.0)
    } else {
        1.0
    };
    let ended = |e: &Engine| {
        e.state()
            .rollout
            .as_ref()
            .is_some_and(|ro| ro.id == rec.rollout && ro.ended().is_some())
    };
    let mut last_at = None;
    for r in &rec.events {
        let measured = matches!(r.event, Event::Measured { .. });
        // As `cutover simulate` replays: once the rollout has ended, later measurements belong
        // to whatever runs next (an ended rollout's evaluation is its last one, not new data).
        if ended(&engine) && !matches!(r.event, Event::Command(_)) {
            continue;
        }
        if engine.handle(r.at, r.event.clone()).is_err() {
            continue;
        }
        let Some(ro) = engine
            .state()
            .rollout
            .as_ref()
            .filter(|ro| ro.id == rec.rollout)
        else {
            continue;
        };
        let weight: u16 = serde_json::from_value(json!(ro.weight)).unwrap_or(0);
        peak = peak.max(weight);
        let fresh = ro.last_evaluation.as_ref().map(|e| e.at) != last_at;
        if measured && fresh {
            last_at = ro.last_evaluation.as_ref().map(|e| e.at);
            if let Some(e) = &ro.last_evaluation {
                canary_requests += e.canary.requests as f64 * share;
                canary_errors += e.canary.errors as f64 * share;
            }
            // The phase as status shows it (`{"phase": "paused", "manual": true, ..}`): the
            // rollout's stored form carries it.
            let phase = serde_json::to_value(ro)
                .map(|v| v["phase"].clone())
                .unwrap_or_default();
            points.push(json!({
                "at": r.at, "weight": ro.weight, "step": ro.step, "phase": phase,
                "last_evaluation": ro.last_evaluation,
            }));
        }
    }
    let ro = engine
        .state()
        .rollout
        .as_ref()
        .filter(|ro| ro.id == rec.rollout);
    let restore_ms = ro.and_then(|ro| match (&ro.phase, ro.traffic_since, ro.ended()) {
        (cutover_core::engine::Phase::Aborted { .. }, Some(onset), Some(end)) => {
            Some(end.millis().saturating_sub(onset.millis()))
        }
        _ => None,
    });
    json!({
        "rollout": rec.rollout,
        "service": rec.service,
        "format": rec.format,
        "window": spec.window,
        "plan": ro.map(|r| r.plan.clone()),
        "final": ro,
        "points": points,
        "summary": {
            "peak_weight": peak,
            "canary_requests_estimate": canary_requests.round(),
            "canary_errors_estimate": canary_errors.round(),
            "fault_to_restore_ms": restore_ms,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_core::engine::{Release, State};
    use cutover_core::simulate::{Recorded, FORMAT};
    use cutover_core::{Timestamp, TrackStats, WindowStats};
    use std::collections::BTreeMap;

    fn spec() -> RolloutSpec {
        cutover_core::spec::Config::from_toml_str(
            "[service]\nname = \"shop\"\n[app]\ncommand = [\"./app\", \"{port}\"]\n\
             [rollout]\ninitial_weight = 2.0\ninterval = \"5s\"\nwindow = \"30s\"\n\
             min_samples = 10\n\
             [[rollout.aborts]]\nname = \"p99-over-800ms\"\nmetric = \"latency\"\n\
             quantile = 0.99\nabove = \"800ms\"\nfor = \"45s\"\n",
        )
        .unwrap()
        .rollout
    }

    /// A slow canary's recording: one point per measurement with its evaluation and the abort
    /// rule's threshold, the peak weight, the requests it served (each request is in
    /// `window / interval` measurements) and the time from its first traffic to the abort.
    #[test]
    fn a_recording_becomes_points_and_a_summary() {
        let spec = spec();
        let mut e = Engine::new("shop", spec.clone());
        let t = |s: u64| Timestamp(1_000_000 + s * 1000);
        let deploy = |v: &str| Event::Deploy {
            release: Release::new(v, v),
            force: false,
            start_timeout: None,
        };
        e.handle(t(0), deploy("v1")).unwrap();
        e.handle(
            t(1),
            Event::Ready {
                digest: "v1".into(),
            },
        )
        .unwrap();
        let initial_state: State = e.state().clone();
        let slow = |at: u64| Recorded {
            at: t(at),
            event: Event::Measured {
                stats: WindowStats {
                    stable: TrackStats::uniform(1000, 0, 20),
                    canary: TrackStats::uniform(60, 0, 1200),
                },
                wider: Vec::new(),
                external: BTreeMap::new(),
            },
        };
        let mut events = vec![
            Recorded {
                at: t(10),
                event: deploy("v2"),
            },
            Recorded {
                at: t(11),
                event: Event::Ready {
                    digest: "v2".into(),
                },
            },
        ];
        let measured: Vec<u64> = (0..12).map(|i| 15 + i * 5).collect();
        events.extend(measured.iter().map(|&s| slow(s)));
        let rec = Recording {
            format: FORMAT.into(),
            service: "shop".into(),
            rollout: 2,
            initial_state,
            events,
            decisions: Vec::new(),
        };
        let out = series(&rec, &spec);
        let points = out["points"].as_array().unwrap();
        // Up to the abort (at the 10th, 45 s after the breach began), not after it.
        assert_eq!(points.len(), 10, "{out}");
        assert_eq!(points[9]["phase"]["phase"], "aborted");
        let first = &points[0];
        assert_eq!(first["weight"], 200);
        assert_eq!(first["last_evaluation"]["canary"]["requests"], 60);
        let aborts = first["last_evaluation"]["aborts"].as_array().unwrap();
        assert_eq!(aborts[0]["rule"], "p99-over-800ms");
        assert_eq!(aborts[0]["threshold"], 0.8);
        assert_eq!(out["final"]["phase"]["phase"], "aborted", "{out}");
        let summary = &out["summary"];
        assert_eq!(summary["peak_weight"], 200);
        // Ten measurements of 60 canary requests, each request in 30 s / 5 s = 6 of them.
        assert_eq!(summary["canary_requests_estimate"], 100.0, "{out}");
        let ended = out["final"]["ended"].as_u64().unwrap();
        let onset = out["final"]["traffic_since"].as_u64().unwrap();
        assert_eq!(summary["fault_to_restore_ms"], ended - onset);
        assert!(ended - onset >= 45_000, "the rule's `for` is 45 s: {out}");
    }
}
