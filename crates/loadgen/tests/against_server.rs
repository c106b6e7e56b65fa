//! Runs the load generator against tiny in-test hyper servers on 127.0.0.1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cutover_loadgen::{FailureKind, Load, LoadConfig, LoadReport};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Clone, Copy)]
enum Behaviour {
    /// Even client ids get "v1", odd ones "v2".
    ByClient,
    /// Every third request gets 500 (version "v1").
    EveryThirdFails,
    /// Answers after the delay.
    Slow(Duration),
}

async fn serve(behaviour: Behaviour) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let counter = Arc::clone(&counter);
                    async move { Ok::<_, Infallible>(answer(behaviour, &req, &counter).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn answer(
    behaviour: Behaviour,
    req: &Request<Incoming>,
    counter: &AtomicU64,
) -> Response<Full<Bytes>> {
    let n = counter.fetch_add(1, Ordering::SeqCst);
    let (version, status) = match behaviour {
        Behaviour::ByClient => {
            let id: u32 = req
                .headers()
                .get("x-client-id")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("client-"))
                .and_then(|v| v.parse().ok())
                .expect("client id header");
            (if id % 2 == 1 { "v2" } else { "v1" }, StatusCode::OK)
        }
        Behaviour::EveryThirdFails => (
            "v1",
            if n % 3 == 2 {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            },
        ),
        Behaviour::Slow(d) => {
            tokio::time::sleep(d).await;
            ("slow", StatusCode::OK)
        }
    };
    Response::builder()
        .status(status)
        .header("x-app-version", version)
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}

fn cfg(addr: SocketAddr, rate: u32) -> LoadConfig {
    LoadConfig {
        rate_per_sec: rate,
        max_in_flight: 64,
        timeout: Duration::from_secs(5),
        clients: 10,
        ..LoadConfig::new(addr)
    }
}

/// Runs until `cond` holds on a snapshot (or panics after a deadline), then stops.
async fn run_until(load: Load, cond: impl Fn(&LoadReport) -> bool) -> LoadReport {
    cutover_testkit::eventually(Duration::from_secs(20), "the condition", || {
        let s = load.snapshot();
        std::future::ready(if cond(&s) {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        })
    })
    .await;
    load.stop().await
}

fn assert_consistent(r: &LoadReport) {
    assert_eq!(r.sent, r.ok + r.failed, "{r:?}");
    assert_eq!(r.in_flight, 0);
    let attributed: u64 = r.by_version.values().map(|v| v.ok + v.failed).sum();
    assert_eq!(r.sent, attributed + r.unattributed_failed, "{r:?}");
    assert_eq!(r.ok, r.by_version.values().map(|v| v.ok).sum::<u64>());
    if !r.per_client.is_empty() {
        let per_client: u64 = r.per_client.values().flatten().map(|(_, n)| n).sum();
        assert_eq!(per_client, attributed);
    }
    assert_eq!(r.failures.len() as u64, r.failed.min(10_000));
}

#[tokio::test]
async fn attributes_responses_to_versions_per_client() {
    let addr = serve(Behaviour::ByClient).await;
    let load = Load::start(cfg(addr, 500));
    let r = run_until(load, |r| r.ok >= 300).await;
    assert_consistent(&r);
    assert_eq!(r.failed, 0, "{:?}", r.failures);
    assert_eq!(r.by_version.keys().collect::<Vec<_>>(), ["v1", "v2"]);
    assert!(r.by_version["v1"].ok > 0 && r.by_version["v2"].ok > 0);
    for (client, runs) in &r.per_client {
        let id: u32 = client.strip_prefix("client-").unwrap().parse().unwrap();
        assert!(id < 10);
        let want = if id % 2 == 1 { "v2" } else { "v1" };
        assert_eq!(runs.len(), 1, "{client}: {runs:?}");
        assert_eq!(runs[0].0, want);
    }
    assert_eq!(r.client_flips, 0);
    let v1 = &r.by_version["v1"];
    assert!(v1.p50 <= v1.p99 && v1.p99 <= v1.max && v1.max > Duration::ZERO);
    assert!(r.first_failure.is_none() && r.last_failure.is_none());
    // Serializable for `cutover demo` and the benchmarks.
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["sent"], r.sent);
}

#[tokio::test]
async fn non_2xx_counts_as_failed() {
    let addr = serve(Behaviour::EveryThirdFails).await;
    let load = Load::start(cfg(addr, 500));
    let r = run_until(load, |r| r.failed >= 20).await;
    assert_consistent(&r);
    assert!(r.ok > 0);
    let v1 = &r.by_version["v1"];
    assert_eq!((v1.ok, v1.failed), (r.ok, r.failed));
    assert!(r.failures.iter().all(|f| f.kind == FailureKind::Status(500)
        && f.version.as_deref() == Some("v1")
        && f.client.starts_with("client-")));
    let (first, last) = (
        r.first_failure.as_ref().unwrap(),
        r.last_failure.as_ref().unwrap(),
    );
    assert!(first.at <= last.at);
    // Roughly a third fail (the server decides per request it sees).
    let ratio = r.error_ratio();
    assert!((0.2..0.5).contains(&ratio), "{ratio}");
}

#[tokio::test]
async fn timeouts_are_counted_and_in_flight_is_bounded() {
    let addr = serve(Behaviour::Slow(Duration::from_secs(3))).await;
    let load = Load::start(LoadConfig {
        max_in_flight: 5,
        timeout: Duration::from_millis(200),
        ..cfg(addr, 200)
    });
    let r = run_until(load, |r| r.failed >= 10 && r.skipped >= 10).await;
    assert_consistent(&r);
    assert_eq!(r.ok, 0);
    assert_eq!(r.unattributed_failed, r.failed);
    assert!(r.by_version.is_empty());
    assert!(r
        .failures
        .iter()
        .all(|f| f.kind == FailureKind::Timeout && f.version.is_none()));
}

#[tokio::test]
async fn connection_failures_are_counted() {
    // A port nobody listens on: bind, take the address, close.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let load = Load::start(cfg(addr, 100));
    let r = run_until(load, |r| r.failed >= 5).await;
    assert_consistent(&r);
    assert!(
        r.failures.iter().all(|f| f.kind == FailureKind::Connect),
        "{:?}",
        r.failures
    );
}

#[tokio::test]
async fn rate_is_roughly_honoured() {
    let addr = serve(Behaviour::ByClient).await;
    let load = Load::start(cfg(addr, 200));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = load.stop().await;
    assert_consistent(&r);
    // Loose: this is a sanity check, not a benchmark.
    assert!(
        (150..=250).contains(&(r.sent + r.skipped)),
        "{}",
        r.sent + r.skipped
    );
    assert!(r.sent >= 150, "{r:?}");
}

#[tokio::test]
async fn zero_rate_and_no_clients() {
    let addr = serve(Behaviour::Slow(Duration::ZERO)).await;
    let r = Load::start(cfg(addr, 0)).stop().await;
    assert_eq!(r.sent, 0);
    let load = Load::start(LoadConfig {
        clients: 0,
        ..cfg(addr, 200)
    });
    let r = run_until(load, |r| r.ok >= 10).await;
    assert_consistent(&r);
    assert!(r.per_client.is_empty());
    assert!(r.by_version.contains_key("slow"));
}
