//! The status page (`GET /healthcheck`: text, verbose, Prometheus and JSON forms)
//! and `GET /metrics` against the real binary: exact layout, UP/DOWN after an
//! operator's `down`, metrics parsed as Prometheus text and checked against the
//! requests the test sent, and the admin access rules in front of both.

use crate::support;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use hyper::{Method, StatusCode};
use serde_json::Value;
use support::{Switchyard, call, get, named};

/// The demo's servers as `(addr, backup)`, in id order.
async fn demo_servers(admin: SocketAddr) -> Vec<(String, bool)> {
    let r = get(admin, "/api/v1/upstreams/demo/servers").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    let list = v.as_array().or_else(|| v["servers"].as_array()).unwrap();
    list.iter()
        .map(|s| {
            (
                s["addr"].as_str().unwrap().to_string(),
                s["backup"].as_bool().unwrap(),
            )
        })
        .collect()
}

async fn set_down(admin: SocketAddr, id: u32) {
    let r = call(
        admin,
        Method::PATCH,
        &format!("/api/v1/upstreams/demo/servers/{id}"),
        &[("content-type", "application/json")],
        r#"{"state":"down"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

/// Takes the demo's health check off, so that what the page shows depends on
/// nothing but what the test does (and the library's "NO checkers" form shows).
async fn no_checks(admin: SocketAddr) {
    let r = call(
        admin,
        Method::DELETE,
        "/api/v1/upstreams/demo/health_check",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
}

#[tokio::test]
async fn healthcheck_text_has_the_library_layout_and_shows_down() {
    let sy = Switchyard::demo();
    let admin = sy.admin();
    // The demo's upstream has a checker: the header says nothing more.
    let r = get(admin, "/healthcheck").await;
    assert!(
        r.body.starts_with("Upstream demo\n    Primary Peers\n"),
        "{}",
        r.body
    );
    no_checks(admin).await;
    let servers = demo_servers(admin).await;
    assert_eq!(servers.len(), 3);
    assert_eq!(
        servers.iter().map(|s| s.1).collect::<Vec<_>>(),
        [false, false, true]
    );
    let (a, b, c) = (&servers[0].0, &servers[1].0, &servers[2].0);

    let r = get(admin, "/healthcheck").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers["content-type"].to_str().unwrap(),
        "text/plain; charset=utf-8"
    );
    let expected = format!(
        "Upstream demo (NO checkers)\n    Primary Peers\n        {a} UP\n        {b} UP\n    Backup Peers\n        {c} UP\n"
    );
    assert_eq!(r.body, expected);

    set_down(admin, 0).await;
    let r = get(admin, "/healthcheck").await;
    let expected = format!(
        "Upstream demo (NO checkers)\n    Primary Peers\n        {a} DOWN\n        {b} UP\n    Backup Peers\n        {c} UP\n"
    );
    assert_eq!(r.body, expected);

    // Verbose: the same lines with columns after them.
    let r = get(admin, "/healthcheck?verbose=1").await;
    assert_eq!(r.status, StatusCode::OK);
    let lines: Vec<&str> = r.body.lines().collect();
    assert_eq!(lines.len(), 6, "{}", r.body);
    assert!(
        lines[2].starts_with(&format!(
            "        {a} DOWN id=0 admin=down health=healthy passive=ok "
        )),
        "{}",
        r.body
    );
    assert!(lines[3].contains(" admin=up "), "{}", r.body);
    // The demo's checker may have probed once before `no_checks` removed it, so
    // the column holds "never" or that probe's time.
    assert!(lines[2].contains(" last_check="), "{}", r.body);
}

#[tokio::test]
async fn healthcheck_prometheus_and_json_forms() {
    let sy = Switchyard::demo();
    let admin = sy.admin();
    no_checks(admin).await;
    let servers = demo_servers(admin).await;
    set_down(admin, 1).await;

    let r = get(admin, "/healthcheck?format=prometheus").await;
    assert_eq!(r.status, StatusCode::OK);
    let lines: Vec<&str> = r.body.lines().collect();
    assert_eq!(
        lines[0],
        "# HELP nginx_upstream_status_info The running status of nginx upstream"
    );
    assert_eq!(lines[1], "# TYPE nginx_upstream_status_info gauge");
    let peer_re = regex::Regex::new(
        r#"^nginx_upstream_status_info\{name="([^"]+)",endpoint="([^"]+)",status="(UP|DOWN)",role="(PRIMARY|BACKUP)"\} ([01])$"#,
    )
    .unwrap();
    let summary_re = regex::Regex::new(
        r#"^nginx_upstream_status_info\{name="([^"]+)",status="(UP|DOWN|UNKNOWN)"\} ([01])$"#,
    )
    .unwrap();
    // endpoint -> (status with value 1, role)
    let mut ones: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut summary = Vec::new();
    for line in &lines[2..] {
        if let Some(c) = peer_re.captures(line) {
            assert_eq!(&c[1], "demo");
            if &c[5] == "1" {
                ones.entry(c[2].to_string())
                    .or_default()
                    .push((c[3].to_string(), c[4].to_string()));
            }
        } else if let Some(c) = summary_re.captures(line) {
            summary.push((c[2].to_string(), c[3].to_string()));
        } else {
            panic!("line not in the library's form: {line:?}");
        }
    }
    assert_eq!(ones.len(), 3, "{}", r.body);
    for (i, (addr, backup)) in servers.iter().enumerate() {
        let want_status = if i == 1 { "DOWN" } else { "UP" };
        let want_role = if *backup { "BACKUP" } else { "PRIMARY" };
        assert_eq!(
            ones[addr],
            [(want_status.to_string(), want_role.to_string())],
            "exactly one line valued 1 for {addr}"
        );
    }
    // No checker on the demo upstream: the library reports it UNKNOWN.
    assert_eq!(
        summary,
        [("UP", "0"), ("DOWN", "0"), ("UNKNOWN", "1")].map(|(a, b)| (a.to_string(), b.to_string()))
    );

    let r = get(admin, "/healthcheck?format=json").await;
    assert_eq!(r.status, StatusCode::OK);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    let u = &v["upstreams"][0];
    assert_eq!(u["name"], "demo");
    assert_eq!(u["checkers"], false);
    assert_eq!(u["primary"][1]["addr"], servers[1].0.as_str());
    assert_eq!(u["primary"][1]["status"], "DOWN");
    assert_eq!(u["primary"][1]["state"], "down");
    assert_eq!(u["primary"][0]["status"], "UP");
    assert_eq!(u["primary"][0]["health"], "healthy");
    assert_eq!(u["primary"][0]["passive"], "ok");
    assert_eq!(u["primary"][0]["health_checks"]["checks"], 0);
    assert_eq!(u["backup"][0]["addr"], servers[2].0.as_str());

    let r = get(admin, "/healthcheck?format=xml").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

/// One sample of Prometheus text: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A small parser of the Prometheus / OpenMetrics text format: comments and
/// `# EOF` skipped, `name{k="v",...} value` or `name value` per line, label
/// values unescaped. Panics on anything else.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        let name = &line[..name_end];
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            let end = loop {
                // key
                let Some(&(start, c)) = chars.peek() else {
                    panic!("unterminated labels: {line:?}")
                };
                if c == '}' {
                    break start + 1;
                }
                let mut key = String::new();
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                assert_eq!(chars.next().map(|x| x.1), Some('"'), "{line:?}");
                let mut value = String::new();
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next().map(|x| x.1) {
                            Some('n') => value.push('\n'),
                            Some(o) => value.push(o),
                            None => panic!("bad escape: {line:?}"),
                        },
                        '"' => break,
                        o => value.push(o),
                    }
                }
                labels.insert(key, value);
                if let Some(&(_, ',')) = chars.peek() {
                    chars.next();
                }
            };
            rest = &r[end..];
        }
        let value_text = rest.trim().split(' ').next().unwrap();
        let value = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}")),
        };
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

fn sum(samples: &[Sample], name: &str, filter: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            filter
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[test]
fn the_test_parser_reads_labels_and_escapes() {
    let s = parse_prometheus(
        "# HELP x y\nx_total{a=\"1\",b=\"q\\\"\\\\,}\"} 3\nup 1.5\nh_bucket{le=\"+Inf\"} 2\n# EOF\n",
    );
    assert_eq!(s.len(), 3);
    assert_eq!(s[0].labels["b"], "q\"\\,}");
    assert_eq!(s[0].value, 3.0);
    assert_eq!(s[1].name, "up");
    assert_eq!(s[2].labels["le"], "+Inf");
}

#[tokio::test]
async fn metrics_parse_and_count_the_requests_sent() {
    let sy = Switchyard::demo();
    let admin = sy.admin();
    let servers = demo_servers(admin).await;
    const N: usize = 12;
    for _ in 0..N {
        let r = get(sy.addr(), "/").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    set_down(admin, 0).await;

    // As Prometheus asks (without it: the classic format, tests/suite/ops_health_metrics.rs).
    let r = call(
        admin,
        Method::GET,
        "/metrics",
        &[("accept", "application/openmetrics-text; version=1.0.0")],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers["content-type"].to_str().unwrap(),
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(r.body.ends_with("# EOF\n"), "{}", r.body);
    let m = parse_prometheus(&r.body);
    assert!(
        m.iter()
            .all(|s| s.name.starts_with("switchyard_") || s.name.starts_with("process_"))
    );

    let n = N as f64;
    assert_eq!(sum(&m, "switchyard_server_requests_total", &[]), n);
    assert_eq!(
        sum(
            &m,
            "switchyard_server_responses_total",
            &[("code_class", "2xx")]
        ),
        n
    );
    assert_eq!(sum(&m, "switchyard_server_responses_total", &[]), n);
    assert_eq!(sum(&m, "switchyard_server_active", &[]), 0.0);
    assert_eq!(sum(&m, "switchyard_server_fails_total", &[]), 0.0);
    // Every request went to a primary: the backup saw none.
    assert_eq!(
        sum(
            &m,
            "switchyard_server_requests_total",
            &[("server", servers[2].0.as_str())]
        ),
        0.0
    );
    // Histograms: one observation per request, +Inf bucket equal to the count.
    for h in [
        "switchyard_server_header_time_seconds",
        "switchyard_server_response_time_seconds",
    ] {
        assert_eq!(sum(&m, &format!("{h}_count"), &[]), n, "{h}");
        assert_eq!(sum(&m, &format!("{h}_bucket"), &[("le", "+Inf")]), n, "{h}");
        assert!(sum(&m, &format!("{h}_sum"), &[]) > 0.0, "{h}");
    }
    assert!(sum(&m, "switchyard_server_sent_bytes_total", &[]) > 0.0);
    assert!(sum(&m, "switchyard_server_received_bytes_total", &[]) > 0.0);

    // The state gauge: server 0 down, the others up, one state each.
    let down = servers[0].0.as_str();
    let up = servers[1].0.as_str();
    let state = "switchyard_server_state";
    assert_eq!(sum(&m, state, &[("server", down), ("state", "down")]), 1.0);
    assert_eq!(sum(&m, state, &[("server", down), ("state", "up")]), 0.0);
    assert_eq!(sum(&m, state, &[("server", down)]), 1.0);
    assert_eq!(sum(&m, state, &[("server", up), ("state", "up")]), 1.0);
    assert_eq!(sum(&m, state, &[("server", up)]), 1.0);
    assert_eq!(
        m.iter().filter(|s| s.name == state).count(),
        3 * 6,
        "six states per server"
    );
    assert_eq!(
        sum(
            &m,
            "switchyard_upstream_eligible_servers",
            &[("upstream", "demo")]
        ),
        2.0
    );
    assert_eq!(sum(&m, "switchyard_admin_changes_total", &[]), 1.0);
    assert!(sum(&m, "switchyard_uptime_seconds", &[]) > 0.0);
    for s in &m {
        if s.name.starts_with("switchyard_server_") {
            assert_eq!(s.labels["upstream"], "demo", "{s:?}");
            assert!(servers.iter().any(|(a, _)| *a == s.labels["server"]));
        }
    }
}

#[tokio::test]
async fn status_page_and_metrics_are_behind_the_access_rules() {
    let a = named("a").await;
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\nallow = [\"10.0.0.0/8\"]\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ path_prefix = \"/\", upstream = \"app\" }}]\n\
         [upstream.app]\nservers = [{{ addr = \"{}\" }}]\n",
        a.addr
    );
    let sy = Switchyard::run_config_with_admin(&text, 1);
    for path in [
        "/healthcheck",
        "/healthcheck?format=prometheus",
        "/healthcheck?format=json",
        "/metrics",
    ] {
        let r = get(sy.admin(), path).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.body);
    }
}

#[tokio::test]
async fn read_only_admin_still_serves_status_and_metrics() {
    let a = named("a").await;
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\nread_only = true\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ path_prefix = \"/\", upstream = \"app\" }}]\n\
         [upstream.app]\nservers = [{{ addr = \"{}\" }}]\n",
        a.addr
    );
    let sy = Switchyard::run_config_with_admin(&text, 1);
    let r = get(sy.admin(), "/healthcheck").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body,
        format!(
            "Upstream app (NO checkers)\n    Primary Peers\n        {} UP\n    Backup Peers\n",
            a.addr
        )
    );
    let r = get(sy.admin(), "/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        sum(
            &parse_prometheus(&r.body),
            "switchyard_upstream_eligible_servers",
            &[("upstream", "app")]
        ),
        1.0
    );
}
