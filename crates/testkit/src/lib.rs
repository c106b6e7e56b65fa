//! Test support for cutover's own test suites. A dev-dependency only: nothing here ships.
//!
//! What it holds, and why it is one crate rather than a `tests/common` per crate:
//! - [`upstream()`]: a real HTTP/1.1 server on 127.0.0.1:0 that answers by path and records
//!   what it was sent (`upstream().route("/", "hello").spawn().await`); [`dead_addr`], where
//!   connecting is refused; [`silent`], a server that accepts and never answers.
//! - [`eventually`] / [`eventually_holds`] / [`eventually_blocking`]: the one way a test waits for a condition, with a
//!   deadline and a failure that says what was awaited and what was last seen. Tests never
//!   sleep and hope; they wait on a condition and fail loudly when it does not come.
//! - [`demo_app`]: where `cargo test --workspace` put the demo-app binary, the real child
//!   process end-to-end tests run.
//! - [`ConfigBuilder`]: a cutover config as a TOML table, edited with setters that panic on a
//!   key that is not there (or is already there), so a test's config cannot silently drift
//!   from what the test means. `ConfigBuilder::e2e()` is the time-compressed end-to-end config.
//!
//! It depends on `cutover-core` only for the config type it can check a build against; it
//! knows nothing else of cutover's internals.

mod config;
mod demo;
mod upstream;
mod wait;

pub use config::ConfigBuilder;
pub use demo::demo_app;
pub use upstream::{dead_addr, silent, upstream, Reply, Seen, Silent, Upstream, UpstreamBuilder};
pub use wait::{eventually, eventually_blocking, eventually_holds, POLL};
