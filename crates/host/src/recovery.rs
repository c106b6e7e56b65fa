//! What a (re)starting cutover does before anything else: take the state directory's lock
//! (one cutover per state dir), then read the instance ledger and sort what a previous
//! cutover left into live processes to re-adopt and dead ones to replace (DESIGN.md
//! invariant 8). The engine decides what they mean ([`Event::Recover`]); this only gathers the
//! facts.

use crate::lock::{LockError, StateLock};
use cutover_core::engine::{Event, RecoveredInstance};
use cutover_supervisor::{InstanceRecord, Ledger, LedgerError, Survey};
use std::path::Path;

/// The ledger's file name in the state directory.
pub const LEDGER: &str = "instances.json";

/// Held for as long as cutover runs.
#[derive(Debug)]
pub struct Recovery {
    pub lock: StateLock,
    pub ledger: Ledger,
    pub survey: Survey,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Locks `state_dir` (refused while another cutover holds it), then surveys its ledger.
/// `passed`: the lock as the cutover being upgraded passed it ([`crate::upgrade`]).
pub fn prepare(
    state_dir: &Path,
    passed: Option<std::os::fd::OwnedFd>,
) -> Result<Recovery, RecoveryError> {
    let lock = match passed {
        Some(fd) => StateLock::adopt(state_dir, fd)?,
        None => StateLock::acquire(state_dir)?,
    };
    let ledger = Ledger::new(state_dir.join(LEDGER));
    let survey = Survey::of(ledger.load()?);
    for r in &survey.alive {
        tracing::info!(instance = %r.id(), pid = r.pid, port = r.port, "found a running instance of a previous cutover");
    }
    for r in &survey.dead {
        tracing::warn!(instance = %r.id(), pid = r.pid, "an instance of a previous cutover has died since");
    }
    Ok(Recovery {
        lock,
        ledger,
        survey,
    })
}

/// The engine's recovery event for what the survey found.
pub fn event(survey: &Survey) -> Event {
    let conv = |rs: &[InstanceRecord]| {
        rs.iter()
            .map(|r| RecoveredInstance {
                instance: r.id(),
                digest: r.digest.clone(),
                pid: r.pid,
            })
            .collect()
    };
    Event::Recover {
        alive: conv(&survey.alive),
        dead: conv(&survey.dead),
    }
}
