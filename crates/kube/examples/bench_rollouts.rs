//! Controller memory per Rollout and reconcile throughput with many Rollouts (a benchmark,
//! not a test; `bench/kube-rollouts.sh` runs it, BENCHMARKS.md has the figures).
//!
//! N Rollouts go through a scripted watch stream into a kube-runtime reflector store (what
//! the controller's watch keeps), and each is reconciled twice against a scripted API server
//! answering like a real one: the first pass deploys (ReplicaSet list, status write,
//! ReplicaSet create), the second finds the pods ready (ReplicaSet list, status write);
//! every status written comes back through the watch stream into the store, as it would
//! from a cluster. What stays
//! resident afterwards is what the controller holds per Rollout: the store's objects (with
//! the engine's state in their status) and the engines kept between passes.
//!
//! `cargo run -p cutover-kube --example bench_rollouts --release -- 10000`

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cutover_core::Timestamp;
use cutover_kube::crd::{Rollout, RolloutSpec};
use cutover_kube::leader::Leadership;
use cutover_kube::reconcile::{reconcile, Context};
use http::{Method, Request, Response};
use kube::client::Body;
use kube::runtime::{reflector, watcher};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};

/// Resident set size, from /proc/self/statm (pages of 4 KiB).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn rollout(i: usize) -> Rollout {
    let spec: RolloutSpec = serde_json::from_value(json!({
        "replicas": 3,
        "template": {"metadata": {"labels": {"app": format!("svc-{i}")}},
                     "spec": {"containers": [{"name": "app", "image": format!("registry.example/app-{i}@sha256:{:064x}", i),
                                              "ports": [{"containerPort": 8080}],
                                              "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}}}]}},
        "strategy": {"canary": {"steps": [{"setWeight": 5}, {"pause": {"duration": "1m"}},
                                          {"setWeight": 25}, {"pause": {"duration": "1m"}}]}}
    }))
    .unwrap();
    let mut ro = Rollout::new(&format!("svc-{i}"), spec);
    ro.metadata.namespace = Some("bench".into());
    ro.metadata.resource_version = Some("1".into());
    ro.metadata.uid = Some(format!("uid-{i}"));
    ro
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    // The ReplicaSets created, by Rollout name, reported with all pods ready when listed
    // (the scripted API server's side of the cluster).
    let created: Arc<Mutex<HashMap<String, Value>>> = Arc::new(Mutex::new(HashMap::new()));
    let written: Arc<Mutex<Vec<Rollout>>> = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicU64::new(0));
    {
        let (created, written, calls) = (created.clone(), written.clone(), calls.clone());
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                calls.fetch_add(1, Ordering::Relaxed);
                let method = req.method().clone();
                let path = req.uri().path().to_string();
                let query = req.uri().query().unwrap_or("").to_string();
                let body = req.into_body().collect_bytes().await.unwrap_or_default();
                let reply: Value = if method == Method::GET && path.ends_with("/replicasets") {
                    // labelSelector=cutover.dev%2Frollout%3Dsvc-N
                    let owner = query.rsplit("%3D").next().unwrap_or("").to_string();
                    let items: Vec<Value> = created
                        .lock()
                        .unwrap()
                        .get(&owner)
                        .cloned()
                        .into_iter()
                        .collect();
                    json!({"apiVersion": "apps/v1", "kind": "ReplicaSetList", "metadata": {}, "items": items})
                } else if method == Method::POST && path.ends_with("/replicasets") {
                    let mut rs: Value = serde_json::from_slice(&body).unwrap();
                    let owner = rs["metadata"]["labels"]["cutover.dev/rollout"]
                        .as_str()
                        .unwrap_or("")
                        .to_string();
                    let replicas = rs["spec"]["replicas"].clone();
                    rs["status"] = json!({"replicas": replicas, "readyReplicas": replicas});
                    created.lock().unwrap().insert(owner, rs.clone());
                    rs
                } else if method == Method::PUT && path.ends_with("/status") {
                    let ro: Rollout = serde_json::from_slice(&body).unwrap();
                    written.lock().unwrap().push(ro);
                    serde_json::from_slice(&body).unwrap()
                } else {
                    serde_json::from_slice(&body).unwrap_or(json!({"metadata": {}}))
                };
                send.send_response(
                    Response::builder()
                        .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                        .unwrap(),
                );
            }
        });
    }
    let now = Arc::new(AtomicU64::new(1_800_000_000_000));
    let clock = {
        let now = now.clone();
        Arc::new(move || Timestamp::from_millis(now.load(Ordering::Relaxed)))
    };
    let (leader_tx, leadership) = Leadership::manual(true);
    let ctx = Arc::new(Context::new(client, leadership, clock));
    let (store, mut writer) = reflector::store::<Rollout>();

    let before = rss_bytes();
    // The watch stream's initial list.
    writer.apply_watcher_event(&watcher::Event::Init);
    for i in 0..n {
        writer.apply_watcher_event(&watcher::Event::InitApply(rollout(i)));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let listed = rss_bytes();

    let mut passes = 0u64;
    let started = tokio::time::Instant::now();
    for pass in 0..2 {
        now.fetch_add(5_000, Ordering::Relaxed);
        for ro in store.state() {
            if let Err(e) = reconcile(ro, ctx.clone()).await {
                panic!("pass {pass}: {e}");
            }
            passes += 1;
        }
        // What was written comes back through the watch.
        let objs: Vec<Rollout> = std::mem::take(&mut *written.lock().unwrap());
        for mut o in objs {
            let rv: u64 = o
                .resource_version()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            o.metadata.resource_version = Some((rv + 1).to_string());
            writer.apply_watcher_event(&watcher::Event::Apply(o));
        }
    }
    let elapsed = started.elapsed();
    let after = rss_bytes();
    drop(leader_tx);
    let per = |bytes: u64| bytes as f64 / n as f64 / 1024.0;
    println!(
        "{{\"rollouts\": {n}, \"reconciles\": {passes}, \"api_calls\": {}, \"seconds\": {:.3}, \
         \"reconciles_per_second\": {:.0}, \"rss_baseline_mb\": {:.1}, \"rss_after_mb\": {:.1}, \
         \"kib_per_rollout_listed\": {:.1}, \"kib_per_rollout_after_reconciles\": {:.1}}}",
        calls.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        passes as f64 / elapsed.as_secs_f64().max(1e-9),
        before as f64 / 1e6,
        after as f64 / 1e6,
        per(listed.saturating_sub(before)),
        per(after.saturating_sub(before)),
    );
    // Every Rollout is live on its first release.
    let done = store
        .state()
        .iter()
        .filter(|r| r.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("done"))
        .count();
    assert_eq!(done, n, "every Rollout reached done");
}
