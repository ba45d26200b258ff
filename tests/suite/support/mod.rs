//! Shared helpers of the integration tests: tiny backends on 127.0.0.1:0, the real
//! binary as a child process, the proxy in-process, and a small HTTP client.
//!
//! Every socket is on 127.0.0.1 with a port the kernel picks.
#![allow(dead_code)]

pub mod dns;
pub mod etcd;

use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use switchyard::config::{Config, ServerConfig};
use switchyard::proxy::{Proxy, Shutdown};
use switchyard::upstream::Table;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
type RespBody = BoxBody<Bytes, Infallible>;

/// Loopback with a port the kernel picks.
pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

// ---------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------

/// A request as a backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When the request head arrived.
    pub at: Instant,
    pub method: Method,
    pub path: String,
    pub version: Version,
    pub headers: HeaderMap,
}

/// A running test backend. Its accept loop stops when it is dropped.
pub struct Backend {
    pub addr: SocketAddr,
    /// Requests whose headers arrived (before the handler answers).
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Every request received so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Polls (bounded) until at least `n` requests have arrived.
    pub async fn wait_hits(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.hits() < n {
            assert!(
                Instant::now() < deadline,
                "backend {} got {} requests, expected {n} within {within:?}",
                self.addr,
                self.hits()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The `host:port` string servers are configured with.
    pub fn server(&self) -> ServerConfig {
        ServerConfig::new(self.addr.to_string())
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn full(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into()).boxed()
}

/// An HTTP/1.1 backend on `listener` (with upgrades) whose handler gets every
/// request after it was recorded.
fn serve_http<F, Fut>(listener: TcpListener, handler: F) -> Backend
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<RespBody>> + Send + 'static,
{
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let task = {
        let (hits, seen) = (Arc::clone(&hits), Arc::clone(&seen));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (hits, seen, handler) = (Arc::clone(&hits), Arc::clone(&seen), handler.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        seen.lock().unwrap().push(Seen {
                            at: Instant::now(),
                            method: req.method().clone(),
                            path: req.uri().to_string(),
                            version: req.version(),
                            headers: req.headers().clone(),
                        });
                        hits.fetch_add(1, Ordering::SeqCst);
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        })
    };
    Backend {
        addr,
        hits,
        seen,
        task,
    }
}

async fn bind() -> TcpListener {
    TcpListener::bind(any_port()).await.unwrap()
}

/// Answers every request with its name as the body (and `x-backend: NAME`).
pub async fn named(name: &'static str) -> Backend {
    named_on(bind().await, name)
}

/// [`named`] on a given listener (e.g. one bound to a port freed earlier).
pub fn named_on(listener: TcpListener, name: &'static str) -> Backend {
    serve_http(listener, move |_req| async move {
        let mut resp = Response::new(full(name));
        resp.headers_mut()
            .insert("x-backend", HeaderValue::from_static(name));
        resp
    })
}

/// Reads the whole request body without keeping it and answers with the byte
/// count; a body that is not [`Generated`]'s pattern gets a 422 naming the
/// first wrong offset.
pub async fn sink() -> Backend {
    serve_http(bind().await, |req| async move {
        match check_body(req.into_body()).await {
            Ok(PatternCheck {
                offset,
                first_bad: None,
                ..
            }) => Response::new(full(offset.to_string())),
            Ok(c) => {
                let mut r = Response::new(full(format!(
                    "{} bytes, first wrong byte at {:?}",
                    c.offset, c.first_bad
                )));
                *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
                r
            }
            Err(e) => {
                let mut r = Response::new(full(format!("body error: {e}")));
                *r.status_mut() = StatusCode::BAD_REQUEST;
                r
            }
        }
    })
}

/// Answers every request with `n` bytes generated on the fly.
pub async fn source(n: u64) -> Backend {
    serve_http(bind().await, move |_req| async move {
        Response::new(Generated::new(n).boxed())
    })
}

/// Answers every request after `delay` with the body `slow`.
pub async fn slow(delay: Duration) -> Backend {
    serve_http(bind().await, move |_req| async move {
        tokio::time::sleep(delay).await;
        Response::new(full("slow"))
    })
}

/// [`slow`], also noting the instant each answer was handed back to the server
/// side (after the delay), in order.
pub async fn slow_logged(delay: Duration) -> (Backend, Arc<Mutex<Vec<Instant>>>) {
    let answered = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&answered);
    let backend = serve_http(bind().await, move |_req| {
        let log = Arc::clone(&log);
        async move {
            tokio::time::sleep(delay).await;
            log.lock().unwrap().push(Instant::now());
            Response::new(full("slow"))
        }
    });
    (backend, answered)
}

/// Answers `Upgrade: websocket` with 101, then echoes raw bytes on the upgraded
/// connection; anything else gets a 400.
pub async fn ws_echo() -> Backend {
    serve_http(bind().await, |mut req| async move {
        let wants = req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        if !wants {
            let mut r = Response::new(full("not an upgrade"));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return r;
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        r
    })
}

/// Accepts, reads the request head, and never answers (the connection stays open
/// until the peer closes it). `hits` counts request heads read.
pub async fn never_answers() -> Backend {
    let listener = bind().await;
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let task = {
        let hits = Arc::clone(&hits);
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let hits = Arc::clone(&hits);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let mut counted = false;
                    loop {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        if !counted && buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            counted = true;
                            hits.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        })
    };
    Backend {
        addr,
        hits,
        seen: Arc::new(Mutex::new(Vec::new())),
        task,
    }
}

/// A loopback port with nothing listening on it (bound, then released).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind(any_port()).unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

// ---------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------

const CHUNK: usize = 64 * 1024;

/// `n` bytes made up on the fly, 64 KiB per frame; nothing is held but one
/// shared chunk.
pub struct Generated {
    remaining: u64,
    chunk: Bytes,
}

/// The 64 KiB that [`Generated`] repeats: byte `i` is `i % 251`, so a lost,
/// repeated or reordered piece shows.
fn pattern() -> Bytes {
    Bytes::from((0..CHUNK).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

impl Generated {
    pub fn new(n: u64) -> Self {
        Generated {
            remaining: n,
            chunk: pattern(),
        }
    }
}

/// Checks a stream of [`Generated`] bytes piece by piece, keeping nothing.
pub struct PatternCheck {
    pub offset: u64,
    /// Offset of the first byte that differed.
    pub first_bad: Option<u64>,
    chunk: Bytes,
}

impl Default for PatternCheck {
    fn default() -> Self {
        PatternCheck {
            offset: 0,
            first_bad: None,
            chunk: pattern(),
        }
    }
}

impl PatternCheck {
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let at = (self.offset % CHUNK as u64) as usize;
            let n = data.len().min(CHUNK - at);
            if self.first_bad.is_none() && data[..n] != self.chunk[at..at + n] {
                self.first_bad = Some(self.offset);
            }
            self.offset += n as u64;
            data = &data[n..];
        }
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(CHUNK as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Reads a body of [`Generated`] bytes to the end without keeping it: how many
/// bytes came, and the offset of the first wrong one.
pub async fn check_body(mut body: Incoming) -> Result<PatternCheck, hyper::Error> {
    let mut check = PatternCheck::default();
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame?.data_ref() {
            check.feed(d);
        }
    }
    Ok(check)
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// A whole (small) response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// Sends `req` on a new HTTP/1.1 connection to `addr`.
pub async fn send<B>(addr: SocketAddr, req: Request<B>) -> Result<Response<Incoming>, BoxError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender.send_request(req).await?)
}

/// Sends `req` and reads the whole answer.
pub async fn fetch<B>(addr: SocketAddr, req: Request<B>) -> Result<Reply, BoxError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let resp = send(addr, req).await?;
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// A GET request for `path` with `Host: localhost`.
pub fn get_request(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header(header::HOST, "localhost")
        .body(Empty::new())
        .unwrap()
}

/// GETs `path`, or says why it could not.
pub async fn try_get(addr: SocketAddr, path: &str) -> Result<Reply, BoxError> {
    fetch(addr, get_request(path)).await
}

/// Sends `method path` with `headers` and `body` (no `Content-Type` unless
/// given in `headers`) and reads the whole answer; panics on a transport error.
pub async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut req = Request::builder().method(method).uri(path);
    // A `host` among `headers` replaces the default (two would be a 400).
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header(header::HOST, addr.to_string());
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    fetch(addr, req).await.unwrap()
}

/// GETs `path`; panics on a transport error.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    try_get(addr, path).await.unwrap()
}

// ---------------------------------------------------------------------------
// The proxy in-process
// ---------------------------------------------------------------------------

/// A one-listener configuration on 127.0.0.1:0 over `servers` (upstream
/// `default`, round robin); tweak `upstreams["default"]` before starting.
pub fn config(servers: Vec<ServerConfig>) -> Config {
    Config::single_upstream(any_port(), servers)
}

/// A proxy running inside the test's runtime; stopped on drop.
pub struct InProcess {
    pub addr: SocketAddr,
    /// Every listener's address, in the configuration's order.
    pub addrs: Vec<SocketAddr>,
    pub table: Arc<Table>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<Shutdown>>,
}

impl InProcess {
    pub async fn start(config: &Config) -> InProcess {
        let table = Arc::new(Table::from_config(config).unwrap());
        let proxy = Proxy::bind(config, Arc::clone(&table)).await.unwrap();
        let addrs = proxy.local_addrs();
        let addr = addrs[0];
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(proxy.run(async move {
            let _ = rx.await;
        }));
        InProcess {
            addr,
            addrs,
            table,
            stop: Some(tx),
            done: Some(done),
        }
    }

    /// The servers of upstream `default` as the current snapshot has them.
    pub fn servers(&self) -> Vec<Arc<switchyard::upstream::Server>> {
        self.table
            .upstream("default")
            .unwrap()
            .snapshot()
            .servers
            .clone()
    }

    /// Stops accepting and waits for the run to end.
    pub async fn stop(mut self) -> Shutdown {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.done.take().unwrap().await.unwrap()
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

// ---------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------

const READY: &str = "switchyard: listening on http://";
const READY_TLS: &str = "switchyard: listening on https://";
const ADMIN_READY: &str = "switchyard: admin API on http://";

/// The child's `RUST_LOG`: `info`, or `SWITCHYARD_TEST_LOG` when set (to debug
/// a test with `SWITCHYARD_TEST_LOG=switchyard=debug`).
fn child_log_filter() -> String {
    std::env::var("SWITCHYARD_TEST_LOG").unwrap_or_else(|_| "info".into())
}

/// A readiness line of the child's stdout.
enum Ready {
    Listen(SocketAddr),
    Admin(SocketAddr),
}

/// The `switchyard` binary as a child process; killed on drop.
pub struct Switchyard {
    child: Child,
    pub addrs: Vec<SocketAddr>,
    dir: WorkDir,
    /// Stdout lines other than the readiness lines (drained so the child never
    /// blocks), with a signal for each new one.
    stdout_rest: Arc<(Mutex<Vec<String>>, Condvar)>,
    /// Readiness lines not consumed yet (the admin line may come later).
    ready_rx: Mutex<mpsc::Receiver<Ready>>,
    admin_addr: std::sync::OnceLock<SocketAddr>,
}

/// Where a child's config and stderr log live: its own temporary directory, or
/// one the test keeps (to start again with the same files).
enum WorkDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl WorkDir {
    fn path(&self) -> &std::path::Path {
        match self {
            WorkDir::Temp(d) => d.path(),
            WorkDir::Kept(p) => p,
        }
    }
}

impl Switchyard {
    /// `switchyard run -c DIR/switchyard.toml` with `text` written there, in a
    /// directory the caller keeps: the config, `stderr.log` (appended to) and
    /// any relative files stay for a later start in the same `dir` (e.g. one
    /// with the same state file after a `kill_9`). Waits for the admin line.
    pub fn run_config_in(dir: &std::path::Path, text: &str, listeners: usize) -> Switchyard {
        let path = dir.join("switchyard.toml");
        std::fs::write(&path, text).unwrap();
        let args = vec![
            "run".to_string(),
            "-c".into(),
            path.to_string_lossy().into_owned(),
        ];
        Switchyard::start_dir(WorkDir::Kept(dir.to_path_buf()), &args, listeners, true)
    }

    /// `switchyard proxy --listen 127.0.0.1:0 --to A --to B ...`
    pub fn proxy(to: &[SocketAddr]) -> Switchyard {
        let mut args = vec!["proxy".to_string(), "--listen".into(), "127.0.0.1:0".into()];
        for a in to {
            args.push("--to".into());
            args.push(a.to_string());
        }
        Switchyard::start(&args, 1)
    }

    /// `switchyard run -c FILE` with `text` written to a temporary file.
    pub fn run_config(text: &str, listeners: usize) -> Switchyard {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, text).unwrap();
        let args = vec![
            "run".to_string(),
            "-c".into(),
            path.to_string_lossy().into_owned(),
        ];
        Switchyard::start_in(dir, &args, listeners, false)
    }

    /// [`Switchyard::run_config_with_admin`] with more arguments after
    /// `run -c FILE` (e.g. `--workers 4`).
    pub fn run_config_with_admin_args(text: &str, extra: &[&str], listeners: usize) -> Switchyard {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, text).unwrap();
        let mut args = vec![
            "run".to_string(),
            "-c".into(),
            path.to_string_lossy().into_owned(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        Switchyard::start_in(dir, &args, listeners, true)
    }

    /// [`Switchyard::run_config`] for a config with an `[admin]` listener; waits
    /// for its readiness line too.
    pub fn run_config_with_admin(text: &str, listeners: usize) -> Switchyard {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, text).unwrap();
        let args = vec![
            "run".to_string(),
            "-c".into(),
            path.to_string_lossy().into_owned(),
        ];
        Switchyard::start_in(dir, &args, listeners, true)
    }

    /// `switchyard demo` on port 0 everywhere (backends too), with its state file
    /// in the child's temporary directory; waits for the proxy and admin lines.
    pub fn demo() -> Switchyard {
        Switchyard::demo_with(&[])
    }

    /// [`Switchyard::demo`] with more arguments (e.g. `--log-format json`).
    pub fn demo_with(extra: &[&str]) -> Switchyard {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("s.json");
        let args: Vec<String> = [
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--backend-ports",
            "0,0,0",
            "--state-file",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([state.to_string_lossy().into_owned()])
        .chain(extra.iter().map(|s| s.to_string()))
        .collect();
        Switchyard::start_in(dir, &args, 1, true)
    }

    /// Spawns the binary with `args` and waits for `listeners` readiness lines
    /// and the admin API line.
    pub fn start_with_admin(args: &[String], listeners: usize) -> Switchyard {
        Switchyard::start_in(tempfile::tempdir().unwrap(), args, listeners, true)
    }

    /// The admin API's address, from its readiness line (waits at most 30 s for
    /// it; it follows the listeners' lines).
    pub fn admin(&self) -> SocketAddr {
        *self.admin_addr.get_or_init(|| {
            let rx = self.ready_rx.lock().unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(Ready::Admin(addr)) => return addr,
                    Ok(Ready::Listen(_)) => continue,
                    Err(_) => panic!(
                        "switchyard printed no admin readiness line; stderr:\n{}",
                        self.stderr()
                    ),
                }
            }
        })
    }

    /// Stdout lines other than the readiness lines, so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout_rest.0.lock().unwrap().clone()
    }

    /// Spawns the binary with `args` and waits until it printed `listeners`
    /// readiness lines (at most 30 s).
    pub fn start(args: &[String], listeners: usize) -> Switchyard {
        Switchyard::start_in(tempfile::tempdir().unwrap(), args, listeners, false)
    }

    fn start_in(
        dir: tempfile::TempDir,
        args: &[String],
        listeners: usize,
        want_admin: bool,
    ) -> Switchyard {
        Switchyard::start_dir(WorkDir::Temp(dir), args, listeners, want_admin)
    }

    fn start_dir(dir: WorkDir, args: &[String], listeners: usize, want_admin: bool) -> Switchyard {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("stderr.log"))
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(args)
            .env("RUST_LOG", child_log_filter())
            .env_remove("SWITCHYARD_ADMIN_TOKEN")
            // So that tests/suite/logging.rs checks that colour follows stderr being
            // a terminal, not that the tester's shell has NO_COLOR set.
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<Ready>();
        let rest = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        {
            let rest = Arc::clone(&rest);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let parse = |prefix: &str| {
                        line.strip_prefix(prefix)
                            .and_then(|a| a.trim().parse::<SocketAddr>().ok())
                    };
                    if let Some(addr) = parse(READY).or_else(|| parse(READY_TLS)) {
                        let _ = tx.send(Ready::Listen(addr));
                    } else {
                        let admin = parse(ADMIN_READY);
                        rest.0.lock().unwrap().push(line);
                        rest.1.notify_all();
                        if let Some(addr) = admin {
                            let _ = tx.send(Ready::Admin(addr));
                        }
                    }
                }
            });
        }
        let mut me = Switchyard {
            child,
            addrs: Vec::new(),
            dir,
            stdout_rest: rest,
            ready_rx: Mutex::new(mpsc::channel().1),
            admin_addr: std::sync::OnceLock::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while me.addrs.len() < listeners || (want_admin && me.admin_addr.get().is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Ready::Listen(addr)) => me.addrs.push(addr),
                Ok(Ready::Admin(addr)) => {
                    let _ = me.admin_addr.set(addr);
                }
                Err(_) => panic!(
                    "switchyard {args:?} not ready (exit: {:?}); stderr:\n{}",
                    me.child.try_wait(),
                    me.stderr()
                ),
            }
        }
        me.ready_rx = Mutex::new(rx);
        me
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Waits (at most `within`) until the child printed a stdout line starting
    /// with `prefix`, and returns the rest of that line.
    pub fn wait_line(&self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let (lines, signal) = &*self.stdout_rest;
        let mut seen = lines.lock().unwrap();
        loop {
            if let Some(rest) = seen.iter().find_map(|l| l.strip_prefix(prefix)) {
                return rest.to_string();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "switchyard printed no line starting with {prefix:?} within {within:?}; stdout:\n{}\nstderr:\n{}",
                seen.join("\n"),
                self.stderr()
            );
            seen = signal.wait_timeout(seen, left).unwrap().0;
        }
    }

    /// Kills the child with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill_9(&mut self) -> ExitStatus {
        self.child.kill().unwrap();
        self.child.wait().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the child logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let st = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -TERM {} failed", self.pid());
    }

    /// Polls (bounded) until the child exits.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "switchyard did not exit within {within:?}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Peak resident set size of the child (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }
}

impl Drop for Switchyard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Raw sockets
// ---------------------------------------------------------------------------

/// Writes `head` on a new connection and reads until the end of the response
/// head; returns the head and the stream.
pub async fn raw_request(addr: SocketAddr, head: &str) -> (String, TcpStream) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.unwrap();
        assert!(
            n > 0,
            "connection closed after {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    (String::from_utf8_lossy(&buf).into_owned(), stream)
}

/// How a child that was expected to stop on its own ended.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary with `args` and waits (bounded) for it to exit on its own;
/// panics, after killing it, if it is still running after `within`.
pub fn run_to_exit(args: &[String], within: Duration) -> Exited {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "switchyard {args:?} still running after {within:?}; stderr:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Exited {
        status,
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------
// The admin API
// ---------------------------------------------------------------------------

/// Serves the admin API over `table` with `config`'s access policy, on its own
/// thread (as the binary does); returns where it listens.
pub fn spawn_admin(table: Arc<Table>, config: switchyard::config::AdminConfig) -> SocketAddr {
    let server = switchyard::admin::AdminServer::bind(&config, table).unwrap();
    let addr = server.local_addr().unwrap();
    server.spawn().unwrap();
    addr
}

/// [`spawn_admin`] on 127.0.0.1:0 with no rules, no token.
pub fn spawn_open_admin(table: Arc<Table>) -> SocketAddr {
    spawn_admin(table, switchyard::config::AdminConfig::new(any_port()))
}

/// An answer of the admin API.
#[derive(Debug)]
pub struct ApiReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
    /// The body as JSON (`Null` when it is empty or not JSON).
    pub json: serde_json::Value,
    /// The client's end of the connection (what the API sees as the origin).
    pub local: SocketAddr,
}

impl ApiReply {
    /// `error.code` of an error body ("" when there is none).
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl std::fmt::Display for ApiReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.body)
    }
}

/// One admin API request, built up and then sent on a new connection.
#[derive(Debug, Clone)]
pub struct Call {
    method: Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Bytes,
    from: Option<std::net::IpAddr>,
}

impl Call {
    pub fn new(method: Method, path: &str) -> Call {
        Call {
            method,
            path: path.to_string(),
            headers: Vec::new(),
            body: Bytes::new(),
            from: None,
        }
    }

    pub fn get(path: &str) -> Call {
        Call::new(Method::GET, path)
    }

    pub fn delete(path: &str) -> Call {
        Call::new(Method::DELETE, path)
    }

    /// POST with a JSON body.
    pub fn post(path: &str, json: &str) -> Call {
        Call::new(Method::POST, path).json(json)
    }

    /// PATCH with a JSON body.
    pub fn patch(path: &str, json: &str) -> Call {
        Call::new(Method::PATCH, path).json(json)
    }

    /// `json` as the body, with `Content-Type: application/json`.
    pub fn json(self, json: &str) -> Call {
        self.body("application/json", json.to_string())
    }

    /// A body of any type.
    pub fn body(mut self, content_type: &str, body: impl Into<Bytes>) -> Call {
        self.headers.retain(|(k, _)| k != "content-type");
        self.headers
            .push(("content-type".into(), content_type.to_string()));
        self.body = body.into();
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Call {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn bearer(self, token: &str) -> Call {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// Connects from this local address (any of 127/8 works on Linux).
    pub fn from(mut self, ip: std::net::IpAddr) -> Call {
        self.from = Some(ip);
        self
    }

    /// Sends the request on a new HTTP/1.1 connection and reads the answer.
    pub async fn send(self, admin: SocketAddr) -> ApiReply {
        self.try_send(admin)
            .await
            .unwrap_or_else(|e| panic!("admin request failed: {e}"))
    }

    pub async fn try_send(self, admin: SocketAddr) -> Result<ApiReply, BoxError> {
        let (resp, local) = self.start(admin).await?;
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await?.to_bytes();
        let body = String::from_utf8_lossy(&bytes).into_owned();
        Ok(ApiReply {
            status: parts.status,
            headers: parts.headers,
            json: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
            body,
            local,
        })
    }

    /// Sends the request and returns the response as soon as its head arrived
    /// (for streams), with the client's end of the connection.
    pub async fn start(
        self,
        admin: SocketAddr,
    ) -> Result<(Response<Incoming>, SocketAddr), BoxError> {
        let stream = match self.from {
            None => TcpStream::connect(admin).await?,
            Some(ip) => {
                let socket = match ip {
                    std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                    std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
                };
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(admin).await?
            }
        };
        let local = stream.local_addr()?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(self.method)
            .uri(self.path)
            .header(header::HOST, admin.to_string());
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req.body(Full::new(self.body))?;
        Ok((sender.send_request(req).await?, local))
    }
}

// ---------------------------------------------------------------------------
// Health-checked backends, load and the native API
// ---------------------------------------------------------------------------

/// Checks in flight at once, across every backend that shares it.
#[derive(Debug, Default)]
pub struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    pub fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a [`checked`] backend answers to checks, and what it saw. Checks are
/// requests whose path starts with `/health`; everything else is traffic.
#[derive(Debug)]
pub struct CheckCtl {
    /// Status answered to checks (traffic always gets 200).
    pub status: std::sync::atomic::AtomicU16,
    /// Body answered to checks.
    pub body: Mutex<String>,
    /// Delay before answering a check, in ms.
    pub delay_ms: std::sync::atomic::AtomicU64,
    /// Statuses answered to checks, in order (one per check that got an answer
    /// chosen; pushed when the check arrives).
    pub answers: Mutex<Vec<u16>>,
    pub traffic: AtomicUsize,
    pub gauge: Arc<Gauge>,
}

impl CheckCtl {
    /// Checks received so far.
    pub fn checks(&self) -> usize {
        self.answers.lock().unwrap().len()
    }
    /// Checks answered with `status` so far.
    pub fn answered(&self, status: u16) -> usize {
        self.answers
            .lock()
            .unwrap()
            .iter()
            .filter(|s| **s == status)
            .count()
    }
    pub fn traffic(&self) -> usize {
        self.traffic.load(Ordering::SeqCst)
    }
    pub fn set_status(&self, s: u16) {
        self.status.store(s, Ordering::SeqCst);
    }
    pub fn set_body(&self, b: &str) {
        *self.body.lock().unwrap() = b.to_string();
    }
}

/// A backend for health checks: `/health*` gets [`CheckCtl::status`] and
/// [`CheckCtl::body`]; anything else gets 200 with `name` as the body.
pub struct Checked {
    pub backend: Backend,
    pub ctl: Arc<CheckCtl>,
}

impl Checked {
    pub fn addr(&self) -> SocketAddr {
        self.backend.addr
    }
}

impl std::ops::Deref for Checked {
    type Target = CheckCtl;
    fn deref(&self) -> &CheckCtl {
        &self.ctl
    }
}

/// [`Checked`] with its own gauge.
pub async fn checked(name: &'static str) -> Checked {
    checked_sharing(name, Arc::new(Gauge::default())).await
}

/// [`Checked`] counting checks in flight on `gauge`.
pub async fn checked_sharing(name: &'static str, gauge: Arc<Gauge>) -> Checked {
    let ctl = Arc::new(CheckCtl {
        status: std::sync::atomic::AtomicU16::new(200),
        body: Mutex::new("OK".into()),
        delay_ms: std::sync::atomic::AtomicU64::new(0),
        answers: Mutex::new(Vec::new()),
        traffic: AtomicUsize::new(0),
        gauge,
    });
    let c = Arc::clone(&ctl);
    let backend = serve_http(bind().await, move |req| {
        let c = Arc::clone(&c);
        async move {
            if !req.uri().path().starts_with("/health") {
                c.traffic.fetch_add(1, Ordering::SeqCst);
                return Response::new(full(name));
            }
            c.gauge.enter();
            let status = c.status.load(Ordering::SeqCst);
            let body = c.body.lock().unwrap().clone();
            c.answers.lock().unwrap().push(status);
            let delay = c.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            c.gauge.leave();
            let mut r = Response::new(full(body));
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            r
        }
    });
    Checked { backend, ctl }
}

/// A raw TCP backend: reads until the end of a request head, keeps the bytes,
/// answers `HTTP/1.0 200 OK\r\n\r\n` and closes.
pub struct RawRecorder {
    pub addr: SocketAddr,
    pub reads: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn raw_recorder() -> RawRecorder {
    let listener = bind().await;
    let addr = listener.local_addr().unwrap();
    let reads = Arc::new(Mutex::new(Vec::new()));
    let r = Arc::clone(&reads);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let r = Arc::clone(&r);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                r.lock().unwrap().push(buf);
                let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\n").await;
                let _ = stream.shutdown().await;
            });
        }
    });
    RawRecorder { addr, reads, task }
}

/// Clients sending GETs through a proxy without pause, counting answers.
pub struct Load {
    pub ok: Arc<AtomicUsize>,
    /// Non-200 answers and transport errors, with the first few reasons.
    pub errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `clients` tasks GETting `/` from `addr` in a loop.
    pub fn start(addr: SocketAddr, clients: usize) -> Load {
        let ok = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|_| {
                let (ok, errors, stop) = (Arc::clone(&ok), Arc::clone(&errors), Arc::clone(&stop));
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        match try_get(addr, "/").await {
                            Ok(r) if r.status == StatusCode::OK => {
                                ok.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(r) => errors
                                .lock()
                                .unwrap()
                                .push(format!("{}: {}", r.status, r.body)),
                            Err(e) => errors.lock().unwrap().push(e.to_string()),
                        }
                    }
                })
            })
            .collect();
        Load {
            ok,
            errors,
            stop,
            tasks,
        }
    }

    pub fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    /// Stops the clients, waits for them, and returns (ok, errors).
    pub async fn stop(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        (self.ok(), self.errors.lock().unwrap().clone())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// `GET` on the admin API, as JSON; panics unless 200.
pub async fn api_json(admin: SocketAddr, path: &str) -> serde_json::Value {
    let r = get(admin, path).await;
    assert_eq!(r.status, StatusCode::OK, "GET {path}: {}", r.body);
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("GET {path}: {e}: {}", r.body))
}

/// `method path` on the admin API with a JSON body.
pub async fn api_send(admin: SocketAddr, method: Method, path: &str, json: &str) -> Reply {
    call(
        admin,
        method,
        path,
        &[("content-type", "application/json")],
        json,
    )
    .await
}

/// The native API's view of server `id` of `upstream`.
pub async fn server_view(admin: SocketAddr, upstream: &str, id: u32) -> serde_json::Value {
    api_json(admin, &format!("/api/v1/upstreams/{upstream}/servers/{id}")).await
}

/// Polls the server's view (every 5 ms, at most `within`) until `cond` holds;
/// returns that view.
pub async fn wait_view(
    admin: SocketAddr,
    upstream: &str,
    id: u32,
    within: Duration,
    what: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let v = server_view(admin, upstream, id).await;
        if cond(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "server {id} of {upstream}: not {what} within {within:?}; last view: {v}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls (every 5 ms, at most `within`) until `cond` holds.
pub async fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "not {what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A server as the native API lists it, reduced to (id, addr, state, weight):
/// what tests compare tables by.
pub type ServerRow = (u64, String, String, u64);

pub fn server_row(s: &serde_json::Value) -> ServerRow {
    (
        s["id"].as_u64().unwrap(),
        s["addr"].as_str().unwrap().to_string(),
        s["state"].as_str().unwrap().to_string(),
        s["weight"].as_u64().unwrap(),
    )
}
