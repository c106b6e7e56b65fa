//! A bare hyper reverse proxy, the floor cutover's proxy is measured against in
//! `bench/run.sh`: what hyper costs on this machine with cutover's shape and none of its
//! work. Like cutover it runs one single-threaded event loop per worker on one shared
//! listener, keeps a pool of keep-alive HTTP/1.1 connections per worker, and puts a
//! connection back only once its response body was read to the end. Unlike cutover it does
//! no routing, no header rewriting, no timeouts, no telemetry and no draining.
//!
//! Usage: `hyper-floor LISTEN UPSTREAM [WORKERS]` (workers: one per CPU by default).

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One worker's idle upstream connections.
type Pool = Rc<RefCell<Vec<SendRequest<Incoming>>>>;

/// A response body that returns its connection to the pool once read to the end.
struct Pooled {
    inner: Incoming,
    conn: Option<(SendRequest<Incoming>, Pool)>,
    done: bool,
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.done = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if self.done || self.inner.is_end_stream() {
            if let Some((sender, pool)) = self.conn.take() {
                pool.borrow_mut().push(sender);
            }
        }
    }
}

async fn forward(
    pool: Pool,
    upstream: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Pooled>, Box<dyn std::error::Error + Send + Sync>> {
    let mut sender = loop {
        let idle = pool.borrow_mut().pop();
        match idle {
            Some(mut s) => {
                if s.ready().await.is_ok() {
                    break s;
                }
            }
            None => {
                let stream = tokio::net::TcpStream::connect(upstream).await?;
                stream.set_nodelay(true)?;
                let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::task::spawn_local(async move {
                    let _ = conn.await;
                });
                break s;
            }
        }
    };
    let resp = sender.send_request(req).await?;
    Ok(resp.map(|inner| Pooled {
        inner,
        conn: Some((sender, pool)),
        done: false,
    }))
}

/// One worker: accepts from the shared listener and serves on this thread only.
async fn serve(listener: std::net::TcpListener, upstream: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let pool: Pool = Rc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let pool = pool.clone();
        tokio::task::spawn_local(async move {
            let service =
                hyper::service::service_fn(move |req| forward(pool.clone(), upstream, req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        return Err("usage: hyper-floor LISTEN UPSTREAM [WORKERS]".into());
    };
    let upstream: SocketAddr = upstream.parse()?;
    let workers = match args.get(3) {
        Some(n) => n.parse()?,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let listener = std::net::TcpListener::bind(listen.as_str())?;
    listener.set_nonblocking(true)?;
    let mut threads = Vec::new();
    for _ in 0..workers {
        let listener = listener.try_clone()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        threads.push(std::thread::spawn(move || {
            tokio::task::LocalSet::new().block_on(&runtime, serve(listener, upstream))
        }));
    }
    for t in threads {
        t.join().map_err(|_| "a worker panicked")??;
    }
    Ok(())
}
