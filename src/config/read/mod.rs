//! The TOML reader: walks the spanned document, reports every problem with its
//! place, and builds [`Config`] only when there are none. It checks values
//! with the rules beside each type (`crate::config::rules`) and owns none of
//! them: only how a problem is placed, and the file's shape (which keys, which
//! sections).

mod fields;
mod listener;
mod upstream;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use crate::config::addr::socket_addr;
use crate::config::{
    AccessRule, AdminConfig, ClusterConfig, Config, ConfigError, ConfigErrors, LogConfig,
    LogFormat, LogLevel, ResolverConfig, RuntimeConfig, UpstreamConfig, parse_name_server,
};
#[cfg(test)]
pub(super) use fields::line_col;
use fields::{Sink, Table, as_table};
use listener::read_listener;
use upstream::read_upstream;

/// The `[log]` section of the file at `path` alone, to set up logging before the
/// whole file is read. `None` when the file cannot be read or its `[log]` has a
/// problem: [`load`] reports those, with their places.
pub fn peek_log(path: &Path) -> Option<LogConfig> {
    log_section(&std::fs::read_to_string(path).ok()?)
}

/// Reads and validates a configuration file.
///
/// Relative certificate and key paths are taken from the file's own folder, as
/// one expects when the file and its certificates are kept together.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(src) => parse(&src, &name).map(|mut c| {
            if let Some(dir) = path.parent() {
                c.resolve_paths(dir);
            }
            c
        }),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file: name,
            line: 0,
            column: 0,
            message: format!("cannot read the file: {e}"),
        }])),
    }
}

const TOP_KEYS: &[&str] = &[
    "admin", "cluster", "runtime", "log", "resolver", "listener", "upstream",
];
const RESOLVER_KEYS: &[&str] = &["servers", "valid", "timeout", "ipv4", "ipv6"];
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
    let resolver = root
        .table(sink, "resolver", "resolver")
        .map(|t| read_resolver(&t, sink))
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
        resolver,
        listeners,
        upstreams,
    }
}

fn read_admin(t: &Table<'_, '_>, sink: &mut Sink<'_>) -> AdminConfig {
    t.check_keys(sink, ADMIN_KEYS);
    let mut listen = ADMIN_LISTEN;
    if let Some((s, span)) = t.str(sink, "listen") {
        match socket_addr(s) {
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

/// `[resolver]`: name servers, `valid`, `timeout`, `ipv4`, `ipv6`.
fn read_resolver(t: &Table<'_, '_>, sink: &mut Sink<'_>) -> ResolverConfig {
    t.check_keys(sink, RESOLVER_KEYS);
    let mut r = ResolverConfig::default();
    if let Some((list, _)) = t.array(sink, "servers") {
        for v in list.iter() {
            let parsed = v.get_ref().as_str().map(parse_name_server);
            match parsed {
                Some(Ok(a)) => r.servers.push(a),
                Some(Err(e)) => t.err(sink, &v.span(), e.to_string()),
                None => t.wrong_type(sink, "servers", v, "a string (IP or IP:PORT)"),
            }
        }
    }
    r.valid = t.duration(sink, "valid");
    if let Some(d) = t.duration(sink, "timeout") {
        r.timeout = d;
    }
    if let Some((b, _)) = t.bool(sink, "ipv4") {
        r.ipv4 = b;
    }
    if let Some((b, _)) = t.bool(sink, "ipv6") {
        r.ipv6 = b;
    }
    if let Err(e) = r.validate() {
        t.err(sink, &t.span, e.to_string());
    }
    r
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
                t.err(sink, &span, e.to_string());
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
