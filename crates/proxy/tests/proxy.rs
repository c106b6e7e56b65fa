//! End-to-end tests of the data plane: real sockets on 127.0.0.1, real upstream apps.

mod support;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::Full;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// The version part of an upstream's name (`v2#1` → `v2`).
fn version(body: &str) -> &str {
    body.split('#').next().unwrap_or(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_are_honoured() {
    let (s, c) = (Upstream::start("v1#0").await, Upstream::start("v2#0").await);
    let px = Running::start().await;
    px.proxy.set_table(table(
        Some(pool("v1", &[s.backend()])),
        Some((pool("v2", &[c.backend()]), 2_000)),
    ));
    let n = 5_000usize;
    let workers = 16;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let addr = px.addr;
        tasks.push(tokio::spawn(async move {
            let client = client();
            let mut canary = 0usize;
            for i in (w..n).step_by(workers) {
                let a = get(&client, addr, "/", Some(&format!("client-{i}"))).await;
                assert_eq!(a.status, StatusCode::OK);
                canary += usize::from(version(&a.body) == "v2");
            }
            canary
        }));
    }
    let mut canary = 0;
    for t in tasks {
        canary += t.await.unwrap();
    }
    let share = canary as f64 / n as f64;
    assert!((share - 0.2).abs() < 0.03, "canary share {share}");
    // Every request was recorded under the version that served it.
    let w = Duration::from_secs(60);
    assert_eq!(px.recorder.window("v2", w).requests, canary as u64);
    assert_eq!(px.recorder.window("v1", w).requests, (n - canary) as u64);
    assert_eq!(px.recorder.window("v1", w).errors, 0);
}

#[tokio::test]
async fn clients_stick_to_their_version_and_only_move_to_the_canary() {
    let s = [Upstream::start("v1#0").await, Upstream::start("v1#1").await];
    let c = [Upstream::start("v2#0").await, Upstream::start("v2#1").await];
    let (sb, cb): (Vec<_>, Vec<_>) = (
        s.iter().map(Upstream::backend).collect(),
        c.iter().map(Upstream::backend).collect(),
    );
    let px = Running::start().await;
    let client = client();
    let set = |bp| {
        px.proxy
            .set_table(table(Some(pool("v1", &sb)), Some((pool("v2", &cb), bp))))
    };

    set(2_000);
    let mut first: HashMap<String, String> = HashMap::new();
    for i in 0..200 {
        let id = format!("user-{i}");
        for _ in 0..5 {
            let a = get(&client, px.addr, "/", Some(&id)).await;
            let v = version(&a.body).to_owned();
            let seen = first.entry(id.clone()).or_insert_with(|| v.clone());
            assert_eq!(*seen, v, "{id} changed version at a fixed weight");
        }
    }
    let canaries: HashSet<_> = first
        .iter()
        .filter(|(_, v)| *v == "v2")
        .map(|(k, _)| k.clone())
        .collect();
    assert!(!canaries.is_empty());

    set(5_000);
    let mut moved = 0;
    for (id, before) in &first {
        let now = version(&get(&client, px.addr, "/", Some(id)).await.body).to_owned();
        if canaries.contains(id) {
            assert_eq!(
                now, "v2",
                "{id} flipped back to stable when the weight grew"
            );
        } else if now == "v2" {
            moved += 1;
        } else {
            assert_eq!(&now, before);
        }
    }
    assert!(moved > 0, "raising the weight moved nobody");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_swaps_are_atomic_under_load() {
    let (a1, a2) = (Upstream::start("a#1").await, Upstream::start("a#2").await);
    let (b1, b2) = (Upstream::start("b#1").await, Upstream::start("b#2").await);
    let (ba, bb) = ([a1.backend(), a2.backend()], [b1.backend(), b2.backend()]);
    // Table A only reaches `a#*`, table B only `b#*`, at opposite weights.
    let ta = || {
        table(
            Some(pool("a", &ba[..1])),
            Some((pool("a", &ba[1..]), 5_000)),
        )
    };
    let tb = || {
        table(
            Some(pool("b", &bb[..1])),
            Some((pool("b", &bb[1..]), 5_000)),
        )
    };
    let px = Running::start().await;
    px.proxy.set_table(ta());

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (addr, stop) = (px.addr, stop.clone());
        workers.push(tokio::spawn(async move {
            let client = client();
            let mut seen = HashSet::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let a = get(&client, addr, "/", Some(&format!("w{w}-{i}"))).await;
                assert_eq!(a.status, StatusCode::OK, "a request failed during a swap");
                seen.insert(a.body);
                i += 1;
            }
            (seen, i)
        }));
    }
    for i in 0..200 {
        px.proxy.set_table(if i % 2 == 0 { tb() } else { ta() });
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut seen = HashSet::new();
    let mut total = 0;
    for w in workers {
        let (s, n) = w.await.unwrap();
        seen.extend(s);
        total += n;
    }
    let expected: HashSet<String> = ["a#1", "a#2", "b#1", "b#2"].map(String::from).into();
    assert!(seen.is_subset(&expected), "{seen:?}");
    assert!(seen.len() >= 3, "both tables served traffic: {seen:?}");
    assert!(total > 100, "only {total} requests");
    assert_eq!(px.recorder.track("a").totals().errors, 0);
    assert_eq!(px.recorder.track("b").totals().errors, 0);
}

#[tokio::test]
async fn an_empty_canary_falls_back_an_empty_stable_is_503_and_no_pool_is_503() {
    let (s, c) = (Upstream::start("v1#0").await, Upstream::start("v2#0").await);
    let px = Running::start().await;
    let client = client();

    let a = get(&client, px.addr, "/", Some("x")).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(a.body.contains("no ready instance"), "{}", a.body);

    // Everyone is meant for stable, whose instances are not ready (still starting): 503,
    // never the canary, whose weight holds (DESIGN.md invariant 10).
    px.proxy.set_table(table(
        Some(pool("v1", &[])),
        Some((pool("v2", &[c.backend()]), 0)),
    ));
    for i in 0..20 {
        let r = get(&client, px.addr, "/", Some(&i.to_string())).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    }
    // There is no stable at all (the host decided so, and recorded it): the canary serves.
    px.proxy
        .set_table(table(None, Some((pool("v2", &[c.backend()]), 0))));
    for i in 0..20 {
        assert_eq!(
            get(&client, px.addr, "/", Some(&i.to_string())).await.body,
            "v2#0"
        );
    }
    // Everyone is meant for the canary, which has none: stable serves.
    px.proxy.set_table(table(
        Some(pool("v1", &[s.backend()])),
        Some((pool("v2", &[]), 10_000)),
    ));
    for i in 0..20 {
        assert_eq!(
            get(&client, px.addr, "/", Some(&i.to_string())).await.body,
            "v1#0"
        );
    }

    px.proxy
        .set_table(table(Some(pool("v1", &[])), Some((pool("v2", &[]), 5_000))));
    let a = get(&client, px.addr, "/", Some("x")).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(a.body.contains("no ready instance"));
    let failed = px.recorder.track("v1").totals().errors + px.recorder.track("v2").totals().errors;
    // The 20 answered while stable was starting and this one.
    assert_eq!(failed, 21, "the proxy-generated 503s count as errors");
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_and_forwarded_headers_set() {
    let s = Upstream::start("v1#0").await;
    let px = Running::start().await;
    px.proxy
        .set_table(table(Some(pool("v1", &[s.backend()])), None));
    let req = Request::get(format!("http://{}/headers", px.addr))
        .header("host", "shop.example")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-app", "kept")
        .body(Full::<Bytes>::default())
        .unwrap();
    let a = send(&client(), req).await;
    assert_eq!(a.status, StatusCode::OK);
    let seen: HashMap<&str, &str> = a.body.lines().filter_map(|l| l.split_once(": ")).collect();
    for gone in ["x-secret", "keep-alive", "proxy-connection", "te"] {
        assert!(!seen.contains_key(gone), "{gone} reached the app: {seen:?}");
    }
    assert_eq!(seen.get("x-app"), Some(&"kept"));
    assert_eq!(seen.get("host"), Some(&"shop.example"));
    // The client is no trusted proxy (none are by default): its chain is replaced, not
    // extended (tests/front_door.rs has the trusted case).
    assert_eq!(seen.get("x-forwarded-for"), Some(&"127.0.0.1"));
    assert_eq!(seen.get("x-forwarded-proto"), Some(&"http"));
    assert_eq!(seen.get("x-forwarded-host"), Some(&"shop.example"));
    // And on the way back.
    assert!(a.headers.get("x-hop-resp").is_none(), "{:?}", a.headers);
    assert!(a.headers.get("keep-alive").is_none(), "{:?}", a.headers);
    assert_eq!(a.headers["x-end"], "kept");
    assert!(a.headers.get("x-cutover-track").is_none());
}

#[tokio::test]
async fn refused_connection_is_retried_once_elsewhere() {
    let live = Upstream::start("v2#0").await;
    let dead = cutover_proxy::Backend::new("dead", dead_addr().await);
    let dead = Arc::new(dead);
    let px = Running::start().await;
    let client = client();
    // Everyone is meant for stable, whose only instance refuses connections.
    px.proxy.set_table(table(
        Some(pool("v1", std::slice::from_ref(&dead))),
        Some((pool("v2", &[live.backend()]), 0)),
    ));
    for i in 0..10 {
        let a = get(&client, px.addr, "/", Some(&i.to_string())).await;
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "v2#0"));
    }
    // A body that was never sent is sent in full on the retry.
    let req = Request::post(format!("http://{}/echo", px.addr))
        .body(Full::new(Bytes::from_static(b"order 42")))
        .unwrap();
    assert_eq!(send(&client, req).await.body, "order 42");
    assert_eq!(px.recorder.track("v2").totals().requests, 11);
    assert_eq!(px.recorder.track("v2").totals().errors, 0);

    // Nowhere else to go: 502, counted against the version that was tried.
    px.proxy
        .set_table(table(Some(pool("v1", std::slice::from_ref(&dead))), None));
    let a = get(&client, px.addr, "/", Some("x")).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert!(a.body.contains("bad gateway"));
    let t = px.recorder.track("v1").totals();
    assert_eq!(
        (t.requests, t.errors, t.by_code.get(&502)),
        (1, 1, Some(&1))
    );
    assert_eq!(px.proxy.in_flight(dead.addr), 0);
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled_and_counted_while_open() {
    let ws = ws_echo().await;
    let px = Running::start().await;
    let backend = Arc::new(cutover_proxy::Backend::new("ws", ws));
    px.proxy.set_table(table(
        Some(pool("v1", std::slice::from_ref(&backend))),
        None,
    ));

    let (mut socket, resp) = tokio::time::timeout(
        DEADLINE,
        tokio_tungstenite::connect_async(format!("ws://{}/orders", px.addr)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for text in ["hello", "order 1", "order 2"] {
        socket.send(Message::Text(text.into())).await.unwrap();
        let echoed = tokio::time::timeout(DEADLINE, socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed, Message::Text(text.into()));
    }
    // Removing the backend from the table does not hide the live tunnel from drain.
    px.proxy.set_table(table(None, None));
    assert_eq!(px.proxy.in_flight(ws), 1);
    // The tunnel lives until both sides are gone: finish the close handshake, then hang up.
    socket.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(DEADLINE, socket.next()).await {}
    drop(socket);
    eventually("tunnel closed", || px.proxy.in_flight(ws) == 0).await;
    assert_eq!(px.recorder.track("v1").totals().by_code.get(&101), Some(&1));
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let s = Upstream::start("v1#0").await;
    let mut px = Running::start().await;
    px.proxy
        .set_table(table(Some(pool("v1", &[s.backend()])), None));

    let addr = px.addr;
    let slow = tokio::spawn(async move { get(&client(), addr, "/slow", None).await });
    tokio::time::timeout(DEADLINE, s.arrived.notified())
        .await
        .expect("slow request reached the app");
    assert_eq!(px.proxy.in_flight(s.addr), 1);

    px.shutdown();
    // Stops accepting: new connections are refused once the listener is gone.
    cutover_testkit::eventually(
        DEADLINE,
        "new connections refused after shutdown",
        || async move {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(_) => Err("still accepting after shutdown"),
                Err(_) => Ok(()),
            }
        },
    )
    .await;
    assert!(
        !px.done.is_finished(),
        "returned before the in-flight request finished"
    );

    s.release.notify_one();
    let a = tokio::time::timeout(DEADLINE, slow).await.unwrap().unwrap();
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "v1#0"));
    let outcome = tokio::time::timeout(DEADLINE, &mut px.done)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, cutover_proxy::ShutdownOutcome::Drained);
    assert_eq!(px.proxy.in_flight(s.addr), 0);
}

/// A client that gives up before a hung instance answers is still measured (status 499, with
/// the time it waited as latency), so an abort rule sees a canary that never answers.
#[tokio::test]
async fn abandoned_requests_are_recorded_with_their_wait() {
    let s = Upstream::start("v1#0").await;
    let px = Running::start().await;
    px.proxy
        .set_table(table(Some(pool("v1", &[s.backend()])), None));
    let addr = px.addr;
    let waiting = tokio::spawn(async move { get(&client(), addr, "/slow", None).await });
    tokio::time::timeout(DEADLINE, s.arrived.notified())
        .await
        .expect("slow request reached the app");
    tokio::time::sleep(Duration::from_millis(30)).await; // the wait being measured, not a sync
    waiting.abort();
    let recorder = px.proxy.recorder().clone();
    eventually("the abandoned request is recorded", || {
        recorder.track("v1").totals().by_code.get(&499) == Some(&1)
    })
    .await;
    let w = recorder.window("v1", Duration::from_secs(10));
    assert_eq!((w.requests, w.errors), (1, 0));
    assert!(w.latency_quantile_secs(0.99).unwrap() >= 0.030);
    s.release.notify_one();
}

/// An instance that sends no response head within `upstream_timeout` gets the request
/// answered 504, counted as an error of its version.
#[tokio::test]
async fn hung_upstream_is_a_504() {
    let s = Upstream::start("v1#0").await;
    let px = Running::with_config(cutover_proxy::ProxyConfig {
        upstream_timeout: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    px.proxy
        .set_table(table(Some(pool("v1", &[s.backend()])), None));
    let a = get(&client(), px.addr, "/slow", None).await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    let w = px.proxy.recorder().window("v1", Duration::from_secs(10));
    assert_eq!((w.requests, w.errors), (1, 1));
    s.release.notify_one();
}

/// Keep-alive to instances: a client's sequential requests share one upstream connection, and
/// when the instance leaves the table its idle connection is closed at once (not when the
/// instance exits), and a connection still carrying a request is closed when it finishes.
#[tokio::test]
async fn upstream_connections_are_reused_and_closed_when_their_instance_leaves() {
    let a = Upstream::start("v1#0").await;
    let b = Upstream::start("v2#0").await;
    let px = Running::start().await;
    let client = client();
    px.proxy
        .set_table(table(Some(pool("v1", &[a.backend()])), None));
    for _ in 0..20 {
        assert_eq!(get(&client, px.addr, "/", None).await.body, "v1#0");
    }
    assert_eq!(
        a.accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection"
    );
    assert_eq!(a.open.load(Ordering::SeqCst), 1, "kept open while idle");

    px.proxy
        .set_table(table(Some(pool("v2", &[b.backend()])), None));
    eventually(
        "the idle connection to the instance that left is closed",
        || a.open.load(Ordering::SeqCst) == 0,
    )
    .await;
    assert_eq!(get(&client, px.addr, "/", None).await.body, "v2#0");

    // A request in flight while its instance leaves: it completes, then its connection goes.
    let a_backend = a.backend();
    px.proxy.set_table(table(
        Some(pool("v1", std::slice::from_ref(&a_backend))),
        None,
    ));
    let held = {
        let client = client.clone();
        let addr = px.addr;
        tokio::spawn(async move { get(&client, addr, "/slow", None).await })
    };
    tokio::time::timeout(DEADLINE, a.arrived.notified())
        .await
        .expect("the held request reached the instance");
    px.proxy
        .set_table(table(Some(pool("v2", &[b.backend()])), None));
    a.release.notify_one();
    let done = held.await.unwrap();
    assert_eq!((done.status, done.body.as_str()), (StatusCode::OK, "v1#0"));
    eventually("the connection that carried it is closed", || {
        a.open.load(Ordering::SeqCst) == 0
    })
    .await;
    assert_eq!(px.proxy.in_flight(a_backend.addr), 0);
}

/// An instance closing idle keep-alive connections (its own keep-alive timeout) must cost no
/// request: a pooled connection found closed is skipped, not answered with a 502.
#[tokio::test]
async fn pooled_connections_the_instance_closed_cost_no_request() {
    let (addr, accepted) = one_shot_upstream().await;
    let px = Running::with_config(cutover_proxy::ProxyConfig {
        workers: 1,
        ..Default::default()
    })
    .await;
    let client = client();
    let one = Arc::new(cutover_proxy::Backend::new("one", addr));
    px.proxy.set_table(table(Some(pool("v1", &[one])), None));
    for _ in 0..20 {
        let a = get(&client, px.addr, "/", None).await;
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "one-shot"));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 20);
    assert_eq!(px.recorder.track("v1").totals().errors, 0);
}

/// What an instance sends is checked like what a client sends: a response framed two ways
/// (`Content-Length` and `Transfer-Encoding`, the response-smuggling shape) is a 502 counted
/// against its version, nothing of it reaches the client, and its connection, which may hold
/// a second response behind the first, is dropped rather than reused.
#[tokio::test]
async fn an_instance_s_malformed_response_is_a_502_and_its_connection_is_dropped() {
    let (addr, accepted) = scripted_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled",
    )
    .await;
    let px = Running::with_config(cutover_proxy::ProxyConfig {
        workers: 1,
        ..Default::default()
    })
    .await;
    let client = client();
    let app = Arc::new(cutover_proxy::Backend::new("app", addr));
    px.proxy.set_table(table(Some(pool("v1", &[app])), None));
    let bad = get(&client, px.addr, "/", None).await;
    assert_eq!(bad.status, StatusCode::BAD_GATEWAY);
    assert!(!bad.body.contains("smuggled"), "{}", bad.body);
    assert_eq!(px.recorder.track("v1").totals().errors, 1);
    for _ in 0..3 {
        let ok = get(&client, px.addr, "/", None).await;
        assert_eq!((ok.status, ok.body.as_str()), (StatusCode::OK, "ok"));
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "one new connection after the bad one, then reused"
    );
}

/// A response the client stopped reading leaves its connection mid-body: it must be closed,
/// never reused, or the next request would read the rest of that body as its answer. The
/// body never ends, so it cannot have been read to the end behind the client's back.
#[tokio::test]
async fn a_connection_left_mid_response_is_not_reused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, accepted, open) = endless_upstream().await;
    let px = Running::with_config(cutover_proxy::ProxyConfig {
        workers: 1,
        ..Default::default()
    })
    .await;
    let endless = Arc::new(cutover_proxy::Backend::new("endless", addr));
    px.proxy
        .set_table(table(Some(pool("v1", &[endless])), None));
    let mut raw = tokio::net::TcpStream::connect(px.addr).await.unwrap();
    raw.write_all(b"GET /endless HTTP/1.1\r\nhost: shop\r\n\r\n")
        .await
        .unwrap();
    let mut some = [0u8; 4096];
    let n = tokio::time::timeout(DEADLINE, raw.read(&mut some))
        .await
        .expect("the response starts")
        .unwrap();
    assert!(String::from_utf8_lossy(&some[..n]).starts_with("HTTP/1.1 200"));
    drop(raw);
    eventually("the abandoned upstream connection is closed", || {
        open.load(Ordering::SeqCst) == 0
    })
    .await;
    let client = client();
    for _ in 0..3 {
        let r = get(&client, px.addr, "/", None).await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// Long-lived connections are spread evenly over the workers, even when they arrive in a
/// burst: a worker ahead of the least loaded one by more than one (plus an eighth) leaves the
/// next connection to the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_balanced_across_workers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CONNS: usize = 64;
    let up = Upstream::start("v1#0").await;
    let px = Running::with_config(cutover_proxy::ProxyConfig {
        workers: 2,
        ..Default::default()
    })
    .await;
    px.proxy
        .set_table(table(Some(pool("v1", &[up.backend()])), None));
    // All at once, as a load balancer's or a benchmark's connection pool opens them.
    let opened = futures_util::future::join_all((0..CONNS).map(|_| async {
        let mut s = tokio::net::TcpStream::connect(px.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: shop\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        s
    }))
    .await;
    let counts = px.proxy.connections_by_worker();
    assert_eq!(counts.iter().sum::<usize>(), CONNS, "{counts:?}");
    let (least, most) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(most - least <= 1 + least / 8 + 1, "unbalanced: {counts:?}");
    drop(opened);
    eventually("closed connections are no longer counted", || {
        px.proxy.connections_by_worker().iter().sum::<usize>() == 0
    })
    .await;
}

/// A singleton's handoff (docs/handoff.md): while the host holds requests and publishes a
/// table with no backend, requests wait instead of being answered 503; the next table with a
/// backend serves them, with its fencing token in `X-Cutover-Fencing-Token` (a client's own
/// header of that name replaced). Without a token in the table the header is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_wait_across_an_empty_table_and_carry_the_next_tables_token() {
    let (old, new) = (
        RecordingUpstream::start(Duration::ZERO).await,
        RecordingUpstream::start(Duration::ZERO).await,
    );
    let px = Running::start().await;
    let fenced = |backend, token| cutover_proxy::RouteTable {
        fencing: Some(token),
        ..table(Some(pool("v1", &[backend])), None)
    };
    px.proxy.set_table(fenced(old.backend(), 1));
    let forged = |path: &str| {
        Request::get(format!("http://{}{path}", px.addr))
            .header("x-cutover-fencing-token", "99")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let c = client();
    assert_eq!(send(&c, forged("/before")).await.status, StatusCode::OK);

    // The role moves: hold, then a table whose pool is empty.
    px.proxy.hold_while_cold(Duration::from_secs(30));
    px.proxy.set_table(table(Some(pool("v1", &[])), None));
    let held: Vec<_> = (0..4)
        .map(|i| {
            let (c, req) = (c.clone(), forged(&format!("/held-{i}")));
            tokio::spawn(async move { send(&c, req).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        held.iter().all(|h| !h.is_finished()),
        "a request was answered while the role moved"
    );
    px.proxy.set_table(fenced(new.backend(), 2));
    for h in held {
        let a = h.await.unwrap();
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    }

    let token = |seen: &Seen| {
        seen.headers
            .get_all("x-cutover-fencing-token")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let old_seen = old.seen();
    assert_eq!(old_seen.len(), 1);
    assert_eq!(token(&old_seen[0]), ["1"]);
    let new_seen = new.seen();
    assert_eq!(
        new_seen.len(),
        4,
        "every held request went to the new table"
    );
    assert!(
        new_seen.iter().all(|s| token(s) == ["2"]),
        "{:?}",
        new_seen.iter().map(token).collect::<Vec<_>>()
    );

    // No token in the table (a canary service): the proxy does not touch the header.
    px.proxy
        .set_table(table(Some(pool("v1", &[new.backend()])), None));
    assert_eq!(send(&c, forged("/after")).await.status, StatusCode::OK);
    assert_eq!(token(new.seen().last().unwrap()), ["99"]);
}
