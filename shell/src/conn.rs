//! A client connection counted from accept until its socket closes, whichever task holds it
//! then (hyper while it serves HTTP, the media stream after an upgrade).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::metrics::ShellMetrics;

/// Counts one open connection in [`ShellMetrics`] until dropped.
#[derive(Debug)]
struct ConnectionGuard(Arc<ShellMetrics>);

impl ConnectionGuard {
    fn new(metrics: Arc<ShellMetrics>) -> Self {
        metrics.connection_opened();
        Self(metrics)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}

/// A client's TCP stream with its [`ConnectionGuard`]. hyper owns it while it serves HTTP and
/// hands it to the media stream on an upgrade, so the connection is counted exactly as long as
/// its socket is open, whichever task ends it.
#[derive(Debug)]
pub(crate) struct CountedStream {
    stream: TcpStream,
    _guard: ConnectionGuard,
}

impl CountedStream {
    /// Counts `stream` as open in `metrics` until this is dropped.
    pub(crate) fn new(stream: TcpStream, metrics: Arc<ShellMetrics>) -> Self {
        Self {
            stream,
            _guard: ConnectionGuard::new(metrics),
        }
    }

    /// The socket: for its options (a media stream bounds its send buffer), and to wait for
    /// the first byte without reading it.
    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.stream
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
