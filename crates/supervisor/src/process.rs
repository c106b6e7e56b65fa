//! Spawning and signalling instance processes. No shell is ever involved: the program and
//! its arguments go to `execve` as they are.

use crate::release::{substitute, Release};
use crate::rotate::RotatingLog;
use crate::SupervisorError;
use cutover_core::spec::StopSignal;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::Command;

/// An instance process and the tasks draining its stdout and stderr into its log.
///
/// [`Child::wait`] is shadowed: a process is reported ended only once what it wrote is in its
/// log (bounded, for a process whose own children keep the pipes open), so a failure message
/// quoting the log's last lines never misses the last ones.
pub(crate) struct Child {
    inner: tokio::process::Child,
    logged: Vec<tokio::task::JoinHandle<()>>,
}

/// How long an ended process's output may take to reach its log.
const LOG_DRAIN: Duration = Duration::from_secs(1);

impl Child {
    pub(crate) async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let status = self.inner.wait().await?;
        let drained = futures_join(std::mem::take(&mut self.logged));
        let _ = tokio::time::timeout(LOG_DRAIN, drained).await;
        Ok(status)
    }
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

impl std::ops::Deref for Child {
    type Target = tokio::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl std::ops::DerefMut for Child {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

/// Asks the kernel for a free port on 127.0.0.1. The listener is dropped before the instance
/// binds, so another process could take the port in between; the instance then fails to bind,
/// exits, and is restarted like any other crash.
pub(crate) fn pick_port() -> Result<SocketAddr, SupervisorError> {
    let l = TcpListener::bind(("127.0.0.1", 0)).map_err(SupervisorError::Port)?;
    l.local_addr().map_err(SupervisorError::Port)
}

/// Spawns one instance process: own process group (so a stop reaches its children too),
/// stdin closed, stdout and stderr appended to `log`, and SIGTERM when cutover dies.
pub(crate) fn spawn(
    release: &Release,
    addr: SocketAddr,
    index: usize,
    log: &Path,
    log_policy: (u64, u32),
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
    let mut out = RotatingLog::open(log, log_policy.0, log_policy.1)
        .map_err(|e| io("could not open the log file", e))?;
    // A marker line so that an operator reading the log can tell the processes apart.
    let _ = out.write(format!("{}{id} on {addr} ---\n", crate::logs::MARKER).as_bytes());

    let mut cmd = Command::new(&release.exe);
    cmd.args(release.argv.iter().skip(1).map(sub))
        .args(release.extra_args.iter().map(sub))
        .envs(release.env.iter().map(|(k, v)| (k, sub(v))))
        // Secret values as they are: no placeholders in a password.
        .envs(release.secret_values.0.iter())
        .stdin(Stdio::null())
        // Pipes drained into the log by cutover, which rotates it (crate::rotate).
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        // A backstop only: it SIGKILLs the leader if the Child is dropped without a stop.
        .kill_on_drop(true);
    if let Some(dir) = &release.workdir {
        cmd.current_dir(dir);
    }
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|source| SupervisorError::Spawn {
        instance: id,
        exe: release.exe.clone(),
        source,
    })?;
    let out = Arc::new(Mutex::new(out));
    let mut logged = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        logged.push(tokio::spawn(crate::rotate::pump(stdout, out.clone())));
    }
    if let Some(stderr) = child.stderr.take() {
        logged.push(tokio::spawn(crate::rotate::pump(stderr, out)));
    }
    Ok(Child {
        inner: child,
        logged,
    })
}

/// Makes the kernel send SIGTERM to the instance when cutover dies, however it dies:
/// `kill_on_drop` only helps when destructors run, and a SIGKILLed cutover must not leave
/// instances serving stale versions on ports nobody routes to.
///
/// Caveat: the death signal fires when the *thread* that forked exits. Spawns happen on tokio
/// worker threads (or the test's thread), which live as long as the runtime.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    // Captured before fork: after it, the child compares its parent against this.
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed. It calls only prctl(2) and getppid(2), both
    // async-signal-safe, and builds its error with `from_raw_os_error`, which does not
    // allocate. It touches no locks and no memory shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect: then no signal would ever
            // come, so refuse to exec.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
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
pub(crate) async fn terminate(child: &mut Child, sig: Signal, grace: Duration) -> Ended {
    let Some(pgid) = child.id() else {
        // Already reaped.
        return Ended::Exited(describe(child.wait().await));
    };
    signal_group(pgid, sig);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => {
            signal_group(pgid, Signal::SIGKILL);
            Ended::Exited(describe(status))
        }
        Err(_) => {
            tracing::warn!(pid = pgid, grace = ?grace, "instance ignored {sig}; sending SIGKILL");
            signal_group(pgid, Signal::SIGKILL);
            Ended::Killed(describe(child.wait().await))
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
