//! What the judge reads: per-track request counts, errors and latency over one window.

use crate::histogram::Histogram;
use serde::{Deserialize, Serialize};

/// Stable or canary: which side of a rollout a version is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Track {
    Stable,
    Canary,
}

impl Track {
    pub fn as_str(self) -> &'static str {
        match self {
            Track::Stable => "stable",
            Track::Canary => "canary",
        }
    }
}

/// One version's traffic over a window, as measured by the proxy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrackStats {
    /// Requests that completed (any status) or failed at the proxy.
    pub requests: u64,
    /// 5xx responses plus requests the proxy could not forward.
    pub errors: u64,
    /// Latency to response headers, microseconds.
    pub latency: Histogram,
}

impl TrackStats {
    /// `requests` requests, `errors` of them failed, all taking `latency_ms`: a window with one
    /// latency, for tests and simulations.
    pub fn uniform(requests: u64, errors: u64, latency_ms: u64) -> TrackStats {
        let mut t = TrackStats {
            requests,
            errors,
            ..TrackStats::default()
        };
        t.latency.record_n(latency_ms * 1000, requests);
        t
    }

    /// Errors over requests; `None` without requests.
    pub fn error_ratio(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }

    /// The `q`-quantile latency in seconds; `None` without samples.
    pub fn latency_quantile_secs(&self, q: f64) -> Option<f64> {
        self.latency.quantile(q).map(|us| us / 1e6)
    }

    pub fn merge(&mut self, other: &TrackStats) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.latency.merge(&other.latency);
    }
}

/// Stable and canary over the same window: one evaluation's input.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowStats {
    pub stable: TrackStats,
    pub canary: TrackStats,
}
