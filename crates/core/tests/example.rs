//! `examples/cutover.toml` shows every field of the spec (issue 10 item 7), and docs/config.md
//! names every one.
//!
//! The list of fields is not written here: it is discovered from the spec's own types, by
//! asking serde. Every struct of the spec denies unknown fields, so a document with a key
//! `__probe__` at some place is refused with "unknown field `__probe__`, expected one of
//! `a`, `b`, ..." — the fields at that place. Following each field down (a table? a list of
//! tables? a tagged kind, like a gate's `metric`?) gives the whole tree, so a field added to
//! the spec tomorrow is required in the example without touching this test.

use cutover_core::spec::Config;
use std::collections::BTreeSet;
use toml::Value;

const PROBE: &str = "__probe__";

/// One step from the root of a config to a field.
#[derive(Clone, Debug)]
enum Step {
    /// A key of a table.
    Key(String),
    /// An element of a list of tables.
    Elem,
    /// In a list of tagged tables: an element whose `tag` key is `variant`.
    Variant { tag: String, variant: String },
}

fn display(steps: &[Step]) -> String {
    let mut s = String::new();
    for step in steps {
        match step {
            Step::Key(k) if s.is_empty() => s.push_str(k),
            Step::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Step::Elem => s.push_str("[]"),
            Step::Variant { tag, variant } => {
                s.push_str(&format!("[{tag} = {variant:?}]"));
            }
        }
    }
    s
}

/// A document with `inner` at the place `steps` lead to.
fn build(steps: &[Step], inner: toml::Table) -> Value {
    let mut v = Value::Table(inner);
    for step in steps.iter().rev() {
        v = match step {
            Step::Key(k) => Value::Table(toml::Table::from_iter([(k.clone(), v)])),
            Step::Elem => Value::Array(vec![v]),
            Step::Variant { tag, variant } => {
                let mut t = match v {
                    Value::Table(t) => t,
                    _ => unreachable!("a variant is a table"),
                };
                t.insert(tag.clone(), Value::String(variant.clone()));
                Value::Array(vec![Value::Table(t)])
            }
        };
    }
    v
}

/// serde's answer to `inner` at `steps`: the error message, or `None` if it was accepted.
fn ask(steps: &[Step], inner: toml::Table) -> Option<String> {
    <Config as serde::Deserialize>::deserialize(build(steps, inner))
        .err()
        .map(|e| e.message().to_string())
}

fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn probe_table() -> toml::Table {
    toml::Table::from_iter([(PROBE.to_string(), Value::Integer(1))])
}

/// The fields of the table at `steps`, if it is a table of the spec (not a free map like
/// `app.env`).
fn fields_at(steps: &[Step]) -> Option<Vec<String>> {
    let msg = ask(steps, probe_table())?;
    msg.starts_with(&format!("unknown field `{PROBE}`"))
        .then(|| backticked(&msg)[1..].to_vec())
}

/// Every field path of the spec, depth first.
fn walk(steps: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    let Some(fields) = fields_at(steps) else {
        return;
    };
    for f in fields {
        steps.push(Step::Key(f));
        out.push(steps.clone());
        if fields_at(steps).is_some() {
            walk(steps, out);
        } else {
            steps.push(Step::Elem);
            if fields_at(steps).is_some() {
                walk(steps, out);
            } else if let Some(tag) = ask(steps, probe_table())
                .as_deref()
                .and_then(|m| m.strip_prefix("missing field `"))
                .map(|m| m.trim_end_matches('`').to_string())
            {
                // A list of tagged tables: every kind has its own fields.
                steps.pop();
                let mut t = probe_table();
                t.insert(tag.clone(), Value::String(PROBE.into()));
                steps.push(Step::Elem);
                let variants = ask(steps, t).map(|m| backticked(&m)[1..].to_vec());
                steps.pop();
                for variant in variants.unwrap_or_default() {
                    steps.push(Step::Variant {
                        tag: tag.clone(),
                        variant,
                    });
                    out.push(steps.clone());
                    walk(steps, out);
                    steps.pop();
                }
                steps.push(Step::Elem);
            }
            steps.pop();
        }
        steps.pop();
    }
}

fn spec_fields() -> Vec<Vec<Step>> {
    let mut out = Vec::new();
    walk(&mut Vec::new(), &mut out);
    out
}

/// Whether `doc` has the field `steps` lead to (for lists: in some element).
fn present(doc: &Value, steps: &[Step]) -> bool {
    let Some((first, rest)) = steps.split_first() else {
        return true;
    };
    match (first, doc) {
        (Step::Key(k), Value::Table(t)) => t.get(k).is_some_and(|v| present(v, rest)),
        (Step::Elem, Value::Array(a)) => a.iter().any(|v| present(v, rest)),
        (Step::Variant { tag, variant }, Value::Array(a)) => a.iter().any(|v| {
            v.get(tag).and_then(Value::as_str) == Some(variant.as_str()) && present(v, rest)
        }),
        _ => false,
    }
}

fn example_text() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/cutover.toml"
    ))
    .unwrap()
}

/// A commented-out key (`# workers = 2`) or table header (`# [service.tls]`) counts as shown:
/// the example turns it on by removing the `#`.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|line| {
            let Some(rest) = line.strip_prefix('#') else {
                return line.to_string();
            };
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            let ident = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.".contains(&b))
            };
            let header = rest
                .split('#')
                .next()
                .unwrap_or("")
                .trim()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let is_header = rest.starts_with('[') && ident(header);
            let is_key = rest
                .split_once('=')
                .is_some_and(|(k, _)| ident(k.trim()) && !k.starts_with(' '));
            if is_header || is_key {
                rest.to_string()
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_probe_finds_the_spec_tree() {
    // Guards the discovery itself: if serde's messages changed, it would find nothing and the
    // test below would pass vacuously.
    let all: BTreeSet<String> = spec_fields().iter().map(|s| display(s)).collect();
    for known in [
        "service.name",
        "service.tls.cert",
        "app.readiness.failure_threshold",
        "app.env",
        "rollout.steps[].pause",
        "rollout.gates[metric = \"latency\"].quantile",
        "rollout.aborts[metric = \"promql\"].for",
        "notify[].max_attempts",
        "alerts.match",
    ] {
        assert!(all.contains(known), "{known} not found in {all:#?}");
    }
}

#[test]
fn the_example_shows_every_field_of_the_spec() {
    let text = example_text();
    let active = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}"));
    assert!(active.validate().is_ok());
    let all_on = uncommented(&text);
    let doc: Value = toml::from_str(&all_on)
        .unwrap_or_else(|e| panic!("the example with its comments turned on: {e}\n{all_on}"));
    // Commented-out settings must be right too (types and names; some are alternatives to
    // each other, so they need not validate together).
    <Config as serde::Deserialize>::deserialize(doc.clone()).unwrap_or_else(|e| {
        panic!("the example with its commented-out settings turned on does not parse: {e}")
    });
    let missing: Vec<String> = spec_fields()
        .iter()
        .filter(|f| !present(&doc, f))
        .map(|f| display(f))
        .collect();
    assert!(
        missing.is_empty(),
        "examples/cutover.toml does not show (add them, commented out if they are optional):\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn docs_config_md_names_every_field() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/config.md"))
        .unwrap();
    let fields = spec_fields();
    let names: Vec<String> = fields.iter().map(|f| display(f)).collect();
    // Tables are the section headings; their keys are what the reference must name, as
    // `key` in a table or `key = ...` in an example.
    let is_leaf = |p: &String| {
        !names.iter().any(|n| {
            n.len() > p.len() && n.starts_with(p.as_str()) && n[p.len()..].starts_with(['.', '['])
        })
    };
    let missing: BTreeSet<String> = fields
        .iter()
        .zip(&names)
        .filter(|(_, n)| is_leaf(n))
        .filter_map(|(f, n)| match f.last() {
            Some(Step::Key(k))
                if !doc.contains(&format!("`{k}`")) && !doc.contains(&format!("{k} =")) =>
            {
                Some(n.clone())
            }
            _ => None,
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/config.md does not name: {missing:#?}"
    );
}
