//! The numeric kernels, transcribed from Prometheus's `promql/functions.go` and
//! `promql/quantile.go` so results agree to the last bit where the algorithm allows.

/// Kahan-Neumaier compensated addition (`kahanSumInc`): returns the new sum and compensation.
pub(crate) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// Compensated sum of `values`.
pub(crate) fn kahan_sum(values: impl IntoIterator<Item = f64>) -> f64 {
    let (s, c) = values
        .into_iter()
        .fold((0.0, 0.0), |(s, c), v| kahan_inc(v, s, c));
    s + c
}

/// Go's `math.Max`/`math.Min`: NaN wins (unlike Rust's `f64::max`), which is what
/// `clamp_min`/`clamp_max` inherit.
pub(crate) fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

pub(crate) fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

/// `extrapolatedRate` for `rate` (counter, per second), `increase` (counter) and `delta`.
///
/// `samples` are the points in `(range_end - range_ms, range_end]`. Fewer than two samples
/// give no result, as in Prometheus.
pub(crate) fn extrapolated_rate(
    samples: &[(i64, f64)],
    range_end: i64,
    range_ms: i64,
    is_counter: bool,
    is_rate: bool,
    v2: bool,
) -> Option<f64> {
    if samples.len() < 2 {
        return None;
    }
    let range_start = range_end - range_ms;
    let (first_t, first_v) = samples[0];
    let (last_t, last_v) = samples[samples.len() - 1];
    let mut result = last_v - first_v;
    if is_counter {
        // A drop means the counter restarted from zero: add back what it had reached.
        let mut prev = first_v;
        for &(_, v) in &samples[1..] {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
    }
    let mut duration_to_start = (first_t - range_start) as f64 / 1000.0;
    let mut duration_to_end = (range_end - last_t) as f64 / 1000.0;
    let sampled_interval = (last_t - first_t) as f64 / 1000.0;
    let average_between = sampled_interval / (samples.len() - 1) as f64;

    // Extrapolate to a window edge only if a sample would be expected there (within 1.1×
    // the average interval); otherwise the series starts/ends inside the window and we
    // extrapolate by half an interval, our guess of where it really starts/ends.
    let threshold = average_between * 1.1;
    let mut extrapolate_to = sampled_interval;
    if v2 {
        // Prometheus 2.x: clamp to the zero point first, then check the threshold.
        if is_counter && result > 0.0 && first_v >= 0.0 {
            let duration_to_zero = sampled_interval * (first_v / result);
            duration_to_start = duration_to_start.min(duration_to_zero);
        }
        if duration_to_start >= threshold {
            duration_to_start = average_between / 2.0;
        }
    } else if duration_to_start >= threshold {
        duration_to_start = average_between / 2.0;
    }
    if !v2 && is_counter && result > 0.0 && first_v >= 0.0 {
        // Counters cannot go below zero: do not extrapolate past the point where the
        // observed slope would reach zero.
        let duration_to_zero = sampled_interval * (first_v / result);
        if duration_to_zero < duration_to_start {
            duration_to_start = duration_to_zero;
        }
    }
    extrapolate_to += duration_to_start;
    if duration_to_end >= threshold {
        duration_to_end = average_between / 2.0;
    }
    extrapolate_to += duration_to_end;

    let mut factor = extrapolate_to / sampled_interval;
    if is_rate {
        factor /= range_ms as f64 / 1000.0;
    }
    Some(result * factor)
}

/// `instantValue` for `irate` (is_rate) and `idelta`: the last two samples only.
pub(crate) fn instant_value(samples: &[(i64, f64)], is_rate: bool) -> Option<f64> {
    if samples.len() < 2 {
        return None;
    }
    let (last_t, last_v) = samples[samples.len() - 1];
    let (prev_t, prev_v) = samples[samples.len() - 2];
    let mut result = if is_rate && last_v < prev_v {
        last_v // counter reset
    } else {
        last_v - prev_v
    };
    let interval = last_t - prev_t;
    if interval == 0 {
        return None;
    }
    if is_rate {
        result /= interval as f64 / 1000.0;
    }
    Some(result)
}

/// The φ-quantile of `values` by linear interpolation between closest ranks (Prometheus's
/// `quantile`, used by the `quantile` aggregation and `quantile_over_time`).
pub(crate) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    // Go's sort with `<` leaves NaNs wherever; putting them first is a deterministic choice.
    values.sort_by(|a, b| {
        a.partial_cmp(b)
            .unwrap_or_else(|| b.is_nan().cmp(&a.is_nan()))
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (n - 1.0).min(lower + 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// Population variance with Kahan-compensated Welford updates (`stdvar_over_time`).
pub(crate) fn variance_over_time(values: &[f64]) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &v in values {
        count += 1.0;
        let delta = v - (mean + c_mean);
        (mean, c_mean) = kahan_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_inc(delta * (v - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

/// Prometheus's `avg_over_time`: compensated sum divided by the count.
pub(crate) fn avg(values: &[f64]) -> f64 {
    kahan_sum(values.iter().copied()) / values.len() as f64
}

/// Max with NaN losing to any number (`max_over_time`, `max` aggregation).
pub(crate) fn max_nan_last(values: impl IntoIterator<Item = f64>) -> f64 {
    values
        .into_iter()
        .fold(f64::NAN, |m, v| if v > m || m.is_nan() { v } else { m })
}

pub(crate) fn min_nan_last(values: impl IntoIterator<Item = f64>) -> f64 {
    values
        .into_iter()
        .fold(f64::NAN, |m, v| if v < m || m.is_nan() { v } else { m })
}

/// Relative tolerance below which adjacent cumulative bucket counts are treated as equal,
/// to absorb float noise from `rate()` over buckets (`smallDeltaTolerance`).
const SMALL_DELTA_TOLERANCE: f64 = 1e-12;

/// Go's `almost.Equal`.
fn almost_equal(a: f64, b: f64, epsilon: f64) -> bool {
    const MIN_NORMAL: f64 = f64::MIN_POSITIVE; // 2.2250738585072014e-308
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < MIN_NORMAL {
        return diff < epsilon * MIN_NORMAL;
    }
    diff / abs_sum.min(f64::MAX) < epsilon
}

/// `BucketQuantile` for classic histograms: `buckets` are `(upper bound, cumulative count)`.
pub(crate) fn bucket_quantile(q: f64, mut buckets: Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
        return f64::NAN;
    }
    // Coalesce buckets with the same bound (e.g. `le="1"` and `le="1.0"`).
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for (ub, count) in buckets {
        match merged.last_mut() {
            Some(last) if last.0 == ub => last.1 += count,
            _ => merged.push((ub, count)),
        }
    }
    let mut buckets = merged;
    // Cumulative counts must not decrease; scrapes of different buckets at slightly
    // different moments can break that, so carry the previous count forward.
    let mut prev = buckets[0].1;
    for b in buckets.iter_mut().skip(1) {
        let curr = b.1;
        if curr == prev {
            continue;
        }
        if almost_equal(prev, curr, SMALL_DELTA_TOLERANCE) || curr < prev {
            b.1 = prev;
            continue;
        }
        prev = curr;
    }
    if buckets.len() < 2 {
        return f64::NAN;
    }
    let observations = buckets[buckets.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    // sort.Search over all but the +Inf bucket.
    let b = buckets[..buckets.len() - 1].partition_point(|bk| bk.1 < rank);
    if b == buckets.len() - 1 {
        // The quantile is in the +Inf bucket: the best we can say is the highest finite bound.
        return buckets[buckets.len() - 2].0;
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let mut bucket_start = 0.0;
    let bucket_end = buckets[b].0;
    let mut count = buckets[b].1;
    if b > 0 {
        bucket_start = buckets[b - 1].0;
        count -= buckets[b - 1].1;
        rank -= buckets[b - 1].1;
    }
    bucket_start + (bucket_end - bucket_start) * (rank / count)
}
