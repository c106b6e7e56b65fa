//! Hand-computed expectations for the evaluator, the store and the text parser. Each
//! expected number is worked out in a comment from Prometheus's algorithm, so a failure says
//! which rule diverged.

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::*;

const S: i64 = 1000;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A store with one day of retention holding the given series.
type SeriesSpec<'a> = (&'a [(&'a str, &'a str)], &'a [(i64, f64)]);

fn store(series: &[SeriesSpec<'_>]) -> MemStore {
    let mut st = MemStore::new(86_400 * S);
    for (ls, samples) in series {
        for &(t, v) in *samples {
            st.append(labels(ls), t, v);
        }
    }
    st
}

fn eval(q: &str, st: &MemStore, at: i64) -> Value {
    Query::parse(q)
        .unwrap()
        .eval(st, at, &EvalOptions::default())
        .unwrap()
}

fn vector(q: &str, st: &MemStore, at: i64) -> Vec<Sample> {
    match eval(q, st, at) {
        Value::Vector(v) => v,
        other => panic!("{q}: expected a vector, got {other:?}"),
    }
}

/// The value of a query expected to return exactly one element.
fn one(q: &str, st: &MemStore, at: i64) -> f64 {
    let v = vector(q, st, at);
    assert_eq!(v.len(), 1, "{q}: {v:?}");
    v[0].value
}

fn scalar(q: &str) -> f64 {
    match eval(q, &MemStore::new(0), 0) {
        Value::Scalar(s) => s,
        other => panic!("{q}: expected a scalar, got {other:?}"),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9 * b.abs().max(1.0)
}

macro_rules! assert_close {
    ($a:expr, $b:expr) => {{
        let (a, b) = ($a, $b);
        assert!(close(a, b), "{} = {a}, expected {b}", stringify!($a));
    }};
}

/// `c` counts 1/s, scraped every 10 s from t=0 to t=60 s.
fn steady_counter() -> MemStore {
    let samples: Vec<(i64, f64)> = (0..=6).map(|i| (i * 10 * S, i as f64 * 10.0)).collect();
    store(&[(&[("__name__", "c"), ("job", "a")], &samples)])
}

fn counter(samples: &[(i64, f64)]) -> MemStore {
    let s: Vec<(i64, f64)> = samples.iter().map(|&(t, v)| (t * S, v)).collect();
    store(&[(&[("__name__", "c")], &s)])
}

// ---------------------------------------------------------------- rate family

#[test]
fn rate_of_steady_counter_covering_the_window() {
    // Window (0, 60s]: samples 10..60 s, 10..60. Increase 50 over 50 s, 10 s to the start
    // (< 1.1 × 10 s, and the zero point is exactly 10 s away), 0 to the end: extrapolated
    // over 60 s → 60 → 1/s.
    let st = steady_counter();
    assert_close!(one("rate(c[1m])", &st, 60 * S), 1.0);
    assert_close!(one("increase(c[1m])", &st, 60 * S), 60.0);
    // rate drops the metric name and keeps the other labels.
    assert_eq!(
        vector("rate(c[1m])", &st, 60 * S)[0].labels,
        labels(&[("job", "a")])
    );
}

#[test]
fn rate_of_series_starting_inside_the_window() {
    // First sample 30 s after the window start (≥ 11 s): extrapolate only half an interval
    // (5 s). Increase 30 over 30 s → 30 × 35/30 = 35; rate = 35/60.
    let st = counter(&[(30, 5.0), (40, 15.0), (50, 25.0), (60, 35.0)]);
    assert_close!(one("increase(c[1m])", &st, 60 * S), 35.0);
    assert_close!(one("rate(c[1m])", &st, 60 * S), 35.0 / 60.0);
}

#[test]
fn rate_does_not_extrapolate_below_zero() {
    // As above but starting at 1: the zero point is 30 × 1/30 = 1 s before the first sample,
    // shorter than the 5 s half-interval → 30 × 31/30 = 31.
    let st = counter(&[(30, 1.0), (40, 11.0), (50, 21.0), (60, 31.0)]);
    assert_close!(one("increase(c[1m])", &st, 60 * S), 31.0);
}

#[test]
fn rate_series_ending_inside_the_window() {
    // Samples at 10, 20, 30 s evaluated at 60 s: 30 s to the end ≥ 11 s → extrapolate 5 s;
    // 10 s to the start. 20 × (20 + 10 + 5)/20 = 35.
    let st = counter(&[(10, 10.0), (20, 20.0), (30, 30.0)]);
    assert_close!(one("increase(c[1m])", &st, 60 * S), 35.0);
}

#[test]
fn rate_handles_counter_reset() {
    // 10,20,30,5,15,25: raw 25 - 10 = 15, plus 30 lost at the reset = 45. Zero point
    // 50 × 10/45 ≈ 11.1 s > 10 s → extrapolated over 60 s: 45 × 60/50 = 54.
    let st = counter(&[
        (10, 10.0),
        (20, 20.0),
        (30, 30.0),
        (40, 5.0),
        (50, 15.0),
        (60, 25.0),
    ]);
    assert_close!(one("increase(c[1m])", &st, 60 * S), 54.0);
    assert_close!(one("rate(c[1m])", &st, 60 * S), 0.9);
}

#[test]
fn rate_needs_two_samples() {
    let st = counter(&[(60, 10.0)]);
    assert!(vector("rate(c[1m])", &st, 60 * S).is_empty());
    assert!(vector("irate(c[1m])", &st, 60 * S).is_empty());
    assert!(vector("delta(c[1m])", &st, 60 * S).is_empty());
}

#[test]
fn range_is_left_open() {
    // The sample at t=0 is on the left edge of (0, 60s] and is not included.
    let st = steady_counter();
    assert_close!(one("count_over_time(c[1m])", &st, 60 * S), 6.0);
    assert_close!(one("count_over_time(c[1m])", &st, 60 * S + 1), 6.0);
    assert_close!(one("count_over_time(c[1m])", &st, 59 * S), 6.0);
}

fn gauge() -> MemStore {
    let vals = [5.0, 3.0, 8.0, 2.0, 6.0, 1.0];
    let samples: Vec<(i64, f64)> = vals
        .iter()
        .enumerate()
        .map(|(i, &v)| ((i as i64 + 1) * 10 * S, v))
        .collect();
    store(&[(&[("__name__", "g"), ("host", "h")], &samples)])
}

#[test]
fn delta_on_a_gauge_does_not_treat_drops_as_resets() {
    // 1 - 5 = -4 over 50 s, extrapolated to 60 s: -4.8.
    assert_close!(one("delta(g[1m])", &gauge(), 60 * S), -4.8);
}

#[test]
fn irate_and_idelta_use_the_last_two_samples() {
    let st = counter(&[(40, 5.0), (50, 15.0), (60, 25.0)]);
    assert_close!(one("irate(c[1m])", &st, 60 * S), 1.0);
    let reset = counter(&[(50, 30.0), (60, 5.0)]);
    assert_close!(one("irate(c[1m])", &reset, 60 * S), 0.5);
    assert_close!(one("idelta(g[1m])", &gauge(), 60 * S), -5.0);
}

#[test]
fn over_time_functions() {
    let st = gauge(); // 5, 3, 8, 2, 6, 1 at 10..60 s
    let at = 60 * S;
    assert_close!(one("avg_over_time(g[1m])", &st, at), 25.0 / 6.0);
    assert_close!(one("min_over_time(g[1m])", &st, at), 1.0);
    assert_close!(one("max_over_time(g[1m])", &st, at), 8.0);
    assert_close!(one("sum_over_time(g[1m])", &st, at), 25.0);
    assert_close!(one("count_over_time(g[1m])", &st, at), 6.0);
    // Sorted 1,2,3,5,6,8: rank 0.5 × 5 = 2.5 → halfway between 3 and 5.
    assert_close!(one("quantile_over_time(0.5, g[1m])", &st, at), 4.0);
    // Population variance: Σ(x - 25/6)² / 6 = 34.8333/6.
    assert_close!(
        one("stdvar_over_time(g[1m])", &st, at),
        34.833_333_333_333_336 / 6.0
    );
    assert_close!(
        one("stddev_over_time(g[1m])", &st, at),
        (34.833_333_333_333_336f64 / 6.0).sqrt()
    );
    // Only last_over_time keeps the metric name.
    let last = vector("last_over_time(g[1m])", &st, at);
    assert_eq!(last[0].value, 1.0);
    assert_eq!(last[0].labels["__name__"], "g");
    assert!(!vector("max_over_time(g[1m])", &st, at)[0]
        .labels
        .contains_key("__name__"));
    // A window with no samples yields no series.
    assert!(vector("max_over_time(g[5s])", &st, 65 * S).is_empty());
}

// ---------------------------------------------------------------- selectors

#[test]
fn lookback_sees_only_recent_samples() {
    let st = counter(&[(0, 7.0)]);
    // Lookback is (t - 5m, t]: a sample exactly 5 minutes old is stale.
    assert_close!(one("c", &st, 299_999), 7.0);
    assert!(vector("c", &st, 300 * S).is_empty());
    let short = EvalOptions {
        lookback_delta_ms: 10 * S,
        ..EvalOptions::default()
    };
    let q = Query::parse("c").unwrap();
    assert_eq!(q.eval(&st, 11 * S, &short).unwrap(), Value::Vector(vec![]));
    // A future sample is not seen either.
    assert!(vector("c", &counter(&[(10, 1.0)]), 5 * S).is_empty());
    assert_eq!(EvalOptions::default().lookback_delta_ms, 300_000);
}

fn jobs() -> MemStore {
    store(&[
        (
            &[("__name__", "req"), ("job", "a"), ("inst", "1")],
            &[(0, 1.0)],
        ),
        (
            &[("__name__", "req"), ("job", "a"), ("inst", "2")],
            &[(0, 2.0)],
        ),
        (
            &[("__name__", "req"), ("job", "ab"), ("inst", "3")],
            &[(0, 4.0)],
        ),
        (&[("__name__", "other"), ("job", "a")], &[(0, 100.0)]),
    ])
}

#[test]
fn matchers_are_anchored() {
    let st = jobs();
    assert_eq!(vector(r#"req{job=~"a"}"#, &st, 0).len(), 2);
    assert_eq!(vector(r#"req{job=~"a.*"}"#, &st, 0).len(), 3);
    assert_eq!(vector(r#"req{job!~"a"}"#, &st, 0).len(), 1);
    assert_eq!(vector(r#"req{job!="a"}"#, &st, 0).len(), 1);
    assert_eq!(vector(r#"req{job="ab",inst="3"}"#, &st, 0).len(), 1);
    assert_eq!(
        vector(r#"{__name__=~"req|other",job="a"}"#, &st, 0).len(),
        3
    );
    // A missing label matches "".
    assert_eq!(vector(r#"other{inst=""}"#, &st, 0).len(), 1);
    assert_eq!(vector(r#"req{missing=~".*"}"#, &st, 0).len(), 3);
}

#[test]
fn top_level_range_selector_returns_a_matrix() {
    let st = counter(&[(10, 1.0), (20, 2.0)]);
    match eval("c[1m]", &st, 20 * S) {
        Value::Matrix(m) => assert_eq!(m[0].samples, vec![(10 * S, 1.0), (20 * S, 2.0)]),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------- histogram_quantile

fn histogram(buckets: &[(&str, f64)]) -> MemStore {
    let mut st = MemStore::new(86_400 * S);
    for (le, count) in buckets {
        st.append(
            labels(&[("__name__", "h_bucket"), ("le", le), ("job", "a")]),
            0,
            *count,
        );
    }
    st
}

#[test]
fn histogram_quantile_interpolates() {
    let st = histogram(&[("0.1", 10.0), ("0.5", 30.0), ("1", 40.0), ("+Inf", 50.0)]);
    // rank 25 lands in (0.1, 0.5] holding 20: 0.1 + 0.4 × 15/20.
    assert_close!(one("histogram_quantile(0.5, h_bucket)", &st, 0), 0.4);
    // rank 2.5 in the first bucket, whose lower bound is 0: 0.1 × 2.5/10.
    assert_close!(one("histogram_quantile(0.05, h_bucket)", &st, 0), 0.025);
    // rank 49.5 is in +Inf: the highest finite bound.
    assert_close!(one("histogram_quantile(0.99, h_bucket)", &st, 0), 1.0);
    assert_eq!(
        one("histogram_quantile(-1, h_bucket)", &st, 0),
        f64::NEG_INFINITY
    );
    assert_eq!(
        one("histogram_quantile(2, h_bucket)", &st, 0),
        f64::INFINITY
    );
    let r = vector("histogram_quantile(0.5, h_bucket)", &st, 0);
    assert_eq!(r[0].labels, labels(&[("job", "a")]));
}

#[test]
fn histogram_quantile_edge_cases() {
    let empty = histogram(&[("0.1", 0.0), ("+Inf", 0.0)]);
    assert!(one("histogram_quantile(0.5, h_bucket)", &empty, 0).is_nan());
    let only_inf = histogram(&[("+Inf", 5.0)]);
    assert!(one("histogram_quantile(0.5, h_bucket)", &only_inf, 0).is_nan());
    let no_inf = histogram(&[("0.1", 5.0), ("1", 6.0)]);
    assert!(one("histogram_quantile(0.5, h_bucket)", &no_inf, 0).is_nan());
    // Non-monotonic counts are fixed by carrying the max forward: le=1 becomes 30, so
    // rank 35 is past every finite bucket.
    let bumpy = histogram(&[("0.1", 10.0), ("0.5", 30.0), ("1", 25.0), ("+Inf", 50.0)]);
    assert_close!(one("histogram_quantile(0.7, h_bucket)", &bumpy, 0), 1.0);
    assert_close!(one("histogram_quantile(0.5, h_bucket)", &bumpy, 0), 0.4);
    // A negative first bound is returned as is.
    let neg = histogram(&[("-1", 10.0), ("0", 20.0), ("+Inf", 20.0)]);
    assert_close!(one("histogram_quantile(0.25, h_bucket)", &neg, 0), -1.0);
}

#[test]
fn histogram_quantile_of_rate_groups_by_instance() {
    let mut st = MemStore::new(86_400 * S);
    for inst in ["1", "2"] {
        for (le, per_scrape) in [("0.1", 1.0), ("0.5", 3.0), ("+Inf", 4.0)] {
            for i in 0..=6 {
                st.append(
                    labels(&[("__name__", "lat_bucket"), ("le", le), ("inst", inst)]),
                    i * 10 * S,
                    per_scrape * i as f64,
                );
            }
        }
    }
    // Rates 0.1, 0.3, 0.4 per second: rank 0.2 of 0.4 is in (0.1, 0.5]: 0.1 + 0.4 × 0.1/0.2.
    let r = vector("histogram_quantile(0.5, rate(lat_bucket[1m]))", &st, 60 * S);
    assert_eq!(r.len(), 2);
    for s in r {
        assert_close!(s.value, 0.3);
        assert!(!s.labels.contains_key("le") && s.labels.contains_key("inst"));
    }
}

// ---------------------------------------------------------------- aggregations

#[test]
fn aggregations_with_by_and_without() {
    let st = jobs();
    assert_close!(one("sum(req)", &st, 0), 7.0);
    let by = vector("sum by (job) (req)", &st, 0);
    assert_eq!(
        by,
        vec![
            Sample {
                labels: labels(&[("job", "a")]),
                value: 3.0
            },
            Sample {
                labels: labels(&[("job", "ab")]),
                value: 4.0
            },
        ]
    );
    assert_eq!(vector("sum without (inst) (req)", &st, 0), by);
    assert_close!(vector("avg by (job) (req)", &st, 0)[0].value, 1.5);
    assert_close!(one("min(req)", &st, 0), 1.0);
    assert_close!(one("max(req)", &st, 0), 4.0);
    assert_close!(one("count(req)", &st, 0), 3.0);
    assert_close!(one("group(req)", &st, 0), 1.0);
    assert_close!(one("quantile(0.5, req)", &st, 0), 2.0);
    // Population stddev of 1, 2, 4: variance (16/9 + 1/9 + 25/9)/3 = 14/9.
    assert_close!(one("stdvar(req)", &st, 0), 14.0 / 9.0);
    assert_close!(one("stddev(req)", &st, 0), (14.0f64 / 9.0).sqrt());
    // topk/bottomk keep the full label set, name included.
    let top = vector("topk(1, req)", &st, 0);
    assert_eq!(
        top[0].labels,
        labels(&[("__name__", "req"), ("job", "ab"), ("inst", "3")])
    );
    let bottom: Vec<f64> = vector("bottomk(2, req)", &st, 0)
        .iter()
        .map(|s| s.value)
        .collect();
    assert_eq!(bottom, vec![1.0, 2.0]);
    assert_eq!(vector("topk by (job) (1, req)", &st, 0).len(), 2);
    assert!(vector("topk(0, req)", &st, 0).is_empty());
    assert!(vector("sum(nothing)", &st, 0).is_empty());
}

// ---------------------------------------------------------------- operators

#[test]
fn scalar_arithmetic_and_comparisons() {
    assert_eq!(scalar("2 ^ 3"), 8.0);
    assert_eq!(scalar("7 % 4"), 3.0);
    assert_eq!(scalar("-7 % 4"), -3.0);
    assert_eq!(scalar("1 + 2 * 3"), 7.0);
    assert_eq!(scalar("(1 + 2) * 3"), 9.0);
    assert_eq!(scalar("-(2)"), -2.0);
    assert_eq!(scalar("1 / 0"), f64::INFINITY);
    assert_eq!(scalar("-1 / 0"), f64::NEG_INFINITY);
    assert!(scalar("0 / 0").is_nan());
    assert_eq!(scalar("1 > bool 2"), 0.0);
    assert_eq!(scalar("2 >= bool 2"), 1.0);
    assert_eq!(scalar("2 == bool 2"), 1.0);
    assert_eq!(scalar("2 != bool 2"), 0.0);
    assert_eq!(scalar("1 < bool 2"), 1.0);
    assert_eq!(scalar("3 <= bool 2"), 0.0);
    assert_eq!(scalar("time()"), 0.0);
    assert_eq!(scalar("scalar(vector(3))"), 3.0);
}

fn values(v: &[Sample]) -> Vec<f64> {
    v.iter().map(|s| s.value).collect()
}

#[test]
fn vector_scalar_operators() {
    let st = jobs();
    let plus = vector("req + 1", &st, 0);
    assert_eq!(values(&plus), vec![2.0, 3.0, 5.0]);
    assert!(plus.iter().all(|s| !s.labels.contains_key("__name__")));
    // Filtering keeps the name and the vector's own value, whichever side it is on.
    let gt = vector("req > 1", &st, 0);
    assert_eq!(values(&gt), vec![2.0, 4.0]);
    assert!(gt.iter().all(|s| s.labels["__name__"] == "req"));
    assert_eq!(values(&vector("1 < req", &st, 0)), vec![2.0, 4.0]);
    assert_eq!(values(&vector("req == 2", &st, 0)), vec![2.0]);
    assert_eq!(values(&vector("req != 2", &st, 0)), vec![1.0, 4.0]);
    assert_eq!(values(&vector("req <= 2", &st, 0)), vec![1.0, 2.0]);
    assert_eq!(values(&vector("req >= 2", &st, 0)), vec![2.0, 4.0]);
    assert_eq!(values(&vector("req < 2", &st, 0)), vec![1.0]);
    let b = vector("req > bool 1", &st, 0);
    assert_eq!(values(&b), vec![0.0, 1.0, 1.0]);
    assert!(b.iter().all(|s| !s.labels.contains_key("__name__")));
    assert_eq!(values(&vector("10 - req", &st, 0)), vec![9.0, 8.0, 6.0]);
    assert_eq!(values(&vector("req / 0", &st, 0)), vec![f64::INFINITY; 3]);
    assert_eq!(values(&vector("2 ^ req", &st, 0)), vec![2.0, 4.0, 16.0]);
    assert_eq!(values(&vector("req % 2", &st, 0)), vec![1.0, 0.0, 0.0]);
    assert_eq!(values(&vector("-req", &st, 0)), vec![-1.0, -2.0, -4.0]);
    assert_eq!(values(&vector("abs(-req)", &st, 0)), vec![1.0, 2.0, 4.0]);
    assert_eq!(
        values(&vector("clamp_min(req, 2)", &st, 0)),
        vec![2.0, 2.0, 4.0]
    );
    assert_eq!(
        values(&vector("clamp_max(req, 2)", &st, 0)),
        vec![1.0, 2.0, 2.0]
    );
}

fn two_sides() -> MemStore {
    store(&[
        (
            &[("__name__", "errors"), ("job", "a"), ("code", "500")],
            &[(0, 2.0)],
        ),
        (
            &[("__name__", "errors"), ("job", "b"), ("code", "500")],
            &[(0, 3.0)],
        ),
        (
            &[("__name__", "errors"), ("job", "b"), ("code", "503")],
            &[(0, 1.0)],
        ),
        (&[("__name__", "total"), ("job", "a")], &[(0, 10.0)]),
        (&[("__name__", "total"), ("job", "b")], &[(0, 20.0)]),
        (
            &[("__name__", "info"), ("job", "a"), ("team", "red")],
            &[(0, 1.0)],
        ),
        (
            &[("__name__", "info"), ("job", "b"), ("team", "blue")],
            &[(0, 1.0)],
        ),
    ])
}

#[test]
fn vector_matching() {
    let st = two_sides();
    // One-to-one on all labels but the name: nothing matches errors{code} with total{}.
    assert!(vector("errors / total", &st, 0).is_empty());
    let r = vector("sum by (job) (errors) / total", &st, 0);
    assert_eq!(values(&r), vec![0.2, 0.2]);
    assert_eq!(r[0].labels, labels(&[("job", "a")]));
    let ign = vector(r#"errors{code="500"} / ignoring(code) total"#, &st, 0);
    assert_eq!(values(&ign), vec![0.2, 0.15]);
    assert_eq!(ign[0].labels, labels(&[("job", "a")]));
    let on = vector(r#"errors{code="500"} - on(job) total"#, &st, 0);
    assert_eq!(on[1].labels, labels(&[("job", "b")]));
    // Comparison between vectors keeps the left name and value.
    let cmp = vector("sum by (job) (errors) * 5 >= total", &st, 0);
    assert_eq!(values(&cmp), vec![10.0, 20.0]);
    let cmp_bool = vector("total > bool on(job) sum by (job) (errors) * 5", &st, 0);
    assert_eq!(values(&cmp_bool), vec![0.0, 0.0]);
    assert!(!cmp_bool[0].labels.contains_key("__name__"));
}

#[test]
fn group_left_brings_extra_labels() {
    let st = two_sides();
    let r = vector("errors * on(job) group_left(team) info", &st, 0);
    assert_eq!(r.len(), 3);
    assert_eq!(
        r[0].labels,
        labels(&[("job", "a"), ("code", "500"), ("team", "red")])
    );
    assert_eq!(r[2].labels["team"], "blue");
    let right = vector("info * on(job) group_right(team) errors", &st, 0);
    assert_eq!(values(&right), vec![2.0, 3.0, 1.0]);
    assert_eq!(right[1].labels["code"], "500");
    assert_eq!(right[1].labels["team"], "blue");
}

#[test]
fn matching_errors() {
    let st = two_sides();
    let q = Query::parse("errors * on(job) errors").unwrap();
    let err = q
        .eval(&st, 0, &EvalOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("many-to-many matching not allowed"), "{err}");
    let q = Query::parse("errors * on(job) group_left total").unwrap();
    assert!(q.eval(&st, 0, &EvalOptions::default()).is_ok());
    let q = Query::parse("errors * on(job) total").unwrap();
    let err = q
        .eval(&st, 0, &EvalOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("many-to-one matching must be explicit"),
        "{err}"
    );
    // Dropping the name must not merge two series silently.
    let twins = store(&[
        (&[("__name__", "a"), ("job", "x")], &[(0, 1.0)]),
        (&[("__name__", "b"), ("job", "x")], &[(0, 2.0)]),
    ]);
    let q = Query::parse(r#"abs({__name__=~"a|b"})"#).unwrap();
    let err = q
        .eval(&twins, 0, &EvalOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("same labelset"), "{err}");
    assert_eq!(vector(r#"{__name__=~"a|b"} > 0"#, &twins, 0).len(), 2);
}

#[test]
fn set_operators() {
    let st = two_sides();
    let and = vector("total and on(job) errors", &st, 0);
    assert_eq!(values(&and), vec![10.0, 20.0]);
    let and = vector(r#"total and on(job) errors{job="b"}"#, &st, 0);
    assert_eq!(values(&and), vec![20.0]);
    let unless = vector(r#"total unless on(job) errors{job="b"}"#, &st, 0);
    assert_eq!(values(&unless), vec![10.0]);
    let or = vector(r#"total{job="a"} or on(job) info"#, &st, 0);
    assert_eq!(values(&or), vec![10.0, 1.0]);
    assert_eq!(or[1].labels["job"], "b");
}

// ---------------------------------------------------------------- parse checks

#[test]
fn unsupported_parts_are_named() {
    for (q, name) in [
        ("predict_linear(x[5m], 60)", "`predict_linear`"),
        ("x offset 5m", "`offset`"),
        ("rate(x[5m] offset 1m)", "`offset`"),
        ("x @ 100", "`@`"),
        ("max_over_time(rate(x[1m])[5m:1m])", "`subquery`"),
        ("count_values(\"v\", x)", "`count_values`"),
        (
            "label_replace(x, \"a\", \"b\", \"c\", \"d\")",
            "`label_replace`",
        ),
        ("x atan2 y", "`atan2`"),
    ] {
        let err = Query::parse(q).unwrap_err();
        assert!(
            matches!(err, PromqlError::Unsupported { .. }),
            "{q}: {err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(name), "{q}: {msg}");
        assert!(msg.contains("supported:"), "{q}: {msg}");
    }
    let msg = Query::parse("predict_linear(x[5m], 60)")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("rate, irate"), "{msg}");
    assert!(matches!(
        Query::parse("rate(x[5m]").unwrap_err(),
        PromqlError::Parse { .. }
    ));
    let q = "histogram_quantile(0.99, rate(http_request_duration_seconds_bucket[30s])) > 0.800";
    assert_eq!(Query::parse(q).unwrap().text(), q);
}

// ---------------------------------------------------------------- eval_rule

fn rule(q: &str, st: &MemStore) -> RuleResult {
    Query::parse(q)
        .unwrap()
        .eval_rule(st, 0, &EvalOptions::default())
        .unwrap()
}

#[test]
fn rule_semantics() {
    let st = jobs(); // req = 1, 2, 4
    assert_eq!(
        rule("req > 1.5", &st),
        RuleResult::Fired { value: Some(4.0) }
    );
    assert_eq!(
        rule("req > 10", &st),
        RuleResult::Clear { value: Some(4.0) }
    );
    assert_eq!(
        rule("req < 1.5", &st),
        RuleResult::Fired { value: Some(1.0) }
    );
    assert_eq!(
        rule("req <= 0", &st),
        RuleResult::Clear { value: Some(1.0) }
    );
    // Threshold on the left is judged as if flipped.
    assert_eq!(
        rule("1.5 < req", &st),
        RuleResult::Fired { value: Some(4.0) }
    );
    assert_eq!(
        rule("(sum(req) >= 7)", &st),
        RuleResult::Fired { value: Some(7.0) }
    );
    assert_eq!(
        rule("req == 2", &st),
        RuleResult::Fired { value: Some(2.0) }
    );
    assert_eq!(rule("missing > 1", &st), RuleResult::NoData);
    assert_eq!(rule("sum(missing) > 1", &st), RuleResult::NoData);
    // Scalar-valued threshold expression.
    assert_eq!(
        rule("req > scalar(vector(3))", &st),
        RuleResult::Fired { value: Some(4.0) }
    );
    // Not the comparison form.
    assert_eq!(rule("req", &st), RuleResult::Fired { value: Some(1.0) });
    assert_eq!(rule("missing", &st), RuleResult::NoData);
    assert_eq!(
        rule("req > bool 100", &st),
        RuleResult::Fired { value: Some(0.0) }
    );
    assert_eq!(
        rule("1 > bool 2", &st),
        RuleResult::Clear { value: Some(0.0) }
    );
    assert_eq!(
        rule("2 > bool 1", &st),
        RuleResult::Fired { value: Some(1.0) }
    );
    assert_eq!(rule("scalar(missing)", &st), RuleResult::NoData);
    assert!(Query::parse("req[1m]")
        .unwrap()
        .eval_rule(&st, 0, &EvalOptions::default())
        .is_err());
}

#[test]
fn the_headline_rule() {
    // p99 latency: 99 % of 1 req/s below 0.5 s, 1 % above 1 s → rank in +Inf → 1.0 > 0.8.
    let mut st = MemStore::new(600 * S);
    for i in 0..=6 {
        for (le, rate) in [("0.5", 0.5), ("1", 0.98), ("+Inf", 1.0)] {
            st.append(
                labels(&[
                    ("__name__", "http_request_duration_seconds_bucket"),
                    ("le", le),
                ]),
                i * 10 * S,
                rate * 10.0 * i as f64,
            );
        }
    }
    let q = Query::parse(
        "histogram_quantile(0.99, rate(http_request_duration_seconds_bucket[30s])) > 0.800",
    )
    .unwrap();
    let r = q.eval_rule(&st, 60 * S, &EvalOptions::default()).unwrap();
    assert_eq!(r, RuleResult::Fired { value: Some(1.0) });
    let quiet = MemStore::new(600 * S);
    assert_eq!(
        q.eval_rule(&quiet, 60 * S, &EvalOptions::default())
            .unwrap(),
        RuleResult::NoData
    );
}

// ---------------------------------------------------------------- store

#[test]
fn store_retention_and_ordering() {
    let mut st = MemStore::new(60 * S);
    let a = labels(&[("__name__", "a")]);
    st.append(a.clone(), 10 * S, 1.0);
    st.append(a.clone(), 10 * S, 2.0); // duplicate timestamp: ignored
    st.append(a.clone(), 5 * S, 3.0); // out of order: ignored
    st.append(a.clone(), 20 * S, 4.0);
    assert_eq!(st.export()[0].samples, vec![(10 * S, 1.0), (20 * S, 4.0)]);
    st.append(labels(&[("__name__", "b")]), 75 * S, 1.0);
    // Newest is 75 s: a's samples at 10 s are now older than 15 s and dropped.
    assert_eq!(st.export()[0].samples, vec![(20 * S, 4.0)]);
    st.append(labels(&[("__name__", "b")]), 200 * S, 1.0);
    assert_eq!(st.len(), 1, "a series with no retained samples is gone");
    st.append(a.clone(), 10 * S, 1.0); // too old to keep
    assert_eq!(st.len(), 1);
    let dump = st.export();
    let mut copy = MemStore::new(60 * S);
    assert!(copy.is_empty());
    copy.import(dump.clone());
    assert_eq!(copy.export(), dump);
    let json = serde_json::to_string(&dump).unwrap();
    assert_eq!(
        serde_json::from_str::<Vec<SeriesDump>>(&json).unwrap(),
        dump
    );
}

const EXPOSITION: &str = r#"# HELP http_requests_total The total number of HTTP requests.
# TYPE http_requests_total counter
http_requests_total{method="post",code="200"} 1027 1395066363000
http_requests_total{method="post",code="400"}    3 1395066363000

# A free comment.
msdos_file_access_time_seconds{path="C:\\DIR\\FILE.TXT",error="Cannot find file:\n\"FILE.TXT\""} 1.458255915e9
metric_without_timestamp_and_labels 12.47
something_weird{problem="division by zero"} +Inf -3982045
nan_value NaN
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.05"} 24054
http_request_duration_seconds_bucket{le="+Inf"} 144320
http_request_duration_seconds_sum 53423
http_request_duration_seconds_count 144320
# TYPE rpc_duration_seconds summary
rpc_duration_seconds{quantile="0.5",} 4773
rpc_duration_seconds_count 2693
"#;

#[test]
fn exposition_parsing() {
    let samples = parse_exposition(EXPOSITION).unwrap();
    assert_eq!(samples.len(), 12);
    assert_eq!(
        samples[0],
        (
            labels(&[
                ("__name__", "http_requests_total"),
                ("method", "post"),
                ("code", "200")
            ]),
            1027.0
        )
    );
    assert_eq!(samples[2].0["path"], r"C:\DIR\FILE.TXT");
    assert_eq!(samples[2].0["error"], "Cannot find file:\n\"FILE.TXT\"");
    assert_eq!(samples[4].1, f64::INFINITY);
    assert!(samples[5].1.is_nan());
    assert_eq!(samples[6].0["le"], "0.05");
    assert_eq!(samples[10].0["quantile"], "0.5");
}

#[test]
fn exposition_errors_name_the_line() {
    for (text, line, needle) in [
        ("ok 1\nbad{a=\"1\" 2\n", 2, "label"),
        ("ok 1\n\nnovalue\n", 3, "no value"),
        ("x notanumber\n", 1, "invalid value"),
        ("x 1 12.5\n", 1, "timestamp"),
        ("x{a=\"\\t\"} 1\n", 1, "escape"),
        ("x{a=\"1\",a=\"2\"} 1\n", 1, "duplicate"),
        ("# TYPE x sparkline\n", 1, "sparkline"),
        ("1x 1\n", 1, "metric name"),
    ] {
        let err = parse_exposition(text).unwrap_err();
        match &err {
            PromqlError::Exposition { line: l, message } => {
                assert_eq!(*l, line, "{text:?}: {err}");
                assert!(message.contains(needle), "{text:?}: {err}");
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains(&format!("line {line}")));
    }
}

#[test]
fn append_exposition_adds_target_labels() {
    let mut st = MemStore::new(600 * S);
    let target = labels(&[("job", "app"), ("instance", "10.0.0.1:9090")]);
    let n = st
        .append_exposition("up 1 123\nreqs{job=\"inner\"} 5\n", 30 * S, &target)
        .unwrap();
    assert_eq!(n, 2);
    let dump = st.export();
    let reqs = dump
        .iter()
        .find(|d| d.labels["__name__"] == "reqs")
        .unwrap();
    assert_eq!(reqs.labels["job"], "app");
    assert_eq!(reqs.labels["exported_job"], "inner");
    assert_eq!(
        reqs.samples,
        vec![(30 * S, 5.0)],
        "exposition timestamp ignored"
    );
    assert_close!(one(r#"up{instance="10.0.0.1:9090"}"#, &st, 30 * S), 1.0);
    // A bad exposition appends nothing.
    assert!(st
        .append_exposition("more 1\nbroken{\n", 40 * S, &target)
        .is_err());
    assert!(vector("more", &st, 40 * S).is_empty());
}

// ---------------------------------------------------------------- expand

#[test]
fn expand_substitutes_known_variables() {
    let vars: BTreeMap<String, String> = [("svc", "checkout"), ("p99", "0.8")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        expand(r#"x{svc="{{svc}}"} > {{ p99 }}"#, &vars).unwrap(),
        r#"x{svc="checkout"} > 0.8"#
    );
    assert_eq!(expand("no vars", &vars).unwrap(), "no vars");
    let err = expand("x > {{threshold}}", &vars).unwrap_err();
    assert!(err.to_string().contains("{{threshold}}"), "{err}");
    assert!(err.to_string().contains("p99, svc"), "{err}");
    assert!(matches!(
        expand("x > {{oops", &vars).unwrap_err(),
        PromqlError::Template(_)
    ));
}

// ---------------------------------------------------------------- properties

proptest! {
    #[test]
    fn rate_of_monotone_counter_is_non_negative(
        steps in prop::collection::vec((1i64..30_000, 0.0f64..1e6), 0..40),
        range_s in 1i64..600,
        extra in 0i64..60_000,
    ) {
        let mut t = 0;
        let mut v = 0.0;
        let mut st = MemStore::new(86_400 * S);
        for (dt, dv) in steps {
            t += dt;
            v += dv;
            st.append(labels(&[("__name__", "c")]), t, v);
        }
        let q = Query::parse(&format!("rate(c[{range_s}s])")).unwrap();
        if let Value::Vector(r) = q.eval(&st, t + extra, &EvalOptions::default()).unwrap() {
            for s in r {
                prop_assert!(s.value >= 0.0, "{}", s.value);
            }
        }
    }

    #[test]
    fn sum_by_nothing_equals_sum(values in prop::collection::vec(-1e6f64..1e6, 1..30)) {
        let mut st = MemStore::new(1000);
        for (i, v) in values.iter().enumerate() {
            st.append(labels(&[("__name__", "x"), ("i", &i.to_string())]), 0, *v);
        }
        let a = one("sum by () (x)", &st, 0);
        let b = one("sum(x)", &st, 0);
        prop_assert_eq!(a, b);
        prop_assert!(close(a, values.iter().sum::<f64>()) || (a - values.iter().sum::<f64>()).abs() < 1e-6);
    }

    #[test]
    fn histogram_quantile_is_within_its_bucket(
        counts in prop::collection::vec(0.0f64..100.0, 3),
        q in 0.0f64..=1.0,
    ) {
        let bounds = ["0.1", "0.5", "1"];
        let mut cum = 0.0;
        let mut buckets = Vec::new();
        for (b, c) in bounds.iter().zip(&counts) {
            cum += c;
            buckets.push((*b, cum));
        }
        buckets.push(("+Inf", cum + 1.0));
        let st = histogram(&buckets);
        let v = one(&format!("histogram_quantile({q}, h_bucket)"), &st, 0);
        prop_assert!((0.0..=1.0).contains(&v), "{v}");
    }
}

/// Prometheus 2.x and 3.x differ at the edges of the data; `Compat` picks which one a rule
/// means. Expected values worked out by hand from each version's `extrapolatedRate` and window
/// selection.
#[test]
fn compat_v2_and_v3_differ_only_where_prometheus_does() {
    let v2 = EvalOptions {
        compat: crate::Compat::V2,
        ..EvalOptions::default()
    };
    let v3 = EvalOptions::default();
    let eval = |q: &str, st: &MemStore, at: i64, o: &EvalOptions| match Query::parse(q)
        .unwrap()
        .eval(st, at, o)
        .unwrap()
    {
        Value::Vector(v) => v.first().map(|s| s.value),
        other => panic!("{other:?}"),
    };
    // A sample exactly on the left edge of a range window: counted by 2.x only.
    let st = counter(&[(0, 1.0), (10, 2.0), (20, 3.0), (30, 4.0)]);
    assert_eq!(eval("count_over_time(c[30s])", &st, 30 * S, &v2), Some(4.0));
    assert_eq!(eval("count_over_time(c[30s])", &st, 30 * S, &v3), Some(3.0));
    // ... and exactly lookback old: seen by 2.x only.
    assert_eq!(eval("c", &st, 330 * S, &v2), Some(4.0));
    assert_eq!(eval("c", &st, 330 * S, &v3), None);

    // A new counter whose first sample is inside the window, far from its zero point:
    // samples 10 at t=25s and 20 at t=35s, window (0, 40s].
    // duration_to_start = 25 s, to_end = 5 s, interval = 10 s, average = 10 s, threshold 11 s,
    // duration_to_zero = 10 s × 10/10 = 10 s.
    // 2.x: clamp first → 10 s < 11 s → extrapolate by 10 s at the start; + 5 s at the end:
    //      increase = 10 × (10 + 10 + 5) / 10 = 25.
    // 3.x: 25 s ≥ 11 s → half an interval (5 s), then min(5, 10) = 5; + 5 s at the end:
    //      increase = 10 × (10 + 5 + 5) / 10 = 20.
    let st = counter(&[(25, 10.0), (35, 20.0)]);
    assert_close!(eval("increase(c[40s])", &st, 40 * S, &v2).unwrap(), 25.0);
    assert_close!(eval("increase(c[40s])", &st, 40 * S, &v3).unwrap(), 20.0);
    // Where neither edge matters, they agree.
    let st = counter(&[(1, 100.0), (11, 110.0), (21, 120.0), (31, 130.0)]);
    assert_close!(
        eval("rate(c[35s])", &st, 35 * S, &v2).unwrap(),
        eval("rate(c[35s])", &st, 35 * S, &v3).unwrap()
    );
}
