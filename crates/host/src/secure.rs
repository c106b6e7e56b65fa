//! What cutover keeps on disk is readable by its owner only (issue 14 item 3, docs/security.md):
//! the state directory and its `logs/` are 0700; the database (and the `-wal` / `-shm` files
//! SQLite creates next to it, which take the database file's mode), the admin token and the
//! instance logs are 0600.
//!
//! Files are *created* with those modes (never wider for an instant); a state directory written
//! by an older cutover, or by hand, is narrowed at start with a notice naming each path. cutover
//! does not change the process umask: the instances it starts inherit it, and what mode *their*
//! files get is the application's business.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of the state directory and of `logs/`.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file cutover writes under the state directory.
pub const FILE_MODE: u32 = 0o600;

/// The database file's name inside the state directory.
pub const DB_FILE: &str = "cutover.db";

/// Creates `state_dir` and `state_dir/logs` (0700), creates the database file empty with mode
/// 0600 when it does not exist yet (so SQLite's `-wal` and `-shm` get 0600 too), and narrows
/// whatever is already there and wider than that. Returns the paths it narrowed, each with the
/// mode it had, so the caller can tell the operator.
pub fn prepare_state_dir(state_dir: &Path) -> io::Result<Vec<(PathBuf, u32)>> {
    let logs = state_dir.join("logs");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(&logs)?;
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(state_dir.join(DB_FILE))
    {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let mut narrowed = Vec::new();
    narrow(state_dir, DIR_MODE, &mut narrowed)?;
    narrow(&logs, DIR_MODE, &mut narrowed)?;
    for entry in fs::read_dir(state_dir)?.chain(fs::read_dir(&logs)?) {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            narrow(&entry.path(), FILE_MODE, &mut narrowed)?;
        }
    }
    Ok(narrowed)
}

/// Loads `[admin.tls]` (checked before anything listens, like `[service.tls]`), with its reload
/// interval; and says, at every start, how far the admin API can be reached: a non-loopback
/// `admin.listen` is a warning either way, louder without TLS.
pub fn admin_tls(
    loaded: &crate::config::Loaded,
) -> Result<Option<(cutover_proxy::CertReloader, std::time::Duration)>, cutover_proxy::TlsError> {
    let a = &loaded.config.admin;
    match (&a.tls, a.is_remote()) {
        (Some(_), true) => tracing::warn!(
            listen = %a.listen,
            "the admin API is reachable from other hosts (over TLS); the bearer token guards it"
        ),
        (None, true) => tracing::warn!(
            listen = %a.listen,
            "the admin API is reachable from other hosts WITHOUT TLS \
             (admin.allow_plaintext_remote = true): its bearer token crosses the network in \
             clear text; add [admin.tls] (docs/security.md)"
        ),
        _ => {}
    }
    a.tls
        .as_ref()
        .map(|t| {
            cutover_proxy::CertReloader::load(
                crate::config::resolve(&loaded.dir, &t.cert),
                crate::config::resolve(&loaded.dir, &t.key),
            )
            .map(|r| (r, t.reload_interval.get()))
        })
        .transpose()
}

/// The secret environment of a deploy, with values: every `app.secret_env` name from cutover's
/// environment, then the deploy's own (`""`: cutover's environment, `"@PATH"`: that file,
/// anything else: the value given). A missing one is an error naming it.
pub fn deploy_secrets(
    app: &[String],
    deploy: &std::collections::BTreeMap<String, String>,
) -> Result<
    std::collections::BTreeMap<String, (cutover_supervisor::secret::SecretSource, String)>,
    cutover_supervisor::secret::SecretError,
> {
    use cutover_supervisor::secret::{read, SecretSource};
    let mut out = std::collections::BTreeMap::new();
    for name in app.iter().filter(|n| !deploy.contains_key(*n)) {
        out.insert(
            name.clone(),
            (SecretSource::Env, read(name, &SecretSource::Env)?),
        );
    }
    for (name, spec) in deploy {
        let (source, value) = if spec.is_empty() {
            (SecretSource::Env, read(name, &SecretSource::Env)?)
        } else if let Some(path) = spec.strip_prefix('@') {
            let source = SecretSource::File { path: path.into() };
            let value = read(name, &source)?;
            (source, value)
        } else {
            (SecretSource::Given, spec.clone())
        };
        out.insert(name.clone(), (source, value));
    }
    Ok(out)
}

/// Removes every permission bit of `path` that `allowed` does not have; records the old mode.
fn narrow(path: &Path, allowed: u32, out: &mut Vec<(PathBuf, u32)>) -> io::Result<()> {
    let mode = fs::metadata(path)?.permissions().mode() & 0o7777;
    if mode & !allowed != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode & allowed))?;
        out.push((path.to_owned(), mode));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn creates_private_and_narrows_what_was_open() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        // A fresh state dir: created private, nothing to report.
        assert!(prepare_state_dir(&dir).unwrap().is_empty());
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("logs")), 0o700);
        assert_eq!(mode(&dir.join(DB_FILE)), 0o600);

        // One left open by an older cutover: narrowed, each path reported with its old mode.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(dir.join(DB_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        let log = dir.join("logs").join("v1-0.log");
        fs::write(&log, "x").unwrap();
        fs::set_permissions(&log, fs::Permissions::from_mode(0o664)).unwrap();
        let mut got = prepare_state_dir(&dir).unwrap();
        got.sort();
        let mut want = vec![
            (dir.clone(), 0o755),
            (dir.join(DB_FILE), 0o644),
            (log.clone(), 0o664),
        ];
        want.sort();
        assert_eq!(got, want);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(DB_FILE)), 0o600);
        assert_eq!(mode(&log), 0o600);
        // Narrower than required is left alone.
        fs::set_permissions(&log, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(prepare_state_dir(&dir).unwrap().is_empty());
        assert_eq!(mode(&log), 0o400);
    }
}
