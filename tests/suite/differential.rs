//! The differential suite: one corpus of hostile requests and hostile server
//! responses, sent through the plain HTTP/1.1 path, through hyper's path (a
//! listener with `plain_http1 = false`) and, where nginx is installed,
//! through nginx 1.22-style `proxy_pass` with upstream keep-alive. The two
//! paths must agree on every probe; every place where switchyard and nginx
//! disagree must be one SECURITY.md lists, with its reason ([`KNOWN`]).
//!
//! What is compared per probe is what the client gets: a status (and, for a
//! 2xx, the body), or no response at all.

use crate::support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::{InProcess, any_port};

/// How long a client waits for an answer before it calls it none.
const WAIT: Duration = Duration::from_secs(2);

/// Requests a client may send. Each goes to the backend's `/ok`.
const REQUESTS: &[(&str, &[u8])] = &[
    ("plain GET", b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("two Host headers", b"GET /ok HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    ("no Host in HTTP/1.1", b"GET /ok HTTP/1.1\r\n\r\n"),
    ("no Host in HTTP/1.0", b"GET /ok HTTP/1.0\r\n\r\n"),
    ("Host not an authority", b"GET /ok HTTP/1.1\r\nHost: \xff\r\n\r\n"),
    ("Host with userinfo", b"GET /ok HTTP/1.1\r\nHost: u@a\r\n\r\n"),
    ("absolute-form target", b"GET http://a/ok HTTP/1.1\r\nHost: b\r\n\r\n"),
    (
        "Content-Length and chunked",
        b"POST /ok HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "two different Content-Lengths",
        b"POST /ok HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    ),
    ("Content-Length +3", b"POST /ok HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc"),
    (
        "identity, chunked",
        b"POST /ok HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "tab before chunked",
        b"POST /ok HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "bad chunk size",
        b"POST /ok HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ),
    (
        "GET with a chunked body",
        b"GET /ok HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ),
    ("obs-fold header", b"GET /ok HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n"),
    ("space before colon", b"GET /ok HTTP/1.1\r\nHost : a\r\n\r\n"),
    ("bare LF line ends", b"GET /ok HTTP/1.1\nHost: a\n\n"),
    ("HTTP/1.2", b"GET /ok HTTP/1.2\r\nHost: a\r\n\r\n"),
    ("NUL in a header value", b"GET /ok HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n"),
];

/// Responses a server may send, by the path that asks for them.
const RESPONSES: &[(&str, &[u8])] = &[
    ("r-ok", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
    ("r-plus-length", b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello"),
    ("r-nbsp-length", b"HTTP/1.1 200 OK\r\nContent-Length: 5\xc2\xa0\r\n\r\nhello"),
    (
        "r-length-and-plus",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: +5\r\n\r\nhello",
    ),
    (
        "r-two-lengths",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    ),
    (
        "r-equal-lengths",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    ),
    (
        "r-chunked-and-length",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "r-connection-names-length",
        b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello",
    ),
    (
        "r-bare-lf-trailer",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\n",
    ),
    ("r-garbage", b"\x00\xffnot http at all\r\n\r\n"),
    ("r-101", b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
    ("r-until-close", b"HTTP/1.1 200 OK\r\n\r\nhello"),
    (
        "r-huge-chunk-size",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nhello\r\n",
    ),
];

/// Where the two paths answer differently, and why (SECURITY.md's list).
const PATHS_KNOWN: &[(&str, &str)] = &[(
    "r-bare-lf-trailer",
    "the plain path relays chunked framing byte for byte, so it refuses framing \
     that is not exactly valid (502); hyper's path decodes the body and frames it \
     again, so the client gets valid chunks either way.",
)];

/// Where switchyard (both paths) and nginx answer differently, and why:
/// SECURITY.md's list.
const KNOWN: &[(&str, &str)] = &[
    (
        "Host not an authority",
        "nginx takes any Host bytes but a few; switchyard refuses a Host that is not \
         an RFC 3986 authority (400, RFC 9112 §3.2).",
    ),
    (
        "Host with userinfo",
        "nginx takes it; an authority in Host has no userinfo (RFC 9112 §3.2), 400.",
    ),
    (
        "Content-Length and chunked",
        "nginx refuses the request (400); hyper decodes the chunks and drops the \
         length (RFC 9112 §6.1 allows either), and the server gets one framing.",
    ),
    (
        "r-plus-length",
        "nginx relays a Content-Length with a sign; switchyard refuses it (502).",
    ),
    (
        "r-nbsp-length",
        "nginx relays a Content-Length followed by a non-ASCII space; 502 here.",
    ),
    (
        "r-length-and-plus",
        "nginx relays `5` beside `+5`; 502 here.",
    ),
    (
        "r-two-lengths",
        "nginx relays two different Content-Lengths (using one); 502 here.",
    ),
    (
        "r-101",
        "nginx relays a 101 the client did not ask for; switchyard answers 502.",
    ),
    (
        "absolute-form target",
        "nginx routes by the target's authority but sends the server the client's Host; \
         switchyard replaces Host with the authority (RFC 9112 §3.2.2). Both answer 200.",
    ),
    (
        "tab before chunked",
        "nginx refuses a field value that starts with a tab (400); RFC 9110 §5.6.3 \
         allows it as whitespace, so switchyard takes it.",
    ),
    (
        "bare LF line ends",
        "both take the request; listed in case a version differs.",
    ),
    (
        "HTTP/1.2",
        "nginx answers HTTP/1.2 as HTTP/1.1; hyper refuses the version (400).",
    ),
    (
        "GET with a chunked body",
        "both forward the body; listed in case a version refuses it.",
    ),
    (
        "r-equal-lengths",
        "nginx refuses a response with two Content-Length headers even when equal (502); \
         switchyard relays one (RFC 9110 §8.6 allows equal duplicates).",
    ),
    (
        "r-until-close",
        "both relay the body framed by the close; listed in case a version differs.",
    ),
    (
        "r-chunked-and-length",
        "nginx refuses a response with both (502); switchyard drops Content-Length and \
         relays the chunks (RFC 9112 §6.3: chunked wins).",
    ),
    (
        "r-bare-lf-trailer",
        "nginx takes a bare LF after the last chunk; switchyard refuses it (502).",
    ),
];

/// How a probe ended for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// A status line; for a 2xx, the body as read (framed by its head).
    Answer(u16, Vec<u8>),
    /// No response: closed, or nothing within [`WAIT`].
    Nothing,
}

/// A backend that answers `/<name>` with the response of that name, `/ok`
/// (and anything else) with `200 ok`, then closes.
async fn backend() -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match s.read(&mut byte).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => head.push(byte[0]),
                    }
                }
                log.lock().unwrap().extend_from_slice(&head);
                let text = String::from_utf8_lossy(&head).into_owned();
                let path = text
                    .split(' ')
                    .nth(1)
                    .unwrap_or("/")
                    .trim_start_matches('/');
                let response = RESPONSES.iter().find(|(name, _)| *name == path).map_or(
                    &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..],
                    |(_, r)| r,
                );
                let _ = s.write_all(response).await;
                let _ = s.shutdown().await;
                // Drain what the proxy still sends (a body) until it closes.
                let mut sink = [0u8; 4096];
                while let Ok(Ok(n)) = tokio::time::timeout(WAIT, s.read(&mut sink)).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Sends `bytes` on a new connection and reads one response.
async fn probe(proxy: SocketAddr, bytes: &[u8]) -> Seen {
    let Ok(mut s) = TcpStream::connect(proxy).await else {
        return Seen::Nothing;
    };
    if s.write_all(bytes).await.is_err() {
        return Seen::Nothing;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let read = tokio::time::timeout(WAIT, async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if complete(&buf) {
                return;
            }
        }
    })
    .await;
    let _ = read;
    parse(&buf)
}

/// Whether `buf` holds a whole response (by its framing).
fn complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let body = &buf[end + 4..];
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= len;
    }
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    false
}

fn parse(buf: &[u8]) -> Seen {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Seen::Nothing;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let Some(status) = head.get(9..12).and_then(|s| s.parse::<u16>().ok()) else {
        return Seen::Nothing;
    };
    if !(200..300).contains(&status) {
        return Seen::Answer(status, Vec::new());
    }
    let raw = &buf[end + 4..];
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(raw)
    } else {
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(raw.len());
        raw[..len.min(raw.len())].to_vec()
    };
    Seen::Answer(status, body)
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else { break };
        raw = &raw[eol + 2..];
        if size == 0 || raw.len() < size {
            break;
        }
        out.extend_from_slice(&raw[..size]);
        raw = raw.get(size + 2..).unwrap_or(&[]);
    }
    out
}

/// nginx as a reverse proxy in front of `backend`, in its own directory;
/// `None` where nginx is not installed.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_binary() -> Option<&'static str> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

async fn nginx(backend: SocketAddr) -> Option<Nginx> {
    let bin = nginx_binary()?;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = dir.path().display();
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
          fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
          upstream b {{ server {backend}; keepalive 16; }}\n\
          server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://b;\
           proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host $host; }} }}\n}}\n"
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new(bin)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_err() {
        if std::time::Instant::now() > deadline {
            eprintln!(
                "nginx did not start: {}",
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            );
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some(Nginx {
        child,
        addr,
        _dir: dir,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_paths_agree_and_every_difference_with_nginx_is_known() {
    let (backend, _) = backend().await;
    let text = format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ upstream = \"default\" }}]\n\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nplain_http1 = false\nroutes = [{{ upstream = \"default\" }}]\n\n\
         [upstream.default]\nread_timeout = \"1s\"\nretry = {{ tries = 1 }}\n\
         servers = [{{ addr = \"{backend}\", max_fails = 0 }}]\n"
    );
    let config = switchyard::config::parse(&text, "differential.toml").unwrap();
    let sy = InProcess::start(&config).await;
    let hyper_listener = sy.addrs[1];
    let nginx = nginx(backend).await;
    if nginx.is_none() {
        eprintln!("differential: nginx not installed, SKIPPED the nginx column");
    }

    let mut probes: Vec<(String, Vec<u8>)> = REQUESTS
        .iter()
        .map(|(name, bytes)| (name.to_string(), bytes.to_vec()))
        .collect();
    for (name, _) in RESPONSES {
        let get = format!("GET /{name} HTTP/1.1\r\nHost: a\r\n\r\n");
        probes.push((name.to_string(), get.into_bytes()));
    }

    let mut table = String::from("probe | plain | hyper | nginx\n");
    let mut disagree_paths = Vec::new();
    let mut unknown_nginx = Vec::new();
    for (name, bytes) in &probes {
        let plain = probe(sy.addr, bytes).await;
        let hyper = probe(hyper_listener, bytes).await;
        let theirs = match &nginx {
            Some(n) => Some(probe(n.addr, bytes).await),
            None => None,
        };
        table += &format!("{name} | {plain:?} | {hyper:?} | {theirs:?}\n");
        if !same_outcome(&plain, &hyper) && !PATHS_KNOWN.iter().any(|(k, _)| k == name) {
            disagree_paths.push(name.clone());
        }
        if let Some(t) = theirs {
            let same_class = same_outcome(&plain, &t);
            if !same_class && !KNOWN.iter().any(|(k, _)| k == name) {
                unknown_nginx.push(name.clone());
            }
        }
    }
    eprintln!("{table}");
    assert!(
        disagree_paths.is_empty(),
        "the two paths disagree on {disagree_paths:?}:\n{table}"
    );
    assert!(
        unknown_nginx.is_empty(),
        "switchyard and nginx disagree on {unknown_nginx:?}, which SECURITY.md does not list:\n{table}"
    );
}

/// Whether two outcomes are the same for the client: the same status (and
/// body, for a 2xx), or both a refusal (an error status or no answer at all:
/// a 502 and a closed connection refuse alike).
fn same_outcome(a: &Seen, b: &Seen) -> bool {
    let refused = |s: &Seen| matches!(s, Seen::Nothing | Seen::Answer(500.., _));
    match (a, b) {
        (Seen::Answer(x, xb), Seen::Answer(y, yb)) => x == y && xb == yb,
        _ => refused(a) && refused(b),
    }
}

#[test]
fn security_md_lists_every_known_difference() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("SECURITY.md")).unwrap();
    for (name, _) in KNOWN.iter().chain(PATHS_KNOWN) {
        assert!(
            text.contains(&format!("`{name}`")),
            "SECURITY.md does not list `{name}`"
        );
    }
}
