//! `[upstream.NAME]`: servers, balancing, timeouts, retries and health checks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use toml::de::DeValue;

use super::addr;
use super::fields::{Sink, Span, Table, as_table, int_value};
use super::{
    Balance, HashKey, HealthCheckConfig, HealthCheckKind, KeepaliveConfig, RetryPolicy, Scheme,
    ServerConfig, Timeouts, UpstreamConfig, UpstreamProtocol, UpstreamTls,
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

    let mut balance = Balance::RoundRobin;
    let mut balance_span = t.span.clone();
    let mut balance_known = t.get("balance").is_none();
    if let Some((s, span)) = t.str(sink, "balance") {
        match Balance::parse(s) {
            Some(b) => {
                balance = b;
                balance_known = true;
            }
            None => {
                let valid: Vec<_> = Balance::ALL.iter().map(|b| b.as_str()).collect();
                let msg = format!(
                    "unknown balance method {s:?} (expected one of: {})",
                    valid.join(", ")
                );
                t.err(sink, &span, msg);
            }
        }
        balance_span = span;
    }

    let hash_key = t.str(sink, "hash_key").and_then(|(s, span)| match HashKey::parse(s) {
        Some(k) => Some((k, span)),
        None => {
            let msg = format!(
                "bad hash_key {s:?} (expected \"uri\", \"remote_addr\", \"header:NAME\" or \"cookie:NAME\")"
            );
            t.err(sink, &span, msg);
            None
        }
    });
    match (&hash_key, balance) {
        (None, Balance::Hash) if t.get("hash_key").is_none() => t.err(
            sink,
            &balance_span,
            "balance \"hash\" needs a hash_key (\"uri\", \"remote_addr\", \"header:NAME\" or \"cookie:NAME\")",
        ),
        (Some((_, span)), b) if b != Balance::Hash && balance_known => {
            let msg = format!(
                "hash_key is only used with balance = \"hash\" (balance is {:?})",
                b.as_str()
            );
            t.err(sink, span, msg);
        }
        _ => {}
    }

    let mut scheme = Scheme::Http;
    if let Some((s, span)) = t.str(sink, "scheme") {
        match s {
            "http" => {}
            "https" => scheme = Scheme::Https,
            _ => t.err(
                sink,
                &span,
                format!("unknown scheme {s:?} (expected \"http\" or \"https\")"),
            ),
        }
    }
    let mut protocol = UpstreamProtocol::Http1;
    if let Some((p, span)) = t.str(sink, "protocol") {
        match (UpstreamProtocol::parse(p), scheme) {
            (Some(UpstreamProtocol::H2), Scheme::Http) => t.err(
                sink,
                &span,
                "protocol \"h2\" is agreed through TLS: it needs scheme = \"https\" (use \"h2c\" for cleartext HTTP/2)",
            ),
            (Some(UpstreamProtocol::H2c), Scheme::Https) => t.err(
                sink,
                &span,
                "protocol \"h2c\" is cleartext HTTP/2: with scheme = \"https\" use \"h2\"",
            ),
            (Some(v), _) => protocol = v,
            (None, _) => t.err(
                sink,
                &span,
                format!("unknown protocol {p:?} (expected \"http1\", \"h2\" or \"h2c\")"),
            ),
        }
    }
    let tls = read_upstream_tls(t, sink);

    let servers = read_servers(t, sink, balance);

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

    let retry = t
        .table(sink, "retry", "retry")
        .map(|r| read_retry(&r, sink))
        .unwrap_or_default();
    let health_check = t
        .table(sink, "health_check", "health_check")
        .map(|h| read_health_check(&h, sink));

    UpstreamConfig {
        name: name.to_string(),
        balance,
        hash_key: hash_key.map(|(k, _)| k),
        servers,
        keepalive,
        timeouts,
        retry,
        health_check,
        scheme,
        protocol,
        tls,
    }
}

/// The `tls_*` keys of an upstream. Only read here; the files are loaded when
/// the upstream is built.
fn read_upstream_tls(t: &Table<'_, '_>, sink: &mut Sink<'_>) -> UpstreamTls {
    let mut tls = UpstreamTls::default();
    let path = |sink: &mut Sink<'_>, key: &str| {
        t.str(sink, key).and_then(|(s, span)| {
            if s.is_empty() {
                t.err(sink, &span, format!("{key} must name a file"));
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
        if rustls_pki_types::ServerName::try_from(name).is_err() {
            t.err(
                sink,
                &span,
                format!("bad tls_server_name {name:?} (expected a DNS name or an IP address)"),
            );
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
            t.err(
                sink,
                &v.span(),
                format!("{have} needs {other} too (a client certificate and its key)"),
            );
        }
    }
    if let (Some(v), Some(_)) = (t.get("tls_verify"), t.get("tls_ca"))
        && matches!(v.get_ref(), DeValue::Boolean(false))
    {
        t.err(
            sink,
            &v.span(),
            "tls_verify = false ignores tls_ca: keep one of the two",
        );
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
            DeValue::Table(m) => m.get("addr").and_then(|a| a.get_ref().as_str()),
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
            check_backup(&s, sink, &server, backup_span, balance);
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
        check_backup(&s, sink, &server, backup_span, balance);
        servers.push(server);
    }
    servers
}

/// nginx refuses backup servers with hashing: a key's server must not change
/// merely because another server went down, which a backup would make it do.
fn check_backup(
    s: &Table<'_, '_>,
    sink: &mut Sink<'_>,
    server: &ServerConfig,
    backup_span: Option<Span>,
    balance: Balance,
) {
    if let (Some(span), true, Balance::Hash | Balance::IpHash) =
        (backup_span, server.backup, balance)
    {
        let msg = format!(
            "backup servers cannot be used with balance {:?}",
            balance.as_str()
        );
        s.err(sink, &span, msg);
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
    let addr = s.str(sink, "addr");
    let mut ok = addr.is_some();
    if let Some((a, span)) = &addr
        && let Err(e) = addr::server_addr(a)
    {
        s.err(sink, span, format!("bad address: {e}"));
        ok = false;
    }
    if s.get("addr").is_none() {
        s.missing(sink, "addr");
    }
    let (addr, addr_span) = addr.unwrap_or_default();
    let mut server = ServerConfig::new(addr);
    if let Some(w) = s.int(sink, "weight", 1, 1000) {
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
    (
        server,
        ok.then_some(addr_span),
        backup.map(|(_, span)| span),
    )
}

fn read_retry(r: &Table<'_, '_>, sink: &mut Sink<'_>) -> RetryPolicy {
    r.check_keys(sink, RETRY_KEYS);
    let mut retry = RetryPolicy::default();
    if let Some(n) = r.int(sink, "tries", 1, U32) {
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
    let mut c = HealthCheckConfig::new(HealthCheckKind::Http);
    match h.str(sink, "type") {
        Some((s, span)) => match HealthCheckKind::parse(s) {
            Some(k) => c.kind = k,
            None => {
                let msg = format!(
                    "unknown health check type {s:?} (expected \"http\", \"https\" or \"tcp\")"
                );
                h.err(sink, &span, msg);
            }
        },
        None if h.get("type").is_none() => h.missing(sink, "type"),
        None => {}
    }
    let http_req = h.str(sink, "http_req");
    if let (Some((_, span)), HealthCheckKind::Tcp) = (&http_req, c.kind) {
        h.err(
            sink,
            span,
            "http_req is only used with type = \"http\" or \"https\"",
        );
    }
    if let Some((_, span)) = &http_req {
        for key in ["method", "path", "host", "headers"] {
            if h.get(key).is_some() {
                h.err(
                    sink,
                    span,
                    format!("http_req is the whole request; {key} cannot be used with it"),
                );
            }
        }
    }
    c.http_req = http_req.map(|(s, _)| s.to_string());
    if let Some((m, span)) = h.str(sink, "method") {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
            h.err(
                sink,
                &span,
                format!("bad method {m:?} (expected an upper-case HTTP method such as GET)"),
            );
        }
        c.method = m.to_string();
    }
    if let Some((p, span)) = h.str(sink, "path") {
        if !p.starts_with('/')
            || p.bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            h.err(
                sink,
                &span,
                format!("bad path {p:?} (must start with \"/\" and have no spaces)"),
            );
        }
        c.path = p.to_string();
    }
    c.host = h.str(sink, "host").map(|(s, _)| s.to_string());
    if let Some(t) = h.table(sink, "headers", "headers") {
        for (k, v) in t.map.iter() {
            match v.get_ref().as_str() {
                Some(val) if !val.contains(['\r', '\n']) => {
                    c.headers.push((k.get_ref().to_string(), val.to_string()))
                }
                _ => t.err(
                    sink,
                    &v.span(),
                    format!("header {:?} must be a one-line string", k.get_ref()),
                ),
            }
        }
    }
    let mut positive = |key: &str, default: Duration| match h.duration(sink, key) {
        Some(d) if d.is_zero() => {
            if let Some(v) = h.get(key) {
                h.err(sink, &v.span(), format!("{key} must be greater than 0"));
            }
            default
        }
        Some(d) => d,
        None => default,
    };
    c.interval = positive("interval", c.interval);
    c.timeout = positive("timeout", c.timeout);
    c.jitter = h.duration(sink, "jitter").unwrap_or(c.jitter);
    if let Some((list, _)) = h.array(sink, "valid_statuses") {
        for v in list.iter() {
            if let Some(code) = int_value(h, sink, "status", v, 100, 599) {
                c.valid_statuses.push(code);
            }
        }
    }
    c.body = h.str(sink, "body").map(|(s, _)| s.to_string());
    if let Some((re, span)) = h.str(sink, "body_regex") {
        if let Err(e) = regex::Regex::new(re) {
            h.err(sink, &span, format!("bad body_regex: {e}"));
        }
        c.body_regex = Some(re.to_string());
    }
    if c.kind == HealthCheckKind::Tcp {
        for key in [
            "body",
            "body_regex",
            "valid_statuses",
            "method",
            "path",
            "host",
            "headers",
        ] {
            if let Some(v) = h.get(key) {
                h.err(
                    sink,
                    &v.span(),
                    format!("{key} is only used with type = \"http\" or \"https\""),
                );
            }
        }
    }
    c.port = h.int(sink, "port", 1, 65535);
    c.fall = h.int(sink, "fall", 1, U32).unwrap_or(c.fall);
    c.rise = h.int(sink, "rise", 1, U32).unwrap_or(c.rise);
    c.concurrency = h.int(sink, "concurrency", 1, U32).unwrap_or(c.concurrency);
    c.mandatory = h.bool(sink, "mandatory").is_some_and(|(b, _)| b);
    c
}
