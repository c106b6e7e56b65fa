//! A log-linear latency histogram: the statistics the judge reads quantiles from.
//!
//! Values are microseconds. Below 64 µs every value has its own bucket; above, each power of two
//! is split into 64 equal sub-buckets, so a bucket's width is at most 1/64 of its lower bound and
//! a quantile read from it (interpolated inside the bucket) is within 1.6 % of the true sample.
//! Values past ~134 s land in the last bucket. The same indexing is used by the lock-free
//! recorder in `cutover-telemetry`, which snapshots into this type.

use serde::{Deserialize, Serialize};

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS; // 64
const MAX_EXP: u32 = 27; // 2^27 µs ≈ 134 s

/// How many buckets a histogram has.
pub const BUCKETS: usize = (SUB + (MAX_EXP - SUB_BITS + 1) as u64 * (SUB / 2) * 2) as usize;

/// The bucket a value in microseconds falls into.
pub fn bucket_index(micros: u64) -> usize {
    if micros < SUB {
        return micros as usize;
    }
    let exp = 63 - micros.leading_zeros(); // >= SUB_BITS
    if exp > MAX_EXP {
        return BUCKETS - 1;
    }
    let shift = exp - SUB_BITS;
    let sub = (micros >> shift) - SUB; // 0..SUB
    (SUB + u64::from(exp - SUB_BITS) * SUB + sub) as usize
}

/// The half-open range `[lo, hi)` of microsecond values in a bucket.
pub fn bucket_bounds(index: usize) -> (u64, u64) {
    let i = index as u64;
    if i < SUB {
        return (i, i + 1);
    }
    let j = i - SUB;
    let exp = j / SUB + u64::from(SUB_BITS);
    let sub = j % SUB;
    let shift = exp - u64::from(SUB_BITS);
    let lo = (SUB + sub) << shift;
    (lo, lo + (1 << shift))
}

/// A plain (non-concurrent) latency histogram.
///
/// Serialized sparsely and delta-encoded, `{"runs": [i0, c0, d1, c1, d2, c2, ...],
/// "sum_micros": n}`: the first non-empty bucket's index and count, then for each next one its
/// distance from the previous index and its count. A window's histogram touches a few dozen
/// adjacent buckets and every evaluation's input is recorded, so this is about two thirds the
/// size of `[index, count]` pairs — which it still reads (`{"buckets": [[index, count], ...]}`,
/// as state stores and recordings were written before).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "Sparse", try_from = "Sparse")]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum_micros: u64,
}

#[derive(Serialize, Deserialize)]
struct Sparse {
    /// The earlier form, read only.
    #[serde(default, skip_serializing)]
    buckets: Vec<(usize, u64)>,
    #[serde(default)]
    runs: Vec<u64>,
    sum_micros: u64,
}

impl From<Histogram> for Sparse {
    fn from(h: Histogram) -> Sparse {
        let mut runs = Vec::new();
        let mut prev = 0;
        for (i, c) in h.counts.iter().enumerate().filter(|(_, c)| **c > 0) {
            runs.push((i - prev) as u64);
            runs.push(*c);
            prev = i;
        }
        Sparse {
            buckets: Vec::new(),
            runs,
            sum_micros: h.sum_micros,
        }
    }
}

impl TryFrom<Sparse> for Histogram {
    type Error = String;
    fn try_from(s: Sparse) -> Result<Histogram, String> {
        if !s.runs.len().is_multiple_of(2) {
            return Err(format!(
                "histogram runs has {} numbers: it must be (distance, count) pairs",
                s.runs.len()
            ));
        }
        let mut pairs = s.buckets;
        let mut at: u64 = 0;
        for run in s.runs.chunks_exact(2) {
            at = at.saturating_add(run[0]);
            pairs.push((usize::try_from(at).unwrap_or(usize::MAX), run[1]));
        }
        let mut counts = vec![0; BUCKETS];
        for (i, c) in pairs {
            *counts
                .get_mut(i)
                .ok_or_else(|| format!("histogram bucket {i} is out of range (0..{BUCKETS})"))? +=
                c;
        }
        Histogram::from_counts(counts, s.sum_micros).ok_or_else(|| "bad histogram".to_string())
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            count: 0,
            sum_micros: 0,
        }
    }

    /// Builds a histogram from raw bucket counts (as taken from a concurrent recorder).
    /// Returns `None` when `counts` has the wrong length.
    pub fn from_counts(counts: Vec<u64>, sum_micros: u64) -> Option<Self> {
        if counts.len() != BUCKETS {
            return None;
        }
        let count = counts.iter().sum();
        Some(Histogram {
            counts,
            count,
            sum_micros,
        })
    }

    pub fn record(&mut self, micros: u64) {
        self.record_n(micros, 1);
    }

    pub fn record_n(&mut self, micros: u64, n: u64) {
        self.counts[bucket_index(micros)] += n;
        self.count += n;
        self.sum_micros = self.sum_micros.saturating_add(micros.saturating_mul(n));
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.sum_micros = self.sum_micros.saturating_add(other.sum_micros);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum_micros(&self) -> u64 {
        self.sum_micros
    }

    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Mean in microseconds, `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_micros as f64 / self.count as f64)
    }

    /// The `q`-quantile (`0.0..=1.0`) in microseconds, linearly interpolated inside the bucket
    /// that holds the rank; `None` when the histogram is empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 || !q.is_finite() {
            return None;
        }
        let q = q.clamp(0.0, 1.0);
        // The rank (1-based) of the sample we want, as in nearest-rank quantiles.
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            if seen + c >= rank {
                let (lo, hi) = bucket_bounds(i);
                let within = (rank - seen) as f64 / c as f64;
                return Some(lo as f64 + within * (hi - lo) as f64);
            }
            seen += c;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bounds_cover_every_index() {
        for i in 0..BUCKETS - 1 {
            let (lo, hi) = bucket_bounds(i);
            assert_eq!(bucket_index(lo), i, "lo of {i}");
            assert_eq!(bucket_index(hi - 1), i, "hi-1 of {i}");
            assert_eq!(bucket_bounds(i + 1).0, hi, "contiguous at {i}");
        }
    }

    #[test]
    fn runs_are_distances_and_counts() {
        let mut h = Histogram::new();
        h.record_n(10, 2);
        h.record_n(11, 5);
        h.record(20);
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"runs": [10, 2, 1, 5, 9, 1], "sum_micros": 95})
        );
        let bad = serde_json::json!({"runs": [10, 2, 1], "sum_micros": 0});
        let err = serde_json::from_value::<Histogram>(bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("pairs"), "{err}");
        let far = serde_json::json!({"runs": [u64::MAX, 1, 5, 1], "sum_micros": 0});
        let err = serde_json::from_value::<Histogram>(far)
            .unwrap_err()
            .to_string();
        assert!(err.contains("out of range"), "{err}");
    }

    #[test]
    fn empty_has_no_quantile() {
        assert_eq!(Histogram::new().quantile(0.99), None);
    }

    #[test]
    fn p99_of_a_known_distribution() {
        let mut h = Histogram::new();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let p99 = h.quantile(0.99).unwrap();
        assert!((p99 - 990_000.0).abs() / 990_000.0 < 0.016, "{p99}");
    }

    proptest! {
        /// Quantiles are within the histogram's error of the exact nearest-rank sample.
        #[test]
        fn quantile_within_error(mut xs in proptest::collection::vec(1u64..100_000_000, 1..400), q in 0.0f64..=1.0) {
            let mut h = Histogram::new();
            for &x in &xs { h.record(x); }
            xs.sort_unstable();
            let rank = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
            let exact = xs[rank - 1] as f64;
            let est = h.quantile(q).unwrap();
            prop_assert!((est - exact).abs() <= exact / 64.0 + 1.0, "q={} exact={} est={}", q, exact, est);
        }

        #[test]
        fn sparse_serde_round_trips(xs in proptest::collection::vec(0u64..10_000_000, 0..200)) {
            let mut h = Histogram::new();
            for &x in &xs { h.record(x); }
            let json = serde_json::to_string(&h).unwrap();
            prop_assert!(json.len() < 40 + xs.len() * 16);
            prop_assert_eq!(serde_json::from_str::<Histogram>(&json).unwrap(), h);
        }

        #[test]
        fn the_earlier_pairs_form_reads_the_same(xs in proptest::collection::vec(0u64..10_000_000, 0..200)) {
            let mut h = Histogram::new();
            for x in &xs { h.record(*x); }
            let pairs: Vec<(usize, u64)> = h.counts().iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, c)| (i, *c)).collect();
            let old = serde_json::json!({"buckets": pairs, "sum_micros": h.sum_micros()});
            prop_assert_eq!(serde_json::from_value::<Histogram>(old).unwrap(), h);
        }

        #[test]
        fn merge_is_addition(a in proptest::collection::vec(0u64..1_000_000, 0..100), b in proptest::collection::vec(0u64..1_000_000, 0..100)) {
            let (mut ha, mut hb, mut hab) = (Histogram::new(), Histogram::new(), Histogram::new());
            for &x in &a { ha.record(x); hab.record(x); }
            for &x in &b { hb.record(x); hab.record(x); }
            ha.merge(&hb);
            prop_assert_eq!(ha, hab);
        }
    }
}
