//! `cutover`: ship a new version of a live service with zero downtime.
//!
//! This binary only parses arguments, calls `cutover_host`, prints, and maps errors to exit
//! codes (64 bad usage or config, 65 the audit chain failed verification, 66 no such rollout,
//! 69 cutover unreachable, 2 a followed rollout failed, 130 `deploy --wait` interrupted,
//! 1 refused).
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use cutover_host::commands::{self, CommandError};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "cutover",
    version,
    about = "Progressive, SLO-gated, zero-downtime rollouts with automatic rollback"
)]
struct Cli {
    /// The config file.
    #[arg(
        short,
        long,
        global = true,
        default_value = "cutover.toml",
        env = "CUTOVER_CONFIG"
    )]
    config: PathBuf,
    /// The PEM CA certificate to verify an admin API with [admin.tls] by (default:
    /// admin.tls.ca, else admin.tls.cert); given, the CLI speaks https to admin.listen.
    #[arg(long, global = true, value_name = "PEM", env = "CUTOVER_ADMIN_CA")]
    admin_ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy, the supervisor and the admin API (the single-host runtime).
    Run {
        /// Log as JSON lines instead of human-readable text (overrides [log] format).
        #[arg(long)]
        log_json: bool,
        /// The audit chain's key file (default: audit.key in the state dir, created at first
        /// run). Keep it where whoever can write the state dir cannot read it.
        #[arg(long, value_name = "PATH", env = "CUTOVER_AUDIT_KEY_FILE")]
        audit_key_file: Option<PathBuf>,
        /// Start even if the state store fails audit verification (exit 65 otherwise); the
        /// acceptance is recorded in the audit chain.
        #[arg(long)]
        accept_tampered: bool,
        /// On SIGTERM/Ctrl-C, stop serving but leave the app instances running, for the next
        /// `cutover run` on this state directory to re-adopt (an upgrade of cutover itself).
        #[arg(long)]
        keep_apps: bool,
        /// Take over from the cutover listening on this upgrade socket (its listeners, its
        /// state-dir lock, its instances); `cutover upgrade` starts this, not you.
        #[arg(long, value_name = "SOCKET")]
        upgrade_from: Option<PathBuf>,
    },
    /// Replace the running `cutover run` with a new binary without dropping a connection: the
    /// new one takes over its listening sockets and instances, the old one drains and exits. A
    /// new binary that does not start leaves the old one serving (exit 1, saying why).
    Upgrade {
        /// The new cutover executable (default: this executable's path on disk, i.e. a rebuilt
        /// binary put in its place).
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
    },
    /// Start a progressive rollout of VERSION (returns at once unless --wait).
    Deploy {
        /// The version to roll out: substituted for {version} in app.command (1-64 of A-Z a-z 0-9 . _ -).
        version: String,
        /// Extra environment for this version's instances, KEY=VALUE (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Extra argument appended to this version's command (repeatable).
        #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
        args: Vec<String>,
        /// Deploy even if this exact release failed before.
        #[arg(long)]
        force: bool,
        /// Follow the rollout until it is promoted (exit 0) or aborted (exit 2); Ctrl-C stops
        /// following (exit 130), not the rollout.
        #[arg(long)]
        wait: bool,
        /// Secret environment, never stored in clear: NAME takes the value from `cutover run`'s
        /// environment, NAME=@FILE from a file it reads at every start, NAME=VALUE is the value
        /// (after a restart of cutover, looked for in its environment) (repeatable).
        #[arg(long = "secret-env", value_name = "NAME[=VALUE|@FILE]")]
        secret_env: Vec<String>,
        /// The commit this version was built from (a git SHA), recorded for `cutover report`.
        #[arg(long, value_name = "SHA", requires = "committed_at")]
        commit: Option<String>,
        /// When that commit was made, RFC 3339 (`git show -s --format=%cI SHA`): report's lead time.
        #[arg(long, value_name = "TIME", requires = "commit")]
        committed_at: Option<String>,
    },
    /// Show weights, step, gate verdicts with their numbers, ETA and instances.
    Status {
        /// Refresh every second.
        #[arg(long)]
        watch: bool,
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Stop advancing (abort rules keep watching).
    Pause {
        /// Why you pause it; recorded with the decision in the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Continue a paused rollout.
    Resume {
        /// Why you resume it; recorded with the decision in the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Skip the remaining steps: 100 % to the new version now.
    Promote {
        /// Why you promote it; recorded with the decision in the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Send all traffic back to stable and stop the canary.
    Abort {
        /// Why you abort it; recorded with the decision in the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// After a promotion, switch back to the previous version (instant while it is held).
    Rollback {
        /// Why you roll back; recorded with the decision in the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Every rollout, how it ended, and every decision with its reason (--json: and numbers).
    History {
        /// Show at most this many rollouts, newest first.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only this rollout, by the id `history` shows (exit 66 if there is none).
        #[arg(long)]
        rollout: Option<i64>,
        /// Verify the keyed audit chain, straight from the state database (no running cutover
        /// needed); names the first bad record and exits 65 when it fails.
        #[arg(long, conflicts_with = "export")]
        verify: bool,
        /// Write every record of the audit chain as JSON lines (each with its seq, prev and
        /// mac), which `--verify --export-file` checks on their own.
        #[arg(long)]
        export: bool,
        /// With --export: write here instead of stdout.
        #[arg(short, long, value_name = "PATH", requires = "export")]
        output: Option<PathBuf>,
        /// With --verify/--export: this state directory (default: the config's).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// With --verify/--export: this database file, e.g. an auditor's copy.
        #[arg(long, value_name = "PATH")]
        db: Option<PathBuf>,
        /// With --verify: the audit key (default: audit.key beside the database).
        #[arg(long, value_name = "PATH", env = "CUTOVER_AUDIT_KEY_FILE")]
        key_file: Option<PathBuf>,
        /// With --verify: the audit head to check the newest records against (default:
        /// audit.head beside the database).
        #[arg(long, value_name = "PATH")]
        head_file: Option<PathBuf>,
        /// With --verify: verify this file written by --export instead of a database.
        #[arg(long, value_name = "PATH", requires = "verify")]
        export_file: Option<PathBuf>,
        /// Print the JSON document (times as RFC 3339, every decision) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delivery figures per service from the history: deployment frequency, change failure
    /// rate, time to restore, lead time, unplanned downtime (reads the state store; no running
    /// cutover needed).
    Report {
        /// Start of the period: RFC 3339, Unix seconds, or a duration ago (7d); default 30 days
        /// before --until.
        #[arg(long)]
        since: Option<String>,
        /// End of the period (excluded), as --since; default now.
        #[arg(long)]
        until: Option<String>,
        /// Print the JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Print an instance's log (its stdout and stderr), e.g. why a version would not start.
    Logs {
        /// The version whose instance to read, as `deploy` named it (e.g. v2).
        version: String,
        /// Which instance of the version (0 for `v2-0`).
        #[arg(long, default_value_t = 0)]
        instance: u32,
        /// Keep printing new lines until the instance is stopped (or Ctrl-C).
        #[arg(short, long)]
        follow: bool,
    },
    /// Re-read and validate the config file and apply it to the running cutover without a
    /// restart (as SIGHUP does); an invalid file, or one changing what needs a restart, is
    /// refused whole with its errors and the running config kept.
    Reload,
    /// Check a config without running it.
    Validate,
    /// Write a rollout's recording (its measurements and events) as JSON, for `simulate`.
    Export {
        /// The rollout, by the id `history` shows (default: the latest; exit 66 if there is none).
        #[arg(long)]
        rollout: Option<i64>,
        /// Write here instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Replay a recording through the engine with this config's policy: when it would have
    /// advanced, held or aborted, and why.
    Simulate {
        /// A file written by `cutover export` (or use --prometheus).
        #[arg(required_unless_present = "prometheus")]
        recording: Option<PathBuf>,
        /// Replay from a Prometheus that scraped cutover instead: its URL.
        #[arg(long, requires_all = ["stable", "canary", "from"])]
        prometheus: Option<String>,
        /// With --prometheus: the stable version.
        #[arg(long)]
        stable: Option<String>,
        /// With --prometheus: the canary version, whose rollout starts at --from.
        #[arg(long)]
        canary: Option<String>,
        /// With --prometheus: Unix seconds, RFC 3339, or a duration ago (15m).
        #[arg(long)]
        from: Option<String>,
        /// With --prometheus: as --from; default now.
        #[arg(long)]
        to: Option<String>,
    },
    /// Print the Kubernetes CustomResourceDefinition of `Rollout` (cutover.dev/v1alpha1) as YAML.
    Crd,
    /// Run the Kubernetes controller: reconcile Rollouts with the same engine (kubeconfig or
    /// in-cluster service account).
    Controller {
        /// Watch Rollouts in this namespace only (default: all namespaces).
        #[arg(long)]
        namespace: Option<String>,
        /// Run without a Lease (one replica only: two would both write).
        #[arg(long)]
        no_leader_election: bool,
        /// The namespace of the leader-election Lease.
        #[arg(long, env = "POD_NAMESPACE", default_value = "cutover-system")]
        lease_namespace: String,
        /// The name of the leader-election Lease.
        #[arg(long, default_value = "cutover-controller")]
        lease_name: String,
        /// This replica's identity in the Lease (the pod's name).
        #[arg(long, env = "POD_NAME", default_value = "cutover-controller")]
        identity: String,
        /// Seconds the Lease is valid after its holder last renewed it.
        #[arg(long, default_value_t = 15)]
        lease_duration: u64,
        /// Seconds before expiry the holder renews it, and stops writing if it could not.
        #[arg(long, default_value_t = 5)]
        lease_grace: u64,
    },
    /// The single-host verbs for a Rollout on Kubernetes (kubeconfig-aware).
    K8s {
        /// The Rollout's namespace (default: the kubeconfig context's).
        #[arg(short, long, global = true)]
        namespace: Option<String>,
        #[command(subcommand)]
        verb: K8sVerb,
    },
    /// A self-contained walkthrough: v1 stable, a healthy v2 promoted, a slow v3 rolled back.
    Demo {
        /// Keep state and logs here instead of a temporary directory.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Requests per second of the demo's load.
        #[arg(long, default_value_t = 400)]
        rate: u32,
    },
}

/// `cutover k8s VERB NAME`.
#[derive(Subcommand)]
enum K8sVerb {
    /// The `cutover status` view of a Rollout (releases, phase, weight, plan, holds, the
    /// rules' verdicts), then its ReplicaSets, latest decisions and settings.
    Status {
        /// The Rollout's name.
        name: String,
        /// Print the status as JSON: `cutover status --json`'s names where the data is the
        /// same, plus the Rollout's status fields (without the engine's internal state).
        #[arg(long)]
        json: bool,
    },
    /// Stop advancing (abort rules keep watching).
    Pause {
        /// The Rollout's name.
        name: String,
    },
    /// Continue a paused rollout.
    Resume {
        /// The Rollout's name.
        name: String,
    },
    /// Skip the remaining steps: 100 % to the new version now.
    Promote {
        /// The Rollout's name.
        name: String,
    },
    /// Send all traffic back to stable and scale the canary down after its delay.
    Abort {
        /// The Rollout's name.
        name: String,
    },
    /// After a promotion, switch back to the previous ReplicaSet (instant while it is held).
    Rollback {
        /// The Rollout's name.
        name: String,
    },
    /// Roll out again a pod template whose rollout failed (it is refused otherwise).
    Retry {
        /// The Rollout's name.
        name: String,
    },
}

/// The proxy allocates a little per request (header maps, buffers) on every worker thread;
/// mimalloc's thread-local heaps serve that without glibc malloc's locking and consolidation
/// (about 5 % of the proxy's CPU under load, see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            // --help and --version are not errors; everything else is bad usage (EX_USAGE).
            std::process::exit(if usage { 64 } else { 0 });
        }
    };
    let code = match run(cli) {
        Ok(()) => 0,
        // The reader went away (`| head`): nothing to say, and nobody to say it to.
        Err(e @ CommandError::OutputClosed) => e.exit_code(),
        // Not an error: the user stopped following, and the message says what goes on.
        Err(e @ CommandError::Interrupted(_)) => {
            eprintln!("{e}");
            e.exit_code()
        }
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<(), CommandError> {
    match &cli.command {
        Command::Validate => {
            commands::emitln(&commands::validate(&cli.config)?)?;
            return Ok(());
        }
        Command::Report { since, until, json } => {
            let now = cutover_clock::unix_millis() as i64;
            return commands::emit(&cutover_host::delivery::run(
                &cli.config,
                since.as_deref(),
                until.as_deref(),
                *json,
                now,
            )?);
        }
        Command::Export { rollout, output } => {
            return cutover_host::simulate::export(&cli.config, *rollout, output.as_deref())
        }
        Command::Crd => {
            commands::emit(&cutover_kube::crd::crd_yaml())?;
            return Ok(());
        }
        Command::Simulate {
            recording: Some(recording),
            prometheus: None,
            ..
        } => {
            return commands::emit(&cutover_host::simulate::simulate(&cli.config, recording)?);
        }
        Command::History {
            verify,
            export,
            output,
            state_dir,
            db,
            key_file,
            head_file,
            export_file,
            json,
            ..
        } if *verify || *export => {
            let src = cutover_host::audit::Source {
                state_dir: state_dir.clone(),
                db: db.clone(),
                key_file: key_file.clone(),
                head_file: head_file.clone(),
                export_file: export_file.clone(),
            };
            return if *verify {
                cutover_host::audit::verify(&cli.config, &src, *json)
            } else {
                cutover_host::audit::export(&cli.config, &src, output.as_deref())
            };
        }
        Command::Upgrade { binary } => {
            let binary = match binary {
                Some(b) => b.clone(),
                None => cutover_host::upgrade::current_binary()
                    .map_err(|e| CommandError::Other(e.into()))?,
            };
            let loaded = cutover_host::config::load(&cli.config)?;
            let pid = cutover_host::upgrade::request(&loaded.state_dir(), &binary)?;
            commands::emitln(&format!(
                "upgraded: {} (pid {pid}) serves; the previous cutover drains and exits",
                binary.display()
            ))?;
            return Ok(());
        }
        _ => {}
    }
    // Before any thread starts: it reads and removes the launcher's LISTEN_* variables.
    let inherited = match &cli.command {
        Command::Run { .. } => cutover_host::listeners::Inherited::from_env()
            .map_err(|e| CommandError::Usage(e.to_string()))?,
        _ => cutover_host::listeners::Inherited::none(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CommandError::Other(e.into()))?;
    rt.block_on(async move {
        match cli.command {
            Command::Run {
                log_json,
                audit_key_file,
                accept_tampered,
                keep_apps,
                upgrade_from,
            } => {
                let opts = cutover_host::StartOptions {
                    audit_key_file,
                    accept_tampered,
                    keep_apps,
                };
                let run_opts = cutover_host::RunOptions {
                    log_json,
                    upgrade_from,
                };
                cutover_host::run(&cli.config, run_opts, opts, inherited).await
            }
            Command::Demo { state_dir, rate } => cutover_host::demo::run(state_dir, rate).await,
            Command::Deploy {
                version,
                env,
                args,
                force,
                wait,
                commit,
                committed_at,
                secret_env,
            } => {
                let env = commands::parse_env(&env)?;
                let extras = commands::DeployExtras {
                    commit: commit.zip(committed_at),
                    secret_env: commands::parse_secret_env(&secret_env)?,
                };
                commands::deploy(
                    &commands::client_with(&cli.config, cli.admin_ca.as_deref())?,
                    &version,
                    env,
                    args,
                    force,
                    wait,
                    extras,
                )
                .await
            }
            Command::Status { watch, json } => {
                commands::status(
                    &commands::client_with(&cli.config, cli.admin_ca.as_deref())?,
                    watch,
                    json,
                )
                .await
            }
            Command::Pause { reason } => {
                commands::verb(
                    &commands::client_with(&cli.config, cli.admin_ca.as_deref())?,
                    "pause",
                    reason,
                )
                .await
            }
            Command::Resume { reason } => {
                commands::verb(
                    &commands::client_with(&cli.config, cli.admin_ca.as_deref())?,
                    "resume",
                    reason,
                )
                .await
            }
            Command::Promote { reason } => {
                commands::verb(
                    &commands::client_with(&cli.config, cli.admin_ca.as_deref())?,
                    "promote",
                    reason,
                )
                .await
            }
            Command::Abort { reason } => {
                commands::verb(
                    &commands::client_with(&cli.config, cli.admin_ca.as_deref())?,
                    "abort",
                    reason,
                )
                .await
            }
            Command::Reload => {
                commands::verb(&commands::client(&cli.config)?, "reload", None).await
            }
            Command::Rollback { reason } => {
                commands::verb(
                    &commands::client_with(&cli.config, cli.admin_ca.as_deref())?,
                    "rollback",
                    reason,
                )
                .await
            }
            Command::History {
                limit,
                rollout,
                json,
                ..
            } => {
                commands::history(
                    &commands::client_with(&cli.config, cli.admin_ca.as_deref())?,
                    limit,
                    rollout,
                    false,
                    json,
                )
                .await
            }
            Command::Logs {
                version,
                instance,
                follow,
            } => {
                let client = commands::client_with(&cli.config, cli.admin_ca.as_deref())?;
                let mut out = std::io::stdout();
                commands::logs(&client, &version, instance, follow, &mut out).await
            }
            Command::Simulate {
                prometheus: Some(url),
                stable,
                canary,
                from,
                to,
                ..
            } => {
                let now = cutover_clock::unix_millis() as i64;
                let src = cutover_host::simulate::FromPrometheus {
                    url,
                    stable: stable.unwrap_or_default(),
                    canary: canary.unwrap_or_default(),
                    from_ms: cutover_host::simulate::parse_time(
                        from.as_deref().unwrap_or_default(),
                        now,
                    )?,
                    to_ms: match to {
                        Some(t) => cutover_host::simulate::parse_time(&t, now)?,
                        None => now,
                    },
                };
                commands::emit(
                    &cutover_host::simulate::simulate_prometheus(&cli.config, &src).await?,
                )
            }
            Command::Controller {
                namespace,
                no_leader_election,
                lease_namespace,
                lease_name,
                identity,
                lease_duration,
                lease_grace,
            } => {
                if lease_grace >= lease_duration {
                    return Err(CommandError::Usage(format!(
                        "--lease-grace ({lease_grace}) must be below --lease-duration ({lease_duration})"
                    )));
                }
                let opts = cutover_kube::controller::Options {
                    namespace,
                    leader_election: !no_leader_election,
                    lease_namespace,
                    lease_name,
                    identity,
                    lease_duration,
                    lease_grace,
                };
                tracing_subscriber::fmt().init();
                cutover_kube::controller::run(opts)
                    .await
                    .map_err(|e| CommandError::Other(e.into()))
            }
            Command::K8s { namespace, verb } => {
                let ns = namespace.as_deref();
                let out = match verb {
                    K8sVerb::Status { name, json } => {
                        cutover_kube::cli::status(ns, &name, json).await
                    }
                    K8sVerb::Pause { name } => cutover_kube::cli::verb(ns, &name, "pause").await,
                    K8sVerb::Resume { name } => cutover_kube::cli::verb(ns, &name, "resume").await,
                    K8sVerb::Promote { name } => {
                        cutover_kube::cli::verb(ns, &name, "promote").await
                    }
                    K8sVerb::Abort { name } => cutover_kube::cli::verb(ns, &name, "abort").await,
                    K8sVerb::Rollback { name } => {
                        cutover_kube::cli::verb(ns, &name, "rollback").await
                    }
                    K8sVerb::Retry { name } => cutover_kube::cli::verb(ns, &name, "retry").await,
                };
                match out {
                    Ok(text) => commands::emitln(&text),
                    Err(e @ cutover_kube::cli::CliError::NotFound { .. }) => {
                        Err(CommandError::NotFound(e.to_string()))
                    }
                    Err(e) => Err(CommandError::Other(e.into())),
                }
            }
            Command::Crd
            | Command::Validate
            | Command::Export { .. }
            | Command::Report { .. }
            | Command::Simulate { .. }
            | Command::Upgrade { .. } => handled_before_the_runtime(),
        }
    })
}

fn handled_before_the_runtime() -> Result<(), CommandError> {
    Err(CommandError::Usage(
        "crd, validate, export, report, simulate and upgrade run without the runtime".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every argument and subcommand below `cmd` without help text, as `cutover verb --arg`.
    fn undocumented(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            if a.get_help().is_none() && a.get_long_help().is_none() {
                let name = a
                    .get_long()
                    .map_or_else(|| a.get_id().to_string(), |l| format!("--{l}"));
                out.push(format!("{path} {name}"));
            }
        }
        for sub in cmd.get_subcommands() {
            let p = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                out.push(p.clone());
            }
            undocumented(sub, &p, out);
        }
    }

    #[test]
    fn every_argument_and_subcommand_has_help_text() {
        let mut cmd = Cli::command();
        cmd.build();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        undocumented(&cmd, "cutover", &mut missing);
        assert!(
            missing.is_empty(),
            "`--help` shows these without a description; give each a doc comment: {missing:?}"
        );
        // The walk does see the arguments (a walk of nothing would pass vacuously).
        let history = cmd.find_subcommand("history").unwrap();
        assert!(history
            .get_arguments()
            .any(|a| a.get_long() == Some("json")));
    }
}
