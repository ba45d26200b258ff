//! Access logs, request ids and forwarding headers, through the real binary:
//! every field on both HTTP paths (a GET takes the plain HTTP/1.1 path, a POST
//! hyper's), the three formats, the reopen after a rename (logrotate), a log
//! directory that vanishes, and what the backend receives.

use crate::support;

use std::path::Path;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde_json::Value;
use support::{Switchyard, call, named, run_to_exit};

const WITHIN: Duration = Duration::from_secs(20);

fn config(backend: std::net::SocketAddr, access_log: &str, extra: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ upstream = \"web\" }}]\n\
         access_log = {access_log}\n{extra}\n\
         [upstream.web]\nservers = [{{ addr = \"{backend}\" }}]\n"
    )
}

/// The file's lines once it has at least `n` (the writer flushes every second).
fn lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + WITHIN;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let got: Vec<String> = text.lines().map(str::to_string).collect();
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {} line(s), waited for {n}: {text:?}",
            path.display(),
            got.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_carry_every_field_on_both_paths_and_the_request_id_reaches_the_backend() {
    let backend = named("a").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.json");
    let text = config(
        backend.addr,
        &format!("{{ path = \"{}\", format = \"json\" }}", log.display()),
        "",
    );
    let sy = Switchyard::run_config_with_admin(&text, 1);
    let proxy = sy.addr();

    // A GET (plain path) with no id: one is made.
    let r = call(
        proxy,
        Method::GET,
        "/get?x=1",
        &[
            ("user-agent", "probe/1"),
            ("referer", "http://ref.example/"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // A POST (hyper's path) with the client's own id: passed through.
    let r = call(
        proxy,
        Method::POST,
        "/post",
        &[("x-request-id", "client-id-7"), ("user-agent", "probe/2")],
        "hello",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    let seen = backend.seen();
    assert_eq!(seen.len(), 2);
    let made = seen[0].headers["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(is_hex_id(&made), "{made}");
    assert_eq!(seen[1].headers["x-request-id"], "client-id-7");
    for s in &seen {
        assert_eq!(
            s.headers["x-forwarded-host"],
            proxy.to_string(),
            "{:?}",
            s.headers
        );
        assert!(s.headers.get("forwarded").is_none(), "off by default");
    }

    let got = lines(&log, 2);
    let v: Vec<Value> = got
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (line, method, uri, id, ua) in [
        (&v[0], "GET", "/get?x=1", made.as_str(), "probe/1"),
        (&v[1], "POST", "/post", "client-id-7", "probe/2"),
    ] {
        assert_eq!(line["method"], method, "{line}");
        assert_eq!(line["uri"], uri, "{line}");
        assert_eq!(line["protocol"], "HTTP/1.1", "{line}");
        assert_eq!(line["remote_addr"], "127.0.0.1", "{line}");
        assert_eq!(line["host"], "127.0.0.1", "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["upstream"], "web", "{line}");
        assert_eq!(line["upstream_addr"], backend.addr.to_string(), "{line}");
        assert_eq!(line["upstream_status"], 200, "{line}");
        assert_eq!(line["tries"], 1, "{line}");
        assert_eq!(line["request_id"], id, "{line}");
        assert_eq!(line["user_agent"], ua, "{line}");
        assert_eq!(
            line["body_bytes_sent"], 1,
            "the backend answers \"a\": {line}"
        );
        assert!(line["bytes_sent"].as_u64().unwrap() > 20, "{line}");
        for t in [
            "request_time",
            "upstream_response_time",
            "upstream_connect_time",
        ] {
            let secs = line[t].as_f64().unwrap_or(-1.0);
            assert!((0.0..5.0).contains(&secs), "{t}: {line}");
        }
        assert!(line["time"].as_str().unwrap().starts_with("20"), "{line}");
    }
    assert_eq!(v[0]["referer"], "http://ref.example/");
    assert_eq!(v[1]["referer"], "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_is_nginxs_format_and_a_template_takes_nginx_variables() {
    let backend = named("b").await;
    let dir = tempfile::tempdir().unwrap();
    let combined = dir.path().join("combined.log");
    let sy = Switchyard::run_config_with_admin(
        &config(
            backend.addr,
            &format!("{{ path = \"{}\" }}", combined.display()),
            "",
        ),
        1,
    );
    call(
        sy.addr(),
        Method::GET,
        "/c",
        &[("user-agent", "ua \"quoted\"")],
        "",
    )
    .await;
    let line = lines(&combined, 1).remove(0);
    let re = regex::Regex::new(
        r#"^127\.0\.0\.1 - - \[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET /c HTTP/1\.1" 200 1 "-" "ua \\x22quoted\\x22"$"#,
    )
    .unwrap();
    assert!(re.is_match(&line), "{line}");

    let template = dir.path().join("t.log");
    let sy2 = Switchyard::run_config_with_admin(
        &config(
            backend.addr,
            &format!(
                "{{ path = \"{}\", format = \"$request_method $upstream_addr $status $upstream_tries\" }}",
                template.display()
            ),
            "",
        ),
        1,
    );
    call(sy2.addr(), Method::POST, "/t", &[], "x").await;
    assert_eq!(
        lines(&template, 1),
        [format!("POST {} 200 1", backend.addr)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_after_a_rename_writes_a_new_file_and_a_vanished_directory_stops_nothing() {
    let backend = named("c").await;
    let dir = tempfile::tempdir().unwrap();
    let logdir = dir.path().join("logs");
    std::fs::create_dir(&logdir).unwrap();
    let log = logdir.join("access.log");
    let sy = Switchyard::run_config_with_admin(
        &config(
            backend.addr,
            &format!("{{ path = \"{}\" }}", log.display()),
            "",
        ),
        1,
    );
    call(sy.addr(), Method::GET, "/one", &[], "").await;
    lines(&log, 1);
    // logrotate: move the file away, then ask for a reopen.
    let rotated = logdir.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let r = call(
        sy.admin(),
        Method::POST,
        "/api/v1/logs/reopen",
        &[("content-type", "application/json")],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("\"reopened\":1"), "{}", r.body);
    call(sy.addr(), Method::GET, "/two", &[], "").await;
    let fresh = lines(&log, 1);
    assert!(fresh[0].contains("/two"), "{fresh:?}");
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("/one") && !old.contains("/two"), "{old}");

    // SIGUSR1 does the same.
    std::fs::rename(&log, logdir.join("access.log.2")).unwrap();
    let st = std::process::Command::new("kill")
        .args(["-USR1", &sy.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + WITHIN;
    while !sy.stderr().contains("SIGUSR1: access logs reopened") {
        assert!(Instant::now() < deadline, "{}", sy.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    call(sy.addr(), Method::GET, "/three", &[], "").await;
    assert!(lines(&log, 1)[0].contains("/three"));

    // The directory goes away: requests are still served.
    std::fs::remove_dir_all(&logdir).unwrap();
    call(
        sy.admin(),
        Method::POST,
        "/api/v1/logs/reopen",
        &[("content-type", "application/json")],
        "",
    )
    .await;
    for _ in 0..20 {
        let r = call(sy.addr(), Method::GET, "/lost", &[], "").await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let deadline = Instant::now() + WITHIN;
    while !sy.stderr().contains("access log: cannot") {
        assert!(Instant::now() < deadline, "no warning: {}", sy.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The lost lines are counted.
    let deadline = Instant::now() + WITHIN;
    loop {
        let m = support::get(sy.admin(), "/metrics").await;
        let dropped = m
            .body
            .lines()
            .find_map(|l| l.strip_prefix("switchyard_access_log_dropped_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if dropped >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "nothing counted: {}", m.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_off_and_forwarded_on_shape_what_the_backend_gets_on_both_paths() {
    let backend = named("d").await;
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ upstream = \"web\" }}]\n\
         request_id = false\nforwarded = true\n\n\
         [upstream.web]\nservers = [{{ addr = \"{}\" }}]\n",
        backend.addr
    );
    let sy = Switchyard::run_config_with_admin(&text, 1);
    let proxy = sy.addr();
    call(proxy, Method::GET, "/g", &[], "").await;
    call(
        proxy,
        Method::POST,
        "/p",
        &[("forwarded", "for=192.0.2.60")],
        "x",
    )
    .await;
    let seen = backend.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert!(s.headers.get("x-request-id").is_none(), "{:?}", s.headers);
    }
    let want = format!("for=127.0.0.1;host=\"{proxy}\";proto=http");
    let fwd = |i: usize| -> Vec<String> {
        seen[i]
            .headers
            .get_all("forwarded")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(fwd(0), std::slice::from_ref(&want));
    assert_eq!(fwd(1).join(", "), format!("for=192.0.2.60, {want}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_line_proxy_takes_an_access_log_flag() {
    let backend = named("e").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("p.log");
    let args: Vec<String> = [
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &backend.addr.to_string(),
        "--access-log",
        &log.to_string_lossy(),
        "--access-log-format",
        "json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let sy = Switchyard::start(&args, 1);
    call(sy.addr(), Method::GET, "/p", &[], "").await;
    let v: Value = serde_json::from_str(&lines(&log, 1)[0]).unwrap();
    assert_eq!(v["uri"], "/p");
    assert_eq!(v["upstream"], "default");
    // A template with an unknown variable is refused at once.
    let bad = run_to_exit(
        &[
            "proxy".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--to".into(),
            backend.addr.to_string(),
            "--access-log".into(),
            "-".into(),
            "--access-log-format".into(),
            "$nope".into(),
        ],
        WITHIN,
    );
    assert!(!bad.status.success());
    assert!(
        bad.stderr.contains("unknown variable $nope"),
        "{}",
        bad.stderr
    );
}
