//! Servers from DNS (issue 19): `resolve = true` names and SRV records, looked
//! up again while traffic flows, against a DNS server inside the test
//! (`support::dns`) whose records the test changes. Backends listen on
//! 127.0.0.1, .2 and .3 (all loopback). `valid = "200ms"` keeps every wait
//! short; waits poll the admin API with deadlines.

use crate::support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::StatusCode;
use serde_json::Value;
use tokio::net::TcpListener;

use support::dns::DnsServer;
use support::{Backend, Call, Switchyard, get, named_on, try_get};

const SERVERS: &str = "/api/v1/upstreams/app/servers";
const WITHIN: Duration = Duration::from_secs(10);
const IP: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 1),
    Ipv4Addr::new(127, 0, 0, 2),
    Ipv4Addr::new(127, 0, 0, 3),
];

/// Three named backends on 127.0.0.1, .2 and .3, all on one port (an A
/// record's entry has one port for every address).
async fn trio() -> (u16, Vec<Backend>) {
    'again: for _ in 0..50 {
        let first = TcpListener::bind((IP[0], 0)).await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for ip in &IP[1..] {
            match TcpListener::bind((*ip, port)).await {
                Ok(l) => listeners.push(l),
                Err(_) => continue 'again,
            }
        }
        let names = ["one", "two", "three"];
        let backends = listeners
            .into_iter()
            .zip(names)
            .map(|(l, n)| named_on(l, n))
            .collect();
        return (port, backends);
    }
    panic!("no port free on 127.0.0.1, .2 and .3 at once");
}

/// An instance with an admin API, `[resolver]` on `dns`, and upstream `app`
/// made of `servers` (TOML inline tables).
fn start(dns: SocketAddr, servers: &str, upstream_extra: &str) -> Switchyard {
    start_with(dns, servers, upstream_extra, "")
}

/// [`start`] with more `[admin]` keys (a state file, say).
fn start_with(
    dns: SocketAddr,
    servers: &str,
    upstream_extra: &str,
    admin_extra: &str,
) -> Switchyard {
    Switchyard::run_config_with_admin(&text(dns, servers, upstream_extra, admin_extra), 1)
}

/// The configuration [`start_with`] runs.
fn text(dns: SocketAddr, servers: &str, upstream_extra: &str, admin_extra: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{admin_extra}\n\n\
         [resolver]\nservers = [\"{dns}\"]\nvalid = \"200ms\"\ntimeout = \"300ms\"\nipv6 = false\n\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ upstream = \"app\" }}]\n\n\
         [upstream.app]\nservers = [{servers}]\n{upstream_extra}\n"
    )
}

async fn listing(admin: SocketAddr) -> Vec<Value> {
    let r = Call::get(SERVERS).send(admin).await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    r.json.as_array().cloned().unwrap_or_default()
}

/// Polls the listing until `cond` holds (bounded); the listing then.
async fn wait_for(admin: SocketAddr, what: &str, cond: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + WITHIN;
    loop {
        let list = listing(admin).await;
        if cond(&list) {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: never happened; servers: {list:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (addr, state, weight, backup, origin) per server, sorted by address.
fn rows(list: &[Value]) -> Vec<(String, String, u64, bool, String)> {
    let mut out: Vec<_> = list
        .iter()
        .map(|s| {
            (
                s["addr"].as_str().unwrap_or("").to_string(),
                s["state"].as_str().unwrap_or("").to_string(),
                s["weight"].as_u64().unwrap_or(0),
                s["backup"].as_bool().unwrap_or(false),
                s["origin"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn addrs(list: &[Value]) -> Vec<String> {
    rows(list).into_iter().map(|r| r.0).collect()
}

fn id_of(list: &[Value], addr: &str) -> u64 {
    list.iter()
        .find(|s| s["addr"] == addr)
        .and_then(|s| s["id"].as_u64())
        .unwrap_or_else(|| panic!("{addr} not listed: {list:#?}"))
}

/// A sample of `/metrics` (classic format), by metric name and label text.
async fn metric(admin: SocketAddr, name: &str, labels: &str) -> f64 {
    let text = get(admin, "/metrics").await.body;
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_records_become_servers_and_follow_the_records() {
    let dns = DnsServer::start().await;
    let (port, backends) = trio().await;
    dns.set_a("app.test", &IP[..2], 300);
    let name = format!("app.test:{port}");
    let sy = start(
        dns.addr,
        &format!("{{ addr = \"{name}\", resolve = true, weight = 3, max_fails = 0 }}"),
        "",
    );
    let admin = sy.admin();
    let at = |i: usize| format!("{}:{port}", IP[i]);
    let origin = format!("dns: {name}");

    let list = wait_for(admin, "two servers from DNS", |l| l.len() == 2).await;
    assert_eq!(
        rows(&list),
        vec![
            (at(0), "up".into(), 3, false, origin.clone()),
            (at(1), "up".into(), 3, false, origin.clone()),
        ]
    );
    for _ in 0..6 {
        assert_eq!(get(sy.addr(), "/").await.status, StatusCode::OK);
    }
    assert_eq!(
        (backends[0].hits(), backends[1].hits(), backends[2].hits()),
        (3, 3, 0)
    );

    // .1 leaves the records, .3 joins; .2 stays with its id and counters.
    let id_two = id_of(&list, &at(1));
    dns.set_a("app.test", &IP[1..], 300);
    let list = wait_for(admin, ".1 replaced by .3", |l| {
        addrs(l) == vec![at(1), at(2)]
    })
    .await;
    assert_eq!(
        id_of(&list, &at(1)),
        id_two,
        "a server that stays keeps its id"
    );
    let two = list.iter().find(|s| s["addr"] == at(1).as_str()).unwrap();
    assert_eq!(two["requests"], 3, "and its counters");
    assert!(id_of(&list, &at(2)) > id_two, "a new address gets a new id");
    for _ in 0..4 {
        assert_eq!(get(sy.addr(), "/").await.status, StatusCode::OK);
    }
    assert_eq!(
        backends[0].hits(),
        3,
        "the removed address gets nothing more"
    );
    assert_eq!((backends[1].hits(), backends[2].hits()), (5, 2));

    let r = Call::get("/api/v1/upstreams/app").send(admin).await;
    assert_eq!(r.json["servers"][0]["origin"], origin.as_str(), "{r}");
    // The NGINX Plus view names each resolved peer by its entry, as NGINX Plus does.
    let r = Call::get("/api/9/http/upstreams/app").send(admin).await;
    let peers: Vec<(String, String)> = r.json["peers"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|p| {
            (
                p["server"].as_str().unwrap_or("").into(),
                p["name"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert_eq!(
        peers,
        vec![(at(1), name.clone()), (at(2), name.clone())],
        "{r}"
    );
    let labels = format!("name=\"{name}\"");
    assert!(metric(admin, "switchyard_dns_resolutions_total", &labels).await >= 2.0);
    assert_eq!(
        metric(admin, "switchyard_dns_addresses", &labels).await,
        2.0
    );
}

#[tokio::test]
async fn a_reload_starts_changes_and_stops_dns_entries() {
    let dns = DnsServer::start().await;
    let (port, backends) = trio().await;
    dns.set_a("one.test", &IP[..1], 300);
    dns.set_a("two.test", &IP[1..], 300);
    let (one, two) = (format!("one.test:{port}"), format!("two.test:{port}"));
    let at = |i: usize| format!("{}:{port}", IP[i]);
    let entry = |name: &str, weight: u32| {
        format!("{{ addr = \"{name}\", resolve = true, weight = {weight}, max_fails = {weight}0 }}")
    };
    let sy = start(dns.addr, &entry(&one, 1), "");
    let admin = sy.admin();
    let list = wait_for(admin, "one.test's server", |l| addrs(l) == vec![at(0)]).await;
    let id_one = id_of(&list, &at(0));
    let reload = |servers: String| {
        let path = sy.stderr_path().with_file_name("switchyard.toml");
        std::fs::write(path, text(dns.addr, &servers, "", "")).unwrap();
        Call::new(hyper::Method::POST, "/api/v1/reload").send(admin)
    };

    // A new entry starts; the one that stays, with a new weight, keeps its id.
    let r = reload(format!("{}, {}", entry(&one, 5), entry(&two, 2))).await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    let list = wait_for(admin, "both entries, one.test at weight 5", |l| {
        rows(l)
            .iter()
            .map(|r| (r.0.clone(), r.2))
            .collect::<Vec<_>>()
            == vec![(at(0), 5), (at(1), 2), (at(2), 2)]
    })
    .await;
    assert_eq!(
        id_of(&list, &at(0)),
        id_one,
        "a server found again keeps its id"
    );
    let kept = list.iter().find(|s| s["addr"] == at(0).as_str()).unwrap();
    assert_eq!(
        kept["max_fails"], 50,
        "and takes the entry's other parameters"
    );
    assert_eq!(rows(&list)[1].4, format!("dns: {two}"));

    // The entry leaves the file: its servers leave the table, and traffic
    // goes only to what is left.
    let r = reload(entry(&two, 2)).await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    assert!(
        r.body.contains(&format!("stop resolving {one} in app")),
        "the reload says so: {r}"
    );
    let list = listing(admin).await;
    assert_eq!(
        addrs(&list),
        vec![at(1), at(2)],
        "removed before the answer"
    );
    let before = backends[0].hits();
    for _ in 0..6 {
        assert_eq!(get(sy.addr(), "/").await.status, StatusCode::OK);
    }
    assert_eq!(
        backends[0].hits(),
        before,
        "one.test's address gets nothing more"
    );
    assert_eq!(backends[1].hits() + backends[2].hits(), 6);
    // And it is no longer looked up: its records changing adds nothing
    // while two.test is looked up three more times.
    dns.set_a("one.test", &IP[..2], 1);
    let asked = dns.queries();
    let deadline = Instant::now() + WITHIN;
    while dns.queries() < asked + 3 {
        assert!(Instant::now() < deadline, "two.test is no longer looked up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(addrs(&listing(admin).await), vec![at(1), at(2)]);
}

#[tokio::test]
async fn servers_of_an_entry_dropped_while_down_are_removed_at_start() {
    let dns = DnsServer::start().await;
    let (port, backends) = trio().await;
    dns.set_a("one.test", &IP[..1], 300);
    dns.set_a("two.test", &IP[1..2], 300);
    let dir = tempfile::tempdir().unwrap();
    let state = format!(
        "state_file = \"{}\"",
        dir.path().join("state.json").display()
    );
    let at = |i: usize| format!("{}:{port}", IP[i]);
    let entry =
        |name: &str| format!("{{ addr = \"{name}:{port}\", resolve = true, max_fails = 0 }}");
    let both = format!("{}, {}", entry("one.test"), entry("two.test"));
    let mut sy = Switchyard::run_config_in(dir.path(), &text(dns.addr, &both, "", &state), 1);
    wait_for(sy.admin(), "both entries' servers", |l| {
        addrs(l) == vec![at(0), at(1)]
    })
    .await;
    sy.kill_9();
    drop(sy);

    // one.test left the file while the process was down; the saved table
    // still has its server.
    let sy = Switchyard::run_config_in(
        dir.path(),
        &text(dns.addr, &entry("two.test"), "", &state),
        1,
    );
    let list = listing(sy.admin()).await;
    assert_eq!(addrs(&list), vec![at(1)], "when the API first answers");
    for _ in 0..4 {
        assert_eq!(get(sy.addr(), "/").await.status, StatusCode::OK);
    }
    assert_eq!(backends[0].hits(), 0, "one.test's address gets nothing");
    assert_eq!(backends[1].hits(), 4);
}

#[tokio::test]
async fn srv_records_give_ports_weights_and_backups() {
    let dns = DnsServer::start().await;
    let a = support::named("a").await;
    let b = support::named("b").await;
    let c = support::named("c").await;
    dns.set_a("a.test", &IP[..1], 300);
    dns.set_a("b.test", &IP[..1], 300);
    dns.set_a("c.test", &IP[..1], 300);
    let srv = "_http._tcp.app.test";
    dns.set_srv(
        srv,
        &[
            (10, 5, a.addr.port(), "a.test"),
            (10, 1, b.addr.port(), "b.test"),
            (20, 1, c.addr.port(), "c.test"),
        ],
        300,
    );
    let sy = start(
        dns.addr,
        &format!("{{ service = \"{srv}\", resolve = true }}"),
        "",
    );
    let admin = sy.admin();
    let origin = format!("dns: {srv}");
    let list = wait_for(admin, "three servers from SRV", |l| l.len() == 3).await;
    let mut want = vec![
        (
            a.addr.to_string(),
            "up".to_string(),
            5,
            false,
            origin.clone(),
        ),
        (
            b.addr.to_string(),
            "up".to_string(),
            1,
            false,
            origin.clone(),
        ),
        (
            c.addr.to_string(),
            "up".to_string(),
            1,
            true,
            origin.clone(),
        ),
    ];
    want.sort();
    assert_eq!(rows(&list), want);
    for _ in 0..12 {
        assert_eq!(get(sy.addr(), "/").await.status, StatusCode::OK);
    }
    assert_eq!(
        (a.hits(), b.hits(), c.hits()),
        (10, 2, 0),
        "weights 5:1, the backup idle"
    );

    // A record's weight changes: the server's follows, same id.
    let id_b = id_of(&list, &b.addr.to_string());
    dns.set_srv(
        srv,
        &[
            (10, 5, a.addr.port(), "a.test"),
            (10, 4, b.addr.port(), "b.test"),
            (20, 1, c.addr.port(), "c.test"),
        ],
        300,
    );
    let list = wait_for(admin, "b's weight 4", |l| {
        l.iter()
            .any(|s| s["addr"] == b.addr.to_string().as_str() && s["weight"] == 4)
    })
    .await;
    assert_eq!(id_of(&list, &b.addr.to_string()), id_b);
}

#[tokio::test]
async fn records_change_under_a_client_loop_with_no_failed_request() {
    let dns = DnsServer::start().await;
    let (port, backends) = trio().await;
    dns.set_a("app.test", &IP[..2], 300);
    let sy = start(
        dns.addr,
        &format!("{{ addr = \"app.test:{port}\", resolve = true }}"),
        "",
    );
    let admin = sy.admin();
    wait_for(admin, "two servers", |l| l.len() == 2).await;

    let proxy = sy.addr();
    let failed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (failed, done, stop) = (Arc::clone(&failed), Arc::clone(&done), Arc::clone(&stop));
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    match try_get(proxy, "/").await {
                        Ok(r) if r.status == StatusCode::OK => {}
                        _ => {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let at = |i: usize| format!("{}:{port}", IP[i]);
    for (set, want) in [
        (&IP[1..3], vec![at(1), at(2)]),
        (&IP[2..3], vec![at(2)]),
        (&IP[..], vec![at(0), at(1), at(2)]),
        (&IP[..1], vec![at(0)]),
    ] {
        dns.set_a("app.test", set, 300);
        wait_for(admin, &format!("servers {want:?}"), |l| addrs(l) == want).await;
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let total = done.load(Ordering::SeqCst);
    println!(
        "requests: {total}, failed: {}",
        failed.load(Ordering::SeqCst)
    );
    assert!(total > 20, "the loop ran ({total} requests)");
    assert_eq!(failed.load(Ordering::SeqCst), 0, "of {total} requests");
    assert!(
        backends.iter().all(|b| b.hits() > 0),
        "every address served"
    );
}

#[tokio::test]
async fn a_silent_dns_server_keeps_the_last_set_and_an_operators_down_sticks() {
    let dns = DnsServer::start().await;
    let (port, _backends) = trio().await;
    dns.set_a("app.test", &IP[..2], 300);
    let name = format!("app.test:{port}");
    let sy = start(
        dns.addr,
        &format!("{{ addr = \"{name}\", resolve = true }}"),
        "",
    );
    let admin = sy.admin();
    let at = |i: usize| format!("{}:{port}", IP[i]);
    let list = wait_for(admin, "two servers", |l| l.len() == 2).await;

    // An operator sets .1 down: it stays down while it stays in the records.
    let id_one = id_of(&list, &at(0));
    let r = Call::patch(&format!("{SERVERS}/{id_one}"), r#"{"state":"down"}"#)
        .send(admin)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    dns.set_a("app.test", &IP[..], 300);
    let list = wait_for(admin, ".3 added", |l| l.len() == 3).await;
    assert_eq!(
        rows(&list)[0].1,
        "down",
        "the operator's down stuck: {list:#?}"
    );

    // The name server goes silent: failures are counted, the set stays.
    let labels = format!("name=\"{name}\"");
    let before = metric(admin, "switchyard_dns_resolution_failures_total", &labels).await;
    dns.silence(true);
    let deadline = Instant::now() + WITHIN;
    while metric(admin, "switchyard_dns_resolution_failures_total", &labels).await < before + 2.0 {
        assert!(Instant::now() < deadline, "no failure counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(addrs(&listing(admin).await), vec![at(0), at(1), at(2)]);
    for _ in 0..4 {
        assert_eq!(get(sy.addr(), "/").await.status, StatusCode::OK);
    }
    // Back, with other records: followed again.
    dns.set_a("app.test", &IP[1..2], 300);
    dns.silence(false);
    wait_for(admin, "only .2 left", |l| addrs(l) == vec![at(1)]).await;
}

#[tokio::test]
async fn a_name_that_never_resolved_is_an_upstream_without_servers_not_a_failed_start() {
    let dns = DnsServer::start().await;
    let b = support::named("late").await;
    let sy = start(
        dns.addr,
        &format!(
            "{{ addr = \"nowhere.test:{}\", resolve = true }}",
            b.addr.port()
        ),
        "",
    );
    assert!(listing(sy.admin()).await.is_empty());
    let r = get(sy.addr(), "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    assert!(!r.body.is_empty());
    // The name appears: it is followed from then on.
    dns.set_a("nowhere.test", &IP[..1], 300);
    wait_for(sy.admin(), "the late name", |l| l.len() == 1).await;
    assert_eq!(get(sy.addr(), "/").await.body, "late");
}

#[test]
fn check_validates_dns_entries_without_resolving_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sy.toml");
    let ok = "[resolver]\nservers = [\"127.0.0.1:1\"]\nvalid = \"5s\"\n\n\
              [[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{ upstream = \"app\" }]\n\n\
              [upstream.app]\nservers = [{ addr = \"does-not-exist.invalid:80\", resolve = true },\n\
              { service = \"_http._tcp.does-not-exist.invalid\", resolve = true }]\n";
    std::fs::write(&path, ok).unwrap();
    let out = support::run_to_exit(
        &["check".into(), "-c".into(), path.display().to_string()],
        WITHIN,
    );
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    let bad = ok
        .replace(
            "valid = \"5s\"",
            "valid = \"5s\"\nipv4 = false\nipv6 = false",
        )
        .replace(
            "{ service = \"_http._tcp.does-not-exist.invalid\", resolve = true }",
            "{ service = \"_http._tcp.x\", backup = true }",
        );
    std::fs::write(&path, bad).unwrap();
    let out = support::run_to_exit(
        &["check".into(), "-c".into(), path.display().to_string()],
        WITHIN,
    );
    assert!(!out.status.success());
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains("ipv4 and ipv6 cannot both be false"),
        "{text}"
    );
    assert!(text.contains("service needs resolve = true"), "{text}");
}

/// Reads the event stream until an event with `origin` "dns" and `change`
/// arrives (bounded); that event.
async fn dns_event(body: &mut hyper::body::Incoming, buf: &mut String, change: &str) -> Value {
    let deadline = Instant::now() + WITHIN;
    loop {
        for line in buf.lines() {
            if let Some(data) = line.strip_prefix("data:") {
                let ev: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
                if ev["origin"] == "dns" && ev["change"] == change {
                    return ev;
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, body.frame())
            .await
            .unwrap_or_else(|_| panic!("no dns {change} event; stream so far: {buf}"))
            .expect("the stream is open")
            .unwrap();
        if let Some(d) = frame.data_ref() {
            buf.push_str(&String::from_utf8_lossy(d));
        }
    }
}

#[tokio::test]
async fn dns_changes_are_events_from_dns_and_saved_in_the_state_file() {
    let dns = DnsServer::start().await;
    let (port, _backends) = trio().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let sy = start_with(
        dns.addr,
        &format!("{{ addr = \"app.test:{port}\", resolve = true }}"),
        "",
        &format!("state_file = \"{}\"", state.display()),
    );
    let admin = sy.admin();
    let (resp, _) = Call::get("/api/v1/events").start(admin).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut buf = String::new();

    dns.set_a("app.test", &IP[..1], 300);
    let ev = dns_event(&mut body, &mut buf, "server_added").await;
    assert_eq!(ev["server"], format!("127.0.0.1:{port}").as_str(), "{ev}");
    dns.set_a("app.test", &IP[1..2], 300);
    let ev = dns_event(&mut body, &mut buf, "server_removed").await;
    assert_eq!(ev["server"], format!("127.0.0.1:{port}").as_str(), "{ev}");

    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let servers = saved["upstreams"]["app"]["servers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(servers.len(), 1, "{saved:#}");
    assert_eq!(servers[0]["addr"], format!("127.0.0.2:{port}").as_str());
    assert_eq!(
        servers[0]["origin"],
        format!("dns: app.test:{port}").as_str()
    );
}
