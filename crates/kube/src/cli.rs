//! What `cutover crd` and `cutover k8s VERB NAME` do (the binary only parses and prints).
//!
//! A verb is an annotation on the Rollout, `cutover.dev/command: <verb>/<nonce>`: the
//! controller (the only writer of `status`) carries each one out once and records it as
//! `status.handledCommand`, refusals included (a condition `<Verb>Refused` says why).

use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde_json::json;

use crate::crd::Rollout;
use crate::reconcile::COMMAND_ANNOTATION;

/// Why a `cutover k8s` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No such Rollout (exit 66).
    #[error("no Rollout {name} in namespace {namespace}; `kubectl get rollouts.cutover.dev -A` lists them")]
    NotFound { namespace: String, name: String },
    #[error("no Kubernetes client: {0}; set KUBECONFIG or run in a pod with a service account")]
    Client(kube::Error),
    #[error("the Kubernetes API: {0}")]
    Api(kube::Error),
}

/// The verbs `cutover k8s` sends.
pub const VERBS: [&str; 6] = ["pause", "resume", "promote", "abort", "rollback", "retry"];

async fn api(namespace: Option<&str>) -> Result<(Api<Rollout>, String), CliError> {
    let client = Client::try_default().await.map_err(CliError::Client)?;
    let ns = namespace.map_or_else(|| client.default_namespace().to_string(), str::to_string);
    Ok((Api::namespaced(client, &ns), ns))
}

fn not_found(e: kube::Error, namespace: &str, name: &str) -> CliError {
    match e {
        kube::Error::Api(s) if s.code == 404 => CliError::NotFound {
            namespace: namespace.into(),
            name: name.into(),
        },
        e => CliError::Api(e),
    }
}

/// Asks the controller to carry out `verb` on Rollout `name`; returns what to print.
pub async fn verb(namespace: Option<&str>, name: &str, verb: &str) -> Result<String, CliError> {
    let (api, ns) = api(namespace).await?;
    let nonce = cutover_clock::unix_millis();
    let patch =
        json!({"metadata": {"annotations": {COMMAND_ANNOTATION: format!("{verb}/{nonce}")}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| not_found(e, &ns, name))?;
    Ok(format!(
        "{verb} sent to Rollout {ns}/{name}; the controller carries it out (`cutover k8s status {name}` shows the outcome)"
    ))
}

/// The Rollout's status, as text (or the status JSON).
pub async fn status(
    namespace: Option<&str>,
    name: &str,
    as_json: bool,
) -> Result<String, CliError> {
    let (api, ns) = api(namespace).await?;
    let ro = api.get(name).await.map_err(|e| not_found(e, &ns, name))?;
    let s = ro.status.unwrap_or_default();
    if as_json {
        let mut v = serde_json::to_value(&s).unwrap_or_default();
        if let Some(m) = v.as_object_mut() {
            m.remove("engine");
        }
        return Ok(serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    Ok(format_status(&ns, name, &s))
}

/// `status` as text: phase, weight, step, ReplicaSets, verdicts with their numbers, conditions.
pub fn format_status(ns: &str, name: &str, s: &crate::crd::RolloutStatus) -> String {
    let mut out = format!("rollout {ns}/{name}\n");
    let or = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    out.push_str(&format!("  phase:  {}\n", or(&s.phase)));
    if let Some(w) = s.weight {
        out.push_str(&format!("  weight: {w} % to the canary\n"));
    }
    if let Some(i) = s.current_step_index {
        out.push_str(&format!("  step:   {i}\n"));
    }
    out.push_str(&format!(
        "  stable: {}\n  canary: {}\n",
        or(&s.stable_rs),
        or(&s.canary_rs)
    ));
    if let Some(m) = &s.message {
        out.push_str(&format!("  why:    {m}\n"));
    }
    if !s.verdicts.is_empty() {
        out.push_str("  verdicts:\n");
        for v in &s.verdicts {
            let value = v.observed.map(|o| format!(" ({o})")).unwrap_or_default();
            out.push_str(&format!(
                "    {:<12} {}{value}: {}\n",
                v.outcome, v.rule, v.detail
            ));
        }
    }
    if !s.conditions.is_empty() {
        out.push_str("  decisions:\n");
        for c in &s.conditions {
            out.push_str(&format!(
                "    {} {}: {}\n",
                c.last_transition_time, c.type_, c.message
            ));
        }
    }
    out
}
