//! The Prometheus text exposition format 0.0.4, as `/metrics` endpoints serve it.
//!
//! Types (`# TYPE`) do not change how samples are stored: a histogram is its `_bucket`,
//! `_sum` and `_count` series, exactly as Prometheus stores classic histograms, so the
//! parser only validates the comment lines and reads sample lines.

use crate::{Labels, PromqlError, METRIC_NAME};

/// Parses a text exposition into `(labels incl. __name__, value)` pairs, in order.
/// Optional timestamps are validated and ignored. A malformed line is an error naming its
/// 1-based line number.
pub fn parse_exposition(text: &str) -> Result<Vec<(Labels, f64)>, PromqlError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let err = |message: String| PromqlError::Exposition {
            line: line_no,
            message,
        };
        let line = raw.trim_start_matches([' ', '\t']).trim_end_matches(['\r']);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            check_comment(comment).map_err(err)?;
            continue;
        }
        out.push(parse_sample_line(line).map_err(err)?);
    }
    Ok(out)
}

fn check_comment(comment: &str) -> Result<(), String> {
    let mut words = comment.split_whitespace();
    match words.next() {
        Some("TYPE") => {
            let name = words.next().ok_or("`# TYPE` without a metric name")?;
            check_metric_name(name)?;
            let kind = words.next().ok_or("`# TYPE` without a type")?;
            if !matches!(
                kind,
                "counter" | "gauge" | "histogram" | "summary" | "untyped"
            ) {
                return Err(format!(
                    "unknown type `{kind}`; expected counter, gauge, histogram, summary or untyped"
                ));
            }
            if words.next().is_some() {
                return Err("trailing text after `# TYPE <name> <type>`".into());
            }
            Ok(())
        }
        Some("HELP") => {
            let name = words.next().ok_or("`# HELP` without a metric name")?;
            check_metric_name(name)
        }
        // Any other comment is free text.
        _ => Ok(()),
    }
}

fn check_metric_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if ok {
        Ok(())
    } else {
        Err(format!("invalid metric name `{name}`"))
    }
}

fn is_label_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn parse_sample_line(line: &str) -> Result<(Labels, f64), String> {
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    check_metric_name(name)?;
    let mut labels = Labels::new();
    labels.insert(METRIC_NAME.to_string(), name.to_string());
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let mut fields = rest.split_whitespace();
    let value = fields
        .next()
        .ok_or_else(|| format!("sample `{name}` has no value"))?;
    let value = parse_float(value).ok_or_else(|| format!("invalid value `{value}`"))?;
    if let Some(ts) = fields.next() {
        // Validated even though ignored: garbage here means we misread the line.
        ts.parse::<i64>()
            .map_err(|_| format!("invalid timestamp `{ts}`"))?;
    }
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected `{extra}` after the timestamp"));
    }
    Ok((labels, value))
}

/// Parses `name="value",...}` and returns what follows the closing brace.
fn parse_labels<'a>(mut s: &'a str, labels: &mut Labels) -> Result<&'a str, String> {
    loop {
        s = s.trim_start_matches([' ', '\t']);
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let end = s
            .find(|c: char| !is_label_char(c))
            .ok_or("unterminated label set")?;
        let name = &s[..end];
        if !name.starts_with(is_label_start) {
            return Err(format!("invalid label name at `{}`", truncate(s)));
        }
        s = s[end..].trim_start_matches([' ', '\t']);
        s = s
            .strip_prefix('=')
            .ok_or_else(|| format!("expected `=` after label `{name}`"))?;
        s = s.trim_start_matches([' ', '\t']);
        s = s
            .strip_prefix('"')
            .ok_or_else(|| format!("expected `\"` to open the value of label `{name}`"))?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let close = loop {
            match chars.next() {
                None => return Err(format!("unterminated value for label `{name}`")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => {
                        return Err(format!(
                            "invalid escape `\\{c}` in label `{name}`; only \\\\, \\\" and \\n are allowed"
                        ))
                    }
                    None => return Err(format!("unterminated value for label `{name}`")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if name == METRIC_NAME || labels.insert(name.to_string(), value).is_some() {
            return Err(format!("duplicate label `{name}`"));
        }
        s = s[close + 1..].trim_start_matches([' ', '\t']);
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err(format!(
                "expected `,` or `}}` after the value of label `{name}`"
            ));
        }
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(20) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Go's `strconv.ParseFloat` as the Prometheus text parser uses it: `NaN`, `+Inf`, `-Inf`
/// in any case. Rust's parser agrees on those; underscores or hex are rejected by both.
fn parse_float(s: &str) -> Option<f64> {
    s.parse::<f64>().ok()
}
