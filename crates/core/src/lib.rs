//! # cutover-core: the pure rollout engine
//!
//! Everything cutover *decides* lives here: the rollout spec and its validation, the phase
//! state machine, the schedule, advance gates and abort rules, sticky assignment and the
//! statistics they read. The runtimes (single host, Kubernetes) only translate events in and
//! carry actions out.
//!
//! This crate must never do IO: no sockets, no files, no tokio, no clock reads. Time comes in as
//! an argument ([`Timestamp`]) and decisions go out as values ([`engine::Action`]), so a whole
//! rollout replays in a unit test in microseconds.
#![forbid(unsafe_code)]

pub mod cidr;
pub mod engine;
pub mod histogram;
pub mod judge;
pub mod lookback;
pub mod mannwhitney;
pub mod reload;
pub mod report;
pub mod simulate;
pub mod spec;
mod spec_errors;
pub mod stats;
pub mod sticky;
pub mod time;
pub mod weight;

pub use cidr::Cidr;
pub use histogram::Histogram;
pub use spec::Config;
pub use stats::{Track, TrackStats, WindowStats};
pub use time::{Dur, Timestamp};
pub use weight::Weight;
