//! Benchmark of the active health checker (not a test): N TCP listeners on
//! loopback, one switchyard child checking every one of them with TCP checks
//! every second, and the child's CPU share and memory measured from /proc.
//!
//! ```text
//! cargo build --release --bin switchyard --example health_checker
//! target/release/examples/health_checker --binary target/release/switchyard \
//!     [--upstreams 100] [--servers 100] [--warmup 3] [--window 10]
//! ```
//! `bench/health_checker.sh` does both (and raises `ulimit -n`: this process
//! holds one listener per server). Linux only (/proc). Prints one line for
//! BENCHMARKS.md.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// A `/proc/PID/status` field in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let binary = arg("--binary", "target/release/switchyard");
    let upstreams: usize = arg("--upstreams", "100").parse().unwrap();
    let per: usize = arg("--servers", "100").parse().unwrap();
    let warmup: u64 = arg("--warmup", "3").parse().unwrap();
    let window: u64 = arg("--window", "10").parse().unwrap();
    let workers = arg("--workers", "");

    // One listener per server; each accept is one check.
    let accepted = Arc::new(AtomicU64::new(0));
    let mut addrs = Vec::with_capacity(upstreams * per);
    for _ in 0..upstreams * per {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind (raise ulimit -n?)");
        addrs.push(l.local_addr().unwrap());
        let accepted = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                drop(s);
            }
        });
    }

    let mut cfg = String::from(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{ path_prefix = \"/\", upstream = \"u0\" }]\n",
    );
    for (u, chunk) in addrs.chunks(per).enumerate() {
        let servers: Vec<String> = chunk
            .iter()
            .map(|a| format!("{{ addr = \"{a}\" }}"))
            .collect();
        cfg.push_str(&format!(
            "\n[upstream.u{u}]\nservers = [{}]\nhealth_check = {{ type = \"tcp\", interval = \"1s\", timeout = \"1s\" }}\n",
            servers.join(", ")
        ));
    }
    let dir = std::env::temp_dir().join(format!("switchyard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bench.toml");
    std::fs::write(&path, cfg).unwrap();

    let mut cmd = Command::new(&binary);
    cmd.args(["run", "-c"]).arg(&path);
    if !workers.is_empty() {
        cmd.args(["--workers", &workers]);
    }
    let mut child = cmd
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("switchyard: listening on") {
                let _ = tx.send(());
            }
        }
    });
    let started = Instant::now();
    rx.recv_timeout(Duration::from_secs(60))
        .expect("switchyard did not become ready");
    let ready_after = started.elapsed();

    tokio::time::sleep(Duration::from_secs(warmup)).await;
    let (c0, a0, t0) = (
        cpu_ticks(pid),
        accepted.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(window)).await;
    let (c1, a1, secs) = (
        cpu_ticks(pid),
        accepted.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64(),
    );
    let rss = status_kib(pid, "VmRSS:");
    let hwm = status_kib(pid, "VmHWM:");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);

    let cpu = (c1 - c0) as f64 / clock_ticks_per_sec() / secs * 100.0;
    let rate = (a1 - a0) as f64 / secs;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "| health checker | {} servers / {upstreams} upstreams, tcp checks every 1s | {rate:.0} checks/s | CPU {cpu:.1}% of one core | RSS {:.1} MiB (peak {:.1} MiB) | window {secs:.0}s after {warmup}s warm-up, ready in {:.2}s, workers {}, {cores} cores |",
        upstreams * per,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        ready_after.as_secs_f64(),
        if workers.is_empty() {
            "default"
        } else {
            &workers
        },
    );
}
