//! The NGINX Plus API (versions 4–9) against the real binary: version and
//! endpoint lists, upstream and peer objects, the servers round trip
//! (POST/GET/PATCH/DELETE), trailing slashes, bodies without a Content-Type,
//! `?fields=`, immutable fields, error bodies and codes, statistics reset, and
//! denials in the NGINX shape.

use crate::support;

use std::net::SocketAddr;

use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Backend, Reply, Switchyard, call, get, named};

fn body(r: &Reply) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body))
}

/// Checks an NGINX-style error and returns its `error` object.
fn assert_error(r: &Reply, status: StatusCode, code: &str) -> Value {
    assert_eq!(r.status, status, "{}", r.body);
    let v = body(r);
    assert_eq!(v["error"]["status"], status.as_u16(), "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(
        v["error"]["text"].as_str().is_some_and(|t| !t.is_empty()),
        "{v}"
    );
    let id = v["request_id"].as_str().unwrap();
    assert!(
        !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(
        v["href"],
        "https://nginx.org/en/docs/http/ngx_http_api_module.html"
    );
    v["error"].clone()
}

async fn send(admin: SocketAddr, method: Method, path: &str, json_body: &str) -> Reply {
    // Like many NGINX Plus clients: no Content-Type at all.
    call(admin, method, path, &[], json_body).await
}

fn config(backends: &[&Backend], admin_extra: &str) -> String {
    let servers: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ addr = \"{}\" }}", b.addr))
        .collect();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{admin_extra}\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ path_prefix = \"/\", upstream = \"app\" }}]\n\
         [upstream.app]\nservers = [{}]\n",
        servers.join(", ")
    )
}

#[tokio::test]
async fn versions_and_endpoint_lists_with_and_without_trailing_slash() {
    let sy = Switchyard::demo();
    let admin = sy.admin();
    for path in ["/api", "/api/"] {
        let r = get(admin, path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(body(&r), json!([4, 5, 6, 7, 8, 9]));
    }
    for v in 4..=9 {
        for path in [format!("/api/{v}"), format!("/api/{v}/")] {
            assert_eq!(
                body(&get(admin, &path).await),
                json!(["nginx", "connections", "http"]),
                "{path}"
            );
        }
        for path in [format!("/api/{v}/http"), format!("/api/{v}/http/")] {
            assert_eq!(
                body(&get(admin, &path).await),
                json!(["requests", "server_zones", "upstreams"]),
                "{path}"
            );
        }
    }
}

#[tokio::test]
async fn unknown_versions_paths_and_methods() {
    let sy = Switchyard::demo();
    let admin = sy.admin();
    let mut ids = Vec::new();
    for path in [
        "/api/3/http/upstreams",
        "/api/10/",
        "/api/abc",
        "/api/2/http/upstreams/demo/servers",
    ] {
        let r = get(admin, path).await;
        assert_error(&r, StatusCode::NOT_FOUND, "UnknownVersion");
        ids.push(body(&r)["request_id"].as_str().unwrap().to_string());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "request ids are unique");

    let r = get(admin, "/api/9/stream/upstreams").await;
    assert_error(&r, StatusCode::NOT_FOUND, "PathNotFound");
    let r = send(admin, Method::POST, "/api/9/http/upstreams", "{}").await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "MethodNotSupported");
    let r = send(
        admin,
        Method::PUT,
        "/api/9/http/upstreams/demo/servers/0",
        "{}",
    )
    .await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "MethodNotSupported");

    // The native API keeps its own 404 shape.
    let r = get(admin, "/api/v1/nothing/here").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(body(&r)["error"]["code"], "NotFound");
    assert_eq!(get(admin, "/api/v1/upstreams").await.status, StatusCode::OK);
}

#[tokio::test]
async fn upstreams_map_and_peer_objects() {
    let sy = Switchyard::demo();
    let (admin, proxy) = (sy.admin(), sy.addr());
    for _ in 0..3 {
        assert_eq!(get(proxy, "/").await.status, StatusCode::OK);
    }
    for path in ["/api/9/http/upstreams", "/api/9/http/upstreams/"] {
        let v = body(&get(admin, path).await);
        let demo = &v["demo"];
        assert_eq!(demo["zone"], "demo", "{v}");
        assert_eq!(demo["zombies"], 0);
        assert!(demo["keepalive"].is_u64());
        assert_eq!(demo["peers"].as_array().unwrap().len(), 3);
    }
    let up = body(&get(admin, "/api/8/http/upstreams/demo/").await);
    let peers = up["peers"].as_array().unwrap();
    let p = &peers[0];
    for key in [
        "id",
        "server",
        "name",
        "backup",
        "weight",
        "state",
        "active",
        "max_conns",
        "requests",
        "responses",
        "sent",
        "received",
        "fails",
        "unavail",
        "health_checks",
        "downtime",
    ] {
        assert!(p.get(key).is_some(), "peer lacks {key}: {p}");
    }
    assert_eq!(p["id"], 0);
    assert_eq!(p["state"], "up");
    assert_eq!(p["weight"], 2);
    assert_eq!(peers[2]["backup"], true);
    for class in ["1xx", "2xx", "3xx", "4xx", "5xx", "codes", "total"] {
        assert!(p["responses"].get(class).is_some(), "{p}");
    }
    let total: u64 = peers.iter().map(|p| p["requests"].as_u64().unwrap()).sum();
    assert_eq!(total, 3);
    let r2: u64 = peers
        .iter()
        .map(|p| p["responses"]["2xx"].as_u64().unwrap())
        .sum();
    assert_eq!(r2, 3);
    assert_eq!(p["health_checks"]["checks"], 0);

    let r = get(admin, "/api/9/http/upstreams/nope").await;
    let e = assert_error(&r, StatusCode::NOT_FOUND, "UpstreamNotFound");
    assert!(e["text"].as_str().unwrap().contains("nope"));
}

#[tokio::test]
async fn servers_round_trip_without_content_type() {
    let sy = Switchyard::demo();
    let (admin, proxy) = (sy.admin(), sy.addr());
    let extra = named("extra").await;
    let base = "/api/9/http/upstreams/demo/servers";

    let list = body(&get(admin, base).await);
    assert_eq!(list.as_array().unwrap().len(), 3);
    let first = &list[0];
    assert_eq!(first["id"], 0);
    assert_eq!(first["weight"], 2);
    assert_eq!(first["fail_timeout"], "10s");
    assert_eq!(first["slow_start"], "0s");
    assert_eq!(first["route"], "");
    assert_eq!(first["backup"], false);
    assert_eq!(first["down"], false);
    assert!(first.get("drain").is_none());

    // POST: 201 with the created object.
    let new = format!(
        "{{\"server\":\"{}\",\"weight\":3,\"max_fails\":2,\"fail_timeout\":\"5s\"}}",
        extra.addr
    );
    let r = send(admin, Method::POST, &format!("{base}/"), &new).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let created = body(&r);
    assert_eq!(created["id"], 3);
    assert_eq!(created["server"], extra.addr.to_string());
    assert_eq!(created["weight"], 3);
    assert_eq!(created["max_fails"], 2);
    assert_eq!(created["fail_timeout"], "5s");
    assert_eq!(created["down"], false);
    assert_eq!(body(&get(admin, &format!("{base}/3")).await), created);
    assert_eq!(body(&get(admin, base).await).as_array().unwrap().len(), 4);

    // A duplicate is 409.
    let r = send(admin, Method::POST, base, &new).await;
    assert_error(&r, StatusCode::CONFLICT, "EntryExists");

    // PATCH: 200 with the updated object; down → state down.
    let r = send(
        admin,
        Method::PATCH,
        &format!("{base}/0/"),
        "{\"down\":true,\"weight\":5}",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let v = body(&r);
    assert_eq!(
        (v["down"].clone(), v["weight"].clone()),
        (json!(true), json!(5))
    );
    let native = body(&get(admin, "/api/v1/upstreams/demo/servers/0").await);
    assert_eq!(native["state"], "down");
    let peers = body(&get(admin, "/api/9/http/upstreams/demo").await)["peers"].clone();
    assert_eq!(peers[0]["state"], "down");
    assert!(peers[0]["downstart"].is_string(), "{}", peers[0]);
    // No request reaches the server that was set down.
    for _ in 0..6 {
        assert_ne!(get(proxy, "/").await.body.trim(), "alpha");
    }

    // drain → draining; down:false → up.
    let v = body(
        &send(
            admin,
            Method::PATCH,
            &format!("{base}/0"),
            "{\"drain\":true}",
        )
        .await,
    );
    assert_eq!(
        (v["drain"].clone(), v["down"].clone()),
        (json!(true), json!(false))
    );
    let peers = body(&get(admin, "/api/9/http/upstreams/demo").await)["peers"].clone();
    assert_eq!(peers[0]["state"], "draining");
    let v = body(
        &send(
            admin,
            Method::PATCH,
            &format!("{base}/0"),
            "{\"down\":false}",
        )
        .await,
    );
    assert_eq!(v["down"], false);
    assert!(v.get("drain").is_none());
    assert_eq!(
        body(&get(admin, "/api/v1/upstreams/demo/servers/0").await)["state"],
        "up"
    );

    // DELETE: 200 with the remaining servers.
    let r = send(admin, Method::DELETE, &format!("{base}/3"), "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let left = body(&r);
    let ids: Vec<u64> = left
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [0, 1, 2]);
    let r = get(admin, &format!("{base}/3")).await;
    assert_error(&r, StatusCode::NOT_FOUND, "UpstreamServerNotFound");
    let r = send(admin, Method::DELETE, &format!("{base}/3"), "").await;
    assert_error(&r, StatusCode::NOT_FOUND, "UpstreamServerNotFound");
    let r = send(admin, Method::PATCH, &format!("{base}/x"), "{}").await;
    assert_error(&r, StatusCode::NOT_FOUND, "UpstreamServerNotFound");
    let r = get(admin, "/api/9/http/upstreams/nope/servers").await;
    assert_error(&r, StatusCode::NOT_FOUND, "UpstreamNotFound");
}

#[tokio::test]
async fn bad_bodies_are_refused_and_change_nothing() {
    let sy = Switchyard::demo();
    let admin = sy.admin();
    let base = "/api/9/http/upstreams/demo/servers";
    let cases = [
        ("{not json", StatusCode::UNSUPPORTED_MEDIA_TYPE, "JsonError"),
        ("[1]", StatusCode::BAD_REQUEST, "UpstreamConfFormatError"),
        (
            "{\"weight\":1}",
            StatusCode::BAD_REQUEST,
            "UpstreamConfFormatError",
        ),
        (
            "{\"server\":\"127.0.0.1:99999\"}",
            StatusCode::BAD_REQUEST,
            "UpstreamBadAddress",
        ),
        (
            "{\"server\":\"127.0.0.1:1\",\"weight\":0}",
            StatusCode::BAD_REQUEST,
            "UpstreamBadWeight",
        ),
        (
            "{\"server\":\"127.0.0.1:1\",\"colour\":\"red\"}",
            StatusCode::BAD_REQUEST,
            "UpstreamConfFormatError",
        ),
        (
            "{\"server\":\"127.0.0.1:1\",\"id\":7}",
            StatusCode::BAD_REQUEST,
            "UpstreamConfFormatError",
        ),
    ];
    for (json_body, status, code) in cases {
        let r = send(admin, Method::POST, base, json_body).await;
        assert_error(&r, status, code);
    }
    let r = send(
        admin,
        Method::POST,
        "/api/9/http/upstreams/nope/servers",
        "{\"server\":\"127.0.0.1:1\"}",
    )
    .await;
    assert_error(&r, StatusCode::NOT_FOUND, "UpstreamNotFound");
    assert_eq!(body(&get(admin, base).await).as_array().unwrap().len(), 3);

    let r = send(
        admin,
        Method::PATCH,
        &format!("{base}/1"),
        "{\"weight\":1001}",
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "UpstreamBadWeight");
    let r = send(admin, Method::PATCH, &format!("{base}/1"), "nope").await;
    assert_error(&r, StatusCode::UNSUPPORTED_MEDIA_TYPE, "JsonError");
    assert_eq!(body(&get(admin, &format!("{base}/1")).await)["weight"], 1);
}

#[tokio::test]
async fn immutable_fields_cannot_be_patched() {
    let sy = Switchyard::demo();
    let admin = sy.admin();
    let path = "/api/9/http/upstreams/demo/servers/1";
    let before = body(&get(admin, path).await);
    for change in [
        "{\"id\":5}",
        "{\"backup\":true}",
        "{\"service\":\"_http._tcp\"}",
        "{\"backup\":true,\"weight\":9}",
    ] {
        let r = send(admin, Method::PATCH, path, change).await;
        let e = assert_error(&r, StatusCode::BAD_REQUEST, "UpstreamServerImmutable");
        assert!(e["text"].as_str().unwrap().contains("cannot be changed"));
    }
    assert_eq!(body(&get(admin, path).await), before);
    // Sending back what was fetched (same id and backup) is fine.
    let r = send(admin, Method::PATCH, path, &before.to_string()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(body(&r), before);
}

#[tokio::test]
async fn fields_limit_what_is_returned() {
    let sy = Switchyard::demo();
    let admin = sy.admin();
    let v = body(&get(admin, "/api/9/http/upstreams/demo/servers?fields=id,server").await);
    for s in v.as_array().unwrap() {
        let keys: Vec<&String> = s.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["id", "server"], "{s}");
    }
    let v = body(&get(admin, "/api/9/http/upstreams?fields=zone").await);
    assert_eq!(v, json!({"demo": {"zone": "demo"}}));
    let v = body(&get(admin, "/api/9/http/upstreams/demo/?fields=zone,zombies").await);
    assert_eq!(v, json!({"zombies": 0, "zone": "demo"}));
    let v = body(&get(admin, "/api/9/http/upstreams/demo/servers/2?fields=backup").await);
    assert_eq!(v, json!({"backup": true}));
}

#[tokio::test]
async fn delete_upstream_resets_its_statistics_only() {
    let sy = Switchyard::demo();
    let (admin, proxy) = (sy.admin(), sy.addr());
    for _ in 0..6 {
        assert_eq!(get(proxy, "/").await.status, StatusCode::OK);
    }
    let requests = |v: &Value| -> u64 {
        v["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["requests"].as_u64().unwrap())
            .sum()
    };
    let up = body(&get(admin, "/api/9/http/upstreams/demo").await);
    assert_eq!(requests(&up), 6);

    let r = send(admin, Method::DELETE, "/api/9/http/upstreams/demo/", "").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert!(r.body.is_empty());
    let up = body(&get(admin, "/api/9/http/upstreams/demo").await);
    assert_eq!(requests(&up), 0);
    assert_eq!(up["peers"][0]["responses"]["total"], 0);
    // The table is as it was.
    assert_eq!(up["peers"].as_array().unwrap().len(), 3);
    assert_eq!(get(proxy, "/").await.status, StatusCode::OK);

    let r = send(admin, Method::DELETE, "/api/9/http/upstreams/nope", "").await;
    assert_error(&r, StatusCode::NOT_FOUND, "UpstreamNotFound");
}

#[tokio::test]
async fn denials_answer_in_the_nginx_shape() {
    let a = named("a").await;
    let path = "/api/9/http/upstreams/app/servers/0";

    let sy = Switchyard::run_config_with_admin(&config(&[&a], "read_only = true"), 1);
    let admin = sy.admin();
    assert_eq!(get(admin, path).await.status, StatusCode::OK);
    let r = send(admin, Method::PATCH, path, "{\"down\":true}").await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "MethodDisabled");
    let r = send(admin, Method::DELETE, "/api/9/http/upstreams/app", "").await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "MethodDisabled");
    // The native API keeps its own shape.
    let r = call(
        admin,
        Method::PATCH,
        "/api/v1/upstreams/app/servers/0",
        &[("content-type", "application/json")],
        "{\"state\":\"down\"}",
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body(&r)["error"]["code"], "MethodDisabled");
    assert!(body(&r).get("request_id").is_none());
    drop(sy);

    let sy = Switchyard::run_config_with_admin(&config(&[&a], ""), 1);
    let admin = sy.admin();
    let r = call(
        admin,
        Method::PATCH,
        path,
        &[("origin", "https://evil.example")],
        "{\"down\":true}",
    )
    .await;
    assert_error(&r, StatusCode::FORBIDDEN, "CrossSite");
    assert_eq!(body(&get(admin, path).await)["down"], false);
}
