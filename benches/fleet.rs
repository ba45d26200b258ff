//! Fleet convergence (issue 8): three instances of the release binary share one
//! table through a real etcd. 1,000 changes go through A (server 0's weight,
//! alternating); each is timed from A's answer until B and C both show it.
//! Then sequential writes through A are timed for throughput.
//!
//!     cargo build --release && cargo bench --bench fleet
//!     SWITCHYARD_BIN=/path/to/switchyard FLEET_CHANGES=200 cargo bench --bench fleet
//!
//! B and C are polled over one keep-alive connection each (`GET` of the server's
//! view, no pause), so a time includes up to one poll round trip.

#[path = "../tests/support/etcd.rs"]
mod etcd;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

const SERVER0: &str = "/api/v1/upstreams/web/servers/0";
const ADMIN_READY: &str = "switchyard: admin API on http://";
const CONVERGE_WITHIN: Duration = Duration::from_secs(10);

/// The release binary: `SWITCHYARD_BIN`, else `$CARGO_TARGET_DIR/release/`,
/// else `target/release/`.
fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SWITCHYARD_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let p = target.join("release").join("switchyard");
    assert!(
        p.is_file(),
        "no release binary at {} (run `cargo build --release` or set SWITCHYARD_BIN)",
        p.display()
    );
    p
}

/// One instance; killed on drop.
struct Instance {
    child: Child,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Instance {
    fn start(bin: &PathBuf, etcd: &etcd::Etcd, prefix: &str, name: &str) -> Instance {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("switchyard.toml");
        let state = dir.path().join(format!("{name}.state.json"));
        // The servers take no traffic here; their addresses need not answer.
        std::fs::write(
            &cfg,
            format!(
                "[admin]\nlisten = \"127.0.0.1:0\"\nstate_file = \"{}\"\n\n\
                 [cluster]\nstore = \"etcd\"\nendpoints = [\"{}\"]\nprefix = \"{prefix}\"\ntimeout = \"2s\"\n\n\
                 [[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ upstream = \"web\" }}]\n\n\
                 [upstream.web]\nservers = [{{ addr = \"127.0.0.1:9\" }}, {{ addr = \"127.0.0.1:10\" }}]\n",
                state.display(),
                etcd.endpoint()
            ),
        )
        .unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut child = Command::new(bin)
            .args(["run", "-c"])
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(a) = line.strip_prefix(ADMIN_READY) {
                    let _ = tx.send(a.trim().parse::<SocketAddr>().unwrap());
                }
            }
        });
        let admin = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "{name}: no admin line within 30 s; stderr:\n{}",
                    std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
                )
            });
        Instance {
            child,
            admin,
            _dir: dir,
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A keep-alive HTTP/1.1 connection to an admin API.
struct Conn {
    addr: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Conn { addr, sender }
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        json: Option<String>,
    ) -> (StatusCode, serde_json::Value) {
        if self.sender.ready().await.is_err() {
            *self = Conn::open(self.addr).await;
        }
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.addr.to_string());
        if json.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(json.unwrap_or_default())))
            .unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    async fn weight0(&mut self) -> u64 {
        let (status, v) = self.send(Method::GET, SERVER0, None).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        v["weight"].as_u64().unwrap()
    }

    async fn set_weight0(&mut self, w: u64) {
        let (status, v) = self
            .send(
                Method::PATCH,
                SERVER0,
                Some(serde_json::json!({ "weight": w }).to_string()),
            )
            .await;
        assert!(status.is_success(), "PATCH weight {w}: {status} {v}");
        assert_eq!(v["weight"], w, "{v}");
    }
}

/// Polls `conn` without pause until server 0 has weight `w`; when it did.
async fn seen(conn: &mut Conn, w: u64, deadline: Instant) -> Instant {
    loop {
        if conn.weight0().await == w {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "{} did not show weight {w} within {CONVERGE_WITHIN:?}",
            conn.addr
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `p`-th percentile (nearest rank) of sorted `v`.
fn pct(v: &[Duration], p: f64) -> Duration {
    let i = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[i.clamp(1, v.len()) - 1]
}

fn main() {
    // `cargo bench` passes `--bench`; any filter argument is ignored.
    let changes: usize = std::env::var("FLEET_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let bin = binary();
    let etcd = etcd::Etcd::start();
    let prefix = format!("/switchyard/bench-{}", std::process::id());
    let a = Instance::start(&bin, &etcd, &prefix, "a");
    let b = Instance::start(&bin, &etcd, &prefix, "b");
    let c = Instance::start(&bin, &etcd, &prefix, "c");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut ca, mut cb, mut cc) = (
            Conn::open(a.admin).await,
            Conn::open(b.admin).await,
            Conn::open(c.admin).await,
        );
        // Everyone is up and agrees before the clock starts.
        ca.set_weight0(7).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        seen(&mut cb, 7, deadline).await;
        seen(&mut cc, 7, deadline).await;

        let mut converge = Vec::with_capacity(changes);
        let mut answer = Vec::with_capacity(changes);
        for i in 0..changes {
            let w = if i % 2 == 0 { 2 } else { 3 };
            let sent = Instant::now();
            ca.set_weight0(w).await;
            let answered = Instant::now();
            answer.push(answered - sent);
            let deadline = answered + CONVERGE_WITHIN;
            let (tb, tc) = tokio::join!(seen(&mut cb, w, deadline), seen(&mut cc, w, deadline));
            converge.push(tb.max(tc) - answered);
        }
        converge.sort();
        answer.sort();

        // Sequential writes through A, nothing else going on.
        let writes = changes.max(100);
        let t0 = Instant::now();
        for i in 0..writes {
            ca.set_weight0(10 + (i % 2) as u64).await;
        }
        let took = t0.elapsed().as_secs_f64();
        let wps = writes as f64 / took;

        println!();
        println!(
            "fleet: 3 instances, 1 etcd ({}), {changes} changes through A",
            etcd.endpoint()
        );
        println!();
        println!("| measure | p50 | p99 | max |");
        println!("|---|---|---|---|");
        println!(
            "| A's answer to B and C both showing it (ms) | {:.2} | {:.2} | {:.2} |",
            ms(pct(&converge, 50.0)),
            ms(pct(&converge, 99.0)),
            ms(*converge.last().unwrap())
        );
        println!(
            "| write through A, request to answer (ms) | {:.2} | {:.2} | {:.2} |",
            ms(pct(&answer, 50.0)),
            ms(pct(&answer, 99.0)),
            ms(*answer.last().unwrap())
        );
        println!();
        println!("sequential writes through A: {writes} in {took:.2} s = {wps:.0} writes/s");
    });
    drop((a, b, c));
}
