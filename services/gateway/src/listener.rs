//! The gateway's TCP listener and HTTP/1.1 server. Every accepted connection gets
//! `TCP_NODELAY`, a way to be cut from above and a count of what it wrote ([`Carrier`]), a
//! deadline for each request head, and the responses hyper writes by itself get the contract's
//! error shape.
//!
//! The server is hyper's own connection builder rather than `axum::serve`, which gives hyper no
//! timer, so hyper's header-read timeout never applied: a client trickling its headers, or one
//! that connected and said nothing, held its connection and descriptor for ever. Here a request
//! head must arrive within [`HEAD_TIMEOUT`], which also ends a keep-alive connection left idle.
//!
//! A socket whose outgoing queue is full must be disconnected (its client then reconnects and
//! replays from what it really has), but socketioxide's `disconnect` needs a free slot in that
//! very queue. So every connection carries a kill switch, handed to the request as its connect
//! info (with the listener's [`Upgrades`], so that a socket that upgraded from polling finds
//! the websocket it now uses): cutting it ends the connection's reads and writes, hyper and the
//! websocket see the connection gone, and socketioxide closes the socket as for any dropped
//! client.
//!
//! hyper answers a request it cannot parse (a malformed request line or header: 400; headers over
//! its limit: 431; a URI over its limit: 414) before any handler runs, with an empty body, and
//! offers no hook to change it. Every other refusal of the gateway carries
//! `{"error": {"code", "message"}}`, so the connection's writer recognises exactly those heads (a
//! 400, 414 or 431 status line whose whole head declares `content-length: 0`: the gateway's own
//! refusals always have a body) and writes them with the contract's body instead.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::ConnectInfo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::connection::{Carrier, Upgrades};

/// Accepts connections for [`serve`], each wrapped in a [`ShapedStream`].
pub(crate) struct ShapedListener {
    listener: TcpListener,
    /// Which connection each upgraded engine.io session uses, shared by all of them.
    upgrades: Upgrades,
}

impl ShapedListener {
    pub(crate) fn new(listener: TcpListener) -> Self {
        Self {
            listener,
            upgrades: Upgrades::default(),
        }
    }
}

impl axum::serve::Listener for ShapedListener {
    type Io = ShapedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.listener).await;
        // Small frames (acks, single messages) leave at once: without TCP_NODELAY, Nagle's
        // algorithm meeting the client's delayed ACK stalls a reply up to 40 ms.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let carrier = Carrier::default();
        (
            ShapedStream {
                inner: stream,
                rewriting: None,
                killed: Box::pin(carrier.cut_owned()),
                carrier,
                upgrades: self.upgrades.clone(),
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// How long a client has to send a request's head (and an idle keep-alive connection to start
/// its next one).
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `stopping` resolves (the caller drains there), then lets
/// each connection finish the request in hand and closes it.
pub(crate) async fn serve(
    mut listener: ShapedListener,
    router: axum::Router,
    stopping: impl std::future::Future<Output = ()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .keep_alive(true);
    let connections = tokio_util::task::TaskTracker::new();
    let closing = tokio_util::sync::CancellationToken::new();
    tokio::pin!(stopping);
    loop {
        let stream = tokio::select! {
            (stream, _) = axum::serve::Listener::accept(&mut listener) => stream,
            () = &mut stopping => break,
        };
        let router = router.clone();
        let (noted, serving) = (stream.upgrades.clone(), stream.carrier.clone());
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            noted.note(request.uri(), &serving);
            request.extensions_mut().insert(ConnectInfo(serving.clone()));
            request.extensions_mut().insert(noted.clone());
            tower_service::Service::call(&mut router.clone(), request)
        });
        let connection = http
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .with_upgrades();
        let closing = closing.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = closing.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = served {
                tracing::debug!(%error, "connection ended");
            }
        });
    }
    closing.cancel();
    connections.close();
    connections.wait().await;
}

fn cut() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "connection cut by the gateway")
}

/// A connection whose writes pass through unchanged, but for hyper's own error heads, and that
/// ends when its [`Carrier`] is cut, counting what it writes there.
pub(crate) struct ShapedStream {
    inner: TcpStream,
    carrier: Carrier,
    /// Where this connection is noted if a session upgrades to it; forgotten when it is dropped
    /// (hyper hands an upgraded connection over, so the end of serving it is not its end).
    upgrades: Upgrades,
    /// Resolves once the kill switch is cut; polled with every read, so a read that waits for
    /// a client that sends nothing is woken by the cut.
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
    /// A rewritten head being written: its bytes, how many are out, and the length of the
    /// write it replaces (what the caller is told was written).
    rewriting: Option<(Vec<u8>, usize, usize)>,
}

/// The head hyper writes for a request it could not parse, rewritten with the contract's body;
/// `None` for anything else.
fn reshape(head: &[u8]) -> Option<Vec<u8>> {
    let message = match head.get(..13)? {
        b"HTTP/1.1 400 " => "the request is not valid HTTP",
        b"HTTP/1.1 414 " => "the request URI is too long",
        b"HTTP/1.1 431 " => "the request headers are too large",
        _ => return None,
    };
    let text = std::str::from_utf8(head).ok()?;
    let head_only = text.find("\r\n\r\n").is_some_and(|end| end + 4 == text.len());
    let empty = text
        .split("\r\n")
        .any(|line| line.eq_ignore_ascii_case("content-length: 0"));
    if !(head_only && empty) {
        return None;
    }
    let body = serde_json::json!({ "error": { "code": "invalid_request", "message": message } }).to_string();
    let mut rewritten = String::with_capacity(text.len() + body.len() + 48);
    for line in text.trim_end_matches("\r\n").split("\r\n") {
        if line.eq_ignore_ascii_case("content-length: 0") {
            rewritten.push_str("content-type: application/json\r\ncontent-length: ");
            rewritten.push_str(&body.len().to_string());
        } else {
            rewritten.push_str(line);
        }
        rewritten.push_str("\r\n");
    }
    rewritten.push_str("\r\n");
    rewritten.push_str(&body);
    Some(rewritten.into_bytes())
}

impl ShapedStream {
    /// Counts a write's bytes on the carrier.
    fn counted(&self, written: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = &written {
            self.carrier.wrote(*n);
        }
        written
    }

    /// Writes out the rewritten head; ready with the replaced write's length once all is out.
    fn poll_rewriting(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        while let Some((bytes, written, replaced)) = &mut self.rewriting {
            if *written == bytes.len() {
                let replaced = *replaced;
                self.rewriting = None;
                return Poll::Ready(Ok(replaced));
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(0))
    }
}

impl Drop for ShapedStream {
    fn drop(&mut self) {
        self.upgrades.forget(&self.carrier);
    }
}

impl AsyncRead for ShapedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.killed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(cut()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ShapedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.carrier.is_cut() {
            return Poll::Ready(Err(cut()));
        }
        if this.rewriting.is_none() {
            match reshape(buf) {
                Some(rewritten) => this.rewriting = Some((rewritten, 0, buf.len())),
                None => {
                    let written = Pin::new(&mut this.inner).poll_write(cx, buf);
                    return this.counted(written);
                }
            }
        }
        this.poll_rewriting(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.carrier.is_cut() {
            return Poll::Ready(Err(cut()));
        }
        let first = bufs.iter().find(|b| !b.is_empty());
        if self.rewriting.is_some() || first.is_some_and(|b| reshape(b).is_some()) {
            return self.poll_write(cx, first.map_or(&[][..], |b| &b[..]));
        }
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.counted(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_empty_error_heads_get_the_contract_body() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let rewritten = String::from_utf8(reshape(head).unwrap()).unwrap();
        let (head, body) = rewritten.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "invalid_request");
    }

    #[test]
    fn everything_else_passes_unchanged() {
        for write in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 57\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}",
            b"\x81\x05hello",
        ] {
            assert!(reshape(write).is_none());
        }
    }
}
