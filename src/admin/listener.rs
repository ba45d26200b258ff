//! The admin listener: its socket, and the thread and single-threaded runtime
//! that serve the admin routes on it, apart from the data plane's workers so
//! that neither admin load nor a slow state-file fsync can starve the proxy.
//!
//! It serves the router it is given and does not build it (`admin::router*`
//! does, and `AdminServer::bind*` beside it), so this file knows none of the
//! handlers but the NGINX Plus door's address extension.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tracing::{info, warn};

use super::access::Access;
use super::nginx::AdminAddr;
use crate::config::AdminConfig;

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on {addr} (admin): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Exposed(super::access::Exposed),
    #[error("cannot start the admin thread: {0}")]
    Thread(std::io::Error),
}

/// The admin listener, bound and ready to serve.
pub struct AdminServer {
    listener: std::net::TcpListener,
    app: Router,
}

/// Binds `config.listen` (port 0 picks a free port), non-blocking for tokio.
/// Refuses a listener reachable from the network with neither rules nor a
/// token, before binding anything.
pub(super) fn bind(
    config: &AdminConfig,
    access: &Access,
) -> Result<std::net::TcpListener, AdminError> {
    access
        .check_exposure(config.listen)
        .map_err(AdminError::Exposed)?;
    let listener =
        std::net::TcpListener::bind(config.listen).map_err(|source| AdminError::Bind {
            addr: config.listen,
            source,
        })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| AdminError::Bind {
            addr: config.listen,
            source,
        })?;
    Ok(listener)
}

impl AdminServer {
    /// `app` served on `listener`.
    pub(super) fn new(listener: std::net::TcpListener, mut app: Router) -> AdminServer {
        // For the NGINX Plus door's `/nginx` (`address`).
        if let Ok(local) = listener.local_addr() {
            app = app.layer(axum::Extension(AdminAddr(local)));
        }
        AdminServer { listener, app }
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// What `GET /readyz` reads: the proxy's readiness. Without it, the table
    /// alone decides.
    pub fn with_readiness(mut self, readiness: Arc<crate::proxy::Readiness>) -> AdminServer {
        self.app = self.app.layer(axum::Extension(readiness));
        self
    }

    /// Serves on a thread of its own, with its own single-threaded runtime, for the
    /// life of the process.
    pub fn spawn(self) -> Result<std::thread::JoinHandle<()>, AdminError> {
        std::thread::Builder::new()
            .name("switchyard-admin".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        warn!(error = %e, "cannot start the admin runtime");
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(self.listener) {
                        Ok(l) => l,
                        Err(e) => {
                            warn!(error = %e, "cannot use the admin socket");
                            return;
                        }
                    };
                    if let Ok(addr) = listener.local_addr() {
                        info!(%addr, "admin API listening");
                    }
                    let app = self.app.into_make_service_with_connect_info::<SocketAddr>();
                    if let Err(e) = axum::serve(listener, app).await {
                        warn!(error = %e, "admin API stopped");
                    }
                });
            })
            .map_err(AdminError::Thread)
    }
}
