//! `switchyard run -c FILE` through the real binary: several listeners, routing by
//! host and path, weights and hashing as the file says.

use crate::support;

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Request, StatusCode};
use support::{Switchyard, fetch, named};

async fn get_host(addr: std::net::SocketAddr, host: &str, path: &str) -> String {
    let req = Request::get(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let r = fetch(addr, req).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{host}{path}: {}", r.body);
    r.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_routes_by_host_and_path_on_each_listener_with_its_weights() {
    let web1 = named("web1").await;
    let web2 = named("web2").await;
    let api = named("api").await;
    let text = format!(
        r#"
[runtime]
shutdown_grace = "5s"

[[listener]]
listen = "127.0.0.1:0"
routes = [
  {{ host = "shop.test", upstream = "web" }},
  {{ host = "*.shop.test", path_prefix = "/api", upstream = "api" }},
  {{ path_prefix = "/api", upstream = "api" }},
]

[[listener]]
listen = "127.0.0.1:0"
routes = [{{ upstream = "api" }}]

[upstream.web]
servers = [{{ addr = "{}", weight = 3 }}, {{ addr = "{}" }}]

[upstream.api]
servers = [{{ addr = "{}" }}]
"#,
        web1.addr, web2.addr, api.addr
    );
    let sy = Switchyard::run_config(&text, 2);
    assert_eq!(sy.addrs.len(), 2);
    let (first, second) = (sy.addrs[0], sy.addrs[1]);
    assert_ne!(first, second);

    // Exact host wins over the path route, even for /api.
    let mut web: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..40 {
        *web.entry(get_host(first, "shop.test", &format!("/api/{i}")).await)
            .or_default() += 1;
    }
    // Weights 3:1, smooth round robin: exact over whole periods.
    assert_eq!(web.get("web1"), Some(&30), "{web:?}");
    assert_eq!(web.get("web2"), Some(&10), "{web:?}");

    assert_eq!(get_host(first, "eu.shop.test", "/api/x").await, "api");
    assert_eq!(get_host(first, "other.test", "/api/x").await, "api");
    // No route for this host and path: 404, no server asked.
    let before = web1.hits() + web2.hits() + api.hits();
    let req = Request::get("/")
        .header("host", "other.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let r = fetch(first, req).await.unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(web1.hits() + web2.hits() + api.hits(), before);

    // The second listener sends everything to api.
    assert_eq!(get_host(second, "shop.test", "/").await, "api");
}
