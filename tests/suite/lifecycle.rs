//! The process from the outside: graceful shutdown on SIGTERM, and
//! `switchyard check`.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use support::{Switchyard, slow, try_get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_in_flight_request_refuses_new_connections_and_exits_0() {
    let backend = slow(Duration::from_secs(2)).await;
    let mut sy = Switchyard::proxy(&[backend.addr]);
    let addr = sy.addr();

    let in_flight = tokio::spawn(async move {
        let started = Instant::now();
        (try_get(addr, "/slow").await, started.elapsed())
    });
    // The request is in flight once the backend has it.
    backend.wait_hits(1, Duration::from_secs(10)).await;
    let signalled = Instant::now();
    sy.terminate();

    // New connections are refused soon after the signal (bounded poll). With one
    // listening socket per worker (SO_REUSEPORT) a handshake the kernel had
    // queued on a socket as it closed is reset instead: no connection either.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                break;
            }
            Err(e) => panic!("unexpected connect error: {e}"),
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "still accepting connections 5 s after SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let refused_after = signalled.elapsed();
    assert!(
        !in_flight.is_finished(),
        "the slow request ended before the listener closed ({refused_after:?})"
    );

    let (reply, took) = in_flight.await.unwrap();
    let reply = reply.expect("in-flight request completes after SIGTERM");
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body, "slow");
    assert!(took >= Duration::from_secs(2), "took {took:?}");

    let status = sy.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit: {status:?}; stderr:\n{}",
        sy.stderr()
    );
    assert_eq!(backend.hits(), 1);
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn check(file: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "-c"])
        .arg(file)
        .output()
        .unwrap()
}

#[test]
fn check_reports_every_problem_of_each_broken_fixture_with_its_place() {
    let dir = fixtures().join("broken");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (fixtures arrive with the config parser)",
                dir.display()
            )
        })
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no broken fixtures in {}", dir.display());

    let mut checked = 0;
    for file in &files {
        let expected_path = file.with_extension("expected");
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
        let out = check(file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{}: check exited 0; stderr:\n{stderr}",
            file.display()
        );
        let name = file.display().to_string();
        let mut lines = 0;
        for line in expected.lines().filter(|l| !l.trim().is_empty()) {
            let mut parts = line.splitn(3, ':');
            let (Some(l), Some(c), Some(text)) = (parts.next(), parts.next(), parts.next()) else {
                panic!("{}: bad expected line {line:?}", expected_path.display());
            };
            let (l, c, text) = (l.trim(), c.trim(), text.trim());
            // A problem without a place (`0:0` in .expected) is printed as
            // `FILE: message`, like `ConfigError`'s Display.
            let place = if (l, c) == ("0", "0") {
                format!("{name}: ")
            } else {
                format!("{name}:{l}:{c}:")
            };
            let found = stderr
                .lines()
                .any(|out| out.starts_with(&place) && out.contains(text));
            assert!(
                found,
                "{}: expected a line starting {place:?} containing {text:?}; stderr:\n{stderr}",
                file.display()
            );
            lines += 1;
        }
        assert!(lines > 0, "{}: no expectations", expected_path.display());
        // Every problem is reported, and no others.
        assert!(
            stderr.contains(&format!("{lines} problem(s) found")),
            "{}: expected {lines} problem(s); stderr:\n{stderr}",
            file.display()
        );
        checked += 1;
    }
    assert_eq!(checked, files.len());
}

#[test]
fn check_accepts_the_seed_configuration() {
    let file = fixtures().join("good/seed.toml");
    assert!(
        file.exists(),
        "{} missing (arrives with the config parser)",
        file.display()
    );
    let out = check(&file);
    assert!(
        out.status.success(),
        "check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(": ok ("), "stdout: {stdout}");
}

#[test]
fn check_warns_when_an_https_upstream_is_probed_by_an_http_check_and_still_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.toml");
    let text = "[[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{ upstream = \"sslback\" }]\n\n\
                [upstream.sslback]\nscheme = \"https\"\nservers = [{ addr = \"192.168.2.145:443\" }]\n\
                health_check = { type = \"http\", http_req = \"GET / HTTP/1.0\\r\\n\\r\\n\" }\n";
    std::fs::write(&file, text).unwrap();
    let out = check(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a warning is not an error: {stderr}");
    assert!(
        stderr.contains("warning: upstream \"sslback\": scheme is \"https\" but its health_check type is \"http\""),
        "{stderr}"
    );
    // With type = "https" there is nothing to say.
    std::fs::write(&file, text.replace("type = \"http\"", "type = \"https\"")).unwrap();
    let out = check(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}
