//! The rollout spec: what `cutover.toml` (and, later, the `Rollout` custom resource) says.
//!
//! Parsing is strict (DESIGN.md invariant 9): an unknown field is an error, and every invalid
//! value is reported with its field path and what to write instead. All errors are collected, so
//! a user fixes a config in one pass rather than one error at a time. Nothing here does IO: the
//! shell reads the file and hands over the text.

use crate::cidr::Cidr;
use crate::time::Dur;
use crate::weight::Weight;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

/// A whole cutover config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub service: ServiceSpec,
    #[serde(default)]
    pub admin: AdminSpec,
    pub app: AppSpec,
    #[serde(default)]
    pub rollout: RolloutSpec,
    #[serde(default)]
    pub sticky: StickySpec,
    #[serde(default)]
    pub log: LogSpec,
    /// `[metrics]`: scraping and the in-memory series store PromQL rules read.
    #[serde(default)]
    pub metrics: MetricsSpec,
    /// `[prometheus]`: a Prometheus server for rules with `provider = "prometheus"`.
    #[serde(default)]
    pub prometheus: Option<PrometheusSpec>,
    /// `[alerts]`: which Alertmanager alerts abort this service's rollout.
    #[serde(default)]
    pub alerts: Option<AlertsSpec>,
    /// `[[notify]]`: webhook sinks for rollout events.
    #[serde(default)]
    pub notify: Vec<NotifySpec>,
    /// `[state]`: how long the state store keeps what is no longer in use.
    #[serde(default)]
    pub state: StateSpec,
}

/// `[state]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSpec {
    /// Rollouts that ended longer ago than this, their recordings and decisions, releases no
    /// longer in use and older serving changes are pruned from the state store (hourly and at
    /// start), leaving a checkpoint that keeps the audit chain verifiable; failure marks this
    /// old expire ([`crate::engine::Event::ExpireFailures`]) and instance logs not written to
    /// for this long are deleted. The current (or last) rollout and its release's mark, the
    /// stable and the held previous release, and running instances' logs are never pruned
    /// (docs/audit.md).
    #[serde(default = "default_state_retention")]
    pub retention: Dur,
}

impl Default for StateSpec {
    fn default() -> Self {
        StateSpec {
            retention: default_state_retention(),
        }
    }
}

/// The blueprint's: anything older than 72 h is pruned.
fn default_state_retention() -> Dur {
    Dur::from_secs(72 * 3600)
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSpec {
    /// Scrape every ready instance's metrics at this path each evaluation interval; `""` turns
    /// instance scraping off (cutover's own metrics are always recorded).
    #[serde(default = "default_metrics_path")]
    pub path: String,
    /// How long scraped samples are kept in memory.
    #[serde(default = "default_metrics_retention")]
    pub retention: Dur,
    /// How far back an instant selector looks for a sample (Prometheus's lookback delta).
    #[serde(default = "default_lookback")]
    pub lookback_delta: Dur,
    /// Which Prometheus major version embedded rules mean what they mean in: `3` (default) or
    /// `2`. They differ only at the edges of the data (docs/analysis.md).
    #[serde(default = "default_prometheus_version")]
    pub prometheus_version: u8,
}

impl Default for MetricsSpec {
    fn default() -> Self {
        MetricsSpec {
            path: default_metrics_path(),
            retention: default_metrics_retention(),
            lookback_delta: default_lookback(),
            prometheus_version: default_prometheus_version(),
        }
    }
}

/// `[prometheus]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusSpec {
    /// e.g. `http://127.0.0.1:9090`.
    pub url: String,
    #[serde(default = "default_prom_timeout")]
    pub timeout: Dur,
    /// Further attempts after a failed one (connection errors, timeouts, 5xx).
    #[serde(default = "default_prom_retries")]
    pub retries: u32,
}

/// `[alerts]`: a firing Alertmanager alert whose labels include all of `match` aborts the
/// rollout in progress. Values take `{{service}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsSpec {
    #[serde(rename = "match")]
    pub matchers: BTreeMap<String, String>,
}

impl AlertsSpec {
    /// Whether an alert of Alertmanager's webhook aborts `service`'s rollout: it is firing
    /// (a resolved alert never aborts) and its labels include every `match` pair, with
    /// `{{service}}` in a value standing for the service's name.
    pub fn matches(&self, service: &str, firing: bool, labels: &BTreeMap<String, String>) -> bool {
        firing
            && self.matchers.iter().all(|(k, v)| {
                labels.get(k).map(String::as_str) == Some(&*v.replace("{{service}}", service))
            })
    }

    /// How an alert is named in decisions and answers: its `alertname` label.
    pub fn name(labels: &BTreeMap<String, String>) -> String {
        labels
            .get("alertname")
            .cloned()
            .unwrap_or_else(|| "(unnamed)".into())
    }
}

/// `[[notify]]`: one webhook sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySpec {
    pub name: String,
    /// An `http://` URL.
    pub url: String,
    #[serde(default)]
    pub format: NotifyFormat,
    /// Which events to send (default: all): started, step, held, paused, resumed, promoted,
    /// aborted, rolled_back, previous_released, crash_loop.
    #[serde(default)]
    pub events: Option<Vec<NotifyKind>>,
    #[serde(default = "default_notify_timeout")]
    pub timeout: Dur,
    #[serde(default = "default_notify_attempts")]
    pub max_attempts: u32,
}

/// The payload a sink receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NotifyFormat {
    /// The event as JSON.
    #[default]
    Json,
    /// A Slack incoming-webhook message.
    Slack,
}

/// A rollout event a `[[notify]]` sink can be sent, by its name in `events = [..]` and in the
/// notice's `kind`. The one list of them: the engine maps its decisions to these
/// ([`crate::engine::DecisionKind::notify_kind`]), the config names them, the notifier filters
/// and formats by them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyKind {
    /// A rollout began (`cutover deploy`).
    Started,
    /// The canary got traffic or its weight moved up a step.
    Step,
    /// A gate held the weight at a step boundary.
    Held,
    Paused,
    Resumed,
    Promoted,
    /// Stopped before promotion, by a rule, an alert, a start failure or an operator.
    Aborted,
    RolledBack,
    /// The previous release was let go after `hold_previous`.
    PreviousReleased,
    CrashLoop,
}

impl NotifyKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [NotifyKind; 10] = [
        NotifyKind::Started,
        NotifyKind::Step,
        NotifyKind::Held,
        NotifyKind::Paused,
        NotifyKind::Resumed,
        NotifyKind::Promoted,
        NotifyKind::Aborted,
        NotifyKind::RolledBack,
        NotifyKind::PreviousReleased,
        NotifyKind::CrashLoop,
    ];

    /// The name in config and in the notice (the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyKind::Started => "started",
            NotifyKind::Step => "step",
            NotifyKind::Held => "held",
            NotifyKind::Paused => "paused",
            NotifyKind::Resumed => "resumed",
            NotifyKind::Promoted => "promoted",
            NotifyKind::Aborted => "aborted",
            NotifyKind::RolledBack => "rolled_back",
            NotifyKind::PreviousReleased => "previous_released",
            NotifyKind::CrashLoop => "crash_loop",
        }
    }
}

impl std::str::FromStr for NotifyKind {
    type Err = String;

    /// By its config name; the error lists every valid one.
    fn from_str(s: &str) -> Result<Self, String> {
        NotifyKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = NotifyKind::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "{s:?} is not a notification kind: use one of {}",
                    all.join(", ")
                )
            })
    }
}

impl std::fmt::Display for NotifyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a PromQL rule is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// cutover's own evaluator over the series it scraped (its proxy's and the instances').
    #[default]
    Embedded,
    /// The Prometheus server of `[prometheus]`.
    Prometheus,
}

/// `[service]`: what is being rolled out and where clients reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// A short name: letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// The public address of the embedded proxy.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where state, logs and the admin token live; relative paths are relative to the config file.
    #[serde(default = "default_state_dir")]
    pub state_dir: String,
    /// An instance that sends no response head for this long: the request gets a 504.
    #[serde(default = "default_upstream_timeout")]
    pub upstream_timeout: Dur,
    /// Proxy worker threads, each with its own event loop and upstream connections (nginx's
    /// `worker_processes`). Absent: one per CPU.
    #[serde(default)]
    pub workers: Option<u16>,
    /// `[service.tls]`: terminate TLS on `listen` (HTTP/1.1 and HTTP/2 by ALPN) instead of
    /// serving plaintext.
    #[serde(default)]
    pub tls: Option<TlsSpec>,
    /// Peers whose `X-Forwarded-For`, `X-Forwarded-Host`, `X-Forwarded-Proto` and `Forwarded`
    /// are believed (a load balancer in front of cutover): CIDR ranges or single addresses,
    /// IPv4 or IPv6. From such a peer cutover appends it to `X-Forwarded-For` and keeps the
    /// others; from any other peer it replaces all three and drops `Forwarded`, so a client
    /// cannot make an app believe a made-up address, host or scheme. Default: none.
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
}

/// `[service.tls]`: the certificate the public listener presents.
///
/// The files are re-read every `reload_interval` when their modification time changed, so a
/// renewed certificate is picked up without a restart; a file that does not parse is logged
/// and the certificate in use is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// PEM certificate chain, leaf first; relative to the config file.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1); relative to the config file.
    pub key: String,
    /// How often the files are checked for a change.
    #[serde(default = "default_tls_reload_interval")]
    pub reload_interval: Dur,
}

fn default_tls_reload_interval() -> Dur {
    Dur::from_secs(10)
}

/// How the proxy speaks to instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over pooled keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge (h2c): the instance must accept the HTTP/2
    /// preface on its port. WebSocket upgrades still use HTTP/1.1.
    Http2,
}

/// `[admin]`: the admin API the CLI talks to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSpec {
    /// Loopback by default; binding elsewhere must be a deliberate choice: it needs `tls`, or
    /// `allow_plaintext_remote = true` (docs/security.md).
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// `[admin.tls]`: serve the admin API over TLS (HTTP/1.1); the CLI then speaks https to it.
    /// Default: none (plain HTTP, accepted on a loopback address only).
    #[serde(default)]
    pub tls: Option<AdminTlsSpec>,
    /// Accept a non-loopback `listen` without `tls`: the bearer token and every answer then
    /// cross the network in clear text (logged as a warning at every start). Default: false.
    #[serde(default)]
    pub allow_plaintext_remote: bool,
}

impl Default for AdminSpec {
    fn default() -> Self {
        AdminSpec {
            listen: default_admin_listen(),
            tls: None,
            allow_plaintext_remote: false,
        }
    }
}

impl AdminSpec {
    /// Whether `listen` can be reached from another host (anything but 127.0.0.0/8 and ::1;
    /// `0.0.0.0` and `::` listen on every interface).
    pub fn is_remote(&self) -> bool {
        !self.listen.ip().is_loopback()
    }
}

/// `[admin.tls]`: the certificate the admin listener presents, and what the CLI trusts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTlsSpec {
    /// PEM certificate chain, leaf first; relative to the config file. It must name the address
    /// the CLI connects to: `listen`'s IP, or `localhost` when `listen` is `0.0.0.0` / `[::]`.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1); relative to the config file.
    pub key: String,
    /// For the CLI: the PEM CA certificate(s) it verifies the admin certificate with (the
    /// `--admin-ca` flag overrides it). Default: `cert` itself, for a self-signed certificate.
    #[serde(default)]
    pub ca: Option<String>,
    /// How often the files are checked for a change (a renewal needs no restart).
    #[serde(default = "default_tls_reload_interval")]
    pub reload_interval: Dur,
}

/// `[app]`: how to run one instance of a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// The argv template. `{port}`, `{version}` and `{instance}` are substituted in each
    /// argument; no shell ever sees it.
    pub command: Vec<String>,
    /// Extra environment; values take the same placeholders.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Environment variables whose values are secret: each is read from cutover's own
    /// environment at deploy and at every start, given to the instances, and never stored in
    /// clear (the state store keeps the name and a salted SHA-256; docs/security.md).
    /// Default: none.
    #[serde(default)]
    pub secret_env: Vec<String>,
    /// An instance's log (`<state_dir>/logs/<version>-<n>.log`) is rotated when a write would
    /// take it past this many bytes: it becomes `<version>-<n>.1.log` (the older ones shift to
    /// `.2`, ...) and a new file is started. Default: 10 MiB (10485760); at least 4096.
    #[serde(default = "default_log_max_size")]
    pub log_max_size: u64,
    /// How many rotated files of each instance log are kept besides the current one; the
    /// oldest is deleted on rotation. Default: 5.
    #[serde(default = "default_log_keep")]
    pub log_keep: u32,
    /// Working directory for instances; relative to the config file.
    #[serde(default)]
    pub workdir: Option<String>,
    /// More files that make up a release, for its digest: files, directories (every regular
    /// file below, recursively) or globs (`src/**/*.py`), relative to the config file;
    /// `{version}` is substituted. The digest always covers the program and every argv
    /// element that names an existing file; list here what the program loads by itself
    /// (modules, templates, config). Default: none.
    #[serde(default)]
    pub digest_paths: Vec<String>,
    /// Instances per version, balanced by least outstanding requests.
    #[serde(default = "one")]
    pub instances: u32,
    /// A version must be ready within this long after its start, or the rollout is aborted.
    #[serde(default = "default_start_timeout")]
    pub start_timeout: Dur,
    #[serde(default = "ProbeSpec::readiness")]
    pub readiness: ProbeSpec,
    #[serde(default = "ProbeSpec::liveness")]
    pub liveness: ProbeSpec,
    #[serde(default)]
    pub stop: StopSpec,
    #[serde(default)]
    pub restart: RestartSpec,
    /// What the instances speak: `"http1"` (default) or `"http2"` (h2c, prior knowledge).
    #[serde(default)]
    pub upstream_protocol: UpstreamProtocol,
}

/// An HTTP probe: `GET path` must answer 2xx within `timeout`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {
    pub path: String,
    #[serde(default = "default_probe_interval")]
    pub interval: Dur,
    #[serde(default = "default_probe_timeout")]
    pub timeout: Dur,
    /// Consecutive successes before the probe counts as passing (hysteresis).
    #[serde(default = "one")]
    pub success_threshold: u32,
    /// Consecutive failures before the probe counts as failing (hysteresis).
    #[serde(default = "three")]
    pub failure_threshold: u32,
}

impl ProbeSpec {
    pub fn readiness() -> Self {
        ProbeSpec {
            path: "/ready".into(),
            interval: default_probe_interval(),
            timeout: default_probe_timeout(),
            success_threshold: 1,
            failure_threshold: 3,
        }
    }
    pub fn liveness() -> Self {
        ProbeSpec {
            path: "/live".into(),
            ..ProbeSpec::readiness()
        }
    }
}

/// `[app.stop]`: drain → signal → grace → SIGKILL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopSpec {
    /// How long in-flight requests may take to finish once the instance left rotation.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: Dur,
    /// The signal sent after the drain.
    #[serde(default)]
    pub signal: StopSignal,
    /// How long after the signal before SIGKILL.
    #[serde(default = "default_grace")]
    pub grace: Dur,
    /// Sent to the instance when it leaves rotation, so an app that knows its protocol can
    /// finish and close its own long-lived connections (e.g. `"SIGUSR1"`).
    #[serde(default)]
    pub drain_signal: Option<StopSignal>,
    /// Or: an HTTP `POST` to this path on the instance when it leaves rotation.
    #[serde(default)]
    pub drain_path: Option<String>,
    /// When `drain_timeout` ends with WebSockets still open, cutover stops forwarding client
    /// frames to the instance, lets the instance's frames reach the client for this long (acks
    /// already in flight), then closes the client with 1012 (service restart).
    #[serde(default = "default_quiet_period")]
    pub quiet_period: Dur,
}

impl Default for StopSpec {
    fn default() -> Self {
        StopSpec {
            drain_timeout: default_drain_timeout(),
            signal: StopSignal::default(),
            grace: default_grace(),
            drain_signal: None,
            drain_path: None,
            quiet_period: default_quiet_period(),
        }
    }
}

fn default_quiet_period() -> Dur {
    Dur::from_secs(2)
}

/// The signals an instance may be asked to stop with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum StopSignal {
    #[default]
    #[serde(rename = "SIGTERM")]
    Term,
    #[serde(rename = "SIGINT")]
    Int,
    #[serde(rename = "SIGQUIT")]
    Quit,
    #[serde(rename = "SIGHUP")]
    Hup,
    #[serde(rename = "SIGUSR1")]
    Usr1,
    #[serde(rename = "SIGUSR2")]
    Usr2,
}

/// `[app.restart]`: restarts on liveness failure or exit, and what counts as a crash loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial: Dur,
    #[serde(default = "default_backoff_max")]
    pub backoff_max: Dur,
    /// This many restarts of one instance ...
    #[serde(default = "three")]
    pub crash_loop_restarts: u32,
    /// ... within this window is a crash loop (which aborts a canary).
    #[serde(default = "default_crash_loop_window")]
    pub crash_loop_window: Dur,
}

impl Default for RestartSpec {
    fn default() -> Self {
        RestartSpec {
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
            crash_loop_restarts: 3,
            crash_loop_window: default_crash_loop_window(),
        }
    }
}

/// `[rollout]`: schedule, evaluation, gates and abort rules. Defaults are the blueprint's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// How the new release takes over: `"canary"` (default: a progressive canary on the
    /// schedule below) or `"handoff"` (a singleton, of which at most one instance may act:
    /// make-before-break with a fencing token, see docs/handoff.md and `[rollout.handoff]`).
    #[serde(default)]
    pub strategy: Strategy,
    /// `[rollout.handoff]`: the handoff call and its bounds, with `strategy = "handoff"`.
    #[serde(default)]
    pub handoff: HandoffSpec,
    #[serde(default)]
    pub schedule: ScheduleKind,
    /// The canary's first weight, in percent (`0.5` is allowed).
    #[serde(default = "default_initial_weight")]
    pub initial_weight: f64,
    /// How long each step of the `double` schedule (and a step without its own `pause`) lasts
    /// before its advance gates are checked.
    #[serde(default = "default_step_interval")]
    pub step_interval: Dur,
    /// Explicit steps, with `schedule = "steps"`.
    #[serde(default)]
    pub steps: Vec<StepSpec>,
    /// How often abort rules are evaluated (and held gates re-checked).
    #[serde(default = "default_interval")]
    pub interval: Dur,
    /// The sliding window every evaluation looks at.
    #[serde(default = "default_window")]
    pub window: Dur,
    /// Fewer requests than this for a version in the window: the rule looks further back
    /// (`max_lookback`); still fewer is inconclusive: hold, never advance, never abort on
    /// noise, and neither start nor clear a breach (DESIGN.md invariant 11).
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
    /// A gate failing for longer than this aborts the rollout.
    #[serde(default = "default_max_hold")]
    pub max_hold: Dur,
    /// How far back an evaluation may look when `window` holds fewer than `min_samples`
    /// requests: the window is doubled (up to this) until it does. Abort rules look back at
    /// most to the canary's first traffic in the rollout, gates to the start of the current
    /// step. Applies to the built-in rules (proxy measurements), not to PromQL rules.
    #[serde(default = "default_max_lookback")]
    pub max_lookback: Dur,
    /// Rules inconclusive (too few samples even over `max_lookback`, no data, Prometheus
    /// unreachable) for longer than this abort the rollout, recorded as such: a rollout never
    /// holds in limbo forever.
    #[serde(default = "default_max_inconclusive")]
    pub max_inconclusive: Dur,
    /// After promotion the previous version keeps running without traffic this long, so a
    /// rollback is one atomic switch.
    #[serde(default = "default_hold_previous")]
    pub hold_previous: Dur,
    /// Advance gates, checked at each step boundary. Defaults when absent.
    #[serde(default = "GateSpec::defaults")]
    pub gates: Vec<GateSpec>,
    /// Abort rules, checked every interval. Defaults when absent.
    #[serde(default = "AbortSpec::defaults")]
    pub aborts: Vec<AbortSpec>,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        RolloutSpec {
            strategy: Strategy::default(),
            handoff: HandoffSpec::default(),
            schedule: ScheduleKind::default(),
            initial_weight: default_initial_weight(),
            step_interval: default_step_interval(),
            steps: Vec::new(),
            interval: default_interval(),
            window: default_window(),
            min_samples: default_min_samples(),
            max_hold: default_max_hold(),
            max_lookback: default_max_lookback(),
            max_inconclusive: default_max_inconclusive(),
            hold_previous: default_hold_previous(),
            gates: GateSpec::defaults(),
            aborts: AbortSpec::defaults(),
        }
    }
}

impl RolloutSpec {
    /// The initial weight; valid once the config is validated.
    pub fn initial(&self) -> Weight {
        Weight::from_percent(self.initial_weight)
            .unwrap_or(Weight::from_bp(200).unwrap_or(Weight::ZERO))
    }
}

/// `rollout.strategy`: how a new release takes over from the stable one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// A progressive canary: weights on the schedule, gates and abort rules (the default).
    #[default]
    Canary,
    /// A singleton (one instance may act, e.g. a signer): the new release starts as a
    /// standby, then the active role moves to it at once with a fencing token that only
    /// grows (DESIGN.md invariant 7). Weights, gates, abort rules and `hold_previous` do not
    /// apply.
    Handoff,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Canary => "canary",
            Strategy::Handoff => "handoff",
        }
    }
}

/// `[rollout.handoff]`: the call that hands the active role to the new instance, and how long
/// requests may be held while the role moves (docs/handoff.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoffSpec {
    /// The path cutover POSTs `{"token": N}` to on the new instance; a 2xx within `timeout`
    /// means it took the role. Default `/cutover/handoff`.
    #[serde(default = "default_handoff_path")]
    pub path: String,
    /// How long the handoff call may take. Default 5s.
    #[serde(default = "default_handoff_timeout")]
    pub timeout: Dur,
    /// How long the old holder's in-flight requests may take to finish before the handoff
    /// is given up (the old holder keeps the role). Default 10s. New requests are held in the
    /// proxy meanwhile, at most `drain_timeout + timeout`.
    #[serde(default = "default_handoff_drain_timeout")]
    pub drain_timeout: Dur,
}

impl Default for HandoffSpec {
    fn default() -> Self {
        HandoffSpec {
            path: default_handoff_path(),
            timeout: default_handoff_timeout(),
            drain_timeout: default_handoff_drain_timeout(),
        }
    }
}

impl HandoffSpec {
    /// The longest a handoff may take from the proxy's first held request to the result:
    /// the old holder's drain, then the call.
    pub fn bound(&self) -> Dur {
        Dur(self.drain_timeout.get() + self.timeout.get())
    }
}

fn default_handoff_path() -> String {
    "/cutover/handoff".into()
}
fn default_handoff_timeout() -> Dur {
    Dur::from_secs(5)
}
fn default_handoff_drain_timeout() -> Dur {
    Dur::from_secs(10)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// `initial_weight`, then double it every `step_interval` until 100 %.
    #[default]
    Double,
    /// The explicit `steps` list, then 100 %.
    Steps,
}

/// One explicit step: set a weight, and/or pause (for a duration or until promoted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Canary weight in percent for this step; absent keeps the previous step's weight.
    #[serde(default)]
    pub weight: Option<f64>,
    /// `"2m"` to stay this long (instead of `step_interval`), or `"until_promoted"` to wait for
    /// `cutover resume` / `cutover promote`.
    #[serde(default)]
    pub pause: Option<PauseSpec>,
}

/// How long a step lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseSpec {
    For(Dur),
    UntilPromoted,
}

impl Serialize for PauseSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PauseSpec::For(d) => d.serialize(s),
            PauseSpec::UntilPromoted => s.serialize_str("until_promoted"),
        }
    }
}

impl<'de> Deserialize<'de> for PauseSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim() == "until_promoted" {
            return Ok(PauseSpec::UntilPromoted);
        }
        crate::time::parse_duration(&s)
            .map(|d| PauseSpec::For(Dur(d)))
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "{s:?} is neither a duration ({e}) nor \"until_promoted\"; {}, or \"until_promoted\"",
                    crate::time::DURATION_GRAMMAR
                ))
            })
    }
}

/// An advance gate: checked at a step boundary; failing holds the weight, failing longer than
/// `max_hold` aborts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "metric", rename_all = "snake_case", deny_unknown_fields)]
pub enum GateSpec {
    /// Canary latency quantile against stable's (`max_increase_percent`, plus an absolute
    /// `slack` because sub-millisecond quantiles are noise), and/or against an absolute `max`.
    Latency {
        name: String,
        #[serde(default = "default_quantile")]
        quantile: f64,
        #[serde(default)]
        max_increase_percent: Option<f64>,
        #[serde(default = "default_slack")]
        slack: Dur,
        #[serde(default)]
        max: Option<Dur>,
    },
    /// Canary error ratio (5xx and proxy errors over requests): at most `max`, and/or at most
    /// stable's plus `max_increase`.
    ErrorRatio {
        name: String,
        #[serde(default)]
        max: Option<f64>,
        #[serde(default)]
        max_increase: Option<f64>,
    },
    /// A PromQL rule, in Prometheus alert form: the gate fails while it would fire (e.g.
    /// `... > 0.8`); no data is inconclusive. `{{track}}`, `{{version}}`, `{{stable_version}}`,
    /// `{{service}}` are substituted.
    Promql {
        name: String,
        query: String,
        #[serde(default)]
        provider: Provider,
    },
    /// The Mann-Whitney U test of canary vs stable latency: fails when the canary is
    /// significantly different in `direction` at `confidence`, beyond `tolerance_percent`.
    MannWhitney {
        name: String,
        #[serde(default = "default_confidence")]
        confidence: f64,
        #[serde(default = "default_tolerance_percent")]
        tolerance_percent: f64,
        #[serde(default = "default_direction")]
        direction: crate::mannwhitney::Direction,
    },
}

impl GateSpec {
    /// The blueprint's gates: p99 within +5 % of stable, error budget of a 99.9 % SLO not
    /// burning faster than 1×.
    pub fn defaults() -> Vec<GateSpec> {
        vec![
            GateSpec::Latency {
                name: "p99-vs-stable".into(),
                quantile: 0.99,
                max_increase_percent: Some(5.0),
                slack: default_slack(),
                max: None,
            },
            GateSpec::ErrorRatio {
                name: "error-budget".into(),
                max: Some(0.001),
                max_increase: None,
            },
        ]
    }

    pub fn name(&self) -> &str {
        match self {
            GateSpec::Latency { name, .. }
            | GateSpec::ErrorRatio { name, .. }
            | GateSpec::Promql { name, .. }
            | GateSpec::MannWhitney { name, .. } => name,
        }
    }
}

/// An abort rule: checked every interval; breached continuously for `for` aborts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "metric", rename_all = "snake_case", deny_unknown_fields)]
pub enum AbortSpec {
    /// Canary latency quantile above an absolute threshold.
    Latency {
        name: String,
        #[serde(default = "default_quantile")]
        quantile: f64,
        above: Dur,
        #[serde(rename = "for", default)]
        for_: Dur,
    },
    /// Canary error ratio above a threshold.
    ErrorRatio {
        name: String,
        above: f64,
        #[serde(rename = "for", default)]
        for_: Dur,
    },
    /// A PromQL rule, in Prometheus alert form (`expr` + `for`): breached while it would fire.
    Promql {
        name: String,
        query: String,
        #[serde(rename = "for", default)]
        for_: Dur,
        #[serde(default)]
        provider: Provider,
    },
}

impl AbortSpec {
    /// The blueprint's abort rules: canary p99 > 800 ms for 45 s; canary error ratio above
    /// 1.44 % (a 14.4× burn of a 99.9 % SLO, the SRE workbook's fast-burn page) for 30 s.
    pub fn defaults() -> Vec<AbortSpec> {
        vec![
            AbortSpec::Latency {
                name: "p99-over-800ms".into(),
                quantile: 0.99,
                above: Dur::from_millis(800),
                for_: Dur::from_secs(45),
            },
            AbortSpec::ErrorRatio {
                name: "error-budget-fast-burn".into(),
                above: 0.0144,
                for_: Dur::from_secs(30),
            },
        ]
    }

    pub fn name(&self) -> &str {
        match self {
            AbortSpec::Latency { name, .. }
            | AbortSpec::ErrorRatio { name, .. }
            | AbortSpec::Promql { name, .. } => name,
        }
    }

    pub fn for_(&self) -> Dur {
        match self {
            AbortSpec::Latency { for_, .. }
            | AbortSpec::ErrorRatio { for_, .. }
            | AbortSpec::Promql { for_, .. } => *for_,
        }
    }
}

/// `[sticky]`: which client key decides stable vs canary (DESIGN.md invariant 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickySpec {
    /// A request header carrying a client id, checked first.
    #[serde(default = "default_sticky_header")]
    pub header: Option<String>,
    /// A query-string parameter carrying a client id (`?client=abc`), checked after the
    /// header and before the cookie: what browser WebSocket clients, which cannot set
    /// headers, use to stay sticky.
    #[serde(default)]
    pub query: Option<String>,
    /// A cookie carrying a client id, checked last.
    #[serde(default)]
    pub cookie: Option<String>,
    /// What to use when neither is present.
    #[serde(default)]
    pub fallback: StickyFallback,
}

impl Default for StickySpec {
    fn default() -> Self {
        StickySpec {
            header: default_sticky_header(),
            query: None,
            cookie: None,
            fallback: StickyFallback::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StickyFallback {
    /// The client's IP address: sticky per client machine.
    #[default]
    PeerIp,
    /// A fresh random draw per request: weighted, not sticky.
    Random,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSpec {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter such as `info` or `cutover_host=debug,info`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogSpec {
    fn default() -> Self {
        LogSpec {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9180))
}
fn default_prometheus_version() -> u8 {
    3
}
fn default_metrics_path() -> String {
    "/metrics".into()
}
fn default_metrics_retention() -> Dur {
    Dur::from_secs(15 * 60)
}
fn default_lookback() -> Dur {
    Dur::from_secs(5 * 60)
}
fn default_prom_timeout() -> Dur {
    Dur::from_secs(2)
}
fn default_prom_retries() -> u32 {
    2
}
fn default_notify_timeout() -> Dur {
    Dur::from_secs(5)
}
fn default_notify_attempts() -> u32 {
    5
}
fn default_confidence() -> f64 {
    0.95
}
fn default_tolerance_percent() -> f64 {
    5.0
}
fn default_direction() -> crate::mannwhitney::Direction {
    crate::mannwhitney::Direction::Increase
}
/// More proxy workers than this is a typo, not a machine.
const MAX_WORKERS: u16 = 1024;

fn default_upstream_timeout() -> Dur {
    Dur::from_secs(60)
}
fn default_state_dir() -> String {
    ".cutover".into()
}
fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}
fn default_log_max_size() -> u64 {
    10 * 1024 * 1024
}
fn default_log_keep() -> u32 {
    5
}
fn default_start_timeout() -> Dur {
    Dur::from_secs(60)
}
fn default_probe_interval() -> Dur {
    Dur::from_secs(1)
}
fn default_probe_timeout() -> Dur {
    Dur::from_secs(1)
}
fn default_drain_timeout() -> Dur {
    Dur::from_secs(30)
}
fn default_grace() -> Dur {
    Dur::from_secs(10)
}
fn default_backoff_initial() -> Dur {
    Dur::from_millis(500)
}
fn default_backoff_max() -> Dur {
    Dur::from_secs(30)
}
fn default_crash_loop_window() -> Dur {
    Dur::from_secs(60)
}
fn default_initial_weight() -> f64 {
    2.0
}
fn default_step_interval() -> Dur {
    Dur::from_secs(90)
}
fn default_interval() -> Dur {
    Dur::from_secs(5)
}
fn default_window() -> Dur {
    Dur::from_secs(30)
}
fn default_min_samples() -> u64 {
    50
}
fn default_max_hold() -> Dur {
    Dur::from_secs(600)
}
/// Ten default windows: at the default 2 % it lowers the traffic needed for a verdict from
/// 83.4 to 8.4 req/s, and bounds the recorder's look-back memory.
fn default_max_lookback() -> Dur {
    Dur::from_secs(300)
}
/// Twice `max_lookback`: long enough for the look-back to reach its bound and for a held gate
/// to collect it at the current weight, short enough that a canary nobody can judge (no
/// traffic, metrics provider down) is not left holding for long.
fn default_max_inconclusive() -> Dur {
    Dur::from_secs(600)
}
fn default_hold_previous() -> Dur {
    Dur::from_secs(3600)
}
fn default_quantile() -> f64 {
    0.99
}
fn default_slack() -> Dur {
    Dur::from_millis(1)
}
fn default_sticky_header() -> Option<String> {
    Some("x-client-id".into())
}
fn default_log_level() -> String {
    "info".into()
}

/// One problem with a config: where, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field path, e.g. `rollout.gates[0].quantile`.
    pub path: String,
    pub message: String,
    pub fix: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)?;
        if !self.fix.is_empty() {
            write!(f, " (fix: {})", self.fix)?;
        }
        Ok(())
    }
}

/// Everything wrong with a config, reported at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "invalid config ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Parses and validates a `cutover.toml`: every problem at once, each with its path, its
    /// line and a fix (type errors, unknown keys with a "did you mean", missing keys, then
    /// every semantic problem of [`Config::validate`]).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        match Config::check_toml_str(text) {
            (Some(config), errors) if errors.is_empty() => Ok(config),
            (_, errors) => Err(ConfigError { errors }),
        }
    }

    /// Like [`Config::from_toml_str`], but also hands back the config when it has problems, with
    /// defaults where keys were wrong (`None` when even that could not be built, e.g. a TOML
    /// syntax error), so a shell can add the problems only it can find (files, PromQL) to the
    /// same list.
    pub fn check_toml_str(text: &str) -> (Option<Config>, Vec<FieldError>) {
        crate::spec_errors::parse(text)
    }

    /// Checks every value that the types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut v = Validator::default();
        let s = &self.service;
        if s.name.is_empty()
            || s.name.len() > 63
            || !s
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            v.err(
                "service.name",
                format!("{:?} is not a valid name", s.name),
                "use 1-63 letters, digits, '-', '_' or '.'",
            );
        }
        v.positive("service.upstream_timeout", s.upstream_timeout);
        if let Some(w) = s.workers {
            if !(1..=MAX_WORKERS).contains(&w) {
                v.err(
                    "service.workers",
                    format!("{w} is out of range"),
                    format!("use 1 to {MAX_WORKERS}, or remove it for one worker per CPU"),
                );
            }
        }
        if s.state_dir.trim().is_empty() {
            v.err(
                "service.state_dir",
                "is empty",
                "set a directory, e.g. \".cutover\"",
            );
        }
        if let Some(tls) = &s.tls {
            for (field, path) in [
                ("service.tls.cert", &tls.cert),
                ("service.tls.key", &tls.key),
            ] {
                if path.trim().is_empty() {
                    v.err(
                        field,
                        "is empty",
                        "give the path of a PEM file, relative to the config file",
                    );
                }
            }
            v.positive("service.tls.reload_interval", tls.reload_interval);
        }
        if let Some(tls) = &self.admin.tls {
            for (field, path) in [("admin.tls.cert", &tls.cert), ("admin.tls.key", &tls.key)] {
                if path.trim().is_empty() {
                    v.err(
                        field,
                        "is empty",
                        "give the path of a PEM file, relative to the config file",
                    );
                }
            }
            v.positive("admin.tls.reload_interval", tls.reload_interval);
        } else if self.admin.is_remote() && !self.admin.allow_plaintext_remote {
            v.err(
                "admin.listen",
                format!(
                    "{} is reachable from other hosts, and without TLS the admin token would \
                     cross the network in clear text",
                    self.admin.listen
                ),
                "add [admin.tls] with cert and key (docs/security.md), or listen on \
                 127.0.0.1, or accept the risk with admin.allow_plaintext_remote = true",
            );
        }
        if s.listen == self.admin.listen && s.listen.port() != 0 {
            v.err(
                "admin.listen",
                format!("is the same address as service.listen ({})", s.listen),
                "give the admin API its own port",
            );
        }

        let a = &self.app;
        if a.command.is_empty() || a.command[0].trim().is_empty() {
            v.err(
                "app.command",
                "is empty",
                "give the program and its arguments, e.g. [\"./my-app\", \"--port\", \"{port}\"]",
            );
        } else if !a
            .command
            .iter()
            .chain(a.env.values())
            .any(|s| s.contains("{port}"))
        {
            v.err(
                "app.command",
                "never mentions {port}, so instances cannot be told where to listen",
                "pass the port, e.g. \"--port\", \"{port}\" (or in app.env: PORT = \"{port}\")",
            );
        }
        for (i, arg) in a.command.iter().chain(a.env.values()).enumerate() {
            if let Some(bad) = unknown_placeholder(arg) {
                v.err(
                    format!("app.command[{i}]"),
                    format!("unknown placeholder {bad}"),
                    "use {port}, {version} or {instance}",
                );
            }
        }
        for (i, p) in a.digest_paths.iter().enumerate() {
            if p.trim().is_empty() {
                v.err(
                    format!("app.digest_paths[{i}]"),
                    "is empty",
                    "give a file, directory or glob relative to the config file, or remove the entry",
                );
            } else if let Some(bad) = unknown_placeholder(p).or_else(|| {
                ["{port}", "{instance}"]
                    .into_iter()
                    .find(|x| p.contains(x))
                    .map(str::to_string)
            }) {
                v.err(
                    format!("app.digest_paths[{i}]"),
                    format!("placeholder {bad} cannot be used here (the digest is per release, not per instance)"),
                    "use only {version}",
                );
            }
        }
        for key in a.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                v.err(
                    format!("app.env.{key}"),
                    "is not a valid environment variable name",
                    "use letters, digits and '_'",
                );
            }
        }
        if a.log_max_size < 4096 {
            v.err(
                "app.log_max_size",
                format!("{} bytes is too small", a.log_max_size),
                "use at least 4096 (bytes; the default is 10485760, 10 MiB)",
            );
        }
        if a.log_keep > 1000 {
            v.err(
                "app.log_keep",
                format!("{} is out of range", a.log_keep),
                "use 0 to 1000",
            );
        }
        for (i, name) in a.secret_env.iter().enumerate() {
            let mut bytes = name.bytes();
            let ok = bytes
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                v.err(
                    format!("app.secret_env[{i}]"),
                    format!("{name:?} is not a valid environment variable name"),
                    "use A-Z a-z 0-9 _, not starting with a digit",
                );
            } else if a.env.contains_key(name) {
                v.err(
                    format!("app.secret_env[{i}]"),
                    format!("{name} is also in app.env, in clear text"),
                    format!("remove app.env.{name}: its value comes from cutover's environment"),
                );
            } else if a.secret_env[..i].contains(name) {
                v.err(
                    format!("app.secret_env[{i}]"),
                    format!("{name} is listed twice"),
                    "list each name once",
                );
            }
        }
        if a.instances == 0 || a.instances > 64 {
            v.err(
                "app.instances",
                format!("{} is out of range", a.instances),
                "use 1 to 64",
            );
        }
        v.positive("app.start_timeout", a.start_timeout);
        v.probe("app.readiness", &a.readiness);
        v.probe("app.liveness", &a.liveness);
        v.positive("app.stop.grace", a.stop.grace);
        if let Some(p) = &a.stop.drain_path {
            if !p.starts_with('/') {
                v.err(
                    "app.stop.drain_path",
                    format!("{p:?} does not start with '/'"),
                    "use an absolute path such as \"/drain\"",
                );
            }
            if a.stop.drain_signal.is_some() {
                v.err(
                    "app.stop.drain_path",
                    "is set together with app.stop.drain_signal",
                    "ask the instance to drain one way: a signal or an HTTP POST",
                );
            }
        }
        v.positive("app.restart.backoff_initial", a.restart.backoff_initial);
        if a.restart.backoff_max < a.restart.backoff_initial {
            v.err(
                "app.restart.backoff_max",
                "is shorter than backoff_initial",
                "make it at least backoff_initial",
            );
        }
        if a.restart.crash_loop_restarts == 0 {
            v.err(
                "app.restart.crash_loop_restarts",
                "is 0, so every start would be a crash loop",
                "use 1 or more (default 3)",
            );
        }
        v.positive("app.restart.crash_loop_window", a.restart.crash_loop_window);

        let r = &self.rollout;
        match Weight::from_percent(r.initial_weight) {
            Some(w) if w > Weight::ZERO && !w.is_full() => {}
            _ => v.err(
                "rollout.initial_weight",
                format!("{} is not a canary weight", r.initial_weight),
                "use a percentage above 0 and below 100, at most 2 decimals (e.g. 2 or 0.5)",
            ),
        }
        v.positive("rollout.step_interval", r.step_interval);
        v.positive("rollout.interval", r.interval);
        v.positive("rollout.window", r.window);
        if r.window < r.interval {
            v.err(
                "rollout.window",
                format!(
                    "{} is shorter than rollout.interval ({})",
                    r.window, r.interval
                ),
                "make the window at least one interval",
            );
        }
        v.positive("rollout.max_hold", r.max_hold);
        if r.strategy == Strategy::Handoff {
            if a.instances != 1 {
                v.err(
                    "app.instances",
                    format!(
                        "is {} but rollout.strategy is \"handoff\": at most one instance may hold the role",
                        a.instances
                    ),
                    "set app.instances = 1, or use strategy = \"canary\" for a service that may run many instances",
                );
            }
            if r.schedule == ScheduleKind::Steps || !r.steps.is_empty() {
                v.err(
                    "rollout.steps",
                    "is set but rollout.strategy is \"handoff\", which moves the role at once, not in steps",
                    "remove rollout.schedule and rollout.steps, or use strategy = \"canary\"",
                );
            }
            let h = &r.handoff;
            if !h.path.starts_with('/') {
                v.err(
                    "rollout.handoff.path",
                    format!("{:?} does not start with '/'", h.path),
                    "use an absolute path such as \"/cutover/handoff\"",
                );
            }
            v.positive("rollout.handoff.timeout", h.timeout);
            v.positive("rollout.handoff.drain_timeout", h.drain_timeout);
        }
        match r.schedule {
            ScheduleKind::Double if !r.steps.is_empty() => v.err(
                "rollout.steps",
                "is set but rollout.schedule is \"double\"",
                "set schedule = \"steps\" to use them, or remove them",
            ),
            ScheduleKind::Steps if r.steps.is_empty() => v.err(
                "rollout.steps",
                "is empty but rollout.schedule is \"steps\"",
                "add steps such as { weight = 5 }, or use schedule = \"double\"",
            ),
            _ => {}
        }
        let mut last = Weight::ZERO;
        for (i, step) in r.steps.iter().enumerate() {
            let path = format!("rollout.steps[{i}]");
            if step.weight.is_none() && step.pause.is_none() {
                v.err(
                    &path,
                    "sets neither weight nor pause",
                    "add weight = <percent> and/or pause = \"2m\" | \"until_promoted\"",
                );
            }
            if let Some(p) = step.weight {
                match Weight::from_percent(p) {
                    Some(w) if w > Weight::ZERO => {
                        if w < last {
                            v.err(format!("{path}.weight"), format!("{p} is below the previous step's {}", last), "weights may only grow during a rollout (sticky clients never move back)");
                        }
                        last = w;
                    }
                    _ => v.err(
                        format!("{path}.weight"),
                        format!("{p} is not a weight"),
                        "use a percentage above 0 and at most 100, at most 2 decimals",
                    ),
                }
            }
            if let Some(PauseSpec::For(d)) = step.pause {
                v.positive(&format!("{path}.pause"), d);
            }
        }
        if r.schedule == ScheduleKind::Steps && r.steps.first().is_some_and(|s| s.weight.is_none())
        {
            v.err(
                "rollout.steps[0].weight",
                "is missing: the first step must give the canary a weight",
                "add weight = <percent>",
            );
        }

        let mut names = std::collections::BTreeSet::new();
        for (i, g) in r.gates.iter().enumerate() {
            let path = format!("rollout.gates[{i}]");
            v.rule_name(&path, g.name(), &mut names);
            match g {
                GateSpec::Latency {
                    quantile,
                    max_increase_percent,
                    max,
                    ..
                } => {
                    v.quantile(&format!("{path}.quantile"), *quantile);
                    if max_increase_percent.is_none() && max.is_none() {
                        v.err(&path, "has neither max_increase_percent nor max", "add max_increase_percent = 5 (relative to stable) and/or max = \"250ms\"");
                    }
                    if let Some(p) = max_increase_percent {
                        if !p.is_finite() || *p < 0.0 {
                            v.err(
                                format!("{path}.max_increase_percent"),
                                format!("{p} is not a percentage"),
                                "use a number >= 0, e.g. 5",
                            );
                        }
                    }
                }
                GateSpec::Promql {
                    query, provider, ..
                } => {
                    v.query(&format!("{path}.query"), query);
                    v.provider(
                        &format!("{path}.provider"),
                        *provider,
                        self.prometheus.is_some(),
                    );
                }
                GateSpec::MannWhitney {
                    confidence,
                    tolerance_percent,
                    ..
                } => {
                    if !(*confidence > 0.5 && *confidence < 1.0) {
                        v.err(
                            format!("{path}.confidence"),
                            format!("{confidence} is not a confidence level"),
                            "use a number between 0.5 and 1, e.g. 0.95",
                        );
                    }
                    if !tolerance_percent.is_finite() || *tolerance_percent < 0.0 {
                        v.err(
                            format!("{path}.tolerance_percent"),
                            format!("{tolerance_percent} is not a percentage"),
                            "use a number >= 0, e.g. 5",
                        );
                    }
                }
                GateSpec::ErrorRatio {
                    max, max_increase, ..
                } => {
                    if max.is_none() && max_increase.is_none() {
                        v.err(
                            &path,
                            "has neither max nor max_increase",
                            "add max = 0.001 and/or max_increase = 0.001",
                        );
                    }
                    for (field, val) in [("max", max), ("max_increase", max_increase)] {
                        if let Some(x) = val {
                            v.ratio(&format!("{path}.{field}"), *x);
                        }
                    }
                }
            }
        }
        for (i, a) in r.aborts.iter().enumerate() {
            let path = format!("rollout.aborts[{i}]");
            v.rule_name(&path, a.name(), &mut names);
            match a {
                AbortSpec::Latency {
                    quantile, above, ..
                } => {
                    v.quantile(&format!("{path}.quantile"), *quantile);
                    v.positive(&format!("{path}.above"), *above);
                }
                AbortSpec::ErrorRatio { above, .. } => v.ratio(&format!("{path}.above"), *above),
                AbortSpec::Promql {
                    query, provider, ..
                } => {
                    v.query(&format!("{path}.query"), query);
                    v.provider(
                        &format!("{path}.provider"),
                        *provider,
                        self.prometheus.is_some(),
                    );
                }
            }
        }

        if let Some(h) = &self.sticky.header {
            if h.is_empty()
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            {
                v.err(
                    "sticky.header",
                    format!("{h:?} is not a header name"),
                    "use letters, digits and '-', e.g. \"x-client-id\"",
                );
            }
        }
        if let Some(q) = &self.sticky.query {
            if q.is_empty()
                || q.contains(|ch: char| {
                    matches!(ch, '&' | '=' | '?' | '#' | ';') || ch.is_whitespace()
                })
            {
                v.err(
                    "sticky.query",
                    format!("{q:?} is not a query parameter name"),
                    "use a token without '&', '=', '?', '#', ';' or spaces, e.g. \"client\"",
                );
            }
        }
        if let Some(c) = &self.sticky.cookie {
            if c.is_empty() || c.contains(|ch: char| ch == ';' || ch == '=' || ch.is_whitespace()) {
                v.err(
                    "sticky.cookie",
                    format!("{c:?} is not a cookie name"),
                    "use a token without ';', '=' or spaces",
                );
            }
        }
        v.positive("rollout.max_inconclusive", r.max_inconclusive);
        if r.max_lookback < r.window {
            v.err(
                "rollout.max_lookback",
                format!(
                    "{} is shorter than rollout.window ({})",
                    r.max_lookback, r.window
                ),
                "make it at least the window (equal turns the look-back off)",
            );
        }
        let m = &self.metrics;
        if !m.path.is_empty() && !m.path.starts_with('/') {
            v.err(
                "metrics.path",
                format!("{:?} does not start with '/'", m.path),
                "use an absolute path such as \"/metrics\", or \"\" to not scrape instances",
            );
        }
        v.positive("metrics.retention", m.retention);
        v.positive("state.retention", self.state.retention);
        v.positive("metrics.lookback_delta", m.lookback_delta);
        if !matches!(m.prometheus_version, 2 | 3) {
            v.err(
                "metrics.prometheus_version",
                format!(
                    "{} is not a Prometheus major version cutover follows",
                    m.prometheus_version
                ),
                "use 3 (current) or 2",
            );
        }
        if m.retention < r.window {
            v.err(
                "metrics.retention",
                format!(
                    "{} is shorter than rollout.window ({})",
                    m.retention, r.window
                ),
                "keep at least one window of samples",
            );
        }
        if let Some(p) = &self.prometheus {
            v.http_url("prometheus.url", &p.url, "http://127.0.0.1:9090");
            v.positive("prometheus.timeout", p.timeout);
        }
        if let Some(a) = &self.alerts {
            if a.matchers.is_empty() {
                v.err(
                    "alerts.match",
                    "is empty, so every alert would abort",
                    "name the labels an alert must carry, e.g. match = { service = \"shop\" }",
                );
            }
        }
        let mut sinks = std::collections::BTreeSet::new();
        for (i, n) in self.notify.iter().enumerate() {
            let path = format!("notify[{i}]");
            if n.name.trim().is_empty() || !sinks.insert(n.name.clone()) {
                v.err(
                    format!("{path}.name"),
                    format!("{:?} is empty or used twice", n.name),
                    "give every sink its own name",
                );
            }
            v.http_url(&format!("{path}.url"), &n.url, "http://127.0.0.1:9000/hook");
            v.positive(&format!("{path}.timeout"), n.timeout);
            if n.max_attempts == 0 {
                v.err(format!("{path}.max_attempts"), "is 0", "use 1 or more");
            }
        }
        if self.log.level.trim().is_empty() {
            v.err(
                "log.level",
                "is empty",
                "use e.g. \"info\" or \"cutover_host=debug,info\"",
            );
        }
        v.finish()
    }

    /// The canary weights the schedule walks through, ending at 100 %.
    pub fn schedule(&self) -> Vec<crate::engine::Step> {
        crate::engine::Step::plan(&self.rollout)
    }
}

fn unknown_placeholder(s: &str) -> Option<String> {
    let mut rest = s;
    while let Some(start) = rest.find('{') {
        let after = &rest[start..];
        let end = after.find('}')?;
        let name = &after[..=end];
        if !matches!(name, "{port}" | "{version}" | "{instance}") {
            return Some(name.to_string());
        }
        rest = &after[end + 1..];
    }
    None
}

#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            message: message.into(),
            fix: fix.into(),
        });
    }
    fn positive(&mut self, path: &str, d: Dur) {
        if d.is_zero() {
            self.err(
                path,
                "is zero",
                "use a positive duration, e.g. \"500ms\" or \"5s\"",
            );
        }
    }
    fn http_url(&mut self, path: &str, url: &str, example: &str) {
        if !url.starts_with("http://") || url.len() <= "http://".len() {
            self.err(
                path,
                format!("{url:?} is not an http:// URL"),
                format!("write it like \"{example}\""),
            );
        }
    }
    fn probe(&mut self, path: &str, p: &ProbeSpec) {
        if !p.path.starts_with('/') {
            self.err(
                format!("{path}.path"),
                format!("{:?} does not start with '/'", p.path),
                "use an absolute path, e.g. \"/ready\"",
            );
        }
        self.positive(&format!("{path}.interval"), p.interval);
        self.positive(&format!("{path}.timeout"), p.timeout);
        if p.success_threshold == 0 {
            self.err(format!("{path}.success_threshold"), "is 0", "use 1 or more");
        }
        if p.failure_threshold == 0 {
            self.err(format!("{path}.failure_threshold"), "is 0", "use 1 or more");
        }
    }
    fn quantile(&mut self, path: &str, q: f64) {
        if !(q > 0.0 && q < 1.0) {
            self.err(
                path,
                format!("{q} is not a quantile"),
                "use a number between 0 and 1, e.g. 0.99",
            );
        }
    }
    fn ratio(&mut self, path: &str, x: f64) {
        if !(0.0..=1.0).contains(&x) {
            self.err(
                path,
                format!("{x} is not a ratio"),
                "use a number between 0 and 1, e.g. 0.001 for 0.1 %",
            );
        }
    }
    fn rule_name(&mut self, path: &str, name: &str, seen: &mut std::collections::BTreeSet<String>) {
        if name.trim().is_empty() {
            self.err(
                format!("{path}.name"),
                "is empty",
                "give every gate and abort rule a name",
            );
        } else if !seen.insert(name.to_string()) {
            self.err(
                format!("{path}.name"),
                format!("{name:?} is used twice"),
                "give every gate and abort rule its own name",
            );
        }
    }
    fn query(&mut self, path: &str, q: &str) {
        // The query is parsed by the shell (cutover-promql), which reports errors on this path;
        // here only what needs no parser.
        if q.trim().is_empty() {
            self.err(path, "is empty", "write a PromQL expression, e.g. histogram_quantile(0.99, rate(http_request_duration_seconds_bucket{track=\"canary\"}[30s])) > 0.8");
        }
    }
    fn provider(&mut self, path: &str, p: Provider, have_prometheus: bool) {
        if p == Provider::Prometheus && !have_prometheus {
            self.err(
                path,
                "is \"prometheus\" but there is no [prometheus] section",
                "add [prometheus] url = \"http://127.0.0.1:9090\", or use provider = \"embedded\"",
            );
        }
    }
    fn finish(self) -> Result<(), ConfigError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                errors: self.errors,
            })
        }
    }
}
