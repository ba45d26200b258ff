//! The plain HTTP/1.1 path (`proxy::h1`): keep-alive GET and HEAD relayed without
//! hyper. Raw sockets on both sides, so that framing, header case and connection
//! reuse are seen exactly as they travel.

use crate::support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard::config::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::{InProcess, any_port, config};

/// What a scripted backend does after answering.
#[derive(Clone, Copy, PartialEq, Eq)]
enum After {
    KeepOpen,
    Close,
}

/// A request as the scripted backend read it: the connection it came on
/// (numbered from 0) and its head, verbatim.
#[derive(Debug, Clone)]
struct Got {
    conn: usize,
    head: String,
    body: Vec<u8>,
}

type Script = fn(&str) -> (String, After);

/// A backend on raw sockets that answers each request with what `script` gives
/// for its head.
struct Scripted {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    async fn start(script: Script) -> Scripted {
        let listener = TcpListener::bind(any_port()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&got);
        let task = tokio::spawn(async move {
            let mut conn = 0;
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, conn, script, Arc::clone(&seen)));
                conn += 1;
            }
        });
        Scripted { addr, got, task }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

async fn serve(mut stream: TcpStream, conn: usize, script: Script, got: Arc<Mutex<Vec<Got>>>) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = find(&buf, b"\r\n\r\n") else {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
        let length = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        while buf.len() < end + 4 + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[end + 4..end + 4 + length].to_vec();
        buf.drain(..end + 4 + length);
        let (answer, after) = script(&head);
        got.lock().unwrap().push(Got { conn, head, body });
        if stream.write_all(answer.as_bytes()).await.is_err() || after == After::Close {
            return;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The request target of a raw head.
fn target(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or("")
}

/// Answers `/n` with `n` as a body of that length, and keeps the connection.
fn echo_path(head: &str) -> (String, After) {
    let body = target(head).trim_start_matches('/').to_string();
    (
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Case-Kept: Yes\r\n\r\n{body}",
            body.len()
        ),
        After::KeepOpen,
    )
}

/// A scripted backend, a proxy in front of it and a client connected to the proxy.
async fn start(script: Script) -> (Scripted, InProcess, TcpStream) {
    let backend = Scripted::start(script).await;
    let proxy = proxy_to(&backend).await;
    let client = TcpStream::connect(proxy.addr).await.unwrap();
    (backend, proxy, client)
}

async fn proxy_to(backend: &Scripted) -> InProcess {
    InProcess::start(&config(vec![ServerConfig::new(backend.addr.to_string())])).await
}

/// Reads one response from a raw client connection: the head, and a body
/// framed by Content-Length, chunked coding or the connection's end.
async fn read_response(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> (String, Vec<u8>) {
    let end = loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            break end;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "connection closed before a response head: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
    buf.drain(..end + 4);
    let lower = head.to_ascii_lowercase();
    let length = lower.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .map(|v| v.trim().parse::<usize>().unwrap())
    });
    if head_request || head.starts_with("HTTP/1.1 204") || head.starts_with("HTTP/1.1 304") {
        return (head, Vec::new());
    }
    if lower.contains("transfer-encoding: chunked") {
        // The raw chunked body, up to and including the final empty line.
        loop {
            if let Some(end) = chunked_end(buf) {
                let body = buf[..end].to_vec();
                buf.drain(..end);
                return (head, body);
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed inside a chunked body");
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    match length {
        Some(len) => {
            while buf.len() < len {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed inside a body");
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[..len].to_vec();
            buf.drain(..len);
            (head, body)
        }
        None => {
            stream.read_to_end(buf).await.unwrap();
            (head, std::mem::take(buf))
        }
    }
}

/// Sends one raw request on `client` and reads its response (no body for HEAD).
async fn ask(client: &mut TcpStream, buf: &mut Vec<u8>, request: &str) -> (String, Vec<u8>) {
    client.write_all(request.as_bytes()).await.unwrap();
    read_response(client, buf, request.starts_with("HEAD ")).await
}

/// Where a chunked body at the start of `buf` ends, if all of it is there.
fn chunked_end(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line = find(&buf[at..], b"\r\n")?;
        let size_text = std::str::from_utf8(&buf[at..at + line]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at += line + 2;
        if size == 0 {
            // Trailer lines, then the empty line.
            loop {
                let line = find(&buf[at..], b"\r\n")?;
                at += line + 2;
                if line == 0 {
                    return Some(at);
                }
            }
        }
        at += size + 2;
        if at > buf.len() {
            return None;
        }
    }
}

/// Whether the peer closed the connection (reads until it does, within 5 s).
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut chunk = [0u8; 1024];
    matches!(
        tokio::time::timeout(limit, stream.read(&mut chunk)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn pipelined_gets_are_answered_in_order_on_one_reused_server_connection() {
    let (backend, proxy, mut client) = start(echo_path).await;
    let mut pipelined = String::new();
    for path in ["one", "two", "three"] {
        pipelined += &format!("GET /{path} HTTP/1.1\r\nHost: example.test\r\n\r\n");
    }
    client.write_all(pipelined.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    for path in ["one", "two", "three"] {
        let (head, body) = read_response(&mut client, &mut buf, false).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        // Header case as the server wrote it: this path relays names verbatim
        // (hyper's would lower-case them).
        assert!(head.contains("\r\nX-Case-Kept: Yes\r\n"), "{head}");
        assert_eq!(body, path.as_bytes());
    }
    // Later requests on a new client connection reuse the same server connection.
    let mut other = TcpStream::connect(proxy.addr).await.unwrap();
    let (_, body) = ask(
        &mut other,
        &mut Vec::new(),
        "GET /four HTTP/1.1\r\nHost: example.test\r\n\r\n",
    )
    .await;
    assert_eq!(body, b"four");
    let got = backend.got();
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(|g| g.conn == 0), "{got:?}");
}

#[tokio::test]
async fn pipelined_posts_each_reach_the_server_with_their_own_body() {
    // The body is sent from where it was read in the client's buffer, and the
    // next request starts right after it: both must come out whole.
    let (backend, _proxy, mut client) = start(echo_path).await;
    let big = "b".repeat(100_000);
    let mut pipelined = String::new();
    for (path, body) in [("one", "first"), ("two", big.as_str()), ("three", "")] {
        pipelined += &format!(
            "POST /{path} HTTP/1.1\r\nHost: example.test\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    }
    pipelined += "GET /four HTTP/1.1\r\nHost: example.test\r\n\r\n";
    client.write_all(pipelined.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    for path in ["one", "two", "three", "four"] {
        let (head, body) = read_response(&mut client, &mut buf, false).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(body, path.as_bytes());
    }
    let got = backend.got();
    let bodies: Vec<&[u8]> = got.iter().map(|g| g.body.as_slice()).collect();
    assert_eq!(
        bodies,
        [&b"first"[..], big.as_bytes(), b"", b""],
        "heads: {:?}",
        got.iter()
            .map(|g| g.head.lines().next())
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn requests_and_responses_are_rewritten_as_on_the_hyper_path() {
    fn script(_: &str) -> (String, After) {
        (
            "HTTP/1.1 200 Fine\r\nContent-Length: 2\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\n\
             Keep-Alive: timeout=5\r\nX-Other: kept\r\n\r\nok"
                .into(),
            After::KeepOpen,
        )
    }
    let (backend, _proxy, mut client) = start(script).await;
    client
        .write_all(
            b"GET /a?b=c HTTP/1.1\r\nHost: Example.Test:8080\r\nConnection: keep-alive\r\n\
              Keep-Alive: timeout=9\r\nX-Forwarded-For: 203.0.113.7\r\nX-Real-IP: 6.6.6.6\r\n\
              X-Forwarded-Proto: https\r\nUser-Agent: raw\r\n\r\n",
        )
        .await
        .unwrap();
    let (head, body) = read_response(&mut client, &mut Vec::new(), false).await;
    assert_eq!(body, b"ok");
    assert!(head.starts_with("HTTP/1.1 200 Fine\r\n"), "{head}");
    assert!(head.contains("\r\nX-Other: kept\r\n"), "{head}");
    let lower = head.to_ascii_lowercase();
    for gone in ["x-hop", "keep-alive", "connection"] {
        assert!(!lower.contains(&format!("\r\n{gone}:")), "{gone} in {head}");
    }
    // The server sent no Date: the proxy adds one, as hyper does.
    assert!(lower.contains("\r\ndate: "), "{head}");

    let got = backend.got();
    let sent = got[0].head.to_ascii_lowercase();
    assert!(sent.starts_with("get /a?b=c http/1.1\r\n"), "{sent}");
    assert!(sent.contains("\r\nhost: example.test:8080\r\n"), "{sent}");
    assert!(sent.contains("\r\nuser-agent: raw\r\n"), "{sent}");
    assert!(
        sent.contains("\r\nx-forwarded-for: 203.0.113.7, 127.0.0.1\r\n"),
        "{sent}"
    );
    assert!(sent.contains("\r\nx-real-ip: 127.0.0.1\r\n"), "{sent}");
    assert!(sent.contains("\r\nx-forwarded-proto: http\r\n"), "{sent}");
    assert!(
        !sent.contains("6.6.6.6") && !sent.contains("keep-alive"),
        "{sent}"
    );
}

#[tokio::test]
async fn chunked_close_delimited_head_and_interim_responses_are_framed_right() {
    fn script(head: &str) -> (String, After) {
        match target(head) {
            "/chunked" => (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n"
                    .into(),
                After::KeepOpen,
            ),
            "/interim" => (
                "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nafter".into(),
                After::KeepOpen,
            ),
            "/head" => ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".into(), After::KeepOpen),
            // HTTP/1.0, no length: the body ends when the server closes.
            _ => ("HTTP/1.0 200 OK\r\n\r\nuntil the end".into(), After::Close),
        }
    }
    let (backend, _proxy, mut client) = start(script).await;
    let mut buf = Vec::new();

    let (head, body) = ask(
        &mut client,
        &mut buf,
        "GET /chunked HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await;
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    assert_eq!(body, b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n");

    let (head, body) = ask(
        &mut client,
        &mut buf,
        "GET /interim HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert_eq!(body, b"after");

    let (head, body) = ask(
        &mut client,
        &mut buf,
        "HEAD /head HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await;
    assert!(head.contains("Content-Length: 5"), "{head}");
    assert!(body.is_empty());

    // The same client connection still works after all of those, and a
    // close-delimited body is relayed whole, then the client's connection closes.
    let (head, body) = ask(
        &mut client,
        &mut buf,
        "GET /until-close HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await;
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(body, b"until the end");
    assert!(buf.is_empty());
    // Four requests: the chunked, interim and HEAD answers left the server
    // connection reusable, so they all came on one.
    let got = backend.got();
    assert_eq!(got.iter().map(|g| g.conn).collect::<Vec<_>>(), [0, 0, 0, 0]);
}

#[tokio::test]
async fn a_pooled_connection_the_server_closed_is_not_held_against_it() {
    // Answers keep-alive, then closes anyway: the pooled connection is stale by
    // the time the next request comes.
    fn script(_: &str) -> (String, After) {
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".into(),
            After::Close,
        )
    }
    let backend = Scripted::start(script).await;
    let proxy = proxy_to(&backend).await;
    for i in 0..5 {
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        let (head, body) = ask(
            &mut client,
            &mut Vec::new(),
            "GET / HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "request {i}: {head}");
        assert_eq!(body, b"ok");
    }
    let server = &proxy.servers()[0];
    assert_eq!(server.runtime.stats.fails_total.load(Relaxed), 0);
    assert_eq!(backend.got().len(), 5);
}

#[tokio::test]
async fn a_request_this_path_does_not_take_moves_the_connection_to_hyper_which_serves_the_rest() {
    let (backend, _proxy, mut client) = start(echo_path).await;
    let mut buf = Vec::new();
    let (head, body) = ask(
        &mut client,
        &mut buf,
        "GET /first HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await;
    assert!(head.contains("X-Case-Kept"), "plain path: {head}");
    assert_eq!(body, b"first");
    // A POST with a body of one known length stays on this path.
    let (head, body) = ask(
        &mut client,
        &mut buf,
        "POST /known HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nbody",
    )
    .await;
    assert!(head.contains("X-Case-Kept"), "plain path: {head}");
    assert_eq!(body, b"known");
    // One this path leaves to hyper (`TE`), pipelined with a GET behind it:
    // hyper gets both.
    client
        .write_all(
            b"POST /second HTTP/1.1\r\nHost: t\r\nTE: trailers\r\nContent-Length: 7\r\n\r\npayloadGET /third HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .await
        .unwrap();
    let (head, body) = read_response(&mut client, &mut buf, false).await;
    assert!(
        head.contains("x-case-kept"),
        "hyper's path lower-cases names: {head}"
    );
    assert_eq!(body, b"second");
    let (_, body) = read_response(&mut client, &mut buf, false).await;
    assert_eq!(body, b"third");
    let got = backend.got();
    assert_eq!(got.len(), 4);
    assert_eq!(got[1].body, b"body");
    assert_eq!(got[2].body, b"payload");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_closes_after_client_header_timeout() {
    let backend = Scripted::start(echo_path).await;
    let mut cfg = config(vec![ServerConfig::new(backend.addr.to_string())]);
    cfg.listeners[0].limits.header_timeout = Duration::from_millis(300);
    let proxy = InProcess::start(&cfg).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    let (_, body) = ask(
        &mut client,
        &mut Vec::new(),
        "GET /x HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await;
    assert_eq!(body, b"x");
    let idle_from = Instant::now();
    assert!(closed_within(&mut client, Duration::from_secs(5)).await);
    assert!(
        idle_from.elapsed() >= Duration::from_millis(250),
        "{:?}",
        idle_from.elapsed()
    );
}

#[tokio::test]
async fn no_server_left_is_a_502_and_head_gets_no_body() {
    let backend = Scripted::start(echo_path).await;
    let proxy = proxy_to(&backend).await;
    proxy
        .table
        .apply(vec![switchyard::upstream::Command::SetState {
            upstream: "default".into(),
            server: switchyard::upstream::ServerRef::Id(proxy.servers()[0].id),
            state: switchyard::upstream::AdminState::Down,
        }])
        .await
        .unwrap();
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = Vec::new();
    let (head, body) = ask(&mut client, &mut buf, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 502 Bad Gateway"), "{head}");
    assert_eq!(
        String::from_utf8_lossy(&body),
        "502 Bad Gateway: no server available in upstream \"default\"\n"
    );
    let (head, body) = ask(&mut client, &mut buf, "HEAD / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(body.is_empty());
    // Nothing more arrives: the HEAD answer had no body.
    let (head, _) = ask(&mut client, &mut buf, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(backend.got().is_empty());
}

#[tokio::test]
async fn a_parked_idle_connection_wakes_for_its_next_request() {
    let (backend, _proxy, mut client) = start(echo_path).await;
    let mut buf = Vec::new();
    for path in ["before", "after-one-park", "after-two-parks"] {
        let (head, body) = ask(
            &mut client,
            &mut buf,
            &format!("GET /{path} HTTP/1.1\r\nHost: t\r\n\r\n"),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, path.as_bytes());
        // Idle well past the linger: the connection is parked with the accept
        // loop, then woken by the next request.
        tokio::time::sleep(switchyard_linger() * 3).await;
    }
    assert_eq!(backend.got().len(), 3);
}

/// The linger before an idle connection parks (`proxy::h1::LINGER`, 20 ms).
fn switchyard_linger() -> Duration {
    Duration::from_millis(20)
}

#[tokio::test]
async fn bad_chunked_coding_with_the_head_is_a_502_counted_against_the_server() {
    fn script(_: &str) -> (String, After) {
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnot hex\r\n0\r\n\r\n"
                .into(),
            After::KeepOpen,
        )
    }
    let backend = Scripted::start(script).await;
    let mut cfg = config(vec![ServerConfig::new(backend.addr.to_string())]);
    if let Some(u) = cfg.upstreams.get_mut("default") {
        u.retry.tries = 1;
    }
    let proxy = InProcess::start(&cfg).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    let (head, body) = ask(
        &mut client,
        &mut Vec::new(),
        "GET / HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(
        String::from_utf8_lossy(&body).contains("invalid chunked body"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        proxy.servers()[0].runtime.stats.fails_total.load(Relaxed),
        1
    );
}
