//! # cutover-supervisor: a version's instances as local child processes
//!
//! The single-host runtime runs each version of the service as `app.instances` processes on
//! 127.0.0.1 behind its embedded proxy. This crate owns those processes: it resolves a
//! [`Release`] (what exactly would run, with a digest), spawns instances, probes them
//! (readiness and liveness, with hysteresis), restarts them with exponential backoff, reports
//! crash loops, and stops them drain → signal → grace → SIGKILL. Every state change is
//! published as a [`Fleet`] on a `tokio::sync::watch` channel; the host turns it into route
//! tables and engine events. It decides nothing about the rollout itself.
//!
//! It must never:
//! - run a shell or interpolate user strings into one: argv goes to `execve` as a list;
//! - let an instance receive traffic before its readiness probe passed — it publishes
//!   `Ready` only then (DESIGN.md invariant 3; readiness failing means `NotReady`, liveness
//!   failing means a restart);
//! - signal an instance before its in-flight requests finished or the drain window ran out
//!   (DESIGN.md invariant 4);
//! - leave processes behind: instances run in their own session and process group, which is
//!   what gets signalled, so a wrapper script and the server it started go together;
//! - tie an instance's life to its own: instances outlive a crashed cutover (no parent-death
//!   signal), and the [`Ledger`] lets a restarted one re-adopt them (DESIGN.md invariant 8).
//!
//! `unsafe` is denied workspace-wide; the single exception is the `pre_exec` hook that calls
//! `setsid` (see `process::new_session` and its SAFETY comment).

pub mod adopt;
mod error;
mod fleet;
mod health;
pub mod logs;
mod probe;
mod process;
mod release;
pub mod rotate;
pub mod secret;
mod supervisor;

pub use adopt::{InstanceRecord, Ledger, LedgerError, Survey};
pub use error::SupervisorError;
pub use fleet::{CrashLoop, Fleet, InstanceState, InstanceStatus, VersionFleet};
pub use probe::handoff as handoff_call;
pub use release::{locate_program, Release};
pub use supervisor::{
    Closer, DrainOutcome, InFlight, InstanceStopReport, Ownership, StopExit, StopReport, Supervisor,
};
