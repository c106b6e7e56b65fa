//! Effects: the engine's `Action`s and decisions turned into calls on the seams.
//!
//! Nothing here decides anything about the rollout, and nothing here calls back into the
//! engine: what an action leads to (a release that cannot be spawned, instances already
//! ready) is queued as a follow-up event for the driver (`Driver::follow`).

use super::driver::Driver;
use crate::router::Intent;
use cutover_core::engine::{Action, Decision, Event, Release};
use cutover_core::Timestamp;
use cutover_notify::Notice;
use cutover_supervisor::{Closer, InFlight, Release as SupRelease};
use std::sync::Arc;
use tracing::{error, info};

impl Driver {
    /// Carries out one action of a committed outcome.
    pub(super) async fn act(&mut self, action: Action) {
        match action {
            Action::Start { release } => self.start_release(&release).await,
            Action::Route {
                stable,
                canary,
                weight,
                salt,
            } => {
                let fleet = self.fleet();
                self.router.set_intent(
                    Intent {
                        stable,
                        canary,
                        weight,
                        salt,
                    },
                    &fleet,
                    &*self.routing,
                );
                // The scrape targets follow the route table (a canary is scraped, labelled
                // track="canary", from its first traffic).
                self.publish_targets(&fleet);
            }
            Action::Stop { release, reason } => {
                info!(version = %release.version, %reason, "stopping");
                let routing = self.routing.clone();
                let in_flight: InFlight = Arc::new(move |addr| routing.in_flight(addr));
                // What is still open when the drain window ends (WebSockets): cutover stops
                // forwarding client frames, lets the instance's acks through for the quiet
                // period, then closes the client with 1012 (DESIGN.md invariant 4).
                let (routing, quiet) = (
                    self.routing.clone(),
                    self.loaded.config.app.stop.quiet_period.get(),
                );
                let closer: Closer = Arc::new(move |addr| {
                    let drained = routing.drain_websockets(addr, quiet);
                    Box::pin(async move {
                        let report = drained.await;
                        info!(%addr, "websockets drained: {}", ws_drained(&report));
                    })
                });
                let stop = self
                    .instances
                    .stop(&release.version, in_flight, Some(closer));
                tokio::spawn(async move {
                    let report = stop.await;
                    info!(version = %report.version, "stopped: {}", stopped(&report));
                });
            }
        }
    }

    /// The resolved release for a digest: resolved by this cutover's deploy, or recorded in
    /// the store by an earlier one (a restart between deploy and start, or a rollback).
    async fn release_for(&mut self, release: &Release) -> Result<Option<SupRelease>, String> {
        if let Some(r) = self.releases.get(&release.digest) {
            return Ok(Some(r.clone()));
        }
        let Some(stored) = self.store.release(&release.digest).await.map_err(|e| {
            format!(
                "release {} cannot be read from the state store: {e}",
                release.label()
            )
        })?
        else {
            return Ok(None);
        };
        let r: SupRelease = serde_json::from_value(stored.spec).map_err(|e| {
            format!(
                "release {} in the state store cannot be read ({e}); it was written by an incompatible cutover",
                release.label()
            )
        })?;
        let mut r = r;
        // The store has no secret values: they come from cutover's environment or their file.
        r.load_secrets().map_err(|e| e.to_string())?;
        self.releases.insert(release.digest.clone(), r.clone());
        Ok(Some(r))
    }

    async fn start_release(&mut self, release: &Release) {
        let canary = self
            .engine
            .active()
            .is_some_and(|r| r.to.digest == release.digest);
        let failure = match self.release_for(release).await {
            Err(reason) => Some(reason),
            Ok(None) => Some(format!(
                "release {} is not in the state store",
                release.label()
            )),
            Ok(Some(r)) => self.instances.start(r).err().map(|e| e.to_string()),
        };
        match failure {
            Some(reason) => {
                error!(version = %release.version, %reason, "could not start");
                if canary {
                    self.follow(Event::StartFailed {
                        digest: release.digest.clone(),
                        reason,
                        facts: Vec::new(),
                    });
                }
            }
            None => self.on_fleet(),
        }
    }

    /// Hands a decision to the notification sinks; never blocks (the notifier drops rather
    /// than waits when a sink is behind).
    pub(super) fn notify(&self, d: &Decision, anchor: Option<&cutover_store::Head>) {
        let Some(kind) = d.kind.notify_kind() else {
            return;
        };
        let st = self.engine.state();
        let version = st
            .rollout
            .as_ref()
            .filter(|r| Some(r.id) == d.rollout)
            .map(|r| r.to.version.clone());
        self.notifier.notify(Notice {
            kind,
            service: st.service.clone(),
            rollout: d.rollout,
            version,
            at_ms: d.at.millis(),
            reason: d.reason.clone(),
            numbers: d.numbers.clone(),
            audit: anchor.map(|h| cutover_notify::AuditAnchor {
                seq: h.seq,
                mac: h.mac.clone(),
            }),
        });
    }
}

/// `3 sessions: 1 closed by the app, 0 by clients, 2 by cutover (1012), 0 lost`.
fn ws_drained(r: &cutover_proxy::WsDrainReport) -> String {
    format!(
        "{} session(s): {} closed by the app, {} by clients, {} by cutover (1012), {} lost",
        r.sessions, r.closed_by_app, r.closed_by_client, r.closed_by_cutover, r.lost
    )
}

/// `v2-0 (127.0.0.1:4100): drained after 12ms, exited (exit status: 0); ...`.
fn stopped(r: &cutover_supervisor::StopReport) -> String {
    use cutover_supervisor::{DrainOutcome, StopExit};
    if r.instances.is_empty() {
        return "nothing was running".to_string();
    }
    let one = |i: &cutover_supervisor::InstanceStopReport| {
        let drain = match &i.drain {
            DrainOutcome::Drained { waited } => format!(
                "drained after {}",
                crate::render::span(Timestamp(0), Timestamp(waited.get().as_millis() as u64))
            ),
            DrainOutcome::TimedOut { in_flight } => {
                format!("drain timed out with {in_flight} request(s) in flight")
            }
        };
        let exit = match &i.exit {
            StopExit::Exited { status } => format!("exited ({status})"),
            StopExit::Killed { status } => format!("killed after the grace period ({status})"),
            StopExit::NotRunning { last_exit: Some(e) } => format!("was not running (last: {e})"),
            StopExit::NotRunning { last_exit: None } => "was not running".to_string(),
        };
        format!("{} ({}): {drain}, {exit}", i.id, i.addr)
    };
    r.instances.iter().map(one).collect::<Vec<_>>().join("; ")
}
