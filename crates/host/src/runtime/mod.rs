//! The single-host runtime: binds the proxy and the admin API, supervises instances, and runs
//! the driver loop that feeds the core engine and carries out its actions.
//!
//! Split by concern (docs/architecture.md draws how an event becomes an action):
//! - `wiring`: [`start`] builds the real seams and spawns the tasks; [`Running`] holds them;
//! - `driver`: the loop, the only owner of the engine; events one at a time, follow-ups queued;
//! - `persist`: what an outcome commits, and the store actor (SQLite on a thread of its own);
//! - `effects`: actions and decisions turned into calls on the seams;
//! - `seams`: the traits the driver calls ([`Routing`], [`Instances`], [`StateStore`],
//!   [`Notifications`]) and their real implementations;
//! - `admin`: the admin API's handler.
//!
//! Every event goes through the driver's `apply`: the engine decides, the new state and its
//! decisions are committed in one transaction, and only then are the actions carried out
//! (DESIGN.md invariant 8). A store failure puts the engine back as it was and carries out
//! nothing (invariant 9).

mod admin;
mod driver;
mod effects;
mod persist;
mod seams;
#[cfg(test)]
mod tests;
mod wiring;

pub use persist::PersistError;
pub use seams::{Instances, Notifications, Routing, StateStore};
pub use wiring::{open_store, start, start_with, Running, StartError, StartOptions};

use std::time::Duration;
use tracing::info;

/// What retention must never prune: the rollout the engine is on (or ended last) and every
/// release it still uses (stable, canary, held previous).
pub fn in_use(state: &cutover_core::engine::State) -> cutover_store::InUse {
    let mut keep = cutover_store::InUse::default();
    if let Some(r) = &state.rollout {
        keep.rollouts.push(r.id as i64);
        keep.digests.push(r.to.digest.clone());
        keep.digests.extend(r.from.iter().map(|f| f.digest.clone()));
    }
    keep.digests
        .extend(state.stable.iter().map(|s| s.digest.clone()));
    keep.digests
        .extend(state.previous.iter().map(|p| p.release.digest.clone()));
    keep
}

/// Prunes the state store after `[state] retention` (`now` in epoch milliseconds), keeping
/// what [`in_use`] names. A failure is logged, not fatal: the records stay, and the next hourly
/// run tries again.
pub fn prune_store(
    store: &mut cutover_store::Store,
    keep: &cutover_store::InUse,
    retention: Duration,
    now: i64,
) {
    let cutoff = now.saturating_sub(retention.as_millis() as i64);
    match store.prune(cutoff, now, keep) {
        Ok(p) if p.rollouts + p.releases + p.records + p.events + p.serving + p.packed > 0 => {
            info!(
                rollouts = p.rollouts,
                releases = p.releases,
                records = p.records,
                events = p.events,
                serving = p.serving,
                packed = p.packed,
                head_lines = p.head_lines,
                "pruned the state store of what ended more than {} ago",
                humantime::format_duration(retention)
            )
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!(error = %e, "could not prune the state store; it will be tried again in an hour")
        }
    }
}

/// Deletes log files not written to for `max_age` (`[state] retention`), except those `in_use`
/// names (an instance quiet for that long still writes to its log); rotated logs (`v1-0.1.log`)
/// are pruned the same way. Returns how many.
pub fn prune_logs(
    dir: &std::path::Path,
    max_age: Duration,
    in_use: &std::collections::HashSet<std::path::PathBuf>,
) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut pruned = 0;
    for e in entries.flatten() {
        let old = e
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > max_age);
        if old
            && e.path().extension().is_some_and(|x| x == "log")
            && !in_use.contains(&e.path())
            && std::fs::remove_file(e.path()).is_ok()
        {
            pruned += 1;
        }
    }
    if pruned > 0 {
        info!(pruned, dir = %dir.display(), "pruned instance logs not written to for {}", humantime::format_duration(max_age));
    }
    pruned
}

#[cfg(test)]
mod prune_tests {
    use super::*;

    #[test]
    fn prunes_only_old_log_files() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("v1-0.log");
        let fresh = dir.path().join("v2-0.log");
        let other = dir.path().join("keep.txt");
        for p in [&old, &fresh, &other] {
            std::fs::write(p, "x").unwrap();
        }
        let long_ago = std::time::UNIX_EPOCH + Duration::from_millis(cutover_clock::unix_millis())
            - Duration::from_secs(73 * 3600);
        for p in [&old, &other] {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
        // An old file still in use (a quiet instance) is kept.
        let in_use = std::collections::HashSet::from([old.clone()]);
        let retention = Duration::from_secs(72 * 3600);
        assert_eq!(prune_logs(dir.path(), retention, &in_use), 0);
        assert_eq!(prune_logs(dir.path(), retention, &Default::default()), 1);
        assert!(!old.exists() && fresh.exists() && other.exists());
    }
}
