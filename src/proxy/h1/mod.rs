//! The plain HTTP/1.1 path: keep-alive `GET` and `HEAD` on cleartext listeners,
//! relayed to HTTP/1.1 servers without hyper.
//!
//! Why it exists: under a small-GET load, most of switchyard's own CPU time went
//! to hyper's HTTP/1 server and client state machines and the tasks and channels
//! between them (BENCHMARKS.md). This path parses the head with `httparse`,
//! writes the request to a pooled server socket from the same task, and copies
//! the response back as it is framed; one task, no header map, no body types.
//! Between requests a connection holds no buffer; after [`LINGER`] without a
//! request it is not even a task: it is parked with its listener's accept loop
//! ([`Parked`]) as its socket and a few words, and woken into a task again when
//! the client sends. Idle keep-alive connections cost little memory.
//!
//! What it takes is narrow (see [`head::parse_request`]): HTTP/1.1, no body or
//! one of a known length that fits the listener's `request_buffer_size` (read
//! whole before a server is picked, then sent with the head in one write, as
//! nginx buffers request bodies: a slow uploader holds no server connection, and
//! a failed try can be sent again), no upgrade, no `Expect`, a route to an
//! upstream of plain HTTP/1.1 servers. Anything else hands the connection, with the bytes read so far, to
//! hyper for the rest of its life (`serve_hyper`), so every other feature and
//! every error answer stays hyper's. Retries, timeouts, passive health,
//! statistics and the leases that drain waits for are the exchange core's
//! (`exchange`), the same as the hyper path's: this path brings its transport
//! ([`RawTransport`]) and its framing.
//!
//! It reads the upstream table's snapshots and never changes them.

pub(crate) mod checks;
mod chunked;
mod head;

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio::time::{Instant, Sleep, timeout, timeout_at};

use self::chunked::ChunkedScan;
use self::head::{ClientSide, Framing, Parsed, ParsedResponse, RequestHead, ResponseHead};
use super::access_log::{Record, Text};
use super::connect::open_tcp;
use super::exchange::{self, Answered, Attempt, AttemptError, Fault, Route, SendError, Transport};
use super::listener::{Forwarder, Listening};
use super::pool;
use super::readiness::{self, HealthUri};
use super::request::{
    Client, KeySource, cookie_in, forwarded_element, host_without_port, new_request_id, request_key,
};
use super::rewind::Rewind;
use crate::config::{Scheme, UpstreamProtocol};
use crate::upstream::{Server, Upstream, UpstreamSettings};

/// A client connection on a cleartext listener.
pub(super) struct Conn {
    pub stream: TcpStream,
    pub client: Client,
    /// What the listener served with when the connection was accepted.
    pub listening: Arc<Listening>,
    /// Becomes `true` when the listener shuts down: the connection closes once
    /// its exchange in flight is over.
    pub shutdown: watch::Receiver<bool>,
    /// Its share of the listener's `max_connections`.
    pub permit: OwnedSemaphorePermit,
    /// Where it parks when idle: its listener's accept loop on this worker.
    pub park: mpsc::UnboundedSender<Parked>,
    /// How long it waits for its next request before it parks ([`LINGER`],
    /// longer for a client that keeps coming back soon after parking).
    pub linger: Duration,
}

/// Timers kept for the life of a connection's task and moved forward for each
/// request: pushing a registered tokio timer later is one atomic update, where a
/// timer made and dropped per request is a registration in the timer wheel and
/// its removal, each under the driver's lock.
#[derive(Default)]
struct Timers {
    /// The wait for the next request before parking.
    linger: Option<Pin<Box<Sleep>>>,
    /// The wait for a server's response head (`read_timeout`).
    response: Option<Pin<Box<Sleep>>>,
}

/// The timer in `slot`, set to fire at `at` (made on first use).
fn armed(slot: &mut Option<Pin<Box<Sleep>>>, at: Instant) -> Pin<&mut Sleep> {
    if let Some(sleep) = slot.as_mut() {
        sleep.as_mut().reset(at);
    }
    slot.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)))
        .as_mut()
}

/// How long an idle connection first waits for its next request in its own
/// task before it parks. Under load the next request usually comes sooner, so
/// busy connections do not pay for parking (a message and a new task).
pub const LINGER: Duration = Duration::from_millis(20);

/// The longest linger. A connection woken within [`SOON`] of parking doubles
/// its linger up to this: with 1,000 clients at 35,000 requests/s each one
/// comes back every ~30 ms, past [`LINGER`], and would otherwise park after
/// every request. A connection idle for good still parks within this.
pub const MAX_LINGER: Duration = Duration::from_millis(640);

/// A wake this soon after parking means the linger was too short.
const SOON: Duration = Duration::from_secs(1);

/// Serves `conn` until the client closes it, it idles past `header_timeout`,
/// the listener shuts down, or it is handed to hyper (returned); an idle
/// connection parks after [`LINGER`].
pub(super) async fn serve(mut conn: Conn) -> Option<Handoff> {
    let mut pending = Vec::new();
    let mut timers = Timers::default();
    loop {
        let header_timeout = conn.listening.limits.header_timeout;
        let idle_from = Instant::now();
        let deadline = idle_from + header_timeout;
        if pending.is_empty() {
            // Waits without a buffer: an idle connection holds none. Shutdown
            // is not watched here: within the linger the connection parks, and
            // a listener that stopped takes no parked connection (it closes).
            let linger = conn.linger.min(header_timeout);
            let lingered = armed(&mut timers.linger, idle_from + linger);
            tokio::select! {
                biased;
                r = conn.stream.readable() => if r.is_err() {
                    return None;
                },
                () = lingered => {
                    if linger < header_timeout {
                        let left = header_timeout - linger;
                        let park = conn.park.clone();
                        let _ = park.send(Parked::new(conn, left));
                    }
                    return None;
                }
            }
        }
        // Not boxed: a box per request was a malloc and a free per request
        // (about 4% of this path's user-space instructions). The task, and so
        // the exchange's state in it, lives only while the connection is busy
        // or lingering; a parked connection is not a task.
        let read = std::mem::take(&mut pending);
        match exchange(&mut conn, &mut timers, read, deadline).await {
            Next::KeepAlive(rest) => pending = rest,
            Next::Close => return None,
            Next::Hyper(read) => {
                let Conn {
                    stream,
                    client,
                    listening,
                    shutdown,
                    permit,
                    ..
                } = conn;
                return Some(Handoff {
                    io: Rewind::new(read, stream),
                    listening,
                    client,
                    shutdown,
                    permit,
                });
            }
        }
        if *conn.shutdown.borrow() {
            return None;
        }
    }
}

/// A connection this path gives to hyper for the rest of its life, with the
/// bytes it has read of it.
pub(super) struct Handoff {
    pub io: Rewind<TcpStream>,
    pub listening: Arc<Listening>,
    pub client: Client,
    pub shutdown: watch::Receiver<bool>,
    pub permit: OwnedSemaphorePermit,
}

/// An idle connection parked with its listener's accept loop: as little as it
/// takes to wake it (the socket, the client's address, what it was accepted
/// with and its connection slot). As a future it is ready when the client
/// sends (`Some`), or `None` when it is to close: the socket failed, or the
/// accept loop's sweep found it idle past `header_timeout`.
pub(super) struct Parked {
    idle: Option<Idle>,
    /// `clock::now_ms` after which the connection closes.
    deadline_ms: u64,
    expired: bool,
    waker: Option<Waker>,
}

pub(super) struct Idle {
    stream: TcpStream,
    addr: SocketAddr,
    listening: Arc<Listening>,
    permit: OwnedSemaphorePermit,
    /// The linger it had, and when it parked (`clock::now_ms`).
    linger: Duration,
    parked_ms: u64,
}

impl Parked {
    fn new(conn: Conn, left: Duration) -> Parked {
        let left_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
        let now_ms = crate::clock::now_ms();
        Parked {
            idle: Some(Idle {
                stream: conn.stream,
                addr: conn.client.addr,
                listening: conn.listening,
                permit: conn.permit,
                linger: conn.linger,
                parked_ms: now_ms,
            }),
            deadline_ms: now_ms.saturating_add(left_ms),
            expired: false,
            waker: None,
        }
    }

    /// Marks the connection to close if it has been idle past its deadline.
    pub fn sweep(&mut self, now_ms: u64) {
        if now_ms >= self.deadline_ms {
            self.expired = true;
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
    }
}

impl Future for Parked {
    type Output = Option<Idle>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Idle>> {
        let this = self.get_mut();
        let Some(idle) = this.idle.as_ref().filter(|_| !this.expired) else {
            return Poll::Ready(None);
        };
        match idle.stream.poll_read_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(this.idle.take()),
            Poll::Ready(Err(_)) => Poll::Ready(None),
            Poll::Pending => {
                if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    this.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

impl Idle {
    /// The connection as a task serves it again.
    pub fn wake(
        self,
        shutdown: watch::Receiver<bool>,
        park: mpsc::UnboundedSender<Parked>,
    ) -> Conn {
        let parked_for = crate::clock::now_ms().saturating_sub(self.parked_ms);
        let linger = if u128::from(parked_for) < SOON.as_millis() {
            (self.linger * 2).min(MAX_LINGER)
        } else {
            LINGER
        };
        Conn {
            stream: self.stream,
            client: Client::new(self.addr),
            listening: self.listening,
            shutdown,
            permit: self.permit,
            park,
            linger,
        }
    }
}

/// How often an accept loop looks for parked connections idle past their
/// deadline: a quarter of `header_timeout`, within [50 ms, 1 s].
pub fn sweep_every(header_timeout: Duration) -> Duration {
    (header_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// The client's half of a connection, as one exchange uses it.
struct Side<'a> {
    stream: &'a mut TcpStream,
    /// `client_send_timeout`.
    send_timeout: Duration,
    shutdown: &'a watch::Receiver<bool>,
    response_timer: &'a mut Option<Pin<Box<Sleep>>>,
}

enum Next {
    /// Ready for the next request; these bytes of it (pipelined) are read.
    KeepAlive(Vec<u8>),
    Close,
    /// Not a request for this path: hyper gets the connection and these bytes.
    Hyper(Vec<u8>),
}

/// A request this path forwards.
struct Plan {
    head_len: usize,
    /// Bytes of request body after the head, read whole before the exchange.
    body_len: usize,
    /// A failed try may be sent again (idempotent, or the upstream allows it).
    replayable: bool,
    head_request: bool,
    close: bool,
    upstream: Arc<Upstream>,
    slot: usize,
    key: Option<u64>,
    /// The request as the server gets it.
    request: Vec<u8>,
    /// Its access-log record, when the listener has an access log.
    record: Option<Box<Record>>,
}

enum Planned {
    Forward(Plan),
    /// The listener's `health_uri`: answered here.
    Health(Probe),
    Partial,
    Hyper,
}

impl KeySource for RequestHead<'_, '_> {
    fn target(&self) -> Option<&str> {
        Some(self.target)
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        RequestHead::header(self, name)
    }
    fn cookie(&self, name: &str) -> Option<&[u8]> {
        cookie_in(self.header_all("cookie"), name)
    }
}

/// Reads one request and forwards it.
async fn exchange(
    conn: &mut Conn,
    timers: &mut Timers,
    mut buf: Vec<u8>,
    deadline: Instant,
) -> Next {
    // Borrowed apart: the listener's forwarder is read while the socket is
    // written (no reference count touched per request).
    let Conn {
        stream,
        client,
        listening,
        shutdown,
        ..
    } = conn;
    let forwarder = &listening.forwarder;
    let mut conn = Side {
        stream,
        send_timeout: listening.limits.send_timeout,
        shutdown,
        response_timer: &mut timers.response,
    };
    if buf.capacity() == 0 {
        buf = buffers::take();
    }
    let mut plan = loop {
        if !buf.is_empty() {
            match plan(forwarder, listening.health.as_deref(), client, &buf) {
                Planned::Forward(p) => break p,
                Planned::Health(p) => return health(&mut conn, p, buf).await,
                Planned::Hyper => return Next::Hyper(buf),
                Planned::Partial => {}
            }
        }
        if buf.len() >= forwarder.limits.max_header_size {
            // Hyper answers 431.
            return Next::Hyper(buf);
        }
        buf.reserve(buffers::READ);
        // The client's bytes are usually there already (the socket turned
        // readable): then no timer is made for the read.
        let read = match conn.stream.read_buf(&mut buf).now_or_never() {
            Some(r) => Some(r),
            None => timeout_at(deadline, conn.stream.read_buf(&mut buf))
                .await
                .ok(),
        };
        match read {
            Some(Ok(n)) if n > 0 => {}
            _ => {
                buffers::give(buf);
                return Next::Close;
            }
        }
    };
    let mut record = plan.record.take();
    let whole = plan.head_len + plan.body_len;
    let keep = match read_body(conn.stream, &mut buf, whole, forwarder.limits.body_timeout).await {
        Ok(()) => {
            // The body is sent from where it was read: draining the head
            // first would move the whole body (1 MiB of memmove per upload).
            let body = &buf[plan.head_len..whole];
            let keep = forward(&mut conn, forwarder, &plan, body, &mut record).await;
            buf.drain(..whole);
            keep && !plan.close
        }
        Err(cut) => {
            body_cut(&mut conn, forwarder, &mut plan, cut, &mut record).await;
            false
        }
    };
    if let (Some(r), Some(log)) = (record, &forwarder.access_log) {
        log.write(r);
    }
    buffers::give(plan.request);
    next(keep, buf)
}

/// Why a request body was not read whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyCut {
    /// The client closed (or broke) its connection first.
    Aborted,
    /// Nothing came for `client_body_timeout`.
    TimedOut,
}

/// Reads until `buf` holds `whole` bytes (the head and its body), each read
/// within `limit` of the one before, as nginx's `client_body_timeout`.
async fn read_body(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    whole: usize,
    limit: Duration,
) -> Result<(), BodyCut> {
    if buf.len() >= whole {
        return Ok(());
    }
    // One allocation for the body, not a doubling per read.
    buf.reserve_exact(whole - buf.len());
    while buf.len() < whole {
        let read = match stream.try_read_buf(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match timeout(limit, stream.read_buf(buf)).await {
                    Ok(r) => r,
                    Err(_) => return Err(BodyCut::TimedOut),
                }
            }
            r => r,
        };
        match read {
            Ok(n) if n > 0 => {}
            _ => return Err(BodyCut::Aborted),
        }
    }
    Ok(())
}

/// A body that did not arrive: no server was picked, so none is blamed. A
/// client that left is logged as 499 (nothing to answer); one that went
/// silent gets a 408 and the connection closes.
async fn body_cut(
    conn: &mut Side<'_>,
    f: &Forwarder,
    plan: &mut Plan,
    cut: BodyCut,
    record: &mut Option<Box<Record>>,
) {
    let exchange = f.stats.request();
    match cut {
        BodyCut::Aborted => {
            exchange.answered(499);
            if let Some(r) = record.as_mut() {
                r.finish(499, 0, 0);
            }
        }
        BodyCut::TimedOut => {
            exchange.answered(408);
            plan.close = true;
            let text = format!(
                "408 Request Timeout: no request body data for {:?} (client_body_timeout)\n",
                f.limits.body_timeout
            );
            answer(
                conn,
                plan,
                hyper::StatusCode::REQUEST_TIMEOUT,
                &text,
                record,
            )
            .await;
        }
    }
}

/// Whether this path takes the request at the start of `buf`, and if so where
/// it goes and what the server gets.
fn plan(f: &Forwarder, health: Option<&HealthUri>, client: &Client, buf: &[u8]) -> Planned {
    let mut storage = head::header_storage();
    let head = match head::parse_request(buf, &mut storage) {
        Parsed::Request(h) => h,
        Parsed::Partial => return Planned::Partial,
        Parsed::Other => return Planned::Hyper,
    };
    // Over a limit, or no route, or an upstream this path does not speak to:
    // hyper's path answers (431, 414, 404, 502) or forwards.
    if head.headers.len() > f.limits.max_headers || head.target.len() > f.limits.max_uri_length {
        return Planned::Hyper;
    }
    let path = head.target.split('?').next().unwrap_or("/");
    if let Some(h) = health.filter(|h| h.matches(path)) {
        return Planned::Health(Probe {
            head_len: head.len,
            head_request: head.method == head::Method::Head,
            close: head.close,
            ok: h.ok(),
        });
    }
    let Some(target) = f.router.route(host_without_port(head.host), path) else {
        return Planned::Hyper;
    };
    // A body this path reads whole first, or hyper's path streams it (and
    // answers 413 over `max_body_size`).
    let body_len = head.body_len;
    if body_len > 0
        && !(target.request_buffering
            && body_len <= f.limits.request_buffer_size as u64
            && target.max_body_size.is_none_or(|most| body_len <= most))
    {
        return Planned::Hyper;
    }
    let Some(upstream) = f.table.load().by_slot(target.slot).cloned() else {
        return Planned::Hyper;
    };
    let settings = &upstream.settings;
    if settings.scheme != Scheme::Http || settings.protocol != UpstreamProtocol::Http1 {
        return Planned::Hyper;
    }
    let key = request_key(&upstream, &head, client.addr.ip());
    let mut request = buffers::take();
    head::write_upstream_request(
        &head,
        client.ip.as_bytes(),
        f.proto.as_bytes(),
        &mut request,
    );
    let sent_id = head.header("x-request-id");
    let made_id = (sent_id.is_none() && f.request_id).then(new_request_id);
    if let Some(id) = &made_id {
        head::put_header(&mut request, b"x-request-id", id);
    }
    if f.forwarded {
        let host = Some(head.host.as_bytes()).filter(|h| !h.is_empty());
        let element = forwarded_element(client.addr.ip(), host, f.proto.as_bytes());
        head::put_header(&mut request, b"forwarded", &element);
    }
    request.extend_from_slice(b"\r\n");
    let record = f.access_log.as_ref().map(|_| {
        let mut r = Record::start(client.addr);
        r.set(Text::Method, head.method.as_bytes());
        r.set(Text::Uri, head.target.as_bytes());
        let host = host_without_port(head.host).unwrap_or_default();
        r.set(Text::Host, host.as_bytes());
        let id = made_id.as_ref().map(|id| &id[..]).or(sent_id);
        r.set(Text::RequestId, id.unwrap_or_default());
        r.set(
            Text::UserAgent,
            head.header("user-agent").unwrap_or_default(),
        );
        r.set(Text::Referer, head.header("referer").unwrap_or_default());
        r
    });
    Planned::Forward(Plan {
        head_len: head.len,
        body_len: body_len as usize,
        replayable: head.method.idempotent() || settings.retry.non_idempotent,
        head_request: head.method == head::Method::Head,
        close: head.close,
        slot: target.slot,
        upstream,
        key,
        request,
        record,
    })
}

/// Tries servers as the upstream's retry policy allows (the exchange core)
/// and relays the first response. Returns whether the client connection stays
/// open.
async fn forward(
    conn: &mut Side<'_>,
    f: &Forwarder,
    plan: &Plan,
    body: &[u8],
    record: &mut Option<Box<Record>>,
) -> bool {
    let exchange = f.stats.request();
    let upstream = &plan.upstream;
    let route = Route {
        table: &f.table,
        upstream,
        slot: plan.slot,
        key: plan.key,
    };
    let mut transport = RawTransport {
        plan,
        body,
        sent: false,
        client: ClientSide {
            head_request: plan.head_request,
            close: plan.close || *conn.shutdown.borrow(),
            date: date::now,
        },
        timer: conn.response_timer,
    };
    match exchange::run(&route, &mut transport, record).await {
        Ok(answered) => {
            let status = answered.response.head.status;
            exchange.answered(status);
            let mut sent = (0, 0);
            let keep = relay(conn, &upstream.settings, answered, &mut sent).await;
            if let Some(r) = record.as_mut() {
                r.finish(status, sent.0, sent.1);
            }
            keep
        }
        Err((status, text)) => {
            exchange.answered(status.as_u16());
            answer(conn, plan, status, &text, record).await
        }
    }
}

/// This path's transport: the planned request's bytes, written on a raw
/// pooled or new connection, and the response head read and parsed here.
struct RawTransport<'a, 'b> {
    plan: &'a Plan,
    /// The request's body, read whole.
    body: &'a [u8],
    /// A try has sent the request.
    sent: bool,
    client: ClientSide,
    /// The connection's response-head timer, moved forward per request.
    timer: &'b mut Option<Pin<Box<Sleep>>>,
}

impl Transport for RawTransport<'_, '_> {
    type Conn = TcpStream;
    type Response = Response;

    fn checkout(&mut self, server: &Server) -> Option<TcpStream> {
        pool::of(server)?.checkout_raw()
    }

    async fn connect(
        &mut self,
        server: &Arc<Server>,
        settings: &UpstreamSettings,
    ) -> Result<TcpStream, AttemptError> {
        let limit = settings.timeouts.connect;
        open_tcp(server, Instant::now() + limit, limit).await
    }

    fn send(
        &mut self,
        stream: TcpStream,
        server: &Server,
        settings: &UpstreamSettings,
        sent_at: Instant,
    ) -> impl Future<Output = Result<Response, SendError>> {
        self.sent = true;
        // The path's own future, returned as it is: no wrapper around it.
        send(
            stream,
            server,
            settings,
            Outgoing {
                head: &self.plan.request,
                body: self.body,
            },
            self.client,
            sent_at,
            self.timer,
        )
    }

    fn can_send(&self) -> bool {
        // The request is bytes, kept until the exchange is over; whether it
        // may go again is the method's (and the upstream's retry policy).
        !self.sent || self.plan.replayable
    }

    fn status(response: &Response) -> u16 {
        response.head.status
    }
}

/// A server's response, its head read.
struct Response {
    stream: TcpStream,
    /// What was read from the server: the head, then perhaps some body.
    read: Vec<u8>,
    head: ResponseHead,
    /// The head the client gets.
    client_head: Vec<u8>,
    /// How much of the body came with the head.
    body: BodyStart,
}

/// Where a response body stands after the bytes read with its head.
struct BodyStart {
    /// Where it ends within them, if it does.
    end: Option<usize>,
    /// Bytes still to come of a body of known length.
    left: u64,
    /// A chunked body's framing, as far as it was read.
    scan: ChunkedScan,
}

impl BodyStart {
    /// Bad chunked coding in what came with the head is an error here, while
    /// the client has been sent nothing: a retry or a 502, not a cut connection.
    fn of(head: &ResponseHead, read: &[u8]) -> Result<BodyStart, chunked::ChunkedError> {
        let body = head.len;
        let mut scan = ChunkedScan::default();
        let (end, left) = match head.framing {
            Framing::Empty => (Some(body), 0),
            Framing::Length(n) => {
                let have = (read.len() - body) as u64;
                if have >= n {
                    (Some(body + n as usize), 0)
                } else {
                    (None, n - have)
                }
            }
            Framing::Chunked => (scan.feed(&read[body..])?.map(|n| body + n), 0),
            Framing::UntilClose => (None, 0),
        };
        Ok(BodyStart { end, left, scan })
    }
}

/// Most bytes of a server's response head.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// What a try sends: the head as the server gets it, and the body read whole.
#[derive(Clone, Copy)]
struct Outgoing<'a> {
    head: &'a [u8],
    body: &'a [u8],
}

/// Sends the planned request on `stream` and reads the response head.
async fn send(
    mut stream: TcpStream,
    server: &Server,
    settings: &UpstreamSettings,
    request: Outgoing<'_>,
    client: ClientSide,
    sent_at: Instant,
    timer: &mut Option<Pin<Box<Sleep>>>,
) -> Result<Response, SendError> {
    let stats = &server.runtime.stats;
    let Outgoing { head, body } = request;
    let total = head.len() + body.len();
    // Usually the socket takes the whole request at once: no timer then, and
    // no future for the rest.
    let sent = match stream.try_write_vectored(&[IoSlice::new(head), IoSlice::new(body)]) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(SendError::Stale(AttemptError::Io(e))),
    };
    if sent < total {
        let (head_rest, body_rest) = if sent < head.len() {
            (&head[sent..], body)
        } else {
            (&[][..], &body[sent - head.len()..])
        };
        write_rest(
            &mut stream,
            head_rest,
            body_rest,
            settings.timeouts.send,
            sent_at,
        )
        .await?;
    }
    stats.bytes_sent.fetch_add(total as u64, Relaxed);
    let (read, head, client_head, body) =
        read_response_head(&mut stream, server, settings, client, sent_at, timer).await?;
    Ok(Response {
        stream,
        read,
        head,
        client_head,
        body,
    })
}

/// Writes what the socket did not take at once, within `send_timeout` of
/// `sent_at`. A write that fails outright may be a stale connection's.
async fn write_rest(
    stream: &mut TcpStream,
    head: &[u8],
    body: &[u8],
    send_timeout: Duration,
    sent_at: Instant,
) -> Result<(), SendError> {
    let all = async {
        stream.write_all(head).await?;
        stream.write_all(body).await
    };
    match timeout_at(sent_at + send_timeout, all).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SendError::Stale(AttemptError::Io(e))),
        Err(_) => Err(SendError::Failed(AttemptError::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("server read nothing for {send_timeout:?} (send_timeout)"),
        )))),
    }
}

/// Reads the response head (skipping interim ones) within `read_timeout` of
/// `sent_at`, and makes the head the client gets. Nothing at all before the
/// connection broke may be a stale connection's.
async fn read_response_head(
    stream: &mut TcpStream,
    server: &Server,
    settings: &UpstreamSettings,
    client: ClientSide,
    sent_at: Instant,
    timer: &mut Option<Pin<Box<Sleep>>>,
) -> Result<(Vec<u8>, ResponseHead, Vec<u8>, BodyStart), SendError> {
    let stats = &server.runtime.stats;
    let mut deadline = armed(timer, sent_at + settings.timeouts.read);
    let mut read = buffers::take();
    let mut client_head = buffers::take();
    loop {
        read.reserve(buffers::READ);
        let outcome = tokio::select! {
            biased;
            r = stream.read_buf(&mut read) => Ok(r),
            () = &mut deadline => Err(()),
        };
        match outcome {
            Ok(Ok(0)) if read.is_empty() => {
                let e = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before the response",
                );
                return failed(read, client_head, SendError::Stale(AttemptError::Io(e)));
            }
            Ok(Ok(0)) => {
                let e = AttemptError::Response(
                    "connection closed in the middle of the response head".into(),
                );
                return failed(read, client_head, SendError::Failed(e));
            }
            Ok(Ok(n)) => {
                stats.bytes_received.fetch_add(n as u64, Relaxed);
            }
            Ok(Err(e)) if read.is_empty() => {
                return failed(read, client_head, SendError::Stale(AttemptError::Io(e)));
            }
            Ok(Err(e)) => return failed(read, client_head, SendError::Failed(AttemptError::Io(e))),
            Err(_) => {
                let e = AttemptError::ResponseTimeout(settings.timeouts.read);
                return failed(read, client_head, SendError::Failed(e));
            }
        }
        loop {
            match head::parse_response(&read, client, &mut client_head) {
                Ok(ParsedResponse::Final(head)) => {
                    return match BodyStart::of(&head, &read) {
                        Ok(body) => Ok((read, head, client_head, body)),
                        Err(e) => {
                            let e = AttemptError::Response(e.to_string());
                            failed(read, client_head, SendError::Failed(e))
                        }
                    };
                }
                Ok(ParsedResponse::Interim(len)) => {
                    read.drain(..len);
                }
                Ok(ParsedResponse::Partial) if read.len() < MAX_RESPONSE_HEAD => break,
                Ok(ParsedResponse::Partial) => {
                    let e = AttemptError::Response(format!(
                        "response head larger than {MAX_RESPONSE_HEAD} bytes"
                    ));
                    return failed(read, client_head, SendError::Failed(e));
                }
                Err(e) => {
                    let e = AttemptError::Response(e.to_string());
                    return failed(read, client_head, SendError::Failed(e));
                }
            }
        }
    }
}

fn failed<T>(read: Vec<u8>, client_head: Vec<u8>, e: SendError) -> Result<T, SendError> {
    buffers::give(read);
    buffers::give(client_head);
    Err(e)
}

/// Sends the response to the client as its head framed it. Returns whether the
/// client connection stays open.
async fn relay(
    conn: &mut Side<'_>,
    settings: &UpstreamSettings,
    answered: Answered<Response>,
    sent: &mut (u64, u64),
) -> bool {
    let Answered {
        response:
            Response {
                stream: mut upstream,
                mut read,
                head,
                client_head,
                body,
            },
        mut attempt,
        header_time,
    } = answered;
    let end = body.end;
    let first = &read[head.len..end.unwrap_or(read.len())];
    // Bytes past the response: the connection is out of step; not reused.
    let mut clean = end.is_none_or(|e| e == read.len());
    let written = write_two(conn.stream, &client_head, first, conn.send_timeout).await;
    let head_len = client_head.len() as u64;
    buffers::give(client_head);
    if written.is_err() {
        return give_up(read);
    }
    *sent = (head_len, first.len() as u64);
    if end.is_some() {
        // The whole body came with the head: its response time is the head's
        // (one clock read fewer for a small response).
        attempt.finished_in(header_time);
    } else {
        let mut stream = BodyStream {
            upstream: &mut upstream,
            framing: head.framing,
            left: body.left,
            scan: body.scan,
            read_timeout: settings.timeouts.read,
            send_timeout: conn.send_timeout,
        };
        match stream
            .relay(conn.stream, &mut read, &mut attempt, sent)
            .await
        {
            Some(c) => clean = c,
            None => return give_up(read),
        }
        attempt.finished();
    }
    buffers::give(read);
    if head.reusable
        && clean
        && let Some(pool) = pool::of(attempt.server())
    {
        pool.checkin_raw(upstream);
    }
    drop(attempt);
    // A body delimited by the server's close: the client's head said
    // `connection: close`, and the close is what ends the body for it too.
    head.framing != Framing::UntilClose
}

/// The rest of a response body, after what came with its head.
struct BodyStream<'a> {
    upstream: &'a mut TcpStream,
    framing: Framing,
    /// Bytes still to come of a body of known length.
    left: u64,
    scan: ChunkedScan,
    read_timeout: Duration,
    /// `client_send_timeout`.
    send_timeout: Duration,
}

impl BodyStream<'_> {
    /// Copies the body to `client` as it comes, up to its end. Returns whether
    /// the server's connection is still in step (nothing read past the body),
    /// or `None` when the exchange broke: a server's fault is counted on
    /// `attempt`; a client that went away is not.
    async fn relay(
        &mut self,
        client: &mut TcpStream,
        read: &mut Vec<u8>,
        attempt: &mut Attempt,
        sent: &mut (u64, u64),
    ) -> Option<bool> {
        let stats = &attempt.server().runtime.stats;
        loop {
            read.clear();
            read.reserve(buffers::BODY);
            let n = match timeout(self.read_timeout, self.upstream.read_buf(read)).await {
                Ok(Ok(0)) if self.framing == Framing::UntilClose => return Some(true),
                Ok(Ok(n)) if n > 0 => n,
                outcome => {
                    let error = match outcome {
                        Ok(Ok(_)) => "connection closed before the end of the body".to_string(),
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => {
                            format!("no body data for {:?} (read_timeout)", self.read_timeout)
                        }
                    };
                    attempt.failed(Fault::Server, &format!("response body broken: {error}"));
                    return None;
                }
            };
            stats.bytes_received.fetch_add(n as u64, Relaxed);
            // How much of this read is body, and whether the body ends with it.
            let (part, done) = match self.framing {
                Framing::Length(_) => {
                    let take = self.left.min(n as u64);
                    self.left -= take;
                    (take as usize, self.left == 0)
                }
                Framing::Chunked => match self.scan.feed(read) {
                    Ok(Some(e)) => (e, true),
                    Ok(None) => (n, false),
                    Err(e) => {
                        attempt.failed(Fault::Server, &format!("bad response body: {e}"));
                        return None;
                    }
                },
                Framing::Empty | Framing::UntilClose => (n, false),
            };
            if write_two(client, &read[..part], &[], self.send_timeout)
                .await
                .is_err()
            {
                return None;
            }
            sent.1 += part as u64;
            if done {
                return Some(part == n);
            }
        }
    }
}

/// The exchange broke after the client got the head (or the client went away):
/// the client connection closes, as hyper's path does.
fn give_up(read: Vec<u8>) -> bool {
    buffers::give(read);
    false
}

/// Writes `a` then `b`, in one system call when the socket takes them.
async fn write_two(stream: &mut TcpStream, a: &[u8], b: &[u8], limit: Duration) -> io::Result<()> {
    let (mut a, mut b) = (a, b);
    while !a.is_empty() || !b.is_empty() {
        let n = match stream.try_write_vectored(&[IoSlice::new(a), IoSlice::new(b)]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            // The client is not taking bytes: wait, but not past
            // `client_send_timeout` (a timer only then).
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match timeout(limit, stream.writable()).await {
                    Ok(ready) => ready?,
                    Err(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("the client took nothing for {limit:?} (client_send_timeout)"),
                        ));
                    }
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    Ok(())
}

/// An answer of switchyard's own (502, 504), as the hyper path words it.
async fn answer(
    conn: &mut Side<'_>,
    plan: &Plan,
    status: hyper::StatusCode,
    text: &str,
    record: &mut Option<Box<Record>>,
) -> bool {
    let close = plan.close || *conn.shutdown.borrow();
    let mut out = buffers::take();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ");
    out.extend_from_slice(text.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    out.extend_from_slice(&date::now());
    if close {
        out.extend_from_slice(b"\r\nconnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    let body = if plan.head_request { "" } else { text };
    let ok = write_two(conn.stream, &out, body.as_bytes(), conn.send_timeout)
        .await
        .is_ok();
    if let Some(r) = record.as_mut() {
        r.finish(status.as_u16(), out.len() as u64, body.len() as u64);
    }
    buffers::give(out);
    ok && !close
}

/// A request for the listener's `health_uri`.
struct Probe {
    head_len: usize,
    head_request: bool,
    close: bool,
    /// 200, or 503 (shutting down).
    ok: bool,
}

/// What the connection does after an exchange: `buf` holds the bytes the
/// client sent beyond it (a pipelined request), kept for the next one.
fn next(keep: bool, buf: Vec<u8>) -> Next {
    match (keep, buf.is_empty()) {
        (true, false) => Next::KeepAlive(buf),
        (keep, _) => {
            buffers::give(buf);
            if keep {
                Next::KeepAlive(Vec::new())
            } else {
                Next::Close
            }
        }
    }
}

/// Answers a `health_uri` request (not forwarded, not counted).
async fn health(conn: &mut Side<'_>, probe: Probe, mut buf: Vec<u8>) -> Next {
    let close = probe.close || *conn.shutdown.borrow();
    let mut out = buffers::take();
    readiness::write_h1(probe.ok, probe.head_request, close, &date::now(), &mut out);
    let keep = write_two(conn.stream, &out, &[], conn.send_timeout)
        .await
        .is_ok()
        && !close;
    buffers::give(out);
    buf.drain(..probe.head_len);
    next(keep, buf)
}

/// Buffers for the exchanges in flight on this worker, reused from one request
/// to the next, so a request allocates none and an idle connection holds none.
mod buffers {
    use super::RefCell;

    /// Room made before each read of a head.
    pub const READ: usize = 4 * 1024;
    /// Room made before each read of a body.
    pub const BODY: usize = 64 * 1024;
    /// Buffers kept per worker; more are freed.
    const KEPT: usize = 64;
    /// A buffer that grew past this (a large head) is freed, not kept.
    const LARGEST_KEPT: usize = 128 * 1024;

    thread_local! {
        static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    pub fn take() -> Vec<u8> {
        FREE.with(|f| f.borrow_mut().pop())
            .unwrap_or_else(|| Vec::with_capacity(READ))
    }

    pub fn give(mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > LARGEST_KEPT {
            return;
        }
        buf.clear();
        FREE.with(|f| {
            let mut f = f.borrow_mut();
            if f.len() < KEPT {
                f.push(buf);
            }
        });
    }
}

/// The `Date` header's value, formatted once a second per worker.
mod date {
    use super::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    pub const LEN: usize = 29;

    thread_local! {
        static CACHED: RefCell<(u64, [u8; LEN])> = const { RefCell::new((u64::MAX, [b' '; LEN])) };
    }

    pub fn now() -> [u8; LEN] {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != second {
                let text = httpdate::fmt_http_date(now);
                let bytes = text.as_bytes();
                if bytes.len() == LEN {
                    c.1.copy_from_slice(bytes);
                }
                c.0 = second;
            }
            c.1
        })
    }
}
