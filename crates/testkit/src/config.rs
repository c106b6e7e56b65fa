//! A cutover config as a TOML table, edited through checked setters.
//!
//! Tests used to edit the config's text with `str::replace`, which does nothing when the text
//! it looks for has moved: the test then ran on a config it did not mean, and still passed.
//! Every edit here names a key path and panics when the key is not where the edit expects it.

use std::fmt;
use toml::{Table, Value};

/// The time-compressed end-to-end config: 50 ms evaluations over 1 s windows, 400 ms steps
/// from 5 %, two gates and two abort rules. `{exe}` is the demo-app binary.
const E2E: &str = r#"
[service]
name = "e2e"
listen = "127.0.0.1:0"
state_dir = "state"
[admin]
listen = "127.0.0.1:0"
[app]
command = [{exe}, "--port", "{port}", "--version", "{version}"]
env = { DEMO_LATENCY = "1ms" }
instances = 1
start_timeout = "20s"
[app.readiness]
path = "/ready"
interval = "20ms"
timeout = "500ms"
[app.liveness]
path = "/live"
interval = "50ms"
timeout = "500ms"
failure_threshold = 5
[app.stop]
drain_timeout = "3s"
grace = "2s"
[app.restart]
backoff_initial = "50ms"
backoff_max = "200ms"
crash_loop_restarts = 3
crash_loop_window = "20s"
[rollout]
initial_weight = 5.0
step_interval = "400ms"
interval = "50ms"
window = "1s"
min_samples = 10
max_hold = "60s"
hold_previous = "60s"
[[rollout.gates]]
name = "p99-vs-stable"
metric = "latency"
quantile = 0.99
max_increase_percent = 5.0
slack = "50ms"
[[rollout.gates]]
name = "error-budget"
metric = "error_ratio"
max = 0.001
[[rollout.aborts]]
name = "p99-over-800ms"
metric = "latency"
quantile = 0.99
above = "800ms"
for = "500ms"
[[rollout.aborts]]
name = "error-budget-fast-burn"
metric = "error_ratio"
above = 0.0144
for = "300ms"
[log]
level = "warn"
"#;

/// A cutover config under construction. Generic edits take a dotted key path
/// (`"app.stop.drain_timeout"`) and are checked:
/// - [`set`](Self::set) replaces a key that must already exist;
/// - [`insert`](Self::insert) adds a key that must not exist yet, in a table that must;
/// - [`remove`](Self::remove) drops a key that must exist;
/// - [`merge`](Self::merge) adds TOML text: new tables and keys, `[[array]]` entries appended;
///   a key it would overwrite is a panic.
///
/// Typed setters cover the fields the end-to-end tests change. A misspelt key that gets past
/// these checks (an [`insert`](Self::insert) of a new name) is refused by the config parser,
/// which rejects unknown fields; [`build`](Self::build) parses the result.
#[derive(Clone, PartialEq)]
pub struct ConfigBuilder {
    table: Table,
}

impl fmt::Debug for ConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_toml())
    }
}

impl fmt::Display for ConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_toml())
    }
}

impl ConfigBuilder {
    /// The time-compressed end-to-end config running [`crate::demo_app`].
    pub fn e2e() -> ConfigBuilder {
        let exe = crate::demo_app().display().to_string();
        ConfigBuilder::parse(&E2E.replacen("{exe}", &format!("{exe:?}"), 1))
    }

    /// A builder over existing TOML text; panics if the text is not TOML.
    pub fn parse(text: &str) -> ConfigBuilder {
        let table = text
            .parse::<Table>()
            .unwrap_or_else(|e| panic!("not TOML: {e}\n{text}"));
        ConfigBuilder { table }
    }

    /// The config as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.table).expect("a TOML table serialises")
    }

    /// The parsed, validated config; panics with the parser's error when it is refused.
    pub fn build(&self) -> cutover_core::spec::Config {
        let text = self.to_toml();
        cutover_core::spec::Config::from_toml_str(&text)
            .unwrap_or_else(|e| panic!("the built config is refused: {e}\n{text}"))
    }

    /// The value at `path`, if there is one.
    pub fn get(&self, path: &str) -> Option<&Value> {
        let (parent, key) = split(path);
        let mut t = &self.table;
        for part in parent {
            t = t.get(part)?.as_table()?;
        }
        t.get(key)
    }

    /// Replaces the value at `path`, which must exist.
    pub fn set(mut self, path: &str, value: impl Into<Value>) -> Self {
        let (t, key) = self.parent_mut(path);
        match t.get_mut(key) {
            Some(slot) => *slot = value.into(),
            None => panic!("set {path}: no such key in the config (use insert to add one)"),
        }
        self
    }

    /// Adds `path`, which must not exist yet, to a table that must.
    pub fn insert(mut self, path: &str, value: impl Into<Value>) -> Self {
        let (t, key) = self.parent_mut(path);
        assert!(
            !t.contains_key(key),
            "insert {path}: the key is already there (use set to change it)"
        );
        t.insert(key.to_string(), value.into());
        self
    }

    /// Sets `path` whether or not it exists; its table must exist. For optional fields the
    /// typed setters change.
    fn put(mut self, path: &str, value: impl Into<Value>) -> Self {
        let (t, key) = self.parent_mut(path);
        t.insert(key.to_string(), value.into());
        self
    }

    /// Removes `path`, which must exist.
    pub fn remove(mut self, path: &str) -> Self {
        let (t, key) = self.parent_mut(path);
        assert!(
            t.remove(key).is_some(),
            "remove {path}: no such key in the config"
        );
        self
    }

    /// Adds the tables and keys of `text` (TOML). Entries of `[[array]]` tables are appended to
    /// the array already there; a key that is already set is a panic, so a merge never
    /// silently overrides the base config.
    pub fn merge(mut self, text: &str) -> Self {
        let add = text
            .parse::<Table>()
            .unwrap_or_else(|e| panic!("merge: not TOML: {e}\n{text}"));
        merge_into(&mut self.table, add, "");
        self
    }

    fn parent_mut<'s, 'p>(&'s mut self, path: &'p str) -> (&'s mut Table, &'p str) {
        let (parent, key) = split(path);
        let mut t = &mut self.table;
        let mut at = String::new();
        for part in parent {
            if !at.is_empty() {
                at.push('.');
            }
            at.push_str(part);
            t = match t.get_mut(part) {
                Some(Value::Table(next)) => next,
                Some(_) => panic!("{path}: {at} is not a table"),
                None => panic!("{path}: no table {at} in the config"),
            };
        }
        (t, key)
    }

    // Typed setters for what the end-to-end tests vary.

    /// `app.command`.
    pub fn command(self, argv: &[&str]) -> Self {
        self.set("app.command", strings(argv))
    }

    /// Replaces the program, `app.command[0]`, with `words` (one path, or an interpreter and
    /// its script), keeping the arguments after it.
    pub fn program(self, words: &[&str]) -> Self {
        let Some(Value::Array(old)) = self.get("app.command") else {
            panic!("program: no app.command list in the config")
        };
        assert!(!old.is_empty(), "program: app.command is empty");
        let mut argv = strings(words).as_array().unwrap().clone();
        argv.extend(old[1..].iter().cloned());
        self.set("app.command", argv)
    }

    /// `app.env`, replacing the base environment.
    pub fn env(self, vars: &[(&str, &str)]) -> Self {
        let env: Table = vars
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect();
        self.set("app.env", env)
    }

    /// `app.start_timeout`.
    pub fn start_timeout(self, d: &str) -> Self {
        self.set("app.start_timeout", d)
    }

    /// `app.stop.drain_timeout`.
    pub fn drain_timeout(self, d: &str) -> Self {
        self.set("app.stop.drain_timeout", d)
    }

    /// `app.stop.quiet_period`.
    pub fn quiet_period(self, d: &str) -> Self {
        self.put("app.stop.quiet_period", d)
    }

    /// `app.stop.drain_path`.
    pub fn drain_path(self, p: &str) -> Self {
        self.put("app.stop.drain_path", p)
    }

    /// `rollout.initial_weight`.
    pub fn initial_weight(self, w: f64) -> Self {
        self.set("rollout.initial_weight", w)
    }

    /// `rollout.step_interval`.
    pub fn step_interval(self, d: &str) -> Self {
        self.set("rollout.step_interval", d)
    }

    /// `rollout.hold_previous`.
    pub fn hold_previous(self, d: &str) -> Self {
        self.set("rollout.hold_previous", d)
    }

    /// `rollout.max_inconclusive`.
    pub fn max_inconclusive(self, d: &str) -> Self {
        self.put("rollout.max_inconclusive", d)
    }

    /// `rollout.max_lookback`.
    pub fn max_lookback(self, d: &str) -> Self {
        self.put("rollout.max_lookback", d)
    }

    /// `admin.listen`.
    pub fn admin_listen(self, addr: impl fmt::Display) -> Self {
        self.set("admin.listen", addr.to_string())
    }

    /// `log.level`.
    pub fn log_level(self, level: &str) -> Self {
        self.set("log.level", level)
    }

    /// Drops every `[[rollout.aborts]]` rule.
    pub fn no_aborts(self) -> Self {
        self.remove("rollout.aborts")
    }

    /// Appends one `[[rollout.aborts]]` rule, given as the TOML of its fields.
    pub fn abort_rule(self, fields: &str) -> Self {
        self.merge(&format!("[[rollout.aborts]]\n{fields}"))
    }
}

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::from(*s)).collect())
}

fn split(path: &str) -> (std::str::Split<'_, char>, &str) {
    let (parent, key) = path.rsplit_once('.').unwrap_or(("", path));
    let mut parts = parent.split('.');
    if parent.is_empty() {
        // An empty parent walks no tables.
        parts.next();
    }
    (parts, key)
}

fn merge_into(base: &mut Table, add: Table, at: &str) {
    for (key, value) in add {
        let path = if at.is_empty() {
            key.clone()
        } else {
            format!("{at}.{key}")
        };
        match (base.get_mut(&key), value) {
            (None, value) => {
                base.insert(key, value);
            }
            (Some(Value::Table(old)), Value::Table(new)) => merge_into(old, new, &path),
            (Some(Value::Array(old)), Value::Array(new))
                if old.iter().chain(&new).all(Value::is_table) =>
            {
                old.extend(new)
            }
            (Some(_), _) => panic!("merge: {path} is already set (use set to change it)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ConfigBuilder {
        ConfigBuilder::parse(&E2E.replacen("{exe}", "\"/bin/true\"", 1))
    }

    #[test]
    fn the_e2e_text_round_trips_unchanged() {
        let b = base();
        assert_eq!(ConfigBuilder::parse(&b.to_toml()), b);
        assert_eq!(b.get("rollout.initial_weight"), Some(&Value::Float(5.0)));
        assert_eq!(
            b.get("app.command").unwrap().as_array().unwrap()[2].as_str(),
            Some("{port}")
        );
    }

    #[test]
    fn typed_setters_change_the_named_field() {
        let b = base()
            .drain_timeout("500ms")
            .quiet_period("300ms")
            .initial_weight(50.0)
            .env(&[("A", "1")])
            .program(&["python3", "app.py"]);
        assert_eq!(
            b.get("app.stop.drain_timeout").unwrap().as_str(),
            Some("500ms")
        );
        assert_eq!(
            b.get("app.stop.quiet_period").unwrap().as_str(),
            Some("300ms")
        );
        assert_eq!(b.get("rollout.initial_weight"), Some(&Value::Float(50.0)));
        assert_eq!(b.get("app.env.A").unwrap().as_str(), Some("1"));
        assert!(b.get("app.env.DEMO_LATENCY").is_none());
        let argv = b.get("app.command").unwrap().as_array().unwrap();
        let argv: Vec<_> = argv.iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(
            argv,
            [
                "python3",
                "app.py",
                "--port",
                "{port}",
                "--version",
                "{version}"
            ]
        );
    }

    #[test]
    #[should_panic(expected = "set rollout.step_intervall: no such key")]
    fn set_of_a_missing_key_panics() {
        let _ = base().set("rollout.step_intervall", "1s");
    }

    #[test]
    #[should_panic(expected = "no table app.stopp")]
    fn a_missing_table_panics() {
        let _ = base().insert("app.stopp.grace", "1s");
    }

    #[test]
    #[should_panic(expected = "insert app.instances: the key is already there")]
    fn insert_of_an_existing_key_panics() {
        let _ = base().insert("app.instances", 2);
    }

    #[test]
    #[should_panic(expected = "merge: log.level is already set")]
    fn merge_never_overrides() {
        let _ = base().merge("[log]\nlevel = \"info\"");
    }

    #[test]
    fn merge_appends_array_entries_and_adds_tables() {
        let b = base()
            .abort_rule("name = \"x\"\nmetric = \"promql\"\nquery = \"up > 0\"")
            .merge("[service.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"");
        let aborts = b.get("rollout.aborts").unwrap().as_array().unwrap();
        assert_eq!(aborts.len(), 3);
        assert_eq!(aborts[2]["name"].as_str(), Some("x"));
        assert_eq!(b.get("service.tls.cert").unwrap().as_str(), Some("c.pem"));
        assert_eq!(b.get("service.name").unwrap().as_str(), Some("e2e"));
    }

    #[test]
    fn no_aborts_then_a_rule_leaves_only_that_rule() {
        let b = base()
            .no_aborts()
            .abort_rule("name = \"only\"\nmetric = \"error_ratio\"\nabove = 0.1");
        assert_eq!(
            b.get("rollout.aborts").unwrap().as_array().unwrap().len(),
            1
        );
    }

    #[test]
    fn the_e2e_config_is_accepted_by_the_parser() {
        let cfg = base().build();
        assert_eq!(cfg.service.name, "e2e");
    }
}
