//! Bodies and tunnels through the real binary: large transfers stream in bounded
//! memory, and upgraded connections carry bytes both ways.
//!
//! The transfer size is `SWITCHYARD_STREAM_BYTES` (default 1 GiB).

use crate::support;

use std::time::{Duration, Instant};

use hyper::{Request, StatusCode};
use support::{Generated, Switchyard, check_body, raw_request, send, sink, source, ws_echo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Peak RSS the proxy may reach while streaming.
const RSS_LIMIT_KIB: u64 = 64 * 1024;

fn stream_bytes() -> u64 {
    std::env::var("SWITCHYARD_STREAM_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_download_streams_through_the_proxy_in_bounded_memory() {
    let n = stream_bytes();
    let backend = source(n).await;
    let sy = Switchyard::proxy(&[backend.addr]);

    let started = Instant::now();
    let req = Request::get("/big")
        .header("host", "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send(sy.addr(), req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let got = check_body(resp.into_body()).await.unwrap();
    let took = started.elapsed();
    let peak = sy.peak_rss_kib();
    eprintln!(
        "download: {n} bytes in {took:?} ({:.0} MiB/s), proxy peak RSS {peak} KiB",
        n as f64 / 1048576.0 / took.as_secs_f64()
    );
    assert_eq!(got.offset, n, "bytes received");
    assert_eq!(got.first_bad, None, "content differs");
    assert!(
        peak < RSS_LIMIT_KIB,
        "proxy peak RSS {peak} KiB >= {RSS_LIMIT_KIB} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_streams_through_the_proxy_in_bounded_memory() {
    let n = stream_bytes();
    let backend = sink().await;
    let sy = Switchyard::proxy(&[backend.addr]);

    let started = Instant::now();
    let req = Request::post("/upload")
        .header("host", "localhost")
        .body(Generated::new(n))
        .unwrap();
    let resp = send(sy.addr(), req).await.unwrap();
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let took = started.elapsed();
    let peak = sy.peak_rss_kib();
    eprintln!(
        "upload: {n} bytes in {took:?} ({:.0} MiB/s), proxy peak RSS {peak} KiB",
        n as f64 / 1048576.0 / took.as_secs_f64()
    );
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(String::from_utf8_lossy(&body), n.to_string());
    assert!(
        peak < RSS_LIMIT_KIB,
        "proxy peak RSS {peak} KiB >= {RSS_LIMIT_KIB} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_tunnels_bytes_both_ways_for_many_round_trips() {
    let echo = ws_echo().await;
    let sy = Switchyard::proxy(&[echo.addr]);

    let (head, mut stream) = raw_request(
        sy.addr(),
        "GET /chat HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "head: {head:?}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "head: {head:?}");

    // The server saw an upgrade request.
    let seen = echo.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["upgrade"], "websocket");
    assert!(
        seen[0].headers["connection"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("upgrade")
    );

    for round in 0..50u32 {
        // Sizes from 1 byte to ~100 KiB, all byte values.
        let len = 1 + (round as usize * 2048);
        let msg: Vec<u8> = (0..len).map(|i| (i as u32 * 7 + round) as u8).collect();
        stream.write_all(&msg).await.unwrap();
        let mut back = vec![0u8; len];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut back))
            .await
            .expect("echo within 10 s")
            .unwrap();
        assert!(back == msg, "round {round}: echo differs");
    }

    // Closing our side closes the tunnel: the proxy ends the connection.
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("tunnel closed within 10 s")
        .unwrap();
    assert_eq!(n, 0, "unexpected bytes after close");
}
