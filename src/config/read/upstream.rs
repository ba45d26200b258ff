//! `[upstream.NAME]` in the file: servers, balancing, timeouts, retries and
//! health checks. Reads each key and places each problem at it; what is a
//! problem is decided by the rules beside the types (`config::rules`), the
//! same ones the APIs and the state file use.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use toml::de::DeValue;

use super::fields::{Sink, Span, Table, as_table, int_value};
use crate::config::rules::{
    MIN_COUNT, PORTS, STATUSES, check_backup, check_body_regex, check_hash_key, check_header,
    check_method, check_panic_threshold, check_path, check_positive, check_protocol,
    check_server_name, misplaced_keys,
};
use crate::config::{
    Balance, HashKey, HealthCheckConfig, HealthCheckKind, KeepaliveConfig, MAX_WEIGHT, MIN_TRIES,
    MIN_WEIGHT, RetryPolicy, Scheme, ServerConfig, ServiceError, Timeouts, UpstreamConfig,
    UpstreamError, UpstreamProtocol, UpstreamTls, check_server_addr,
};

const UPSTREAM_KEYS: &[&str] = &[
    "balance",
    "hash_key",
    "keepalive",
    "keepalive_timeout",
    "connect_timeout",
    "read_timeout",
    "send_timeout",
    "retry",
    "scheme",
    "protocol",
    "tls_server_name",
    "tls_ca",
    "tls_verify",
    "tls_client_cert",
    "tls_client_key",
    "servers",
    "health_check",
    "panic_threshold",
];
const SERVER_KEYS: &[&str] = &[
    "addr",
    "weight",
    "max_fails",
    "fail_timeout",
    "max_conns",
    "slow_start",
    "backup",
    "down",
    "resolve",
    "service",
];
const RETRY_KEYS: &[&str] = &["tries", "timeout", "non_idempotent"];
const HEALTH_KEYS: &[&str] = &[
    "type",
    "http_req",
    "method",
    "path",
    "host",
    "headers",
    "interval",
    "jitter",
    "timeout",
    "fall",
    "rise",
    "valid_statuses",
    "body",
    "body_regex",
    "port",
    "concurrency",
    "mandatory",
];
const U32: i128 = u32::MAX as i128;

pub(super) fn read_upstream(name: &str, t: &Table<'_, '_>, sink: &mut Sink<'_>) -> UpstreamConfig {
    t.check_keys(sink, UPSTREAM_KEYS);
    let (balance, hash_key) = read_balance(t, sink);
    let (scheme, protocol) = read_scheme(t, sink);
    let tls = read_upstream_tls(t, sink);
    let servers = read_servers(t, sink, balance);
    let (keepalive, timeouts) = read_connections(t, sink);
    let retry = t
        .table(sink, "retry", "retry")
        .map(|r| read_retry(&r, sink))
        .unwrap_or_default();
    let health_check = t
        .table(sink, "health_check", "health_check")
        .map(|h| read_health_check(&h, sink));
    let panic_threshold = read_panic_threshold(t, sink);
    UpstreamConfig {
        name: name.to_string(),
        balance,
        hash_key,
        servers,
        keepalive,
        timeouts,
        retry,
        health_check,
        scheme,
        protocol,
        tls,
        panic_threshold,
    }
}

/// `panic_threshold`: any integer is read, so that the rule beside the type
/// words the complaint (its range, and how to turn panic mode off).
fn read_panic_threshold(t: &Table<'_, '_>, sink: &mut Sink<'_>) -> Option<u8> {
    let v = t.get("panic_threshold")?;
    let n: i128 = t.int(sink, "panic_threshold", i128::MIN, i128::MAX)?;
    check_panic_threshold(n)
        .map_err(|e| t.err(sink, &v.span(), e.to_string()))
        .ok()
}

/// `balance` and `hash_key`, and whether they go together. The pairing is
/// judged only when both were readable, so that one typo is one report.
fn read_balance(t: &Table<'_, '_>, sink: &mut Sink<'_>) -> (Balance, Option<HashKey>) {
    let mut balance = Balance::RoundRobin;
    let mut balance_span = t.span.clone();
    let mut balance_known = t.get("balance").is_none();
    if let Some((s, span)) = t.str(sink, "balance") {
        match Balance::from_name(s) {
            Ok(b) => {
                balance = b;
                balance_known = true;
            }
            Err(e) => t.err(sink, &span, e.to_string()),
        }
        balance_span = span;
    }
    let hash_key = t
        .str(sink, "hash_key")
        .and_then(|(s, span)| match HashKey::from_name(s) {
            Ok(k) => Some((k, span)),
            Err(e) => {
                t.err(sink, &span, e.to_string());
                None
            }
        });
    let key_given = t.get("hash_key").is_some();
    if let Err(e) = check_hash_key(balance, hash_key.as_ref().map(|(k, _)| k)) {
        match &hash_key {
            None if !key_given => t.err(sink, &balance_span, e.to_string()),
            Some((_, span)) if balance_known => t.err(sink, span, e.to_string()),
            _ => {}
        }
    }
    (balance, hash_key.map(|(k, _)| k))
}

fn read_scheme(t: &Table<'_, '_>, sink: &mut Sink<'_>) -> (Scheme, UpstreamProtocol) {
    let mut scheme = Scheme::Http;
    if let Some((s, span)) = t.str(sink, "scheme") {
        match Scheme::from_name(s) {
            Ok(v) => scheme = v,
            Err(e) => t.err(sink, &span, e.to_string()),
        }
    }
    let mut protocol = UpstreamProtocol::Http1;
    if let Some((p, span)) = t.str(sink, "protocol") {
        match UpstreamProtocol::from_name(p).and_then(|v| check_protocol(scheme, v).map(|()| v)) {
            Ok(v) => protocol = v,
            Err(e) => t.err(sink, &span, e.to_string()),
        }
    }
    (scheme, protocol)
}

fn read_connections(t: &Table<'_, '_>, sink: &mut Sink<'_>) -> (KeepaliveConfig, Timeouts) {
    let mut keepalive = KeepaliveConfig::default();
    if let Some(n) = t.int(sink, "keepalive", 0, U32) {
        keepalive.max_idle = n;
    }
    if let Some(d) = t.duration(sink, "keepalive_timeout") {
        keepalive.idle_timeout = d;
    }
    let mut timeouts = Timeouts::default();
    for (key, slot) in [
        ("connect_timeout", &mut timeouts.connect),
        ("read_timeout", &mut timeouts.read),
        ("send_timeout", &mut timeouts.send),
    ] {
        if let Some(d) = t.duration(sink, key) {
            *slot = d;
        }
    }
    (keepalive, timeouts)
}

/// The `tls_*` keys of an upstream. Only read here; the files are loaded when
/// the upstream is built.
fn read_upstream_tls(t: &Table<'_, '_>, sink: &mut Sink<'_>) -> UpstreamTls {
    let mut tls = UpstreamTls::default();
    let path = |sink: &mut Sink<'_>, key: &'static str| {
        t.str(sink, key).and_then(|(s, span)| {
            if s.is_empty() {
                t.err(sink, &span, UpstreamError::EmptyPath(key).to_string());
                None
            } else {
                Some(PathBuf::from(s))
            }
        })
    };
    tls.ca = path(sink, "tls_ca");
    tls.client_cert = path(sink, "tls_client_cert");
    tls.client_key = path(sink, "tls_client_key");
    if let Some((name, span)) = t.str(sink, "tls_server_name") {
        if let Err(e) = check_server_name(name) {
            t.err(sink, &span, e.to_string());
        }
        tls.server_name = Some(name.to_string());
    }
    if let Some((v, _)) = t.bool(sink, "tls_verify") {
        tls.verify = v;
    }
    for (have, other) in [
        ("tls_client_cert", "tls_client_key"),
        ("tls_client_key", "tls_client_cert"),
    ] {
        if let (Some(v), None) = (t.get(have), t.get(other)) {
            let e = UpstreamError::HalfClientCert(have, other);
            t.err(sink, &v.span(), e.to_string());
        }
    }
    if let (Some(v), Some(_)) = (t.get("tls_verify"), t.get("tls_ca"))
        && matches!(v.get_ref(), DeValue::Boolean(false))
    {
        t.err(sink, &v.span(), UpstreamError::VerifyOffWithCa.to_string());
    }
    tls
}

fn read_servers(t: &Table<'_, '_>, sink: &mut Sink<'_>, balance: Balance) -> Vec<ServerConfig> {
    let Some((list, list_span)) = t.array(sink, "servers") else {
        if t.get("servers").is_none() {
            t.err(sink, &t.span, "upstream has no servers");
        }
        return Vec::new();
    };
    if list.is_empty() {
        t.err(sink, &list_span, "upstream has no servers");
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut servers = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let addr = match v.get_ref() {
            DeValue::Table(m) => m
                .get("addr")
                .or_else(|| m.get("service"))
                .and_then(|a| a.get_ref().as_str()),
            _ => None,
        };
        let ctx = match addr {
            Some(a) => format!("{}server {a:?}: ", t.ctx),
            None => format!("{}server #{}: ", t.ctx, i + 1),
        };
        let key = format!("server #{}", i + 1);
        let Some(s) = as_table(t, sink, &key, v, "server", ctx) else {
            continue;
        };
        let (server, addr_span, backup_span) = read_server(&s, sink);
        let Some(addr_span) = addr_span else {
            // No usable addr: already reported, and nothing to compare or keep.
            place_backup(&s, sink, &server, backup_span, balance);
            continue;
        };
        if let Some(first) = seen.get(&server.addr.to_ascii_lowercase()) {
            let msg = format!(
                "duplicate server {:?} (also at line {})",
                server.addr,
                sink.line_of(*first)
            );
            t.err(sink, &addr_span, msg);
        } else {
            seen.insert(server.addr.to_ascii_lowercase(), addr_span.start);
        }
        place_backup(&s, sink, &server, backup_span, balance);
        servers.push(server);
    }
    servers
}

/// Reports a backup server where the upstream's balancing refuses one.
fn place_backup(
    s: &Table<'_, '_>,
    sink: &mut Sink<'_>,
    server: &ServerConfig,
    backup_span: Option<Span>,
    balance: Balance,
) {
    if let (Some(span), Err(e)) = (backup_span, check_backup(balance, server.backup)) {
        s.err(sink, &span, e.to_string());
    }
}

/// The server, where its `addr` is (`None` when it has no valid one), and where
/// its `backup` flag is if given. Every field is checked even when `addr` is bad,
/// so that all of a server's problems are reported together.
fn read_server(
    s: &Table<'_, '_>,
    sink: &mut Sink<'_>,
) -> (ServerConfig, Option<Span>, Option<Span>) {
    s.check_keys(sink, SERVER_KEYS);
    let (ok, addr, addr_span, service) = read_server_name(s, sink);
    let mut server = ServerConfig::new(addr);
    if let Some(w) = s.int(sink, "weight", MIN_WEIGHT.into(), MAX_WEIGHT.into()) {
        server.weight = w;
    }
    if let Some(n) = s.int(sink, "max_fails", 0, U32) {
        server.max_fails = n;
    }
    if let Some(n) = s.int(sink, "max_conns", 0, U32) {
        server.max_conns = n;
    }
    if let Some(d) = s.duration(sink, "fail_timeout") {
        server.fail_timeout = d;
    }
    if let Some(d) = s.duration(sink, "slow_start") {
        server.slow_start = d;
    }
    let backup = s.bool(sink, "backup");
    if let Some((b, _)) = backup {
        server.backup = b;
    }
    if let Some((d, _)) = s.bool(sink, "down") {
        server.down = d;
    }
    if let Some((r, _)) = s.bool(sink, "resolve") {
        server.resolve = r;
    }
    if let Some((name, span)) = service {
        server.service = Some(name.to_string());
        // A backup flag is reported at itself, the other rules at the name.
        match (server.check_service(name), &backup) {
            (Err(e @ ServiceError::BackupWithService), Some((_, at))) => {
                s.err(sink, at, e.to_string())
            }
            (Err(e), _) => s.err(sink, &span, e.to_string()),
            (Ok(()), _) => {}
        }
    }
    (
        server,
        ok.then_some(addr_span),
        backup.map(|(_, span)| span),
    )
}

/// `addr` or `service` (an SRV name), whichever the entry has: whether it is
/// usable, the name, where it is, and the service with its place.
fn read_server_name<'a>(
    s: &Table<'a, '_>,
    sink: &mut Sink<'_>,
) -> (bool, String, Span, Option<(&'a str, Span)>) {
    let addr = s.str(sink, "addr");
    let service = s.str(sink, "service");
    let mut ok = true;
    match (&addr, &service) {
        (Some((a, span)), None) => {
            if let Err(e) = check_server_addr(a) {
                s.err(sink, span, format!("bad address: {e}"));
                ok = false;
            }
        }
        (Some((_, span)), Some(_)) => {
            s.err(sink, span, ServiceError::ServiceWithAddr.to_string());
            ok = false;
        }
        (None, Some(_)) => {}
        (None, None) => {
            if s.get("addr").is_none() && s.get("service").is_none() {
                s.missing(sink, "addr");
            }
            ok = false;
        }
    }
    let (name, span) = match (addr, &service) {
        (Some((a, span)), _) => (a.to_string(), span),
        (None, Some((svc, span))) => (svc.to_string(), span.clone()),
        (None, None) => (String::new(), s.span.clone()),
    };
    (ok, name, span, service)
}

fn read_retry(r: &Table<'_, '_>, sink: &mut Sink<'_>) -> RetryPolicy {
    r.check_keys(sink, RETRY_KEYS);
    let mut retry = RetryPolicy::default();
    if let Some(n) = r.int(sink, "tries", MIN_TRIES.into(), U32) {
        retry.tries = n;
    }
    if let Some(d) = r.duration(sink, "timeout") {
        retry.timeout = d;
    }
    if let Some((b, _)) = r.bool(sink, "non_idempotent") {
        retry.non_idempotent = b;
    }
    retry
}

fn read_health_check(h: &Table<'_, '_>, sink: &mut Sink<'_>) -> HealthCheckConfig {
    h.check_keys(sink, HEALTH_KEYS);
    let mut c = HealthCheckConfig::new(read_check_kind(h, sink));
    for (key, e) in misplaced_keys(c.kind, |k| h.get(k).is_some()) {
        if let Some(v) = h.get(key) {
            h.err(sink, &v.span(), e.to_string());
        }
    }
    read_check_request(h, sink, &mut c);
    read_check_timing(h, sink, &mut c);
    read_check_verdict(h, sink, &mut c);
    c.port = h.int(sink, "port", (*PORTS.start()).into(), (*PORTS.end()).into());
    c.concurrency = h
        .int(sink, "concurrency", MIN_COUNT.into(), U32)
        .unwrap_or(c.concurrency);
    c.mandatory = h.bool(sink, "mandatory").is_some_and(|(b, _)| b);
    c
}

/// `type`, required: `http` stands in while the rest is read when it is bad.
fn read_check_kind(h: &Table<'_, '_>, sink: &mut Sink<'_>) -> HealthCheckKind {
    match h.str(sink, "type") {
        Some((s, span)) => match HealthCheckKind::from_name(s) {
            Ok(k) => return k,
            Err(e) => h.err(sink, &span, e.to_string()),
        },
        None if h.get("type").is_none() => h.missing(sink, "type"),
        None => {}
    }
    HealthCheckKind::Http
}

/// What is sent: `http_req` whole, or `method`, `path`, `host` and `headers`.
fn read_check_request(h: &Table<'_, '_>, sink: &mut Sink<'_>, c: &mut HealthCheckConfig) {
    c.http_req = h.str(sink, "http_req").map(|(s, _)| s.to_string());
    if let Some((m, span)) = h.str(sink, "method") {
        if let Err(e) = check_method(m) {
            h.err(sink, &span, e.to_string());
        }
        c.method = m.to_string();
    }
    if let Some((p, span)) = h.str(sink, "path") {
        if let Err(e) = check_path(p) {
            h.err(sink, &span, e.to_string());
        }
        c.path = p.to_string();
    }
    c.host = h.str(sink, "host").map(|(s, _)| s.to_string());
    if let Some(t) = h.table(sink, "headers", "headers") {
        for (k, v) in t.map.iter() {
            let name = k.get_ref().to_string();
            let Some(value) = v.get_ref().as_str() else {
                t.err(
                    sink,
                    &v.span(),
                    format!("header {name:?} must be a one-line string"),
                );
                continue;
            };
            match check_header(&name, value) {
                Ok(()) => c.headers.push((name, value.to_string())),
                Err(e) => t.err(sink, &v.span(), e.to_string()),
            }
        }
    }
}

/// `interval` and `timeout` (both above zero), `jitter`, `fall` and `rise`.
fn read_check_timing(h: &Table<'_, '_>, sink: &mut Sink<'_>, c: &mut HealthCheckConfig) {
    let mut positive = |key: &'static str, default: Duration| match h.duration(sink, key) {
        Some(d) => match check_positive(key, d) {
            Ok(()) => d,
            Err(e) => {
                if let Some(v) = h.get(key) {
                    h.err(sink, &v.span(), e.to_string());
                }
                default
            }
        },
        None => default,
    };
    c.interval = positive("interval", c.interval);
    c.timeout = positive("timeout", c.timeout);
    c.jitter = h.duration(sink, "jitter").unwrap_or(c.jitter);
    c.fall = h.int(sink, "fall", MIN_COUNT.into(), U32).unwrap_or(c.fall);
    c.rise = h.int(sink, "rise", MIN_COUNT.into(), U32).unwrap_or(c.rise);
}

/// What makes an answer a pass: `valid_statuses`, `body`, `body_regex`.
fn read_check_verdict(h: &Table<'_, '_>, sink: &mut Sink<'_>, c: &mut HealthCheckConfig) {
    if let Some((list, _)) = h.array(sink, "valid_statuses") {
        for v in list.iter() {
            let (least, most) = ((*STATUSES.start()).into(), (*STATUSES.end()).into());
            if let Some(code) = int_value(h, sink, "status", v, least, most) {
                c.valid_statuses.push(code);
            }
        }
    }
    c.body = h.str(sink, "body").map(|(s, _)| s.to_string());
    if let Some((re, span)) = h.str(sink, "body_regex") {
        if let Err(e) = check_body_regex(re) {
            h.err(sink, &span, e.to_string());
        }
        c.body_regex = Some(re.to_string());
    }
}
