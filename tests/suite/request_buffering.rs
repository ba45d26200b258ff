//! Request bodies of a known length on the plain HTTP/1.1 path: read whole
//! before a server is picked (`request_buffering`, on by default, up to the
//! listener's `request_buffer_size`), then sent with the head.
//!
//! What it must hold: the server gets every byte, in one piece of framing; a
//! client that goes silent mid-body gets a 408 and no server ever sees the
//! request; a client that leaves mid-body costs no server anything; a request
//! that must not go twice is never sent on a pooled connection the server has
//! closed; and `request_buffering = false` streams (the server sees the head
//! before the body is all there).

use crate::support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use support::InProcess;

/// A client that waits this long has hung.
const HANG: Duration = Duration::from_secs(5);

/// What a raw backend saw of one request: its head and how many body bytes,
/// and a checksum of them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Got {
    head: String,
    body_len: usize,
    sum: u64,
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().enumerate().fold(0u64, |s, (i, b)| {
        s.wrapping_mul(31).wrapping_add(u64::from(*b) ^ (i as u64))
    })
}

/// A raw HTTP/1.1 backend: reads each request (head, then `Content-Length`
/// bytes), reports the head as soon as it has it on `heads`, answers
/// `200 ok`, and closes the connection after each answer when `close_after`
/// (without saying so: what a server whose idle timeout passed looks like).
async fn backend(
    close_after: bool,
) -> (
    SocketAddr,
    Arc<Mutex<Vec<Got>>>,
    mpsc::UnboundedReceiver<String>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let (heads_tx, heads) = mpsc::unbounded_channel();
    let log = Arc::clone(&got);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let log = Arc::clone(&log);
            let heads_tx = heads_tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 65536];
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let _ = heads_tx.send(head.clone());
                    let len: usize = head
                        .to_ascii_lowercase()
                        .lines()
                        .find_map(|l| {
                            l.strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    while buf.len() < end + len {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = &buf[end..end + len];
                    log.lock().unwrap().push(Got {
                        head,
                        body_len: len,
                        sum: checksum(body),
                    });
                    buf.drain(..end + len);
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if close_after {
                        return;
                    }
                }
            });
        }
    });
    (addr, got, heads)
}

async fn proxy(server: SocketAddr, listener_extra: &str, route_extra: &str) -> InProcess {
    let text = format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\n{listener_extra}\n\
         routes = [{{ upstream = \"default\" {route_extra} }}]\n\n\
         [upstream.default]\nservers = [{{ addr = \"{server}\" }}]\n"
    );
    let config = switchyard::config::parse(&text, "request_buffering.toml")
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    InProcess::start(&config).await
}

/// Reads one response (by `Content-Length`) and returns its status.
async fn status(s: &mut TcpStream) -> u16 {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(HANG, async {
        loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                while buf.len() < i + 4 + len {
                    let n = s.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "closed mid-body");
                    buf.extend_from_slice(&chunk[..n]);
                }
                return head[9..12].parse().unwrap();
            }
            let n = s.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "closed before a response: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("no response")
}

fn body(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

fn post_head(len: usize) -> Vec<u8> {
    format!("POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn a_one_mebibyte_upload_arrives_whole_with_one_length() {
    let (addr, got, _heads) = backend(false).await;
    let p = proxy(addr, "", "").await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    // Three uploads of different sizes on one keep-alive connection, the
    // last sent in small pieces.
    for n in [1024 * 1024, 1, 300_000] {
        let data = body(n);
        s.write_all(&post_head(n)).await.unwrap();
        if n == 300_000 {
            for piece in data.chunks(7_000) {
                s.write_all(piece).await.unwrap();
            }
        } else {
            s.write_all(&data).await.unwrap();
        }
        assert_eq!(status(&mut s).await, 200);
    }
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 3);
    for (g, n) in got.iter().zip([1024 * 1024, 1, 300_000]) {
        assert_eq!((g.body_len, g.sum), (n, checksum(&body(n))), "{}", g.head);
        let lower = g.head.to_ascii_lowercase();
        assert_eq!(lower.matches("content-length:").count(), 1, "{}", g.head);
        assert!(!lower.contains("transfer-encoding"), "{}", g.head);
        assert!(lower.contains("x-forwarded-for: 127.0.0.1"), "{}", g.head);
    }
}

#[tokio::test]
async fn a_client_silent_mid_body_gets_408_and_no_server_sees_the_request() {
    let (addr, got, mut heads) = backend(false).await;
    let p = proxy(addr, "client_body_timeout = \"300ms\"", "").await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&post_head(1000)).await.unwrap();
    s.write_all(&body(400)).await.unwrap();
    assert_eq!(status(&mut s).await, 408);
    // The connection closes after the 408.
    let mut rest = [0u8; 16];
    let n = tokio::time::timeout(HANG, s.read(&mut rest))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        heads.try_recv().is_err(),
        "the server saw the request's head"
    );
    assert!(got.lock().unwrap().is_empty());
    let stats = &p.servers()[0].runtime.stats;
    assert_eq!(stats.requests.load(SeqCst), 0);
    assert_eq!(stats.fails_total.load(SeqCst), 0);
}

#[tokio::test]
async fn a_client_that_leaves_mid_body_costs_the_server_nothing() {
    let (addr, got, mut heads) = backend(false).await;
    let p = proxy(addr, "", "").await;
    for _ in 0..20 {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(&post_head(100_000)).await.unwrap();
        s.write_all(&body(50_000)).await.unwrap();
        drop(s);
    }
    // A whole request afterwards goes through, and is the only one seen.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&post_head(10)).await.unwrap();
    s.write_all(&body(10)).await.unwrap();
    assert_eq!(status(&mut s).await, 200);
    assert!(heads.recv().await.is_some());
    assert!(heads.try_recv().is_err(), "a cut upload reached the server");
    assert_eq!(got.lock().unwrap().len(), 1);
    let stats = &p.servers()[0].runtime.stats;
    assert_eq!(stats.requests.load(SeqCst), 1);
    assert_eq!(stats.fails_total.load(SeqCst), 0);
}

#[tokio::test]
async fn a_post_never_goes_on_a_pooled_connection_the_server_closed() {
    // The server closes every connection after its answer, without a
    // `Connection: close`: each POST finds the pooled connection closed.
    // Sent on it, it could not be sent again (not idempotent): a 502. The
    // pool's checkout leaves such connections out.
    let (addr, got, _heads) = backend(true).await;
    let p = proxy(addr, "", "").await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    for i in 0..20 {
        s.write_all(&post_head(5)).await.unwrap();
        s.write_all(b"hello").await.unwrap();
        assert_eq!(status(&mut s).await, 200, "POST {i}");
    }
    assert_eq!(got.lock().unwrap().len(), 20);
    assert_eq!(p.servers()[0].runtime.stats.fails_total.load(SeqCst), 0);
}

#[tokio::test]
async fn request_buffering_off_streams_the_body() {
    let (addr, got, mut heads) = backend(false).await;
    let p = proxy(addr, "", ", request_buffering = false").await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&post_head(1000)).await.unwrap();
    s.write_all(&body(400)).await.unwrap();
    // The server has the head while the client still holds 600 bytes back.
    let head = tokio::time::timeout(HANG, heads.recv())
        .await
        .expect("the head did not reach the server while the body was unfinished")
        .unwrap();
    assert!(head.starts_with("POST /up HTTP/1.1"), "{head}");
    s.write_all(&body(1000)[400..]).await.unwrap();
    assert_eq!(status(&mut s).await, 200);
    let got = got.lock().unwrap().clone();
    assert_eq!((got[0].body_len, got[0].sum), (1000, checksum(&body(1000))));
}

#[tokio::test]
async fn bodies_over_the_buffer_size_stream_too() {
    let (addr, got, mut heads) = backend(false).await;
    let p = proxy(addr, "request_buffer_size = 500", "").await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&post_head(1000)).await.unwrap();
    s.write_all(&body(400)).await.unwrap();
    tokio::time::timeout(HANG, heads.recv())
        .await
        .expect("a body over request_buffer_size was held back")
        .unwrap();
    s.write_all(&body(1000)[400..]).await.unwrap();
    assert_eq!(status(&mut s).await, 200);
    assert_eq!(got.lock().unwrap()[0].sum, checksum(&body(1000)));
}

/// A backend that reads each request whole and closes without an answer.
async fn dies() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_failed_try_goes_to_the_next_server_only_when_the_method_allows() {
    let (good, got, _heads) = backend(false).await;
    let bad = dies().await;
    let text = format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ upstream = \"default\" }}]\n\n\
         [upstream.default]\nretry = {{ tries = 2 }}\n\
         servers = [{{ addr = \"{bad}\", max_fails = 0 }}, {{ addr = \"{good}\", max_fails = 0 }}]\n"
    );
    let config = switchyard::config::parse(&text, "retry.toml").unwrap();
    let p = InProcess::start(&config).await;
    let mut statuses = Vec::new();
    for method in ["PUT", "PUT", "POST", "POST"] {
        // A connection each: a 502 may close it.
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        let head = format!("{method} /r HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc");
        s.write_all(head.as_bytes()).await.unwrap();
        statuses.push((method, status(&mut s).await));
    }
    // Round robin alternates: each PUT that met the bad server went on to
    // the good one; one of the two POSTs met it, and was not sent again.
    let puts_ok = statuses
        .iter()
        .filter(|s| s.0 == "PUT" && s.1 == 200)
        .count();
    let posts_bad = statuses
        .iter()
        .filter(|s| s.0 == "POST" && s.1 == 502)
        .count();
    assert_eq!((puts_ok, posts_bad), (2, 1), "{statuses:?}");
    assert_eq!(got.lock().unwrap().len(), 3);
}
