//! The data plane: listeners, routing, forwarding, retries and connection pools.
//!
//! Clients speak HTTP/1.1 or HTTP/2 cleartext (prior knowledge); servers are
//! reached over HTTP/1.1 on a keep-alive pool per server. The proxy reads the
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
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Config;
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
}

/// Listeners bound and ready to serve.
pub struct Proxy {
    listeners: Vec<(TcpListener, Arc<Forwarder>)>,
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
        for l in &config.listeners {
            let router = Router::new(&l.routes, |name| table.slot(name));
            let socket = TcpListener::bind(l.listen)
                .await
                .map_err(|source| ProxyError::Bind {
                    addr: l.listen,
                    source,
                })?;
            listeners.push((socket, Arc::new(Forwarder::new(router, Arc::clone(&table)))));
        }
        Ok(Proxy {
            listeners,
            table,
            grace: config.runtime.shutdown_grace,
        })
    }

    /// The bound addresses, in config order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
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
            .map(|(listener, forwarder)| {
                tokio::spawn(serve_listener(
                    listener,
                    forwarder,
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
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) -> usize {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, client)) => {
                    let _ = stream.set_nodelay(true);
                    let forwarder = Arc::clone(&forwarder);
                    // Boxed: hyper keeps room for the service's future in every
                    // connection, idle or not, so the (large) forwarding future is
                    // allocated per request instead (BENCHMARKS.md, idle RSS).
                    let service = service_fn(move |req| {
                        Box::pin(Arc::clone(&forwarder).handle(req, client))
                    });
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
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
