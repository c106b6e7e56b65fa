//! The proxy's own test kit: what only the proxy's tests need. Everything generic comes from
//! `cutover_testkit` (the condition waits, `dead_addr`, the recording upstream builder).
//!
//! What stays here, and why it is specific to the proxy:
//! - [`Upstream`]: an app that names itself, shows the headers it received (with hop-by-hop
//!   headers of its own for the proxy to strip), echoes bodies and holds `/slow` until told —
//!   the observations the header rewriting, routing and drain tests make;
//! - hand-rolled HTTP/1.1 upstreams that misbehave on the wire ([`one_shot_upstream`],
//!   [`scripted_upstream`], [`endless_upstream`]) and [`RecordingUpstream`], which holds
//!   requests until released: the pool's retry and abandonment paths, which a well-behaved
//!   server never exercises;
//! - a running [`Proxy`] on 127.0.0.1:0 ([`Running`]), route tables ([`pool`], [`table`]),
//!   a client, and raw socket exchanges ([`raw_exchange`], [`read_response`]) to see the exact
//!   bytes the proxy wrote.
#![allow(dead_code)] // each test binary uses a different subset

use bytes::Bytes;
use cutover_core::Weight;
use cutover_proxy::{Backend, Pool, Proxy, ProxyConfig, RouteTable, ShutdownOutcome};
use cutover_telemetry::Recorder;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

/// How long any single condition in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A small HTTP/1.1 app that answers with its own name.
///
/// Routes: `/headers` lists the request headers it received (and answers with hop-by-hop
/// headers of its own); `/echo` returns the request body; `/slow` signals `arrived` and waits
/// for `release`; anything else returns the name.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub arrived: Arc<Notify>,
    pub release: Arc<Notify>,
    /// Connections accepted so far, and those still open.
    pub accepted: Arc<AtomicUsize>,
    pub open: Arc<AtomicUsize>,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let arrived = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (n, a, r) = (name.to_owned(), arrived.clone(), release.clone());
        let (acc, op) = (accepted.clone(), open.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                acc.fetch_add(1, Ordering::SeqCst);
                op.fetch_add(1, Ordering::SeqCst);
                let (n, a, r, op) = (n.clone(), a.clone(), r.clone(), op.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (n, a, r) = (n.clone(), a.clone(), r.clone());
                        async move { Ok::<_, Infallible>(answer(req, n, a, r).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                    op.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Upstream {
            addr,
            name: name.to_owned(),
            arrived,
            release,
            accepted,
            open,
        }
    }

    pub fn backend(&self) -> Arc<Backend> {
        Arc::new(Backend::new(self.name.clone(), self.addr))
    }
}

async fn answer(
    req: Request<Incoming>,
    name: String,
    arrived: Arc<Notify>,
    release: Arc<Notify>,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/headers" => {
            let mut text = String::new();
            for (k, v) in req.headers() {
                text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
            }
            Response::builder()
                .header("connection", "x-hop-resp")
                .header("x-hop-resp", "1")
                .header("keep-alive", "timeout=5")
                .header("x-end", "kept")
                .body(Full::new(Bytes::from(text)))
                .unwrap()
        }
        "/echo" => {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Response::new(Full::new(body))
        }
        "/slow" => {
            arrived.notify_one();
            release.notified().await;
            Response::new(Full::new(Bytes::from(name)))
        }
        _ => Response::new(Full::new(Bytes::from(name))),
    }
}

/// An app that answers one request per connection and then closes it *without* saying so
/// (no `Connection: close`), as a keep-alive timeout firing on an idle connection looks to a
/// pool. Counts the connections it accepted.
pub async fn one_shot_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::AsyncWriteExt;
    raw_upstream(|mut stream, _| async move {
        if !read_head(&mut stream).await {
            return;
        }
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\none-shot")
            .await;
        let _ = stream.shutdown().await;
    })
    .await
}

/// A raw listener on 127.0.0.1 that hands each accepted connection, with its number (from
/// 0), to `serve` on a task of its own. Returns the connections accepted.
async fn raw_upstream<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(tokio::net::TcpStream, usize) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let nth = acc.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream, nth));
        }
    });
    (addr, accepted)
}

/// Reads a request head without a body (through its empty line); `false` if the connection
/// ended first. Reads a byte at a time, so nothing of a following request is taken.
async fn read_head(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => head.push(byte[0]),
        }
    }
    true
}

/// A keep-alive app on a raw listener that answers its very first request with `first`
/// (whatever bytes it is) and every later one, on any connection, with `ok`. Returns the
/// connections accepted.
pub async fn scripted_upstream(first: &'static [u8]) -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::AsyncWriteExt;
    raw_upstream(move |mut stream, nth| async move {
        for answered in 0.. {
            if !read_head(&mut stream).await {
                return;
            }
            let answer: &[u8] = if nth == 0 && answered == 0 {
                first
            } else {
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
            };
            if stream.write_all(answer).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// A keep-alive app on a raw listener: `/endless` answers with a chunked body that never
/// ends (it streams until the connection is closed); any other path gets `ok`. Returns the
/// connections accepted and those still open.
pub async fn endless_upstream() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let (acc, op) = (accepted.clone(), open.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            op.fetch_add(1, Ordering::SeqCst);
            let op = op.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                'requests: loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => break 'requests,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head: Vec<u8> = buf.drain(..end).collect();
                    if head.starts_with(b"GET /endless ") {
                        let mut out =
                            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                        let piece = [b'x'; 4096];
                        loop {
                            out.extend_from_slice(b"1000\r\n");
                            out.extend_from_slice(&piece);
                            out.extend_from_slice(b"\r\n");
                            if stream.write_all(&out).await.is_err() {
                                break 'requests;
                            }
                            out.clear();
                        }
                    }
                    if stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                op.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, accepted, open)
}

/// A WebSocket echo server on a raw listener.
pub async fn ws_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[allow(unused_imports)] // proxy.rs uses it, the other test files do not
pub use cutover_testkit::dead_addr;

pub fn pool(version: &str, backends: &[Arc<Backend>]) -> Pool {
    Pool {
        version: version.to_owned(),
        backends: backends.to_vec(),
    }
}

pub fn table(stable: Option<Pool>, canary: Option<(Pool, u16)>) -> RouteTable {
    RouteTable {
        salt: 7,
        stable,
        canary: canary.map(|(p, bp)| (p, Weight::from_bp(bp).unwrap())),
        fencing: None,
    }
}

/// A proxy serving on an ephemeral port, with a handle to shut it down.
pub struct Running {
    pub addr: SocketAddr,
    pub proxy: Proxy,
    pub recorder: Recorder,
    shutdown: Option<oneshot::Sender<()>>,
    pub done: JoinHandle<ShutdownOutcome>,
}

impl Running {
    pub async fn start() -> Running {
        Running::with_config(ProxyConfig::default()).await
    }

    pub async fn with_config(config: ProxyConfig) -> Running {
        Running::listening(config, "127.0.0.1:0".parse().unwrap()).await
    }

    /// A proxy on `listen` (e.g. `[::1]:0`, for clients with an IPv6 address).
    pub async fn listening(config: ProxyConfig, listen: SocketAddr) -> Running {
        let recorder = Recorder::new(Duration::from_secs(1), Duration::from_secs(60));
        let proxy = Proxy::new(config, recorder.clone());
        let listener = Proxy::bind(listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let p = proxy.clone();
        let done = tokio::spawn(async move {
            p.serve(listener, async {
                let _ = rx.await;
            })
            .await
            .expect("the proxy workers start")
        });
        Running {
            addr,
            proxy,
            recorder,
            shutdown: Some(tx),
            done,
        }
    }

    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// A GET through the proxy, optionally with a sticky client id.
pub async fn get(client: &TestClient, proxy: SocketAddr, path: &str, id: Option<&str>) -> Answer {
    let mut req = Request::get(format!("http://{proxy}{path}"));
    if let Some(id) = id {
        req = req.header("x-client-id", id);
    }
    send(client, req.body(Full::default()).unwrap()).await
}

pub async fn send(client: &TestClient, req: Request<Full<Bytes>>) -> Answer {
    let resp = tokio::time::timeout(DEADLINE, client.request(req))
        .await
        .expect("response within the deadline")
        .expect("a response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Waits until `cond` holds, failing the test after [`DEADLINE`].
pub async fn eventually(what: &str, cond: impl FnMut() -> bool) {
    cutover_testkit::eventually_holds(DEADLINE, what, cond).await
}

/// One request as a [`RecordingUpstream`] saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    /// `None` while the body is still being read; `Err` if it ended in an error (the proxy
    /// aborted it), `Ok` with every byte if it completed.
    pub body: Option<Result<Bytes, String>>,
}

/// An HTTP/1.1 app that records every request it receives, so a test can assert what did or
/// did not reach it. Paths starting `/hold` wait until [`RecordingUpstream::release`]; every
/// other path is answered after `delay`. The answer is `ok <path>`.
pub struct RecordingUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<std::sync::Mutex<Vec<Seen>>>,
    gate: tokio::sync::watch::Sender<bool>,
}

impl RecordingUpstream {
    pub async fn start(delay: Duration) -> RecordingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::<Seen>::new()));
        let (gate, _) = tokio::sync::watch::channel(false);
        let (s, g) = (seen.clone(), gate.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (s, g) = (s.clone(), g.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (s, mut open) = (s.clone(), g.subscribe());
                        async move {
                            let path = req
                                .uri()
                                .path_and_query()
                                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
                            let i = {
                                let mut s = s.lock().unwrap();
                                s.push(Seen {
                                    method: req.method().as_str().to_owned(),
                                    path: path.clone(),
                                    headers: req.headers().clone(),
                                    body: None,
                                });
                                s.len() - 1
                            };
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .map_err(|e| e.to_string());
                            s.lock().unwrap()[i].body = Some(body);
                            if path.starts_with("/hold") {
                                let _ = open.wait_for(|o| *o).await;
                            } else {
                                tokio::time::sleep(delay).await;
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                                "ok {path}"
                            )))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        RecordingUpstream { addr, seen, gate }
    }

    pub fn backend(&self) -> Arc<Backend> {
        Arc::new(Backend::new("rec", self.addr))
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Lets every held (`/hold…`) request, present and future, be answered.
    pub fn release(&self) {
        self.gate.send_replace(true);
    }
}

/// A proxy in front of a single [`RecordingUpstream`].
pub async fn recorded(config: ProxyConfig, delay: Duration) -> (Running, RecordingUpstream) {
    let up = RecordingUpstream::start(delay).await;
    let px = Running::with_config(config).await;
    px.proxy
        .set_table(table(Some(pool("v1", &[up.backend()])), None));
    (px, up)
}

/// How a raw connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The peer closed cleanly (read returned 0).
    Eof,
    /// A read failed (typically `ECONNRESET`).
    Reset,
    /// Nothing ended within [`DEADLINE`].
    Open,
}

/// Writes `bytes` on a new connection (a write failure is tolerated: the proxy may close
/// first) and reads until the connection ends or [`DEADLINE`] passes.
pub async fn raw_exchange(proxy: SocketAddr, bytes: &[u8]) -> (Vec<u8>, End) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut rd, mut wr) = stream.split();
    let write = async {
        let _ = wr.write_all(bytes).await;
    };
    let (_, read) = tokio::join!(write, read_to_end(&mut rd));
    read
}

/// Reads until EOF, an error, or [`DEADLINE`].
pub async fn read_to_end(rd: &mut (impl tokio::io::AsyncRead + Unpin)) -> (Vec<u8>, End) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
            Err(_) => return (got, End::Open),
            Ok(Ok(0)) => return (got, End::Eof),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => return (got, End::Reset),
        }
    }
}

/// The status code of the first response in `raw`, if it has a status line.
pub fn status_of(raw: &[u8]) -> Option<u16> {
    let line = raw.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// One HTTP/1.1 response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads exactly one response with a `content-length` body from a buffered raw connection.
pub async fn read_response(
    rd: &mut (impl tokio::io::AsyncBufRead + Unpin),
) -> std::io::Result<RawResponse> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut line = String::new();
    if rd.read_line(&mut line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = status_of(line.as_bytes())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if rd.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l
            .split_once(':')
            .ok_or_else(|| std::io::Error::other(format!("bad header {l:?}")))?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(Ok(0), |(_, v)| v.parse())
        .map_err(std::io::Error::other)?;
    let mut body = vec![0; len];
    rd.read_exact(&mut body).await?;
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}
