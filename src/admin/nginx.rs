//! NGINX Plus API compatibility (versions 4–9): `/api`, `/api/{v}`,
//! `/api/{v}/http`, `/api/{v}/http/upstreams[/{name}[/servers[/{id}]]]`, with
//! NGINX Plus field names, status codes and error bodies, so that automation
//! written for NGINX Plus keeps working.
//!
//! Also the read-only endpoints such tools call first, in the shapes of
//! NGINX's API documentation, from the proxy's own counters
//! (`proxy::stats`): `/api/{v}/nginx`, `/api/{v}/connections`,
//! `/api/{v}/http/requests` and `/api/{v}/http/server_zones[/{name}]` (one
//! zone per proxy listener, named by its bound address). What differs from
//! NGINX is said at each ([`nginx_json`], [`connections_json`],
//! [`requests_json`], [`zone_json`]).
//!
//! Bodies are read as leniently as NGINX Plus reads them, since its clients
//! rely on it (the Python `nginxplusapi` sends every value as a string): a
//! boolean may be `"true"`/`"false"` ([`lenient_bool`]), a number a string of
//! digits (`"7"`, [`lenient_uint`]), a `server` without a port means port 80
//! ([`with_default_port`]), and the Content-Type is not looked at. Anything
//! else is refused with NGINX's error codes.
//!
//! This module owns the path dispatch under `/api/` (everything but `/api/v1`,
//! which is the native API), the translation between NGINX Plus objects and our
//! servers, and the NGINX error shape. It must not touch the table except
//! through `Table::apply_as` on a blocking thread, with `upstream::Command`s;
//! resetting statistics (`DELETE .../upstreams/{name}`) only zeroes counters
//! (`ServerStats::reset`) and does not change the table. Access is decided by
//! `admin::guard` before this code runs; it answers denials with [`error`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Map, Value, json};

use super::app::AppState;
use super::error::ApiError;
use super::form::{decode_component, parse_pairs};
use super::views::{duration, parse_duration, peer_state};
use crate::config::rules::check_weight;
use crate::config::{MAX_WEIGHT, MIN_WEIGHT, ServerConfig, check_server_addr, with_default_port};
use crate::proxy::stats::ListenerCounts;
use crate::upstream::{
    AdminState, Command, Origin, Server, ServerPatch, ServerRef, ServerSpec, TableError, Upstream,
};

/// The API versions answered.
pub const VERSIONS: std::ops::RangeInclusive<u32> = 4..=9;

const HREF: &str = "https://nginx.org/en/docs/http/ngx_http_api_module.html";

/// An error in the NGINX Plus shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NgxError {
    pub status: StatusCode,
    pub code: &'static str,
    pub text: String,
}

impl NgxError {
    fn new(status: StatusCode, code: &'static str, text: impl Into<String>) -> Self {
        NgxError {
            status,
            code,
            text: text.into(),
        }
    }

    fn format(text: impl Into<String>) -> Self {
        NgxError::new(StatusCode::BAD_REQUEST, "UpstreamConfFormatError", text)
    }

    fn upstream_not_found(name: &str) -> Self {
        NgxError::new(
            StatusCode::NOT_FOUND,
            "UpstreamNotFound",
            format!("upstream not found: no upstream named {name:?}"),
        )
    }
}

impl From<TableError> for NgxError {
    fn from(e: TableError) -> Self {
        let text = e.to_string();
        let (status, code) = match e {
            TableError::UnknownUpstream(_) => (StatusCode::NOT_FOUND, "UpstreamNotFound"),
            TableError::UnknownServer { .. } => (StatusCode::NOT_FOUND, "UpstreamServerNotFound"),
            TableError::UpstreamExists(_) | TableError::DuplicateServer { .. } => {
                (StatusCode::CONFLICT, "EntryExists")
            }
            TableError::BadWeight(_) => (StatusCode::BAD_REQUEST, "UpstreamBadWeight"),
            TableError::BackupWithHash(_) => (StatusCode::BAD_REQUEST, "UpstreamConfFormatError"),
            TableError::Resolve { .. } => (StatusCode::BAD_REQUEST, "UpstreamBadAddress"),
            TableError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "StateNotSaved"),
            TableError::Conflict(_) => (StatusCode::CONFLICT, "UpstreamConflict"),
            TableError::StoreUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "StoreUnavailable")
            }
            TableError::StoreOutcomeUnknown(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "StoreOutcomeUnknown")
            }
        };
        NgxError::new(status, code, text)
    }
}

/// A unique hex id per request.
fn request_id() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}{:016x}", fastrand::u64(..), seq)
}

/// An error response in the NGINX Plus shape:
/// `{"error":{"status":N,"text":"…","code":"…"},"request_id":"…","href":"…"}`.
pub fn error(status: StatusCode, code: &str, text: impl Into<String>) -> Response {
    let body = json!({
        "error": { "status": status.as_u16(), "text": text.into(), "code": code },
        "request_id": request_id(),
        "href": HREF,
    });
    (status, Json(body)).into_response()
}

impl IntoResponse for NgxError {
    fn into_response(self) -> Response {
        error(self.status, self.code, self.text)
    }
}

/// What a path under `/api/` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Versions,
    Root,
    Nginx,
    Connections,
    Http,
    Requests,
    ServerZones,
    ServerZone(String),
    Upstreams,
    Upstream(String),
    Servers(String),
    Server(String, String),
}

/// Decodes a path segment (`%XX`; a `+` is a plus here, not a space).
fn decode_segment(s: &str) -> String {
    decode_component(&s.replace('+', "%2B"))
}

/// Parses the path after `/api/`; a trailing slash (or an empty segment) does
/// not matter.
pub fn parse_path(rest: &str) -> Result<Target, NgxError> {
    let segs: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(decode_segment)
        .collect();
    let Some(version) = segs.first() else {
        return Ok(Target::Versions);
    };
    match version.parse::<u32>() {
        Ok(v) if VERSIONS.contains(&v) => {}
        _ => {
            return Err(NgxError::new(
                StatusCode::NOT_FOUND,
                "UnknownVersion",
                format!(
                    "unknown version {version:?} (supported: {}..{})",
                    VERSIONS.start(),
                    VERSIONS.end()
                ),
            ));
        }
    }
    let s: Vec<&str> = segs[1..].iter().map(String::as_str).collect();
    Ok(match s.as_slice() {
        [] => Target::Root,
        ["nginx"] => Target::Nginx,
        ["connections"] => Target::Connections,
        ["http"] => Target::Http,
        ["http", "requests"] => Target::Requests,
        ["http", "server_zones"] => Target::ServerZones,
        ["http", "server_zones", name] => Target::ServerZone((*name).to_string()),
        ["http", "upstreams"] => Target::Upstreams,
        ["http", "upstreams", name] => Target::Upstream((*name).to_string()),
        ["http", "upstreams", name, "servers"] => Target::Servers((*name).to_string()),
        ["http", "upstreams", name, "servers", id] => {
            Target::Server((*name).to_string(), (*id).to_string())
        }
        _ => {
            return Err(NgxError::new(
                StatusCode::NOT_FOUND,
                "PathNotFound",
                format!("path not found: /api/{}", rest.trim_end_matches('/')),
            ));
        }
    })
}

/// How the top-level keys of an answer are laid out, for `?fields=`.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// A JSON array of strings or numbers: not filtered.
    Plain,
    /// One object.
    Object,
    /// An array of objects.
    List,
    /// A map of name to object.
    Map,
}

/// Parses `fields=a,b` (absent or empty: every field).
pub fn parse_fields(query: Option<&str>) -> Option<Vec<String>> {
    let pairs = parse_pairs(query.unwrap_or(""));
    let (_, v) = pairs.iter().find(|(k, _)| k == "fields")?;
    let fields: Vec<String> = v
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(String::from)
        .collect();
    (!fields.is_empty()).then_some(fields)
}

/// Keeps only `fields` of an object.
fn keep(v: Value, fields: &[String]) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, _)| fields.iter().any(|f| f == k))
                .collect(),
        ),
        other => other,
    }
}

fn filter_fields(v: Value, fields: Option<&[String]>, shape: Shape) -> Value {
    let Some(fields) = fields else {
        return v;
    };
    match (shape, v) {
        (Shape::Object, v) => keep(v, fields),
        (Shape::List, Value::Array(a)) => {
            Value::Array(a.into_iter().map(|o| keep(o, fields)).collect())
        }
        (Shape::Map, Value::Object(m)) => Value::Object(
            m.into_iter()
                .map(|(k, o)| (k, keep(o, fields)))
                .collect::<Map<String, Value>>(),
        ),
        (_, v) => v,
    }
}

/// Wall-clock time of a moment on the process clock (`clock::now_ms`).
fn wall(at_ms: u64, now_ms: u64) -> String {
    let t = SystemTime::now() - Duration::from_millis(now_ms.saturating_sub(at_ms));
    humantime::format_rfc3339_millis(t).to_string()
}

/// A peer status object (inside `peers`).
fn peer(s: &Server, now_ms: u64) -> Value {
    let st = &s.runtime.stats;
    let r: Vec<u64> = st.responses.iter().map(|c| c.load(Relaxed)).collect();
    let state = peer_state(s, now_ms);
    let checks = super::views::ChecksView::of(s);
    // As NGINX Plus names a peer it resolved: by the entry as configured.
    let name = match &s.origin {
        Origin::Dns(entry) => entry.to_string(),
        _ => s.addr.clone(),
    };
    let mut m = json!({
        "id": s.id,
        "server": s.sockaddr.to_string(),
        "name": name,
        "backup": s.backup,
        "weight": s.weight,
        "state": state,
        "active": st.pick.active.load(Relaxed),
        "max_conns": s.max_conns,
        "requests": st.requests.load(Relaxed),
        "responses": {
            "1xx": r[0], "2xx": r[1], "3xx": r[2], "4xx": r[3], "5xx": r[4],
            "codes": {},
            "total": r.iter().sum::<u64>(),
        },
        "sent": st.bytes_sent.load(Relaxed),
        "received": st.bytes_received.load(Relaxed),
        "fails": st.fails_total.load(Relaxed),
        "unavail": st.unavail_total.load(Relaxed),
        "health_checks": {
            "checks": checks.checks,
            "fails": checks.fails,
            "unhealthy": checks.unhealthy,
        },
        "downtime": st.downtime_ms(s.fail_timeout, now_ms),
        "header_time": st.header_time.mean_ms(),
        "response_time": st.response_time.mean_ms(),
    });
    if let Some(obj) = m.as_object_mut() {
        if checks.checks > 0 {
            obj["health_checks"]["last_passed"] = Value::Bool(checks.last_check_passed);
        }
        if let Some(t) = super::views::unix_ms_rfc3339(st.selected_unix_ms.load(Relaxed)) {
            obj.insert("selected".into(), Value::String(t));
        }
    }
    // When the current period out of traffic began.
    let since = match state {
        "down" | "draining" => Some(st.admin_down_since_ms.load(Relaxed)),
        "unavail" => Some(
            st.pick
                .unavail_until_ms
                .load(Relaxed)
                .saturating_sub(s.fail_timeout.as_millis() as u64),
        ),
        _ => None,
    };
    if let (Some(since), Some(obj)) = (since.filter(|&t| t != 0), m.as_object_mut()) {
        obj.insert("downstart".into(), Value::String(wall(since, now_ms)));
    }
    m
}

/// An upstream object: `{peers, keepalive, zombies, zone}`.
fn upstream_json(u: &Upstream, now_ms: u64) -> Value {
    let servers = &u.snapshot().servers;
    json!({
        "peers": servers.iter().map(|s| peer(s, now_ms)).collect::<Vec<_>>(),
        "keepalive": servers.iter().map(|s| s.runtime.pool.idle_len()).sum::<usize>(),
        "zombies": 0,
        "zone": u.name,
    })
}

/// A server config object (what `.../servers` lists).
fn server_conf(s: &Server) -> Value {
    let mut v = json!({
        "id": s.id,
        "server": s.addr,
        "weight": s.weight,
        "max_conns": s.max_conns,
        "max_fails": s.max_fails,
        "fail_timeout": duration(s.fail_timeout),
        "slow_start": duration(s.slow_start),
        "route": "",
        "backup": s.backup,
        "down": s.state == AdminState::Down,
    });
    if s.state == AdminState::Drain
        && let Some(o) = v.as_object_mut()
    {
        o.insert("drain".into(), Value::Bool(true));
    }
    v
}

/// What the admin listener is, for `/nginx`'s `address` (set by
/// `AdminServer` once bound; absent for a router without a listener).
#[derive(Debug, Clone, Copy)]
pub struct AdminAddr(pub SocketAddr);

fn rfc3339_ms(unix_ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(unix_ms))
        .to_string()
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `/nginx`. Ours: `version` is switchyard's, `build` is `"switchyard"`,
/// `address` the admin listener's IP (as bound: `0.0.0.0` for a wildcard
/// listener), `generation` the configuration reloads since the start (0
/// before the first), `load_timestamp` the start or the last reload, `pid`
/// this process and `ppid` its parent (there are no worker processes).
pub fn nginx_json(admin: Option<SocketAddr>, now_ms: u64) -> Value {
    use crate::proxy::stats;
    #[cfg(unix)]
    let ppid = std::os::unix::process::parent_id();
    #[cfg(not(unix))]
    let ppid = 0u32;
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "build": "switchyard",
        "address": admin.map_or_else(String::new, |a| a.ip().to_string()),
        "generation": stats::reloads(),
        "load_timestamp": rfc3339_ms(stats::loaded_unix_ms().unwrap_or(now_ms)),
        "timestamp": rfc3339_ms(now_ms),
        "pid": std::process::id(),
        "ppid": ppid,
    })
}

/// `/connections`, over every proxy listener (not the admin API's own):
/// `accepted` counted at accept; `active` the open connections that are not
/// idle; `idle` those parked idle on the plain HTTP/1.1 path (a keep-alive
/// connection waiting in hyper, or in its first `h1::LINGER`, counts as
/// active); `dropped` is always 0, since switchyard never drops an accepted
/// connection (past `max_connections` it waits for a free slot).
pub fn connections_json(zones: &[ListenerCounts]) -> Value {
    let sum = |f: fn(&ListenerCounts) -> u64| zones.iter().map(f).sum::<u64>();
    let (open, idle) = (sum(|z| z.open), sum(|z| z.idle));
    json!({
        "accepted": sum(|z| z.accepted),
        "dropped": 0,
        "active": open.saturating_sub(idle),
        "idle": idle,
    })
}

/// `/http/requests`, over every proxy listener: `total` client requests
/// counted, `current` those not answered yet (see [`zone_json`]).
pub fn requests_json(zones: &[ListenerCounts]) -> Value {
    json!({
        "total": zones.iter().map(|z| z.requests).sum::<u64>(),
        "current": zones.iter().map(|z| z.processing).sum::<u64>(),
    })
}

/// One server zone: a proxy listener. A request counts as answered once its
/// response head is ready (so `processing` leaves out bodies still
/// streaming), as `discarded` when it ended without one (the client went
/// away). Not counted, so 0 or empty: `received` and `sent` (bytes from and
/// to clients), `responses.codes` (only classes are counted); no `ssl`.
pub fn zone_json(z: &ListenerCounts) -> Value {
    let r = &z.responses;
    json!({
        "processing": z.processing,
        "requests": z.requests,
        "responses": {
            "1xx": r[0], "2xx": r[1], "3xx": r[2], "4xx": r[3], "5xx": r[4],
            "codes": {},
            "total": z.responses_total(),
        },
        "discarded": z.discarded,
        "received": 0,
        "sent": 0,
    })
}

/// Every proxy listener's name (its bound address) and counters.
fn zones() -> Vec<(String, ListenerCounts)> {
    crate::proxy::stats::listeners()
        .iter()
        .map(|l| (l.addr().to_string(), l.counts()))
        .collect()
}

fn counts(zones: &[(String, ListenerCounts)]) -> Vec<ListenerCounts> {
    zones.iter().map(|(_, c)| *c).collect()
}

/// Reads a JSON object body, whatever the content type says.
fn json_object(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, NgxError> {
    let body = body.map_err(|e| {
        NgxError::new(
            e.status(),
            "JsonError",
            format!("cannot read the body: {e}"),
        )
    })?;
    let v: Value = serde_json::from_slice(&body).map_err(|e| {
        NgxError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "JsonError",
            format!("json error: {e}"),
        )
    })?;
    match v {
        Value::Object(m) => Ok(m),
        other => Err(NgxError::format(format!(
            "the body must be a JSON object, not {other}"
        ))),
    }
}

/// A boolean as NGINX Plus takes it: JSON `true`/`false`, or the strings
/// `"true"`/`"false"` (what clients such as the Python `nginxplusapi` send).
pub fn lenient_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// A non-negative integer as NGINX Plus takes it: a JSON number, or a string
/// of decimal digits (`"7"`).
pub fn lenient_uint(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        _ => None,
    }
}

fn uint(key: &str, v: &Value) -> Result<u32, NgxError> {
    lenient_uint(v)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            NgxError::format(format!(
                "{key}: expected a non-negative integer (a number or a string of digits), got {v}"
            ))
        })
}

fn boolean(key: &str, v: &Value) -> Result<bool, NgxError> {
    lenient_bool(v).ok_or_else(|| {
        NgxError::format(format!(
            "{key}: expected true or false (or the strings \"true\", \"false\"), got {v}"
        ))
    })
}

fn weight(v: &Value) -> Result<u32, NgxError> {
    lenient_uint(v)
        .and_then(|n| u32::try_from(n).ok())
        .and_then(|w| check_weight(w).ok())
        .ok_or_else(|| {
            NgxError::new(
                StatusCode::BAD_REQUEST,
                "UpstreamBadWeight",
                format!(
                    "weight: expected an integer in {MIN_WEIGHT}..={MAX_WEIGHT} (a number or a string of digits), got {v}"
                ),
            )
        })
}

fn dur(key: &str, v: &Value) -> Result<Duration, NgxError> {
    let parsed = match v {
        Value::String(s) => parse_duration(s).map_err(|e| e.to_string()),
        Value::Number(n) => n
            .as_u64()
            .map(Duration::from_secs)
            .ok_or_else(|| format!("bad duration {n}")),
        other => Err(format!("expected a duration such as \"10s\", got {other}")),
    };
    parsed.map_err(|e| NgxError::format(format!("{key}: {e}")))
}

/// `route` and `service` have no counterpart here: only empty values pass.
fn empty_string(key: &str, v: &Value, code: &'static str) -> Result<(), NgxError> {
    match v.as_str() {
        Some("") => Ok(()),
        _ => Err(NgxError::new(
            StatusCode::BAD_REQUEST,
            code,
            format!("{key} is not supported by switchyard (got {v})"),
        )),
    }
}

/// The server a POST body describes.
pub fn new_server(body: &Map<String, Value>) -> Result<ServerConfig, NgxError> {
    let addr = match body.get("server") {
        Some(Value::String(a)) => with_default_port(a.trim()),
        Some(other) => {
            return Err(NgxError::new(
                StatusCode::BAD_REQUEST,
                "UpstreamBadAddress",
                format!("server: expected \"host[:port]\", got {other}"),
            ));
        }
        None => {
            return Err(NgxError::format(
                "the body has no \"server\" (\"host[:port]\")",
            ));
        }
    };
    check_server_addr(&addr).map_err(|e| {
        NgxError::new(
            StatusCode::BAD_REQUEST,
            "UpstreamBadAddress",
            format!("server {addr:?}: {e}"),
        )
    })?;
    let mut c = ServerConfig::new(addr);
    let mut drain = false;
    for (key, v) in body {
        match key.as_str() {
            "server" => {}
            "weight" => c.weight = weight(v)?,
            "max_conns" => c.max_conns = uint(key, v)?,
            "max_fails" => c.max_fails = uint(key, v)?,
            "fail_timeout" => c.fail_timeout = dur(key, v)?,
            "slow_start" => c.slow_start = dur(key, v)?,
            "backup" => c.backup = boolean(key, v)?,
            "down" => c.down = boolean(key, v)?,
            "drain" => drain = boolean(key, v)?,
            "route" => empty_string(key, v, "UpstreamConfFormatError")?,
            "service" => empty_string(key, v, "UpstreamConfFormatError")?,
            "id" => return Err(NgxError::format("id is read-only: the server gets one")),
            other => return Err(NgxError::format(format!("unknown parameter {other:?}"))),
        }
    }
    if drain {
        return Err(NgxError::format(
            "a new server can start up or down, not draining",
        ));
    }
    Ok(c)
}

/// What a PATCH needs to know of the server as it is.
#[derive(Debug, Clone)]
pub struct Current {
    pub addr: String,
    pub backup: bool,
    pub id: u32,
    pub state: AdminState,
}

/// The change a PATCH body asks for. `id`, `backup` and `service` cannot be
/// changed (the same value is accepted, so that a fetched object can be sent
/// back); `server` cannot either (remove and add instead).
pub fn server_patch(body: &Map<String, Value>, cur: &Current) -> Result<ServerPatch, NgxError> {
    let immutable = |key: &str| {
        NgxError::new(
            StatusCode::BAD_REQUEST,
            "UpstreamServerImmutable",
            format!("{key} of a server cannot be changed"),
        )
    };
    let mut p = ServerPatch::default();
    let (mut down, mut drain) = (None, None);
    for (key, v) in body {
        match key.as_str() {
            "id" => {
                if lenient_uint(v) != Some(u64::from(cur.id)) {
                    return Err(immutable("id"));
                }
            }
            "backup" => {
                if lenient_bool(v) != Some(cur.backup) {
                    return Err(immutable("backup"));
                }
            }
            "service" => {
                if v.as_str() != Some("") {
                    return Err(immutable("service"));
                }
            }
            "server" => {
                let same = v
                    .as_str()
                    .is_some_and(|a| with_default_port(a.trim()) == cur.addr);
                if !same {
                    return Err(NgxError::new(
                        StatusCode::BAD_REQUEST,
                        "UpstreamBadAddress",
                        format!(
                            "the address of a server cannot be changed here (from {:?} to {v}): \
                             DELETE it and POST the new one",
                            cur.addr
                        ),
                    ));
                }
            }
            "weight" => p.weight = Some(weight(v)?),
            "max_conns" => p.max_conns = Some(uint(key, v)?),
            "max_fails" => p.max_fails = Some(uint(key, v)?),
            "fail_timeout" => p.fail_timeout = Some(dur(key, v)?),
            "slow_start" => p.slow_start = Some(dur(key, v)?),
            "down" => down = Some(boolean(key, v)?),
            "drain" => drain = Some(boolean(key, v)?),
            "route" => empty_string(key, v, "UpstreamConfFormatError")?,
            other => return Err(NgxError::format(format!("unknown parameter {other:?}"))),
        }
    }
    p.state = match (down, drain) {
        (Some(true), Some(true)) => {
            return Err(NgxError::format("down and drain cannot both be true"));
        }
        (Some(true), _) => Some(AdminState::Down),
        (_, Some(true)) => Some(AdminState::Drain),
        (Some(false), _) => Some(AdminState::Up),
        (None, Some(false)) if cur.state == AdminState::Drain => Some(AdminState::Up),
        (None, _) => None,
    };
    Ok(p)
}

async fn apply(
    app: &AppState,
    commands: Vec<Command>,
    origin: String,
) -> Result<Vec<Arc<Server>>, NgxError> {
    super::app::write(&app.table, commands, origin)
        .await
        .map_err(|e| {
            NgxError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                e.to_string(),
            )
        })?
        .map_err(|e| NgxError::from(e.error))
}

/// Applies one server command and returns the server it touched.
async fn apply_one(
    app: &AppState,
    command: Command,
    origin: String,
) -> Result<Arc<Server>, NgxError> {
    apply(app, vec![command], origin)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| {
            NgxError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "the table returned no server for a server command",
            )
        })
}

fn upstream(app: &AppState, name: &str) -> Result<Arc<Upstream>, NgxError> {
    app.table
        .upstream(name)
        .ok_or_else(|| NgxError::upstream_not_found(name))
}

fn server_id(name: &str, id: &str) -> Result<u32, NgxError> {
    id.parse::<u32>().map_err(|_| {
        NgxError::new(
            StatusCode::NOT_FOUND,
            "UpstreamServerNotFound",
            format!("upstream {name:?} has no server {id:?} (servers are named by numeric id)"),
        )
    })
}

fn find(up: &Upstream, id: u32) -> Result<Arc<Server>, NgxError> {
    up.snapshot()
        .servers
        .iter()
        .find(|s| s.id == id)
        .cloned()
        .ok_or_else(|| {
            NgxError::new(
                StatusCode::NOT_FOUND,
                "UpstreamServerNotFound",
                format!("upstream {:?} has no server with id {id}", up.name),
            )
        })
}

fn method_not_supported(method: &Method) -> NgxError {
    NgxError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotSupported",
        format!("method not supported: {method}"),
    )
}

fn ok(v: Value, fields: Option<&[String]>, shape: Shape) -> Response {
    Json(filter_fields(v, fields, shape)).into_response()
}

/// `/api` and `/api/`: the versions.
pub(super) async fn handle_root(method: Method) -> Response {
    if method == Method::GET || method == Method::HEAD {
        Json(VERSIONS.collect::<Vec<u32>>()).into_response()
    } else {
        method_not_supported(&method).into_response()
    }
}

/// Everything else under `/api/`.
pub(super) async fn handle(
    State(app): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    admin: Option<Extension<AdminAddr>>,
    method: Method,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let rest = uri.path().strip_prefix("/api/").unwrap_or("");
    // `/api/v1/...` paths no native route took: the native API's 404.
    if rest == "v1" || rest.starts_with("v1/") {
        return ApiError::new(StatusCode::NOT_FOUND, "NotFound", "no such admin endpoint")
            .into_response();
    }
    let fields = parse_fields(uri.query());
    let admin = admin.map(|Extension(AdminAddr(a))| a);
    match run(&app, client, admin, &method, rest, fields.as_deref(), body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn run(
    app: &AppState,
    client: SocketAddr,
    admin: Option<SocketAddr>,
    method: &Method,
    rest: &str,
    fields: Option<&[String]>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, NgxError> {
    let target = parse_path(rest)?;
    // Every target can be read; only the four below can be written.
    if *method == Method::GET || *method == Method::HEAD {
        return read(app, admin, target, fields);
    }
    let origin = client.to_string();
    match (target, method.clone()) {
        (Target::Upstream(name), Method::DELETE) => reset_statistics(app, &name),
        (Target::Servers(name), Method::POST) => add_server(app, name, fields, body, origin).await,
        (Target::Server(name, id), Method::PATCH) => {
            patch_server(app, name, &id, fields, body, origin).await
        }
        (Target::Server(name, id), Method::DELETE) => {
            remove_server(app, name, &id, fields, origin).await
        }
        (_, m) => Err(method_not_supported(&m)),
    }
}

/// `GET`/`HEAD` of any target.
fn read(
    app: &AppState,
    admin: Option<SocketAddr>,
    target: Target,
    fields: Option<&[String]>,
) -> Result<Response, NgxError> {
    let now = crate::clock::now_ms();
    Ok(match target {
        Target::Versions => Json(VERSIONS.collect::<Vec<u32>>()).into_response(),
        Target::Root => ok(
            json!(["nginx", "connections", "http"]),
            fields,
            Shape::Plain,
        ),
        Target::Nginx => ok(nginx_json(admin, unix_ms_now()), fields, Shape::Object),
        Target::Connections => ok(connections_json(&counts(&zones())), fields, Shape::Object),
        Target::Http => ok(
            json!(["requests", "server_zones", "upstreams"]),
            fields,
            Shape::Plain,
        ),
        Target::Requests => ok(requests_json(&counts(&zones())), fields, Shape::Object),
        Target::ServerZones => {
            let map: Map<String, Value> = zones()
                .iter()
                .map(|(name, c)| (name.clone(), zone_json(c)))
                .collect();
            ok(Value::Object(map), fields, Shape::Map)
        }
        Target::ServerZone(name) => ok(server_zone(&name)?, fields, Shape::Object),
        Target::Upstreams => {
            let t = app.table.load();
            let map: Map<String, Value> = t
                .upstreams
                .iter()
                .map(|(name, u)| (name.clone(), upstream_json(u, now)))
                .collect();
            ok(Value::Object(map), fields, Shape::Map)
        }
        Target::Upstream(name) => {
            let u = upstream(app, &name)?;
            ok(upstream_json(&u, now), fields, Shape::Object)
        }
        Target::Servers(name) => {
            let u = upstream(app, &name)?;
            let list = server_confs(&u);
            ok(Value::Array(list), fields, Shape::List)
        }
        Target::Server(name, id) => {
            let id = server_id(&name, &id)?;
            let u = upstream(app, &name)?;
            let s = find(&u, id)?;
            ok(server_conf(&s), fields, Shape::Object)
        }
    })
}

/// One listener's zone, or a 404 that lists the zones there are.
fn server_zone(name: &str) -> Result<Value, NgxError> {
    let all = zones();
    let Some((_, c)) = all.iter().find(|(n, _)| *n == name) else {
        return Err(NgxError::new(
            StatusCode::NOT_FOUND,
            "ServerZoneNotFound",
            format!(
                "server zone not found: no listener {name:?} (zones are named by listen address: {})",
                all.iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    Ok(zone_json(c))
}

/// Every server of `u`, as `/servers` shows them.
fn server_confs(u: &Upstream) -> Vec<Value> {
    u.snapshot()
        .servers
        .iter()
        .map(|s| server_conf(s))
        .collect()
}

/// `DELETE .../upstreams/{name}`: zeroes the servers' counters; the table
/// does not change.
fn reset_statistics(app: &AppState, name: &str) -> Result<Response, NgxError> {
    for s in &upstream(app, name)?.snapshot().servers {
        s.runtime.stats.reset();
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST .../servers`: 201 with the server added.
async fn add_server(
    app: &AppState,
    name: String,
    fields: Option<&[String]>,
    body: Result<Bytes, BytesRejection>,
    origin: String,
) -> Result<Response, NgxError> {
    upstream(app, &name)?;
    let config = new_server(&json_object(body)?)?;
    // Name resolution may block: off the admin runtime's only thread.
    let spec = tokio::task::spawn_blocking(move || ServerSpec::resolve(config))
        .await
        .map_err(|e| {
            NgxError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                e.to_string(),
            )
        })??;
    let s = &apply_one(
        app,
        Command::Add {
            upstream: name,
            server: spec,
        },
        origin,
    )
    .await?;
    let v = filter_fields(server_conf(s), fields, Shape::Object);
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// `PATCH .../servers/{id}`: the server as it is after the change (an empty
/// patch changes nothing and writes nothing).
async fn patch_server(
    app: &AppState,
    name: String,
    id: &str,
    fields: Option<&[String]>,
    body: Result<Bytes, BytesRejection>,
    origin: String,
) -> Result<Response, NgxError> {
    let id = server_id(&name, id)?;
    let u = upstream(app, &name)?;
    let s = find(&u, id)?;
    let body = json_object(body)?;
    let cur = Current {
        addr: s.addr.clone(),
        backup: s.backup,
        id: s.id,
        state: s.state,
    };
    let patch = server_patch(&body, &cur)?;
    let s = if patch.is_empty() {
        s
    } else {
        apply_one(
            app,
            Command::Patch {
                upstream: name,
                server: ServerRef::Id(id),
                patch,
            },
            origin,
        )
        .await?
    };
    Ok(ok(server_conf(&s), fields, Shape::Object))
}

/// `DELETE .../servers/{id}`: the servers left.
async fn remove_server(
    app: &AppState,
    name: String,
    id: &str,
    fields: Option<&[String]>,
    origin: String,
) -> Result<Response, NgxError> {
    let id = server_id(&name, id)?;
    upstream(app, &name)?;
    apply(
        app,
        vec![Command::Remove {
            upstream: name.clone(),
            server: ServerRef::Id(id),
        }],
        origin,
    )
    .await?;
    let left: Vec<Value> = upstream(app, &name)
        .map(|u| server_confs(&u))
        .unwrap_or_default();
    Ok(ok(Value::Array(left), fields, Shape::List))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn paths_parse_with_or_without_trailing_slash() {
        assert_eq!(parse_path(""), Ok(Target::Versions));
        assert_eq!(parse_path("9"), Ok(Target::Root));
        assert_eq!(parse_path("4/"), Ok(Target::Root));
        assert_eq!(parse_path("9/http/"), Ok(Target::Http));
        assert_eq!(parse_path("9/http/upstreams/"), Ok(Target::Upstreams));
        assert_eq!(
            parse_path("7/http/upstreams/foo.com"),
            Ok(Target::Upstream("foo.com".into()))
        );
        assert_eq!(
            parse_path("7/http/upstreams/a%20b/servers/"),
            Ok(Target::Servers("a b".into()))
        );
        assert_eq!(
            parse_path("8/http/upstreams/a+b/servers/3"),
            Ok(Target::Server("a+b".into(), "3".into()))
        );
    }

    #[test]
    fn versions_outside_4_to_9_and_unknown_paths_are_404() {
        for v in ["3", "10", "0", "x", "-1"] {
            let e = parse_path(&format!("{v}/http")).unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::NOT_FOUND, "UnknownVersion"),
                "{v}"
            );
        }
        let e = parse_path("9/stream").unwrap_err();
        assert_eq!(e.code, "PathNotFound");
        let e = parse_path("9/http/upstreams/a/servers/1/x").unwrap_err();
        assert_eq!(e.code, "PathNotFound");
    }

    #[test]
    fn fields_filter_top_level_keys() {
        assert_eq!(parse_fields(None), None);
        assert_eq!(parse_fields(Some("fields=")), None);
        let f = parse_fields(Some("x=1&fields=id,%20server")).unwrap();
        assert_eq!(f, vec!["id", "server"]);
        let v = json!([{"id": 1, "server": "a", "weight": 2}]);
        assert_eq!(
            filter_fields(v, Some(&f), Shape::List),
            json!([{"id": 1, "server": "a"}])
        );
        let m = json!({"u": {"peers": [], "zone": "u"}});
        assert_eq!(
            filter_fields(m, Some(&["zone".to_string()]), Shape::Map),
            json!({"u": {"zone": "u"}})
        );
    }

    #[test]
    fn post_bodies_become_server_configs() {
        let c = new_server(&obj(json!({
            "server": "127.0.0.1:9001", "weight": 3, "max_conns": 10, "max_fails": 2,
            "fail_timeout": "5s", "slow_start": "0s", "route": "", "backup": true, "down": true
        })))
        .unwrap();
        assert_eq!(c.addr, "127.0.0.1:9001");
        assert_eq!((c.weight, c.max_conns, c.max_fails), (3, 10, 2));
        assert_eq!(c.fail_timeout, Duration::from_secs(5));
        assert!(c.backup && c.down);

        let code = |v: Value| new_server(&obj(v)).unwrap_err().code;
        assert_eq!(code(json!({})), "UpstreamConfFormatError");
        assert_eq!(code(json!({"server": "no pe"})), "UpstreamBadAddress");
        assert_eq!(code(json!({"server": 5})), "UpstreamBadAddress");
        assert_eq!(
            code(json!({"server": "127.0.0.1:1", "weight": 0})),
            "UpstreamBadWeight"
        );
        assert_eq!(
            code(json!({"server": "127.0.0.1:1", "weight": "x"})),
            "UpstreamBadWeight"
        );
        assert_eq!(
            code(json!({"server": "127.0.0.1:1", "weight": "1001"})),
            "UpstreamBadWeight"
        );
        assert_eq!(
            code(json!({"server": "127.0.0.1:1", "weight": 2.5})),
            "UpstreamBadWeight"
        );
        assert_eq!(
            code(json!({"server": "127.0.0.1:1", "colour": 1})),
            "UpstreamConfFormatError"
        );
        assert_eq!(
            code(json!({"server": "127.0.0.1:1", "id": 1})),
            "UpstreamConfFormatError"
        );
        assert_eq!(
            code(json!({"server": "127.0.0.1:1", "fail_timeout": "soon"})),
            "UpstreamConfFormatError"
        );
        assert_eq!(
            code(json!({"server": "127.0.0.1:1", "drain": true})),
            "UpstreamConfFormatError"
        );
    }

    #[test]
    fn patches_map_down_and_drain_and_refuse_immutables() {
        let cur = Current {
            addr: "127.0.0.1:9001".into(),
            backup: false,
            id: 2,
            state: AdminState::Up,
        };
        let p = |v: Value| server_patch(&obj(v), &cur);
        assert_eq!(
            p(json!({"down": true})).unwrap().state,
            Some(AdminState::Down)
        );
        assert_eq!(
            p(json!({"down": false})).unwrap().state,
            Some(AdminState::Up)
        );
        assert_eq!(
            p(json!({"drain": true})).unwrap().state,
            Some(AdminState::Drain)
        );
        assert_eq!(p(json!({"weight": 5})).unwrap().weight, Some(5));
        assert!(
            p(json!({"id": 2, "backup": false, "server": "127.0.0.1:9001"}))
                .unwrap()
                .is_empty()
        );
        for body in [
            json!({"id": 3}),
            json!({"backup": true}),
            json!({"service": "x"}),
        ] {
            let e = p(body).unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, "UpstreamServerImmutable")
            );
        }
        assert_eq!(
            p(json!({"weight": 1001})).unwrap_err().code,
            "UpstreamBadWeight"
        );
        assert_eq!(
            p(json!({"down": "yes"})).unwrap_err().code,
            "UpstreamConfFormatError"
        );
        assert_eq!(
            p(json!({"down": true, "drain": true})).unwrap_err().code,
            "UpstreamConfFormatError"
        );
        assert_eq!(
            p(json!({"server": "127.0.0.1:9"})).unwrap_err().code,
            "UpstreamBadAddress"
        );
        let draining = Current {
            state: AdminState::Drain,
            ..cur.clone()
        };
        assert_eq!(
            server_patch(&obj(json!({"drain": false})), &draining)
                .unwrap()
                .state,
            Some(AdminState::Up)
        );
    }

    #[test]
    fn strings_stand_for_booleans_and_numbers() {
        assert_eq!(lenient_bool(&json!(true)), Some(true));
        assert_eq!(lenient_bool(&json!("true")), Some(true));
        assert_eq!(lenient_bool(&json!("false")), Some(false));
        for v in [
            json!("True"),
            json!("yes"),
            json!("1"),
            json!(1),
            json!(""),
            json!(null),
        ] {
            assert_eq!(lenient_bool(&v), None, "{v}");
        }
        assert_eq!(lenient_uint(&json!(7)), Some(7));
        assert_eq!(lenient_uint(&json!("7")), Some(7));
        assert_eq!(lenient_uint(&json!("0")), Some(0));
        for v in [
            json!("x"),
            json!(""),
            json!("-1"),
            json!("+7"),
            json!(" 7"),
            json!("7.0"),
            json!(-1),
            json!(1.5),
            json!(true),
        ] {
            assert_eq!(lenient_uint(&v), None, "{v}");
        }
        let c = new_server(&obj(json!({
            "server": "127.0.0.1:9001", "weight": "7", "max_conns": "10", "max_fails": "0",
            "backup": "true", "down": "true"
        })))
        .unwrap();
        assert_eq!((c.weight, c.max_conns, c.max_fails), (7, 10, 0));
        assert!(c.backup && c.down);
        let c = new_server(&obj(
            json!({"server": "127.0.0.1:9001", "down": "false", "backup": "false"}),
        ))
        .unwrap();
        assert!(!c.backup && !c.down);

        let err = |v: Value| new_server(&obj(v)).unwrap_err();
        let e = err(json!({"server": "127.0.0.1:1", "down": "maybe"}));
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "UpstreamConfFormatError")
        );
        assert!(
            e.text.contains("down") && e.text.contains("maybe"),
            "{}",
            e.text
        );
        let e = err(json!({"server": "127.0.0.1:1", "weight": "x"}));
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "UpstreamBadWeight")
        );
        assert!(
            e.text.contains("1..=1000") && e.text.contains("\"x\""),
            "{}",
            e.text
        );
        let e = err(json!({"server": "127.0.0.1:1", "max_fails": "-2"}));
        assert_eq!(e.code, "UpstreamConfFormatError");
        assert!(e.text.starts_with("max_fails:"), "{}", e.text);
        assert_eq!(
            err(json!({"server": "127.0.0.1:1", "max_conns": "99999999999"})).code,
            "UpstreamConfFormatError"
        );
        assert_eq!(
            err(json!({"server": "127.0.0.1:1", "drain": "true"})).code,
            "UpstreamConfFormatError"
        );
    }

    #[test]
    fn a_server_without_a_port_gets_port_80() {
        assert_eq!(with_default_port("192.168.1.1"), "192.168.1.1:80");
        assert_eq!(with_default_port("[::1]"), "[::1]:80");
        assert_eq!(with_default_port("backend.internal"), "backend.internal:80");
        assert_eq!(with_default_port("192.168.1.1:8080"), "192.168.1.1:8080");
        assert_eq!(with_default_port("[::1]:8080"), "[::1]:8080");
        // Left for the address check to refuse.
        assert_eq!(with_default_port("::1"), "::1");
        assert_eq!(with_default_port("host:"), "host:");
        assert_eq!(with_default_port(""), "");

        let addr = |a: &str| new_server(&obj(json!({ "server": a }))).map(|c| c.addr);
        assert_eq!(addr("127.0.0.1").unwrap(), "127.0.0.1:80");
        assert_eq!(addr(" 127.0.0.1 ").unwrap(), "127.0.0.1:80");
        assert_eq!(addr("[::1]").unwrap(), "[::1]:80");
        assert_eq!(addr("localhost").unwrap(), "localhost:80");
        assert_eq!(addr("127.0.0.1:9001").unwrap(), "127.0.0.1:9001");
        for bad in [
            "::1",
            "::1:80",
            "[::1",
            "1.2.3.999",
            "bad host",
            "",
            "host:",
            "127.0.0.1:0",
        ] {
            let e = addr(bad).unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, "UpstreamBadAddress"),
                "{bad:?}: {}",
                e.text
            );
        }
    }

    #[test]
    fn patches_take_strings_as_nginxplusapi_sends_them() {
        let cur = Current {
            addr: "127.0.0.1:80".into(),
            backup: false,
            id: 4,
            state: AdminState::Up,
        };
        let p = |v: Value| server_patch(&obj(v), &cur);
        assert_eq!(
            p(json!({"down": "true"})).unwrap().state,
            Some(AdminState::Down)
        );
        assert_eq!(
            p(json!({"down": "false"})).unwrap().state,
            Some(AdminState::Up)
        );
        assert_eq!(
            p(json!({"drain": "true"})).unwrap().state,
            Some(AdminState::Drain)
        );
        let w = p(json!({"weight": "3", "max_conns": "5", "max_fails": "2"})).unwrap();
        assert_eq!(
            (w.weight, w.max_conns, w.max_fails),
            (Some(3), Some(5), Some(2))
        );
        // The same id, backup and server, as strings or without the port: no change.
        assert!(
            p(json!({"id": "4", "backup": "false", "server": "127.0.0.1"}))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            p(json!({"id": "5"})).unwrap_err().code,
            "UpstreamServerImmutable"
        );
        assert_eq!(
            p(json!({"backup": "true"})).unwrap_err().code,
            "UpstreamServerImmutable"
        );
        assert_eq!(
            p(json!({"server": "127.0.0.2"})).unwrap_err().code,
            "UpstreamBadAddress"
        );
        assert_eq!(
            p(json!({"weight": "x"})).unwrap_err().code,
            "UpstreamBadWeight"
        );
        assert_eq!(
            p(json!({"weight": "0"})).unwrap_err().code,
            "UpstreamBadWeight"
        );
        let e = p(json!({"down": "maybe"})).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "UpstreamConfFormatError")
        );
        assert_eq!(
            p(json!({"down": "true", "drain": "true"}))
                .unwrap_err()
                .code,
            "UpstreamConfFormatError"
        );
    }

    #[test]
    fn status_paths_parse() {
        assert_eq!(parse_path("9/nginx"), Ok(Target::Nginx));
        assert_eq!(parse_path("4/nginx/"), Ok(Target::Nginx));
        assert_eq!(parse_path("6/connections/"), Ok(Target::Connections));
        assert_eq!(parse_path("9/http/requests"), Ok(Target::Requests));
        assert_eq!(parse_path("9/http/server_zones/"), Ok(Target::ServerZones));
        assert_eq!(
            parse_path("9/http/server_zones/127.0.0.1:8080"),
            Ok(Target::ServerZone("127.0.0.1:8080".into()))
        );
        assert_eq!(
            parse_path("9/http/server_zones/%5B::1%5D:80/"),
            Ok(Target::ServerZone("[::1]:80".into()))
        );
        assert_eq!(parse_path("9/nginx/x").unwrap_err().code, "PathNotFound");
    }

    fn listener(
        accepted: u64,
        open: u64,
        idle: u64,
        responses: [u64; 5],
        discarded: u64,
    ) -> ListenerCounts {
        let requests = responses.iter().sum::<u64>() + discarded + 2;
        ListenerCounts {
            accepted,
            open,
            idle,
            requests,
            processing: 2,
            responses,
            discarded,
        }
    }

    #[test]
    fn connections_requests_and_zones_add_up_the_listeners() {
        let a = listener(10, 4, 1, [0, 7, 1, 2, 3], 1);
        let b = listener(5, 2, 2, [1, 0, 0, 0, 0], 0);
        assert_eq!(
            connections_json(&[a, b]),
            json!({"accepted": 15, "dropped": 0, "active": 3, "idle": 3})
        );
        assert_eq!(
            connections_json(&[]),
            json!({"accepted": 0, "dropped": 0, "active": 0, "idle": 0})
        );
        // total = (13 answered + 1 discarded + 2 processing) + (1 + 0 + 2).
        assert_eq!(requests_json(&[a, b]), json!({"total": 19, "current": 4}));
        assert_eq!(
            zone_json(&a),
            json!({
                "processing": 2,
                "requests": 16,
                "responses": {"1xx": 0, "2xx": 7, "3xx": 1, "4xx": 2, "5xx": 3, "codes": {}, "total": 13},
                "discarded": 1,
                "received": 0,
                "sent": 0,
            })
        );
    }

    #[test]
    fn the_nginx_object_has_the_documented_fields() {
        let admin = SocketAddr::from(([127, 0, 0, 1], 18080));
        let v = nginx_json(Some(admin), 1_656_415_567_305);
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = vec![
            "address",
            "build",
            "generation",
            "load_timestamp",
            "pid",
            "ppid",
            "timestamp",
            "version",
        ];
        want.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, want);
        assert_eq!(v["address"], "127.0.0.1");
        assert_eq!(v["build"], "switchyard");
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(v["timestamp"], "2022-06-28T11:26:07.305Z");
        assert_eq!(v["pid"], std::process::id());
        assert!(v["ppid"].as_u64().is_some_and(|p| p > 0), "{v}");
        assert!(v["generation"].is_u64());
        assert!(
            humantime::parse_rfc3339(v["load_timestamp"].as_str().unwrap()).is_ok(),
            "{v}"
        );
        assert_eq!(nginx_json(None, 0)["address"], "");
    }
}
