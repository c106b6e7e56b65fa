//! # cutover-telemetry: what the proxy measured, per version
//!
//! The proxy records every request it handles — status, latency to response headers, and
//! whether the proxy itself failed it — under the name of the version that served it. This crate
//! keeps those numbers over a sliding window (what the judge reads each evaluation interval,
//! as [`cutover_core::TrackStats`]) and as lifetime totals (for the summary and the exposition).
//!
//! It must never block a request: recording is a handful of atomic adds, with a lock taken only
//! when a time slot is reused. Those adds land in the recording thread's own shard of counters
//! (see [`pin_thread`]), so proxy workers on different cores never write the same cache line;
//! reads sum the shards. It never reads the OS clock directly: time is
//! [`tokio::time::Instant`], so tests with a paused runtime control every clock. It decides
//! nothing; judging the numbers is `cutover-core`'s job.
//!
//! [`Recorder::render`] writes the lifetime numbers in the Prometheus text exposition format, so
//! the proxy's own view of each version can be scraped and compared with the application's.
#![forbid(unsafe_code)]

use cutover_core::histogram::{bucket_index, BUCKETS};
use cutover_core::{Histogram, Track, TrackStats};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// Status codes are counted in a flat array indexed by the code: hyper only produces
/// `100..=999`, and an array keeps the hot path lock-free where a map would need a lock.
const CODES: usize = 1000;

/// The largest latency summed into a slot, in microseconds.
const MAX_MICROS: u64 = 1 << 40;

/// Upper bounds (inclusive, seconds) of the exposition's `http_request_duration_seconds`
/// buckets; `+Inf` follows implicitly.
///
/// The conventional Prometheus bounds plus 0.8: the blueprint's abort threshold is 800 ms, and
/// with a bucket bound exactly on a threshold, `histogram_quantile` compared with 0.8 is exact
/// there instead of interpolated between 0.5 and 1.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.8, 1.0, 2.5, 5.0, 10.0,
];

/// [`LATENCY_BUCKETS`] in nanoseconds, so the hot path compares integers, and exactly: a bound
/// in f64 seconds (0.001 is not representable) could misplace a latency that sits on it.
const LATENCY_BOUNDS_NANOS: [u64; 14] = [
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    800_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// The exposition bucket (index into the non-cumulative counts, the last being `+Inf`) of a
/// latency: the number of bounds it exceeds. A bound is inclusive (`le`), so a latency equal to
/// it stays in its bucket. 14 compares and adds with no data-dependent branch: cheaper than a
/// binary search's mispredictions, and it runs on every request.
fn latency_bucket(nanos: u64) -> usize {
    LATENCY_BOUNDS_NANOS
        .iter()
        .map(|&bound| usize::from(nanos > bound))
        .sum()
}

/// At most this many shards per version. Each holds a whole ring of slots (about 12 KiB per
/// slot), so a version costs `shards × ring × 12 KiB`: with the host's 25-slot ring, about
/// 300 KiB per shard. Threads beyond this share shards, two or more to one.
pub const MAX_SHARDS: usize = 8;

thread_local! {
    /// The shard this thread records into; assigned on first use unless [`pin_thread`] chose.
    static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Threads that never called [`pin_thread`] get shards in turn.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

/// Makes the calling thread record into shard `index` (modulo the number of shards). A proxy
/// worker calls it with its own number, so that workers never share a shard (and so never
/// write the same counters) as long as there are no more of them than shards. Threads that do
/// not call it are spread over the shards in the order they first record.
pub fn pin_thread(index: usize) {
    SHARD.with(|s| s.set(Some(index)));
}

fn thread_shard() -> usize {
    SHARD.with(|s| match s.get() {
        Some(i) => i,
        None => {
            let i = NEXT_SHARD.fetch_add(1, Ordering::Relaxed);
            s.set(Some(i));
            i
        }
    })
}

/// Shards for a new recorder: one per CPU, up to [`MAX_SHARDS`].
fn default_shards() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(MAX_SHARDS)
}

/// Per-version recorders sharing one clock origin and one slot layout.
///
/// Cheap to clone; all clones see the same versions.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<RecorderInner>,
}

struct RecorderInner {
    layout: Layout,
    shards: usize,
    versions: RwLock<HashMap<String, VersionRecorder>>,
}

/// How time maps onto the ring of slots; shared by every version of one [`Recorder`] so that
/// all versions' windows cover the same instants.
#[derive(Clone, Copy)]
struct Layout {
    origin: Instant,
    slot: Duration,
    /// `slot` in nanoseconds (at least 1), for a 64-bit division per record rather than a
    /// 128-bit one.
    slot_nanos: u64,
    /// Number of slots in the ring: enough for `retention` plus the slot being filled.
    ring: usize,
    retention: Duration,
}

impl Layout {
    /// The slot number ("epoch") that `at` falls into.
    fn epoch_at(&self, at: Instant) -> u64 {
        self.epoch_of_elapsed(at.saturating_duration_since(self.origin))
    }

    fn epoch_of_elapsed(&self, elapsed: Duration) -> u64 {
        // Saturating at 2^64 ns, ~584 years after the recorder was made.
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX) / self.slot_nanos
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("slot", &self.inner.layout.slot)
            .field("retention", &self.inner.layout.retention)
            .field("versions", &self.versions())
            .finish()
    }
}

impl Recorder {
    /// A recorder whose windows have a resolution of `slot` and reach back at most `retention`.
    ///
    /// A zero `slot` is treated as 1 ms and a `retention` shorter than one slot as one slot,
    /// so that no argument can make recording panic.
    pub fn new(slot: Duration, retention: Duration) -> Recorder {
        Recorder::with_shards(slot, retention, default_shards())
    }

    /// [`Recorder::new`] with `shards` shards per version (at least 1): each recording thread
    /// adds into one of them (see [`pin_thread`]).
    pub fn with_shards(slot: Duration, retention: Duration, shards: usize) -> Recorder {
        let slot = if slot.is_zero() {
            Duration::from_millis(1)
        } else {
            slot
        };
        let retention = retention.max(slot);
        let slots = retention.as_nanos().div_ceil(slot.as_nanos());
        // +1: the slot currently being filled is partial, so covering `retention` of history
        // needs one more than retention / slot.
        let ring = usize::try_from(slots).unwrap_or(usize::MAX / 2) + 1;
        Recorder {
            inner: Arc::new(RecorderInner {
                layout: Layout {
                    origin: Instant::now(),
                    slot,
                    slot_nanos: u64::try_from(slot.as_nanos()).unwrap_or(u64::MAX).max(1),
                    ring,
                    retention,
                },
                shards: shards.max(1),
                versions: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// The recorder for `version`, created on first use.
    pub fn track(&self, version: &str) -> VersionRecorder {
        {
            let map = self
                .inner
                .versions
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(v) = map.get(version) {
                return v.clone();
            }
        }
        let mut map = self
            .inner
            .versions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        map.entry(version.to_owned())
            .or_insert_with(|| VersionRecorder::new(self.inner.layout, self.inner.shards))
            .clone()
    }

    /// `version`'s traffic over the last `window`; empty stats for a version never seen.
    pub fn window(&self, version: &str, window: Duration) -> TrackStats {
        let map = self
            .inner
            .versions
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        match map.get(version) {
            Some(v) => v.window(window),
            None => TrackStats::default(),
        }
    }

    /// The versions that have a recorder, sorted.
    pub fn versions(&self) -> Vec<String> {
        let map = self
            .inner
            .versions
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<String> = map.keys().cloned().collect();
        v.sort();
        v
    }

    /// Drops `version`'s numbers (a garbage-collected version). Handles already given out keep
    /// working but are detached: a later [`Recorder::track`] starts from zero.
    pub fn forget(&self, version: &str) {
        self.inner
            .versions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(version);
    }

    /// The slot width windows are measured in.
    pub fn slot(&self) -> Duration {
        self.inner.layout.slot
    }

    /// How far back a window can reach.
    pub fn retention(&self) -> Duration {
        self.inner.layout.retention
    }

    /// The exposition of every version the recorder knows: http_request_duration_seconds
    /// (histogram, cumulative `le` buckets incl. +Inf, _sum, _count) and
    /// http_requests_total{code} (counter), each labelled service, version and track
    /// (`track_of(version)`; versions it returns None for get track="none").
    ///
    /// HELP and TYPE lines once per metric family; label values escaped (`\\`, `\"`, `\n`);
    /// versions in name order, codes ascending. The numbers are lifetime totals (monotone, as
    /// Prometheus counters must be), not the sliding window the judge reads. Appends to `out`.
    ///
    /// Each version is read once, bucket by bucket, while requests may still be recorded:
    /// `_count` is the `+Inf` bucket so the histogram is self-consistent, while `_sum` and the
    /// code counters may be a request or two ahead or behind (Prometheus tolerates that).
    /// `_sum` has microsecond resolution per request; bucket placement is exact to the
    /// nanosecond.
    pub fn render(
        &self,
        service: &str,
        track_of: &dyn Fn(&str) -> Option<Track>,
        out: &mut String,
    ) {
        let versions: Vec<(String, VersionRecorder)> = {
            let map = self
                .inner
                .versions
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let service = escape_label(service);
        // Read outside the lock: a slow scrape must not hold up `track` on the request path.
        let mut rows: Vec<(String, Exposition)> = versions
            .into_iter()
            .map(|(name, v)| {
                let labels = format!(
                    "service=\"{}\",version=\"{}\",track=\"{}\"",
                    service,
                    escape_label(&name),
                    track_of(&name).map_or("none", Track::as_str)
                );
                (labels, v.exposition(name))
            })
            .collect();
        rows.sort_by(|a, b| a.1.version.cmp(&b.1.version));

        // `fmt::Write` for `String` cannot fail.
        let _ = writeln!(
            out,
            "# HELP http_request_duration_seconds Latency to response headers of requests \
             through the proxy, since it started."
        );
        let _ = writeln!(out, "# TYPE http_request_duration_seconds histogram");
        for (labels, e) in &rows {
            let mut cumulative = 0u64;
            for (i, n) in e.latency_buckets.iter().enumerate() {
                cumulative += n;
                let _ = match LATENCY_BUCKETS.get(i) {
                    Some(le) => writeln!(
                        out,
                        "http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                    ),
                    None => writeln!(
                        out,
                        "http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {cumulative}"
                    ),
                };
            }
            let sum = e.latency_sum_micros as f64 / 1e6;
            let _ = writeln!(out, "http_request_duration_seconds_sum{{{labels}}} {sum}");
            let _ = writeln!(
                out,
                "http_request_duration_seconds_count{{{labels}}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP http_requests_total Requests through the proxy by status code, since it \
             started."
        );
        let _ = writeln!(out, "# TYPE http_requests_total counter");
        for (labels, e) in &rows {
            for (code, n) in &e.by_code {
                let _ = writeln!(out, "http_requests_total{{{labels},code=\"{code}\"}} {n}");
            }
        }
    }
}

/// A label value as the Prometheus text format wants it: backslash, double quote and newline
/// escaped. The one escaping every exposition in the workspace uses (the proxy's, cutover's own
/// `/metrics`, demo-app's); borrowed when there is nothing to escape, as there almost never is.
pub fn escape_label(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    let mut s = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s.into()
}

/// One version's lifetime numbers as [`Recorder::render`] writes them.
struct Exposition {
    version: String,
    /// Non-cumulative, the last being `+Inf`.
    latency_buckets: [u64; LATENCY_BOUNDS_NANOS.len() + 1],
    latency_sum_micros: u64,
    by_code: BTreeMap<u16, u64>,
}

/// One version's counters. Cheap to clone (an `Arc`); safe to record from many tasks at once.
#[derive(Clone)]
pub struct VersionRecorder {
    inner: Arc<VersionInner>,
}

impl std::fmt::Debug for VersionRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionRecorder")
            .field("totals", &self.totals())
            .finish()
    }
}

struct VersionInner {
    layout: Layout,
    shards: Box<[Shard]>,
}

/// One thread's (or a few threads') counters of a version. Aligned to keep two shards off the
/// same cache line (128 bytes: adjacent-line prefetching pairs lines on x86).
#[repr(align(128))]
struct Shard {
    slots: Box<[Slot]>,
    total_requests: AtomicU64,
    total_errors: AtomicU64,
    by_code: Box<[AtomicU64]>,
    /// Lifetime latency counts per exposition bucket, *not* cumulative (one add per request;
    /// [`Recorder::render`] accumulates them). The last is `+Inf`.
    latency_buckets: [AtomicU64; LATENCY_BOUNDS_NANOS.len() + 1],
    /// Lifetime latency sum in microseconds: at a u64 it wraps only after ~584 000 years of
    /// summed latency, where nanoseconds would after ~584 years (months for a busy proxy).
    latency_sum_micros: AtomicU64,
}

/// One slot of the ring.
///
/// Race safety, and why it is done this way: a slot is reused every `ring` slots, so it must be
/// zeroed before the first sample of its new epoch lands in it. Writers read `epoch` (one atomic
/// load); if it is the epoch they are recording into they just add. Otherwise — only on rollover,
/// once per slot width per version — they take the slot's tiny `reset` mutex, re-check, zero the
/// counters, and only then publish the new epoch with `Release`. A writer for the new epoch
/// therefore either sees the new epoch (and its adds land after the zeroing) or waits on the
/// mutex; it can never add into a slot that is later zeroed under it, unless it stalled for the
/// whole retention period between its load and its add, in which case one sample lands one ring
/// later — an accepted error, far below the histogram's own. Readers read the epoch before and
/// after summing and skip a slot that rolled over in between, so a window never mixes epochs.
/// The alternative, a lock per record, would serialise every request of a version on one mutex.
struct Slot {
    /// The epoch the counters belong to; `u64::MAX` means never used.
    epoch: AtomicU64,
    reset: Mutex<()>,
    requests: AtomicU64,
    errors: AtomicU64,
    sum_micros: AtomicU64,
    buckets: Box<[AtomicU64]>,
}

const UNUSED: u64 = u64::MAX;

impl Slot {
    fn new() -> Slot {
        Slot {
            epoch: AtomicU64::new(UNUSED),
            reset: Mutex::new(()),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Makes the slot belong to `epoch`; `false` when it already belongs to a later epoch (the
    /// caller's sample is older than the retention and is dropped).
    fn claim(&self, epoch: u64) -> bool {
        let current = self.epoch.load(Ordering::Acquire);
        if current == epoch {
            return true;
        }
        if current != UNUSED && current > epoch {
            return false;
        }
        let _guard = self.reset.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.epoch.load(Ordering::Acquire);
        if current == epoch {
            return true;
        }
        if current != UNUSED && current > epoch {
            return false;
        }
        self.requests.store(0, Ordering::Relaxed);
        self.errors.store(0, Ordering::Relaxed);
        self.sum_micros.store(0, Ordering::Relaxed);
        for b in self.buckets.iter() {
            b.store(0, Ordering::Relaxed);
        }
        self.epoch.store(epoch, Ordering::Release);
        true
    }
}

/// Lifetime counts for one version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Every request recorded.
    pub requests: u64,
    /// 5xx responses plus requests the proxy failed.
    pub errors: u64,
    /// Requests by exact status code (the class is `code / 100`); only codes seen are present.
    pub by_code: BTreeMap<u16, u64>,
}

impl Shard {
    fn new(ring: usize) -> Shard {
        Shard {
            slots: (0..ring).map(|_| Slot::new()).collect(),
            total_requests: AtomicU64::new(0),
            total_errors: AtomicU64::new(0),
            by_code: (0..CODES).map(|_| AtomicU64::new(0)).collect(),
            latency_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_micros: AtomicU64::new(0),
        }
    }
}

impl VersionRecorder {
    fn new(layout: Layout, shards: usize) -> VersionRecorder {
        VersionRecorder {
            inner: Arc::new(VersionInner {
                layout,
                shards: (0..shards).map(|_| Shard::new(layout.ring)).collect(),
            }),
        }
    }

    /// Counts one request. It is an error when `status >= 500` or the proxy failed it
    /// (`failed_at_proxy`: no upstream answer, the proxy generated the response).
    pub fn record(&self, status: u16, latency: Duration, failed_at_proxy: bool) {
        self.record_at(Instant::now(), status, latency, failed_at_proxy);
    }

    /// [`VersionRecorder::record`] of a request that started at `started` and ends now: one
    /// read of the clock for both the latency and the slot.
    pub fn record_since(&self, status: u16, started: Instant, failed_at_proxy: bool) {
        let now = Instant::now();
        self.record_at(
            now,
            status,
            now.saturating_duration_since(started),
            failed_at_proxy,
        );
    }

    fn record_at(&self, now: Instant, status: u16, latency: Duration, failed_at_proxy: bool) {
        let shards = &self.inner.shards;
        let inner = &shards[thread_shard() % shards.len()];
        let error = status >= 500 || failed_at_proxy;
        // Capped (at ~12 days) so that summing into the slot's u64 cannot wrap around.
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .min(MAX_MICROS);

        inner.total_requests.fetch_add(1, Ordering::Relaxed);
        if error {
            inner.total_errors.fetch_add(1, Ordering::Relaxed);
        }
        let code = usize::from(status).min(CODES - 1);
        inner.by_code[code].fetch_add(1, Ordering::Relaxed);
        // The bucket from nanoseconds, not the truncated microseconds: 800.0004 ms is above
        // the 0.8 bound and must not land in it.
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        inner.latency_buckets[latency_bucket(nanos)].fetch_add(1, Ordering::Relaxed);
        inner
            .latency_sum_micros
            .fetch_add(micros, Ordering::Relaxed);

        let epoch = self.inner.layout.epoch_at(now);
        let slot = &inner.slots[(epoch % inner.slots.len() as u64) as usize];
        if !slot.claim(epoch) {
            return;
        }
        slot.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        slot.sum_micros.fetch_add(micros, Ordering::Relaxed);
        slot.buckets[bucket_index(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// The requests recorded in the slots that overlap the last `window` (clamped to the
    /// retention), i.e. at least `window` and less than `window` + one slot of history.
    pub fn window(&self, window: Duration) -> TrackStats {
        let layout = self.inner.layout;
        let window = window.min(layout.retention);
        let elapsed = Instant::now().saturating_duration_since(layout.origin);
        let current = layout.epoch_of_elapsed(elapsed);
        let first = layout.epoch_of_elapsed(elapsed.saturating_sub(window));
        self.epochs(first, current)
    }

    /// The requests recorded in the slots of epochs `first..=last` still in the ring.
    fn epochs(&self, first: u64, last: u64) -> TrackStats {
        let inner = &*self.inner;
        let current = last;
        let mut requests = 0u64;
        let mut errors = 0u64;
        let mut sum_micros = 0u64;
        let mut counts = vec![0u64; BUCKETS];
        let mut slot_counts = Vec::with_capacity(BUCKETS);
        for slot in inner.shards.iter().flat_map(|shard| shard.slots.iter()) {
            let epoch = slot.epoch.load(Ordering::Acquire);
            if epoch == UNUSED || epoch < first || epoch > current {
                continue;
            }
            let r = slot.requests.load(Ordering::Relaxed);
            let e = slot.errors.load(Ordering::Relaxed);
            let s = slot.sum_micros.load(Ordering::Relaxed);
            slot_counts.clear();
            slot_counts.extend(slot.buckets.iter().map(|b| b.load(Ordering::Relaxed)));
            if slot.epoch.load(Ordering::Acquire) != epoch {
                // Rolled over while we read it: it now holds newer samples that belong to a
                // later window, and the ones we wanted are gone either way.
                continue;
            }
            requests += r;
            errors += e;
            sum_micros = sum_micros.saturating_add(s);
            for (c, x) in counts.iter_mut().zip(&slot_counts) {
                *c += x;
            }
        }
        let latency = Histogram::from_counts(counts, sum_micros).unwrap_or_default();
        // Counters are read one by one while writers add, so in-flight records may show in one
        // counter and not another; keep the stats self-consistent for the judge.
        let requests = requests.max(latency.count());
        TrackStats {
            requests,
            errors: errors.min(requests),
            latency,
        }
    }

    /// The sum of one counter over the shards.
    fn sum(&self, counter: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.inner
            .shards
            .iter()
            .map(|shard| counter(shard).load(Ordering::Relaxed))
            .sum()
    }

    fn exposition(&self, version: String) -> Exposition {
        Exposition {
            version,
            latency_buckets: std::array::from_fn(|i| self.sum(|s| &s.latency_buckets[i])),
            latency_sum_micros: self.sum(|s| &s.latency_sum_micros),
            by_code: self.totals().by_code,
        }
    }

    /// Lifetime totals since this recorder was created.
    pub fn totals(&self) -> Totals {
        let by_code = (0..CODES)
            .filter_map(|code| {
                let n = self.sum(|s| &s.by_code[code]);
                // `code < CODES = 1000`, so it fits.
                (n > 0).then_some((code as u16, n))
            })
            .collect();
        Totals {
            requests: self.sum(|s| &s.total_requests),
            errors: self.sum(|s| &s.total_errors),
            by_code,
        }
    }
}

/// At most about this many chunks per version in a [`History`]: collected more often than
/// `reach / MAX_CHUNKS`, the last chunk grows instead (the look-back's edge is then that
/// coarse).
pub const MAX_CHUNKS: u64 = 64;

/// Longer look-backs than the recorder's ring holds, kept off the request path.
///
/// The ring holds one window at full resolution; keeping `max_lookback` (ten windows by
/// default) at that resolution would cost ten times the memory per version and shard. Instead
/// the driver calls [`History::collect`] once per evaluation interval: it folds each version's
/// slots that finished since the last call into one histogram (a *chunk*), and drops chunks
/// older than `reach`. A look-back is then the chunks that start inside it plus the slots not
/// yet folded, read from the ring. Memory: at most `reach / interval` and about
/// [`MAX_CHUNKS`] chunks of one histogram (12 KiB) each per version; the request path does
/// exactly what it did before.
///
/// A look-back starts on a chunk boundary, so it covers between `d - interval` and `d` (plus
/// the slot being filled); it never reaches further back than asked. If `collect` is not
/// called for longer than the ring's retention, the slots in between are lost to the
/// look-back (it then holds fewer requests, never wrong ones).
#[derive(Debug)]
pub struct History {
    reach: Duration,
    versions: HashMap<String, VecDeque<Chunk>>,
}

#[derive(Debug)]
struct Chunk {
    /// Epochs `first..end` of the recorder's layout.
    first: u64,
    end: u64,
    stats: TrackStats,
}

impl History {
    /// A history that keeps look-backs up to `reach`.
    pub fn new(reach: Duration) -> History {
        History {
            reach,
            versions: HashMap::new(),
        }
    }

    /// Folds every version's slots that finished since the last call into one chunk, and
    /// forgets chunks older than `reach` and versions the recorder forgot.
    pub fn collect(&mut self, rec: &Recorder) {
        let layout = rec.inner.layout;
        let elapsed = Instant::now().saturating_duration_since(layout.origin);
        let current = layout.epoch_of_elapsed(elapsed);
        let oldest = layout.epoch_of_elapsed(elapsed.saturating_sub(self.reach));
        let ring_start = current.saturating_sub(layout.ring as u64 - 1);
        let grain = (layout.epoch_of_elapsed(self.reach) / MAX_CHUNKS).max(1);
        let versions: Vec<(String, VersionRecorder)> = {
            let map = rec
                .inner
                .versions
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        self.versions
            .retain(|name, _| versions.iter().any(|(n, _)| n == name));
        for (name, v) in versions {
            let chunks = self.versions.entry(name).or_default();
            let first = chunks.back().map_or(ring_start, |c| c.end).max(ring_start);
            if first < current {
                let stats = v.epochs(first, current - 1);
                match chunks.back_mut() {
                    // Collected more often than `reach / MAX_CHUNKS`: grow the last chunk, so
                    // that a millisecond interval cannot make the history grow unbounded.
                    Some(last) if last.end == first && last.end - last.first < grain => {
                        last.stats.merge(&stats);
                        last.end = current;
                    }
                    _ => chunks.push_back(Chunk {
                        first,
                        end: current,
                        stats,
                    }),
                }
            }
            while chunks.front().is_some_and(|c| c.first < oldest) {
                chunks.pop_front();
            }
        }
    }

    /// `version`'s traffic over the last `d` (at most `reach`): the chunks that start inside
    /// it and the slots since the last [`History::collect`].
    pub fn window(&self, rec: &Recorder, version: &str, d: Duration) -> TrackStats {
        let layout = rec.inner.layout;
        let elapsed = Instant::now().saturating_duration_since(layout.origin);
        let current = layout.epoch_of_elapsed(elapsed);
        let first = layout.epoch_of_elapsed(elapsed.saturating_sub(d.min(self.reach)));
        let v = {
            let map = rec
                .inner
                .versions
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            match map.get(version) {
                Some(v) => v.clone(),
                None => return TrackStats::default(),
            }
        };
        let chunks = self.versions.get(version);
        let mut out = TrackStats::default();
        let mut recent = first;
        for c in chunks.into_iter().flatten().filter(|c| c.first >= first) {
            out.merge(&c.stats);
            recent = recent.max(c.end);
        }
        out.merge(&v.epochs(recent, current));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const SEC: Duration = Duration::from_secs(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn counts_requests_and_errors() {
        let rec = Recorder::new(SEC, Duration::from_secs(60));
        let v = rec.track("v1");
        v.record(200, ms(10), false);
        v.record(503, ms(10), false);
        v.record(502, ms(1), true);
        v.record(200, ms(1), true);
        v.record(404, ms(1), false);
        let s = rec.window("v1", Duration::from_secs(30));
        assert_eq!(s.requests, 5);
        assert_eq!(s.errors, 3);
        assert_eq!(s.latency.count(), 5);
        let t = v.totals();
        assert_eq!(t.requests, 5);
        assert_eq!(t.errors, 3);
        assert_eq!(
            t.by_code,
            BTreeMap::from([(200, 2), (404, 1), (502, 1), (503, 1)])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn track_is_get_or_create_and_unknown_is_empty() {
        let rec = Recorder::new(SEC, Duration::from_secs(10));
        rec.track("b").record(200, ms(1), false);
        rec.track("a");
        rec.track("b").record(200, ms(1), false);
        assert_eq!(rec.versions(), vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(rec.window("b", SEC * 5).requests, 2);
        assert_eq!(rec.window("nope", SEC * 5), TrackStats::default());
        rec.forget("b");
        assert_eq!(rec.versions(), vec!["a".to_owned()]);
        assert_eq!(rec.window("b", SEC * 5).requests, 0);
        assert_eq!(rec.track("b").totals().requests, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn window_slides_one_slot_at_a_time() {
        let rec = Recorder::new(SEC, Duration::from_secs(10));
        let v = rec.track("v");
        // One request in each of the first 5 seconds, recorded mid-slot.
        advance(ms(500)).await;
        for _ in 0..5 {
            v.record(200, ms(1), false);
            advance(SEC).await;
        }
        // Now at 5.5 s: slots 0..=4 hold one each, slot 5 is empty.
        assert_eq!(v.window(SEC * 10).requests, 5);
        // (2.5 s, 5.5 s] overlaps slots 2, 3, 4, 5.
        assert_eq!(v.window(SEC * 3).requests, 3);
        assert_eq!(v.window(Duration::ZERO).requests, 0);
        advance(SEC * 2).await; // 7.5 s: (4.5, 7.5] → slots 4..=7.
        assert_eq!(v.window(SEC * 3).requests, 1);
        advance(SEC).await; // 8.5 s
        assert_eq!(v.window(SEC * 3).requests, 0);
        // Lifetime totals do not slide.
        assert_eq!(v.totals().requests, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn reused_slots_start_from_zero() {
        // Ring of 4 slots (3 s retention + the current one).
        let rec = Recorder::new(SEC, SEC * 3);
        let v = rec.track("v");
        for _ in 0..100 {
            v.record(500, ms(900), false);
        }
        assert_eq!(v.window(SEC * 3).errors, 100);
        // Slot 0 is reused at epoch 4 and again at 8; its old samples must not come back.
        advance(SEC * 4).await;
        v.record(200, ms(1), false);
        let s = v.window(SEC * 3);
        assert_eq!((s.requests, s.errors), (1, 0));
        assert_eq!(s.latency.quantile(1.0).map(|us| us < 1_100.0), Some(true));
        advance(SEC * 4).await;
        v.record(200, ms(2), false);
        let s = v.window(SEC * 3);
        assert_eq!((s.requests, s.errors), (1, 0));
        // A window longer than the retention is clamped, not wrapped around the ring.
        assert_eq!(v.window(SEC * 100).requests, 1);
        assert_eq!(v.totals().requests, 102);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_gap_longer_than_the_ring_empties_the_window() {
        let rec = Recorder::new(SEC, SEC * 5);
        let v = rec.track("v");
        v.record(200, ms(5), false);
        advance(SEC * 60).await;
        assert_eq!(v.window(SEC * 5), TrackStats::default());
    }

    #[tokio::test(start_paused = true)]
    async fn quantiles_match_the_recorded_distribution() {
        let rec = Recorder::new(ms(100), SEC * 30);
        let v = rec.track("v");
        // 1..=1000 ms spread over 10 s of slots: the window must merge them all.
        for i in 1..=1000u64 {
            v.record(200, ms(i), false);
            if i % 10 == 0 {
                advance(ms(10)).await;
            }
        }
        let s = v.window(SEC * 30);
        assert_eq!(s.requests, 1000);
        for (q, exact) in [(0.5, 0.5), (0.9, 0.9), (0.99, 0.99), (1.0, 1.0)] {
            let got = s.latency_quantile_secs(q).unwrap();
            assert!(
                (got - exact).abs() / exact < 0.016,
                "q{q}: {got} vs {exact}"
            );
        }
        let mean = s.latency.mean().unwrap();
        assert!((mean - 500_500.0).abs() < 1.0, "mean {mean}");
    }

    #[test]
    fn concurrent_recording_loses_nothing() {
        // Real threads on the real clock: the window is far wider than the test runs.
        let rec = Recorder::new(SEC, SEC * 600);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let v = rec.track("v");
                s.spawn(move || {
                    for i in 0..5_000u64 {
                        v.record(if i % 10 == 0 { 500 } else { 200 }, ms(t + 1), false);
                    }
                });
            }
        });
        let s = rec.window("v", SEC * 600);
        assert_eq!(s.requests, 20_000);
        assert_eq!(s.errors, 2_000);
        assert_eq!(s.latency.count(), 20_000);
        assert_eq!(rec.track("v").totals().by_code[&500], 2_000);
    }

    #[test]
    fn pinned_threads_record_into_their_shard_and_readings_sum_the_shards() {
        let rec = Recorder::with_shards(SEC, SEC * 600, 3);
        std::thread::scope(|s| {
            for t in 0..5usize {
                let v = rec.track("v");
                s.spawn(move || {
                    pin_thread(t);
                    for _ in 0..100 {
                        v.record(if t == 0 { 503 } else { 200 }, ms(t as u64 + 1), false);
                    }
                });
            }
        });
        let v = rec.track("v");
        // Threads 0 and 3 share shard 0, 1 and 4 shard 1; thread 2 has shard 2 to itself.
        let per_shard: Vec<u64> = v
            .inner
            .shards
            .iter()
            .map(|s| s.total_requests.load(Ordering::Relaxed))
            .collect();
        assert_eq!(per_shard, [200, 200, 100]);
        let w = rec.window("v", SEC * 600);
        assert_eq!((w.requests, w.errors, w.latency.count()), (500, 100, 500));
        assert_eq!(v.totals().by_code, BTreeMap::from([(200, 400), (503, 100)]));
        let text = rendered(&rec, "s");
        assert_eq!(
            buckets(&text, r#"version="v""#).last(),
            Some(&("+Inf".to_owned(), 500))
        );
    }

    fn rendered(rec: &Recorder, service: &str) -> String {
        let mut out = String::new();
        rec.render(
            service,
            &|v| match v {
                "v1" => Some(Track::Stable),
                "v2" => Some(Track::Canary),
                _ => None,
            },
            &mut out,
        );
        out
    }

    /// The cumulative bucket counts of the first series whose labels contain `labels`, in order,
    /// with their `le`.
    fn buckets(text: &str, labels: &str) -> Vec<(String, u64)> {
        text.lines()
            .filter(|l| {
                l.starts_with("http_request_duration_seconds_bucket{") && l.contains(labels)
            })
            .map(|l| {
                let le = l.split("le=\"").nth(1).unwrap().split('"').next().unwrap();
                let n = l.rsplit(' ').next().unwrap().parse().unwrap();
                (le.to_owned(), n)
            })
            .collect()
    }

    fn value(text: &str, series: &str) -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn bounds_in_seconds_and_nanoseconds_agree() {
        assert_eq!(LATENCY_BUCKETS.len(), LATENCY_BOUNDS_NANOS.len());
        for (s, ns) in LATENCY_BUCKETS.iter().zip(LATENCY_BOUNDS_NANOS) {
            assert_eq!(*s, ns as f64 / 1e9);
        }
        assert!(LATENCY_BOUNDS_NANOS.windows(2).all(|w| w[0] < w[1]));
    }

    #[tokio::test(start_paused = true)]
    async fn render_writes_the_exact_exposition() {
        let rec = Recorder::new(SEC, SEC * 60);
        let v = rec.track("v1");
        v.record(200, Duration::from_micros(500), false);
        v.record(200, ms(3), false);
        // Exactly on a bound: `le` is inclusive, so it counts in le="0.8".
        v.record(503, ms(800), false);
        // One microsecond over it does not.
        v.record(200, Duration::from_micros(800_001), false);
        v.record(404, SEC * 20, false);
        rec.track("other");
        let text = rendered(&rec, "shop");
        let l = r#"service="shop",version="v1",track="stable""#;
        let o = r#"service="shop",version="other",track="none""#;
        let mut want = String::from(
            "# HELP http_request_duration_seconds Latency to response headers of requests \
             through the proxy, since it started.\n\
             # TYPE http_request_duration_seconds histogram\n",
        );
        let series = |labels: &str, counts: [u64; 15], sum: &str| {
            let mut s = String::new();
            for (i, n) in counts.iter().enumerate() {
                let le = [
                    "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
                    "0.8", "1", "2.5", "5", "10", "+Inf",
                ][i];
                s += &format!("http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {n}\n");
            }
            s += &format!("http_request_duration_seconds_sum{{{labels}}} {sum}\n");
            s += &format!(
                "http_request_duration_seconds_count{{{labels}}} {}\n",
                counts[14]
            );
            s
        };
        want += &series(o, [0; 15], "0");
        want += &series(
            l,
            [1, 1, 2, 2, 2, 2, 2, 2, 2, 3, 4, 4, 4, 4, 5],
            "21.603501",
        );
        want += "# HELP http_requests_total Requests through the proxy by status code, since it started.\n\
                 # TYPE http_requests_total counter\n";
        want += &format!("http_requests_total{{{l},code=\"200\"}} 3\n");
        want += &format!("http_requests_total{{{l},code=\"404\"}} 1\n");
        want += &format!("http_requests_total{{{l},code=\"503\"}} 1\n");
        assert_eq!(text, want);
    }

    #[tokio::test(start_paused = true)]
    async fn a_latency_on_a_bound_counts_in_that_bucket() {
        let rec = Recorder::new(SEC, SEC * 60);
        let v = rec.track("v2");
        for &ns in &LATENCY_BOUNDS_NANOS {
            v.record(200, Duration::from_nanos(ns), false);
            // Just above the bound: the next bucket.
            v.record(200, Duration::from_nanos(ns + 1), false);
        }
        let text = rendered(&rec, "s");
        let b = buckets(&text, r#"version="v2",track="canary""#);
        assert_eq!(b.len(), 15);
        for (i, (le, n)) in b.iter().enumerate() {
            // Bound i holds its own exact value plus both values of every bound below.
            let want = if i < 14 { 2 * i as u64 + 1 } else { 28 };
            assert_eq!(*n, want, "le={le}");
        }
        let labels = r#"{service="s",version="v2",track="canary"}"#;
        let count = value(
            &text,
            &format!("http_request_duration_seconds_count{labels}"),
        );
        assert_eq!(count, 28.0);
        // Sum of the bounds twice, the +1 ns of each lost to microsecond resolution.
        let sum = value(&text, &format!("http_request_duration_seconds_sum{labels}"));
        let want: f64 = 2.0 * LATENCY_BUCKETS.iter().sum::<f64>();
        assert!((sum - want).abs() < 1e-9, "{sum} vs {want}");
    }

    #[tokio::test(start_paused = true)]
    async fn label_values_are_escaped() {
        let rec = Recorder::new(SEC, SEC * 60);
        rec.track("a\"b\\c\nd").record(200, ms(1), false);
        let text = rendered(&rec, "svc\"\n");
        let labels = r#"service="svc\"\n",version="a\"b\\c\nd",track="none""#;
        assert!(
            text.lines()
                .any(|l| l == format!("http_requests_total{{{labels},code=\"200\"}} 1")),
            "{text}"
        );
        // No raw newline sneaks into a series: every line is a comment or a whole sample.
        assert!(text
            .lines()
            .all(|l| l.starts_with('#') || l.starts_with("http_")));
        assert_eq!(escape_label("plain"), "plain");
    }

    #[tokio::test(start_paused = true)]
    async fn exposition_is_lifetime_not_windowed() {
        let rec = Recorder::new(SEC, SEC * 5);
        rec.track("v1").record(200, ms(2), false);
        advance(SEC * 60).await;
        rec.track("v1").record(200, ms(2), false);
        assert_eq!(rec.window("v1", SEC * 5).requests, 1);
        let text = rendered(&rec, "s");
        let b = buckets(&text, r#"version="v1""#);
        assert_eq!(b.last(), Some(&("+Inf".to_owned(), 2)));
    }

    #[test]
    fn concurrent_recording_adds_up_in_the_exposition() {
        let rec = Recorder::new(SEC, SEC * 600);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let v = rec.track("v1");
                // Each thread records 1..=1000 ms in turn: 1 ms is in le="0.001", 801 ms and up
                // beyond le="0.8".
                s.spawn(move || {
                    for i in 1..=1_000u64 {
                        v.record(if t == 0 { 500 } else { 200 }, ms(i), false);
                    }
                });
            }
        });
        let text = rendered(&rec, "s");
        let b = buckets(&text, r#"version="v1""#);
        assert!(b.windows(2).all(|w| w[0].1 <= w[1].1), "monotone: {b:?}");
        let le = |bound: &str| b.iter().find(|(le, _)| le == bound).unwrap().1;
        assert_eq!(le("0.001"), 4);
        assert_eq!(le("0.8"), 4 * 800);
        assert_eq!(le("+Inf"), 4_000);
        let labels = r#"{service="s",version="v1",track="stable"}"#;
        assert_eq!(
            value(
                &text,
                &format!("http_request_duration_seconds_count{labels}")
            ),
            4_000.0
        );
        let sum = value(&text, &format!("http_request_duration_seconds_sum{labels}"));
        assert!((sum - 4.0 * 500.5).abs() < 1e-6, "{sum}");
        let codes = |c: u16| {
            value(&text, &format!("http_requests_total{{service=\"s\",version=\"v1\",track=\"stable\",code=\"{c}\"}}"))
        };
        assert_eq!((codes(200), codes(500)), (3_000.0, 1_000.0));
    }

    #[test]
    fn degenerate_arguments_do_not_panic() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let rec = Recorder::new(Duration::ZERO, Duration::ZERO);
            let v = rec.track("");
            v.record(0, Duration::MAX, true);
            v.record(u16::MAX, Duration::ZERO, false);
            assert_eq!(v.window(Duration::MAX).requests, 2);
            assert_eq!(v.totals().errors, 2);
            let mut out = String::new();
            rec.render("", &|_| None, &mut out);
            assert!(
                out.contains(r#"version="",track="none",le="+Inf"} 2"#),
                "{out}"
            );
        });
    }

    /// A look-back ten times the ring's retention: one request per second for 300 s, with the
    /// driver collecting every 5 s, reads back exactly the requests of the span asked for
    /// (look-backs aligned to the collection, as the driver's are), and never more than it.
    #[tokio::test(start_paused = true)]
    async fn history_reaches_past_the_ring_and_no_further_than_asked() {
        let rec = Recorder::with_shards(ms(500), Duration::from_secs(30), 2);
        let mut history = History::new(Duration::from_secs(120));
        let v = rec.track("v2");
        for i in 1..=300u64 {
            advance(SEC).await;
            v.record(200, ms(if i > 240 { 900 } else { 10 }), i % 100 == 0);
            if i % 5 == 0 {
                history.collect(&rec);
            }
        }
        // The ring alone holds the last 30 s.
        assert_eq!(rec.window("v2", Duration::from_secs(60)).requests, 31);
        let h = |secs| history.window(&rec, "v2", Duration::from_secs(secs));
        // Requests at 1 s, 2 s … 300 s, now is 300 s: the last `secs` holds `secs + 1`.
        for secs in [30, 60, 115] {
            assert_eq!(h(secs).requests, secs + 1, "{secs}s");
        }
        // Bounded by `reach`: asking for more returns 120 s.
        let all = h(600);
        assert_eq!(all.requests, 121);
        assert_eq!(
            all.errors, 2,
            "requests 200 and 300 are in the last 120 s, 100 is not"
        );
        assert!(all.latency_quantile_secs(0.99).unwrap() > 0.85);
        assert!(all.latency_quantile_secs(0.25).unwrap() < 0.02);
        // Versions the recorder forgot are forgotten.
        rec.forget("v2");
        history.collect(&rec);
        assert_eq!(
            history.window(&rec, "v2", Duration::from_secs(60)).requests,
            0
        );
        assert!(history.versions.is_empty());
    }

    /// Collecting at every slot (a millisecond evaluation interval) keeps the history bounded.
    #[tokio::test(start_paused = true)]
    async fn history_memory_is_bounded_however_often_it_collects() {
        let rec = Recorder::with_shards(ms(10), ms(300), 1);
        let mut history = History::new(Duration::from_secs(60));
        let v = rec.track("v2");
        for _ in 0..12_000 {
            advance(ms(10)).await;
            v.record(200, ms(1), false);
            history.collect(&rec);
        }
        let chunks = history.versions["v2"].len() as u64;
        assert!(chunks <= MAX_CHUNKS + 2, "{chunks} chunks");
        // Still every request of the last minute, to within one chunk (~0.94 s).
        let n = history.window(&rec, "v2", Duration::from_secs(60)).requests;
        assert!((5_900..=6_001).contains(&n), "{n}");
    }
}
