//! Spawning and signalling instance processes. No shell is ever involved: the program and
//! its arguments go to `execve` as they are.

use crate::release::{substitute, Release};
use crate::SupervisorError;
use cutover_core::spec::StopSignal;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::process::{Child, Command};

/// Asks the kernel for a free port on 127.0.0.1. The listener is dropped before the instance
/// binds, so another process could take the port in between; the instance then fails to bind,
/// exits, and is restarted like any other crash.
pub(crate) fn pick_port() -> Result<SocketAddr, SupervisorError> {
    let l = TcpListener::bind(("127.0.0.1", 0)).map_err(SupervisorError::Port)?;
    l.local_addr().map_err(SupervisorError::Port)
}

/// Spawns one instance process in a session (and process group) of its own, so a stop
/// reaches its children too and nothing ties it to cutover's life: stdin closed, stdout and
/// stderr appended to `log`. It keeps running when cutover dies (a restarted cutover
/// re-adopts it, see `crate::adopt`).
pub(crate) fn spawn(
    release: &Release,
    addr: SocketAddr,
    index: usize,
    log: &Path,
) -> Result<Child, SupervisorError> {
    let id = format!("{}-{index}", release.name);
    let sub = |s: &String| substitute(s, addr.port(), &release.name, index);
    let io = |what, source| SupervisorError::Io {
        what,
        path: log.to_path_buf(),
        source,
    };
    if let Some(name) = release
        .secrets
        .keys()
        .find(|n| !release.secret_values.0.contains_key(*n))
    {
        return Err(SupervisorError::Secret(
            crate::secret::SecretError::NotInEnv { name: name.clone() },
        ));
    }
    if let Some(dir) = log.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io("could not create the log directory", e))?;
    }
    // Appended to by the instance itself, so it outlives cutover with its log; cutover rotates
    // it by size from outside (crate::rotate). Owner-only: an instance's output may hold
    // anything it prints (docs/security.md).
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)
        .map_err(|e| io("could not open the log file", e))?;
    // A marker line so that an operator reading the log can tell the processes apart.
    let _ = writeln!(out, "{}{id} on {addr} ---", crate::logs::MARKER);
    let err = out
        .try_clone()
        .map_err(|e| io("could not open the log file", e))?;

    let mut cmd = Command::new(&release.exe);
    cmd.args(release.argv.iter().skip(1).map(sub))
        .args(release.extra_args.iter().map(sub))
        .envs(release.env.iter().map(|(k, v)| (k, sub(v))))
        // Secret values as they are: no placeholders in a password.
        .envs(release.secret_values.0.iter())
        // systemd's readiness socket is cutover's: an instance that speaks sd_notify must not
        // tell systemd that cutover is ready, or which pid is the service's.
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // No `kill_on_drop`: a cutover that exits keeping its apps (`run --keep-apps`, an
    // upgrade) drops its `Child`ren and the instances must live on.
    if let Some(dir) = &release.workdir {
        cmd.current_dir(dir);
    }
    new_session(&mut cmd);
    cmd.spawn().map_err(|source| SupervisorError::Spawn {
        instance: id,
        exe: release.exe.clone(),
        source,
    })
}

/// Puts the instance in a new session: it becomes the leader of its own session and process
/// group (pgid = sid = its pid), detached from cutover's terminal and process group, so a
/// Ctrl-C in cutover's terminal or the death of cutover does not reach it, while a signal to
/// its group reaches everything it started (a wrapper script and its server alike).
///
/// There is deliberately no parent-death signal (`PR_SET_PDEATHSIG`) any more: instances
/// outlive a crashed cutover and are re-adopted (DESIGN.md invariant 8).
#[allow(unsafe_code)]
fn new_session(cmd: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed. It calls only setsid(2), which is, and builds its
    // error with `last_os_error`, which reads errno and does not allocate. It touches no
    // locks and no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// An instance's process: one this cutover spawned (a child it can wait for), or one a
/// previous cutover spawned and this one re-adopted (not its child: its exit is seen by
/// polling `/proc`, and its exit status went to whoever reaps it).
pub(crate) enum Proc {
    Child(Child),
    Adopted {
        pid: u32,
        start_time: u64,
        /// Set once it was seen gone.
        gone: bool,
    },
}

/// How often an adopted process is checked for having exited.
const ADOPTED_POLL: Duration = Duration::from_millis(20);

impl Proc {
    /// The pid (= process group) while the process may still run.
    pub(crate) fn id(&self) -> Option<u32> {
        match self {
            Proc::Child(c) => c.id(),
            Proc::Adopted { pid, gone, .. } => (!gone).then_some(*pid),
        }
    }

    /// Waits for the process to end; how it ended, in words.
    pub(crate) async fn wait(&mut self) -> String {
        match self {
            Proc::Child(c) => describe(c.wait().await),
            Proc::Adopted {
                pid,
                start_time,
                gone,
            } => {
                while !*gone {
                    if !crate::adopt::is_alive(*pid, *start_time) {
                        *gone = true;
                        break;
                    }
                    tokio::time::sleep(ADOPTED_POLL).await;
                }
                "exited (a re-adopted process: its exit status went to the process that reaped it)"
                    .into()
            }
        }
    }
}

pub(crate) fn signal_of(s: StopSignal) -> Signal {
    match s {
        StopSignal::Term => Signal::SIGTERM,
        StopSignal::Int => Signal::SIGINT,
        StopSignal::Quit => Signal::SIGQUIT,
        StopSignal::Hup => Signal::SIGHUP,
        StopSignal::Usr1 => Signal::SIGUSR1,
        StopSignal::Usr2 => Signal::SIGUSR2,
    }
}

/// Signals a process group. "No such process" is fine: the group is already gone.
pub(crate) fn signal_group(pgid: u32, sig: Signal) {
    match killpg(Pid::from_raw(pgid as i32), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid, signal = %sig, error = %e, "could not signal process group"),
    }
}

/// How a process ended after `terminate`.
pub(crate) enum Ended {
    /// It exited within the grace period.
    Exited(String),
    /// It outlived the grace period and was SIGKILLed.
    Killed(String),
}

/// Signal the group, wait up to `grace`, then SIGKILL the group. Whatever else is left in the
/// group (grandchildren) is SIGKILLed too once the leader is gone: nothing is left behind.
pub(crate) async fn terminate(child: &mut Proc, sig: Signal, grace: Duration) -> Ended {
    let Some(pgid) = child.id() else {
        // Already reaped.
        return Ended::Exited(child.wait().await);
    };
    signal_group(pgid, sig);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => {
            signal_group(pgid, Signal::SIGKILL);
            Ended::Exited(status)
        }
        Err(_) => {
            tracing::warn!(pid = pgid, grace = ?grace, "instance ignored {sig}; sending SIGKILL");
            signal_group(pgid, Signal::SIGKILL);
            Ended::Killed(child.wait().await)
        }
    }
}

/// An exit status in words, for `last_exit` and reports.
pub(crate) fn describe(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(sig)) => match Signal::try_from(sig) {
                Ok(name) => format!("killed by {name}"),
                Err(_) => format!("killed by signal {sig}"),
            },
            _ => format!("ended ({s})"),
        },
        Err(e) => format!("could not be waited for: {e}"),
    }
}
