//! `cutover reload`: what a changed config file means for a running cutover, decided without IO.
//!
//! [`plan`] compares the running config with the file's, key by key, and says for each changed
//! key when it applies ([`Applies`]) or why it cannot apply without a restart ([`Refusal`]).
//! A plan with any refusal is refused whole: a reload never half-applies (DESIGN.md
//! invariant 9). What applies when:
//!
//! | keys | applies |
//! |---|---|
//! | `rollout.*` (gates, aborts, schedule, holds) | to the next rollout; at once when none is in progress. A running rollout keeps the policy it was judged by from its start, so its breaches and holds stay meaningful |
//! | `app.command`, `app.env`, `app.workdir`, `app.digest_paths`, `app.start_timeout` | to the instances of the next deploy (they are part of the release) |
//! | `alerts.*` | at once (each Alertmanager notification is matched when it arrives) |
//! | everything else | refused: the listeners (`service.listen`, `admin.listen`) and what the proxy, the supervisor, the evaluation clock, the metrics store and the notifier were built with at start; restart cutover for those |

use crate::spec::Config;
use serde::Serialize;
use serde_json::Value;

/// When a changed key takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Applies {
    /// From the next evaluation or request on.
    Now,
    /// When the next rollout is deployed (a rollout is in progress and keeps its policy).
    NextRollout,
    /// To the instances of the next deploy; running instances keep what they started with.
    NewInstances,
}

impl Applies {
    /// As status and the CLI say it.
    pub fn describe(self) -> &'static str {
        match self {
            Applies::Now => "applies now",
            Applies::NextRollout => "applies to the next rollout",
            Applies::NewInstances => "applies to the instances of the next deploy",
        }
    }
}

/// One changed key and when it applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The dotted key path (`rollout.aborts`).
    pub key: String,
    pub applies: Applies,
}

/// A changed key that cannot apply to a running cutover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub key: String,
    /// Why, and what to do instead.
    pub reason: String,
}

/// What reloading would do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Plan {
    pub changes: Vec<Change>,
    pub refused: Vec<Refusal>,
}

impl Plan {
    /// Nothing differs.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.refused.is_empty()
    }
}

/// Keys read once at start, and why each cannot change under a running cutover.
const AT_START: &[(&str, &str)] = &[
    ("service.listen", "the listeners change only with a restart of cutover (under systemd, change cutover.socket's ListenStream= too)"),
    ("admin.listen", "the listeners change only with a restart of cutover (under systemd, change cutover.socket's ListenStream= too)"),
    ("service.name", "the service's identity names its state and history; it never changes under a running cutover"),
    ("service.state_dir", "the state store is opened at start; move it with cutover stopped"),
    ("rollout.window", "the proxy's measurement windows are sized at start; restart cutover to change it"),
    ("rollout.interval", "the evaluation clock and the scrapers are started at start; restart cutover to change it"),
    ("rollout.max_lookback", "the measurement history is sized at start; restart cutover to change it"),
    ("app.instances", "the supervisor runs the instances it started with; restart cutover to change it"),
    ("app.readiness", "the supervisor probes with the settings it started with; restart cutover to change it"),
    ("app.liveness", "the supervisor probes with the settings it started with; restart cutover to change it"),
    ("app.stop", "the supervisor stops instances with the settings it started with; restart cutover to change it"),
    ("app.restart", "the supervisor restarts instances with the settings it started with; restart cutover to change it"),
    ("app.upstream_protocol", "the proxy's upstream connections are set up at start; restart cutover to change it"),
];

/// Keys that apply to what the next deploy starts.
const PER_RELEASE: &[&str] = &[
    "app.command",
    "app.env",
    "app.workdir",
    "app.digest_paths",
    "app.start_timeout",
];

/// What reloading `file` over `running` would do; `rollout_in_progress`: a canary is starting,
/// progressing or paused (its policy then stays until it ends).
pub fn plan(running: &Config, file: &Config, rollout_in_progress: bool) -> Plan {
    let mut keys = Vec::new();
    diff(
        &serde_json::to_value(running).unwrap_or(Value::Null),
        &serde_json::to_value(file).unwrap_or(Value::Null),
        "",
        &mut keys,
    );
    let mut plan = Plan::default();
    for key in keys {
        let under = |prefix: &str| key == prefix || key.starts_with(&format!("{prefix}."));
        if let Some((_, reason)) = AT_START.iter().find(|(k, _)| under(k)) {
            plan.refused.push(Refusal {
                key,
                reason: (*reason).to_string(),
            });
        } else if PER_RELEASE.iter().any(|k| under(k)) {
            plan.changes.push(Change {
                key,
                applies: Applies::NewInstances,
            });
        } else if under("rollout") {
            plan.changes.push(Change {
                key,
                applies: if rollout_in_progress {
                    Applies::NextRollout
                } else {
                    Applies::Now
                },
            });
        } else if under("alerts") {
            plan.changes.push(Change {
                key,
                applies: Applies::Now,
            });
        } else {
            let section = key.split('.').next().unwrap_or(&key).to_string();
            plan.refused.push(Refusal {
                reason: format!(
                    "[{section}] is set up at start (the proxy, the metrics store, the notifier, the log); restart cutover to change it"
                ),
                key,
            });
        }
    }
    plan
}

/// The dotted paths where `a` and `b` differ: tables key by key, anything else as a whole.
fn diff(a: &Value, b: &Value, at: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => diff(p, q, &path, out),
                    (None, None) => {}
                    _ => out.push(path),
                }
            }
        }
        _ if a != b => out.push(at.to_string()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[service]
name = "shop"
listen = "127.0.0.1:8080"
[app]
command = ["./app", "--port", "{port}"]
[[rollout.aborts]]
name = "p99"
metric = "latency"
quantile = 0.99
above = "800ms"
for = "45s"
"#;

    fn cfg(text: &str) -> Config {
        Config::from_toml_str(text).unwrap()
    }

    #[test]
    fn the_same_config_changes_nothing() {
        assert!(plan(&cfg(BASE), &cfg(BASE), true).is_empty());
    }

    #[test]
    fn an_abort_rule_applies_to_the_next_rollout_or_now() {
        let new = cfg(&BASE.replace("800ms", "300ms"));
        let p = plan(&cfg(BASE), &new, true);
        assert_eq!(
            p.changes,
            vec![Change {
                key: "rollout.aborts".into(),
                applies: Applies::NextRollout
            }]
        );
        assert!(p.refused.is_empty());
        assert_eq!(
            plan(&cfg(BASE), &new, false).changes[0].applies,
            Applies::Now
        );
    }

    #[test]
    fn app_command_applies_to_new_instances() {
        let new = cfg(&BASE.replace("\"./app\"", "\"./app2\""));
        let p = plan(&cfg(BASE), &new, true);
        assert_eq!(p.changes[0].key, "app.command");
        assert_eq!(p.changes[0].applies, Applies::NewInstances);
    }

    #[test]
    fn a_listener_or_a_start_time_setting_is_refused_naming_it() {
        let new = cfg(&BASE
            .replace("127.0.0.1:8080", "127.0.0.1:8081")
            .replace("[app]", "[sticky]\nheader = \"x-user\"\n[app]"));
        let p = plan(&cfg(BASE), &new, false);
        let keys: Vec<&str> = p.refused.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, vec!["service.listen", "sticky.header"], "{p:?}");
        assert!(p.refused[0].reason.contains("restart"));
    }
}
