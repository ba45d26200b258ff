//! Bodies on both sides of the proxy. Both stream frame by frame: nothing here
//! holds more than one frame, so backpressure passes straight through.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::pool::Sender;
use crate::health::passive;
use crate::upstream::{Lease, Server};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way to a server: the client's own stream, the same
/// with a size limit (a route's `max_body_size` on a body of unknown length), or
/// nothing (for a retry of a request that had no body).
#[derive(Debug)]
pub enum UpstreamBody {
    Empty,
    Client(Incoming),
    Limited {
        body: Incoming,
        left: u64,
        /// Set when the client sent more than the limit, so the request can be
        /// answered 413 rather than as a failed upstream exchange.
        exceeded: Arc<AtomicBool>,
    },
}

/// The client sent a body larger than its route allows.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than the route's max_body_size")]
pub struct BodyTooLarge;

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Empty => Poll::Ready(None),
            UpstreamBody::Client(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Limited {
                body,
                left,
                exceeded,
            } => {
                let frame = ready!(Pin::new(body).poll_frame(cx));
                if let Some(Ok(f)) = &frame
                    && let Some(data) = f.data_ref()
                {
                    match left.checked_sub(data.len() as u64) {
                        Some(l) => *left = l,
                        None => {
                            exceeded.store(true, std::sync::atomic::Ordering::Relaxed);
                            return Poll::Ready(Some(Err(BodyTooLarge.into())));
                        }
                    }
                }
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Client(b) | UpstreamBody::Limited { body: b, .. } => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Client(b) | UpstreamBody::Limited { body: b, .. } => b.size_hint(),
        }
    }
}

/// A response body on its way to the client.
#[derive(Debug)]
pub enum ProxyBody {
    /// A response switchyard wrote itself (errors).
    Full(Option<Bytes>),
    /// A server's response.
    Upstream(UpstreamResponse),
    /// Either of the above on a listener with an access log: the record is
    /// written when the body ends or is dropped, with the bytes sent.
    Logged(Box<LoggedBody>),
}

/// A response body whose request goes to the access log once it is over.
#[derive(Debug)]
pub struct LoggedBody {
    pub inner: ProxyBody,
    pub record: Option<Box<super::access_log::Record>>,
    pub log: Arc<super::access_log::AccessLog>,
    /// Bytes of the response head (as hyper writes it, estimated).
    pub head_bytes: u64,
    pub body_bytes: u64,
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(mut r) = self.record.take() {
            let status = r.status;
            r.finish(status, self.head_bytes, self.body_bytes);
            self.log.write(r);
        }
    }
}

impl ProxyBody {
    pub fn text(s: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Full(Some(s.into()))
    }
    pub fn empty() -> ProxyBody {
        ProxyBody::Full(None)
    }
}

/// A server's response body, with what must outlive it: the lease that counts
/// the request as active (so `drain` waits for bodies too) and the connection,
/// which goes back to the pool only once the body has been read to the end.
#[derive(Debug)]
pub struct UpstreamResponse {
    body: Incoming,
    lease: Option<Lease>,
    conn: Option<Sender>,
    ended: bool,
    read_timeout: Duration,
    /// Armed lazily: a body that is always ready never allocates a timer.
    timer: Option<Pin<Box<Sleep>>>,
    progressed: bool,
    /// When the request was sent, for the response-time histogram.
    sent_at: Instant,
}

impl UpstreamResponse {
    pub fn new(
        body: Incoming,
        lease: Lease,
        conn: Sender,
        read_timeout: Duration,
        sent_at: Instant,
    ) -> Self {
        let ended = body.is_end_stream();
        let mut this = UpstreamResponse {
            body,
            lease: Some(lease),
            conn: Some(conn),
            ended,
            read_timeout,
            timer: None,
            progressed: false,
            sent_at,
        };
        if ended {
            this.finish();
        }
        this
    }

    fn server(&self) -> Option<&Arc<Server>> {
        self.lease.as_ref().map(Lease::server)
    }

    /// The exchange is over: the connection may serve the next request.
    fn finish(&mut self) {
        self.ended = true;
        if let Some(server) = self.server() {
            server
                .runtime
                .stats
                .response_time
                .observe(self.sent_at.elapsed());
        }
        if let (Some(conn), Some(server)) = (self.conn.take(), self.server()) {
            server.runtime.pool.checkin(conn);
        }
        self.lease = None;
    }

    /// The exchange broke: the connection is dropped (closed), the failure counted.
    fn fail(&mut self) {
        self.conn = None;
        if let Some(server) = self.server() {
            passive::record_failure(server, crate::clock::now_ms());
        }
        self.lease = None;
    }
}

impl Drop for UpstreamResponse {
    fn drop(&mut self) {
        // A body the client never polled (HEAD, 204...) may still have ended.
        if !self.ended && self.body.is_end_stream() {
            self.finish();
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("upstream sent nothing for {0:?} while the response body was open")]
pub struct BodyReadTimeout(Duration);

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = match self.get_mut() {
            ProxyBody::Full(b) => return Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream(r) => r,
            ProxyBody::Logged(l) => {
                let polled = Pin::new(&mut l.inner).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled
                    && let Some(data) = frame.data_ref()
                {
                    l.body_bytes += data.len() as u64;
                }
                return polled;
            }
        };
        if r.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut r.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                r.progressed = true;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                r.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                r.fail();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => {
                let deadline = Instant::now() + r.read_timeout;
                match &mut r.timer {
                    None => r.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    Some(t) if r.progressed => t.as_mut().reset(deadline),
                    Some(_) => {}
                }
                r.progressed = false;
                if let Some(t) = &mut r.timer {
                    ready!(t.as_mut().poll(cx));
                }
                r.fail();
                Poll::Ready(Some(Err(BodyReadTimeout(r.read_timeout).into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Upstream(r) => r.ended || r.body.is_end_stream(),
            ProxyBody::Logged(l) => l.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Upstream(r) => r.body.size_hint(),
            ProxyBody::Logged(l) => l.inner.size_hint(),
        }
    }
}
