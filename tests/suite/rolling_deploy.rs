//! Rolling deploys under load through the real binary: three backends, 64
//! keep-alive clients, and each backend replaced in turn — first drained through
//! the API (no client may see a failure), then killed without warning (every GET
//! still succeeds; failed POSTs are bounded by those in flight at the kill).
//!
//! `bench/rolling_deploy.sh` runs the same scenarios on the release binary with
//! more load (`ROLLING_DEPLOY_CLIENTS`, `ROLLING_DEPLOY_HITS`).

use crate::support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use support::{Call, Switchyard, any_port};

/// How long each backend takes to answer: long enough that requests are in flight
/// when a drain starts or a backend dies.
const WORK: Duration = Duration::from_millis(3);
const POST_BODY: usize = 1024;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A socket on `addr` with `SO_REUSEADDR`, so a new listener can take the port
/// while the old one's connections linger in TIME_WAIT.
fn reuse_socket(addr: SocketAddr) -> TcpSocket {
    let s = TcpSocket::new_v4().unwrap();
    s.set_reuseaddr(true).unwrap();
    s.bind(addr).unwrap();
    s
}

// ---------------------------------------------------------------------------
// A backend that can be killed and started again on the same port
// ---------------------------------------------------------------------------

struct Restartable {
    name: &'static str,
    addr: SocketAddr,
    /// Bound, never listening: keeps the port ours while the backend is down.
    _hold: TcpSocket,
    /// Requests received, over every instance.
    hits: Arc<AtomicUsize>,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Restartable {
    fn start(name: &'static str) -> Restartable {
        let hold = reuse_socket(any_port());
        let addr = hold.local_addr().unwrap();
        let mut me = Restartable {
            name,
            addr,
            _hold: hold,
            hits: Arc::new(AtomicUsize::new(0)),
            running: None,
        };
        me.restart();
        me
    }

    fn hits(&self) -> usize {
        self.hits.load(SeqCst)
    }

    /// Starts a new instance on the same port.
    fn restart(&mut self) {
        assert!(self.running.is_none(), "{} is already running", self.name);
        let listener = reuse_socket(self.addr).listen(1024).unwrap();
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let (name, hits) = (self.name, Arc::clone(&self.hits));
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    biased;
                    _ = &mut stop_rx => break,
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            conns.spawn(serve(stream, name, Arc::clone(&hits)));
                        }
                    }
                }
            }
            // As `kill -9` would: the listener and every connection close at
            // once, whatever they were doing.
            drop(listener);
            conns.abort_all();
            while conns.join_next().await.is_some() {}
        });
        self.running = Some((stop_tx, task));
    }

    /// Stops the instance abruptly; returns once its listener and every one of
    /// its connections are closed.
    async fn kill(&mut self) {
        let (stop, task) = self.running.take().expect("backend is running");
        let _ = stop.send(());
        task.await.unwrap();
    }

    /// Polls (bounded) until this backend got `n` more requests than `since`.
    async fn wait_hits_after(&self, since: usize, n: usize, sy: &Switchyard) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.hits() < since + n {
            assert!(
                Instant::now() < deadline,
                "{} got {} requests since it was started, expected {n}; switchyard's log:\n{}",
                self.name,
                self.hits() - since,
                sy.stderr()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// GET answers with the backend's name, POST with the request body's length.
async fn serve(stream: TcpStream, name: &'static str, hits: Arc<AtomicUsize>) {
    let service = service_fn(move |req: Request<Incoming>| {
        hits.fetch_add(1, SeqCst);
        async move {
            let body = if req.method() == Method::POST {
                let n = req.into_body().collect().await?.to_bytes().len();
                Bytes::from(n.to_string())
            } else {
                Bytes::from_static(name.as_bytes())
            };
            tokio::time::sleep(WORK).await;
            Ok::<_, hyper::Error>(Response::new(Full::new(body)))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

// ---------------------------------------------------------------------------
// Load: keep-alive clients sending until told to stop
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Counts {
    gets_sent: AtomicU64,
    posts_sent: AtomicU64,
    gets_failed: AtomicU64,
    posts_failed: AtomicU64,
    /// POSTs whose answer has been read (or failed), to tell how many are in flight.
    posts_done: AtomicU64,
}

struct Load {
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    errors: Arc<Mutex<Vec<String>>>,
}

#[derive(Debug)]
struct Tally {
    gets_sent: u64,
    posts_sent: u64,
    gets_failed: u64,
    posts_failed: u64,
    errors: Vec<String>,
}

impl Load {
    /// `clients` tasks, each on its own keep-alive connection to `proxy`; every
    /// fourth request of each is a POST with a body.
    fn start(proxy: SocketAddr, clients: usize) -> Load {
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|i| {
                let (counts, stop, errors) =
                    (Arc::clone(&counts), Arc::clone(&stop), Arc::clone(&errors));
                tokio::spawn(client(proxy, i, counts, stop, errors))
            })
            .collect();
        Load {
            counts,
            stop,
            tasks,
            errors,
        }
    }

    fn answered(&self) -> u64 {
        let c = &self.counts;
        c.gets_sent.load(SeqCst) + c.posts_done.load(SeqCst)
    }

    /// POSTs sent whose answer has not come yet.
    fn posts_in_flight(&self) -> u64 {
        self.counts.posts_sent.load(SeqCst) - self.counts.posts_done.load(SeqCst)
    }

    async fn stop(self) -> Tally {
        self.stop.store(true, SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        let c = &self.counts;
        Tally {
            gets_sent: c.gets_sent.load(SeqCst),
            posts_sent: c.posts_sent.load(SeqCst),
            gets_failed: c.gets_failed.load(SeqCst),
            posts_failed: c.posts_failed.load(SeqCst),
            errors: self.errors.lock().unwrap().clone(),
        }
    }
}

type ClientSender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(proxy: SocketAddr) -> Result<ClientSender, support::BoxError> {
    let stream = TcpStream::connect(proxy).await?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends one request and checks the whole answer: 200 with the expected body.
async fn exchange(
    sender: &mut ClientSender,
    req: Request<Full<Bytes>>,
    post: bool,
) -> Result<(), String> {
    sender
        .ready()
        .await
        .map_err(|e| format!("not ready: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{status}, body cut: {e}"))?
        .to_bytes();
    let body = String::from_utf8_lossy(&body);
    let expected = if post {
        body == POST_BODY.to_string()
    } else {
        ["a", "b", "c"].contains(&&*body)
    };
    if status != StatusCode::OK || !expected {
        return Err(format!("{status}: {}", body.trim()));
    }
    Ok(())
}

async fn client(
    proxy: SocketAddr,
    index: usize,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    errors: Arc<Mutex<Vec<String>>>,
) {
    let mut sender: Option<ClientSender> = None;
    let payload = Bytes::from(vec![b'x'; POST_BODY]);
    let mut n = index;
    while !stop.load(SeqCst) {
        n += 1;
        let post = n.is_multiple_of(4);
        let req = if post {
            Request::post("/upload").body(Full::new(payload.clone()))
        } else {
            Request::get("/").body(Full::new(Bytes::new()))
        };
        let req = req.map(|mut r| {
            r.headers_mut()
                .insert(hyper::header::HOST, "app".parse().unwrap());
            r
        });
        let req = req.unwrap();
        if post {
            counts.posts_sent.fetch_add(1, SeqCst);
        } else {
            counts.gets_sent.fetch_add(1, SeqCst);
        }
        let result = match &mut sender {
            Some(s) => exchange(s, req, post).await,
            None => match connect(proxy).await {
                Ok(mut s) => {
                    let r = exchange(&mut s, req, post).await;
                    sender = Some(s);
                    r
                }
                Err(e) => Err(format!("cannot connect to the proxy: {e}")),
            },
        };
        if post {
            counts.posts_done.fetch_add(1, SeqCst);
        }
        if let Err(e) = result {
            let failed = if post {
                &counts.posts_failed
            } else {
                &counts.gets_failed
            };
            failed.fetch_add(1, SeqCst);
            let what = if post { "POST" } else { "GET" };
            errors.lock().unwrap().push(format!("{what}: {e}"));
            // The connection may be the broken part: start again on a new one.
            sender = None;
        }
    }
}

// ---------------------------------------------------------------------------
// The proxy and its API
// ---------------------------------------------------------------------------

fn start_proxy(backends: &[Restartable], server_extra: &str) -> Switchyard {
    let servers: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ addr = \"{}\"{server_extra} }}", b.addr))
        .collect();
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ path_prefix = \"/\", upstream = \"app\" }}]\n\n\
         [upstream.app]\nservers = [{}]\n",
        servers.join(", ")
    );
    Switchyard::run_config_with_admin(&config, 1)
}

/// The id the API gives the server at `addr`.
async fn server_id(admin: SocketAddr, addr: SocketAddr) -> u64 {
    let r = Call::get("/api/v1/upstreams/app/servers").send(admin).await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    let list = r.json.as_array().cloned().unwrap_or_else(|| {
        r.json["servers"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("no server list in {r}"))
    });
    list.iter()
        .find(|s| s["addr"] == addr.to_string().as_str())
        .and_then(|s| s["id"].as_u64())
        .unwrap_or_else(|| panic!("no server {addr} in {r}"))
}

async fn set_state(admin: SocketAddr, id: u64, state: &str, query: &str) -> support::ApiReply {
    Call::patch(
        &format!("/api/v1/upstreams/app/servers/{id}{query}"),
        &format!("{{\"state\":\"{state}\"}}"),
    )
    .send(admin)
    .await
}

/// Polls (bounded) until the clients have had `n` more answers.
async fn wait_answers(load: &Load, n: u64) {
    let since = load.answered();
    let deadline = Instant::now() + Duration::from_secs(5);
    while load.answered() < since + n {
        assert!(
            Instant::now() < deadline,
            "the clients got only {} answers in 5 s",
            load.answered() - since
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn report(scenario: &str, t: &Tally, took: Duration, extra: &str) {
    println!(
        "rolling deploy ({scenario}): {} requests sent ({} GET, {} POST), {} failed ({} GET, {} POST){extra}, in {took:.2?}",
        t.gets_sent + t.posts_sent,
        t.gets_sent,
        t.posts_sent,
        t.gets_failed + t.posts_failed,
        t.gets_failed,
        t.posts_failed,
    );
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn draining_each_backend_before_replacing_it_loses_no_request_under_load() {
    let clients = env_or("ROLLING_DEPLOY_CLIENTS", 64);
    let per_step = env_or("ROLLING_DEPLOY_HITS", 300);
    let mut backends = [
        Restartable::start("a"),
        Restartable::start("b"),
        Restartable::start("c"),
    ];
    let sy = start_proxy(&backends, "");
    let (proxy, admin) = (sy.addr(), sy.admin());
    let started = Instant::now();
    let load = Load::start(proxy, clients);
    wait_answers(&load, per_step as u64).await;

    for b in &mut backends {
        let id = server_id(admin, b.addr).await;
        let r = set_state(admin, id, "drain", "?wait=10s").await;
        assert_eq!(r.status, StatusCode::OK, "drain {}: {r}", b.name);
        assert_eq!(r.json["active"], 0, "{r}");
        let before = b.hits();
        b.kill().await;
        b.restart();
        let r = set_state(admin, id, "up", "").await;
        assert_eq!(r.status, StatusCode::OK, "up {}: {r}", b.name);
        // The new instance takes its share before the next one goes.
        b.wait_hits_after(before, per_step / 3, &sy).await;
        wait_answers(&load, per_step as u64).await;
    }

    let tally = load.stop().await;
    let took = started.elapsed();
    report("drain, replace, up", &tally, took, "");
    assert_eq!(
        tally.gets_failed + tally.posts_failed,
        0,
        "client-visible failures: {:?}",
        &tally.errors[..tally.errors.len().min(10)]
    );
    assert!(tally.gets_sent + tally.posts_sent >= 4 * per_step as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_backend_mid_load_fails_no_get_and_only_posts_in_flight_at_the_kill() {
    let clients = env_or("ROLLING_DEPLOY_CLIENTS", 64);
    let per_step = env_or("ROLLING_DEPLOY_HITS", 300);
    let mut backends = [
        Restartable::start("a"),
        Restartable::start("b"),
        Restartable::start("c"),
    ];
    // A killed server is out for a short while only, so that the next kill finds
    // all three taking traffic again.
    let sy = start_proxy(&backends, ", fail_timeout = \"200ms\"");
    let proxy = sy.addr();
    let started = Instant::now();
    let load = Load::start(proxy, clients);
    wait_answers(&load, per_step as u64).await;

    // Every POST that can fail was in flight at some point of a kill: sent before
    // its end and not answered before its start.
    let mut in_flight_at_kills = 0;
    for b in &mut backends {
        let posts_before = load.counts.posts_sent.load(SeqCst);
        let in_flight = load.posts_in_flight();
        b.kill().await;
        in_flight_at_kills += in_flight + (load.counts.posts_sent.load(SeqCst) - posts_before);
        let before = b.hits();
        b.restart();
        b.wait_hits_after(before, per_step / 3, &sy).await;
        wait_answers(&load, per_step as u64).await;
    }

    let tally = load.stop().await;
    let took = started.elapsed();
    report(
        "kill -9, restart",
        &tally,
        took,
        &format!(", {in_flight_at_kills} POSTs in flight at the 3 kills"),
    );
    assert_eq!(
        tally.gets_failed,
        0,
        "GETs failed: {:?}",
        &tally.errors[..tally.errors.len().min(10)]
    );
    assert!(
        tally.posts_failed <= in_flight_at_kills,
        "{} POSTs failed, only {in_flight_at_kills} were in flight at the kills: {:?}",
        tally.posts_failed,
        &tally.errors[..tally.errors.len().min(10)]
    );
    assert!(tally.gets_sent + tally.posts_sent >= 4 * per_step as u64);
}
