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

/// Why forwarding to one backend failed; decides retry and the response the client gets.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// No connection could be made, so no byte of the request reached the app: safe to retry.
    #[error("connecting to backend {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: crate::upstream::BoxError,
    },
    /// The request may have reached the app; retrying could run it twice.
    #[error("forwarding to backend {addr}: {source}")]
    Forward {
        addr: SocketAddr,
        #[source]
        source: crate::upstream::BoxError,
    },
    /// The backend switched protocols without being asked to.
    #[error("backend {addr} answered 101 to a request that asked for no upgrade")]
    UnexpectedUpgrade { addr: SocketAddr },
    /// The backend accepted a WebSocket extension that the relay cannot pass on faithfully.
    #[error("backend {addr} accepted the WebSocket extension `{extension}`, which cutover cannot relay (only permessage-deflate); refused before the 101 reached the client — have the app decline it")]
    UnrelayableExtension { addr: SocketAddr, extension: String },
}
