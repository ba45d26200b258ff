//! Who may use the admin API, through the real binary and its `[admin]` config:
//! allow/deny rules by client address, a bearer token for changes, no changes
//! from forms or other sites' pages, read-only mode, and no exposed listener
//! without protection.

use crate::support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hyper::{Method, StatusCode};

use support::{Call, Switchyard, run_to_exit};

const TOKEN: &str = "a-token-of-24-characters";
const SERVER0: &str = "/api/v1/upstreams/app/servers/0";
const SERVERS: &str = "/api/v1/upstreams/app/servers";

fn config_text(admin: &str) -> String {
    format!(
        "[admin]\n{admin}\n\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ upstream = \"app\" }}]\n\n\
         [upstream.app]\nservers = [{{ addr = \"127.0.0.1:9\" }}]\n"
    )
}

/// The binary with `admin` as the body of its `[admin]` section; returns it and
/// the admin API's address.
fn start(admin: &str) -> (Switchyard, SocketAddr) {
    let sy = Switchyard::run_config(&config_text(admin), 1);
    let addr = sy.admin();
    (sy, addr)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The state of server 0 as the API shows it.
async fn state0(admin: SocketAddr) -> String {
    let r = Call::get(SERVER0).send(admin).await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    r.json["state"].as_str().unwrap().to_string()
}

async fn server_count(admin: SocketAddr) -> usize {
    let r = Call::get(SERVERS).send(admin).await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    r.json.as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_rules_allow_127_0_0_1_deny_all_a_client_from_127_0_0_2_gets_403_and_127_0_0_1_gets_200()
 {
    let (_sy, admin) =
        start("listen = \"127.0.0.1:0\"\nrules = [\"allow 127.0.0.1\", \"deny all\"]");
    let other = Call::get("/api/v1/upstreams")
        .from(ip("127.0.0.2"))
        .send(admin)
        .await;
    assert_eq!(other.status, StatusCode::FORBIDDEN, "{other}");
    assert_eq!(other.code(), "Forbidden");
    assert!(other.body.contains("127.0.0.2"), "{other}");
    assert_eq!(other.local.ip(), ip("127.0.0.2"));

    let write = Call::patch(SERVER0, r#"{"state": "down"}"#)
        .from(ip("127.0.0.2"))
        .send(admin)
        .await;
    assert_eq!(write.status, StatusCode::FORBIDDEN, "{write}");

    let allowed = Call::get("/api/v1/upstreams")
        .from(ip("127.0.0.1"))
        .send(admin)
        .await;
    assert_eq!(allowed.status, StatusCode::OK, "{allowed}");
    assert_eq!(allowed.json[0]["name"], "app");
    assert_eq!(
        state0(admin).await,
        "up",
        "the refused write changed nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_writes_need_the_right_bearer_token_and_reads_need_none() {
    let (_sy, admin) = start(&format!("listen = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\""));
    let body = r#"{"state": "down"}"#;

    let none = Call::patch(SERVER0, body).send(admin).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED, "{none}");
    assert_eq!(none.code(), "Unauthorized");

    let wrong = Call::patch(SERVER0, body)
        .bearer("not-the-token-at-all-xx")
        .send(admin)
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{wrong}");
    assert_eq!(wrong.code(), "Unauthorized");
    assert!(wrong.body.contains("not valid"), "{wrong}");

    let unsent_prefix = Call::patch(SERVER0, body)
        .header("authorization", TOKEN)
        .send(admin)
        .await;
    assert_eq!(
        unsent_prefix.status,
        StatusCode::UNAUTHORIZED,
        "{unsent_prefix}"
    );
    assert_eq!(state0(admin).await, "up", "refused writes changed nothing");

    let right = Call::patch(SERVER0, body).bearer(TOKEN).send(admin).await;
    assert_eq!(right.status, StatusCode::OK, "{right}");
    assert_eq!(right.json["state"], "down");

    // Reads need no token.
    let read = Call::get("/api/v1/upstreams/app").send(admin).await;
    assert_eq!(read.status, StatusCode::OK, "{read}");
    assert_eq!(read.json["servers"][0]["state"], "down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_encoded_write_is_415_and_changes_nothing() {
    let (_sy, admin) = start("listen = \"127.0.0.1:0\"");
    let form = "application/x-www-form-urlencoded";
    let add = Call::new(Method::POST, SERVERS)
        .body(form, "addr=127.0.0.1%3A10")
        .send(admin)
        .await;
    assert_eq!(add.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{add}");
    assert_eq!(add.code(), "JsonRequired");

    let patch = Call::new(Method::PATCH, SERVER0)
        .body(form, "state=down")
        .send(admin)
        .await;
    assert_eq!(patch.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{patch}");

    let batch = Call::new(Method::POST, "/api/v1/batch")
        .body(form, r#"{"operations": []}"#)
        .send(admin)
        .await;
    assert_eq!(batch.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{batch}");

    assert_eq!(server_count(admin).await, 1);
    assert_eq!(state0(admin).await, "up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_from_a_page_of_another_site_is_403_and_changes_nothing() {
    let (_sy, admin) = start("listen = \"127.0.0.1:0\"");
    let body = r#"{"state": "down"}"#;
    let evil = Call::patch(SERVER0, body)
        .header("origin", "http://evil.example")
        .send(admin)
        .await;
    assert_eq!(evil.status, StatusCode::FORBIDDEN, "{evil}");
    assert_eq!(evil.code(), "CrossSite");

    let fetch_meta = Call::patch(SERVER0, body)
        .header("sec-fetch-site", "cross-site")
        .send(admin)
        .await;
    assert_eq!(fetch_meta.status, StatusCode::FORBIDDEN, "{fetch_meta}");
    assert_eq!(state0(admin).await, "up");

    // A read from that page is still answered, and a same-origin write works.
    let read = Call::get(SERVER0)
        .header("origin", "http://evil.example")
        .send(admin)
        .await;
    assert_eq!(read.status, StatusCode::OK, "{read}");
    let same = Call::patch(SERVER0, body)
        .header("origin", &format!("http://{admin}"))
        .send(admin)
        .await;
    assert_eq!(same.status, StatusCode::OK, "{same}");
    assert_eq!(same.json["state"], "down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_refuses_every_write_with_405_and_still_answers_reads() {
    let (_sy, admin) = start("listen = \"127.0.0.1:0\"\nread_only = true");
    for call in [
        Call::patch(SERVER0, r#"{"state": "down"}"#),
        Call::post(SERVERS, r#"{"addr": "127.0.0.1:10"}"#),
        Call::delete(SERVER0),
        Call::delete("/api/v1/upstreams/app"),
        Call::post("/api/v1/upstreams", r#"{"name": "x"}"#),
        Call::post("/api/v1/batch", r#"{"operations": []}"#),
    ] {
        let label = format!("{call:?}");
        let r = call.send(admin).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{label}: {r}");
        assert_eq!(r.code(), "MethodDisabled", "{label}: {r}");
    }
    assert_eq!(server_count(admin).await, 1);
    assert_eq!(state0(admin).await, "up");
}

#[test]
fn an_admin_listener_on_all_interfaces_without_rules_or_token_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("switchyard.toml");
    std::fs::write(&cfg, config_text("listen = \"0.0.0.0:0\"")).unwrap();
    let args = vec!["run".to_string(), "-c".into(), cfg.display().to_string()];
    let out = run_to_exit(&args, Duration::from_secs(30));
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("0.0.0.0"), "{}", out.stderr);
    assert!(
        out.stderr.contains("no allow rules and no token"),
        "the message says why: {}",
        out.stderr
    );
    assert!(!out.stdout.contains("admin API on"), "{}", out.stdout);
    assert!(
        !out.stdout.contains("listening on"),
        "refused before any listener was bound: {}",
        out.stdout
    );
}
