//! `switchyard ctl` against the real binary: a `switchyard demo` child process
//! (three backends answering with their names), changed through `ctl` run as a
//! subprocess; the effect is checked through the proxy and `list --json`.

use crate::support;

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use support::{Switchyard, closed_port, get, never_answers};

const READY_WITHIN: Duration = Duration::from_secs(30);

/// A running demo and where its parts are.
struct Demo {
    _child: Switchyard,
    _dir: tempfile::TempDir,
    proxy: SocketAddr,
    admin: String,
    alpha: String,
    bravo: String,
    charlie: String,
}

fn demo() -> Demo {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s.json");
    let args: Vec<String> = [
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--backend-ports",
        "0,0,0",
        "--state-file",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([state.to_string_lossy().into_owned()])
    .collect();
    let child = Switchyard::start(&args, 1);
    let admin = format!(
        "http://{}",
        child
            .wait_line("switchyard: admin API on http://", READY_WITHIN)
            .trim()
    );
    // "alpha=A bravo=B charlie=C (backup)"
    let line = child.wait_line("switchyard demo: backends ", READY_WITHIN);
    let backend = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
            .to_string()
    };
    Demo {
        proxy: child.addr(),
        alpha: backend("alpha"),
        bravo: backend("bravo"),
        charlie: backend("charlie"),
        admin,
        _child: child,
        _dir: dir,
    }
}

/// `switchyard ctl ARGS...` with a clean environment plus `env`, run to the end.
fn ctl_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("ctl")
        .args(args)
        .env_remove("SWITCHYARD_ADMIN")
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// `switchyard ctl --admin ADMIN ARGS...`, run to the end.
fn ctl(admin: &str, args: &[&str]) -> Output {
    let mut all = vec!["--admin", admin];
    all.extend_from_slice(args);
    ctl_env(&all, &[])
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit code, showing both streams if it differs.
fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

impl Demo {
    fn ctl(&self, args: &[&str]) -> Output {
        ctl(&self.admin, args)
    }

    /// The servers of `demo` as `list demo --json` shows them.
    fn servers(&self) -> Vec<Value> {
        let o = self.ctl(&["list", "demo", "--json"]);
        assert_exit(&o, 0);
        let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
        v["servers"].as_array().unwrap().clone()
    }

    fn server(&self, addr: &str) -> Option<Value> {
        self.servers().into_iter().find(|s| s["addr"] == addr)
    }

    /// Which backends answered `n` requests through the proxy.
    async fn answers(&self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            let r = get(self.proxy, "/").await;
            assert_eq!(r.status, 200, "{r:?}");
            out.push(r.body.trim().to_string());
        }
        out
    }
}

#[test]
fn list_shows_the_three_demo_servers() {
    let d = demo();
    let o = d.ctl(&["list", "demo"]);
    assert_exit(&o, 0);
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    for col in [
        "UPSTREAM", "ID", "ADDR", "WEIGHT", "STATE", "HEALTH", "ELIGIBLE",
    ] {
        assert!(lines[0].contains(col), "{text}");
    }
    for (line, addr) in lines[1..].iter().zip([&d.alpha, &d.bravo, &d.charlie]) {
        assert!(line.starts_with("demo"), "{text}");
        assert!(line.contains(addr.as_str()), "{text}");
        assert!(line.contains(" up "), "{text}");
    }
    assert!(lines[3].ends_with("backup"), "{text}");
    assert!(!lines[1].contains("backup"), "{text}");

    // Without an upstream: every upstream (the demo has one).
    let all = d.ctl(&["list"]);
    assert_exit(&all, 0);
    assert_eq!(stdout(&all), text);
}

#[tokio::test]
async fn down_takes_a_server_out_of_traffic_and_up_brings_it_back() {
    let d = demo();
    assert!(d.answers(6).await.contains(&"alpha".to_string()));

    let o = d.ctl(&["down", "demo", &d.alpha]);
    assert_exit(&o, 0);
    assert!(stdout(&o).contains(d.alpha.as_str()), "{}", stdout(&o));
    assert!(stdout(&o).contains("up -> down"), "{}", stdout(&o));

    let after = d.answers(9).await;
    assert!(after.iter().all(|b| b == "bravo"), "{after:?}");
    let alpha = d.server(&d.alpha).unwrap();
    assert_eq!(alpha["state"], "down");
    assert_eq!(alpha["eligible"], false);

    let o = d.ctl(&["up", "demo", &d.alpha]);
    assert_exit(&o, 0);
    assert!(stdout(&o).contains("down -> up"), "{}", stdout(&o));
    assert_eq!(d.server(&d.alpha).unwrap()["state"], "up");
    assert!(d.answers(6).await.contains(&"alpha".to_string()));
}

#[tokio::test]
async fn several_servers_change_all_or_none() {
    let d = demo();
    // One unknown server: nothing changes, exit 1, and the argument is named.
    let o = d.ctl(&["down", "demo", &d.alpha, "127.0.0.1:1"]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("ServerNotFound"), "{}", stderr(&o));
    assert!(stderr(&o).contains("127.0.0.1:1"), "{}", stderr(&o));
    assert_eq!(d.server(&d.alpha).unwrap()["state"], "up");

    // Both primaries (one by id, one by address): the backup takes over.
    let bravo_id = d.server(&d.bravo).unwrap()["id"].to_string();
    let o = d.ctl(&["down", "demo", &d.alpha, &bravo_id]);
    assert_exit(&o, 0);
    assert_eq!(stdout(&o).lines().count(), 2, "{}", stdout(&o));
    let after = d.answers(4).await;
    assert!(after.iter().all(|b| b == "charlie"), "{after:?}");
}

#[test]
fn add_weight_remove_round_trip() {
    let d = demo();
    let addr = closed_port().to_string();
    let o = d.ctl(&["add", "demo", &addr, "--weight", "3", "--down"]);
    assert_exit(&o, 0);
    let id = stdout(&o).trim().to_string();
    assert!(id.parse::<u32>().is_ok(), "not an id: {id:?}");
    let added = d.server(&addr).unwrap();
    assert_eq!(added["id"].to_string(), id);
    assert_eq!(added["weight"], 3);
    assert_eq!(added["state"], "down");

    let o = d.ctl(&["weight", "demo", &id, "7"]);
    assert_exit(&o, 0);
    assert!(stdout(&o).contains("weight 3 -> 7"), "{}", stdout(&o));
    assert_eq!(d.server(&addr).unwrap()["weight"], 7);

    let o = d.ctl(&["weight", "demo", &addr, "0"]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("BadWeight"), "{}", stderr(&o));

    let o = d.ctl(&["remove", "demo", &addr]);
    assert_exit(&o, 0);
    assert!(stdout(&o).contains("removed"), "{}", stdout(&o));
    assert!(d.server(&addr).is_none());
    assert_eq!(d.servers().len(), 3);
}

#[test]
fn unknown_upstream_exits_1_with_the_error_code() {
    let d = demo();
    for args in [
        &["list", "nope"][..],
        &["down", "nope", "1"],
        &["add", "nope", "127.0.0.1:9"],
    ] {
        let o = d.ctl(args);
        assert_exit(&o, 1);
        assert!(stderr(&o).contains("UpstreamNotFound"), "{}", stderr(&o));
        assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    }
}

#[test]
fn unreachable_admin_exits_3_naming_the_url() {
    let url = format!("http://{}", closed_port());
    let o = ctl(&url, &["list"]);
    assert_exit(&o, 3);
    assert!(stderr(&o).contains(&url), "{}", stderr(&o));
}

#[test]
fn usage_errors_exit_2() {
    let o = ctl("https://127.0.0.1:1", &["list"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("https"), "{}", stderr(&o));
    let o = ctl("http://127.0.0.1:1", &["down", "demo"]);
    assert_exit(&o, 2);
}

#[test]
fn drain_wait_on_an_idle_server_exits_0() {
    let d = demo();
    let o = d.ctl(&["drain", "demo", &d.bravo, "--wait", "5s"]);
    assert_exit(&o, 0);
    assert!(stdout(&o).contains("up -> drain"), "{}", stdout(&o));
    assert!(stdout(&o).contains("idle"), "{}", stdout(&o));
    assert_eq!(d.server(&d.bravo).unwrap()["state"], "drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_wait_that_runs_out_exits_4() {
    let d = demo();
    // The demo's health check would hold a server that never answers in
    // `checking` (and its probes would count as hits): take the check off.
    let admin: SocketAddr = d.admin.trim_start_matches("http://").parse().unwrap();
    let off = support::call(
        admin,
        hyper::Method::DELETE,
        "/api/v1/upstreams/demo/health_check",
        &[],
        "",
    )
    .await;
    assert_eq!(off.status, 204);
    let stuck = never_answers().await;
    let addr = stuck.addr.to_string();
    assert_exit(&d.ctl(&["add", "demo", &addr]), 0);
    assert_exit(&d.ctl(&["down", "demo", &d.alpha, &d.bravo]), 0);
    let proxy = d.proxy;
    let pending = tokio::spawn(async move { support::try_get(proxy, "/").await });
    stuck.wait_hits(1, Duration::from_secs(10)).await;

    let o = d.ctl(&["drain", "demo", &addr, "--wait", "300ms"]);
    assert_exit(&o, 4);
    assert!(
        stderr(&o).contains("still 1 request(s) in flight"),
        "{}",
        stderr(&o)
    );
    pending.abort();
}

#[test]
fn token_is_sent_from_the_flag_or_the_environment() {
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
token = "s3cret-s3cret-s3cret"

[[listener]]
listen = "127.0.0.1:0"
routes = [{{ path_prefix = "/", upstream = "app" }}]

[upstream.app]
servers = [{{ addr = "{}" }}]
"#,
        closed_port()
    );
    let child = Switchyard::run_config(&config, 1);
    let admin = format!(
        "http://{}",
        child
            .wait_line("switchyard: admin API on http://", READY_WITHIN)
            .trim()
    );

    // Reading needs no token; changing does.
    assert_exit(&ctl(&admin, &["list", "app"]), 0);
    let o = ctl(&admin, &["down", "app", "0"]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("Unauthorized"), "{}", stderr(&o));
    let o = ctl(&admin, &["--token", "wrong", "down", "app", "0"]);
    assert_exit(&o, 1);

    let o = ctl(
        &admin,
        &["--token", "s3cret-s3cret-s3cret", "down", "app", "0"],
    );
    assert_exit(&o, 0);
    let o = ctl_env(
        &["up", "app", "0"],
        &[
            ("SWITCHYARD_ADMIN", admin.as_str()),
            ("SWITCHYARD_ADMIN_TOKEN", "s3cret-s3cret-s3cret"),
        ],
    );
    assert_exit(&o, 0);
    assert!(stdout(&o).contains("down -> up"), "{}", stdout(&o));
}
