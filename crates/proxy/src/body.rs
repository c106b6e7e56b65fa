//! Body wrappers: a request body that can be sent again if it was never read, and a response
//! body that keeps its backend (or its HTTP/2 stream) counted as in flight until it is fully sent.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

/// The body of every response the proxy sends: the backend's, or a short one of its own.
pub type ProxyBody = UnsyncBoxBody<Bytes, BodyError>;

/// Why a response body failed part-way: the instance's connection broke, or it sent a body
/// that does not match its framing. The client's response is cut off, never completed.
#[derive(Debug)]
pub struct BodyError(Box<dyn std::error::Error + Send + Sync>);

impl BodyError {
    pub(crate) fn new(e: impl std::error::Error + Send + Sync + 'static) -> BodyError {
        BodyError(Box::new(e))
    }
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// The client's request body, parked in a shared slot until the upstream connection first
/// reads it.
///
/// The HTTP client consumes the request it is given, even when it then fails to connect. The
/// slot lets the proxy take the body back after a connect error: if the body is still in the
/// slot, no byte of it was sent, so a retry on another backend is safe and complete.
pub(crate) struct Resendable {
    slot: Arc<Slot>,
    taken: Option<Incoming>,
}

/// What a [`Resendable`] and its [`BodySlot`] share (one allocation per request).
struct Slot {
    parked: Mutex<Option<Incoming>>,
    /// Set when reading the *client's* body failed (bad chunking, a client that went away):
    /// the request then fails through the client's fault, not the instance's.
    client_failed: AtomicBool,
}

impl Resendable {
    /// A body and the handle to take it back with.
    pub(crate) fn new(body: Incoming) -> (Resendable, BodySlot) {
        let slot = Arc::new(Slot {
            parked: Mutex::new(Some(body)),
            client_failed: AtomicBool::new(false),
        });
        (
            Resendable {
                slot: slot.clone(),
                taken: None,
            },
            BodySlot(slot),
        )
    }

    fn with_parked<T>(&self, f: impl FnOnce(&Incoming) -> T) -> Option<T> {
        self.slot
            .parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(f)
    }
}

/// The proxy's handle on a [`Resendable`] body.
pub(crate) struct BodySlot(Arc<Slot>);

impl BodySlot {
    /// The body, if nothing has read from it yet.
    pub(crate) fn take_unread(&self) -> Option<Incoming> {
        self.0
            .parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Whether reading the client's body failed.
    pub(crate) fn client_failed(&self) -> bool {
        self.0.client_failed.load(Ordering::Relaxed)
    }
}

impl Body for Resendable {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.taken.is_none() {
            let parked = self
                .slot
                .parked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            self.taken = parked;
        }
        match self.taken.as_mut() {
            Some(body) => {
                let polled = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(Some(Err(_))) = &polled {
                    self.slot.client_failed.store(true, Ordering::Relaxed);
                }
                polled
            }
            // Taken back by the proxy for a retry: this attempt is over anyway.
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.taken {
            Some(b) => b.is_end_stream(),
            None => self.with_parked(Body::is_end_stream).unwrap_or(true),
        }
    }

    // Forwarded so that hyper frames the upstream request like the client's (no body, a
    // known length, or chunked) rather than chunking everything.
    fn size_hint(&self) -> SizeHint {
        match &self.taken {
            Some(b) => b.size_hint(),
            None => self
                .with_parked(Body::size_hint)
                .unwrap_or_else(|| SizeHint::with_exact(0)),
        }
    }
}

/// A response body that holds `guard` until hyper drops it — after the last byte was written,
/// or when the client went away: its backend's in-flight count, or its HTTP/2 stream's.
pub(crate) struct Guarded<B, G> {
    inner: B,
    _guard: G,
}

impl<B, G> Guarded<B, G> {
    pub(crate) fn new(inner: B, guard: G) -> Guarded<B, G> {
        Guarded {
            inner,
            _guard: guard,
        }
    }
}

impl<B: Body + Unpin, G: Unpin> Body for Guarded<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
