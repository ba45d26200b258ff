//! Request bodies on their way to a server: the client's own stream, the same
//! under a size limit, or nothing (the retry of a request that had no body).
//! They stream frame by frame, so backpressure passes straight through.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way to a server: the client's own stream, the same
/// watched (a body still to come: how it ends is the exchange's to know, and a
/// route's `max_body_size` may limit it), or nothing (for a retry of a request
/// that had no body).
#[derive(Debug)]
pub enum UpstreamBody {
    Empty,
    /// A client's body that is already over: nothing can go wrong with it.
    Client(Incoming),
    Watched {
        body: Incoming,
        /// Bytes still allowed, when the route has a limit and the client did
        /// not declare a length.
        left: Option<u64>,
        verdict: Arc<BodyVerdict>,
    },
}

/// How a client broke its own request body: never the server's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientBodyFault {
    /// More than the route's `max_body_size`.
    TooLarge,
    /// The client closed its connection before the body was complete.
    Aborted,
    /// The body's framing was not valid (bad chunked coding, among others).
    Malformed,
}

/// What became of a watched body, set by the body as it fails or ends, read
/// by the exchange: whose fault was a failure, and has the upload ended (a
/// connection still uploading cannot take the next request)?
#[derive(Debug, Default)]
pub struct BodyVerdict(AtomicU8);

/// The body was sent to its end.
const ENDED: u8 = 4;

impl BodyVerdict {
    /// Whether the whole body was sent.
    pub fn ended(&self) -> bool {
        self.0.load(Ordering::Acquire) == ENDED
    }

    pub fn fault(&self) -> Option<ClientBodyFault> {
        match self.0.load(Ordering::Acquire) {
            1 => Some(ClientBodyFault::TooLarge),
            2 => Some(ClientBodyFault::Aborted),
            3 => Some(ClientBodyFault::Malformed),
            _ => None,
        }
    }

    fn set(&self, fault: ClientBodyFault) {
        let code = match fault {
            ClientBodyFault::TooLarge => 1,
            ClientBodyFault::Aborted => 2,
            ClientBodyFault::Malformed => 3,
        };
        self.0.store(code, Ordering::Release);
    }
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
            UpstreamBody::Watched {
                body,
                left,
                verdict,
            } => {
                let frame = match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                    None => {
                        verdict.0.store(ENDED, Ordering::Release);
                        return Poll::Ready(None);
                    }
                    Some(Err(e)) => {
                        verdict.set(if e.is_incomplete_message() {
                            ClientBodyFault::Aborted
                        } else {
                            ClientBodyFault::Malformed
                        });
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    frame => frame,
                };
                if let (Some(Ok(f)), Some(left)) = (&frame, left.as_mut())
                    && let Some(data) = f.data_ref()
                {
                    match left.checked_sub(data.len() as u64) {
                        Some(l) => *left = l,
                        None => {
                            verdict.set(ClientBodyFault::TooLarge);
                            return Poll::Ready(Some(Err(BodyTooLarge.into())));
                        }
                    }
                }
                // hyper stops polling a body that says it is over, so its end
                // is noted here too, not only on a last `None`.
                if body.is_end_stream() {
                    verdict.0.store(ENDED, Ordering::Release);
                }
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Client(b) | UpstreamBody::Watched { body: b, .. } => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Client(b) | UpstreamBody::Watched { body: b, .. } => b.size_hint(),
        }
    }
}
