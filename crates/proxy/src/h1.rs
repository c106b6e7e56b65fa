//! HTTP/1.1 to instances, spoken by the request that uses the connection.
//!
//! hyper's client drives each connection as a task of its own: a request is handed to that
//! task over a channel, and the response head and every piece of its body come back over two
//! more, each hop a wakeup between tasks. Here the request's own task writes the request and
//! reads the response head, and the response body is read off the socket as the client
//! connection writes it out: no task, no channel, no wakeup between the two sides of a proxied
//! request. That was the largest share of cutover's per-request work (see BENCHMARKS.md).
//!
//! What is read from an instance is checked as strictly as what a client sends: a response
//! head that does not parse, is over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] fields, frames its
//! body two ways (`Content-Length` and `Transfer-Encoding`, the response-smuggling shape) or
//! with an invalid length is a 502, never passed on half-parsed; a body that ends early or
//! with a bad chunk fails the client's response rather than being completed with garbage, and
//! its connection is never reused. Those decisions are the pure [`codec`]'s, over the
//! connection's read buffer; this module owns the socket, the timer and the request's upload.

use crate::body::Resendable;
use crate::headers::{Forwarded, Sent};
use bytes::{Bytes, BytesMut};
use http::header::TRANSFER_ENCODING;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, HOST};
use http::Method;
use http_body::{Body, Frame};
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

pub mod codec;

pub(crate) use codec::Decoder;
#[cfg(doc)]
use codec::{MAX_HEAD, MAX_HEADERS};
/// Room made in the read buffer before a read, at first.
const READ_CHUNK: usize = 8 * 1024;
/// The most room made before a read. A connection whose reads fill the room doubles it (up
/// to this), so that a response comes in one read and goes out as one frame, and a read that
/// fills the buffer is not followed by one that finds nothing (`EAGAIN`); one whose reads come
/// back much smaller than the room halves it again, so that a pooled connection does not keep
/// a large buffer for small responses. At 64 KiB a 256 KiB response took 6 reads and 4 writes
/// per request where hyper's client (its adaptive buffer goes to about 400 KiB) took 2 and 2
/// (`bench/syscalls.sh`, BENCHMARKS.md).
const MAX_READ: usize = 512 * 1024;
/// Request body bytes gathered before they are written out.
const MAX_BUFFERED: usize = 64 * 1024;

/// Why an exchange with an instance failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum H1Error {
    #[error("the instance closed the connection before a complete response head")]
    Closed {
        /// Whether any byte of a response had arrived.
        partial: bool,
    },
    /// What the instance sent cannot be passed on (decided by [`codec`]).
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
    #[error("the request body could not be read: {0}")]
    RequestBody(#[source] hyper::Error),
    #[error("the request body did not match its length: {0}")]
    RequestLength(&'static str),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A keep-alive connection to an instance, with the timer that bounds the wait for each
/// response head on it.
///
/// The timer lives as long as the connection: moving a registered timer's deadline later is
/// a compare-and-swap (tokio re-files it only when the old deadline comes), where a timer per
/// request would be filed in and out of the worker's timer wheel each time.
pub(crate) struct Conn {
    io: TcpStream,
    /// Bytes read from the instance and not yet handed on.
    buf: BytesMut,
    /// The request being written: its head, then its body's framing; reused.
    out: Vec<u8>,
    timer: Pin<Box<Sleep>>,
    /// The room to make before a read: [`READ_CHUNK`], doubled by each read that fills it.
    read_size: usize,
}

/// A response head, and how its body is read.
pub(crate) struct Head {
    pub(crate) parts: http::response::Parts,
    pub(crate) body: Decoder,
    /// Whether the connection can carry another request once the body is read.
    pub(crate) keep_alive: bool,
    /// What is left to send of the request, if the instance answered before it had it all.
    pub(crate) upload: Option<Upload>,
}

/// The rest of a request body, sent while the response is read: an instance may answer first
/// and read as it answers (a streaming echo), or refuse an upload early. Either way the body
/// keeps going rather than leaving the instance waiting for it.
pub(crate) struct Upload {
    body: Resendable,
    writer: Writer,
    /// Sending failed; the connection cannot carry another request.
    failed: bool,
}

/// How the request body is framed on the wire, and where writing it stands.
struct Writer {
    framing: Framing,
    /// Bytes of `out` already written.
    pos: usize,
    body_done: bool,
    /// Whether the body was ever polled (a body never polled can be sent again).
    body_touched: bool,
    /// Whether any byte reached the socket.
    wrote: bool,
}

#[derive(Clone, Copy)]
enum Framing {
    /// Bytes the body has left to send.
    Length(u64),
    Chunked,
}

impl Writer {
    fn finished(&self, out: &[u8]) -> bool {
        self.body_done && self.pos == out.len()
    }

    fn data(&mut self, out: &mut Vec<u8>, data: &[u8]) -> Result<(), H1Error> {
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.framing {
            Framing::Length(left) => {
                let n = data.len() as u64;
                if n > *left {
                    return Err(H1Error::RequestLength("longer than its Content-Length"));
                }
                *left -= n;
                out.extend_from_slice(data);
            }
            Framing::Chunked => {
                use std::io::Write;
                // Writing into a Vec cannot fail.
                let _ = write!(out, "{:x}\r\n", data.len());
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
            }
        }
        Ok(())
    }

    fn end(&mut self, out: &mut Vec<u8>, trailers: Option<&HeaderMap>) -> Result<(), H1Error> {
        self.body_done = true;
        match self.framing {
            Framing::Length(0) => Ok(()),
            Framing::Length(_) => Err(H1Error::RequestLength("shorter than its Content-Length")),
            Framing::Chunked => {
                out.extend_from_slice(b"0\r\n");
                for (name, value) in trailers.into_iter().flatten() {
                    put_field(out, name, value);
                }
                out.extend_from_slice(b"\r\n");
                Ok(())
            }
        }
    }
}

fn put_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A request's head as it leaves for an instance, borrowed from the client's request:
/// [`Conn::send`] writes it out from there, so it is neither moved nor copied on its way
/// through the pool, and a request that goes again (another connection, another backend)
/// still has it.
pub(crate) struct Outbound<'a> {
    pub(crate) method: &'a Method,
    /// The request target, in origin form (`/path?query`).
    pub(crate) target: &'a str,
    /// The client's fields, hop-by-hop ones already gone.
    pub(crate) headers: &'a HeaderMap,
    /// Sent as `Host` when `headers` has none (an HTTP/1.0 client that named no host): the
    /// instance's address, as a client connecting to it directly would send.
    pub(crate) default_host: &'a str,
    /// The `X-Forwarded-*` fields, written with the head (see [`Forwarded`]).
    pub(crate) forwarded: Option<&'a Forwarded<'a>>,
}

/// How sending a request on a connection failed.
pub(crate) enum Failed {
    /// The instance cannot have acted on the request (not a byte of it was written, or a
    /// reused connection the instance had already closed dropped an idempotent request with
    /// no body): its body comes back, to go on another connection.
    Unsent(Resendable, H1Error),
    /// The instance may have seen the request.
    Sent(H1Error),
    /// No response head before the deadline.
    TimedOut,
}

impl Conn {
    /// A connection; `deadline` is the first request's.
    pub(crate) fn new(io: TcpStream, deadline: Instant) -> Conn {
        Conn {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            out: Vec::with_capacity(1024),
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            read_size: READ_CHUNK,
        }
    }

    /// Whether the instance closed the connection (or sent bytes nobody asked for). It reads
    /// only when the event loop saw the socket become readable, so an idle connection costs
    /// no system call.
    pub(crate) fn is_closed(&self) -> bool {
        let mut probe = [0u8; 1];
        !matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Whether the connection can carry another request now: nothing left unread on it, and
    /// still open.
    pub(crate) fn reusable(&self) -> bool {
        self.buf.is_empty() && !self.is_closed()
    }

    /// Writes `head` and then `body` as it comes, and waits until `deadline` for the response
    /// head. `reused`: the connection carried a request before, so the instance may have
    /// closed it meanwhile.
    pub(crate) async fn send(
        &mut self,
        head: &Outbound<'_>,
        mut body: Resendable,
        deadline: Instant,
        reused: bool,
    ) -> Result<Head, Failed> {
        self.timer.as_mut().reset(deadline);
        let head_only = *head.method == Method::HEAD;
        let mut w = self.start(head, &body);
        let exchanged = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = self.poll_exchange(cx, &mut body, &mut w, head_only) {
                return Poll::Ready(Some(r));
            }
            if self.timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        match exchanged {
            Some(Ok(mut head)) => {
                if !w.finished(&self.out) {
                    head.upload = Some(Upload {
                        body,
                        writer: w,
                        failed: false,
                    });
                }
                Ok(head)
            }
            Some(Err(e)) => {
                // Only a body never polled can go again: one polled may have lost frames to
                // this attempt's buffer.
                let nothing_sent = !w.wrote && !w.body_touched && matches!(e, H1Error::Io(_));
                let closed_while_idle = reused
                    && !w.body_touched
                    && head.method.is_idempotent()
                    && match &e {
                        H1Error::Closed { partial } => !partial,
                        H1Error::Io(io) => matches!(
                            io.kind(),
                            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                        ),
                        _ => false,
                    };
                if nothing_sent || closed_while_idle {
                    Err(Failed::Unsent(body, e))
                } else {
                    Err(Failed::Sent(e))
                }
            }
            None => Err(Failed::TimedOut),
        }
    }

    /// Encodes the request head into `out`; the body's framing follows from its size hint,
    /// as the client's did (hyper checked the client's framing). The `forwarded` fields are
    /// written here rather than put into the request's map first: one pass, no lookups.
    fn start(&mut self, head: &Outbound<'_>, body: &Resendable) -> Writer {
        let forwarded = head.forwarded;
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(head.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(head.target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut sent = Sent::default();
        for (name, value) in head.headers {
            if forwarded.is_some() {
                sent.note(name);
            }
            // The framing is written from the body, whatever the fields said.
            let replaced = name == CONTENT_LENGTH
                || name == TRANSFER_ENCODING
                || forwarded.is_some_and(|f| f.replaces(name));
            if !replaced {
                put_field(out, name, value);
            }
        }
        if !head.headers.contains_key(HOST) {
            out.extend_from_slice(b"host: ");
            out.extend_from_slice(head.default_host.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        for (name, value) in forwarded
            .map(|f| f.fields(head.headers, sent))
            .into_iter()
            .flatten()
        {
            if let Some(value) = value {
                put_field(out, name, &value);
            }
        }
        let hint = body.size_hint();
        let framing = match hint.exact() {
            Some(0) => {
                // A client that said `Content-Length: 0` (or a method that carries a body)
                // gets it said for it; a GET without a body has none.
                if head.headers.contains_key(CONTENT_LENGTH)
                    || matches!(*head.method, Method::POST | Method::PUT | Method::PATCH)
                {
                    out.extend_from_slice(b"content-length: 0\r\n");
                }
                Framing::Length(0)
            }
            Some(n) => {
                use std::io::Write;
                let _ = write!(out, "content-length: {n}\r\n");
                Framing::Length(n)
            }
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
        };
        out.extend_from_slice(b"\r\n");
        Writer {
            framing,
            pos: 0,
            body_done: hint.exact() == Some(0),
            body_touched: false,
            wrote: false,
        }
    }

    fn poll_exchange(
        &mut self,
        cx: &mut Context<'_>,
        body: &mut Resendable,
        w: &mut Writer,
        head_only: bool,
    ) -> Poll<Result<Head, H1Error>> {
        if !w.finished(&self.out) {
            self.write_some(cx, body, w)?;
        }
        loop {
            if let Some(head) = self.parse_head(head_only)? {
                return Poll::Ready(Ok(head));
            }
            if ready!(self.poll_fill(cx, 0))? == 0 {
                return Poll::Ready(Err(H1Error::Closed {
                    partial: !self.buf.is_empty(),
                }));
            }
        }
    }

    /// Writes as much of the request as can go without waiting (registering for the rest).
    fn write_some(
        &mut self,
        cx: &mut Context<'_>,
        body: &mut Resendable,
        w: &mut Writer,
    ) -> Result<(), H1Error> {
        loop {
            if w.pos > 0 {
                // A partial write: drop what went out, so that a long upload to a slow
                // instance keeps at most `MAX_BUFFERED` (and one frame) in memory.
                self.out.drain(..w.pos);
                w.pos = 0;
            }
            while !w.body_done && self.out.len() < MAX_BUFFERED {
                w.body_touched = true;
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => w.data(&mut self.out, &data)?,
                        Err(frame) => {
                            if let Ok(trailers) = frame.into_trailers() {
                                // The last frame: only a chunked body can carry trailers.
                                w.end(&mut self.out, Some(&trailers))?;
                            }
                        }
                    },
                    Poll::Ready(Some(Err(e))) => return Err(H1Error::RequestBody(e)),
                    Poll::Ready(None) => w.end(&mut self.out, None)?,
                    Poll::Pending => break,
                }
            }
            if w.pos == self.out.len() {
                return Ok(());
            }
            match Pin::new(&mut self.io).poll_write(cx, &self.out[w.pos..]) {
                Poll::Ready(Ok(0)) => {
                    return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into())
                }
                Poll::Ready(Ok(n)) => {
                    w.pos += n;
                    w.wrote = true;
                }
                Poll::Ready(Err(e)) => return Err(e.into()),
                Poll::Pending => return Ok(()),
            }
        }
    }

    /// Reads into `buf`, making room for the rest of a body of `want` known bytes (0: not
    /// known) within [`MAX_READ`], and for at least a quarter of `read_size`.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: u64) -> Poll<std::io::Result<usize>> {
        let want = usize::try_from(want).unwrap_or(MAX_READ).min(MAX_READ);
        if self.buf.is_empty() && self.buf.capacity() > 4 * self.read_size.max(want) {
            // What is left of a large response's buffer, on a connection whose reads have
            // shrunk: let it go rather than keep it, idle in the pool, for small responses.
            self.buf = BytesMut::new();
        }
        let spare = self.buf.capacity() - self.buf.len();
        if spare < self.read_size / 4 || spare < want {
            self.buf.reserve(self.read_size.max(want));
        }
        let room = self.buf.capacity() - self.buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ))?;
        if n == room {
            self.read_size = (self.read_size * 2).min(MAX_READ);
        } else if n < self.read_size / 8 {
            self.read_size = (self.read_size / 2).max(READ_CHUNK);
        }
        Poll::Ready(Ok(n))
    }

    /// The final response head, once it is all in `buf` (interim 1xx heads are skipped).
    fn parse_head(&mut self, head_only: bool) -> Result<Option<Head>, H1Error> {
        Ok(
            codec::parse_response_head(&mut self.buf, head_only)?.map(|h| Head {
                parts: h.parts,
                body: h.body,
                keep_alive: h.keep_alive,
                upload: None,
            }),
        )
    }

    /// The next piece of a response body framed by `dec`, sending more of `upload` first.
    /// Once the request is all sent, `upload` is `None`.
    pub(crate) fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
        dec: &mut Decoder,
        upload: &mut Option<Upload>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let mut sent = false;
        if let Some(up) = upload {
            if !up.failed {
                match self.write_some(cx, &mut up.body, &mut up.writer) {
                    Ok(()) => sent = up.writer.finished(&self.out),
                    // The response may still be whole (an early 413 that closed for reading).
                    Err(e) => {
                        tracing::debug!(error = %e, "the rest of the request could not be sent");
                        up.failed = true;
                    }
                }
            }
        }
        if sent {
            *upload = None;
        }
        loop {
            match dec.decode(&mut self.buf)? {
                codec::Step::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                codec::Step::End(trailers) => {
                    return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
                }
                codec::Step::More => {}
            }
            if ready!(self.poll_fill(cx, dec.wants()))? == 0 {
                return Poll::Ready(dec.at_eof().err().map(|e| Err(e.into())));
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::codec::MAX_HEAD;
    use super::*;
    use http::{Request, StatusCode, Version};
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The request `raw` (as a client would send it) with hyper's parsed body, as the proxy
    /// has it. hyper's `Incoming` cannot be built by hand, so it comes from a real server;
    /// the client side of that connection is returned, to send more of the body later.
    pub(crate) async fn request_from(raw: &[u8]) -> (Request<Resendable>, tokio::net::TcpStream) {
        let (parts, body, client) = request_parts(raw).await;
        (Request::from_parts(parts, Resendable::new(body).0), client)
    }

    /// [`request_from`], in its parts: the head, and hyper's body.
    pub(crate) async fn request_parts(
        raw: &[u8],
    ) -> (http::request::Parts, Incoming, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let tx = Mutex::new(Some(tx));
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                if let Some(tx) = tx.lock().unwrap().take() {
                    let _ = tx.send(req);
                }
                async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<
                        Bytes,
                    >::new(
                    )))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(raw).await.unwrap();
        let (parts, body) = rx.await.unwrap().into_parts();
        (parts, body, client)
    }

    /// An instance on 127.0.0.1 taking one connection: for each step, it reads until the
    /// step's first bytes have arrived, then writes the second; then it closes. Returns
    /// everything it received.
    async fn instance(steps: Vec<(&'static [u8], Vec<u8>)>) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
        let (addr, received, _) = instance_task(steps).await;
        (addr, received)
    }

    /// [`instance`], with its task, which ends once everything was written and the
    /// connection closed.
    async fn instance_task(
        steps: Vec<(&'static [u8], Vec<u8>)>,
    ) -> (SocketAddr, Arc<Mutex<Vec<u8>>>, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let got = received.clone();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let mut seen = 0;
            for (until, answer) in steps {
                loop {
                    let at = got.lock().unwrap()[seen..]
                        .windows(until.len())
                        .position(|w| w == until);
                    if let Some(at) = at {
                        seen += at + until.len();
                        break;
                    }
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.lock().unwrap().extend_from_slice(&buf[..n]),
                    }
                }
                if stream.write_all(&answer).await.is_err() {
                    return;
                }
            }
        });
        (addr, received, task)
    }

    /// Sends `req` on `conn` as the proxy does: its head borrowed, its body handed over.
    pub(crate) async fn send(
        conn: &mut Conn,
        req: Request<Resendable>,
        forwarded: Option<&Forwarded<'_>>,
        deadline: Instant,
        reused: bool,
    ) -> Result<Head, Failed> {
        let (parts, body) = req.into_parts();
        conn.send(&outbound(&parts, forwarded), body, deadline, reused)
            .await
    }

    /// The head of a client's request as the proxy sends it on.
    pub(crate) fn outbound<'a>(
        parts: &'a http::request::Parts,
        forwarded: Option<&'a Forwarded<'a>>,
    ) -> Outbound<'a> {
        Outbound {
            method: &parts.method,
            target: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            headers: &parts.headers,
            default_host: "instance",
            forwarded,
        }
    }

    async fn conn_to(addr: SocketAddr) -> Conn {
        Conn::new(TcpStream::connect(addr).await.unwrap(), far())
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    const GET: &[u8] = b"GET /x HTTP/1.1\r\nhost: shop\r\n\r\n";

    /// The whole body, or the error that ended it.
    async fn read_body(
        conn: &mut Conn,
        head: Head,
    ) -> (Result<Vec<u8>, H1Error>, Option<HeaderMap>) {
        let Head {
            body: mut dec,
            mut upload,
            ..
        } = head;
        let mut body = Vec::new();
        let mut trailers = None;
        loop {
            match std::future::poll_fn(|cx| conn.poll_body(cx, &mut dec, &mut upload)).await {
                None => return (Ok(body), trailers),
                Some(Err(e)) => return (Err(e), trailers),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => body.extend_from_slice(&data),
                    Err(frame) => trailers = frame.into_trailers().ok(),
                },
            }
        }
    }

    /// What a response head said.
    struct Answered {
        parts: http::response::Parts,
        keep_alive: bool,
    }

    /// A response head, its body (or the error that ended it), its trailers, and what the
    /// instance received; or the error that ended the exchange before a head.
    type Exchanged = Result<
        (
            Answered,
            Result<Vec<u8>, H1Error>,
            Option<HeaderMap>,
            Vec<u8>,
        ),
        H1Error,
    >;

    /// Sends `request` to an instance answering `answer`: the head, the body (or its error),
    /// the trailers, and what the instance received.
    async fn exchange(request: &[u8], answer: &[u8]) -> Exchanged {
        exchange_after(request, b"\r\n\r\n", answer).await
    }

    /// [`exchange`], the instance answering once `until` arrived.
    async fn exchange_after(request: &[u8], until: &'static [u8], answer: &[u8]) -> Exchanged {
        let (addr, received) = instance(vec![(until, answer.to_vec())]).await;
        let mut conn = conn_to(addr).await;
        let (req, _client) = request_from(request).await;
        let head = match send(&mut conn, req, None, far(), false).await {
            Ok(head) => head,
            Err(Failed::Sent(e) | Failed::Unsent(_, e)) => return Err(e),
            Err(Failed::TimedOut) => panic!("the instance answers"),
        };
        let answered = Answered {
            parts: head.parts.clone(),
            keep_alive: head.keep_alive,
        };
        let (body, trailers) = read_body(&mut conn, head).await;
        let received = received.lock().unwrap().clone();
        Ok((answered, body, trailers, received))
    }

    #[tokio::test]
    async fn bodies_are_framed_by_length_chunks_or_close() {
        let (head, body, _, received) = exchange(
            GET,
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-app: a\r\n\r\nhello",
        )
        .await
        .unwrap();
        assert_eq!(received, GET, "forwarded as it came");
        assert_eq!(head.parts.status, StatusCode::OK);
        assert_eq!(head.parts.headers["x-app"], "a");
        assert_eq!(body.unwrap(), b"hello");
        assert!(head.keep_alive);

        let (head, body, trailers, _) = exchange(
            GET,
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(body.unwrap(), b"hello world");
        assert_eq!(trailers.unwrap()["x-sum"], "42");
        assert!(head.keep_alive);

        // Neither length nor chunks: the body ends with the connection, which cannot be reused.
        let (head, body, _, _) = exchange(GET, b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
            .await
            .unwrap();
        assert_eq!(body.unwrap(), b"until the end");
        assert!(!head.keep_alive);

        // An interim 100 is skipped; `Connection: close` is honoured.
        let (head, body, _, _) = exchange(
            GET,
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        )
        .await
        .unwrap();
        assert_eq!(head.parts.status, StatusCode::CREATED);
        assert_eq!(body.unwrap(), b"ok");
        assert!(!head.keep_alive);

        // HTTP/1.0 keeps the connection only when it says so.
        let (head, _, _, _) = exchange(GET, b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        assert!(!head.keep_alive);
        assert_eq!(head.parts.version, Version::HTTP_10);

        // No body after a HEAD, a 204 or a 304, whatever `Content-Length` says.
        let (head, body, _, _) = exchange(
            b"HEAD /x HTTP/1.1\r\nhost: shop\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(body.unwrap(), b"");
        assert_eq!(head.parts.headers["content-length"], "1234");
        assert!(head.keep_alive);
        let (_, body, _, _) = exchange(
            GET,
            b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(body.unwrap(), b"");
    }

    /// The `X-Forwarded-*` fields go out once each: a trusted peer's chain extended, its
    /// `X-Forwarded-Proto` and `X-Forwarded-Host` kept.
    #[tokio::test]
    async fn forwarded_fields_are_written_once_each() {
        let (addr, received) = instance(vec![(
            b"\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
        )])
        .await;
        let mut conn = conn_to(addr).await;
        let (req, _client) = request_from(
            b"GET /x HTTP/1.1\r\nhost: shop\r\nx-forwarded-for: 1.1.1.1\r\n\
              x-forwarded-proto: https\r\nx-forwarded-host: orig.example\r\n\r\n",
        )
        .await;
        let client = HeaderValue::from_static("10.0.0.7");
        let host = HeaderValue::from_static("shop");
        let forwarded = Forwarded {
            client: &client,
            host: Some(&host),
            proto: &HeaderValue::from_static("http"),
            // A load balancer in front: its fields are kept, its chain extended.
            trusted: true,
        };
        let sent = send(&mut conn, req, Some(&forwarded), far(), false).await;
        assert!(sent.is_ok(), "answered");
        let received = String::from_utf8(received.lock().unwrap().clone()).unwrap();
        let mut fields: Vec<&str> = received
            .lines()
            .filter(|l| l.starts_with("x-forwarded-"))
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "x-forwarded-for: 1.1.1.1, 10.0.0.7",
                "x-forwarded-host: orig.example",
                "x-forwarded-proto: https",
            ],
            "{received}"
        );
    }

    #[tokio::test]
    async fn malformed_response_heads_are_refused() {
        let big = {
            let mut h = b"HTTP/1.1 200 OK\r\n".to_vec();
            while h.len() <= MAX_HEAD {
                h.extend_from_slice(b"x-filler: ");
                h.extend_from_slice(&[b'f'; 1000]);
                h.extend_from_slice(b"\r\n");
            }
            h.extend_from_slice(b"\r\n");
            h
        };
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "smuggling shape",
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
                "both Content-Length and Transfer-Encoding",
            ),
            (
                "conflicting lengths",
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd".to_vec(),
                "conflicting Content-Length",
            ),
            (
                "signed length",
                b"HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\nabc".to_vec(),
                "invalid Content-Length",
            ),
            ("bad status", b"HTTP/1.1 2000 OK\r\n\r\n".to_vec(), "invalid response head"),
            ("not HTTP", b"SSH-2.0-OpenSSH\r\n\r\n".to_vec(), "invalid response head"),
            (
                "unasked switch",
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n".to_vec(),
                "switched protocols",
            ),
            (
                "chunked HTTP/1.0",
                b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
                "HTTP/1.0",
            ),
            ("oversized head", big, "over 65536 bytes"),
            ("closed early", b"HTTP/1.1 200 O".to_vec(), "before a complete response head"),
        ];
        for (what, answer, says) in cases {
            match exchange(GET, &answer).await {
                Err(e) => assert!(e.to_string().contains(says), "{what}: {e}"),
                Ok((head, ..)) => panic!("{what}: accepted as {}", head.parts.status),
            }
        }
    }

    #[tokio::test]
    async fn broken_bodies_end_in_an_error() {
        let cases: Vec<(&str, &[u8], &str)> = vec![
            (
                "short",
                b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello",
                "5 bytes before the end",
            ),
            (
                "bad chunk size",
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
                "invalid chunk size",
            ),
            (
                "chunk overrun",
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n",
                "not followed by CRLF",
            ),
            (
                "chunked, cut",
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
                "middle of a chunked body",
            ),
        ];
        for (what, answer, says) in cases {
            let (_, body, _, _) = exchange(GET, answer).await.unwrap();
            match body {
                Err(e) => assert!(e.to_string().contains(says), "{what}: {e}"),
                Ok(b) => panic!("{what}: read as {:?}", String::from_utf8_lossy(&b)),
            }
        }
    }

    #[tokio::test]
    async fn request_bodies_are_framed_as_the_client_framed_them() {
        let (_, _, _, received) = exchange_after(
            b"POST /o HTTP/1.1\r\nhost: shop\r\ncontent-length: 5\r\n\r\nhello",
            b"hello",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&received),
            "POST /o HTTP/1.1\r\nhost: shop\r\ncontent-length: 5\r\n\r\nhello"
        );
        let (_, _, _, received) = exchange_after(
            b"POST /o HTTP/1.1\r\nhost: shop\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        )
        .await
        .unwrap();
        let received = String::from_utf8_lossy(&received);
        assert!(
            received.starts_with(
                "POST /o HTTP/1.1\r\nhost: shop\r\ntransfer-encoding: chunked\r\n\r\n"
            ),
            "{received}"
        );
        assert!(received.ends_with("hello\r\n0\r\n\r\n"), "{received}");
        // An empty POST still says so.
        let (_, _, _, received) = exchange(
            b"POST /o HTTP/1.1\r\nhost: shop\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        )
        .await
        .unwrap();
        assert!(String::from_utf8_lossy(&received).ends_with("content-length: 0\r\n\r\n"));
    }

    /// An instance may answer before it has the whole request (a 413 for an upload it will
    /// not take): the answer is passed on at once, and the connection, with half a request on
    /// it, is not reused.
    #[tokio::test]
    async fn an_early_answer_is_passed_on_and_ends_the_connection() {
        let (addr, _) = instance(vec![(
            b"\r\n\r\n",
            b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\n\r\n".to_vec(),
        )])
        .await;
        let mut conn = conn_to(addr).await;
        // The client has sent 5 of its 1,000,000 bytes and keeps the rest.
        let (req, _client) = request_from(
            b"POST /upload HTTP/1.1\r\nhost: shop\r\ncontent-length: 1000000\r\n\r\nhello",
        )
        .await;
        let sent = tokio::time::timeout(
            Duration::from_secs(5),
            send(&mut conn, req, None, far(), false),
        );
        let Ok(head) = sent.await.expect("answered without the rest of the body") else {
            panic!("the early answer is the response");
        };
        assert_eq!(head.parts.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            head.upload.is_some(),
            "the rest of the request is still to go"
        );
        let read = tokio::time::timeout(Duration::from_secs(5), read_body(&mut conn, head));
        assert_eq!(read.await.expect("the response ends").0.unwrap(), b"");
    }

    /// An instance that answers as it reads (a streaming echo) gets the rest of the request
    /// while its response is read: the two directions go on together.
    #[tokio::test]
    async fn a_request_body_keeps_going_while_the_response_streams() {
        let (addr, _) = instance(vec![
            (
                b"\r\n\r\n",
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec(),
            ),
            (b"helloworld", b"5\r\nworld\r\n0\r\n\r\n".to_vec()),
        ])
        .await;
        let mut conn = conn_to(addr).await;
        let (req, mut client) =
            request_from(b"POST /echo HTTP/1.1\r\nhost: shop\r\ncontent-length: 10\r\n\r\nhello")
                .await;
        let Ok(head) = send(&mut conn, req, None, far(), false).await else {
            panic!("the instance answers at once");
        };
        assert!(head.upload.is_some());
        // Only now does the client send the rest, to go out while the response is read.
        client.write_all(b"world").await.unwrap();
        let read = tokio::time::timeout(Duration::from_secs(5), read_body(&mut conn, head));
        let (body, _) = read.await.expect("the echo completes");
        assert_eq!(body.unwrap(), b"helloworld");
    }

    /// An instance that closed a kept-alive connection before the next request reached it
    /// has seen nothing: a request without a body that may be repeated comes back to be sent
    /// on another connection, and any other request fails (it is never sent twice).
    #[tokio::test]
    async fn a_reused_connection_the_instance_closed_gives_back_only_repeatable_requests() {
        for (request, repeatable) in [
            (GET, true),
            (
                &b"POST /o HTTP/1.1\r\nhost: shop\r\ncontent-length: 5\r\n\r\nhello"[..],
                false,
            ),
        ] {
            let mut conn = answered_once().await;
            // The instance has closed after its one answer (its task ended).
            let (req, _client) = request_from(request).await;
            match send(&mut conn, req, None, far(), true).await {
                Err(Failed::Unsent(..)) => {
                    assert!(repeatable, "a POST was offered for a second send");
                }
                Err(Failed::Sent(_)) => assert!(!repeatable, "a repeatable GET failed"),
                Err(Failed::TimedOut) => panic!("the connection is closed, not slow"),
                Ok(_) => panic!("nobody answers on a closed connection"),
            }
        }
    }

    /// A body of unknown length is read in reads that double while they come back full, as
    /// hyper's adaptive buffer does, instead of 8 KiB at a time.
    #[tokio::test]
    async fn reads_grow_while_a_body_of_unknown_length_fills_them() {
        const BODY: usize = 48 * 1024;
        // Neither length nor chunks: the client cannot size its reads from the head.
        let mut answer = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        answer.resize(answer.len() + BODY, b'x');
        let (addr, _, written) = instance_task(vec![(b"\r\n\r\n", answer)]).await;
        let mut conn = conn_to(addr).await;
        let (req, _client) = request_from(GET).await;
        let Head {
            body: mut dec,
            mut upload,
            ..
        } = send(&mut conn, req, None, far(), false)
            .await
            .ok()
            .expect("answered");
        // Everything is in the socket (and the connection closed, which ends the body) before
        // the body is read, so each read can fill its room.
        written.await.unwrap();
        let (mut frames, mut len) = (0, 0);
        while let Some(frame) =
            std::future::poll_fn(|cx| conn.poll_body(cx, &mut dec, &mut upload)).await
        {
            frames += 1;
            len += frame.unwrap().into_data().unwrap().len();
        }
        assert_eq!(len, BODY);
        assert!(
            conn.read_size > READ_CHUNK,
            "reads grew: {}",
            conn.read_size
        );
        // 8 KiB at a time took seven.
        assert!(frames <= 4, "{frames} reads for {BODY} bytes");
    }

    /// A connection whose reads grew for a large response makes them small again once the
    /// responses are small, and does not keep a large buffer for them.
    #[tokio::test]
    async fn reads_shrink_back_after_a_large_response() {
        const BIG: usize = 256 * 1024;
        let mut big = format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\n\r\n").into_bytes();
        big.resize(big.len() + BIG, b'x');
        let small = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec();
        let mut steps = vec![(&b"\r\n\r\n"[..], big)];
        steps.extend((0..12).map(|_| (&b"\r\n\r\n"[..], small.clone())));
        let (addr, _) = instance(steps).await;
        let mut conn = conn_to(addr).await;
        for i in 0..13 {
            let (req, _client) = request_from(GET).await;
            let head = send(&mut conn, req, None, far(), i > 0)
                .await
                .ok()
                .expect("answered");
            let (body, _) = read_body(&mut conn, head).await;
            assert_eq!(body.unwrap().len(), if i == 0 { BIG } else { 2 });
        }
        assert_eq!(conn.read_size, READ_CHUNK, "reads shrank back");
        assert!(
            conn.buf.capacity() <= 4 * READ_CHUNK,
            "a large buffer kept for small responses: {}",
            conn.buf.capacity()
        );
    }

    /// A connection that carried one `GET` to an instance that then closed it.
    async fn answered_once() -> Conn {
        let (addr, _) = instance(vec![(
            b"\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
        )])
        .await;
        let mut conn = conn_to(addr).await;
        let (req, _client) = request_from(GET).await;
        let head = send(&mut conn, req, None, far(), false)
            .await
            .ok()
            .expect("answered");
        assert_eq!(read_body(&mut conn, head).await.0.unwrap(), b"ok");
        conn
    }

    #[tokio::test]
    async fn a_closed_idle_connection_is_seen_as_closed() {
        let conn = answered_once().await;
        cutover_testkit::eventually_holds(
            Duration::from_secs(5),
            "the instance's close to be noticed (it went unnoticed)",
            || !conn.reusable(),
        )
        .await;
    }
}
