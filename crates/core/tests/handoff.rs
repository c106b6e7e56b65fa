//! `strategy = "handoff"` on plain values (DESIGN.md invariant 7): a singleton's active role
//! moves make-before-break with a fencing token that only grows — on the happy path, on each
//! failure path (never ready, the call fails, no result in time, an operator's abort, a
//! restart of cutover in the middle), and across a restore from a snapshot.

use cutover_core::engine::{
    Action, DecisionKind, Engine, EngineError, Event, Fencing, Outcome, Phase, PhaseKind, Release,
    Role, State, Verb,
};
use cutover_core::spec::{RolloutSpec, Strategy};
use cutover_core::{Dur, Timestamp};

fn rel(v: &str) -> Release {
    Release::new(v, format!("sha-{v}"))
}

fn spec() -> RolloutSpec {
    let mut s = RolloutSpec {
        strategy: Strategy::Handoff,
        ..RolloutSpec::default()
    };
    s.handoff.drain_timeout = Dur::from_secs(2);
    s.handoff.timeout = Dur::from_secs(1);
    s
}

/// A scenario: the engine, a clock, every token that any action gave out, in order.
struct Sim {
    engine: Engine,
    now: Timestamp,
    tokens: Vec<u64>,
    decisions: Vec<(DecisionKind, String)>,
}

impl Sim {
    fn new() -> Sim {
        Sim::restore(Engine::new("signer", spec()))
    }
    fn restore(engine: Engine) -> Sim {
        Sim {
            engine,
            now: Timestamp::from_millis(1_000_000),
            tokens: Vec::new(),
            decisions: Vec::new(),
        }
    }
    fn at(&mut self, ms: u64) -> &mut Self {
        self.now = Timestamp::from_millis(self.now.millis() + ms);
        self
    }
    fn ok(&mut self, e: Event) -> Outcome {
        let out = self.engine.handle(self.now, e).expect("event accepted");
        for a in &out.actions {
            let given = match a {
                Action::Start {
                    role:
                        Some(Role {
                            active: true,
                            token,
                        }),
                    ..
                } => Some(*token),
                Action::Handoff { token, .. } | Action::Reclaim { token, .. } => Some(*token),
                _ => None,
            };
            // Re-telling a holder its token (a restart) is not a new token.
            if let Some(t) = given.filter(|t| self.tokens.last() != Some(t)) {
                self.tokens.push(t);
            }
        }
        self.decisions
            .extend(out.decisions.iter().map(|d| (d.kind, d.reason.clone())));
        out
    }
    fn deploy(&mut self, v: &str) -> Outcome {
        self.ok(Event::Deploy {
            release: rel(v),
            force: false,
            start_timeout: Some(Dur::from_secs(5)),
        })
    }
    fn ready(&mut self, v: &str) -> Outcome {
        self.ok(Event::Ready {
            digest: format!("sha-{v}"),
        })
    }
    fn phase(&self) -> Phase {
        self.engine.state().rollout.as_ref().unwrap().phase.clone()
    }
    fn fencing(&self) -> Fencing {
        self.engine.state().fencing.clone().expect("a holder")
    }
    /// The token the current handoff offers.
    fn offered(&self) -> u64 {
        match self.phase() {
            Phase::HandingOff { token, .. } => token,
            p => panic!("not handing off: {p:?}"),
        }
    }
    fn assert_increasing(&self) {
        assert!(
            self.tokens.windows(2).all(|w| w[0] < w[1]),
            "tokens given out: {:?}",
            self.tokens
        );
    }
    /// v1 holds the role (token 1).
    fn with_holder() -> Sim {
        let mut s = Sim::new();
        let out = s.deploy("v1");
        assert_eq!(
            out.actions,
            vec![Action::Start {
                release: rel("v1"),
                role: Some(Role {
                    active: true,
                    token: 1
                }),
            }],
            "the first release holds the role from its start"
        );
        let out = s.ready("v1");
        assert!(matches!(
            out.actions[..],
            [Action::Route {
                fencing: Some(1),
                ..
            }]
        ));
        assert_eq!(s.fencing().token, 1);
        s
    }
}

#[test]
fn happy_path_moves_the_role_with_a_higher_token_then_stops_the_old_holder() {
    let mut s = Sim::with_holder();
    let out = s.at(100).deploy("v2");
    assert_eq!(
        out.actions,
        vec![Action::Start {
            release: rel("v2"),
            role: Some(Role {
                active: false,
                token: 1
            }),
        }],
        "the new release starts as a standby"
    );
    assert_eq!(s.phase().kind(), PhaseKind::Starting);
    let out = s.at(100).ready("v2");
    assert_eq!(
        out.actions,
        vec![Action::Handoff {
            from: rel("v1"),
            to: rel("v2"),
            token: 2
        }]
    );
    assert_eq!(out.decisions[0].kind, DecisionKind::Handoff);
    // Given out, and so in the state that is persisted before the action (invariant 8).
    assert_eq!(s.engine.state().last_token, 2);
    assert_eq!(
        s.fencing().holder,
        rel("v1"),
        "v1 holds until the call succeeds"
    );
    // Nothing but the handoff result moves it: verbs other than abort are refused.
    for verb in [Verb::Pause, Verb::Resume, Verb::Promote] {
        let e = s.engine.handle(s.now, Event::Command(verb)).unwrap_err();
        assert_eq!(e, EngineError::HandingOff { token: 2 });
    }
    // A stale result (another token) changes nothing.
    let out = s.ok(Event::HandoffDone {
        digest: "sha-v2".into(),
        token: 7,
    });
    assert_eq!(out, Outcome::default());

    let out = s.at(30).ok(Event::HandoffDone {
        digest: "sha-v2".into(),
        token: 2,
    });
    assert_eq!(
        out.actions,
        vec![
            Action::Route {
                stable: rel("v2"),
                canary: None,
                weight: cutover_core::Weight::ZERO,
                salt: s.engine.state().rollout.as_ref().unwrap().salt,
                fencing: Some(2),
            },
            Action::Stop {
                release: rel("v1"),
                reason: "handed the active role over".into()
            },
        ],
        "the held requests go to v2 with its token, then v1 is drained and stopped"
    );
    assert_eq!(
        s.fencing(),
        Fencing {
            holder: rel("v2"),
            token: 2
        }
    );
    assert_eq!(s.engine.state().stable, Some(rel("v2")));
    assert_eq!(s.engine.state().previous, None, "no second holder is kept");
    assert!(matches!(s.phase(), Phase::Done { .. }));
    let (kind, reason) = s.decisions.last().unwrap();
    assert_eq!(*kind, DecisionKind::Promoted);
    assert!(reason.contains("fencing token 2"), "{reason}");
    assert_eq!(s.engine.poll_timeout(), None);

    // And again: v3 gets 3.
    s.at(100).deploy("v3");
    s.at(100).ready("v3");
    assert_eq!(s.offered(), 3);
    s.ok(Event::HandoffDone {
        digest: "sha-v3".into(),
        token: 3,
    });
    assert_eq!(s.tokens, vec![1, 2, 3]);
    s.assert_increasing();
}

#[test]
fn a_new_release_that_is_never_ready_leaves_the_holder_untouched() {
    let mut s = Sim::with_holder();
    s.at(100).deploy("v2");
    let deadline = s.engine.poll_timeout().unwrap();
    s.now = deadline;
    let out = s.ok(Event::Timeout { facts: Vec::new() });
    assert_eq!(
        out.actions,
        vec![Action::Stop {
            release: rel("v2"),
            reason: "aborted: canary v2 could not start: not ready within app.start_timeout (5s)"
                .into()
        }],
        "no route changes: v1 never stopped holding"
    );
    assert!(matches!(s.phase(), Phase::Aborted { .. }));
    assert_eq!(
        s.fencing(),
        Fencing {
            holder: rel("v1"),
            token: 1
        }
    );
    assert_eq!(s.tokens, vec![1], "no token was given out");
}

#[test]
fn a_failed_handoff_call_gives_the_old_holder_a_higher_token_and_stops_the_new_release() {
    let mut s = Sim::with_holder();
    s.at(100).deploy("v2");
    s.at(100).ready("v2");
    let out = s.at(40).ok(Event::HandoffFailed {
        digest: "sha-v2".into(),
        token: 2,
        reason: "the handoff call to v2 failed: POST /cutover/handoff → answered 500".into(),
    });
    let salt = s.engine.state().rollout.as_ref().unwrap().salt;
    assert_eq!(
        out.actions[0],
        Action::Route {
            stable: rel("v1"),
            canary: None,
            weight: cutover_core::Weight::ZERO,
            salt,
            fencing: Some(3),
        },
        "the held requests go back to v1, with a token above the one offered"
    );
    assert!(matches!(&out.actions[1], Action::Stop { release, .. } if *release == rel("v2")));
    assert_eq!(
        out.actions[2],
        Action::Reclaim {
            release: rel("v1"),
            token: 3
        }
    );
    assert_eq!(
        s.fencing(),
        Fencing {
            holder: rel("v1"),
            token: 3
        }
    );
    let Phase::Aborted {
        reason, automatic, ..
    } = s.phase()
    else {
        panic!("{:?}", s.phase())
    };
    assert!(automatic);
    assert!(reason.contains("answered 500"), "{reason}");
    assert!(reason.contains("token 3"), "{reason}");
    assert!(
        s.engine.state().failed.contains_key("sha-v2"),
        "a failed handoff marks the release failed"
    );
    assert_eq!(s.decisions.last().unwrap().0, DecisionKind::Aborted);
    // A late success of the call is ignored: the rollout is over, v1 holds token 3.
    let out = s.ok(Event::HandoffDone {
        digest: "sha-v2".into(),
        token: 2,
    });
    assert_eq!(out, Outcome::default());
    // The next handoff goes above every token given out, including the fenced one.
    s.ok(Event::Deploy {
        release: rel("v2b"),
        force: false,
        start_timeout: None,
    });
    s.ready("v2b");
    assert_eq!(s.offered(), 4);
    assert_eq!(s.tokens, vec![1, 2, 3, 4]);
    s.assert_increasing();
}

#[test]
fn no_result_in_time_fails_the_handoff_at_the_engines_deadline() {
    let mut s = Sim::with_holder();
    s.at(100).deploy("v2");
    s.at(100).ready("v2");
    let Phase::HandingOff {
        since, deadline, ..
    } = s.phase()
    else {
        unreachable!()
    };
    // Twice drain_timeout + timeout: a backstop behind the shell's own bounded steps.
    assert_eq!(deadline.since(since), std::time::Duration::from_secs(6));
    assert_eq!(s.engine.poll_timeout(), Some(deadline));
    s.now = Timestamp::from_millis(deadline.millis() - 1);
    assert_eq!(
        s.ok(Event::Timeout { facts: Vec::new() }),
        Outcome::default()
    );
    s.now = deadline;
    s.ok(Event::Timeout { facts: Vec::new() });
    let Phase::Aborted { reason, .. } = s.phase() else {
        panic!("{:?}", s.phase())
    };
    assert!(
        reason.contains("no result of the handoff within 6s"),
        "{reason}"
    );
    assert_eq!(s.fencing().token, 3);
    assert_eq!(s.fencing().holder, rel("v1"));
    s.assert_increasing();
}

#[test]
fn an_operator_abort_during_the_handoff_fences_the_offered_token_too() {
    let mut s = Sim::with_holder();
    s.at(100).deploy("v2");
    s.at(100).ready("v2");
    s.ok(Event::Command(Verb::Abort));
    let Phase::Aborted { automatic, .. } = s.phase() else {
        panic!("{:?}", s.phase())
    };
    assert!(!automatic);
    assert!(
        !s.engine.state().failed.contains_key("sha-v2"),
        "an operator's abort does not mark the release failed"
    );
    assert_eq!(
        s.fencing(),
        Fencing {
            holder: rel("v1"),
            token: 3
        }
    );
}

#[test]
fn tokens_keep_growing_across_a_restore_from_the_snapshot() {
    let mut s = Sim::with_holder();
    s.at(100).deploy("v2");
    s.at(100).ready("v2");
    s.ok(Event::HandoffDone {
        digest: "sha-v2".into(),
        token: 2,
    });
    // What the store keeps, as JSON, and a new engine from it.
    let json = serde_json::to_string(s.engine.state()).unwrap();
    let state: State = serde_json::from_str(&json).unwrap();
    assert_eq!(state.fencing.as_ref().map(|f| f.token), Some(2));
    let mut r = Sim::restore(Engine::restore(spec(), state));
    r.now = s.now;
    let out = r.ok(Event::Recover {
        alive: Vec::new(),
        dead: Vec::new(),
    });
    assert!(
        out.actions.contains(&Action::Start {
            release: rel("v2"),
            role: Some(Role {
                active: true,
                token: 2
            })
        }),
        "the holder is started again with its own token: {:?}",
        out.actions
    );
    r.at(100).deploy("v3");
    r.at(100).ready("v3");
    assert_eq!(r.offered(), 3);
}

#[test]
fn a_restart_in_the_middle_of_a_handoff_leaves_the_role_with_the_old_holder_and_a_higher_token() {
    let mut s = Sim::with_holder();
    s.at(100).deploy("v2");
    s.at(100).ready("v2");
    // cutover dies here: the snapshot says v1 holds token 1, token 2 was offered to v2.
    let json = serde_json::to_string(s.engine.state()).unwrap();
    let state: State = serde_json::from_str(&json).unwrap();
    assert_eq!(state.last_token, 2);
    let mut r = Sim::restore(Engine::restore(spec(), state));
    r.now = s.now;
    let out = r.ok(Event::Recover {
        alive: Vec::new(),
        dead: Vec::new(),
    });
    assert_eq!(
        r.fencing(),
        Fencing {
            holder: rel("v1"),
            token: 3
        }
    );
    assert!(matches!(r.phase(), Phase::Aborted { .. }));
    assert!(out.actions.contains(&Action::Start {
        release: rel("v1"),
        role: Some(Role {
            active: true,
            token: 3
        })
    }));
    assert!(
        !out.actions
            .iter()
            .any(|a| matches!(a, Action::Start { release, .. } if *release == rel("v2"))),
        "v2 is not started again"
    );
    let (_, reason) = r
        .decisions
        .iter()
        .find(|(k, _)| *k == DecisionKind::Aborted)
        .unwrap();
    assert!(reason.contains("restarted during the handoff"), "{reason}");
}

#[test]
fn a_service_that_becomes_a_singleton_gives_its_stable_release_a_token_first() {
    // v1 went live under the canary strategy: no token.
    let mut e = Engine::new("signer", RolloutSpec::default());
    let t = Timestamp::from_millis(1);
    e.handle(
        t,
        Event::Deploy {
            release: rel("v1"),
            force: false,
            start_timeout: None,
        },
    )
    .unwrap();
    e.handle(
        t,
        Event::Ready {
            digest: "sha-v1".into(),
        },
    )
    .unwrap();
    assert_eq!(e.state().fencing, None);
    let mut s = Sim::restore(Engine::restore(spec(), e.state().clone()));
    let out = s.deploy("v2");
    assert!(
        matches!(&out.actions[..], [
            Action::Route { stable, fencing: Some(1), .. },
            Action::Reclaim { token: 1, .. },
            Action::Start { role: Some(Role { active: false, token: 1 }), .. },
        ] if *stable == rel("v1")),
        "{:?}",
        out.actions
    );
    assert!(
        s.decisions[0]
            .1
            .contains("holds the role with token 1 from now"),
        "{}",
        s.decisions[0].1
    );
    s.at(100).ready("v2");
    assert_eq!(s.offered(), 2);
    s.assert_increasing();
}

#[test]
fn a_canary_service_gives_out_no_token() {
    let mut e = Engine::new("shop", RolloutSpec::default());
    let t = Timestamp::from_millis(1);
    let out = e
        .handle(
            t,
            Event::Deploy {
                release: rel("v1"),
                force: false,
                start_timeout: None,
            },
        )
        .unwrap();
    assert_eq!(
        out.actions,
        vec![Action::Start {
            release: rel("v1"),
            role: None
        }]
    );
    let out = e
        .handle(
            t,
            Event::Ready {
                digest: "sha-v1".into(),
            },
        )
        .unwrap();
    assert!(matches!(
        out.actions[..],
        [Action::Route { fencing: None, .. }]
    ));
    assert_eq!(e.state().fencing, None);
    assert_eq!(e.state().last_token, 0);
}
