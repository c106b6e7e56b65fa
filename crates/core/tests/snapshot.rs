//! Snapshots keep their form: a state written by the current release (rollout fields flat, the
//! phase's own data beside the phase) loads into the phases that now carry that data, and is
//! written back in the same form.

use cutover_core::engine::{Engine, Hold, Phase, StartDeadline, State};
use cutover_core::spec::RolloutSpec;
use cutover_core::{Dur, Timestamp};
use serde_json::{json, Value};

const T: u64 = 1_700_000_000_000;

fn at(secs: u64) -> Timestamp {
    Timestamp::from_millis(T + secs * 1_000)
}

/// A state as the current release writes it, with `rollout` (minus `id`, `from`, `to`,
/// `plan`, `salt`) given.
fn snapshot(rollout: Value) -> Value {
    let mut r = json!({
        "id": 3,
        "from": { "version": "v1", "digest": "sha-v1" },
        "to": { "version": "v2", "digest": "sha-v2" },
        "plan": [
            { "weight": 500, "hold": { "for": "30s" } },
            { "weight": 2500, "hold": "until_promoted" }
        ],
        "salt": 42
    });
    for (k, v) in rollout.as_object().unwrap() {
        r[k] = v.clone();
    }
    json!({
        "service": "web",
        "stable": { "version": "v1", "digest": "sha-v1" },
        "previous": null,
        "rollout": r,
        "last_rollout_id": 3,
        "failed": {}
    })
}

fn load(v: &Value) -> State {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v:#}"))
}

#[test]
fn a_starting_rollout_keeps_its_start_deadline() {
    let stored = snapshot(json!({
        "phase": { "phase": "starting" },
        "step": 0,
        "weight": 0,
        "step_started": T,
        "started": T,
        "ended": null,
        "hold": null,
        "breaches": {},
        "traffic_since": null,
        "last_evaluation": null,
        "inconclusive_since": null,
        "start_timeout": "20s",
        "start_deadline": T + 20_000
    }));
    let state = load(&stored);
    let r = state.rollout.as_ref().unwrap();
    assert_eq!(
        r.phase,
        Phase::Starting {
            deadline: Some(StartDeadline {
                timeout: Dur::from_secs(20),
                at: at(20),
            })
        }
    );
    assert_eq!(serde_json::to_value(&state).unwrap(), stored);
    // The engine's timer runs from it.
    let e = Engine::restore(RolloutSpec::default(), state);
    assert_eq!(e.poll_timeout(), Some(at(20)));
}

#[test]
fn a_starting_rollout_from_before_the_engine_kept_the_deadline_has_none() {
    let stored = snapshot(json!({
        "phase": { "phase": "starting" },
        "step": 0,
        "weight": 0,
        "step_started": T,
        "started": T,
        "ended": null,
        "hold": null,
        "breaches": {},
        "traffic_since": null,
        "last_evaluation": null
    }));
    let state = load(&stored);
    let r = state.rollout.as_ref().unwrap();
    assert_eq!(r.phase, Phase::Starting { deadline: None });
    let mut written = serde_json::to_value(&state).unwrap();
    // `inconclusive_since` was added with a default; it is written as null.
    assert_eq!(written["rollout"]["inconclusive_since"], Value::Null);
    written["rollout"]
        .as_object_mut()
        .unwrap()
        .remove("inconclusive_since");
    assert_eq!(written, stored);
}

#[test]
fn a_paused_rollout_keeps_its_hold_breaches_and_inconclusive_since() {
    let stored = snapshot(json!({
        "phase": { "phase": "paused", "manual": true, "since": T + 90_000 },
        "step": 0,
        "weight": 500,
        "step_started": T + 60_000,
        "started": T,
        "ended": null,
        "hold": {
            "since": T + 80_000,
            "failing_since": T + 80_000,
            "reason": "gate error-rate failed: 3 % > 1 %"
        },
        "breaches": { "p99": T + 85_000 },
        "traffic_since": T + 60_000,
        "last_evaluation": null,
        "inconclusive_since": T + 70_000
    }));
    let state = load(&stored);
    let r = state.rollout.as_ref().unwrap();
    let Phase::Paused {
        manual: true,
        since,
        watch,
    } = &r.phase
    else {
        panic!("{:?}", r.phase)
    };
    assert_eq!(*since, at(90));
    assert_eq!(
        watch.hold,
        Some(Hold {
            since: at(80),
            failing_since: Some(at(80)),
            reason: "gate error-rate failed: 3 % > 1 %".into(),
        })
    );
    assert_eq!(
        r.breaches().collect::<Vec<_>>(),
        [(&"p99".to_string(), &at(85))]
    );
    assert_eq!(watch.inconclusive_since, Some(at(70)));
    assert_eq!(r.hold(), watch.hold.as_ref());
    assert_eq!(r.ended(), None);
    assert_eq!(serde_json::to_value(&state).unwrap(), stored);
}

#[test]
fn a_finished_rollout_keeps_its_end_and_drops_what_meant_nothing_any_more() {
    // The current release leaves an aborted rollout's last breaches in the snapshot; they
    // were never shown (status shows breaches of a running rollout only).
    let stored = snapshot(json!({
        "phase": { "phase": "aborted", "reason": "abort rule p99: 900 ms for 45s", "automatic": true },
        "step": 1,
        "weight": 0,
        "step_started": T + 90_000,
        "started": T,
        "ended": T + 140_000,
        "hold": null,
        "breaches": { "p99": T + 95_000 },
        "traffic_since": T + 60_000,
        "last_evaluation": null,
        "inconclusive_since": null
    }));
    let state = load(&stored);
    let r = state.rollout.as_ref().unwrap();
    assert_eq!(
        r.phase,
        Phase::Aborted {
            reason: "abort rule p99: 900 ms for 45s".into(),
            automatic: true,
            ended: at(140),
        }
    );
    assert_eq!(r.ended(), Some(at(140)));
    assert_eq!(r.traffic_since, Some(at(60)));
    assert_eq!(r.breaches().count(), 0);
    let mut expected = stored.clone();
    expected["rollout"]["breaches"] = json!({});
    assert_eq!(serde_json::to_value(&state).unwrap(), expected);
}

#[test]
fn every_finished_phase_keeps_its_end() {
    for phase in [
        json!({ "phase": "done" }),
        json!({ "phase": "rolled_back", "reason": "rolled back by the operator" }),
    ] {
        let stored = snapshot(json!({
            "phase": phase,
            "step": 1,
            "weight": 10_000,
            "step_started": T + 90_000,
            "started": T,
            "ended": T + 200_000,
            "hold": null,
            "breaches": {},
            "traffic_since": T + 60_000,
            "last_evaluation": null,
            "inconclusive_since": null
        }));
        let state = load(&stored);
        let r = state.rollout.as_ref().unwrap();
        assert_eq!(r.ended(), Some(at(200)), "{phase}");
        assert_eq!(serde_json::to_value(&state).unwrap(), stored, "{phase}");
    }
}
