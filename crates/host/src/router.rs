//! Turns the engine's route intent plus the supervisor's fleet into the proxy's route table.
//!
//! Only instances whose readiness probe passed are in a pool (DESIGN.md invariant 3); the
//! table is rebuilt whole and swapped atomically (invariant 1). One `Arc<Backend>` is kept per
//! instance across tables, so its in-flight count — what drain waits on — survives swaps.
//!
//! Invariant 10 (the blast radius holds at all times): while stable's instances are starting
//! (after a restart of cutover, say), stable's pool is empty and its clients get 503 rather
//! than the canary. Only when stable has no instance at all (none starting, running or
//! restarting) does the table leave stable out, sending every client to the canary; that
//! change, and its end, are handed to the engine to record ([`Router::take_stable_change`]).

use crate::runtime::Routing;
use cutover_core::engine::Release;
use cutover_core::Weight;
use cutover_proxy::{Backend, Pool, RouteTable};
use cutover_supervisor::{Fleet, InstanceState};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// What the engine last asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Intent {
    pub stable: Release,
    pub canary: Option<Release>,
    pub weight: Weight,
    pub salt: u64,
    /// The singleton holder's fencing token, sent with every request to stable.
    pub fencing: Option<u64>,
}

#[derive(Default)]
pub struct Router {
    intent: Option<Intent>,
    backends: HashMap<(String, SocketAddr), Arc<Backend>>,
    /// Whether the last table left stable out because it has no instance at all.
    stable_gone: bool,
    /// A change of `stable_gone` not yet taken by the driver, with why.
    stable_change: Option<(bool, String)>,
    /// A singleton's role is moving: stable's pool is published empty (new requests wait in
    /// the proxy) until the next intent.
    holding: bool,
}

impl Router {
    pub fn intent(&self) -> Option<&Intent> {
        self.intent.as_ref()
    }

    pub fn set_intent(&mut self, intent: Intent, fleet: &Fleet, proxy: &dyn Routing) {
        self.intent = Some(intent);
        self.holding = false;
        self.publish(fleet, proxy);
    }

    /// While a singleton's role moves (`strategy = "handoff"`): no request goes to any
    /// instance until the next intent; the proxy holds them (bounded by `bound`) meanwhile.
    /// The hold is armed before the empty table is published, so no request in between is
    /// answered 503.
    pub fn hold(&mut self, bound: std::time::Duration, fleet: &Fleet, proxy: &dyn Routing) {
        proxy.hold(bound);
        self.holding = true;
        self.publish(fleet, proxy);
    }

    /// Rebuilds and swaps the table for the current intent and fleet.
    pub fn publish(&mut self, fleet: &Fleet, proxy: &dyn Routing) {
        let Some(intent) = self.intent.clone() else {
            return;
        };
        let mut stable = self.pool(&intent.stable, fleet);
        if self.holding {
            stable.backends.clear();
        }
        let canary = match &intent.canary {
            Some(c) if intent.weight > Weight::ZERO => Some((self.pool(c, fleet), intent.weight)),
            _ => None,
        };
        let gone = canary
            .is_some()
            .then(|| stable_absence(&intent.stable, fleet))
            .flatten();
        if gone.is_some() != self.stable_gone {
            self.stable_gone = gone.is_some();
            self.stable_change = Some((self.stable_gone, gone.clone().unwrap_or_default()));
        }
        let stable = if gone.is_some() { None } else { Some(stable) };
        // Forget backends of instances that are gone, so the map does not grow forever.
        self.backends.retain(|(v, addr), _| {
            fleet
                .get(v)
                .is_some_and(|vf| vf.instances.iter().any(|i| i.addr == *addr))
        });
        proxy.set_table(RouteTable {
            salt: intent.salt,
            stable,
            canary,
            fencing: intent.fencing,
        });
    }

    /// A change of "stable has no instance at all" since the last call: `(gone, why)`.
    pub fn take_stable_change(&mut self) -> Option<(bool, String)> {
        self.stable_change.take()
    }

    fn pool(&mut self, release: &Release, fleet: &Fleet) -> Pool {
        let mut backends = Vec::new();
        if let Some(vf) = fleet
            .get(&release.version)
            .filter(|vf| vf.digest == release.digest)
        {
            for i in vf
                .instances
                .iter()
                .filter(|i| i.state == InstanceState::Ready)
            {
                let b = self
                    .backends
                    .entry((release.version.clone(), i.addr))
                    .or_insert_with(|| Arc::new(Backend::new(i.id.clone(), i.addr)))
                    .clone();
                backends.push(b);
            }
        }
        Pool {
            version: release.version.clone(),
            backends,
        }
    }
}

/// Why stable has no instance at all, or `None` when it has one (in any state but stopped:
/// starting, ready, not ready, restarting, draining).
fn stable_absence(stable: &Release, fleet: &Fleet) -> Option<String> {
    match fleet.get(&stable.version) {
        None => Some(format!("{} is not running", stable.version)),
        Some(vf) if vf.digest != stable.digest => Some(format!(
            "{} runs another release ({})",
            stable.version, vf.digest
        )),
        Some(vf)
            if vf
                .instances
                .iter()
                .all(|i| i.state == InstanceState::Stopped) =>
        {
            Some(format!("every instance of {} is stopped", stable.version))
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_proxy::Proxy;
    use cutover_supervisor::{InstanceStatus, VersionFleet};
    use cutover_telemetry::Recorder;
    use std::time::Duration;

    fn fleet(entries: &[(&str, &str, &[InstanceState])]) -> Fleet {
        entries
            .iter()
            .map(|(version, digest, states)| {
                let instances = states
                    .iter()
                    .enumerate()
                    .map(|(n, state)| InstanceStatus {
                        id: format!("{version}-{n}"),
                        index: n,
                        addr: ([127, 0, 0, 1], 1000 + n as u16).into(),
                        pid: Some(1),
                        state: *state,
                        restarts: 0,
                        starts: 1,
                        adopted: false,
                        last_exit: None,
                        last_probe: None,
                    })
                    .collect();
                let vf = VersionFleet {
                    digest: digest.to_string(),
                    instances,
                    crash_loop: None,
                };
                (version.to_string(), vf)
            })
            .collect()
    }

    /// Invariant 10: stable's instances starting is not "no stable"; only none at all is,
    /// and each change of that is handed over once, to be recorded.
    #[test]
    fn stable_is_left_out_only_when_it_has_no_instance_at_all() {
        use InstanceState::*;
        let proxy = Proxy::new(
            cutover_proxy::ProxyConfig::default(),
            Recorder::new(Duration::from_millis(50), Duration::from_secs(1)),
        );
        let mut router = Router::default();
        let intent = Intent {
            stable: Release::new("v1", "d1"),
            canary: Some(Release::new("v2", "d2")),
            weight: Weight::from_bp(1000).unwrap(),
            salt: 1,
            fencing: None,
        };
        let starting = fleet(&[
            ("v1", "d1", &[Starting, Restarting]),
            ("v2", "d2", &[Ready]),
        ]);
        router.set_intent(intent.clone(), &starting, &proxy);
        let t = proxy.table();
        assert!(t.stable.as_ref().is_some_and(|p| p.backends.is_empty()));
        assert_eq!(router.take_stable_change(), None);

        let gone = fleet(&[("v2", "d2", &[Ready])]);
        router.publish(&gone, &proxy);
        assert!(
            proxy.table().stable.is_none(),
            "no stable at all: the canary serves"
        );
        let (is_gone, why) = router.take_stable_change().unwrap();
        assert!(is_gone && why.contains("v1 is not running"), "{why}");
        router.publish(&gone, &proxy);
        assert_eq!(router.take_stable_change(), None, "said once");

        router.publish(&starting, &proxy);
        assert_eq!(router.take_stable_change(), Some((false, String::new())));
        assert!(proxy.table().stable.is_some());

        // Without a canary there is nothing to spill to: nothing to record.
        let mut router = Router::default();
        router.set_intent(
            Intent {
                canary: None,
                ..intent
            },
            &gone,
            &proxy,
        );
        assert_eq!(router.take_stable_change(), None);
    }
}
