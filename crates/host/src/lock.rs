//! One cutover per state directory (issue 12 item 5): an exclusive `flock` on
//! `<state>/lock`, held for as long as the process lives, with the holder's pid written in
//! the file so that a second `cutover run` can say who holds it.
//!
//! Two cutovers on one state dir would supervise two copies of every instance and write
//! contradictory decisions into one rollout (split brain). `flock` is released by the kernel
//! when the holder dies however it dies (`kill -9` included), so a crashed cutover never
//! leaves a stale lock behind; the pid in the file is informational only.
//!
//! `cutover upgrade` hands the lock over without ever letting go of it: the running cutover
//! passes the locked file's descriptor to the new one (SCM_RIGHTS, [`crate::upgrade`]). A
//! `flock` belongs to the open file description, which both processes then share, and the
//! kernel releases it only when the last descriptor to it closes. So the lock is never
//! unlocked explicitly (dropping a [`StateLock`] closes its descriptor, nothing more): the old
//! process exiting leaves it held by the new one, and a new one that fails leaves it held by
//! the old one.

use rustix::fs::{flock, FlockOperation};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Held while cutover runs; the lock is released when the last descriptor of its file closes
/// (this process ending, or dropping it when no upgrade shares it).
#[derive(Debug)]
pub struct StateLock {
    file: File,
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another cutover (pid {pid}) is running on the state directory {} (it holds {}); fix: stop it first, or give this one another service.state_dir", dir.display(), path.display())]
    Held {
        pid: String,
        dir: PathBuf,
        path: PathBuf,
    },
    #[error("cannot lock {} ({source}) (fix: check the state directory's permissions)", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl StateLock {
    /// Takes the lock of `state_dir` without waiting, and writes this process's pid into it.
    pub fn acquire(state_dir: &Path) -> Result<StateLock, LockError> {
        let path = state_dir.join("lock");
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            // Owner-only, like everything in the state dir (docs/security.md).
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let mut file = file;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(LockError::Held {
                    pid: if pid.is_empty() {
                        "unknown".into()
                    } else {
                        pid.to_string()
                    },
                    dir: state_dir.to_path_buf(),
                    path,
                });
            }
            Err(e) => return Err(io(e.into())),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(StateLock { file })
    }

    /// The lock of `state_dir` as the cutover being upgraded passed it: `fd` is its locked
    /// file (the same open file description, so taking the lock again succeeds at once, and
    /// fails if `fd` is anything else's). This process's pid is written into it.
    pub fn adopt(state_dir: &Path, fd: OwnedFd) -> Result<StateLock, LockError> {
        let path = state_dir.join("lock");
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = File::from(fd);
        flock(&file, FlockOperation::NonBlockingLockExclusive).map_err(|e| io(e.into()))?;
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(StateLock { file })
    }

    /// Writes this process's pid into the lock file again: after a failed upgrade, whose new
    /// cutover had written its own pid into it ([`StateLock::adopt`]) before it gave up.
    pub fn reclaim(&self) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.set_len(0)?;
        self.file
            .write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0)
    }

    /// The locked file, to pass to the next cutover on an upgrade.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path()).unwrap();
        // flock locks belong to the open file description: a second open in the same
        // process conflicts like another process would.
        let e = StateLock::acquire(dir.path()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("fix:"), "{msg}");
        drop(first);
        StateLock::acquire(dir.path()).expect("released with its holder");
    }

    #[test]
    fn a_passed_lock_is_held_until_its_last_descriptor_closes() {
        let dir = tempfile::tempdir().unwrap();
        let old = StateLock::acquire(dir.path()).unwrap();
        let new = StateLock::adopt(dir.path(), old.fd().try_clone_to_owned().unwrap()).unwrap();
        // The new holder's pid is in the file, and nobody else can take it.
        let e = StateLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(old);
        assert!(
            StateLock::acquire(dir.path()).is_err(),
            "still held by the new one"
        );
        drop(new);
        StateLock::acquire(dir.path()).expect("released with its last holder");
    }
}
