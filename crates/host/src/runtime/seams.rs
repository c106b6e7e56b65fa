//! The seams between the driver and the world: what it asks of the proxy, the supervisor, the
//! state store and the notification sinks, as traits, with the real implementations.
//!
//! The driver holds each as an `Arc<dyn ..>` and never names `Proxy`, `Supervisor`, `Store`
//! or `Notifier`, so its own tests run it against fakes that record the calls, on paused
//! time (`runtime/tests.rs`). Every method returns quickly: the slow parts (a stop's drain,
//! an SQLite transaction) are futures the driver awaits or spawns.

use super::persist::{PersistError, StoreActor};
use cutover_admin::DeployRequest;
use cutover_notify::{Notice, Notifier};
use cutover_proxy::{Proxy, RouteTable, WsDrainReport};
use cutover_store::{Commit, Head, InUse, ReleaseRecord};
use cutover_supervisor::{
    Closer, Fleet, InFlight, Release as SupRelease, StopReport, Supervisor, SupervisorError,
};
use futures_util::future::BoxFuture;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;

/// The data plane: where the route table goes and what it can say about an instance.
pub trait Routing: Send + Sync {
    /// Replaces the route table in one atomic swap (DESIGN.md invariant 1).
    fn set_table(&self, table: RouteTable);
    /// Requests in flight to an instance (what a drain waits on).
    fn in_flight(&self, addr: SocketAddr) -> usize;
    /// WebSocket sessions open to an instance (the dashboard's instance table).
    fn websocket_sessions(&self, addr: SocketAddr) -> usize;
    /// Ends the WebSocket sessions still open to `addr` once `quiet` has passed (invariant 4).
    fn drain_websockets(
        &self,
        addr: SocketAddr,
        quiet: Duration,
    ) -> BoxFuture<'static, WsDrainReport>;
    /// Requests the proxy refused itself, by reason (for `/metrics`).
    fn refused_requests(&self) -> Vec<(&'static str, u64)>;
    /// New requests wait (at most `bound`) for the next table with a ready instance instead
    /// of being answered 503: while a singleton's role moves (`strategy = "handoff"`).
    fn hold(&self, bound: Duration);
}

/// The processes: releases started and stopped, and the fleet they report.
pub trait Instances: Send + Sync {
    /// Resolves a deploy request to the release it would run (program, digest).
    fn resolve(&self, req: &DeployRequest) -> Result<SupRelease, SupervisorError>;
    /// Starts a release's instances; they report readiness through [`Instances::fleet`].
    fn start(&self, release: SupRelease) -> Result<(), SupervisorError>;
    /// Drains and stops a version; the future ends with what happened to each instance.
    fn stop(
        &self,
        version: &str,
        in_flight: InFlight,
        closer: Option<Closer>,
    ) -> BoxFuture<'static, StopReport>;
    /// The fleet as it changes.
    fn fleet(&self) -> watch::Receiver<Fleet>;
    /// `[app]` as reloaded (`cutover reload`): what the next deploy's release is resolved with.
    fn set_app(&self, app: cutover_core::spec::AppSpec);
    /// Stops (whole process groups) what a previous cutover left running that no release
    /// claimed at recovery.
    fn stop_unclaimed(&self);
    /// An instance's log file.
    fn log_path(&self, id: &str) -> PathBuf;
    /// The handoff call (`strategy = "handoff"`, docs/handoff.md): `POST path` with
    /// `{"token": token}` on the instance at `addr`, which must answer 2xx within `timeout`.
    fn handoff(
        &self,
        addr: SocketAddr,
        path: &str,
        token: u64,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<(), String>>;
}

/// The state store. `commit` is one transaction; the driver awaits it before it carries out
/// any action of the outcome it records (invariant 8).
pub trait StateStore: Send + Sync {
    /// Returns each decision's place in the audit chain (its anchor), in order.
    fn commit(&self, commit: Commit) -> BoxFuture<'static, Result<Vec<Head>, PersistError>>;
    /// Prunes what ended before `retention` and is not in `keep` (`[state] retention`); a
    /// failure is logged by the store's side and retried at the next run.
    fn prune(&self, keep: InUse, retention: Duration, now_ms: i64) -> BoxFuture<'static, ()>;
    /// Records a change of "the service has a ready instance" (`cutover report`'s downtime).
    /// `prior`: what this cutover recorded last (`None`: the store's last record counts).
    /// A failure is logged by the returned future.
    fn record_serving(
        &self,
        service: String,
        prior: Option<bool>,
        serving: bool,
        planned: bool,
        now_ms: u64,
    ) -> BoxFuture<'static, ()>;
    /// A release recorded by an earlier commit (to start it again after a restart).
    fn release(
        &self,
        digest: &str,
    ) -> BoxFuture<'static, Result<Option<ReleaseRecord>, PersistError>>;
}

/// The notification sinks. Never blocks: a sink that is behind drops rather than waits.
pub trait Notifications: Send + Sync {
    fn notify(&self, notice: Notice);
}

impl Routing for Proxy {
    fn set_table(&self, table: RouteTable) {
        Proxy::set_table(self, table);
    }
    fn in_flight(&self, addr: SocketAddr) -> usize {
        Proxy::in_flight(self, addr)
    }
    fn websocket_sessions(&self, addr: SocketAddr) -> usize {
        Proxy::websocket_sessions(self, addr)
    }
    fn drain_websockets(
        &self,
        addr: SocketAddr,
        quiet: Duration,
    ) -> BoxFuture<'static, WsDrainReport> {
        Box::pin(Proxy::drain_websockets(self, addr, quiet))
    }
    fn refused_requests(&self) -> Vec<(&'static str, u64)> {
        Proxy::refused_requests(self)
    }
    fn hold(&self, bound: Duration) {
        Proxy::hold_while_cold(self, bound);
    }
}

/// The supervisor with what resolving a release needs from the config.
pub struct Supervised {
    pub supervisor: Supervisor,
    /// `[app]` as the config says now: `cutover reload` replaces it for the next deploy.
    pub app: std::sync::RwLock<cutover_core::spec::AppSpec>,
    /// The config file's directory (relative programs are found from it).
    pub dir: PathBuf,
}

impl Instances for Supervised {
    fn resolve(&self, req: &DeployRequest) -> Result<SupRelease, SupervisorError> {
        SupRelease::resolve(
            &req.version,
            &self.app.read().unwrap_or_else(|e| e.into_inner()),
            Path::new(&self.dir),
            req.env.clone(),
            req.args.clone(),
        )
    }
    fn start(&self, release: SupRelease) -> Result<(), SupervisorError> {
        self.supervisor.start(release)
    }
    fn stop(
        &self,
        version: &str,
        in_flight: InFlight,
        closer: Option<Closer>,
    ) -> BoxFuture<'static, StopReport> {
        Box::pin(self.supervisor.stop_with(version, in_flight, closer))
    }
    fn fleet(&self) -> watch::Receiver<Fleet> {
        self.supervisor.subscribe()
    }
    fn stop_unclaimed(&self) {
        self.supervisor.stop_unclaimed();
    }
    fn set_app(&self, app: cutover_core::spec::AppSpec) {
        *self.app.write().unwrap_or_else(|e| e.into_inner()) = app;
    }
    fn log_path(&self, id: &str) -> PathBuf {
        self.supervisor.log_path(id)
    }
    fn handoff(
        &self,
        addr: SocketAddr,
        path: &str,
        token: u64,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<(), String>> {
        let path = path.to_string();
        Box::pin(async move { cutover_supervisor::handoff_call(addr, &path, token, timeout).await })
    }
}

impl StateStore for StoreActor {
    fn commit(&self, commit: Commit) -> BoxFuture<'static, Result<Vec<Head>, PersistError>> {
        let done = self.call(move |s| s.commit(commit).map_err(PersistError::from));
        Box::pin(async move { done.await? })
    }
    fn prune(&self, keep: InUse, retention: Duration, now_ms: i64) -> BoxFuture<'static, ()> {
        let done = self.call(move |s| super::prune_store(s, &keep, retention, now_ms));
        Box::pin(async move {
            if let Err(e) = done.await {
                tracing::error!(error = %e, "could not prune the state store");
            }
        })
    }
    fn record_serving(
        &self,
        service: String,
        prior: Option<bool>,
        serving: bool,
        planned: bool,
        now_ms: u64,
    ) -> BoxFuture<'static, ()> {
        let done = self.call(move |s| {
            let mut last = prior;
            crate::delivery::record_serving(s, &service, &mut last, serving, planned, now_ms)
        });
        Box::pin(async move {
            if let Err(e) = done.await {
                tracing::error!(error = %e, "could not record a serving change");
            }
        })
    }
    fn release(
        &self,
        digest: &str,
    ) -> BoxFuture<'static, Result<Option<ReleaseRecord>, PersistError>> {
        let digest = digest.to_string();
        let done = self.call(move |s| s.release(&digest).map_err(PersistError::from));
        Box::pin(async move { done.await? })
    }
}

impl Notifications for Notifier {
    fn notify(&self, notice: Notice) {
        Notifier::notify(self, notice);
    }
}

/// No `[[notify]]` sinks configured.
pub struct Silent;

impl Notifications for Silent {
    fn notify(&self, _: Notice) {}
}
