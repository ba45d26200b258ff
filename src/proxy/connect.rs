//! Opening connections to servers for hyper's client: TCP, then TLS for
//! `https`, then the HTTP/1.1 or HTTP/2 handshake as the upstream's `protocol`
//! and ALPN say; HTTP/2 connections shared through the server's pool.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;

use super::exchange::AttemptError;
use super::io::UpstreamIo;
use super::pool::{self, Sender};
use crate::config::{Scheme, UpstreamProtocol};
use crate::upstream::{Server, UpstreamSettings};

/// A new connection for a request: for an HTTP/2 upstream, one at a time per
/// server, so that requests arriving together share the connection the first of
/// them opens.
pub(super) async fn connect_pooled(
    server: &Server,
    settings: &UpstreamSettings,
    upgrade: bool,
) -> Result<Sender, AttemptError> {
    let h2 = matches!(
        settings.protocol,
        UpstreamProtocol::H2 | UpstreamProtocol::H2c
    );
    let pool = pool::of(server).filter(|_| h2 && !upgrade);
    let Some(pool) = pool else {
        return connect(server, settings).await;
    };
    let _gate = pool.h2_connect_gate().await;
    if let Some(s) = pool.checkout() {
        return Ok(s);
    }
    let sender = connect(server, settings).await?;
    if let Sender::H2(h2) = &sender {
        pool.checkin(Sender::H2(h2.clone()));
    }
    Ok(sender)
}

/// Opens a new connection to `server` (TCP, then TLS for `https`, then HTTP/1.1 or
/// HTTP/2 as the upstream's `protocol` and ALPN say) and starts driving it.
async fn connect(server: &Server, settings: &UpstreamSettings) -> Result<Sender, AttemptError> {
    let timeouts = &settings.timeouts;
    let deadline = Instant::now() + timeouts.connect;
    let stream = open_tcp(server, deadline, timeouts.connect).await?;
    let io = UpstreamIo::new(stream, timeouts.send, Arc::clone(&server.runtime));
    let addr = server.sockaddr;
    if settings.scheme == Scheme::Http {
        return handshake(io, settings.protocol == UpstreamProtocol::H2c, addr).await;
    }
    let Some(client) = &settings.tls_client else {
        return Err(AttemptError::Tls(
            "the upstream has no TLS client configuration".into(),
        ));
    };
    let name = crate::tls::server_name(&settings.tls, &server.addr)
        .map_err(|e| AttemptError::Tls(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&client.proxy));
    let tls = match tokio::time::timeout_at(deadline, connector.connect(name.clone(), io)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(AttemptError::Tls(format!(
                "TLS handshake with {addr} (server name {}) failed: {e}",
                name.to_str()
            )));
        }
        Err(_) => return Err(AttemptError::ConnectTimeout(timeouts.connect)),
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    handshake(tls, h2, addr).await
}

/// The TCP connection to `server`, by `deadline` (`connect_timeout` after the
/// try began).
pub(super) async fn open_tcp(
    server: &Server,
    deadline: Instant,
    connect_timeout: Duration,
) -> Result<tokio::net::TcpStream, AttemptError> {
    match tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(server.sockaddr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(AttemptError::Connect(e)),
        Err(_) => Err(AttemptError::ConnectTimeout(connect_timeout)),
    }
}

async fn handshake<I>(io: I, h2: bool, addr: SocketAddr) -> Result<Sender, AttemptError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(io);
    if h2 {
        let (sender, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .handshake(io)
                .await
                .map_err(AttemptError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        return Ok(Sender::H2(sender));
    }
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(io)
        .await
        .map_err(AttemptError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(%addr, error = %e, "upstream connection ended");
        }
    });
    Ok(Sender::H1(sender))
}
