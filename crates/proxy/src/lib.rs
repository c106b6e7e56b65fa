//! # cutover-proxy: the embedded L7 data plane
//!
//! The proxy clients talk to during a rollout. Each request loads the current [`RouteTable`]
//! once, derives a sticky client key, sends the client to the canary iff its position is below
//! the canary weight ([`cutover_core::sticky`]), picks one of that version's backends by
//! power-of-two-choices on outstanding requests, forwards the request over pooled keep-alive
//! connections, and records the outcome per version in [`cutover_telemetry::Recorder`].
//! The listener is served by [`ProxyConfig::workers`] threads, each a single-threaded event
//! loop with its own pool of upstream connections (`upstream`), so a request never crosses
//! threads; connections are spread evenly over the workers. Each worker also keeps its own view
//! of the table (`table::Routes`: the pools' recorder handles, its shard of the in-flight
//! counts), so that a request writes nothing another worker writes. HTTP/1.1 to instances is
//! spoken by the request's own task (`h1`), not by a connection task behind a channel, and what
//! an instance sends is checked as strictly as what a client sends. Each client connection is driven
//! by `conn`, which also closes idle HTTP/2 connections (hyper has no timer for them), and
//! ends with a lingering close (`linger`: FIN first, then reading until the client closes, so
//! that no reset destroys the last response).
//! A request must name exactly one valid host (`Host`, an absolute-form target, HTTP/2's
//! `:authority`) or it is answered 400 before it is routed; `X-Forwarded-*` are believed only
//! from [`ProxyConfig::trusted_proxies`] and replaced for anyone else (`headers`).
//! WebSockets are relayed frame by frame (so a drain can end them with close code 1012 without
//! losing acks or executing orders twice, see `ws`), each frame byte for byte, so that
//! permessage-deflate and subprotocols pass as browsers negotiate them (an instance accepting
//! any other extension is refused before the `101`); any other HTTP/1.1 `Upgrade` is passed
//! through as a byte tunnel.
//!
//! The public listener serves plaintext ([`Proxy::serve`]: HTTP/1.1, and HTTP/2 with prior
//! knowledge) or TLS ([`Proxy::serve_tls`]: HTTP/2 or HTTP/1.1 by ALPN, the certificate
//! swappable at run time through [`CertReloader`]). Instances are reached over HTTP/1.1, or
//! HTTP/2 with prior knowledge when [`ProxyConfig::upstream_protocol`] says so.
//!
//! Invariants of DESIGN.md it upholds: (1) a request sees the old table or the new one, never
//! a mix — the table is one atomic pointer, loaded once per request (a worker's view is
//! rebuilt when the pointer changes, and a request keeps the view it started with); (2) sticky monotonicity —
//! the canary decision is a threshold on a fixed hash; (4) drain — in-flight requests and
//! tunnels are counted per backend, shutdown lets in-flight requests finish, and
//! [`Proxy::drain_websockets`] closes a backend's WebSockets with 1012 after a quiet period; (5) only a
//! request that never reached an app (connect failure) is retried on another backend, once; and
//! on a kept-alive connection the instance closed just as the request went out, only an
//! idempotent request without a body is sent again, on another connection (RFC 9112 §9.3.1).
//!
//! It must never decide anything about the rollout (weights, health, promotion come from the
//! host via [`Proxy::set_table`]), never add headers of its own to responses, never send a
//! request with a body or a non-idempotent method twice, and never panic on what a client or
//! backend sends.
#![forbid(unsafe_code)]

mod body;
mod cold;
mod conn;
mod error;
mod h1;
mod headers;
mod linger;
mod proxy;
mod table;
mod tls;
mod upstream;
mod ws;

pub use body::{BodyError, ProxyBody};
pub use error::ProxyError;
/// The HTTP/1.1 response codec over a buffer (no IO), public for the fuzz targets in `fuzz/`.
pub use h1::codec as h1_codec;
pub use proxy::{default_workers, Proxy, ProxyConfig, Serving, ShutdownOutcome, FENCING_TOKEN};
pub use table::{Backend, Pool, RouteTable};
pub use tls::{load_server_config, CertReloader, Reload, SharedServerConfig, TlsError, ALPN};
pub use ws::WsDrainReport;
