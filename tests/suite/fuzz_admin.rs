//! Admin hardening, every admin input: JSON bodies (the native API's NewServer,
//! ServerChange, NewUpstream, Batch and health check; NGINX Plus server
//! objects), the `/ups_api` form body, query strings (`ups`, `act`, `server`,
//! `wait`, `fields`, `format`, `verbose`), path segments (upstream names, server
//! id or address, NGINX versions) and the headers access control reads.
//!
//! Each case builds a fresh table over a state file in a tempdir and sends it a
//! short sequence of requests through the router in-process. Inputs mix valid
//! templates with mutations of them (so the search gets past the first parser)
//! and plain garbage. For every request:
//! - no panic, no hang, no 5xx;
//! - a rejection is a 4xx with a reason in its API's shape (native: JSON
//!   `error.message`; `/ups_api`: `{code, msg}` or the usage line; NGINX Plus:
//!   `error.text` and `error.status`);
//! - after a rejection, and after any read, `Table::load().generation` and the
//!   state file's bytes are as they were;
//! - after a change that was published, the state file loads.
//!
//! proptest with a bounded case count (500 cases, about 1 250 requests, 2 to 8 s
//! in a debug build, most of it the state file's fsyncs); `PROPTEST_CASES=N`
//! raises it locally. A failure is shrunk and printed as its minimal input.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::{Value, json};
use tower::ServiceExt;

use switchyard::admin::{Access, router};
use switchyard::config::{AdminConfig, Config};
use switchyard::state::{FileStore, StateStore};
use switchyard::upstream::{Command, ServerPatch, ServerRef, Table};

const TOKEN: &str = "fuzz-token-0123456789";

const CONFIG: &str = r#"
[[listener]]
listen = "127.0.0.1:0"
routes = [{ upstream = "web" }]

[upstream.web]
servers = [
  { addr = "127.0.0.1:9001" },
  { addr = "127.0.0.1:9002", weight = 2 },
  { addr = "localhost:9003", backup = true },
]
health_check = { type = "http", path = "/health", interval = "1h" }

[upstream."foo.com"]
balance = "hash"
hash_key = "uri"
servers = [{ addr = "127.0.0.1:9101" }, { addr = "[::1]:9102", down = true }]
"#;

fn config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| switchyard::config::parse(CONFIG, "fuzz.toml").unwrap())
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------
// The table under test.

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    table: Arc<Table>,
    app: Router,
}

/// What must not change after a rejected request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    generation: u64,
    file: Option<Vec<u8>>,
}

impl Fixture {
    fn new(token: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let table = Arc::new(Table::open(config(), Some(Arc::new(FileStore::new(&path)))).unwrap());
        // One change, so that there is a state file to compare.
        table
            .apply_blocking(&[Command::Patch {
                upstream: "web".into(),
                server: ServerRef::Id(1),
                patch: ServerPatch {
                    weight: Some(3),
                    ..ServerPatch::default()
                },
            }])
            .unwrap();
        assert!(path.exists());
        let mut admin = AdminConfig::new("127.0.0.1:0".parse().unwrap());
        if token {
            admin.token = Some(TOKEN.into());
        }
        let app = router(Arc::clone(&table), Access::from_config(&admin));
        Fixture {
            _dir: dir,
            path,
            table,
            app,
        }
    }

    fn seen(&self) -> Seen {
        Seen {
            generation: self.table.load().generation,
            file: std::fs::read(&self.path).ok(),
        }
    }
}

// ---------------------------------------------------------------------------
// Requests.

#[derive(Clone)]
struct Req {
    method: Method,
    /// Already percent-encoded.
    path: String,
    query: Option<String>,
    content_type: Option<&'static str>,
    authorization: Option<&'static str>,
    origin: Option<&'static str>,
    body: Vec<u8>,
}

impl std::fmt::Debug for Req {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Req")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("content_type", &self.content_type)
            .field("authorization", &self.authorization)
            .field("origin", &self.origin)
            .field("body", &String::from_utf8_lossy(&self.body))
            .finish()
    }
}

/// Percent-encodes all but the unreserved characters.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A string: mostly one of `valid` (sometimes lightly mangled), else garbage.
fn text(valid: &'static [&'static str]) -> BoxedStrategy<String> {
    prop_oneof![
        14 => select(valid).prop_map(String::from),
        1 => (select(valid), any::<Index>(), "\\PC{0,3}").prop_map(|(v, i, t)| {
            let mut v = v.to_string();
            let mut at = i.index(v.len() + 1);
            while !v.is_char_boundary(at) {
                at -= 1;
            }
            v.insert_str(at, &t);
            v
        }),
        1 => "\\PC{0,12}",
    ]
    .boxed()
}

/// A path segment, encoded; now and then encoded wrongly on purpose.
fn segment(valid: &'static [&'static str]) -> BoxedStrategy<String> {
    prop_oneof![
        12 => text(valid).prop_map(|s| enc(&s)),
        1 => select(&[
            "%FF", "%C3%28", "%zz", "%", "%2", "%2F", "%2e%2e", "..", ".", "+", "%00", "web%20",
            "%F0%9F%98%80",
        ][..])
        .prop_map(String::from),
    ]
    .boxed()
}

const NAMES: &[&str] = &[
    "web", "foo.com", "ghost", "", " web", "WEB", "a/b", "new1", "h",
];
const SERVERS: &[&str] = &[
    "0",
    "1",
    "1",
    "2",
    "127.0.0.1:9001",
    "0",
    "1",
    "2",
    "3",
    "99",
    "4294967295",
    "4294967296",
    "-1",
    "01",
    " 1",
    "127.0.0.1:9001",
    "127.0.0.1:9002",
    "localhost:9003",
    "[::1]:9102",
    "127.0.0.1:1",
];
const VERSIONS: &[&str] = &[
    "9",
    "9",
    "9",
    "7",
    "6",
    "5",
    "9",
    "9",
    "9",
    "8",
    "4",
    "5",
    "6",
    "7",
    "8",
    "9",
    "3",
    "10",
    "0",
    "09",
    "+9",
    "v1",
    "v9",
    "99999999999999999999",
];

const QUERY_KEYS: &[&str] = &[
    "ups", "act", "server", "wait", "fields", "format", "verbose", "x",
];
fn query_value(key: &str) -> &'static [&'static str] {
    match key {
        "ups" => &["web", "foo.com", "ghost", " web", ""],
        "act" => &["list", "up", "down", "drain", " DOWN", "reboot", ""],
        "server" => &[
            "127.0.0.1:9001",
            "1",
            "0,1",
            "127.0.0.1:9002, 2",
            "99",
            "localhost:9003",
            ",",
            "",
        ],
        "wait" => &[
            "0",
            "0s",
            "1ms",
            "x",
            "-1",
            "1.5s",
            "584942417355y",
            "18446744073709551615",
            "99999999999999999999s",
        ],
        "fields" => &["id,server", "", "weight", ",,", "peers,zone"],
        "format" => &["text", "json", "prometheus", "xml", ""],
        "verbose" => &["1", "0", "true", ""],
        _ => &["1", ""],
    }
}

fn pair(k: &'static str) -> BoxedStrategy<String> {
    let value = prop_oneof![
        8 => text(query_value(k)).prop_map(|v| enc(&v)),
        1 => "[a-zA-Z0-9%+=&,._-]{0,10}",
    ];
    (
        prop_oneof![12 => Just(k.to_string()), 1 => "[a-z%=&+]{0,4}"],
        value,
    )
        .prop_map(|(k, v)| format!("{k}={v}"))
        .boxed()
}

/// The keys an endpoint reads, each there most of the time, then a few pairs of
/// any key (repeats included).
fn query(keys: &'static [&'static str]) -> BoxedStrategy<Option<String>> {
    let usual: Vec<BoxedStrategy<Option<String>>> = keys
        .iter()
        .map(|k| prop_oneof![4 => pair(k).prop_map(Some), 1 => Just(None)].boxed())
        .collect();
    let extra = prop_oneof![
        4 => Just(vec![]),
        1 => prop::collection::vec(select(QUERY_KEYS).prop_flat_map(pair), 1..4),
    ];
    prop_oneof![
        1 => Just(None),
        8 => (usual, extra).prop_map(|(usual, extra)| {
            let all: Vec<String> = usual.into_iter().flatten().chain(extra).collect();
            Some(all.join("&"))
        }),
    ]
    .boxed()
}

fn query_keys(path: &str) -> &'static [&'static str] {
    if path == "/ups_api" {
        &["ups", "act", "server"]
    } else if path.starts_with("/api/v1/") && path.contains("/servers/") {
        &["wait"]
    } else if path == "/healthcheck" {
        &["format", "verbose"]
    } else if path.starts_with("/api/") {
        &["fields"]
    } else {
        &[]
    }
}

// JSON bodies: templates of every kind the API takes, mutated.

fn health_check() -> Value {
    json!({"type": "http", "method": "GET", "path": "/health", "host": "x",
           "headers": {"X-A": "b"}, "interval": "1s", "jitter": "0s", "timeout": "1s",
           "fall": 2, "rise": 2, "valid_statuses": [200, 302], "body": "ok",
           "body_regex": "o+k", "port": 8080, "concurrency": 2, "mandatory": false})
}

fn new_server() -> Vec<Value> {
    vec![
        json!({"addr": "127.0.0.1:9050"}),
        json!({"addr": "127.0.0.1:9051", "weight": 2, "max_conns": 10, "max_fails": 1,
               "fail_timeout": "10s", "slow_start": "0s", "backup": false, "state": "down"}),
        json!({"addr": "localhost:9052", "backup": true, "state": "up"}),
    ]
}

fn server_change() -> Vec<Value> {
    vec![
        json!({"state": "down"}),
        json!({"state": "drain", "weight": 3, "max_conns": 5, "max_fails": 2,
               "fail_timeout": "5s", "slow_start": "1s", "backup": false}),
        json!({"weight": 1000}),
    ]
}

fn new_upstream() -> Vec<Value> {
    vec![
        json!({"name": "new1", "servers": [{"addr": "127.0.0.1:9060"}]}),
        json!({"name": "new1", "balance": "least_conn", "keepalive": 8,
               "keepalive_timeout": "30s", "connect_timeout": "1s", "read_timeout": "5s",
               "send_timeout": "5s", "retry": {"tries": 2, "timeout": "1s", "non_idempotent": false},
               "health_check": health_check(),
               "servers": [{"addr": "127.0.0.1:9061", "weight": 2}, {"addr": "127.0.0.1:9062"}]}),
        json!({"name": "h", "balance": "hash", "hash_key": "header:X-User",
               "servers": [{"addr": "127.0.0.1:9063"}]}),
    ]
}

fn health_checks() -> Vec<Value> {
    vec![
        health_check(),
        json!({"type": "tcp", "interval": "1s", "port": 9}),
        json!({"type": "http", "http_req": "GET / HTTP/1.0\r\n\r\n", "valid_statuses": [200]}),
    ]
}

fn batches() -> Vec<Value> {
    vec![json!({"operations": [
        {"op": "add", "upstream": "web", "server": {"addr": "127.0.0.1:9070"}},
        {"op": "patch", "upstream": "web", "server": 1, "set": {"state": "down"}},
        {"op": "patch", "upstream": "web", "server": "127.0.0.1:9002", "set": {"weight": 4}},
        {"op": "remove", "upstream": "web", "server": "127.0.0.1:9001"},
        {"op": "create_upstream", "upstream": {"name": "b1", "servers": []}},
        {"op": "delete_upstream", "upstream": "foo.com"},
    ]})]
}

fn nginx_servers() -> Vec<Value> {
    vec![
        json!({"server": "127.0.0.1:9080"}),
        json!({"server": "127.0.0.1:9081", "weight": 2, "max_conns": 0, "max_fails": 1,
               "fail_timeout": "10s", "slow_start": "0s", "route": "", "backup": false,
               "down": false}),
    ]
}

fn nginx_patches() -> Vec<Value> {
    vec![
        json!({"down": true}),
        json!({"drain": true}),
        json!({"id": 1, "server": "127.0.0.1:9002", "backup": false, "weight": 3,
               "max_conns": 0, "max_fails": 1, "fail_timeout": 10, "slow_start": "0s",
               "route": "", "service": "", "down": false, "drain": false}),
    ]
}

fn leaf() -> BoxedStrategy<Value> {
    let fixed = select(vec![
        Value::Null,
        json!(true),
        json!(false),
        json!(0),
        json!(1),
        json!(2),
        json!(-1),
        json!(1000),
        json!(1001),
        json!(65535),
        json!(65536),
        json!(u32::MAX),
        json!(u64::from(u32::MAX) + 1),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1.5),
        json!(-0.0),
        json!(1e300),
        json!(""),
        json!(" "),
        json!("x"),
        json!("0"),
        json!("1s"),
        json!("0s"),
        json!("-1s"),
        json!("1.5s"),
        json!("10ms"),
        json!("584942417355y"),
        json!("99999999999999999999"),
        json!("up"),
        json!("down"),
        json!("drain"),
        json!("http"),
        json!("tcp"),
        json!("hash"),
        json!("round_robin"),
        json!("random_two"),
        json!("uri"),
        json!("header:"),
        json!("cookie:c"),
        json!("127.0.0.1:9001"),
        json!("127.0.0.1:0"),
        json!("127.0.0.1:65536"),
        json!("localhost:9003"),
        json!("[::1]:9"),
        json!("[::1"),
        json!("a:b:c"),
        json!("web"),
        json!("foo.com"),
        json!("ghost"),
        json!("a/b"),
        json!("/x"),
        json!("x y"),
        json!("GET"),
        json!("get"),
        json!("("),
        json!("a{99999}{99999}"),
        json!("\u{0}"),
        json!("é"),
        json!("a\r\nb: c"),
        json!([]),
        json!({}),
        json!([1]),
        json!([99, 600]),
        json!({"addr": "127.0.0.1:9090"}),
        json!({"X-B": "c"}),
    ]);
    prop_oneof![
        8 => fixed,
        1 => "\\PC{0,10}".prop_map(Value::String),
        1 => any::<i64>().prop_map(|n| json!(n)),
    ]
    .boxed()
}

/// Keys added to objects: unknown ones, and known ones of every body kind (so
/// one body's field lands in another).
const KEYS: &[&str] = &[
    "colour",
    "",
    "addr",
    "weight",
    "state",
    "backup",
    "down",
    "drain",
    "name",
    "balance",
    "hash_key",
    "servers",
    "retry",
    "health_check",
    "op",
    "upstream",
    "server",
    "set",
    "operations",
    "type",
    "path",
    "headers",
    "id",
    "route",
    "service",
    "fail_timeout",
    "slow_start",
    "max_conns",
    "max_fails",
    "valid_statuses",
    "port",
    "interval",
    "timeout",
];

#[derive(Debug, Clone)]
enum JsonEdit {
    /// Removes a key (or element) of the container at `node`.
    Remove(Index, Index),
    /// Sets an existing key (or element) of the container at `node`.
    Set(Index, Index, Value),
    /// Adds a key (or pushes an element) to the container at `node`.
    Add(Index, &'static str, Value),
    /// Replaces the container at `node`.
    Replace(Index, Value),
}

fn json_edit() -> BoxedStrategy<JsonEdit> {
    prop_oneof![
        1 => (any::<Index>(), any::<Index>()).prop_map(|(n, k)| JsonEdit::Remove(n, k)),
        3 => (any::<Index>(), any::<Index>(), leaf()).prop_map(|(n, k, v)| JsonEdit::Set(n, k, v)),
        1 => (any::<Index>(), select(KEYS), leaf()).prop_map(|(n, k, v)| JsonEdit::Add(n, k, v)),
        1 => (any::<Index>(), leaf()).prop_map(|(n, v)| JsonEdit::Replace(n, v)),
    ]
    .boxed()
}

/// JSON pointers of every object and array in `v`.
fn containers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            out.push(at.clone());
            for (k, v) in m {
                containers(
                    v,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(a) => {
            out.push(at.clone());
            for (i, v) in a.iter().enumerate() {
                containers(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn edit_json(v: &mut Value, e: &JsonEdit) {
    let mut nodes = Vec::new();
    containers(v, String::new(), &mut nodes);
    if nodes.is_empty() {
        if let JsonEdit::Replace(_, new) = e {
            *v = new.clone();
        }
        return;
    }
    let pick = |n: &Index| nodes[n.index(nodes.len())].clone();
    match e {
        JsonEdit::Remove(n, k) => match v.pointer_mut(&pick(n)) {
            Some(Value::Object(m)) if !m.is_empty() => {
                let key = m.keys().nth(k.index(m.len())).cloned().unwrap();
                m.remove(&key);
            }
            Some(Value::Array(a)) if !a.is_empty() => {
                a.remove(k.index(a.len()));
            }
            _ => {}
        },
        JsonEdit::Set(n, k, new) => match v.pointer_mut(&pick(n)) {
            Some(Value::Object(m)) if !m.is_empty() => {
                let key = m.keys().nth(k.index(m.len())).cloned().unwrap();
                m.insert(key, new.clone());
            }
            Some(Value::Array(a)) if !a.is_empty() => {
                let i = k.index(a.len());
                a[i] = new.clone();
            }
            _ => {}
        },
        JsonEdit::Add(n, key, new) => match v.pointer_mut(&pick(n)) {
            Some(Value::Object(m)) => {
                m.insert((*key).to_string(), new.clone());
            }
            Some(Value::Array(a)) => a.push(new.clone()),
            _ => {}
        },
        JsonEdit::Replace(n, new) => {
            if let Some(node) = v.pointer_mut(&pick(n)) {
                *node = new.clone();
            }
        }
    }
}

/// A byte-level change to a serialized body (past the JSON parser's checks).
#[derive(Debug, Clone)]
enum ByteEdit {
    Truncate(Index),
    Insert(Index, u8),
    Delete(Index),
}

fn byte_edit(body: &mut Vec<u8>, e: &ByteEdit) {
    match e {
        ByteEdit::Truncate(i) => body.truncate(i.index(body.len() + 1)),
        ByteEdit::Insert(i, b) => body.insert(i.index(body.len() + 1), *b),
        ByteEdit::Delete(i) if !body.is_empty() => {
            body.remove(i.index(body.len()));
        }
        ByteEdit::Delete(_) => {}
    }
}

const GARBAGE: &[&str] = &[
    "",
    "null",
    "[]",
    "{}",
    "{",
    "\"x\"",
    "1e999",
    "{\"a\":",
    "{\"addr\": 1,}",
    "\u{FEFF}{}",
    "{\"addr\":\"127.0.0.1:9001\",\"addr\":\"127.0.0.1:9002\"}",
    "server=127.0.0.1:9001",
    "server=%FF",
    "server=%zz&server=,",
    "\u{0}",
];

fn json_body(templates: Vec<Value>) -> BoxedStrategy<Vec<u8>> {
    let byte = prop_oneof![
        any::<Index>().prop_map(ByteEdit::Truncate),
        (any::<Index>(), select(&b"{}[]\",:0a\\\xff "[..]))
            .prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        any::<Index>().prop_map(ByteEdit::Delete),
    ];
    prop_oneof![
        12 => (
            select(templates),
            prop_oneof![
                2 => Just(vec![]),
                3 => prop::collection::vec(json_edit(), 1..4),
            ],
            prop_oneof![6 => Just(vec![]), 1 => prop::collection::vec(byte, 1..3)],
        )
            .prop_map(|(mut v, edits, bytes)| {
                for e in &edits {
                    edit_json(&mut v, e);
                }
                let mut body = serde_json::to_vec(&v).unwrap();
                for e in &bytes {
                    byte_edit(&mut body, e);
                }
                body
            }),
        1 => select(GARBAGE).prop_map(|s| s.as_bytes().to_vec()),
        1 => "\\[{0,200}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..48),
    ]
    .boxed()
}

fn form_body() -> BoxedStrategy<Vec<u8>> {
    let value = text(&[
        "127.0.0.1:9001",
        "127.0.0.1:9002,127.0.0.1:9001",
        "1",
        "0, 2",
        "99",
        "localhost:9003",
        "",
        ",",
    ]);
    let pair = (
        prop_oneof![8 => Just("server".to_string()), 1 => "[a-z%+]{0,6}"],
        prop_oneof![4 => value.prop_map(|v| enc(&v)), 1 => "[a-zA-Z0-9%+=&,:._-]{0,12}"],
    )
        .prop_map(|(k, v)| format!("{k}={v}"));
    prop_oneof![
        6 => prop::collection::vec(pair, 0..4).prop_map(|p| p.join("&").into_bytes()),
        1 => select(GARBAGE).prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..32),
    ]
    .boxed()
}

fn method(usual: &'static [Method]) -> BoxedStrategy<Method> {
    prop_oneof![
        8 => select(usual),
        1 => select(vec![
            Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH,
            Method::DELETE, Method::OPTIONS,
        ]),
        1 => Just(Method::from_bytes(b"FUZZ").unwrap()),
    ]
    .boxed()
}

#[derive(Debug, Clone, Copy)]
enum BodyKind {
    None,
    Json(fn() -> Vec<Value>),
    Form,
}

/// One endpoint: its usual methods, its path (encoded) and its body.
fn endpoint() -> BoxedStrategy<(Vec<Method>, String, BodyKind)> {
    use Method as M;
    let name = || segment(NAMES);
    let server = || segment(SERVERS);
    let version = || segment(VERSIONS);
    let ep = |methods: &[Method], body: BodyKind| (methods.to_vec(), body);
    prop_oneof![
        1 => Just(ep(&[M::GET, M::POST], BodyKind::Json(new_upstream)))
            .prop_map(|(m, b)| (m, "/api/v1/upstreams".to_string(), b)),
        1 => (Just(ep(&[M::GET, M::DELETE], BodyKind::None)), name())
            .prop_map(|((m, b), n)| (m, format!("/api/v1/upstreams/{n}"), b)),
        1 => (Just(ep(&[M::GET, M::POST], BodyKind::Json(new_server))), name())
            .prop_map(|((m, b), n)| (m, format!("/api/v1/upstreams/{n}/servers"), b)),
        2 => (
            Just(ep(&[M::GET, M::PATCH, M::DELETE], BodyKind::Json(server_change))),
            name(),
            server()
        )
            .prop_map(|((m, b), n, s)| (m, format!("/api/v1/upstreams/{n}/servers/{s}"), b)),
        1 => (Just(ep(&[M::GET, M::PUT, M::DELETE], BodyKind::Json(health_checks))), name())
            .prop_map(|((m, b), n)| (m, format!("/api/v1/upstreams/{n}/health_check"), b)),
        1 => Just(ep(&[M::POST], BodyKind::Json(batches)))
            .prop_map(|(m, b)| (m, "/api/v1/batch".to_string(), b)),
        1 => Just(ep(&[M::GET], BodyKind::None))
            .prop_map(|(m, b)| (m, "/healthcheck".to_string(), b)),
        1 => Just(ep(&[M::GET], BodyKind::None)).prop_map(|(m, b)| (m, "/metrics".to_string(), b)),
        2 => Just(ep(&[M::GET, M::POST], BodyKind::Form))
            .prop_map(|(m, b)| (m, "/ups_api".to_string(), b)),
        1 => (Just(ep(&[M::GET], BodyKind::None)), version(), select(&["", "/", "/http", "/http/upstreams", "/stream"][..]))
            .prop_map(|((m, b), v, tail)| (m, format!("/api/{v}{tail}"), b)),
        1 => (Just(ep(&[M::GET, M::DELETE], BodyKind::None)), version(), name())
            .prop_map(|((m, b), v, n)| (m, format!("/api/{v}/http/upstreams/{n}"), b)),
        1 => (Just(ep(&[M::GET, M::POST], BodyKind::Json(nginx_servers))), version(), name())
            .prop_map(|((m, b), v, n)| (m, format!("/api/{v}/http/upstreams/{n}/servers"), b)),
        2 => (
            Just(ep(&[M::GET, M::PATCH, M::DELETE], BodyKind::Json(nginx_patches))),
            version(),
            name(),
            server()
        )
            .prop_map(|((m, b), v, n, s)| (
                m,
                format!("/api/{v}/http/upstreams/{n}/servers/{s}"),
                b
            )),
        // Anything else, under the API's prefixes or not.
        1 => (
            Just(ep(&[M::GET, M::POST], BodyKind::Json(new_server))),
            select(&["/", "/api/", "/api/v1/", "/api/v1/upstreams/", "/ups_api/", "/api"][..]),
            prop::collection::vec(segment(NAMES), 0..4)
        )
            .prop_map(|((m, b), prefix, segs)| (m, format!("{prefix}{}", segs.join("/")), b)),
    ]
    .boxed()
}

fn request() -> BoxedStrategy<Req> {
    let body = |kind: BodyKind| -> BoxedStrategy<(Option<&'static str>, Vec<u8>)> {
        let ct_json = prop_oneof![
            12 => Just(Some("application/json")),
            1 => Just(Some("application/problem+json; charset=utf-8")),
            1 => Just(Some("application/x-www-form-urlencoded")),
            1 => Just(Some("text/plain")),
            1 => Just(None),
        ];
        let ct_form = prop_oneof![
            8 => Just(Some("application/x-www-form-urlencoded")),
            3 => Just(None),
            1 => Just(Some("application/json")),
            1 => Just(Some("multipart/form-data; boundary=x")),
        ];
        match kind {
            BodyKind::None => prop_oneof![
                6 => Just((None, Vec::new())),
                1 => (ct_json, json_body(new_server())),
            ]
            .boxed(),
            BodyKind::Json(templates) => (ct_json, json_body(templates())).boxed(),
            BodyKind::Form => (ct_form, form_body()).boxed(),
        }
    };
    endpoint()
        .prop_flat_map(move |(methods, path, kind)| {
            (
                method(Box::leak(methods.into_boxed_slice())),
                query(query_keys(&path)),
                Just(path),
                body(kind),
                prop_oneof![
                    8 => Just(None),
                    2 => Just(Some("Bearer fuzz-token-0123456789")),
                    1 => Just(Some("Bearer wrong")),
                    1 => Just(Some("Basic eA==")),
                ],
                prop_oneof![
                    12 => Just(None),
                    1 => Just(Some("https://evil.example")),
                    1 => Just(Some("http://admin.test")),
                ],
            )
        })
        .prop_map(
            |(method, query, path, (content_type, body), authorization, origin)| Req {
                method,
                path,
                query,
                content_type,
                authorization,
                origin,
                body,
            },
        )
        .boxed()
}

// ---------------------------------------------------------------------------
// Sending and checking.

/// Which API a raw path belongs to, for the shape of its errors (as the router
/// decides it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Native,
    UpsApi,
    Nginx,
}

fn family(path: &str) -> Family {
    if path == "/ups_api" {
        return Family::UpsApi;
    }
    let Some(rest) = path.strip_prefix("/api") else {
        return Family::Native;
    };
    let first = rest.trim_start_matches('/').split('/').next().unwrap_or("");
    if !(rest.is_empty() || rest.starts_with('/')) || first == "v1" {
        Family::Native
    } else {
        Family::Nginx
    }
}

fn non_empty_str(v: &Value) -> bool {
    v.as_str().is_some_and(|s| !s.trim().is_empty())
}

/// Whether a 4xx body gives a reason in the shape of `family`.
fn has_reason(family: Family, status: StatusCode, body: &[u8]) -> bool {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match family {
        Family::Native => {
            non_empty_str(&json["error"]["message"]) && non_empty_str(&json["error"]["code"])
        }
        Family::UpsApi => {
            (status == StatusCode::BAD_REQUEST
                && body.starts_with(b"usage: /ups_api?ups=NAME&act="))
                || (non_empty_str(&json["code"]) && non_empty_str(&json["msg"]))
        }
        Family::Nginx => {
            non_empty_str(&json["error"]["text"])
                && non_empty_str(&json["error"]["code"])
                && json["error"]["status"] == json!(status.as_u16())
        }
    }
}

struct Stats {
    requests: AtomicU64,
    unsendable: AtomicU64,
    ok: AtomicU64,
    rejected: AtomicU64,
    changed: AtomicU64,
}

static STATS: Stats = Stats {
    requests: AtomicU64::new(0),
    unsendable: AtomicU64::new(0),
    ok: AtomicU64::new(0),
    rejected: AtomicU64::new(0),
    changed: AtomicU64::new(0),
};

/// Answers by status, method and error code, with `FUZZ_ADMIN_VERBOSE` set.
#[allow(clippy::type_complexity)]
static REASONS: std::sync::Mutex<std::collections::BTreeMap<(u16, String, String), u64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn build(req: &Req) -> Option<Request<Body>> {
    let uri = match &req.query {
        Some(q) => format!("{}?{q}", req.path),
        None => req.path.clone(),
    };
    let mut b = Request::builder()
        .method(req.method.clone())
        .uri(uri)
        .header(header::HOST, "admin.test");
    if let Some(ct) = req.content_type {
        b = b.header(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    if let Some(a) = req.authorization {
        b = b.header(header::AUTHORIZATION, a);
    }
    if let Some(o) = req.origin {
        b = b.header(header::ORIGIN, o);
    }
    let mut r = b.body(Body::from(req.body.clone())).ok()?;
    let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    r.extensions_mut().insert(ConnectInfo(client));
    Some(r)
}

async fn send_and_check(fx: &Fixture, req: &Req) -> Result<(), TestCaseError> {
    let Some(http) = build(req) else {
        STATS.unsendable.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    };
    STATS.requests.fetch_add(1, Ordering::Relaxed);
    let before = fx.seen();
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        let resp = fx.app.clone().oneshot(http).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    })
    .await;
    let Ok((status, body)) = answer else {
        return Err(TestCaseError::fail("no answer within 10 s"));
    };
    let after = fx.seen();
    let shown = String::from_utf8_lossy(&body);
    prop_assert!(
        !status.is_server_error(),
        "{} on {:?}: {}",
        status,
        req,
        shown
    );
    let read = req.method == Method::GET || req.method == Method::HEAD;
    if std::env::var_os("FUZZ_ADMIN_VERBOSE").is_some() {
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let code = [&json["error"]["code"], &json["code"]]
            .into_iter()
            .find_map(|c| c.as_str())
            .unwrap_or("-")
            .to_string();
        *REASONS
            .lock()
            .unwrap()
            .entry((status.as_u16(), req.method.to_string(), code))
            .or_default() += 1;
    }
    if status.is_success() {
        STATS.ok.fetch_add(1, Ordering::Relaxed);
    } else {
        STATS.rejected.fetch_add(1, Ordering::Relaxed);
        prop_assert!(
            status.is_client_error(),
            "{} on {:?}: {}",
            status,
            req,
            shown
        );
        if req.method != Method::HEAD {
            let fam = family(&req.path);
            prop_assert!(
                has_reason(fam, status, &body),
                "{} without a reason in the {:?} shape on {:?}: {:?}",
                status,
                fam,
                req,
                shown
            );
        }
    }
    if read || !status.is_success() {
        prop_assert_eq!(
            &before.generation,
            &after.generation,
            "the table changed on {} {:?}",
            status,
            req
        );
        prop_assert!(
            before.file == after.file,
            "the state file changed on {} {:?}",
            status,
            req
        );
    } else if before.generation != after.generation {
        STATS.changed.fetch_add(1, Ordering::Relaxed);
        // (A change to what it already was, say deleting an absent health
        // check, publishes a generation and saves the same bytes.)
        let saved = FileStore::new(&fx.path).load();
        prop_assert!(
            matches!(saved, Ok(Some(_))),
            "after a change the state file does not load ({:?}): {:?}",
            saved.err(),
            req
        );
    }
    Ok(())
}

#[test]
fn every_admin_input_is_answered_4xx_with_a_reason_and_changes_nothing_when_rejected() {
    let start = Instant::now();
    let mut runner = TestRunner::new(ProptestConfig {
        cases: cases(500),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        prop_oneof![4 => Just(false), 1 => Just(true)],
        prop::collection::vec(request(), 1..5),
    );
    let result = runner.run(&strategy, |(token, reqs)| {
        let fx = Fixture::new(token);
        runtime().block_on(async {
            for r in &reqs {
                send_and_check(&fx, r).await?;
            }
            Ok(())
        })
    });
    let s = &STATS;
    eprintln!(
        "admin: {} requests ({} answered 2xx, {} of which changed the table; {} rejected; {} not sendable) in {:.2?}",
        s.requests.load(Ordering::Relaxed),
        s.ok.load(Ordering::Relaxed),
        s.changed.load(Ordering::Relaxed),
        s.rejected.load(Ordering::Relaxed),
        s.unsendable.load(Ordering::Relaxed),
        start.elapsed()
    );
    for ((status, method, code), n) in REASONS.lock().unwrap().iter() {
        eprintln!("  {n:5}  {status} {method} {code}");
    }
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Found by the property above: a `wait` too long to add to the clock panicked
/// after the change was applied, so the client got no answer to a change made.
#[test]
fn a_wait_too_long_for_the_clock_is_answered() {
    let fx = Fixture::new(false);
    for (method, body) in [
        (Method::PATCH, &b"{\"state\":\"drain\"}"[..]),
        (Method::DELETE, b""),
    ] {
        let req = Req {
            method,
            path: "/api/v1/upstreams/web/servers/1".into(),
            query: Some("wait=18446744073709551615".into()),
            content_type: Some("application/json"),
            authorization: None,
            origin: None,
            body: body.to_vec(),
        };
        let result = runtime().block_on(send_and_check(&fx, &req));
        assert!(result.is_ok(), "{result:?}");
    }
}
