//! Errors, and where a failure came from (which decides whether a retry is safe).

use std::net::SocketAddr;

/// Errors the proxy's public API returns.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source} (is another process using the port?)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A worker thread, its event loop or its handle on the listener could not be set up.
    #[error("cannot start the proxy workers for {addr}: {source} (out of threads or file descriptors? lower service.workers or raise the limits)")]
    Workers {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Why forwarding to one backend failed: where it came from, and so whether the request may
/// be sent again elsewhere ([`UpstreamError::retry_safe`]) and what the client is answered.
/// (pingora's `ErrorSource` / `RetryType`, for the one retry invariant 5 allows.)
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// No connection could be made, so no byte of the request reached the app: safe to retry
    /// (its body, unread, is still in its [`BodySlot`](crate::body::BodySlot)).
    #[error("connecting to backend {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: crate::upstream::BoxError,
    },
    /// The request was handed to a connection; the app may have seen it, and retrying could
    /// run it twice.
    #[error("forwarding to backend {addr}: {source}")]
    Forward {
        addr: SocketAddr,
        #[source]
        source: crate::upstream::BoxError,
    },
    /// The backend sent no response head before the deadline; it may have seen the request.
    #[error("backend {addr} sent no response head in time")]
    TimedOut { addr: SocketAddr },
    /// The backend switched protocols without being asked to.
    #[error("backend {addr} answered 101 to a request that asked for no upgrade")]
    UnexpectedUpgrade { addr: SocketAddr },
    /// The backend accepted a WebSocket extension that the relay cannot pass on faithfully.
    #[error("backend {addr} accepted the WebSocket extension `{extension}`, which cutover cannot relay (only permessage-deflate); refused before the 101 reached the client — have the app decline it")]
    UnrelayableExtension { addr: SocketAddr, extension: String },
}

impl UpstreamError {
    /// Whether nothing of the request reached the app, so sending it to another backend
    /// cannot run it twice.
    pub(crate) fn retry_safe(&self) -> bool {
        matches!(self, UpstreamError::Connect { .. })
    }
}
