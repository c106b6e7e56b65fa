//! The admin API over TLS (`[admin.tls]`, docs/security.md): what lets it listen on a
//! non-loopback address without sending the bearer token in clear text.
//!
//! The server side takes its rustls config from a function called per accepted connection, so
//! a renewed certificate (the host reloads it like the public listener's) applies to new
//! connections without a restart. The client side trusts the CA certificates of one PEM file.

use crate::server::{router, Handler};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The server config for the next connection (the current certificate).
pub type ServerConfigSource = Arc<dyn Fn() -> Arc<rustls::ServerConfig> + Send + Sync>;

/// A client must finish its handshake within this; a silent peer does not hold a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin API over TLS (HTTP/1.1, and HTTP/2 if the config's ALPN offers it) until
/// `shutdown`; then stops accepting (connections already open finish their exchange).
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    token: String,
    handler: Arc<dyn Handler>,
    tls: ServerConfigSource,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(token, handler, None);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: back off a little instead of spinning.
                    tracing::warn!(error = %e, "admin API: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls());
        let app = app.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "admin API: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "admin API: connection ended with an error");
            }
        });
    }
}

/// Why the CLI cannot set up TLS to the admin API.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("cannot read the admin CA file {path}: {source} (fix: point --admin-ca or admin.tls.ca at the PEM CA certificate of the admin API's certificate)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no usable PEM certificate (fix: point --admin-ca or admin.tls.ca at the PEM CA certificate of the admin API's certificate)")]
    NoCertificate { path: PathBuf },
}

/// What [`crate::AdminClient::with_tls`] needs: a rustls client config trusting the CA
/// certificates in `ca` (PEM), and the name the certificate is checked for: `addr`'s IP, or
/// `localhost` when it is unspecified (`0.0.0.0`, `::`: the CLI then reaches the local host).
pub fn client_tls(
    ca: &Path,
    addr: SocketAddr,
) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>), ClientTlsError> {
    let read = |source| ClientTlsError::Read {
        path: ca.to_owned(),
        source,
    };
    let pem = std::fs::read(ca).map_err(read)?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(read)?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(ClientTlsError::NoCertificate {
            path: ca.to_owned(),
        });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = if addr.ip().is_unspecified() {
        ServerName::try_from("localhost").expect("a valid DNS name")
    } else {
        ServerName::IpAddress(addr.ip().into())
    };
    Ok((Arc::new(config), name))
}
