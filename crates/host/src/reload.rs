//! `cutover reload` and SIGHUP: re-read the config file, validate it, and apply what can apply
//! to a running cutover, as [`cutover_core::reload::plan`] decides.
//!
//! An invalid file, or one that changes a key only a restart can change, is refused whole with
//! every reason, and the running config is kept (DESIGN.md invariant 9: nothing half-applies).
//! A valid one is applied without a restart: the `[rollout]` policy at once when no rollout is
//! in progress, else when the next one is deployed (the running rollout keeps the policy it
//! is being judged by); the release settings of `[app]` to the next deploy's instances;
//! `[alerts]` at once. `status` says when the file differs from the config cutover runs.

use crate::config::{self, LoadError};
use cutover_admin::ApiError;
use cutover_core::reload::{plan, Applies, Plan};
use cutover_core::spec::{Config, RolloutSpec};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::Path;

/// The running config against its file, kept by the driver.
#[derive(Debug)]
pub struct Reloader {
    /// The file's config as last accepted (at start or by a reload): what `status` compares the
    /// file with.
    accepted: Config,
    /// A `[rollout]` policy accepted while a rollout was in progress, for the next one.
    pending: Option<RolloutSpec>,
}

/// What to apply now, after a reload is accepted.
#[derive(Debug)]
pub struct Accepted {
    /// The config to run from now on (its `[rollout]` is the running one while the new policy
    /// waits for the next rollout).
    pub config: Config,
    /// Whether the `[rollout]` policy changed now (the engine and its rules are rebuilt).
    pub policy_changed: bool,
    /// The reply: every change and when it applies.
    pub reply: Value,
}

/// How the config file compares with what cutover runs, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigView {
    /// The config file.
    pub path: String,
    /// `same`, `differs` (run `cutover reload`), `invalid` or `unreadable`.
    pub file: String,
    /// For `differs`: the keys that differ; for `invalid`/`unreadable`: why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detail: Vec<String>,
    /// Keys of a reloaded `[rollout]` policy that wait for the next rollout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
}

impl Reloader {
    pub fn new(running: &Config) -> Reloader {
        Reloader {
            accepted: running.clone(),
            pending: None,
        }
    }

    /// Reads and validates `path`; refuses it whole (with every reason) or says what to apply.
    /// `running`: the config cutover runs now; `in_progress`: a rollout is starting,
    /// progressing or paused.
    pub fn reload(
        &mut self,
        path: &Path,
        running: &Config,
        in_progress: bool,
    ) -> Result<Accepted, ApiError> {
        let file = config::load(path).map_err(|e| match e {
            LoadError::Read { .. } => {
                ApiError::invalid(format!("reload refused, nothing changed: {e}"))
            }
            LoadError::Invalid { .. } => ApiError::invalid(format!(
                "reload refused, nothing changed (the running config is kept): {e}"
            )),
        })?;
        let file = file.config;
        let p = plan(&self.accepted, &file, in_progress);
        if !p.refused.is_empty() {
            let reasons: Vec<String> = p
                .refused
                .iter()
                .map(|r| format!("{}: {}", r.key, r.reason))
                .collect();
            return Err(ApiError::invalid(format!(
                "reload refused, nothing changed: {} (fix: put these keys back as they are, or restart cutover)",
                reasons.join("; ")
            )));
        }
        let mut config = file.clone();
        let policy_changed = running.rollout != file.rollout;
        let (policy_changed, pending) = if policy_changed && in_progress {
            config.rollout = running.rollout.clone();
            (false, Some(file.rollout.clone()))
        } else {
            (policy_changed, None)
        };
        self.accepted = file;
        self.pending = pending;
        let reply = reply(&p);
        Ok(Accepted {
            config,
            policy_changed,
            reply,
        })
    }

    /// At a deploy (no rollout in progress): the `[rollout]` policy that waited for it.
    pub fn take_pending(&mut self) -> Option<RolloutSpec> {
        self.pending.take()
    }

    /// The file against the accepted config, for `status`.
    pub fn view(&self, path: &Path, running: &Config) -> ConfigView {
        let (file, detail) = match config::load(path) {
            Ok(l) => {
                let p = plan(&self.accepted, &l.config, false);
                if p.is_empty() {
                    ("same", Vec::new())
                } else {
                    let keys = p
                        .changes
                        .iter()
                        .map(|c| c.key.clone())
                        .chain(
                            p.refused
                                .iter()
                                .map(|r| format!("{} (needs a restart)", r.key)),
                        )
                        .collect();
                    ("differs", keys)
                }
            }
            Err(e @ LoadError::Read { .. }) => ("unreadable", vec![e.to_string()]),
            Err(e @ LoadError::Invalid { .. }) => ("invalid", vec![e.to_string()]),
        };
        let pending = match &self.pending {
            Some(next) => {
                let mut then = running.clone();
                then.rollout = next.clone();
                plan(running, &then, false)
                    .changes
                    .into_iter()
                    .map(|c| c.key)
                    .collect()
            }
            None => Vec::new(),
        };
        ConfigView {
            path: path.display().to_string(),
            file: file.to_string(),
            detail,
            pending,
        }
    }
}

fn reply(p: &Plan) -> Value {
    let changes: Vec<Value> = p
        .changes
        .iter()
        .map(|c| json!({ "key": c.key, "applies": c.applies, "when": c.applies.describe() }))
        .collect();
    let message = if p.changes.is_empty() {
        "reloaded: nothing changed".to_string()
    } else {
        let parts: Vec<String> = p
            .changes
            .iter()
            .map(|c| format!("{} {}", c.key, c.applies.describe()))
            .collect();
        format!("reloaded: {}", parts.join("; "))
    };
    let waits = p.changes.iter().any(|c| c.applies == Applies::NextRollout);
    json!({ "message": message, "changes": changes, "waits_for_next_rollout": waits })
}
