//! The seed's `/ups_api` against the real binary: the three curl commands of the
//! OpenResty recipe (list, down, up), lists of servers all-or-none, every error
//! code, and denials in the seed's shape.

use crate::support;

use std::net::SocketAddr;

use hyper::{Method, StatusCode};
use serde_json::Value;
use support::{Backend, Reply, Switchyard, call, get, named};

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

fn json(r: &Reply) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body))
}

/// The demo's backend addresses, from its first line.
fn demo_backends(sy: &Switchyard) -> [String; 3] {
    let line = sy
        .stdout_lines()
        .into_iter()
        .find(|l| l.starts_with("switchyard demo: backends"))
        .expect("the demo names its backends");
    let find = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap()
            .to_string()
    };
    [find("alpha"), find("bravo"), find("charlie")]
}

/// `foo.com` over `backends`, with `[admin]` on port 0 plus `admin_extra`.
fn config(backends: &[&Backend], admin_extra: &str) -> String {
    let servers: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ addr = \"{}\" }}", b.addr))
        .collect();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{admin_extra}\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ path_prefix = \"/\", upstream = \"foo.com\" }}]\n\
         [upstream.\"foo.com\"]\nservers = [{}]\n",
        servers.join(", ")
    )
}

async fn post_form(admin: SocketAddr, path: &str, body: &str) -> Reply {
    call(admin, Method::POST, path, &[FORM], body).await
}

async fn list(admin: SocketAddr, ups: &str) -> Vec<Value> {
    let r = get(admin, &format!("/ups_api?act=list&ups={ups}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    json(&r).as_array().unwrap().clone()
}

fn assert_error(r: &Reply, status: StatusCode, code: &str) -> Value {
    assert_eq!(r.status, status, "{}", r.body);
    let v = json(r);
    assert_eq!(v["code"], code, "{v}");
    assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(v.get("data").is_some(), "{v}");
    v
}

#[tokio::test]
async fn seed_commands_list_down_and_up_on_the_demo() {
    let sy = Switchyard::demo();
    let (admin, proxy) = (sy.admin(), sy.addr());
    let [alpha, bravo, charlie] = demo_backends(&sy);

    // curl "http://ADMIN/ups_api?act=list&ups=demo"
    let servers = list(admin, "demo").await;
    assert_eq!(servers.len(), 3);
    let first = &servers[0];
    assert_eq!(first["name"], alpha.as_str());
    assert_eq!(first["addr"], alpha.as_str());
    assert_eq!(first["weight"], 2);
    assert_eq!(first["max_fails"], 1);
    assert!(first["fail_timeout"].is_u64(), "{first}");
    assert_eq!(first["backup"], false);
    assert_eq!(first["down"], false);
    assert_eq!(first["id"], 0);
    assert_eq!(first["state"], "up");
    assert_eq!(first["health"], "healthy");
    assert_eq!(servers[1]["name"], bravo.as_str());
    assert_eq!(servers[2]["name"], charlie.as_str());
    assert_eq!(servers[2]["backup"], true);

    // curl -X POST -d "server=ALPHA" "http://ADMIN/ups_api?act= down&ups=demo"
    let r = post_form(
        admin,
        "/ups_api?act=%20down&ups=demo",
        &format!("server={alpha}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let v = json(&r);
    assert_eq!(v["code"], "D002");
    assert_eq!(v["msg"], "set peer is success");
    assert_eq!(v["data"][0]["name"], alpha.as_str());
    assert_eq!(v["data"][0]["down"], true);
    assert_eq!(v["data"][0]["state"], "down");
    assert_eq!(list(admin, "demo").await[0]["down"], true);

    // The 2xx means every worker already routes by it: alpha answers nothing.
    for _ in 0..12 {
        let r = get(proxy, "/").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body.trim(), "bravo");
    }

    // ... and back up (`+` is how a form encodes the hand-typed space).
    let r = post_form(
        admin,
        "/ups_api?act=+up&ups=demo",
        &format!("server={alpha}"),
    )
    .await;
    assert_eq!(json(&r)["code"], "D002", "{}", r.body);
    assert_eq!(list(admin, "demo").await[0]["down"], false);
    let mut saw_alpha = false;
    for _ in 0..6 {
        saw_alpha |= get(proxy, "/").await.body.trim() == "alpha";
    }
    assert!(saw_alpha, "alpha is back in rotation");
}

#[tokio::test]
async fn after_down_the_proxy_sends_no_request_to_that_backend() {
    let (a, b) = (named("a").await, named("b").await);
    let sy = Switchyard::run_config_with_admin(&config(&[&a, &b], ""), 1);
    let (admin, proxy) = (sy.admin(), sy.addr());

    let r = post_form(
        admin,
        "/ups_api?ups=foo.com&act=down",
        &format!("server={}", a.addr),
    )
    .await;
    assert_eq!(json(&r)["code"], "D002", "{}", r.body);
    let before = a.hits();
    for _ in 0..20 {
        assert_eq!(get(proxy, "/").await.body, "b");
    }
    assert_eq!(a.hits(), before, "a got requests after it was set down");
    assert!(b.hits() >= 20);
}

#[tokio::test]
async fn lists_of_servers_change_together_or_not_at_all() {
    let (a, b, c) = (named("a").await, named("b").await, named("c").await);
    let sy = Switchyard::run_config_with_admin(&config(&[&a, &b, &c], ""), 1);
    let admin = sy.admin();
    let path = "/ups_api?ups=foo.com&act=down";

    // One bad server in the list: nothing changes, and the answer names it.
    let r = post_form(
        admin,
        path,
        &format!("server={},127.0.0.1:1,{}", a.addr, b.addr),
    )
    .await;
    let v = assert_error(&r, StatusCode::NOT_FOUND, "E004");
    assert!(v["msg"].as_str().unwrap().contains("127.0.0.1:1"), "{v}");
    assert_eq!(v["data"][0], "127.0.0.1:1");
    assert!(
        list(admin, "foo.com")
            .await
            .iter()
            .all(|s| s["down"] == false)
    );

    // A comma list and a repeated key, with spaces: all change in one step.
    let r = post_form(
        admin,
        path,
        &format!("server={}%2C+{}&server={}", a.addr, b.addr, c.addr),
    )
    .await;
    let v = json(&r);
    assert_eq!(v["code"], "D002", "{v}");
    assert_eq!(v["data"].as_array().unwrap().len(), 3);
    assert!(
        list(admin, "foo.com")
            .await
            .iter()
            .all(|s| s["down"] == true)
    );

    // `server` in the query string counts too (the Lua code reads both), and
    // ids name servers as well as addresses.
    let r = post_form(
        admin,
        &format!("/ups_api?ups=foo.com&act=up&server={}", a.addr),
        "server=1",
    )
    .await;
    assert_eq!(json(&r)["code"], "D002", "{}", r.body);
    let states: Vec<bool> = list(admin, "foo.com")
        .await
        .iter()
        .map(|s| s["down"].as_bool().unwrap())
        .collect();
    assert_eq!(states, [false, false, true]);

    // A form post without a Content-Type is read as a form too.
    let r = call(
        admin,
        Method::POST,
        "/ups_api?ups=foo.com&act=drain",
        &[],
        &format!("server={}", c.addr),
    )
    .await;
    let v = json(&r);
    assert_eq!(v["code"], "D002", "{v}");
    assert_eq!(v["data"][0]["state"], "drain");
    assert_eq!(v["data"][0]["down"], true);
}

#[tokio::test]
async fn every_error_has_its_code() {
    let a = named("a").await;
    let sy = Switchyard::run_config_with_admin(&config(&[&a], ""), 1);
    let admin = sy.admin();

    // E001: no server given (empty body, empty values, only commas).
    for body in ["", "server=", "server=+,+", "other=1"] {
        let r = post_form(admin, "/ups_api?ups=foo.com&act=down", body).await;
        let v = assert_error(&r, StatusCode::BAD_REQUEST, "E001");
        assert_eq!(v["msg"], "no server given");
    }
    // E003: unknown upstream, for list and for changes.
    let r = get(admin, "/ups_api?act=list&ups=nope").await;
    let v = assert_error(&r, StatusCode::NOT_FOUND, "E003");
    assert!(v["msg"].as_str().unwrap().contains("nope"));
    let r = post_form(admin, "/ups_api?ups=nope&act=down", "server=x:1").await;
    assert_error(&r, StatusCode::NOT_FOUND, "E003");
    // E004: unknown server, named.
    let r = post_form(admin, "/ups_api?ups=foo.com&act=up", "server=10.9.9.9:80").await;
    let v = assert_error(&r, StatusCode::NOT_FOUND, "E004");
    assert!(v["msg"].as_str().unwrap().contains("10.9.9.9:80"));
    // E005: bad act.
    let r = get(admin, "/ups_api?ups=foo.com&act=reboot").await;
    let v = assert_error(&r, StatusCode::BAD_REQUEST, "E005");
    assert!(v["msg"].as_str().unwrap().contains("reboot"));
    // E007: a change by GET (it would skip the write rules).
    let r = get(admin, "/ups_api?ups=foo.com&act=down&server=1").await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "E007");
    assert_eq!(list(admin, "foo.com").await[0]["down"], false);
    // E008: a body that is not a form.
    let r = call(
        admin,
        Method::POST,
        "/ups_api?ups=foo.com&act=down",
        &[("content-type", "application/json")],
        "{\"server\":\"x\"}",
    )
    .await;
    assert_error(&r, StatusCode::UNSUPPORTED_MEDIA_TYPE, "E008");
    // No ups or no act: the usage line, as plain text.
    for path in ["/ups_api", "/ups_api?ups=foo.com", "/ups_api?act=list"] {
        let r = get(admin, path).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}");
        assert!(
            r.body
                .starts_with("usage: /ups_api?ups=NAME&act=list|up|down|drain"),
            "{}",
            r.body
        );
        let ct = r.headers.get("content-type").unwrap().to_str().unwrap();
        assert!(ct.starts_with("text/plain"), "{ct}");
    }
}

#[tokio::test]
async fn denials_answer_in_the_seed_shape() {
    let a = named("a").await;
    let form = format!("server={}", a.addr);

    // read_only: list works, changes are refused with E006.
    let sy = Switchyard::run_config_with_admin(&config(&[&a], "read_only = true"), 1);
    let admin = sy.admin();
    assert_eq!(list(admin, "foo.com").await.len(), 1);
    let r = post_form(admin, "/ups_api?ups=foo.com&act=down", &form).await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "E006");
    drop(sy);

    // A token: changes need it.
    let token = "a-test-token-of-some-length";
    let sy = Switchyard::run_config_with_admin(&config(&[&a], &format!("token = \"{token}\"")), 1);
    let admin = sy.admin();
    let r = post_form(admin, "/ups_api?ups=foo.com&act=down", &form).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "E006");
    let auth = format!("Bearer {token}");
    let r = call(
        admin,
        Method::POST,
        "/ups_api?ups=foo.com&act=down",
        &[FORM, ("authorization", &auth)],
        &form,
    )
    .await;
    assert_eq!(json(&r)["code"], "D002", "{}", r.body);
    drop(sy);

    // A form posted by a page of another site (the CSRF case).
    let sy = Switchyard::run_config_with_admin(&config(&[&a], ""), 1);
    let admin = sy.admin();
    let r = call(
        admin,
        Method::POST,
        "/ups_api?ups=foo.com&act=down",
        &[FORM, ("origin", "https://evil.example")],
        &form,
    )
    .await;
    assert_error(&r, StatusCode::FORBIDDEN, "E006");
    let r = call(
        admin,
        Method::POST,
        "/ups_api?ups=foo.com&act=down",
        &[FORM, ("sec-fetch-site", "cross-site")],
        &form,
    )
    .await;
    assert_error(&r, StatusCode::FORBIDDEN, "E006");
    assert_eq!(list(admin, "foo.com").await[0]["down"], false);
}

#[test]
fn the_demos_try_lines_name_the_ports_it_really_bound() {
    // The demo started on port 0 everywhere: its suggestions must not say :0.
    let sy = Switchyard::demo();
    let admin = sy.admin();
    let proxy = sy.addr();
    let within = std::time::Duration::from_secs(30);
    let loop_line = sy.wait_line("  for i in 1 2 3 4 5 6; do curl -s http://", within);
    assert!(loop_line.starts_with(&format!("{proxy}/;")), "{loop_line}");
    let seed = sy.wait_line("  curl -s 'http://", within);
    assert!(seed.starts_with(&format!("{admin}/ups_api")), "{seed}");
    let dashboard = sy.wait_line("  open http://", within);
    assert!(dashboard.starts_with(&format!("{admin}/ ")), "{dashboard}");
}
