//! `[[listener]]` in the file: the socket, its routes, limits, TLS and access
//! log. Reads and places problems; the rules are beside the types
//! (`config::listener`, `config::addr`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;

use super::fields::{Sink, Table, as_table};
use crate::config::addr::{host_match, socket_addr};
use crate::config::rules::check_health_uri;
use crate::config::{
    AccessLogConfig, AccessLogFormat, AccessLogTarget, CertificatePair, ClientLimits,
    ListenerConfig, ListenerTls, RouteConfig, TlsVersion, template_variables,
};

const LISTENER_KEYS: &[&str] = &[
    "listen",
    "routes",
    "health_uri",
    "tls",
    "client_header_timeout",
    "client_send_timeout",
    "client_body_timeout",
    "request_buffer_size",
    "max_headers",
    "max_header_size",
    "max_uri_length",
    "max_connections",
    "access_log",
    "request_id",
    "forwarded",
    "plain_http1",
];
const LISTENER_TLS_KEYS: &[&str] = &["certificates", "min_version"];
const CERT_KEYS: &[&str] = &["cert", "key"];
const ROUTE_KEYS: &[&str] = &[
    "host",
    "path_prefix",
    "upstream",
    "max_body_size",
    "request_buffering",
];
pub(super) fn read_listener(
    t: &Table<'_, '_>,
    sink: &mut Sink<'_>,
    upstreams: &BTreeSet<String>,
    seen: &mut BTreeMap<SocketAddr, usize>,
) -> Option<ListenerConfig> {
    t.check_keys(sink, LISTENER_KEYS);
    let listen = read_listen(t, sink, seen);
    let routes = read_routes(t, sink, upstreams);
    let health_uri = t
        .str(sink, "health_uri")
        .and_then(|(s, span)| match check_health_uri(s) {
            Ok(()) => Some(s.to_string()),
            Err(e) => {
                t.err(sink, &span, e.to_string());
                None
            }
        });
    let limits = read_limits(t, sink);
    let tls = t
        .table(sink, "tls", "tls")
        .map(|tls| read_listener_tls(&tls, sink));
    let access_log = t
        .table(sink, "access_log", "access_log")
        .and_then(|a| read_access_log(&a, sink));
    let request_id = t.bool(sink, "request_id").is_none_or(|(b, _)| b);
    let forwarded = t.bool(sink, "forwarded").is_some_and(|(b, _)| b);
    let plain_http1 = t.bool(sink, "plain_http1").is_none_or(|(b, _)| b);
    Some(ListenerConfig {
        listen: listen?,
        routes,
        health_uri,
        limits,
        tls,
        access_log,
        request_id,
        forwarded,
        plain_http1,
    })
}

/// `listen`, remembered in `seen` so that a second listener on it is reported
/// with the line of the first.
fn read_listen(
    t: &Table<'_, '_>,
    sink: &mut Sink<'_>,
    seen: &mut BTreeMap<SocketAddr, usize>,
) -> Option<SocketAddr> {
    match t.str(sink, "listen") {
        Some((s, span)) => match socket_addr(s) {
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
                Some(a)
            }
            Err(e) => {
                t.err(sink, &span, format!("bad address: {e}"));
                None
            }
        },
        None => {
            if t.get("listen").is_none() {
                t.missing(sink, "listen");
            }
            None
        }
    }
}

fn read_routes(
    t: &Table<'_, '_>,
    sink: &mut Sink<'_>,
    upstreams: &BTreeSet<String>,
) -> Vec<RouteConfig> {
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
    routes
}

/// An integer setting within `(least, most)`.
fn limit(
    t: &Table<'_, '_>,
    sink: &mut Sink<'_>,
    key: &str,
    range: (usize, usize),
) -> Option<usize> {
    t.int(sink, key, range.0 as i128, range.1 as i128)
}

fn read_limits(t: &Table<'_, '_>, sink: &mut Sink<'_>) -> ClientLimits {
    let d = ClientLimits::default();
    let mut limits = ClientLimits {
        header_timeout: t
            .duration(sink, "client_header_timeout")
            .unwrap_or(d.header_timeout),
        max_headers: limit(t, sink, "max_headers", ClientLimits::MAX_HEADERS)
            .unwrap_or(d.max_headers),
        max_header_size: limit(t, sink, "max_header_size", ClientLimits::MAX_HEADER_SIZE)
            .unwrap_or(d.max_header_size),
        max_uri_length: limit(t, sink, "max_uri_length", ClientLimits::MAX_URI_LENGTH)
            .unwrap_or(d.max_uri_length),
        max_connections: limit(t, sink, "max_connections", ClientLimits::MAX_CONNECTIONS)
            .unwrap_or(d.max_connections),
        send_timeout: t
            .duration(sink, "client_send_timeout")
            .unwrap_or(d.send_timeout),
        body_timeout: t
            .duration(sink, "client_body_timeout")
            .unwrap_or(d.body_timeout),
        request_buffer_size: limit(
            t,
            sink,
            "request_buffer_size",
            ClientLimits::REQUEST_BUFFER_SIZE,
        )
        .unwrap_or(d.request_buffer_size),
    };
    for (key, value, default) in [
        (
            "client_header_timeout",
            &mut limits.header_timeout,
            d.header_timeout,
        ),
        (
            "client_send_timeout",
            &mut limits.send_timeout,
            d.send_timeout,
        ),
        (
            "client_body_timeout",
            &mut limits.body_timeout,
            d.body_timeout,
        ),
    ] {
        if value.is_zero() {
            if let Some(v) = t.get(key) {
                t.err(sink, &v.span(), format!("{key} must be greater than 0"));
            }
            *value = default;
        }
    }
    limits
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
        Some((template, span)) if template.contains('$') => match template_variables(template) {
            Ok(_) => AccessLogFormat::Template(template.to_string()),
            Err(e) => {
                t.err(sink, &span, format!("access_log format: {e}"));
                return None;
            }
        },
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
        .and_then(|(s, span)| match host_match(s) {
            Ok(h) => Some(h),
            Err(e) => {
                t.err(sink, &span, e.to_string());
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
    let request_buffering = t.bool(sink, "request_buffering").is_none_or(|(b, _)| b);
    Some(RouteConfig {
        host,
        path_prefix,
        upstream: upstream?,
        max_body_size,
        request_buffering,
    })
}
