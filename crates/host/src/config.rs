//! Reading a `cutover.toml` from disk: the only IO around `cutover_core::spec`.

use cutover_core::spec::{Config, ConfigError, FieldError};
use std::path::{Path, PathBuf};

/// A validated config and where it came from (relative paths in it are relative to `dir`).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub path: PathBuf,
    pub dir: PathBuf,
}

impl Loaded {
    /// The state directory, resolved against the config file's directory.
    pub fn state_dir(&self) -> PathBuf {
        resolve(&self.dir, &self.config.service.state_dir)
    }
    /// Where the admin token lives.
    pub fn token_path(&self) -> PathBuf {
        self.state_dir().join("admin.token")
    }
}

/// Resolves `p` against `base` unless it is absolute.
pub fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config {path}: {source} (fix: pass the right file with -c, or create it; see examples/cutover.toml)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Invalid { path: PathBuf, source: ConfigError },
}

/// Reads and validates a config file: every problem in one list, the spec's (types, unknown
/// keys, values) and the PromQL rules'.
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    load_with(path, false)
}

/// What `cutover validate` checks: everything [`load`] does, plus what only the file system can
/// tell before a deploy, in the same list: `app.command[0]` is an executable file (or a bare
/// name found in `PATH`), `app.workdir` is a directory. `run` does not check these at load:
/// the program of a version is resolved when that version is deployed, and it may not be
/// built yet when cutover starts.
pub fn load_checked(path: &Path) -> Result<Loaded, LoadError> {
    load_with(path, true)
}

fn load_with(path: &Path, files: bool) -> Result<Loaded, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = abs
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let (config, mut errors) = Config::check_toml_str(&text);
    if let Some(c) = &config {
        let mut more = crate::rules::validate(c)
            .err()
            .map_or(Vec::new(), |e| e.errors);
        if files {
            more.extend(check_files(c, &dir));
        }
        // A key already reported got a default or a stand-in: what else is said about it is
        // about that, not about the file.
        more.retain(|m| !errors.iter().any(|e| e.path == m.path));
        errors.extend(more);
    }
    match config {
        Some(config) if errors.is_empty() => Ok(Loaded {
            config,
            path: abs,
            dir,
        }),
        _ => Err(LoadError::Invalid {
            path: path.to_path_buf(),
            source: ConfigError { errors },
        }),
    }
}

/// The files a config names, checked where they are: relative to the config file's directory,
/// or in `PATH` for a bare program name, as the supervisor will resolve them.
///
/// A `{version}` in `app.command[0]` means the program depends on the version deployed: then
/// only the directory before the placeholder (`./releases` of `./releases/{version}/app`) can be
/// checked now, and a bare name with `{version}` not at all.
pub fn check_files(config: &Config, dir: &Path) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let app = &config.app;
    if let Some(program) = app.command.first().filter(|p| !p.trim().is_empty()) {
        match program.split_once("{version}") {
            None => {
                if let Err((tried, problem)) = cutover_supervisor::locate_program(program, dir) {
                    errors.push(FieldError {
                        path: "app.command[0]".into(),
                        message: format!("{program:?} resolved to {tried}, which {problem}"),
                        fix: "build or install the program, or fix the path (relative to the config file's directory; a name without '/' is looked up in PATH)".into(),
                    });
                }
            }
            Some((before, _)) => {
                let parent = before.rfind('/').map(|i| &before[..i]);
                if let Some(parent) = parent.filter(|p| !p.is_empty()) {
                    // `components()` drops the `.` of "./releases" from the message.
                    let d: PathBuf = resolve(dir, parent).components().collect();
                    if !d.is_dir() {
                        errors.push(FieldError {
                            path: "app.command[0]".into(),
                            message: format!(
                                "{program:?}: {} (the part before {{version}}) is not a directory",
                                d.display()
                            ),
                            fix: "create it and put each version's program under it, or fix the path (relative to the config file's directory)".into(),
                        });
                    }
                }
            }
        }
    }
    if let Some(w) = app.workdir.as_ref().filter(|w| !w.contains("{version}")) {
        let d = resolve(dir, w);
        if !d.is_dir() {
            errors.push(FieldError {
                path: "app.workdir".into(),
                message: format!(
                    "{w:?} resolved to {}, which is not a directory",
                    d.display()
                ),
                fix: "create it, or fix the path (relative to the config file's directory)".into(),
            });
        }
    }
    errors
}
