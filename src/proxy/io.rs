//! The socket to a server, with `send_timeout`: a write that makes no progress
//! for that long fails the exchange instead of hanging on a server that stopped
//! reading.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::upstream::ServerRuntime;

/// The connection to a server: `send_timeout`, and byte counts into the server's
/// statistics.
#[derive(Debug)]
pub struct UpstreamIo {
    stream: TcpStream,
    runtime: Arc<ServerRuntime>,
    send_timeout: Duration,
    /// Armed when a write first waits; disarmed by progress.
    write_timer: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl UpstreamIo {
    pub fn new(stream: TcpStream, send_timeout: Duration, runtime: Arc<ServerRuntime>) -> Self {
        UpstreamIo {
            stream,
            runtime,
            send_timeout,
            write_timer: None,
            waiting: false,
        }
    }

    fn count(&self, r: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = r {
            self.runtime.stats.bytes_sent.fetch_add(*n as u64, Relaxed);
        }
    }

    fn on_write<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.waiting = false;
            return r;
        }
        let deadline = Instant::now() + self.send_timeout;
        match &mut self.write_timer {
            None => self.write_timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            Some(t) if !self.waiting => t.as_mut().reset(deadline),
            Some(_) => {}
        }
        self.waiting = true;
        let expired = match &mut self.write_timer {
            Some(t) => t.as_mut().poll(cx).is_ready(),
            None => false,
        };
        if expired {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "server read nothing for {:?} (send_timeout)",
                    self.send_timeout
                ),
            )));
        }
        Poll::Pending
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.runtime
                .stats
                .bytes_received
                .fetch_add(n as u64, Relaxed);
        }
        r
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.count(&r);
        this.on_write(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.count(&r);
        this.on_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_flush(cx);
        this.on_write(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
