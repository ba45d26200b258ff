//! `switchyard demo`: three tiny backends on loopback, each answering with its own
//! name, and the proxy in front of them, configured from an embedded default file.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The embedded configuration, with `{LISTEN}`, `{ALPHA}`, `{BRAVO}`, `{CHARLIE}`
/// to fill in.
pub const TEMPLATE: &str = include_str!("demo.toml");

/// Names of the demo backends, in the order of the template's servers.
pub const BACKENDS: [&str; 3] = ["alpha", "bravo", "charlie"];

/// Starts a backend on `127.0.0.1:PORT` (0: any free port) that answers every
/// request with `NAME\n`, and returns its address.
///
/// `GET /health` is its health endpoint; `POST /_demo/fail` makes that endpoint
/// answer 503 (the application keeps serving, as when a dependency of it fails)
/// and `POST /_demo/recover` makes it pass again — so the demo can show a server
/// going `unhealthy` and traffic moving away without a client error.
pub async fn spawn_backend(name: &'static str, port: u16) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let failing = Arc::new(AtomicBool::new(false));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let failing = Arc::clone(&failing);
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let failing = Arc::clone(&failing);
                    async move { Ok::<_, Infallible>(answer(name, &failing, &req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn answer<B>(name: &str, failing: &AtomicBool, req: &Request<B>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/_demo/fail") => {
            failing.store(true, Ordering::Relaxed);
            text(StatusCode::OK, format!("{name}: health checks now fail\n"))
        }
        (&Method::POST, "/_demo/recover") => {
            failing.store(false, Ordering::Relaxed);
            text(
                StatusCode::OK,
                format!("{name}: health checks pass again\n"),
            )
        }
        (_, "/health") if failing.load(Ordering::Relaxed) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{name} unhealthy\n"),
        ),
        (_, "/health") => text(StatusCode::OK, "OK\n".into()),
        _ => text(StatusCode::OK, format!("{name}\n")),
    }
}

/// The demo configuration text for these addresses.
pub fn config_text(listen: SocketAddr, backends: &[SocketAddr; 3]) -> String {
    TEMPLATE
        .replace("{LISTEN}", &listen.to_string())
        .replace("{ALPHA}", &backends[0].to_string())
        .replace("{BRAVO}", &backends[1].to_string())
        .replace("{CHARLIE}", &backends[2].to_string())
}
