//! Reading a `cutover.toml` with every problem reported at once (DESIGN.md invariant 9).
//!
//! serde stops at the first error. So the document is deserialised again and again: each time
//! the failing key's path is recorded with what is wrong and how to write it, then the key is
//! taken out of the document (so its default applies) or, when it is required, a stand-in is
//! put in, and the next attempt finds the next problem. When the document finally deserialises,
//! [`Config::validate`] adds every semantic problem, except those about keys already reported.
//!
//! Nothing here knows the fields of the spec: their names, types and allowed values all come
//! from serde's own errors (`unknown field `x`, expected one of ...`, `invalid type: string
//! "ten", expected u64`), so a field added to the spec is covered without a change here.

use crate::spec::{Config, FieldError};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use toml::Value;

/// More rounds than a config has keys would mean a loop; a bound keeps it from being one.
const MAX_ROUNDS: usize = 500;

/// Values tried, in order, in place of a missing required key so the rest can be checked.
/// `"0s"` first: it is a string and a duration.
fn stand_ins() -> [Value; 6] {
    [
        Value::String("0s".into()),
        Value::Integer(0),
        Value::Float(0.0),
        Value::Boolean(false),
        Value::Array(Vec::new()),
        Value::Table(toml::Table::new()),
    ]
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn path_string(segs: &[Seg]) -> String {
    let mut s = String::new();
    for seg in segs {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => {
                let _ = write!(s, "[{i}]");
            }
        }
    }
    if s.is_empty() {
        "(top level)".into()
    } else {
        s
    }
}

fn segs_of(path: &serde_path_to_error::Path) -> Vec<Seg> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|s| match s {
            Segment::Map { key } => Some(Seg::Key(key.clone())),
            Segment::Seq { index } => Some(Seg::Index(*index)),
            Segment::Enum { .. } | Segment::Unknown => None,
        })
        .collect()
}

/// What kind of value a field wants, for the example in a fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    WholeNumber,
    Number,
    Text,
    Other,
}

/// One problem found while deserialising; its fix may still get an example from the defaults.
struct Problem {
    segs: Vec<Seg>,
    /// Where it is in the file, to list problems top to bottom.
    line: Option<usize>,
    error: FieldError,
    /// Append ", e.g. key = <default>" when the default at this path is of this kind.
    example: Option<Want>,
}

/// Parses and validates `text`, collecting every problem. The config comes back whenever the
/// document could be deserialised, with defaults (or stand-ins) where keys were wrong, so that a
/// shell can run its own checks on it too; it is valid only when the list is empty.
pub(crate) fn parse(text: &str) -> (Option<Config>, Vec<FieldError>) {
    let root: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            let at = e
                .span()
                .map(|s| format!(" ({})", line_col(text, s.start)))
                .unwrap_or_default();
            return (
                None,
                vec![FieldError {
                    path: "(syntax)".into(),
                    message: format!("{}{at}", e.message().trim_end().replace('\n', "; ")),
                    fix: "fix the TOML syntax there (https://toml.io); quote strings, e.g. name = \"shop\"".into(),
                }],
            );
        }
    };
    let doc = toml_edit::ImDocument::parse(text).ok();
    let mut value = Value::Table(root);
    let mut problems: Vec<Problem> = Vec::new();
    // Keys taken out or stood in for: later errors at or under them are consequences.
    let mut touched: Vec<Vec<Seg>> = Vec::new();
    // Required keys that got a stand-in, and which one.
    let mut standing: Vec<(Vec<Seg>, usize)> = Vec::new();
    let mut config = None;
    for _ in 0..MAX_ROUNDS {
        let err = match serde_path_to_error::deserialize::<_, Config>(value.clone()) {
            Ok(c) => {
                config = Some(c);
                break;
            }
            Err(e) => e,
        };
        let mut segs = segs_of(err.path());
        let raw = err.inner().message().to_string();

        // Inside a tagged enum (a gate, an abort rule) serde names only the table: find the key.
        let about_keys = raw.contains("unknown field `") || raw.contains("missing field `");
        if let Some(Value::Table(t)) = get(&value, &segs) {
            if !about_keys && !raw.contains("map") && !raw.contains("struct") {
                if let Some(k) = culprit(&value, &segs, t, &raw) {
                    segs.push(Seg::Key(k));
                }
            }
        }

        if let Some(i) = standing.iter().position(|(p, _)| segs.starts_with(p)) {
            // The stand-in does not fit: the next one, or the first variant serde names.
            let (p, tried) = &mut standing[i];
            let next = match backticked(after(&raw, "unknown variant").unwrap_or("")).get(1) {
                Some(first) => Value::String(first.clone()),
                None => {
                    *tried += 1;
                    match stand_ins().into_iter().nth(*tried) {
                        Some(v) => v,
                        None => break,
                    }
                }
            };
            if !set(&mut value, p, next) {
                break;
            }
            continue;
        }

        if let Some(rest) = after(&raw, "unknown field `") {
            let names = backticked(&raw);
            let field = rest.split('`').next().unwrap_or("").to_string();
            if segs.last() != Some(&Seg::Key(field.clone())) {
                segs.push(Seg::Key(field.clone()));
            }
            let expected = &names[1.min(names.len())..];
            let fix = match closest(&field, expected) {
                Some(m) => format!("did you mean `{m}`?"),
                None if expected.is_empty() => "remove it".to_string(),
                None => format!("remove it; the keys here are {}", list(expected, "`")),
            };
            let line = line(&doc, text, &segs);
            problems.push(Problem {
                line,
                error: FieldError {
                    path: path_string(&segs),
                    message: format!("unknown field `{field}`{}", at(line)),
                    fix,
                },
                segs: segs.clone(),
                example: None,
            });
            if !remove(&mut value, &segs) {
                break;
            }
            touched.push(segs);
            continue;
        }

        if let Some(rest) = after(&raw, "missing field `") {
            let field = rest.split('`').next().unwrap_or("").to_string();
            segs.push(Seg::Key(field));
            if !touched.iter().any(|t| segs.starts_with(t)) {
                let line = line(&doc, text, &segs[..segs.len() - 1]);
                problems.push(Problem {
                    line,
                    error: FieldError {
                        path: path_string(&segs),
                        message: format!("is required but missing{}", at(line)),
                        fix: "add it; docs/config.md says what it takes".into(),
                    },
                    segs: segs.clone(),
                    example: None,
                });
                touched.push(segs.clone());
            }
            let [first, ..] = stand_ins();
            if !set(&mut value, &segs, first) {
                break;
            }
            standing.push((segs, 0));
            continue;
        }

        // A value of the wrong type, out of range, or not in the field's own grammar.
        let (mut message, mut fix, want) = describe(&raw, get(&value, &segs));
        if raw.contains("variant") && !raw.contains("unknown variant") {
            // An enum given something other than a string: serde says "expected string only".
            if let Some(names) = variants(&value, &segs) {
                let got = got_phrase(raw.split(", expected").next().unwrap_or(""));
                let got = value_phrase(get(&value, &segs)).unwrap_or(got);
                message = format!("expected one of {}, got {got}", list(&names, "\""));
                fix = format!(
                    "write one of them in double quotes, e.g. {}",
                    list(&names[..1], "\"")
                );
            }
        }
        let path = path_string(&segs);
        if problems.iter().any(|p| p.error.path == path) {
            // Taking the key out did not make the error go: stop rather than repeat it.
            break;
        }
        let line = line(&doc, text, &segs);
        problems.push(Problem {
            line,
            error: FieldError {
                path,
                message: format!("{message}{}", at(line)),
                fix,
            },
            segs: segs.clone(),
            example: want,
        });
        // An element of a list cannot go alone (the indexes after it would shift): the list
        // goes, and its default applies.
        while matches!(segs.last(), Some(Seg::Index(_))) {
            segs.pop();
        }
        if !remove(&mut value, &segs) {
            break;
        }
        touched.push(segs);
    }

    // Top to bottom, as an editor shows them; keys without a line (stand-ins) last.
    problems.sort_by_key(|p| (p.line.is_none(), p.line));
    let mut errors = Vec::new();
    let defaults = config.as_ref().and_then(|c| Value::try_from(c).ok());
    for mut p in problems {
        if let (Some(want), Some(d)) = (p.example, &defaults) {
            if let (Some(v), Some(Seg::Key(key))) = (get(d, &p.segs), p.segs.last()) {
                let fits = match want {
                    Want::WholeNumber => v.is_integer(),
                    Want::Number => v.is_integer() || v.is_float(),
                    Want::Text => v.is_str(),
                    Want::Other => false,
                };
                if fits && !standing.iter().any(|(s, _)| p.segs.starts_with(s)) {
                    let _ = write!(p.error.fix, ", e.g. {key} = {v}");
                }
            }
        }
        errors.push(p.error);
    }
    if let Some(c) = &config {
        if let Err(e) = c.validate() {
            let reported: Vec<String> = touched.iter().map(|t| path_string(t)).collect();
            // A table that got a stand-in key is partly invented: what is said about it as a
            // whole is a consequence too.
            let invented: Vec<String> = standing
                .iter()
                .map(|(s, _)| path_string(&s[..s.len() - 1]))
                .collect();
            errors.extend(e.errors.into_iter().filter(|e| {
                !invented.contains(&e.path)
                    && !reported.iter().any(|r| {
                        e.path == *r
                            || e.path.starts_with(&format!("{r}."))
                            || e.path.starts_with(&format!("{r}["))
                            || e.message.contains(r.as_str())
                    })
            }));
        }
    }
    if config.is_none() && errors.is_empty() {
        // Not reached by any document we know of; an empty list must never mean "invalid".
        errors.push(FieldError {
            path: "(top level)".into(),
            message: "could not be read as a cutover config".into(),
            fix: "compare it with examples/cutover.toml".into(),
        });
    }
    (config, errors)
}

/// Which key of the table at `segs` serde's message `raw` is about: the one whose value the
/// message quotes (`string "x"`, `integer `5``), and, among several, the one whose removal
/// changes the error.
fn culprit(root: &Value, segs: &[Seg], table: &toml::Table, raw: &str) -> Option<String> {
    let quoted: Vec<&String> = table
        .iter()
        .filter(|(_, v)| match v {
            Value::String(s) => raw.contains(&format!("{s:?}")),
            Value::Integer(i) => raw.contains(&format!("`{i}`")),
            Value::Float(f) => raw.contains(&format!("`{f}`")),
            Value::Boolean(b) => raw.contains(&format!("`{b}`")),
            Value::Array(_) => raw.contains("sequence"),
            Value::Table(_) | Value::Datetime(_) => false,
        })
        .map(|(k, _)| k)
        .collect();
    if quoted.len() == 1 {
        return Some(quoted[0].clone());
    }
    // Several keys hold what the message quotes: the culprit is one that, alone among them,
    // still gets the same error.
    quoted
        .iter()
        .find(|k| {
            let mut probe = root.clone();
            quoted.iter().filter(|o| o != k).all(|o| {
                let mut p = segs.to_vec();
                p.push(Seg::Key((*o).clone()));
                remove(&mut probe, &p)
            }) && serde_path_to_error::deserialize::<_, Config>(probe)
                .err()
                .is_some_and(|e| segs_of(e.path()) == segs && e.inner().message() == raw)
        })
        .map(|k| (*k).clone())
}

/// The names a field of an enum takes, asked of serde by giving it one it cannot know.
fn variants(root: &Value, segs: &[Seg]) -> Option<Vec<String>> {
    let mut probe = root.clone();
    if !set(&mut probe, segs, Value::String("\u{1}".into())) {
        return None;
    }
    let e = serde_path_to_error::deserialize::<_, Config>(probe).err()?;
    let msg = e.inner().message();
    let names: Vec<String> = backticked(msg).into_iter().skip(1).collect();
    (segs_of(e.path()) == segs && msg.starts_with("unknown variant") && !names.is_empty())
        .then_some(names)
}

/// What is wrong with a value and how to write it, from serde's message and the value itself.
fn describe(raw: &str, value: Option<&Value>) -> (String, String, Option<Want>) {
    if raw == "invalid socket address syntax" {
        let (m, f) = socket_addr(value);
        return (m, f, None);
    }
    if raw == "invalid IP address syntax" {
        let shown = value.map_or("the value".into(), show);
        return (
            format!("{shown} is not an IP address"),
            "write an IP address such as \"127.0.0.1\" or \"::1\"; host names are not resolved"
                .into(),
            None,
        );
    }
    let typed = after(raw, "invalid type: ").or_else(|| after(raw, "invalid value: "));
    if let Some((got, expected)) = typed.and_then(|t| t.rsplit_once(", expected ")) {
        let (wanted, want) = expectation(expected);
        let got = got_phrase(got);
        let quoted = got.starts_with("the string");
        let fix = match want {
            Want::WholeNumber | Want::Number if quoted => {
                "write the number without quotes".to_string()
            }
            Want::Text => "put the value in double quotes".to_string(),
            _ if wanted == "a table" => {
                "write a table: a [section] with its keys, or { key = value, ... }".to_string()
            }
            _ => format!("write {wanted}"),
        };
        return (format!("expected {wanted}, got {got}"), fix, Some(want));
    }
    if let Some(rest) = after(raw, "unknown variant `") {
        let given = rest.split('`').next().unwrap_or("");
        let names = backticked(raw);
        let allowed = &names[1.min(names.len())..];
        let fix = match closest(given, allowed) {
            Some(m) => format!("did you mean \"{m}\"?"),
            None => format!("use one of {}", list(allowed, "\"")),
        };
        return (
            format!("\"{given}\" is not one of {}", list(allowed, "\"")),
            fix,
            None,
        );
    }
    // A type's own error (a duration, a pause): "what is wrong; how to write it".
    match raw.rsplit_once("; ") {
        Some((m, f)) => (m.to_string(), f.to_string(), None),
        None => (
            raw.to_string(),
            "see docs/config.md for what this key takes".into(),
            None,
        ),
    }
}

/// serde's name of a type, as a user would say what to write.
fn expectation(expected: &str) -> (String, Want) {
    let whole = |range: &str| (format!("a whole number {range}"), Want::WholeNumber);
    match expected {
        "u8" => whole("from 0 to 255"),
        "u16" => whole("from 0 to 65535"),
        "u32" => whole("from 0 to 4294967295"),
        "u64" | "usize" => whole("of 0 or more"),
        "i8" | "i16" | "i32" | "i64" | "isize" => ("a whole number".into(), Want::WholeNumber),
        "f32" | "f64" => ("a number".into(), Want::Number),
        "a string" => ("a string".into(), Want::Text),
        "a boolean" => ("true or false".into(), Want::Other),
        "a sequence" => ("a list, like [\"a\", \"b\"]".into(), Want::Other),
        "a map" => ("a table".into(), Want::Other),
        "socket address" => (
            "an IP address and port as a string, like \"127.0.0.1:8080\"".into(),
            Want::Other,
        ),
        e if e.starts_with("struct ") => ("a table".into(), Want::Other),
        e if e.starts_with("a duration") => (e.to_string(), Want::Text),
        e if e.starts_with("internally tagged enum") => (
            "a table with its `metric` and the fields of that kind".into(),
            Want::Other,
        ),
        e => (e.to_string(), Want::Other),
    }
}

/// serde's description of what was given (`string "ten"`, `integer `5``), in words.
fn got_phrase(got: &str) -> String {
    let inner = || got.split('`').nth(1).unwrap_or("").to_string();
    if let Some(s) = got.strip_prefix("string ") {
        format!("the string {s}")
    } else if got.starts_with("integer") || got.starts_with("floating point") {
        format!("the number {}", inner())
    } else if got.starts_with("boolean") {
        inner()
    } else if got == "map" {
        "a table".into()
    } else if got == "sequence" {
        "a list".into()
    } else {
        got.to_string()
    }
}

/// A value as a user wrote it, for "got ...".
fn value_phrase(v: Option<&Value>) -> Option<String> {
    Some(match v? {
        Value::String(s) => format!("the string {s:?}"),
        Value::Integer(i) => format!("the number {i}"),
        Value::Float(f) => format!("the number {f}"),
        Value::Boolean(b) => b.to_string(),
        Value::Array(_) => "a list".into(),
        Value::Table(_) => "a table".into(),
        Value::Datetime(d) => format!("the date {d}"),
    })
}

/// Why a string is not an `IP:port`, and how to write it. Host names are refused rather than
/// resolved: a config must mean the same on every start, and a name can resolve to several
/// addresses, or to another one tomorrow.
fn socket_addr(value: Option<&Value>) -> (String, String) {
    let Some(Value::String(s)) = value else {
        return (
            "is not a socket address".into(),
            "write an IP address and a port, e.g. \"127.0.0.1:8080\"".into(),
        );
    };
    let Some((host, port)) = s.rsplit_once(':') else {
        return (
            format!("{s:?} is not a socket address: it has no port"),
            format!(
                "write an IP address and a port, e.g. \"{}:8080\"",
                ip_or_loopback(s)
            ),
        );
    };
    let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    let host_ok = host.parse::<Ipv4Addr>().is_ok()
        || bracketed.is_some_and(|h| h.parse::<Ipv6Addr>().is_ok());
    let port_problem = match port.parse::<u64>() {
        Err(_) => Some(format!("port {port:?} is not a number")),
        Ok(p) if p > 65535 => Some(format!("port {p} is out of range (0–65535)")),
        Ok(_) => None,
    };
    let host_fixed = if host_ok {
        host.to_string()
    } else {
        ip_or_loopback(host)
    };
    if let Some(problem) = port_problem {
        return (
            format!("{s:?} is not a socket address: {problem}"),
            format!("write it as \"{host_fixed}:8080\" (port 0 picks a free port)"),
        );
    }
    if host.parse::<Ipv6Addr>().is_ok() {
        return (
            format!("{s:?} is not a socket address: an IPv6 address needs brackets"),
            format!("write it as \"[{host}]:{port}\""),
        );
    }
    if !host_ok {
        return (
            format!("{s:?} is not a socket address: {host:?} is a host name, not an IP address"),
            format!(
                "write an IP address, e.g. \"{host_fixed}:{port}\" (or \"0.0.0.0:{port}\" for every interface); cutover does not resolve names"
            ),
        );
    }
    (
        format!("{s:?} is not a socket address"),
        "write an IP address and a port, e.g. \"127.0.0.1:8080\"".into(),
    )
}

/// `localhost` (or any name) → the loopback address, an address → itself.
fn ip_or_loopback(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(a)) => format!("[{a}]"),
        Ok(a) => a.to_string(),
        Err(_) => "127.0.0.1".into(),
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn after<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    s.find(prefix).map(|i| &s[i + prefix.len()..])
}

/// Every `name` in backticks, in order.
fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn list(names: &[String], quote: &str) -> String {
    names
        .iter()
        .map(|n| format!("{quote}{n}{quote}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The name a typo most likely meant: within 2 edits, and fewer than half its letters.
fn closest<'a>(given: &str, names: &'a [String]) -> Option<&'a str> {
    names
        .iter()
        .map(|n| (edit_distance(given, n), n))
        .filter(|(d, n)| *d <= 2 && *d * 2 < n.chars().count().max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n.as_str())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn get<'a>(v: &'a Value, segs: &[Seg]) -> Option<&'a Value> {
    segs.iter().try_fold(v, |v, seg| match (v, seg) {
        (Value::Table(t), Seg::Key(k)) => t.get(k),
        (Value::Array(a), Seg::Index(i)) => a.get(*i),
        _ => None,
    })
}

fn get_mut<'a>(v: &'a mut Value, segs: &[Seg]) -> Option<&'a mut Value> {
    segs.iter().try_fold(v, |v, seg| match (v, seg) {
        (Value::Table(t), Seg::Key(k)) => t.get_mut(k),
        (Value::Array(a), Seg::Index(i)) => a.get_mut(*i),
        _ => None,
    })
}

/// Takes the key at `segs` out of its table; false when there is none.
fn remove(v: &mut Value, segs: &[Seg]) -> bool {
    let Some((Seg::Key(k), parent)) = segs.split_last() else {
        return false;
    };
    match get_mut(v, parent) {
        Some(Value::Table(t)) => t.remove(k).is_some(),
        _ => false,
    }
}

/// Sets the key at `segs` in its table; false when the table is not there.
fn set(v: &mut Value, segs: &[Seg], new: Value) -> bool {
    let Some((Seg::Key(k), parent)) = segs.split_last() else {
        return false;
    };
    match get_mut(v, parent) {
        Some(Value::Table(t)) => {
            t.insert(k.clone(), new);
            true
        }
        _ => false,
    }
}

/// The line of the value at `segs` (or of the nearest table around it that has a place).
fn line(doc: &Option<toml_edit::ImDocument<&str>>, text: &str, segs: &[Seg]) -> Option<usize> {
    let doc = doc.as_ref()?;
    (0..=segs.len())
        .rev()
        .find_map(|n| span_of(doc.as_table(), &segs[..n]))
        .map(|s| line_of(text, s.start))
}

fn at(line: Option<usize>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}

enum Node<'a> {
    Item(&'a toml_edit::Item),
    Table(&'a toml_edit::Table),
    Value(&'a toml_edit::Value),
}

fn span_of(root: &toml_edit::Table, segs: &[Seg]) -> Option<std::ops::Range<usize>> {
    use toml_edit::{Item, Value as V};
    let mut node = Node::Table(root);
    for seg in segs {
        node = match (node, seg) {
            (Node::Table(t), Seg::Key(k)) | (Node::Item(Item::Table(t)), Seg::Key(k)) => {
                Node::Item(t.get(k)?)
            }
            (Node::Item(Item::Value(V::InlineTable(t))), Seg::Key(k))
            | (Node::Value(V::InlineTable(t)), Seg::Key(k)) => Node::Value(t.get(k)?),
            (Node::Item(Item::ArrayOfTables(a)), Seg::Index(i)) => Node::Table(a.get(*i)?),
            (Node::Item(Item::Value(V::Array(a))), Seg::Index(i))
            | (Node::Value(V::Array(a)), Seg::Index(i)) => Node::Value(a.get(*i)?),
            _ => return None,
        };
    }
    match node {
        Node::Item(i) => i.span(),
        Node::Table(t) => t.span(),
        Node::Value(v) => v.span(),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let col = before.chars().rev().take_while(|c| *c != '\n').count() + 1;
    format!("line {}, column {col}", line_of(text, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_within_two_edits_are_suggested() {
        let names: Vec<String> = ["step_interval", "interval", "window"]
            .map(String::from)
            .to_vec();
        assert_eq!(closest("step_intervall", &names), Some("step_interval"));
        assert_eq!(closest("windw", &names), Some("window"));
        assert_eq!(closest("colour", &names), None);
    }

    #[test]
    fn socket_addresses_get_a_reason_and_a_rewrite() {
        let v = |s: &str| Value::String(s.into());
        let (m, f) = socket_addr(Some(&v("localhost:99999")));
        assert!(m.contains("port 99999 is out of range (0–65535)"), "{m}");
        assert!(f.contains("127.0.0.1:8080"), "{f}");
        let (m, f) = socket_addr(Some(&v("localhost:8080")));
        assert!(m.contains("\"localhost\" is a host name"), "{m}");
        assert!(f.contains("\"127.0.0.1:8080\""), "{f}");
        let (m, f) = socket_addr(Some(&v("::1:8080")));
        assert!(m.contains("port") || m.contains("brackets"), "{m}");
        assert!(f.contains('['), "{f}");
        let (m, _) = socket_addr(Some(&v("127.0.0.1")));
        assert!(m.contains("no port"), "{m}");
    }
}
