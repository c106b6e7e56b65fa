//! The public query type: parse once, check against the supported subset, evaluate many times.

use promql_parser::parser::token::{self, TokenType};
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{self, Expr};

use crate::eval::Evaluator;
use crate::{Labels, MemStore, PromqlError, SeriesDump};

pub(crate) const FUNCTIONS: &[&str] = &[
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "quantile_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "histogram_quantile",
    "abs",
    "clamp_min",
    "clamp_max",
    "scalar",
    "vector",
    "time",
];

const AGGREGATIONS: &str =
    "sum, avg, min, max, count, group, stddev, stdvar, quantile, topk, bottomk";
const OPERATORS: &str = "+, -, *, /, %, ^, ==, !=, >, <, >=, <=, and, or, unless";

/// A parsed query, checked to use only the supported subset.
#[derive(Debug, Clone)]
pub struct Query {
    text: String,
    pub(crate) expr: Expr,
}

/// Evaluation settings that Prometheus takes from its command line (and its version).
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// How far back an instant selector looks for the newest sample
    /// (`--query.lookback-delta`).
    pub lookback_delta_ms: i64,
    /// Which Prometheus major version's semantics to follow where they differ.
    pub compat: Compat,
}

impl Default for EvalOptions {
    /// 5 minutes, Prometheus's default; Prometheus 3 semantics.
    fn default() -> Self {
        EvalOptions {
            lookback_delta_ms: 5 * 60 * 1000,
            compat: Compat::V3,
        }
    }
}

/// The two places where Prometheus 2.x and 3.x evaluate the same samples differently; both
/// only matter at the edges of the data, but a rule should mean what it means on the user's
/// Prometheus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compat {
    /// Prometheus 2.x: range windows `[t - d, t]` and lookback `[t - δ, t]` include their left
    /// edge; `rate`/`increase` clamp the extrapolation to the counter's zero point *before*
    /// checking it against 1.1× the average sample interval.
    V2,
    /// Prometheus 3.x: left-open windows `(t - d, t]` and `(t - δ, t]`; the zero-point clamp
    /// comes *after* the threshold check.
    #[default]
    V3,
}

/// The result of an instant query.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum Value {
    Scalar(f64),
    /// An instant vector: at most one sample per label set.
    Vector(Vec<Sample>),
    /// A range vector (only when the whole query is a range selector such as `x[5m]`).
    Matrix(Vec<SeriesDump>),
}

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Sample {
    pub labels: Labels,
    pub value: f64,
}

/// What a rule says at one instant. Unlike a Prometheus alert, "no series" is its own
/// outcome: cutover must not promote a rollout on missing data.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum RuleResult {
    /// Nothing to judge: the query (or, for a comparison, its vector side) returned no series,
    /// or a scalar result was NaN.
    NoData,
    /// The condition does not hold; `value` is the judged value (the vector side's max for
    /// `>`/`>=`, min for `<`/`<=`, first for `==`/`!=`) if any.
    Clear { value: Option<f64> },
    /// The condition holds (the Prometheus alert would be firing); `value` is the worst
    /// offending value (max kept for `>`/`>=`, min kept for `<`/`<=`, first kept otherwise).
    Fired { value: Option<f64> },
}

impl Query {
    /// Parses and checks that only the supported subset is used; an unsupported function,
    /// aggregation, modifier (offset, @, subqueries) or operator is an error naming it.
    pub fn parse(text: &str) -> Result<Query, PromqlError> {
        let expr = parser::parse(text).map_err(|message| PromqlError::Parse {
            query: text.to_string(),
            message,
        })?;
        check(&expr)?;
        Ok(Query {
            text: text.to_string(),
            expr,
        })
    }

    /// The query as given to [`Query::parse`].
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Evaluates the query at `at_ms`, as a Prometheus instant query would.
    pub fn eval(
        &self,
        store: &MemStore,
        at_ms: i64,
        opts: &EvalOptions,
    ) -> Result<Value, PromqlError> {
        Evaluator::new(store, at_ms, opts)
            .eval(&self.expr)
            .map_err(|message| self.eval_error(message))
    }

    fn eval_error(&self, message: String) -> PromqlError {
        PromqlError::Eval {
            query: self.text.clone(),
            message,
        }
    }

    /// Alert-rule semantics that tell "fine" from "no data".
    ///
    /// If the top-level expression is a filtering (non-`bool`) comparison with a scalar on one
    /// side — the usual alert form `<vector expr> > <threshold>` — the vector side is
    /// evaluated: no series → [`RuleResult::NoData`]; some element passes the comparison →
    /// [`RuleResult::Fired`] with the worst one (max for `>`/`>=`, min for `<`/`<=`, as if the
    /// scalar were on the right); none passes → [`RuleResult::Clear`] with the vector side's
    /// max (or min).
    ///
    /// Otherwise the whole expression is evaluated: a non-empty vector → `Fired` with its first
    /// value; an empty vector → `NoData`; a scalar → `Fired` if nonzero, `Clear` if zero,
    /// `NoData` if NaN. A range vector is an error (Prometheus rejects such rules too).
    pub fn eval_rule(
        &self,
        store: &MemStore,
        at_ms: i64,
        opts: &EvalOptions,
    ) -> Result<RuleResult, PromqlError> {
        let ev = Evaluator::new(store, at_ms, opts);
        if let Some(cmp) = alert_comparison(&self.expr) {
            let vector = match ev.eval(cmp.vector).map_err(|m| self.eval_error(m))? {
                Value::Vector(v) => v,
                _ => return Err(self.eval_error("vector side is not a vector".into())),
            };
            let threshold = match ev.eval(cmp.scalar).map_err(|m| self.eval_error(m))? {
                Value::Scalar(s) => s,
                _ => return Err(self.eval_error("scalar side is not a scalar".into())),
            };
            return Ok(judge(&vector, cmp.op, threshold));
        }
        match ev.eval(&self.expr).map_err(|m| self.eval_error(m))? {
            Value::Vector(v) => Ok(match v.first() {
                Some(s) => RuleResult::Fired {
                    value: Some(s.value),
                },
                None => RuleResult::NoData,
            }),
            Value::Scalar(s) if s.is_nan() => Ok(RuleResult::NoData),
            Value::Scalar(s) if s != 0.0 => Ok(RuleResult::Fired { value: Some(s) }),
            Value::Scalar(s) => Ok(RuleResult::Clear { value: Some(s) }),
            Value::Matrix(_) => Err(self.eval_error(
                "a rule must evaluate to an instant vector or a scalar, not a range vector".into(),
            )),
        }
    }
}

/// Comparison operators normalised to "vector op threshold".
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cmp {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
}

struct AlertComparison<'a> {
    vector: &'a Expr,
    scalar: &'a Expr,
    op: Cmp,
}

fn unparen(mut e: &Expr) -> &Expr {
    while let Expr::Paren(p) = e {
        e = &p.expr;
    }
    e
}

fn alert_comparison(expr: &Expr) -> Option<AlertComparison<'_>> {
    let Expr::Binary(b) = unparen(expr) else {
        return None;
    };
    if b.modifier.as_ref().is_some_and(|m| m.return_bool) {
        return None;
    }
    let op = match b.op.id() {
        token::T_EQLC => Cmp::Eq,
        token::T_NEQ => Cmp::Ne,
        token::T_GTR => Cmp::Gt,
        token::T_LSS => Cmp::Lt,
        token::T_GTE => Cmp::Ge,
        token::T_LTE => Cmp::Le,
        _ => return None,
    };
    match (b.lhs.value_type(), b.rhs.value_type()) {
        (ValueType::Vector, ValueType::Scalar) => Some(AlertComparison {
            vector: &b.lhs,
            scalar: &b.rhs,
            op,
        }),
        // `0.8 < x` means `x > 0.8`: flip so "worst" is judged the same way.
        (ValueType::Scalar, ValueType::Vector) => Some(AlertComparison {
            vector: &b.rhs,
            scalar: &b.lhs,
            op: match op {
                Cmp::Gt => Cmp::Lt,
                Cmp::Lt => Cmp::Gt,
                Cmp::Ge => Cmp::Le,
                Cmp::Le => Cmp::Ge,
                other => other,
            },
        }),
        _ => None,
    }
}

fn judge(vector: &[crate::Sample], op: Cmp, threshold: f64) -> RuleResult {
    if vector.is_empty() {
        return RuleResult::NoData;
    }
    let holds = |v: f64| match op {
        Cmp::Eq => v == threshold,
        Cmp::Ne => v != threshold,
        Cmp::Gt => v > threshold,
        Cmp::Lt => v < threshold,
        Cmp::Ge => v >= threshold,
        Cmp::Le => v <= threshold,
    };
    let pick = |values: &mut dyn Iterator<Item = f64>| -> Option<f64> {
        match op {
            Cmp::Gt | Cmp::Ge => values.reduce(go_max_ignoring_nan),
            Cmp::Lt | Cmp::Le => values.reduce(go_min_ignoring_nan),
            Cmp::Eq | Cmp::Ne => values.next(),
        }
    };
    let mut kept = vector.iter().map(|s| s.value).filter(|&v| holds(v));
    match pick(&mut kept) {
        Some(v) => RuleResult::Fired { value: Some(v) },
        None => RuleResult::Clear {
            value: pick(&mut vector.iter().map(|s| s.value)),
        },
    }
}

/// Max/min where NaN loses to any number (as Prometheus's `max`/`min` aggregations do).
fn go_max_ignoring_nan(a: f64, b: f64) -> f64 {
    if a.is_nan() || b > a {
        b
    } else {
        a
    }
}

fn go_min_ignoring_nan(a: f64, b: f64) -> f64 {
    if a.is_nan() || b < a {
        b
    } else {
        a
    }
}

fn unsupported(kind: &'static str, name: impl Into<String>, supported: &str) -> PromqlError {
    PromqlError::Unsupported {
        kind,
        name: name.into(),
        supported: supported.to_string(),
    }
}

const NO_MODIFIERS: &str =
    "none (cutover evaluates at the current instant: no `offset`, `@` or subqueries)";

fn check_selector(vs: &parser::VectorSelector) -> Result<(), PromqlError> {
    if vs.offset.is_some() {
        return Err(unsupported("modifier", "offset", NO_MODIFIERS));
    }
    if vs.at.is_some() {
        return Err(unsupported("modifier", "@", NO_MODIFIERS));
    }
    if !vs.matchers.or_matchers.is_empty() {
        return Err(unsupported(
            "label matcher",
            "or",
            "comma-separated matchers (=, !=, =~, !~)",
        ));
    }
    Ok(())
}

/// Walks the whole tree so that the first unsupported part is reported at parse time, not on
/// the first evaluation during a rollout.
fn check(expr: &Expr) -> Result<(), PromqlError> {
    match expr {
        Expr::NumberLiteral(_) => Ok(()),
        Expr::StringLiteral(s) => Err(unsupported(
            "expression",
            format!("\"{}\" (string literal)", s.val),
            "number literals, selectors, functions, aggregations and operators",
        )),
        Expr::Paren(p) => check(&p.expr),
        Expr::Unary(u) => check(&u.expr),
        Expr::VectorSelector(vs) => check_selector(vs),
        Expr::MatrixSelector(ms) => check_selector(&ms.vs),
        Expr::Subquery(_) => Err(unsupported("modifier", "subquery", NO_MODIFIERS)),
        Expr::Extension(_) => Err(unsupported("expression", "extension", "standard PromQL")),
        Expr::Call(call) => {
            if !FUNCTIONS.contains(&call.func.name) {
                return Err(unsupported(
                    "function",
                    call.func.name,
                    &FUNCTIONS.join(", "),
                ));
            }
            call.args.args.iter().try_for_each(|a| check(a))
        }
        Expr::Aggregate(agg) => {
            let name = agg.op.to_string();
            let ok = matches!(
                agg.op.id(),
                token::T_SUM
                    | token::T_AVG
                    | token::T_MIN
                    | token::T_MAX
                    | token::T_COUNT
                    | token::T_GROUP
                    | token::T_STDDEV
                    | token::T_STDVAR
                    | token::T_QUANTILE
                    | token::T_TOPK
                    | token::T_BOTTOMK
            );
            if !ok {
                return Err(unsupported("aggregation", name, AGGREGATIONS));
            }
            if let Some(p) = &agg.param {
                check(p)?;
            }
            check(&agg.expr)
        }
        Expr::Binary(b) => {
            if !is_supported_binop(b.op) {
                return Err(unsupported("operator", b.op.to_string(), OPERATORS));
            }
            if let Some(m) = &b.modifier {
                if m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some() {
                    return Err(unsupported(
                        "modifier",
                        "fill",
                        "on, ignoring, group_left, group_right, bool",
                    ));
                }
            }
            check(&b.lhs)?;
            check(&b.rhs)
        }
    }
}

fn is_supported_binop(op: TokenType) -> bool {
    matches!(
        op.id(),
        token::T_ADD
            | token::T_SUB
            | token::T_MUL
            | token::T_DIV
            | token::T_MOD
            | token::T_POW
            | token::T_EQLC
            | token::T_NEQ
            | token::T_GTR
            | token::T_LSS
            | token::T_GTE
            | token::T_LTE
            | token::T_LAND
            | token::T_LOR
            | token::T_LUNLESS
    )
}
