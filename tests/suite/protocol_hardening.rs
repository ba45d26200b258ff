//! Hostile bytes from clients and servers, through both HTTP paths: the plain
//! HTTP/1.1 path (a keep-alive GET) and hyper's (the same GET with
//! `TE: trailers`, or any request with a body). Each test sends raw bytes and
//! checks what the client got and what a raw-logging backend received.
//!
//! The rules (SECURITY.md): a client's fault is never the server's; a response
//! is relayed only when it parses as one message; a `Connection` token never
//! removes framing or `Host`; one valid `Host` per HTTP/1.1 request.

use crate::support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use support::{InProcess, Load, any_port};

const HANG: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Plain,
    Hyper,
}

const PATHS: [Path; 2] = [Path::Plain, Path::Hyper];

impl Path {
    /// A GET for `target` that this path takes.
    fn get(self, target: &str) -> String {
        match self {
            Path::Plain => format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n"),
            Path::Hyper => format!("GET {target} HTTP/1.1\r\nHost: t\r\nTE: trailers\r\n\r\n"),
        }
    }
}

/// A backend that answers every request head with `response` (keep-alive as
/// the response says) and keeps every byte it was sent.
struct Scripted {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
    task: JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    async fn start(response: &'static [u8]) -> Scripted {
        let listener = TcpListener::bind(any_port()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            pending.drain(..end + 4);
                            if stream.write_all(response).await.is_err() {
                                return;
                            }
                        }
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                log.lock().unwrap().extend_from_slice(&chunk[..n]);
                                pending.extend_from_slice(&chunk[..n]);
                            }
                        }
                    }
                });
            }
        });
        Scripted {
            addr,
            received,
            task,
        }
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }
}

async fn proxy(server: SocketAddr, extra: &str) -> InProcess {
    let text = format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ upstream = \"default\" }}]\n\n\
         [upstream.default]\nread_timeout = \"1s\"\n{extra}servers = [{{ addr = \"{server}\" }}]\n"
    );
    let config = switchyard::config::parse(&text, "protocol_hardening.toml")
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    InProcess::start(&config).await
}

/// One response as the client read it.
#[derive(Debug)]
struct Got {
    status: u16,
    /// The head, lower-cased.
    head: String,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.head
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(str::trim)
    }
}

/// Reads one response from `s` framed as its head says (a chunked body is
/// de-chunked); `None` if the connection closed before a whole one.
async fn read_one(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Got> {
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    buf.drain(..head_end);
    let status: u16 = head.get(9..12)?.parse().ok()?;
    let mut got = Got {
        status,
        head,
        body: Vec::new(),
    };
    if got
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                let n = s.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                let n = s.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            got.body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
            if size == 0 {
                return Some(got);
            }
        }
    }
    let length: usize = match got.header("content-length") {
        Some(v) => v.parse().ok()?,
        None if got.status == 204 || got.status == 304 => 0,
        None => {
            // Until the close.
            loop {
                let n = s.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    got.body = std::mem::take(buf);
                    return Some(got);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    };
    while buf.len() < length {
        let n = s.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    got.body = buf.drain(..length).collect();
    Some(got)
}

/// Two GETs (`/a`, `/b`) pipelined on one new connection through `which`
/// path; read their answers with [`Pipelined::next`].
struct Pipelined {
    stream: TcpStream,
    buf: Vec<u8>,
    which: Path,
}

impl Pipelined {
    async fn send(proxy: SocketAddr, which: Path) -> Pipelined {
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        let two = which.get("/a") + &which.get("/b");
        stream.write_all(two.as_bytes()).await.unwrap();
        Pipelined {
            stream,
            buf: Vec::new(),
            which,
        }
    }

    /// The next response, `None` if the connection closed first.
    async fn next(&mut self) -> Option<Got> {
        tokio::time::timeout(HANG, read_one(&mut self.stream, &mut self.buf))
            .await
            .unwrap_or_else(|_| panic!("{:?}: hung", self.which))
    }
}

/// Sends `bytes` on a new connection and reads one response.
async fn exchange(proxy: SocketAddr, bytes: &[u8]) -> Option<Got> {
    tokio::time::timeout(HANG, async {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(bytes).await.unwrap();
        read_one(&mut s, &mut Vec::new()).await
    })
    .await
    .unwrap_or_else(|_| panic!("no answer within {HANG:?}"))
}

fn fails(p: &InProcess) -> u64 {
    p.servers()[0].runtime.stats.fails_total.load(SeqCst)
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

// ------------------------------------------------------------- 1. client faults

/// Requests whose body the client breaks: cut short, then bad chunked coding.
const ABORTED_BODY: &[u8] = b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc";
const BAD_CHUNKED: &[u8] =
    b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";

#[tokio::test]
async fn a_client_that_breaks_its_body_gets_400_and_costs_the_server_nothing() {
    let backend = Scripted::start(OK).await;
    // The default max_fails = 1: one failure counted would take the only
    // server out for fail_timeout.
    let p = proxy(backend.addr, "").await;

    let got = exchange(p.addr, BAD_CHUNKED).await;
    assert_eq!(got.as_ref().map(|g| g.status), Some(400), "{got:?}");

    // An abort: the client sends 3 of 100 bytes and closes.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(ABORTED_BODY).await.unwrap();
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(HANG, s.read_to_end(&mut rest)).await;
    drop(s);

    assert_eq!(
        fails(&p),
        0,
        "a client's broken body was counted against the server"
    );
    for which in PATHS {
        let got = exchange(p.addr, which.get("/after").as_bytes()).await;
        assert_eq!(got.map(|g| g.status), Some(200), "{which:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_hostile_clients_leave_max_fails_1_serving_a_normal_client_loop() {
    let backend = Scripted::start(OK).await;
    let p = proxy(backend.addr, "").await;
    let load = Load::start(p.addr, 4);
    let hostile: Vec<_> = (0..1000)
        .map(|i| {
            let addr = p.addr;
            tokio::spawn(async move {
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    return;
                };
                let bytes = if i % 2 == 0 {
                    ABORTED_BODY
                } else {
                    BAD_CHUNKED
                };
                let _ = s.write_all(bytes).await;
                let _ = s.shutdown().await;
                let mut sink = Vec::new();
                let _ = tokio::time::timeout(HANG, s.read_to_end(&mut sink)).await;
            })
        })
        .collect();
    for h in hostile {
        h.await.unwrap();
    }
    let (ok, errors) = load.stop().await;
    assert!(ok > 0, "the normal clients got nothing through");
    assert!(
        errors.is_empty(),
        "{} normal requests failed: {errors:?}",
        errors.len()
    );
    assert_eq!(fails(&p), 0);
}

// ------------------------------------------------- 2. Connection and framing

#[tokio::test]
async fn a_connection_token_never_unframes_a_response() {
    let backend = Scripted::start(
        b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    let p = proxy(backend.addr, "").await;
    for which in PATHS {
        // Two requests pipelined on one connection: the second response must
        // not be glued to the first body.
        let mut two = Pipelined::send(p.addr, which).await;
        for _ in 0..2 {
            let got = two.next().await;
            let got = got.unwrap_or_else(|| panic!("{which:?}: closed early"));
            assert_eq!(got.status, 200, "{which:?}");
            assert_eq!(got.body, b"hello", "{which:?}: {}", got.head);
            assert!(
                got.header("content-length") == Some("5")
                    || got.header("transfer-encoding").is_some(),
                "{which:?}: an unframed response: {}",
                got.head
            );
        }
    }
}

#[tokio::test]
async fn a_chunked_response_with_a_content_length_is_framed_by_its_chunks() {
    let backend = Scripted::start(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n\
          28\r\n0123456789012345678901234567890123456789\r\n0\r\n\r\n",
    )
    .await;
    let p = proxy(backend.addr, "").await;
    for which in PATHS {
        let mut two = Pipelined::send(p.addr, which).await;
        for _ in 0..2 {
            let got = two
                .next()
                .await
                .unwrap_or_else(|| panic!("{which:?}: closed early"));
            assert_eq!(got.body.len(), 40, "{which:?}: {}", got.head);
            assert_ne!(got.header("content-length"), Some("3"), "{which:?}");
        }
    }
}

#[tokio::test]
async fn a_response_length_that_is_not_digits_is_a_502_on_both_paths() {
    for response in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\xc2\xa0\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: +5\r\n\r\nhello",
    ] {
        let leaked: &'static [u8] = Box::leak(response.to_vec().into_boxed_slice());
        let backend = Scripted::start(leaked).await;
        let p = proxy(backend.addr, "retry = { tries = 1 }\n").await;
        for which in PATHS {
            let got = exchange(p.addr, which.get("/").as_bytes()).await;
            assert_eq!(
                got.as_ref().map(|g| g.status),
                Some(502),
                "{which:?}: {:?} relayed as {got:?}",
                String::from_utf8_lossy(response)
            );
        }
    }
}

#[tokio::test]
async fn a_chunked_body_with_a_bare_lf_or_bytes_past_its_end_is_not_relayed_as_a_message() {
    let backend = Scripted::start(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\nHTTP/1.1 200 OK\r\n\r\n",
    )
    .await;
    let p = proxy(backend.addr, "retry = { tries = 1 }\n").await;
    for which in PATHS {
        let first = Pipelined::send(p.addr, which).await.next().await;
        // Either a 502 before anything was relayed, or a cut connection: never
        // a whole 200 followed by the server's stray bytes as a second answer.
        match first {
            Some(g) if g.status == 502 => {}
            Some(g) => panic!("{which:?}: relayed as a message: {} {:?}", g.head, g.body),
            None => {}
        }
    }
}

// ------------------------------------------------------------------- 3. Host

#[tokio::test]
async fn one_valid_host_per_http11_request() {
    let backend = Scripted::start(OK).await;
    let p = proxy(backend.addr, "").await;
    for (what, bytes) in [
        (
            "two Host headers",
            &b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"[..],
        ),
        (
            "an invalid Host, then a valid one",
            b"GET / HTTP/1.1\r\nHost: \xff\r\nHost: a\r\n\r\n",
        ),
        ("no Host", b"GET / HTTP/1.1\r\n\r\n"),
        (
            "a Host with userinfo",
            b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
        ),
    ] {
        for extra in ["", "TE: trailers\r\n"] {
            let text =
                String::from_utf8_lossy(bytes).replace("\r\n\r\n", &format!("\r\n{extra}\r\n"));
            let mut raw = bytes.to_vec();
            if !extra.is_empty() {
                raw = text.into_bytes();
                // Keep the \xff byte as it was.
                if bytes.contains(&0xff) {
                    raw = [&bytes[..bytes.len() - 2], extra.as_bytes(), b"\r\n"].concat();
                }
            }
            let got = exchange(p.addr, &raw).await;
            assert_eq!(
                got.as_ref().map(|g| g.status),
                Some(400),
                "{what} ({extra:?}): {got:?}"
            );
        }
    }
    assert!(
        !backend.received().contains("GET"),
        "a bad request reached the server"
    );

    // The absolute form: its authority is the Host the server sees.
    let got = exchange(
        p.addr,
        b"GET http://h.example/x HTTP/1.1\r\nHost: other\r\n\r\n",
    )
    .await;
    assert_eq!(got.map(|g| g.status), Some(200));
    let seen = backend.received().to_ascii_lowercase();
    assert!(seen.contains("host: h.example\r\n"), "{seen}");
    assert!(!seen.contains("host: other"), "{seen}");
}

// ------------------------------------------------------ 4. client_send_timeout

/// A backend that answers with a body of `len` bytes, written as fast as it
/// is taken.
async fn large_backend(len: usize) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => head.push(byte[0]),
                    }
                }
                let h = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
                if stream.write_all(h.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'z'; 64 * 1024];
                let mut left = len;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if stream.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    left -= n;
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_after_client_send_timeout_without_blame() {
    let (backend, task) = large_backend(32 * 1024 * 1024).await;
    let text = format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ upstream = \"default\" }}]\n\
         client_send_timeout = \"300ms\"\n\n\
         [upstream.default]\nread_timeout = \"30s\"\nservers = [{{ addr = \"{backend}\" }}]\n"
    );
    let config = switchyard::config::parse(&text, "send_timeout.toml").unwrap();
    let p = InProcess::start(&config).await;
    for which in PATHS {
        let started = std::time::Instant::now();
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(which.get("/big").as_bytes()).await.unwrap();
        // Never read: the proxy's writes stall once the socket buffers fill.
        let server = &p.servers()[0];
        while server.runtime.stats.requests.load(SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let left = server.runtime.wait_idle(Duration::from_secs(10)).await;
        assert_eq!(left, 0, "{which:?}: the exchange still holds the server");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "{which:?}: {took:?}");
        assert_eq!(
            fails(&p),
            0,
            "{which:?}: a slow client was counted against the server"
        );
        // The client's connection is closed: reading drains what was buffered,
        // then ends.
        let mut sink = vec![0u8; 1 << 20];
        let mut total = 0usize;
        let ended = tokio::time::timeout(HANG, async {
            loop {
                match s.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        })
        .await;
        assert!(
            ended.is_ok(),
            "{which:?}: the client connection was left open"
        );
        assert!(
            total < 32 * 1024 * 1024,
            "{which:?}: the whole body arrived"
        );
        server.runtime.stats.requests.store(0, SeqCst);
    }
    task.abort();
}

// ------------------------------------------------------ transfer codings

#[tokio::test]
async fn a_request_body_is_forwarded_or_refused_never_dropped() {
    let backend = Scripted::start(OK).await;
    let p = proxy(backend.addr, "").await;
    // A GET with a chunked body: forwarded, body and all.
    let got = exchange(
        p.addr,
        b"GET /g HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(got.map(|g| g.status), Some(200));
    let seen = backend.received();
    assert!(
        seen.contains("hello"),
        "the GET's body was dropped: {seen:?}"
    );

    // A transfer coding other than chunked alone is refused (nginx: 501).
    for coding in ["identity, chunked", "gzip, chunked", "chunked, chunked"] {
        let req = format!(
            "POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: {coding}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        let got = exchange(p.addr, req.as_bytes()).await;
        assert_eq!(got.map(|g| g.status), Some(501), "{coding}");
    }
    assert_eq!(backend.received().matches("POST").count(), 0);
}

// ------------------------------------------ an answer before the upload ends

#[tokio::test]
async fn a_connection_whose_upload_is_still_running_is_not_reused() {
    // Answers every request at once, before reading its body.
    let backend = Scripted::start(OK).await;
    let p = proxy(backend.addr, "").await;
    // A client that announces 2 MiB (more than `request_buffer_size`, so the
    // body streams) and sends 10 bytes, then keeps its connection open without
    // sending more.
    let mut slow = TcpStream::connect(p.addr).await.unwrap();
    slow.write_all(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 2097152\r\n\r\n0123456789")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let first = tokio::time::timeout(HANG, read_one(&mut slow, &mut buf))
        .await
        .expect("the early answer")
        .expect("a response");
    assert_eq!(first.status, 200);
    // The next requests, on both paths, must not wait for that upload.
    for which in PATHS {
        let got = tokio::time::timeout(
            Duration::from_secs(3),
            exchange(p.addr, which.get("/next").as_bytes()),
        )
        .await
        .unwrap_or_else(|_| panic!("{which:?}: waited on another client's upload"));
        assert_eq!(got.map(|g| g.status), Some(200), "{which:?}");
    }
    drop(slow);
}

#[tokio::test]
async fn a_connection_whose_upload_ended_goes_back_to_the_pool() {
    let backend = support::sink().await;
    let p = proxy(backend.addr, "").await;
    for _ in 0..3 {
        let got = exchange(
            p.addr,
            b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        )
        .await;
        assert!(got.is_some_and(|g| g.status < 500));
    }
    // One connection, kept idle between the three (none closed for an upload
    // that looked unfinished).
    let idle = p.servers()[0].runtime.pool.idle_len();
    assert_eq!(
        idle, 1,
        "the upstream connection was not reused after full uploads"
    );
}
