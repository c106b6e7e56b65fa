//! The `/orders` WebSocket endpoint of the real binary, over real WebSocket connections:
//! executions on record before acks, idempotency by id, and drain (`POST /drain`, SIGTERM).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const DEADLINE: Duration = Duration::from_secs(20);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct App {
    child: Child,
    addr: SocketAddr,
    // Kept open so the app never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl App {
    async fn spawn(args: &[&str]) -> App {
        let mut child = Command::new(env!("CARGO_BIN_EXE_demo-app"))
            .args(["--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn demo-app");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        tokio::time::timeout(DEADLINE, stdout.read_line(&mut line))
            .await
            .expect("startup line within deadline")
            .expect("read stdout");
        let addr = line
            .trim()
            .rsplit_once(" listening on ")
            .unwrap_or_else(|| panic!("unexpected startup line {line:?}"))
            .1
            .parse()
            .expect("address in startup line");
        App {
            child,
            addr,
            _stdout: stdout,
        }
    }

    async fn request(&self, method: Method, path: &str) -> (StatusCode, Bytes) {
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .body(Full::default())
            .unwrap();
        let resp = tokio::time::timeout(DEADLINE, client.request(req))
            .await
            .expect("response within deadline")
            .expect("request");
        let status = resp.status();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }

    async fn metric(&self, line_prefix: &str) -> f64 {
        let (_, body) = self.request(Method::GET, "/metrics").await;
        let text = String::from_utf8(body.to_vec()).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(line_prefix))
            .unwrap_or_else(|| panic!("no {line_prefix:?} in {text}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// Polls `/metrics` until `line_prefix` reaches `at_least`.
    async fn wait_metric(&self, line_prefix: &str, at_least: f64) {
        let what = format!("{line_prefix} to reach {at_least}");
        cutover_testkit::eventually(DEADLINE, &what, || async {
            let v = self.metric(line_prefix).await;
            if v >= at_least {
                Ok(())
            } else {
                Err(v)
            }
        })
        .await
    }

    async fn connect(&self) -> Ws {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/orders", self.addr))
            .await
            .expect("ws connect");
        ws
    }
}

async fn send_order(ws: &mut Ws, id: &str) {
    ws.send(Message::text(
        serde_json::json!({ "id": id, "qty": 1 }).to_string(),
    ))
    .await
    .unwrap();
}

/// The next message: a JSON reply, or the close code.
#[derive(Debug, PartialEq)]
enum Reply {
    Json(serde_json::Value),
    Close(u16),
    Ended,
}

async fn next_reply(ws: &mut Ws) -> Reply {
    loop {
        let msg = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("reply within deadline");
        return match msg {
            Some(Ok(Message::Text(t))) => Reply::Json(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(Some(f)))) => Reply::Close(f.code.into()),
            Some(Ok(Message::Close(None))) => Reply::Close(1005),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => panic!("unexpected {other:?}"),
            Some(Err(_)) | None => Reply::Ended,
        };
    }
}

fn ack(id: &str, version: &str) -> Reply {
    Reply::Json(serde_json::json!({ "id": id, "version": version }))
}

/// The executed log as (id, version) lines.
fn executed(dir: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dir.join(demo_app::EXECUTED_LOG))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (id, v) = l.split_once(' ').expect("`id version`");
            (id.to_owned(), v.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn orders_are_executed_once_then_acked() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let app = App::spawn(&["--version", "v3", "--state-dir", state.to_str().unwrap()]).await;
    let mut ws = app.connect().await;

    send_order(&mut ws, "a-1").await;
    assert_eq!(next_reply(&mut ws).await, ack("a-1", "v3"));
    // On record before the ack was sent.
    assert_eq!(executed(&state), [("a-1".into(), "v3".into())]);

    send_order(&mut ws, "a-2").await;
    assert_eq!(next_reply(&mut ws).await, ack("a-2", "v3"));

    // Invalid messages: answered with an error, nothing executed.
    for bad in [
        "not json".to_owned(),
        r#"{"qty":1}"#.to_owned(),
        r#"{"id":"has space"}"#.to_owned(),
    ] {
        ws.send(Message::text(bad.clone())).await.unwrap();
        match next_reply(&mut ws).await {
            Reply::Json(v) => assert!(v["error"].is_string() && v.get("id").is_none(), "{v}"),
            other => panic!("{bad}: {other:?}"),
        }
    }

    // A resend on a new connection (as after a reconnect) is acked, not executed again.
    ws.close(None).await.unwrap();
    let mut ws = app.connect().await;
    send_order(&mut ws, "a-1").await;
    assert_eq!(next_reply(&mut ws).await, ack("a-1", "v3"));
    send_order(&mut ws, "a-1").await;
    assert_eq!(next_reply(&mut ws).await, ack("a-1", "v3"));

    assert_eq!(
        executed(&state),
        [("a-1".into(), "v3".into()), ("a-2".into(), "v3".into())]
    );
    assert_eq!(
        app.metric("demo_orders_executed_total{version=\"v3\"} ")
            .await,
        2.0
    );
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn drain_acks_in_progress_orders_then_closes_1012() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(&[
        "--version",
        "v1",
        "--order-delay",
        "1s",
        "--order-delay-jitter",
        "100ms",
        "--state-dir",
        dir.path().to_str().unwrap(),
    ])
    .await;
    let mut busy = app.connect().await;
    let mut idle = app.connect().await;
    for id in ["o-1", "o-2", "o-3"] {
        send_order(&mut busy, id).await;
    }
    // All three are executing; none can finish before the drain (the delay is 1 s or more).
    app.wait_metric("demo_orders_in_progress ", 3.0).await;

    let (status, _) = app.request(Method::POST, "/drain").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.request(Method::GET, "/ready").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // A new order on an open socket is bounced so the client resends it elsewhere.
    send_order(&mut busy, "o-4").await;
    let mut acked = BTreeSet::new();
    let mut bounced = BTreeSet::new();
    let close = loop {
        match next_reply(&mut busy).await {
            Reply::Json(v) => {
                let id = v["id"].as_str().unwrap().to_owned();
                if v["error"] == "draining" {
                    bounced.insert(id);
                } else {
                    assert_eq!(v["version"], "v1", "{v}");
                    assert!(acked.insert(id), "acked twice: {v}");
                }
            }
            Reply::Close(code) => break code,
            Reply::Ended => panic!("socket ended without a close frame"),
        }
    };
    // Every in-progress order was acked before the close.
    assert_eq!(close, 1012);
    assert_eq!(
        acked,
        BTreeSet::from(["o-1".into(), "o-2".into(), "o-3".into()])
    );
    assert_eq!(bounced, BTreeSet::from(["o-4".to_owned()]));

    // A socket with nothing in progress is closed right away.
    assert_eq!(next_reply(&mut idle).await, Reply::Close(1012));

    // New connections are refused.
    match tokio_tungstenite::connect_async(format!("ws://{}/orders", app.addr)).await {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE)
        }
        other => panic!("expected 503, got {other:?}"),
    }

    // The executed log is exactly the acked set.
    let on_record: BTreeSet<String> = executed(dir.path()).into_iter().map(|(id, _)| id).collect();
    assert_eq!(on_record, acked);
    assert_eq!(executed(dir.path()).len(), acked.len());
}

#[tokio::test]
async fn sigterm_acks_in_progress_orders_before_exiting() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = App::spawn(&[
        "--version",
        "v2",
        "--order-delay",
        "500ms",
        "--state-dir",
        dir.path().to_str().unwrap(),
    ])
    .await;
    let mut ws = app.connect().await;
    send_order(&mut ws, "s-1").await;
    app.wait_metric("demo_orders_in_progress ", 1.0).await;
    kill(
        Pid::from_raw(app.child.id().unwrap() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(next_reply(&mut ws).await, ack("s-1", "v2"));
    assert_eq!(next_reply(&mut ws).await, Reply::Close(1012));
    let exit = tokio::time::timeout(DEADLINE, app.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0), "{exit:?}");
    assert_eq!(executed(dir.path()), [("s-1".into(), "v2".into())]);
}

/// The load generator's order clients against the real binary: after a drain, what the
/// clients count as acked is exactly what the app has on record, each once.
#[tokio::test]
async fn loadgen_clients_through_a_drain_match_the_executed_log() {
    use cutover_loadgen::{Orders, OrdersConfig};

    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(&[
        "--version",
        "v5",
        "--order-delay",
        "200ms",
        "--order-delay-jitter",
        "100ms",
        "--state-dir",
        dir.path().to_str().unwrap(),
    ])
    .await;
    let orders = Orders::start(OrdersConfig {
        clients: 4,
        rate_per_client: 20.0,
        reconnect_delay: Duration::from_millis(50),
        stop_timeout: Duration::from_secs(1),
        ..OrdersConfig::new(app.addr)
    });
    wait_orders(&orders, "acks", |r| r.acked.len() >= 20).await;
    assert_eq!(app.request(Method::POST, "/drain").await.0, StatusCode::OK);
    // Every client is closed with 1012, then refused (503) when it comes back.
    wait_orders(&orders, "drained", |r| {
        r.closes.get("1012") == Some(&4) && r.connect_failures >= 4
    })
    .await;
    let r = orders.stop().await;

    let log = executed(dir.path());
    let on_record: BTreeSet<String> = log.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(log.len(), on_record.len(), "an order was executed twice");
    assert_eq!(on_record, r.acked, "{r:?}");
    assert!(log.iter().all(|(_, v)| v == "v5"));
    assert_eq!(r.acked_by_version["v5"], r.acked.len() as u64);
    assert_eq!(r.acked.len() + r.unacked.len(), r.sent_unique as usize);
    assert_eq!((r.duplicate_acks, r.unexpected_acks), (0, 0), "{r:?}");
    assert_eq!(r.closes.keys().collect::<Vec<_>>(), ["1012"], "{r:?}");
}

/// Polls the order clients' snapshot until `cond` holds.
async fn wait_orders(
    orders: &cutover_loadgen::Orders,
    what: &str,
    cond: impl Fn(&cutover_loadgen::OrdersReport) -> bool,
) {
    cutover_testkit::eventually(DEADLINE, what, || {
        let s = orders.snapshot();
        std::future::ready(if cond(&s) {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        })
    })
    .await
}
