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
    /// Boxed: the TLS error names files and is large; this one is rare.
    #[error("listener {addr}: TLS: {source}")]
    Tls {
        addr: SocketAddr,
        source: Box<crate::tls::TlsError>,
    },
    #[error("the proxy is not serving")]
    NotServing,
}
