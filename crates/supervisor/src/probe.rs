//! HTTP probes: `GET path` on the instance's address must answer 2xx within the timeout.
//!
//! A fresh HTTP/1.1 connection per probe, `Connection: close`: a probe must see what a new
//! client would see (can it accept and answer?), not a connection that happened to survive.

use bytes::Bytes;
use http_body_util::{Empty, Full};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// One probe. `Err` says why it failed, for logs and `last_exit`.
pub(crate) async fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, get(addr, path)).await {
        Ok(r) => r,
        Err(_) => Err(format!("GET {path} → timed out after {timeout:?}")),
    }
}

/// `POST path` on the instance (the drain request): a 2xx within `timeout` is success.
pub(crate) async fn post(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, request(http::Method::POST, addr, path)).await {
        Ok(r) => r,
        Err(_) => Err(format!("POST {path} → timed out after {timeout:?}")),
    }
}

/// The handoff call of `strategy = "handoff"` (docs/handoff.md): `POST path` with
/// `{"token": N}` on the instance; a 2xx within `timeout` means it took the active role.
pub async fn handoff(
    addr: SocketAddr,
    path: &str,
    token: u64,
    timeout: Duration,
) -> Result<(), String> {
    let body = Bytes::from(format!("{{\"token\":{token}}}"));
    match tokio::time::timeout(
        timeout,
        request_with(http::Method::POST, addr, path, Full::new(body)),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(format!("POST {path} → no answer within {timeout:?}")),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Result<(), String> {
    request(http::Method::GET, addr, path).await
}

async fn request(method: http::Method, addr: SocketAddr, path: &str) -> Result<(), String> {
    request_with(method, addr, path, Empty::<Bytes>::new()).await
}

async fn request_with<B>(
    method: http::Method,
    addr: SocketAddr,
    path: &str,
    body: B,
) -> Result<(), String>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{method} {path} → connect {addr}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{method} {path} → handshake {addr}: {e}"))?;
    let req = http::Request::builder()
        .method(method.clone())
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONNECTION, "close")
        .header(http::header::USER_AGENT, "cutover-probe")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(|e| format!("bad probe path {path:?}: {e}"))?;
    // Drive the connection in this task rather than spawning it: when the probe is dropped
    // (timeout, instance stopping) the connection goes with it.
    let mut conn = std::pin::pin!(conn);
    let send = sender.send_request(req);
    let mut send = std::pin::pin!(send);
    let resp = tokio::select! {
        biased;
        r = &mut send => r,
        // With `Connection: close` the connection may finish in the same poll that hands the
        // response over: the response is then already waiting, so collect it.
        r = &mut conn => match r {
            Ok(()) => send.await,
            Err(e) => return Err(format!("{method} {path} → {e}")),
        },
    }
    .map_err(|e| format!("{method} {path} → {e}"))?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{method} {path} → answered {status}"))
    }
}
