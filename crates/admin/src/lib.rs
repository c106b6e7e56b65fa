//! # cutover-admin: the admin API
//!
//! An authenticated JSON-over-HTTP server that the single-host runtime binds on loopback
//! ([`serve`]), and the client the CLI uses to talk to it ([`AdminClient`]).
//!
//! This crate only translates: requests are parsed and validated here, then handed to a
//! [`Handler`] that the host implements. It must never decide anything about a rollout itself and
//! never serve any data without the bearer token (DESIGN.md, security defaults: "Admin API on
//! 127.0.0.1 only, bearer token required, file mode 0600"): only `/healthz`, the dashboard's
//! page and embedded assets (the same in every binary) and its login are open. Bad input is
//! refused with a JSON error naming the field before the handler sees it (invariant 9: it never
//! half-applies).
//!
//! The dashboard (`dashboard.rs`, docs/dashboard.md) trades the token for an `HttpOnly`,
//! `SameSite=Strict` session cookie; a state change made with the cookie must carry the
//! session's CSRF token. It follows the host's live feed ([`Handler::events`]) as server-sent
//! events.
//!
//! Every route is in [`ROUTES`], from which the router is built; `docs/admin-api.yaml` is the
//! OpenAPI reference, tested to list exactly those routes.
//!
//! It also receives Prometheus Alertmanager's webhook (`POST /v1/alerts`, [`AlertmanagerPayload`])
//! under the same token, so an external alert can stop a rollout; what an alert means is the
//! host's decision, not this crate's.
#![forbid(unsafe_code)]

mod alerts;
mod api;
mod client;
mod dashboard;
mod server;
mod tls;
mod token;

pub use alerts::{Alert, AlertStatus, AlertmanagerPayload};
pub use api::{
    check_version, ApiError, DeployRequest, HistoryQuery, LoginRequest, LogsChunk, LogsQuery, Verb,
    VerbRequest, LOGS_CHUNK,
};
pub use client::{AdminClient, ClientError};
pub use dashboard::{CSRF_HEADER, SESSION_COOKIE};
pub use server::{router, serve, BoxFuture, Endpoint, Handler, Method, Route, BODY_LIMIT, ROUTES};
pub use tls::{client_tls, serve_tls, ClientTlsError, ServerConfigSource};
pub use token::{ensure_token, AdminError, TOKEN_FILE};
