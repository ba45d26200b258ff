//! What the Python NGINX Plus client `nginxplusapi` (and tools like it) send,
//! replayed as raw HTTP/1.1 against the real binary: the read-only endpoints
//! such clients call first (`/api`, `/api/N/nginx`, `/connections`,
//! `/http/requests`, `/http/server_zones`) with numbers checked against the
//! traffic the test sent, and the upstream servers round trip with the forms
//! the client uses: `"true"`/`"false"` and `"7"` as strings, a `server`
//! without a port (port 80), PATCH without a Content-Type, bad values refused
//! with NGINX's codes.
//!
//! The servers added without a port are on loopback and never get traffic:
//! they are only added, listed and removed.

use crate::support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Backend, Switchyard, call, get, named};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw HTTP/1.1 client on one keep-alive connection, sending what urllib3
/// (under `nginxplusapi`) sends: `Host`, `Accept-Encoding: identity`, its
/// `User-Agent`, `Content-Length` with a body, `Content-Type` only when the
/// client sets one.
struct Raw {
    stream: TcpStream,
    host: String,
}

struct Answer {
    status: u16,
    body: Value,
    text: String,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
            host: addr.to_string(),
        }
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &str,
    ) -> Answer {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept-Encoding: identity\r\nUser-Agent: python-urllib3/2.2.1\r\n",
            self.host
        );
        if let Some(ct) = content_type {
            req.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        if !body.is_empty() || method == "POST" || method == "PATCH" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.stream.write_all(req.as_bytes()).await.unwrap();
        self.read_answer().await
    }

    async fn read_answer(&mut self) -> Answer {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = self.stream.read(&mut byte).await.unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&head));
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).await.unwrap();
        let text = String::from_utf8_lossy(&body).into_owned();
        // Not JSON (a backend's answer through the proxy): `Null`; `text` has it.
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer { status, body, text }
    }

    async fn get(&mut self, path: &str) -> Value {
        let a = self.send("GET", path, None, "").await;
        assert_eq!(a.status, 200, "GET {path}: {}", a.text);
        a.body
    }
}

/// Checks an NGINX Plus error answer.
fn assert_error(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "{}", a.text);
    assert_eq!(a.body["error"]["status"], status, "{}", a.text);
    assert_eq!(a.body["error"]["code"], code, "{}", a.text);
    assert!(
        a.body["error"]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{}",
        a.text
    );
}

/// Listener A routes everything to `app`; listener B only `/b`.
fn config(backends: &[&Backend]) -> String {
    let servers: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ addr = \"{}\" }}", b.addr))
        .collect();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ path_prefix = \"/\", upstream = \"app\" }}]\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ path_prefix = \"/b\", upstream = \"app\" }}]\n\
         [upstream.app]\nservers = [{}]\n",
        servers.join(", ")
    )
}

/// Polls `/api/6/connections` until `want` holds (at most 10 s).
async fn connections_until(raw: &mut Raw, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = raw.get("/api/6/connections").await;
        if want(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn status_endpoints_count_what_the_listeners_served() {
    let a = named("a").await;
    let sy = Switchyard::run_config_with_admin(&config(&[&a]), 2);
    let (admin, la, lb) = (sy.admin(), sy.addrs[0], sy.addrs[1]);
    let mut raw = Raw::connect(admin).await;

    // What the client asks first.
    let a0 = raw.send("GET", "/api", None, "").await;
    assert_eq!(
        (a0.status, a0.body.clone()),
        (200, json!([4, 5, 6, 7, 8, 9]))
    );
    assert_eq!(
        raw.get("/api/6/").await,
        json!(["nginx", "connections", "http"])
    );
    assert_eq!(
        raw.get("/api/6/http").await,
        json!(["requests", "server_zones", "upstreams"])
    );

    // Nothing served yet: every zone at 0. A listener is listed once its
    // accept loop runs, which may be a moment after its address is printed.
    let mut want = [la.to_string(), lb.to_string()];
    want.sort();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let zones = loop {
        let zones = raw.get("/api/6/http/server_zones").await;
        let listed = zones.as_object().map_or(0, |z| z.len());
        if listed == want.len() || std::time::Instant::now() > deadline {
            break zones;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let names: Vec<&String> = zones.as_object().unwrap().keys().collect();
    assert_eq!(names, want.iter().collect::<Vec<_>>(), "{zones}");
    assert_eq!(zones[la.to_string()]["requests"], 0);
    assert_eq!(
        raw.get("/api/6/http/requests").await,
        json!({"total": 0, "current": 0})
    );

    // A: five keep-alive GETs (the plain HTTP/1.1 path) and a POST (hyper's),
    // each on a connection of its own. B: two GETs to its route, one to a
    // path it has no route for (404).
    for _ in 0..5 {
        let r = get(la, "/x").await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "a"));
    }
    let r = call(la, Method::POST, "/form", &[], "k=v").await;
    assert_eq!(r.status, StatusCode::OK);
    for _ in 0..2 {
        assert_eq!(get(lb, "/b/1").await.status, StatusCode::OK);
    }
    assert_eq!(get(lb, "/nothing").await.status, StatusCode::NOT_FOUND);
    assert_eq!(a.hits(), 8);

    let zones = raw.get("/api/6/http/server_zones/").await;
    assert_eq!(
        zones[la.to_string()],
        json!({
            "processing": 0,
            "requests": 6,
            "responses": {"1xx": 0, "2xx": 6, "3xx": 0, "4xx": 0, "5xx": 0, "codes": {}, "total": 6},
            "discarded": 0,
            "received": 0,
            "sent": 0,
        }),
        "{zones}"
    );
    let b = &zones[lb.to_string()];
    assert_eq!((&b["requests"], &b["processing"]), (&json!(3), &json!(0)));
    assert_eq!(
        b["responses"],
        json!({"1xx": 0, "2xx": 2, "3xx": 0, "4xx": 1, "5xx": 0, "codes": {}, "total": 3})
    );
    // One zone by name, with ?fields= and a trailing slash.
    assert_eq!(
        raw.get(&format!(
            "/api/6/http/server_zones/{lb}/?fields=requests,discarded"
        ))
        .await,
        json!({"requests": 3, "discarded": 0})
    );
    let unknown = raw
        .send("GET", "/api/6/http/server_zones/nope", None, "")
        .await;
    assert_error(&unknown, 404, "ServerZoneNotFound");
    assert_eq!(
        raw.get("/api/6/http/server_zones?fields=requests").await,
        json!({ la.to_string(): {"requests": 6}, lb.to_string(): {"requests": 3} })
    );
    assert_eq!(
        raw.get("/api/6/http/requests/").await,
        json!({"total": 9, "current": 0})
    );
    assert_eq!(
        raw.get("/api/6/http/requests?fields=total").await,
        json!({"total": 9})
    );

    // Nine connections, all closed by their clients by now.
    let c = connections_until(&mut raw, "every connection closed", |v| {
        v["active"] == 0 && v["idle"] == 0
    })
    .await;
    assert_eq!(
        c,
        json!({"accepted": 9, "dropped": 0, "active": 0, "idle": 0})
    );

    // A keep-alive connection that goes quiet after its request parks: idle.
    let mut client = Raw::connect(la).await;
    let r = client.send("GET", "/x", None, "").await;
    assert_eq!((r.status, r.text.as_str()), (200, "a"));
    let c = connections_until(&mut raw, "one idle connection", |v| v["idle"] == 1).await;
    assert_eq!(
        c,
        json!({"accepted": 10, "dropped": 0, "active": 0, "idle": 1})
    );
    assert_eq!(
        raw.get("/api/6/connections?fields=accepted,idle").await,
        json!({"accepted": 10, "idle": 1})
    );
    // Waking it up for another request, then closing it.
    let r = client.send("GET", "/x", None, "").await;
    assert_eq!(r.status, 200);
    drop(client);
    let c = connections_until(&mut raw, "closed again", |v| {
        v["active"] == 0 && v["idle"] == 0
    })
    .await;
    assert_eq!(c["accepted"], 10);
    assert_eq!(
        raw.get("/api/6/http/requests").await,
        json!({"total": 11, "current": 0})
    );
}

#[tokio::test]
async fn the_nginx_object_and_reloads() {
    let a = named("a").await;
    let sy = Switchyard::run_config_with_admin(&config(&[&a]), 2);
    let (admin, la) = (sy.admin(), sy.addr());
    let mut raw = Raw::connect(admin).await;

    let before = humantime::parse_rfc3339("2020-01-01T00:00:00Z").unwrap();
    let v = raw.get("/api/9/nginx").await;
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "address",
            "build",
            "generation",
            "load_timestamp",
            "pid",
            "ppid",
            "timestamp",
            "version"
        ]
    );
    assert_eq!(v["address"], "127.0.0.1");
    assert_eq!(v["build"], "switchyard");
    assert!(v["version"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    assert_eq!(v["pid"], sy.pid());
    // This test process started it.
    assert_eq!(v["ppid"], std::process::id());
    assert_eq!(v["generation"], 0);
    let time = |v: &Value, k: &str| {
        let s = v[k].as_str().unwrap_or_else(|| panic!("{k} in {v}"));
        assert!(s.ends_with('Z') && s.len() == 24, "{k}: {s}");
        humantime::parse_rfc3339(s).unwrap()
    };
    let (loaded, now) = (time(&v, "load_timestamp"), time(&v, "timestamp"));
    assert!(before < loaded && loaded <= now, "{v}");
    assert_eq!(
        raw.get("/api/9/nginx/?fields=pid,generation").await,
        json!({"pid": sy.pid(), "generation": 0})
    );

    // Counters survive a reload; generation counts it.
    assert_eq!(get(la, "/x").await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let r = raw.send("POST", "/api/v1/reload", None, "").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = raw.get("/api/9/nginx").await;
    assert_eq!(v["generation"], 1);
    assert!(time(&v, "load_timestamp") > loaded, "{v}");
    let zones = raw.get("/api/9/http/server_zones").await;
    assert_eq!(zones.as_object().unwrap().len(), 2, "{zones}");
    assert_eq!(zones[la.to_string()]["requests"], 1, "{zones}");
    assert_eq!(get(la, "/x").await.status, StatusCode::OK);
    assert_eq!(
        raw.get("/api/9/http/requests").await,
        json!({"total": 2, "current": 0})
    );
}

#[tokio::test]
async fn upstream_servers_as_nginxplusapi_changes_them() {
    let a = named("a").await;
    let b = named("b").await;
    let sy = Switchyard::run_config_with_admin(&config(&[&a, &b]), 2);
    let (admin, la) = (sy.admin(), sy.addr());
    let mut raw = Raw::connect(admin).await;
    let base = "/api/6/http/upstreams/app/servers";
    let json_ct = Some("application/json");

    let list = raw.get(base).await;
    let listed: Vec<(u64, &str)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_u64().unwrap(), s["server"].as_str().unwrap()))
        .collect();
    assert_eq!(
        listed,
        [
            (0, a.addr.to_string().as_str()),
            (1, b.addr.to_string().as_str())
        ]
    );

    // setServerDown: PATCH {"down": "true"}, no Content-Type. b gets nothing.
    let r = raw
        .send("PATCH", &format!("{base}/1"), None, r#"{"down": "true"}"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!((&r.body["id"], &r.body["down"]), (&json!(1), &json!(true)));
    let peers = raw.get("/api/6/http/upstreams/app").await["peers"].clone();
    assert_eq!(peers[1]["state"], "down", "{peers}");
    for _ in 0..4 {
        assert_eq!(get(la, "/").await.body, "a");
    }
    assert_eq!((a.hits(), b.hits()), (4, 0));
    // setServerUp.
    let r = raw
        .send("PATCH", &format!("{base}/1"), None, r#"{"down": "false"}"#)
        .await;
    assert_eq!(
        (r.status, &r.body["down"]),
        (200, &json!(false)),
        "{}",
        r.text
    );
    for _ in 0..4 {
        get(la, "/").await;
    }
    assert_eq!((a.hits(), b.hits()), (6, 2));
    // setServerDrain.
    let r = raw
        .send(
            "PATCH",
            &format!("{base}/1"),
            json_ct,
            r#"{"drain": "true"}"#,
        )
        .await;
    assert_eq!(
        (r.status, &r.body["drain"]),
        (200, &json!(true)),
        "{}",
        r.text
    );
    let r = raw
        .send("PATCH", &format!("{base}/1"), None, r#"{"down": "false"}"#)
        .await;
    assert_eq!(
        (r.status, &r.body["down"]),
        (200, &json!(false)),
        "{}",
        r.text
    );
    assert_eq!(r.body.get("drain"), None, "{}", r.text);
    // PATCH {"weight": "3"}.
    let r = raw
        .send("PATCH", &format!("{base}/1"), None, r#"{"weight": "3"}"#)
        .await;
    assert_eq!(
        (r.status, &r.body["weight"]),
        (200, &json!(3)),
        "{}",
        r.text
    );
    assert_eq!(raw.get(&format!("{base}/1")).await["weight"], 3);

    // addServer('app', '127.0.0.3'): the client posts to ".../servers/" with
    // a Content-Type; no port means port 80.
    let r = raw
        .send(
            "POST",
            &format!("{base}/"),
            json_ct,
            r#"{"server": "127.0.0.3"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["server"], "127.0.0.3:80");
    let plain = r.body["id"].as_u64().unwrap();
    assert_eq!(plain, 2);
    assert_eq!(
        raw.get(&format!("{base}/{plain}")).await["server"],
        "127.0.0.3:80"
    );
    // The same address again, with the port this time: the same server.
    let r = raw
        .send("POST", base, json_ct, r#"{"server": "127.0.0.3:80"}"#)
        .await;
    assert_error(&r, 409, "EntryExists");
    // Everything as strings, as the client's kwargs end up.
    let r = raw
        .send(
            "POST",
            &format!("{base}/"),
            json_ct,
            r#"{"server": "127.0.0.4", "weight": "7", "max_conns": "5", "max_fails": "2", "backup": "false", "down": "true"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let stringly = r.body["id"].as_u64().unwrap();
    assert_eq!(
        (
            &r.body["server"],
            &r.body["weight"],
            &r.body["max_conns"],
            &r.body["max_fails"],
            &r.body["backup"],
            &r.body["down"]
        ),
        (
            &json!("127.0.0.4:80"),
            &json!(7),
            &json!(5),
            &json!(2),
            &json!(false),
            &json!(true)
        )
    );
    let r = raw
        .send("POST", base, json_ct, r#"{"server": "[::1]"}"#)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["server"], "[::1]:80");
    let v6 = r.body["id"].as_u64().unwrap();
    let servers: Vec<String> = raw
        .get(base)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["server"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        servers,
        [
            a.addr.to_string(),
            b.addr.to_string(),
            "127.0.0.3:80".into(),
            "127.0.0.4:80".into(),
            "[::1]:80".into()
        ]
    );

    // Bad values: NGINX's codes, a text that says what is wrong, no change.
    let r = raw
        .send(
            "POST",
            base,
            json_ct,
            r#"{"server": "127.0.0.5", "weight": "x"}"#,
        )
        .await;
    assert_error(&r, 400, "UpstreamBadWeight");
    assert!(r.body["error"]["text"].as_str().unwrap().contains("weight"));
    let r = raw
        .send(
            "POST",
            base,
            json_ct,
            r#"{"server": "127.0.0.5", "down": "maybe"}"#,
        )
        .await;
    assert_error(&r, 400, "UpstreamConfFormatError");
    let r = raw
        .send("POST", base, json_ct, r#"{"server": "127.0.0.1:99999"}"#)
        .await;
    assert_error(&r, 400, "UpstreamBadAddress");
    let r = raw
        .send("PATCH", &format!("{base}/1"), None, r#"{"weight": "x"}"#)
        .await;
    assert_error(&r, 400, "UpstreamBadWeight");
    let r = raw
        .send("PATCH", &format!("{base}/1"), None, r#"{"down": "maybe"}"#)
        .await;
    assert_error(&r, 400, "UpstreamConfFormatError");
    assert!(r.body["error"]["text"].as_str().unwrap().contains("maybe"));
    let one = raw.get(&format!("{base}/1")).await;
    assert_eq!((&one["weight"], &one["down"]), (&json!(3), &json!(false)));
    assert_eq!(raw.get(base).await.as_array().unwrap().len(), 5);

    // deleteServer: the servers left.
    for id in [plain, stringly, v6] {
        let r = raw.send("DELETE", &format!("{base}/{id}"), None, "").await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(
            r.body
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["id"] != json!(id)),
            "{}",
            r.text
        );
    }
    let ids: Vec<u64> = raw
        .get(base)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [0, 1]);
}
