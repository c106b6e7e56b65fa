//! Effects: the engine's `Action`s and decisions turned into calls on the seams.
//!
//! Nothing here decides anything about the rollout, and nothing here calls back into the
//! engine: what an action leads to (a release that cannot be spawned, instances already
//! ready) is queued as a follow-up event for the driver (`Driver::follow`).

use super::driver::Driver;
use crate::router::Intent;
use cutover_core::engine::{Action, Decision, Event, Release, Role};
use cutover_core::Timestamp;
use cutover_notify::Notice;
use cutover_supervisor::{Closer, InFlight, Release as SupRelease};
use std::sync::Arc;
use tracing::{error, info, warn};

impl Driver {
    /// Carries out one action of a committed outcome.
    pub(super) async fn act(&mut self, action: Action) {
        match action {
            Action::Start { release, role } => self.start_release(&release, role).await,
            Action::Handoff { from, to, token } => self.hand_off(&from, &to, token),
            Action::Reclaim { release, token } => {
                let path = self.loaded.config.rollout.handoff.path.clone();
                let timeout = self.loaded.config.rollout.handoff.timeout.get();
                for addr in self.addrs(&release, true) {
                    let call = self.instances.handoff(addr, &path, token, timeout);
                    let version = release.version.clone();
                    tokio::spawn(async move {
                        match call.await {
                            Ok(()) => info!(%version, token, "the holder took its new token"),
                            // The proxy sends the token with every request anyway.
                            Err(e) => {
                                warn!(%version, token, error = %e, "the holder was not told its new token")
                            }
                        }
                    });
                }
            }
            Action::Route {
                stable,
                canary,
                weight,
                salt,
                fencing,
            } => {
                let fleet = self.fleet();
                self.router.set_intent(
                    Intent {
                        stable,
                        canary,
                        weight,
                        salt,
                        fencing,
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

    /// The addresses of the release's instances (only the ready ones with `ready`).
    fn addrs(&self, release: &Release, ready: bool) -> Vec<std::net::SocketAddr> {
        let fleet = self.fleet();
        fleet
            .get(&release.version)
            .filter(|vf| vf.digest == release.digest)
            .map(|vf| {
                vf.instances
                    .iter()
                    .filter(|i| !ready || i.state == cutover_supervisor::InstanceState::Ready)
                    .map(|i| i.addr)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `strategy = "handoff"`: new requests are held in the proxy, `from`'s in-flight ones
    /// finish (at most `rollout.handoff.drain_timeout`), then `to` is called with `token` (at
    /// most `timeout`). The result goes back to the engine as an event; the engine's next
    /// route (to `to`, or back to `from` with a higher token) releases the held requests.
    fn hand_off(&mut self, from: &Release, to: &Release, token: u64) {
        let spec = self.loaded.config.rollout.handoff.clone();
        // The proxy's bound covers the whole sequence plus the engine's own backstop, so a
        // request is held until the engine routes again, not 503'd before.
        let bound = spec.bound().get() * 2 + self.loaded.config.rollout.interval.get();
        let fleet = self.fleet();
        self.router.hold(bound, &fleet, &*self.routing);
        let old = self.addrs(from, false);
        let new = self.addrs(to, true);
        let routing = self.routing.clone();
        let instances = self.instances.clone();
        let events = self.handoff_events();
        let digest = to.digest.clone();
        let (from_version, to_version) = (from.version.clone(), to.version.clone());
        info!(from = %from_version, to = %to_version, token, "handing the active role over");
        tokio::spawn(async move {
            let result = async {
                let Some(&addr) = new.first() else {
                    return Err(format!("{to_version} has no ready instance to hand over to"));
                };
                // In-flight requests are counted from the moment a request takes a table, so
                // two zero readings in a row, a poll apart, leave no request on its way in.
                let deadline = tokio::time::Instant::now() + spec.drain_timeout.get();
                let mut zeros = 0;
                loop {
                    let busy: usize = old.iter().map(|a| routing.in_flight(*a)).sum();
                    zeros = if busy == 0 { zeros + 1 } else { 0 };
                    if zeros >= 2 {
                        break;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(format!(
                            "{from_version} still had {busy} request(s) in flight after rollout.handoff.drain_timeout ({})",
                            spec.drain_timeout
                        ));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
                instances
                    .handoff(addr, &spec.path, token, spec.timeout.get())
                    .await
                    .map_err(|e| format!("the handoff call to {to_version} failed: {e}"))
            }
            .await;
            let event = match result {
                Ok(()) => Event::HandoffDone { digest, token },
                Err(reason) => {
                    warn!(%reason, "handoff failed");
                    Event::HandoffFailed {
                        digest,
                        token,
                        reason,
                    }
                }
            };
            let _ = events.send(event);
        });
    }

    async fn start_release(&mut self, release: &Release, role: Option<Role>) {
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
            Ok(Some(mut r)) => {
                if let Some(role) = role {
                    // What the instance is told at start (docs/handoff.md). Not part of the
                    // digest: the release is the same program whatever role it starts in.
                    let name = if role.active { "active" } else { "standby" };
                    r.env.insert("CUTOVER_FENCING_ROLE".into(), name.into());
                    r.env
                        .insert("CUTOVER_FENCING_TOKEN".into(), role.token.to_string());
                }
                self.instances.start(r).err().map(|e| e.to_string())
            }
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
