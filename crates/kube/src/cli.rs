//! What `cutover crd` and `cutover k8s VERB NAME` do (the binary only parses and prints).
//! `cutover k8s status` prints the single-host `cutover status` format (`cutover_host::render`)
//! from the engine state the Rollout's `status` keeps.
//!
//! A verb is an annotation on the Rollout, `cutover.dev/command: <verb>/<nonce>`: the
//! controller (the only writer of `status`) carries each one out once and records it as
//! `status.handledCommand`, refusals included (a condition `<Verb>Refused` says why).

use std::fmt::Write;

use cutover_core::engine::{Engine, State};
use cutover_core::Timestamp;
use cutover_host::render;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};

use crate::crd::{Rollout, RolloutStatus};
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

/// The Rollout's status as `cutover status` prints it (or as JSON), now.
pub async fn status(
    namespace: Option<&str>,
    name: &str,
    as_json: bool,
) -> Result<String, CliError> {
    let client = Client::try_default().await.map_err(CliError::Client)?;
    let ns = namespace.map_or_else(|| client.default_namespace().to_string(), str::to_string);
    let now = Timestamp::from_millis(cutover_clock::unix_millis());
    status_with(client, &ns, name, as_json, now).await
}

/// [`status`] with the client and the time given (the tests' scripted API server and clock).
pub async fn status_with(
    client: Client,
    ns: &str,
    name: &str,
    as_json: bool,
    now: Timestamp,
) -> Result<String, CliError> {
    let api: Api<Rollout> = Api::namespaced(client, ns);
    let ro = api.get(name).await.map_err(|e| not_found(e, ns, name))?;
    Ok(if as_json {
        serde_json::to_string_pretty(&status_json(ns, &ro, now)).unwrap_or_default()
    } else {
        format_status(ns, &ro, now)
    })
}

/// What the engine's state in `status` says, or why it cannot be read.
fn engine_state(s: &RolloutStatus) -> Result<Option<State>, String> {
    s.engine
        .as_ref()
        .map(|v| serde_json::from_value(v.clone()).map_err(|e| e.to_string()))
        .transpose()
}

/// `status` as the single-host `cutover status --json` document where the data is the same
/// (`service`, `now`, `stable`, `previous`, `rollout`, `eta`, `failed`: the same names and
/// shapes), plus the Rollout's own status fields (`namespace`, `phase`, `message`,
/// `stableRS`, `canaryRS`, `verdicts`, `conditions`, …) without the engine's internal state.
pub fn status_json(ns: &str, ro: &Rollout, now: Timestamp) -> Value {
    let s = ro.status.clone().unwrap_or_default();
    let mut doc = serde_json::to_value(&s).unwrap_or_else(|_| json!({}));
    if let Some(m) = doc.as_object_mut() {
        m.remove("engine");
    }
    doc["service"] = ro.name_any().into();
    doc["namespace"] = ns.into();
    doc["now"] = json!(now);
    match engine_state(&s) {
        Ok(Some(st)) => {
            doc["eta"] = json!(eta(ro, &st, now));
            doc["stable"] = json!(st.stable);
            doc["previous"] = json!(st.previous);
            doc["rollout"] = json!(st.rollout);
            doc["failed"] = json!(st.failed);
        }
        Ok(None) => {}
        Err(e) => doc["engineError"] = format!("status.engine is not an engine state: {e}").into(),
    }
    doc
}

fn eta(ro: &Rollout, st: &State, now: Timestamp) -> Option<Timestamp> {
    let core = ro.spec.to_core().ok()?;
    Engine::restore(core, st.clone()).eta(now)
}

/// `status` as text: the single-host `cutover status` format (the same functions print
/// the releases, the phase, the weight and plan, holds, breaches and the rules' verdicts),
/// then what only a Rollout has: its ReplicaSets, its conditions and its settings.
pub fn format_status(ns: &str, ro: &Rollout, now: Timestamp) -> String {
    let name = ro.name_any();
    let s = ro.status.clone().unwrap_or_default();
    let c = &ro.spec.strategy.canary;
    let verb = |v: &str| format!("cutover k8s {v} {name} -n {ns}");
    let mut o = String::new();
    let routing = match &c.traffic_routing {
        Some(t) => match (&t.gateway_api, &t.istio) {
            (Some(g), _) => format!("HTTPRoute {}", g.http_route),
            (_, Some(i)) => format!("VirtualService {}", i.virtual_service),
            _ => "no router".to_string(),
        },
        None => "replica ratio".to_string(),
    };
    let _ = writeln!(o, "service {name}  (namespace {ns}, {routing})");
    let state = engine_state(&s);
    let st = state.as_ref().ok().and_then(Option::as_ref);
    render::stable_line(
        &mut o,
        st.and_then(|st| st.stable.as_ref()),
        "the Rollout's pod template becomes the first release once its pods are ready",
    );
    if let Err(e) = &state {
        let _ = writeln!(
            o,
            "STATUS UNREADABLE  status.engine is not an engine state: {e}"
        );
    }
    if s.phase.as_deref() == Some("invalid") {
        let _ = writeln!(
            o,
            "SPEC REFUSED  {}",
            s.message.as_deref().unwrap_or("(no message)")
        );
    }
    if let Some(st) = st {
        render::held_line(&mut o, st.previous.as_ref(), now);
        if let Some(r) = &st.rollout {
            let interval = ro
                .spec
                .to_core()
                .map_or(cutover_core::spec::RolloutSpec::default().interval, |c| {
                    c.interval
                });
            render::rollout_section(
                &mut o,
                r,
                &render::RolloutPart {
                    now,
                    eta: eta(ro, st, now),
                    // No proxy of cutover's measures requests here: the rules are PromQL.
                    window: None,
                    interval,
                    verb: &verb,
                },
            );
        }
    }
    if s.stable_rs.is_some() || s.canary_rs.is_some() {
        let rs = |h: &Option<String>| {
            h.as_ref()
                .map_or("-".to_string(), |h| format!("{name}-{h}"))
        };
        let _ = writeln!(
            o,
            "
replicasets  stable {}  canary {}",
            rs(&s.stable_rs),
            rs(&s.canary_rs)
        );
    }
    if !s.conditions.is_empty() {
        let _ = writeln!(
            o,
            "
decisions (the latest of each kind)"
        );
        for c in &s.conditions {
            let _ = writeln!(
                o,
                "  {} {:<12} {}",
                c.last_transition_time, c.type_, c.message
            );
        }
    }
    if let Ok(core) = ro.spec.to_core() {
        let prometheus = c
            .analysis
            .prometheus
            .as_deref()
            .map_or("no rules".to_string(), |p| format!("PromQL against {p}"));
        let _ = writeln!(
            o,
            "
evaluation every {} ({prometheus}); steps {}; max_hold {}; hold_previous {}; max_inconclusive {}; canary kept {}s after an abort",
            core.interval,
            core.step_interval,
            core.max_hold,
            core.hold_previous,
            core.max_inconclusive,
            c.abort_scale_down_delay_seconds
        );
    }
    o
}
