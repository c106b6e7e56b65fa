//! Reading a `cutover.toml` from disk: the only IO around `cutover_core::spec`.

use cutover_core::spec::{Config, ConfigError};
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

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let config = Config::from_toml_str(&text).map_err(|source| LoadError::Invalid {
        path: path.to_path_buf(),
        source,
    })?;
    crate::rules::validate(&config).map_err(|source| LoadError::Invalid {
        path: path.to_path_buf(),
        source,
    })?;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = abs
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    Ok(Loaded {
        config,
        path: abs,
        dir,
    })
}
