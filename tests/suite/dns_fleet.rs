//! Servers from DNS in a fleet (issue 19): one instance resolves and writes —
//! the one holding the upstream's resolver lease in etcd — and the others
//! follow the table; when the writer dies, another takes the lease over.
//! Needs etcd (`support::etcd`; `SWITCHYARD_REQUIRE_ETCD=1` makes its absence
//! a failure).

use crate::support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use serde_json::Value;

use support::dns::DnsServer;
use support::etcd::Etcd;
use support::{Call, Switchyard, get};

const SERVERS: &str = "/api/v1/upstreams/app/servers";
const WITHIN: Duration = Duration::from_secs(15);

fn config(etcd: &Etcd, prefix: &str, dns: SocketAddr, port: u16) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [cluster]\nstore = \"etcd\"\nendpoints = [\"{endpoint}\"]\nprefix = \"{prefix}\"\ntimeout = \"500ms\"\n\n\
         [resolver]\nservers = [\"{dns}\"]\nvalid = \"200ms\"\ntimeout = \"300ms\"\nipv6 = false\n\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ upstream = \"app\" }}]\n\n\
         [upstream.app]\nservers = [{{ addr = \"app.test:{port}\", resolve = true }}]\n",
        endpoint = etcd.endpoint(),
    )
}

async fn addrs(admin: SocketAddr) -> Vec<String> {
    let r = Call::get(SERVERS).send(admin).await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    let mut out: Vec<String> = r
        .json
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s: &Value| s["addr"].as_str().unwrap_or("").to_string())
        .collect();
    out.sort();
    out
}

async fn wait_addrs(admin: SocketAddr, want: &[String]) {
    let deadline = Instant::now() + WITHIN;
    loop {
        let have = addrs(admin).await;
        if have == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{admin}: {have:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn lookups(admin: SocketAddr) -> f64 {
    let text = get(admin, "/metrics").await.body;
    text.lines()
        .find(|l| l.starts_with("switchyard_dns_resolutions_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn two_instances_one_resolver_and_the_other_takes_over() {
    if !support::etcd::available() {
        return;
    }
    let etcd = Etcd::start();
    let dns = DnsServer::start().await;
    let backend = support::named("b").await;
    let port = backend.addr.port();
    let ip = |last: u8| Ipv4Addr::new(127, 0, 0, last);
    let at = |last: u8| format!("127.0.0.{last}:{port}");
    dns.set_a("app.test", &[ip(1), ip(2)], 300);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let prefix = format!("/switchyard/dns-{}-{nanos}", std::process::id());
    let text = config(&etcd, &prefix, dns.addr, port);
    let a = Switchyard::run_config_with_admin(&text, 1);
    let b = Switchyard::run_config_with_admin(&text, 1);
    for sy in [&a, &b] {
        wait_addrs(sy.admin(), &[at(1), at(2)]).await;
    }
    // One writer: only one instance asks DNS at all.
    let (la, lb) = (lookups(a.admin()).await, lookups(b.admin()).await);
    assert!(
        (la > 0.0) != (lb > 0.0),
        "exactly one resolver: lookups {la} and {lb}"
    );
    let key = format!("{prefix}.resolver/app");
    let holder = etcd.get(&key).unwrap_or_default();
    assert!(!holder.is_empty(), "the lease key {key} names the holder");

    dns.set_a("app.test", &[ip(2), ip(3)], 300);
    for sy in [&a, &b] {
        wait_addrs(sy.admin(), &[at(2), at(3)]).await;
    }

    // The writer dies; its lease ends and the other instance resolves.
    let (mut writer, follower) = if la > 0.0 { (a, b) } else { (b, a) };
    writer.kill_9();
    let started = Instant::now();
    dns.set_a("app.test", &[ip(1)], 300);
    wait_addrs(follower.admin(), &[at(1)]).await;
    println!("took over in {:?}", started.elapsed());
    assert!(lookups(follower.admin()).await > 0.0);
}
