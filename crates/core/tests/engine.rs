//! The rollout engine replayed with plain values and a fake clock: every phase transition,
//! gate, abort rule, inconclusive window and manual verb.

use cutover_core::engine::{
    Action, DecisionKind, Engine, EngineError, Event, InstanceFacts, Outcome, Phase, PhaseKind,
    RecoveredInstance, Release, Step, StepHold, Verb,
};
use cutover_core::spec::{AbortSpec, GateSpec, PauseSpec, RolloutSpec, ScheduleKind, StepSpec};
use cutover_core::{Dur, Timestamp, TrackStats, Weight, WindowStats};

const SEC: u64 = 1000;

fn v1() -> Release {
    Release::new("v1", "sha-v1")
}
fn v2() -> Release {
    Release::new("v2", "sha-v2")
}

fn track(n: u64, errors: u64, latency_ms: u64) -> TrackStats {
    TrackStats::uniform(n, errors, latency_ms)
}
fn healthy() -> WindowStats {
    WindowStats {
        stable: track(1000, 0, 20),
        canary: track(200, 0, 20),
    }
}
fn slow() -> WindowStats {
    WindowStats {
        stable: track(1000, 0, 20),
        canary: track(200, 0, 900),
    }
}
fn erroring() -> WindowStats {
    WindowStats {
        stable: track(1000, 0, 20),
        canary: track(200, 10, 20),
    }
}
fn quiet() -> WindowStats {
    WindowStats {
        stable: track(1000, 0, 20),
        canary: track(3, 0, 900),
    }
}
fn a_bit_slower() -> WindowStats {
    WindowStats {
        stable: track(1000, 0, 20),
        canary: track(200, 0, 40),
    }
}

/// A scenario: an engine, a clock, and what it said.
struct Sim {
    engine: Engine,
    now: Timestamp,
    log: Vec<Outcome>,
}

impl Sim {
    fn new(spec: RolloutSpec) -> Sim {
        Sim {
            engine: Engine::new("shop", spec),
            now: Timestamp::from_millis(1_000_000),
            log: Vec::new(),
        }
    }
    /// A service whose stable release v1 already serves traffic.
    fn with_stable(spec: RolloutSpec) -> Sim {
        let mut s = Sim::new(spec);
        s.ok(Event::Deploy {
            release: v1(),
            force: false,
            start_timeout: None,
        });
        s.ok(Event::Ready {
            digest: "sha-v1".into(),
        });
        s
    }
    fn at(&mut self, secs: u64) -> &mut Self {
        self.now = Timestamp::from_millis(self.now.millis() + secs * SEC);
        self
    }
    fn ok(&mut self, e: Event) -> Outcome {
        let out = self.engine.handle(self.now, e).expect("event accepted");
        self.log.push(out.clone());
        out
    }
    fn err(&mut self, e: Event) -> EngineError {
        let before = self.engine.state().clone();
        let err = self.engine.handle(self.now, e).expect_err("event rejected");
        assert_eq!(
            &before,
            self.engine.state(),
            "a rejected event changed the state"
        );
        err
    }
    fn tick(&mut self, secs: u64, stats: WindowStats) -> Outcome {
        self.at(secs);
        self.ok(Event::Measured {
            stats,
            wider: Vec::new(),
            external: Default::default(),
        })
    }
    fn deploy_v2(&mut self) {
        self.ok(Event::Deploy {
            release: v2(),
            force: false,
            start_timeout: None,
        });
        self.ok(Event::Ready {
            digest: "sha-v2".into(),
        });
    }
    fn phase(&self) -> Phase {
        self.engine.state().rollout.as_ref().unwrap().phase.clone()
    }
    fn weight(&self) -> Weight {
        self.engine.state().rollout.as_ref().unwrap().weight
    }
    fn kinds(&self) -> Vec<DecisionKind> {
        self.log
            .iter()
            .flat_map(|o| o.decisions.iter().map(|d| d.kind))
            .collect()
    }
}

fn spec() -> RolloutSpec {
    RolloutSpec {
        step_interval: Dur::from_secs(90),
        interval: Dur::from_secs(5),
        ..RolloutSpec::default()
    }
}

fn route_weights(out: &Outcome) -> Vec<Weight> {
    out.actions
        .iter()
        .filter_map(|a| {
            if let Action::Route { weight, canary, .. } = a {
                Some(if canary.is_some() {
                    *weight
                } else {
                    Weight::ZERO
                })
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn double_schedule_is_the_blueprints() {
    let plan = Step::plan(&RolloutSpec::default());
    let w: Vec<u16> = plan.iter().map(|s| s.weight.bp()).collect();
    assert_eq!(w, vec![200, 400, 800, 1600, 3200, 6400]);
    assert!(plan
        .iter()
        .all(|s| s.hold == StepHold::For(Dur::from_secs(90))));
    let half = RolloutSpec {
        initial_weight: 0.5,
        ..RolloutSpec::default()
    };
    assert_eq!(Step::plan(&half).first().unwrap().weight.bp(), 50);
}

#[test]
fn explicit_steps_inherit_weights_and_stop_at_full() {
    let s = RolloutSpec {
        schedule: ScheduleKind::Steps,
        steps: vec![
            StepSpec {
                weight: Some(5.0),
                pause: None,
            },
            StepSpec {
                weight: None,
                pause: Some(PauseSpec::UntilPromoted),
            },
            StepSpec {
                weight: Some(50.0),
                pause: Some(PauseSpec::For(Dur::from_secs(120))),
            },
            StepSpec {
                weight: Some(100.0),
                pause: None,
            },
            StepSpec {
                weight: Some(100.0),
                pause: None,
            },
        ],
        ..RolloutSpec::default()
    };
    let plan = Step::plan(&s);
    assert_eq!(plan.len(), 3);
    assert_eq!(plan[1].weight.bp(), 500);
    assert_eq!(plan[1].hold, StepHold::UntilPromoted);
    assert_eq!(plan[2].hold, StepHold::For(Dur::from_secs(120)));
}

#[test]
fn first_release_goes_straight_to_full_once_ready() {
    let mut s = Sim::new(spec());
    let out = s.ok(Event::Deploy {
        release: v1(),
        force: false,
        start_timeout: None,
    });
    assert_eq!(
        out.actions,
        vec![Action::Start {
            release: v1(),
            role: None,
        }]
    );
    assert_eq!(s.phase().kind(), PhaseKind::Starting);
    let out = s.ok(Event::Ready {
        digest: "sha-v1".into(),
    });
    assert!(
        matches!(&out.actions[..], [Action::Route { stable, canary: None, .. }] if *stable == v1())
    );
    assert_eq!(s.phase().kind(), PhaseKind::Done);
    assert_eq!(s.engine.state().stable, Some(v1()));
}

#[test]
fn healthy_rollout_doubles_every_step_then_promotes_and_holds_previous() {
    let mut s = Sim::with_stable(spec());
    s.ok(Event::Deploy {
        release: v2(),
        force: false,
        start_timeout: None,
    });
    assert_eq!(s.phase().kind(), PhaseKind::Starting);
    let out = s.ok(Event::Ready {
        digest: "sha-v2".into(),
    });
    assert_eq!(route_weights(&out), vec![Weight::from_bp(200).unwrap()]);
    assert_eq!(s.phase().kind(), PhaseKind::Progressing);

    let mut seen = vec![s.weight().bp()];
    for _ in 0..200 {
        s.tick(5, healthy());
        if seen.last() != Some(&s.weight().bp()) {
            seen.push(s.weight().bp());
        }
        if matches!(s.phase(), Phase::Promoted { .. }) {
            break;
        }
    }
    assert_eq!(seen, vec![200, 400, 800, 1600, 3200, 6400, 10_000]);
    let Phase::Promoted { until } = s.phase() else {
        panic!("not promoted: {:?}", s.phase())
    };
    assert_eq!(s.engine.state().stable, Some(v2()));
    assert_eq!(s.engine.state().previous.as_ref().unwrap().release, v1());
    // 6 steps of 90 s: promoted at 540 s after the canary's first traffic.
    let r = s.engine.state().rollout.clone().unwrap();
    assert_eq!(s.now.since(r.traffic_since.unwrap()).as_secs(), 540);

    // The previous release is stopped when hold_previous (60 min) ends, not before.
    let out = s.tick(59 * 60, healthy());
    assert!(out.actions.is_empty());
    let out = s.tick(61, healthy());
    assert_eq!(
        out.actions,
        vec![Action::Stop {
            release: v1(),
            reason: "hold_previous expired".into()
        }]
    );
    assert!(s.now >= until);
    assert_eq!(s.phase().kind(), PhaseKind::Done);
    assert!(s.kinds().contains(&DecisionKind::PreviousReleased));
}

#[test]
fn failing_gate_holds_then_aborts_after_max_hold() {
    let mut s = Sim::with_stable(RolloutSpec {
        max_hold: Dur::from_secs(60),
        ..spec()
    });
    s.deploy_v2();
    let out = s.tick(90, a_bit_slower());
    assert!(out.actions.is_empty(), "no advance on a failing gate");
    assert_eq!(s.weight().bp(), 200);
    let hold = out
        .decisions
        .iter()
        .find(|d| d.kind == DecisionKind::Hold)
        .expect("hold recorded");
    assert!(
        hold.reason
            .contains("gate p99-vs-stable failed: canary p99 40"),
        "{}",
        hold.reason
    );
    assert!(hold.numbers["gates"][0]["observed"].as_f64().unwrap() > 0.039);
    // Holding is recorded once, not at every interval.
    let out = s.tick(5, a_bit_slower());
    assert!(out.decisions.is_empty());
    // Recovers: advance at the next check.
    let out = s.tick(5, healthy());
    assert_eq!(route_weights(&out), vec![Weight::from_bp(400).unwrap()]);
    // Fails again past max_hold: abort.
    s.tick(90, a_bit_slower());
    s.tick(30, a_bit_slower());
    assert_eq!(s.phase().kind(), PhaseKind::Progressing);
    let out = s.tick(35, a_bit_slower());
    let Phase::Aborted {
        reason,
        automatic: true,
        ..
    } = s.phase()
    else {
        panic!("{:?}", s.phase())
    };
    assert!(reason.contains("max_hold"), "{reason}");
    assert!(
        matches!(&out.actions[0], Action::Route { canary: None, stable, .. } if *stable == v1())
    );
}

#[test]
fn inconclusive_holds_and_never_advances_nor_aborts() {
    let mut s = Sim::with_stable(RolloutSpec {
        max_hold: Dur::from_secs(10),
        ..spec()
    });
    s.deploy_v2();
    // A canary at 900 ms but with 3 samples: noise. Neither the abort rule (45 s) nor max_hold fires.
    for _ in 0..100 {
        let out = s.tick(5, quiet());
        assert!(out.actions.is_empty(), "{:?}", out.actions);
    }
    assert_eq!(s.phase().kind(), PhaseKind::Progressing);
    assert_eq!(s.weight().bp(), 200);
    let hold = s
        .engine
        .state()
        .rollout
        .as_ref()
        .unwrap()
        .hold()
        .cloned()
        .unwrap();
    assert!(
        hold.reason.contains("fewer than min_samples 50"),
        "{}",
        hold.reason
    );
    assert_eq!(hold.failing_since, None);
    // Traffic arrives: it advances.
    let out = s.tick(5, healthy());
    assert_eq!(route_weights(&out), vec![Weight::from_bp(400).unwrap()]);
}

#[test]
fn latency_abort_rule_fires_after_its_for_window_with_one_switch_to_stable() {
    let mut s = Sim::with_stable(spec());
    s.deploy_v2();
    let out = s.tick(5, slow());
    assert!(out.actions.is_empty());
    assert_eq!(out.decisions[0].kind, DecisionKind::BreachStarted);
    for _ in 0..8 {
        assert!(s.tick(5, slow()).actions.is_empty(), "aborted before 45 s");
    }
    let out = s.tick(5, slow()); // 45 s after the breach began
    assert_eq!(out.actions.len(), 2);
    assert!(
        matches!(&out.actions[0], Action::Route { stable, canary: None, weight, .. } if *stable == v1() && *weight == Weight::ZERO)
    );
    assert!(matches!(&out.actions[1], Action::Stop { release, .. } if *release == v2()));
    let d = out
        .decisions
        .iter()
        .find(|d| d.kind == DecisionKind::Aborted)
        .unwrap();
    assert!(d.reason.contains("p99-over-800ms"), "{}", d.reason);
    assert!(d.numbers["observed"].as_f64().unwrap() > 0.8);
    assert!(s.engine.state().failed.contains_key("sha-v2"));
}

#[test]
fn a_breach_that_clears_resets_its_for_window() {
    let mut s = Sim::with_stable(spec());
    s.deploy_v2();
    s.tick(5, slow());
    s.tick(40, slow());
    let out = s.tick(5, healthy());
    assert_eq!(out.decisions[0].kind, DecisionKind::BreachCleared);
    s.tick(5, slow());
    for _ in 0..8 {
        s.tick(5, slow());
    }
    assert_eq!(
        s.phase().kind(),
        PhaseKind::Progressing,
        "the breach restarted its 45 s"
    );
    s.tick(5, slow());
    assert!(matches!(s.phase(), Phase::Aborted { .. }));
}

#[test]
fn error_ratio_abort_rule() {
    let mut s = Sim::with_stable(spec());
    s.deploy_v2();
    s.tick(5, erroring());
    s.tick(30, erroring());
    let Phase::Aborted { reason, .. } = s.phase() else {
        panic!()
    };
    assert!(reason.contains("error-budget-fast-burn"), "{reason}");
}

#[test]
fn abort_rules_watch_a_paused_canary_too() {
    let mut s = Sim::with_stable(RolloutSpec {
        aborts: vec![AbortSpec::ErrorRatio {
            name: "e".into(),
            above: 0.01,
            for_: Dur::default(),
        }],
        ..spec()
    });
    s.deploy_v2();
    s.ok(Event::Command(Verb::Pause));
    s.tick(5, erroring());
    assert!(matches!(s.phase(), Phase::Aborted { .. }));
}

#[test]
fn crash_loop_aborts_a_canary_but_only_records_a_stable_one() {
    let mut s = Sim::with_stable(spec());
    s.ok(Event::Deploy {
        release: v2(),
        force: false,
        start_timeout: None,
    });
    let out = s.ok(Event::CrashLoop {
        digest: "sha-v1".into(),
        detail: "3 restarts in 60s".into(),
        facts: vec![],
    });
    assert!(out.actions.is_empty());
    assert_eq!(out.decisions[0].kind, DecisionKind::CrashLoop);
    let out = s.ok(Event::CrashLoop {
        digest: "sha-v2".into(),
        detail: "3 restarts in 60s".into(),
        facts: vec![],
    });
    // Still starting: it never had traffic, so no route change is needed, only the stop.
    assert!(matches!(&out.actions[..], [Action::Stop { release, .. }] if *release == v2()));
    assert!(matches!(
        s.phase(),
        Phase::Aborted {
            automatic: true,
            ..
        }
    ));
}

#[test]
fn start_failure_aborts() {
    let mut s = Sim::with_stable(spec());
    s.ok(Event::Deploy {
        release: v2(),
        force: false,
        start_timeout: None,
    });
    s.ok(Event::StartFailed {
        digest: "sha-v2".into(),
        reason: "not ready within 60s".into(),
        facts: vec![],
    });
    let Phase::Aborted { reason, .. } = s.phase() else {
        panic!()
    };
    assert!(reason.contains("not ready within 60s"));
}

#[test]
fn failed_digest_is_refused_without_force() {
    let mut s = Sim::with_stable(spec());
    s.deploy_v2();
    s.ok(Event::CrashLoop {
        digest: "sha-v2".into(),
        detail: "x".into(),
        facts: vec![],
    });
    let e = s.err(Event::Deploy {
        release: v2(),
        force: false,
        start_timeout: None,
    });
    assert!(
        matches!(&e, EngineError::FailedRelease { .. }) && e.to_string().contains("--force"),
        "{e}"
    );
    // The same name with another digest is another release.
    s.ok(Event::Deploy {
        release: Release::new("v2", "sha-v2-fixed"),
        force: false,
        start_timeout: None,
    });
    s.ok(Event::Command(Verb::Abort));
    // A manual abort does not mark the digest failed.
    s.ok(Event::Deploy {
        release: Release::new("v2", "sha-v2-fixed"),
        force: false,
        start_timeout: None,
    });
    s.ok(Event::Command(Verb::Abort));
    s.ok(Event::Deploy {
        release: v2(),
        force: true,
        start_timeout: None,
    });
    assert_eq!(s.phase().kind(), PhaseKind::Starting);
}

/// A failure mark is kept for the retention, then expires (`ExpireFailures`): a release that
/// failed that long ago is deployed again without `--force`, analysed like any other. The mark
/// of the current (or last) rollout's release is kept whatever its age.
#[test]
fn failure_marks_expire_after_the_retention_but_the_last_rollouts() {
    let mut s = Sim::with_stable(spec());
    s.deploy_v2();
    s.ok(Event::CrashLoop {
        digest: "sha-v2".into(),
        detail: "x".into(),
        facts: vec![],
    });
    let failed_at = s.now;
    s.at(10);
    let v3 = Release::new("v3", "sha-v3");
    s.ok(Event::Deploy {
        release: v3.clone(),
        force: false,
        start_timeout: None,
    });
    s.ok(Event::Ready {
        digest: "sha-v3".into(),
    });
    s.ok(Event::CrashLoop {
        digest: "sha-v3".into(),
        detail: "y".into(),
        facts: vec![],
    });
    assert_eq!(s.engine.state().failed.len(), 2);

    // A cutoff at the first failure expires nothing: only marks set before it go.
    s.at(3600);
    let out = s.ok(Event::ExpireFailures { before: failed_at });
    assert!(out.decisions.is_empty() && out.actions.is_empty());
    assert_eq!(s.engine.state().failed.len(), 2);

    // Past both: v2's expires; v3's stays, v3 being the last rollout's release.
    let out = s.ok(Event::ExpireFailures {
        before: Timestamp::from_millis(s.now.millis() - 1),
    });
    assert_eq!(out.decisions.len(), 1, "{out:?}");
    let d = &out.decisions[0];
    assert_eq!(d.kind, DecisionKind::FailureExpired);
    assert_eq!(d.rollout, None, "not the current rollout's decision");
    assert_eq!(d.numbers["digest"], "sha-v2");
    assert_eq!(d.numbers["failed_at"], failed_at.millis());
    assert!(d.reason.contains("without --force"), "{}", d.reason);
    assert!(out.actions.is_empty());
    assert_eq!(
        s.engine.state().failed.keys().collect::<Vec<_>>(),
        ["sha-v3"]
    );
    // v2's crash loop (stopped with it, so never reported ended) is forgotten with its mark.
    assert_eq!(
        s.engine.state().crash_looping.iter().collect::<Vec<_>>(),
        ["sha-v3"]
    );
    // v3 is still refused; v2 is deployed again without --force.
    let e = s.err(Event::Deploy {
        release: v3,
        force: false,
        start_timeout: None,
    });
    assert!(matches!(e, EngineError::FailedRelease { .. }), "{e}");
    s.ok(Event::Deploy {
        release: v2(),
        force: false,
        start_timeout: None,
    });
    assert_eq!(s.phase().kind(), PhaseKind::Starting);
    // Now v3's rollout is not the last one: its mark expires too.
    let out = s.ok(Event::ExpireFailures {
        before: Timestamp::from_millis(s.now.millis()),
    });
    assert_eq!(out.decisions.len(), 1);
    assert!(s.engine.state().failed.is_empty());
}

#[test]
fn deploy_conflicts_are_rejected_without_change() {
    let mut s = Sim::with_stable(spec());
    let e = s.err(Event::Deploy {
        release: v1(),
        force: false,
        start_timeout: None,
    });
    assert!(e.to_string().contains("already the stable release"));
    s.deploy_v2();
    let e = s.err(Event::Deploy {
        release: Release::new("v3", "sha-v3"),
        force: false,
        start_timeout: None,
    });
    assert!(e.to_string().contains("cutover abort"), "{e}");
}

#[test]
fn manual_verbs_in_every_phase() {
    // Starting
    let mut s = Sim::with_stable(spec());
    s.ok(Event::Deploy {
        release: v2(),
        force: false,
        start_timeout: None,
    });
    for v in [Verb::Pause, Verb::Resume, Verb::Promote] {
        let e = s.err(Event::Command(v));
        assert!(!e.to_string().is_empty());
    }
    s.ok(Event::Command(Verb::Abort));
    assert!(matches!(
        s.phase(),
        Phase::Aborted {
            automatic: false,
            ..
        }
    ));
    // Aborted: nothing applies.
    for v in [
        Verb::Pause,
        Verb::Resume,
        Verb::Promote,
        Verb::Abort,
        Verb::Rollback,
    ] {
        let e = s.err(Event::Command(v));
        assert!(
            e.to_string().contains("no rollout is in progress"),
            "{v}: {e}"
        );
    }

    // Progressing ⇄ Paused
    let mut s = Sim::with_stable(spec());
    s.deploy_v2();
    s.err(Event::Command(Verb::Resume));
    s.tick(60, healthy());
    s.ok(Event::Command(Verb::Pause));
    assert!(matches!(s.phase(), Phase::Paused { manual: true, .. }));
    s.err(Event::Command(Verb::Pause));
    // Paused: no advance however long.
    for _ in 0..100 {
        assert!(s.tick(5, healthy()).actions.is_empty());
    }
    s.ok(Event::Command(Verb::Resume));
    assert_eq!(s.phase().kind(), PhaseKind::Progressing);
    // The paused time did not count: 30 s of the step remain.
    assert!(s.tick(25, healthy()).actions.is_empty());
    assert_eq!(
        route_weights(&s.tick(5, healthy())),
        vec![Weight::from_bp(400).unwrap()]
    );

    // Promote skips the remaining steps.
    let out = s.ok(Event::Command(Verb::Promote));
    assert!(
        matches!(&out.actions[..], [Action::Route { stable, canary: None, .. }] if *stable == v2())
    );
    assert!(matches!(s.phase(), Phase::Promoted { .. }));
    s.err(Event::Command(Verb::Promote));
    s.err(Event::Command(Verb::Pause));
    let e = s.err(Event::Command(Verb::Abort));
    assert!(e.to_string().contains("cutover rollback"));

    // Rollback inside hold_previous: one route switch, no start.
    let out = s.ok(Event::Command(Verb::Rollback));
    assert_eq!(out.actions.len(), 2);
    assert!(
        matches!(&out.actions[0], Action::Route { stable, canary: None, .. } if *stable == v1())
    );
    assert!(matches!(&out.actions[1], Action::Stop { release, .. } if *release == v2()));
    assert!(!out
        .actions
        .iter()
        .any(|a| matches!(a, Action::Start { .. })));
    assert!(matches!(s.phase(), Phase::RolledBack { .. }));
    assert_eq!(s.engine.state().stable, Some(v1()));
    assert!(s.engine.state().failed.contains_key("sha-v2"));
    s.err(Event::Command(Verb::Rollback));
}

#[test]
fn rollback_after_hold_previous_says_how_to_get_back() {
    let mut s = Sim::with_stable(RolloutSpec {
        hold_previous: Dur::from_secs(60),
        ..spec()
    });
    s.deploy_v2();
    s.ok(Event::Command(Verb::Promote));
    s.tick(61, healthy());
    assert_eq!(s.phase().kind(), PhaseKind::Done);
    let e = s.err(Event::Command(Verb::Rollback));
    assert!(e.to_string().contains("cutover deploy v1"), "{e}");
}

#[test]
fn rollback_while_progressing_is_an_abort() {
    let mut s = Sim::with_stable(spec());
    s.deploy_v2();
    let out = s.ok(Event::Command(Verb::Rollback));
    assert!(
        matches!(&out.actions[0], Action::Route { stable, canary: None, .. } if *stable == v1())
    );
    assert!(matches!(
        s.phase(),
        Phase::Aborted {
            automatic: false,
            ..
        }
    ));
}

#[test]
fn pause_until_promoted_step_waits_for_resume() {
    let steps = RolloutSpec {
        schedule: ScheduleKind::Steps,
        steps: vec![
            StepSpec {
                weight: Some(10.0),
                pause: Some(PauseSpec::For(Dur::from_secs(10))),
            },
            StepSpec {
                weight: Some(50.0),
                pause: Some(PauseSpec::UntilPromoted),
            },
            StepSpec {
                weight: Some(75.0),
                pause: None,
            },
        ],
        ..spec()
    };
    let mut s = Sim::with_stable(steps);
    s.deploy_v2();
    assert_eq!(s.weight().bp(), 1000);
    let out = s.tick(10, healthy());
    assert_eq!(route_weights(&out), vec![Weight::from_bp(5000).unwrap()]);
    assert!(matches!(s.phase(), Phase::Paused { manual: false, .. }));
    for _ in 0..50 {
        assert!(s.tick(5, healthy()).actions.is_empty());
    }
    let out = s.ok(Event::Command(Verb::Resume));
    assert_eq!(route_weights(&out), vec![Weight::from_bp(7500).unwrap()]);
    s.tick(90, healthy());
    assert!(matches!(s.phase(), Phase::Promoted { .. }));
}

#[test]
fn weights_only_grow_during_a_rollout() {
    let mut s = Sim::with_stable(RolloutSpec {
        max_hold: Dur::from_secs(3600),
        ..spec()
    });
    s.deploy_v2();
    let mut last = s.weight();
    let windows = [
        healthy(),
        a_bit_slower(),
        quiet(),
        healthy(),
        healthy(),
        a_bit_slower(),
    ];
    for i in 0..300 {
        s.tick(5, windows[i % windows.len()].clone());
        if !s.engine.state().rollout.as_ref().unwrap().phase.is_active() {
            break;
        }
        assert!(s.weight() >= last);
        last = s.weight();
    }
}

#[test]
fn a_new_deploy_stops_the_held_previous_release() {
    let mut s = Sim::with_stable(spec());
    s.deploy_v2();
    s.ok(Event::Command(Verb::Promote));
    let out = s.ok(Event::Deploy {
        release: Release::new("v3", "sha-v3"),
        force: false,
        start_timeout: None,
    });
    assert_eq!(
        out.actions[0],
        Action::Stop {
            release: v1(),
            reason: "a new rollout started".into()
        }
    );
    assert_eq!(
        out.actions[1],
        Action::Start {
            release: Release::new("v3", "sha-v3"),
            role: None,
        }
    );
    let r = s.engine.state().rollout.as_ref().unwrap();
    assert_eq!(r.from, Some(v2()));
}

#[test]
fn recovery_restarts_what_the_state_says_and_routes_as_before() {
    let mut s = Sim::with_stable(spec());
    s.deploy_v2();
    s.tick(90, healthy());
    let saved = serde_json::to_string(s.engine.state()).unwrap();
    // cutover dies; a new one restores the persisted state.
    let state = serde_json::from_str(&saved).unwrap();
    let mut e = Engine::restore(spec(), state);
    let out = e
        .handle(
            s.now,
            Event::Recover {
                alive: vec![],
                dead: vec![],
            },
        )
        .unwrap();
    assert_eq!(
        out.actions[0],
        Action::Start {
            release: v1(),
            role: None,
        }
    );
    assert_eq!(
        out.actions[1],
        Action::Start {
            release: v2(),
            role: None,
        }
    );
    assert!(
        matches!(&out.actions[2], Action::Route { canary: Some(c), weight, .. } if *c == v2() && weight.bp() == 400)
    );
    assert_eq!(
        e.state().rollout.as_ref().unwrap().phase.kind(),
        PhaseKind::Progressing
    );
}

fn inst(id: &str, digest: &str, pid: u32) -> RecoveredInstance {
    RecoveredInstance {
        instance: id.into(),
        digest: digest.into(),
        pid,
    }
}

#[test]
fn recovery_readopts_live_instances_replaces_dead_ones_and_says_so_once() {
    let mut s = Sim::with_stable(spec());
    s.deploy_v2();
    s.tick(90, healthy());
    let (step, weight) = {
        let r = s.engine.state().rollout.as_ref().unwrap();
        (r.step, r.weight)
    };
    let mut e = Engine::restore(spec(), s.engine.state().clone());
    let out = e
        .handle(
            s.now,
            Event::Recover {
                alive: vec![
                    inst("v1-0", "sha-v1", 11),
                    inst("v2-0", "sha-v2", 21),
                    inst("v0-0", "sha-v0", 5),
                ],
                dead: vec![inst("v2-1", "sha-v2", 22)],
            },
        )
        .unwrap();
    // The same step and weight; one decision, which names what happened to each process.
    let r = e.state().rollout.as_ref().unwrap();
    assert_eq!(
        (r.step, r.weight, r.phase.kind()),
        (step, weight, PhaseKind::Progressing)
    );
    let [d] = &out.decisions[..] else {
        panic!("one decision: {:?}", out.decisions)
    };
    assert_eq!(d.kind, DecisionKind::Recovered);
    assert!(
        d.reason
            .contains("re-adopted v1-0 (pid 11), v2-0 (pid 21) without restarting them"),
        "{}",
        d.reason
    );
    assert!(
        d.reason.contains("replacing v2-1 (pid 22), which had died"),
        "{}",
        d.reason
    );
    assert!(
        d.reason
            .contains("stopping v0-0 (pid 5), no longer part of the rollout"),
        "{}",
        d.reason
    );
    assert!(
        d.reason
            .contains("resumes progressing at step 2 and weight 4%"),
        "{}",
        d.reason
    );
    assert_eq!(d.numbers["adopted"], serde_json::json!(["v1-0", "v2-0"]));
    assert_eq!(d.numbers["replaced"], serde_json::json!(["v2-1"]));
    assert_eq!(d.numbers["stopped"], serde_json::json!(["v0-0"]));
    assert_eq!(d.numbers["started"], serde_json::json!([]));
}

/// "No process start" is said only when true: a held release whose instance died while
/// cutover was down was started again at recovery.
#[test]
fn rollback_after_a_recovery_says_whether_a_process_was_started() {
    let promoted = || {
        let mut s = Sim::with_stable(spec());
        s.deploy_v2();
        s.ok(Event::Command(Verb::Promote));
        Engine::restore(spec(), s.engine.state().clone())
    };
    let now = Timestamp::from_millis(2_000_000);
    let mut e = promoted();
    assert_eq!(e.rollback_target(), Some(&v1()));
    e.handle(
        now,
        Event::Recover {
            alive: vec![inst("v1-0", "sha-v1", 11), inst("v2-0", "sha-v2", 21)],
            dead: vec![],
        },
    )
    .unwrap();
    let out = e.handle(now, Event::Command(Verb::Rollback)).unwrap();
    assert!(
        out.decisions[0].reason.contains("with no process start"),
        "{}",
        out.decisions[0].reason
    );
    assert_eq!(
        e.rollback_target(),
        None,
        "rolled back: nothing to roll back to"
    );

    let mut e = promoted();
    e.handle(
        now,
        Event::Recover {
            alive: vec![inst("v2-0", "sha-v2", 21)],
            dead: vec![inst("v1-0", "sha-v1", 11)],
        },
    )
    .unwrap();
    let out = e.handle(now, Event::Command(Verb::Rollback)).unwrap();
    let reason = &out.decisions[0].reason;
    assert!(!reason.contains("no process start"), "{reason}");
    assert!(
        reason.contains("restarted when cutover recovered"),
        "{reason}"
    );
}

/// Invariant 10: the one time the canary gets more than its weight is recorded, as is its end;
/// nothing else about the rollout changes.
#[test]
fn stable_gone_is_recorded_as_a_spill_and_so_is_its_end() {
    let mut s = Sim::with_stable(spec());
    s.deploy_v2();
    let before = s.engine.state().clone();
    let out = s.ok(Event::StableGone {
        gone: true,
        detail: "v1 is not running".into(),
    });
    assert!(out.actions.is_empty());
    let [d] = &out.decisions[..] else {
        panic!("{:?}", out.decisions)
    };
    assert_eq!(d.kind, DecisionKind::Spilled);
    assert!(
        d.reason
            .contains("no instance left at all (v1 is not running)"),
        "{}",
        d.reason
    );
    assert!(d.reason.contains("go to the canary v2"), "{}", d.reason);
    assert_eq!(s.engine.state(), &before);
    let out = s.ok(Event::StableGone {
        gone: false,
        detail: String::new(),
    });
    assert!(
        out.decisions[0].reason.contains("back to its weight 2%"),
        "{}",
        out.decisions[0].reason
    );
}

#[test]
fn eta_counts_remaining_steps() {
    let mut s = Sim::with_stable(spec());
    s.deploy_v2();
    let eta = s.engine.eta(s.now).unwrap();
    assert_eq!(eta.since(s.now).as_secs(), 540);
}

#[test]
fn gates_are_configurable() {
    let lenient = RolloutSpec {
        gates: vec![GateSpec::Latency {
            name: "p99".into(),
            quantile: 0.99,
            max_increase_percent: None,
            slack: Dur::default(),
            max: Some(Dur::from_millis(100)),
        }],
        ..spec()
    };
    let mut s = Sim::with_stable(lenient);
    s.deploy_v2();
    let out = s.tick(90, a_bit_slower());
    assert_eq!(route_weights(&out), vec![Weight::from_bp(400).unwrap()]);
}

mod analysis {
    use super::*;
    use cutover_core::judge::External;
    use cutover_core::mannwhitney::Direction;
    use cutover_core::spec::Provider;
    use std::collections::BTreeMap;

    fn promql_spec() -> RolloutSpec {
        RolloutSpec {
            gates: vec![GateSpec::Promql { name: "swaps".into(), query: "swap_failures > 0".into(), provider: Provider::Embedded }],
            aborts: vec![AbortSpec::Promql {
                name: "blueprint-p99".into(),
                query: "histogram_quantile(0.99, rate(http_request_duration_seconds_bucket[30s])) > 0.800".into(),
                for_: Dur::from_secs(45),
                provider: Provider::Embedded,
            }],
            ..spec()
        }
    }

    fn ext(gate: External, abort: External) -> BTreeMap<String, External> {
        BTreeMap::from([
            ("swaps".to_string(), gate),
            ("blueprint-p99".to_string(), abort),
        ])
    }
    fn fired(v: f64) -> External {
        External::Fired {
            value: Some(v),
            detail: format!("fires ({v})"),
        }
    }
    fn clear(v: f64) -> External {
        External::Clear {
            value: Some(v),
            detail: format!("clear ({v})"),
        }
    }
    fn nodata() -> External {
        External::NoData {
            detail: "no data".into(),
        }
    }

    impl Sim {
        fn tick_ext(&mut self, secs: u64, external: BTreeMap<String, External>) -> Outcome {
            self.at(secs);
            self.ok(Event::Measured {
                stats: healthy(),
                wider: Vec::new(),
                external,
            })
        }
    }

    #[test]
    fn a_promql_abort_rule_fires_after_its_for() {
        let mut s = Sim::with_stable(promql_spec());
        s.deploy_v2();
        for _ in 0..9 {
            s.tick_ext(5, ext(clear(0.0), fired(1.2)));
            assert_eq!(s.phase().kind(), PhaseKind::Progressing);
        }
        let out = s.tick_ext(5, ext(clear(0.0), fired(1.2)));
        let Phase::Aborted {
            reason,
            automatic: true,
            ..
        } = s.phase()
        else {
            panic!("{:?}", s.phase())
        };
        assert!(
            reason.contains("blueprint-p99") && reason.contains("fires (1.2)"),
            "{reason}"
        );
        assert!(matches!(
            &out.actions[0],
            Action::Route { canary: None, .. }
        ));
    }

    #[test]
    fn a_firing_promql_gate_holds_and_no_data_is_inconclusive() {
        let mut s = Sim::with_stable(promql_spec());
        s.deploy_v2();
        let out = s.tick_ext(90, ext(fired(3.0), clear(0.1)));
        assert!(out.actions.is_empty());
        assert!(s
            .engine
            .state()
            .rollout
            .as_ref()
            .unwrap()
            .hold()
            .unwrap()
            .reason
            .contains("gate swaps failed"));
        let out = s.tick_ext(5, ext(nodata(), nodata()));
        assert!(out.actions.is_empty(), "no data never advances");
        let hold = s
            .engine
            .state()
            .rollout
            .as_ref()
            .unwrap()
            .hold()
            .cloned()
            .unwrap();
        assert!(hold.reason.starts_with("inconclusive"), "{}", hold.reason);
        // A rule with no result at all (provider down, not evaluated) is inconclusive too.
        assert!(s.tick_ext(5, BTreeMap::new()).actions.is_empty());
        let out = s.tick_ext(5, ext(clear(0.0), clear(0.1)));
        assert_eq!(route_weights(&out), vec![Weight::from_bp(400).unwrap()]);
    }

    #[test]
    fn max_inconclusive_aborts_a_rollout_that_cannot_be_judged() {
        let mut s = Sim::with_stable(RolloutSpec {
            max_inconclusive: Dur::from_secs(60),
            ..promql_spec()
        });
        s.deploy_v2();
        // Inconclusive from the first tick; exactly 60 s later is not yet "longer than".
        for _ in 0..13 {
            s.tick_ext(5, ext(nodata(), nodata()));
            assert_eq!(s.phase().kind(), PhaseKind::Progressing);
        }
        s.tick_ext(5, ext(nodata(), nodata()));
        let Phase::Aborted { reason, .. } = s.phase() else {
            panic!("{:?}", s.phase())
        };
        assert!(reason.contains("max_inconclusive"), "{reason}");
        // The default is 10 minutes: a rollout never holds in limbo forever.
        let mut s = Sim::with_stable(promql_spec());
        s.deploy_v2();
        for _ in 0..=120 {
            assert!(s.tick_ext(5, ext(nodata(), nodata())).actions.is_empty());
        }
        let out = s.tick_ext(5, ext(nodata(), nodata()));
        let aborted = out
            .decisions
            .iter()
            .find(|d| d.kind == DecisionKind::Aborted)
            .expect("aborted after the default max_inconclusive");
        assert!(
            aborted.reason.contains("max_inconclusive 10m"),
            "{}",
            aborted.reason
        );
        assert_eq!(aborted.numbers["max_inconclusive"], "10m");
        assert_eq!(aborted.numbers["automatic"], true);
    }

    #[test]
    fn a_matching_alert_aborts_the_rollout_in_progress_only() {
        let mut s = Sim::with_stable(spec());
        let labels = BTreeMap::from([
            ("alertname".to_string(), "HotWalletLag".to_string()),
            ("service".to_string(), "shop".to_string()),
        ]);
        let out = s.ok(Event::Alert {
            name: "HotWalletLag".into(),
            labels: labels.clone(),
        });
        assert!(
            out.actions.is_empty() && out.decisions.is_empty(),
            "no rollout: nothing to abort"
        );
        s.deploy_v2();
        let out = s.ok(Event::Alert {
            name: "HotWalletLag".into(),
            labels,
        });
        let Phase::Aborted {
            reason,
            automatic: true,
            ..
        } = s.phase()
        else {
            panic!()
        };
        assert!(
            reason.contains("alert HotWalletLag is firing") && reason.contains("service=\"shop\""),
            "{reason}"
        );
        assert_eq!(
            out.decisions[0].numbers["labels"]["alertname"],
            "HotWalletLag"
        );
    }

    #[test]
    fn mann_whitney_gate_holds_a_slower_canary_and_passes_a_same_one() {
        let mw = RolloutSpec {
            gates: vec![GateSpec::MannWhitney {
                name: "mw".into(),
                confidence: 0.95,
                tolerance_percent: 5.0,
                direction: Direction::Increase,
            }],
            ..spec()
        };
        let spread = |base: u64, n: u64| {
            let mut t = TrackStats {
                requests: n,
                ..Default::default()
            };
            for i in 0..n {
                t.latency.record(base * 1000 + (i % 50) * 200);
            }
            t
        };
        let mut s = Sim::with_stable(mw.clone());
        s.deploy_v2();
        s.at(90);
        let out = s.ok(Event::Measured {
            stats: WindowStats {
                stable: spread(20, 400),
                canary: spread(30, 200),
            },
            wider: Vec::new(),
            external: Default::default(),
        });
        assert!(out.actions.is_empty());
        let gate = &s
            .engine
            .state()
            .rollout
            .as_ref()
            .unwrap()
            .last_evaluation
            .as_ref()
            .unwrap()
            .gates[0];
        assert_eq!(
            gate.outcome,
            cutover_core::judge::Outcome::Fail,
            "{}",
            gate.detail
        );
        assert!(gate.p_value.unwrap() < 0.05, "{:?}", gate.p_value);
        let out = s.tick(
            5,
            WindowStats {
                stable: spread(20, 400),
                canary: spread(20, 200),
            },
        );
        assert_eq!(route_weights(&out), vec![Weight::from_bp(400).unwrap()]);
    }
}

/// An abort rule that cannot be judged (e.g. its Prometheus is down) holds the rollout even
/// when every gate passes: more traffic must not go to a canary nobody can watch.
#[test]
fn a_blind_abort_rule_holds_the_rollout() {
    use cutover_core::judge::External;
    use cutover_core::spec::Provider;
    let spec = RolloutSpec {
        aborts: vec![AbortSpec::Promql {
            name: "remote".into(),
            query: "x > 1".into(),
            for_: Dur::default(),
            provider: Provider::Embedded,
        }],
        ..spec()
    };
    let mut s = Sim::with_stable(spec);
    s.deploy_v2();
    let down = std::collections::BTreeMap::from([(
        "remote".to_string(),
        External::NoData {
            detail: "Prometheus unreachable".into(),
        },
    )]);
    s.at(90);
    let out = s.ok(Event::Measured {
        stats: healthy(),
        wider: Vec::new(),
        external: down.clone(),
    });
    assert!(out.actions.is_empty());
    let hold = s
        .engine
        .state()
        .rollout
        .as_ref()
        .unwrap()
        .hold()
        .cloned()
        .unwrap();
    assert!(
        hold.reason.contains("abort rule remote") && hold.reason.contains("unreachable"),
        "{}",
        hold.reason
    );
    let up = std::collections::BTreeMap::from([(
        "remote".to_string(),
        External::Clear {
            value: Some(0.0),
            detail: "clear".into(),
        },
    )]);
    s.at(5);
    let out = s.ok(Event::Measured {
        stats: healthy(),
        wider: Vec::new(),
        external: up,
    });
    assert_eq!(route_weights(&out), vec![Weight::from_bp(400).unwrap()]);
}

#[test]
fn refusal_of_a_failed_release_shows_a_readable_time() {
    let mut s = Sim::with_stable(spec());
    s.deploy_v2();
    s.ok(Event::CrashLoop {
        digest: "sha-v2".into(),
        detail: "3 restarts in 60s".into(),
        facts: vec![],
    });
    let e = s.err(Event::Deploy {
        release: v2(),
        force: false,
        start_timeout: None,
    });
    let text = e.to_string();
    let at = s.engine.state().failed["sha-v2"].at.rfc3339();
    assert!(text.contains(&format!("failed at {at}:")), "{text}");
    assert!(at.ends_with('Z') && at.contains('T'), "{at}");
    assert!(!text.contains("since epoch"), "{text}");
    assert!(text.contains("app.digest_paths"), "{text}");
}

#[test]
fn a_forced_release_that_is_promoted_is_no_longer_failed() {
    let mut s = Sim::with_stable(spec());
    s.deploy_v2();
    s.ok(Event::CrashLoop {
        digest: "sha-v2".into(),
        detail: "flaky".into(),
        facts: vec![],
    });
    let failed_at = s.engine.state().failed["sha-v2"].at;
    s.ok(Event::Deploy {
        release: v2(),
        force: true,
        start_timeout: None,
    });
    // Still failed while the forced rollout runs: an abort now must not lose the mark.
    assert!(s.engine.state().failed.contains_key("sha-v2"));
    s.ok(Event::Ready {
        digest: "sha-v2".into(),
    });
    let out = s.ok(Event::Command(Verb::Promote));
    assert!(!s.engine.state().failed.contains_key("sha-v2"));
    let d = out
        .decisions
        .iter()
        .find(|d| d.kind == DecisionKind::Promoted)
        .expect("a promotion decision");
    assert!(d.reason.contains("now cleared"), "{}", d.reason);
    assert!(d.reason.contains(&failed_at.rfc3339()), "{}", d.reason);
    assert_eq!(
        d.numbers["cleared_failure"]["reason"],
        "canary is crash-looping: flaky"
    );
    // Deploying it again is now an ordinary conflict (it is stable), not a failed-release refusal.
    let e = s.err(Event::Deploy {
        release: v2(),
        force: false,
        start_timeout: None,
    });
    assert!(matches!(e, EngineError::AlreadyStable { .. }), "{e}");
}

#[test]
fn a_forced_first_release_that_becomes_ready_is_no_longer_failed() {
    let mut s = Sim::new(spec());
    s.ok(Event::Deploy {
        release: v1(),
        force: false,
        start_timeout: None,
    });
    s.ok(Event::StartFailed {
        digest: "sha-v1".into(),
        reason: "not ready".into(),
        facts: vec![],
    });
    assert!(s.engine.state().failed.contains_key("sha-v1"));
    s.ok(Event::Deploy {
        release: v1(),
        force: true,
        start_timeout: None,
    });
    let out = s.ok(Event::Ready {
        digest: "sha-v1".into(),
    });
    assert!(s.engine.state().failed.is_empty());
    assert!(
        out.decisions[0].reason.contains("now cleared"),
        "{:?}",
        out.decisions
    );
}

#[test]
fn start_failures_carry_the_facts_and_only_claim_a_stable_when_there_is_one() {
    let facts = vec![InstanceFacts {
        instance: "v1-0".into(),
        last_probe: Some("GET /ready → connect 127.0.0.1:41234: Connection refused".into()),
        last_exit: None,
        output_tail: vec!["loading model".into(), "panic: no such file".into()],
        log: Some("/var/lib/cutover/logs/v1-0.log".into()),
    }];
    // The first release: no stable to fall back to.
    let mut s = Sim::new(spec());
    s.ok(Event::Deploy {
        release: v1(),
        force: false,
        start_timeout: None,
    });
    let out = s.ok(Event::StartFailed {
        digest: "sha-v1".into(),
        reason: "not ready within app.start_timeout (30s)".into(),
        facts: facts.clone(),
    });
    let d = &out.decisions[0];
    assert_eq!(d.kind, DecisionKind::Aborted);
    for part in [
        "first release v1 could not start: not ready within app.start_timeout (30s)",
        "v1-0: last readiness probe GET /ready → connect 127.0.0.1:41234: Connection refused",
        "last output lines: «loading model» «panic: no such file»",
        "log: /var/lib/cutover/logs/v1-0.log",
        "there is no stable release yet",
    ] {
        assert!(
            d.reason.contains(part),
            "{part:?} missing from {}",
            d.reason
        );
    }
    assert!(!d.reason.contains("back on stable"), "{}", d.reason);
    assert_eq!(d.numbers["facts"][0]["instance"], "v1-0");
    let Phase::Aborted { reason, .. } = s.phase() else {
        panic!("{:?}", s.phase())
    };
    assert!(
        reason.contains("log: /var/lib/cutover/logs/v1-0.log"),
        "{reason}"
    );

    // A canary that never took traffic: stable kept it all.
    let mut s = Sim::with_stable(spec());
    s.ok(Event::Deploy {
        release: v2(),
        force: false,
        start_timeout: None,
    });
    let out = s.ok(Event::CrashLoop {
        digest: "sha-v2".into(),
        detail: "instance v2-0 restarted 3 times within 10s".into(),
        facts: vec![InstanceFacts {
            instance: "v2-0".into(),
            last_exit: Some("exited with status 3".into()),
            ..InstanceFacts::default()
        }],
    });
    let reason = &out.decisions[0].reason;
    assert!(
        reason.contains("v2-0: last exit: exited with status 3"),
        "{reason}"
    );
    assert!(reason.contains("stable v1"), "{reason}");
    assert!(!reason.contains("back on stable"), "{reason}");

    // A canary with traffic: now it is true that traffic went back.
    let mut s = Sim::with_stable(spec());
    s.deploy_v2();
    let out = s.ok(Event::CrashLoop {
        digest: "sha-v2".into(),
        detail: "x".into(),
        facts: vec![],
    });
    assert!(out.decisions[0]
        .reason
        .contains("all traffic is back on stable"));
}
