//! The admin API's handler: reads that need no engine (history from the store actor, logs
//! from disk) are answered here; everything else is a request to the driver.

use super::driver::Request;
use super::persist::StoreActor;
use cutover_admin::{
    AlertmanagerPayload, ApiError, BoxFuture, DeployRequest, Handler, HistoryQuery, LogsQuery,
    Verb as ApiVerb,
};
use cutover_core::engine::Verb;
use cutover_store::Store;
use cutover_supervisor::{InstanceState, Supervisor};
use serde_json::{json, Value};
use std::path::PathBuf;
use tokio::sync::{mpsc, oneshot};

pub(super) struct AdminHandler {
    pub tx: mpsc::Sender<Request>,
    pub store: StoreActor,
    /// Read-only here: which instances still run (`logs` answers `running`).
    pub supervisor: Supervisor,
    pub log_dir: PathBuf,
    /// The dashboard's live feed (`GET /v1/events`), which the driver publishes to.
    pub feed: crate::dashboard::Feed,
    /// For `replay`: the policy a recording is replayed with.
    pub spec: cutover_core::spec::RolloutSpec,
    /// How long a `rollback` waits for the held release to be ready (`app.start_timeout`).
    pub rollback_wait: std::time::Duration,
}

impl AdminHandler {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| ApiError::internal("cutover is shutting down"))?;
        rx.await
            .map_err(|_| ApiError::internal("cutover is shutting down"))
    }
}

impl Handler for AdminHandler {
    fn status(&self) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move { self.ask(Request::Status).await })
    }
    fn deploy(&self, req: DeployRequest) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move { self.ask(|tx| Request::Deploy(req, tx)).await? })
    }
    fn verb(
        &self,
        verb: ApiVerb,
        reason: Option<String>,
    ) -> BoxFuture<'_, Result<Value, ApiError>> {
        let verb = match verb {
            ApiVerb::Pause => Verb::Pause,
            ApiVerb::Resume => Verb::Resume,
            ApiVerb::Promote => Verb::Promote,
            ApiVerb::Abort => Verb::Abort,
            ApiVerb::Rollback => Verb::Rollback,
        };
        Box::pin(async move {
            if verb == Verb::Rollback {
                // Honest rollback: only to ready instances, after a bounded wait.
                if let Some(target) = self.ask(Request::RollbackTarget).await? {
                    let waited = crate::rollback::wait_ready(
                        self.supervisor.subscribe(),
                        &target,
                        self.rollback_wait,
                    )
                    .await;
                    crate::rollback::check(Some(&target), &self.supervisor.fleet(), waited)
                        .map_err(|e| ApiError::conflict(e.to_string()))?;
                }
            }
            self.ask(|tx| Request::Verb(verb, reason, tx)).await?
        })
    }
    fn history(&self, q: HistoryQuery) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move {
            self.store
                .call(move |s| history(s, q))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
        })
    }
    fn metrics(&self) -> BoxFuture<'_, Result<String, ApiError>> {
        Box::pin(async move { self.ask(Request::Metrics).await })
    }
    fn logs(&self, version: String, q: LogsQuery) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move {
            let running = self.supervisor.fleet().get(&version).is_some_and(|vf| {
                vf.instances
                    .get(q.instance as usize)
                    .is_some_and(|i| i.state != InstanceState::Stopped)
            });
            let dir = self.log_dir.clone();
            let chunk = tokio::task::spawn_blocking(move || {
                crate::logs::read_chunk(&dir, &version, &q, running)
            })
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??;
            Ok(serde_json::to_value(chunk).unwrap_or_default())
        })
    }
    fn alerts(&self, payload: AlertmanagerPayload) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move { self.ask(|tx| Request::Alerts(payload, tx)).await? })
    }
    fn reload(&self) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move { self.ask(Request::Reload).await? })
    }
    fn events(&self) -> Option<tokio::sync::broadcast::Receiver<Value>> {
        Some(self.feed.subscribe())
    }
    fn replay(&self, rollout: i64) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move {
            // Read on the store's thread, replayed on a blocking thread: neither on a worker.
            let read = self
                .store
                .call(move |s| crate::dashboard::replay_read(s, rollout))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))??;
            let spec = self.spec.clone();
            tokio::task::spawn_blocking(move || {
                crate::dashboard::replay_series(&read.0, read.1, &spec)
            })
            .await
            .map_err(|e| ApiError::internal(e.to_string()))
        })
    }
}

fn history(store: &mut Store, q: HistoryQuery) -> Result<Value, ApiError> {
    let internal = |e: cutover_store::StoreError| ApiError::internal(e.to_string());
    let limit = q.limit.unwrap_or(20).clamp(1, 1000);
    let rollouts = match q.rollout {
        Some(id) => vec![store.rollout(id).map_err(internal)?.ok_or_else(|| {
            ApiError::not_found(format!("no rollout {id}; `cutover history` lists them"))
        })?],
        None => store.rollouts(limit).map_err(internal)?,
    };
    // Times are RFC 3339 strings (UTC, milliseconds): what a reader of the JSON wants, and
    // what `cutover history` parses back.
    let mut out = Vec::new();
    for r in rollouts {
        let decisions = store.decisions(Some(r.id), 10_000).map_err(internal)?;
        let mut v = serde_json::to_value(&r).unwrap_or_default();
        crate::render::rfc3339_fields(&mut v, &["started_at", "ended_at"]);
        let mut ds = serde_json::to_value(decisions).unwrap_or_default();
        for d in ds.as_array_mut().into_iter().flatten() {
            crate::render::rfc3339_fields(d, &["at"]);
        }
        v["decisions"] = ds;
        out.push(v);
    }
    let mut doc = json!({ "rollouts": out });
    if q.verify {
        let report = store.verify_chain().map_err(internal)?;
        doc["verify"] = serde_json::to_value(report).unwrap_or_default();
    }
    Ok(doc)
}
