//! Backends that break HTTP in the ways real ones do — garbage instead of a
//! response, a reset in the middle of the body, a body that stops coming, no
//! answer at all — behind the real binary. Every request ends (a 502/504, or a
//! stream the client sees cut, never a hang), every failure is counted on its
//! server, and once the clients are gone the proxy holds no more open files than
//! before: no connection or task is left behind.

use crate::support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use support::{Call, Switchyard, any_port, get_request, send};

const READ_TIMEOUT: Duration = Duration::from_millis(300);
/// Requests sent to each misbehaving backend, all at once.
const PER_FAULT: usize = 8;
/// A client that waits this long has hung.
const HANG: Duration = Duration::from_secs(5);

/// What a raw backend does once it has read a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Bytes that are not HTTP, then it waits for the proxy to close.
    Garbage,
    /// `Content-Length: 1 MiB`, 64 KiB of it, then a TCP reset.
    ResetMidBody,
    /// A chunked body: one chunk, then silence with the connection open.
    BodyStops,
    /// A chunk every 50 ms, forever (until the peer goes away).
    BodyNeverEnds,
    /// Nothing at all, with the connection open.
    Stall,
}

/// A raw TCP backend; counts the connections it holds open.
struct RawBackend {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawBackend {
    async fn start(fault: Fault) -> RawBackend {
        let listener = TcpListener::bind(any_port()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let task = {
            let open = Arc::clone(&open);
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    open.fetch_add(1, SeqCst);
                    let open = Arc::clone(&open);
                    tokio::spawn(async move {
                        misbehave(stream, fault).await;
                        open.fetch_sub(1, SeqCst);
                    });
                }
            })
        };
        RawBackend { addr, open, task }
    }

    fn open(&self) -> usize {
        self.open.load(SeqCst)
    }
}

/// Reads until the end of a request head; false if the peer closed first.
async fn read_head(stream: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

/// Waits until the peer closes the connection.
async fn until_closed(stream: &mut TcpStream) {
    let mut chunk = [0u8; 4096];
    while let Ok(n) = stream.read(&mut chunk).await {
        if n == 0 {
            break;
        }
    }
}

async fn misbehave(mut stream: TcpStream, fault: Fault) {
    if !read_head(&mut stream).await {
        return;
    }
    match fault {
        Fault::Garbage => {
            let _ = stream
                .write_all(b"\x00\xffSPDY/0 ??? not http at all\r\n\x7f\x80\r\n\r\n")
                .await;
            until_closed(&mut stream).await;
        }
        Fault::ResetMidBody => {
            let head = "HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n";
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&vec![b'x'; 64 * 1024]).await;
            // Let the proxy start streaming before the reset.
            tokio::time::sleep(Duration::from_millis(100)).await;
            stream.set_zero_linger().unwrap();
            drop(stream);
        }
        Fault::BodyStops => {
            let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
            let _ = stream.write_all(head.as_bytes()).await;
            until_closed(&mut stream).await;
        }
        Fault::BodyNeverEnds => {
            let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            // Ends only when a write fails: the proxy closed the connection.
            while stream.write_all(b"5\r\ntick!\r\n").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Fault::Stall => until_closed(&mut stream).await,
    }
}

/// How one request ended for the client.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// A whole response with this status.
    Status(StatusCode),
    /// The head came with this status, then the body broke off.
    Cut(StatusCode),
    /// The client read this many body bytes and hung up itself.
    HungUp,
}

/// GETs `path` through the proxy; reads at most `read_max` body bytes (then
/// hangs up), and never waits longer than [`HANG`].
async fn request(proxy: SocketAddr, path: &str, read_max: usize) -> (Outcome, Duration) {
    let started = Instant::now();
    let outcome = tokio::time::timeout(HANG, async {
        let resp = send(proxy, get_request(path))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: no response head: {e}"));
        let status = resp.status();
        let mut body = resp.into_body();
        let mut read = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => read += f.data_ref().map_or(0, |d| d.len()),
                Err(_) => return Outcome::Cut(status),
            }
            if read >= read_max {
                return Outcome::HungUp;
            }
        }
        Outcome::Status(status)
    })
    .await
    .unwrap_or_else(|_| panic!("GET {path} still running after {HANG:?}: the client hangs"));
    (outcome, started.elapsed())
}

/// The `fails` counter of the (only) server of upstream `name`.
async fn fails(admin: SocketAddr, name: &str) -> u64 {
    let list = Call::get(&format!("/api/v1/upstreams/{name}/servers"))
        .send(admin)
        .await;
    assert_eq!(list.status, StatusCode::OK, "{list}");
    let id = list.json[0]["id"].as_u64().expect("a server id");
    let r = Call::get(&format!("/api/v1/upstreams/{name}/servers/{id}"))
        .send(admin)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    r.json["fails"].as_u64().expect("fails")
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Polls (bounded) until the proxy holds at most `baseline` open files; returns
/// the last count.
async fn settle_open_files(pid: u32, baseline: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = open_files(pid);
        if n <= baseline || Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The proxy's open files once the count has not changed for 200 ms (at most 5 s).
async fn steady_open_files(pid: u32) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut last, mut since) = (open_files(pid), Instant::now());
    while since.elapsed() < Duration::from_millis(200) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let n = open_files(pid);
        if n != last {
            (last, since) = (n, Instant::now());
        }
    }
    last
}

/// Polls (bounded) until `backend` holds no connection.
async fn settle_backend(name: &str, backend: &RawBackend) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.open() > 0 {
        assert!(
            Instant::now() < deadline,
            "{name}: the proxy still holds {} connections to it",
            backend.open()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_misbehaving_backend_ends_in_an_error_the_client_sees_is_counted_and_leaks_nothing() {
    let faults = [
        ("garbage", Fault::Garbage),
        ("reset", Fault::ResetMidBody),
        ("stops", Fault::BodyStops),
        ("forever", Fault::BodyNeverEnds),
        ("stall", Fault::Stall),
    ];
    let mut backends = Vec::new();
    for (name, fault) in faults {
        backends.push((name, fault, RawBackend::start(fault).await));
    }
    // One upstream per fault; no keep-alive (nothing may stay open), one try (the
    // failure is the answer), and no passive ejection (every request reaches its
    // backend).
    let mut config = String::from(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [\n",
    );
    for (name, _, _) in &backends {
        config += &format!("  {{ path_prefix = \"/{name}\", upstream = \"{name}\" }},\n");
    }
    config += "]\n";
    for (name, _, b) in &backends {
        config += &format!(
            "\n[upstream.{name}]\nkeepalive = 0\nread_timeout = \"{}ms\"\nretry = {{ tries = 1 }}\n\
             servers = [{{ addr = \"{}\", max_fails = 0 }}]\n",
            READ_TIMEOUT.as_millis(),
            b.addr
        );
    }
    let sy = Switchyard::run_config_with_admin(&config, 1);
    let (proxy, admin, pid) = (sy.addr(), sy.admin(), sy.pid());
    // Touch the admin API once so that whatever it opens lazily is in the baseline.
    for (name, _, _) in &backends {
        assert_eq!(fails(admin, name).await, 0);
    }
    let baseline = steady_open_files(pid).await;
    let started = Instant::now();
    // The most open files seen while the faults run, sampled every 5 ms.
    let peak = Arc::new(AtomicUsize::new(baseline));
    let sampler = {
        let peak = Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                peak.fetch_max(open_files(pid), SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut injected = 0;
    for (name, fault, backend) in &backends {
        let path = format!("/{name}");
        let read_max = if *fault == Fault::BodyNeverEnds {
            // Ten chunks in: the client has had enough.
            50
        } else {
            usize::MAX
        };
        let clients: Vec<_> = (0..PER_FAULT)
            .map(|_| {
                let path = path.clone();
                tokio::spawn(async move { request(proxy, &path, read_max).await })
            })
            .collect();
        let mut outcomes = Vec::new();
        for c in clients {
            outcomes.push(c.await.unwrap());
        }
        injected += PER_FAULT;
        for (outcome, took) in &outcomes {
            match fault {
                Fault::Garbage => assert_eq!(*outcome, Outcome::Status(StatusCode::BAD_GATEWAY)),
                // The head may beat the reset to the client (a cut 200) or not (502).
                Fault::ResetMidBody => assert!(
                    matches!(
                        outcome,
                        Outcome::Cut(StatusCode::OK) | Outcome::Status(StatusCode::BAD_GATEWAY)
                    ),
                    "{outcome:?}"
                ),
                Fault::BodyStops => {
                    assert_eq!(*outcome, Outcome::Cut(StatusCode::OK));
                    assert!(*took >= READ_TIMEOUT, "cut after {took:?}");
                }
                Fault::BodyNeverEnds => assert_eq!(*outcome, Outcome::HungUp),
                Fault::Stall => {
                    assert_eq!(*outcome, Outcome::Status(StatusCode::GATEWAY_TIMEOUT));
                    assert!(*took >= READ_TIMEOUT, "504 after {took:?}");
                }
            }
        }
        // The proxy lets go of the backend: it closes every connection it opened.
        settle_backend(name, backend).await;
        let counted = fails(admin, name).await;
        let expected = if *fault == Fault::BodyNeverEnds {
            // Not the server's fault: the client went away.
            0
        } else {
            PER_FAULT as u64
        };
        assert_eq!(counted, expected, "{name}: fails counted");
        println!(
            "misbehaving backend {name}: {PER_FAULT} requests, outcomes {:?}, fails counted {counted}",
            outcomes.iter().map(|(o, _)| o).collect::<Vec<_>>()
        );
    }

    sampler.abort();
    let peak = peak.load(SeqCst);
    let after = settle_open_files(pid, baseline).await;
    println!(
        "misbehaving backends: {injected} faults injected, open files {baseline} before, peak {peak}, {after} after, in {:.2?}",
        started.elapsed()
    );
    assert_eq!(
        after, baseline,
        "the proxy holds more open files than before the faults"
    );
}
