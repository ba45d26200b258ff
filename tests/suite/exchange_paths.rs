//! Every way an exchange with a server can fail, through **both** HTTP paths,
//! with the same expectations: the plain HTTP/1.1 path (a keep-alive GET) and
//! hyper's path (the same GET with `TE: trailers`, which the plain path leaves
//! to hyper). One exchange core serves both; this file is what holds it to
//! that.
//!
//! For each failure: what the client gets, what is counted against the server
//! (`fails_total`, passive health), and that the server's `active` count comes
//! back to 0 (no lease left behind).

use crate::support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use support::{InProcess, any_port, closed_port};

const READ_TIMEOUT: Duration = Duration::from_millis(300);
/// A client that waits this long has hung.
const HANG: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// The plain HTTP/1.1 path.
    Plain,
    /// hyper's path.
    Hyper,
}

const PATHS: [Path; 2] = [Path::Plain, Path::Hyper];

/// What a raw backend does with each request head it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// `200 ok`, keep-alive.
    Ok,
    /// Bytes that are not HTTP, then waits for the proxy to close.
    Garbage,
    /// `Content-Length: 1 MiB`, 64 KiB of it, then a TCP reset.
    ResetMidBody,
    /// Nothing at all, the connection left open.
    Stall,
    /// Answers the first request on a connection (keep-alive), and closes the
    /// connection without a word when a second one comes on it: what a server
    /// that closed an idle connection looks like to the proxy that reuses it.
    ClosesIdle,
    /// `200` with a 4 MiB body, written as fast as the proxy takes it.
    Large,
    /// `200 ok` after [`SLOW`], well within the read timeout.
    Slow,
}

const SLOW: Duration = Duration::from_millis(150);

struct Raw {
    addr: SocketAddr,
    /// Request heads read, over all connections.
    heads: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Raw {
    async fn start(kind: Backend) -> Raw {
        let listener = TcpListener::bind(any_port()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&heads);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, kind, Arc::clone(&counted)));
            }
        });
        Raw { addr, heads, task }
    }
}

/// Reads one request head; false if the peer closed first.
async fn read_head(stream: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => buf.push(byte[0]),
        }
    }
    true
}

async fn until_closed(stream: &mut TcpStream) {
    let mut chunk = [0u8; 4096];
    while let Ok(n) = stream.read(&mut chunk).await {
        if n == 0 {
            break;
        }
    }
}

async fn serve(mut stream: TcpStream, kind: Backend, heads: Arc<AtomicUsize>) {
    let mut on_this_connection = 0;
    while read_head(&mut stream).await {
        heads.fetch_add(1, SeqCst);
        on_this_connection += 1;
        match kind {
            Backend::Ok => {
                let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                if stream.write_all(ok).await.is_err() {
                    return;
                }
            }
            Backend::ClosesIdle if on_this_connection == 1 => {
                let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                if stream.write_all(ok).await.is_err() {
                    return;
                }
            }
            Backend::ClosesIdle => return,
            Backend::Garbage => {
                let _ = stream
                    .write_all(b"\x00\xffSPDY/0 ??? not http\r\n\r\n")
                    .await;
                until_closed(&mut stream).await;
                return;
            }
            Backend::ResetMidBody => {
                let head = "HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n";
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&vec![b'x'; 64 * 1024]).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = stream.set_zero_linger();
                return;
            }
            Backend::Stall => {
                until_closed(&mut stream).await;
                return;
            }
            Backend::Slow => {
                tokio::time::sleep(SLOW).await;
                let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                if stream.write_all(ok).await.is_err() {
                    return;
                }
            }
            Backend::Large => {
                let head = "HTTP/1.1 200 OK\r\nContent-Length: 4194304\r\n\r\n";
                let _ = stream.write_all(head.as_bytes()).await;
                let chunk = vec![b'y'; 64 * 1024];
                for _ in 0..64 {
                    if stream.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// A proxy in front of `servers`: one try (the failure is the answer) unless
/// `tries` says more, keep-alive on, failures counted but never ejecting.
async fn proxy(servers: &[SocketAddr], tries: u32) -> InProcess {
    let list: Vec<String> = servers
        .iter()
        .map(|a| format!("{{ addr = \"{a}\", max_fails = 0 }}"))
        .collect();
    let text = format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ upstream = \"default\" }}]\n\n\
         [upstream.default]\nread_timeout = \"{}ms\"\nretry = {{ tries = {tries} }}\n\
         servers = [{}]\n",
        READ_TIMEOUT.as_millis(),
        list.join(", ")
    );
    let config = switchyard::config::parse(&text, "exchange_paths.toml")
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    InProcess::start(&config).await
}

/// How a request ended for the client.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// A whole response: its status and body length.
    Whole(u16, usize),
    /// The head came with this status, then the connection closed early.
    Cut(u16),
}

/// The request head for `path` on `which` path.
fn head(which: Path) -> &'static [u8] {
    match which {
        Path::Plain => b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n",
        Path::Hyper => b"GET /x HTTP/1.1\r\nHost: t\r\nTE: trailers\r\n\r\n",
    }
}

/// Sends one request on a new connection and reads the response to its end
/// (by `Content-Length`), or to the close.
async fn request(proxy: SocketAddr, which: Path) -> Seen {
    tokio::time::timeout(HANG, async {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(head(which)).await.unwrap();
        read_response(&mut s).await
    })
    .await
    .unwrap_or_else(|_| panic!("{which:?}: no answer within {HANG:?}"))
}

async fn read_response(s: &mut TcpStream) -> Seen {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.unwrap_or(0);
        assert!(
            n > 0,
            "closed before a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = text[9..12].parse().unwrap();
    let length: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no content-length in {text}"));
    let mut body = buf.len() - head_end;
    while body < length {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return Seen::Cut(status),
            Ok(n) => body += n,
        }
    }
    Seen::Whole(status, length)
}

fn fails(p: &InProcess, i: usize) -> u64 {
    p.servers()[i].runtime.stats.fails_total.load(SeqCst)
}

fn active(p: &InProcess, i: usize) -> u64 {
    p.servers()[i].runtime.stats.pick.active.load(SeqCst)
}

/// Waits (bounded) until every server's `active` count is back to 0.
async fn settle(p: &InProcess) {
    for i in 0..p.servers().len() {
        p.servers()[i]
            .runtime
            .wait_idle(Duration::from_secs(5))
            .await;
        assert_eq!(active(p, i), 0, "server {i} still has requests in flight");
    }
}

#[tokio::test]
async fn a_refused_connection_is_the_servers_fault_and_the_next_server_answers() {
    let good = Raw::start(Backend::Ok).await;
    for which in PATHS {
        let p = proxy(&[closed_port(), good.addr], 2).await;
        // Round robin starts anywhere: ask until the refused server was tried.
        let mut seen = Vec::new();
        while fails(&p, 0) == 0 {
            seen.push(request(p.addr, which).await);
            assert!(
                seen.len() < 10,
                "{which:?}: the refused server was never tried"
            );
        }
        assert!(
            seen.iter().all(|s| *s == Seen::Whole(200, 2)),
            "{which:?}: {seen:?}"
        );
        assert_eq!(fails(&p, 0), 1, "{which:?}");
        assert_eq!(fails(&p, 1), 0, "{which:?}");
        settle(&p).await;

        // Alone, it is a 502 that names the failure.
        let p = proxy(&[closed_port()], 1).await;
        assert_eq!(
            request(p.addr, which).await,
            Seen::Whole(502, 0).with_any_len()
        );
        assert_eq!(fails(&p, 0), 1, "{which:?}");
    }
}

impl Seen {
    /// For switchyard's own answers, whose text is not the point.
    fn with_any_len(self) -> SeenStatus {
        match self {
            Seen::Whole(s, _) | Seen::Cut(s) => SeenStatus(s),
        }
    }
}

/// A whole response of this status, any body.
#[derive(Debug)]
struct SeenStatus(u16);

impl PartialEq<SeenStatus> for Seen {
    fn eq(&self, other: &SeenStatus) -> bool {
        matches!(self, Seen::Whole(s, _) if *s == other.0)
    }
}

#[tokio::test]
async fn garbage_is_a_502_and_counted() {
    let bad = Raw::start(Backend::Garbage).await;
    for which in PATHS {
        let p = proxy(&[bad.addr], 1).await;
        assert_eq!(request(p.addr, which).await, SeenStatus(502), "{which:?}");
        assert_eq!(fails(&p, 0), 1, "{which:?}");
        settle(&p).await;
    }
}

#[tokio::test]
async fn a_stall_is_a_504_after_read_timeout_and_counted() {
    let bad = Raw::start(Backend::Stall).await;
    for which in PATHS {
        let p = proxy(&[bad.addr], 1).await;
        let started = std::time::Instant::now();
        assert_eq!(request(p.addr, which).await, SeenStatus(504), "{which:?}");
        assert!(started.elapsed() >= READ_TIMEOUT, "{which:?}");
        assert_eq!(fails(&p, 0), 1, "{which:?}");
        settle(&p).await;
    }
}

#[tokio::test]
async fn a_reset_mid_body_cuts_the_client_and_is_counted() {
    let bad = Raw::start(Backend::ResetMidBody).await;
    for which in PATHS {
        let p = proxy(&[bad.addr], 1).await;
        assert_eq!(request(p.addr, which).await, Seen::Cut(200), "{which:?}");
        // The failure is counted when the proxy reads the reset, which may be
        // a moment after the client saw its connection close.
        let deadline = std::time::Instant::now() + HANG;
        while fails(&p, 0) == 0 && std::time::Instant::now() < deadline {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(fails(&p, 0), 1, "{which:?}");
        settle(&p).await;
    }
}

#[tokio::test]
async fn a_stale_pooled_connection_is_sent_again_and_not_held_against_the_server() {
    let flaky = Raw::start(Backend::ClosesIdle).await;
    for which in PATHS {
        let p = proxy(&[flaky.addr], 1).await;
        let before = flaky.heads.load(SeqCst);
        // The first request leaves a pooled connection; the second goes on it,
        // finds it dead, and goes again on a new one (one try, still 200).
        assert_eq!(
            request(p.addr, which).await,
            Seen::Whole(200, 2),
            "{which:?}"
        );
        assert_eq!(
            request(p.addr, which).await,
            Seen::Whole(200, 2),
            "{which:?}"
        );
        assert_eq!(
            flaky.heads.load(SeqCst) - before,
            3,
            "{which:?}: the resend reached the server"
        );
        assert_eq!(fails(&p, 0), 0, "{which:?}");
        let requests = p.servers()[0].runtime.stats.requests.load(SeqCst);
        assert_eq!(requests, 3, "{which:?}: each send is a request");
        settle(&p).await;
    }
}

#[tokio::test]
async fn a_client_that_goes_away_costs_the_server_nothing() {
    let large = Raw::start(Backend::Large).await;
    let slow = Raw::start(Backend::Slow).await;
    for which in PATHS {
        // Mid-body: the client reads the head and a little, then hangs up.
        let p = proxy(&[large.addr], 1).await;
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(head(which)).await.unwrap();
        let mut some = [0u8; 1024];
        let n = s.read(&mut some).await.unwrap();
        assert!(String::from_utf8_lossy(&some[..n]).starts_with("HTTP/1.1 200"));
        drop(s);
        settle(&p).await;
        assert_eq!(fails(&p, 0), 0, "{which:?}: mid-body abort");

        // Before the head: the server is still working when the client leaves
        // (it answers in time, to nobody).
        let p = proxy(&[slow.addr], 1).await;
        let heads = slow.heads.load(SeqCst);
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(head(which)).await.unwrap();
        while slow.heads.load(SeqCst) == heads {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(s);
        settle(&p).await;
        // (hyper drops the exchange as soon as it sees the client close; the
        // plain path finds out when it writes the answer. Either way the
        // server is not blamed.)
        assert_eq!(fails(&p, 0), 0, "{which:?}: abort before the head");
    }
}
