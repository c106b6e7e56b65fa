//! `cutover upgrade`: the running binary replaced without a refused connection or a lost
//! request (issue 12 item 3), as HAProxy and pingora do it.
//!
//! The running `cutover run` listens on `<state_dir>/upgrade.sock` (owner-only). The exchange:
//!
//! 1. `cutover upgrade` connects and sends `upgrade <binary>`. The running cutover (the *old*
//!    one) starts `<binary> run -c <its config> --upgrade-from <socket>` (the *new* one), with
//!    its own standard output and error, and waits for it at most `app.start_timeout` + 10 s.
//! 2. The new one loads and checks its config, connects and sends `handover <pid>`. The old one
//!    stops its driver (no decision, no write) once it is idle, flushes the store, and answers
//!    `take` with three descriptors over `SCM_RIGHTS`: the public listener, the admin
//!    listener, and the state directory's locked file (the lock is shared, never released:
//!    see [`crate::lock`]). Its proxy keeps serving meanwhile.
//! 3. The new one starts on them: re-adopts the instances from the ledger (the normal recovery
//!    path), accepts on the same sockets, and sends `ready`. The old one answers `ok <pid>` to
//!    `cutover upgrade`, stops accepting, lets in-flight requests finish and WebSockets run
//!    until they end or `app.stop.drain_timeout` closes them (1012), leaves the instances
//!    running, and exits.
//!
//! If the new one exits, closes the connection, or is not ready in time, the old one kills it
//! (if it still runs), resumes its driver and keeps serving, and `cutover upgrade` gets
//! `error <why>` (exit 1).

use crate::commands::CommandError;
use crate::listeners::Inherited;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

/// The socket's file name in the state directory.
pub const SOCKET: &str = "upgrade.sock";

/// How long the new cutover has, beyond `app.start_timeout`, to be ready.
pub const GRACE: Duration = Duration::from_secs(10);

/// `<state_dir>/upgrade.sock`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET)
}

/// Listens on `<state_dir>/upgrade.sock`, replacing a socket a previous cutover left (only the
/// holder of the state directory's lock calls this), owner-only.
pub fn bind(state_dir: &Path) -> std::io::Result<UnixListener> {
    let path = socket_path(state_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// What the old cutover needs to start its successor.
#[derive(Debug, Clone)]
pub struct Successor {
    /// The config file, absolute (the new one is started with it).
    pub config: PathBuf,
    /// `cutover run` flags to pass on (`--log-json`, `--keep-apps`, `--audit-key-file`).
    pub args: Vec<String>,
    /// How long the new one has to be ready.
    pub bound: Duration,
}

/// The driver held for a hand-over; [`Held::resume`] if it fails.
pub struct Held {
    pub(crate) release: tokio::sync::oneshot::Sender<bool>,
    /// Paused while held (see [`cutover_supervisor::Ownership`]).
    pub(crate) supervisor: cutover_supervisor::Supervisor,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("ownership", &self.supervisor.ownership())
            .finish_non_exhaustive()
    }
}

impl Held {
    /// The upgrade failed: the supervisor acts on its instances again, the driver goes on.
    pub fn resume(self) {
        self.supervisor.resume_ownership();
        let _ = self.release.send(true);
    }
}

/// One connection to `upgrade.sock` on the old side. `Some` once a new cutover is ready: the
/// caller then shuts down, handing over (see [`crate::Running::shutdown_handed_over`]).
pub async fn handle(
    mut conn: UnixStream,
    listener: &UnixListener,
    running: &crate::Running,
    successor: &Successor,
) -> Option<Held> {
    let line = match read_line(&mut conn, Duration::from_secs(5)).await {
        Some(l) => l,
        None => return None,
    };
    let Some(binary) = line.strip_prefix("upgrade ") else {
        let _ = reply(&mut conn, "error no upgrade is in progress").await;
        return None;
    };
    let binary = PathBuf::from(binary);
    info!(binary = %binary.display(), "upgrade: starting the new cutover");
    match take_over(&binary, listener, running, successor).await {
        Ok((pid, held)) => {
            info!(
                pid,
                "upgrade: the new cutover is ready; this one stops accepting and drains"
            );
            let _ = reply(&mut conn, &format!("ok {pid}")).await;
            Some(held)
        }
        Err(why) => {
            warn!(reason = %why, "upgrade failed: this cutover keeps serving");
            let _ = reply(&mut conn, &format!("error {why}")).await;
            None
        }
    }
}

async fn take_over(
    binary: &Path,
    listener: &UnixListener,
    running: &crate::Running,
    successor: &Successor,
) -> Result<(u32, Held), String> {
    let mut child = tokio::process::Command::new(binary)
        .arg("run")
        .arg("-c")
        .arg(&successor.config)
        .arg("--upgrade-from")
        .arg(socket_path_of(listener)?)
        .args(&successor.args)
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {} ({e})", binary.display()))?;
    let pid = child.id().unwrap_or_default();
    let deadline = tokio::time::Instant::now() + successor.bound;
    let bound = humantime::format_duration(successor.bound);
    let result = async {
        // The new one's `handover`.
        let mut conn = loop {
            tokio::select! {
                status = child.wait() => return Err(exited(binary, status)),
                _ = tokio::time::sleep_until(deadline) => return Err(format!("{} did not ask for the sockets within {bound}", binary.display())),
                accepted = listener.accept() => {
                    let Ok((mut conn, _)) = accepted else { continue };
                    match read_line(&mut conn, Duration::from_secs(5)).await {
                        Some(l) if l.starts_with("handover ") => break conn,
                        Some(_) => { let _ = reply(&mut conn, "error an upgrade is in progress").await; }
                        None => {}
                    }
                }
            }
        };
        let held = running
            .hold()
            .await
            .ok_or_else(|| "this cutover is shutting down".to_string())?;
        if let Err(e) = send_fds(&conn, running.handover_fds()).await {
            running.resume(held);
            return Err(format!("cannot pass the sockets ({e})"));
        }
        let outcome = tokio::select! {
            status = child.wait() => Err(exited(binary, status)),
            _ = tokio::time::sleep_until(deadline) => Err(format!("the new cutover was not ready within {bound} (app.start_timeout + {})", humantime::format_duration(GRACE))),
            line = read_line(&mut conn, successor.bound) => match line.as_deref() {
                Some("ready") => Ok(()),
                Some(other) => Err(format!("the new cutover could not start: {}", other.strip_prefix("error ").unwrap_or(other))),
                None => Err("the new cutover stopped before it was ready (its log says why)".to_string()),
            },
        };
        match outcome {
            Ok(()) => Ok(held),
            Err(e) => {
                running.resume(held);
                Err(e)
            }
        }
    }
    .await;
    match result {
        Ok(held) => Ok((pid, held)),
        Err(e) => {
            // Never two cutovers deciding: one that is not ready in time goes.
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill().await;
            }
            Err(e)
        }
    }
}

fn socket_path_of(listener: &UnixListener) -> Result<PathBuf, String> {
    listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf))
        .ok_or_else(|| "the upgrade socket has no path".to_string())
}

fn exited(binary: &Path, status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => format!(
            "{} exited ({s}) before it was ready (its log says why)",
            binary.display()
        ),
        Err(e) => format!("cannot watch {} ({e})", binary.display()),
    }
}

async fn read_line(conn: &mut UnixStream, within: Duration) -> Option<String> {
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(conn);
    match tokio::time::timeout(within, reader.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => Some(line.trim_end().to_string()),
        _ => None,
    }
}

async fn reply(conn: &mut UnixStream, line: &str) -> std::io::Result<()> {
    conn.write_all(format!("{line}\n").as_bytes()).await
}

async fn send_fds(conn: &UnixStream, fds: [BorrowedFd<'_>; 3]) -> std::io::Result<()> {
    conn.writable().await?;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("control buffer too small"));
    }
    let data = b"take\n";
    let sent = rustix::net::sendmsg(
        conn.as_fd(),
        &[IoSlice::new(data)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if sent != data.len() {
        return Err(std::io::Error::other("short write"));
    }
    Ok(())
}

/// The new cutover's side: what the old one passed, and the connection to say `ready` on.
#[derive(Debug)]
pub struct Handover {
    /// To say `ready` on ([`Handover::ready_on`]).
    pub conn: std::os::unix::net::UnixStream,
    /// The listening sockets and the lock, for `start_with`.
    pub inherited: Inherited,
}

/// Why the new cutover could not take over. `cutover run --upgrade-from` exits 64 with it.
#[derive(Debug, thiserror::Error)]
#[error("--upgrade-from {}: {problem} (fix: start the upgrade with `cutover upgrade`, which runs this for you)", socket.display())]
pub struct HandoverError {
    socket: PathBuf,
    problem: String,
}

/// Connects to the old cutover's socket and receives its listeners and lock (blocking: call it
/// off the async runtime's workers).
pub fn receive(socket: &Path) -> Result<Handover, HandoverError> {
    let err = |problem: String| HandoverError {
        socket: socket.to_path_buf(),
        problem,
    };
    let mut conn = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| err(format!("cannot connect ({e})")))?;
    writeln!(conn, "handover {}", std::process::id())
        .map_err(|e| err(format!("cannot write ({e})")))?;
    let mut data = [0u8; 256];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &conn,
        &mut [IoSliceMut::new(&mut data)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| err(format!("cannot receive the sockets ({e})")))?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(passed) = msg {
            fds.extend(passed);
        }
    }
    let text = String::from_utf8_lossy(&data[..got.bytes])
        .trim_end()
        .to_string();
    if text != "take" || fds.len() != 3 {
        let why = text.strip_prefix("error ").unwrap_or(&text);
        return Err(err(format!(
            "the running cutover did not pass its sockets ({why:?}, {} descriptors)",
            fds.len()
        )));
    }
    let lock = fds.pop().expect("three");
    let admin = fds.pop().expect("three");
    let public = fds.pop().expect("three");
    Ok(Handover {
        conn,
        inherited: Inherited::handed_over(public, admin, lock),
    })
}

impl Handover {
    /// Tells the old cutover, on the connection `receive` returned, that this one serves: it
    /// stops accepting and drains.
    pub fn ready_on(mut conn: std::os::unix::net::UnixStream) -> std::io::Result<()> {
        conn.write_all(b"ready\n")
    }

    /// Tells the old cutover why this one could not start: it keeps serving, and
    /// `cutover upgrade` prints the reason. One line: the old side reads up to a newline.
    pub fn failed_on(mut conn: std::os::unix::net::UnixStream, why: &str) -> std::io::Result<()> {
        let why = why.replace('\n', " ");
        conn.write_all(format!("error {why}\n").as_bytes())
    }
}

/// `cutover upgrade`: asks the cutover running on `state_dir` to hand over to `binary`; the
/// new one's pid once it serves.
pub fn request(state_dir: &Path, binary: &Path) -> Result<u32, CommandError> {
    let socket = socket_path(state_dir);
    let mut conn = std::os::unix::net::UnixStream::connect(&socket).map_err(|e| {
        CommandError::Other(anyhow::anyhow!(
            "no cutover answers on {} ({e}) (fix: is `cutover run` running with this config's state_dir?)",
            socket.display()
        ))
    })?;
    let binary = std::path::absolute(binary).unwrap_or_else(|_| binary.to_path_buf());
    writeln!(conn, "upgrade {}", binary.display())
        .map_err(|e| CommandError::Other(anyhow::anyhow!("cannot ask for the upgrade ({e})")))?;
    let mut line = String::new();
    BufReader::new(conn)
        .read_line(&mut line)
        .map_err(|e| CommandError::Other(anyhow::anyhow!("no answer ({e})")))?;
    let line = line.trim_end();
    if let Some(pid) = line.strip_prefix("ok ") {
        return pid
            .parse()
            .map_err(|_| CommandError::Other(anyhow::anyhow!("a garbled answer: {line:?}")));
    }
    let why = line.strip_prefix("error ").unwrap_or(if line.is_empty() {
        "the running cutover closed the connection without an answer"
    } else {
        line
    });
    Err(CommandError::Other(anyhow::anyhow!(
        "upgrade failed: {why}; the running cutover keeps serving"
    )))
}

/// The executable to upgrade to by default: this one's path on disk (a rebuilt binary put in
/// its place), without the ` (deleted)` Linux appends once the old file is replaced.
pub fn current_binary() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let s = exe.to_string_lossy();
    Ok(match s.strip_suffix(" (deleted)") {
        Some(p) => PathBuf::from(p),
        None => exe,
    })
}
