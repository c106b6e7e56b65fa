//! The names shared by core, the host and the notifier are one vocabulary: each enum's
//! `as_str` is the name serde writes, so a label, a config value and a stored state agree.

use cutover_core::engine::{DecisionKind, Phase, PhaseKind, Release, Rollout, Watch};
use cutover_core::spec::NotifyKind;
use cutover_core::{Timestamp, Track, Weight};

fn every_phase() -> Vec<Phase> {
    let t = Timestamp::from_millis(1_000);
    vec![
        Phase::Starting { deadline: None },
        Phase::Progressing {
            watch: Watch::default(),
        },
        Phase::HandingOff {
            token: 2,
            since: t,
            deadline: t,
        },
        Phase::Paused {
            manual: true,
            since: t,
            watch: Watch::default(),
        },
        Phase::Promoted { until: t },
        Phase::Done { ended: t },
        Phase::Aborted {
            reason: "r".into(),
            automatic: false,
            ended: t,
        },
        Phase::RolledBack {
            reason: "r".into(),
            ended: t,
        },
    ]
}

/// A phase is stored inside its rollout: a rollout in `phase`.
fn rollout_in(phase: Phase) -> Rollout {
    let t = Timestamp::from_millis(1_000);
    Rollout {
        id: 1,
        from: None,
        to: Release::new("v1", "sha-v1"),
        phase,
        plan: Vec::new(),
        step: 0,
        weight: Weight::ZERO,
        step_started: t,
        started: t,
        salt: 0,
        traffic_since: None,
        last_evaluation: None,
    }
}

#[test]
fn a_phase_is_named_as_serde_tags_it() {
    let phases = every_phase();
    assert_eq!(phases.len(), PhaseKind::ALL.len());
    for (phase, kind) in phases.iter().zip(PhaseKind::ALL) {
        assert_eq!(phase.kind(), kind);
        assert_eq!(phase.name(), kind.as_str());
        let stored = serde_json::to_value(rollout_in(phase.clone())).unwrap();
        let tag = stored["phase"]["phase"].clone();
        assert_eq!(tag, kind.as_str());
        assert_eq!(PhaseKind::from_name(kind.as_str()), Some(kind));
    }
    assert_eq!(PhaseKind::from_name("idle"), None);
}

#[test]
fn a_track_is_named_as_serde_writes_it() {
    for t in [Track::Stable, Track::Canary] {
        assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
    }
}

#[test]
fn every_notification_kind_comes_from_a_decision() {
    let decisions = [
        DecisionKind::Deploy,
        DecisionKind::Ready,
        DecisionKind::Advance,
        DecisionKind::Hold,
        DecisionKind::Paused,
        DecisionKind::Resumed,
        DecisionKind::Promoted,
        DecisionKind::Aborted,
        DecisionKind::RolledBack,
        DecisionKind::PreviousReleased,
        DecisionKind::BreachStarted,
        DecisionKind::BreachCleared,
        DecisionKind::CrashLoop,
        DecisionKind::Recovered,
        DecisionKind::Spilled,
        DecisionKind::FailureExpired,
        DecisionKind::Handoff,
    ];
    for kind in NotifyKind::ALL {
        assert!(
            decisions.iter().any(|d| d.notify_kind() == Some(kind)),
            "{kind} is configurable but no decision sends it"
        );
    }
    // Only the audit-log decisions send nothing.
    let silent: Vec<_> = decisions
        .iter()
        .filter(|d| d.notify_kind().is_none())
        .map(|d| d.as_str())
        .collect();
    assert_eq!(
        silent,
        [
            "breach_started",
            "breach_cleared",
            "recovered",
            "spilled",
            "failure_expired"
        ]
    );
}
