//! `cutover controller`: the kube-rs runtime around [`reconcile`](crate::reconcile).
//!
//! It watches Rollouts and only the ReplicaSets labelled `cutover.dev/rollout` (so its memory
//! follows the Rollouts, not the cluster), and runs only while it holds the Lease: it waits
//! for it, and when it is lost it stops reconciling and returns an error (the pod restarts
//! and queues for the lease again), as client-go's leader election does.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client};

use crate::crd::Rollout;
use crate::leader::{valid_for, Leadership};
use crate::reconcile::{reconcile, Context, Error, ROLLOUT_LABEL};

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Watch Rollouts in this namespace only; `None`: all namespaces.
    pub namespace: Option<String>,
    /// Elect a leader on a Lease (run two replicas); `false` for a single replica.
    pub leader_election: bool,
    /// The Lease's namespace and name.
    pub lease_namespace: String,
    pub lease_name: String,
    /// This replica's identity in the Lease (the pod name).
    pub identity: String,
    /// Seconds a Lease is valid after its last renewal.
    pub lease_duration: u64,
    /// Seconds before expiry the holder renews, and stops writing if it could not.
    pub lease_grace: u64,
}

/// What stopped the controller.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("no Kubernetes client (kubeconfig or in-cluster service account): {0}")]
    Client(kube::Error),
    #[error("leader election on Lease {namespace}/{name}: {message}")]
    Lease {
        namespace: String,
        name: String,
        message: String,
    },
    #[error("lost Lease {0}: stopped writing; restart to queue for it again")]
    LostLease(String),
}

fn error_policy(_ro: Arc<Rollout>, e: &Error, _ctx: Arc<Context>) -> Action {
    match e {
        Error::NotLeader => Action::await_change(),
        e => {
            tracing::warn!(error = %e, "reconcile failed; retrying");
            Action::requeue(Duration::from_secs(5))
        }
    }
}

/// Runs until the lease is lost (an error) or the watch streams end.
pub async fn run(opts: Options) -> Result<(), ControllerError> {
    let client = Client::try_default()
        .await
        .map_err(ControllerError::Client)?;
    let lease_err = |message: String| ControllerError::Lease {
        namespace: opts.lease_namespace.clone(),
        name: opts.lease_name.clone(),
        message,
    };
    let mut leadership = if opts.leader_election {
        let manager =
            kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &opts.lease_name)
                .with_namespace(&opts.lease_namespace)
                .with_identity(&opts.identity)
                .with_duration(opts.lease_duration)
                .with_grace(opts.lease_grace)
                .build()
                .await
                .map_err(|e| lease_err(e.to_string()))?;
        let (rx, _task) = manager.watch().await;
        let leadership = Leadership::fenced(rx);
        tokio::spawn(fence(client.clone(), opts.clone(), leadership.clone()));
        leadership
    } else {
        Leadership::always()
    };
    tracing::info!(identity = %opts.identity, "waiting for the lease");
    if !leadership.acquired().await {
        return Err(lease_err("the lease manager stopped".into()));
    }
    tracing::info!(identity = %opts.identity, "holding the lease; reconciling");

    let (rollouts, replicasets): (Api<Rollout>, Api<ReplicaSet>) = match &opts.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let clock = Arc::new(|| cutover_core::Timestamp::from_millis(cutover_clock::unix_millis()));
    let reporter = kube::runtime::events::Reporter {
        controller: "cutover-controller".into(),
        instance: Some(opts.identity.clone()),
    };
    let ctx = Arc::new(Context::new(client, leadership.clone(), clock).with_events(reporter));
    let controller = Controller::new(rollouts, watcher::Config::default())
        .owns(
            replicasets,
            watcher::Config::default().labels(ROLLOUT_LABEL),
        )
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "reconcile");
            }
        });
    let mut watch = leadership.clone();
    tokio::select! {
        () = controller => Ok(()),
        () = watch.lost() => Err(ControllerError::LostLease(opts.lease_name.clone())),
    }
}

/// Reads the Lease every second and moves the fence (see [`crate::leader`]).
async fn fence(client: Client, opts: Options, leadership: Leadership) {
    let api: Api<Lease> = Api::namespaced(client, &opts.lease_namespace);
    let duration = i64::try_from(opts.lease_duration).unwrap_or(15);
    let grace = i64::try_from(opts.lease_grace).unwrap_or(5);
    loop {
        let now = i64::try_from(cutover_clock::unix_millis()).unwrap_or(i64::MAX);
        if let Ok(lease) = api.get(&opts.lease_name).await {
            let spec = lease.spec.unwrap_or_default();
            let renew = spec.renew_time.map(|t| t.0.as_millisecond());
            let valid = valid_for(
                spec.holder_identity.as_deref(),
                &opts.identity,
                renew,
                duration,
                grace,
                now,
            );
            leadership.confirm(valid);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
