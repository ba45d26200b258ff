//! IPv6 end to end, through the real binary, on the loopback `::1` only: a
//! listener and an admin API on `[::1]:0`, servers on `[::1]`, admin `allow`
//! rules with IPv6 CIDRs, routes by an IPv6 host, the status page and metrics,
//! the NGINX Plus door and the seed's `/ups_api` with `[::1]:PORT` addresses,
//! the native API and `ctl` naming a server by such an address, and the
//! one-line `proxy`.
//!
//! Where the machine has no IPv6 loopback, every test says so on stderr and
//! passes without checking anything.

use crate::support;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Backend, Call, Reply, Switchyard, call, named_on, run_to_exit};

const LOOPBACK: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);
const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

/// Whether `[::1]` can be bound here; if not, says so (the caller then skips).
fn ipv6_loopback(test: &str) -> bool {
    match std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("{test}: SKIPPED: no IPv6 loopback here (cannot bind [::1]:0: {e})");
            false
        }
    }
}

/// A backend on `[::1]` answering with its name.
async fn backend(name: &'static str) -> Backend {
    let l = tokio::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0))
        .await
        .unwrap();
    named_on(l, name)
}

/// An admin API on `[::1]:0` with `admin` in its section, a listener on
/// `[::1]:0` routing `routes`, and upstream `six` over `servers`.
fn config(admin: &str, routes: &str, servers: &[&Backend], more: &str) -> String {
    let servers: Vec<String> = servers
        .iter()
        .map(|b| format!("{{ addr = \"{}\" }}", b.addr))
        .collect();
    format!(
        "[admin]\nlisten = \"[::1]:0\"\n{admin}\n\n\
         [[listener]]\nlisten = \"[::1]:0\"\nroutes = [{routes}]\n\n\
         [upstream.six]\nservers = [{}]\n{more}",
        servers.join(", ")
    )
}

const ALL_TO_SIX: &str = "{ path_prefix = \"/\", upstream = \"six\" }";

fn start(admin: &str, servers: &[&Backend]) -> Switchyard {
    let sy = Switchyard::run_config_with_admin(&config(admin, ALL_TO_SIX, servers, ""), 1);
    assert!(sy.addr().is_ipv6(), "listening on {}", sy.addr());
    assert!(sy.admin().is_ipv6(), "admin API on {}", sy.admin());
    sy
}

fn body(r: &Reply) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body))
}

/// The bodies of `n` GETs through the proxy.
async fn answers(proxy: SocketAddr, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let r = support::get(proxy, "/").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        out.push(r.body);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v6_listener_balances_over_v6_servers_and_says_who_the_client_was() {
    if !ipv6_loopback("a_v6_listener_balances_over_v6_servers_and_says_who_the_client_was") {
        return;
    }
    let (a, b) = (backend("a").await, backend("b").await);
    let sy = start("", &[&a, &b]);
    let mut got = answers(sy.addr(), 4).await;
    got.sort();
    assert_eq!(got, ["a", "a", "b", "b"]);
    let seen = a.seen();
    let h = &seen[0].headers;
    assert_eq!(h["x-forwarded-for"], "::1");
    assert_eq!(h["x-real-ip"], "::1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_line_proxy_listens_and_forwards_on_v6() {
    if !ipv6_loopback("the_one_line_proxy_listens_and_forwards_on_v6") {
        return;
    }
    let (a, b) = (backend("a").await, backend("b").await);
    let args: Vec<String> = ["proxy", "--listen", "[::1]:0", "--to"]
        .iter()
        .map(|s| s.to_string())
        .chain([a.addr.to_string(), "--to".into(), b.addr.to_string()])
        .collect();
    let sy = Switchyard::start(&args, 1);
    assert!(sy.addr().is_ipv6(), "listening on {}", sy.addr());
    let mut got = answers(sy.addr(), 2).await;
    got.sort();
    assert_eq!(got, ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_for_the_host_of_an_ipv6_url_matches_it() {
    if !ipv6_loopback("a_route_for_the_host_of_an_ipv6_url_matches_it") {
        return;
    }
    let (a, b) = (backend("a").await, backend("b").await);
    // `host` as in a URL's authority ("[::1]"), and anything else to `other`.
    let routes =
        "{ host = \"[::1]\", upstream = \"six\" }, { path_prefix = \"/\", upstream = \"other\" }";
    let more = format!(
        "[upstream.other]\nservers = [{{ addr = \"{}\" }}]\n",
        b.addr
    );
    let sy = Switchyard::run_config_with_admin(&config("", routes, &[&a], &more), 1);
    // `call` sends `Host: [::1]:PORT`, as a client of http://[::1]:PORT/ does.
    let r = call(sy.addr(), Method::GET, "/", &[], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, "a", "Host: {}", sy.addr());
    // Without the port, too; another host goes elsewhere.
    let r = call(sy.addr(), Method::GET, "/", &[("host", "[::1]")], "").await;
    assert_eq!(r.body, "a");
    let r = support::get(sy.addr(), "/").await;
    assert_eq!(r.body, "b", "Host: localhost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_metrics_and_health_checks_speak_v6_addresses() {
    if !ipv6_loopback("the_status_page_metrics_and_health_checks_speak_v6_addresses") {
        return;
    }
    let a = backend("a").await;
    let check =
        "health_check = { type = \"http\", path = \"/\", interval = \"100ms\", rise = 1 }\n";
    let sy = Switchyard::run_config_with_admin(&config("", ALL_TO_SIX, &[&a], check), 1);
    let admin = sy.admin();
    // The checks reach [::1] and pass.
    let v = support::wait_view(admin, "six", 0, Duration::from_secs(10), "healthy", |v| {
        v["health"] == "healthy"
    })
    .await;
    assert_eq!(v["addr"], a.addr.to_string());
    a.wait_hits(1, Duration::from_secs(5)).await;
    assert!(
        a.seen().iter().any(|s| s
            .headers
            .get("host")
            .is_some_and(|h| *h == *a.addr.to_string())),
        "a check with Host: {}",
        a.addr
    );

    let page = support::get(admin, "/healthcheck").await;
    assert!(
        page.body.contains(&format!("        {} UP\n", a.addr)),
        "{}",
        page.body
    );
    let prom = support::get(admin, "/healthcheck?format=prometheus").await;
    let line = format!(
        "nginx_upstream_status_info{{name=\"six\",endpoint=\"{}\",status=\"UP\",role=\"PRIMARY\"}} 1\n",
        a.addr
    );
    assert!(prom.body.contains(&line), "no {line} in\n{}", prom.body);
    let metrics = support::get(admin, "/metrics").await;
    let labels = format!("{{upstream=\"six\",server=\"{}\"}}", a.addr);
    assert!(
        metrics.body.contains(&labels),
        "no {labels} in\n{}",
        metrics.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_rules_with_ipv6_cidrs_allow_and_deny_a_client_from_v6_loopback() {
    if !ipv6_loopback("admin_rules_with_ipv6_cidrs_allow_and_deny_a_client_from_v6_loopback") {
        return;
    }
    let a = backend("a").await;
    for (rules, want) in [
        ("allow = [\"::1/128\"]", StatusCode::OK),
        ("allow = [\"::1\"]", StatusCode::OK),
        ("allow = [\"::/0\"]", StatusCode::OK),
        (
            "rules = [\"deny fe80::/10\", \"allow ::1/128\"]",
            StatusCode::OK,
        ),
        ("allow = [\"::2/128\"]", StatusCode::FORBIDDEN),
        ("allow = [\"fe80::/10\"]", StatusCode::FORBIDDEN),
        ("allow = [\"127.0.0.1\"]", StatusCode::FORBIDDEN),
        (
            "rules = [\"deny ::1/128\", \"allow all\"]",
            StatusCode::FORBIDDEN,
        ),
    ] {
        let sy = start(rules, &[&a]);
        let r = Call::get("/api/v1/upstreams/six/servers")
            .from(LOOPBACK)
            .send(sy.admin())
            .await;
        assert_eq!(r.local.ip(), LOOPBACK);
        assert_eq!(r.status, want, "{rules}: {r}");
        if want == StatusCode::FORBIDDEN {
            assert_eq!(r.code(), "Forbidden", "{rules}: {r}");
            assert!(r.body.contains("::1 may not use"), "{rules}: {r}");
        } else {
            assert_eq!(r.json[0]["addr"], a.addr.to_string(), "{rules}: {r}");
        }
    }

    // Reads for ::1, changes for no one else.
    let sy = start("allow = [\"::1\"]\nwrite_allow = [\"fe80::1\"]", &[&a]);
    let r = Call::patch("/api/v1/upstreams/six/servers/0", r#"{"state": "down"}"#)
        .from(LOOPBACK)
        .send(sy.admin())
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r}");
    assert!(r.body.contains("::1 may read but not change"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nginx_plus_door_adds_lists_patches_and_deletes_a_v6_server() {
    if !ipv6_loopback("the_nginx_plus_door_adds_lists_patches_and_deletes_a_v6_server") {
        return;
    }
    let (a, b) = (backend("a").await, backend("b").await);
    let sy = start("", &[&a]);
    let (admin, proxy) = (sy.admin(), sy.addr());
    let base = "/api/9/http/upstreams/six/servers";
    let send = |m: Method, path: String, json: String| async move {
        support::api_send(admin, m, &path, &json).await
    };

    let r = send(
        Method::POST,
        base.into(),
        json!({ "server": b.addr.to_string(), "weight": 2 }).to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let created = body(&r);
    assert_eq!(created["id"], 1);
    assert_eq!(created["server"], b.addr.to_string());
    // The same address again is a duplicate.
    let r = send(
        Method::POST,
        base.into(),
        json!({ "server": b.addr.to_string() }).to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    // Brackets are required, as in a URL.
    let bare = format!("::1:{}", b.addr.port());
    let r = send(
        Method::POST,
        base.into(),
        json!({ "server": bare }).to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(
        body(&r)["error"]["code"],
        "UpstreamBadAddress",
        "{}",
        r.body
    );

    let list = body(&support::get(admin, base).await);
    let servers: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["server"].as_str().unwrap())
        .collect();
    assert_eq!(servers, [a.addr.to_string(), b.addr.to_string()]);
    let peers = body(&support::get(admin, "/api/9/http/upstreams/six").await)["peers"].clone();
    assert_eq!(peers[1]["server"], b.addr.to_string());
    assert_eq!(peers[1]["name"], b.addr.to_string());
    let mut got = answers(proxy, 3).await;
    got.sort();
    assert_eq!(got, ["a", "b", "b"], "weight 2 for b");

    let r = send(
        Method::PATCH,
        format!("{base}/1"),
        r#"{"down": true}"#.into(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(body(&r)["down"], true);
    assert_eq!(body(&r)["server"], b.addr.to_string());
    assert_eq!(answers(proxy, 4).await, ["a"; 4]);

    let r = send(Method::DELETE, format!("{base}/1"), String::new()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let left = body(&r);
    assert_eq!(left.as_array().unwrap().len(), 1, "{left}");
    assert_eq!(left[0]["server"], a.addr.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_door_lists_and_sets_v6_servers_down_and_up() {
    if !ipv6_loopback("the_seed_door_lists_and_sets_v6_servers_down_and_up") {
        return;
    }
    let (a, b) = (backend("a").await, backend("b").await);
    let sy = start("", &[&a, &b]);
    let (admin, proxy) = (sy.admin(), sy.addr());
    let list = || async move {
        let r = support::get(admin, "/ups_api?ups=six&act=list").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        body(&r)
    };
    let post = |act: &'static str, form: String| async move {
        call(
            admin,
            Method::POST,
            &format!("/ups_api?ups=six&act={act}"),
            &[FORM],
            &form,
        )
        .await
    };

    let l = list().await;
    assert_eq!(l[0]["name"], a.addr.to_string());
    assert_eq!(l[0]["addr"], a.addr.to_string());
    assert_eq!(l[1]["addr"], b.addr.to_string());

    let r = post("down", format!("server={}", a.addr)).await;
    assert_eq!(body(&r)["code"], "D002", "{}", r.body);
    assert_eq!(body(&r)["data"][0]["name"], a.addr.to_string());
    assert_eq!(list().await[0]["down"], true);
    assert_eq!(answers(proxy, 4).await, ["b"; 4]);

    // Percent-encoded, as `curl --data-urlencode` sends it.
    let encoded = a
        .addr
        .to_string()
        .replace('[', "%5B")
        .replace(']', "%5D")
        .replace(':', "%3A");
    let r = post("up", format!("server={encoded}")).await;
    assert_eq!(body(&r)["code"], "D002", "{}", r.body);
    assert_eq!(list().await[0]["down"], false);

    // Both in one list, all or none.
    let r = post("down", format!("server={},{}", a.addr, b.addr)).await;
    assert_eq!(body(&r)["code"], "D002", "{}", r.body);
    let l = list().await;
    assert_eq!(
        (l[0]["down"].clone(), l[1]["down"].clone()),
        (json!(true), json!(true))
    );
    let r = post("up", format!("server={}&server={}", a.addr, b.addr)).await;
    assert_eq!(body(&r)["code"], "D002", "{}", r.body);

    // An address of no server is refused by name, and changes nothing.
    let r = post("down", format!("server={},[::1]:1", a.addr)).await;
    assert_ne!(body(&r)["code"], "D002", "{}", r.body);
    assert!(r.body.contains("[::1]:1"), "{}", r.body);
    assert_eq!(list().await[0]["down"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_native_api_and_ctl_name_a_v6_server_by_its_address() {
    if !ipv6_loopback("the_native_api_and_ctl_name_a_v6_server_by_its_address") {
        return;
    }
    let (a, b) = (backend("a").await, backend("b").await);
    let sy = start("", &[&a, &b]);
    let admin = sy.admin();

    // The address as a path segment, percent-encoded as a URL needs it.
    let segment = b.addr.to_string().replace('[', "%5B").replace(']', "%5D");
    let r = Call::get(&format!("/api/v1/upstreams/six/servers/{segment}"))
        .send(admin)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    assert_eq!(r.json["id"], 1);
    // And as curl -g sends it, brackets and all.
    let r = Call::get(&format!("/api/v1/upstreams/six/servers/{}", b.addr))
        .send(admin)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    assert_eq!(r.json["addr"], b.addr.to_string());

    let ctl = |args: &[&str]| {
        let mut all = vec![
            "ctl".to_string(),
            "--admin".into(),
            format!("http://{admin}"),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        run_to_exit(&all, Duration::from_secs(30))
    };
    let out = ctl(&["down", "six", &b.addr.to_string()]);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    let out = ctl(&["list", "six", "--json"]);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    let listed: Value = serde_json::from_str(&out.stdout).unwrap();
    let rows = listed["servers"].as_array().unwrap();
    let row = rows
        .iter()
        .find(|s| s["addr"] == b.addr.to_string())
        .unwrap_or_else(|| panic!("{} not listed: {listed}", b.addr));
    assert_eq!(row["state"], "down", "{row}");
    assert_eq!(answers(sy.addr(), 3).await, ["a"; 3]);
}
