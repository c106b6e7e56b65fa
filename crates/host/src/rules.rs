//! PromQL rules: checked when the config is loaded, expanded per rollout, evaluated over the
//! in-memory series store (embedded) or handed to the Prometheus evaluator task.
//!
//! The engine never sees a query: each rule's result reaches it as a
//! [`cutover_core::judge::External`] in the `Measured` event.

use cutover_core::engine::Release;
use cutover_core::judge::External;
use cutover_core::spec::{AbortSpec, Config, ConfigError, FieldError, GateSpec, Provider};
use cutover_core::Track;
use cutover_promql::{EvalOptions, MemStore, Query, RuleResult};
use std::collections::{BTreeMap, HashMap};

/// One PromQL rule of the config.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub template: String,
    pub provider: Provider,
}

/// Every PromQL rule (gates and abort rules), in config order.
pub fn rules(config: &Config) -> Vec<Rule> {
    with_paths(config).into_iter().map(|(_, r)| r).collect()
}

/// The rules with the config path of their `query`, for error messages.
fn with_paths(config: &Config) -> Vec<(String, Rule)> {
    let mut out = Vec::new();
    for (i, g) in config.rollout.gates.iter().enumerate() {
        if let GateSpec::Promql {
            name,
            query,
            provider,
        } = g
        {
            out.push((
                format!("rollout.gates[{i}].query"),
                Rule {
                    name: name.clone(),
                    template: query.clone(),
                    provider: *provider,
                },
            ));
        }
    }
    for (i, a) in config.rollout.aborts.iter().enumerate() {
        if let AbortSpec::Promql {
            name,
            query,
            provider,
            ..
        } = a
        {
            out.push((
                format!("rollout.aborts[{i}].query"),
                Rule {
                    name: name.clone(),
                    template: query.clone(),
                    provider: *provider,
                },
            ));
        }
    }
    out
}

/// The template variables of a rollout: the canary's `track` and `version`, stable's version,
/// the service.
pub fn vars(service: &str, canary: &Release, stable: Option<&Release>) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("service".to_string(), service.to_string()),
        ("track".to_string(), Track::Canary.as_str().to_string()),
        ("version".to_string(), canary.version.clone()),
        (
            "stable_version".to_string(),
            stable.map_or(String::new(), |s| s.version.clone()),
        ),
    ])
}

/// Parses every rule with placeholder variables, so a config with an unsupported function or a
/// typo is refused at load, naming the field.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    let probe = vars(
        &config.service.name,
        &Release::new("v0", "d"),
        Some(&Release::new("v1", "d")),
    );
    let mut errors = Vec::new();
    for (path, rule) in with_paths(config) {
        let parsed = cutover_promql::expand(&rule.template, &probe)
            .map_err(|e| e.to_string())
            .and_then(|q| Query::parse(&q).map_err(|e| e.to_string()));
        if let Err(message) = parsed {
            errors.push(FieldError {
                path,
                message,
                fix: "use the supported PromQL subset (docs/analysis.md, \"The supported PromQL subset\") and the variables {{track}}, {{version}}, {{stable_version}}, {{service}}".into(),
            });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigError { errors })
    }
}

/// Turns a rule result into what the engine reads.
pub fn external(query: &str, result: Result<RuleResult, String>) -> External {
    match result {
        Ok(RuleResult::Fired { value }) => External::Fired {
            value,
            detail: format!("{query} fires{}", value_suffix(value)),
        },
        Ok(RuleResult::Clear { value }) => External::Clear {
            value,
            detail: format!("{query} does not fire{}", value_suffix(value)),
        },
        Ok(RuleResult::NoData) => External::NoData {
            detail: format!("no data for {query}"),
        },
        Err(e) => External::NoData {
            detail: format!("could not evaluate {query}: {e}"),
        },
    }
}

fn value_suffix(v: Option<f64>) -> String {
    v.map(|v| format!(" (value {v:.6})")).unwrap_or_default()
}

/// Evaluates the embedded rules, caching parsed queries by their expanded text.
#[derive(Default)]
pub struct Embedded {
    cache: HashMap<String, Query>,
}

impl Embedded {
    pub fn eval(
        &mut self,
        rules: &[Rule],
        vars: &BTreeMap<String, String>,
        store: &MemStore,
        at_ms: i64,
        opts: &EvalOptions,
    ) -> BTreeMap<String, External> {
        let mut out = BTreeMap::new();
        for r in rules.iter().filter(|r| r.provider == Provider::Embedded) {
            let text = match cutover_promql::expand(&r.template, vars) {
                Ok(t) => t,
                Err(e) => {
                    out.insert(
                        r.name.clone(),
                        External::NoData {
                            detail: e.to_string(),
                        },
                    );
                    continue;
                }
            };
            if !self.cache.contains_key(&text) {
                match Query::parse(&text) {
                    Ok(q) => {
                        self.cache.insert(text.clone(), q);
                    }
                    Err(e) => {
                        out.insert(
                            r.name.clone(),
                            External::NoData {
                                detail: e.to_string(),
                            },
                        );
                        continue;
                    }
                }
            }
            if let Some(q) = self.cache.get(&text) {
                let result = q.eval_rule(store, at_ms, opts).map_err(|e| e.to_string());
                out.insert(r.name.clone(), external(&text, result));
            }
        }
        out
    }
}
