//! `rollback` is honest (issue 12 item 7): inside `hold_previous` it switches all traffic to
//! the held release only once that release's instances are ready. Right after cutover
//! restarted they may still be re-adopting or starting; the admin API then waits for them,
//! bounded by `app.start_timeout`, and refuses with [`EngineError::PreviousNotReady`] if they
//! do not get ready in time. Nothing is switched in that case.
//!
//! Which release a rollback switches to is the engine's (`Engine::rollback_target`); the
//! readiness is the supervisor's fleet.

use cutover_core::engine::{EngineError, Release};
use cutover_core::Dur;
use cutover_supervisor::{Fleet, InstanceState};
use std::time::Duration;
use tokio::sync::watch;

/// `(ready, instances)` of `target` in the fleet.
pub fn readiness(fleet: &Fleet, target: &Release) -> (usize, usize) {
    fleet
        .get(&target.version)
        .filter(|vf| vf.digest == target.digest)
        .map_or((0, 0), |vf| {
            let ready = vf
                .instances
                .iter()
                .filter(|i| i.state == InstanceState::Ready)
                .count();
            (ready, vf.instances.len())
        })
}

/// Refuses a rollback to a release whose instances are not all ready. `waited`: how long the
/// caller already waited, for the message.
pub fn check(target: Option<&Release>, fleet: &Fleet, waited: Duration) -> Result<(), EngineError> {
    let Some(target) = target else {
        return Ok(());
    };
    match readiness(fleet, target) {
        (ready, n) if n > 0 && ready == n => Ok(()),
        (ready, instances) => Err(EngineError::PreviousNotReady {
            previous: target.label(),
            ready,
            instances,
            waited: Dur::from_millis(waited.as_millis() as u64),
        }),
    }
}

/// Waits until every instance of `target` is ready, at most `bound`; returns how long it
/// waited (the caller checks again, under the driver, before switching).
pub async fn wait_ready(
    mut fleet: watch::Receiver<Fleet>,
    target: &Release,
    bound: Duration,
) -> Duration {
    let started = tokio::time::Instant::now();
    let _ = tokio::time::timeout(
        bound,
        fleet.wait_for(|f| matches!(readiness(f, target), (r, n) if n > 0 && r == n)),
    )
    .await;
    started.elapsed()
}
