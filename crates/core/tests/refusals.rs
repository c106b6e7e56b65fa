//! Every refusal of the engine is a typed value whose message a user can act on; the admin
//! API answers it with 409 and this text, which the cli tests read.

use cutover_core::engine::{EngineError, Verb};
use cutover_core::Dur;

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
