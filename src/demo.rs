//! `switchyard demo`: three tiny backends on loopback, each answering with its own
//! name, and the proxy in front of them, configured from an embedded default file.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The embedded configuration, with `{LISTEN}`, `{ALPHA}`, `{BRAVO}`, `{CHARLIE}`
/// to fill in.
pub const TEMPLATE: &str = include_str!("demo.toml");

/// Names of the demo backends, in the order of the template's servers.
pub const BACKENDS: [&str; 3] = ["alpha", "bravo", "charlie"];

/// Starts a backend on `127.0.0.1:PORT` (0: any free port) that answers every
/// request with `NAME\n`, and returns its address.
pub async fn spawn_backend(name: &'static str, port: u16) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<hyper::body::Incoming>| async move {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("{name}\n")))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The demo configuration text for these addresses.
pub fn config_text(listen: SocketAddr, backends: &[SocketAddr; 3]) -> String {
    TEMPLATE
        .replace("{LISTEN}", &listen.to_string())
        .replace("{ALPHA}", &backends[0].to_string())
        .replace("{BRAVO}", &backends[1].to_string())
        .replace("{CHARLIE}", &backends[2].to_string())
}
