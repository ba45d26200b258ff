//! Fleet convergence (issue 8): three instances of the release binary share one
//! table through a real etcd. 1,000 changes go through A (server 0's weight,
//! alternating); each is timed from A's answer until B and C both show it.
//! Then sequential writes through A are timed for throughput.
//!
//! Then (issue 23) against a 3-member etcd cluster, three instances listing
//! all three endpoints: concurrent adds through A (writes/s), 32 writers
//! through all three changing different servers (409s), and the fault
//! scenario: 8 writers adding through the three instances while a follower,
//! then the leader, is killed with `kill -9` (failures and when, 409s, lost
//! and duplicated acknowledged writes, failed GETs).
//!
//!     cargo build --release && cargo bench --bench fleet
//!     SWITCHYARD_BIN=/path/to/switchyard FLEET_CHANGES=200 cargo bench --bench fleet
//!     FLEET_ONLY=adds cargo bench --bench fleet   # only the concurrent adds rows
//!
//! B and C are polled over one keep-alive connection each (`GET` of the server's
//! view, no pause), so a time includes up to one poll round trip.

#[path = "../tests/suite/support/etcd.rs"]
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
        Instance::start_on(bin, &[etcd.endpoint()], prefix, name)
    }

    /// An instance on `endpoints` (in that order), 1 s per etcd call.
    fn start_on(bin: &PathBuf, endpoints: &[String], prefix: &str, name: &str) -> Instance {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("switchyard.toml");
        let state = dir.path().join(format!("{name}.state.json"));
        let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
        // The servers take no traffic here; their addresses need not answer.
        std::fs::write(
            &cfg,
            format!(
                "[admin]\nlisten = \"127.0.0.1:0\"\nstate_file = \"{}\"\n\n\
                 [cluster]\nstore = \"etcd\"\nendpoints = [{}]\nprefix = \"{prefix}\"\ntimeout = \"1s\"\n\n\
                 [[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ upstream = \"web\" }}]\n\n\
                 [upstream.web]\nservers = [{{ addr = \"127.0.0.1:9\" }}, {{ addr = \"127.0.0.1:10\" }}]\n",
                state.display(),
                list.join(", ")
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
    if std::env::var("FLEET_ONLY").as_deref() == Ok("adds") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let etcd = etcd::EtcdCluster::start();
        let prefix = format!("/switchyard/adds-{}", std::process::id());
        rt.block_on(adds_rows(&bin, &etcd.endpoints(), &prefix));
        return;
    }
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
    drop(etcd);
    rt.block_on(three_members(&bin));
}

/// One write's answer: status, error code.
async fn post(conn: &mut Conn, path: &str, body: serde_json::Value) -> (StatusCode, String) {
    let (status, v) = conn.send(Method::POST, path, Some(body.to_string())).await;
    (
        status,
        v["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

const SERVERS: &str = "/api/v1/upstreams/web/servers";

/// `web`'s servers on `conn`: address → id.
async fn ids(conn: &mut Conn) -> std::collections::BTreeMap<String, u64> {
    let (status, v) = conn.send(Method::GET, SERVERS, None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["addr"].as_str().unwrap().to_string(),
                s["id"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// `clients` connections to `admin` adding `per` servers each (down, at
/// addresses from `base`): acknowledged adds (address, id), every other
/// answer (when, status, code), and each add's time.
async fn adders(
    admin: SocketAddr,
    clients: usize,
    per: usize,
    base: u32,
) -> (
    Vec<(String, u64)>,
    Vec<(Instant, StatusCode, String)>,
    Vec<Duration>,
) {
    let tasks: Vec<_> = (0..clients)
        .map(|k| {
            tokio::spawn(async move {
                let mut conn = Conn::open(admin).await;
                let (mut ok, mut bad, mut times) = (Vec::new(), Vec::new(), Vec::new());
                for i in 0..per {
                    let n = base + (k * per + i) as u32;
                    let addr = format!("10.{}.{}.{}:80", n >> 16 & 255, n >> 8 & 255, n & 255);
                    let body = serde_json::json!({ "addr": addr, "state": "down" });
                    let t = Instant::now();
                    let (status, v) = conn
                        .send(Method::POST, SERVERS, Some(body.to_string()))
                        .await;
                    times.push(t.elapsed());
                    if status == StatusCode::CREATED {
                        ok.push((addr, v["id"].as_u64().unwrap()));
                    } else {
                        let code = v["error"]["code"].as_str().unwrap_or("").to_string();
                        bad.push((Instant::now(), status, code));
                    }
                }
                (ok, bad, times)
            })
        })
        .collect();
    let (mut ok, mut bad, mut times) = (Vec::new(), Vec::new(), Vec::new());
    for t in tasks {
        let (o, b, d) = t.await.unwrap();
        ok.extend(o);
        bad.extend(b);
        times.extend(d);
    }
    times.sort();
    (ok, bad, times)
}

/// Three instances on `endpoints` (each preferring a different member) under
/// a fresh prefix: each scenario starts from the two configured servers.
fn three(bin: &PathBuf, endpoints: &[String], prefix: &str) -> (Vec<Instance>, Vec<SocketAddr>) {
    let nodes: Vec<Instance> = (0..3)
        .map(|i| {
            let mut e = endpoints.to_vec();
            e.rotate_left(i);
            Instance::start_on(bin, &e, prefix, ["a", "b", "c"][i])
        })
        .collect();
    let admins = nodes.iter().map(|n| n.admin).collect();
    (nodes, admins)
}

/// Concurrent adds through A with 1, 8 and 32 clients, each row on a fresh
/// prefix of `endpoints`' cluster.
async fn adds_rows(bin: &PathBuf, endpoints: &[String], prefix: &str) {
    println!();
    println!(
        "fleet, 3-member etcd cluster (heartbeat 50 ms, election 500 ms), 3 instances on all three endpoints, a fresh prefix (2 servers) for each row:"
    );
    println!();
    println!("| measure | writes | 409 | other failures | writes/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|---|");
    for clients in [1usize, 8, 32] {
        let (nodes, admins) = three(bin, endpoints, &format!("{prefix}-adds{clients}"));
        Conn::open(admins[0]).await.set_weight0(7).await;
        let per = 1000 / clients;
        let t0 = Instant::now();
        let (ok, bad, times) = adders(admins[0], clients, per, (clients as u32) << 16).await;
        let took = t0.elapsed().as_secs_f64();
        let conflicts = bad.iter().filter(|b| b.1 == StatusCode::CONFLICT).count();
        println!(
            "| adds through A, {clients} client(s) | {} | {conflicts} | {} | {:.0} | {:.2} | {:.2} |",
            ok.len(),
            bad.len() - conflicts,
            ok.len() as f64 / took,
            ms(pct(&times, 50.0)),
            ms(pct(&times, 99.0))
        );
        drop(nodes);
    }
}

/// Issue 23: a 3-member etcd cluster and three instances on all of it.
async fn three_members(bin: &PathBuf) {
    let mut etcd = etcd::EtcdCluster::start();
    let endpoints = etcd.endpoints();
    let prefix = format!("/switchyard/bench3-{}", std::process::id());

    adds_rows(bin, &endpoints, &prefix).await;
    // The last row starts from a table grown to 3,000 servers: every write a
    // follower applies costs it more as the table grows.
    for (writers, grown) in [(8usize, 0usize), (32, 0), (32, 3000)] {
        // Each writer adds through one instance (round robin), then sets
        // its own server's weight: different servers, same upstream.
        let (nodes, admins) = three(
            bin,
            &endpoints,
            &format!("{prefix}-writers{writers}-{grown}"),
        );
        Conn::open(admins[0]).await.set_weight0(7).await;
        if grown > 0 {
            let (ok, _, _) = adders(admins[0], 32, grown / 32, 7 << 16).await;
            let want = ok.len() + 2;
            let deadline = Instant::now() + CONVERGE_WITHIN;
            for admin in &admins[1..] {
                let mut conn = Conn::open(*admin).await;
                while ids(&mut conn).await.len() < want && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let t0 = Instant::now();
        let per = 320 / writers;
        let tasks: Vec<_> = (0..writers)
            .map(|k| {
                let admin = admins[k % 3];
                tokio::spawn(async move {
                    let mut conn = Conn::open(admin).await;
                    let (mut n, mut conflicts, mut other) = (0, 0, 0);
                    for i in 0..per {
                        let addr = format!("10.200.{}.{}:80", k, i);
                        let (status, v) = conn
                            .send(
                                Method::POST,
                                SERVERS,
                                Some(
                                    serde_json::json!({ "addr": addr, "state": "down" })
                                        .to_string(),
                                ),
                            )
                            .await;
                        n += 1;
                        match status {
                            StatusCode::CREATED => {}
                            StatusCode::CONFLICT => {
                                conflicts += 1;
                                continue;
                            }
                            _ => {
                                other += 1;
                                continue;
                            }
                        }
                        let id = v["id"].as_u64().unwrap();
                        let (status, _) = conn
                            .send(
                                Method::PATCH,
                                &format!("{SERVERS}/{id}"),
                                Some(serde_json::json!({ "weight": 2 + i % 5 }).to_string()),
                            )
                            .await;
                        n += 1;
                        match status {
                            StatusCode::OK => {}
                            StatusCode::CONFLICT => conflicts += 1,
                            _ => other += 1,
                        }
                    }
                    (n, conflicts, other)
                })
            })
            .collect();
        let (mut n, mut conflicts, mut other) = (0, 0, 0);
        for t in tasks {
            let (a, b, c) = t.await.unwrap();
            n += a;
            conflicts += b;
            other += c;
        }
        let took = t0.elapsed().as_secs_f64();
        println!(
            "| {writers} writers through A, B, C (add, then weight of that server){} | {n} | {conflicts} | {other} | {:.0} | | |",
            if grown > 0 {
                format!(", table grown to {grown} servers first")
            } else {
                String::new()
            },
            n as f64 / took
        );
        drop(nodes);
    }
    let (nodes, admins) = three(bin, &endpoints, &format!("{prefix}-faults"));
    Conn::open(admins[0]).await.set_weight0(7).await;
    faults(&mut etcd, &admins).await;
    drop(nodes);
}

/// 8 writers adding through the three instances; a follower killed after
/// 1 s and restarted 2 s later; the leader killed 1 s after that; 4 s more.
async fn faults(etcd: &mut etcd::EtcdCluster, admins: &[SocketAddr]) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..8u32)
        .map(|k| {
            let admin = admins[k as usize % 3];
            let stop = std::sync::Arc::clone(&stop);
            tokio::spawn(async move {
                let mut conn = Conn::open(admin).await;
                let (mut ok, mut bad) = (Vec::new(), Vec::new());
                let mut i = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let addr = format!("10.250.{k}.{}:{}", i / 250, 1000 + i % 250);
                    i += 1;
                    let (status, code) = post(
                        &mut conn,
                        SERVERS,
                        serde_json::json!({ "addr": addr, "state": "down" }),
                    )
                    .await;
                    if status == StatusCode::CREATED {
                        ok.push(addr);
                    } else {
                        bad.push((Instant::now(), status, code));
                    }
                }
                (ok, bad)
            })
        })
        .collect();
    let readers: Vec<_> = admins
        .iter()
        .map(|&admin| {
            let stop = std::sync::Arc::clone(&stop);
            tokio::spawn(async move {
                let mut conn = Conn::open(admin).await;
                let (mut n, mut failed) = (0, 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    if conn.send(Method::GET, SERVERS, None).await.0 != StatusCode::OK {
                        failed += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (n, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let leader = tokio::task::block_in_place(|| etcd.leader());
    let follower = (leader + 1) % 3;
    let follower_killed = Instant::now();
    tokio::task::block_in_place(|| etcd.kill_9(follower));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = Instant::now();
    tokio::task::block_in_place(|| etcd.restart(follower));
    let rejoined = t.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let leader = tokio::task::block_in_place(|| etcd.leader());
    let leader_killed = Instant::now();
    tokio::task::block_in_place(|| etcd.kill_9(leader));
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut acked, mut bad) = (Vec::new(), Vec::new());
    for w in writers {
        let (o, b) = w.await.unwrap();
        acked.extend(o);
        bad.extend(b);
    }
    let (mut gets, mut failed_gets) = (0, 0);
    for r in readers {
        let (n, f) = r.await.unwrap();
        gets += n;
        failed_gets += f;
    }
    // Lost: acknowledged and missing on an instance once they agree.
    let deadline = Instant::now() + Duration::from_secs(20);
    let lists = loop {
        let mut lists = Vec::new();
        for a in admins {
            lists.push(ids(&mut Conn::open(*a).await).await);
        }
        if lists[0] == lists[1] && lists[1] == lists[2] || Instant::now() > deadline {
            break lists;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let lost = acked
        .iter()
        .filter(|a| lists.iter().any(|l| !l.contains_key(*a)))
        .count();
    let same = lists[0] == lists[1] && lists[1] == lists[2];
    let mut all_ids: Vec<u64> = lists[0].values().copied().collect();
    let n_ids = all_ids.len();
    all_ids.sort_unstable();
    all_ids.dedup();
    let conflicts = bad.iter().filter(|b| b.1 == StatusCode::CONFLICT).count();
    let after = |kill: Instant| {
        bad.iter()
            .filter(|b| b.0 >= kill && b.0 < kill + Duration::from_secs(3))
            .count()
    };
    let late = bad.len() - after(follower_killed) - after(leader_killed);
    let last = bad
        .iter()
        .map(|b| b.0.saturating_duration_since(leader_killed))
        .max()
        .unwrap_or_default();
    println!();
    println!(
        "fault scenario: 8 writers adding through A, B, C; follower `kill -9` at 1 s (back 2 s later, healthy in {:.1} s), leader `kill -9` 1 s after that; 4 s more",
        rejoined.as_secs_f64()
    );
    println!();
    println!(
        "| acknowledged adds | failed | of which after the 3 s window | 409 | codes | lost | duplicate ids | same ids on A, B, C | GETs | failed GETs |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut codes: Vec<String> = bad
        .iter()
        .map(|b| format!("{} {}", b.1.as_u16(), b.2))
        .collect();
    codes.sort();
    codes.dedup();
    println!(
        "| {} | {} (last {:.2} s after the leader's kill) | {late} | {conflicts} | {} | {lost} | {} | {} | {gets} | {failed_gets} |",
        acked.len(),
        bad.len(),
        last.as_secs_f64(),
        if codes.is_empty() {
            "—".to_string()
        } else {
            codes.join(", ")
        },
        n_ids - all_ids.len(),
        if same { "yes" } else { "NO" }
    );
}
