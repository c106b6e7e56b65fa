//! The route table and backend choice (DESIGN.md invariants 1 and 2).
//!
//! A [`RouteTable`] is immutable once published; the host replaces it whole. Choosing a pool is
//! a pure function of one table and one client key, so a request that loaded one table can only
//! ever act on that table.
//!
//! Each proxy worker holds its own [`Routes`] over the published table: the table plus what a
//! request needs from it that would otherwise be looked up or shared per request (the pools'
//! recorder handles, the worker's shard of the in-flight counts). A request then writes no
//! memory another worker writes: two cores incrementing one counter or one reference count
//! pass its cache line back and forth on every request (see BENCHMARKS.md).

use cutover_core::stats::Track;
use cutover_core::{sticky, Weight};
use cutover_telemetry::{Recorder, VersionRecorder, MAX_SHARDS};
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
    /// The in-flight count, in one shard per worker (as the telemetry's counters), summed
    /// when read.
    outstanding: Box<[Counter]>,
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
            outstanding: (0..MAX_SHARDS).map(|_| Counter::default()).collect(),
            in_rotation: AtomicBool::new(true),
        }
    }

    /// Requests sent to this instance whose response has not finished streaming, plus open
    /// upgraded tunnels (WebSockets) through it.
    pub fn in_flight(&self) -> usize {
        self.outstanding
            .iter()
            .map(|c| c.0.load(Ordering::Relaxed))
            .sum()
    }

    pub(crate) fn in_rotation(&self) -> bool {
        self.in_rotation.load(Ordering::Relaxed)
    }

    pub(crate) fn set_in_rotation(&self, yes: bool) {
        self.in_rotation.store(yes, Ordering::Relaxed);
    }
}

/// One shard of a count, alone on its cache lines (128 bytes: adjacent-line prefetching pairs
/// lines on x86).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Counter(AtomicUsize);

/// Counts one request (or tunnel) against a backend for as long as it lives, in the shard of
/// the worker that made it.
#[derive(Debug)]
pub(crate) struct InFlight(BackendRef);

impl InFlight {
    pub(crate) fn new(backend: BackendRef) -> InFlight {
        backend.counter().fetch_add(1, Ordering::Relaxed);
        InFlight(backend)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.counter().fetch_sub(1, Ordering::Relaxed);
    }
}

/// One worker's view of a published [`RouteTable`] (see the module docs).
pub(crate) struct Routes {
    pub(crate) table: Arc<RouteTable>,
    /// The stable and the canary pool's recorders, looked up once per table.
    recorders: [Option<VersionRecorder>; 2],
    /// The worker's shard of each backend's in-flight count.
    shard: usize,
}

impl Routes {
    pub(crate) fn new(table: Arc<RouteTable>, recorder: &Recorder, worker: usize) -> Routes {
        let recorders = [
            table.stable.as_ref().map(|p| recorder.track(&p.version)),
            table
                .canary
                .as_ref()
                .map(|(p, _)| recorder.track(&p.version)),
        ];
        Routes {
            table,
            recorders,
            shard: worker % MAX_SHARDS,
        }
    }

    /// The recorder of `track`'s pool; `None` when the table has no such pool.
    pub(crate) fn recorder(&self, track: Track) -> Option<&VersionRecorder> {
        self.recorders[track_index(track)].as_ref()
    }

    /// `track`'s backend number `index`, as a handle that outlives the request's borrow of
    /// the table; `None` when there is no such backend.
    pub(crate) fn backend(self: &Arc<Self>, track: Track, index: usize) -> Option<BackendRef> {
        self.table.pool(track)?.backends.get(index)?;
        Some(BackendRef {
            routes: self.clone(),
            track,
            index,
        })
    }
}

fn track_index(track: Track) -> usize {
    match track {
        Track::Stable => 0,
        Track::Canary => 1,
    }
}

/// A backend of a worker's [`Routes`]. Cloning it counts a reference to the worker's own
/// `Routes`, which only that worker's thread touches, not to the `Backend` every worker shares.
#[derive(Clone)]
pub(crate) struct BackendRef {
    routes: Arc<Routes>,
    track: Track,
    index: usize,
}

impl BackendRef {
    /// `backend` as the only backend of a stable pool, seen by worker 0.
    #[cfg(test)]
    pub(crate) fn alone(backend: Arc<Backend>) -> BackendRef {
        let table = RouteTable {
            salt: 0,
            stable: Some(Pool {
                version: "v".into(),
                backends: vec![backend],
            }),
            canary: None,
            fencing: None,
        };
        let recorder = Recorder::new(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(1),
        );
        Arc::new(Routes::new(Arc::new(table), &recorder, 0))
            .backend(Track::Stable, 0)
            .expect("one backend")
    }

    /// The track of the pool it is in.
    pub(crate) fn track(&self) -> Track {
        self.track
    }

    fn counter(&self) -> &AtomicUsize {
        &self.outstanding[self.routes.shard].0
    }
}

impl std::ops::Deref for BackendRef {
    type Target = Backend;

    fn deref(&self) -> &Backend {
        // Checked by `Routes::backend`, the only constructor, on a table that cannot change.
        let pool = self.routes.table.pool(self.track).expect("checked pool");
        &pool.backends[self.index]
    }
}

impl std::fmt::Debug for BackendRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
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
    /// The stable pool. An empty pool (its instances are starting, or not ready) means that
    /// stable's clients get 503, *not* the canary: the canary never receives more than its
    /// weight (DESIGN.md invariant 10). `None` means there is no stable at all: then every
    /// client goes to the canary (the host records that as a decision).
    pub stable: Option<Pool>,
    /// The canary pool and its share of clients.
    pub canary: Option<(Pool, Weight)>,
    /// A singleton's fencing token (`strategy = "handoff"`, DESIGN.md invariant 7): sent as
    /// `X-Cutover-Fencing-Token` with every request to the stable pool (a client's own
    /// header of that name is replaced), so the holder can pass it to a downstream that
    /// rejects stale holders.
    pub fencing: Option<u64>,
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

    /// The pool that serves a client with `key`: the one it is meant for; a canary client
    /// goes to stable when the canary has no backend, but a stable client never goes to the
    /// canary because stable's pool is empty (the blast radius, invariant 10); `None`: 503.
    pub(crate) fn route(&self, key: &[u8]) -> Option<(Track, &Pool)> {
        let (track, pool) = self.intended(key)?;
        if !pool.backends.is_empty() {
            return Some((track, pool));
        }
        self.spill(track).filter(|(_, p)| !p.backends.is_empty())
    }

    /// Where a client of `track` may go instead: canary → stable only.
    fn spill(&self, track: Track) -> Option<(Track, &Pool)> {
        match track {
            Track::Canary => self.other(track),
            Track::Stable => None,
        }
    }

    fn other(&self, track: Track) -> Option<(Track, &Pool)> {
        match track {
            Track::Stable => self.canary.as_ref().map(|(p, _)| (Track::Canary, p)),
            Track::Canary => self.stable.as_ref().map(|p| (Track::Stable, p)),
        }
    }

    /// A backend for the one retry after `failed` refused a connection: another backend of
    /// the same pool, else one of the other pool; never `failed`'s address again. (A
    /// request nothing received is re-sent rather than failed, even to the canary: this is
    /// the one way a canary gets more than its weight, one refused connection at a time.) The backend
    /// is its track and its position in that pool's list.
    pub(crate) fn retry_target(&self, track: Track, failed: SocketAddr) -> Option<(Track, usize)> {
        let same = self.pool(track).map(|p| (track, p));
        [same, self.other(track)]
            .into_iter()
            .flatten()
            .find_map(|(t, p)| pick_backend(&p.backends, Some(failed)).map(|i| (t, i)))
    }

    pub(crate) fn pool(&self, track: Track) -> Option<&Pool> {
        match track {
            Track::Stable => self.stable.as_ref(),
            Track::Canary => self.canary.as_ref().map(|(p, _)| p),
        }
    }
}

/// Power of two choices on outstanding requests: two distinct random backends, the less busy
/// one wins. Nearly as good as least-loaded without scanning, and without the herd that pure
/// least-loaded causes when many requests read the same counts at once. Backends at `skip`'s
/// address are never chosen. Returns the chosen backend's position in `backends`.
pub(crate) fn pick_backend(backends: &[Arc<Backend>], skip: Option<SocketAddr>) -> Option<usize> {
    let eligible = |(_, b): &(usize, &Arc<Backend>)| Some(b.addr) != skip;
    let n = backends.iter().enumerate().filter(eligible).count();
    let nth = |i: usize| backends.iter().enumerate().filter(eligible).nth(i);
    match n {
        0 => None,
        1 => nth(0).map(|(i, _)| i),
        _ => {
            let mut rng = rand::thread_rng();
            let a = rng.gen_range(0..n);
            let mut b = rng.gen_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (nth(a)?, nth(b)?);
            Some(
                if b.1.in_flight() < a.1.in_flight() {
                    b
                } else {
                    a
                }
                .0,
            )
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
            fencing: None,
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
    fn an_empty_canary_falls_back_to_stable_but_an_empty_stable_never_to_the_canary() {
        // Stable's instances are starting: its clients get 503, the canary keeps its weight.
        assert!(table(&[], &[2], 0).route(b"k").is_none());
        assert!(table(&[], &[2], 10).route(b"k").is_none());
        assert_eq!(
            table(&[1], &[], 10_000).route(b"k").unwrap().0,
            Track::Stable
        );
        // No stable at all (the host decided so, and recorded it): the canary serves.
        let no_stable = RouteTable {
            stable: None,
            ..table(&[], &[2], 0)
        };
        assert_eq!(no_stable.route(b"k").unwrap().0, Track::Canary);
        assert!(table(&[], &[], 5_000).route(b"k").is_none());
        assert!(RouteTable::default().route(b"k").is_none());
        assert_eq!(table(&[], &[], 0).intended(b"k").unwrap().1.version, "v1");
    }

    /// `t` as worker `worker` sees it.
    fn routes(t: RouteTable, worker: usize) -> Arc<Routes> {
        let second = std::time::Duration::from_secs(1);
        let recorder = Recorder::new(second, second * 10);
        Arc::new(Routes::new(Arc::new(t), &recorder, worker))
    }

    #[test]
    fn p2c_prefers_the_less_busy_backend() {
        let r = routes(table(&[1, 2], &[], 0), 0);
        let _busy = InFlight::new(r.backend(Track::Stable, 0).unwrap());
        let p = r.table.stable.as_ref().unwrap();
        for _ in 0..100 {
            assert_eq!(pick_backend(&p.backends, None), Some(1));
        }
        assert_eq!(p.backends[0].in_flight(), 1);
    }

    #[test]
    fn p2c_spreads_over_idle_backends_and_honours_skip() {
        let p = pool("v1", &[1, 2, 3]);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..300 {
            let i = pick_backend(&p.backends, Some(([127, 0, 0, 1], 2).into())).unwrap();
            seen.insert(p.backends[i].addr.port());
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![1, 3]);
        assert!(pick_backend(&[], None).is_none());
    }

    #[test]
    fn retry_prefers_same_pool_then_the_other() {
        let failed = ([127, 0, 0, 1], 1).into();
        let port = |t: &RouteTable, (track, i): (Track, usize)| {
            (track, t.pool(track).unwrap().backends[i].addr.port())
        };
        let t = table(&[1, 2], &[3], 0);
        let target = t.retry_target(Track::Stable, failed).unwrap();
        assert_eq!(port(&t, target), (Track::Stable, 2));
        let t = table(&[1], &[3], 0);
        let target = t.retry_target(Track::Stable, failed).unwrap();
        assert_eq!(port(&t, target), (Track::Canary, 3));
        assert_eq!(t.pool(target.0).unwrap().version, "v2");
        let t = table(&[1], &[], 0);
        assert!(t.retry_target(Track::Stable, failed).is_none());
    }

    #[test]
    fn in_flight_guards_count_in_their_workers_shard_and_release() {
        let t = table(&[1], &[2], 5_000);
        let (w0, w1) = (routes(t.clone(), 0), routes(t, 1));
        let b = w0.backend(Track::Stable, 0).unwrap();
        assert!(w0.backend(Track::Stable, 1).is_none());
        let g1 = InFlight::new(b.clone());
        let g2 = InFlight::new(w1.backend(Track::Stable, 0).unwrap());
        let g3 = InFlight::new(w1.backend(Track::Stable, 0).unwrap());
        // Both workers' views share the instance; each counts in its own shard.
        assert_eq!(b.in_flight(), 3);
        assert_eq!(b.outstanding[0].0.load(Ordering::Relaxed), 1);
        assert_eq!(b.outstanding[1].0.load(Ordering::Relaxed), 2);
        drop(g1);
        drop(g2);
        assert_eq!(b.in_flight(), 1);
        drop(g3);
        assert_eq!(b.in_flight(), 0);
        assert_eq!(w1.backend(Track::Canary, 0).unwrap().addr.port(), 2);
        assert_eq!(
            w1.recorder(Track::Canary).map(|r| r.totals().requests),
            Some(0)
        );
    }
}
