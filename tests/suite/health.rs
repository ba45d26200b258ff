//! Active health checks, end to end: the real binary with its native API, and
//! backends the tests control (`/health*` requests are checks, the rest traffic).

use crate::support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use support::{
    CheckCtl, Gauge, Load, Switchyard, api_json, api_send, checked, checked_sharing, never_answers,
    raw_recorder, server_view, try_get, wait_until, wait_view,
};
use tokio::io::AsyncReadExt;

const WITHIN: Duration = Duration::from_secs(10);

/// A config with the admin API, one listener routing everything to upstream
/// `app`, and `upstream` (the `[upstream.app]` section and anything else).
fn config(upstream: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
listen = "127.0.0.1:0"
routes = [{{ path_prefix = "/", upstream = "app" }}]

{upstream}
"#
    )
}

/// `[upstream.app]` over `servers` (each an inline table's inside) with `check`
/// (an inline table's inside, or "" for none).
fn app(servers: &[String], check: &str) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("{{ {s} }}")).collect();
    let mut s = format!("[upstream.app]\nservers = [{}]\n", servers.join(", "));
    if !check.is_empty() {
        s.push_str(&format!("health_check = {{ {check} }}\n"));
    }
    s
}

fn addr(a: SocketAddr) -> String {
    format!("addr = \"{a}\"")
}

fn start(text: &str) -> (Switchyard, SocketAddr, SocketAddr) {
    let child = Switchyard::run_config_with_admin(text, 1);
    let (proxy, admin) = (child.addr(), child.admin());
    (child, proxy, admin)
}

fn health(v: &serde_json::Value) -> &str {
    v["health"].as_str().unwrap()
}

fn checks(v: &serde_json::Value, field: &str) -> u64 {
    v["health_checks"][field].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_500_is_unhealthy_after_exactly_fall_checks_and_healthy_after_exactly_rise_passes()
 {
    let (a, b) = (checked("a").await, checked("b").await);
    let (fall, rise) = (3usize, 2usize);
    let check = format!(
        r#"type = "http", path = "/health", interval = "150ms", timeout = "1s", fall = {fall}, rise = {rise}"#
    );
    let (_child, proxy, admin) = start(&config(&app(&[addr(a.addr()), addr(b.addr())], &check)));
    let load = Load::start(proxy, 3);

    wait_view(admin, "app", 0, WITHIN, "checked twice", |v| {
        health(v) == "healthy" && checks(v, "checks") >= 2
    })
    .await;
    wait_until(WITHIN, "traffic on a", || a.traffic() > 20).await;

    a.set_status(500);
    let down = wait_view(admin, "app", 0, WITHIN, "unhealthy", |v| {
        // Until the fall-th failed check, the server stays healthy.
        if health(v) != "unhealthy" {
            assert!(
                (checks(v, "consecutive_fails") as usize) < fall,
                "healthy with {fall} failed checks: {v}"
            );
        }
        health(v) == "unhealthy"
    })
    .await;
    assert_eq!(
        a.answered(500),
        fall,
        "failed checks when it turned unhealthy"
    );
    assert_eq!(checks(&down, "consecutive_fails") as usize, fall);
    assert_eq!(checks(&down, "unhealthy"), 1);
    assert!(!down["eligible"].as_bool().unwrap());

    // Traffic stops: let requests already sent to a finish, then none more.
    let ok = load.ok();
    wait_until(WITHIN, "30 more answers", || load.ok() >= ok + 30).await;
    let (a_before, ok) = (a.traffic(), load.ok());
    wait_until(WITHIN, "200 more answers", || load.ok() >= ok + 200).await;
    assert_eq!(a.traffic(), a_before, "an unhealthy server got traffic");

    let passes_before = a.answered(200);
    a.set_status(200);
    let up = wait_view(admin, "app", 0, WITHIN, "healthy again", |v| {
        if health(v) != "healthy" {
            assert!(
                (checks(v, "consecutive_passes") as usize) < rise,
                "unhealthy with {rise} passed checks: {v}"
            );
        }
        health(v) == "healthy"
    })
    .await;
    assert_eq!(
        a.answered(200) - passes_before,
        rise,
        "passes when it recovered"
    );
    assert_eq!(checks(&up, "consecutive_passes") as usize, rise);

    // Traffic resumes, shared again about evenly (round robin).
    let (a0, b0) = (a.traffic(), b.traffic());
    wait_until(WITHIN, "300 requests after recovery", || {
        a.traffic() + b.traffic() >= a0 + b0 + 300
    })
    .await;
    let (da, db) = (a.traffic() - a0, b.traffic() - b0);
    let share = da as f64 / (da + db) as f64;
    assert!(
        (0.35..=0.65).contains(&share),
        "a's share after recovery: {da} of {}",
        da + db
    );

    let (ok, errors) = load.stop().await;
    assert!(ok > 500, "only {ok} answers");
    assert_eq!(
        errors.len(),
        0,
        "clients saw errors: {:?}",
        &errors[..errors.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_that_gets_no_answer_fails_after_timeout_and_fall_of_them_make_the_server_unhealthy()
 {
    let hang = never_answers().await;
    let check = r#"type = "http", path = "/health", interval = "400ms", timeout = "200ms", fall = 2, rise = 1"#;
    let (_child, _proxy, admin) = start(&config(&app(&[addr(hang.addr)], check)));

    hang.wait_hits(1, WITHIN).await;
    let first_seen = Instant::now();
    let v = wait_view(admin, "app", 0, WITHIN, "one failed check", |v| {
        checks(v, "fails") >= 1
    })
    .await;
    let waited = first_seen.elapsed();
    assert_eq!(health(&v), "healthy", "one failure of fall = 2: {v}");
    assert!(
        waited >= Duration::from_millis(150),
        "the check failed {waited:?} after its request arrived, before the 200ms timeout"
    );

    let v = wait_view(admin, "app", 0, WITHIN, "unhealthy", |v| {
        health(v) == "unhealthy"
    })
    .await;
    assert_eq!(checks(&v, "fails"), 2);
    assert_eq!(checks(&v, "checks"), 2);
    assert_eq!(hang.hits(), 2, "check requests the backend read");
}

/// Starts one server whose check (`check`, mandatory, fall = rise = 1) passes
/// after `good`, fails after `bad`, passes again after `good`; returns the
/// statuses the backend answered to checks.
async fn passes_then_fails_then_passes(
    check: &str,
    good: impl Fn(&CheckCtl),
    bad: impl Fn(&CheckCtl),
) -> Vec<u16> {
    let a = checked("a").await;
    good(&a);
    let check = format!(
        r#"type = "http", path = "/health", interval = "100ms", fall = 1, rise = 1, mandatory = true, {check}"#
    );
    let (_child, _proxy, admin) = start(&config(&app(&[addr(a.addr())], &check)));
    let v = wait_view(admin, "app", 0, WITHIN, "healthy", |v| {
        health(v) == "healthy"
    })
    .await;
    assert_eq!(checks(&v, "fails"), 0, "{v}");

    bad(&a);
    let v = wait_view(admin, "app", 0, WITHIN, "unhealthy", |v| {
        health(v) == "unhealthy"
    })
    .await;
    assert_eq!(checks(&v, "consecutive_fails"), 1, "{v}");

    good(&a);
    let v = wait_view(admin, "app", 0, WITHIN, "healthy", |v| {
        health(v) == "healthy"
    })
    .await;
    assert_eq!(checks(&v, "consecutive_passes"), 1, "{v}");
    a.answers.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_statuses_pass_302_and_fail_301() {
    let answers = passes_then_fails_then_passes(
        "valid_statuses = [200, 302]",
        |c| c.set_status(302),
        |c| c.set_status(301),
    )
    .await;
    assert!(
        answers.contains(&302) && answers.contains(&301),
        "{answers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_must_contain_the_configured_text() {
    passes_then_fails_then_passes(
        r#"body = "OK""#,
        |c| c.set_body("all OK here"),
        |c| c.set_body("all fine here"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_must_match_the_configured_regex() {
    passes_then_fails_then_passes(
        r#"body_regex = "^up [0-9]+$""#,
        |c| c.set_body("up 42"),
        |c| c.set_body("down 42"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raw_http_req_reaches_the_backend_byte_for_byte() {
    let raw = raw_recorder().await;
    // The seed configuration's request, with TOML's escapes.
    let check = r#"type = "http", http_req = "GET / HTTP/1.0\r\nHost: foo.com\r\n\r\n", interval = "100ms", rise = 1, mandatory = true"#;
    let (_child, _proxy, admin) = start(&config(&app(&[addr(raw.addr)], check)));
    wait_view(admin, "app", 0, WITHIN, "healthy", |v| {
        health(v) == "healthy"
    })
    .await;
    wait_until(WITHIN, "three checks", || {
        raw.reads.lock().unwrap().len() >= 3
    })
    .await;
    for read in raw.reads.lock().unwrap().iter() {
        assert_eq!(
            String::from_utf8_lossy(read),
            "GET / HTTP/1.0\r\nHost: foo.com\r\n\r\n"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_four_workers_each_server_sees_one_check_per_interval() {
    let (a, b) = (checked("a").await, checked("b").await);
    let interval = Duration::from_millis(200);
    let check = r#"type = "http", path = "/health", interval = "200ms""#;
    let text = config(&app(&[addr(a.addr()), addr(b.addr())], check));
    let _child = Switchyard::run_config_with_admin_args(&text, &["--workers", "4"], 1);
    wait_until(WITHIN, "first checks", || {
        a.checks() >= 1 && b.checks() >= 1
    })
    .await;

    let (a0, b0, t0) = (a.checks(), b.checks(), Instant::now());
    // A measurement window, not a synchronisation: count over ~6 intervals.
    tokio::time::sleep(interval * 6).await;
    let (da, db) = (a.checks() - a0, b.checks() - b0);
    let elapsed = t0.elapsed();
    // A window of k intervals holds floor(k) or ceil(k) checks; one more or
    // less for timer delays. One checker per worker would show four times as many.
    let intervals = elapsed.as_secs_f64() / interval.as_secs_f64();
    let range = (intervals.floor() as usize - 1)..=(intervals.ceil() as usize + 1);
    for (name, n) in [("a", da), ("b", db)] {
        assert!(
            range.contains(&n),
            "{name} saw {n} checks in {elapsed:?} ({intervals:.2} intervals), expected {range:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_concurrency_1_no_two_checks_of_an_upstream_are_in_flight_at_once() {
    let gauge = Arc::new(Gauge::default());
    let a = checked_sharing("a", Arc::clone(&gauge)).await;
    let b = checked_sharing("b", Arc::clone(&gauge)).await;
    for c in [&a, &b] {
        c.delay_ms.store(100, std::sync::atomic::Ordering::SeqCst);
    }
    // Mandatory: both servers are checked at once at start, then every 150ms,
    // so without the limit their checks overlap from the first.
    let check =
        r#"type = "http", path = "/health", interval = "150ms", concurrency = 1, mandatory = true"#;
    let (_child, _proxy, _admin) = start(&config(&app(&[addr(a.addr()), addr(b.addr())], check)));
    wait_until(WITHIN, "ten checks", || a.checks() + b.checks() >= 10).await;
    assert!(
        a.checks() >= 3 && b.checks() >= 3,
        "{} {}",
        a.checks(),
        b.checks()
    );
    assert_eq!(gauge.max(), 1, "checks in flight at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_down_healthy_server_is_still_checked_but_takes_no_traffic() {
    let (a, b) = (checked("a").await, checked("b").await);
    let check = r#"type = "http", path = "/health", interval = "100ms""#;
    let servers = [format!("{}, down = true", addr(a.addr())), addr(b.addr())];
    let (_child, proxy, admin) = start(&config(&app(&servers, check)));
    let load = Load::start(proxy, 2);

    wait_until(WITHIN, "a checked", || a.checks() >= 1).await;
    let n = a.checks();
    wait_until(WITHIN, "a checked three more times", || a.checks() >= n + 3).await;
    wait_until(WITHIN, "b taking traffic", || b.traffic() >= 200).await;
    let v = server_view(admin, "app", 0).await;
    assert_eq!((v["state"].as_str(), health(&v)), (Some("down"), "healthy"));
    assert_eq!(a.traffic(), 0, "a down server got traffic");

    let r = api_send(
        admin,
        Method::PATCH,
        "/api/v1/upstreams/app/servers/0",
        r#"{"state":"up"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    wait_until(WITHIN, "a taking traffic once up", || a.traffic() >= 20).await;
    let (_, errors) = load.stop().await;
    assert_eq!(errors.len(), 0, "{errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_up_server_that_fails_its_check_takes_no_traffic() {
    let (a, b) = (checked("a").await, checked("b").await);
    a.set_status(500);
    let check =
        r#"type = "http", path = "/health", interval = "100ms", fall = 2, mandatory = true"#;
    let (_child, proxy, admin) = start(&config(&app(&[addr(a.addr()), addr(b.addr())], check)));
    wait_view(admin, "app", 1, WITHIN, "b healthy", |v| {
        health(v) == "healthy"
    })
    .await;
    let load = Load::start(proxy, 2);

    let v = wait_view(admin, "app", 0, WITHIN, "a unhealthy", |v| {
        health(v) == "unhealthy"
    })
    .await;
    assert_eq!(v["state"], "up");
    assert!(!v["eligible"].as_bool().unwrap());
    wait_until(WITHIN, "b taking traffic", || b.traffic() >= 200).await;
    let (ok, errors) = load.stop().await;
    assert_eq!(a.traffic(), 0, "a failing server got traffic");
    assert_eq!(b.traffic(), ok);
    assert_eq!(errors.len(), 0, "{errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_added_through_the_api_is_checking_and_takes_no_traffic_until_its_first_pass() {
    let (a, b) = (checked("a").await, checked("b").await);
    a.set_status(500);
    let check = r#"type = "http", path = "/health", interval = "100ms", fall = 5, rise = 3"#;
    let (_child, proxy, admin) = start(&config(&app(&[addr(b.addr())], check)));
    wait_view(admin, "app", 0, WITHIN, "b checked", |v| {
        checks(v, "checks") >= 1
    })
    .await;
    let load = Load::start(proxy, 2);

    let r = api_send(
        admin,
        Method::POST,
        "/api/v1/upstreams/app/servers",
        &format!(r#"{{"addr":"{}"}}"#, a.addr()),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let added: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(added["health"], "checking");
    let id = added["id"].as_u64().unwrap() as u32;

    // Failing checks (fewer than fall) leave it checking, out of traffic.
    wait_until(WITHIN, "two failed checks", || a.answered(500) >= 2).await;
    let v = server_view(admin, "app", id).await;
    assert_eq!(health(&v), "checking", "{v}");
    let b0 = b.traffic();
    wait_until(WITHIN, "traffic on b", || b.traffic() >= b0 + 100).await;
    assert_eq!(a.traffic(), 0, "a server still checking got traffic");

    // One pass is enough for a new server (rise is for recovering ones).
    a.set_status(200);
    wait_view(admin, "app", id, WITHIN, "healthy", |v| {
        health(v) == "healthy"
    })
    .await;
    assert_eq!(a.answered(200), 1, "passes before it was healthy");
    wait_until(WITHIN, "traffic on a", || a.traffic() >= 20).await;
    let (_, errors) = load.stop().await;
    assert_eq!(errors.len(), 0, "{errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_mandatory_check_servers_start_checking_and_take_traffic_after_a_first_pass() {
    let a = checked("a").await;
    a.set_status(500);
    let check =
        r#"type = "http", path = "/health", interval = "100ms", fall = 5, mandatory = true"#;
    let (_child, proxy, admin) = start(&config(&app(&[addr(a.addr())], check)));
    wait_until(WITHIN, "a failed check", || a.answered(500) >= 1).await;
    let v = server_view(admin, "app", 0).await;
    assert_eq!(health(&v), "checking", "{v}");
    let r = try_get(proxy, "/").await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    assert_eq!(a.traffic(), 0);

    a.set_status(200);
    wait_view(admin, "app", 0, WITHIN, "healthy", |v| {
        health(v) == "healthy"
    })
    .await;
    let r = try_get(proxy, "/").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_set_through_the_api_starts_probing_and_deleting_it_makes_servers_healthy() {
    let a = checked("a").await;
    let (_child, _proxy, admin) = start(&config(&app(&[addr(a.addr())], "")));
    let path = "/api/v1/upstreams/app/health_check";
    assert_eq!(
        support::get(admin, path).await.status,
        StatusCode::NOT_FOUND
    );

    let r = api_send(
        admin,
        Method::PUT,
        path,
        r#"{"type":"http","path":"/health","interval":"100ms","fall":1,"rise":1}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    wait_until(WITHIN, "checks", || a.checks() >= 2).await;
    let got = api_json(admin, path).await;
    assert_eq!(got["path"], "/health", "{got}");

    a.set_status(503);
    wait_view(admin, "app", 0, WITHIN, "unhealthy", |v| {
        health(v) == "unhealthy"
    })
    .await;

    let r = api_send(admin, Method::DELETE, path, "").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let v = server_view(admin, "app", 0).await;
    assert_eq!(health(&v), "healthy", "{v}");
    assert_eq!(
        support::get(admin, path).await.status,
        StatusCode::NOT_FOUND
    );
    // Probing stops: a check in flight may still land, then none for 5 intervals.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let n = a.checks();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(a.checks(), n, "checks after the check was deleted");
    assert_eq!(health(&server_view(admin, "app", 0).await), "healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_health_check_bodies_are_refused_with_422_and_a_reason() {
    let a = checked("a").await;
    let (_child, _proxy, admin) = start(&config(&app(&[addr(a.addr())], "")));
    let path = "/api/v1/upstreams/app/health_check";
    for (body, reason) in [
        (r#"{"type":"udp"}"#, "unknown health check type \"udp\""),
        (
            r#"{"type":"http","interval":"0s"}"#,
            "interval must be greater than 0",
        ),
        (r#"{"type":"http","timeout":"soon"}"#, "timeout"),
        (r#"{"type":"http","fall":0}"#, "fall must be at least 1"),
        (
            r#"{"type":"http","concurrency":0}"#,
            "concurrency must be at least 1",
        ),
        (r#"{"type":"http","body_regex":"("}"#, "bad body_regex"),
        (
            r#"{"type":"http","valid_statuses":[99]}"#,
            "status 99 out of range",
        ),
        (r#"{"type":"http","path":"health"}"#, "bad path"),
        (r#"{"type":"http","port":0}"#, "port 0 out of range"),
        (r#"{"type":"tcp","path":"/x"}"#, "a tcp check takes no"),
        (
            r#"{"type":"http","http_req":"GET / HTTP/1.0\r\n\r\n","path":"/x"}"#,
            "http_req is the whole request",
        ),
    ] {
        let r = api_send(admin, Method::PUT, path, body).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            r.body
        );
        let e: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let message = e["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(reason),
            "{body}: {message:?} should say {reason:?}"
        );
    }
    // Nothing was set.
    assert_eq!(
        support::get(admin, path).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(a.checks(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_transitions_are_sent_as_health_events() {
    let a = checked("a").await;
    let check = r#"type = "http", path = "/health", interval = "100ms", fall = 1, rise = 1"#;
    let (_child, _proxy, admin) = start(&config(&app(&[addr(a.addr())], check)));
    let (head, mut stream) = support::raw_request(
        admin,
        "GET /api/v1/events HTTP/1.1\r\nHost: admin\r\nAccept: text/event-stream\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    a.set_status(500);
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + WITHIN;
    let mut seen: Vec<(String, String)> = Vec::new();
    while seen.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("health events so far: {seen:?}; stream: {text}"))
            .unwrap();
        assert!(n > 0, "event stream closed: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        seen = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            .filter(|e| e["change"] == "health")
            .map(|e| {
                assert_eq!(
                    (&e["upstream"], &e["id"]),
                    (&"app".into(), &0.into()),
                    "{e}"
                );
                (
                    e["old"].as_str().unwrap().to_string(),
                    e["new"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        if seen.len() == 1 {
            a.set_status(200);
        }
    }
    assert!(text.contains("event: health"), "{text}");
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        seen,
        vec![pair("healthy", "unhealthy"), pair("unhealthy", "healthy")]
    );
}
