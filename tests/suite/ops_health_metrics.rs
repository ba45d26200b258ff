//! Operating switchyard, against the real binary: its own health (`/livez`,
//! `/readyz` on the admin listener, 503 from SIGTERM on while the listeners
//! still answer for `shutdown_delay`), a listener's `health_uri` on both proxy
//! paths, and `/metrics` in both text formats, read by a strict parser of the
//! classic Prometheus format (what `promtool check metrics` insists on) and
//! checked against the traffic sent.

use crate::support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{Switchyard, call, closed_port, get, named, raw_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A listener routing `/api` to `app` and `/down` to a closed port, with
/// `health_uri = "/healthz"`; `extra` goes into `[runtime]`.
fn config(app: SocketAddr, runtime: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\
         [runtime]\n{runtime}\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nhealth_uri = \"/healthz\"\n\
         routes = [{{ path_prefix = \"/api\", upstream = \"app\" }}, {{ path_prefix = \"/down\", upstream = \"down\" }}]\n\
         [upstream.app]\nservers = [{{ addr = \"{app}\" }}]\n\
         [upstream.down]\nservers = [{{ addr = \"{}\" }}]\nretry = {{ tries = 1 }}\n",
        closed_port()
    )
}

async fn status_of(addr: SocketAddr, path: &str) -> Option<StatusCode> {
    support::try_get(addr, path).await.ok().map(|r| r.status)
}

#[tokio::test]
async fn livez_and_readyz_answer_200_while_serving() {
    let app = named("app").await;
    let sy = Switchyard::run_config_with_admin(&config(app.addr, ""), 1);
    let r = get(sy.admin(), "/livez").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok\n"));
    assert_eq!(r.headers["cache-control"], "no-store");
    let r = get(sy.admin(), "/readyz").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ready\n"));
    let r = call(sy.admin(), Method::HEAD, "/readyz", &[], "").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, ""));
    // Reads only: a POST is refused.
    let r = call(sy.admin(), Method::POST, "/readyz", &[], "").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn the_probes_are_behind_the_admin_access_rules() {
    let app = named("app").await;
    let text = config(app.addr, "").replace(
        "listen = \"127.0.0.1:0\"\n[runtime]",
        "listen = \"127.0.0.1:0\"\nallow = [\"10.0.0.0/8\"]\n[runtime]",
    );
    let sy = Switchyard::run_config_with_admin(&text, 1);
    for path in ["/livez", "/readyz"] {
        let r = get(sy.admin(), path).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.body);
    }
    // The data port's health_uri is the listener's: no admin rules there.
    assert_eq!(get(sy.addr(), "/healthz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn readyz_and_health_uri_turn_503_at_sigterm_while_the_listener_still_serves() {
    let app = named("app").await;
    let delay = Duration::from_secs(3);
    let text = config(app.addr, "shutdown_delay = \"3s\"\nshutdown_grace = \"5s\"");
    let mut sy = Switchyard::run_config_with_admin(&text, 1);
    let (admin, data) = (sy.admin(), sy.addr());
    assert_eq!(status_of(admin, "/readyz").await, Some(StatusCode::OK));
    assert_eq!(status_of(data, "/healthz").await, Some(StatusCode::OK));
    // A keep-alive connection opened before the signal.
    let (head, mut before) = raw_request(data, "GET /api/a HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = [0u8; 3];
    before.read_exact(&mut body).await.unwrap();

    let signalled = Instant::now();
    sy.terminate();
    // 503 as soon as the signal is handled.
    loop {
        let r = get(admin, "/readyz").await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(r.body, "not ready: shutting down\n");
            break;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(2),
            "/readyz still {} after SIGTERM",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The listener still accepts and serves during shutdown_delay: new
    // connections, requests, and its health_uri says 503 on both paths.
    let r = get(data, "/api/during").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "app"));
    let r = get(data, "/healthz").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    );
    let r = call(data, Method::POST, "/healthz", &[], "x").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    // The connection from before the signal still works too.
    before
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !String::from_utf8_lossy(&got).ends_with("shutting down\n") {
        let n = before.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 503 Service Unavailable\r\n"));
    assert!(
        signalled.elapsed() < delay,
        "the checks took longer than shutdown_delay; the test proves nothing"
    );
    assert_eq!(get(admin, "/livez").await.status, StatusCode::OK);
    // Then the listeners close and the process exits 0.
    let st = sy.wait_exit(Duration::from_secs(15)).await;
    assert!(st.success(), "{st:?}\n{}", sy.stderr());
    assert!(
        signalled.elapsed() >= delay,
        "exited {:?} after SIGTERM, before shutdown_delay",
        signalled.elapsed()
    );
    assert!(status_of(data, "/healthz").await.is_none());
    assert!(
        sy.stderr().contains("not ready (503) from now on"),
        "{}",
        sy.stderr()
    );
}

#[tokio::test]
async fn without_shutdown_delay_the_listeners_close_at_once() {
    let app = named("app").await;
    let mut sy = Switchyard::run_config_with_admin(&config(app.addr, ""), 1);
    let signalled = Instant::now();
    sy.terminate();
    let st = sy.wait_exit(Duration::from_secs(10)).await;
    assert!(st.success());
    assert!(signalled.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_cluster_readyz_waits_for_the_store_once() {
    if !support::etcd::available() {
        return;
    }
    let app = named("app").await;
    let mut etcd = support::etcd::Etcd::start();
    etcd.stop();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let text = format!(
        "{}\n[cluster]\nstore = \"etcd\"\nendpoints = [\"{}\"]\nprefix = \"/switchyard/readyz-{}-{nanos}\"\ntimeout = \"1s\"\n",
        config(app.addr, ""),
        etcd.endpoint(),
        std::process::id()
    );
    // Started while etcd is down: serving from the configuration, not ready.
    let sy = Switchyard::run_config_with_admin(&text, 1);
    let (admin, data) = (sy.admin(), sy.addr());
    let r = get(admin, "/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(
        r.body
            .starts_with("not ready: not in step with the cluster store yet: "),
        "{}",
        r.body
    );
    assert_eq!(get(admin, "/livez").await.status, StatusCode::OK);
    assert_eq!(get(data, "/api/x").await.status, StatusCode::OK);
    // etcd comes: ready once the table is in step.
    etcd.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = get(admin, "/readyz").await;
        if r.status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "still {}: {}", r.status, r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // etcd goes again: the instance knows, and stays ready (latched).
    etcd.stop();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: serde_json::Value =
            serde_json::from_str(&get(admin, "/api/v1/cluster").await.body).unwrap();
        if v["connected"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "still connected: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(admin, "/readyz").await.status, StatusCode::OK);
    assert_eq!(get(data, "/api/x").await.status, StatusCode::OK);
}

/// One request on a new HTTP/2 (prior knowledge) connection.
async fn h2_get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn health_uri_is_answered_by_the_listener_on_both_paths_before_routing() {
    let app = named("app").await;
    let sy = Switchyard::run_config_with_admin(&config(app.addr, ""), 1);
    let data = sy.addr();
    // The plain HTTP/1.1 path: a GET, then on the same connection a proxied
    // request and the probe again (keep-alive both ways).
    let (head, mut conn) = raw_request(data, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("content-length: 3\r\n"), "{head}");
    assert!(head.contains("content-type: text/plain; charset=utf-8\r\n"));
    let mut body = [0u8; 3];
    conn.read_exact(&mut body).await.unwrap();
    assert_eq!(&body, b"ok\n");
    conn.write_all(
        b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\nHEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    // Two heads, one body ("app"); the HEAD answer has none.
    while String::from_utf8_lossy(&got).matches("\r\n\r\n").count() < 2 {
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    let (proxied, probe) = text
        .split_once("\r\n\r\napp")
        .unwrap_or_else(|| panic!("{text}"));
    assert!(proxied.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    // The HEAD answer: its length, no body.
    assert!(probe.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(probe.contains("content-length: 3\r\n"), "{text}");
    assert!(probe.ends_with("\r\n\r\n"), "{text}");
    // A query does not matter; the path must be exact.
    assert_eq!(get(data, "/healthz?full=1").await.status, StatusCode::OK);
    assert_eq!(get(data, "/healthz/").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(data, "/Healthz").await.status, StatusCode::NOT_FOUND);
    // hyper's path: a POST with a body, and HTTP/2.
    let r = call(
        data,
        Method::POST,
        "/healthz",
        &[("content-type", "text/plain")],
        "hello",
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok\n"));
    assert_eq!(r.headers["cache-control"], "no-store");
    assert_eq!(
        h2_get(data, "/healthz").await,
        (StatusCode::OK, "ok\n".into())
    );
    assert_eq!(
        h2_get(data, "/api/h2").await,
        (StatusCode::OK, "app".into())
    );
    // The backend saw only the proxied requests.
    let paths: Vec<String> = app.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/api/x", "/api/h2"]);
}

// ---------------------------------------------------------------------------
// A strict reader of the exposition formats
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Exposition {
    /// Family name → type, as `# TYPE` says.
    types: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    /// Sum of the samples named `name` whose labels include `filter`.
    fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        let matching = self.find(name, filter);
        assert!(!matching.is_empty(), "no sample {name} {filter:?}");
        matching.iter().map(|s| s.value).sum()
    }

    fn find(&self, name: &str, filter: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                filter
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }
}

fn valid_name(n: &str, colon: bool) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

/// `{k="v",...}` at the start of `s`: the labels and the rest of `s`.
fn parse_labels(s: &str, line: &str) -> (BTreeMap<String, String>, String) {
    let mut labels = BTreeMap::new();
    let Some(body) = s.strip_prefix('{') else {
        return (labels, s.to_string());
    };
    let mut chars = body.chars().peekable();
    loop {
        match chars.peek() {
            Some('}') => {
                chars.next();
                break;
            }
            None => panic!("unterminated labels: {line:?}"),
            _ => {}
        }
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        assert!(
            valid_name(&key, false),
            "bad label name {key:?} in {line:?}"
        );
        assert_eq!(chars.next(), Some('"'), "{line:?}");
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => panic!("unterminated value in {line:?}"),
            }
        }
        assert!(
            labels.insert(key.clone(), value).is_none(),
            "label {key} twice in {line:?}"
        );
        match chars.next() {
            Some(',') => {}
            Some('}') => break,
            other => panic!("{other:?} after a label in {line:?}"),
        }
    }
    (labels, chars.collect())
}

fn parse_value(v: &str, line: &str) -> f64 {
    match v {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse()
            .unwrap_or_else(|e| panic!("bad value {v:?} in {line:?}: {e}")),
    }
}

/// Reads an exposition and checks the rules a scraper and `promtool check
/// metrics` hold it to: every sample's family has `# HELP` and `# TYPE` before
/// it, a family's samples are together, no series twice, counters (and only
/// they) end in `_total`, values are floats, histogram buckets are cumulative
/// and end with `+Inf` equal to `_count`. `openmetrics`: the OpenMetrics text
/// rules instead of the classic ones (`# TYPE` names the family, `# UNIT` and
/// `info` allowed, `# EOF` last); classic: no `# EOF`, no `# UNIT`, no
/// `_created`.
fn parse_strict(text: &str, openmetrics: bool) -> Exposition {
    let mut out = Exposition::default();
    let mut helped = HashSet::new();
    let mut done_families: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut series = HashSet::new();
    let mut lines: Vec<&str> = text.lines().collect();
    assert!(text.ends_with('\n'), "no final newline");
    if openmetrics {
        assert_eq!(lines.pop(), Some("# EOF"), "OpenMetrics ends with # EOF");
    }
    for line in lines {
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.strip_prefix(' ').unwrap_or_else(|| panic!("{line:?}"));
            let (kind, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            match kind {
                "HELP" => {
                    let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                    assert!(valid_name(name, true), "{line:?}");
                    assert!(!help.trim().is_empty(), "empty HELP: {line:?}");
                    // Only \\ and \n escapes in HELP.
                    let mut chars = help.chars();
                    while let Some(c) = chars.next() {
                        if c == '\\' {
                            assert!(matches!(chars.next(), Some('\\' | 'n')), "{line:?}");
                        }
                    }
                    assert!(helped.insert(name.to_string()), "HELP twice: {line:?}");
                }
                "TYPE" => {
                    let (name, ty) = rest.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
                    assert!(helped.contains(name), "TYPE before HELP: {line:?}");
                    let known: &[&str] = if openmetrics {
                        &[
                            "counter",
                            "gauge",
                            "histogram",
                            "info",
                            "unknown",
                            "summary",
                            "stateset",
                            "gaugehistogram",
                        ]
                    } else {
                        &["counter", "gauge", "histogram", "summary", "untyped"]
                    };
                    assert!(known.contains(&ty), "unknown type: {line:?}");
                    if !openmetrics {
                        assert_eq!(
                            ty == "counter",
                            name.ends_with("_total"),
                            "classic counters, and only they, end in _total: {line:?}"
                        );
                    } else {
                        assert!(!name.ends_with("_total"), "{line:?}");
                    }
                    assert!(
                        out.types.insert(name.to_string(), ty.to_string()).is_none(),
                        "TYPE twice: {line:?}"
                    );
                    if let Some(prev) = current.replace(name.to_string()) {
                        done_families.insert(prev);
                    }
                    assert!(!done_families.contains(name), "{name} split: {line:?}");
                }
                "UNIT" => assert!(openmetrics, "no # UNIT in the classic format: {line:?}"),
                "EOF" => panic!("# EOF in the classic format"),
                _ => panic!("unknown comment {line:?}"),
            }
            continue;
        }
        assert!(!line.is_empty(), "empty line");
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("{line:?}"));
        let name = &line[..name_end];
        assert!(valid_name(name, true), "{line:?}");
        let (labels, rest) = parse_labels(&line[name_end..], line);
        let mut fields = rest.trim_start_matches(' ').split(' ');
        let value = parse_value(fields.next().unwrap_or(""), line);
        if let Some(ts) = fields.next() {
            ts.parse::<f64>()
                .unwrap_or_else(|_| panic!("bad timestamp in {line:?}"));
        }
        assert!(fields.next().is_none(), "{line:?}");
        // Which family the sample belongs to.
        let family = current
            .clone()
            .unwrap_or_else(|| panic!("sample before any TYPE: {line:?}"));
        let ty = out.types[&family].as_str();
        let suffix = name
            .strip_prefix(family.as_str())
            .unwrap_or_else(|| panic!("{name} is not of the family {family} (no HELP/TYPE)"));
        let allowed: &[&str] = match (ty, openmetrics) {
            ("histogram", _) => &["_bucket", "_sum", "_count"],
            ("counter", true) => &["_total"],
            ("info", true) => &["_info"],
            _ => &[""],
        };
        assert!(
            allowed.contains(&suffix),
            "{name} in family {family} ({ty})"
        );
        assert!(!name.ends_with("_created"), "{line:?}");
        if ty == "counter" {
            assert!(value >= 0.0, "negative counter: {line:?}");
        }
        let key = format!("{name}{labels:?}");
        assert!(series.insert(key), "series twice: {line:?}");
        out.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    // Histograms: per series, ascending `le`, cumulative, +Inf == _count.
    for (family, ty) in &out.types {
        if ty != "histogram" {
            continue;
        }
        let mut by_series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for s in out
            .samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
        {
            let mut rest = s.labels.clone();
            let le = rest
                .remove("le")
                .unwrap_or_else(|| panic!("bucket without le: {s:?}"));
            by_series
                .entry(format!("{rest:?}"))
                .or_default()
                .push((parse_value(&le, &le), s.value));
        }
        for (labels, buckets) in &by_series {
            let les: Vec<f64> = buckets.iter().map(|b| b.0).collect();
            assert!(
                les.windows(2).all(|w| w[0] < w[1]),
                "{family}{labels}: le not ascending"
            );
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{family}{labels}: buckets not cumulative: {buckets:?}"
            );
            let (le, last) = *buckets.last().unwrap();
            assert_eq!(le, f64::INFINITY, "{family}{labels}: no +Inf bucket");
            let count = out
                .samples
                .iter()
                .find(|s| {
                    s.name == format!("{family}_count") && format!("{:?}", s.labels) == *labels
                })
                .unwrap_or_else(|| panic!("{family}{labels}: no _count"));
            assert_eq!(last, count.value, "{family}{labels}: +Inf != _count");
            assert!(
                out.samples
                    .iter()
                    .any(|s| s.name == format!("{family}_sum")
                        && format!("{:?}", s.labels) == *labels),
                "{family}{labels}: no _sum"
            );
        }
    }
    out
}

#[test]
fn the_strict_reader_refuses_what_promtool_refuses() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n\
              # HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3.5\nh_count 2\n";
    let e = parse_strict(ok, false);
    assert_eq!(e.sum("a_total", &[("x", "1")]), 3.0);
    for bad in [
        // A counter typed without _total.
        "# HELP a A.\n# TYPE a counter\na_total 1\n",
        // No HELP/TYPE.
        "a 1\n",
        "# HELP a A.\na 1\n",
        // # EOF in the classic format.
        "# HELP a A.\n# TYPE a gauge\na 1\n# EOF\n",
        // Not cumulative, and +Inf != count.
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
        // A bad value, a duplicate series.
        "# HELP a A.\n# TYPE a gauge\na one\n",
        "# HELP a A.\n# TYPE a gauge\na{x=\"1\"} 1\na{x=\"1\"} 2\n",
        // _created.
        "# HELP a_total A.\n# TYPE a_total counter\na_created 1\n",
    ] {
        let caught = std::panic::catch_unwind(|| parse_strict(bad, false));
        assert!(caught.is_err(), "accepted:\n{bad}");
    }
}

// ---------------------------------------------------------------------------
// /metrics against the traffic sent
// ---------------------------------------------------------------------------

/// A self-signed certificate for `localhost`, as PEM files in `dir`.
fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
    (c, k, cert.cert.der().to_vec())
}

/// A TLS handshake with the listener, trusting `der`; then one request.
async fn https_get(addr: SocketAddr, der: &[u8], path: &str) -> StatusCode {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(der.to_vec()))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    status
}

/// Where `promtool` is installed (not on CI: the strict reader above is the
/// check there), `promtool check metrics` must pass the text without a word.
fn promtool_check(text: &str) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        return;
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}\n{said}",
        out.status
    );
}

async fn scrape(admin: SocketAddr, accept: Option<&str>) -> support::Reply {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
    let r = call(admin, Method::GET, "/metrics", &headers, "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.headers["vary"], "Accept");
    r
}

#[tokio::test]
async fn metrics_in_both_formats_count_the_traffic_sent() {
    let app = named("app").await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = self_signed(dir.path());
    let text = format!(
        "{}\n[[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ upstream = \"app\" }}]\n\
         tls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}\n",
        config(app.addr, ""),
        cert.display(),
        key.display()
    );
    let sy = Switchyard::run_config_with_admin(&text, 2);
    let (admin, data, tls) = (sy.admin(), sy.addrs[0], sy.addrs[1]);

    // The traffic, each request on a connection of its own.
    const GETS: usize = 7; // plain HTTP/1.1 path, 200
    const POSTS: usize = 3; // hyper's path, 200
    const NOT_FOUND: usize = 2; // no route: 404
    const PROBES: usize = 4; // health_uri: answered, not counted
    let mut connections = 0;
    for i in 0..GETS {
        let r = get(data, &format!("/api/get/{i}")).await;
        assert_eq!(r.status, StatusCode::OK);
        connections += 1;
    }
    for _ in 0..POSTS {
        let r = call(data, Method::POST, "/api/post", &[], "body").await;
        assert_eq!(r.status, StatusCode::OK);
        connections += 1;
    }
    for _ in 0..NOT_FOUND {
        assert_eq!(get(data, "/nothing").await.status, StatusCode::NOT_FOUND);
        connections += 1;
    }
    let r = get(data, "/down").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    connections += 1;
    for _ in 0..PROBES {
        assert_eq!(get(data, "/healthz").await.status, StatusCode::OK);
        connections += 1;
    }
    // TLS: two handshakes done, one failed (plain HTTP to the TLS port).
    assert_eq!(https_get(tls, &der, "/api/tls").await, StatusCode::OK);
    assert_eq!(https_get(tls, &der, "/api/tls").await, StatusCode::OK);
    {
        let mut plain = TcpStream::connect(tls).await.unwrap();
        plain
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut sink = Vec::new();
        let _ = plain.read_to_end(&mut sink).await;
    }
    // A connection held open while scraping.
    let (head, held) = raw_request(data, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"));
    connections += 1;

    let started = Instant::now();
    let l = data.to_string();
    let t = tls.to_string();
    let answered = (GETS + POSTS + NOT_FOUND + 1) as f64;

    // The classic format: without Accept, and with text/plain.
    for accept in [None, Some("text/plain"), Some("*/*")] {
        let r = scrape(admin, accept).await;
        assert_eq!(
            r.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8",
            "{accept:?}"
        );
        let m = parse_strict(&r.body, false);
        promtool_check(&r.body);
        let lis = [("listener", l.as_str())];
        let code = |c| [("listener", l.as_str()), ("code", c)];
        let family = "switchyard_listener_requests_total";
        assert_eq!(m.sum(family, &code("2xx")), (GETS + POSTS) as f64);
        assert_eq!(m.sum(family, &code("4xx")), NOT_FOUND as f64);
        assert_eq!(m.sum(family, &code("5xx")), 1.0);
        assert_eq!(
            m.sum(family, &code("1xx")) + m.sum(family, &code("3xx")),
            0.0
        );
        assert_eq!(m.sum(family, &lis), answered);
        let d = "switchyard_listener_request_duration_seconds";
        assert_eq!(m.types[d], "histogram");
        assert_eq!(m.sum(&format!("{d}_count"), &lis), answered);
        assert_eq!(
            m.sum(
                &format!("{d}_bucket"),
                &[("listener", l.as_str()), ("le", "+Inf")]
            ),
            answered
        );
        let sum = m.sum(&format!("{d}_sum"), &lis);
        assert!(sum > 0.0 && sum < 30.0, "{sum}");
        assert_eq!(
            m.sum("switchyard_listener_connections_accepted_total", &lis),
            connections as f64
        );
        assert!(
            m.sum("switchyard_listener_connections", &lis) >= 1.0,
            "the held one"
        );
        // TLS: the TLS listener only.
        let hs = "switchyard_tls_handshakes_total";
        assert_eq!(
            m.sum(hs, &[("listener", t.as_str()), ("result", "ok")]),
            2.0
        );
        assert_eq!(
            m.sum(hs, &[("listener", t.as_str()), ("result", "failed")]),
            1.0
        );
        assert!(m.find(hs, &lis).is_empty());
        assert_eq!(
            m.sum(
                "switchyard_listener_requests_total",
                &[("listener", t.as_str())]
            ),
            2.0
        );
        // Build and process.
        let build = m.find("switchyard_build_info", &[]);
        assert_eq!(build.len(), 1);
        assert_eq!(build[0].value, 1.0);
        assert_eq!(build[0].labels["version"], env!("CARGO_PKG_VERSION"));
        assert!(!build[0].labels["commit"].is_empty());
        if cfg!(target_os = "linux") {
            assert_eq!(m.types["process_cpu_seconds_total"], "counter");
            assert!(m.sum("process_cpu_seconds_total", &[]) >= 0.0);
            assert!(m.sum("process_resident_memory_bytes", &[]) > 1e6);
            assert!(m.sum("process_open_fds", &[]) >= 5.0);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            let start = m.sum("process_start_time_seconds", &[]);
            assert!(
                start <= now + 1.0 && start > now - 120.0,
                "{start} vs {now}"
            );
        }
        // The families that were there stay (per server, per upstream).
        assert_eq!(
            m.sum("switchyard_server_requests_total", &[("upstream", "app")]),
            (GETS + POSTS + 2) as f64
        );
        assert_eq!(
            m.types["switchyard_server_header_time_seconds"],
            "histogram"
        );
    }

    // OpenMetrics, as Prometheus asks for it: the same numbers.
    let r = scrape(
        admin,
        Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
    )
    .await;
    assert_eq!(
        r.headers["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let m = parse_strict(&r.body, true);
    assert_eq!(m.types["switchyard_listener_requests"], "counter");
    assert_eq!(m.types["switchyard_build"], "info");
    assert_eq!(
        m.sum(
            "switchyard_listener_requests_total",
            &[("listener", l.as_str()), ("code", "2xx")]
        ),
        (GETS + POSTS) as f64
    );
    assert_eq!(
        m.sum(
            "switchyard_listener_request_duration_seconds_count",
            &[("listener", l.as_str())]
        ),
        answered
    );
    assert_eq!(m.find("switchyard_build_info", &[]).len(), 1);

    // The held connection closes: the gauge comes back to 0.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = parse_strict(&scrape(admin, None).await.body, false);
        if m.sum(
            "switchyard_listener_connections",
            &[("listener", l.as_str())],
        ) == 0.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a connection still counted as open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("scrapes took {:?}", started.elapsed());
}
