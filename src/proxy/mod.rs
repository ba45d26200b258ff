//! The data plane: listeners, routing, forwarding, retries and connection pools.
//!
//! Clients speak HTTP/1.1 or HTTP/2, in cleartext (HTTP/2 by prior knowledge) or
//! over TLS on listeners with `tls` (HTTP/2 by ALPN). On cleartext listeners,
//! plain keep-alive GETs to plain HTTP/1.1 servers take a path of their own
//! (`h1`); hyper serves everything else (`forward`). Servers are reached over
//! HTTP/1.1 or HTTP/2 (h2 through ALPN, or h2c), in cleartext or TLS, on a pool
//! per server. The proxy reads the
//! upstream table's snapshots and counts into its atomics; it never changes the
//! table (that is the admin side's job, through `Table::apply`).

pub mod access_log;
pub mod body;
mod connect;
mod error;
mod exchange;
mod forward;
mod h1;
mod io;
mod listener;
pub mod pool;
pub mod readiness;
mod request;
pub mod request_body;
mod rewind;
mod router;
mod spread;
pub mod stats;
mod upgrade;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::{Config, ListenerConfig};
use crate::tls::{ListenerTls, TlsReloader};
use crate::upstream::Table;
pub use error::ProxyError;

/// The plain path's framing invariants, for the cargo-fuzz target in `fuzz/`
/// (each function panics when an invariant breaks; see SECURITY.md).
#[doc(hidden)]
pub mod fuzzing {
    pub use super::h1::checks::{chunked, request, response};
}
pub use listener::Forwarder;
use listener::Listening;
pub use readiness::Readiness;
pub use router::Router;
use stats::ListenerStats;

/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One bound listener, not serving yet.
struct Bound {
    /// The configured address (its identity across reloads).
    listen: SocketAddr,
    /// Accepted on by the runtime that runs the proxy.
    socket: TcpListener,
    /// One more socket on the same address per extra worker (`SO_REUSEPORT`: the
    /// kernel spreads new connections over them), each registered with its
    /// worker's runtime when it starts serving.
    extra: Vec<std::net::TcpListener>,
    live: Arc<ArcSwap<Listening>>,
}

async fn bind_one(
    l: &ListenerConfig,
    table: &Arc<Table>,
    workers: usize,
    readiness: &Arc<Readiness>,
) -> Result<Bound, ProxyError> {
    // `max_connections` (the number of the listener's start: a reload keeps
    // it): one count for all the workers' sockets, kept with its counters.
    let stats = Arc::new(ListenerStats::new(l.listen, l.limits.max_connections));
    // Certificates first: a listener is not bound with files that fail.
    let listening = Listening::new(l, table, Arc::clone(&stats), readiness)?;
    let (socket, extra) =
        bind_sockets(l.listen, workers)
            .await
            .map_err(|source| ProxyError::Bind {
                addr: l.listen,
                source,
            })?;
    if let Ok(local) = socket.local_addr() {
        stats.set_local(local);
    }
    Ok(Bound {
        listen: l.listen,
        socket,
        extra,
        live: Arc::new(ArcSwap::from_pointee(listening)),
    })
}

/// The listening socket, and `extra` more on the same address for the extra
/// workers. A port in use by anyone is an error, as with a plain bind: with
/// `SO_REUSEPORT` alone, a second switchyard (same user) on the same port would
/// silently share it, so a plain bind is tried first and closed at once.
async fn bind_sockets(
    addr: SocketAddr,
    extra: usize,
) -> std::io::Result<(TcpListener, Vec<std::net::TcpListener>)> {
    if extra == 0 || !cfg!(unix) {
        return Ok((TcpListener::bind(addr).await?, Vec::new()));
    }
    if addr.port() != 0 {
        drop(TcpListener::bind(addr).await?);
    }
    let first = reuseport_listener(addr)?;
    // Port 0: the others join the port the first one got.
    let addr = first.local_addr()?;
    let mut more = Vec::with_capacity(extra);
    for _ in 0..extra {
        more.push(reuseport_listener(addr)?.into_std()?);
    }
    Ok((first, more))
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does on Unix.
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The accept queue of each `SO_REUSEPORT` socket (the kernel caps it at
/// `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

/// Listeners bound and ready to serve.
pub struct Proxy {
    listeners: Vec<Bound>,
    handle: ProxyHandle,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Every in-flight request finished within the grace period.
    Clean,
    /// The grace period ran out; this many connections were cut.
    GraceExpired(usize),
}

/// A serving listener.
struct Live {
    listen: SocketAddr,
    local: Option<SocketAddr>,
    live: Arc<ArcSwap<Listening>>,
    stop: watch::Sender<bool>,
    /// Its accept loops: the proxy's runtime's, then one per extra worker.
    tasks: Vec<JoinHandle<usize>>,
}

#[derive(Default)]
struct Running {
    serving: bool,
    listeners: Vec<Live>,
    /// Listeners a reload removed, finishing their in-flight requests.
    retired: Vec<JoinHandle<usize>>,
}

struct Shared {
    table: Arc<Table>,
    /// The extra workers' runtimes (see `cli`): each accepts on its own socket
    /// of every listener and serves those connections itself.
    workers: Vec<tokio::runtime::Handle>,
    reloader: TlsReloader,
    grace: Duration,
    /// `[runtime] shutdown_delay`: listeners keep accepting this long after the
    /// shutdown signal, while readiness says 503.
    delay: Duration,
    readiness: Arc<Readiness>,
    running: tokio::sync::Mutex<Running>,
}

/// Changes the listeners of a running [`Proxy`] (hot reload). Cloneable.
#[derive(Clone)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
}

/// A reload's listeners, bound and built, not yet in service. Dropping it
/// changes nothing (new sockets close).
pub struct Prepared {
    kept: Vec<(usize, Listening)>,
    added: Vec<Bound>,
    removed: Vec<usize>,
    tls: Vec<Arc<ListenerTls>>,
}

/// What a reload did to the listeners, by bound address.
#[derive(Debug, Clone, Default)]
pub struct ListenerChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub kept: Vec<String>,
}

fn shown(local: Option<SocketAddr>, listen: SocketAddr) -> String {
    local.unwrap_or(listen).to_string()
}

impl ProxyHandle {
    /// Builds what `new` asks of the listeners: a listener whose `listen` is
    /// unchanged is kept (new routes, limits and TLS); others are bound now. Any
    /// failure (a port taken, a certificate that does not load) is returned and
    /// nothing changes.
    pub async fn prepare(&self, new: &Config) -> Result<Prepared, ProxyError> {
        let running = self.shared.running.lock().await;
        if !running.serving {
            return Err(ProxyError::NotServing);
        }
        let table = &self.shared.table;
        let mut used = vec![false; running.listeners.len()];
        let mut p = Prepared {
            kept: Vec::new(),
            added: Vec::new(),
            removed: Vec::new(),
            tls: Vec::new(),
        };
        for l in &new.listeners {
            let same =
                (0..used.len()).find(|&i| !used[i] && running.listeners[i].listen == l.listen);
            match same {
                Some(i) => {
                    used[i] = true;
                    let stats = Arc::clone(&running.listeners[i].live.load().forwarder.stats);
                    let listening = Listening::new(l, table, stats, &self.shared.readiness)?;
                    p.tls.extend(listening.tls.clone());
                    p.kept.push((i, listening));
                }
                None => {
                    let b = bind_one(l, table, self.shared.workers.len(), &self.shared.readiness)
                        .await?;
                    p.tls.extend(b.live.load().tls.clone());
                    p.added.push(b);
                }
            }
        }
        p.removed = (0..used.len()).filter(|&i| !used[i]).collect();
        Ok(p)
    }

    /// Puts `p` in service: kept listeners swap what they serve with, new ones
    /// start accepting, removed ones stop accepting and finish their in-flight
    /// requests (within the shutdown grace period).
    pub async fn commit(&self, p: Prepared) -> ListenerChanges {
        let mut running = self.shared.running.lock().await;
        let mut out = ListenerChanges::default();
        if !running.serving {
            return out;
        }
        for (i, listening) in p.kept {
            if let Some(l) = running.listeners.get(i) {
                l.live.store(Arc::new(listening));
                out.kept.push(shown(l.local, l.listen));
            }
        }
        let mut removed = p.removed;
        removed.sort_unstable_by(|a, b| b.cmp(a));
        for i in removed {
            if i < running.listeners.len() {
                let l = running.listeners.remove(i);
                let _ = l.stop.send(true);
                info!(listen = %shown(l.local, l.listen), "listener removed; in-flight requests finish");
                out.removed.push(shown(l.local, l.listen));
                running.retired.extend(l.tasks);
            }
        }
        for b in p.added {
            let live = self.spawn(b);
            info!(listen = %shown(live.local, live.listen), "listener added");
            out.added.push(shown(live.local, live.listen));
            running.listeners.push(live);
        }
        self.shared.reloader.set(p.tls);
        stats::reloaded();
        out
    }

    fn spawn(&self, b: Bound) -> Live {
        let (stop, stop_rx) = watch::channel(false);
        let local = b.socket.local_addr().ok();
        let grace = self.shared.grace;
        let stats = Arc::clone(&b.live.load().forwarder.stats);
        stats::register(&stats);
        let workers = b.extra.len().min(self.shared.workers.len());
        let mut seats = if workers > 0 {
            spread::Spread::seats(workers + 1)
                .into_iter()
                .map(Some)
                .collect()
        } else {
            vec![None]
        };
        let mut tasks = vec![tokio::spawn(serve_listener(
            b.socket,
            Arc::clone(&b.live),
            stop_rx.clone(),
            grace,
            Arc::clone(&stats),
            seats[0].take(),
        ))];
        let extra = b.extra.into_iter().zip(&self.shared.workers);
        for ((socket, worker), seat) in extra.zip(seats.into_iter().skip(1)) {
            let (live, stop_rx, stats) = (Arc::clone(&b.live), stop_rx.clone(), Arc::clone(&stats));
            tasks.push(worker.spawn(async move {
                // Registered with this worker's runtime, so its connections are
                // served here.
                match TcpListener::from_std(socket) {
                    Ok(socket) => serve_listener(socket, live, stop_rx, grace, stats, seat).await,
                    Err(e) => {
                        warn!(error = %e, "a worker cannot accept on its listener socket");
                        0
                    }
                }
            }));
        }
        Live {
            listen: b.listen,
            local,
            live: b.live,
            stop,
            tasks,
        }
    }
}

impl Proxy {
    /// Binds every listener of `config` (port 0 picks a free port).
    pub async fn bind(config: &Config, table: Arc<Table>) -> Result<Proxy, ProxyError> {
        Proxy::bind_with_workers(config, table, Vec::new()).await
    }

    /// As [`Proxy::bind`], and every listener is also served by each of
    /// `workers` (runtimes of their own threads), on a socket of its own bound
    /// to the same address with `SO_REUSEPORT`.
    pub async fn bind_with_workers(
        config: &Config,
        table: Arc<Table>,
        workers: Vec<tokio::runtime::Handle>,
    ) -> Result<Proxy, ProxyError> {
        let readiness = Arc::new(Readiness::new());
        let mut listeners = Vec::new();
        let mut tls_listeners = Vec::new();
        for l in &config.listeners {
            let b = bind_one(l, &table, workers.len(), &readiness).await?;
            tls_listeners.extend(b.live.load().tls.clone());
            listeners.push(b);
        }
        stats::loaded();
        // Bound: the kernel queues connections from now on, and the accept
        // loops start with `run`.
        readiness.set_serving();
        Ok(Proxy {
            listeners,
            handle: ProxyHandle {
                shared: Arc::new(Shared {
                    table,
                    workers,
                    reloader: TlsReloader::new(tls_listeners),
                    grace: config.runtime.shutdown_grace,
                    delay: config.runtime.shutdown_delay,
                    readiness,
                    running: tokio::sync::Mutex::new(Running::default()),
                }),
            },
        })
    }

    /// The bound addresses, in config order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|b| b.socket.local_addr().ok())
            .collect()
    }

    /// Whether each listener, in config order, terminates TLS.
    pub fn tls_flags(&self) -> Vec<bool> {
        self.listeners
            .iter()
            .map(|b| b.live.load().tls.is_some())
            .collect()
    }

    /// Reloads the certificates of every TLS listener (`SIGHUP`, admin API).
    pub fn tls_reloader(&self) -> TlsReloader {
        self.handle.shared.reloader.clone()
    }

    /// Changes the listeners once running (hot reload).
    pub fn handle(&self) -> ProxyHandle {
        self.handle.clone()
    }

    /// Whether the proxy should be sent traffic (`/readyz`, `health_uri`).
    pub fn readiness(&self) -> Arc<Readiness> {
        Arc::clone(&self.handle.shared.readiness)
    }

    /// Serves until `shutdown` completes; then says it is not ready, keeps
    /// accepting for `shutdown_delay`, stops accepting (new connections are
    /// refused), lets in-flight requests finish within the grace period, and
    /// returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Shutdown {
        let shared = Arc::clone(&self.handle.shared);
        let sweeper = {
            let table = Arc::clone(&shared.table);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    table.sweep_idle();
                }
            })
        };
        {
            let mut running = shared.running.lock().await;
            running.serving = true;
            for b in self.listeners {
                let live = self.handle.spawn(b);
                running.listeners.push(live);
            }
        }
        shutdown.await;
        shared.readiness.set_shutting_down();
        if !shared.delay.is_zero() {
            info!(delay = ?shared.delay, "shutting down: not ready (503) from now on; listeners close after shutdown_delay");
            tokio::time::sleep(shared.delay).await;
        }
        info!("shutting down: no new connections, waiting for in-flight requests");
        let tasks: Vec<JoinHandle<usize>> = {
            let mut running = shared.running.lock().await;
            running.serving = false;
            let listeners = std::mem::take(&mut running.listeners);
            let mut tasks = std::mem::take(&mut running.retired);
            for l in listeners {
                let _ = l.stop.send(true);
                tasks.extend(l.tasks);
            }
            tasks
        };
        let mut cut = 0;
        for t in tasks {
            cut += t.await.unwrap_or(0);
        }
        sweeper.abort();
        if cut == 0 {
            Shutdown::Clean
        } else {
            Shutdown::GraceExpired(cut)
        }
    }
}

/// Accepts on one listener until told to stop; returns how many connections were
/// still open when the grace period ran out. Also keeps this worker's parked
/// idle connections of the listener (`h1::Parked`): wakes them into tasks when
/// their clients send, closes them past `header_timeout` or at shutdown. With
/// several workers (`seat`), a client accepted here while this worker holds
/// more connections than another goes to that one ([`spread`]).
async fn serve_listener(
    listener: TcpListener,
    live: Arc<ArcSwap<Listening>>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    stats: Arc<ListenerStats>,
    seat: Option<spread::Seat>,
) -> usize {
    let (seat, mut inbox) = seat.map(spread::Seat::split).unzip();
    let slots = stats.slots();
    // Each connection task holds a receiver: `true` asks it to finish its
    // exchange in flight and close; the count of receivers is the count of
    // connections being served.
    let (connections, _) = watch::channel(false);
    let (park, mut to_park) = tokio::sync::mpsc::unbounded_channel::<h1::Parked>();
    let mut parked = FuturesUnordered::new();
    let mut sweep = tokio::time::interval(h1::sweep_every(live.load().limits.header_timeout));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // A client accepted while `max_connections` are open waits here, unserved,
    // and further ones wait in the kernel's accept queue. The slot is taken
    // after the accept, not before: with several workers, an accept loop waiting
    // for a client must not hold a slot that another worker's client needs.
    let mut waiting: Option<(tokio::net::TcpStream, SocketAddr)> = None;
    let start = |stream, addr, permit| {
        let shutdown = connections.subscribe();
        start_connection(
            stream,
            addr,
            permit,
            live.load_full(),
            shutdown,
            park.clone(),
        );
    };
    // A slot if there is one; else the client waits (`waiting`).
    let admit = |stream, addr| match Arc::clone(slots).try_acquire_owned() {
        Ok(permit) => {
            start(stream, addr, permit);
            Ok(None)
        }
        Err(tokio::sync::TryAcquireError::NoPermits) => Ok(Some((stream, addr))),
        Err(tokio::sync::TryAcquireError::Closed) => Err(()),
    };
    loop {
        let held = connections.receiver_count() + parked.len();
        if let Some(s) = &seat {
            s.publish(held);
        }
        tokio::select! {
            accepted = listener.accept(), if waiting.is_none() => match accepted {
                Ok((stream, addr)) => {
                    stats.accepted();
                    let Some((stream, addr)) = keep_or_hand(seat.as_ref(), held, stream, addr) else {
                        continue;
                    };
                    match admit(stream, addr) {
                        Ok(w) => waiting = w,
                        Err(()) => break,
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of
                    // spinning; the connections being served will free some.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            permit = Arc::clone(slots).acquire_owned(), if waiting.is_some() => match (permit, waiting.take()) {
                (Ok(permit), Some((stream, addr))) => start(stream, addr, permit),
                _ => break,
            },
            Some((client, addr)) = handed(&mut inbox), if waiting.is_none() => {
                // Registered with this worker's runtime from here on.
                if let Ok(stream) = tokio::net::TcpStream::from_std(client) {
                    match admit(stream, addr) {
                        Ok(w) => waiting = w,
                        Err(()) => break,
                    }
                }
            },
            Some(p) = to_park.recv() => {
                stats.parked(1);
                parked.push(p);
            },
            Some(woken) = parked.next(), if !parked.is_empty() => {
                stats.unparked(1);
                if let Some(idle) = woken {
                    let conn = idle.wake(connections.subscribe(), park.clone());
                    tokio::spawn(serve_cleartext(conn));
                }
            },
            _ = sweep.tick() => {
                let now = crate::clock::now_ms();
                for p in parked.iter_mut() {
                    p.sweep(now);
                }
            },
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    // Idle connections close at once, as hyper closes its idle ones.
    stats.unparked(parked.len() as u64);
    drop(parked);
    drop(to_park);
    let open = connections.receiver_count();
    connections.send_replace(true);
    match tokio::time::timeout(grace, connections.closed()).await {
        Ok(()) => 0,
        Err(_) => {
            warn!(open, "grace period over, closing remaining connections");
            open.max(1)
        }
    }
}

/// A client accepted here, unless another worker holds fewer connections: then
/// it is handed there and `None` returned.
fn keep_or_hand(
    seat: Option<&spread::Place>,
    held: usize,
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    let Some((seat, target)) = seat.and_then(|s| Some((s, s.elsewhere(held)?))) else {
        return Some((stream, addr));
    };
    // Out of this runtime's reactor, to be registered with the other's.
    let client = match stream.into_std() {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, "cannot hand a client to another worker");
            return None;
        }
    };
    match seat.hand(target, (client, addr)) {
        Ok(()) => None,
        Err((client, addr)) => tokio::net::TcpStream::from_std(client)
            .ok()
            .map(|s| (s, addr)),
    }
}

/// The next client another worker handed to this one (never, with one worker).
async fn handed(
    inbox: &mut Option<mpsc::UnboundedReceiver<spread::Handed>>,
) -> Option<spread::Handed> {
    match inbox {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Serves a new client connection in a task of its own: the plain HTTP/1.1
/// path on cleartext listeners, hyper after a TLS handshake.
fn start_connection(
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
    listening: Arc<Listening>,
    shutdown: watch::Receiver<bool>,
    park: tokio::sync::mpsc::UnboundedSender<h1::Parked>,
) {
    let _ = stream.set_nodelay(true);
    let client = request::Client::new(addr);
    let Some(tls) = listening.tls.as_ref().map(|t| t.current()) else {
        if !listening.plain_http1 {
            tokio::spawn(async move {
                forward::serve_hyper(stream, &listening, client, shutdown).await;
                drop(permit);
            });
            return;
        }
        tokio::spawn(serve_cleartext(h1::Conn {
            stream,
            client,
            listening,
            shutdown,
            permit,
            park,
            linger: h1::LINGER,
        }));
        return;
    };
    // The configuration of the moment: a reload changes what later handshakes
    // get, never this connection.
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        let stats = &listening.forwarder.stats;
        let stream =
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    stats.tls_handshake(false);
                    debug!(%addr, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    stats.tls_handshake(false);
                    debug!(%addr, "TLS handshake timed out");
                    return;
                }
            };
        stats.tls_handshake(true);
        forward::serve_hyper(stream, &listening, client, shutdown).await;
        drop(permit);
    });
}

/// A cleartext connection: the plain HTTP/1.1 path, then hyper for the rest of
/// its life if that path hands it over (a request it does not take).
async fn serve_cleartext(conn: h1::Conn) {
    if let Some(h) = h1::serve(conn).await {
        // Boxed: the hyper connection's future is large, and most cleartext
        // connections never get here.
        Box::pin(forward::serve_hyper(
            h.io,
            &h.listening,
            h.client,
            h.shutdown,
        ))
        .await;
        drop(h.permit);
    }
}
