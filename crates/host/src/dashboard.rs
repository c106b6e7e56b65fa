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
use std::sync::Mutex;
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
pub fn replay(store: &Mutex<Store>, spec: &RolloutSpec, rollout: i64) -> Result<Value, ApiError> {
    let (rec, mut decisions) = {
        let store = store.lock().unwrap_or_else(|e| e.into_inner());
        let rec = recording_from_store(&store, Some(rollout)).map_err(|e| match e {
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
    };
    let mut out = series(&rec, spec);
    out["decisions"] = decisions["decisions"].take();
    out["record"] = decisions["record"].clone();
    Ok(out)
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
    for r in &rec.events {
        let measured = matches!(r.event, Event::Measured { .. });
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
        if measured {
            if let Some(e) = &ro.last_evaluation {
                canary_requests += e.canary.requests as f64 * share;
                canary_errors += e.canary.errors as f64 * share;
            }
            points.push(json!({
                "at": r.at, "weight": ro.weight, "step": ro.step, "phase": ro.phase,
                "last_evaluation": ro.last_evaluation,
            }));
        }
    }
    let ro = engine
        .state()
        .rollout
        .as_ref()
        .filter(|ro| ro.id == rec.rollout);
    let restore_ms = ro.and_then(|ro| match (&ro.phase, ro.traffic_since, ro.ended) {
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
