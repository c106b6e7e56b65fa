//! One reconcile of one Rollout: read what is there, feed the engine the events it implies,
//! persist its state in `status` (before any other write: DESIGN.md invariant 8), then make
//! the ReplicaSets, Services and route weights match the state.
//!
//! The engine decides; this module only translates. What the world should look like for a
//! given engine state is [`desired_replicas`] and [`route_of`] (pure, unit-tested), so a
//! restarted controller, or a write that failed half-way, converges on the next pass
//! instead of replaying actions.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover_core::engine::{Engine, Event, Phase, Release, State, Verb};
use cutover_core::judge::External;
use cutover_core::{Timestamp, Weight, WindowStats};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::crd::{Condition, Rollout, RolloutSpec, RolloutStatus, VerdictStatus};
use crate::leader::Leadership;
use crate::router;

/// The label on every ReplicaSet (and pod) a Rollout owns; the controller watches only these.
pub const ROLLOUT_LABEL: &str = "cutover.dev/rollout";
/// The pod-template hash label, in ReplicaSets, their pods and the Services' selectors.
pub const HASH_LABEL: &str = "cutover.dev/pod-template-hash";
/// On a ReplicaSet whose release failed (aborted), so `kubectl get rs -l` finds them.
pub const FAILED_LABEL: &str = "cutover.dev/failed";
/// On the Rollout: the failed releases, `{digest: reason}` (JSON).
pub const FAILED_ANNOTATION: &str = "cutover.dev/failed-releases";
/// On the Rollout: an operator verb, `<verb>/<nonce>`, written by `cutover k8s VERB`.
pub const COMMAND_ANNOTATION: &str = "cutover.dev/command";
/// ReplicaSets at 0 replicas are pruned only when also older than this (the blueprint's 72 h).
pub const PRUNE_AGE: Duration = Duration::from_secs(72 * 3600);

/// Why a reconcile stopped. Nothing is retried blindly: a conflict is re-read and redone.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The lease is not (or no longer) ours: no write is made.
    #[error("not the leader: this replica makes no writes")]
    NotLeader,
    #[error("{0}")]
    Route(#[from] router::RouteError),
    #[error("the Rollout has no namespace")]
    NoNamespace,
    #[error("{0}")]
    Other(String),
}

/// What a reconcile needs besides the object.
pub struct Context {
    pub client: Client,
    pub leader: Leadership,
    /// Wall-clock time (Unix ms); tests pass a fixed one.
    pub clock: Arc<dyn Fn() -> Timestamp + Send + Sync>,
    /// Engines by `namespace/name`, so the last measurement survives between passes; an
    /// engine whose state is not the one in `status` is rebuilt from `status`.
    engines: Mutex<HashMap<String, Engine>>,
    /// How long a Prometheus query may take.
    pub prometheus_timeout: Duration,
    /// Where each decision is also published as a Kubernetes Event (`kubectl describe
    /// rollout`); `None`: conditions in `status` only.
    events: Option<Recorder>,
}

impl Context {
    pub fn new(
        client: Client,
        leader: Leadership,
        clock: Arc<dyn Fn() -> Timestamp + Send + Sync>,
    ) -> Self {
        Context {
            client,
            leader,
            clock,
            engines: Mutex::new(HashMap::new()),
            prometheus_timeout: Duration::from_secs(5),
            events: None,
        }
    }

    /// Publishes every decision and refusal as a Kubernetes Event, reported as `reporter`.
    pub fn with_events(mut self, reporter: Reporter) -> Self {
        self.events = Some(Recorder::new(self.client.clone(), reporter));
        self
    }

    /// Every write goes through here first: a replica that lost its lease stops writing.
    fn may_write(&self) -> Result<(), Error> {
        if self.leader.is_leader() {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }
}

/// A release as the engine knows it: the pod template's hash names it (`version`, 10 hex
/// digits, the ReplicaSet's suffix) and identifies it (`digest`, the whole SHA-256): a
/// changed image or setting is a new release.
pub fn release_of(template: &Value) -> Release {
    let mut canonical = String::new();
    write_canonical(template, &mut canonical);
    let digest = hex::encode(Sha256::digest(canonical.as_bytes()));
    Release::new(&digest[..10], format!("sha256:{digest}"))
}

/// JSON with every object's keys sorted, so the same template hashes the same whatever order
/// its keys arrive in.
fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Pods of the canary: with a router, `maxSurge` (the canary takes its share of traffic
/// through the router); without one, the share of `replicas` its weight asks for, rounded
/// up (at least 1), within `maxSurge`.
pub fn canary_pods(spec: &RolloutSpec, weight: Weight) -> i32 {
    let c = &spec.strategy.canary;
    let surge = c.max_surge.pods(spec.replicas).unwrap_or(1).max(1);
    if c.traffic_routing.is_some() {
        return surge;
    }
    let share = (f64::from(spec.replicas) * f64::from(weight.bp()) / 10_000.0).ceil() as i32;
    share.clamp(1, surge)
}

/// How many pods each release's ReplicaSet should run now, by version (pod-template hash).
/// Versions not named run 0 (and are pruned by [`prunable`]).
pub fn desired_replicas(
    spec: &RolloutSpec,
    state: &State,
    now: Timestamp,
) -> BTreeMap<String, i32> {
    let mut out = BTreeMap::new();
    let routed = spec.strategy.canary.traffic_routing.is_some();
    if let Some(s) = &state.stable {
        out.insert(s.version.clone(), spec.replicas);
    }
    if let Some(h) = &state.previous {
        // Without a router, pods of the held release would take traffic behind the Service:
        // it is kept as a ReplicaSet at 0, and a rollback scales it up again.
        out.insert(
            h.release.version.clone(),
            if routed { spec.replicas } else { 0 },
        );
    }
    if let Some(r) = &state.rollout {
        let delay = Duration::from_secs(u64::from(
            spec.strategy.canary.abort_scale_down_delay_seconds,
        ));
        let pods = match &r.phase {
            p if p.is_active() => {
                let w = r.plan.first().map_or(r.weight, |s| s.weight.max(r.weight));
                Some(canary_pods(spec, w))
            }
            Phase::Aborted { .. } | Phase::RolledBack { .. } => {
                let ended = r.ended().unwrap_or(now);
                Some(if now < ended.plus(delay) {
                    canary_pods(spec, r.weight)
                } else {
                    0
                })
            }
            _ => None,
        };
        if let Some(p) = pods {
            out.entry(r.to.version.clone()).or_insert(p);
        }
    }
    out
}

/// The route table the engine's state implies: stable's version, the canary's (or stable's
/// again when none takes traffic) and the canary's weight.
pub fn route_of(state: &State) -> Option<(String, String, Weight)> {
    let stable = state.stable.as_ref()?.version.clone();
    match &state.rollout {
        Some(r) if r.phase.is_active() && !r.phase.is_starting() => {
            Some((stable, r.to.version.clone(), r.weight))
        }
        _ => Some((stable.clone(), stable, Weight::ZERO)),
    }
}

/// ReplicaSets to delete: at 0 replicas, not named in `keep`, beyond the newest
/// `history` of them, and older than [`PRUNE_AGE`].
pub fn prunable(
    rs: &[ReplicaSet],
    keep: &BTreeMap<String, i32>,
    history: usize,
    now: Timestamp,
) -> Vec<String> {
    let mut old: Vec<(&ReplicaSet, u64)> = rs
        .iter()
        .filter(|r| !keep.contains_key(hash_of(r)))
        .filter(|r| r.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) == 0)
        .map(|r| {
            let created = r
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(0, |t| t.0.as_millisecond().max(0) as u64);
            (r, created)
        })
        .collect();
    old.sort_by_key(|(_, created)| std::cmp::Reverse(*created));
    old.into_iter()
        .skip(history)
        .filter(|(_, created)| now.since(Timestamp::from_millis(*created)) > PRUNE_AGE)
        .map(|(r, _)| r.name_any())
        .collect()
}

fn hash_of(rs: &ReplicaSet) -> &str {
    rs.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(HASH_LABEL))
        .map_or("", String::as_str)
}

/// The rule variables: `{{version}}`, `{{stable_version}}`, `{{service}}`, `{{track}}`.
pub fn rule_vars(version: &str, stable: &str, service: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("version".to_string(), version.to_string()),
        ("stable_version".to_string(), stable.to_string()),
        ("service".to_string(), service.to_string()),
        ("track".to_string(), "canary".to_string()),
    ])
}

/// Reconciles `ro`; on a 409 (someone else wrote the Rollout since it was read) it is read
/// again and the pass redone, up to three times.
pub async fn reconcile(ro: Arc<Rollout>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = ro.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<Rollout> = Api::namespaced(ctx.client.clone(), &ns);
    let mut current = (*ro).clone();
    let mut attempt = 0;
    loop {
        match reconcile_once(&current, &ctx).await {
            Err(Error::Kube(kube::Error::Api(e))) if e.code == 409 && attempt < 2 => {
                attempt += 1;
                tracing::info!(rollout = %current.name_any(), "conflict writing the Rollout; reading it again");
                current = api.get(&current.name_any()).await?;
            }
            other => return other,
        }
    }
}

async fn reconcile_once(ro: &Rollout, ctx: &Context) -> Result<Action, Error> {
    // A replica without the lease reads nothing and writes nothing.
    ctx.may_write()?;
    let now = (ctx.clock)();
    let ns = ro.namespace().ok_or(Error::NoNamespace)?;
    let name = ro.name_any();
    let key = format!("{ns}/{name}");
    let rollouts: Api<Rollout> = Api::namespaced(ctx.client.clone(), &ns);
    let old_status = ro.status.clone().unwrap_or_default();

    let core = match ro.spec.to_core() {
        Ok(c) => c,
        Err(e) => {
            let mut status = old_status.clone();
            status.phase = Some("invalid".into());
            status.message = Some(e.to_string());
            if status != old_status {
                ctx.may_write()?;
                write_status(&rollouts, ro, status).await?;
            }
            return Ok(Action::await_change());
        }
    };
    let template = match (&ro.spec.template, &ro.spec.workload_ref) {
        (Some(t), _) => t.clone(),
        (None, Some(w)) => {
            let d: Api<k8s_openapi::api::apps::v1::Deployment> =
                Api::namespaced(ctx.client.clone(), &ns);
            let dep = d.get(&w.name).await?;
            serde_json::to_value(dep.spec.map(|s| s.template))
                .map_err(|e| Error::Other(e.to_string()))?
        }
        (None, None) => return Ok(Action::await_change()),
    };
    let release = release_of(&template);

    // A state that does not parse is an error, never a fresh start: that would deploy again.
    let persisted: Option<State> = match &old_status.engine {
        None => None,
        Some(v) => Some(serde_json::from_value(v.clone()).map_err(|e| {
            Error::Other(format!(
                "status.engine of Rollout {key} is not an engine state ({e}); restore it from a \
                 backup, or delete the Rollout's status to start over from its template"
            ))
        })?),
    };
    let mut engine = {
        let cache = ctx
            .engines
            .lock()
            .map_err(|_| Error::Other("engine cache poisoned".into()))?;
        match (cache.get(&key), &persisted) {
            // The same state and spec: keep the engine, and with it the last measurement
            // its timers decide on.
            (Some(e), Some(p)) if e.state() == p && e.spec() == &core => e.clone(),
            (_, Some(p)) => Engine::restore(core.clone(), p.clone()),
            (_, None) => Engine::new(name.clone(), core.clone()),
        }
    };

    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let owned = rs_api
        .list(&ListParams::default().labels(&format!("{ROLLOUT_LABEL}={name}")))
        .await?
        .items;

    let mut fed = Fed::default();
    let mut status = old_status.clone();

    // An operator verb, once.
    let command = ro.annotations().get(COMMAND_ANNOTATION).cloned();
    let mut retry = false;
    if let Some(c) = command.filter(|c| old_status.handled_command.as_ref() != Some(c)) {
        status.handled_command = Some(c.clone());
        match c.split('/').next().unwrap_or("") {
            "pause" => fed.apply(&mut engine, now, Event::Command(Verb::Pause), "Pause"),
            "resume" => fed.apply(&mut engine, now, Event::Command(Verb::Resume), "Resume"),
            "promote" => fed.apply(&mut engine, now, Event::Command(Verb::Promote), "Promote"),
            "abort" => fed.apply(&mut engine, now, Event::Command(Verb::Abort), "Abort"),
            "rollback" => fed.apply(&mut engine, now, Event::Command(Verb::Rollback), "Rollback"),
            "retry" => retry = true,
            other => fed.refusals.push((
                "Command".into(),
                format!("{COMMAND_ANNOTATION}: {other:?} is not a verb; use cutover k8s pause|resume|promote|abort|retry"),
            )),
        }
    }

    // A new pod template is a deploy; the release of the last rollout is deployed again
    // only with `retry` (the engine refuses a failed digest without force).
    let last_to = engine.state().rollout.as_ref().map(|r| r.to.digest.clone());
    let is_stable = engine
        .state()
        .stable
        .as_ref()
        .is_some_and(|s| s.digest == release.digest);
    if !is_stable && (last_to.as_deref() != Some(release.digest.as_str()) || retry) {
        fed.apply(
            &mut engine,
            now,
            Event::Deploy {
                release: release.clone(),
                force: retry,
                start_timeout: None,
            },
            "Deploy",
        );
    } else if retry {
        fed.refusals.push((
            "Retry".into(),
            format!(
                "nothing to retry: {} is not a failed rollout's release",
                release.label()
            ),
        ));
    }
    // The canary's pods ready?
    if let Some(r) = engine.active().filter(|r| r.phase.is_starting()) {
        let want = canary_pods(&ro.spec, r.plan.first().map_or(r.weight, |s| s.weight));
        let ready = owned
            .iter()
            .find(|rs| hash_of(rs) == r.to.version)
            .and_then(|rs| rs.status.as_ref())
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        if ready >= want {
            let digest = r.to.digest.clone();
            fed.apply(&mut engine, now, Event::Ready { digest }, "Ready");
        }
    }

    // The analysis, every interval while a canary takes traffic.
    let measuring = engine.active().is_some_and(|r| !r.phase.is_starting());
    let due = old_status
        .last_measured_ms
        .is_none_or(|t| now.since(Timestamp::from_millis(t)) >= core.interval.get());
    if measuring && due {
        let external = measure(ro, &engine, now, ctx.prometheus_timeout).await;
        status.last_measured_ms = Some(now.millis());
        fed.apply(
            &mut engine,
            now,
            Event::Measured {
                stats: WindowStats::default(),
                wider: Vec::new(),
                external,
            },
            "Measured",
        );
    }
    if engine.poll_timeout().is_some_and(|t| t <= now) {
        fed.apply(
            &mut engine,
            now,
            Event::Timeout { facts: Vec::new() },
            "Timeout",
        );
    }

    // Failure marks expire after PRUNE_AGE, as after `[state] retention` on one host (the
    // engine keeps the last rollout's): the status does not grow with every failed release.
    let expire_before =
        Timestamp::from_millis(now.millis().saturating_sub(PRUNE_AGE.as_millis() as u64));
    let last = engine.state().rollout.as_ref().map(|r| &r.to.digest);
    if engine
        .state()
        .failed
        .iter()
        .any(|(d, f)| f.at < expire_before && Some(d) != last)
    {
        fed.apply(
            &mut engine,
            now,
            Event::ExpireFailures {
                before: expire_before,
            },
            "FailureExpired",
        );
    }

    // A rollout whose release failed is refused on every pass until `retry`
    // (also when it failed in this very pass); say so.
    if !is_stable && !retry && engine.active().is_none() {
        if let Some(f) = engine.state().failed.get(&release.digest) {
            fed.refusals.push((
                "Refused".into(),
                format!(
                    "{} failed at {} ({}); it is not rolled out again until `cutover k8s retry {name}`",
                    release.label(),
                    f.at.rfc3339(),
                    f.reason
                ),
            ));
        }
    }

    // Status first (invariant 8): everything below is derived from it.
    fill_status(&mut status, &engine, now, &fed.decisions, &fed.refusals);
    if status != old_status {
        ctx.may_write()?;
        write_status(&rollouts, ro, status.clone()).await?;
    }
    ctx.engines
        .lock()
        .map_err(|_| Error::Other("engine cache poisoned".into()))?
        .insert(key, engine.clone());

    // Failed releases, on the Rollout.
    let failed: BTreeMap<&String, &String> = engine
        .state()
        .failed
        .iter()
        .map(|(d, f)| (d, &f.reason))
        .collect();
    let text = if failed.is_empty() {
        None
    } else {
        Some(serde_json::to_string(&failed).map_err(|e| Error::Other(e.to_string()))?)
    };
    // Written when it changed; removed (a merge patch's null) when the last mark expired.
    if ro.annotations().get(FAILED_ANNOTATION) != text.as_ref() {
        ctx.may_write()?;
        let patch = json!({"metadata": {"annotations": {FAILED_ANNOTATION: text}}});
        rollouts
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }

    converge_replicasets(ro, ctx, &engine, &owned, &template, now).await?;
    if let Some(t) = &ro.spec.strategy.canary.traffic_routing {
        if let Some((stable, canary, weight)) = route_of(engine.state()) {
            converge_services(ctx, &ns, &t.stable_service, &name, &stable).await?;
            converge_services(ctx, &ns, &t.canary_service, &name, &canary).await?;
            converge_route(ctx, &ns, t, weight).await?;
        }
    }

    // Events last: they explain, they do not act, and must not delay traffic moving back.
    publish_events(ctx, ro, &fed).await;

    Ok(requeue(&engine, &ro.spec, &core, &status, now))
}

/// Each decision (Normal; Warning for aborts, rollbacks, holds, breaches, crash loops) and
/// each refusal (Warning) as an Event on the Rollout. A failure to publish is logged: the
/// decision is in `status` already.
async fn publish_events(ctx: &Context, ro: &Rollout, fed: &Fed) {
    let Some(recorder) = &ctx.events else {
        return;
    };
    use cutover_core::engine::DecisionKind as K;
    let reference = ro.object_ref(&());
    let decisions = fed.decisions.iter().map(|d| {
        let warning = matches!(
            d.kind,
            K::Aborted | K::RolledBack | K::Hold | K::BreachStarted | K::CrashLoop
        );
        (camel(d.kind.as_str()), d.reason.clone(), warning)
    });
    let refusals = fed.refusals.iter().map(|(what, why)| {
        (
            format!("{what}Refused").replace("RefusedRefused", "Refused"),
            why.clone(),
            true,
        )
    });
    for (reason, note, warning) in decisions.chain(refusals) {
        if ctx.may_write().is_err() {
            return;
        }
        let note: String = note.chars().take(1000).collect();
        let ev = KubeEvent {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            action: reason.clone(),
            reason,
            note: Some(note),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, &reference).await {
            tracing::warn!(error = %e, rollout = %ro.name_any(), "could not publish an event");
        }
    }
}

/// What one pass fed the engine: its decisions, and the events it refused (with why).
#[derive(Default)]
struct Fed {
    decisions: Vec<cutover_core::engine::Decision>,
    refusals: Vec<(String, String)>,
}

impl Fed {
    fn apply(&mut self, engine: &mut Engine, now: Timestamp, ev: Event, what: &str) {
        match engine.handle(now, ev) {
            Ok(o) => self.decisions.extend(o.decisions),
            Err(e) => self.refusals.push((what.to_string(), e.to_string())),
        }
    }
}

/// When to look again: the engine's next timer, the next measurement, an abort's scale-down.
fn requeue(
    engine: &Engine,
    spec: &RolloutSpec,
    core: &cutover_core::spec::RolloutSpec,
    status: &RolloutStatus,
    now: Timestamp,
) -> Action {
    let mut next: Vec<Timestamp> = engine.poll_timeout().into_iter().collect();
    if let Some(r) = engine.active() {
        if r.phase.is_starting() {
            // Readiness is watched (the ReplicaSet's status changes), this is a backstop.
            next.push(now.plus(Duration::from_secs(30)));
        } else {
            let last = status.last_measured_ms.map_or(now, Timestamp::from_millis);
            next.push(last.plus(core.interval.get()));
        }
    }
    if let Some(r) = engine
        .state()
        .rollout
        .as_ref()
        .filter(|r| !r.phase.is_active())
    {
        let delay = Duration::from_secs(u64::from(
            spec.strategy.canary.abort_scale_down_delay_seconds,
        ));
        if let Some(at) = r.ended().map(|e| e.plus(delay)).filter(|at| *at > now) {
            next.push(at);
        }
    }
    match next.into_iter().min() {
        Some(t) => Action::requeue(t.since(now).max(Duration::from_millis(100))),
        None => Action::requeue(Duration::from_secs(300)),
    }
}

/// The rules' results from Prometheus; no data, or no answer, is `NoData` (inconclusive).
async fn measure(
    ro: &Rollout,
    engine: &Engine,
    now: Timestamp,
    timeout: Duration,
) -> BTreeMap<String, External> {
    let a = &ro.spec.strategy.canary.analysis;
    let mut out = BTreeMap::new();
    let Some(url) = &a.prometheus else {
        return out;
    };
    let canary = engine
        .canary()
        .map(|c| c.version.clone())
        .unwrap_or_default();
    let stable = engine
        .state()
        .stable
        .as_ref()
        .map(|s| s.version.clone())
        .unwrap_or_default();
    let vars = rule_vars(&canary, &stable, &ro.name_any());
    let client = cutover_prometheus::PrometheusClient::new(url, timeout, 1);
    for r in a.gates.iter().chain(&a.aborts) {
        let text = cutover_promql::expand(&r.query, &vars).map_err(|e| e.to_string());
        let result = match (&client, text) {
            (Ok(c), Ok(t)) => match cutover_promql::Query::parse(&t) {
                Ok(q) => crate::external(
                    &t,
                    c.eval_rule(&q, now.millis() as i64)
                        .await
                        .map_err(|e| e.to_string()),
                ),
                Err(e) => External::NoData {
                    detail: format!("could not evaluate {t}: {e}"),
                },
            },
            (Err(e), _) => External::NoData {
                detail: format!("Prometheus {url}: {e}"),
            },
            (_, Err(e)) => External::NoData { detail: e },
        };
        out.insert(r.name.clone(), result);
    }
    out
}

/// Status from the engine's state, with the decisions of this pass as conditions.
fn fill_status(
    status: &mut RolloutStatus,
    engine: &Engine,
    now: Timestamp,
    decisions: &[cutover_core::engine::Decision],
    refusals: &[(String, String)],
) {
    let st = engine.state();
    status.engine = serde_json::to_value(st).ok();
    status.stable_rs = st.stable.as_ref().map(|s| s.version.clone());
    match &st.rollout {
        Some(r) => {
            status.phase = Some(r.phase.name().to_string());
            status.canary_rs = r.phase.is_active().then(|| r.to.version.clone());
            status.current_step_index = Some(r.step as u32);
            status.weight = Some(r.weight.percent());
            status.message = match &r.phase {
                Phase::Aborted { reason, .. } | Phase::RolledBack { reason, .. } => {
                    Some(reason.clone())
                }
                _ => r.hold().map(|h| h.reason.clone()),
            };
            if let Some(ev) = &r.last_evaluation {
                status.verdicts = ev
                    .gates
                    .iter()
                    .chain(&ev.aborts)
                    .map(|v| VerdictStatus {
                        rule: v.rule.clone(),
                        outcome: format!("{:?}", v.outcome).to_lowercase(),
                        observed: v.observed,
                        detail: v.detail.clone(),
                    })
                    .collect();
            }
        }
        None => {
            status.phase = None;
            status.canary_rs = None;
        }
    }
    let mut set = |type_: &str, message: &str| {
        let c = Condition {
            type_: type_.to_string(),
            status: "True".into(),
            reason: type_.to_string(),
            message: message.to_string(),
            last_transition_time: now.rfc3339(),
        };
        match status.conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(old) if old.message == message => {}
            Some(old) => *old = c,
            None => status.conditions.push(c),
        }
    };
    for d in decisions {
        set(&camel(d.kind.as_str()), &d.reason);
    }
    for (what, why) in refusals {
        set(
            &format!("{what}Refused").replace("RefusedRefused", "Refused"),
            why,
        );
    }
}

/// `rolled_back` → `RolledBack`: a decision's kind as a condition type.
fn camel(kind: &str) -> String {
    kind.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

async fn write_status(
    api: &Api<Rollout>,
    ro: &Rollout,
    status: RolloutStatus,
) -> Result<(), Error> {
    let mut obj = ro.clone();
    obj.status = Some(status);
    // The whole object with its resourceVersion: a write over someone else's is a 409.
    api.replace_status(&ro.name_any(), &PostParams::default(), &obj)
        .await?;
    Ok(())
}

async fn converge_replicasets(
    ro: &Rollout,
    ctx: &Context,
    engine: &Engine,
    owned: &[ReplicaSet],
    template: &Value,
    now: Timestamp,
) -> Result<(), Error> {
    let ns = ro.namespace().ok_or(Error::NoNamespace)?;
    let name = ro.name_any();
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let want = desired_replicas(&ro.spec, engine.state(), now);
    let failed_versions: Vec<String> = engine
        .state()
        .failed
        .keys()
        .filter_map(|d| {
            d.strip_prefix("sha256:")
                .map(|h| h[..10.min(h.len())].to_string())
        })
        .collect();
    for (version, replicas) in &want {
        let existing = owned.iter().find(|rs| hash_of(rs) == version);
        let failed = failed_versions.contains(version);
        match existing {
            None if *replicas > 0 => {
                // Only the current template can be created; an older release's ReplicaSet
                // exists already (it ran before).
                if release_of(template).version != *version {
                    continue;
                }
                ctx.may_write()?;
                let rs = new_replicaset(ro, &name, version, *replicas, template)?;
                api.create(&PostParams::default(), &rs).await?;
            }
            None => {}
            Some(rs) => {
                let current = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
                let labelled = rs.labels().get(FAILED_LABEL).is_some_and(|v| v == "true");
                if current != *replicas || (failed && !labelled) {
                    ctx.may_write()?;
                    let mut patch = json!({"spec": {"replicas": replicas}});
                    if failed && !labelled {
                        patch["metadata"] = json!({"labels": {FAILED_LABEL: "true"}});
                    }
                    api.patch(
                        &rs.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await?;
                }
            }
        }
    }
    // Everything else of ours runs no pods.
    for rs in owned.iter().filter(|rs| !want.contains_key(hash_of(rs))) {
        if rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) != 0 {
            ctx.may_write()?;
            let patch = json!({"spec": {"replicas": 0}});
            api.patch(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        }
    }
    let history = usize::try_from(ro.spec.revision_history_limit).unwrap_or(0);
    for victim in prunable(owned, &want, history, now) {
        ctx.may_write()?;
        api.delete(&victim, &Default::default()).await?;
    }
    Ok(())
}

fn new_replicaset(
    ro: &Rollout,
    name: &str,
    version: &str,
    replicas: i32,
    template: &Value,
) -> Result<ReplicaSet, Error> {
    let mut template = template.clone();
    template["metadata"]["labels"][ROLLOUT_LABEL] = name.into();
    template["metadata"]["labels"][HASH_LABEL] = version.into();
    let owner = json!({
        "apiVersion": "cutover.dev/v1alpha1",
        "kind": "Rollout",
        "name": name,
        "uid": ro.uid().unwrap_or_default(),
        "controller": true,
        "blockOwnerDeletion": true,
    });
    let rs = json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": format!("{name}-{version}"),
            "labels": {ROLLOUT_LABEL: name, HASH_LABEL: version},
            "ownerReferences": [owner],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {ROLLOUT_LABEL: name, HASH_LABEL: version}},
            "template": template,
        }
    });
    serde_json::from_value(rs)
        .map_err(|e| Error::Other(format!("spec.template is not a pod template: {e}")))
}

/// The Service selects the pods of `version` (and of this Rollout).
async fn converge_services(
    ctx: &Context,
    ns: &str,
    svc: &str,
    rollout: &str,
    version: &str,
) -> Result<(), Error> {
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    let s = api.get(svc).await?;
    let selector = s
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    if selector.get(HASH_LABEL).map(String::as_str) != Some(version)
        || selector.get(ROLLOUT_LABEL).map(String::as_str) != Some(rollout)
    {
        ctx.may_write()?;
        let patch = json!({"spec": {"selector": {HASH_LABEL: version, ROLLOUT_LABEL: rollout}}});
        api.patch(svc, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(())
}

async fn converge_route(
    ctx: &Context,
    ns: &str,
    t: &crate::crd::TrafficRouting,
    weight: Weight,
) -> Result<(), Error> {
    let (ar, name, key) = if let Some(g) = &t.gateway_api {
        let ar = ApiResource {
            group: "gateway.networking.k8s.io".into(),
            version: "v1".into(),
            api_version: "gateway.networking.k8s.io/v1".into(),
            kind: "HTTPRoute".into(),
            plural: "httproutes".into(),
        };
        (ar, g.http_route.clone(), "rules")
    } else if let Some(i) = &t.istio {
        let ar = ApiResource {
            group: "networking.istio.io".into(),
            version: "v1".into(),
            api_version: "networking.istio.io/v1".into(),
            kind: "VirtualService".into(),
            plural: "virtualservices".into(),
        };
        (ar, i.virtual_service.clone(), "http")
    } else {
        return Ok(());
    };
    // Validated by `to_core` before anything was written; an error here is a bug, not a write.
    let sticky = t
        .sticky
        .as_ref()
        .map(crate::crd::Sticky::key)
        .transpose()
        .map_err(|e| Error::Other(e.to_string()))?;
    if let (Some(i), Some(sticky)) = (&t.istio, &sticky) {
        // The hash first: a canary that gets traffic gets it already hashed.
        converge_destination_rules(ctx, ns, t, &i.destination_rules, sticky).await?;
    }
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
    let obj =
        serde_json::to_value(api.get(&name).await?).map_err(|e| Error::Other(e.to_string()))?;
    let new = if key == "rules" {
        let persistence = sticky.as_ref().and_then(router::session_persistence);
        router::http_route_rules(
            &obj,
            &t.stable_service,
            &t.canary_service,
            weight,
            persistence.as_ref(),
        )?
    } else {
        router::virtual_service_http(&obj, &t.stable_service, &t.canary_service, weight)?
    };
    if let Some(new) = new {
        ctx.may_write()?;
        // With its resourceVersion: a route someone changed meanwhile is a 409, read again.
        let patch = json!({"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]}, "spec": {key: new}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(())
}

/// Each named DestinationRule's load balancer hashes on the sticky key (Istio).
async fn converge_destination_rules(
    ctx: &Context,
    ns: &str,
    t: &crate::crd::TrafficRouting,
    names: &[String],
    key: &crate::crd::StickyKey,
) -> Result<(), Error> {
    let ar = ApiResource {
        group: "networking.istio.io".into(),
        version: "v1".into(),
        api_version: "networking.istio.io/v1".into(),
        kind: "DestinationRule".into(),
        plural: "destinationrules".into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
    for name in names {
        let obj =
            serde_json::to_value(api.get(name).await?).map_err(|e| Error::Other(e.to_string()))?;
        if let Some(spec) =
            router::destination_rule_spec(&obj, &t.stable_service, &t.canary_service, key)?
        {
            ctx.may_write()?;
            let patch = json!({"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]}, "spec": spec});
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_is_the_template_whatever_its_key_order() {
        let a: Value = serde_json::from_str(r#"{"spec":{"containers":[{"name":"a","image":"x:1"}]},"metadata":{"labels":{"app":"a"}}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"metadata":{"labels":{"app":"a"}},"spec":{"containers":[{"image":"x:1","name":"a"}]}}"#).unwrap();
        assert_eq!(release_of(&a), release_of(&b));
        let c: Value = serde_json::from_str(r#"{"metadata":{"labels":{"app":"a"}},"spec":{"containers":[{"image":"x:2","name":"a"}]}}"#).unwrap();
        assert_ne!(release_of(&a).digest, release_of(&c).digest);
        assert_eq!(release_of(&a).version.len(), 10);
        assert!(release_of(&a).digest.starts_with("sha256:"));
    }
}
