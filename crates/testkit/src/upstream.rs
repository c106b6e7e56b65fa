//! Small real HTTP/1.1 servers on 127.0.0.1:0 for tests: an upstream that answers by path and
//! records what it was sent, an address where nothing listens, and a server that never answers.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One request as an [`Upstream`] saw it, body read in full.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// The path without the query.
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Seen {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What an [`Upstream`] answers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Reply {
    /// `status` with `body` as text/plain.
    pub fn new(status: u16, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.into(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
}

type Handler = dyn Fn(&Seen, usize) -> Reply + Send + Sync;

/// Builds an [`Upstream`]: `upstream().route("/", "hello").spawn().await`.
#[must_use]
pub struct UpstreamBuilder {
    routes: BTreeMap<String, Reply>,
    fallback: Option<Arc<Handler>>,
}

impl std::fmt::Debug for UpstreamBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBuilder")
            .field("routes", &self.routes.keys())
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

/// An upstream that answers 404 to everything until given routes.
pub fn upstream() -> UpstreamBuilder {
    UpstreamBuilder {
        routes: BTreeMap::new(),
        fallback: None,
    }
}

impl UpstreamBuilder {
    /// `GET`/any method on exactly `path` answers 200 with `body`.
    pub fn route(self, path: &str, body: impl Into<Bytes>) -> Self {
        self.reply(path, Reply::new(200, body))
    }

    /// Any method on exactly `path` answers `reply`.
    pub fn reply(mut self, path: &str, reply: Reply) -> Self {
        assert!(
            self.routes.insert(path.to_string(), reply).is_none(),
            "route {path} given twice"
        );
        self
    }

    /// Requests no route matches are answered by `f(request, n)`, `n` counting every request
    /// the upstream has received, this one included (1 for the first).
    pub fn otherwise(mut self, f: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Self {
        self.fallback = Some(Arc::new(f));
        self
    }

    /// Binds 127.0.0.1:0 and serves until the [`Upstream`] is dropped.
    pub async fn spawn(self) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("a bound address");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let routes = Arc::new(self.routes);
        let fallback = self.fallback;
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (routes, fallback, log) = (routes.clone(), fallback.clone(), log.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (routes, fallback, log) =
                            (routes.clone(), fallback.clone(), log.clone());
                        async move {
                            let req = read(req).await;
                            let n = {
                                let mut log = log.lock().unwrap();
                                log.push(req.clone());
                                log.len()
                            };
                            let reply = match (routes.get(&req.path), &fallback) {
                                (Some(r), _) => r.clone(),
                                (None, Some(f)) => f(&req, n),
                                (None, None) => Reply::new(404, "no route"),
                            };
                            let mut resp = Response::builder().status(reply.status);
                            for (k, v) in &reply.headers {
                                resp = resp.header(k, v);
                            }
                            Ok::<_, Infallible>(resp.body(Full::new(reply.body)).unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream { addr, seen, task }
    }
}

async fn read(req: Request<Incoming>) -> Seen {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    }
}

/// A running test upstream; stops serving when dropped.
#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests arrived.
    pub fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address nothing listens on: bound on 127.0.0.1:0, read, released. Connecting is refused
/// at once (unless another test binds the same port in between, which the kernel's ephemeral
/// port rotation makes unlikely).
pub async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    listener.local_addr().expect("a bound address")
}

/// A server that accepts connections and never answers (it holds them open until dropped), to
/// exercise a client's timeouts.
#[derive(Debug)]
pub struct Silent {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

/// Starts a [`Silent`] server on 127.0.0.1:0.
pub async fn silent() -> Silent {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("a bound address");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    Silent { addr, task }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn exchange(addr: SocketAddr, req: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn routes_answer_and_requests_are_recorded() {
        let up = upstream()
            .route("/", "hello")
            .otherwise(|seen, n| Reply::new(if n == 2 { 500 } else { 202 }, seen.body.clone()))
            .spawn()
            .await;
        let a = exchange(
            up.addr,
            "GET /?x=1 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(a.starts_with("HTTP/1.1 200") && a.ends_with("hello"), "{a}");
        let b = exchange(
            up.addr,
            "POST /hook HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi",
        )
        .await;
        assert!(b.starts_with("HTTP/1.1 500") && b.ends_with("hi"), "{b}");
        let seen = up.seen();
        assert_eq!(up.hits(), 2);
        assert_eq!(seen[0].query.as_deref(), Some("x=1"));
        assert_eq!(
            (seen[1].method.as_str(), seen[1].path.as_str()),
            ("POST", "/hook")
        );
        assert_eq!(seen[1].header("Host"), Some("t"));
    }

    #[tokio::test]
    async fn without_a_route_it_is_404() {
        let up = upstream().spawn().await;
        let a = exchange(
            up.addr,
            "GET /x HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(a.starts_with("HTTP/1.1 404"), "{a}");
    }

    #[tokio::test]
    async fn a_dead_address_refuses_and_a_silent_one_accepts() {
        let dead = dead_addr().await;
        assert!(tokio::net::TcpStream::connect(dead).await.is_err());
        let quiet = silent().await;
        let mut s = tokio::net::TcpStream::connect(quiet.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(std::time::Duration::from_millis(100), s.read(&mut buf));
        assert!(read.await.is_err(), "a silent server answered");
    }
}
