//! State file faults: when the state cannot be written, the API answers 5xx with
//! the reason and the table in memory is not changed (no split brain between
//! memory and disk), and it works again once the fault is gone.

use crate::support;

use hyper::{Method, StatusCode};
use support::{Switchyard, call, get, named};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_cannot_be_saved_answers_500_and_changes_nothing() {
    let alpha = named("alpha").await;
    let bravo = named("bravo").await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s.json");
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
state_file = "{}"

[[listener]]
listen = "127.0.0.1:0"
routes = [{{ upstream = "app" }}]

[upstream.app]
servers = [{{ addr = "{}" }}, {{ addr = "{}" }}]
"#,
        state.display(),
        alpha.addr,
        bravo.addr
    );
    let sy = Switchyard::run_config(&config, 1);
    let admin = sy.admin();
    let json = [("content-type", "application/json")];

    // A first change is saved.
    let ok = call(
        admin,
        Method::PATCH,
        "/api/v1/upstreams/app/servers/1",
        &json,
        r#"{"weight":3}"#,
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    let saved = std::fs::read(&state).unwrap();

    // The fault: the temporary file's place is taken by a directory, so the
    // write fails as on a full or read-only disk (permissions do not stop root).
    let temp = dir.path().join("s.json.tmp");
    std::fs::create_dir(&temp).unwrap();
    let refused = call(
        admin,
        Method::PATCH,
        "/api/v1/upstreams/app/servers/0",
        &json,
        r#"{"state":"down"}"#,
    )
    .await;
    assert_eq!(
        refused.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        refused.body
    );
    assert!(refused.body.contains("StateNotSaved"), "{}", refused.body);
    assert!(
        refused.body.contains("s.json"),
        "the reason names the file: {}",
        refused.body
    );

    // Memory: unchanged (server 0 still up and still taking traffic); disk:
    // unchanged.
    let server = get(admin, "/api/v1/upstreams/app/servers/0").await;
    assert!(server.body.contains(r#""state":"up""#), "{}", server.body);
    let mut seen_alpha = false;
    for _ in 0..4 {
        seen_alpha |= get(sy.addr(), "/").await.body == "alpha";
    }
    assert!(seen_alpha, "the refused `down` must not be in force");
    assert_eq!(std::fs::read(&state).unwrap(), saved);
    // The other doors refuse the same way.
    let seed = call(
        admin,
        Method::POST,
        "/ups_api?ups=app&act=down",
        &[("content-type", "application/x-www-form-urlencoded")],
        &format!("server={}", alpha.addr),
    )
    .await;
    assert!(
        seed.status.is_server_error(),
        "{} {}",
        seed.status,
        seed.body
    );
    let plus = call(
        admin,
        Method::PATCH,
        "/api/9/http/upstreams/app/servers/0",
        &json,
        r#"{"down":true}"#,
    )
    .await;
    assert!(
        plus.status.is_server_error(),
        "{} {}",
        plus.status,
        plus.body
    );
    assert_eq!(std::fs::read(&state).unwrap(), saved);

    // The fault goes away: the same change is accepted, saved and in force.
    std::fs::remove_dir(&temp).unwrap();
    let ok = call(
        admin,
        Method::PATCH,
        "/api/v1/upstreams/app/servers/0",
        &json,
        r#"{"state":"down"}"#,
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert!(
        String::from_utf8(std::fs::read(&state).unwrap())
            .unwrap()
            .contains(r#""state": "down""#)
    );
    for _ in 0..4 {
        assert_eq!(get(sy.addr(), "/").await.body, "bravo");
    }
}
