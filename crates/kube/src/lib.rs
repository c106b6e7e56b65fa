//! # cutover-kube: the Kubernetes shell around the same engine
//!
//! `cutover controller` runs this: the `Rollout` custom resource ([`crd`]), a reconcile that
//! feeds `cutover-core`'s [`Engine`](cutover_core::engine::Engine) the events the cluster
//! implies and keeps the engine's state in the Rollout's `status` ([`reconcile`]), the
//! traffic routers (Gateway API `HTTPRoute`, Istio `VirtualService`, or replica ratio:
//! [`router`]) and leader election on a `Lease` ([`leader`], [`controller`]).
//!
//! This crate must never decide a rollout: when to advance, hold, abort or promote is the
//! engine's. It must never write without the lease ([`leader::Leadership`]), and never act
//! before the state that asks for it is persisted in `status` (DESIGN.md invariant 8).
#![forbid(unsafe_code)]

pub mod cli;
pub mod controller;
pub mod crd;
pub mod leader;
pub mod reconcile;
pub mod router;

use cutover_core::judge::External;
use cutover_promql::RuleResult;

pub use reconcile::rule_vars;

/// A rule's result as the engine reads it (the same wording as the single-host shell's).
pub fn external(query: &str, result: Result<RuleResult, String>) -> External {
    let suffix = |v: Option<f64>| v.map(|v| format!(" (value {v:.6})")).unwrap_or_default();
    match result {
        Ok(RuleResult::Fired { value }) => External::Fired {
            value,
            detail: format!("{query} fires{}", suffix(value)),
        },
        Ok(RuleResult::Clear { value }) => External::Clear {
            value,
            detail: format!("{query} does not fire{}", suffix(value)),
        },
        Ok(RuleResult::NoData) => External::NoData {
            detail: format!("no data for {query}"),
        },
        Err(e) => External::NoData {
            detail: format!("could not evaluate {query}: {e}"),
        },
    }
}
