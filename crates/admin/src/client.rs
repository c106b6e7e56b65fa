//! The client the CLI uses: one HTTP/1.1 connection per call (the CLI makes one or two calls per
//! run, so pooling would buy nothing), bounded by timeouts so a wedged host never hangs the CLI.

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::Value;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// What went wrong calling the admin API, split by what the user should do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens there: cutover is not running, or runs with another admin address.
    #[error("cannot reach cutover's admin API at {addr}: is `cutover run` running? ({source})")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cutover's admin API at {addr} did not answer within {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    /// The API refused the request; `message` says why and how to fix it.
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// Something answered, but not the way cutover's admin API does.
    #[error("bad response from the admin API at {addr}: {detail}")]
    BadResponse { addr: SocketAddr, detail: String },
}

/// A client for one cutover admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    addr: SocketAddr,
    token: String,
    connect_timeout: Duration,
    request_timeout: Duration,
    /// https to an admin listener with `[admin.tls]`: the config and the name to verify.
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

impl AdminClient {
    /// Connect timeout 2 s (it is loopback: longer means nothing is there), request timeout 30 s.
    pub fn new(addr: SocketAddr, token: String) -> Self {
        AdminClient {
            addr,
            token,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            tls: None,
        }
    }

    /// Speaks https, verifying the server's certificate with `tls` (see [`crate::client_tls`]).
    pub fn with_tls(mut self, tls: (Arc<rustls::ClientConfig>, ServerName<'static>)) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Overrides the whole-request timeout (connect excluded).
    pub fn with_timeout(mut self, request_timeout: Duration) -> Self {
        self.request_timeout = request_timeout;
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `GET path`, expecting a JSON answer.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        let body = self.call(Method::GET, path, None).await?;
        self.parse_json(&body)
    }

    /// `POST path` with a JSON body, expecting a JSON answer.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| self.bad(e.to_string()))?;
        let body = self.call(Method::POST, path, Some(bytes.into())).await?;
        self.parse_json(&body)
    }

    /// `GET path`, expecting text (e.g. `/metrics`).
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let body = self.call(Method::GET, path, None).await?;
        String::from_utf8(body.to_vec()).map_err(|e| self.bad(e.to_string()))
    }

    fn bad(&self, detail: String) -> ClientError {
        ClientError::BadResponse {
            addr: self.addr,
            detail,
        }
    }

    fn parse_json(&self, body: &[u8]) -> Result<Value, ClientError> {
        serde_json::from_slice(body).map_err(|e| self.bad(format!("invalid JSON: {e}")))
    }

    /// Sends one request and returns the body of a 2xx answer; any other status becomes
    /// [`ClientError::Api`] with the message from the JSON error body.
    async fn call(
        &self,
        method: Method,
        path: &str,
        json: Option<Bytes>,
    ) -> Result<Bytes, ClientError> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(source)) => {
                    return Err(ClientError::Connect {
                        addr: self.addr,
                        source,
                    })
                }
                Err(_) => {
                    return Err(ClientError::Connect {
                        addr: self.addr,
                        source: io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
                    })
                }
            };
        let exchange = async {
            match &self.tls {
                None => self.exchange(stream, method, path, json).await,
                Some((config, name)) => {
                    let connector = tokio_rustls::TlsConnector::from(config.clone());
                    let tls = connector.connect(name.clone(), stream).await.map_err(|e| {
                        self.bad(format!(
                            "TLS to the admin API failed: {e} (fix: --admin-ca or admin.tls.ca \
                             must be the CA of admin.tls.cert, and the certificate must name \
                             the address connected to)"
                        ))
                    })?;
                    self.exchange(tls, method, path, json).await
                }
            }
        };
        match tokio::time::timeout(self.request_timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                addr: self.addr,
                after: self.request_timeout,
            }),
        }
    }

    async fn exchange<S>(
        &self,
        stream: S,
        method: Method,
        path: &str,
        json: Option<Bytes>,
    ) -> Result<Bytes, ClientError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.bad(e.to_string()))?;
        // The connection future drives the socket; it ends when the exchange is done and the
        // sender is dropped.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin client connection ended with an error");
            }
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.addr.to_string())
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        if json.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(json.unwrap_or_default()))
            .map_err(|e| self.bad(format!("cannot build request for {path:?}: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.bad(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.bad(e.to_string()))?
            .to_bytes();
        if status.is_success() {
            Ok(body)
        } else {
            Err(self.api_error(status, &body))
        }
    }

    fn api_error(&self, status: StatusCode, body: &[u8]) -> ClientError {
        let parsed: Option<(String, String)> =
            serde_json::from_slice::<Value>(body).ok().and_then(|v| {
                let e = v.get("error")?;
                Some((
                    e.get("code")?.as_str()?.to_owned(),
                    e.get("message")?.as_str()?.to_owned(),
                ))
            });
        match parsed {
            Some((code, message)) => ClientError::Api {
                status: status.as_u16(),
                code,
                message,
            },
            None => self.bad(format!(
                "HTTP {status} without a JSON error body: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )),
        }
    }
}
