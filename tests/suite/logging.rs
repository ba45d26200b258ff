//! The log on stderr, through the real binary: no colour codes when stderr is
//! a file, fields printed as values (`old=-`, not `None`), JSON lines with
//! `--log-format json` or `[log] format`, and the level from `--log-level` over
//! `[log] level` over `RUST_LOG` (the children get `RUST_LOG=info`).
//!
//! A table change is logged before the API answers, so after the answer its
//! line is in the file: the tests read it then, with no waiting.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use hyper::StatusCode;
use serde_json::Value;
use support::{Call, Switchyard, closed_port, get, run_to_exit};

/// Adds a server (to a closed port: it takes no traffic) to `upstream`, which
/// logs a `table change` at info.
async fn add_server(admin: SocketAddr, upstream: &str) -> SocketAddr {
    let addr = closed_port();
    let body = format!(r#"{{"addr": "{addr}"}}"#);
    let r = Call::post(&format!("/api/v1/upstreams/{upstream}/servers"), &body)
        .send(admin)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r}");
    addr
}

/// The child's stderr, checked to hold no escape byte.
fn plain_stderr(sy: &Switchyard) -> String {
    let bytes = std::fs::read(sy.stderr_path()).unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    assert!(
        !bytes.contains(&0x1b),
        "an escape byte (ANSI colour) in a log written to a file:\n{text}"
    );
    text
}

/// The one line of `log` that contains every one of `parts`.
fn line_with<'a>(log: &'a str, parts: &[&str]) -> &'a str {
    let found: Vec<&str> = log
        .lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .collect();
    assert_eq!(found.len(), 1, "lines with {parts:?}:\n{log}");
    found[0]
}

/// A config with an admin API, one listener and an upstream over `server`.
fn config(log: &str, server: SocketAddr) -> String {
    format!(
        "{log}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ upstream = \"app\" }}]\n\n\
         [upstream.app]\nservers = [{{ addr = \"{server}\" }}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_logs_plain_text_to_a_file_with_values_not_debug_syntax() {
    let sy = Switchyard::demo();
    let added = add_server(sy.admin(), "demo").await;
    let log = plain_stderr(&sy);

    let saved = line_with(&log, &["changes are saved to the state file"]);
    assert!(saved.contains(" INFO "), "{saved}");
    assert!(saved.contains("file=/"), "a path, unquoted: {saved}");

    let change = line_with(&log, &["table change", "server_added"]);
    for want in [
        " INFO ",
        "switchyard::upstream::table:",
        "upstream=demo ",
        &format!("server={added} "),
        "old=- ",
        "new=up",
    ] {
        assert!(change.contains(want), "no {want:?} in {change}");
    }
    for debug_syntax in ["Some(", "None", "\""] {
        assert!(
            !log.contains(debug_syntax),
            "{debug_syntax:?} in the log:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_log_format_json_every_line_is_an_object_with_its_fields() {
    let sy = Switchyard::demo_with(&["--log-format", "json"]);
    let added = add_server(sy.admin(), "demo").await;
    let log = plain_stderr(&sy);

    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 2, "{log}");
    for l in &lines {
        for key in ["timestamp", "level", "target"] {
            assert!(l[key].is_string(), "no {key} in {l}");
        }
        assert!(l["fields"]["message"].is_string(), "no message in {l}");
    }
    let change = lines
        .iter()
        .find(|l| l["fields"]["change"] == "server_added")
        .unwrap_or_else(|| panic!("no server_added line:\n{log}"));
    assert_eq!(change["level"], "INFO");
    assert_eq!(change["target"], "switchyard::upstream::table");
    assert_eq!(change["fields"]["message"], "table change");
    assert_eq!(change["fields"]["upstream"], "demo");
    assert_eq!(change["fields"]["server"], added.to_string());
    assert_eq!(change["fields"]["old"], "-");
    assert_eq!(change["fields"]["new"], "up");
    let ts = change["timestamp"].as_str().unwrap();
    assert!(ts.len() >= 20 && ts.ends_with('Z'), "RFC 3339 UTC: {ts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_warn_keeps_warnings_and_drops_info_lines() {
    let down = closed_port();
    let sy = Switchyard::run_config_with_admin_args(&config("", down), &["--log-level", "warn"], 1);
    add_server(sy.admin(), "app").await;
    // Nothing listens on the server's port: a 502, and a warning about it.
    let r = get(sy.addr(), "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    let log = plain_stderr(&sy);
    let failed = line_with(
        &log,
        &["upstream attempt failed", &format!("server={down} ")],
    );
    assert!(failed.contains(" WARN "), "{failed}");
    assert!(failed.contains("upstream=app "), "{failed}");
    assert!(
        !log.contains(" INFO ") && !log.contains("table change"),
        "info lines with --log-level warn:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_file_log_section_beats_rust_log_and_the_flags_beat_it() {
    // [log] level = "warn" over RUST_LOG=info: no info line.
    let file_only = Switchyard::run_config_with_admin(
        &config("[log]\nlevel = \"warn\"\nformat = \"json\"", closed_port()),
        1,
    );
    add_server(file_only.admin(), "app").await;
    let r = get(file_only.addr(), "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    let log = plain_stderr(&file_only);
    let levels: Vec<String> = log
        .lines()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            v["level"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(levels.contains(&"WARN".to_string()), "{log}");
    assert!(levels.iter().all(|l| l != "INFO"), "{log}");

    // The flags win over the file: info again, as text.
    let flags = Switchyard::run_config_with_admin_args(
        &config("[log]\nlevel = \"warn\"\nformat = \"json\"", closed_port()),
        &["--log-level", "info", "--log-format", "text"],
        1,
    );
    let added = add_server(flags.admin(), "app").await;
    let log = plain_stderr(&flags);
    let change = line_with(&log, &["table change", "server_added"]);
    assert!(change.contains(" INFO "), "{change}");
    assert!(change.contains(&format!("server={added} ")), "{change}");
    assert!(!log.trim_start().starts_with('{'), "text, not JSON:\n{log}");
}

#[test]
fn check_accepts_a_log_section_and_rejects_bad_values_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, text).unwrap();
        run_to_exit(
            &["check".into(), "-c".into(), path.display().to_string()],
            Duration::from_secs(30),
        )
    };
    let server = "127.0.0.1:9".parse().unwrap();

    let good = check(&config(
        "[log]\nformat = \"json\"\nlevel = \"warn,switchyard::admin=debug\"",
        server,
    ));
    assert!(good.status.success(), "{}", good.stderr);
    assert!(good.stdout.contains(": ok ("), "{}", good.stdout);

    let bad = check(&config(
        "[log]\nformat = \"yaml\"\nlevel = \"loud\"",
        server,
    ));
    assert!(!bad.status.success(), "{}", bad.stdout);
    assert!(
        bad.stderr
            .contains(":2:10: log: unknown format \"yaml\" (expected \"text\" or \"json\")"),
        "{}",
        bad.stderr
    );
    assert!(
        bad.stderr.contains(":3:9: log: bad log level \"loud\""),
        "{}",
        bad.stderr
    );
    assert!(bad.stderr.contains("2 problem(s) found"), "{}", bad.stderr);
}

#[test]
fn a_bad_log_flag_is_refused_before_anything_starts() {
    for args in [["--log-format", "yaml"], ["--log-level", "loud"]] {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["check", "-c", "/nonexistent.toml"].map(String::from));
        let out = run_to_exit(&all, Duration::from_secs(30));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!("invalid value '{}'", args[1])),
            "{args:?}: {}",
            out.stderr
        );
    }
}

#[test]
fn with_json_logs_the_reason_a_start_failed_is_a_json_line_too() {
    // The listener's port is taken: `run` stops with the reason.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    let text = format!(
        "[log]\nformat = \"json\"\n\n[[listener]]\nlisten = \"127.0.0.1:{port}\"\n\
         routes = [{{ upstream = \"app\" }}]\n\n[upstream.app]\nservers = [{{ addr = \"127.0.0.1:9\" }}]\n"
    );
    std::fs::write(&path, text).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["run".to_string(), "-c".into(), path.display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        run_to_exit(&args, Duration::from_secs(30))
    };

    let out = run(&[]);
    assert!(!out.status.success(), "{}", out.stderr);
    let lines: Vec<Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let last = lines.last().unwrap_or_else(|| panic!("nothing on stderr"));
    assert_eq!(last["level"], "ERROR", "{last}");
    assert_eq!(last["fields"]["message"], "switchyard stopped", "{last}");
    let error = last["fields"]["error"].as_str().unwrap();
    assert!(error.contains(&port.to_string()), "{error}");

    // Text, or errors filtered out: the plain line, never nothing.
    for extra in [&["--log-format", "text"][..], &["--log-level", "off"]] {
        let out = run(extra);
        assert!(!out.status.success(), "{extra:?}: {}", out.stderr);
        let last = out.stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("switchyard: ") && last.contains(&port.to_string()),
            "{extra:?}: {}",
            out.stderr
        );
    }
}
