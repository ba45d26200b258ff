//! Changes made through the admin API survive `kill -9`: the binary runs with
//! `--state-file`, is killed with SIGKILL right after a change's 2xx, and comes
//! back with the same table. A torn temporary file is ignored; a corrupt state
//! file stops the start unless `--discard-bad-state` sets it aside.

use crate::support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::StatusCode;
use serde_json::json;

use support::{Backend, Call, ServerRow, Switchyard, get, named, run_to_exit, server_row};

const SERVERS: &str = "/api/v1/upstreams/app/servers";

/// A config file (upstream `app` over `servers`, admin on 127.0.0.1:0) and the
/// path for the state file, in `dir`.
fn setup(dir: &Path, servers: &[SocketAddr]) -> (PathBuf, PathBuf) {
    let list: Vec<String> = servers
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect();
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ upstream = \"app\" }}]\n\n\
         [upstream.app]\nservers = [{}]\n",
        list.join(", ")
    );
    let cfg = dir.join("switchyard.toml");
    std::fs::write(&cfg, text).unwrap();
    (cfg, dir.join("state.json"))
}

fn args(cfg: &Path, state: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "run".to_string(),
        "-c".into(),
        cfg.display().to_string(),
        "--state-file".into(),
        state.display().to_string(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// `app`'s servers as (id, addr, state, weight).
async fn table(admin: SocketAddr) -> Vec<ServerRow> {
    let r = Call::get(SERVERS).send(admin).await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    r.json.as_array().unwrap().iter().map(server_row).collect()
}

async fn add(admin: SocketAddr, addr: &str) -> u64 {
    let r = Call::post(SERVERS, &json!({ "addr": addr }).to_string())
        .send(admin)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r}");
    r.json["id"].as_u64().unwrap()
}

async fn set_state(admin: SocketAddr, id: u64, state: &str) {
    let r = Call::patch(
        &format!("{SERVERS}/{id}"),
        &json!({ "state": state }).to_string(),
    )
    .send(admin)
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    assert_eq!(r.json["state"], state);
}

fn backends_row(b: &Backend, id: u64, state: &str) -> (u64, String, String, u64) {
    (id, b.addr.to_string(), state.to_string(), 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_answered_2xx_survive_kill_9_and_ids_continue_after_restart() {
    let (a, b, c) = (named("a").await, named("b").await, named("c").await);
    let dir = tempfile::tempdir().unwrap();
    let (cfg, state) = setup(dir.path(), &[a.addr, b.addr]);
    let args = args(&cfg, &state, &[]);

    let mut first = Switchyard::start(&args, 1);
    let admin = first.admin();
    // id 2 is handed out and its server removed again: 2 must not come back.
    assert_eq!(add(admin, "127.0.0.1:9").await, 2);
    let r = Call::delete(&format!("{SERVERS}/2")).send(admin).await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    set_state(admin, 0, "down").await;
    assert_eq!(add(admin, &c.addr.to_string()).await, 3);
    first.kill_9();

    let expected = vec![
        backends_row(&a, 0, "down"),
        backends_row(&b, 1, "up"),
        backends_row(&c, 3, "up"),
    ];
    let second = Switchyard::start(&args, 1);
    let admin = second.admin();
    assert_eq!(table(admin).await, expected);
    assert_eq!(
        add(admin, "127.0.0.1:10").await,
        4,
        "the next id continues after the highest ever handed out"
    );
    // And traffic follows the restored table: a is down.
    for _ in 0..6 {
        let r = get(second.addr(), "/").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_ne!(r.body, "a");
    }
    assert_eq!(a.hits(), 0);
    assert!(b.hits() > 0 && c.hits() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_temp_file_beside_the_state_file_does_not_confuse_the_start() {
    let (a, b) = (named("a").await, named("b").await);
    let dir = tempfile::tempdir().unwrap();
    let (cfg, state) = setup(dir.path(), &[a.addr, b.addr]);
    let args = args(&cfg, &state, &[]);

    let mut first = Switchyard::start(&args, 1);
    set_state(first.admin(), 1, "drain").await;
    first.kill_9();
    // As if a crash had cut a save short after writing part of the temp file.
    let temp = dir.path().join("state.json.tmp");
    std::fs::write(&temp, b"{\"version\": 1, \"upstreams\": {\"app\": {\"sett").unwrap();

    let second = Switchyard::start(&args, 1);
    let admin = second.admin();
    assert_eq!(
        table(admin).await,
        vec![backends_row(&a, 0, "up"), backends_row(&b, 1, "drain")]
    );
    // The next save goes through and replaces the stray file.
    assert_eq!(add(admin, "127.0.0.1:9").await, 2);
    assert!(
        !temp.exists(),
        "the torn temp file was replaced by the save"
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(
        saved["upstreams"]["app"]["servers"][2]["addr"],
        "127.0.0.1:9"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_stops_the_start_naming_the_file_and_discard_bad_state_sets_it_aside()
{
    let (a, b) = (named("a").await, named("b").await);
    let dir = tempfile::tempdir().unwrap();
    let (cfg, state) = setup(dir.path(), &[a.addr, b.addr]);
    let garbage = "{ this is not a state file";
    std::fs::write(&state, garbage).unwrap();

    let refused = run_to_exit(&args(&cfg, &state, &[]), Duration::from_secs(30));
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        refused.stderr.contains(&state.display().to_string()),
        "the message names the file: {}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("--discard-bad-state"),
        "{}",
        refused.stderr
    );
    assert!(
        !refused.stdout.contains("listening on"),
        "nothing listened: {}",
        refused.stdout
    );
    assert_eq!(
        std::fs::read_to_string(&state).unwrap(),
        garbage,
        "left as it was"
    );

    let started = Switchyard::start(&args(&cfg, &state, &["--discard-bad-state"]), 1);
    let admin = started.admin();
    assert_eq!(
        table(admin).await,
        vec![backends_row(&a, 0, "up"), backends_row(&b, 1, "up")],
        "the table comes from the config"
    );
    let aside: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("state.json.bad-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read_to_string(&aside[0]).unwrap(), garbage);

    // Changes are saved to the state file again.
    set_state(admin, 0, "down").await;
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["upstreams"]["app"]["servers"][0]["state"], "down");
}
