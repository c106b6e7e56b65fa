//! WebSocket relay and drain, end to end: real sockets on 127.0.0.1, a WebSocket app written
//! here with tokio-tungstenite, a tokio-tungstenite client; an order service and a client
//! written with Python's `websockets` (`tests/apps`), which negotiate permessage-deflate; and
//! raw sockets where the exact bytes on the wire are the point.

mod support;

use cutover_core::spec::StickySpec;
use cutover_proxy::{ProxyConfig, WsDrainReport};
use futures_util::{SinkExt, StreamExt};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket app: greets each connection with `hello from <name>`, echoes text and binary
/// messages `delay` after receiving them, and answers the text `close` (after the same delay)
/// with Close 1000 "bye". It records every text it received and every close frame.
struct App {
    addr: SocketAddr,
    texts: Arc<Mutex<Vec<String>>>,
    closes: Arc<Mutex<Vec<Option<CloseFrame<'static>>>>>,
}

impl App {
    async fn start(name: &str, delay: Duration) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let texts = Arc::new(Mutex::new(Vec::new()));
        let closes = Arc::new(Mutex::new(Vec::new()));
        let (t, c, name) = (texts.clone(), closes.clone(), name.to_owned());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (t, c, name) = (t.clone(), c.clone(), name.clone());
                tokio::spawn(async move {
                    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    let (mut tx, mut rx) = ws.split();
                    let (q, mut due) = tokio::sync::mpsc::unbounded_channel::<(Instant, Message)>();
                    let writer = tokio::spawn(async move {
                        while let Some((at, msg)) = due.recv().await {
                            tokio::time::sleep_until(at).await;
                            let close = msg.is_close();
                            if tx.send(msg).await.is_err() || close {
                                break;
                            }
                        }
                        tx
                    });
                    let _ = q.send((Instant::now(), Message::text(format!("hello from {name}"))));
                    while let Some(Ok(msg)) = rx.next().await {
                        let reply = match msg {
                            Message::Text(text) if text == "close" => {
                                t.lock().unwrap().push(text);
                                Message::Close(Some(CloseFrame {
                                    code: CloseCode::Normal,
                                    reason: "bye".into(),
                                }))
                            }
                            Message::Text(text) => {
                                t.lock().unwrap().push(text.clone());
                                Message::Text(text)
                            }
                            Message::Binary(b) => Message::Binary(b),
                            Message::Close(f) => {
                                c.lock().unwrap().push(f);
                                continue;
                            }
                            _ => continue,
                        };
                        let _ = q.send((Instant::now() + delay, reply));
                    }
                    drop(q);
                    let _ = writer.await;
                });
            }
        });
        App {
            addr,
            texts,
            closes,
        }
    }

    fn backend(&self) -> Arc<cutover_proxy::Backend> {
        Arc::new(cutover_proxy::Backend::new("app", self.addr))
    }

    fn texts(&self) -> Vec<String> {
        self.texts.lock().unwrap().clone()
    }

    fn closes(&self) -> Vec<Option<CloseFrame<'static>>> {
        self.closes.lock().unwrap().clone()
    }
}

async fn connect(proxy: SocketAddr, path: &str) -> Client {
    let (ws, resp) = tokio::time::timeout(
        DEADLINE,
        tokio_tungstenite::connect_async(format!("ws://{proxy}{path}")),
    )
    .await
    .expect("upgrade within the deadline")
    .expect("upgrade");
    assert_eq!(resp.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    ws
}

async fn next(ws: &mut Client) -> Message {
    tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("a message within the deadline")
        .expect("stream still open")
        .expect("no protocol error (a reset would be 1006)")
}

/// Reads until the close frame, asserting every item is a proper message; then expects the
/// stream to end cleanly (the server closed the TCP connection after the handshake).
async fn until_close(ws: &mut Client, mut on_text: impl FnMut(String)) -> CloseFrame<'static> {
    let frame = loop {
        match next(ws).await {
            Message::Text(t) => on_text(t),
            Message::Close(Some(f)) => break f,
            Message::Close(None) => panic!("close frame without a code"),
            _ => {}
        }
    };
    let end = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("connection closed after the close handshake");
    assert!(end.is_none(), "after close: {end:?}");
    frame
}

#[tokio::test]
async fn messages_are_relayed_both_ways_and_the_apps_close_reaches_the_client() {
    let app = App::start("v1", Duration::ZERO).await;
    let px = Running::start().await;
    px.proxy
        .set_table(table(Some(pool("v1", &[app.backend()])), None));

    let mut ws = connect(px.addr, "/orders").await;
    assert_eq!(px.proxy.websocket_sessions(app.addr), 1);
    assert_eq!(px.proxy.in_flight(app.addr), 1);
    let mut other = connect(px.addr, "/orders").await;
    assert_eq!(px.proxy.websocket_sessions(app.addr), 2);
    assert_eq!(next(&mut other).await, Message::text("hello from v1"));
    // Instance → client without a client message first.
    assert_eq!(next(&mut ws).await, Message::text("hello from v1"));
    for i in 0..3 {
        let text = Message::text(format!("order {i}"));
        ws.send(text.clone()).await.unwrap();
        assert_eq!(next(&mut ws).await, text);
        let bin = Message::binary(vec![0u8, 159, 146, 150, i]);
        ws.send(bin.clone()).await.unwrap();
        assert_eq!(next(&mut ws).await, bin);
    }
    assert_eq!(app.texts(), ["order 0", "order 1", "order 2"]);

    // The app closes with 1000: the client gets that code and reason, not a reset.
    ws.send(Message::text("close")).await.unwrap();
    let frame = until_close(&mut ws, |t| panic!("unexpected {t}")).await;
    assert_eq!(frame.code, CloseCode::Normal);
    assert_eq!(frame.reason, "bye");
    eventually("one session left", || {
        px.proxy.websocket_sessions(app.addr) == 1
    })
    .await;

    // The client closes with 1000 and a reason: the app gets both.
    other
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "done".into(),
        }))
        .await
        .unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(DEADLINE, other.next()).await {}
    eventually("sessions ended", || {
        px.proxy.websocket_sessions(app.addr) == 0
    })
    .await;
    eventually("in-flight back to 0", || px.proxy.in_flight(app.addr) == 0).await;
    let closes = app.closes();
    assert!(
        closes
            .iter()
            .flatten()
            .any(|f| f.code == CloseCode::Normal && f.reason == "done"),
        "{closes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_delivers_in_flight_acks_drops_later_orders_and_closes_with_1012() {
    // Each order is acknowledged 100 ms after the app took it: at any moment some acks are
    // in flight.
    let app = App::start("v1", Duration::from_millis(100)).await;
    let px = Running::start().await;
    let backend = app.backend();
    px.proxy.set_table(table(
        Some(pool("v1", std::slice::from_ref(&backend))),
        None,
    ));
    let ws = connect(px.addr, "/orders").await;
    let (mut tx, mut rx) = ws.split();
    assert_eq!(
        tokio::time::timeout(DEADLINE, rx.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        Message::text("hello from v1")
    );

    // The client places orders continuously; `sending` is the last one it started to send.
    let sending = Arc::new(AtomicU64::new(0));
    let s = sending.clone();
    let sender = tokio::spawn(async move {
        for seq in 1u64.. {
            s.store(seq, Ordering::SeqCst);
            if tx.send(Message::text(format!("seq {seq}"))).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let seq = |t: &str| -> u64 { t.strip_prefix("seq ").unwrap().parse().unwrap() };
    let mut acked = Vec::new();
    while acked.len() < 20 {
        match tokio::time::timeout(DEADLINE, rx.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => acked.push(seq(&t)),
            other => panic!("before the drain: {other:?}"),
        }
    }

    // The host took the backend out of the table, then drains it.
    px.proxy.set_table(table(None, None));
    let quiet = Duration::from_millis(500);
    let drain = px.proxy.drain_websockets(app.addr, quiet);
    let started = Instant::now();
    // Every order started after this point was sent after the drain began.
    let last_before_drain = sending.load(Ordering::SeqCst);
    let drain = tokio::spawn(drain);

    let acked_before = acked.len();
    let mut after_drain = Vec::new();
    let frame = loop {
        match tokio::time::timeout(DEADLINE, rx.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => after_drain.push(seq(&t)),
            Ok(Some(Ok(Message::Close(Some(f))))) => break f,
            other => panic!("during the drain: {other:?}"),
        }
    };
    let closed_after = started.elapsed();
    let end = tokio::time::timeout(DEADLINE, rx.next()).await.unwrap();
    assert!(end.is_none(), "a clean end after the close, got {end:?}");
    assert_eq!(frame.code, CloseCode::Restart);
    assert_eq!(frame.reason, "cutover: instance draining");
    assert!(closed_after >= quiet, "closed after {closed_after:?}");
    let _ = tokio::time::timeout(DEADLINE, sender).await.unwrap();

    let report = tokio::time::timeout(DEADLINE, drain)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        report,
        WsDrainReport {
            sessions: 1,
            closed_by_cutover: 1,
            ..WsDrainReport::default()
        }
    );

    // The acks in flight when the drain began reached the client during the quiet period...
    assert!(
        !after_drain.is_empty(),
        "no ack arrived in the quiet period"
    );
    acked.extend(&after_drain);
    // ...and every order the app took was acknowledged, in order: nothing taken was lost.
    let taken: Vec<u64> = app.texts().iter().map(|t| seq(t)).collect();
    assert_eq!(acked, taken, "acks ({acked_before} before the drain)");
    // No order sent after the drain began reached the app (the client resends those).
    let max_taken = taken.iter().copied().max().unwrap();
    assert!(
        max_taken <= last_before_drain,
        "the app took order {max_taken}, sent after the drain began at {last_before_drain}"
    );
    assert!(
        sending.load(Ordering::SeqCst) > last_before_drain,
        "the client kept sending during the drain"
    );
    // The app got a normal close, not a reset.
    eventually("the app saw the close", || !app.closes().is_empty()).await;
    let closes = app.closes();
    let f = closes[0].as_ref().expect("a close code for the app");
    assert_eq!(f.code, CloseCode::Away);

    assert_eq!(px.proxy.websocket_sessions(app.addr), 0);
    assert_eq!(px.proxy.in_flight(app.addr), 0);
    assert_eq!(backend.in_flight(), 0);
}

#[tokio::test]
async fn a_session_the_app_closes_during_the_quiet_period_ends_by_its_close() {
    let app = App::start("v1", Duration::from_millis(100)).await;
    let px = Running::start().await;
    px.proxy
        .set_table(table(Some(pool("v1", &[app.backend()])), None));
    let mut closing = connect(px.addr, "/").await;
    let mut idle = connect(px.addr, "/").await;
    assert_eq!(next(&mut closing).await, Message::text("hello from v1"));
    assert_eq!(next(&mut idle).await, Message::text("hello from v1"));
    // The app will close this one 100 ms from now, well within the quiet period.
    closing.send(Message::text("close")).await.unwrap();
    eventually("the app took the close request", || {
        app.texts().iter().any(|t| t == "close")
    })
    .await;
    assert_eq!(px.proxy.websocket_sessions(app.addr), 2);

    px.proxy.set_table(table(None, None));
    let drain = tokio::spawn(
        px.proxy
            .drain_websockets(app.addr, Duration::from_millis(600)),
    );
    let (a, b) = tokio::join!(
        until_close(&mut closing, |t| panic!("unexpected {t}")),
        until_close(&mut idle, |t| panic!("unexpected {t}")),
    );
    assert_eq!((a.code, a.reason.as_ref()), (CloseCode::Normal, "bye"));
    assert_eq!(b.code, CloseCode::Restart);
    let report = tokio::time::timeout(DEADLINE, drain)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        report,
        WsDrainReport {
            sessions: 2,
            closed_by_app: 1,
            closed_by_cutover: 1,
            ..WsDrainReport::default()
        }
    );
    assert_eq!(px.proxy.websocket_sessions(app.addr), 0);
    assert_eq!(px.proxy.in_flight(app.addr), 0);
    // Draining a backend without sessions reports nothing and returns at once.
    assert_eq!(
        px.proxy
            .drain_websockets(app.addr, Duration::from_secs(60))
            .await,
        WsDrainReport::default()
    );
}

#[tokio::test]
async fn websockets_stick_by_query_parameter_across_a_weight_increase() {
    let (s, c) = (
        App::start("v1", Duration::ZERO).await,
        App::start("v2", Duration::ZERO).await,
    );
    let px = Running::with_config(ProxyConfig {
        sticky: StickySpec {
            query: Some("client".into()),
            ..StickySpec::default()
        },
        ..ProxyConfig::default()
    })
    .await;
    let (sb, cb) = (s.backend(), c.backend());
    let set = |bp| {
        px.proxy.set_table(table(
            Some(pool("v1", std::slice::from_ref(&sb))),
            Some((pool("v2", std::slice::from_ref(&cb)), bp)),
        ))
    };
    // Which version a fresh connection for `id` lands on (the app greets with its name).
    let version = |id: String| async move {
        let mut ws = connect(px.addr, &format!("/stream?v=1&client={id}&x")).await;
        let hello = next(&mut ws).await;
        let _ = ws.close(None).await;
        match hello {
            Message::Text(t) => t.trim_start_matches("hello from ").to_owned(),
            other => panic!("greeting {other:?}"),
        }
    };

    set(2_000);
    let mut first = HashMap::new();
    for i in 0..100 {
        let id = format!("user-{i}");
        let v = version(id.clone()).await;
        assert_eq!(version(id.clone()).await, v, "{id} moved at a fixed weight");
        first.insert(id, v);
    }
    let canaries: HashSet<_> = first
        .iter()
        .filter(|(_, v)| *v == "v2")
        .map(|(k, _)| k.clone())
        .collect();
    assert!(!canaries.is_empty() && canaries.len() < first.len());

    set(5_000);
    let mut moved = 0;
    for (id, before) in &first {
        let now = version(id.clone()).await;
        if canaries.contains(id) {
            assert_eq!(now, "v2", "{id} went back to stable when the weight grew");
        } else if now == "v2" {
            moved += 1;
        } else {
            assert_eq!(&now, before);
        }
    }
    assert!(moved > 0, "raising the weight moved nobody");
}

/// An instance that goes away without a close frame (it exited, or a reset discarded the close
/// it had sent): the client still gets a proper close, 1012, never a 1006 from cutover.
#[tokio::test]
async fn an_instance_that_vanishes_gets_its_clients_a_1012_not_a_reset() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (vanish_tx, vanish_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        let _ = vanish_rx.await;
        // Dropped without a close frame: the TCP connection just ends.
        drop(ws);
    });
    let px = Running::start().await;
    let backend = Arc::new(cutover_proxy::Backend::new("v1#0", addr));
    px.proxy.set_table(table(
        Some(pool("v1", std::slice::from_ref(&backend))),
        None,
    ));
    let mut ws = connect(px.addr, "/orders").await;
    eventually("session open", || px.proxy.websocket_sessions(addr) == 1).await;
    vanish_tx.send(()).unwrap();
    let frame = until_close(&mut ws, |t| panic!("unexpected {t}")).await;
    assert_eq!(frame.code, CloseCode::Restart);
    assert!(frame.reason.contains("went away"), "{}", frame.reason);
    eventually("session gone", || {
        px.proxy.websocket_sessions(addr) == 0 && px.proxy.in_flight(addr) == 0
    })
    .await;
}

/// The order service of `tests/apps/ws_orders.py` (Python's `websockets`: it negotiates
/// permessage-deflate and the `orders.v1` subprotocol) on a port of its own; killed on drop.
struct PythonApp {
    addr: SocketAddr,
    child: std::process::Child,
    state: tempfile::TempDir,
}

impl PythonApp {
    fn start() -> PythonApp {
        use std::io::BufRead;
        let state = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("python3")
            .arg(apps().join("ws_orders.py"))
            .args(["--port", "0", "--version", "v1", "--state-dir"])
            .arg(state.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs (scripts/test installs it and `websockets`)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("ws_orders.py said {line:?} (is `websockets` installed?)"))
            .parse()
            .unwrap();
        PythonApp {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            state,
        }
    }

    fn lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.state.path().join(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for PythonApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn apps() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/apps")
}

/// What `tests/apps/ws_orders_client.py` printed, once it finished.
struct PythonClientRun {
    lines: Vec<String>,
}

impl PythonClientRun {
    fn count(&self, prefix: &str) -> usize {
        self.lines.iter().filter(|l| l.starts_with(prefix)).count()
    }
}

/// Runs the Python `websockets` order client (its defaults: it offers permessage-deflate)
/// against `url`; it stops placing orders once `stop` resolves, and finishes when every order
/// was acked.
async fn python_client(
    url: String,
    stop: impl std::future::Future<Output = ()>,
) -> PythonClientRun {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut child = tokio::process::Command::new("python3")
        .arg(apps().join("ws_orders_client.py"))
        .arg(url)
        .arg("py")
        .args(["--rate", "100"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut lines = Vec::new();
    tokio::pin!(stop);
    let mut stopped = false;
    let read = async {
        loop {
            tokio::select! {
                () = &mut stop, if !stopped => {
                    stopped = true;
                    stdin.write_all(b"stop\n").await.unwrap();
                }
                line = out.next_line() => match line.unwrap() {
                    Some(l) => lines.push(l),
                    None => break,
                },
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .unwrap_or_else(|_| panic!("the Python client did not finish"));
    let _ = child.wait().await;
    PythonClientRun { lines }
}

/// Invariant 12: a client and an app that both speak permessage-deflate (Python's
/// `websockets` with its defaults) keep it through cutover, with their subprotocol; a drain of
/// compressed sessions still ends them with 1012, and every order is acked exactly once and
/// executed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_sessions_relay_and_drain_with_pythons_websockets() {
    let app = PythonApp::start();
    let px = Running::start().await;
    let backend = Arc::new(cutover_proxy::Backend::new("v1#0", app.addr));
    px.proxy.set_table(table(
        Some(pool("v1", std::slice::from_ref(&backend))),
        None,
    ));
    let proxy = px.proxy.clone();
    let executed = || app.lines("executed.log").len();
    let stop = async {
        eventually("orders executed", || executed() > 30).await;
        // Drained twice while orders flow: the client reconnects (to the same instance, still
        // in the table) and resends what was not acked.
        for _ in 0..2 {
            let report = tokio::time::timeout(
                DEADLINE,
                proxy.drain_websockets(app.addr, Duration::from_millis(100)),
            )
            .await
            .unwrap();
            assert_eq!(report.closed_by_cutover, 1, "{report:?}");
            let before = executed();
            eventually("orders after the drain", || executed() > before + 30).await;
        }
    };
    let run = python_client(format!("ws://{}/orders", px.addr), stop).await;
    let done = run.lines.last().expect("output");
    assert!(done.starts_with("done "), "{:?}", run.lines);
    assert!(done.ends_with("\"unacked\": []}"), "{done}");
    let opens: Vec<_> = run
        .lines
        .iter()
        .filter(|l| l.starts_with("open "))
        .collect();
    assert_eq!(opens.len(), 3, "{:?}", run.lines);
    for open in &opens {
        assert!(
            open.starts_with("open permessage-deflate") && open.ends_with("| orders.v1"),
            "{open}"
        );
    }
    for s in app.lines("sessions.log") {
        assert!(
            s.starts_with("permessage-deflate") && s.ends_with("| orders.v1"),
            "{s}"
        );
    }
    assert_eq!(run.count("close 1012"), 2, "{:?}", run.lines);
    assert_eq!(run.count("close "), 3, "{:?}", run.lines);
    assert_eq!(run.count("dup "), 0);
    let acked: HashSet<String> = run
        .lines
        .iter()
        .filter_map(|l| l.strip_prefix("ack "))
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect();
    let executed: Vec<String> = app
        .lines("executed.log")
        .iter()
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect();
    assert_eq!(executed.len(), acked.len(), "each order executed once");
    assert_eq!(executed.into_iter().collect::<HashSet<_>>(), acked);
    eventually("sessions ended", || {
        px.proxy.websocket_sessions(app.addr) == 0
    })
    .await;
}

/// A raw WebSocket app: reads one upgrade request, answers `101` with `extensions` (when
/// given) and the subprotocol `orders.v1`, sends `to_client` as it is, then records the bytes
/// it receives until it has `expect` of them or the connection ends. Hands back the request
/// head and those bytes.
async fn raw_app(
    extensions: Option<&'static str>,
    to_client: Vec<u8>,
    expect: usize,
) -> (SocketAddr, tokio::task::JoinHandle<(String, Vec<u8>)>) {
    let (addr, _, task) = raw_app_live(extensions, to_client, expect).await;
    (addr, task)
}

/// [`raw_app`], also showing the bytes received so far while it runs; it ends its connection
/// once it has `expect` bytes.
async fn raw_app_live(
    extensions: Option<&'static str>,
    to_client: Vec<u8>,
    expect: usize,
) -> (
    SocketAddr,
    Arc<Mutex<Vec<u8>>>,
    tokio::task::JoinHandle<(String, Vec<u8>)>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let live = Arc::new(Mutex::new(Vec::new()));
    let seen = live.clone();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let head_end = loop {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the request head ended early");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut received = buf[head_end..].to_vec();
        seen.lock().unwrap().clone_from(&received);
        let ext = extensions
            .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
            .unwrap_or_default();
        // Any accept value: the raw client below does not check it.
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: orders.v1\r\n{ext}\r\n"
        );
        s.write_all(answer.as_bytes()).await.unwrap();
        s.write_all(&to_client).await.unwrap();
        while received.len() < expect {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    received.extend_from_slice(&chunk[..n]);
                    seen.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            }
        }
        (head, received)
    });
    (addr, live, task)
}

const UPGRADE_REQUEST: &str = "GET /orders HTTP/1.1\r\nHost: orders\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: orders.v1, orders.v0\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

/// Reads a response head off `s` (and whatever came after it in the same reads).
async fn read_head(s: &mut TcpStream) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(DEADLINE, s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection ended before a response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return (String::from_utf8_lossy(&buf).into_owned(), rest);
        }
    }
}

/// A frame as a client would write it (masked) or an app (unmasked).
fn wire_frame(b0: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut out = vec![
        b0,
        payload.len() as u8 | if mask.is_some() { 0x80 } else { 0 },
    ];
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Invariant 12, byte for byte: the offer of permessage-deflate and the subprotocols reach the
/// instance untouched, its `101` reaches the client with both, and compressed frames (RSV1
/// set, fragmented, a ping between the fragments) arrive exactly as they were sent, in each
/// direction, masks included.
#[tokio::test]
async fn compressed_frames_pass_byte_for_byte_with_extensions_and_subprotocol() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // "Hello" compressed (RFC 7692 §7.2.3.1), as the app sends it: RSV1 + text, unmasked; then
    // the same message in two fragments (RSV1 only on the first) with a ping between them.
    let deflated: &[u8] = &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    let app_frames = [
        wire_frame(0xc1, None, deflated),
        wire_frame(0x41, None, &deflated[..3]),
        wire_frame(0x89, None, b"app-ping"),
        wire_frame(0x80, None, &deflated[3..]),
    ]
    .concat();
    let client_frames = [
        wire_frame(0xc1, Some([1, 2, 3, 4]), deflated),
        wire_frame(0x42, Some([5, 6, 7, 8]), &deflated[..2]),
        wire_frame(0x8a, Some([9, 9, 9, 9]), b"app-ping"),
        wire_frame(0x80, Some([0xa, 0xb, 0xc, 0xd]), &deflated[2..]),
        wire_frame(0x88, Some([1, 1, 1, 1]), &[0x03, 0xe8, b'o', b'k']),
    ]
    .concat();
    let (addr, app) = raw_app(
        Some("permessage-deflate; server_no_context_takeover"),
        app_frames.clone(),
        client_frames.len(),
    )
    .await;
    let px = Running::start().await;
    px.proxy.set_table(table(
        Some(pool(
            "v1",
            &[Arc::new(cutover_proxy::Backend::new("v1", addr))],
        )),
        None,
    ));

    let mut s = TcpStream::connect(px.addr).await.unwrap();
    s.write_all(UPGRADE_REQUEST.as_bytes()).await.unwrap();
    let (head, mut from_app) = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("sec-websocket-extensions: permessage-deflate; server_no_context_takeover"),
        "{head}"
    );
    assert!(
        lower.contains("sec-websocket-protocol: orders.v1"),
        "{head}"
    );

    while from_app.len() < app_frames.len() {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(DEADLINE, s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        from_app.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(from_app, app_frames, "the app's frames, unchanged");

    s.write_all(&client_frames).await.unwrap();
    let (request, received) = tokio::time::timeout(DEADLINE, app).await.unwrap().unwrap();
    let request = request.to_ascii_lowercase();
    assert!(
        request.contains("sec-websocket-extensions: permessage-deflate; client_max_window_bits"),
        "{request}"
    );
    assert!(
        request.contains("sec-websocket-protocol: orders.v1, orders.v0"),
        "{request}"
    );
    assert_eq!(received, client_frames, "the client's frames, unchanged");
    // The app went without answering the close: the session still ends.
    eventually("session ended", || px.proxy.websocket_sessions(addr) == 0).await;
}

/// What cutover cannot relay it refuses before the `101` (invariant 12): an instance that
/// accepts an extension other than permessage-deflate gets its client a 502 naming the
/// problem, never a session that breaks after the switch.
#[tokio::test]
async fn an_extension_cutover_cannot_relay_is_refused_before_the_101() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, _app) = raw_app(Some("x-webkit-deflate-frame"), Vec::new(), 0).await;
    let px = Running::start().await;
    px.proxy.set_table(table(
        Some(pool(
            "v1",
            &[Arc::new(cutover_proxy::Backend::new("v1", addr))],
        )),
        None,
    ));
    let mut s = TcpStream::connect(px.addr).await.unwrap();
    s.write_all(UPGRADE_REQUEST.as_bytes()).await.unwrap();
    let (head, mut body) = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    // The connection stays open for the next request: read the body, up to its newline.
    while !body.ends_with(b"\n") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(DEADLINE, s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection ended mid-body");
        body.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("WebSocket extension cutover cannot relay"),
        "{body}"
    );
    assert_eq!(px.proxy.websocket_sessions(addr), 0);
    eventually("nothing in flight", || px.proxy.in_flight(addr) == 0).await;
}

/// A drain that begins in the middle of a fragmented (compressed) message completes that
/// message, so the instance never holds half of one, and forwards nothing the client sends
/// after it: not the next message, not a ping. Then the usual 1001 to the instance and 1012 to
/// the client.
#[tokio::test]
async fn a_drain_stops_client_frames_at_a_message_boundary() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deflated: &[u8] = &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    let first = wire_frame(0x41, Some([1, 2, 3, 4]), &deflated[..3]);
    let rest = wire_frame(0x80, Some([5, 6, 7, 8]), &deflated[3..]);
    let next_message = wire_frame(0xc1, Some([9, 9, 9, 9]), deflated);
    let ping = wire_frame(0x89, Some([7, 7, 7, 7]), b"ping");
    // cutover's close to the instance: 2 + 4 header and mask bytes, the code, the reason.
    let close_len = 6 + 2 + "cutover: instance draining".len();
    let (addr, live, app) = raw_app_live(
        Some("permessage-deflate"),
        Vec::new(),
        first.len() + rest.len() + close_len,
    )
    .await;
    let px = Running::start().await;
    px.proxy.set_table(table(
        Some(pool(
            "v1",
            &[Arc::new(cutover_proxy::Backend::new("v1", addr))],
        )),
        None,
    ));
    let mut s = TcpStream::connect(px.addr).await.unwrap();
    s.write_all(UPGRADE_REQUEST.as_bytes()).await.unwrap();
    let (head, _) = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    s.write_all(&first).await.unwrap();
    eventually("the first fragment reached the app", || {
        live.lock().unwrap().len() == first.len()
    })
    .await;
    // The drain flag is set when the drain is asked for, before the rest is sent.
    let drain = tokio::spawn(px.proxy.drain_websockets(addr, Duration::from_millis(100)));
    s.write_all(&[rest.clone(), next_message, ping].concat())
        .await
        .unwrap();

    // The client gets 1012 (the app never answers the close: it ends its connection).
    let mut got = Vec::new();
    let code = loop {
        let mut chunk = [0u8; 256];
        let n = tokio::time::timeout(DEADLINE, s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "ended without a close frame: {got:?}");
        got.extend_from_slice(&chunk[..n]);
        if got.len() >= 4 {
            assert_eq!(got[0], 0x88, "a close frame, unmasked: {got:?}");
            break u16::from_be_bytes([got[2], got[3]]);
        }
    };
    assert_eq!(code, 1012);
    s.write_all(&wire_frame(
        0x88,
        Some([3, 3, 3, 3]),
        &1012u16.to_be_bytes(),
    ))
    .await
    .unwrap();
    let (_, received) = tokio::time::timeout(DEADLINE, app).await.unwrap().unwrap();
    let message = [first, rest].concat();
    assert_eq!(
        &received[..message.len()],
        &message[..],
        "the begun message, whole"
    );
    let close = &received[message.len()..];
    assert_eq!(close.len(), close_len, "then only the close: {received:?}");
    assert_eq!(close[0], 0x88);
    assert_eq!(close[1] & 0x80, 0x80, "masked, as a client's frames are");
    let mask = [close[2], close[3], close[4], close[5]];
    let code = u16::from_be_bytes([close[6] ^ mask[0], close[7] ^ mask[1]]);
    assert_eq!(code, 1001);
    let report = tokio::time::timeout(DEADLINE, drain)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.sessions, 1);
}
