//! Keep-alive connections to one server.
//!
//! Each server owns its pool (it lives in the server's runtime, so it survives
//! snapshot swaps and goes away with the server; the runtime holds it as
//! [`IdleConnections`] and knows nothing of what is inside, see [`of`]). That gives drain and remove a
//! direct handle: [`Pool::clear`] closes a server's idle connections the moment it
//! stops taking traffic. The idle stack is a lock-free queue, so checking a
//! connection in or out takes no lock on the request path. Its storage grows
//! with use (in blocks of 31, so a server that keeps 3 connections costs 3, not
//! `keepalive`), which is what lets the default cap be large: a connection that
//! comes back is kept, as HAProxy and Envoy keep theirs, instead of closed and
//! opened again when more clients are in flight than the cap allows.
//!
//! An HTTP/1.1 connection is only ever in the pool while idle: it is checked back
//! in when its response body has been read to the end, never earlier, so a new
//! request never waits behind another one's body.
//!
//! With several workers (one runtime per thread, see `cli`), the idle stack is
//! split per worker: a connection is driven by a task on the worker that opened
//! it, so a request reusing it from another worker would wake that thread twice
//! (request in, response back). Each worker checks connections in and out of its
//! own shard only, as every nginx worker keeps its own `keepalive` cache.
//!
//! The plain HTTP/1.1 path (`h1`) drives its server connections itself, without
//! hyper's client: those idle in queues of their own (`checkout_raw`), by the
//! same rules (per worker, `keepalive` each, `idle_timeout`, cleared with the
//! others).
//!
//! An HTTP/2 connection carries many requests at once, so it is not checked out
//! and in: the pool keeps one shared connection per server (behind an `ArcSwap`,
//! read without a lock) that every request clones. Only opening a new one takes a
//! lock ([`Pool::h2_connect_gate`]), so that a burst of first requests opens one
//! connection, not one each.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use crossbeam_queue::SegQueue;
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper::{Request, Response};

use super::request_body::UpstreamBody;
use crate::upstream::{IdleConnections, Server};

/// The sending half of a connection to a server.
#[derive(Debug)]
pub enum Sender {
    H1(http1::SendRequest<UpstreamBody>),
    H2(http2::SendRequest<UpstreamBody>),
}

impl Sender {
    pub async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::H1(s) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        }
    }

    pub fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    pub fn is_h2(&self) -> bool {
        matches!(self, Sender::H2(_))
    }

    /// Sends `req` and waits for the response head; on failure, the request
    /// comes back if it was never sent. (Not boxed: one allocation less per
    /// request.)
    pub async fn send(
        &mut self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<UpstreamBody>>> {
        match self {
            Sender::H1(s) => s.try_send_request(req).await,
            Sender::H2(s) => s.try_send_request(req).await,
        }
    }
}

/// How many workers the pools of servers created from now on are split for.
static SHARDS: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// The worker this thread is (0: the main thread, and any other thread).
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// Sets the number of workers (before the table is opened: pools made earlier
/// keep one shard, which stays correct, only shared).
pub fn set_workers(n: usize) {
    SHARDS.store(n.max(1), Ordering::Relaxed);
}

/// Marks the calling thread as worker `i` (its idle connections are its own).
pub fn set_worker(i: usize) {
    SHARD.with(|s| s.set(i));
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

/// One worker's idle connections of one kind, made on first use.
type Shards<C> = Box<[OnceLock<SegQueue<Idle<C>>>]>;

/// Idle connections to one server.
pub struct Pool {
    /// One per worker; each created on the worker's first check-in, so a server
    /// that never takes traffic (a backup, a big table) costs no queue; never
    /// created when `keepalive = 0`.
    idle: Shards<Sender>,
    /// Connections of the plain HTTP/1.1 path, driven without hyper.
    raw: Shards<tokio::net::TcpStream>,
    max_idle: usize,
    idle_timeout: Duration,
    /// The shared HTTP/2 connection, when the server speaks HTTP/2.
    h2: ArcSwapOption<http2::SendRequest<UpstreamBody>>,
    h2_gate: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &self.idle_len())
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

/// The pool of `server`, made on first use with its upstream's keep-alive
/// settings. `None` only if something else was stored there (never).
#[inline]
pub fn of(server: &Server) -> Option<&Pool> {
    server
        .runtime
        .pool
        .get_or_init(|k| Pool::new(k.max_idle, k.idle_timeout))
}

impl IdleConnections for Pool {
    fn clear(&self) {
        Pool::clear(self);
    }
    fn sweep(&self) {
        Pool::sweep(self);
    }
    fn idle_len(&self) -> usize {
        Pool::idle_len(self)
    }
}

impl Pool {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Pool {
        Pool {
            idle: shards(),
            raw: shards(),
            max_idle,
            idle_timeout,
            h2: ArcSwapOption::empty(),
            h2_gate: tokio::sync::Mutex::new(()),
        }
    }

    /// The shared HTTP/2 connection if it is open, else an idle HTTP/1.1 one that
    /// is still open and younger than the idle timeout.
    pub fn checkout(&self) -> Option<Sender> {
        if let Some(h2) = self.h2.load().as_ref()
            && !h2.is_closed()
        {
            return Some(Sender::H2((**h2).clone()));
        }
        pop_fresh(&self.idle, self.idle_timeout, |s| !s.is_closed())
    }

    /// An idle connection of the plain HTTP/1.1 path that is younger than the
    /// idle timeout and not known to be closed. Whether the server closed it is
    /// read from the readiness the runtime already has (no system call): a
    /// closed socket has turned readable; one that is still open has not.
    pub fn checkout_raw(&self) -> Option<tokio::net::TcpStream> {
        pop_fresh(&self.raw, self.idle_timeout, |conn| {
            let mut probe = [0u8; 1];
            matches!(conn.try_read(&mut probe),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
    }

    /// Returns a connection of the plain HTTP/1.1 path whose exchange ended
    /// cleanly; dropped (closed) when the pool is full or keep-alive is off.
    pub fn checkin_raw(&self, conn: tokio::net::TcpStream) {
        push_idle(&self.raw, self.max_idle, conn);
    }

    /// Held while opening an HTTP/2 connection: whoever waited on it checks the
    /// pool again before opening another.
    pub async fn h2_connect_gate(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.h2_gate.lock().await
    }

    /// Returns a connection whose exchange has finished. An HTTP/1.1 one is
    /// dropped (and so closed) when the pool is full or keep-alive is off; an
    /// HTTP/2 one becomes the shared one unless there is an open one already.
    pub fn checkin(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let sender = match sender {
            Sender::H2(h2) => {
                if self.h2.load().as_ref().is_none_or(|s| s.is_closed()) {
                    self.h2.store(Some(Arc::new(h2)));
                }
                return;
            }
            h1 => h1,
        };
        push_idle(&self.idle, self.max_idle, sender);
    }

    /// Closes every idle connection (server removed, drained or set down).
    pub fn clear(&self) {
        self.h2.store(None);
        clear(&self.idle);
        clear(&self.raw);
    }

    /// Closes idle connections that timed out or that the server closed.
    pub fn sweep(&self) {
        if self.h2.load().as_ref().is_some_and(|s| s.is_closed()) {
            self.h2.store(None);
        }
        sweep(&self.idle, self.idle_timeout, |s| !s.is_closed());
        // A closed raw connection is found when it is checked out.
        sweep(&self.raw, self.idle_timeout, |_| true);
    }

    pub fn idle_len(&self) -> usize {
        idle_in(&self.idle) + idle_in(&self.raw)
    }
}

fn shards<C>() -> Shards<C> {
    (0..SHARDS.load(Ordering::Relaxed).max(1))
        .map(|_| OnceLock::new())
        .collect()
}

/// The calling worker's idle stack.
fn shard<C>(shards: &Shards<C>) -> &OnceLock<SegQueue<Idle<C>>> {
    let i = SHARD.with(Cell::get);
    &shards[i % shards.len()]
}

/// The calling worker's oldest idle connection that is younger than
/// `idle_timeout` and `open`; those it passes on the way are dropped (closed).
fn pop_fresh<C>(
    shards: &Shards<C>,
    idle_timeout: Duration,
    open: impl Fn(&C) -> bool,
) -> Option<C> {
    let idle = shard(shards).get()?;
    while let Some(idle) = idle.pop() {
        if idle.since.elapsed() < idle_timeout && open(&idle.conn) {
            return Some(idle.conn);
        }
    }
    None
}

/// Into the calling worker's idle queue; dropped (closed) when it is full or
/// keep-alive is off (`max_idle` 0, and then no queue is made).
fn push_idle<C>(shards: &Shards<C>, max_idle: usize, conn: C) {
    if max_idle == 0 {
        return;
    }
    let idle = shard(shards).get_or_init(SegQueue::new);
    // Only this worker pushes to its queue, so the count cannot overshoot by
    // more than what a sweep on another thread puts back.
    if idle.len() >= max_idle {
        return;
    }
    idle.push(Idle {
        conn,
        since: Instant::now(),
    });
}

fn clear<C>(shards: &Shards<C>) {
    for idle in shards.iter().filter_map(OnceLock::get) {
        while idle.pop().is_some() {}
    }
}

fn idle_in<C>(shards: &Shards<C>) -> usize {
    shards
        .iter()
        .filter_map(OnceLock::get)
        .map(SegQueue::len)
        .sum()
}

fn sweep<C>(shards: &Shards<C>, idle_timeout: Duration, open: impl Fn(&C) -> bool) {
    for idle in shards.iter().filter_map(OnceLock::get) {
        for _ in 0..idle.len() {
            let Some(conn) = idle.pop() else { break };
            if conn.since.elapsed() < idle_timeout && open(&conn.conn) {
                idle.push(conn);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` open client connections, and their server ends (kept open).
    async fn connections(n: usize) -> (Vec<tokio::net::TcpStream>, Vec<tokio::net::TcpStream>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mut clients, mut servers) = (Vec::new(), Vec::new());
        for _ in 0..n {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            servers.push(listener.accept().await.unwrap().0);
        }
        (servers, clients)
    }

    #[tokio::test]
    async fn the_default_pool_keeps_every_connection_that_comes_back() {
        let pool = Pool::new(
            crate::config::KeepaliveConfig::default().max_idle,
            Duration::from_secs(60),
        );
        let (_l, conns) = connections(200).await;
        for c in conns {
            pool.checkin_raw(c);
        }
        assert_eq!(pool.idle_len(), 200);
        let mut out = 0;
        while pool.checkout_raw().is_some() {
            out += 1;
        }
        assert_eq!(out, 200);
        assert_eq!(pool.idle_len(), 0);
    }

    #[tokio::test]
    async fn an_explicit_keepalive_caps_the_idle_connections() {
        let pool = Pool::new(10, Duration::from_secs(60));
        let (_l, conns) = connections(25).await;
        for c in conns {
            pool.checkin_raw(c);
        }
        assert_eq!(pool.idle_len(), 10);
        let off = Pool::new(0, Duration::from_secs(60));
        let (_l2, conns) = connections(3).await;
        for c in conns {
            off.checkin_raw(c);
        }
        assert_eq!(off.idle_len(), 0);
    }

    #[tokio::test]
    async fn idle_connections_older_than_the_timeout_are_swept() {
        let pool = Pool::new(100, Duration::from_millis(1));
        let (_l, conns) = connections(5).await;
        for c in conns {
            pool.checkin_raw(c);
        }
        assert_eq!(pool.idle_len(), 5);
        // Wall-clock age is what the pool compares; 1 ms has surely passed
        // once this sleep returns (no other task is involved).
        tokio::time::sleep(Duration::from_millis(5)).await;
        pool.sweep();
        assert_eq!(pool.idle_len(), 0);
    }
}
