//! Response bodies on their way to the client (the request's side is
//! `request_body`). They stream frame by frame: nothing here holds more than
//! one frame, so backpressure passes straight through.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::exchange::{Attempt, Fault};
use super::pool::{self, Sender};
use super::request_body::BodyVerdict;
pub use super::request_body::BoxError;

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

/// A server's response body, with what must outlive it: the try it came from
/// (whose lease counts the request as active, so `drain` waits for bodies too)
/// and the connection, which goes back to the pool only once the body has been
/// read to the end.
#[derive(Debug)]
pub struct UpstreamResponse {
    body: Incoming,
    attempt: Option<Attempt>,
    conn: Option<Sender>,
    ended: bool,
    read_timeout: Duration,
    /// Armed lazily: a body that is always ready never allocates a timer.
    timer: Option<Pin<Box<Sleep>>>,
    progressed: bool,
    /// How the request's body ended, when it had one still coming: a response
    /// that breaks because the client broke its upload is not the server's fault.
    verdict: Option<Arc<BodyVerdict>>,
}

impl UpstreamResponse {
    pub fn new(
        body: Incoming,
        attempt: Attempt,
        conn: Sender,
        read_timeout: Duration,
        verdict: Option<Arc<BodyVerdict>>,
    ) -> Self {
        let ended = body.is_end_stream();
        let mut this = UpstreamResponse {
            body,
            attempt: Some(attempt),
            conn: Some(conn),
            ended,
            read_timeout,
            timer: None,
            progressed: false,
            verdict,
        };
        if ended {
            this.finish();
        }
        this
    }

    /// The exchange is over: the connection may serve the next request.
    fn finish(&mut self) {
        self.ended = true;
        if let Some(mut attempt) = self.attempt.take() {
            attempt.finished();
            // A server may answer before the request's body is all sent; until
            // it is, the connection cannot take another request (it closes
            // when the upload ends instead).
            let uploaded = self.verdict.as_ref().is_none_or(|v| v.ended());
            if let (Some(conn), Some(pool), true) =
                (self.conn.take(), pool::of(attempt.server()), uploaded)
            {
                pool.checkin(conn);
            }
        }
    }

    /// The exchange broke: the connection is dropped (closed), the failure
    /// counted against the server unless the client's own upload broke it.
    fn fail(&mut self, error: &dyn std::fmt::Display) {
        self.conn = None;
        let fault = match self.verdict.as_ref().and_then(|v| v.fault()) {
            Some(_) => Fault::Client,
            None => Fault::Server,
        };
        if let Some(mut attempt) = self.attempt.take() {
            attempt.failed(fault, error);
        }
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
                r.fail(&e);
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
                let error = BodyReadTimeout(r.read_timeout);
                r.fail(&error);
                Poll::Ready(Some(Err(error.into())))
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
