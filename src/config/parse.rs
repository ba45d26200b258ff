//! The TOML reader: walks the spanned document, reports every problem with its
//! place, and builds [`super::Config`] only when there are none.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use super::addr;
use super::fields::{Sink, Table, as_table};
use super::upstream::read_upstream;
use super::{
    AccessLogConfig, AccessLogFormat, AccessLogTarget, AccessRule, AdminConfig, CertificatePair,
    ClientLimits, ClusterConfig, Config, ConfigErrors, ListenerConfig, ListenerTls, LogConfig,
    LogFormat, LogLevel, RouteConfig, RuntimeConfig, TlsVersion, UpstreamConfig,
};

const TOP_KEYS: &[&str] = &["admin", "cluster", "runtime", "log", "listener", "upstream"];
const CLUSTER_KEYS: &[&str] = &[
    "store",
    "endpoints",
    "prefix",
    "timeout",
    "username",
    "password",
    "tls_ca",
    "tls_cert",
    "tls_key",
];
const ADMIN_KEYS: &[&str] = &[
    "listen",
    "allow",
    "deny",
    "rules",
    "write_allow",
    "write_deny",
    "read_only",
    "token",
    "state_file",
];
const RUNTIME_KEYS: &[&str] = &["workers", "shutdown_grace", "shutdown_delay"];
const LOG_KEYS: &[&str] = &["format", "level"];
const LISTENER_KEYS: &[&str] = &[
    "listen",
    "routes",
    "health_uri",
    "tls",
    "client_header_timeout",
    "max_headers",
    "max_header_size",
    "max_uri_length",
    "max_connections",
    "access_log",
    "request_id",
    "forwarded",
];
const LISTENER_TLS_KEYS: &[&str] = &["certificates", "min_version"];
const CERT_KEYS: &[&str] = &["cert", "key"];
const ROUTE_KEYS: &[&str] = &["host", "path_prefix", "upstream", "max_body_size"];
const ADMIN_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    18080,
));

/// Parses and validates `src`; `file` names it in messages.
///
/// On syntax errors only those are reported: the recovered tree is partial, and
/// checking it would report sections as missing that are merely unreadable.
pub fn parse(src: &str, file: &str) -> Result<Config, ConfigErrors> {
    let (doc, syntax) = DeTable::parse_recoverable(src);
    let mut sink = Sink::new(src);
    if !syntax.is_empty() {
        for e in syntax {
            let msg = format!("TOML syntax error: {}", e.message());
            match e.span() {
                Some(span) => sink.at(&span, msg),
                None => sink.nowhere(msg),
            }
        }
        return Err(sink.finish(file));
    }
    let root = Table {
        map: doc.get_ref(),
        span: doc.span(),
        kind: "the top level",
        ctx: String::new(),
    };
    let config = read_config(&root, &mut sink);
    if sink.is_empty() {
        Ok(config)
    } else {
        Err(sink.finish(file))
    }
}

fn read_config(root: &Table<'_, '_>, sink: &mut Sink<'_>) -> Config {
    root.check_keys(sink, TOP_KEYS);
    let admin = root
        .table(sink, "admin", "admin")
        .map(|t| read_admin(&t, sink));
    let cluster = root
        .table(sink, "cluster", "cluster")
        .and_then(|t| read_cluster(&t, sink));
    let runtime = root
        .table(sink, "runtime", "runtime")
        .map(|t| read_runtime(&t, sink))
        .unwrap_or_default();
    let log = root
        .table(sink, "log", "log")
        .map(|t| read_log(&t, sink))
        .unwrap_or_default();

    let mut upstreams = BTreeMap::new();
    // Every name is known to routes, even of upstreams too broken to build, so a
    // typo inside an upstream is not also reported at each route to it.
    let mut names = BTreeSet::new();
    match root.get("upstream") {
        None => sink.nowhere("no upstream: add an [upstream.NAME] section"),
        Some(v) => {
            if let Some(all) = as_table(root, sink, "upstream", v, "upstream", String::new()) {
                if all.map.is_empty() {
                    sink.at(&all.span, "no upstream: add an [upstream.NAME] section");
                }
                for (name, v) in all.map.iter() {
                    let name = name.get_ref().as_ref();
                    names.insert(name.to_string());
                    let ctx = format!("upstream {name:?}: ");
                    if let Some(t) = as_table(
                        &all,
                        sink,
                        &format!("upstream {name:?}"),
                        v,
                        "upstream",
                        ctx,
                    ) {
                        let u: UpstreamConfig = read_upstream(name, &t, sink);
                        upstreams.insert(name.to_string(), u);
                    }
                }
            }
        }
    }

    let mut listeners = Vec::new();
    match root.get("listener") {
        None => sink.nowhere("no listener: add a [[listener]] section"),
        Some(v) => match v.get_ref() {
            DeValue::Array(list) => {
                if list.is_empty() {
                    sink.at(&v.span(), "no listener: add a [[listener]] section");
                }
                let mut seen: BTreeMap<SocketAddr, usize> = BTreeMap::new();
                for (i, v) in list.iter().enumerate() {
                    let ctx = match v.get_ref().get("listen").and_then(|l| l.get_ref().as_str()) {
                        Some(l) => format!("listener {l:?}: "),
                        None => format!("listener #{}: ", i + 1),
                    };
                    let key = format!("listener #{}", i + 1);
                    let Some(t) = as_table(root, sink, &key, v, "listener", ctx) else {
                        continue;
                    };
                    if let Some(l) = read_listener(&t, sink, &names, &mut seen) {
                        listeners.push(l);
                    }
                }
            }
            _ => root.wrong_type(sink, "listener", v, "an array of tables ([[listener]])"),
        },
    }

    Config {
        admin,
        cluster,
        runtime,
        log,
        listeners,
        upstreams,
    }
}

fn read_admin(t: &Table<'_, '_>, sink: &mut Sink<'_>) -> AdminConfig {
    t.check_keys(sink, ADMIN_KEYS);
    let mut listen = ADMIN_LISTEN;
    if let Some((s, span)) = t.str(sink, "listen") {
        match addr::socket_addr(s) {
            Ok(a) => listen = a,
            Err(e) => t.err(sink, &span, format!("bad listen address {s:?}: {e}")),
        }
    }
    let rules = read_rules(t, sink, "rules", "deny", "allow").unwrap_or_default();
    let write_rules = read_rules(t, sink, "", "write_deny", "write_allow");
    let read_only = t.bool(sink, "read_only").is_some_and(|(b, _)| b);
    let token = t.str(sink, "token").map(|(s, span)| {
        if s.len() < 16 {
            t.err(sink, &span, "token must be at least 16 characters");
        }
        s.to_string()
    });
    let state_file = t.str(sink, "state_file").map(|(s, _)| PathBuf::from(s));
    AdminConfig {
        listen,
        rules,
        write_rules,
        read_only,
        token,
        state_file,
    }
}

fn read_cluster(t: &Table<'_, '_>, sink: &mut Sink<'_>) -> Option<ClusterConfig> {
    t.check_keys(sink, CLUSTER_KEYS);
    match t.str(sink, "store") {
        Some(("etcd", _)) => {}
        Some((other, span)) => {
            t.err(
                sink,
                &span,
                format!("unknown store {other:?} (expected \"etcd\")"),
            );
            return None;
        }
        None if t.get("store").is_none() => {
            t.missing(sink, "store");
            return None;
        }
        None => return None,
    }
    let mut endpoints = Vec::new();
    match t.array(sink, "endpoints") {
        Some((list, span)) => {
            for v in list.iter() {
                match v.get_ref().as_str() {
                    Some(s) if !s.trim().is_empty() => endpoints.push(s.trim().to_string()),
                    _ => t.wrong_type(sink, "endpoints", v, "a string (host:port or URL)"),
                }
            }
            if list.is_empty() {
                t.err(
                    sink,
                    &span,
                    "endpoints is empty: name at least one etcd endpoint",
                );
            }
        }
        None if t.get("endpoints").is_none() => t.missing(sink, "endpoints"),
        None => {}
    }
    let prefix = match t.str(sink, "prefix") {
        Some((p, span)) => {
            let p = p.trim_end_matches('/');
            if !p.starts_with('/') {
                t.err(sink, &span, format!("prefix {p:?} must start with '/'"));
            }
            p.to_string()
        }
        None => "/switchyard".to_string(),
    };
    // Settings that only work in pairs are reported at the one that is there.
    let pair = |a: &str, b: &str, sink: &mut Sink<'_>| {
        let x = t.str(sink, a);
        let y = t.str(sink, b);
        match (&x, &y) {
            (Some((_, span)), None) | (None, Some((_, span))) => t.err(
                sink,
                span,
                format!("{a} and {b} go together: set both or neither"),
            ),
            _ => {}
        }
        (x.map(|(s, _)| s.to_string()), y.map(|(s, _)| s.to_string()))
    };
    let (username, password) = pair("username", "password", sink);
    let (tls_cert, tls_key) = pair("tls_cert", "tls_key", sink);
    let tls_ca = t.str(sink, "tls_ca").map(|(s, _)| PathBuf::from(s));
    let (tls_cert, tls_key) = (tls_cert.map(PathBuf::from), tls_key.map(PathBuf::from));
    let timeout = t
        .duration(sink, "timeout")
        .unwrap_or(Duration::from_secs(2));
    Some(ClusterConfig {
        endpoints,
        prefix,
        timeout,
        username,
        password,
        tls_ca,
        tls_cert,
        tls_key,
    })
}

/// `"all"`, an IP or a CIDR.
fn net(s: &str) -> Option<Vec<ipnet::IpNet>> {
    if s == "all" {
        return Some(vec![
            ipnet::IpNet::V4(ipnet::Ipv4Net::default()),
            ipnet::IpNet::V6(ipnet::Ipv6Net::default()),
        ]);
    }
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(Into::into))
        .map(|n| vec![n])
}

/// Access rules from either the ordered form (`rules = ["allow 10.0.0.0/8",
/// "deny all"]`, first match wins, as nginx reads them) or the two lists `deny`
/// and `allow` (deny entries first: an address both denied and allowed is meant
/// to be kept out). `None` when none of the keys is present.
fn read_rules(
    t: &Table<'_, '_>,
    sink: &mut Sink<'_>,
    ordered: &str,
    deny: &str,
    allow: &str,
) -> Option<Vec<AccessRule>> {
    let mut rules = Vec::new();
    let mut present = false;
    if !ordered.is_empty()
        && let Some((list, _)) = t.array(sink, ordered)
    {
        present = true;
        for v in list.iter() {
            let parsed = v.get_ref().as_str().and_then(|s| {
                let (verb, what) = s.trim().split_once(char::is_whitespace)?;
                let nets = net(what.trim())?;
                match verb {
                    "allow" => Some(nets.into_iter().map(AccessRule::Allow).collect::<Vec<_>>()),
                    "deny" => Some(nets.into_iter().map(AccessRule::Deny).collect()),
                    _ => None,
                }
            });
            match parsed {
                Some(r) => rules.extend(r),
                None => t.err(
                    sink,
                    &v.span(),
                    format!(
                        "bad rule in {ordered} (expected \"allow IP|CIDR|all\" or \"deny IP|CIDR|all\")"
                    ),
                ),
            }
        }
    }
    for (key, rule) in [
        (deny, AccessRule::Deny as fn(_) -> _),
        (allow, AccessRule::Allow),
    ] {
        let Some((list, _)) = t.array(sink, key) else {
            continue;
        };
        present = true;
        for v in list.iter() {
            let Some(s) = v.get_ref().as_str() else {
                t.wrong_type(sink, key, v, "a string (IP or CIDR)");
                continue;
            };
            match net(s) {
                Some(nets) => rules.extend(nets.into_iter().map(rule)),
                None => t.err(sink, &v.span(), format!("bad IP or CIDR {s:?} in {key}")),
            }
        }
    }
    present.then_some(rules)
}

fn read_runtime(t: &Table<'_, '_>, sink: &mut Sink<'_>) -> RuntimeConfig {
    t.check_keys(sink, RUNTIME_KEYS);
    let mut runtime = RuntimeConfig {
        workers: t.int(sink, "workers", 1, 4096),
        ..RuntimeConfig::default()
    };
    if let Some(d) = t.duration(sink, "shutdown_grace") {
        runtime.shutdown_grace = d;
    }
    if let Some(d) = t.duration(sink, "shutdown_delay") {
        runtime.shutdown_delay = d;
    }
    runtime
}

fn read_log(t: &Table<'_, '_>, sink: &mut Sink<'_>) -> LogConfig {
    t.check_keys(sink, LOG_KEYS);
    let format = t
        .str(sink, "format")
        .and_then(|(s, span)| match LogFormat::parse(s) {
            Some(f) => Some(f),
            None => {
                t.err(
                    sink,
                    &span,
                    format!("unknown format {s:?} (expected \"text\" or \"json\")"),
                );
                None
            }
        });
    let level = t
        .str(sink, "level")
        .and_then(|(s, span)| match LogLevel::parse(s) {
            Ok(l) => Some(l),
            Err(e) => {
                t.err(sink, &span, e);
                None
            }
        });
    LogConfig { format, level }
}

/// Only the `[log]` section of `src`, read before the rest of the file (logging
/// starts first). `None` on any problem in it, or a syntax error anywhere: the
/// whole file's parse reports those.
pub(super) fn log_section(src: &str) -> Option<LogConfig> {
    let doc = DeTable::parse(src).ok()?;
    let root = Table {
        map: doc.get_ref(),
        span: doc.span(),
        kind: "the top level",
        ctx: String::new(),
    };
    let mut sink = Sink::new(src);
    let log = root
        .table(&mut sink, "log", "log")
        .map(|t| read_log(&t, &mut sink))
        .unwrap_or_default();
    sink.is_empty().then_some(log)
}

fn read_listener(
    t: &Table<'_, '_>,
    sink: &mut Sink<'_>,
    upstreams: &BTreeSet<String>,
    seen: &mut BTreeMap<SocketAddr, usize>,
) -> Option<ListenerConfig> {
    t.check_keys(sink, LISTENER_KEYS);
    let mut listen = None;
    match t.str(sink, "listen") {
        Some((s, span)) => match addr::socket_addr(s) {
            Ok(a) => {
                // Port 0 asks the system for a free port: two such listeners
                // get different ports, so they cannot clash.
                if a.port() == 0 {
                } else if let Some(first) = seen.get(&a) {
                    let msg = format!(
                        "duplicate listen address {a} (also at line {})",
                        sink.line_of(*first)
                    );
                    t.err(sink, &span, msg);
                } else {
                    seen.insert(a, span.start);
                }
                listen = Some(a);
            }
            Err(e) => t.err(sink, &span, format!("bad address: {e}")),
        },
        None if t.get("listen").is_none() => t.missing(sink, "listen"),
        None => {}
    }
    let mut routes = Vec::new();
    match t.array(sink, "routes") {
        Some((list, span)) if list.is_empty() => t.err(sink, &span, "listener has no routes"),
        Some((list, _)) => {
            for (i, v) in list.iter().enumerate() {
                let ctx = format!("{}route #{}: ", t.ctx, i + 1);
                let key = format!("route #{}", i + 1);
                if let Some(r) = as_table(t, sink, &key, v, "route", ctx) {
                    routes.extend(read_route(&r, sink, upstreams));
                }
            }
        }
        None if t.get("routes").is_none() => t.err(sink, &t.span, "listener has no routes"),
        None => {}
    }
    let health_uri = t
        .str(sink, "health_uri")
        .and_then(|(s, span)| match check_health_uri(s) {
            Ok(()) => Some(s.to_string()),
            Err(e) => {
                t.err(sink, &span, e);
                None
            }
        });
    let d = ClientLimits::default();
    let mut limits = ClientLimits {
        header_timeout: t
            .duration(sink, "client_header_timeout")
            .unwrap_or(d.header_timeout),
        max_headers: t
            .int(sink, "max_headers", 1, 10_000)
            .unwrap_or(d.max_headers),
        max_header_size: t
            .int(sink, "max_header_size", 8 * 1024, 16 * 1024 * 1024)
            .unwrap_or(d.max_header_size),
        max_uri_length: t
            .int(sink, "max_uri_length", 16, 1024 * 1024)
            .unwrap_or(d.max_uri_length),
        max_connections: t
            .int(sink, "max_connections", 1, 10_000_000)
            .unwrap_or(d.max_connections),
    };
    if limits.header_timeout.is_zero() {
        if let Some(v) = t.get("client_header_timeout") {
            t.err(
                sink,
                &v.span(),
                "client_header_timeout must be greater than 0",
            );
        }
        limits.header_timeout = d.header_timeout;
    }
    let tls = t
        .table(sink, "tls", "tls")
        .map(|tls| read_listener_tls(&tls, sink));
    let access_log = t
        .table(sink, "access_log", "access_log")
        .and_then(|a| read_access_log(&a, sink));
    let request_id = t.bool(sink, "request_id").is_none_or(|(b, _)| b);
    let forwarded = t.bool(sink, "forwarded").is_some_and(|(b, _)| b);
    Some(ListenerConfig {
        listen: listen?,
        routes,
        health_uri,
        limits,
        tls,
        access_log,
        request_id,
        forwarded,
    })
}

const ACCESS_LOG_KEYS: &[&str] = &["path", "format"];

fn read_access_log(t: &Table<'_, '_>, sink: &mut Sink<'_>) -> Option<AccessLogConfig> {
    t.check_keys(sink, ACCESS_LOG_KEYS);
    let path = match t.str(sink, "path") {
        Some(("-", _)) => AccessLogTarget::Stdout,
        Some(("", span)) => {
            t.err(sink, &span, "path is empty: a file, or \"-\" for stdout");
            return None;
        }
        Some((p, _)) => AccessLogTarget::File(PathBuf::from(p)),
        None => {
            if t.get("path").is_none() {
                t.missing(sink, "path");
            }
            return None;
        }
    };
    let format = match t.str(sink, "format") {
        None => AccessLogFormat::Combined,
        Some(("combined", _)) => AccessLogFormat::Combined,
        Some(("json", _)) => AccessLogFormat::Json,
        Some((template, span)) if template.contains('$') => {
            match crate::config::template_variables(template) {
                Ok(_) => AccessLogFormat::Template(template.to_string()),
                Err(e) => {
                    t.err(sink, &span, format!("access_log format: {e}"));
                    return None;
                }
            }
        }
        Some((other, span)) => {
            t.err(
                sink,
                &span,
                format!(
                    "access_log format {other:?}: \"combined\", \"json\" or a template with $variables"
                ),
            );
            return None;
        }
    };
    Some(AccessLogConfig { path, format })
}

/// `health_uri`: a path as a request line carries it, matched exactly.
fn check_health_uri(s: &str) -> Result<(), String> {
    if !s.starts_with('/') {
        return Err(format!("health_uri {s:?} must start with '/'"));
    }
    if let Some(c) = s
        .chars()
        .find(|&c| !c.is_ascii_graphic() || c == '?' || c == '#')
    {
        return Err(format!(
            "health_uri {s:?}: a path only, matched exactly (no {c:?}: no query, fragment, space or non-ASCII)"
        ));
    }
    Ok(())
}

fn read_listener_tls(t: &Table<'_, '_>, sink: &mut Sink<'_>) -> ListenerTls {
    t.check_keys(sink, LISTENER_TLS_KEYS);
    let mut min_version = TlsVersion::V1_2;
    if let Some((v, span)) = t.str(sink, "min_version") {
        match v {
            "1.2" => {}
            "1.3" => min_version = TlsVersion::V1_3,
            _ => t.err(
                sink,
                &span,
                format!("unknown min_version {v:?} (expected \"1.2\" or \"1.3\")"),
            ),
        }
    }
    let mut certificates = Vec::new();
    match t.array(sink, "certificates") {
        Some((list, span)) if list.is_empty() => {
            t.err(sink, &span, "at least one certificate is needed")
        }
        Some((list, _)) => {
            for (i, v) in list.iter().enumerate() {
                let ctx = format!("{}certificate #{}: ", t.ctx, i + 1);
                let key = format!("certificate #{}", i + 1);
                let Some(c) = as_table(t, sink, &key, v, "certificate", ctx) else {
                    continue;
                };
                c.check_keys(sink, CERT_KEYS);
                let mut file = |name: &str| match c.str(sink, name) {
                    Some(("", span)) => {
                        c.err(sink, &span, format!("{name} must name a PEM file"));
                        None
                    }
                    Some((s, _)) => Some(PathBuf::from(s)),
                    None => {
                        if c.get(name).is_none() {
                            c.missing(sink, name);
                        }
                        None
                    }
                };
                let (cert, key) = (file("cert"), file("key"));
                if let (Some(cert), Some(key)) = (cert, key) {
                    certificates.push(CertificatePair { cert, key });
                }
            }
        }
        None if t.get("certificates").is_none() => t.missing(sink, "certificates"),
        None => {}
    }
    ListenerTls {
        certificates,
        min_version,
    }
}

fn read_route(
    t: &Table<'_, '_>,
    sink: &mut Sink<'_>,
    upstreams: &BTreeSet<String>,
) -> Option<RouteConfig> {
    t.check_keys(sink, ROUTE_KEYS);
    let host = t
        .str(sink, "host")
        .and_then(|(s, span)| match addr::host_match(s) {
            Ok(h) => Some(h),
            Err(e) => {
                t.err(sink, &span, e);
                None
            }
        });
    let path_prefix = t.str(sink, "path_prefix").map(|(p, span)| {
        if !p.starts_with('/') {
            t.err(
                sink,
                &span,
                format!("path_prefix {p:?} must start with \"/\""),
            );
        }
        p.to_string()
    });
    let upstream = match t.str(sink, "upstream") {
        Some((u, span)) => {
            if !upstreams.contains(u) {
                t.err(sink, &span, format!("route to unknown upstream {u:?}"));
            }
            Some(u.to_string())
        }
        None if t.get("upstream").is_none() => {
            t.missing(sink, "upstream");
            None
        }
        None => None,
    };
    let max_body_size = t.int(sink, "max_body_size", 0, u64::MAX as i128);
    Some(RouteConfig {
        host,
        path_prefix,
        upstream: upstream?,
        max_body_size,
    })
}
