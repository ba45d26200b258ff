//! `switchyard import nginx`: golden outputs for the fixtures under
//! `tests/fixtures/nginx/`, the seed article's configuration imported and run
//! with loopback backends, and the failures that produce nothing.
//!
//! Golden files: `expected.toml` (stdout) and `expected.report` (stderr) beside
//! each fixture, with the fixture's absolute directory written `$DIR`. After a
//! deliberate change, `UPDATE_GOLDEN=1 cargo test --test suite import_nginx::`
//! rewrites them; review the diff.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::StatusCode;
use support::{Switchyard, named, run_to_exit};

const WITHIN: Duration = Duration::from_secs(30);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/nginx")
        .join(name)
}

fn import(file: &Path, extra: &[&str]) -> support::Exited {
    let mut args = vec![
        "import".to_string(),
        "nginx".into(),
        file.to_string_lossy().into_owned(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    run_to_exit(&args, WITHIN)
}

/// Compares `got` with the golden file (or rewrites it under UPDATE_GOLDEN).
fn golden(path: &Path, got: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    if want != got {
        let first = want
            .lines()
            .zip(got.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(want.lines().count().min(got.lines().count()));
        panic!(
            "{} differs from the output at line {}:\n--- expected\n{}\n--- got\n{}",
            path.display(),
            first + 1,
            want.lines().nth(first).unwrap_or("(end)"),
            got.lines().nth(first).unwrap_or("(end)"),
        );
    }
}

fn check_golden(dir: &str, file: &str) {
    let d = fixture(dir);
    let out = import(&d.join(file), &[]);
    assert!(out.status.success(), "{}", out.stderr);
    let placeholder = |s: &str| s.replace(&d.to_string_lossy().into_owned(), "$DIR");
    golden(&d.join("expected.toml"), &placeholder(&out.stdout));
    golden(&d.join("expected.report"), &placeholder(&out.stderr));
}

#[test]
fn the_seed_articles_status_conf_imports_as_its_golden_file() {
    check_golden("seed", "status.conf");
}

#[test]
fn a_full_nginx_conf_with_includes_tls_and_every_balancing_method_imports_as_its_golden_file() {
    check_golden("full", "nginx.conf");
}

#[test]
fn every_import_passes_check_and_names_its_sources() {
    for (dir, file) in [("seed", "status.conf"), ("full", "nginx.conf")] {
        let tmp = tempfile::tempdir().unwrap();
        let out_path = tmp.path().join("switchyard.toml");
        let out = import(
            &fixture(dir).join(file),
            &["-o", &out_path.to_string_lossy()],
        );
        assert!(out.status.success(), "{dir}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "-o writes nothing on stdout");
        let text = std::fs::read_to_string(&out_path).unwrap();
        // Every section and server names the nginx line it came from.
        for line in text
            .lines()
            .filter(|l| l.starts_with('[') || l.starts_with("  {"))
        {
            assert!(
                line.contains("# ") && (line.contains(".conf:") || line.contains("added by")),
                "{dir}: no source in {line:?}"
            );
        }
        let check = run_to_exit(
            &[
                "check".into(),
                "-c".into(),
                out_path.to_string_lossy().into_owned(),
            ],
            WITHIN,
        );
        assert!(
            check.status.success(),
            "{dir}: {}{}",
            check.stdout,
            check.stderr
        );
    }
}

#[test]
fn includes_follow_globs_in_order_relative_to_the_main_file() {
    let out = import(&fixture("full").join("nginx.conf"), &[]);
    assert!(out.status.success(), "{}", out.stderr);
    let legacy = out.stdout.find("legacy.example.com").unwrap();
    let pick = out.stdout.find("pick.example.com").unwrap();
    assert!(legacy < pick, "conf.d/10-* before conf.d/20-*");
    assert!(
        out.stdout.contains("# conf.d/10-legacy.conf:5"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("read_timeout = \"120s\"  # conf.d/10-legacy.conf:7")
    );
    // A missing include is reported, not fatal.
    assert!(
        out.stderr
            .contains("nginx.conf:13: include mime.types: the included file is not there"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_file_that_is_not_nginx_syntax_or_has_nothing_to_translate_exits_1() {
    let out = import(&fixture("broken").join("unclosed.conf"), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("unclosed.conf:2: a block opened here is not closed"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());
    let out = import(&fixture("broken").join("nothing.conf"), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("nothing to translate"),
        "{}",
        out.stderr
    );
    let out = import(&fixture("broken").join("no-such-file.conf"), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("cannot read"), "{}", out.stderr);
}

/// A client connection to `addr` from the loopback address `from` (any of
/// 127/8 is this machine).
async fn get_from(from: &str, addr: std::net::SocketAddr, path: &str) -> StatusCode {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let code = text.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
    StatusCode::from_u16(code).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_config_runs_with_the_same_upstreams_checks_and_admin_rules() {
    let (a, b, c) = (named("a").await, named("b").await, named("c").await);
    // The seed's configuration with its servers moved to loopback.
    let seed = std::fs::read_to_string(fixture("seed").join("status.conf")).unwrap();
    let seed = seed
        .replace("192.168.2.145:8080", &a.addr.to_string())
        .replace("192.168.2.109:8080", &b.addr.to_string())
        .replace("127.0.0.1:12356", &c.addr.to_string())
        // Port 443 stays (it is what tells the import these are https servers);
        // on loopback nothing listens there, so their checks fail, as intended.
        .replace("192.168.2.145:443", "127.0.0.1:443")
        .replace("192.168.2.159:443", "127.0.0.2:443");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("status.conf"), &seed).unwrap();
    let out = import(&tmp.path().join("status.conf"), &[]);
    assert!(out.status.success(), "{}", out.stderr);
    // Only the listen addresses change for the test: loopback, port 0.
    let text = out
        .stdout
        .replace("listen = \"0.0.0.0:18080\"", "listen = \"127.0.0.1:0\"")
        .replace("listen = \"0.0.0.0:8080\"", "listen = \"127.0.0.1:0\"");
    let sy = Switchyard::run_config_in(tmp.path(), &text, 1);
    let admin = sy.admin();

    let servers = |name: &'static str| async move {
        let r = support::get(admin, &format!("/api/v1/upstreams/{name}/servers")).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        v.as_array().cloned().unwrap_or_default()
    };
    let foo = servers("foo.com").await;
    assert_eq!(foo.len(), 3, "{foo:?}");
    assert_eq!(
        foo.iter().filter(|s| s["backup"] == true).count(),
        1,
        "{foo:?}"
    );
    assert_eq!(servers("sslback").await.len(), 2);
    let check = |name: &'static str| async move {
        let r = support::get(admin, &format!("/api/v1/upstreams/{name}/health_check")).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.body);
        serde_json::from_str::<serde_json::Value>(&r.body).unwrap()
    };
    let hc = check("foo.com").await;
    assert_eq!(hc["type"], "http", "{hc}");
    assert_eq!(hc["fall"], 3, "{hc}");
    assert_eq!(hc["rise"], 2, "{hc}");
    assert_eq!(hc["interval_ms"], 2000, "{hc}");
    assert_eq!(hc["timeout_ms"], 1000, "{hc}");
    assert_eq!(hc["valid_statuses"], serde_json::json!([200, 302]), "{hc}");
    assert_eq!(
        hc["http_req"], "GET / HTTP/1.0\r\nHost: foo.com\r\n\r\n",
        "{hc}"
    );
    // The seed probed its https upstream in cleartext; the import made it https.
    assert_eq!(check("sslback").await["type"], "https");
    // The checks run: the seed's raw HTTP/1.0 probe reaches the backends.
    a.wait_hits(1, WITHIN).await;
    let probe = a
        .seen()
        .into_iter()
        .find(|r| r.version == hyper::Version::HTTP_10);
    assert!(probe.is_some_and(|p| p.headers.get("host").is_some_and(|h| h == "foo.com")));

    // Traffic for foo.com reaches the two primaries, 1:1.
    let proxy = sy.addr();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let mut req = support::get_request("/");
        req.headers_mut()
            .insert(hyper::header::HOST, "foo.com".parse().unwrap());
        let r = support::fetch(proxy, req).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        seen.push(r.body.clone());
    }
    assert_eq!(
        seen.iter().filter(|b| b.starts_with('a')).count(),
        2,
        "{seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|b| b.starts_with('b')).count(),
        2,
        "{seen:?}"
    );

    // The seed's allow/deny: 127.0.0.1 is allowed, 127.0.0.2 is not.
    assert_eq!(
        get_from("127.0.0.1", admin, "/healthcheck").await,
        StatusCode::OK
    );
    assert_eq!(
        get_from("127.0.0.2", admin, "/healthcheck").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get_from("127.0.0.2", admin, "/ups_api?ups=foo.com&act=list").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get_from("127.0.0.1", admin, "/ups_api?ups=foo.com&act=list").await,
        StatusCode::OK
    );
}
