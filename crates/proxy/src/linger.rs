//! Lingering close: a client connection ends with a half-close, then reads until the client
//! closes too.
//!
//! Closing a socket that still has unread bytes, or that receives bytes after it was closed,
//! makes the kernel answer with a TCP reset, and a reset can destroy the last response in the
//! client's receive buffer before its HTTP parser has read it (RFC 9112 §9.6). That is exactly
//! the response cutover sends last on a connection it is closing: the `connection: close`
//! answer at shutdown, or the streams that finish after an HTTP/2 GOAWAY while the client is
//! still writing frames. So, as RFC 9112 §9.6 asks and nginx's `lingering_close` does, the
//! write half is shut first (FIN, after TLS's `close_notify`), and whatever the client still
//! sends is read and discarded until it closes its side, or until the linger time is up.
//!
//! hyper ends every connection it closes cleanly — HTTP/1.1 and HTTP/2 — with
//! `poll_shutdown`, so [`Linger`] does all of it there; connections ended by an error
//! (a malformed request, a timeout) are dropped as before.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// A client connection whose shutdown lingers; reads and writes pass straight through.
pub(crate) struct Linger<T> {
    io: T,
    /// How long, at most, the client is given to close its side after cutover closed its own.
    within: Duration,
    state: State,
}

enum State {
    Open,
    /// The write half is shut; reading until the client's FIN. The deadline is armed only
    /// if the client has not closed by the first read, as it usually has.
    Draining(Option<Pin<Box<Sleep>>>),
    Closed,
}

impl<T> Linger<T> {
    pub(crate) fn new(io: T, within: Duration) -> Self {
        Linger {
            io,
            within,
            state: State::Open,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Linger<T> {
    /// Reads and discards until the client's FIN or an error: `Ready` when there is nothing
    /// more to wait for.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut scratch = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {}
                // A reset or a TLS error: the client is gone, nothing to protect.
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Linger<T> {
    #[inline]
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Linger<T> {
    #[inline]
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    #[inline]
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Open => {
                    ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
                    this.state = State::Draining(None);
                }
                State::Draining(deadline) => {
                    let first = match deadline {
                        Some(deadline) => {
                            if deadline.as_mut().poll(cx).is_ready() {
                                this.state = State::Closed;
                                continue;
                            }
                            false
                        }
                        None => true,
                    };
                    match this.poll_drain(cx) {
                        Poll::Ready(()) => this.state = State::Closed,
                        Poll::Pending if first => {
                            // Poll it once so that it wakes this task when it fires.
                            this.state =
                                State::Draining(Some(Box::pin(tokio::time::sleep(this.within))));
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
                State::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// The shutdown sends FIN at once, then waits for the client's: what the client still
    /// sends meanwhile is read (no reset), and the shutdown ends when the client closes.
    #[tokio::test]
    async fn shutdown_half_closes_then_waits_for_the_clients_close() {
        let (mut client, server) = pair().await;
        let mut server = Linger::new(server, Duration::from_secs(30));
        let shutdown = tokio::spawn(async move { server.shutdown().await });
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "FIN came first");
        // Far more than the socket buffers hold: only a reader gets it all through.
        client.write_all(&vec![b'x'; 16 << 20]).await.unwrap();
        assert!(!shutdown.is_finished(), "still lingering for the client");
        drop(client);
        tokio::time::timeout(Duration::from_secs(10), shutdown)
            .await
            .expect("ends at the client's FIN")
            .unwrap()
            .unwrap();
    }

    /// A client that never closes is given `within`, not more.
    #[tokio::test]
    async fn a_client_that_never_closes_is_given_the_linger_time() {
        let (_client, server) = pair().await;
        let within = Duration::from_millis(100);
        let mut server = Linger::new(server, within);
        let started = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(10), server.shutdown())
            .await
            .expect("the linger time bounds the shutdown")
            .unwrap();
        assert!(started.elapsed() >= within, "{:?}", started.elapsed());
    }
}
