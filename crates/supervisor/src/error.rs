//! The one error type of this crate. Every message says what went wrong, with which field or
//! version, and what to do about it.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// `app.command` is empty: there is nothing to run.
    #[error("app.command is empty; set it to the argv of one instance, e.g. [\"./bin/app\", \"--port\", \"{{port}}\"]")]
    EmptyCommand,

    /// A secret's value cannot be had (docs/security.md).
    #[error(transparent)]
    Secret(#[from] crate::secret::SecretError),

    /// The version name cannot be used (it names log files and instance ids).
    #[error("version name {name:?} is not usable; use 1-64 letters, digits, '-', '_' or '.', not starting with '.'")]
    BadVersionName { name: String },

    /// `app.command[0]` does not resolve to an executable file.
    #[error("app.command[0] ({template:?}) resolved to {tried}, which {problem}; fix the path in app.command[0] or install the program")]
    Executable {
        template: String,
        tried: String,
        problem: String,
    },

    /// `app.workdir` is not a directory.
    #[error("app.workdir ({template:?}) resolved to {}, which is not a directory; create it or fix app.workdir", path.display())]
    Workdir { template: String, path: PathBuf },

    /// An `app.digest_paths` entry names nothing usable.
    #[error("{field} ({template:?}) resolved to {}, which {problem}; fix or remove the entry in {field} (paths are relative to the config file)", path.display())]
    DigestPath {
        field: String,
        template: String,
        path: PathBuf,
        problem: String,
    },

    /// Reading the executable (to hash it) or preparing the log directory failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// No free port could be found on 127.0.0.1.
    #[error("could not pick a free port on 127.0.0.1: {0}")]
    Port(#[source] std::io::Error),

    /// The operating system refused to start an instance.
    #[error("could not start instance {instance} ({}): {source}; check that the program runs by hand", exe.display())]
    Spawn {
        instance: String,
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// `start` was called for a version that is already running.
    #[error("version {0:?} is already running; stop it first, or start the new build under another version name")]
    AlreadyRunning(String),

    /// The version is not known to this supervisor.
    #[error("version {0:?} is not running")]
    UnknownVersion(String),

    /// `wait_ready` gave up.
    #[error("version {version:?} was not ready within {timeout:?}: {states}; see the instance logs in the log directory")]
    NotReady {
        version: String,
        timeout: Duration,
        states: String,
    },

    /// `wait_ready` saw the version crash-looping.
    #[error("version {version:?} is crash-looping: instance {instance} restarted {restarts} times within {window} (last exit: {last_exit}); see its log file")]
    CrashLoop {
        version: String,
        instance: String,
        restarts: u32,
        window: cutover_core::Dur,
        last_exit: String,
    },

    /// The version was stopped while `wait_ready` waited for it.
    #[error("version {0:?} was stopped while waiting for it to become ready")]
    Stopped(String),
}
