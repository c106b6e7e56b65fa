//! Turns the engine's route intent plus the supervisor's fleet into the proxy's route table.
//!
//! Only instances whose readiness probe passed are in a pool (DESIGN.md invariant 3); the
//! table is rebuilt whole and swapped atomically (invariant 1). One `Arc<Backend>` is kept per
//! instance across tables, so its in-flight count — what drain waits on — survives swaps.

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
}

#[derive(Default)]
pub struct Router {
    intent: Option<Intent>,
    backends: HashMap<(String, SocketAddr), Arc<Backend>>,
}

impl Router {
    pub fn intent(&self) -> Option<&Intent> {
        self.intent.as_ref()
    }

    pub fn set_intent(&mut self, intent: Intent, fleet: &Fleet, proxy: &dyn Routing) {
        self.intent = Some(intent);
        self.publish(fleet, proxy);
    }

    /// Rebuilds and swaps the table for the current intent and fleet.
    pub fn publish(&mut self, fleet: &Fleet, proxy: &dyn Routing) {
        let Some(intent) = self.intent.clone() else {
            return;
        };
        let stable = self.pool(&intent.stable, fleet);
        let canary = match &intent.canary {
            Some(c) if intent.weight > Weight::ZERO => Some((self.pool(c, fleet), intent.weight)),
            _ => None,
        };
        // Forget backends of instances that are gone, so the map does not grow forever.
        self.backends.retain(|(v, addr), _| {
            fleet
                .get(v)
                .is_some_and(|vf| vf.instances.iter().any(|i| i.addr == *addr))
        });
        proxy.set_table(RouteTable {
            salt: intent.salt,
            stable: Some(stable),
            canary,
        });
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
