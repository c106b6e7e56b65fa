//! The reconcile against a scripted Kubernetes API server (kube-rs's `tower_test::mock::pair`
//! pattern, as in controller-rs's fixtures): every call the controller makes is checked
//! against the script by method, path and body, answered as scripted, and any call the
//! script does not expect fails the test, as does an expected call that never comes.
//!
//! No API server runs here (none is packaged for these machines): what a real one does with
//! these writes (admission, the status subresource, garbage collection) is not tested. The
//! Prometheus the analysis queries is real (Debian's, on loopback, from the harness).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cutover_core::engine::{Engine, Event, Release, State};
use cutover_core::Timestamp;
use cutover_kube::crd::{Rollout, RolloutSpec, RolloutStatus};
use cutover_kube::leader::Leadership;
use cutover_kube::reconcile::{reconcile, release_of, Context, Error};
use http::{Method, Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::watch;

/// "Now" in every test: 2027-01-15 08:00 UTC.
const T0: u64 = 1_800_000_000_000;
const NS: &str = "shop";
const RS: &str = "/apis/apps/v1/namespaces/shop/replicasets";
const RO: &str = "/apis/cutover.dev/v1alpha1/namespaces/shop/rollouts/web";
const ROUTE: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/web";
const VS: &str = "/apis/networking.istio.io/v1/namespaces/shop/virtualservices/web";
const DR: &str = "/apis/networking.istio.io/v1/namespaces/shop/destinationrules";
const SVC_STABLE: &str = "/api/v1/namespaces/shop/services/web-stable";
const SVC_CANARY: &str = "/api/v1/namespaces/shop/services/web-canary";

/// One expected call and its scripted answer.
struct Call {
    method: Method,
    path: String,
    check: Box<dyn FnOnce(&Value) + Send>,
    status: u16,
    reply: Value,
    /// Run when the call arrives, before it is answered (e.g. the lease is lost).
    on_call: Option<Box<dyn FnOnce() + Send>>,
}

impl Call {
    fn new(method: Method, path: impl Into<String>, reply: Value) -> Call {
        Call {
            method,
            path: path.into(),
            check: Box::new(|_| {}),
            status: 200,
            reply,
            on_call: None,
        }
    }
    fn get(path: impl Into<String>, reply: Value) -> Call {
        Call::new(Method::GET, path, reply)
    }
    /// A merge patch whose body must be exactly `body`.
    fn patch(path: impl Into<String>, body: Value) -> Call {
        let expected = body.clone();
        Call::new(Method::PATCH, path, json!({}))
            .check(move |b| assert_eq!(b, &expected, "the PATCH body"))
    }
    fn check(mut self, f: impl FnOnce(&Value) + Send + 'static) -> Call {
        self.check = Box::new(f);
        self
    }
    fn status(mut self, s: u16, reply: Value) -> Call {
        self.status = s;
        self.reply = reply;
        self
    }
    fn on_call(mut self, f: impl FnOnce() + Send + 'static) -> Call {
        self.on_call = Some(Box::new(f));
        self
    }
}

/// Runs `work` against the script; returns its output once every scripted call was made.
async fn scripted<F, T>(calls: Vec<Call>, work: impl FnOnce(Client) -> F) -> T
where
    F: Future<Output = T>,
{
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let expected = calls.len();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    let verifier = async move {
        for (i, c) in calls.into_iter().enumerate() {
            let Some((req, send)) = handle.next_request().await else {
                panic!(
                    "call {i} ({} {}) was expected but never made",
                    c.method, c.path
                );
            };
            let path = req.uri().path().to_string();
            let full = req.uri().to_string();
            assert_eq!(
                (req.method(), path.as_str()),
                (&c.method, c.path.as_str()),
                "call {i}: got {} {full}",
                req.method()
            );
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            };
            (c.check)(&body);
            if let Some(f) = c.on_call {
                f();
            }
            count.fetch_add(1, Ordering::SeqCst);
            // A write with no scripted reply answers with what was written, as the API
            // server does (plus the metadata a patch leaves out).
            let mut reply = c.reply;
            if reply == json!({}) && c.status == 200 {
                reply = body.clone();
                if reply.get("metadata").is_none() {
                    reply["metadata"] = json!({"name": path.rsplit('/').next().unwrap()});
                }
            }
            let reply = Response::builder()
                .status(c.status)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap();
            send.send_response(reply);
        }
        if let Some((req, _)) = handle.next_request().await {
            panic!("unexpected call: {} {}", req.method(), req.uri());
        }
    };
    tokio::pin!(verifier);
    let work = work(client);
    tokio::pin!(work);
    let out = tokio::select! {
        out = &mut work => out,
        () = &mut verifier => unreachable!("the verifier ends only when the client is gone"),
    };
    assert_eq!(
        served.load(Ordering::SeqCst),
        expected,
        "scripted calls made"
    );
    out
}

fn template(image: &str) -> Value {
    json!({"metadata": {"labels": {"app": "web"}},
           "spec": {"containers": [{"name": "web", "image": image}]}})
}

/// The Rollout: 2 replicas, an HTTPRoute, steps 5 % for 1m, 20 % for 1m.
fn rollout(image: &str, routing: Value, analysis: Value) -> Rollout {
    let spec: RolloutSpec = serde_json::from_value(json!({
        "replicas": 2,
        "template": template(image),
        "strategy": {"canary": {
            "steps": [{"setWeight": 5}, {"pause": {"duration": "1m"}},
                      {"setWeight": 20}, {"pause": {"duration": "1m"}}],
            "scaleDownDelaySeconds": 3600,
            "abortScaleDownDelaySeconds": 30,
            "trafficRouting": routing,
            "analysis": analysis,
        }}
    }))
    .unwrap();
    let mut ro = Rollout::new("web", spec);
    ro.metadata.namespace = Some(NS.into());
    ro.metadata.resource_version = Some("100".into());
    ro.metadata.uid = Some("uid-web".into());
    ro
}

fn gateway() -> Value {
    json!({"stableService": "web-stable", "canaryService": "web-canary",
           "gatewayAPI": {"httpRoute": "web"}})
}

fn istio() -> Value {
    json!({"stableService": "web-stable", "canaryService": "web-canary",
           "istio": {"virtualService": "web"}})
}

fn release(image: &str) -> Release {
    release_of(&template(image))
}

/// The engine state of `ro` after `events` (applied one second apart, ending at `end`).
fn state_after(ro: &Rollout, events: Vec<Event>, end: u64) -> State {
    let mut e = Engine::new("web", ro.spec.to_core().unwrap());
    let n = events.len() as u64;
    for (i, ev) in events.into_iter().enumerate() {
        let at = Timestamp::from_millis(end - (n - 1 - i as u64) * 1000);
        e.handle(at, ev).unwrap();
    }
    e.state().clone()
}

fn deploy(r: &Release) -> Event {
    Event::Deploy {
        release: r.clone(),
        force: false,
        start_timeout: None,
    }
}

fn ready(r: &Release) -> Event {
    Event::Ready {
        digest: r.digest.clone(),
    }
}

/// `v1` stable, `v2` the canary at 5 %, its step started at `started`.
fn progressing(ro: &Rollout, started: u64) -> State {
    let (v1, v2) = (release("web:1"), release("web:2"));
    state_after(
        ro,
        vec![deploy(&v1), ready(&v1), deploy(&v2), ready(&v2)],
        started,
    )
}

fn with_state(mut ro: Rollout, state: &State, extra: RolloutStatus) -> Rollout {
    ro.status = Some(RolloutStatus {
        engine: Some(serde_json::to_value(state).unwrap()),
        ..extra
    });
    ro
}

fn rs(r: &Release, replicas: i32, ready: i32, created: &str) -> Value {
    json!({"metadata": {"name": format!("web-{}", r.version), "creationTimestamp": created,
                        "labels": {"cutover.dev/rollout": "web", "cutover.dev/pod-template-hash": r.version}},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {}}},
           "status": {"replicas": replicas, "readyReplicas": ready}})
}

fn rs_list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "ReplicaSetList", "metadata": {}, "items": items})
}

fn svc(name: &str, hash: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
           "spec": {"selector": {"app": "web", "cutover.dev/rollout": "web",
                                 "cutover.dev/pod-template-hash": hash}}})
}

fn route(stable: i64, canary: i64) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": "web", "resourceVersion": "7"},
           "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [
               {"name": "web-stable", "port": 80, "weight": stable},
               {"name": "web-canary", "port": 80, "weight": canary}]}]}})
}

fn route_patch(stable: i64, canary: i64) -> Value {
    json!({"metadata": {"resourceVersion": "7"}, "spec": {"rules": [{"backendRefs": [
        {"name": "web-stable", "port": 80, "weight": stable},
        {"name": "web-canary", "port": 80, "weight": canary}]}]}})
}

fn ctx(client: Client, leader: Leadership, now: u64) -> Arc<Context> {
    Arc::new(Context::new(
        client,
        leader,
        Arc::new(move || Timestamp::from_millis(now)),
    ))
}

fn leader() -> Leadership {
    Leadership::manual(true).1
}

/// The status a status replace carried.
fn status_of(body: &Value) -> RolloutStatus {
    serde_json::from_value(body["status"].clone()).unwrap()
}

fn engine_of(s: &RolloutStatus) -> State {
    serde_json::from_value(s.engine.clone().unwrap()).unwrap()
}

fn no_analysis() -> Value {
    json!({})
}

/// The API server is scripted. A Rollout with no history: its first release gets a
/// ReplicaSet of `replicas` pods; once they are ready it is stable (no canary phase), the
/// Services select it and the route sends it everything.
#[tokio::test]
async fn first_rollout_creates_the_replicaset_then_routes_to_it() {
    let ro = rollout("web:1", gateway(), no_analysis());
    let v1 = release("web:1");
    let h = v1.version.clone();
    let calls = vec![
        Call::get(RS, rs_list(vec![])),
        Call::new(Method::PUT, format!("{RO}/status"), json!({})).check(|b| {
            assert_eq!(
                b["metadata"]["resourceVersion"], "100",
                "optimistic concurrency"
            );
            let s = status_of(b);
            assert_eq!(s.phase.as_deref(), Some("starting"));
            assert!(
                s.conditions.iter().any(|c| c.type_ == "Deploy"),
                "{:?}",
                s.conditions
            );
        }),
        Call::new(Method::POST, RS, json!({})).check({
            let h = h.clone();
            move |b| {
                assert_eq!(b["metadata"]["name"], format!("web-{h}"));
                assert_eq!(b["spec"]["replicas"], 2);
                assert_eq!(
                    b["spec"]["selector"]["matchLabels"]["cutover.dev/pod-template-hash"],
                    h
                );
                assert_eq!(
                    b["spec"]["template"]["metadata"]["labels"]["cutover.dev/pod-template-hash"],
                    h
                );
                assert_eq!(
                    b["spec"]["template"]["spec"]["containers"][0]["image"],
                    "web:1"
                );
                assert_eq!(b["metadata"]["ownerReferences"][0]["uid"], "uid-web");
            }
        }),
    ];
    scripted(calls, |c| async {
        reconcile(Arc::new(ro.clone()), ctx(c, leader(), T0))
            .await
            .unwrap();
    })
    .await;

    // Ready: stable; the Services select it and the route gives it everything.
    let state = state_after(&ro, vec![deploy(&v1)], T0);
    let ro = with_state(ro, &state, RolloutStatus::default());
    let calls = vec![
        Call::get(RS, rs_list(vec![rs(&v1, 2, 2, "2027-01-15T08:00:00Z")])),
        Call::new(Method::PUT, format!("{RO}/status"), json!({})).check(|b| {
            let s = status_of(b);
            assert_eq!(s.phase.as_deref(), Some("done"));
            assert!(s.stable_rs.is_some());
        }),
        Call::get(SVC_STABLE, svc("web-stable", "old")),
        Call::patch(
            SVC_STABLE,
            json!({"spec": {"selector": {"cutover.dev/pod-template-hash": h, "cutover.dev/rollout": "web"}}}),
        ),
        Call::get(SVC_CANARY, svc("web-canary", &h)),
        Call::get(ROUTE, route(50, 50)),
        Call::patch(ROUTE, route_patch(10_000, 0)),
    ];
    scripted(calls, |c| async {
        reconcile(Arc::new(ro.clone()), ctx(c, leader(), T0 + 5_000))
            .await
            .unwrap();
    })
    .await;
}

/// The API server is scripted; Prometheus is real. At the end of the 5 % step, with the gate
/// clear (`vector(0) > 1` does not fire), the engine advances to 20 %: the status is written
/// first, then the HTTPRoute gets exactly 8000 / 2000.
#[tokio::test]
async fn step_advance_patches_the_httproute_with_the_exact_weights() {
    let prom = prometheus().await;
    let analysis = json!({"prometheus": prom.url(), "interval": "5s",
                          "gates": [{"name": "p99", "query": "vector(0) > 1"}]});
    let ro = rollout("web:2", gateway(), analysis);
    let (v1, v2) = (release("web:1"), release("web:2"));
    let state = progressing(&ro, T0 - 60_000);
    let ro = with_state(ro, &state, RolloutStatus::default());
    let calls = vec![
        Call::get(
            RS,
            rs_list(vec![
                rs(&v1, 2, 2, "2027-01-14T08:00:00Z"),
                rs(&v2, 2, 2, "2027-01-15T07:58:00Z"),
            ]),
        ),
        Call::new(Method::PUT, format!("{RO}/status"), json!({})).check(|b| {
            let s = status_of(b);
            assert_eq!(s.phase.as_deref(), Some("progressing"));
            assert_eq!(s.weight, Some(20.0));
            assert_eq!(s.current_step_index, Some(1));
            assert!(
                s.conditions.iter().any(|c| c.type_ == "Advance"),
                "{:?}",
                s.conditions
            );
            assert_eq!(s.verdicts[0].outcome, "pass", "{:?}", s.verdicts);
        }),
        Call::get(SVC_STABLE, svc("web-stable", &v1.version)),
        Call::get(SVC_CANARY, svc("web-canary", &v2.version)),
        Call::get(ROUTE, route(9_500, 500)),
        Call::patch(ROUTE, route_patch(8_000, 2_000)),
    ];
    scripted(calls, |c| async {
        reconcile(Arc::new(ro.clone()), ctx(c, leader(), T0))
            .await
            .unwrap();
    })
    .await;
    prom.stop().await.unwrap();
}

/// The API server is scripted. The same step with an Istio VirtualService: whole percent.
#[tokio::test]
async fn step_advance_patches_the_virtualservice_weights() {
    let ro = rollout("web:2", istio(), no_analysis());
    let (v1, v2) = (release("web:1"), release("web:2"));
    let state = progressing(&ro, T0 - 60_000);
    let ro = with_state(ro, &state, RolloutStatus::default());
    let vs = |s: i64, c: i64| {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
               "metadata": {"name": "web", "resourceVersion": "9"},
               "spec": {"hosts": ["web"], "http": [{"route": [
                   {"destination": {"host": "web-stable"}, "weight": s},
                   {"destination": {"host": "web-canary.shop.svc.cluster.local"}, "weight": c}]}]}})
    };
    let calls = vec![
        Call::get(
            RS,
            rs_list(vec![
                rs(&v1, 2, 2, "2027-01-14T08:00:00Z"),
                rs(&v2, 2, 2, "2027-01-15T07:58:00Z"),
            ]),
        ),
        Call::new(Method::PUT, format!("{RO}/status"), json!({}))
            .check(|b| assert_eq!(status_of(b).weight, Some(20.0))),
        Call::get(SVC_STABLE, svc("web-stable", &v1.version)),
        Call::get(SVC_CANARY, svc("web-canary", &v2.version)),
        Call::get(VS, vs(95, 5)),
        Call::patch(
            VS,
            json!({"metadata": {"resourceVersion": "9"}, "spec": {"http": [{"route": [
            {"destination": {"host": "web-stable"}, "weight": 80},
            {"destination": {"host": "web-canary.shop.svc.cluster.local"}, "weight": 20}]}]}}),
        ),
    ];
    scripted(calls, |c| async {
        reconcile(Arc::new(ro.clone()), ctx(c, leader(), T0))
            .await
            .unwrap();
    })
    .await;
}

/// The API server is scripted. With `sticky.header`, the step's HTTPRoute patch also puts
/// `sessionPersistence` (type Header, the same header) on the rule that splits, in the same
/// write as the weights; a rule that splits nothing is left as it was.
#[tokio::test]
async fn sticky_header_becomes_the_httproutes_session_persistence() {
    let mut routing = gateway();
    routing["sticky"] = json!({"header": "x-client-id"});
    let ro = rollout("web:2", routing, no_analysis());
    let (v1, v2) = (release("web:1"), release("web:2"));
    let state = progressing(&ro, T0 - 60_000);
    let ro = with_state(ro, &state, RolloutStatus::default());
    let mut current = route(9_500, 500);
    current["spec"]["rules"]
        .as_array_mut()
        .unwrap()
        .insert(0, json!({"backendRefs": [{"name": "admin", "port": 80}]}));
    let calls = vec![
        Call::get(
            RS,
            rs_list(vec![
                rs(&v1, 2, 2, "2027-01-14T08:00:00Z"),
                rs(&v2, 2, 2, "2027-01-15T07:58:00Z"),
            ]),
        ),
        Call::new(Method::PUT, format!("{RO}/status"), json!({}))
            .check(|b| assert_eq!(status_of(b).weight, Some(20.0))),
        Call::get(SVC_STABLE, svc("web-stable", &v1.version)),
        Call::get(SVC_CANARY, svc("web-canary", &v2.version)),
        Call::get(ROUTE, current),
        Call::patch(
            ROUTE,
            json!({"metadata": {"resourceVersion": "7"}, "spec": {"rules": [
                {"backendRefs": [{"name": "admin", "port": 80}]},
                {"backendRefs": [
                    {"name": "web-stable", "port": 80, "weight": 8_000},
                    {"name": "web-canary", "port": 80, "weight": 2_000}],
                 "sessionPersistence": {"sessionName": "x-client-id", "type": "Header"}}]}}),
        ),
    ];
    scripted(calls, |c| async {
        reconcile(Arc::new(ro.clone()), ctx(c, leader(), T0))
            .await
            .unwrap();
    })
    .await;
}

/// The API server is scripted. With `sticky.cookie` on Istio, each named DestinationRule is
/// read and patched to hash on the cookie (its `simple` balancer removed, its other
/// settings kept) before the VirtualService's weights move; a DestinationRule that already
/// hashes on it is not written.
#[tokio::test]
async fn sticky_cookie_becomes_the_destinationrules_consistent_hash_before_the_weights() {
    let mut routing = istio();
    routing["sticky"] = json!({"cookie": "sid"});
    routing["istio"]["destinationRules"] = json!(["web-stable", "web-canary"]);
    let ro = rollout("web:2", routing, no_analysis());
    let (v1, v2) = (release("web:1"), release("web:2"));
    let state = progressing(&ro, T0 - 60_000);
    let ro = with_state(ro, &state, RolloutStatus::default());
    let dr = |name: &str, lb: Value| {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
               "metadata": {"name": name, "resourceVersion": "3"},
               "spec": {"host": format!("{name}.shop.svc.cluster.local"),
                        "trafficPolicy": {"loadBalancer": lb}}})
    };
    let vs = |s: i64, c: i64| {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
               "metadata": {"name": "web", "resourceVersion": "9"},
               "spec": {"hosts": ["web"], "http": [{"route": [
                   {"destination": {"host": "web-stable"}, "weight": s},
                   {"destination": {"host": "web-canary"}, "weight": c}]}]}})
    };
    let calls = vec![
        Call::get(
            RS,
            rs_list(vec![
                rs(&v1, 2, 2, "2027-01-14T08:00:00Z"),
                rs(&v2, 2, 2, "2027-01-15T07:58:00Z"),
            ]),
        ),
        Call::new(Method::PUT, format!("{RO}/status"), json!({}))
            .check(|b| assert_eq!(status_of(b).weight, Some(20.0))),
        Call::get(SVC_STABLE, svc("web-stable", &v1.version)),
        Call::get(SVC_CANARY, svc("web-canary", &v2.version)),
        Call::get(
            format!("{DR}/web-stable"),
            dr(
                "web-stable",
                json!({"simple": "ROUND_ROBIN", "warmupDurationSecs": "30s"}),
            ),
        ),
        Call::patch(
            format!("{DR}/web-stable"),
            json!({"metadata": {"resourceVersion": "3"}, "spec": {"trafficPolicy": {"loadBalancer": {
                "simple": null,
                "consistentHash": {"httpHeaderName": null, "httpCookie": {"name": "sid", "ttl": "0s"},
                                   "httpQueryParameterName": null, "useSourceIp": null}}}}}),
        ),
        Call::get(
            format!("{DR}/web-canary"),
            dr(
                "web-canary",
                json!({"consistentHash": {"httpCookie": {"name": "sid", "ttl": "0s"}}}),
            ),
        ),
        Call::get(VS, vs(95, 5)),
        Call::patch(
            VS,
            json!({"metadata": {"resourceVersion": "9"}, "spec": {"http": [{"route": [
            {"destination": {"host": "web-stable"}, "weight": 80},
            {"destination": {"host": "web-canary"}, "weight": 20}]}]}}),
        ),
    ];
    scripted(calls, |c| async {
        reconcile(Arc::new(ro.clone()), ctx(c, leader(), T0))
            .await
            .unwrap();
    })
    .await;
}

/// The API server is scripted; Prometheus is real. An abort rule fires (`vector(1) > 0`,
/// `for: 0s`): traffic goes back to stable in the same pass (the canary Service selects
/// stable, the route 10000 / 0), the digest is recorded as failed (Rollout annotation,
/// ReplicaSet label); the canary keeps its pods for `abortScaleDownDelaySeconds`, then is
/// scaled to 0; the same template is refused until `cutover k8s retry`, which starts it again.
#[tokio::test]
async fn abort_moves_traffic_back_records_the_digest_and_refuses_it_until_retry() {
    let prom = prometheus().await;
    let analysis = json!({"prometheus": prom.url(), "interval": "5s",
                          "aborts": [{"name": "errors", "query": "vector(1) > 0", "for": "0s"}]});
    let ro = rollout("web:2", gateway(), analysis);
    let (v1, v2) = (release("web:1"), release("web:2"));
    let state = progressing(&ro, T0 - 10_000);
    let mut ro = with_state(ro, &state, RolloutStatus::default());
    ro.metadata.annotations = Some(BTreeMap::new());
    let ro_json = serde_json::to_value(&ro).unwrap();
    let list = rs_list(vec![
        rs(&v1, 2, 2, "2027-01-14T08:00:00Z"),
        rs(&v2, 2, 2, "2027-01-15T07:58:00Z"),
    ]);
    let aborted = Arc::new(std::sync::Mutex::new(None::<RolloutStatus>));
    let keep = aborted.clone();
    let digest = v2.digest.clone();
    let calls = vec![
        Call::get(RS, list.clone()),
        Call::new(Method::PUT, format!("{RO}/status"), json!({})).check(move |b| {
            let s = status_of(b);
            assert_eq!(s.phase.as_deref(), Some("aborted"));
            assert_eq!(s.weight, Some(0.0));
            assert!(
                s.conditions.iter().any(|c| c.type_ == "Aborted"),
                "{:?}",
                s.conditions
            );
            assert!(
                s.conditions.iter().any(|c| c.type_ == "Refused"),
                "{:?}",
                s.conditions
            );
            *keep.lock().unwrap() = Some(s);
        }),
        Call::new(Method::PATCH, RO, ro_json).check(move |b| {
            let text = b["metadata"]["annotations"]["cutover.dev/failed-releases"]
                .as_str()
                .unwrap();
            let failed: BTreeMap<String, String> = serde_json::from_str(text).unwrap();
            assert!(failed.contains_key(&digest), "{failed:?}");
        }),
        Call::patch(
            format!("{RS}/web-{}", v2.version),
            json!({"spec": {"replicas": 2}, "metadata": {"labels": {"cutover.dev/failed": "true"}}}),
        ),
        Call::get(SVC_STABLE, svc("web-stable", &v1.version)),
        Call::get(SVC_CANARY, svc("web-canary", &v2.version)),
        Call::patch(
            SVC_CANARY,
            json!({"spec": {"selector": {"cutover.dev/pod-template-hash": v1.version, "cutover.dev/rollout": "web"}}}),
        ),
        Call::get(ROUTE, route(9_500, 500)),
        Call::patch(ROUTE, route_patch(10_000, 0)),
    ];
    scripted(calls, |c| async {
        reconcile(Arc::new(ro.clone()), ctx(c, leader(), T0))
            .await
            .unwrap();
    })
    .await;

    // 31 s later: the canary's pods go; nothing else is written, the template is not rolled out.
    let status = aborted.lock().unwrap().clone().unwrap();
    let mut ro2 = ro.clone();
    ro2.status = Some(status.clone());
    let text = {
        let st = engine_of(&status);
        let m: BTreeMap<&String, &String> = st.failed.iter().map(|(d, f)| (d, &f.reason)).collect();
        serde_json::to_string(&m).unwrap()
    };
    ro2.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert("cutover.dev/failed-releases".into(), text);
    let mut v2rs = rs(&v2, 2, 2, "2027-01-15T07:58:00Z");
    v2rs["metadata"]["labels"]["cutover.dev/failed"] = "true".into();
    let calls = vec![
        Call::get(
            RS,
            rs_list(vec![rs(&v1, 2, 2, "2027-01-14T08:00:00Z"), v2rs]),
        ),
        Call::patch(
            format!("{RS}/web-{}", v2.version),
            json!({"spec": {"replicas": 0}}),
        ),
        Call::get(SVC_STABLE, svc("web-stable", &v1.version)),
        Call::get(SVC_CANARY, svc("web-canary", &v1.version)),
        Call::get(ROUTE, route(10_000, 0)),
    ];
    scripted(calls, |c| async {
        reconcile(Arc::new(ro2.clone()), ctx(c, leader(), T0 + 31_000))
            .await
            .unwrap();
    })
    .await;

    // `cutover k8s retry web`: the failed digest is deployed again, forced.
    let mut ro3 = ro2.clone();
    ro3.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert("cutover.dev/command".into(), "retry/2".into());
    let calls = vec![
        Call::get(
            RS,
            rs_list(vec![rs(&v1, 2, 2, "2027-01-14T08:00:00Z"), {
                // Still labelled: the failure is cleared only by a promotion.
                let mut r = rs(&v2, 0, 0, "2027-01-15T07:58:00Z");
                r["metadata"]["labels"]["cutover.dev/failed"] = "true".into();
                r
            }]),
        ),
        Call::new(Method::PUT, format!("{RO}/status"), json!({})).check(|b| {
            let s = status_of(b);
            assert_eq!(s.phase.as_deref(), Some("starting"), "{s:?}");
            assert_eq!(s.handled_command.as_deref(), Some("retry/2"));
        }),
        Call::patch(
            format!("{RS}/web-{}", v2.version),
            json!({"spec": {"replicas": 2}}),
        ),
        Call::get(SVC_STABLE, svc("web-stable", &v1.version)),
        Call::get(SVC_CANARY, svc("web-canary", &v1.version)),
        Call::get(ROUTE, route(10_000, 0)),
    ];
    scripted(calls, |c| async {
        reconcile(Arc::new(ro3.clone()), ctx(c, leader(), T0 + 40_000))
            .await
            .unwrap();
    })
    .await;
    prom.stop().await.unwrap();
}

/// The API server is scripted. `cutover k8s promote`: the canary takes 100 % and becomes
/// stable; the previous ReplicaSet keeps its pods without traffic for
/// `scaleDownDelaySeconds`; after it, it is scaled to 0, and a ReplicaSet beyond
/// `revisionHistoryLimit` and older than 72 h is deleted (one younger than 72 h is kept).
#[tokio::test]
async fn promotion_holds_the_previous_release_then_scales_it_down_and_prunes() {
    let mut ro = rollout("web:2", gateway(), no_analysis());
    ro.spec.revision_history_limit = 0;
    let (v0, v1, v2) = (release("web:0"), release("web:1"), release("web:2"));
    let v9 = release("web:9");
    let state = progressing(&ro, T0 - 10_000);
    let mut ro = with_state(ro, &state, RolloutStatus::default());
    ro.metadata.annotations = Some(BTreeMap::from([(
        "cutover.dev/command".into(),
        "promote/1".into(),
    )]));
    let old = rs(&v0, 0, 0, "2027-01-10T08:00:00Z");
    let young = rs(&v9, 0, 0, "2027-01-15T06:00:00Z");
    let list = rs_list(vec![
        old.clone(),
        young.clone(),
        rs(&v1, 2, 2, "2027-01-14T08:00:00Z"),
        rs(&v2, 2, 2, "2027-01-15T07:58:00Z"),
    ]);
    let promoted = Arc::new(std::sync::Mutex::new(None::<RolloutStatus>));
    let keep = promoted.clone();
    let calls = vec![
        Call::get(RS, list),
        Call::new(Method::PUT, format!("{RO}/status"), json!({})).check(move |b| {
            let s = status_of(b);
            assert_eq!(s.phase.as_deref(), Some("promoted"));
            assert_eq!(s.weight, Some(100.0));
            *keep.lock().unwrap() = Some(s);
        }),
        Call::new(
            Method::DELETE,
            format!("{RS}/web-{}", v0.version),
            json!({}),
        ),
        Call::get(SVC_STABLE, svc("web-stable", &v1.version)),
        Call::patch(
            SVC_STABLE,
            json!({"spec": {"selector": {"cutover.dev/pod-template-hash": v2.version, "cutover.dev/rollout": "web"}}}),
        ),
        Call::get(SVC_CANARY, svc("web-canary", &v2.version)),
        Call::get(ROUTE, route(9_500, 500)),
        Call::patch(ROUTE, route_patch(10_000, 0)),
    ];
    scripted(calls, |c| async {
        reconcile(Arc::new(ro.clone()), ctx(c, leader(), T0))
            .await
            .unwrap();
    })
    .await;

    // An hour later the hold ends: the previous release is scaled to 0.
    let status = promoted.lock().unwrap().clone().unwrap();
    let mut ro2 = ro.clone();
    ro2.status = Some(status);
    let calls = vec![
        Call::get(
            RS,
            rs_list(vec![
                young,
                rs(&v1, 2, 2, "2027-01-14T08:00:00Z"),
                rs(&v2, 2, 2, "2027-01-15T07:58:00Z"),
            ]),
        ),
        Call::new(Method::PUT, format!("{RO}/status"), json!({})).check(|b| {
            let s = status_of(b);
            assert_eq!(s.phase.as_deref(), Some("done"));
            assert!(engine_of(&s).previous.is_none());
        }),
        Call::patch(
            format!("{RS}/web-{}", v1.version),
            json!({"spec": {"replicas": 0}}),
        ),
        Call::get(SVC_STABLE, svc("web-stable", &v2.version)),
        Call::get(SVC_CANARY, svc("web-canary", &v2.version)),
        Call::get(ROUTE, route(10_000, 0)),
    ];
    scripted(calls, |c| async {
        reconcile(Arc::new(ro2.clone()), ctx(c, leader(), T0 + 3_600_000))
            .await
            .unwrap();
    })
    .await;
}

/// The API server is scripted. A controller that restarted (no engine in memory) resumes
/// the rollout from `status`: no deploy, no ReplicaSet created, the weights left as they are
/// mid-step; only the measurement time is recorded.
#[tokio::test]
async fn a_restarted_controller_resumes_from_status() {
    let ro = rollout("web:2", gateway(), no_analysis());
    let (v1, v2) = (release("web:1"), release("web:2"));
    let state = progressing(&ro, T0 - 20_000);
    let ro = with_state(ro, &state, RolloutStatus::default());
    let calls = vec![
        Call::get(
            RS,
            rs_list(vec![
                rs(&v1, 2, 2, "2027-01-14T08:00:00Z"),
                rs(&v2, 2, 2, "2027-01-15T07:58:00Z"),
            ]),
        ),
        Call::new(Method::PUT, format!("{RO}/status"), json!({})).check(move |b| {
            let s = status_of(b);
            assert_eq!(s.phase.as_deref(), Some("progressing"));
            assert_eq!(s.weight, Some(5.0));
            assert_eq!(s.last_measured_ms, Some(T0));
            assert_eq!(
                engine_of(&s).rollout.unwrap().id,
                state.rollout.as_ref().unwrap().id
            );
        }),
        Call::get(SVC_STABLE, svc("web-stable", &v1.version)),
        Call::get(SVC_CANARY, svc("web-canary", &v2.version)),
        Call::get(ROUTE, route(9_500, 500)),
    ];
    let action = scripted(calls, |c| async {
        reconcile(Arc::new(ro.clone()), ctx(c, leader(), T0))
            .await
            .unwrap()
    })
    .await;
    // Requeued for the next measurement (5 s), before the step ends (40 s).
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(5))
    );
}

/// The API server is scripted. The status write meets a 409 (the Rollout changed since it
/// was read): the Rollout is read again and the pass redone on the fresh object.
#[tokio::test]
async fn a_409_on_the_status_write_is_read_again_and_retried() {
    let ro = rollout("web:1", gateway(), no_analysis());
    let mut fresh = ro.clone();
    fresh.metadata.resource_version = Some("101".into());
    let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                          "message": "the object has been modified", "reason": "Conflict", "code": 409});
    let calls = vec![
        Call::get(RS, rs_list(vec![])),
        Call::new(Method::PUT, format!("{RO}/status"), json!({}))
            .check(|b| assert_eq!(b["metadata"]["resourceVersion"], "100"))
            .status(409, conflict),
        Call::get(RO, serde_json::to_value(&fresh).unwrap()),
        Call::get(RS, rs_list(vec![])),
        Call::new(Method::PUT, format!("{RO}/status"), json!({}))
            .check(|b| assert_eq!(b["metadata"]["resourceVersion"], "101")),
        Call::new(Method::POST, RS, json!({})),
    ];
    scripted(calls, |c| async {
        reconcile(Arc::new(ro.clone()), ctx(c, leader(), T0))
            .await
            .unwrap();
    })
    .await;
}

/// The API server is scripted; Prometheus is real and has no such series. At the step's end
/// the gate is inconclusive: the weight holds (no route write), a `Hold` condition says why,
/// and the rollout is not aborted.
#[tokio::test]
async fn an_empty_prometheus_result_holds_and_never_aborts() {
    let prom = prometheus().await;
    let analysis = json!({"prometheus": prom.url(), "interval": "5s",
                          "gates": [{"name": "p99", "query": "cutover_no_such_series > 0.8"}],
                          "aborts": [{"name": "errors", "query": "cutover_no_such_errors > 0.1", "for": "0s"}]});
    let ro = rollout("web:2", gateway(), analysis);
    let (v1, v2) = (release("web:1"), release("web:2"));
    let state = progressing(&ro, T0 - 60_000);
    let ro = with_state(ro, &state, RolloutStatus::default());
    let calls = vec![
        Call::get(
            RS,
            rs_list(vec![
                rs(&v1, 2, 2, "2027-01-14T08:00:00Z"),
                rs(&v2, 2, 2, "2027-01-15T07:58:00Z"),
            ]),
        ),
        Call::new(Method::PUT, format!("{RO}/status"), json!({})).check(|b| {
            let s = status_of(b);
            assert_eq!(s.phase.as_deref(), Some("progressing"), "{:?}", s.message);
            assert_eq!(s.weight, Some(5.0));
            let hold = s
                .conditions
                .iter()
                .find(|c| c.type_ == "Hold")
                .expect("a Hold condition");
            assert!(
                hold.message.contains("no data for cutover_no_such_series"),
                "{}",
                hold.message
            );
            assert!(
                s.verdicts.iter().all(|v| v.outcome == "inconclusive"),
                "{:?}",
                s.verdicts
            );
        }),
        Call::get(SVC_STABLE, svc("web-stable", &v1.version)),
        Call::get(SVC_CANARY, svc("web-canary", &v2.version)),
        Call::get(ROUTE, route(9_500, 500)),
    ];
    scripted(calls, |c| async {
        reconcile(Arc::new(ro.clone()), ctx(c, leader(), T0))
            .await
            .unwrap();
    })
    .await;
    prom.stop().await.unwrap();
}

/// The API server is scripted. The lease is lost while a pass is under way (after the
/// ReplicaSets were listed): no write follows, not even the status. A replica without the
/// lease makes no call at all.
#[tokio::test]
async fn a_lost_lease_stops_every_write() {
    let ro = rollout("web:2", gateway(), no_analysis());
    let state = progressing(&ro, T0 - 60_000);
    let ro = with_state(ro, &state, RolloutStatus::default());
    let (tx, leadership) = Leadership::manual(true);
    let tx: Arc<watch::Sender<bool>> = Arc::new(tx);
    let lose = tx.clone();
    let calls = vec![Call::get(RS, rs_list(vec![])).on_call(move || {
        lose.send(false).unwrap();
    })];
    let l = leadership.clone();
    let r = scripted(calls, |c| async {
        reconcile(Arc::new(ro.clone()), ctx(c, l, T0)).await
    })
    .await;
    assert!(matches!(r, Err(Error::NotLeader)), "{r:?}");

    let r = scripted(vec![], |c| async {
        reconcile(Arc::new(ro.clone()), ctx(c, leadership, T0)).await
    })
    .await;
    assert!(matches!(r, Err(Error::NotLeader)), "{r:?}");
}

/// The API server is scripted. A verb the engine refuses (`resume` while not paused) is a
/// `ResumeRefused` condition with the engine's reason, carried out once, and changes
/// nothing else.
#[tokio::test]
async fn a_refused_verb_is_a_condition_and_changes_nothing_else() {
    let ro = rollout("web:2", gateway(), no_analysis());
    let (v1, v2) = (release("web:1"), release("web:2"));
    let state = progressing(&ro, T0 - 10_000);
    let mut ro = with_state(
        ro,
        &state,
        RolloutStatus {
            last_measured_ms: Some(T0 - 1_000),
            ..Default::default()
        },
    );
    ro.metadata.annotations = Some(BTreeMap::from([(
        "cutover.dev/command".into(),
        "resume/5".into(),
    )]));
    let before = state.clone();
    let calls = vec![
        Call::get(
            RS,
            rs_list(vec![
                rs(&v1, 2, 2, "2027-01-14T08:00:00Z"),
                rs(&v2, 2, 2, "2027-01-15T07:58:00Z"),
            ]),
        ),
        Call::new(Method::PUT, format!("{RO}/status"), json!({})).check(move |b| {
            let s = status_of(b);
            let c = s
                .conditions
                .iter()
                .find(|c| c.type_ == "ResumeRefused")
                .expect("ResumeRefused");
            assert!(c.message.contains("not paused"), "{}", c.message);
            assert_eq!(engine_of(&s), before);
        }),
        Call::get(SVC_STABLE, svc("web-stable", &v1.version)),
        Call::get(SVC_CANARY, svc("web-canary", &v2.version)),
        Call::get(ROUTE, route(9_500, 500)),
    ];
    scripted(calls, |c| async {
        reconcile(Arc::new(ro.clone()), ctx(c, leader(), T0))
            .await
            .unwrap();
    })
    .await;
}

async fn prometheus() -> cutover_prometheus::harness::PrometheusServer {
    cutover_prometheus::harness::PrometheusServer::start(Default::default())
        .await
        .expect("Debian's prometheus (apt-get install prometheus)")
}

/// The API server is scripted. With events on (as `cutover controller` runs), each decision
/// is also an Event on the Rollout, published after the cluster was changed (an Event must
/// not delay traffic moving back), and a refusal is a Warning.
#[tokio::test]
async fn decisions_are_published_as_events_after_the_writes() {
    let mut ro = rollout("web:1", gateway(), no_analysis());
    ro.metadata.annotations = Some(BTreeMap::from([(
        "cutover.dev/command".into(),
        "pause/1".into(),
    )]));
    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";
    let calls = vec![
        Call::get(RS, rs_list(vec![])),
        Call::new(Method::PUT, format!("{RO}/status"), json!({})),
        Call::new(Method::POST, RS, json!({})),
        Call::new(Method::POST, EVENTS, json!({})).check(|b| {
            assert_eq!(b["reason"], "Deploy", "{b}");
            assert_eq!(b["type"], "Normal");
            assert_eq!(b["regarding"]["kind"], "Rollout");
            assert_eq!(b["regarding"]["name"], "web");
            assert_eq!(b["reportingController"], "cutover-controller");
            assert!(b["note"].as_str().unwrap().contains("first release"), "{b}");
        }),
        Call::new(Method::POST, EVENTS, json!({})).check(|b| {
            assert_eq!(b["reason"], "PauseRefused", "{b}");
            assert_eq!(b["type"], "Warning");
        }),
    ];
    scripted(calls, |c| async {
        let reporter = kube::runtime::events::Reporter {
            controller: "cutover-controller".into(),
            instance: Some("cutover-controller-0".into()),
        };
        let ctx = Context::new(c, leader(), Arc::new(|| Timestamp::from_millis(T0)))
            .with_events(reporter);
        reconcile(Arc::new(ro.clone()), Arc::new(ctx))
            .await
            .unwrap();
    })
    .await;
}

/// The single-host status document (`/v1/status`, `cutover status --json`) of the same
/// engine state.
fn host_view(
    state: &State,
    core: &cutover_core::spec::RolloutSpec,
    now: u64,
) -> cutover_host::status::StatusView {
    use cutover_core::Dur;
    cutover_host::status::StatusView {
        service: "web".into(),
        now: Timestamp::from_millis(now),
        proxy: "127.0.0.1:8080".into(),
        stable: state.stable.clone(),
        previous: state.previous.clone(),
        rollout: state.rollout.clone(),
        eta: Engine::restore(core.clone(), state.clone()).eta(Timestamp::from_millis(now)),
        instances: Vec::new(),
        failed: state.failed.clone(),
        strategy: Default::default(),
        fencing: None,
        persist_failure: None,
        config: None,
        settings: cutover_host::status::Settings {
            interval: core.interval,
            window: core.window,
            step_interval: core.step_interval,
            min_samples: core.min_samples,
            max_hold: core.max_hold,
            hold_previous: core.hold_previous,
            drain_timeout: Dur::from_secs(30),
            quiet_period: Dur::from_secs(5),
            grace: Dur::from_secs(10),
            readiness_thresholds: (1, 3),
            liveness_failure_threshold: 3,
            max_lookback: core.max_lookback,
            max_inconclusive: core.max_inconclusive,
            traffic_need: String::new(),
            handoff: None,
        },
    }
}

/// What the single-host `cutover status` prints for the same engine state.
fn host_status(state: &State, core: &cutover_core::spec::RolloutSpec, now: u64) -> String {
    cutover_host::render::status(&host_view(state, core, now))
}

/// The lines from `rollout N: …` up to the next blank line that starts another part.
fn rollout_part(text: &str) -> String {
    let start = text.find("\nrollout ").expect("a rollout section");
    let rest = &text[start + 1..];
    let end = [
        "\ninstances",
        "\nevaluation every",
        "\nreplicasets",
        "\ndecisions",
    ]
    .iter()
    .filter_map(|m| rest.find(m))
    .min()
    .unwrap_or(rest.len());
    rest[..end].to_string()
}

async fn k8s_status(ro: &Rollout, json_out: bool, now: u64) -> String {
    let reply = serde_json::to_value(ro).unwrap();
    scripted(vec![Call::get(RO, reply)], |c| async move {
        cutover_kube::cli::status_with(c, NS, "web", json_out, Timestamp::from_millis(now))
            .await
            .unwrap()
    })
    .await
}

/// The API server is scripted. `cutover k8s status` reads the Rollout (one GET, nothing
/// else) and prints the single-host `cutover status` format: the rollout part is, line for
/// line, what `cutover status` prints for the same engine state; then the Rollout's own
/// ReplicaSets, conditions and settings.
#[tokio::test]
async fn k8s_status_prints_the_single_host_format_from_the_rollouts_status() {
    let ro = rollout("web:2", gateway(), no_analysis());
    let core = ro.spec.to_core().unwrap();
    let (v1, v2) = (release("web:1"), release("web:2"));
    let state = progressing(&ro, T0 - 20_000);
    let status = RolloutStatus {
        phase: Some("progressing".into()),
        weight: Some(5.0),
        current_step_index: Some(0),
        stable_rs: Some(v1.version.clone()),
        canary_rs: Some(v2.version.clone()),
        conditions: vec![cutover_kube::crd::Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Ready".into(),
            message: "canary ready: 5% to it".into(),
            last_transition_time: "2027-01-15T07:59:40.000Z".into(),
        }],
        ..Default::default()
    };
    let ro = with_state(ro, &state, status);
    let text = k8s_status(&ro, false, T0).await;
    let host = host_status(&state, &core, T0);
    assert_eq!(
        rollout_part(&text),
        rollout_part(&host),
        "{text}\n---\n{host}"
    );
    let (h1, h2) = (&v1.version, &v2.version);
    let d2: String = v2.digest.chars().take(12).collect();
    let d1: String = v1.digest.chars().take(12).collect();
    let expected = format!(
        "service web  (namespace shop, HTTPRoute web)\n\
         stable  {h1} ({d1})\n\
         \n\
         rollout 2: {h1} → {h2} ({d2})  (started 21.0s ago)\n  \
           progressing: step 1/2, next check in 40.0s\n  \
           canary [##......................................]     5%\n  \
           steps  [5%] → 20% → 100%\n  \
           eta    100% in 1m 40s if every gate passes\n\
         \n\
         replicasets  stable web-{h1}  canary web-{h2}\n\
         \n\
         decisions (the latest of each kind)\n  \
           2027-01-15T07:59:40.000Z Ready        canary ready: 5% to it\n\
         \n\
         evaluation every 5s (no rules); steps 1m 30s; max_hold 10m; hold_previous 1h; max_inconclusive 10m; canary kept 30s after an abort\n"
    );
    assert_eq!(text, expected, "\n{text}");
}

/// The API server is scripted. A paused rollout with a verdict: the verb hints are the
/// `cutover k8s` ones, the rules' verdicts are printed as on one host (no request table:
/// no proxy of cutover's measures on Kubernetes); `--json` has the single-host document's
/// names and shapes for the same data, and never the engine's internal state.
#[tokio::test]
async fn k8s_status_paused_with_verdicts_and_as_json() {
    use cutover_core::engine::Verb;
    use cutover_core::judge::External;
    let analysis = json!({"prometheus": "http://prom:9090", "interval": "5s",
                          "aborts": [{"name": "p99", "query": "x > 0.8", "for": "45s"}]});
    let ro = rollout("web:2", gateway(), analysis);
    let core = ro.spec.to_core().unwrap();
    let (v1, v2) = (release("web:1"), release("web:2"));
    let external = BTreeMap::from([(
        "p99".to_string(),
        External::Clear {
            value: Some(0.2),
            detail: "x > 0.8 does not fire (value 0.200000)".into(),
        },
    )]);
    let state = state_after(
        &ro,
        vec![
            deploy(&v1),
            ready(&v1),
            deploy(&v2),
            ready(&v2),
            Event::Measured {
                stats: Default::default(),
                wider: Vec::new(),
                external,
            },
            Event::Command(Verb::Pause),
        ],
        T0 - 10_000,
    );
    let ro = with_state(
        ro,
        &state,
        RolloutStatus {
            phase: Some("paused".into()),
            ..Default::default()
        },
    );
    let text = k8s_status(&ro, false, T0).await;
    assert!(
        text.contains(
            "  paused by the operator 10.0s ago (resume with `cutover k8s resume web -n shop`)\n"
        ),
        "{text}"
    );
    assert!(text.contains("\n  rules evaluated 11.0s ago\n  abort rules (every 5s)\n    ok   p99                      x > 0.8 does not fire (value 0.200000)\n"), "{text}");
    assert!(!text.contains("requests"), "no request table: {text}");
    assert!(text.contains("(PromQL against http://prom:9090)"), "{text}");

    let doc: Value = serde_json::from_str(&k8s_status(&ro, true, T0).await).unwrap();
    let host = serde_json::to_value(host_view(&state, &core, T0)).unwrap();
    for key in [
        "service", "now", "stable", "previous", "rollout", "eta", "failed",
    ] {
        assert_eq!(
            doc[key], host[key],
            "{key}: the single-host document's name and shape"
        );
    }
    assert_eq!(doc["namespace"], "shop");
    assert_eq!(doc["now"], T0);
    assert_eq!(doc["phase"], "paused");
    assert_eq!(doc["rollout"]["to"]["version"], v2.version.as_str());
    assert!(doc.get("engine").is_none(), "{doc}");
}

/// The API server is scripted: a 404 is "no Rollout …" naming the namespace and how to list them.
#[tokio::test]
async fn k8s_status_of_a_missing_rollout_says_so() {
    let not_found = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": "rollouts.cutover.dev \"web\" not found", "reason": "NotFound", "code": 404});
    let e = scripted(
        vec![Call::get(RO, Value::Null).status(404, not_found)],
        |c| async move {
            cutover_kube::cli::status_with(c, NS, "web", false, Timestamp::from_millis(T0))
                .await
                .unwrap_err()
        },
    )
    .await;
    assert_eq!(
        e.to_string(),
        "no Rollout web in namespace shop; `kubectl get rollouts.cutover.dev -A` lists them"
    );
}

/// The API server is scripted. A failure mark older than 72 h (v2, rolled back) expires, as
/// after `[state] retention` on one host: the status no longer holds it and the Rollout's
/// failed-releases annotation is removed (the last mark gone); the last rollout's release (v3)
/// would keep its mark. Nothing else is written: the ReplicaSets and the route are settled.
#[tokio::test]
async fn a_failure_mark_older_than_72_hours_expires_and_leaves_the_annotation() {
    use cutover_core::engine::Verb;
    let ro = rollout("web:3", gateway(), no_analysis());
    let (v1, v2, v3) = (release("web:1"), release("web:2"), release("web:3"));
    let mut e = Engine::new("web", ro.spec.to_core().unwrap());
    let a = T0 - 80 * 3_600_000;
    let at = |s: u64| Timestamp::from_millis(a + s * 1000);
    for (s, ev) in [
        (0, deploy(&v1)),
        (1, ready(&v1)),
        (2, deploy(&v2)),
        (3, ready(&v2)),
        (4, Event::Command(Verb::Promote)),
        (5, Event::Command(Verb::Rollback)),
        (10, deploy(&v3)),
        (11, ready(&v3)),
        (12, Event::Command(Verb::Promote)),
        // The hold of v1 (scaleDownDelaySeconds 3600) ends.
        (12 + 3601, Event::Timeout { facts: Vec::new() }),
    ] {
        e.handle(at(s), ev).unwrap();
    }
    let state = e.state().clone();
    assert!(state.failed.contains_key(&v2.digest), "{:?}", state.failed);
    assert!(state.previous.is_none(), "{:?}", state.previous);
    let mut ro = with_state(ro, &state, RolloutStatus::default());
    let text = serde_json::to_string(&BTreeMap::from([(
        v2.digest.clone(),
        state.failed[&v2.digest].reason.clone(),
    )]))
    .unwrap();
    ro.metadata.annotations = Some(BTreeMap::from([(
        "cutover.dev/failed-releases".into(),
        text,
    )]));
    let ro_json = serde_json::to_value(&ro).unwrap();
    let calls = vec![
        Call::get(RS, rs_list(vec![rs(&v3, 2, 2, "2027-01-12T00:00:00Z")])),
        Call::new(Method::PUT, format!("{RO}/status"), json!({})).check(|b| {
            let s = status_of(b);
            assert!(engine_of(&s).failed.is_empty(), "{s:?}");
        }),
        Call::new(Method::PATCH, RO, ro_json).check(|b| {
            assert_eq!(
                b,
                &json!({"metadata": {"annotations": {"cutover.dev/failed-releases": null}}})
            );
        }),
        Call::get(SVC_STABLE, svc("web-stable", &v3.version)),
        Call::get(SVC_CANARY, svc("web-canary", &v3.version)),
        Call::get(ROUTE, route(10_000, 0)),
    ];
    scripted(calls, |c| async {
        reconcile(Arc::new(ro.clone()), ctx(c, leader(), T0))
            .await
            .unwrap();
    })
    .await;
}
