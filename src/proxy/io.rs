//! Sockets with a write deadline: [`SendTimeout`] fails a write that makes no
//! progress for its limit, instead of hanging on a peer that stopped reading.
//! Both sides use it: the client's connection on hyper's path
//! (`client_send_timeout`; hyper then closes it and drops the response, whose
//! server side closes without blame) and the connection to a server
//! ([`UpstreamIo`], `send_timeout`, which also counts the bytes into the
//! server's statistics).
//!
//! The timer is made on the first write that has to wait, and only moved
//! forward after that: a peer that reads as fast as it is written to never
//! costs one.

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

/// `inner`, whose writes fail once the peer has taken nothing for `limit`.
#[derive(Debug)]
pub struct SendTimeout<I> {
    inner: I,
    limit: Duration,
    /// What the error says happened, and the setting's name: `"the client
    /// took nothing"`, `"client_send_timeout"`.
    stalled: (&'static str, &'static str),
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the timer is running for the write in progress.
    waiting: bool,
}

impl<I> SendTimeout<I> {
    /// A client's connection (`client_send_timeout`).
    pub fn client(inner: I, limit: Duration) -> Self {
        Self::new(
            inner,
            limit,
            ("the client took nothing", "client_send_timeout"),
        )
    }

    fn new(inner: I, limit: Duration, stalled: (&'static str, &'static str)) -> Self {
        SendTimeout {
            inner,
            limit,
            stalled,
            timer: None,
            waiting: false,
        }
    }

    /// Maps a write's outcome: progress stops the clock; waiting starts it
    /// (once per stall) and fails when it runs out.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.waiting = false;
            return polled;
        }
        let deadline = Instant::now() + self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.waiting {
            timer.as_mut().reset(deadline);
            self.waiting = true;
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                let (what, setting) = self.stalled;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{what} for {:?} ({setting})", self.limit),
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for SendTimeout<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for SendTimeout<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The connection to a server: `send_timeout`, and byte counts into the server's
/// statistics.
#[derive(Debug)]
pub struct UpstreamIo {
    stream: SendTimeout<TcpStream>,
    runtime: Arc<ServerRuntime>,
}

impl UpstreamIo {
    pub fn new(stream: TcpStream, send_timeout: Duration, runtime: Arc<ServerRuntime>) -> Self {
        UpstreamIo {
            stream: SendTimeout::new(
                stream,
                send_timeout,
                ("server read nothing", "send_timeout"),
            ),
            runtime,
        }
    }

    fn count(&self, r: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = r {
            self.runtime.stats.bytes_sent.fetch_add(*n as u64, Relaxed);
        }
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
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.count(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
