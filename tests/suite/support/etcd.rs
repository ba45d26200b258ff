//! A real etcd for tests and the fleet benchmark — one member ([`Etcd`]) or a
//! cluster of three ([`EtcdCluster`], members killed and restarted one by one):
//! loopback ports the kernel picked, temporary data directories, readiness
//! polled on `/health`, and `etcdctl` (API v3) for looking at and changing what
//! is stored.
//!
//! Uses only std, `serde_json` and `tempfile`, so that `benches/fleet.rs` can
//! include this file with `#[path]`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `start` and `restart` wait for `/health` to say `"true"`.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A running etcd; killed (and its data directory removed) on drop.
pub struct Etcd {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    tls: Option<EtcdTls>,
    /// A member of a cluster: its name and `--initial-cluster`.
    member: Option<(String, String)>,
}

/// Files for an etcd that speaks TLS to clients and requires a client
/// certificate signed by `ca` (etcdctl uses `client_cert`/`client_key`).
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// A loopback port nothing listens on now, below the kernel's ephemeral range
/// (so that no outgoing connection, ours or the instances', takes it between a
/// stop and a restart), picked at random so parallel tests rarely meet.
fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768)
        .max(11000);
    for _ in 0..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id() as u64);
        let port = 10000 + (h.finish() % u64::from(low - 10000)) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below {low}")
}

/// Whether the fleet tests can run here: `etcd` and `etcdctl` are on PATH. When
/// they are not, the caller skips (a fresh machine with only the Rust toolchain
/// still passes `cargo test`), unless `SWITCHYARD_REQUIRE_ETCD` is set, as
/// `.ci/run` sets it: then a missing etcd fails the test instead of hiding it.
pub fn available() -> bool {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(name).is_file()))
    };
    if on_path("etcd") && on_path("etcdctl") {
        return true;
    }
    if std::env::var_os("SWITCHYARD_REQUIRE_ETCD").is_some() {
        tool("etcd");
        tool("etcdctl");
    }
    eprintln!(
        "SKIPPED: etcd/etcdctl not installed; the fleet tests need a real etcd 3.4+ \
         (apt-get install etcd-server etcd-client; SWITCHYARD_REQUIRE_ETCD=1 makes this a failure)"
    );
    false
}

/// The path of `etcd`/`etcdctl`, or a panic saying how to get it.
fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed (not found on PATH); the fleet tests need a real etcd 3.4+: \
             apt-get install etcd-server etcd-client (`.ci/run` installs them on CI)"
        )
    })
}

impl Etcd {
    /// Starts etcd on two free loopback ports and waits until it is healthy.
    pub fn start() -> Etcd {
        Etcd::start_with(None)
    }

    /// [`Etcd::start`] with TLS on the client port and client certificates
    /// required (the server certificate must name `127.0.0.1`).
    pub fn start_tls(tls: EtcdTls) -> Etcd {
        Etcd::start_with(Some(tls))
    }

    fn start_with(tls: Option<EtcdTls>) -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("switchyard-etcd")
            .tempdir()
            .unwrap();
        let mut me = Etcd {
            child: None,
            client_port: 0,
            peer_port: 0,
            dir,
            tls,
            member: None,
        };
        // Another test may take a port between the check and etcd's bind: then
        // try other ports.
        for attempt in 0.. {
            me.client_port = free_port();
            me.peer_port = free_port();
            if me.peer_port == me.client_port {
                continue;
            }
            match me.try_spawn() {
                Ok(()) => return me,
                Err(e) if attempt < 5 && e.contains("address already in use") => continue,
                Err(e) => panic!("{e}"),
            }
        }
        unreachable!()
    }

    /// `127.0.0.1:PORT` of the client URL (what `[cluster] endpoints` lists).
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.endpoint())
    }

    /// etcdctl's flags for this etcd: the endpoint, and the TLS files if any.
    fn ctl_flags(&self) -> Vec<String> {
        let mut flags = vec![format!("--endpoints={}", self.url())];
        if let Some(t) = &self.tls {
            flags.push(format!("--cacert={}", t.ca.display()));
            flags.push(format!("--cert={}", t.client_cert.display()));
            flags.push(format!("--key={}", t.client_key.display()));
        }
        flags
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// The last `lines` lines etcd logged (all runs of this instance).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().map(|s| s.is_none()).unwrap_or(false),
            None => false,
        }
    }

    fn spawn(&mut self) {
        if let Err(e) = self.try_spawn() {
            panic!("{e}");
        }
    }

    fn try_spawn(&mut self) -> Result<(), String> {
        self.launch();
        self.wait_ready()
    }

    /// Starts the process (without waiting for it to be healthy: a member of
    /// a cluster is not until a quorum is up).
    fn launch(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        let etcd = tool("etcd");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(etcd);
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.cert)
                .arg("--key-file")
                .arg(&t.key)
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        let (name, initial) = match &self.member {
            Some((name, cluster)) => {
                // Short elections: a killed leader is replaced in about a
                // second, as the fault tests need.
                cmd.args(["--heartbeat-interval", "50", "--election-timeout", "500"]);
                (name.clone(), cluster.clone())
            }
            None => ("t".to_string(), format!("t={peer}")),
        };
        let child = cmd
            .arg("--name")
            .arg(name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(initial)
            .env_remove("ETCD_NAME")
            .env_remove("ETCD_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start etcd: {e}"));
        self.child = Some(child);
    }

    /// Polls `GET /health` until it answers `"health":"true"` (at most 30 s).
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        let addr: SocketAddr = self.endpoint().parse().unwrap();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!(
                    "etcd on {} (peer port {}) exited while starting ({status}); log tail:\n{}",
                    self.endpoint(),
                    self.peer_port,
                    self.log_tail(40)
                ));
            }
            let last = if self.tls.is_some() {
                // /health is behind TLS and client certificates: ask etcdctl.
                // (it exits 0 only when healthy; etcdctl 3.4 says so on stderr)
                match self.ctl(&["endpoint", "health"]) {
                    Ok(_) => return Ok(()),
                    Err(out) => out,
                }
            } else {
                match http_get(addr, "/health") {
                    Ok(body) if body.replace(' ', "").contains("\"health\":\"true\"") => {
                        return Ok(());
                    }
                    Ok(body) => body,
                    Err(e) => e.to_string(),
                }
            };
            if Instant::now() >= deadline {
                panic!(
                    "etcd on {} not healthy within {READY_WITHIN:?} (last: {last}); log tail:\n{}",
                    self.endpoint(),
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops etcd (SIGTERM, then SIGKILL after 10 s) and reaps it; the data
    /// directory stays for [`Etcd::restart`].
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        // Nothing answers on the client port any more.
        let addr: SocketAddr = self.endpoint().parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "etcd's client port {addr} still accepts after the stop"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts etcd again on the same ports with the same data and waits until
    /// it is healthy.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// `etcdctl --endpoints=http://127.0.0.1:PORT ARGS...` (API v3); its stdout,
    /// or a panic with its stderr.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        self.ctl(args)
            .unwrap_or_else(|e| panic!("etcdctl {args:?} failed: {e}"))
    }

    /// etcdctl's stdout, or its status and stderr.
    fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(tool("etcdctl"))
            .args(self.ctl_flags())
            .arg("--command-timeout=10s")
            .args(args)
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run etcdctl: {e}"));
        if !out.status.success() {
            return Err(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Writes `value` at `key`.
    pub fn put(&self, key: &str, value: &str) {
        // `--` so that a value starting with '-' is not an option.
        let out = self.etcdctl(&["put", "--", key, value]);
        assert_eq!(out.trim(), "OK", "etcdctl put {key}: {out}");
    }

    /// Deletes `key`; how many keys were deleted.
    pub fn del(&self, key: &str) -> u64 {
        self.etcdctl(&["del", "--", key]).trim().parse().unwrap()
    }

    /// The value at `key`, if any.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.etcdctl(&["get", "-w", "json", "--", key]);
        kvs(&out).into_iter().next().map(|(_, v)| v)
    }

    /// Every key under `prefix` with its value, in key order.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.etcdctl(&["get", "--prefix", "-w", "json", "--", prefix]);
        kvs(&out)
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        let out = self.etcdctl(&["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("endpoint status is not JSON ({e}): {out}"));
        v[0]["Status"]["header"]["revision"]
            .as_i64()
            .unwrap_or_else(|| panic!("no revision in endpoint status: {out}"))
    }

    /// Compacts the history up to `rev` (physically, so that older revisions
    /// are gone when this returns).
    pub fn compact(&self, rev: i64) {
        let out = self.etcdctl(&["compaction", "--physical", &rev.to_string()]);
        assert!(out.contains("compacted revision"), "compaction: {out}");
    }

    /// Whether a read at revision `rev` is refused as compacted.
    pub fn is_compacted(&self, rev: i64) -> bool {
        let out = Command::new(tool("etcdctl"))
            .args(self.ctl_flags())
            .args(["get", "--prefix", "/", "--rev", &rev.to_string()])
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("compacted")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Three etcd members on loopback forming one cluster, with short elections
/// (heartbeat 50 ms, election timeout 500 ms).
pub struct EtcdCluster {
    pub members: Vec<Etcd>,
}

impl EtcdCluster {
    /// Starts three members and waits until every one is healthy.
    pub fn start() -> EtcdCluster {
        let mut members: Vec<Etcd> = (0..3)
            .map(|i| {
                let dir = tempfile::Builder::new()
                    .prefix(&format!("switchyard-etcd-m{i}"))
                    .tempdir()
                    .unwrap();
                Etcd {
                    child: None,
                    client_port: 0,
                    peer_port: 0,
                    dir,
                    tls: None,
                    member: None,
                }
            })
            .collect();
        let mut taken = std::collections::HashSet::new();
        for m in &mut members {
            for port in [&mut m.client_port, &mut m.peer_port] {
                *port = loop {
                    let p = free_port();
                    if taken.insert(p) {
                        break p;
                    }
                };
            }
        }
        let initial: Vec<String> = members
            .iter()
            .enumerate()
            .map(|(i, m)| format!("m{i}=http://127.0.0.1:{}", m.peer_port))
            .collect();
        let initial = initial.join(",");
        for (i, m) in members.iter_mut().enumerate() {
            m.member = Some((format!("m{i}"), initial.clone()));
            m.launch();
        }
        for m in &mut members {
            if let Err(e) = m.wait_ready() {
                panic!("{e}");
            }
        }
        EtcdCluster { members }
    }

    /// Every member's `127.0.0.1:PORT`, in order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Etcd::endpoint).collect()
    }

    /// A running member, to ask with etcdctl.
    pub fn any(&mut self) -> &Etcd {
        let i = (0..3)
            .find(|&i| self.members[i].is_running())
            .expect("a member is running");
        &self.members[i]
    }

    /// The index of the member that says it is the leader (waits up to 10 s
    /// for one).
    pub fn leader(&mut self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for i in 0..3 {
                if !self.members[i].is_running() {
                    continue;
                }
                let Ok(out) = self.members[i].ctl(&["endpoint", "status", "-w", "json"]) else {
                    continue;
                };
                let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
                let st = &v[0]["Status"];
                if st["leader"].as_u64().is_some() && st["leader"] == st["header"]["member_id"] {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no etcd leader within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` of member `i` (its data stays for [`EtcdCluster::restart`]).
    pub fn kill_9(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops (`SIGSTOP`) or continues (`SIGCONT`) member `i`.
    pub fn signal(&mut self, i: usize, sig: &str) {
        let pid = self.members[i].child.as_ref().expect("running").id();
        let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
    }

    /// Starts member `i` again with its data and waits until it is healthy.
    pub fn restart(&mut self, i: usize) {
        self.kill_9(i);
        self.members[i].launch();
        if let Err(e) = self.members[i].wait_ready() {
            panic!("{e}");
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `kvs` of `etcdctl get -w json` output, keys and values decoded from base64.
fn kvs(json: &str) -> Vec<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("etcdctl get output is not JSON ({e}): {json}"));
    let Some(list) = v["kvs"].as_array() else {
        return Vec::new(); // no key: etcdctl leaves `kvs` out
    };
    list.iter()
        .map(|kv| {
            let field = |name: &str| {
                let b64 = kv[name].as_str().unwrap_or(""); // an empty value is left out
                String::from_utf8(base64_decode(b64)).unwrap()
            };
            (field("key"), field("value"))
        })
        .collect()
}

/// Standard base64 (with padding), as etcdctl's JSON output encodes bytes.
fn base64_decode(s: &str) -> Vec<u8> {
    fn val(c: u8) -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 byte {c:?}"),
        }
    }
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        let take = chunk.len() - 1; // 2 chars -> 1 byte, 3 -> 2, 4 -> 3
        for i in 0..take {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// A minimal blocking `GET` (HTTP/1.0, so the body ends at close).
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    Ok(match text.split_once("\r\n\r\n") {
        Some((_, body)) => body.to_string(),
        None => text,
    })
}
