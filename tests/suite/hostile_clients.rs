//! Limits against slow and hostile clients: header read timeout (slowloris), idle
//! keep-alive timeout, header count and size (431), URI length (414), body size per
//! route (413), and concurrent connections per listener.

use crate::support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::{Switchyard, named};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(extra_listener: &str, route_extra: &str) -> (Switchyard, support::Backend) {
    let backend = named("app").await;
    let config = format!(
        r#"
[[listener]]
listen = "127.0.0.1:0"
routes = [{{ upstream = "app"{route_extra} }}]
{extra_listener}

[upstream.app]
servers = [{{ addr = "{}" }}]
"#,
        backend.addr
    );
    (Switchyard::run_config(&config, 1), backend)
}

/// Sends raw bytes and reads until the connection closes or `within` passes;
/// returns what was read and whether the peer closed.
async fn exchange(addr: SocketAddr, bytes: &[u8], within: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_until_close(&mut s, within).await
}

async fn read_until_close(s: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_client_that_sends_headers_too_slowly_is_cut_off_after_client_header_timeout() {
    let (sy, _b) = start(r#"client_header_timeout = "300ms""#, "").await;
    let started = Instant::now();
    // Half a request line, then nothing (slowloris).
    let (_, closed) = exchange(
        sy.addr(),
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        Duration::from_secs(10),
    )
    .await;
    assert!(closed, "the connection must be closed, not held");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "closed after {took:?}, before the timeout"
    );
    // Others are served meanwhile and after.
    let (resp, _) = exchange(
        sy.addr(),
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_timeout() {
    let (sy, _b) = start(r#"client_header_timeout = "300ms""#, "").await;
    let mut s = TcpStream::connect(sy.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (resp, closed) = read_until_close(&mut s, Duration::from_secs(10)).await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(
        closed,
        "an idle keep-alive connection must not be kept forever"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn too_many_or_too_large_headers_are_431() {
    let (sy, _b) = start("max_headers = 10\nmax_header_size = 8192", "").await;
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..20 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let (resp, _) = exchange(sy.addr(), many.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(status_of(&resp), 431, "{resp}");

    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let (resp, _) = exchange(sy.addr(), big.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(status_of(&resp), 431, "{resp}");

    let ok = "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nConnection: close\r\n\r\n";
    let (resp, _) = exchange(sy.addr(), ok.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(status_of(&resp), 200, "{resp}");
}

#[tokio::test]
async fn a_uri_longer_than_max_uri_length_is_414() {
    let (sy, b) = start("max_uri_length = 100", "").await;
    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(200)
    );
    let (resp, _) = exchange(sy.addr(), long.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(status_of(&resp), 414, "{resp}");
    assert_eq!(b.hits(), 0, "the request must not reach the server");
    let short = format!(
        "GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(50)
    );
    let (resp, _) = exchange(sy.addr(), short.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(status_of(&resp), 200, "{resp}");
}

#[tokio::test]
async fn a_body_larger_than_the_routes_max_body_size_is_413_declared_or_chunked() {
    let (sy, b) = start("", ", max_body_size = 1000").await;
    let declared = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n{}",
        "a".repeat(5000)
    );
    let (resp, _) = exchange(sy.addr(), declared.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(status_of(&resp), 413, "{resp}");
    assert_eq!(
        b.hits(),
        0,
        "a declared oversize body is refused before any server sees it"
    );

    let chunk = "a".repeat(600);
    let chunked = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let (resp, _) = exchange(sy.addr(), chunked.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(status_of(&resp), 413, "{resp}");

    let small =
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789";
    let (resp, _) = exchange(sy.addr(), small.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(status_of(&resp), 200, "{resp}");
}

#[tokio::test]
async fn past_max_connections_a_client_waits_until_a_connection_closes() {
    let (sy, _b) = start("max_connections = 2", "").await;
    let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(sy.addr()).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(status_of(&String::from_utf8_lossy(&buf[..n])), 200);
        held.push(s);
    }
    // The third is accepted by the kernel but not served while two are open.
    let mut third = TcpStream::connect(sy.addr()).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "the third connection was served while two were open"
    );
    drop(held.pop());
    let (resp, _) = read_until_close(&mut third, Duration::from_secs(10)).await;
    assert_eq!(status_of(&resp), 200, "{resp}");
}
