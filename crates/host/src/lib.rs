//! # cutover-host: the single-host runtime
//!
//! `cutover run` in library form: it binds the embedded proxy and the admin API, supervises the
//! service's instances as local processes, and runs the driver loop that feeds the pure engine
//! of `cutover-core` (deploys, readiness, crash loops, metric windows, operator verbs) and
//! carries out what it decides, after persisting it.
//!
//! This crate translates; it must never decide a rollout by itself: every "advance", "hold" or
//! "abort" comes from `cutover_core::engine`. It composes the IO crates — `cutover-proxy`
//! (data plane), `cutover-supervisor` (processes), `cutover-store` (SQLite),
//! `cutover-admin` (API) — and holds the CLI's verbs, the status rendering and the demo.
// `deny`, not `forbid`: the one exception is taking ownership of the listening sockets a
// launcher passes (socket activation), in `listeners::own`, with its reasoning there.
#![deny(unsafe_code)]

pub mod audit;
pub mod commands;
pub mod config;
pub mod dashboard;
pub mod delivery;
pub mod demo;
pub mod listeners;
pub mod lock;
pub mod logs;
pub mod metrics;
pub mod recovery;
pub mod reload;
pub mod remote;
pub mod render;
pub mod rollback;
pub mod router;
pub mod rules;
pub mod runtime;
pub mod scrape;
pub mod sdnotify;
pub mod secure;
pub mod simulate;
pub mod status;
pub mod upgrade;

use commands::CommandError;
use cutover_core::spec::LogFormat;
use std::path::Path;

pub use runtime::{start, start_with, Running, StartError, StartOptions};

/// Whether to write ANSI colour: only to a terminal, and never when `NO_COLOR` is set to
/// anything but the empty string (no-color.org). A log redirected to a file or collected by
/// journald/docker gets plain text.
pub fn colour(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the tracing subscriber: human-readable by default, JSON lines on request; colour
/// only on a terminal (see [`colour`]).
pub fn init_logging(level: &str, json: bool) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let ansi = colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// How `cutover run` was started, beyond [`runtime::StartOptions`].
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Log as JSON lines.
    pub log_json: bool,
    /// `--upgrade-from`: take over from the cutover listening on this socket
    /// ([`upgrade`]).
    pub upgrade_from: Option<std::path::PathBuf>,
}

/// `cutover run`: runs until SIGINT or SIGTERM, then shuts down gracefully, or until a
/// `cutover upgrade` hands over to a new cutover. A store that fails audit verification is
/// refused ([`CommandError::Tampered`], exit 65) unless `opts.accept_tampered`. With
/// `opts.keep_apps` the instances outlive the shutdown, for the next `cutover run` on this
/// state directory to re-adopt. `inherited`: the listening sockets a launcher passed
/// ([`listeners::Inherited::from_env`]).
pub async fn run(
    config_path: &Path,
    run_opts: RunOptions,
    opts: runtime::StartOptions,
    inherited: listeners::Inherited,
) -> Result<(), CommandError> {
    let loaded = config::load(config_path)?;
    init_logging(
        &loaded.config.log.level,
        run_opts.log_json || loaded.config.log.format == LogFormat::Json,
    );
    let keep_apps = opts.keep_apps;
    let mut successor = upgrade::Successor {
        config: std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_path_buf()),
        args: Vec::new(),
        bound: loaded.config.app.start_timeout.get() + upgrade::GRACE,
    };
    if run_opts.log_json {
        successor.args.push("--log-json".into());
    }
    if keep_apps {
        successor.args.push("--keep-apps".into());
    }
    if let Some(k) = &opts.audit_key_file {
        successor.args.push("--audit-key-file".into());
        successor.args.push(k.display().to_string());
    }
    // The config is checked before the running cutover is asked for anything.
    let (inherited, handover) = match &run_opts.upgrade_from {
        None => (inherited, None),
        Some(socket) => {
            let socket = socket.clone();
            let h = tokio::task::spawn_blocking(move || upgrade::receive(&socket))
                .await
                .map_err(|e| CommandError::Other(e.into()))?
                .map_err(|e| CommandError::Usage(e.to_string()))?;
            tracing::info!(
                "upgrade: took the listeners and the state-dir lock over from the running cutover"
            );
            let upgrade::Handover { conn, inherited } = h;
            (inherited, Some(conn))
        }
    };
    let started = runtime::start_with(loaded, opts, inherited)
        .await
        .map_err(|e| match e {
            e @ StartError::Tampered { .. } => CommandError::Tampered(e.to_string()),
            e => CommandError::Usage(e.to_string()),
        });
    let running = match (started, handover) {
        (Ok(running), handover) => (running, handover),
        (Err(e), Some(conn)) => {
            let _ = upgrade::Handover::failed_on(conn, &e.to_string());
            return Err(e);
        }
        (Err(e), None) => return Err(e),
    };
    let (running, handover) = running;
    if let Some(conn) = handover {
        upgrade::Handover::ready_on(conn)
            .map_err(|e| CommandError::Other(anyhow::anyhow!("upgrade: cannot say ready ({e})")))?;
    }
    // Bound once this cutover holds the state dir (and after `ready`: until then the old
    // cutover's socket is the one to reach).
    let upgrades = upgrade::bind(&running.state_dir).map_err(|e| {
        CommandError::Usage(format!(
            "cannot listen on {} ({e}) (fix: check the state directory's permissions)",
            upgrade::socket_path(&running.state_dir).display()
        ))
    })?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| CommandError::Other(e.into()))?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| CommandError::Other(e.into()))?;
    // systemd (`Type=notify`): ready now. A cutover that took over from another also becomes
    // the unit's main process (sdnotify's module doc).
    let upgraded = run_opts.upgrade_from.is_some();
    if upgraded {
        sdnotify::tell(&format!("MAINPID={}\nREADY=1", std::process::id()));
    } else {
        sdnotify::tell("READY=1");
    }
    let handed_over = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break None,
            _ = term.recv() => break None,
            // `cutover reload` without the admin API (systemd's ExecReload).
            _ = hup.recv() => match running.reload().await {
                Ok(r) => tracing::info!(result = r["message"].as_str().unwrap_or_default(), "SIGHUP: reload"),
                Err(e) => tracing::error!(error = %e.message, "SIGHUP: reload refused; the running config is kept"),
            },
            // `cutover upgrade` (signals wait until it is over: it is bounded).
            accepted = upgrades.accept() => if let Ok((conn, _)) = accepted {
                if let Some(held) = upgrade::handle(conn, &upgrades, &running, &successor).await {
                    break Some(held);
                }
            },
        }
    };
    if let Some(held) = handed_over {
        tracing::info!("upgraded: the new cutover serves; draining the proxy, the instances are the new cutover's");
        running.shutdown_handed_over(held).await;
        return Ok(());
    }
    sdnotify::tell("STOPPING=1");
    if keep_apps {
        tracing::info!("shutting down: draining the proxy; the instances keep running (--keep-apps) for the next cutover to re-adopt");
    } else {
        tracing::info!("shutting down: draining the proxy, then stopping instances");
    }
    running.shutdown_keeping(keep_apps).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(super::colour(true, None));
        assert!(super::colour(true, Some(OsStr::new(""))));
        assert!(!super::colour(true, Some(OsStr::new("1"))));
        assert!(!super::colour(false, None));
    }
}
