//! `cutover`: ship a new version of a live service with zero downtime.
//!
//! This binary only parses arguments, calls `cutover_host`, prints, and maps errors to exit
//! codes (64 bad usage or config, 66 no such rollout, 69 cutover unreachable, 2 a followed
//! rollout failed, 130 `deploy --wait` interrupted, 1 refused).
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
        /// Check the audit log's hash chain.
        #[arg(long)]
        verify: bool,
        /// Print the JSON document (times as RFC 3339, every decision) instead of text.
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
        Command::Export { rollout, output } => {
            return cutover_host::simulate::export(&cli.config, *rollout, output.as_deref())
        }
        Command::Simulate {
            recording: Some(recording),
            prometheus: None,
            ..
        } => {
            return commands::emit(&cutover_host::simulate::simulate(&cli.config, recording)?);
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
            Command::Run { log_json } => cutover_host::run(&cli.config, log_json, inherited).await,
            Command::Demo { state_dir, rate } => cutover_host::demo::run(state_dir, rate).await,
            Command::Deploy {
                version,
                env,
                args,
                force,
                wait,
            } => {
                let env = commands::parse_env(&env)?;
                commands::deploy(
                    &commands::client(&cli.config)?,
                    &version,
                    env,
                    args,
                    force,
                    wait,
                )
                .await
            }
            Command::Status { watch, json } => {
                commands::status(&commands::client(&cli.config)?, watch, json).await
            }
            Command::Pause { reason } => {
                commands::verb(&commands::client(&cli.config)?, "pause", reason).await
            }
            Command::Resume { reason } => {
                commands::verb(&commands::client(&cli.config)?, "resume", reason).await
            }
            Command::Promote { reason } => {
                commands::verb(&commands::client(&cli.config)?, "promote", reason).await
            }
            Command::Abort { reason } => {
                commands::verb(&commands::client(&cli.config)?, "abort", reason).await
            }
            Command::Reload => {
                commands::verb(&commands::client(&cli.config)?, "reload", None).await
            }
            Command::Rollback { reason } => {
                commands::verb(&commands::client(&cli.config)?, "rollback", reason).await
            }
            Command::History {
                limit,
                rollout,
                verify,
                json,
            } => {
                commands::history(
                    &commands::client(&cli.config)?,
                    limit,
                    rollout,
                    verify,
                    json,
                )
                .await
            }
            Command::Logs {
                version,
                instance,
                follow,
            } => {
                let client = commands::client(&cli.config)?;
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
            Command::Validate | Command::Export { .. } | Command::Simulate { .. } => {
                handled_before_the_runtime()
            }
        }
    })
}

fn handled_before_the_runtime() -> Result<(), CommandError> {
    Err(CommandError::Usage(
        "validate, export and simulate run without the runtime".into(),
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
