//! Fleet mode (issue 8): several instances of the real binary share one
//! upstream table through a real etcd (`tests/suite/support/etcd.rs`).
//!
//! Each test starts its own etcd and uses its own key prefix. Convergence is
//! polled with deadlines; the times are printed (`--nocapture`).

use crate::support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use serde_json::{Value, json};

use support::etcd::Etcd;
use support::{ApiReply, Backend, Call, ServerRow, Switchyard, get, named, server_row};

const SERVERS: &str = "/api/v1/upstreams/web/servers";
const CLUSTER: &str = "/api/v1/cluster";
/// How long instances get to agree after a change (2-core CI, other tests).
const CONVERGE: Duration = Duration::from_secs(20);
/// What a change through one instance may take to show on the others.
const FAST: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A key prefix no other test (or earlier run) uses.
fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("/switchyard/{test}-{}-{nanos}", std::process::id())
}

/// `{prefix}/servers/{upstream}/{id as 10 digits}`.
fn server_key(prefix: &str, upstream: &str, id: u64) -> String {
    format!("{prefix}/servers/{upstream}/{id:010}")
}

/// An instance's config: admin on :0 with its state file in `dir`, the cluster
/// on `etcd` under `prefix`, one listener routing to upstream `web` over
/// `servers`.
fn fleet_config(
    etcd: &Etcd,
    prefix: &str,
    state: &std::path::Path,
    servers: &[SocketAddr],
) -> String {
    let list: Vec<String> = servers
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\nstate_file = \"{state}\"\n\n\
         [cluster]\nstore = \"etcd\"\nendpoints = [\"{endpoint}\"]\nprefix = \"{prefix}\"\ntimeout = \"2s\"\n\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ upstream = \"web\" }}]\n\n\
         [upstream.web]\nservers = [{list}]\n",
        state = state.display(),
        endpoint = etcd.endpoint(),
        list = list.join(", "),
    )
}

/// One instance with a directory of its own (config, state file, stderr log)
/// that outlives the process, so it can be started again with the same cache.
struct Node {
    name: &'static str,
    dir: tempfile::TempDir,
    text: String,
    sy: Option<Switchyard>,
}

impl Node {
    fn start(name: &'static str, etcd: &Etcd, prefix: &str, servers: &[SocketAddr]) -> Node {
        node_with(name, etcd, prefix, servers, "")
    }

    /// Starts the binary (again) with the same config and state file.
    fn restart(&mut self) {
        assert!(self.sy.is_none(), "{} is running", self.name);
        self.sy = Some(Switchyard::run_config_in(self.dir.path(), &self.text, 1));
    }

    fn sy(&self) -> &Switchyard {
        self.sy.as_ref().expect("instance is running")
    }

    fn admin(&self) -> SocketAddr {
        self.sy().admin()
    }

    fn addr(&self) -> SocketAddr {
        self.sy().addr()
    }

    fn state_file(&self) -> PathBuf {
        self.dir.path().join(format!("{}.state.json", self.name))
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    fn kill_9(&mut self) {
        let mut sy = self.sy.take().expect("instance is running");
        sy.kill_9();
    }
}

/// `web`'s servers as the instance lists them.
async fn servers(admin: SocketAddr) -> Vec<Value> {
    let r = Call::get(SERVERS).send(admin).await;
    assert_eq!(r.status, StatusCode::OK, "GET {SERVERS}: {r}");
    r.json
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("not a list: {r}"))
}

/// (id, addr, state, weight) of every server, in the listed order.
type Row = ServerRow;

fn rows(list: &[Value]) -> Vec<Row> {
    list.iter().map(server_row).collect()
}

async fn table(admin: SocketAddr) -> Vec<Row> {
    rows(&servers(admin).await)
}

fn server(list: &[Value], id: u64) -> Option<&Value> {
    list.iter().find(|s| s["id"].as_u64() == Some(id))
}

/// Polls `node`'s server list until `cond` holds; how long that took.
async fn wait_servers(
    node: &Node,
    within: Duration,
    what: &str,
    cond: impl Fn(&[Value]) -> bool,
) -> Duration {
    let start = Instant::now();
    let deadline = start + within;
    loop {
        let list = servers(node.admin()).await;
        if cond(&list) {
            return start.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{}: not {what} within {within:?}; servers: {}\ncluster: {}\nstderr tail:\n{}",
            node.name,
            serde_json::to_string(&rows(&list)).unwrap(),
            cluster_try(node.admin()).await,
            tail(&node.stderr(), 30),
        );
        tokio::time::sleep(POLL).await;
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

async fn cluster(admin: SocketAddr) -> Value {
    let r = Call::get(CLUSTER).send(admin).await;
    assert_eq!(r.status, StatusCode::OK, "GET {CLUSTER}: {r}");
    r.json
}

/// `/api/v1/cluster` as text for failure messages (never panics).
async fn cluster_try(admin: SocketAddr) -> String {
    match Call::get(CLUSTER).try_send(admin).await {
        Ok(r) => r.to_string(),
        Err(e) => format!("({e})"),
    }
}

/// Polls `/api/v1/cluster` until `cond` holds; returns that view.
async fn wait_cluster(
    node: &Node,
    within: Duration,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = cluster(node.admin()).await;
        if cond(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{}: cluster not {what} within {within:?}; last: {v}",
            node.name
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Connected and caught up with the store.
fn in_sync(v: &Value) -> bool {
    v["connected"] == true
        && v["applied_revision"].as_i64().is_some()
        && v["applied_revision"] == v["store_revision"]
}

/// The value of metric `name` (a line `name VALUE` or `name{...} VALUE`).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            return None;
        }
        rest.rsplit(' ').next()?.trim().parse().ok()
    })
}

async fn metrics(admin: SocketAddr) -> String {
    let r = get(admin, "/metrics").await;
    assert_eq!(r.status, StatusCode::OK, "GET /metrics: {}", r.body);
    r.body
}

async fn patch(admin: SocketAddr, id: u64, body: Value) -> ApiReply {
    Call::patch(&format!("{SERVERS}/{id}"), &body.to_string())
        .send(admin)
        .await
}

/// `n` GETs through `proxy`: every one must be 200; returns the bodies.
async fn traffic(proxy: SocketAddr, n: usize) -> Vec<String> {
    let mut bodies = Vec::with_capacity(n);
    for i in 0..n {
        let r = get(proxy, "/").await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "request {i} through {proxy}: {}",
            r.body
        );
        bodies.push(r.body);
    }
    bodies
}

/// Starts etcd and instances `names` over `servers` on one fresh prefix, and
/// waits until every instance is connected and caught up.
async fn fleet(
    test: &str,
    names: &[&'static str],
    servers_: &[SocketAddr],
) -> (Etcd, String, Vec<Node>) {
    let etcd = Etcd::start();
    let prefix = unique_prefix(test);
    let mut nodes = Vec::new();
    for name in names {
        // One at a time: the first seeds the empty prefix.
        nodes.push(Node::start(name, &etcd, &prefix, servers_));
    }
    for n in &nodes {
        wait_cluster(n, CONVERGE, "connected and in sync", in_sync).await;
        let want = servers_.len();
        wait_servers(n, CONVERGE, "listing the configured servers", |l| {
            l.len() == want
        })
        .await;
    }
    (etcd, prefix, nodes)
}

// ---------------------------------------------------------------------------
// The etcd harness on its own (passes without the fleet implementation)
// ---------------------------------------------------------------------------

#[test]
fn etcd_harness_put_get_stop_restart_compact() {
    if !support::etcd::available() {
        return;
    }
    let mut etcd = Etcd::start();
    assert!(etcd.endpoint().starts_with("127.0.0.1:"));
    let r0 = etcd.revision();
    etcd.put("/t/a", r#"{"x":1}"#);
    etcd.put("/t/b", "two words");
    etcd.put("/u/c", "-dash");
    assert_eq!(etcd.revision(), r0 + 3);
    assert_eq!(
        etcd.get_prefix("/t/"),
        vec![
            ("/t/a".to_string(), r#"{"x":1}"#.to_string()),
            ("/t/b".to_string(), "two words".to_string())
        ]
    );
    assert_eq!(etcd.get("/u/c").as_deref(), Some("-dash"));
    assert_eq!(etcd.get("/nope"), None);
    assert!(etcd.get_prefix("/nope/").is_empty());

    etcd.stop();
    assert!(!etcd.is_running());
    etcd.restart();
    assert!(etcd.is_running());
    assert_eq!(
        etcd.get("/t/a").as_deref(),
        Some(r#"{"x":1}"#),
        "data survives a restart"
    );
    let rev = etcd.revision();
    assert_eq!(rev, r0 + 3);

    etcd.put("/t/a", "new");
    let rev = rev + 1;
    etcd.compact(rev);
    assert!(etcd.is_compacted(rev - 1), "older revisions are gone");
    assert!(!etcd.is_compacted(rev));
    assert_eq!(etcd.get("/t/a").as_deref(), Some("new"));
    assert_eq!(etcd.del("/t/b"), 1);
    assert_eq!(etcd.get_prefix("/t/").len(), 1);
}

// ---------------------------------------------------------------------------
// a. A change through one instance reaches the others
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_on_a_reaches_b_and_c() {
    if !support::etcd::available() {
        return;
    }
    let (ba, bb) = (named("a").await, named("b").await);
    let (etcd, prefix, nodes) = fleet("change", &["a", "b", "c"], &[ba.addr, bb.addr]).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    // The cluster view names the store.
    let view = cluster(a.admin()).await;
    assert_eq!(view["store"], "etcd", "{view}");
    assert_eq!(view["prefix"], prefix.as_str(), "{view}");
    assert!(
        view["endpoints"].as_array().is_some_and(|e| e
            .iter()
            .any(|x| x.as_str().is_some_and(|x| x.contains(&etcd.endpoint())))),
        "{view}"
    );
    assert!(view["last_error"].is_null(), "{view}");
    assert!(view["lag_seconds"].as_f64().is_some(), "{view}");
    let before = view["applied_revision"].as_i64().unwrap();

    // Traffic through B reaches both backends first.
    traffic(b.addr(), 4).await;
    assert!(ba.hits() > 0 && bb.hits() > 0);

    let r = patch(a.admin(), 0, json!({ "state": "down" })).await;
    let answered = Instant::now();
    assert_eq!(r.status, StatusCode::OK, "{r}");
    assert_eq!(r.json["state"], "down", "{r}");
    // A's own table already has it when A answers.
    assert_eq!(
        server(&servers(a.admin()).await, 0).unwrap()["state"],
        "down"
    );

    let (tb, tc) = tokio::join!(
        wait_servers(b, FAST, "showing server 0 down", |l| server(l, 0)
            .is_some_and(|s| s["state"] == "down")),
        wait_servers(c, FAST, "showing server 0 down", |l| server(l, 0)
            .is_some_and(|s| s["state"] == "down")),
    );
    let total = answered.elapsed();
    eprintln!(
        "fleet convergence: B {:.1} ms, C {:.1} ms after A's answer (both within {:.1} ms)",
        tb.as_secs_f64() * 1e3,
        tc.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3
    );
    assert!(total < FAST, "converged in {total:?}");

    // Traffic through B no longer reaches backend a.
    let hits_a = ba.hits();
    let bodies = traffic(b.addr(), 10).await;
    assert!(bodies.iter().all(|x| x == "b"), "{bodies:?}");
    assert_eq!(
        ba.hits(),
        hits_a,
        "B sent traffic to the server that is down"
    );

    // Everyone reports a newer applied revision, equal to the store's.
    for n in &nodes {
        let v = wait_cluster(n, CONVERGE, "in sync", in_sync).await;
        assert!(
            v["applied_revision"].as_i64().unwrap() > before,
            "{}: {v}",
            n.name
        );
        let m = metrics(n.admin()).await;
        assert_eq!(
            metric(&m, "switchyard_cluster_store_up"),
            Some(1.0),
            "{}",
            n.name
        );
        let applied = metric(&m, "switchyard_cluster_applied_revision")
            .unwrap_or_else(|| panic!("{}: no switchyard_cluster_applied_revision", n.name));
        assert!(
            applied >= v["applied_revision"].as_i64().unwrap() as f64,
            "{}: {applied} {v}",
            n.name
        );
        let lag = metric(&m, "switchyard_cluster_lag_seconds")
            .unwrap_or_else(|| panic!("{}: no switchyard_cluster_lag_seconds", n.name));
        assert!((0.0..5.0).contains(&lag), "{}: lag {lag}", n.name);
    }

    // The stored server says so too.
    let stored: Value =
        serde_json::from_str(&etcd.get(&server_key(&prefix, "web", 0)).unwrap()).unwrap();
    assert_eq!(stored["state"], "down", "{stored}");
}

// ---------------------------------------------------------------------------
// b. Concurrent conflicting writes
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Writes {
    /// (addr, id) of adds answered 201.
    added: Vec<(String, u64)>,
    /// Addresses of adds answered 409.
    refused: Vec<String>,
    /// Weights answered 2xx, in order.
    weights: Vec<u64>,
    conflicts: usize,
}

/// 30 rounds of: add a server at `127.0.0.1:{port_base + i}`, set server 0's
/// weight to `weight_base + i`. Each answer is 2xx or 409 Conflict.
async fn writer(admin: SocketAddr, port_base: u16, weight_base: u64) -> Writes {
    let mut w = Writes::default();
    for i in 0..30u16 {
        let addr = format!("127.0.0.1:{}", port_base + i);
        let r = Call::post(SERVERS, &json!({ "addr": addr }).to_string())
            .send(admin)
            .await;
        match r.status {
            StatusCode::CREATED => {
                assert_eq!(r.json["addr"], addr.as_str(), "{r}");
                w.added.push((addr, r.json["id"].as_u64().unwrap()));
            }
            StatusCode::CONFLICT => {
                assert_eq!(r.code(), "Conflict", "{r}");
                w.refused.push(addr);
                w.conflicts += 1;
            }
            _ => panic!("add {addr}: {r}"),
        }
        let weight = weight_base + i as u64;
        let r = patch(admin, 0, json!({ "weight": weight })).await;
        match r.status {
            s if s.is_success() => {
                assert_eq!(r.json["weight"], weight, "{r}");
                w.weights.push(weight);
            }
            StatusCode::CONFLICT => {
                assert_eq!(r.code(), "Conflict", "{r}");
                w.conflicts += 1;
            }
            _ => panic!("weight {weight}: {r}"),
        }
    }
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_conflicting_writes_lose_nothing() {
    if !support::etcd::available() {
        return;
    }
    let (ba, bb) = (named("a").await, named("b").await);
    let (etcd, prefix, nodes) = fleet("conflict", &["a", "b", "c"], &[ba.addr, bb.addr]).await;
    let (a, b) = (nodes[0].admin(), nodes[1].admin());

    let started = Instant::now();
    let (wa, wb) = tokio::join!(
        tokio::spawn(writer(a, 41000, 100)),
        tokio::spawn(writer(b, 42000, 200))
    );
    let (wa, wb) = (wa.unwrap(), wb.unwrap());
    eprintln!(
        "fleet conflicts: 120 writes in {:?}; A: {} adds, {} weights, {} conflicts; B: {} adds, {} weights, {} conflicts",
        started.elapsed(),
        wa.added.len(),
        wa.weights.len(),
        wa.conflicts,
        wb.added.len(),
        wb.weights.len(),
        wb.conflicts
    );
    assert!(
        !wa.added.is_empty() && !wb.added.is_empty(),
        "each writer got at least one add through: {wa:?} {wb:?}"
    );

    // Everyone ends with one and the same list.
    let want = 2 + wa.added.len() + wb.added.len();
    let reference = {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let lists = [
                table(a).await,
                table(b).await,
                table(nodes[2].admin()).await,
            ];
            if lists.iter().all(|l| l.len() >= want) && lists[0] == lists[1] && lists[1] == lists[2]
            {
                break lists[0].clone();
            }
            assert!(
                Instant::now() < deadline,
                "instances disagree after {CONVERGE:?} (want {want} servers):\nA {:?}\nB {:?}\nC {:?}",
                lists[0],
                lists[1],
                lists[2]
            );
            tokio::time::sleep(POLL).await;
        }
    };

    // Every accepted add is there exactly once, under the id it was answered
    // with; ids are unique; a refused add is not there.
    let mut ids: Vec<u64> = reference.iter().map(|r| r.0).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), reference.len(), "duplicate ids: {reference:?}");
    for (addr, id) in wa.added.iter().chain(&wb.added) {
        let found: Vec<&Row> = reference.iter().filter(|r| &r.1 == addr).collect();
        assert_eq!(
            found.len(),
            1,
            "accepted add {addr} appears {} times: {reference:?}",
            found.len()
        );
        assert_eq!(
            found[0].0, *id,
            "{addr} was answered with id {id}: {reference:?}"
        );
    }
    for addr in wa.refused.iter().chain(&wb.refused) {
        assert!(
            reference.iter().all(|r| &r.1 != addr),
            "add {addr} was answered 409 but is in the table: {reference:?}"
        );
    }
    assert_eq!(
        reference.len(),
        want,
        "nothing else was added: {reference:?}"
    );

    // Server 0's weight is the last accepted write of one writer: some serial
    // order of the accepted writes.
    let w0 = reference.iter().find(|r| r.0 == 0).unwrap().3;
    let lasts = [wa.weights.last().copied(), wb.weights.last().copied()];
    assert!(
        lasts.contains(&Some(w0)),
        "server 0 has weight {w0}; the writers' last accepted weights were {lasts:?}"
    );

    // The store agrees: one key per server.
    let keys = etcd.get_prefix(&format!("{prefix}/servers/web/"));
    assert_eq!(keys.len(), reference.len(), "{keys:?}");
    for (id, addr, _, weight) in &reference {
        let v: Value =
            serde_json::from_str(&etcd.get(&server_key(&prefix, "web", *id)).unwrap()).unwrap();
        assert_eq!(v["addr"], addr.as_str(), "{v}");
        assert_eq!(v["weight"].as_u64(), Some(*weight), "{v}");
    }
}

// ---------------------------------------------------------------------------
// c. Store outage: traffic goes on, writes are refused, then it heals
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_keeps_traffic_and_refuses_writes() {
    if !support::etcd::available() {
        return;
    }
    let (ba, bb) = (named("a").await, named("b").await);
    let (mut etcd, prefix, nodes) = fleet("outage", &["a", "b", "c"], &[ba.addr, bb.addr]).await;
    let key1 = server_key(&prefix, "web", 1);
    let stored1 = etcd
        .get(&key1)
        .unwrap_or_else(|| panic!("no {key1} in {:?}", etcd.get_prefix(&prefix)));

    etcd.stop();
    for n in &nodes {
        let v = wait_cluster(n, CONVERGE, "disconnected", |v| v["connected"] == false).await;
        assert!(v["last_error"].is_string(), "{}: {v}", n.name);
    }
    // Traffic keeps flowing with the last table.
    for n in &nodes {
        let bodies = traffic(n.addr(), 6).await;
        assert!(
            bodies.iter().any(|x| x == "a") && bodies.iter().any(|x| x == "b"),
            "{bodies:?}"
        );
    }
    // Writes are refused, and nothing changed.
    let r = patch(nodes[0].admin(), 0, json!({ "weight": 7 })).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r}");
    assert_eq!(r.code(), "StoreUnavailable", "{r}");
    assert!(r.json["error"]["message"].is_string(), "{r}");
    let r = Call::post(SERVERS, r#"{"addr":"127.0.0.1:9"}"#)
        .send(nodes[1].admin())
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r}");
    assert_eq!(r.code(), "StoreUnavailable", "{r}");
    for n in &nodes {
        let t = table(n.admin()).await;
        assert_eq!(t.len(), 2, "{}: {t:?}", n.name);
        assert!(
            t.iter().all(|r| r.3 == 1 && r.2 == "up"),
            "{}: {t:?}",
            n.name
        );
        assert_eq!(
            metric(&metrics(n.admin()).await, "switchyard_cluster_store_up"),
            Some(0.0),
            "{}",
            n.name
        );
    }

    // etcd comes back and gets a change straight away, written with etcdctl.
    etcd.restart();
    let mut down: Value = serde_json::from_str(&stored1).unwrap();
    assert_eq!(down["state"], "up", "{down}");
    down["state"] = json!("down");
    etcd.put(&key1, &down.to_string());
    let t0 = Instant::now();
    for n in &nodes {
        wait_servers(
            n,
            CONVERGE,
            "showing server 1 down (put with etcdctl)",
            |l| server(l, 1).is_some_and(|s| s["state"] == "down"),
        )
        .await;
    }
    eprintln!(
        "fleet outage: all three applied the etcdctl change {:?} after the restart",
        t0.elapsed()
    );
    for n in &nodes {
        wait_cluster(n, CONVERGE, "reconnected", |v| v["connected"] == true).await;
    }

    // A write through B goes through again.
    let deadline = Instant::now() + CONVERGE;
    loop {
        let r = patch(nodes[1].admin(), 0, json!({ "weight": 3 })).await;
        if r.status.is_success() {
            assert_eq!(r.json["weight"], 3, "{r}");
            break;
        }
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r}");
        assert!(
            Instant::now() < deadline,
            "writes through B still refused: {r}"
        );
        tokio::time::sleep(POLL).await;
    }
    for n in &nodes {
        wait_servers(n, CONVERGE, "showing weight 3", |l| {
            server(l, 0).is_some_and(|s| s["weight"] == 3)
        })
        .await;
    }
    // And traffic follows the etcdctl change: b is down everywhere.
    let hits_b = bb.hits();
    for n in &nodes {
        let bodies = traffic(n.addr(), 4).await;
        assert!(bodies.iter().all(|x| x == "a"), "{}: {bodies:?}", n.name);
    }
    assert_eq!(bb.hits(), hits_b);
}

// ---------------------------------------------------------------------------
// d. A cached revision that was compacted away
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_while_disconnected_resyncs() {
    if !support::etcd::available() {
        return;
    }
    let (ba, bb) = (named("a").await, named("b").await);
    let (etcd, _prefix, mut nodes) = fleet("compact", &["a", "b"], &[ba.addr, bb.addr]).await;
    let b_rev = cluster(nodes[1].admin()).await["applied_revision"]
        .as_i64()
        .unwrap();
    nodes[1].kill_9();
    assert!(
        nodes[1].state_file().exists(),
        "B keeps a cache at {:?}",
        nodes[1].state_file()
    );

    let a = nodes[0].admin();
    for w in 2..=21u64 {
        let r = patch(a, 0, json!({ "weight": w })).await;
        assert_eq!(r.status, StatusCode::OK, "{r}");
    }
    let r = patch(a, 1, json!({ "state": "down" })).await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    let rev = etcd.revision();
    assert!(rev > b_rev + 20, "store at {rev}, B had {b_rev}");
    etcd.compact(rev);
    assert!(
        etcd.is_compacted(b_rev),
        "B's cached revision {b_rev} is compacted"
    );

    let t0 = Instant::now();
    nodes[1].restart();
    let b = &nodes[1];
    wait_servers(b, CONVERGE, "showing A's table after the compaction", |l| {
        server(l, 0).is_some_and(|s| s["weight"] == 21)
            && server(l, 1).is_some_and(|s| s["state"] == "down")
    })
    .await;
    eprintln!(
        "fleet compaction: B resynced {:?} after its restart",
        t0.elapsed()
    );
    let v = wait_cluster(b, CONVERGE, "in sync", in_sync).await;
    assert!(v["applied_revision"].as_i64().unwrap() >= rev, "{v}");
    assert_eq!(table(b.admin()).await, table(a).await);

    // And B watches again from there.
    let r = patch(a, 0, json!({ "weight": 50 })).await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    wait_servers(b, FAST, "showing weight 50", |l| {
        server(l, 0).is_some_and(|s| s["weight"] == 50)
    })
    .await;
    let bodies = traffic(b.addr(), 4).await;
    assert!(bodies.iter().all(|x| x == "a"), "{bodies:?}");
}

// ---------------------------------------------------------------------------
// e. Restart while the store is down: the cached table
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_during_outage_serves_cached_table() {
    if !support::etcd::available() {
        return;
    }
    let (ba, bb) = (named("a").await, named("b").await);
    let (mut etcd, _prefix, mut nodes) = fleet("cached", &["a"], &[ba.addr, bb.addr]).await;
    let r = patch(nodes[0].admin(), 1, json!({ "state": "down" })).await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    let before = table(nodes[0].admin()).await;

    etcd.stop();
    nodes[0].kill_9();
    nodes[0].restart();
    let a = &nodes[0];
    assert_eq!(
        table(a.admin()).await,
        before,
        "the cached table, server 1 down"
    );
    let v = wait_cluster(a, CONVERGE, "disconnected", |v| v["connected"] == false).await;
    assert_eq!(v["connected"], false, "{v}");

    let hits_b = bb.hits();
    let bodies = traffic(a.addr(), 8).await;
    assert!(bodies.iter().all(|x| x == "a"), "{bodies:?}");
    assert_eq!(bb.hits(), hits_b, "the cached down server got traffic");

    let r = patch(a.admin(), 0, json!({ "weight": 4 })).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r}");
    assert_eq!(r.code(), "StoreUnavailable", "{r}");
    assert_eq!(
        metric(&metrics(a.admin()).await, "switchyard_cluster_store_up"),
        Some(0.0)
    );
}

// ---------------------------------------------------------------------------
// f. Bootstrap: the first instance seeds an empty prefix; the store wins
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_seeds_empty_prefix_and_followers_follow_store() {
    if !support::etcd::available() {
        return;
    }
    let (b1, b2, b3): (Backend, Backend, Backend) =
        (named("b1").await, named("b2").await, named("b3").await);
    let etcd = Etcd::start();
    let prefix = unique_prefix("bootstrap");
    assert!(etcd.get_prefix(&prefix).is_empty());

    let a = Node::start("a", &etcd, &prefix, &[b1.addr, b2.addr]);
    wait_cluster(&a, CONVERGE, "in sync", in_sync).await;
    let keys = {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let keys = etcd.get_prefix(&prefix);
            if keys
                .iter()
                .filter(|(k, _)| k.contains("/servers/web/"))
                .count()
                == 2
            {
                break keys;
            }
            assert!(
                Instant::now() < deadline,
                "the prefix was not seeded: {keys:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    };
    eprintln!("fleet bootstrap keys: {keys:?}");
    let find = |k: &str| -> Value {
        let (_, v) = keys
            .iter()
            .find(|(key, _)| key == k)
            .unwrap_or_else(|| panic!("no key {k} in {keys:?}"));
        serde_json::from_str(v).unwrap_or_else(|e| panic!("{k}: {e}: {v}"))
    };
    find(&format!("{prefix}/meta"));
    let up = find(&format!("{prefix}/upstreams/web"));
    assert!(up["settings"].is_object(), "{up}");
    assert_eq!(up["next_id"], 2, "{up}");
    for (id, backend) in [(0u64, &b1), (1, &b2)] {
        let s = find(&server_key(&prefix, "web", id));
        assert_eq!(s["id"], id, "{s}");
        assert_eq!(s["addr"], backend.addr.to_string(), "{s}");
        assert_eq!(s["weight"], 1, "{s}");
        assert_eq!(s["state"], "up", "{s}");
        assert_eq!(s["backup"], false, "{s}");
        for field in ["max_conns", "max_fails", "fail_timeout_ms", "slow_start_ms"] {
            assert!(s[field].is_u64(), "{field} in {s}");
        }
    }
    assert!(
        keys.iter()
            .all(|(k, _)| !k.starts_with(&format!("{prefix}/deleted/"))),
        "{keys:?}"
    );

    // B's file lists b3 only: the store wins.
    let b = Node::start("b", &etcd, &prefix, &[b3.addr]);
    let want = vec![b1.addr.to_string(), b2.addr.to_string()];
    wait_servers(&b, CONVERGE, "showing the stored servers b1, b2", |l| {
        l.iter()
            .map(|s| s["addr"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
            == want
    })
    .await;
    wait_cluster(&b, CONVERGE, "in sync", in_sync).await;
    assert_eq!(table(b.admin()).await, table(a.admin()).await);
    let hits3 = b3.hits();
    let bodies = traffic(b.addr(), 6).await;
    assert!(bodies.iter().all(|x| x == "b1" || x == "b2"), "{bodies:?}");
    assert_eq!(b3.hits(), hits3);
    // B did not write its file's servers to the store.
    let after = etcd.get_prefix(&format!("{prefix}/servers/web/"));
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        after.iter().all(|(_, v)| !v.contains(&b3.addr.to_string())),
        "{after:?}"
    );
}

// ---------------------------------------------------------------------------
// etcd authentication
// ---------------------------------------------------------------------------

/// An instance whose `[cluster]` section has `extra` lines after `timeout`
/// (credentials, TLS files).
fn node_with(
    name: &'static str,
    etcd: &Etcd,
    prefix: &str,
    servers: &[SocketAddr],
    extra: &str,
) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join(format!("{name}.state.json"));
    let text = fleet_config(etcd, prefix, &state, servers)
        .replace("timeout = \"2s\"\n", &format!("timeout = \"2s\"\n{extra}"));
    let mut node = Node {
        name,
        dir,
        text,
        sy: None,
    };
    node.restart();
    node
}

/// An instance with etcd credentials (`[cluster] username/password`).
fn node_with_credentials(
    name: &'static str,
    etcd: &Etcd,
    prefix: &str,
    servers: &[SocketAddr],
    password: &str,
) -> Node {
    let lines = format!("username = \"root\"\npassword = \"{password}\"\n");
    node_with(name, etcd, prefix, servers, &lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_used_and_wrong_ones_refuse_writes_with_the_reason() {
    if !support::etcd::available() {
        return;
    }
    let (a, b) = (named("a").await, named("b").await);
    let servers_ = [a.addr, b.addr];
    let etcd = Etcd::start();
    etcd.etcdctl(&["user", "add", "root:s3cret-pw"]);
    etcd.etcdctl(&["role", "add", "root"]);
    etcd.etcdctl(&["user", "grant-role", "root", "root"]);
    etcd.etcdctl(&["auth", "enable"]);
    let prefix = unique_prefix("auth");

    let good = node_with_credentials("good", &etcd, &prefix, &servers_, "s3cret-pw");
    wait_cluster(&good, CONVERGE, "connected and in sync", in_sync).await;
    let r = patch(good.admin(), 0, json!({"state": "down"})).await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    let stored = etcd.etcdctl(&[
        "--user",
        "root:s3cret-pw",
        "get",
        "--print-value-only",
        &server_key(&prefix, "web", 0),
    ]);
    assert!(stored.contains("\"state\":\"down\""), "{stored}");
    // etcd keeps its tokens in memory: after a restart the instance's token is
    // unknown, and it must authenticate again by itself.
    let mut etcd = etcd;
    etcd.restart();
    let deadline = Instant::now() + CONVERGE;
    loop {
        let r = patch(good.admin(), 0, json!({"state": "up"})).await;
        if r.status == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes still refused after etcd's restart: {r}"
        );
        tokio::time::sleep(POLL).await;
    }
    wait_cluster(&good, CONVERGE, "in sync after etcd's restart", in_sync).await;

    let bad = node_with_credentials("bad", &etcd, &prefix, &servers_, "wrong-password");
    let v = wait_cluster(&bad, CONVERGE, "reporting the refusal", |v| {
        v["connected"] == false && v["last_error"].is_string()
    })
    .await;
    let reason = v["last_error"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        reason.contains("auth"),
        "the reason names authentication: {v}"
    );
    let r = patch(bad.admin(), 1, json!({"state": "down"})).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r}");
    assert_eq!(r.json["error"]["code"], "StoreUnavailable", "{r}");
    // It still serves (its configuration: it never read the store).
    assert_eq!(traffic(bad.addr(), 2).await.len(), 2);
}

// ---------------------------------------------------------------------------
// TLS to etcd
// ---------------------------------------------------------------------------

/// A CA and what it signed, as PEM files in `dir`: etcd's server certificate
/// (for 127.0.0.1) and a client certificate.
fn etcd_certificates(dir: &std::path::Path) -> support::etcd::EtcdTls {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fleet test CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let issue = |name: &str, sans: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(sans)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    };
    let (cert, key) = issue("etcd", vec!["127.0.0.1".into(), "localhost".into()]);
    let (client_cert, client_key) = issue("client", vec!["switchyard".into()]);
    support::etcd::EtcdTls {
        ca: ca_path,
        cert,
        key,
        client_cert,
        client_key,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_etcd_with_a_client_certificate() {
    if !support::etcd::available() {
        return;
    }
    let (a, b) = (named("a").await, named("b").await);
    let servers_ = [a.addr, b.addr];
    let certs = tempfile::tempdir().unwrap();
    let tls = etcd_certificates(certs.path());
    let etcd = Etcd::start_tls(tls.clone());
    let prefix = unique_prefix("tls");

    let with_cert = format!(
        "tls_ca = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        tls.ca.display(),
        tls.client_cert.display(),
        tls.client_key.display()
    );
    let good = node_with("good", &etcd, &prefix, &servers_, &with_cert);
    wait_cluster(&good, CONVERGE, "connected and in sync", in_sync).await;
    let r = patch(good.admin(), 1, json!({"weight": 7})).await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    let stored = etcd.get(&server_key(&prefix, "web", 1)).unwrap_or_default();
    assert!(stored.contains("\"weight\":7"), "{stored}");

    // Trusting the CA but showing no client certificate: etcd refuses it.
    let ca_only = format!("tls_ca = \"{}\"\n", tls.ca.display());
    let refused = node_with("refused", &etcd, &prefix, &servers_, &ca_only);
    wait_cluster(&refused, CONVERGE, "reporting the refusal", |v| {
        v["connected"] == false && v["last_error"].is_string()
    })
    .await;
    let r = patch(refused.admin(), 0, json!({"state": "down"})).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r}");
    let stored = etcd.get(&server_key(&prefix, "web", 0)).unwrap_or_default();
    assert!(stored.contains("\"state\":\"up\""), "{stored}");
}

// ---------------------------------------------------------------------------
// Endpoints that cannot be reached
// ---------------------------------------------------------------------------

/// A port on loopback that nothing listens on (bound, read, then closed).
fn dead_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_endpoint_is_skipped_for_the_next_one_in_the_same_call() {
    if !support::etcd::available() {
        return;
    }
    let (a, b) = (named("a").await, named("b").await);
    let servers_ = [a.addr, b.addr];
    let etcd = Etcd::start();
    let prefix = unique_prefix("deadfirst");
    let dead = dead_endpoint();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("n.state.json");
    let text = fleet_config(&etcd, &prefix, &state, &servers_).replace(
        &format!("endpoints = [\"{}\"]", etcd.endpoint()),
        &format!("endpoints = [\"{dead}\", \"{}\"]", etcd.endpoint()),
    );
    assert!(text.contains(&dead), "{text}");
    let mut node = Node {
        name: "n",
        dir,
        text,
        sy: None,
    };
    node.restart();
    wait_cluster(&node, CONVERGE, "connected and in sync", in_sync).await;
    // Every write succeeds at the first try: none is answered 503.
    for (i, w) in [3, 4, 5, 6].into_iter().enumerate() {
        let r = patch(node.admin(), (i % 2) as u64, json!({ "weight": w })).await;
        assert_eq!(r.status, StatusCode::OK, "write {i}: {r}");
    }
    let stored = etcd.get(&server_key(&prefix, "web", 1)).unwrap_or_default();
    assert!(stored.contains("\"weight\":6"), "{stored}");
}
