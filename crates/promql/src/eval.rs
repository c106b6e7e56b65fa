//! Instant evaluation of a checked expression tree, after Prometheus's `promql/engine.go`.
//!
//! Errors are plain strings here; [`crate::Query`] wraps them with the query text.

use std::collections::{BTreeMap, BTreeSet};

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::token;
use promql_parser::parser::{
    AggregateExpr, BinaryExpr, Call, Expr, LabelModifier, MatrixSelector, VectorMatchCardinality,
    VectorSelector,
};

use crate::functions as f;
use crate::query::{EvalOptions, Sample, Value};
use crate::{Labels, MemStore, SeriesDump, METRIC_NAME};

type Result<T> = std::result::Result<T, String>;

/// A series' labels and the samples a range selector picked, oldest first.
type Series = (Labels, Vec<(i64, f64)>);

pub(crate) struct Evaluator<'a> {
    store: &'a MemStore,
    at: i64,
    lookback: i64,
    compat: crate::query::Compat,
}

/// A compiled label matcher. Compiled here rather than using promql-parser's regex because
/// Prometheus 3 lets `.` match a newline.
enum Match<'m> {
    Eq(&'m str),
    Ne(&'m str),
    Re(regex::Regex),
    NotRe(regex::Regex),
}

fn compile(m: &Matcher) -> (String, Match<'_>) {
    let re = |fallback: &regex::Regex| {
        regex::Regex::new(&format!("^(?s:{})$", m.value)).unwrap_or_else(|_| fallback.clone())
    };
    let op = match &m.op {
        MatchOp::Equal => Match::Eq(&m.value),
        MatchOp::NotEqual => Match::Ne(&m.value),
        MatchOp::Re(r) => Match::Re(re(r)),
        MatchOp::NotRe(r) => Match::NotRe(re(r)),
    };
    (m.name.clone(), op)
}

fn matches(matchers: &[(String, Match<'_>)], labels: &Labels) -> bool {
    matchers.iter().all(|(name, m)| {
        // A missing label matches as the empty string, as in Prometheus.
        let v = labels.get(name).map_or("", String::as_str);
        match m {
            Match::Eq(x) => v == *x,
            Match::Ne(x) => v != *x,
            Match::Re(r) => r.is_match(v),
            Match::NotRe(r) => !r.is_match(v),
        }
    })
}

fn drop_name(mut labels: Labels) -> Labels {
    labels.remove(METRIC_NAME);
    labels
}

fn unparen(mut e: &Expr) -> &Expr {
    while let Expr::Paren(p) = e {
        e = &p.expr;
    }
    e
}

/// Prometheus refuses a vector with two elements of the same label set (typically after a
/// function dropped `__name__` from `{__name__=~"a|b"}`), rather than returning an
/// ambiguous answer.
fn check_unique(v: &[Sample]) -> Result<()> {
    let mut seen = BTreeSet::new();
    for s in v {
        if !seen.insert(&s.labels) {
            return Err("vector cannot contain metrics with the same labelset".into());
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    And,
    Or,
    Unless,
}

impl Op {
    fn from_token(id: u16) -> Result<Op> {
        Ok(match id {
            token::T_ADD => Op::Add,
            token::T_SUB => Op::Sub,
            token::T_MUL => Op::Mul,
            token::T_DIV => Op::Div,
            token::T_MOD => Op::Mod,
            token::T_POW => Op::Pow,
            token::T_EQLC => Op::Eq,
            token::T_NEQ => Op::Ne,
            token::T_GTR => Op::Gt,
            token::T_LSS => Op::Lt,
            token::T_GTE => Op::Ge,
            token::T_LTE => Op::Le,
            token::T_LAND => Op::And,
            token::T_LOR => Op::Or,
            token::T_LUNLESS => Op::Unless,
            other => {
                return Err(format!(
                    "unsupported operator `{}`",
                    token::TokenType::new(other)
                ))
            }
        })
    }

    fn is_comparison(self) -> bool {
        matches!(self, Op::Eq | Op::Ne | Op::Gt | Op::Lt | Op::Ge | Op::Le)
    }

    /// Arithmetic results are no longer the metric they came from (`shouldDropMetricName`).
    fn drops_name(self) -> bool {
        matches!(
            self,
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Mod | Op::Pow
        )
    }

    /// `vectorElemBinop`: the value and whether a filtering comparison keeps it.
    fn apply(self, l: f64, r: f64) -> (f64, bool) {
        match self {
            Op::Add => (l + r, true),
            Op::Sub => (l - r, true),
            Op::Mul => (l * r, true),
            Op::Div => (l / r, true),
            // Same as Go's math.Mod: sign of the dividend, NaN for x % 0.
            Op::Mod => (l % r, true),
            Op::Pow => (l.powf(r), true),
            Op::Eq => (l, l == r),
            Op::Ne => (l, l != r),
            Op::Gt => (l, l > r),
            Op::Lt => (l, l < r),
            Op::Ge => (l, l >= r),
            Op::Le => (l, l <= r),
            Op::And | Op::Or | Op::Unless => (f64::NAN, false),
        }
    }
}

impl<'a> Evaluator<'a> {
    pub(crate) fn new(store: &'a MemStore, at: i64, opts: &EvalOptions) -> Self {
        Evaluator {
            store,
            at,
            lookback: opts.lookback_delta_ms,
            compat: opts.compat,
        }
    }

    pub(crate) fn eval(&self, expr: &Expr) -> Result<Value> {
        match expr {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(n.val)),
            Expr::Paren(p) => self.eval(&p.expr),
            Expr::Unary(u) => match self.eval(&u.expr)? {
                Value::Scalar(s) => Ok(Value::Scalar(-s)),
                Value::Vector(v) => {
                    let out: Vec<Sample> = v
                        .into_iter()
                        .map(|s| Sample {
                            labels: drop_name(s.labels),
                            value: -s.value,
                        })
                        .collect();
                    check_unique(&out)?;
                    Ok(Value::Vector(out))
                }
                Value::Matrix(_) => Err("unary minus on a range vector".into()),
            },
            Expr::VectorSelector(vs) => Ok(Value::Vector(self.instant(vs)?)),
            Expr::MatrixSelector(ms) => Ok(Value::Matrix(
                self.range(ms)?
                    .into_iter()
                    .map(|(labels, samples)| SeriesDump { labels, samples })
                    .collect(),
            )),
            Expr::Call(call) => {
                let v = self.call(call)?;
                if let Value::Vector(v) = &v {
                    check_unique(v)?;
                }
                Ok(v)
            }
            Expr::Aggregate(agg) => self.aggregate(agg).map(Value::Vector),
            Expr::Binary(b) => {
                let v = self.binary(b)?;
                if let Value::Vector(v) = &v {
                    check_unique(v)?;
                }
                Ok(v)
            }
            Expr::StringLiteral(_) | Expr::Subquery(_) | Expr::Extension(_) => {
                Err("expression outside the supported subset".into())
            }
        }
    }

    fn scalar(&self, expr: &Expr) -> Result<f64> {
        match self.eval(expr)? {
            Value::Scalar(s) => Ok(s),
            _ => Err(format!("expected a scalar, got `{expr}`")),
        }
    }

    fn vector(&self, expr: &Expr) -> Result<Vec<Sample>> {
        match self.eval(expr)? {
            Value::Vector(v) => Ok(v),
            _ => Err(format!("expected an instant vector, got `{expr}`")),
        }
    }

    fn select<'s>(
        &'s self,
        vs: &'s VectorSelector,
    ) -> impl Iterator<Item = (&'a Labels, &'a std::collections::VecDeque<(i64, f64)>)> + 's {
        let mut matchers: Vec<(String, Match<'s>)> =
            vs.matchers.matchers.iter().map(compile).collect();
        if let Some(name) = &vs.name {
            matchers.push((METRIC_NAME.to_string(), Match::Eq(name)));
        }
        self.store
            .iter()
            .filter(move |(labels, _)| matches(&matchers, labels))
    }

    /// The newest sample in `(t - lookback, t]` of each matching series.
    fn instant(&self, vs: &VectorSelector) -> Result<Vec<Sample>> {
        let from = self.at - self.lookback;
        Ok(self
            .select(vs)
            .filter_map(|(labels, samples)| {
                let idx = samples.partition_point(|&(t, _)| t <= self.at);
                let (t, v) = *samples.get(idx.checked_sub(1)?)?;
                let seen = match self.compat {
                    crate::query::Compat::V2 => t >= from,
                    crate::query::Compat::V3 => t > from,
                };
                seen.then(|| Sample {
                    labels: labels.clone(),
                    value: v,
                })
            })
            .collect())
    }

    /// The samples in `(t - range, t]` of each matching series; series without any are
    /// left out, as in Prometheus.
    fn range(&self, ms: &MatrixSelector) -> Result<Vec<Series>> {
        let from = self.at - range_ms(ms);
        Ok(self
            .select(&ms.vs)
            .filter_map(|(labels, samples)| {
                let lo = match self.compat {
                    crate::query::Compat::V2 => samples.partition_point(|&(t, _)| t < from),
                    crate::query::Compat::V3 => samples.partition_point(|&(t, _)| t <= from),
                };
                let hi = samples.partition_point(|&(t, _)| t <= self.at);
                (hi > lo).then(|| (labels.clone(), samples.range(lo..hi).copied().collect()))
            })
            .collect())
    }

    fn call(&self, call: &Call) -> Result<Value> {
        let args: Vec<&Expr> = call.args.args.iter().map(|a| a.as_ref()).collect();
        let arg = |i: usize| -> Result<&Expr> {
            args.get(i)
                .copied()
                .ok_or_else(|| format!("`{}` is missing argument {}", call.func.name, i + 1))
        };
        let name = call.func.name;
        match name {
            "time" => Ok(Value::Scalar(self.at as f64 / 1000.0)),
            "vector" => Ok(Value::Vector(vec![Sample {
                labels: Labels::new(),
                value: self.scalar(arg(0)?)?,
            }])),
            "scalar" => {
                let v = self.vector(arg(0)?)?;
                Ok(Value::Scalar(match v.as_slice() {
                    [one] => one.value,
                    _ => f64::NAN,
                }))
            }
            "abs" => self.map_vector(arg(0)?, f64::abs),
            "clamp_min" => {
                let min = self.scalar(arg(1)?)?;
                self.map_vector(arg(0)?, |v| f::go_max(v, min))
            }
            "clamp_max" => {
                let max = self.scalar(arg(1)?)?;
                self.map_vector(arg(0)?, |v| f::go_min(v, max))
            }
            "histogram_quantile" => {
                let q = self.scalar(arg(0)?)?;
                Ok(Value::Vector(histogram_quantile(q, self.vector(arg(1)?)?)))
            }
            "quantile_over_time" => {
                let q = self.scalar(arg(0)?)?;
                self.over_time(arg(1)?, true, |s, _, _| {
                    let mut vals: Vec<f64> = s.iter().map(|p| p.1).collect();
                    Some(f::quantile(q, &mut vals))
                })
            }
            "rate" | "increase" | "delta" => {
                let (is_counter, is_rate) = (name != "delta", name == "rate");
                let v2 = self.compat == crate::query::Compat::V2;
                self.over_time(arg(0)?, true, |s, end, range| {
                    f::extrapolated_rate(s, end, range, is_counter, is_rate, v2)
                })
            }
            "irate" => self.over_time(arg(0)?, true, |s, _, _| f::instant_value(s, true)),
            "idelta" => self.over_time(arg(0)?, true, |s, _, _| f::instant_value(s, false)),
            "avg_over_time" => self.over_time(arg(0)?, true, |s, _, _| {
                Some(f::avg(&s.iter().map(|p| p.1).collect::<Vec<_>>()))
            }),
            "sum_over_time" => self.over_time(arg(0)?, true, |s, _, _| {
                Some(f::kahan_sum(s.iter().map(|p| p.1)))
            }),
            "min_over_time" => self.over_time(arg(0)?, true, |s, _, _| {
                Some(f::min_nan_last(s.iter().map(|p| p.1)))
            }),
            "max_over_time" => self.over_time(arg(0)?, true, |s, _, _| {
                Some(f::max_nan_last(s.iter().map(|p| p.1)))
            }),
            "count_over_time" => self.over_time(arg(0)?, true, |s, _, _| Some(s.len() as f64)),
            // The one range function that keeps the metric name: its value is a sample of it.
            "last_over_time" => self.over_time(arg(0)?, false, |s, _, _| s.last().map(|p| p.1)),
            "stddev_over_time" => self.over_time(arg(0)?, true, |s, _, _| {
                Some(f::variance_over_time(&s.iter().map(|p| p.1).collect::<Vec<_>>()).sqrt())
            }),
            "stdvar_over_time" => self.over_time(arg(0)?, true, |s, _, _| {
                Some(f::variance_over_time(
                    &s.iter().map(|p| p.1).collect::<Vec<_>>(),
                ))
            }),
            other => Err(format!("unsupported function `{other}`")),
        }
    }

    fn map_vector(&self, expr: &Expr, op: impl Fn(f64) -> f64) -> Result<Value> {
        Ok(Value::Vector(
            self.vector(expr)?
                .into_iter()
                .map(|s| Sample {
                    labels: drop_name(s.labels),
                    value: op(s.value),
                })
                .collect(),
        ))
    }

    /// Applies `op(samples, range_end, range_ms)` to each series of a range selector.
    fn over_time(
        &self,
        expr: &Expr,
        dropping_name: bool,
        op: impl Fn(&[(i64, f64)], i64, i64) -> Option<f64>,
    ) -> Result<Value> {
        let Expr::MatrixSelector(ms) = unparen(expr) else {
            return Err(format!(
                "expected a range selector such as `x[5m]`, got `{expr}`"
            ));
        };
        let range = range_ms(ms);
        Ok(Value::Vector(
            self.range(ms)?
                .into_iter()
                .filter_map(|(labels, samples)| {
                    op(&samples, self.at, range).map(|value| Sample {
                        labels: if dropping_name {
                            drop_name(labels)
                        } else {
                            labels
                        },
                        value,
                    })
                })
                .collect(),
        ))
    }

    fn aggregate(&self, agg: &AggregateExpr) -> Result<Vec<Sample>> {
        let param = match &agg.param {
            Some(p) => Some(self.scalar(p)?),
            None => None,
        };
        let input = self.vector(&agg.expr)?;
        let op = agg.op.id();
        // Group keys in first-seen order, as Prometheus emits them.
        let mut order: Vec<Labels> = Vec::new();
        let mut groups: BTreeMap<Labels, Vec<Sample>> = BTreeMap::new();
        for s in input {
            let key = grouping(&s.labels, agg.modifier.as_ref());
            let group = groups.entry(key.clone()).or_default();
            if group.is_empty() {
                order.push(key);
            }
            group.push(s);
        }
        let mut out = Vec::new();
        for key in order {
            let group = groups.remove(&key).unwrap_or_default();
            let values = || group.iter().map(|s| s.value);
            let value = match op {
                token::T_SUM => f::kahan_sum(values()),
                token::T_AVG => f::avg(&values().collect::<Vec<_>>()),
                token::T_MIN => f::min_nan_last(values()),
                token::T_MAX => f::max_nan_last(values()),
                token::T_COUNT => group.len() as f64,
                token::T_GROUP => 1.0,
                token::T_STDDEV | token::T_STDVAR => {
                    // Welford, as the aggregation in engine.go.
                    let (mut n, mut mean, mut m2) = (0.0, 0.0, 0.0);
                    for v in values() {
                        n += 1.0;
                        let delta = v - mean;
                        mean += delta / n;
                        m2 += delta * (v - mean);
                    }
                    let var = m2 / n;
                    if op == token::T_STDDEV {
                        var.sqrt()
                    } else {
                        var
                    }
                }
                token::T_QUANTILE => {
                    f::quantile(param.unwrap_or(f64::NAN), &mut values().collect::<Vec<_>>())
                }
                token::T_TOPK | token::T_BOTTOMK => {
                    let k = param.unwrap_or(f64::NAN);
                    if k.is_nan() {
                        return Err(format!("parameter of `{}` is NaN", agg.op));
                    }
                    if k < 1.0 {
                        continue;
                    }
                    let k = if k >= group.len() as f64 {
                        group.len()
                    } else {
                        k as usize
                    };
                    let mut samples = group;
                    let top = op == token::T_TOPK;
                    // NaN is never preferred over a number, for both topk and bottomk.
                    samples.sort_by(|a, b| match (a.value.is_nan(), b.value.is_nan()) {
                        (true, true) => std::cmp::Ordering::Equal,
                        (true, false) => std::cmp::Ordering::Greater,
                        (false, true) => std::cmp::Ordering::Less,
                        _ if top => b.value.total_cmp(&a.value),
                        _ => a.value.total_cmp(&b.value),
                    });
                    samples.truncate(k);
                    out.extend(samples);
                    continue;
                }
                _ => return Err(format!("unsupported aggregation `{}`", agg.op)),
            };
            out.push(Sample { labels: key, value });
        }
        Ok(out)
    }

    fn binary(&self, b: &BinaryExpr) -> Result<Value> {
        let op = Op::from_token(b.op.id())?;
        let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
        let lhs = self.eval(&b.lhs)?;
        let rhs = self.eval(&b.rhs)?;
        match (lhs, rhs) {
            (Value::Scalar(l), Value::Scalar(r)) => {
                let (v, keep) = op.apply(l, r);
                // The parser only allows comparisons between scalars with `bool`.
                Ok(Value::Scalar(if op.is_comparison() {
                    if keep {
                        1.0
                    } else {
                        0.0
                    }
                } else {
                    v
                }))
            }
            (Value::Vector(v), Value::Scalar(s)) => {
                Ok(Value::Vector(vector_scalar(op, v, s, false, return_bool)))
            }
            (Value::Scalar(s), Value::Vector(v)) => {
                Ok(Value::Vector(vector_scalar(op, v, s, true, return_bool)))
            }
            (Value::Vector(l), Value::Vector(r)) => {
                let modifier = b.modifier.clone().unwrap_or_default();
                let matching = modifier.matching.as_ref();
                Ok(Value::Vector(match op {
                    Op::And => {
                        let right: BTreeSet<Labels> =
                            r.iter().map(|s| signature(&s.labels, matching)).collect();
                        l.into_iter()
                            .filter(|s| right.contains(&signature(&s.labels, matching)))
                            .collect()
                    }
                    Op::Unless => {
                        let right: BTreeSet<Labels> =
                            r.iter().map(|s| signature(&s.labels, matching)).collect();
                        l.into_iter()
                            .filter(|s| !right.contains(&signature(&s.labels, matching)))
                            .collect()
                    }
                    Op::Or => {
                        let left: BTreeSet<Labels> =
                            l.iter().map(|s| signature(&s.labels, matching)).collect();
                        let mut out = l;
                        out.extend(
                            r.into_iter()
                                .filter(|s| !left.contains(&signature(&s.labels, matching))),
                        );
                        out
                    }
                    _ => vector_binop(op, l, r, &modifier.card, matching, return_bool)?,
                }))
            }
            _ => Err("binary operators need scalars or instant vectors".into()),
        }
    }
}

fn range_ms(ms: &MatrixSelector) -> i64 {
    i64::try_from(ms.range.as_millis()).unwrap_or(i64::MAX)
}

/// The output labels of an aggregation group: `by` keeps the listed labels, `without` drops
/// them and the metric name, none groups everything together.
fn grouping(labels: &Labels, modifier: Option<&LabelModifier>) -> Labels {
    match modifier {
        None => Labels::new(),
        Some(LabelModifier::Include(keep)) => labels
            .iter()
            .filter(|(k, _)| keep.labels.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        Some(LabelModifier::Exclude(drop)) => labels
            .iter()
            .filter(|(k, _)| k.as_str() != METRIC_NAME && !drop.labels.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// The labels two samples must share to match: `on(...)` lists them; otherwise all but the
/// `ignoring(...)` ones and the metric name.
fn signature(labels: &Labels, matching: Option<&LabelModifier>) -> Labels {
    match matching {
        Some(LabelModifier::Include(on)) => labels
            .iter()
            .filter(|(k, _)| on.labels.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        Some(LabelModifier::Exclude(ign)) => {
            grouping(labels, Some(&LabelModifier::Exclude(ign.clone())))
        }
        None => drop_name(labels.clone()),
    }
}

/// `VectorscalarBinop`; `swapped` when the scalar was on the left.
fn vector_scalar(op: Op, v: Vec<Sample>, s: f64, swapped: bool, return_bool: bool) -> Vec<Sample> {
    v.into_iter()
        .filter_map(|mut sample| {
            let (l, r) = if swapped {
                (s, sample.value)
            } else {
                (sample.value, s)
            };
            let (mut value, mut keep) = op.apply(l, r);
            // A filtering comparison always returns the vector's own value.
            if op.is_comparison() && swapped {
                value = r;
            }
            if return_bool {
                value = if keep { 1.0 } else { 0.0 };
                keep = true;
            }
            if !keep {
                return None;
            }
            sample.value = value;
            if op.drops_name() || return_bool {
                sample.labels.remove(METRIC_NAME);
            }
            Some(sample)
        })
        .collect()
}

/// `VectorBinop`: one-to-one, many-to-one (`group_left`) and one-to-many (`group_right`).
fn vector_binop(
    op: Op,
    lhs: Vec<Sample>,
    rhs: Vec<Sample>,
    card: &VectorMatchCardinality,
    matching: Option<&LabelModifier>,
    return_bool: bool,
) -> Result<Vec<Sample>> {
    if lhs.is_empty() || rhs.is_empty() {
        return Ok(Vec::new());
    }
    let (one_to_many, include) = match card {
        VectorMatchCardinality::OneToOne => (false, None),
        VectorMatchCardinality::ManyToOne(l) => (false, Some(l)),
        VectorMatchCardinality::OneToMany(l) => (true, Some(l)),
        VectorMatchCardinality::ManyToMany => {
            return Err("many-to-many matching is only allowed for and, or, unless".into())
        }
    };
    // After the swap, `many` is the side whose labels the result keeps and `one` must be
    // unique per match group.
    let (many, one) = if one_to_many { (rhs, lhs) } else { (lhs, rhs) };
    let mut one_by_sig: BTreeMap<Labels, &Sample> = BTreeMap::new();
    for s in &one {
        let sig = signature(&s.labels, matching);
        if let Some(dup) = one_by_sig.insert(sig.clone(), s) {
            return Err(format!(
                "found duplicate series for the match group {} on the {} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                fmt_labels(&sig),
                if one_to_many { "left" } else { "right" },
                fmt_labels(&s.labels),
                fmt_labels(&dup.labels),
            ));
        }
    }
    let mut matched: BTreeMap<Labels, BTreeSet<Labels>> = BTreeMap::new();
    let mut out = Vec::new();
    for ls in &many {
        let sig = signature(&ls.labels, matching);
        let Some(rs) = one_by_sig.get(&sig) else {
            continue;
        };
        let (fl, fr) = if one_to_many {
            (rs.value, ls.value)
        } else {
            (ls.value, rs.value)
        };
        let (mut value, keep) = op.apply(fl, fr);
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
        } else if !keep {
            continue;
        }
        let mut metric = result_metric(&ls.labels, &rs.labels, op, card, matching, include);
        if return_bool {
            metric.remove(METRIC_NAME);
        }
        let inserted = matched.entry(sig).or_default();
        if include.is_none() {
            if !inserted.is_empty() {
                return Err("multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into());
            }
        } else if inserted.contains(&metric) {
            return Err(
                "multiple matches for labels: grouping labels must ensure unique matches".into(),
            );
        }
        inserted.insert(metric.clone());
        out.push(Sample {
            labels: metric,
            value,
        });
    }
    Ok(out)
}

/// `resultMetric`: labels of a vector-vector result, from the "many" side.
fn result_metric(
    many: &Labels,
    one: &Labels,
    op: Op,
    card: &VectorMatchCardinality,
    matching: Option<&LabelModifier>,
    include: Option<&promql_parser::label::Labels>,
) -> Labels {
    let mut out = many.clone();
    if op.drops_name() {
        out.remove(METRIC_NAME);
    }
    if matches!(card, VectorMatchCardinality::OneToOne) {
        match matching {
            Some(LabelModifier::Include(on)) => out.retain(|k, _| on.labels.contains(k)),
            Some(LabelModifier::Exclude(ign)) => out.retain(|k, _| !ign.labels.contains(k)),
            None => {}
        }
    }
    for name in include.map(|l| l.labels.as_slice()).unwrap_or_default() {
        // Extra labels from `group_x(...)` are taken from the "one" side.
        match one.get(name) {
            Some(v) if !v.is_empty() => {
                out.insert(name.clone(), v.clone());
            }
            _ => {
                out.remove(name);
            }
        }
    }
    out
}

fn fmt_labels(l: &Labels) -> String {
    let inner: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// `histogram_quantile` over classic buckets: series are grouped by all labels but `le`,
/// and the result drops `le` and the metric name. Series without a parseable `le` are
/// ignored, as Prometheus does (with a warning we have no channel for).
fn histogram_quantile(q: f64, input: Vec<Sample>) -> Vec<Sample> {
    let mut order: Vec<Labels> = Vec::new();
    let mut groups: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
    for s in input {
        let Some(Ok(upper)) = s.labels.get("le").map(|le| le.trim().parse::<f64>()) else {
            continue;
        };
        let mut key = s.labels;
        key.remove("le");
        let group = groups.entry(key.clone()).or_default();
        if group.is_empty() {
            order.push(key);
        }
        group.push((upper, s.value));
    }
    order
        .into_iter()
        .map(|key| {
            let buckets = groups.remove(&key).unwrap_or_default();
            Sample {
                value: f::bucket_quantile(q, buckets),
                labels: drop_name(key),
            }
        })
        .collect()
}
