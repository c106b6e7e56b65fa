//! The `Rollout` custom resource (`cutover.dev/v1alpha1`), generated from these types.
//!
//! Field names follow Argo Rollouts where they mean the same thing (`steps`, `setWeight`,
//! `pause`, `maxSurge`, `maxUnavailable`, `scaleDownDelaySeconds`,
//! `abortScaleDownDelaySeconds`, `revisionHistoryLimit`), and map onto `cutover.toml`'s
//! `[rollout]` ([`RolloutSpec::to_core`]), so one engine decides both runtimes.

use std::collections::BTreeMap;

use cutover_core::spec::{AbortSpec, GateSpec, PauseSpec, Provider, ScheduleKind, StepSpec};
use cutover_core::time::{parse_duration, DURATION_GRAMMAR};
use cutover_core::Dur;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A rollout of a pod template, driven by the same engine as `cutover run`.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cutover.dev",
    version = "v1alpha1",
    kind = "Rollout",
    namespaced,
    status = "RolloutStatus",
    shortname = "crollout",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Weight","type":"number","jsonPath":".status.weight"}"#,
    printcolumn = r#"{"name":"Step","type":"integer","jsonPath":".status.currentStepIndex"}"#,
    printcolumn = r#"{"name":"Stable","type":"string","jsonPath":".status.stableRS"}"#,
    printcolumn = r#"{"name":"Canary","type":"string","jsonPath":".status.canaryRS"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Pods each version runs at full traffic.
    #[serde(default = "default_replicas")]
    pub replicas: i32,
    /// The pod template of the version to roll out. Changing it starts a rollout; its hash is
    /// the release's identity (the "digest" a failure is recorded under).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_object")]
    pub template: Option<serde_json::Value>,
    /// Instead of `template`: a Deployment whose pod template is rolled out. cutover owns the
    /// ReplicaSets; scale the Deployment to 0 so it does not run pods of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_ref: Option<WorkloadRef>,
    /// ReplicaSets at 0 replicas kept for history beyond the stable, canary and held ones;
    /// older ones are pruned once they are also older than 72 hours.
    #[serde(default = "default_revision_history_limit")]
    pub revision_history_limit: i32,
    /// How traffic moves from stable to canary.
    pub strategy: Strategy,
}

fn default_replicas() -> i32 {
    1
}
fn default_revision_history_limit() -> i32 {
    10
}

/// An object of any shape (a pod template): the API server keeps it as given.
fn preserve_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// The Deployment whose pod template a Rollout rolls out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    /// Must be `apps/v1`.
    pub api_version: String,
    /// Must be `Deployment`.
    pub kind: String,
    /// The Deployment's name, in the Rollout's namespace.
    pub name: String,
}

/// The rollout strategy: only `canary`, as in `cutover.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    /// The canary strategy.
    pub canary: CanaryStrategy,
}

/// `[rollout]` of `cutover.toml`, with Argo Rollouts' names where they mean the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStrategy {
    /// Explicit steps (`setWeight`, `pause`); empty: the `double` schedule from
    /// `initialWeight`, doubling every `stepInterval`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<CanaryStep>,
    /// The canary's first weight in percent (`rollout.initial_weight`).
    #[serde(default = "default_initial_weight")]
    pub initial_weight: f64,
    /// How long a step lasts without its own pause (`rollout.step_interval`).
    #[serde(default = "default_step_interval")]
    pub step_interval: String,
    /// Extra pods the canary may run above `replicas`, as a count or a percentage ("100%"
    /// makes the canary as large as stable, so promotion at 100 % needs no scale-up).
    /// With a traffic router, the canary ReplicaSet runs this many pods.
    #[serde(default = "default_max_surge")]
    pub max_surge: IntOrPercent,
    /// Pods of stable that may be unavailable during the rollout. Only `0` is supported:
    /// cutover is make-before-break, stable keeps all its pods until promotion.
    #[serde(default = "default_max_unavailable")]
    pub max_unavailable: IntOrPercent,
    /// After promotion the previous ReplicaSet keeps its pods this long, without traffic, so
    /// a rollback is one weight change (`rollout.hold_previous`; the blueprint's 60 minutes).
    #[serde(default = "default_scale_down_delay")]
    pub scale_down_delay_seconds: u32,
    /// After an abort the canary's pods are kept this long (traffic is back on stable at
    /// once), so in-flight requests finish and logs can be read.
    #[serde(default = "default_abort_scale_down_delay")]
    pub abort_scale_down_delay_seconds: u32,
    /// Where traffic is split. Absent: by replica ratio behind one Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_routing: Option<TrafficRouting>,
    /// Evaluation, advance gates and abort rules, as PromQL against Prometheus.
    #[serde(default)]
    pub analysis: Analysis,
}

fn default_initial_weight() -> f64 {
    2.0
}
fn default_step_interval() -> String {
    "90s".into()
}
fn default_max_surge() -> IntOrPercent {
    IntOrPercent::String("100%".into())
}
fn default_max_unavailable() -> IntOrPercent {
    IntOrPercent::Int(0)
}
fn default_scale_down_delay() -> u32 {
    3600
}
fn default_abort_scale_down_delay() -> u32 {
    30
}

/// A count (`3`) or a percentage of `replicas` (`"25%"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum IntOrPercent {
    /// A number of pods.
    Int(i32),
    /// A percentage of `replicas`, e.g. `"25%"`.
    String(String),
}

impl IntOrPercent {
    /// The number of pods out of `replicas` (a percentage rounds up), or what is wrong.
    pub fn pods(&self, replicas: i32) -> Result<i32, String> {
        match self {
            IntOrPercent::Int(n) if *n >= 0 => Ok(*n),
            IntOrPercent::Int(n) => Err(format!("{n} is negative")),
            IntOrPercent::String(s) => {
                let p: f64 = s
                    .strip_suffix('%')
                    .and_then(|p| p.trim().parse().ok())
                    .filter(|p: &f64| p.is_finite() && *p >= 0.0)
                    .ok_or_else(|| {
                        format!("{s:?} is neither a count nor a percentage like \"25%\"")
                    })?;
                Ok((f64::from(replicas) * p / 100.0).ceil() as i32)
            }
        }
    }
}

/// One step, in Argo Rollouts' form: `{setWeight: 5}` or `{pause: {duration: 10m}}` or
/// `{pause: {}}` (until `cutover k8s promote` or `resume`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStep {
    /// The canary's weight in percent from this step on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_weight: Option<f64>,
    /// Stay at the weight for `duration`, or (without one) until promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<StepPause>,
}

/// A step's pause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepPause {
    /// e.g. `10m`; absent: until promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
}

/// Which router moves the weights. Exactly one of `gatewayAPI`, `istio`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficRouting {
    /// The Service selecting stable's pods (cutover adds the pod-template-hash selector).
    pub stable_service: String,
    /// The Service selecting the canary's pods.
    pub canary_service: String,
    /// Gateway API: the backendRefs to `stableService` and `canaryService` in every rule of
    /// this HTTPRoute get the weights (in basis points, so 0.5 % is exact).
    #[serde(
        default,
        rename = "gatewayAPI",
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway_api: Option<GatewayApiRouting>,
    /// Istio: the route destinations with host `stableService` and `canaryService` in every
    /// http route of this VirtualService get the weights (whole percent: the canary's weight
    /// is rounded down, never above the step's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istio: Option<IstioRouting>,
    /// Keep a client on one version by a key it sends, as `cutover.toml`'s `[sticky]` (give
    /// exactly one of `header`, `query`, `cookie`). Gateway API: HTTPRoute
    /// `sessionPersistence` on the split rules (experimental channel; `header` or
    /// `cookie`). Istio: `consistentHash` on the `destinationRules`, which picks the pod
    /// *within* the version a request's weight chose: Istio keeps a client on one pod per
    /// version, not on one version (docs/kubernetes.md). Absent: nothing is patched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
}

/// `[sticky]` of `cutover.toml`, for a router: the one client key it hashes or pins on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sticky {
    /// A request header carrying a client id, e.g. `x-client-id` (`sticky.header`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A query-string parameter carrying a client id (`sticky.query`); Istio only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// A cookie carrying a client id (`sticky.cookie`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

/// The one key a [`Sticky`] names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKey {
    Header(String),
    Query(String),
    Cookie(String),
}

impl Sticky {
    /// The key, or what is wrong (routers hash or pin on one key, not a chain of them).
    pub fn key(&self) -> Result<StickyKey, SpecError> {
        let given: Vec<StickyKey> = [
            self.header.clone().map(StickyKey::Header),
            self.query.clone().map(StickyKey::Query),
            self.cookie.clone().map(StickyKey::Cookie),
        ]
        .into_iter()
        .flatten()
        .collect();
        match given.as_slice() {
            [one] => {
                let (StickyKey::Header(n) | StickyKey::Query(n) | StickyKey::Cookie(n)) = one;
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_graphic() && b != b';') {
                    return Err(bad(
                        "strategy.canary.trafficRouting.sticky",
                        format!("{n:?} is not a header, parameter or cookie name"),
                        "write a name such as x-client-id",
                    ));
                }
                Ok(one.clone())
            }
            _ => Err(bad(
                "strategy.canary.trafficRouting.sticky",
                format!("{} keys are given", given.len()),
                "give exactly one of header, query, cookie: a router hashes or pins on one key \
                 (the single-host fallback chain has no router equivalent)",
            )),
        }
    }
}

/// A Gateway API HTTPRoute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayApiRouting {
    /// The HTTPRoute's name, in the Rollout's namespace.
    pub http_route: String,
}

/// An Istio VirtualService.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioRouting {
    /// The VirtualService's name, in the Rollout's namespace.
    pub virtual_service: String,
    /// With `sticky`: the DestinationRules (in the Rollout's namespace) whose
    /// `trafficPolicy.loadBalancer.consistentHash` is set to the sticky key, one per host
    /// (`stableService`, `canaryService`). Nothing else of them is touched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_rules: Vec<String>,
}

/// When and how the canary is judged. Rules are PromQL in alert form, with `{{version}}`
/// (the canary's pod-template hash), `{{stable_version}}`, `{{service}}` (the Rollout's
/// name) and `{{track}}` (`canary`) substituted. No data is inconclusive: it holds, and never
/// aborts on its own (until `maxInconclusive`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    /// Prometheus's base URL, e.g. `http://prometheus.monitoring:9090`. Required when there
    /// are rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<String>,
    /// How often the rules are evaluated (`rollout.interval`; default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// A gate failing longer than this aborts (`rollout.max_hold`; default 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_hold: Option<String>,
    /// Rules inconclusive longer than this abort (`rollout.max_inconclusive`; default 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_inconclusive: Option<String>,
    /// Advance gates, checked at each step's end: the gate fails while its query fires.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<Rule>,
    /// Abort rules, checked every interval: breached while the query fires, for `for`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aborts: Vec<Rule>,
}

/// A PromQL rule in Prometheus alert form (`expr` + `for`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Rule {
    /// Unique among the gates and among the aborts.
    pub name: String,
    /// e.g. `histogram_quantile(0.99, …{version="{{version}}"}) > 0.8`.
    pub query: String,
    /// How long an abort rule must fire before the rollout aborts (ignored for gates).
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<String>,
}

/// What the controller knows, kept in the cluster so a restarted controller resumes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// `starting`, `progressing`, `paused`, `promoted`, `done`, `aborted`, `rolled_back`;
    /// `invalid` when the spec is refused (see `message`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Why the phase is what it is, or what is wrong with the spec and how to fix it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The canary's step in the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step_index: Option<u32>,
    /// The canary's weight in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// The stable ReplicaSet's pod-template hash.
    #[serde(default, rename = "stableRS", skip_serializing_if = "Option::is_none")]
    pub stable_rs: Option<String>,
    /// The canary ReplicaSet's pod-template hash.
    #[serde(default, rename = "canaryRS", skip_serializing_if = "Option::is_none")]
    pub canary_rs: Option<String>,
    /// The last verdicts, with their numbers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verdicts: Vec<VerdictStatus>,
    /// One condition per kind of decision, the latest of each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// When the rules were last evaluated (Unix milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_measured_ms: Option<u64>,
    /// The last `cutover.dev/command` annotation carried out, so each is carried out once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_command: Option<String>,
    /// The engine's whole state (`cutover-core`'s `State`), as the single-host store keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_object_opt")]
    pub engine: Option<serde_json::Value>,
}

fn preserve_object_opt(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    preserve_object(g)
}

/// One rule's last verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerdictStatus {
    /// The rule's name.
    pub rule: String,
    /// `pass`, `fail` or `inconclusive`.
    pub outcome: String,
    /// The value the rule saw, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<f64>,
    /// What it means, in one line.
    pub detail: String,
}

/// A decision, in the shape of a Kubernetes condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The decision's kind, e.g. `Advance`, `Aborted`, `Refused`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Always `"True"`: the decision was taken.
    pub status: String,
    /// The decision's kind again, as Kubernetes tools show `reason`.
    pub reason: String,
    /// Why, with the numbers.
    pub message: String,
    /// RFC 3339.
    pub last_transition_time: String,
}

/// A spec the controller refuses: the field's path and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.{path}: {message}; {fix}")]
pub struct SpecError {
    pub path: String,
    pub message: String,
    pub fix: String,
}

fn bad(path: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) -> SpecError {
    SpecError {
        path: path.into(),
        message: message.into(),
        fix: fix.into(),
    }
}

fn duration(path: &str, text: &str) -> Result<Dur, SpecError> {
    parse_duration(text).map(Dur).map_err(|e| {
        bad(
            path,
            format!("{text:?} is not a duration ({e})"),
            DURATION_GRAMMAR,
        )
    })
}

impl RolloutSpec {
    /// The core engine's `[rollout]` for this spec, or the first field that is wrong.
    pub fn to_core(&self) -> Result<cutover_core::spec::RolloutSpec, SpecError> {
        let c = &self.strategy.canary;
        if self.replicas < 1 {
            return Err(bad(
                "replicas",
                format!("{} is below 1", self.replicas),
                "set replicas to 1 or more",
            ));
        }
        if self.revision_history_limit < 0 {
            return Err(bad(
                "revisionHistoryLimit",
                format!("{} is negative", self.revision_history_limit),
                "set it to 0 or more",
            ));
        }
        match (&self.template, &self.workload_ref) {
            (Some(_), None) => {}
            (None, Some(w)) if w.api_version == "apps/v1" && w.kind == "Deployment" => {}
            (None, Some(w)) => {
                return Err(bad(
                    "workloadRef",
                    format!("{}/{} is not supported", w.api_version, w.kind),
                    "refer to an apps/v1 Deployment",
                ))
            }
            _ => {
                return Err(bad(
                    "template",
                    "exactly one of template and workloadRef must be given",
                    "keep the pod template inline or refer to a Deployment, not both",
                ))
            }
        }
        match c.max_unavailable.pods(self.replicas) {
            Ok(0) => {}
            Ok(n) => {
                return Err(bad(
                    "strategy.canary.maxUnavailable",
                    format!("{n} pods of stable may not be taken down"),
                    "set maxUnavailable to 0: stable keeps every pod until promotion (make-before-break)",
                ))
            }
            Err(e) => return Err(bad("strategy.canary.maxUnavailable", e, "write 0")),
        }
        match c.max_surge.pods(self.replicas) {
            Ok(n) if n >= 1 => {}
            Ok(_) => {
                return Err(bad(
                    "strategy.canary.maxSurge",
                    "0 leaves no room for a canary pod",
                    "set maxSurge to 1 or more, or a percentage such as \"100%\"",
                ))
            }
            Err(e) => {
                return Err(bad(
                    "strategy.canary.maxSurge",
                    e,
                    "write a count or \"25%\"",
                ))
            }
        }
        if let Some(t) = &c.traffic_routing {
            let routers = usize::from(t.gateway_api.is_some()) + usize::from(t.istio.is_some());
            if routers != 1 {
                return Err(bad(
                    "strategy.canary.trafficRouting",
                    format!("{routers} routers are given"),
                    "give exactly one of gatewayAPI and istio, or leave trafficRouting out for replica-ratio splitting",
                ));
            }
            if let Some(sticky) = &t.sticky {
                let key = sticky.key()?;
                if t.gateway_api.is_some() && matches!(key, StickyKey::Query(_)) {
                    return Err(bad(
                        "strategy.canary.trafficRouting.sticky.query",
                        "Gateway API session persistence pins on a header or a cookie only",
                        "use sticky.header or sticky.cookie",
                    ));
                }
                if t.istio
                    .as_ref()
                    .is_some_and(|i| i.destination_rules.is_empty())
                {
                    return Err(bad(
                        "strategy.canary.trafficRouting.istio.destinationRules",
                        "sticky is given but no DestinationRule to set the consistent hash on",
                        "name the DestinationRules of stableService and canaryService, or leave sticky out",
                    ));
                }
            }
        }
        let mut core = cutover_core::spec::RolloutSpec {
            initial_weight: c.initial_weight,
            step_interval: duration("strategy.canary.stepInterval", &c.step_interval)?,
            hold_previous: Dur::from_secs(u64::from(c.scale_down_delay_seconds)),
            // Kubernetes has no proxy of cutover's to measure: the rules are PromQL only.
            gates: Vec::new(),
            aborts: Vec::new(),
            ..Default::default()
        };
        if !(c.initial_weight > 0.0 && c.initial_weight < 100.0) {
            return Err(bad(
                "strategy.canary.initialWeight",
                format!("{} is not between 0 and 100 (exclusive)", c.initial_weight),
                "write a percentage such as 2 or 0.5",
            ));
        }
        if !c.steps.is_empty() {
            core.schedule = ScheduleKind::Steps;
            let mut steps: Vec<StepSpec> = Vec::new();
            for (i, s) in c.steps.iter().enumerate() {
                let path = format!("strategy.canary.steps[{i}]");
                let pause = match &s.pause {
                    None => None,
                    Some(StepPause { duration: None }) => Some(PauseSpec::UntilPromoted),
                    Some(StepPause { duration: Some(d) }) => Some(PauseSpec::For(duration(
                        &format!("{path}.pause.duration"),
                        d,
                    )?)),
                };
                match (s.set_weight, pause) {
                    (Some(w), _) if !(w > 0.0 && w <= 100.0) => {
                        return Err(bad(
                            format!("{path}.setWeight"),
                            format!("{w} is not in (0, 100]"),
                            "write a percentage such as 5, 0.5 or 100",
                        ))
                    }
                    (Some(w), p) => steps.push(StepSpec {
                        weight: Some(w),
                        pause: p,
                    }),
                    // Argo's `pause` after a `setWeight` is the pause of that weight.
                    (None, Some(p)) => match steps.last_mut() {
                        Some(last) if last.pause.is_none() => last.pause = Some(p),
                        _ => steps.push(StepSpec {
                            weight: None,
                            pause: Some(p),
                        }),
                    },
                    (None, None) => {
                        return Err(bad(
                            path,
                            "the step sets nothing",
                            "give it setWeight or pause",
                        ))
                    }
                }
            }
            core.steps = steps;
        }
        let a = &c.analysis;
        if let Some(i) = &a.interval {
            core.interval = duration("strategy.canary.analysis.interval", i)?;
        }
        if let Some(m) = &a.max_hold {
            core.max_hold = duration("strategy.canary.analysis.maxHold", m)?;
        }
        if let Some(m) = &a.max_inconclusive {
            core.max_inconclusive = duration("strategy.canary.analysis.maxInconclusive", m)?;
        }
        if (!a.gates.is_empty() || !a.aborts.is_empty()) && a.prometheus.is_none() {
            return Err(bad(
                "strategy.canary.analysis.prometheus",
                "rules are given but no Prometheus",
                "set prometheus to its base URL, e.g. http://prometheus.monitoring:9090",
            ));
        }
        let mut names = BTreeMap::new();
        for (kind, rules) in [("gates", &a.gates), ("aborts", &a.aborts)] {
            for (i, r) in rules.iter().enumerate() {
                let path = format!("strategy.canary.analysis.{kind}[{i}]");
                if names.insert((kind, r.name.clone()), ()).is_some() || r.name.is_empty() {
                    return Err(bad(
                        format!("{path}.name"),
                        format!("{:?} is empty or used twice", r.name),
                        "give every rule its own name",
                    ));
                }
                if let Err(e) = cutover_promql::expand(&r.query, &crate::rule_vars("v", "s", "svc"))
                    .and_then(|q| cutover_promql::Query::parse(&q))
                {
                    return Err(bad(
                        format!("{path}.query"),
                        e.to_string(),
                        "use the supported PromQL subset (docs/analysis.md)",
                    ));
                }
                if kind == "gates" {
                    core.gates.push(GateSpec::Promql {
                        name: r.name.clone(),
                        query: r.query.clone(),
                        provider: Provider::Prometheus,
                    });
                } else {
                    let for_ = match &r.for_ {
                        Some(f) => duration(&format!("{path}.for"), f)?,
                        None => Dur::from_secs(0),
                    };
                    core.aborts.push(AbortSpec::Promql {
                        name: r.name.clone(),
                        query: r.query.clone(),
                        for_,
                        provider: Provider::Prometheus,
                    });
                }
            }
        }
        Ok(core)
    }
}

/// The CRD as YAML, as `cutover crd` prints it and `deploy/kubernetes/crd.yaml` holds it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = Rollout::crd();
    serde_norway::to_string(&crd).unwrap_or_else(|e| format!("# could not render the CRD: {e}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(canary: serde_json::Value) -> RolloutSpec {
        serde_json::from_value(json!({
            "replicas": 2,
            "template": {"spec": {"containers": [{"name": "a", "image": "a:1"}]}},
            "strategy": {"canary": canary}
        }))
        .unwrap()
    }

    #[test]
    fn argo_steps_map_onto_core_steps_with_their_pauses() {
        let s = spec(json!({"steps": [
            {"setWeight": 5}, {"pause": {"duration": "1m"}},
            {"setWeight": 20},
            {"setWeight": 50}, {"pause": {}}
        ], "scaleDownDelaySeconds": 600}));
        let core = s.to_core().unwrap();
        assert_eq!(core.schedule, ScheduleKind::Steps);
        assert_eq!(
            core.steps,
            vec![
                StepSpec {
                    weight: Some(5.0),
                    pause: Some(PauseSpec::For(Dur::from_secs(60)))
                },
                StepSpec {
                    weight: Some(20.0),
                    pause: None
                },
                StepSpec {
                    weight: Some(50.0),
                    pause: Some(PauseSpec::UntilPromoted)
                },
            ]
        );
        assert_eq!(core.hold_previous, Dur::from_secs(600));
        assert!(core.gates.is_empty() && core.aborts.is_empty());
    }

    #[test]
    fn the_defaults_are_the_blueprints() {
        let core = spec(json!({})).to_core().unwrap();
        assert_eq!(core.schedule, ScheduleKind::Double);
        assert_eq!(core.initial_weight, 2.0);
        assert_eq!(core.step_interval, Dur::from_secs(90));
        assert_eq!(core.hold_previous, Dur::from_secs(3600));
    }

    #[test]
    fn promql_rules_become_prometheus_rules() {
        let core = spec(json!({"analysis": {
            "prometheus": "http://p:9090", "interval": "10s",
            "gates": [{"name": "g", "query": "x{version=\"{{version}}\"} > 1"}],
            "aborts": [{"name": "a", "query": "y > 2", "for": "45s"}]
        }}))
        .to_core()
        .unwrap();
        assert_eq!(core.interval, Dur::from_secs(10));
        assert!(
            matches!(&core.gates[0], GateSpec::Promql { name, provider: Provider::Prometheus, .. } if name == "g")
        );
        assert!(
            matches!(&core.aborts[0], AbortSpec::Promql { for_, .. } if *for_ == Dur::from_secs(45))
        );
    }

    #[test]
    fn bad_specs_name_the_field_and_the_fix() {
        let cases = [
            (
                json!({"maxUnavailable": 1}),
                "spec.strategy.canary.maxUnavailable",
                "make-before-break",
            ),
            (
                json!({"maxSurge": "abc"}),
                "spec.strategy.canary.maxSurge",
                "25%",
            ),
            (
                json!({"steps": [{"setWeight": 150}]}),
                "spec.strategy.canary.steps[0].setWeight",
                "percentage",
            ),
            (
                json!({"steps": [{"pause": {"duration": "soon"}}]}),
                "spec.strategy.canary.steps[0].pause.duration",
                "unit",
            ),
            (
                json!({"steps": [{}]}),
                "spec.strategy.canary.steps[0]",
                "setWeight or pause",
            ),
            (
                json!({"stepInterval": "x"}),
                "spec.strategy.canary.stepInterval",
                "unit",
            ),
            (
                json!({"analysis": {"gates": [{"name": "g", "query": "x > 1"}]}}),
                "spec.strategy.canary.analysis.prometheus",
                "base URL",
            ),
            (
                json!({"analysis": {"prometheus": "http://p", "aborts": [{"name": "a", "query": "x >"}]}}),
                "spec.strategy.canary.analysis.aborts[0].query",
                "PromQL",
            ),
            (
                json!({"analysis": {"prometheus": "http://p", "gates": [{"name": "g", "query": "x > 1"}, {"name": "g", "query": "y > 1"}]}}),
                "spec.strategy.canary.analysis.gates[1].name",
                "own name",
            ),
            (
                json!({"trafficRouting": {"stableService": "s", "canaryService": "c"}}),
                "spec.strategy.canary.trafficRouting",
                "exactly one",
            ),
            (
                json!({"trafficRouting": {"stableService": "s", "canaryService": "c",
                    "istio": {"virtualService": "v", "destinationRules": ["s"]},
                    "sticky": {"header": "x-client-id", "cookie": "id"}}}),
                "spec.strategy.canary.trafficRouting.sticky",
                "exactly one of header, query, cookie",
            ),
            (
                json!({"trafficRouting": {"stableService": "s", "canaryService": "c",
                    "istio": {"virtualService": "v", "destinationRules": ["s"]},
                    "sticky": {"header": "x client"}}}),
                "spec.strategy.canary.trafficRouting.sticky",
                "x-client-id",
            ),
            (
                json!({"trafficRouting": {"stableService": "s", "canaryService": "c",
                    "gatewayAPI": {"httpRoute": "r"}, "sticky": {"query": "client"}}}),
                "spec.strategy.canary.trafficRouting.sticky.query",
                "sticky.header or sticky.cookie",
            ),
            (
                json!({"trafficRouting": {"stableService": "s", "canaryService": "c",
                    "istio": {"virtualService": "v"}, "sticky": {"header": "x-client-id"}}}),
                "spec.strategy.canary.trafficRouting.istio.destinationRules",
                "name the DestinationRules",
            ),
        ];
        for (canary, path, fix) in cases {
            let e = spec(canary.clone()).to_core().unwrap_err().to_string();
            assert!(e.starts_with(&format!("{path}: ")), "{canary}: {e}");
            assert!(e.contains(fix), "{canary}: {e}");
        }
        let mut both = spec(json!({}));
        both.workload_ref = Some(WorkloadRef {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "d".into(),
        });
        assert!(both
            .to_core()
            .unwrap_err()
            .to_string()
            .starts_with("spec.template: "));
    }

    #[test]
    fn the_crd_has_the_status_subresource_and_argo_names() {
        let y = crd_yaml();
        for want in [
            "group: cutover.dev",
            "kind: Rollout",
            "status: {}",
            "setWeight",
            "scaleDownDelaySeconds",
            "abortScaleDownDelaySeconds",
            "revisionHistoryLimit",
            "maxSurge",
            "maxUnavailable",
            "trafficRouting",
            "sticky",
            "destinationRules",
            "x-kubernetes-preserve-unknown-fields",
        ] {
            assert!(y.contains(want), "{want} missing from the CRD");
        }
    }
}
