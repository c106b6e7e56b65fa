//! Every refusal of the engine is a typed value whose message a user can act on; the admin
//! API answers it with 409 and this text, which the cli tests read.

use cutover_core::engine::{Engine, EngineError, Event, Release, Verb};
use cutover_core::spec::RolloutSpec;
use cutover_core::{Dur, Timestamp};

#[test]
fn each_refusal_says_what_to_do() {
    let cases = [
        (
            EngineError::RolloutInProgress {
                id: 3,
                release: "v2 (sha-v2)".into(),
                phase: "paused",
            },
            "rollout 3 of v2 (sha-v2) is paused; wait for it to finish, or `cutover abort` it first",
        ),
        (
            EngineError::AlreadyStable {
                release: "v1 (sha-v1)".into(),
            },
            "v1 (sha-v1) is already the stable release; nothing to deploy",
        ),
        (
            EngineError::FailedRelease {
                release: "v2 (sha-v2)".into(),
                at: "2026-12-04T15:54:22.123Z".into(),
                reason: "canary is crash-looping: x".into(),
            },
            "release v2 (sha-v2) failed at 2026-12-04T15:54:22.123Z: canary is crash-looping: x; fix the release (a changed program, script, app.digest_paths file or setting gives a new digest) or pass --force to deploy it anyway",
        ),
        (
            EngineError::NoRollout { verb: Verb::Pause },
            "no rollout is in progress; nothing to pause",
        ),
        (
            EngineError::Finished {
                phase: "done",
                verb: Verb::Abort,
            },
            "the last rollout is done; no rollout is in progress, so there is nothing to abort",
        ),
        (
            EngineError::AlreadyPaused,
            "the rollout is already paused; `cutover resume` continues it",
        ),
        (
            EngineError::PauseWhileStarting,
            "the canary is still starting and takes no traffic yet; pause once it does, or `cutover abort`",
        ),
        (
            EngineError::NotPaused,
            "the rollout is not paused; nothing to resume",
        ),
        (
            EngineError::PromoteWhileStarting,
            "the canary is still starting; it can be promoted once it is ready and takes traffic",
        ),
        (
            EngineError::AlreadyPromoted,
            "the rollout was already promoted; use `cutover rollback` to return to the previous release",
        ),
        (
            EngineError::VersionInUse {
                version: "v2".into(),
            },
            "version name v2 is already running (as the stable, held or a draining release); give the new build its own version name, e.g. v2.1",
        ),
        (
            EngineError::PreviousGone {
                previous: "v1".into(),
                hold: Dur::from_secs(3600),
            },
            "the previous release v1 is no longer running (hold_previous 1h has passed); deploy it again with `cutover deploy v1`",
        ),
    ];
    for (e, text) in cases {
        assert_eq!(e.to_string(), text, "{e:?}");
    }
}

fn deploy(e: &mut Engine, t: u64, version: &str, digest: &str) {
    let d = Event::Deploy {
        release: Release::new(version, digest),
        force: false,
        start_timeout: None,
    };
    e.handle(Timestamp::from_millis(t), d).unwrap();
    let ready = Event::Ready {
        digest: digest.into(),
    };
    e.handle(Timestamp::from_millis(t), ready).unwrap();
}

#[test]
fn a_version_name_that_is_running_is_refused_for_another_build() {
    let mut e = Engine::new("shop", RolloutSpec::default());
    let free = |e: &Engine, v: &str, d: &str, running: &[&str]| {
        let running: Vec<String> = running.iter().map(|s| s.to_string()).collect();
        e.check_version_free(&Release::new(v, d), &running)
    };
    assert_eq!(free(&e, "v1", "a", &[]), Ok(()));
    deploy(&mut e, 1000, "v1", "a");
    // The stable's name with another digest: refused. Its own digest: left to the deploy.
    assert_eq!(
        free(&e, "v1", "b", &["v1"]),
        Err(EngineError::VersionInUse {
            version: "v1".into()
        })
    );
    assert_eq!(free(&e, "v1", "a", &["v1"]), Ok(()));
    // A name still running (draining) that is not the stable: refused whatever the digest.
    assert!(free(&e, "v0", "z", &["v0", "v1"]).is_err());
    assert_eq!(free(&e, "v2", "c", &["v0", "v1"]), Ok(()));
    // Promoted v2 keeps v1 held: v1 is busy even when no longer listed as running.
    deploy(&mut e, 2000, "v2", "c");
    e.handle(Timestamp::from_millis(3000), Event::Command(Verb::Promote))
        .unwrap();
    assert!(e.state().previous.is_some());
    assert!(free(&e, "v1", "d", &[]).is_err());
}
