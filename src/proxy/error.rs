//! Why the proxy could not start or reload a listener.

use std::net::SocketAddr;

/// Why the proxy could not start, or take a new configuration.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("listener {addr}: TLS: {reason}")]
    Tls { addr: SocketAddr, reason: String },
    #[error("the proxy is not serving")]
    NotServing,
}
