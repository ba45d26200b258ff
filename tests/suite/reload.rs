//! Hot reload through the real binary: `POST /api/v1/reload` and `SIGHUP`
//! re-read the configuration file and apply what changed in it, in place.

use crate::support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use support::*;

/// Where the child's configuration file is (beside its stderr log).
fn config_path(sy: &Switchyard) -> PathBuf {
    sy.stderr_path().with_file_name("switchyard.toml")
}

fn servers(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An admin API on port 0 and upstream `app` over `app`.
fn config(listeners: &str, app: &[SocketAddr], more: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n{listeners}\n[upstream.app]\nservers = [{}]\n{more}",
        servers(app)
    )
}

const ONE_LISTENER: &str =
    "[[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{ upstream = \"app\" }]\n";

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

async fn reload(admin: SocketAddr) -> ApiReply {
    Call::new(hyper::Method::POST, "/api/v1/reload")
        .send(admin)
        .await
}

async fn server_view(admin: SocketAddr, addr: SocketAddr) -> serde_json::Value {
    let r = Call::get("/api/v1/upstreams/app/servers").send(admin).await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    let list = r.json.as_array().cloned().unwrap_or_default();
    list.into_iter()
        .find(|s| s["addr"] == addr.to_string())
        .unwrap_or_else(|| panic!("no server {addr} in {}", r.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_merges_servers_keeping_id_admin_state_and_counters() {
    let a = named("a").await;
    let b = named("b").await;
    let c = named("c").await;
    let sy = Switchyard::run_config_with_admin(&config(ONE_LISTENER, &[a.addr, b.addr], ""), 1);
    let admin = sy.admin();
    for _ in 0..4 {
        assert_eq!(get(sy.addr(), "/").await.status, StatusCode::OK);
    }
    assert_eq!((a.hits(), b.hits()), (2, 2));
    let r = Call::patch("/api/v1/upstreams/app/servers/1", r#"{"state": "drain"}"#)
        .send(admin)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r}");

    // The file drops a and adds c; b stays.
    std::fs::write(
        config_path(&sy),
        config(ONE_LISTENER, &[b.addr, c.addr], ""),
    )
    .unwrap();
    let r = reload(admin).await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    assert_eq!(r.json["applied"].as_array().map(Vec::len), Some(2), "{r}");

    let kept = server_view(admin, b.addr).await;
    assert_eq!(kept["id"], 1, "{kept}");
    assert_eq!(kept["state"], "drain", "{kept}");
    assert_eq!(kept["requests"], 2, "{kept}");
    let added = server_view(admin, c.addr).await;
    assert_eq!(added["id"], 2, "{added}");

    for _ in 0..6 {
        let r = get(sy.addr(), "/").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, "c");
    }
    assert_eq!((a.hits(), b.hits(), c.hits()), (2, 2, 6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_opens_new_listeners_and_closes_removed_ones_after_in_flight_requests() {
    let app = named("app").await;
    let slow_backend = slow(Duration::from_millis(1500)).await;
    let two = "[[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{ upstream = \"app\" }]\n\
               [[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{ upstream = \"slow\" }]\n";
    let slow_up = format!(
        "[upstream.slow]\nservers = [{}]\n",
        servers(&[slow_backend.addr])
    );
    let sy = Switchyard::run_config_with_admin(&config(two, &[app.addr], &slow_up), 2);
    let admin = sy.admin();
    let (kept, removed) = (sy.addrs[0], sy.addrs[1]);

    let in_flight = tokio::spawn(async move { try_get(removed, "/slow").await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let new = free_port();
    let listeners = format!(
        "{ONE_LISTENER}[[listener]]\nlisten = \"{new}\"\nroutes = [{{ upstream = \"app\" }}]\n"
    );
    std::fs::write(config_path(&sy), config(&listeners, &[app.addr], &slow_up)).unwrap();
    let r = reload(admin).await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    assert_eq!(r.json["listeners_added"][0], new.to_string(), "{r}");
    assert_eq!(r.json["listeners_removed"][0], removed.to_string(), "{r}");
    assert_eq!(r.json["listeners_kept"][0], kept.to_string(), "{r}");

    // The new listener serves; the kept one too.
    assert_eq!(get(new, "/").await.body, "app");
    assert_eq!(get(kept, "/").await.body, "app");
    // The removed one refuses new connections...
    let deadline = Instant::now() + Duration::from_secs(3);
    while tokio::net::TcpStream::connect(removed).await.is_ok() {
        assert!(Instant::now() < deadline, "{removed} still accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...while the request in flight on it finishes.
    let done = in_flight.await.unwrap().unwrap();
    assert_eq!(done.status, StatusCode::OK);
    assert_eq!(done.body, "slow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_with_errors_is_rejected_whole_and_the_old_one_keeps_serving() {
    let a = named("a").await;
    let b = named("b").await;
    let sy = Switchyard::run_config_with_admin(&config(ONE_LISTENER, &[a.addr], ""), 1);
    let admin = sy.admin();
    // Two problems, and a valid change (b) that must not be applied either.
    let bad = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\n\
         routes = [{{ upstream = \"nope\" }}]\n\n[upstream.app]\nservers = [{{ addr = \"{}\", weight = 0 }}, {{ addr = \"{}\" }}]\n",
        a.addr, b.addr
    );
    std::fs::write(config_path(&sy), bad).unwrap();
    let r = reload(admin).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r}");
    assert_eq!(r.code(), "ReloadRejected");
    let problems = r.json["error"]["problems"].as_array().cloned().unwrap();
    assert!(problems.len() >= 2, "{r}");
    for p in &problems {
        let p = p.as_str().unwrap();
        assert!(p.contains("switchyard.toml:"), "{p}");
    }
    assert!(r.body.contains("nope"), "{r}");
    assert!(r.body.contains("weight"), "{r}");
    assert!(sy.stderr().contains("reload rejected"), "{}", sy.stderr());

    for _ in 0..4 {
        assert_eq!(get(sy.addr(), "/").await.body, "a");
    }
    assert_eq!(b.hits(), 0);
    let list = Call::get("/api/v1/upstreams/app/servers").send(admin).await;
    assert_eq!(list.json.as_array().map(Vec::len), Some(1), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_like_the_endpoint() {
    let a = named("a").await;
    let b = named("b").await;
    let sy = Switchyard::run_config_with_admin(&config(ONE_LISTENER, &[a.addr], ""), 1);
    assert_eq!(get(sy.addr(), "/").await.body, "a");
    std::fs::write(config_path(&sy), config(ONE_LISTENER, &[b.addr], "")).unwrap();
    let hup = |pid: u32| {
        let st = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    };
    hup(sy.pid());
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(sy.addr(), "/").await.body != "b" {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server_view(sy.admin(), b.addr).await["id"], 1);

    // A broken file: logged, and b keeps serving.
    std::fs::write(config_path(&sy), "[[listener]]\nlisten = 1\n").unwrap();
    hup(sy.pid());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sy.stderr().contains("reload rejected") {
        assert!(Instant::now() < deadline, "{}", sy.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(sy.addr(), "/").await.body, "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_config_file_reload_answers_409() {
    let a = named("a").await;
    let args: Vec<String> = [
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--to",
        &a.addr.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let sy = Switchyard::start_with_admin(&args, 1);
    let r = reload(sy.admin()).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{r}");
    assert_eq!(r.code(), "NoConfigFile");
}
