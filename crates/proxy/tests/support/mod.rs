//! Test kit: small real upstream servers, a running proxy, a client, condition waits.
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
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let arrived = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let (n, a, r) = (name.to_owned(), arrived.clone(), release.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (n, a, r) = (n.clone(), a.clone(), r.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (n, a, r) = (n.clone(), a.clone(), r.clone());
                        async move { Ok::<_, Infallible>(answer(req, n, a, r).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            name: name.to_owned(),
            arrived,
            release,
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

/// An address nothing listens on: bound, read, released.
pub async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

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
        let recorder = Recorder::new(Duration::from_secs(1), Duration::from_secs(60));
        let proxy = Proxy::new(config, recorder.clone());
        let listener = Proxy::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let p = proxy.clone();
        let done = tokio::spawn(async move {
            p.serve(listener, async {
                let _ = rx.await;
            })
            .await
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
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(DEADLINE, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for: {what}");
}
