//! Rule verdicts for queries evaluated by a remote Prometheus, mirroring
//! `cutover_promql::Query::eval_rule` (same operators, same "worst value", same `NoData`).
//!
//! A rule like `histogram_quantile(0.99, ...) > 0.8` filters: when the quantile is 0.5 the
//! answer is an empty vector, exactly as when there is no traffic at all. To tell "clear" from
//! "no data" the provider sends only the vector side (`histogram_quantile(0.99, ...)`) and
//! applies the comparison here. Pure: no IO.

use cutover_promql::RuleResult;
use promql_parser::parser::{self, value::ValueType, Expr};

/// A comparison, normalised to `<vector> op <threshold>` (`0.8 < x` becomes `x > 0.8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Cmp {
    fn from_token(op: &str) -> Option<Cmp> {
        Some(match op {
            "==" => Cmp::Eq,
            "!=" => Cmp::Ne,
            ">" => Cmp::Gt,
            ">=" => Cmp::Ge,
            "<" => Cmp::Lt,
            "<=" => Cmp::Le,
            _ => return None,
        })
    }

    fn flipped(self) -> Cmp {
        match self {
            Cmp::Gt => Cmp::Lt,
            Cmp::Lt => Cmp::Gt,
            Cmp::Ge => Cmp::Le,
            Cmp::Le => Cmp::Ge,
            other => other,
        }
    }

    /// Go's (and so Prometheus's) float comparisons: any comparison with NaN is false except
    /// `!=`; Rust's agree.
    fn holds(self, v: f64, threshold: f64) -> bool {
        match self {
            Cmp::Eq => v == threshold,
            Cmp::Ne => v != threshold,
            Cmp::Gt => v > threshold,
            Cmp::Ge => v >= threshold,
            Cmp::Lt => v < threshold,
            Cmp::Le => v <= threshold,
        }
    }

    /// The "worst" of some values: the max for `>`/`>=`, the min for `<`/`<=`, the first for
    /// `==`/`!=`. NaN loses to any number, as in Prometheus's `max`/`min`.
    fn worst(self, mut values: impl Iterator<Item = f64>) -> Option<f64> {
        match self {
            Cmp::Gt | Cmp::Ge => values.reduce(|a, b| if a.is_nan() || b > a { b } else { a }),
            Cmp::Lt | Cmp::Le => values.reduce(|a, b| if a.is_nan() || b < a { b } else { a }),
            Cmp::Eq | Cmp::Ne => values.next(),
        }
    }
}

/// The threshold of a [`RulePlan::Threshold`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Threshold {
    /// A number literal (possibly negated or parenthesised): no request needed.
    Literal(f64),
    /// Any other scalar expression (`scalar(x)`, `2 * 0.4`): evaluated by Prometheus too.
    Query(String),
}

/// How a rule is sent to Prometheus and turned into a verdict.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RulePlan {
    /// A filtering (non-`bool`) comparison between a vector and a scalar: send `vector`,
    /// compare locally.
    Threshold {
        vector: String,
        cmp: Cmp,
        threshold: Threshold,
    },
    /// Anything else: send as written.
    AsWritten(String),
}

impl RulePlan {
    /// Plans `text` (already accepted by `cutover_promql::Query::parse`).
    pub(crate) fn new(text: &str) -> Result<RulePlan, String> {
        let expr = parser::parse(text)?;
        if let Expr::Binary(b) = unparen(&expr) {
            if let (Some(cmp), false) = (Cmp::from_token(&b.op.to_string()), b.return_bool()) {
                let sides = match (b.lhs.value_type(), b.rhs.value_type()) {
                    (ValueType::Vector, ValueType::Scalar) => Some((&b.lhs, &b.rhs, cmp)),
                    (ValueType::Scalar, ValueType::Vector) => Some((&b.rhs, &b.lhs, cmp.flipped())),
                    _ => None,
                };
                if let Some((vector, scalar, cmp)) = sides {
                    let threshold = match number(scalar) {
                        Some(v) => Threshold::Literal(v),
                        None => Threshold::Query(unparen(scalar).to_string()),
                    };
                    return Ok(RulePlan::Threshold {
                        vector: unparen(vector).to_string(),
                        cmp,
                        threshold,
                    });
                }
            }
        }
        Ok(RulePlan::AsWritten(text.to_string()))
    }

    /// The verdict of a [`RulePlan::Threshold`] for the vector side's values (in Prometheus's
    /// order) and the threshold: no values → `NoData`; some pass → `Fired` with the worst of
    /// those; none → `Clear` with the worst of all.
    pub(crate) fn judge(cmp: Cmp, values: &[f64], threshold: f64) -> RuleResult {
        if values.is_empty() {
            return RuleResult::NoData;
        }
        let kept = values.iter().copied().filter(|&v| cmp.holds(v, threshold));
        match cmp.worst(kept) {
            Some(v) => RuleResult::Fired { value: Some(v) },
            None => RuleResult::Clear {
                value: cmp.worst(values.iter().copied()),
            },
        }
    }

    /// The verdict of a [`RulePlan::AsWritten`] from a vector's values: the first value fires,
    /// no value is `NoData`.
    pub(crate) fn any_vector(values: &[f64]) -> RuleResult {
        match values.first() {
            Some(&v) => RuleResult::Fired { value: Some(v) },
            None => RuleResult::NoData,
        }
    }

    /// The verdict of a [`RulePlan::AsWritten`] from a scalar: nonzero fires, zero is clear,
    /// NaN is `NoData`.
    pub(crate) fn scalar(v: f64) -> RuleResult {
        if v.is_nan() {
            RuleResult::NoData
        } else if v != 0.0 {
            RuleResult::Fired { value: Some(v) }
        } else {
            RuleResult::Clear { value: Some(v) }
        }
    }
}

fn unparen(mut e: &Expr) -> &Expr {
    while let Expr::Paren(p) = e {
        e = &p.expr;
    }
    e
}

/// A literal number, possibly negated (`-0.5` may parse as a unary minus on `0.5`).
fn number(e: &Expr) -> Option<f64> {
    match unparen(e) {
        Expr::NumberLiteral(n) => Some(n.val),
        Expr::Unary(u) => number(&u.expr).map(|v| -v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threshold(text: &str) -> (String, Cmp, Threshold) {
        match RulePlan::new(text).unwrap() {
            RulePlan::Threshold {
                vector,
                cmp,
                threshold,
            } => (vector, cmp, threshold),
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn splits_a_threshold_and_prints_the_vector_side_back() {
        let q = r#"histogram_quantile(0.99, sum by (le, track) (rate(http_request_duration_seconds_bucket{track="canary",code=~"5.."}[30s]))) > 0.8"#;
        let (vector, cmp, t) = threshold(q);
        assert_eq!((cmp, t), (Cmp::Gt, Threshold::Literal(0.8)));
        // The printer may reorder matchers, so check that the text is stable and keeps them.
        assert_eq!(parser::parse(&vector).unwrap().to_string(), vector);
        assert!(
            vector.starts_with("histogram_quantile(0.99, sum by (le, track) (rate("),
            "{vector}"
        );
        for part in [r#"track="canary""#, r#"code=~"5..""#, "[30s]"] {
            assert!(vector.contains(part), "{vector} lacks {part}");
        }
    }

    #[test]
    fn threshold_on_the_left_is_flipped_and_scalar_expressions_are_queried() {
        let (v, cmp, t) = threshold("(0.5 <= (sum(rate(x[1m]))))");
        assert_eq!(
            (v.as_str(), cmp, t),
            ("sum(rate(x[1m]))", Cmp::Ge, Threshold::Literal(0.5))
        );
        assert_eq!(threshold("x < -(2)").2, Threshold::Literal(-2.0));
        assert_eq!(
            threshold("x > scalar(y)").2,
            Threshold::Query("scalar(y)".into())
        );
    }

    #[test]
    fn bool_vector_vector_and_non_comparisons_are_sent_as_written() {
        for q in [
            "x > bool 0.8",
            "x > y",
            "x + 1",
            "sum(x)",
            "x > 1 and y",
            "1 > bool 0",
        ] {
            assert_eq!(
                RulePlan::new(q).unwrap(),
                RulePlan::AsWritten(q.into()),
                "{q}"
            );
        }
    }

    #[test]
    fn verdicts_pick_the_worst_value() {
        use RuleResult::*;
        assert_eq!(RulePlan::judge(Cmp::Gt, &[], 0.8), NoData);
        assert_eq!(
            RulePlan::judge(Cmp::Gt, &[0.5, 0.7], 0.8),
            Clear { value: Some(0.7) }
        );
        assert_eq!(
            RulePlan::judge(Cmp::Gt, &[0.9, 0.95, 0.1], 0.8),
            Fired { value: Some(0.95) }
        );
        assert_eq!(
            RulePlan::judge(Cmp::Lt, &[0.9, 0.5, 0.7], 0.8),
            Fired { value: Some(0.5) }
        );
        assert_eq!(
            RulePlan::judge(Cmp::Ne, &[1.0, 2.0], 1.0),
            Fired { value: Some(2.0) }
        );
        // NaN (a quantile over no observations) never breaches and loses to any number.
        assert_eq!(
            RulePlan::judge(Cmp::Gt, &[f64::NAN, 0.5], 0.8),
            Clear { value: Some(0.5) }
        );
        assert_eq!(
            RulePlan::any_vector(&[0.0, 3.0]),
            Fired { value: Some(0.0) }
        );
        assert_eq!(RulePlan::any_vector(&[]), NoData);
        assert_eq!(RulePlan::scalar(0.0), Clear { value: Some(0.0) });
        assert_eq!(RulePlan::scalar(f64::NAN), NoData);
    }
}
