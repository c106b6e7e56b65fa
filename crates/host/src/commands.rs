//! What each CLI verb does, as library functions; `crates/cli` only parses and maps errors to
//! exit codes.

use crate::config::{self, LoadError, Loaded};
use crate::render;
use crate::status::StatusView;
use cutover_admin::{AdminClient, ClientError};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

/// Why a command failed; each maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Bad arguments (exit 64).
    #[error("{0}")]
    Usage(String),
    /// The config is invalid or unreadable (exit 64).
    #[error(transparent)]
    Config(#[from] LoadError),
    /// The admin API answered with an error.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The rollout asked for does not exist (exit 66, sysexits' EX_NOINPUT), whichever verb
    /// asked: `history --rollout N` and `export --rollout N` alike.
    #[error("{0}")]
    NotFound(String),
    /// `deploy --wait` followed a rollout that did not promote (exit 2).
    #[error("{0}")]
    RolloutFailed(String),
    /// `deploy --wait` stopped following (Ctrl-C); the rollout itself goes on (exit 130, as
    /// for any command a SIGINT ended).
    #[error("{0}")]
    Interrupted(String),
    /// Whoever read the output stopped reading (`cutover history | head`): exit quietly with
    /// 141, what a shell reports for a command ended by SIGPIPE.
    #[error("standard output was closed")]
    OutputClosed,
    /// The audit chain failed verification: `history --verify` found a problem, or `run`
    /// refused a tampered store (exit 65, sysexits' EX_DATAERR).
    #[error("{0}")]
    Tampered(String),
    /// Anything else (exit 1).
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl CommandError {
    /// sysexits-style codes: 64 usage/config, 65 audit chain tampered, 66 no such rollout,
    /// 69 unavailable, 2 rollout failed, 130 `deploy --wait` interrupted, 1 refused.
    pub fn exit_code(&self) -> i32 {
        match self {
            CommandError::Usage(_) | CommandError::Config(_) => 64,
            CommandError::NotFound(_) => 66,
            CommandError::Client(ClientError::Api { status: 404, .. }) => 66,
            CommandError::Client(ClientError::Connect { .. } | ClientError::Timeout { .. }) => 69,
            CommandError::Client(ClientError::Api { status, .. })
                if *status == 400 || *status == 422 =>
            {
                64
            }
            CommandError::Tampered(_) => 65,
            CommandError::RolloutFailed(_) => 2,
            CommandError::Interrupted(_) => 130,
            CommandError::OutputClosed => 141,
            _ => 1,
        }
    }
}

/// Writes `text` to standard output. `print!` panics when the reader has gone (a pipe into
/// `head`); this says so as [`CommandError::OutputClosed`] instead.
pub fn emit(text: &str) -> Result<(), CommandError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(CommandError::OutputClosed),
        Err(e) => Err(anyhow::anyhow!("cannot write to standard output: {e}").into()),
    }
}

/// [`emit`] with a newline.
pub fn emitln(text: &str) -> Result<(), CommandError> {
    emit(&format!("{text}\n"))
}

/// `cutover validate`: the config's summary, or every problem in it.
pub fn validate(path: &Path) -> Result<String, CommandError> {
    let l = config::load_checked(path)?;
    let c = &l.config;
    if c.rollout.strategy == cutover_core::spec::Strategy::Handoff {
        let h = &c.rollout.handoff;
        return Ok(format!(
            "{} is valid: service {} on {}, admin on {}, one instance per version\nstrategy: handoff (a singleton: the active role moves make-before-break with a fencing token, docs/handoff.md): POST {} on the new instance within {}, after the old holder's in-flight requests finish within {}; schedule, gates, abort rules and hold_previous do not apply",
            l.path.display(),
            c.service.name,
            c.service.listen,
            c.admin.listen,
            h.path,
            h.timeout,
            h.drain_timeout,
        ));
    }
    let plan: Vec<String> = c.schedule().iter().map(|s| s.weight.to_string()).collect();
    Ok(format!(
        "{} is valid: service {} on {}, admin on {}, {} instance(s) per version\nschedule: {} → 100% ({} steps, {} each); evaluation every {} over {}; {} gate(s), {} abort rule(s)\ntraffic: {}",
        l.path.display(),
        c.service.name,
        c.service.listen,
        c.admin.listen,
        c.app.instances,
        plan.join(" → "),
        plan.len(),
        c.rollout.step_interval,
        c.rollout.interval,
        c.rollout.window,
        c.rollout.gates.len(),
        c.rollout.aborts.len(),
        cutover_core::lookback::traffic_need(&c.rollout).sentence()
    ))
}

/// An admin client for the `cutover run` that uses this config.
pub fn client(path: &Path) -> Result<AdminClient, CommandError> {
    client_with(path, None)
}

/// [`client`], speaking https when the config has `[admin.tls]` or `admin_ca` is given: the
/// server's certificate is verified with `admin_ca`, else `admin.tls.ca`, else `admin.tls.cert`
/// (a self-signed certificate is its own CA).
pub fn client_with(path: &Path, admin_ca: Option<&Path>) -> Result<AdminClient, CommandError> {
    let l: Loaded = config::load(path)?;
    let ca = admin_ca.map(Path::to_path_buf).or_else(|| {
        let t = l.config.admin.tls.as_ref()?;
        Some(config::resolve(&l.dir, t.ca.as_deref().unwrap_or(&t.cert)))
    });
    let token_path = l.token_path();
    let token = std::fs::read_to_string(&token_path).map_err(|e| {
        CommandError::Usage(format!(
            "cannot read the admin token at {} ({e}); it is created by `cutover run -c {}` on its first start",
            token_path.display(),
            l.path.display()
        ))
    })?;
    let client = AdminClient::new(l.config.admin.listen, token.trim().to_string());
    Ok(match ca {
        None => client,
        Some(ca) => client.with_tls(
            cutover_admin::client_tls(&ca, l.config.admin.listen)
                .map_err(|e| CommandError::Usage(e.to_string()))?,
        ),
    })
}

/// What `deploy` sends besides the release itself.
#[derive(Debug, Clone, Default)]
pub struct DeployExtras {
    /// `--commit SHA --committed-at T`.
    pub commit: Option<(String, String)>,
    /// `--secret-env`, as the API takes it (see [`parse_secret_env`]).
    pub secret_env: BTreeMap<String, String>,
}

/// Parses `--secret-env NAME[=VALUE|@FILE]`: `NAME` alone takes the value from cutover's own
/// environment (`""` in the API), `NAME=@FILE` names a file cutover reads (made absolute here,
/// so it means the same to `cutover run`), `NAME=VALUE` gives the value.
pub fn parse_secret_env(items: &[String]) -> Result<BTreeMap<String, String>, CommandError> {
    let mut out = BTreeMap::new();
    for item in items {
        let (name, spec) = match item.split_once('=') {
            None => (item.as_str(), String::new()),
            Some((name, value)) => match value.strip_prefix('@') {
                Some(file) if !file.is_empty() => {
                    let path = std::path::absolute(file).map_err(|e| {
                        CommandError::Usage(format!("--secret-env {name}=@{file}: {e}"))
                    })?;
                    (name, format!("@{}", path.display()))
                }
                _ => (name, value.to_string()),
            },
        };
        if name.is_empty() {
            return Err(CommandError::Usage(format!(
                "--secret-env {item:?} has an empty name (fix: write it like --secret-env DB_PASSWORD, --secret-env DB_PASSWORD=@/run/secrets/db or --secret-env DB_PASSWORD=VALUE)"
            )));
        }
        out.insert(name.to_string(), spec);
    }
    Ok(out)
}

/// Parses `KEY=VALUE` pairs from `--env`.
pub fn parse_env(pairs: &[String]) -> Result<BTreeMap<String, String>, CommandError> {
    let mut env = BTreeMap::new();
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            return Err(CommandError::Usage(format!(
                "--env {p:?} is not KEY=VALUE (fix: write it like --env DEMO_LATENCY=200ms)"
            )));
        };
        if k.is_empty() {
            return Err(CommandError::Usage(format!(
                "--env {p:?} has an empty name (fix: write it like --env KEY=VALUE)"
            )));
        }
        env.insert(k.to_string(), v.to_string());
    }
    Ok(env)
}

/// `cutover deploy`.
pub async fn deploy(
    client: &AdminClient,
    version: &str,
    env: BTreeMap<String, String>,
    args: Vec<String>,
    force: bool,
    wait: bool,
    extras: DeployExtras,
) -> Result<(), CommandError> {
    let mut body = json!({ "version": version, "env": env, "args": args, "force": force });
    if let Some((sha, at)) = extras.commit {
        body["commit"] = json!(sha);
        body["committed_at"] = json!(at);
    }
    if !extras.secret_env.is_empty() {
        body["secret_env"] = json!(extras.secret_env);
    }
    let res = client.post("/v1/deploy", &body).await?;
    // Ctrl-C while following must not look like it stopped the rollout: catch it (before the
    // first line is printed, so that no interrupt goes unseen) and say what goes on.
    let mut interrupt = if wait {
        Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .map_err(|e| anyhow::anyhow!("cannot watch for Ctrl-C: {e}"))?,
        )
    } else {
        None
    };
    emitln(
        res.get("message")
            .and_then(Value::as_str)
            .unwrap_or("deployed"),
    )?;
    let Some(interrupt) = interrupt.as_mut() else {
        return Ok(());
    };
    let id = res.get("rollout").and_then(Value::as_u64);
    let interrupted = || {
        let which = id.map_or(String::new(), |id| format!(" {id}"));
        CommandError::Interrupted(format!(
            "stopped following; rollout{which} of {version} goes on in `cutover run`: \
             `cutover status --watch` follows it, `cutover abort` stops it"
        ))
    };
    let mut last = String::new();
    loop {
        let doc = tokio::select! {
            doc = client.get("/v1/status") => doc?,
            _ = interrupt.recv() => return Err(interrupted()),
        };
        let s: StatusView =
            serde_json::from_value(doc).map_err(|e| anyhow::anyhow!("bad status document: {e}"))?;
        let Some(r) = s
            .rollout
            .as_ref()
            .filter(|r| Some(r.id) == id || id.is_none())
        else {
            return Err(anyhow::anyhow!("the rollout disappeared from status").into());
        };
        let line = format!(
            "{} {:>6}  {}",
            render::bar(r.weight.percent(), 30),
            r.weight.to_string(),
            r.phase.name()
        );
        if line != last {
            emitln(&line)?;
            last = line;
        }
        use cutover_core::engine::Phase;
        match &r.phase {
            Phase::Promoted { .. } | Phase::Done { .. } => {
                emitln(&format!("{} is live at 100%", r.to.label()))?;
                return Ok(());
            }
            Phase::Aborted { reason, .. } => {
                return Err(CommandError::RolloutFailed(format!(
                    "rollout {} aborted: {reason}",
                    r.id
                )))
            }
            Phase::RolledBack { reason, .. } => {
                return Err(CommandError::RolloutFailed(format!(
                    "rollout {} rolled back: {reason}",
                    r.id
                )))
            }
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = interrupt.recv() => return Err(interrupted()),
        }
    }
}

/// `cutover status`, once or refreshed until interrupted.
pub async fn status(client: &AdminClient, watch: bool, as_json: bool) -> Result<(), CommandError> {
    loop {
        let doc = client.get("/v1/status").await?;
        if as_json {
            emitln(&serde_json::to_string_pretty(&doc).unwrap_or_default())?;
        } else {
            let s: StatusView = serde_json::from_value(doc)
                .map_err(|e| anyhow::anyhow!("bad status document: {e}"))?;
            let text = render::status(&s);
            if watch && std::io::stdout().is_terminal() {
                // Clear the screen and home the cursor, as `watch(1)` does.
                emit(&format!("\x1b[2J\x1b[H{text}"))?;
            } else if watch {
                // Into a file or a pipe: no escape codes, one view after the other.
                emitln(&text)?;
            } else {
                emit(&text)?;
            }
        }
        if !watch {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `cutover pause|resume|promote|abort|rollback`.
pub async fn verb(
    client: &AdminClient,
    verb: &str,
    reason: Option<String>,
) -> Result<(), CommandError> {
    let body = match reason {
        Some(r) => json!({ "reason": r }),
        None => json!({}),
    };
    let res = client.post(&format!("/v1/{verb}"), &body).await?;
    emitln(res.get("message").and_then(Value::as_str).unwrap_or("ok"))?;
    Ok(())
}

/// How often `cutover logs --follow` asks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// `cutover logs VERSION [--instance N] [--follow]`: prints the end of an instance's log (its
/// processes' stdout and stderr); with `follow`, keeps printing what is appended until the
/// instance is stopped (or Ctrl-C). An unknown version or instance is a 404 (exit 1) that
/// says which exist.
pub async fn logs(
    client: &AdminClient,
    version: &str,
    instance: u32,
    follow: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CommandError> {
    cutover_admin::check_version(version).map_err(|e| CommandError::Usage(e.message))?;
    let base = format!("/v1/logs/{version}?instance={instance}");
    let mut offset: Option<u64> = None;
    loop {
        let q = match offset {
            Some(o) => format!("{base}&offset={o}"),
            None => base.clone(),
        };
        let chunk: cutover_admin::LogsChunk = serde_json::from_value(client.get(&q).await?)
            .map_err(|e| anyhow::anyhow!("unexpected answer from cutover: {e}"))?;
        let write = |out: &mut (dyn Write + Send)| -> std::io::Result<()> {
            out.write_all(chunk.text.as_bytes())?;
            out.flush()
        };
        write(out).map_err(|e| CommandError::Other(e.into()))?;
        // Nothing new: caught up with the file.
        let caught_up = chunk.text.is_empty();
        offset = Some(chunk.offset);
        if !follow || (!chunk.running && caught_up) {
            return Ok(());
        }
        if caught_up {
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    }
}

/// `cutover history`.
pub async fn history(
    client: &AdminClient,
    limit: u32,
    rollout: Option<i64>,
    verify: bool,
    as_json: bool,
) -> Result<(), CommandError> {
    let mut q = format!("/v1/history?limit={limit}&verify={verify}");
    if let Some(r) = rollout {
        q.push_str(&format!("&rollout={r}"));
    }
    let doc = client.get(&q).await?;
    if as_json {
        emitln(&serde_json::to_string_pretty(&doc).unwrap_or_default())?;
    } else {
        emit(&render::history(&doc))?;
    }
    if verify && doc.pointer("/verify/ok").and_then(Value::as_bool) == Some(false) {
        return Err(anyhow::anyhow!(
            "the audit log's hash chain is broken: it was modified outside cutover"
        )
        .into());
    }
    Ok(())
}
