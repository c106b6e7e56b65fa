//! `cutover demo`: a self-contained walkthrough on the single-host runtime.
//!
//! demo-app v1 becomes stable behind the proxy, steady load starts, a healthy v2 rolls out to
//! 100 %, then a v3 with 1.2 s of injected latency is caught by the abort rule and rolled back.
//! Intervals are compressed (stated on screen) so the whole run takes well under 90 s. The
//! summary comes from the load generator's own view (requests served per version, failures)
//! and from cutover's decisions (fault onset to 100 % stable, blast radius).
//!
//! It exits non-zero when the outcome is not the expected one (a failed request during the
//! healthy rollout, or v3 not rolled back), so it doubles as a smoke test of a build.

use crate::commands::CommandError;
use crate::config::Loaded;
use crate::render;
use crate::status::StatusView;
use cutover_admin::AdminClient;
use cutover_core::engine::Phase;
use cutover_core::spec::Config;
use cutover_loadgen::{Load, LoadConfig, LoadReport};
use serde_json::json;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// The compressed settings, written to a real `cutover.toml` the user can inspect and point the
/// CLI at from another terminal.
fn demo_config(demo_app: &Path, proxy: SocketAddr, admin: SocketAddr) -> String {
    format!(
        r#"# Written by `cutover demo`: the blueprint's policy with time compressed ~15-30x.
[service]
name = "demo"
listen = "{proxy}"
state_dir = "."

[admin]
listen = "{admin}"

[app]
command = [{exe:?}, "--port", "{{port}}", "--version", "{{version}}"]
env = {{ DEMO_LATENCY = "2ms", DEMO_LATENCY_JITTER = "3ms" }}
instances = 2
start_timeout = "20s"

[app.readiness]
path = "/ready"
interval = "100ms"
timeout = "500ms"

[app.liveness]
path = "/live"
interval = "250ms"
timeout = "500ms"

[app.stop]
drain_timeout = "5s"
grace = "3s"

[rollout]
schedule = "double"
initial_weight = 2.0
step_interval = "3s"      # blueprint: 90s
interval = "250ms"        # blueprint: 5s
window = "3s"             # blueprint: 30s
min_samples = 20
max_hold = "20s"
hold_previous = "15s"     # blueprint: 60m

[[rollout.gates]]
name = "p99-vs-stable"
metric = "latency"
quantile = 0.99
max_increase_percent = 5.0
slack = "5ms"             # a loaded 2-core laptop jitters by a few ms

[[rollout.gates]]
name = "error-budget"
metric = "error_ratio"
max = 0.001

[[rollout.aborts]]
name = "p99-over-800ms"
metric = "latency"
quantile = 0.99
above = "800ms"
for = "3s"                # blueprint: 45s

[[rollout.aborts]]
name = "error-budget-fast-burn"
metric = "error_ratio"
above = 0.0144
for = "2s"                # blueprint: 30s

[sticky]
header = "x-client-id"
"#,
        exe = demo_app.display().to_string(),
    )
}

fn free_port() -> Result<SocketAddr, CommandError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| CommandError::Other(e.into()))?;
    l.local_addr().map_err(|e| CommandError::Other(e.into()))
}

fn find_demo_app() -> Result<PathBuf, CommandError> {
    let exe = std::env::current_exe().map_err(|e| CommandError::Other(e.into()))?;
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let candidate = dir.join("demo-app");
    if candidate.is_file() {
        return Ok(candidate);
    }
    Err(CommandError::Usage(format!(
        "demo-app was not found next to cutover (looked for {}); build both with `cargo build --release` and run target/release/cutover demo",
        candidate.display()
    )))
}

async fn status(client: &AdminClient) -> Result<StatusView, CommandError> {
    let doc = client.get("/v1/status").await?;
    serde_json::from_value(doc)
        .map_err(|e| CommandError::Other(anyhow::anyhow!("bad status document: {e}")))
}

/// Follows a rollout, printing a line whenever its weight or phase changes, until it ends.
async fn follow(
    client: &AdminClient,
    started: Instant,
    deadline: Duration,
) -> Result<StatusView, CommandError> {
    let mut last = String::new();
    loop {
        let s = status(client).await?;
        let Some(r) = s.rollout.as_ref() else {
            return Err(CommandError::Other(anyhow::anyhow!("no rollout in status")));
        };
        let gates = r
            .last_evaluation
            .as_ref()
            .map(|e| {
                let c = &e.canary;
                let p99 = c
                    .p99_seconds
                    .map_or("-".into(), |v| format!("{:.1}ms", v * 1e3));
                format!("canary p99 {p99}, {} req in window", c.requests)
            })
            .unwrap_or_default();
        // Once the rollout has ended it has no hold or breach: they are history, not news.
        let hold = r
            .hold()
            .map(|h| format!("  HOLD: {}", h.reason))
            .unwrap_or_default();
        let breach = r
            .breaches()
            .next()
            .map(|(k, _)| format!("  BREACH: {k}"))
            .unwrap_or_default();
        // A new line when something an operator cares about changes, not every number.
        let key = format!(
            "{}{}{:?}{:?}",
            r.weight,
            r.phase.name(),
            r.hold()
                .map(|h| h.reason.split(':').next().map(str::to_string)),
            r.breaches().map(|(k, _)| k).collect::<Vec<_>>()
        );
        if key != last {
            println!(
                "  {:>5.1}s  {} {} {:>6}  {:<12} {gates}{hold}{breach}",
                started.elapsed().as_secs_f64(),
                r.to.version,
                render::bar(r.weight.percent(), 30),
                r.weight.to_string(),
                r.phase.name(),
            );
            last = key;
        }
        if !r.phase.is_active() {
            return Ok(s);
        }
        if started.elapsed() > deadline {
            return Err(CommandError::Other(anyhow::anyhow!(
                "the rollout did not finish within {deadline:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_stable(
    client: &AdminClient,
    version: &str,
    deadline: Duration,
) -> Result<(), CommandError> {
    let t = Instant::now();
    loop {
        let s = status(client).await?;
        if s.stable.as_ref().is_some_and(|r| r.version == version)
            && s.rollout.as_ref().is_some_and(|r| !r.phase.is_active())
        {
            return Ok(());
        }
        if t.elapsed() > deadline {
            return Err(CommandError::Other(anyhow::anyhow!(
                "{version} did not become stable within {deadline:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1e3)
}

/// Runs the demo.
pub async fn run(state_dir: Option<PathBuf>, rate: u32) -> Result<(), CommandError> {
    let demo_app = find_demo_app()?;
    let dir = match state_dir {
        Some(d) => {
            if d.exists()
                && std::fs::read_dir(&d)
                    .map(|mut r| r.next().is_some())
                    .unwrap_or(false)
            {
                return Err(CommandError::Usage(format!("--state-dir {} is not empty; the demo starts from a clean state (fix: pass a new directory)", d.display())));
            }
            d
        }
        None => std::env::temp_dir().join(format!("cutover-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).map_err(|e| CommandError::Other(e.into()))?;
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    let (proxy, admin) = (free_port()?, free_port()?);
    let text = demo_config(&demo_app, proxy, admin);
    let config_path = dir.join("cutover.toml");
    std::fs::write(&config_path, &text).map_err(|e| CommandError::Other(e.into()))?;
    let config = Config::from_toml_str(&text)
        .map_err(|e| CommandError::Other(anyhow::anyhow!("demo config: {e}")))?;
    let loaded = Loaded {
        config,
        path: config_path.clone(),
        dir: dir.clone(),
    };

    println!("cutover demo: zero-downtime progressive delivery on one host");
    println!("  time is compressed: steps of 3s (blueprint 90s), evaluation every 250ms over 3s (5s over 30s),");
    println!(
        "  abort when canary p99 > 800ms for 3s (45s); state, logs and config in {}",
        dir.display()
    );
    println!(
        "  watch it from another terminal: cutover -c {} status --watch",
        config_path.display()
    );

    let started = Instant::now();
    let running = crate::runtime::start(loaded)
        .await
        .map_err(|e| CommandError::Other(e.into()))?;
    println!(
        "  or in a browser: http://{}/ (log in with the token in {})\n",
        running.admin_addr,
        // Without the `./` a state_dir of "." leaves in the path.
        running
            .state_dir
            .join(cutover_admin::TOKEN_FILE)
            .components()
            .collect::<PathBuf>()
            .display()
    );
    let client = running.client();
    // Ctrl-C ends the demo cleanly: instances outlive the process that started them (they
    // run in sessions of their own), so an interrupted demo must stop them itself.
    let result = tokio::select! {
        r = scenario(&client, running.proxy_addr, rate, started) => r,
        _ = tokio::signal::ctrl_c() => Err(CommandError::Interrupted(
            "demo interrupted".to_string(),
        )),
    };
    println!("\nshutting down (draining the proxy, stopping instances)...");
    running.shutdown().await;
    let (report, v2, v3) = result?;
    summary(&report, &v2, &v3, started)
}

struct Exposure {
    status: StatusView,
    sent_before: u64,
    sent_after: u64,
}

async fn scenario(
    client: &AdminClient,
    proxy: SocketAddr,
    rate: u32,
    started: Instant,
) -> Result<(LoadReport, Exposure, Exposure), CommandError> {
    println!("[1/4] v1 becomes the stable release (2 instances)");
    client
        .post("/v1/deploy", &json!({ "version": "v1" }))
        .await?;
    wait_stable(client, "v1", Duration::from_secs(30)).await?;

    println!("[2/4] steady load: {rate} requests/s from 5000 sticky clients (x-client-id)");
    let mut cfg = LoadConfig::new(proxy);
    cfg.rate_per_sec = rate;
    cfg.clients = 5000;
    cfg.max_in_flight = 1024;
    cfg.timeout = Duration::from_secs(5);
    let load = Load::start(cfg);
    tokio::time::sleep(Duration::from_secs(2)).await;

    println!("[3/4] deploy v2 (healthy): 2% → 4% → ... → 100%, gated on p99 and errors");
    let sent_before = load.snapshot().sent;
    client
        .post("/v1/deploy", &json!({ "version": "v2" }))
        .await?;
    let v2 = follow(client, started, Duration::from_secs(120)).await?;
    let v2 = Exposure {
        status: v2,
        sent_before,
        sent_after: load.snapshot().sent,
    };

    println!("[4/4] deploy v3 with 1.2s of injected latency (DEMO_LATENCY=1200ms)");
    let sent_before = load.snapshot().sent;
    client
        .post(
            "/v1/deploy",
            &json!({ "version": "v3", "env": { "DEMO_LATENCY": "1200ms" } }),
        )
        .await?;
    let v3 = follow(client, started, Duration::from_secs(120)).await?;
    let sent_after = load.snapshot().sent;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = load.stop().await;
    Ok((
        report,
        v2,
        Exposure {
            status: v3,
            sent_before,
            sent_after,
        },
    ))
}

fn summary(
    report: &LoadReport,
    v2: &Exposure,
    v3: &Exposure,
    started: Instant,
) -> Result<(), CommandError> {
    println!("\nsummary after {:.1}s", started.elapsed().as_secs_f64());
    println!(
        "  {:<8} {:>10} {:>8} {:>10} {:>10} {:>10}",
        "version", "served", "failed", "p50", "p99", "max"
    );
    for (v, c) in &report.by_version {
        println!(
            "  {:<8} {:>10} {:>8} {:>10} {:>10} {:>10}",
            v,
            c.ok + c.failed,
            c.failed,
            ms(c.p50),
            ms(c.p99),
            ms(c.max)
        );
    }
    println!(
        "  {:<8} {:>10} {:>8}   (timeouts/connection errors with no version: {})",
        "total", report.sent, report.failed, report.unattributed_failed
    );
    // Invariant 2: during the healthy rollout no client went back from v2 to v1. (After v3's
    // abort its clients do go back to v2: that is the rollback, not a flip.)
    let flips = report
        .per_client
        .values()
        .filter(|seq| {
            let first_v2 = seq.iter().position(|(v, _)| v == "v2");
            first_v2.is_some_and(|i| seq[i..].iter().any(|(v, _)| v == "v1"))
        })
        .count();
    println!("  clients sent back from v2 to v1 during the healthy rollout (sticky monotonicity): {flips}");

    let r2 = v2.status.rollout.as_ref();
    let promoted =
        r2.is_some_and(|r| matches!(r.phase, Phase::Promoted { .. } | Phase::Done { .. }));
    let v2_failed = report.by_version.get("v2").map_or(0, |c| c.failed);
    println!(
        "\n  v2: {} with {} failed requests out of {} sent during its rollout",
        if promoted {
            "promoted to 100%"
        } else {
            "NOT promoted"
        },
        report.failed,
        v2.sent_after - v2.sent_before,
    );
    let r3 = v3.status.rollout.as_ref();
    let mut ok = promoted && report.failed == 0 && v2_failed == 0 && flips == 0;
    match r3.map(|r| (&r.phase, r.traffic_since, r.ended())) {
        Some((Phase::Aborted { reason, .. }, Some(onset), Some(ended))) => {
            let served = report.by_version.get("v3").map_or(0, |c| c.ok + c.failed);
            let during = (v3.sent_after - v3.sent_before).max(1);
            println!("  v3: aborted and rolled back to v2: {reason}");
            println!(
                "      fault onset (v3's first traffic) to 100% stable: {}",
                render::span(onset, ended)
            );
            println!(
                "      blast radius: {served} requests served by v3 ({:.2}% of the {during} sent during its rollout), failed: {}",
                served as f64 * 100.0 / during as f64,
                report.by_version.get("v3").map_or(0, |c| c.failed)
            );
        }
        _ => {
            println!(
                "  v3: NOT rolled back (phase {})",
                r3.map_or("unknown", |r| r.phase.name())
            );
            ok = false;
        }
    }
    let _ = std::io::stdout().flush();
    if ok {
        println!("\nzero failed requests; the bad release never got past 2%.");
        Ok(())
    } else {
        Err(CommandError::RolloutFailed(
            "the demo did not end as expected (see above)".into(),
        ))
    }
}
