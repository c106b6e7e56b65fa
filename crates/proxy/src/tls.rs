//! TLS termination: loading a PEM certificate and key into a rustls [`ServerConfig`], and
//! swapping it when the files change on disk.
//!
//! The config in use is one atomic pointer ([`ArcSwap`]) read once per accepted connection, so
//! a reload affects new connections only: a connection keeps the certificate it was accepted
//! with, and a renewal never drops a client. A replacement that does not load is logged and
//! the certificate in use is kept — a bad deploy of a certificate must not take the service
//! down.

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

/// What the public listener negotiates by ALPN, most preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("the certificate and key cannot be used: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The live server config the listener reads per connection.
pub type SharedServerConfig = Arc<ArcSwap<ServerConfig>>;

/// Builds a server config (ring provider, TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`) from a
/// PEM certificate chain (leaf first) and a PEM private key.
pub fn load_server_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let chain: Vec<CertificateDer<'static>> = {
        let pem = read(cert)?;
        rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|source| TlsError::Read {
                path: cert.to_owned(),
                source,
            })?
    };
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let key_der: PrivateKeyDer<'static> = {
        let pem = read(key)?;
        rustls_pemfile::private_key(&mut pem.as_slice())
            .map_err(|source| TlsError::Read {
                path: key.to_owned(),
                source,
            })?
            .ok_or_else(|| TlsError::NoKey {
                path: key.to_owned(),
            })?
    };
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A certificate and key on disk, and the server config built from them.
///
/// [`CertReloader::run`] checks the files' modification times (and sizes) every interval and
/// rebuilds the config when they changed.
#[derive(Debug)]
pub struct CertReloader {
    cert: PathBuf,
    key: PathBuf,
    seen: Option<Stamp>,
    current: SharedServerConfig,
}

/// What was last loaded (or tried): both files' modification times and sizes.
type Stamp = [(Option<SystemTime>, u64); 2];

/// The result of one [`CertReloader::check`].
#[derive(Debug)]
pub enum Reload {
    /// Neither file changed since the last check.
    Unchanged,
    /// The files changed and the new certificate is in use for new connections.
    Reloaded,
    /// The files changed but do not load; the previous certificate is still in use. They are
    /// not retried until they change again.
    Failed(TlsError),
}

impl CertReloader {
    /// Loads the certificate and key now; an error means there is nothing to serve with.
    pub fn load(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Result<Self, TlsError> {
        let (cert, key) = (cert.into(), key.into());
        // The stamp is taken before reading: a write racing the read shows as a change at the
        // next check, never as a missed one.
        let seen = stamp(&cert, &key);
        let config = load_server_config(&cert, &key)?;
        Ok(CertReloader {
            cert,
            key,
            seen: Some(seen),
            current: Arc::new(ArcSwap::from_pointee(config)),
        })
    }

    /// The config the listener serves with; [`CertReloader::check`] swaps what it points to.
    pub fn server_config(&self) -> SharedServerConfig {
        self.current.clone()
    }

    /// Reloads if either file changed since the last check.
    pub fn check(&mut self) -> Reload {
        let now = stamp(&self.cert, &self.key);
        if self.seen == Some(now) {
            return Reload::Unchanged;
        }
        self.seen = Some(now);
        match load_server_config(&self.cert, &self.key) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                Reload::Reloaded
            }
            Err(e) => Reload::Failed(e),
        }
    }

    /// Checks every `interval` until `shutdown` completes, logging each reload and failure.
    pub async fn run(mut self, interval: Duration, shutdown: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            match self.check() {
                Reload::Unchanged => {}
                Reload::Reloaded => {
                    info!(cert = %self.cert.display(), "TLS certificate reloaded")
                }
                Reload::Failed(e) => warn!(
                    cert = %self.cert.display(),
                    error = %e,
                    "the new TLS certificate does not load; still serving the previous one"
                ),
            }
        }
    }
}

fn stamp(cert: &Path, key: &Path) -> Stamp {
    [cert, key].map(|p| match std::fs::metadata(p) {
        Ok(m) => (m.modified().ok(), m.len()),
        Err(_) => (None, 0),
    })
}
