//! Runs the WebSocket order clients against a tiny in-test order server on 127.0.0.1 that can
//! close sockets with 1012 or drop them mid-stream, and checks that every order ends up acked
//! exactly once and executed exactly once.

// tungstenite's handshake callback returns its (large) error response by value; not ours.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use cutover_loadgen::{Orders, OrdersConfig, OrdersReport, ABNORMAL_CLOSE};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Copy)]
enum Mode {
    /// Executes and acks every order; every `n`-th order of a connection is acked twice.
    Ack { double_every: usize },
    /// On each connection, the `n`-th order is neither executed nor acked: the server closes
    /// with 1012 instead (a restart with that order never started).
    Close1012After(usize),
    /// On each connection, the `n`-th order is executed but the TCP connection is dropped
    /// before its ack (the ack is lost; the resend must not execute it again).
    DropAfter(usize),
    /// Never answers.
    Silent,
}

#[derive(Default)]
struct Seen {
    /// Executions per id: must never exceed 1.
    executed: HashMap<String, u32>,
    /// Receipts per id (resends included).
    received: HashMap<String, u32>,
    client_headers: BTreeSet<String>,
    uris: BTreeSet<String>,
}

struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

async fn serve(mode: Mode) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(connection(stream, mode, Arc::clone(&s)));
        }
    });
    Server { addr, seen }
}

async fn connection(stream: TcpStream, mode: Mode, seen: Arc<Mutex<Seen>>) {
    let s = Arc::clone(&seen);
    let record = move |req: &Request, resp: Response| {
        let mut s = s.lock().unwrap();
        if let Some(h) = req.headers().get("x-client-id") {
            s.client_headers.insert(h.to_str().unwrap().to_owned());
        }
        s.uris.insert(req.uri().to_string());
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
        return;
    };
    let mut count = 0;
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let id = v["id"].as_str().unwrap().to_owned();
        count += 1;
        *seen.lock().unwrap().received.entry(id.clone()).or_default() += 1;
        let execute = || {
            let mut s = seen.lock().unwrap();
            // Idempotent by id, like demo-app.
            s.executed.entry(id.clone()).or_insert(1);
        };
        let ack = Message::text(serde_json::json!({ "id": id, "version": "v1" }).to_string());
        match mode {
            Mode::Ack { double_every } => {
                execute();
                if count % double_every == 0 {
                    ws.send(ack.clone()).await.unwrap();
                }
                ws.send(ack).await.unwrap();
            }
            Mode::Close1012After(n) if count >= n => {
                let frame = CloseFrame {
                    code: CloseCode::Restart,
                    reason: "service restart".into(),
                };
                let _ = ws.close(Some(frame)).await;
                // Until the client's close reply (or it goes away).
                while let Some(Ok(_)) = ws.next().await {}
                return;
            }
            Mode::DropAfter(n) if count >= n => {
                execute();
                return; // drops the TCP connection without a close frame
            }
            Mode::Close1012After(_) | Mode::DropAfter(_) => {
                execute();
                ws.send(ack).await.unwrap();
            }
            Mode::Silent => {}
        }
    }
}

fn cfg(addr: SocketAddr) -> OrdersConfig {
    OrdersConfig {
        clients: 3,
        rate_per_client: 50.0,
        reconnect_delay: Duration::from_millis(20),
        client_query: Some("client".to_owned()),
        ..OrdersConfig::new(addr)
    }
}

/// Runs until `cond` holds on a snapshot (or panics after a deadline), then stops.
async fn run_until(orders: Orders, cond: impl Fn(&OrdersReport) -> bool) -> OrdersReport {
    cutover_testkit::eventually(Duration::from_secs(20), "the condition", || {
        let s = orders.snapshot();
        std::future::ready(if cond(&s) {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        })
    })
    .await;
    orders.stop().await
}

/// Every order acked once, none left, and the server executed each exactly once.
fn assert_all_acked_once(r: &OrdersReport, server: &Server) {
    assert!(r.unacked.is_empty(), "{r:?}");
    assert_eq!(r.acked.len() as u64, r.sent_unique, "{r:?}");
    assert_eq!(r.acked_by_version["v1"], r.sent_unique);
    assert_eq!(r.unexpected_acks, 0);
    let seen = server.seen.lock().unwrap();
    let executed: BTreeSet<String> = seen.executed.keys().cloned().collect();
    assert_eq!(executed, r.acked);
    assert!(seen.executed.values().all(|&n| n == 1));
}

#[tokio::test]
async fn every_order_is_acked_exactly_once() {
    let server = serve(Mode::Ack { double_every: 4 }).await;
    let config = OrdersConfig {
        run_id: "happy".to_owned(),
        ..cfg(server.addr)
    };
    let r = run_until(Orders::start(config), |r| r.acked.len() >= 60).await;
    assert_all_acked_once(&r, &server);
    // Every fourth ack came twice: counted apart, not acked twice.
    assert!(r.duplicate_acks > 0, "{r:?}");
    assert!(r.closes.is_empty() && r.reconnects == 0, "{r:?}");
    assert!(r.acked.iter().all(|id| id.starts_with("happy-")));
    let seen = server.seen.lock().unwrap();
    assert_eq!(
        seen.client_headers,
        BTreeSet::from(["client-0", "client-1", "client-2"].map(String::from))
    );
    assert!(
        seen.uris.contains("/orders?client=client-2"),
        "{:?}",
        seen.uris
    );
    // No resends without a reconnect.
    assert!(seen.received.values().all(|&n| n == 1));
    // Serializable for `cutover demo` and the benchmarks.
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["sent_unique"], r.sent_unique);
}

#[tokio::test]
async fn close_1012_mid_stream_reconnects_and_resends() {
    let server = serve(Mode::Close1012After(5)).await;
    let r = run_until(Orders::start(cfg(server.addr)), |r| {
        r.closes.get("1012").copied().unwrap_or(0) >= 6 && r.acked.len() >= 30
    })
    .await;
    assert_all_acked_once(&r, &server);
    assert!(r.reconnects >= 6, "{r:?}");
    assert_eq!(r.closes.keys().collect::<Vec<_>>(), ["1012"], "{r:?}");
    // The order the server refused at each close was resent and then executed.
    let seen = server.seen.lock().unwrap();
    assert!(seen.received.values().any(|&n| n > 1), "nothing was resent");
}

#[tokio::test]
async fn abrupt_drop_counts_as_abnormal_and_recovers() {
    let server = serve(Mode::DropAfter(4)).await;
    let r = run_until(Orders::start(cfg(server.addr)), |r| {
        r.closes.get(ABNORMAL_CLOSE).copied().unwrap_or(0) >= 6 && r.acked.len() >= 30
    })
    .await;
    assert_all_acked_once(&r, &server);
    assert_eq!(
        r.closes.keys().collect::<Vec<_>>(),
        [ABNORMAL_CLOSE],
        "{r:?}"
    );
    // The order whose ack was lost was resent; the server acked it without executing again
    // (checked above), and the client counted it once.
    let seen = server.seen.lock().unwrap();
    assert!(seen.received.values().any(|&n| n > 1), "nothing was resent");
}

#[tokio::test]
async fn stop_is_bounded_when_acks_never_come() {
    let server = serve(Mode::Silent).await;
    let orders = Orders::start(OrdersConfig {
        stop_timeout: Duration::from_millis(300),
        ..cfg(server.addr)
    });
    cutover_testkit::eventually(Duration::from_secs(20), "10 orders sent", || {
        let s = orders.snapshot();
        std::future::ready(if s.sent_unique >= 10 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        })
    })
    .await;
    let t = Instant::now();
    let r = orders.stop().await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(r.acked.is_empty());
    assert_eq!(r.unacked.len() as u64, r.sent_unique);
    // Unacked in sending order per client.
    let first: Vec<&String> = r.unacked.iter().filter(|id| id.contains("-0-")).collect();
    let seqs: Vec<u64> = first
        .iter()
        .map(|id| id.rsplit('-').next().unwrap().parse().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

#[tokio::test]
async fn refused_connections_are_counted() {
    // A port nobody listens on: bind, take the address, close.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let r = run_until(Orders::start(cfg(addr)), |r| r.connect_failures >= 5).await;
    assert_eq!((r.sent_unique, r.reconnects), (0, 0));
    assert!(r.closes.is_empty());
}
