//! The native admin API (`/api/v1`) endpoint by endpoint: each success and each
//! error, with status and body. The proxy and the admin API run in-process over
//! one table, everything on 127.0.0.1 with kernel-picked ports.

use crate::support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::StatusCode;
use serde_json::{Value, json};

use support::{Backend, Call, InProcess, config, get, named, slow_logged, spawn_open_admin};
use switchyard::config::{Config, RouteConfig};

/// A proxy over upstream `default` (servers `a` and `b`, ids 0 and 1) and the
/// admin API over its table.
struct Rig {
    proxy: InProcess,
    admin: SocketAddr,
    a: Backend,
    b: Backend,
}

async fn rig() -> Rig {
    rig_with(|_| {}).await
}

async fn rig_with(tweak: impl FnOnce(&mut Config)) -> Rig {
    let (a, b) = (named("a").await, named("b").await);
    let mut cfg = config(vec![a.server(), b.server()]);
    tweak(&mut cfg);
    let proxy = InProcess::start(&cfg).await;
    let admin = spawn_open_admin(std::sync::Arc::clone(&proxy.table));
    Rig { proxy, admin, a, b }
}

const SERVERS: &str = "/api/v1/upstreams/default/servers";

fn server_path(s: impl std::fmt::Display) -> String {
    format!("{SERVERS}/{s}")
}

/// The ids and addresses of `default`'s servers, as the API lists them.
async fn listed(admin: SocketAddr) -> Vec<(u64, String, String)> {
    let r = Call::get(SERVERS).send(admin).await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    r.json
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_u64().unwrap(),
                s["addr"].as_str().unwrap().to_string(),
                s["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn is_json(r: &support::ApiReply) -> bool {
    r.header("content-type")
        .is_some_and(|v| v.starts_with("application/json"))
}

// ---------------------------------------------------------------------------
// Upstreams
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_upstreams_shows_every_upstream_with_its_servers() {
    let r = rig().await;
    let reply = Call::get("/api/v1/upstreams").send(r.admin).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply}");
    assert!(is_json(&reply));
    let list = reply.json.as_array().expect("a JSON array");
    assert_eq!(list.len(), 1, "{reply}");
    let up = &list[0];
    assert_eq!(up["name"], "default");
    assert_eq!(up["balance"], "round_robin");
    assert_eq!(up["eligible_servers"], 2);
    let servers = up["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2);
    assert_eq!(servers[0]["id"], 0);
    assert_eq!(servers[0]["addr"], r.a.addr.to_string());
    assert_eq!(servers[0]["state"], "up");
    assert_eq!(servers[0]["health"], "healthy");
    assert_eq!(servers[0]["eligible"], true);
    assert_eq!(servers[1]["id"], 1);
    assert_eq!(servers[1]["addr"], r.b.addr.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upstream_is_shown_by_name_and_an_unknown_name_is_404_upstream_not_found() {
    let r = rig().await;
    let ok = Call::get("/api/v1/upstreams/default").send(r.admin).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok}");
    assert_eq!(ok.json["name"], "default");
    assert_eq!(ok.json["servers"].as_array().unwrap().len(), 2);

    let missing = Call::get("/api/v1/upstreams/nope").send(r.admin).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{missing}");
    assert!(is_json(&missing));
    assert_eq!(missing.code(), "UpstreamNotFound");
    assert!(
        missing.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nope"),
        "{missing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_an_upstream_answers_201_with_its_location_and_creating_it_again_is_409() {
    let r = rig().await;
    let body = json!({
        "name": "api",
        "balance": "least_conn",
        "servers": [{ "addr": r.a.addr.to_string(), "weight": 3 }],
    })
    .to_string();
    let created = Call::post("/api/v1/upstreams", &body).send(r.admin).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created}");
    assert_eq!(created.header("location"), Some("/api/v1/upstreams/api"));
    assert_eq!(created.json["name"], "api");
    assert_eq!(created.json["balance"], "least_conn");
    assert_eq!(created.json["servers"][0]["id"], 0);
    assert_eq!(created.json["servers"][0]["weight"], 3);
    assert_eq!(created.json["servers"][0]["addr"], r.a.addr.to_string());

    let shown = Call::get("/api/v1/upstreams/api").send(r.admin).await;
    assert_eq!(shown.status, StatusCode::OK, "{shown}");
    assert_eq!(shown.json["balance"], "least_conn");

    let again = Call::post("/api/v1/upstreams", &body).send(r.admin).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{again}");
    assert_eq!(again.code(), "UpstreamExists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_an_upstream_with_an_unknown_balance_or_hash_without_key_is_422_and_creates_nothing()
 {
    let r = rig().await;
    let bad_balance = Call::post(
        "/api/v1/upstreams",
        r#"{"name": "x", "balance": "fastest"}"#,
    )
    .send(r.admin)
    .await;
    assert_eq!(
        bad_balance.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{bad_balance}"
    );
    assert_eq!(bad_balance.code(), "BadBalance");

    let no_key = Call::post("/api/v1/upstreams", r#"{"name": "x", "balance": "hash"}"#)
        .send(r.admin)
        .await;
    assert_eq!(no_key.status, StatusCode::UNPROCESSABLE_ENTITY, "{no_key}");
    assert_eq!(no_key.code(), "BadHashKey");

    let x = Call::get("/api/v1/upstreams/x").send(r.admin).await;
    assert_eq!(x.status, StatusCode::NOT_FOUND, "{x}");
    let all = Call::get("/api/v1/upstreams").send(r.admin).await;
    assert_eq!(all.json.as_array().unwrap().len(), 1, "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_to_an_upstream_that_does_not_exist_answers_502_until_the_api_creates_it() {
    let r = rig_with(|cfg| {
        cfg.listeners[0].routes.push(RouteConfig {
            host: None,
            path_prefix: Some("/fresh".into()),
            upstream: "fresh".into(),
            max_body_size: None,
            request_buffering: true,
        });
    })
    .await;
    let before = get(r.proxy.addr, "/fresh/x").await;
    assert_eq!(before.status, StatusCode::BAD_GATEWAY, "{}", before.body);

    let body = json!({ "name": "fresh", "servers": [{ "addr": r.b.addr.to_string() }] });
    let created = Call::post("/api/v1/upstreams", &body.to_string())
        .send(r.admin)
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created}");

    let after = get(r.proxy.addr, "/fresh/x").await;
    assert_eq!(after.status, StatusCode::OK, "{}", after.body);
    assert_eq!(after.body, "b");
    assert_eq!(r.b.seen().last().unwrap().path, "/fresh/x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_upstream_answers_204_and_its_route_then_answers_502() {
    let r = rig().await;
    assert_eq!(get(r.proxy.addr, "/").await.status, StatusCode::OK);

    let deleted = Call::delete("/api/v1/upstreams/default")
        .send(r.admin)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{deleted}");
    assert_eq!(deleted.body, "");

    let routed = get(r.proxy.addr, "/").await;
    assert_eq!(routed.status, StatusCode::BAD_GATEWAY, "{}", routed.body);
    let shown = Call::get("/api/v1/upstreams/default").send(r.admin).await;
    assert_eq!(shown.status, StatusCode::NOT_FOUND, "{shown}");
    assert_eq!(shown.code(), "UpstreamNotFound");
    let again = Call::delete("/api/v1/upstreams/default")
        .send(r.admin)
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND, "{again}");
    assert_eq!(again.code(), "UpstreamNotFound");
}

// ---------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_servers_shows_ids_addresses_and_states_and_an_unknown_upstream_is_404() {
    let r = rig().await;
    assert_eq!(
        listed(r.admin).await,
        vec![
            (0, r.a.addr.to_string(), "up".to_string()),
            (1, r.b.addr.to_string(), "up".to_string())
        ]
    );
    let missing = Call::get("/api/v1/upstreams/nope/servers")
        .send(r.admin)
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{missing}");
    assert_eq!(missing.code(), "UpstreamNotFound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_server_answers_201_with_its_location_and_new_id_and_it_takes_traffic() {
    let r = rig().await;
    let c = named("c").await;
    let body = json!({ "addr": c.addr.to_string(), "weight": 2 }).to_string();
    let added = Call::post(SERVERS, &body).send(r.admin).await;
    assert_eq!(added.status, StatusCode::CREATED, "{added}");
    assert_eq!(added.json["id"], 2);
    assert_eq!(added.json["addr"], c.addr.to_string());
    assert_eq!(added.json["weight"], 2);
    assert_eq!(added.json["state"], "up");
    let location = added.header("location").unwrap().to_string();
    assert_eq!(location, server_path(2));

    let shown = Call::get(&location).send(r.admin).await;
    assert_eq!(shown.status, StatusCode::OK, "{shown}");
    assert_eq!(shown.json["addr"], c.addr.to_string());

    // Round robin over weights 1, 1, 2: four requests reach c twice.
    for _ in 0..4 {
        assert_eq!(get(r.proxy.addr, "/").await.status, StatusCode::OK);
    }
    assert_eq!(c.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_server_that_is_already_there_is_409_server_exists() {
    let r = rig().await;
    let body = json!({ "addr": r.a.addr.to_string() }).to_string();
    let dup = Call::post(SERVERS, &body).send(r.admin).await;
    assert_eq!(dup.status, StatusCode::CONFLICT, "{dup}");
    assert_eq!(dup.code(), "ServerExists");
    assert_eq!(listed(r.admin).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_server_with_a_bad_address_or_weight_is_422_and_adds_nothing() {
    let r = rig().await;
    for (body, code) in [
        (r#"{"addr": "not an address"}"#, "BadAddress"),
        (r#"{"addr": "127.0.0.1"}"#, "BadAddress"),
        (r#"{"addr": "127.0.0.1:9", "weight": 0}"#, "BadWeight"),
        (r#"{"addr": "127.0.0.1:9", "weight": 1001}"#, "BadWeight"),
    ] {
        let reply = Call::post(SERVERS, body).send(r.admin).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {reply}"
        );
        assert_eq!(reply.code(), code, "{body}: {reply}");
    }
    assert_eq!(listed(r.admin).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_json_or_has_an_unknown_field_is_400() {
    let r = rig().await;
    let broken = Call::post(SERVERS, r#"{"addr": "127.0.0.1:9""#)
        .send(r.admin)
        .await;
    assert_eq!(broken.status, StatusCode::BAD_REQUEST, "{broken}");
    assert_eq!(broken.code(), "BadRequest");

    let unknown = Call::post(SERVERS, r#"{"addr": "127.0.0.1:9", "colour": "red"}"#)
        .send(r.admin)
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST, "{unknown}");
    assert_eq!(unknown.code(), "BadRequest");
    assert!(unknown.body.contains("colour"), "{unknown}");

    let patch_unknown = Call::patch(&server_path(0), r#"{"state": "down", "colour": 1}"#)
        .send(r.admin)
        .await;
    assert_eq!(
        patch_unknown.status,
        StatusCode::BAD_REQUEST,
        "{patch_unknown}"
    );
    assert_eq!(listed(r.admin).await[0].2, "up");
    assert_eq!(listed(r.admin).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_without_a_json_content_type_is_415_and_changes_nothing() {
    let r = rig().await;
    let body = r#"{"addr": "127.0.0.1:9"}"#;
    let plain = Call::new(hyper::Method::POST, SERVERS)
        .body("text/plain", body)
        .send(r.admin)
        .await;
    assert_eq!(plain.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{plain}");
    assert_eq!(plain.code(), "JsonRequired");

    let untyped = Call::new(hyper::Method::POST, SERVERS);
    let untyped = untyped.body("", body);
    let untyped = untyped.send(r.admin).await;
    assert_eq!(
        untyped.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "{untyped}"
    );
    assert_eq!(listed(r.admin).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_is_found_by_id_and_by_address_and_an_unknown_one_is_404_server_not_found() {
    let r = rig().await;
    let by_id = Call::get(&server_path(1)).send(r.admin).await;
    assert_eq!(by_id.status, StatusCode::OK, "{by_id}");
    assert_eq!(by_id.json["id"], 1);
    assert_eq!(by_id.json["addr"], r.b.addr.to_string());

    let by_addr = Call::get(&server_path(r.b.addr)).send(r.admin).await;
    assert_eq!(by_addr.status, StatusCode::OK, "{by_addr}");
    assert_eq!(by_addr.json["id"], 1);

    for missing in [server_path(7), server_path("127.0.0.1:1")] {
        let reply = Call::get(&missing).send(r.admin).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{missing}: {reply}");
        assert_eq!(reply.code(), "ServerNotFound", "{reply}");
    }
    let other = Call::get("/api/v1/upstreams/nope/servers/0")
        .send(r.admin)
        .await;
    assert_eq!(other.code(), "UpstreamNotFound", "{other}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patching_a_server_changes_the_fields_it_names_and_keeps_the_others() {
    let r = rig().await;
    let path = server_path(0);
    let steps: [(&str, &str, Value); 7] = [
        (r#"{"state": "down"}"#, "state", json!("down")),
        (r#"{"weight": 7}"#, "weight", json!(7)),
        (r#"{"max_conns": 10}"#, "max_conns", json!(10)),
        (r#"{"max_fails": 4}"#, "max_fails", json!(4)),
        (r#"{"fail_timeout": "30s"}"#, "fail_timeout", json!("30s")),
        (r#"{"backup": true}"#, "backup", json!(true)),
        (r#"{"state": "up"}"#, "state", json!("up")),
    ];
    let mut expected = Call::get(&path).send(r.admin).await.json;
    for (body, field, value) in steps {
        let reply = Call::patch(&path, body).send(r.admin).await;
        assert_eq!(reply.status, StatusCode::OK, "{body}: {reply}");
        expected[field] = value;
        for f in [
            "id",
            "addr",
            "state",
            "weight",
            "max_conns",
            "max_fails",
            "fail_timeout",
            "backup",
        ] {
            assert_eq!(
                reply.json[f], expected[f],
                "after {body}, field {f}: {reply}"
            );
        }
        let shown = Call::get(&path).send(r.admin).await;
        assert_eq!(shown.json[field], expected[field], "GET after {body}");
    }
    // The last step set it `up` again, and as a backup it is not picked while b is.
    let eligible = Call::get("/api/v1/upstreams/default").send(r.admin).await;
    assert_eq!(eligible.json["servers"][0]["backup"], true);
    assert_eq!(get(r.proxy.addr, "/").await.body, "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patching_with_nothing_to_change_or_a_bad_weight_is_422_and_changes_nothing() {
    let r = rig().await;
    let path = server_path(0);
    let empty = Call::patch(&path, "{}").send(r.admin).await;
    assert_eq!(empty.status, StatusCode::UNPROCESSABLE_ENTITY, "{empty}");
    assert_eq!(empty.code(), "NothingToChange");

    for w in [0, 1001] {
        let bad = Call::patch(&path, &format!(r#"{{"weight": {w}, "state": "down"}}"#))
            .send(r.admin)
            .await;
        assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert_eq!(bad.code(), "BadWeight");
    }
    let shown = Call::get(&path).send(r.admin).await;
    assert_eq!(shown.json["weight"], 1);
    assert_eq!(
        shown.json["state"], "up",
        "a refused patch changes no field"
    );

    let missing = Call::patch(&server_path(9), r#"{"state": "down"}"#)
        .send(r.admin)
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{missing}");
    assert_eq!(missing.code(), "ServerNotFound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_server_answers_with_the_removed_server_and_it_gets_no_more_traffic() {
    let r = rig().await;
    let removed = Call::delete(&server_path(r.a.addr)).send(r.admin).await;
    assert_eq!(removed.status, StatusCode::OK, "{removed}");
    assert_eq!(removed.json["id"], 0);
    assert_eq!(removed.json["addr"], r.a.addr.to_string());
    assert_eq!(
        listed(r.admin).await,
        vec![(1, r.b.addr.to_string(), "up".into())]
    );

    let hits = r.a.hits();
    for _ in 0..4 {
        assert_eq!(get(r.proxy.addr, "/").await.body, "b");
    }
    assert_eq!(r.a.hits(), hits);

    let again = Call::delete(&server_path(0)).send(r.admin).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND, "{again}");
    assert_eq!(again.code(), "ServerNotFound");
}

// ---------------------------------------------------------------------------
// Batch, limits, unknown paths
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_third_operation_fails_answers_its_index_2_and_changes_nothing() {
    let r = rig().await;
    let before = Call::get("/api/v1/upstreams").send(r.admin).await.json;
    let batch = json!({ "operations": [
        { "op": "patch", "upstream": "default", "server": 0, "set": { "state": "down" } },
        { "op": "add", "upstream": "default", "server": { "addr": "127.0.0.1:9" } },
        { "op": "patch", "upstream": "default", "server": 42, "set": { "weight": 3 } },
        { "op": "remove", "upstream": "default", "server": 1 },
    ]});
    let refused = Call::post("/api/v1/batch", &batch.to_string())
        .send(r.admin)
        .await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND, "{refused}");
    assert_eq!(refused.code(), "ServerNotFound");
    assert_eq!(refused.json["error"]["index"], 2, "{refused}");

    let after = Call::get("/api/v1/upstreams").send(r.admin).await.json;
    let summary = |v: &Value| -> Vec<(Value, Value, Value, Value)> {
        v[0]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["id"].clone(),
                    s["addr"].clone(),
                    s["state"].clone(),
                    s["weight"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(
        summary(&after),
        summary(&before),
        "nothing of the batch applied"
    );
    assert_eq!(after[0]["servers"][0]["state"], "up");

    // The same batch without the bad operation applies all of it at once.
    let good = json!({ "operations": [
        { "op": "patch", "upstream": "default", "server": 0, "set": { "state": "down" } },
        { "op": "add", "upstream": "default", "server": { "addr": "127.0.0.1:9" } },
        { "op": "remove", "upstream": "default", "server": r.b.addr.to_string() },
    ]});
    let applied = Call::post("/api/v1/batch", &good.to_string())
        .send(r.admin)
        .await;
    assert_eq!(applied.status, StatusCode::OK, "{applied}");
    assert_eq!(applied.json["applied"], 3);
    assert_eq!(applied.json["servers"].as_array().unwrap().len(), 3);
    assert_eq!(
        listed(r.admin).await,
        vec![
            (0, r.a.addr.to_string(), "down".into()),
            (2, "127.0.0.1:9".into(), "up".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_a_bad_operation_body_names_its_index() {
    let r = rig().await;
    let batch = json!({ "operations": [
        { "op": "patch", "upstream": "default", "server": 0, "set": { "state": "down" } },
        { "op": "patch", "upstream": "default", "server": 1, "set": {} },
    ]});
    let refused = Call::post("/api/v1/batch", &batch.to_string())
        .send(r.admin)
        .await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{refused}"
    );
    assert_eq!(refused.code(), "NothingToChange");
    assert_eq!(refused.json["error"]["index"], 1);
    assert_eq!(listed(r.admin).await[0].2, "up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_one_mebibyte_is_413_and_changes_nothing() {
    let r = rig().await;
    let padding = "x".repeat(switchyard::admin::MAX_BODY + 1);
    let body = format!(r#"{{"addr": "127.0.0.1:9", "pad": "{padding}"}}"#);
    let reply = Call::post(SERVERS, &body).send(r.admin).await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.status
    );
    assert_eq!(reply.code(), "BodyRejected", "{reply}");
    assert_eq!(listed(r.admin).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_path_is_404_with_a_json_error() {
    let r = rig().await;
    // (`/` is the dashboard page.)
    for path in ["/api/v1/nope", "/nope", "/api/v1/upstreams/default/x"] {
        let reply = Call::get(path).send(r.admin).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}: {reply}");
        assert!(is_json(&reply), "{path}: {reply:?}");
        assert_eq!(reply.code(), "NotFound", "{path}: {reply}");
    }
    // Other versions under /api/ belong to the NGINX Plus layer, which answers in
    // its own error shape.
    let reply = Call::get("/api/v2/upstreams").send(r.admin).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply}");
    assert!(
        reply.json["error"]["code"] == "UnknownVersion",
        "NGINX-shaped error expected: {reply}"
    );
}

// ---------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------

/// One server-sent event: its `event:` type and `data:` as JSON.
async fn next_event(
    body: &mut hyper::body::Incoming,
    buf: &mut String,
    within: Duration,
) -> (String, Value) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut kind = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            return (kind, serde_json::from_str(&data).unwrap());
        }
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .expect("an event within the time limit")
            .expect("the stream is still open")
            .unwrap();
        if let Some(d) = frame.data_ref() {
            buf.push_str(&String::from_utf8_lossy(d));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_reports_each_change_with_old_and_new_value_and_the_clients_address() {
    let r = rig().await;
    let (resp, _) = Call::get("/api/v1/events").start(r.admin).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut body = resp.into_body();
    let mut buf = String::new();

    // The handler subscribed before it answered, so this change is on the stream.
    let patched = Call::patch(&server_path(0), r#"{"state": "down"}"#)
        .send(r.admin)
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{patched}");
    let (kind, ev) = next_event(&mut body, &mut buf, Duration::from_secs(10)).await;
    assert_eq!(kind, "state", "{ev}");
    assert_eq!(ev["change"], "state");
    assert_eq!(ev["old"], "up");
    assert_eq!(ev["new"], "down");
    assert_eq!(ev["upstream"], "default");
    assert_eq!(ev["id"], 0);
    assert_eq!(ev["server"], r.a.addr.to_string());
    assert_eq!(ev["origin"], patched.local.to_string(), "{ev}");
    let first_seq = ev["seq"].as_u64().unwrap();

    let added = Call::post(SERVERS, r#"{"addr": "127.0.0.1:9"}"#)
        .send(r.admin)
        .await;
    assert_eq!(added.status, StatusCode::CREATED, "{added}");
    let (kind, ev) = next_event(&mut body, &mut buf, Duration::from_secs(10)).await;
    assert_eq!(kind, "server_added", "{ev}");
    assert_eq!(ev["new"], "up");
    assert_eq!(ev["id"], 2);
    assert_eq!(ev["server"], "127.0.0.1:9");
    assert_eq!(ev["origin"], added.local.to_string());
    assert_eq!(ev["seq"].as_u64().unwrap(), first_seq + 1);
}

// ---------------------------------------------------------------------------
// Drain and wait
// ---------------------------------------------------------------------------

/// A proxy whose only server answers after about a second, the admin API over
/// it, and one request through it that the server has received.
async fn slow_in_flight() -> (
    InProcess,
    SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<Instant>>>,
    tokio::task::JoinHandle<support::Reply>,
    Backend,
) {
    let (backend, answered) = slow_logged(Duration::from_secs(1)).await;
    let proxy = InProcess::start(&config(vec![backend.server()])).await;
    let admin = spawn_open_admin(std::sync::Arc::clone(&proxy.table));
    let addr = proxy.addr;
    let request = tokio::spawn(async move { get(addr, "/slow").await });
    backend.wait_hits(1, Duration::from_secs(10)).await;
    (proxy, admin, answered, request, backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_with_wait_answers_200_only_after_the_request_in_flight_finished() {
    let (_proxy, admin, answered, request, _backend) = slow_in_flight().await;
    let sent = Instant::now();
    assert!(answered.lock().unwrap().is_empty(), "still in flight");
    let reply = Call::patch(
        &format!("{}?wait=10s", server_path(0)),
        r#"{"state": "drain"}"#,
    )
    .send(admin)
    .await;
    let returned = Instant::now();
    assert_eq!(reply.status, StatusCode::OK, "{reply}");
    assert_eq!(reply.json["state"], "drain");
    assert_eq!(reply.json["active"], 0, "{reply}");

    let slow = request.await.unwrap();
    assert_eq!(slow.status, StatusCode::OK);
    assert_eq!(slow.body, "slow");
    let backend_answered = answered.lock().unwrap()[0];
    assert!(
        sent < backend_answered && backend_answered < returned,
        "the PATCH was sent while the request was in flight and answered after it ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_with_a_wait_shorter_than_the_request_answers_202_with_the_count_in_flight() {
    let (_proxy, admin, answered, request, _backend) = slow_in_flight().await;
    let reply = Call::patch(
        &format!("{}?wait=100ms", server_path(0)),
        r#"{"state": "drain"}"#,
    )
    .send(admin)
    .await;
    let returned = Instant::now();
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply}");
    assert_eq!(reply.json["state"], "drain");
    assert!(reply.json["active"].as_u64().unwrap() >= 1, "{reply}");

    // The drained request still finishes, after the PATCH's answer.
    let slow = request.await.unwrap();
    assert_eq!(slow.status, StatusCode::OK);
    assert_eq!(slow.body, "slow");
    assert!(answered.lock().unwrap()[0] > returned);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_wait_duration_is_422_and_changes_nothing() {
    let r = rig().await;
    let reply = Call::patch(
        &format!("{}?wait=soon", server_path(0)),
        r#"{"state": "drain"}"#,
    )
    .send(r.admin)
    .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
    assert_eq!(reply.code(), "BadDuration");
    assert_eq!(listed(r.admin).await[0].2, "up");
}
