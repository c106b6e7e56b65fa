//! Hysteresis for probes and the crash window, as plain values: no process, no clock read.
//!
//! Invariant 3 (DESIGN.md) rests on these: an instance turns ready only after
//! `readiness.success_threshold` consecutive passes, leaves rotation only after
//! `readiness.failure_threshold` consecutive failures, is restarted only after
//! `liveness.failure_threshold`, and a version is crash-looping when one of its instances
//! restarted `restart.crash_loop_restarts` times within `restart.crash_loop_window`. The
//! supervisor's task feeds them probe results and restart times and acts on what they return
//! (like pingora's `observe_health`), so each rule is tested here with plain values.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// Readiness with hysteresis: N passes in a row to turn ready, M failures in a row to leave.
#[derive(Debug, Clone)]
pub(crate) struct Readiness {
    rise: u32,
    fall: u32,
    passes: u32,
    failures: u32,
    ready: bool,
}

/// What one readiness result changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flip {
    /// The instance just turned ready.
    Ready,
    /// The instance was ready and just left rotation.
    NotReady,
    Unchanged,
}

impl Readiness {
    /// A process that has just started: not ready. A threshold of 0 counts as 1.
    pub(crate) fn new(success_threshold: u32, failure_threshold: u32) -> Readiness {
        Readiness {
            rise: success_threshold.max(1),
            fall: failure_threshold.max(1),
            passes: 0,
            failures: 0,
            ready: false,
        }
    }

    /// A re-adopted process whose readiness probe just passed: ready, as it was.
    pub(crate) fn already_ready(success_threshold: u32, failure_threshold: u32) -> Readiness {
        Readiness {
            ready: true,
            ..Readiness::new(success_threshold, failure_threshold)
        }
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready
    }

    /// Takes one probe result.
    pub(crate) fn observe(&mut self, passed: bool) -> Flip {
        if passed {
            self.passes += 1;
            self.failures = 0;
            if !self.ready && self.passes >= self.rise {
                self.ready = true;
                return Flip::Ready;
            }
        } else {
            self.passes = 0;
            // Failures count only against an instance in rotation; a starting one simply
            // has not passed yet.
            if self.ready {
                self.failures += 1;
                if self.failures >= self.fall {
                    self.ready = false;
                    return Flip::NotReady;
                }
            }
        }
        Flip::Unchanged
    }
}

/// Liveness: N failures in a row mean the process must be restarted.
#[derive(Debug, Clone)]
pub(crate) struct Liveness {
    fall: u32,
    failures: u32,
}

impl Liveness {
    /// A threshold of 0 counts as 1.
    pub(crate) fn new(failure_threshold: u32) -> Liveness {
        Liveness {
            fall: failure_threshold.max(1),
            failures: 0,
        }
    }

    /// Takes one probe result; `Some(n)`: it failed `n` times in a row, restart.
    pub(crate) fn observe(&mut self, passed: bool) -> Option<u32> {
        if passed {
            self.failures = 0;
            return None;
        }
        self.failures += 1;
        (self.failures >= self.fall).then_some(self.failures)
    }
}

/// An instance's recent restarts: too many within the window is a crash loop.
#[derive(Debug, Clone)]
pub(crate) struct CrashWindow {
    window: Duration,
    threshold: u32,
    restarts: VecDeque<Instant>,
}

/// Restarts counted within the window, including the one just recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Restarts {
    pub(crate) within_window: u32,
    /// Whether that reaches the crash-loop threshold.
    pub(crate) looping: bool,
}

impl CrashWindow {
    /// A threshold of 0 counts as 1.
    pub(crate) fn new(window: Duration, threshold: u32) -> CrashWindow {
        CrashWindow {
            window,
            threshold: threshold.max(1),
            restarts: VecDeque::new(),
        }
    }

    /// Records a restart at `now`; restarts longer than the window before it are forgotten.
    pub(crate) fn record(&mut self, now: Instant) -> Restarts {
        self.restarts.push_back(now);
        while self
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            self.restarts.pop_front();
        }
        let within_window = u32::try_from(self.restarts.len()).unwrap_or(u32::MAX);
        Restarts {
            within_window,
            looping: within_window >= self.threshold,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_turns_on_after_rise_passes_in_a_row() {
        let mut r = Readiness::new(3, 2);
        assert_eq!(r.observe(true), Flip::Unchanged);
        assert_eq!(r.observe(true), Flip::Unchanged);
        // A failure while starting resets the run.
        assert_eq!(r.observe(false), Flip::Unchanged);
        assert_eq!(r.observe(true), Flip::Unchanged);
        assert_eq!(r.observe(true), Flip::Unchanged);
        assert!(!r.is_ready());
        assert_eq!(r.observe(true), Flip::Ready);
        assert!(r.is_ready());
        // Further passes change nothing.
        assert_eq!(r.observe(true), Flip::Unchanged);
    }

    #[test]
    fn readiness_turns_off_after_fall_failures_in_a_row_and_needs_rise_again() {
        let mut r = Readiness::new(2, 3);
        r.observe(true);
        assert_eq!(r.observe(true), Flip::Ready);
        assert_eq!(r.observe(false), Flip::Unchanged);
        assert_eq!(r.observe(false), Flip::Unchanged);
        // A pass in between resets the failures.
        assert_eq!(r.observe(true), Flip::Unchanged);
        assert_eq!(r.observe(false), Flip::Unchanged);
        assert_eq!(r.observe(false), Flip::Unchanged);
        assert!(r.is_ready());
        assert_eq!(r.observe(false), Flip::NotReady);
        assert!(!r.is_ready());
        // Failures while out of rotation flip nothing; coming back takes `rise` passes.
        assert_eq!(r.observe(false), Flip::Unchanged);
        assert_eq!(r.observe(true), Flip::Unchanged);
        assert_eq!(r.observe(true), Flip::Ready);
    }

    #[test]
    fn zero_thresholds_count_as_one() {
        let mut r = Readiness::new(0, 0);
        assert_eq!(r.observe(true), Flip::Ready);
        assert_eq!(r.observe(false), Flip::NotReady);
        let mut l = Liveness::new(0);
        assert_eq!(l.observe(false), Some(1));
        let mut c = CrashWindow::new(Duration::from_secs(1), 0);
        assert!(c.record(Instant::now()).looping);
    }

    #[test]
    fn liveness_fails_after_n_failures_in_a_row() {
        let mut l = Liveness::new(3);
        assert_eq!(l.observe(false), None);
        assert_eq!(l.observe(false), None);
        assert_eq!(l.observe(true), None);
        assert_eq!(l.observe(false), None);
        assert_eq!(l.observe(false), None);
        assert_eq!(l.observe(false), Some(3));
    }

    #[test]
    fn restarts_older_than_the_window_are_forgotten() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut c = CrashWindow::new(s(10), 3);
        let r = |n, looping| Restarts {
            within_window: n,
            looping,
        };
        assert_eq!(c.record(t0), r(1, false));
        assert_eq!(c.record(t0 + s(4)), r(2, false));
        // Exactly the window apart still counts.
        assert_eq!(c.record(t0 + s(10)), r(3, true));
        // t0 is now more than 10 s back.
        assert_eq!(c.record(t0 + s(11)), r(3, true));
        // A long healthy run: only this restart is within the window.
        assert_eq!(c.record(t0 + s(60)), r(1, false));
    }
}
