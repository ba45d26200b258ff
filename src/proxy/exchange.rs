//! One exchange with the servers of an upstream, the same for both HTTP paths:
//! pick a server, try it, try the next as the upstream's retry policy allows,
//! send again on a stale pooled connection, count what happened to each try,
//! and turn a failure into the 502 or 504 the client gets.
//!
//! A path brings only its [`Transport`]: how to take a pooled connection or
//! open one, and how to send the request and read the response head. Framing
//! is the path's; retries, accounting and blame are here, so that the two
//! paths cannot drift apart.
//!
//! Accounting rides on an [`Attempt`], a guard over one try's lease: it counts
//! the request when it goes out, the response head, the end of the body, and
//! a failure with whose fault it was. Only a server's fault counts against the
//! server (passive health): a client that breaks its own request, or goes away,
//! costs the server nothing.
//!
//! Retries follow what is safe: a connect failure sent nothing, so the request
//! always goes on to the next server; after a send, it goes again only if the
//! transport can send it again (no body, and idempotent unless the upstream
//! allows more). A stale keep-alive connection (the server closed it while it
//! sat in the pool) is not held against the server: the request goes again on
//! another connection to the same server.
//!
//! It reads the table's snapshots; it never changes them.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use hyper::StatusCode;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::access_log::Record;
use crate::health::passive;
use crate::upstream::{Lease, Server, Table, Tried, Upstream, UpstreamSettings};

/// Why one try on one server failed.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("connection setup failed: {0}")]
    Handshake(hyper::Error),
    /// TLS set-up or handshake failed (certificate verification, among others).
    #[error("{0}")]
    Tls(String),
    #[error("connection closed before it was ready")]
    ClosedBeforeReady,
    #[error("request failed: {0}")]
    Send(hyper::Error),
    /// Sending or reading on the plain HTTP/1.1 path failed.
    #[error("request failed: {0}")]
    Io(std::io::Error),
    /// The server's response head was not valid HTTP/1.1.
    #[error("{0}")]
    Response(String),
    #[error("no response headers within {0:?} (read_timeout)")]
    ResponseTimeout(Duration),
}

/// Whose fault a failed exchange was. Only the server's counts against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The server broke the exchange: refused, reset, stalled, sent garbage.
    Server,
    /// The client broke it: aborted its body, sent a bad one, or went away.
    Client,
}

/// Why a send on one connection failed.
#[derive(Debug)]
pub enum SendError {
    /// The connection broke before anything of a response came back. On a
    /// connection from the pool that is what a stale one looks like (the server
    /// closed it while idle): the request goes again on another connection.
    Stale(AttemptError),
    Failed(AttemptError),
}

/// How one path carries a request to a server. Implemented twice: hyper's
/// client (`forward`) and the plain HTTP/1.1 path (`h1`).
pub trait Transport {
    /// A connection to a server, ready for a request.
    type Conn;
    /// A response head read from a server, with what is needed to read its body.
    type Response;

    /// An idle connection to `server` from its pool, if it has one.
    fn checkout(&mut self, server: &Server) -> Option<Self::Conn>;

    /// A new connection to `server`.
    fn connect(
        &mut self,
        server: &Arc<Server>,
        settings: &UpstreamSettings,
    ) -> impl Future<Output = Result<Self::Conn, AttemptError>>;

    /// Waits until `conn` can take a request; an error before anything was
    /// sent. Most connections are ready at once.
    fn ready(
        &mut self,
        conn: Self::Conn,
    ) -> impl Future<Output = Result<Self::Conn, AttemptError>> {
        std::future::ready(Ok(conn))
    }

    /// Sends the request on `conn` to `server` (it goes out at `sent_at`) and
    /// reads the response head, within the upstream's timeouts.
    fn send(
        &mut self,
        conn: Self::Conn,
        server: &Server,
        settings: &UpstreamSettings,
        sent_at: Instant,
    ) -> impl Future<Output = Result<Self::Response, SendError>>;

    /// Whether the request can be sent (again): after a failed send, only if
    /// the transport still has it or can make it again.
    fn can_send(&self) -> bool;

    /// The client's fault behind the failure of the last try, if it was one,
    /// and what the client is answered: then nothing is counted against the
    /// server and no other server is tried.
    fn client_fault(&self) -> Option<(StatusCode, String)> {
        None
    }

    /// The response's status code.
    fn status(response: &Self::Response) -> u16;
}

/// Where an exchange goes: the upstream (as routed), its slot in the table
/// (retries read the table as it is then) and the balancing key.
pub struct Route<'a> {
    pub table: &'a Table,
    pub upstream: &'a Upstream,
    pub slot: usize,
    pub key: Option<u64>,
}

/// A server's response head, and the try it came from (which owns the lease
/// and counts the rest of the exchange).
pub struct Answered<R> {
    pub response: R,
    pub attempt: Attempt,
    /// From sending the request to its response head.
    pub header_time: Duration,
}

/// What the client gets when no server answered: the status and the text.
pub type Refusal = (StatusCode, String);

/// Tries servers of `route` as the upstream's retry policy allows, and returns
/// the first response head, or the answer the client gets instead.
pub async fn run<T: Transport>(
    route: &Route<'_>,
    transport: &mut T,
    record: &mut Option<Box<Record>>,
) -> Result<Answered<T::Response>, Refusal> {
    let upstream = route.upstream;
    let settings = &upstream.settings;
    // Read only when retries have a time limit.
    let started = (!settings.retry.timeout.is_zero()).then(Instant::now);
    let mut tried = Tried::default();
    let mut last_error: Option<AttemptError> = None;
    let tries = settings.retry.tries.max(1) as usize;
    while tried.len() < tries && transport.can_send() {
        if !tried.is_empty() && started.is_some_and(|t| t.elapsed() >= settings.retry.timeout) {
            break;
        }
        let Some(lease) = pick_next(route, &mut tried) else {
            if tried.is_empty() {
                return Err(no_server(upstream));
            }
            break;
        };
        if let Some(r) = record.as_mut() {
            r.tried(&upstream.name, &lease.server().addr);
        }
        let mut attempt = Attempt::new(lease);
        let mut connect_time = None;
        let outcome = try_server(transport, &mut attempt, settings, &mut connect_time).await;
        if let Some(r) = record.as_mut() {
            r.upstream_connect_time = connect_time;
        }
        match outcome {
            Ok(response) => {
                let status = T::status(&response);
                let header_time = attempt.answered(status);
                if let Some(r) = record.as_mut() {
                    r.upstream_status = Some(status);
                    r.upstream_response_time = Some(header_time);
                }
                return Ok(Answered {
                    response,
                    attempt,
                    header_time,
                });
            }
            Err(error) => {
                if let Some(answer) = transport.client_fault() {
                    attempt.failed(Fault::Client, &error);
                    return Err(answer);
                }
                if let Some(outcome) = attempt.failed(Fault::Server, &error) {
                    let server = &attempt.server().addr;
                    warn!(upstream = %upstream.name, %server, %error, outcome = %outcome.as_str(), "upstream attempt failed");
                }
                last_error = Some(error);
            }
        }
    }
    Err(failure(upstream, tried.len(), last_error.as_ref()))
}

/// One server's turn: the request on a pooled connection (again on another
/// one if that turns out stale) or on a new one, up to the response head.
async fn try_server<T: Transport>(
    transport: &mut T,
    attempt: &mut Attempt,
    settings: &UpstreamSettings,
    connect_time: &mut Option<Duration>,
) -> Result<T::Response, AttemptError> {
    // Borrowed apart: the server is read from the lease while the try's
    // stage is written (no reference count touched per request).
    let Attempt {
        lease,
        sent_at,
        stage,
    } = attempt;
    let Some(server) = lease.as_ref().map(Lease::server) else {
        return Err(AttemptError::ClosedBeforeReady);
    };
    let mut stale_resends = 0;
    loop {
        let pooled = transport.checkout(server);
        let reused = pooled.is_some();
        let conn = match pooled {
            Some(c) => {
                connect_time.get_or_insert(Duration::ZERO);
                c
            }
            None => {
                let began = Instant::now();
                // Boxed: the connect path (TCP, TLS, handshake) is a large
                // future that would otherwise sit inside every request's
                // future; a new connection is the rare case.
                let connected = Box::pin(transport.connect(server, settings)).await;
                *connect_time = Some(began.elapsed());
                connected?
            }
        };
        let conn = match transport.ready(conn).await {
            Ok(c) => c,
            Err(_) if reused => continue,
            Err(e) => return Err(e),
        };
        // The request goes out now.
        server.runtime.stats.requests.fetch_add(1, Relaxed);
        let now = Instant::now();
        *sent_at = Some(now);
        *stage = Stage::Sent;
        match transport.send(conn, server, settings, now).await {
            Ok(response) => return Ok(response),
            Err(SendError::Stale(e))
                if reused && transport.can_send() && stale_resends < MAX_STALE_RESENDS =>
            {
                stale_resends += 1;
                debug!(server = %server.addr, error = %e, "stale keep-alive connection, sending again");
            }
            Err(SendError::Stale(e) | SendError::Failed(e)) => return Err(e),
        }
    }
}

/// Resends of one try on pooled connections that turned out stale. Bounded:
/// a shared HTTP/2 connection stays in the pool after one stream fails, so a
/// server that resets every stream of a request would otherwise be sent it
/// again without end.
const MAX_STALE_RESENDS: u32 = 4;

/// Where one try stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Picked,
    Sent,
    Answered,
    Over,
}

/// One try on one server, from the pick to the end of the response body. It
/// holds the lease (the server's `active` count, which drain waits for) and
/// counts into the server's runtime: the request, the response head, the end
/// of the body, a failure. Dropped before its end, it was the client that went
/// away: that is logged and counts nothing against the server.
#[derive(Debug)]
pub struct Attempt {
    lease: Option<Lease>,
    /// When the request was sent (`None` before).
    sent_at: Option<Instant>,
    stage: Stage,
}

impl Attempt {
    fn new(lease: Lease) -> Attempt {
        Attempt {
            lease: Some(lease),
            sent_at: None,
            stage: Stage::Picked,
        }
    }

    pub fn server(&self) -> &Arc<Server> {
        // The lease is taken only by `into_lease`, which consumes the attempt.
        match &self.lease {
            Some(l) => l.server(),
            None => unreachable!("an attempt holds its lease until it is consumed"),
        }
    }

    /// Time since the request was sent (zero before).
    #[inline]
    fn since_sent(&self) -> Duration {
        self.sent_at.map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// The response head came: counted by status; a success for passive health.
    #[inline]
    fn answered(&mut self, status: u16) -> Duration {
        let header_time = self.since_sent();
        let server = self.server();
        server.runtime.stats.header_time.observe(header_time);
        server.runtime.stats.count_response(status);
        passive::record_success(server);
        self.stage = Stage::Answered;
        header_time
    }

    /// The response body ended, `took` after the request was sent.
    #[inline]
    pub fn finished_in(&mut self, took: Duration) {
        if self.stage != Stage::Over {
            self.server().runtime.stats.response_time.observe(took);
            self.stage = Stage::Over;
        }
    }

    /// The response body ended now.
    pub fn finished(&mut self) {
        self.finished_in(self.since_sent());
    }

    /// The exchange broke, by `fault`: only a server's fault counts against
    /// it (what that did to the server is returned).
    pub fn failed(
        &mut self,
        fault: Fault,
        error: &dyn std::fmt::Display,
    ) -> Option<passive::FailureOutcome> {
        if self.stage == Stage::Over {
            return None;
        }
        self.stage = Stage::Over;
        let server = self.server();
        match fault {
            Fault::Server => {
                debug!(server = %server.addr, error = %error, "exchange broken by the server");
                Some(passive::record_failure(server, crate::clock::now_ms()))
            }
            Fault::Client => {
                debug!(server = %server.addr, error = %error, "exchange broken by the client");
                None
            }
        }
    }

    /// The lease, for an exchange that outlives this try's accounting (a
    /// protocol upgrade's tunnel).
    pub fn into_lease(mut self) -> Option<Lease> {
        self.stage = Stage::Over;
        self.lease.take()
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if matches!(self.stage, Stage::Sent | Stage::Answered) && self.lease.is_some() {
            self.failed(Fault::Client, &"the client went away");
        }
    }
}

/// The server for the next try (the first, or a retry), counted as selected.
/// A retry picks from the table as it is now, so it too honours a change made
/// while the request was under way.
fn pick_next(route: &Route<'_>, tried: &mut Tried) -> Option<Lease> {
    let now = crate::clock::now_ms();
    let lease = if tried.is_empty() {
        route.upstream.snapshot().pick(route.key, tried, now)
    } else {
        route
            .table
            .load()
            .by_slot(route.slot)
            .and_then(|u| u.snapshot().pick(route.key, tried, now))
    }?;
    tried.push(lease.server().id);
    lease
        .server()
        .runtime
        .stats
        .selected_unix_ms
        .store(unix_ms(), Relaxed);
    Some(lease)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The answer when the upstream has no server to try.
pub fn no_server(upstream: &Upstream) -> Refusal {
    (
        StatusCode::BAD_GATEWAY,
        format!(
            "502 Bad Gateway: no server available in upstream \"{}\"\n",
            upstream.name
        ),
    )
}

/// The answer when every try failed (or none could be made): 504 when the
/// last one timed out waiting for the head, else 502.
fn failure(upstream: &Upstream, tries: usize, last_error: Option<&AttemptError>) -> Refusal {
    match last_error {
        Some(AttemptError::ResponseTimeout(d)) => (
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "504 Gateway Timeout: upstream \"{}\" sent no response within {d:?}\n",
                upstream.name
            ),
        ),
        Some(e) => (
            StatusCode::BAD_GATEWAY,
            format!(
                "502 Bad Gateway: upstream \"{}\" failed after {tries} tries: {e}\n",
                upstream.name
            ),
        ),
        None => no_server(upstream),
    }
}
