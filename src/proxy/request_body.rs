//! Request bodies on their way to a server: the client's own stream, the same
//! under a size limit, or nothing (the retry of a request that had no body).
//! They stream frame by frame, so backpressure passes straight through.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

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
