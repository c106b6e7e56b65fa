//! The route table and backend choice (DESIGN.md invariants 1 and 2).
//!
//! A [`RouteTable`] is immutable once published; the host replaces it whole. Choosing a pool is
//! a pure function of one table and one client key, so a request that loaded one table can only
//! ever act on that table.

use cutover_core::stats::Track;
use cutover_core::{sticky, Weight};
use rand::Rng;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// One running instance of a version.
///
/// The host keeps one `Arc<Backend>` per instance and reuses it in every table it builds, so
/// that the in-flight count follows the instance across table swaps (drain reads it).
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    /// The instance's id, for logs.
    pub id: String,
    /// `addr` as a URI authority, formatted once rather than per request.
    pub(crate) authority: Option<http::uri::Authority>,
    outstanding: AtomicUsize,
    /// Whether the current table routes to it; a connection to an instance out of rotation
    /// is closed rather than kept idle.
    in_rotation: AtomicBool,
}

impl Backend {
    pub fn new(id: impl Into<String>, addr: SocketAddr) -> Backend {
        Backend {
            addr,
            id: id.into(),
            // Always `Some`: an IP and a port are a valid authority.
            authority: http::uri::Authority::try_from(addr.to_string()).ok(),
            outstanding: AtomicUsize::new(0),
            in_rotation: AtomicBool::new(true),
        }
    }

    /// Requests sent to this instance whose response has not finished streaming, plus open
    /// upgraded tunnels (WebSockets) through it.
    pub fn in_flight(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    pub(crate) fn in_rotation(&self) -> bool {
        self.in_rotation.load(Ordering::Relaxed)
    }

    pub(crate) fn set_in_rotation(&self, yes: bool) {
        self.in_rotation.store(yes, Ordering::Relaxed);
    }
}

/// Counts one request (or tunnel) against a backend for as long as it lives.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Backend>);

impl InFlight {
    pub(crate) fn new(backend: Arc<Backend>) -> InFlight {
        backend.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight(backend)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The ready instances of one version.
#[derive(Debug, Clone)]
pub struct Pool {
    /// The version name telemetry is recorded under.
    pub version: String,
    pub backends: Vec<Arc<Backend>>,
}

/// Where traffic goes: published whole by [`crate::Proxy::set_table`].
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// The rollout's sticky salt; constant within one rollout (see [`cutover_core::sticky`]).
    pub salt: u64,
    pub stable: Option<Pool>,
    /// The canary pool and its share of clients.
    pub canary: Option<(Pool, Weight)>,
}

impl RouteTable {
    /// The pool a client with `key` is meant for (whether or not it has backends), and its
    /// track; `None` without any pool.
    pub(crate) fn intended(&self, key: &[u8]) -> Option<(Track, &Pool)> {
        let stable = self.stable.as_ref().map(|p| (Track::Stable, p));
        let canary = self.canary.as_ref().map(|(p, _)| (Track::Canary, p));
        let want_canary = self
            .canary
            .as_ref()
            .is_some_and(|(_, w)| sticky::is_canary(self.salt, key, *w));
        if want_canary {
            canary.or(stable)
        } else {
            stable.or(canary)
        }
    }

    /// The pool that serves a client with `key`: the one it is meant for, else the other one
    /// when that has no backends; `None` when no pool has a backend.
    pub(crate) fn route(&self, key: &[u8]) -> Option<(Track, &Pool)> {
        let (track, pool) = self.intended(key)?;
        if !pool.backends.is_empty() {
            return Some((track, pool));
        }
        self.other(track).filter(|(_, p)| !p.backends.is_empty())
    }

    fn other(&self, track: Track) -> Option<(Track, &Pool)> {
        match track {
            Track::Stable => self.canary.as_ref().map(|(p, _)| (Track::Canary, p)),
            Track::Canary => self.stable.as_ref().map(|p| (Track::Stable, p)),
        }
    }

    /// A backend for the one retry after `failed` refused a connection: another backend of
    /// the same pool, else one of the other pool; never `failed`'s address again.
    pub(crate) fn retry_target(
        &self,
        track: Track,
        failed: SocketAddr,
    ) -> Option<(Track, &Pool, Arc<Backend>)> {
        let same = self.pool(track).map(|p| (track, p));
        [same, self.other(track)]
            .into_iter()
            .flatten()
            .find_map(|(t, p)| pick_backend(&p.backends, Some(failed)).map(|b| (t, p, b)))
    }

    fn pool(&self, track: Track) -> Option<&Pool> {
        match track {
            Track::Stable => self.stable.as_ref(),
            Track::Canary => self.canary.as_ref().map(|(p, _)| p),
        }
    }
}

/// Power of two choices on outstanding requests: two distinct random backends, the less busy
/// one wins. Nearly as good as least-loaded without scanning, and without the herd that pure
/// least-loaded causes when many requests read the same counts at once. Backends at `skip`'s
/// address are never chosen.
pub(crate) fn pick_backend(
    backends: &[Arc<Backend>],
    skip: Option<SocketAddr>,
) -> Option<Arc<Backend>> {
    let eligible = |b: &&Arc<Backend>| Some(b.addr) != skip;
    let n = backends.iter().filter(eligible).count();
    let nth = |i: usize| backends.iter().filter(eligible).nth(i);
    match n {
        0 => None,
        1 => nth(0).cloned(),
        _ => {
            let mut rng = rand::thread_rng();
            let a = rng.gen_range(0..n);
            let mut b = rng.gen_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (nth(a)?, nth(b)?);
            Some(if b.in_flight() < a.in_flight() { b } else { a }.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(version: &str, ports: &[u16]) -> Pool {
        Pool {
            version: version.into(),
            backends: ports
                .iter()
                .map(|&p| {
                    Arc::new(Backend::new(
                        format!("{version}-{p}"),
                        ([127, 0, 0, 1], p).into(),
                    ))
                })
                .collect(),
        }
    }

    fn table(stable: &[u16], canary: &[u16], bp: u16) -> RouteTable {
        RouteTable {
            salt: 42,
            stable: Some(pool("v1", stable)),
            canary: Some((pool("v2", canary), Weight::from_bp(bp).unwrap())),
        }
    }

    #[test]
    fn full_and_zero_weight() {
        assert_eq!(
            table(&[1], &[2], 10_000).route(b"k").unwrap().0,
            Track::Canary
        );
        assert_eq!(table(&[1], &[2], 0).route(b"k").unwrap().0, Track::Stable);
    }

    #[test]
    fn empty_pool_falls_back_to_the_other() {
        assert_eq!(table(&[], &[2], 0).route(b"k").unwrap().0, Track::Canary);
        assert_eq!(
            table(&[1], &[], 10_000).route(b"k").unwrap().0,
            Track::Stable
        );
        assert!(table(&[], &[], 5_000).route(b"k").is_none());
        assert!(RouteTable::default().route(b"k").is_none());
        assert_eq!(table(&[], &[], 0).intended(b"k").unwrap().1.version, "v1");
    }

    #[test]
    fn p2c_prefers_the_less_busy_backend() {
        let p = pool("v1", &[1, 2]);
        let _busy = InFlight::new(p.backends[0].clone());
        for _ in 0..100 {
            assert_eq!(pick_backend(&p.backends, None).unwrap().addr.port(), 2);
        }
        assert_eq!(in_flight_of(&p, 0), 1);
    }

    fn in_flight_of(p: &Pool, i: usize) -> usize {
        p.backends[i].in_flight()
    }

    #[test]
    fn p2c_spreads_over_idle_backends_and_honours_skip() {
        let p = pool("v1", &[1, 2, 3]);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..300 {
            let b = pick_backend(&p.backends, Some(([127, 0, 0, 1], 2).into())).unwrap();
            seen.insert(b.addr.port());
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![1, 3]);
        assert!(pick_backend(&[], None).is_none());
    }

    #[test]
    fn retry_prefers_same_pool_then_the_other() {
        let t = table(&[1, 2], &[3], 0);
        let (track, _, b) = t
            .retry_target(Track::Stable, ([127, 0, 0, 1], 1).into())
            .unwrap();
        assert_eq!((track, b.addr.port()), (Track::Stable, 2));
        let t = table(&[1], &[3], 0);
        let (track, pool, b) = t
            .retry_target(Track::Stable, ([127, 0, 0, 1], 1).into())
            .unwrap();
        assert_eq!(
            (track, pool.version.as_str(), b.addr.port()),
            (Track::Canary, "v2", 3)
        );
        let t = table(&[1], &[], 0);
        assert!(t
            .retry_target(Track::Stable, ([127, 0, 0, 1], 1).into())
            .is_none());
    }

    #[test]
    fn in_flight_guard_counts_and_releases() {
        let b = Arc::new(Backend::new("x", ([127, 0, 0, 1], 1).into()));
        let g1 = InFlight::new(b.clone());
        let g2 = InFlight::new(b.clone());
        assert_eq!(b.in_flight(), 2);
        drop(g1);
        drop(g2);
        assert_eq!(b.in_flight(), 0);
    }
}
