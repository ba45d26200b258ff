//! The fleet under etcd faults (issue 23): a 3-member etcd cluster on loopback
//! (`support::etcd::EtcdCluster`, short elections), three instances listing all
//! three endpoints, and members killed with `kill -9` while writers write.
//!
//! - a follower killed, then the leader: no 409 for writers changing different
//!   servers, no write fails outside the election window, every acknowledged
//!   add is on every instance under one id, no GET fails;
//! - a write whose answer is lost when the leader dies is answered with what
//!   happened (201 and its id, once), and a write whose answer cannot be had
//!   at all is answered `StoreOutcomeUnknown`, never "not applied".

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::etcd::EtcdCluster;
use support::{Call, Switchyard, get, named};

const SERVERS: &str = "/api/v1/upstreams/web/servers";
const CONVERGE: Duration = Duration::from_secs(20);
/// How long after a kill a write may fail: the election and the write's
/// look-up and retry.
const WINDOW: Duration = Duration::from_secs(3);

fn prefix(test: &str) -> String {
    format!("/switchyard/{test}-{}", std::process::id())
}

/// An instance on `endpoints` (in that order), with a per-call timeout of 1 s.
fn start(
    dir: &std::path::Path,
    endpoints: &[String],
    prefix: &str,
    backends: &[SocketAddr],
) -> Switchyard {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    let servers: Vec<String> = backends
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect();
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\nstate_file = \"{state}\"\n\n\
         [cluster]\nstore = \"etcd\"\nendpoints = [{list}]\nprefix = \"{prefix}\"\ntimeout = \"1s\"\n\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ upstream = \"web\" }}]\n\n\
         [upstream.web]\nservers = [{servers}]\n",
        state = dir.join("state.json").display(),
        list = list.join(", "),
        servers = servers.join(", "),
    );
    Switchyard::run_config_in(dir, &text, 1)
}

async fn wait_connected(admin: SocketAddr) {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let r = Call::get("/api/v1/cluster").try_send(admin).await;
        if let Ok(r) = r
            && r.json["connected"] == true
        {
            return;
        }
        assert!(Instant::now() < deadline, "{admin} never connected to etcd");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `web`'s servers on `admin`: address → id.
async fn ids(admin: SocketAddr) -> BTreeMap<String, u64> {
    let r = Call::get(SERVERS).send(admin).await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    r.json
        .as_array()
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

/// What a writer saw.
#[derive(Debug, Default)]
struct Seen {
    added: Vec<(String, u64)>,
    ok: usize,
    /// When, status, error code, body.
    failed: Vec<(Instant, StatusCode, String, String)>,
}

/// Adds servers through `admin` (addresses from `base`, down) and sets the
/// weight of the last one it added, until `stop`.
async fn writer(admin: SocketAddr, base: u16, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    let mut i = 0u16;
    while !stop.load(Ordering::Relaxed) {
        let addr = format!("127.0.0.1:{}", base + i);
        i += 1;
        // Down: nothing listens there, and the readers' traffic must not go.
        let r = Call::post(
            SERVERS,
            &json!({ "addr": addr, "state": "down" }).to_string(),
        )
        .send(admin)
        .await;
        if r.status == StatusCode::CREATED {
            let id = r.json["id"].as_u64().expect("an id");
            seen.added.push((addr, id));
            seen.ok += 1;
        } else {
            seen.failed.push((
                Instant::now(),
                r.status,
                r.code().to_string(),
                r.body.clone(),
            ));
            continue;
        }
        let id = seen.added.last().map(|a| a.1).unwrap_or(0);
        let r = Call::patch(
            &format!("{SERVERS}/{id}"),
            &json!({ "weight": 1 + i % 7 }).to_string(),
        )
        .send(admin)
        .await;
        if r.status == StatusCode::OK {
            seen.ok += 1;
        } else {
            seen.failed.push((
                Instant::now(),
                r.status,
                r.code().to_string(),
                r.body.clone(),
            ));
        }
    }
    seen
}

/// GETs through the proxy and the admin API until `stop`; how many failed.
async fn reader(proxy: SocketAddr, admin: SocketAddr, stop: Arc<AtomicBool>) -> (usize, usize) {
    let (mut n, mut failed) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        n += 2;
        if get(proxy, "/").await.status != StatusCode::OK {
            failed += 1;
        }
        if Call::get(SERVERS).send(admin).await.status != StatusCode::OK {
            failed += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (n, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_then_the_leader_killed_during_concurrent_writes() {
    if !support::etcd::available() {
        return;
    }
    let (ba, bb) = (named("a").await, named("b").await);
    let mut etcd = tokio::task::block_in_place(EtcdCluster::start);
    let endpoints = etcd.endpoints();
    let prefix = prefix("kills");
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // Each instance prefers a different member.
    let nodes: Vec<Switchyard> = (0..3)
        .map(|i| {
            let mut e = endpoints.clone();
            e.rotate_left(i);
            start(dirs[i].path(), &e, &prefix, &[ba.addr, bb.addr])
        })
        .collect();
    for n in &nodes {
        wait_connected(n.admin()).await;
    }
    let admins: Vec<SocketAddr> = nodes.iter().map(Switchyard::admin).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8u16)
        .map(|k| {
            tokio::spawn(writer(
                admins[k as usize % 3],
                20000 + k * 500,
                Arc::clone(&stop),
            ))
        })
        .collect();
    let readers: Vec<_> = (0..3)
        .map(|i| tokio::spawn(reader(nodes[i].addr(), admins[i], Arc::clone(&stop))))
        .collect();

    tokio::time::sleep(Duration::from_millis(1000)).await;
    let leader = tokio::task::block_in_place(|| etcd.leader());
    let follower = (leader + 1) % 3;
    let follower_killed = Instant::now();
    tokio::task::block_in_place(|| etcd.kill_9(follower));
    tokio::time::sleep(Duration::from_millis(2000)).await;
    // Every instance shows the dead member as unreachable.
    let c = Call::get("/api/v1/cluster").send(admins[0]).await;
    let members = c.json["members"].as_array().cloned().unwrap_or_default();
    let dead = members
        .iter()
        .find(|m| m["endpoint"] == endpoints[follower].as_str())
        .unwrap_or_else(|| panic!("no member {} in {c}", endpoints[follower]));
    assert_eq!(dead["reachable"], false, "{c}");
    assert!(
        members.iter().filter(|m| m["leader"] == true).count() == 1,
        "one leader shown: {c}"
    );
    tokio::task::block_in_place(|| etcd.restart(follower));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leader = tokio::task::block_in_place(|| etcd.leader());
    let leader_killed = Instant::now();
    tokio::task::block_in_place(|| etcd.kill_9(leader));
    tokio::time::sleep(Duration::from_millis(4000)).await;
    stop.store(true, Ordering::Relaxed);

    let mut seen = Vec::new();
    for w in writers {
        seen.push(w.await.unwrap());
    }
    let (mut gets, mut failed_gets) = (0, 0);
    for r in readers {
        let (n, f) = r.await.unwrap();
        gets += n;
        failed_gets += f;
    }
    let ok: usize = seen.iter().map(|s| s.ok).sum();
    let took = follower_killed.elapsed() + Duration::from_secs(1);
    let failed: Vec<_> = seen.iter().flat_map(|s| s.failed.iter()).collect();
    eprintln!(
        "fleet faults: {ok} writes acknowledged in {took:?}, {} failed ({:?}); {gets} GETs, {failed_gets} failed",
        failed.len(),
        failed
            .iter()
            .map(|f| (f.1.as_u16(), f.2.as_str()))
            .collect::<Vec<_>>()
    );
    assert!(ok > 100, "writes went on: {ok}");
    assert_eq!(failed_gets, 0, "no GET failed");
    for (at, status, code, body) in &failed {
        assert_ne!(
            *status,
            StatusCode::CONFLICT,
            "a 409 for a write nobody else made: {body}"
        );
        assert!(
            matches!(code.as_str(), "StoreUnavailable" | "StoreOutcomeUnknown"),
            "{status} {body}"
        );
        let in_window = |kill: Instant| *at >= kill && *at <= kill + WINDOW;
        assert!(
            in_window(follower_killed) || in_window(leader_killed),
            "a write failed {:?} after the leader's kill, outside the election window: {body}",
            at.saturating_duration_since(leader_killed)
        );
    }

    // Every acknowledged add is on every instance, under the id it was
    // answered with; nothing twice.
    let added: BTreeMap<String, u64> = seen.iter().flat_map(|s| s.added.iter().cloned()).collect();
    let deadline = Instant::now() + CONVERGE;
    let lists = loop {
        let mut lists = Vec::new();
        for a in &admins {
            lists.push(ids(*a).await);
        }
        if lists
            .iter()
            .all(|l| added.iter().all(|(a, id)| l.get(a) == Some(id)))
            && lists[0] == lists[1]
            && lists[1] == lists[2]
        {
            break lists;
        }
        assert!(
            Instant::now() < deadline,
            "instances disagree or lost acknowledged adds"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let unique: BTreeSet<u64> = lists[0].values().copied().collect();
    assert_eq!(unique.len(), lists[0].len(), "ids are unique");
    let m = Call::get("/metrics").send(admins[0]).await;
    assert!(
        m.body
            .contains("switchyard_cluster_store_errors_total{kind=\"connect\"}"),
        "{}",
        m.body
    );
}

/// A TCP relay to an etcd member that can swallow everything the member
/// answers (`swallow`), as a member does that dies after applying a write.
async fn relay(to: SocketAddr, swallow: Arc<AtomicBool>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            let swallow = Arc::clone(&swallow);
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                });
                let mut buf = vec![0u8; 16384];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if !swallow.load(Ordering::Relaxed) && cw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_is_lost_is_answered_with_what_happened() {
    if !support::etcd::available() {
        return;
    }
    let ba = named("a").await;
    let mut etcd = tokio::task::block_in_place(EtcdCluster::start);
    let endpoints = etcd.endpoints();
    let leader = tokio::task::block_in_place(|| etcd.leader());
    let prefix = prefix("inflight");
    let swallow = Arc::new(AtomicBool::new(false));
    let via = relay(endpoints[leader].parse().unwrap(), Arc::clone(&swallow)).await;
    // The instance talks to the leader through the relay first.
    let mut list = vec![via.to_string()];
    list.extend((1..3).map(|k| endpoints[(leader + k) % 3].clone()));
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), &list, &prefix, &[ba.addr]);
    // Another instance talks to a follower through a relay of its own, and
    // to nothing else.
    let swallow_b = Arc::new(AtomicBool::new(false));
    let follower = endpoints[(leader + 1) % 3].parse().unwrap();
    let via_b = relay(follower, Arc::clone(&swallow_b)).await;
    let only = tempfile::tempdir().unwrap();
    let lonely = start(only.path(), &[via_b.to_string()], &prefix, &[ba.addr]);
    wait_connected(node.admin()).await;
    wait_connected(lonely.admin()).await;

    // The leader applies the add, its answer is lost, then the leader dies.
    swallow.store(true, Ordering::Relaxed);
    let admin = node.admin();
    let add = tokio::spawn(async move {
        Call::post(SERVERS, &json!({ "addr": "127.0.0.1:30001" }).to_string())
            .send(admin)
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| etcd.kill_9(leader));
    let r = add.await.unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "the add was applied: {r}");
    let id = r.json["id"].as_u64().unwrap();
    let stored =
        tokio::task::block_in_place(|| etcd.any().get_prefix(&format!("{prefix}/servers/web/")));
    let copies: Vec<_> = stored
        .iter()
        .filter(|(_, v)| v.contains("127.0.0.1:30001"))
        .collect();
    assert_eq!(copies.len(), 1, "applied once: {stored:?}");
    assert!(copies[0].0.ends_with(&format!("{id:010}")), "{copies:?}");
    let m = Call::get("/metrics").send(admin).await;
    assert!(
        !m.body
            .contains("switchyard_cluster_store_errors_total{kind=\"outcome_looked_up\"} 0"),
        "the outcome was looked up"
    );

    // Through a member that applies but never answers, and no other: the
    // write was sent, and nobody can say in time whether it was applied (it
    // was: "not applied" would have been a lie).
    swallow_b.store(true, Ordering::Relaxed);
    let r = Call::post(SERVERS, &json!({ "addr": "127.0.0.1:30002" }).to_string())
        .send(lonely.admin())
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r}");
    assert_eq!(r.code(), "StoreOutcomeUnknown", "{r}");
    assert!(r.body.contains("may"), "{r}");
    let v: Value = r.json;
    assert!(v["error"]["message"].as_str().is_some(), "{v}");
    let stored =
        tokio::task::block_in_place(|| etcd.any().get_prefix(&format!("{prefix}/servers/web/")));
    assert!(
        stored.iter().any(|(_, v)| v.contains("127.0.0.1:30002")),
        "{stored:?}"
    );
}
