//! Panic mode end to end: the real binary, health-checked backends on
//! 127.0.0.1, traffic counted per backend. With `panic_threshold = 50` and 3 of
//! 4 primaries failing their checks, traffic spreads over all 4 (and the entry
//! is counted once); without it, the one healthy server takes everything; an
//! operator's `down` server gets nothing even in panic.

use crate::support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::{Checked, Switchyard, api_json, checked, get};

const WITHIN: Duration = Duration::from_secs(10);

/// Checks every 100 ms; one failure makes a server unhealthy, one pass healthy.
const CHECK: &str = r#"{ type = "http", path = "/health", interval = "100ms", timeout = "1s", fall = 1, rise = 1 }"#;

/// `[upstream.NAME]` over `backends`, with `extra` lines.
fn upstream(name: &str, backends: &[Checked], extra: &str) -> String {
    let servers: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ addr = \"{}\" }}", b.addr()))
        .collect();
    format!(
        "[upstream.{name}]\nservers = [{}]\nhealth_check = {CHECK}\n{extra}\n",
        servers.join(", ")
    )
}

/// The admin API and one listener routing `/NAME/` to upstream NAME.
fn config(names: &[&str], upstreams: &str) -> String {
    let routes: Vec<String> = names
        .iter()
        .map(|n| format!("{{ path_prefix = \"/{n}/\", upstream = \"{n}\" }}"))
        .collect();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{}]\n\n{upstreams}",
        routes.join(", ")
    )
}

async fn four() -> Vec<Checked> {
    vec![
        checked("a").await,
        checked("b").await,
        checked("c").await,
        checked("d").await,
    ]
}

/// Polls the upstream's view (every 5 ms, at most [`WITHIN`]) until `cond`
/// holds. Reading the view also recounts panic mode's verdict when it is stale.
async fn wait_upstream(
    admin: SocketAddr,
    name: &str,
    what: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + WITHIN;
    loop {
        let v = api_json(admin, &format!("/api/v1/upstreams/{name}")).await;
        if cond(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "upstream {name}: not {what} within {WITHIN:?}; last view: {v}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn unhealthy(v: &serde_json::Value) -> usize {
    v["servers"].as_array().map_or(0, |s| {
        s.iter().filter(|s| s["health"] == "unhealthy").count()
    })
}

/// Sends `n` requests to `/NAME/` one after the other; returns the traffic
/// each backend got meanwhile.
async fn traffic(proxy: SocketAddr, name: &str, n: usize, backends: &[Checked]) -> Vec<usize> {
    let before: Vec<usize> = backends.iter().map(|b| b.traffic()).collect();
    for _ in 0..n {
        let r = get(proxy, &format!("/{name}/")).await;
        assert_eq!(r.status, 200, "/{name}/: {}", r.body);
    }
    backends
        .iter()
        .zip(before)
        .map(|(b, was)| b.traffic() - was)
        .collect()
}

/// The value of the sample `line` starts with, in the classic text format.
fn sample(metrics: &str, series: &str) -> Option<String> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')
            .map(str::to_string)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_of_four_failing_spreads_traffic_in_panic_and_not_without() {
    let (p, n) = (four().await, four().await);
    // In each upstream, the first backend passes its checks and the rest fail.
    for b in p[1..].iter().chain(&n[1..]) {
        b.set_status(500);
    }
    let text = config(
        &["p", "n"],
        &(upstream("p", &p, "panic_threshold = 50") + &upstream("n", &n, "")),
    );
    let child = Switchyard::run_config_with_admin(&text, 1);
    let (proxy, admin) = (child.addr(), child.admin());

    let view = wait_upstream(admin, "p", "in panic", |v| v["in_panic"] == true).await;
    assert_eq!(view["panic_threshold"], 50);
    assert_eq!(unhealthy(&view), 3, "{view}");
    wait_upstream(admin, "n", "3 unhealthy", |v| unhealthy(v) == 3).await;

    // Round robin over all four, health ignored: exactly a quarter each.
    assert_eq!(traffic(proxy, "p", 40, &p).await, [10, 10, 10, 10]);
    // Without a threshold: the healthy one takes everything.
    assert_eq!(traffic(proxy, "n", 40, &n).await, [40, 0, 0, 0]);

    let metrics = get(admin, "/metrics").await.body;
    let panic_total = |u: &str| {
        sample(
            &metrics,
            &format!("switchyard_upstream_panic_total{{upstream=\"{u}\"}}"),
        )
    };
    let in_panic = |u: &str| {
        sample(
            &metrics,
            &format!("switchyard_upstream_in_panic{{upstream=\"{u}\"}}"),
        )
    };
    assert_eq!(panic_total("p").as_deref(), Some("1"), "{metrics}");
    assert_eq!(in_panic("p").as_deref(), Some("1"));
    assert_eq!(panic_total("n").as_deref(), Some("0"));
    assert_eq!(in_panic("n").as_deref(), Some("0"));

    // One recovers: 2 of 4 healthy is not below 50%; out of panic, and the
    // failing ones get nothing again.
    p[1].set_status(200);
    let view = wait_upstream(admin, "p", "out of panic", |v| v["in_panic"] == false).await;
    assert_eq!(view["panic_entries"], 1);
    assert_eq!(traffic(proxy, "p", 20, &p).await, [10, 10, 0, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_server_gets_nothing_in_panic() {
    let d = four().await;
    // Servers 1 and 2 fail their checks; 3 passes them but an operator has it
    // down. Of the three `up`, one is healthy: below 50%.
    d[1].set_status(500);
    d[2].set_status(500);
    let servers: Vec<String> = d
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let down = if i == 3 { ", down = true" } else { "" };
            format!("{{ addr = \"{}\"{down} }}", b.addr())
        })
        .collect();
    let up = format!(
        "[upstream.d]\nservers = [{}]\nhealth_check = {CHECK}\npanic_threshold = 50\n",
        servers.join(", ")
    );
    let child = Switchyard::run_config_with_admin(&config(&["d"], &up), 1);
    let (proxy, admin) = (child.addr(), child.admin());

    wait_upstream(admin, "d", "in panic", |v| v["in_panic"] == true).await;
    assert_eq!(traffic(proxy, "d", 30, &d).await, [10, 10, 10, 0]);
}
