//! The data plane: listeners, routing, forwarding, retries and connection pools.
//!
//! Clients speak HTTP/1.1 or HTTP/2, in cleartext (HTTP/2 by prior knowledge) or
//! over TLS on listeners with `tls` (HTTP/2 by ALPN). Servers are reached over
//! HTTP/1.1 or HTTP/2 (h2 through ALPN, or h2c), in cleartext or TLS, on a pool
//! per server. The proxy reads the
//! upstream table's snapshots and counts into its atomics; it never changes the
//! table (that is the admin side's job, through `Table::apply`).

pub mod body;
mod forward;
mod io;
pub mod pool;
mod router;
mod upgrade;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use crate::config::{ClientLimits, Config};
use crate::tls::{ListenerTls, TlsReloader};
use crate::upstream::Table;
pub use forward::Forwarder;
pub use router::Router;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("listener {addr}: TLS: {reason}")]
    Tls { addr: SocketAddr, reason: String },
}

/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One bound listener.
struct Bound {
    socket: TcpListener,
    forwarder: Arc<Forwarder>,
    tls: Option<Arc<ListenerTls>>,
    limits: ClientLimits,
}

/// Listeners bound and ready to serve.
pub struct Proxy {
    listeners: Vec<Bound>,
    reloader: TlsReloader,
    table: Arc<Table>,
    grace: Duration,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Every in-flight request finished within the grace period.
    Clean,
    /// The grace period ran out; this many connections were cut.
    GraceExpired(usize),
}

impl Proxy {
    /// Binds every listener of `config` (port 0 picks a free port).
    pub async fn bind(config: &Config, table: Arc<Table>) -> Result<Proxy, ProxyError> {
        let mut listeners = Vec::new();
        let mut tls_listeners = Vec::new();
        for l in &config.listeners {
            let router = Router::new(&l.routes, |name| table.slot(name));
            // Certificates first: a listener is not bound with files that fail.
            let tls = match &l.tls {
                Some(t) => Some(Arc::new(ListenerTls::new(l.listen, t).map_err(
                    |reason| ProxyError::Tls {
                        addr: l.listen,
                        reason,
                    },
                )?)),
                None => None,
            };
            let socket = TcpListener::bind(l.listen)
                .await
                .map_err(|source| ProxyError::Bind {
                    addr: l.listen,
                    source,
                })?;
            tls_listeners.extend(tls.clone());
            let forwarder = Forwarder::new(router, Arc::clone(&table), tls.is_some(), l.limits);
            listeners.push(Bound {
                socket,
                forwarder: Arc::new(forwarder),
                tls,
                limits: l.limits,
            });
        }
        Ok(Proxy {
            listeners,
            reloader: TlsReloader::new(tls_listeners),
            table,
            grace: config.runtime.shutdown_grace,
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
        self.listeners.iter().map(|b| b.tls.is_some()).collect()
    }

    /// Reloads the certificates of every TLS listener (`SIGHUP`, admin API).
    pub fn tls_reloader(&self) -> TlsReloader {
        self.reloader.clone()
    }

    /// Serves until `shutdown` completes; then stops accepting (new connections are
    /// refused), lets in-flight requests finish within the grace period, and
    /// returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Shutdown {
        let (stop_tx, stop_rx) = watch::channel(false);
        let sweeper = {
            let table = Arc::clone(&self.table);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    table.sweep_idle();
                }
            })
        };
        let tasks: Vec<_> = self
            .listeners
            .into_iter()
            .map(|b| {
                tokio::spawn(serve_listener(
                    b.socket,
                    b.forwarder,
                    b.tls,
                    b.limits,
                    stop_rx.clone(),
                    self.grace,
                ))
            })
            .collect();
        shutdown.await;
        info!("shutting down: no new connections, waiting for in-flight requests");
        let _ = stop_tx.send(true);
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
/// still open when the grace period ran out.
async fn serve_listener(
    listener: TcpListener,
    forwarder: Arc<Forwarder>,
    tls: Option<Arc<ListenerTls>>,
    limits: ClientLimits,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) -> usize {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_size);
    // hyper keeps up to 100 headers on the stack; another limit costs a heap
    // allocation per request, so it is set only when asked for.
    if limits.max_headers != ClientLimits::default().max_headers {
        builder.http1().max_headers(limits.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX));
    // Past `max_connections`, further clients wait in the kernel's accept queue.
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.changed() => break,
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, client)) => {
                    let _ = stream.set_nodelay(true);
                    let forwarder = Arc::clone(&forwarder);
                    let service = service_fn(move |req| Arc::clone(&forwarder).handle(req, client));
                    match &tls {
                        None => {
                            let conn = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .into_owned();
                            let conn = graceful.watch(conn);
                            tokio::spawn(async move {
                                let _ = conn.await;
                                drop(permit);
                            });
                        }
                        Some(tls) => {
                            // The configuration of the moment: a reload changes
                            // what later handshakes get, never this connection.
                            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                            let watcher = graceful.watcher();
                            let builder = builder.clone();
                            tokio::spawn(async move {
                                let stream = match tokio::time::timeout(
                                    TLS_HANDSHAKE_TIMEOUT,
                                    acceptor.accept(stream),
                                )
                                .await
                                {
                                    Ok(Ok(s)) => s,
                                    Ok(Err(e)) => {
                                        debug!(%client, error = %e, "TLS handshake failed");
                                        return;
                                    }
                                    Err(_) => {
                                        debug!(%client, "TLS handshake timed out");
                                        return;
                                    }
                                };
                                let conn = builder
                                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                    .into_owned();
                                let _ = watcher.watch(conn).await;
                                drop(permit);
                            });
                        }
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of
                    // spinning; the connections being served will free some.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    let open = graceful.count();
    match tokio::time::timeout(grace, graceful.shutdown()).await {
        Ok(()) => 0,
        Err(_) => {
            warn!(open, "grace period over, closing remaining connections");
            open.max(1)
        }
    }
}
