//! `[[listener]]`: the socket, its routes, its client limits, its TLS and its
//! access log, with the rules those values follow (access-log templates,
//! `health_uri`). Types and rules only: the TOML reader is `read::listener`, and
//! nothing here binds a socket or opens a file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `[[listener]]`: one socket and the routes of requests arriving on it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub listen: SocketAddr,
    pub routes: Vec<RouteConfig>,
    /// `health_uri = "/healthz"`: requests for this path are answered by the
    /// listener itself (200, or 503 while shutting down), before routing.
    pub health_uri: Option<String>,
    pub limits: ClientLimits,
    /// `tls = { ... }`: the listener speaks HTTPS.
    pub tls: Option<ListenerTls>,
    /// `access_log = { path, format }`: off when absent.
    pub access_log: Option<AccessLogConfig>,
    /// Make an `X-Request-ID` when the client sent none (`request_id`, default true).
    pub request_id: bool,
    /// Add an RFC 7239 `Forwarded` header (`forwarded`, default false).
    pub forwarded: bool,
    /// Whether cleartext keep-alive GETs and HEADs take the plain HTTP/1.1
    /// path (`plain_http1`, default true); false sends every request through
    /// hyper (for side-by-side comparisons of the two paths, or to rule the
    /// plain one out).
    pub plain_http1: bool,
}

/// Where an access log goes and how its lines look.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccessLogConfig {
    /// A file, or `-` for stdout.
    pub path: AccessLogTarget,
    pub format: AccessLogFormat,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AccessLogTarget {
    Stdout,
    File(PathBuf),
}

/// `combined` (nginx's), `json`, or a template of nginx variables.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AccessLogFormat {
    Combined,
    Json,
    Template(String),
}

/// The nginx variables an access-log template may use.
pub const ACCESS_LOG_VARIABLES: &[&str] = &[
    "remote_addr",
    "remote_user",
    "time_local",
    "time_iso8601",
    "request",
    "request_method",
    "request_uri",
    "server_protocol",
    "host",
    "status",
    "bytes_sent",
    "body_bytes_sent",
    "request_time",
    "upstream",
    "upstream_addr",
    "upstream_status",
    "upstream_response_time",
    "upstream_connect_time",
    "upstream_tries",
    "request_id",
    "http_user_agent",
    "http_referer",
];

/// Why an access-log template cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("a ${{ is not closed")]
    Unclosed,
    #[error("unknown variable ${0} (known: {known})", known = ACCESS_LOG_VARIABLES.join(", "))]
    UnknownVariable(String),
}

/// The variable names a template uses, in order (`$name` or `${name}`), or the
/// first one that is not in [`ACCESS_LOG_VARIABLES`].
pub fn template_variables(template: &str) -> Result<Vec<String>, TemplateError> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        rest = &rest[i + 1..];
        let name = if let Some(inner) = rest.strip_prefix('{') {
            let end = inner.find('}').ok_or(TemplateError::Unclosed)?;
            let n = &inner[..end];
            rest = &inner[end + 1..];
            n
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let n = &rest[..end];
            rest = &rest[end..];
            n
        };
        if !ACCESS_LOG_VARIABLES.contains(&name) {
            return Err(TemplateError::UnknownVariable(name.to_string()));
        }
        out.push(name.to_string());
    }
    Ok(out)
}

/// Why a `health_uri` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthUriError {
    #[error("health_uri {0:?} must start with '/'")]
    NotAbsolute(String),
    #[error(
        "health_uri {0:?}: a path only, matched exactly (no {1:?}: no query, fragment, space or non-ASCII)"
    )]
    NotAPath(String, char),
}

/// `health_uri`: a path as a request line carries it, matched exactly.
pub fn check_health_uri(s: &str) -> Result<(), HealthUriError> {
    if !s.starts_with('/') {
        return Err(HealthUriError::NotAbsolute(s.to_string()));
    }
    if let Some(c) = s
        .chars()
        .find(|&c| !c.is_ascii_graphic() || c == '?' || c == '#')
    {
        return Err(HealthUriError::NotAPath(s.to_string(), c));
    }
    Ok(())
}

/// What a listener tolerates from clients (the defences against slow or hostile
/// ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// A request's headers must arrive within this (slowloris); an idle keep-alive
    /// connection is closed after it too (`client_header_timeout`, default 30s).
    pub header_timeout: Duration,
    /// Most request headers (`max_headers`, default 100; more: 431).
    pub max_headers: usize,
    /// Most bytes of request line and headers (`max_header_size`, default 32 KiB,
    /// at least 8 KiB; more: 431). 32 KiB is nginx's bound too (four 8 KiB
    /// buffers), and what an unfinished head can hold of a connection's memory.
    pub max_header_size: usize,
    /// Longest request target (`max_uri_length`, default 8 KiB; longer: 414).
    pub max_uri_length: usize,
    /// Most client connections open at once (`max_connections`, default 10000);
    /// further ones wait in the kernel's accept queue until one closes.
    pub max_connections: usize,
    /// A client that takes no bytes of its response for this long is cut off,
    /// and the server's side of the exchange closed without blame
    /// (`client_send_timeout`, default 60s, as nginx's `send_timeout`).
    pub send_timeout: Duration,
    /// A client that sends nothing of its request body for this long, while
    /// switchyard reads it before picking a server, gets a 408
    /// (`client_body_timeout`, default 60s, as nginx's).
    pub body_timeout: Duration,
    /// Largest request body read whole before a server is picked
    /// (`request_buffer_size`, default 1 MiB; 0: none). Larger bodies, bodies
    /// of unknown length, and routes with `request_buffering = false` stream.
    pub request_buffer_size: usize,
}

impl ClientLimits {
    /// What the file may set, each `(least, most)`.
    pub const MAX_HEADERS: (usize, usize) = (1, 10_000);
    pub const MAX_HEADER_SIZE: (usize, usize) = (8 * 1024, 16 * 1024 * 1024);
    pub const MAX_URI_LENGTH: (usize, usize) = (16, 1024 * 1024);
    pub const MAX_CONNECTIONS: (usize, usize) = (1, 10_000_000);
    pub const REQUEST_BUFFER_SIZE: (usize, usize) = (0, 64 * 1024 * 1024);
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            header_timeout: Duration::from_secs(30),
            max_headers: 100,
            max_header_size: 32 * 1024,
            max_uri_length: 8 * 1024,
            max_connections: 10_000,
            send_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            request_buffer_size: 1024 * 1024,
        }
    }
}

/// `tls = { certificates = [{ cert = "a.pem", key = "a.key" }], min_version = "1.2" }`
/// on a listener. The first certificate is the default; the others are chosen
/// when the client's SNI names a host they are valid for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub certificates: Vec<CertificatePair>,
    pub min_version: TlsVersion,
}

/// A certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificatePair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Lowest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    #[default]
    V1_2,
    V1_3,
}

/// A route: requests whose host and path match go to `upstream`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// `None` matches any host.
    pub host: Option<HostMatch>,
    /// `None` is the same as `"/"`.
    pub path_prefix: Option<String>,
    pub upstream: String,
    /// Largest request body (`max_body_size`; more: 413). `None`: no limit.
    pub max_body_size: Option<u64>,
    /// Read a request body whole (up to the listener's `request_buffer_size`)
    /// before a server is picked, as nginx's `proxy_request_buffering`
    /// (`request_buffering`, default true); `false` streams it as it comes.
    pub request_buffering: bool,
}

/// How a route matches the request's host (port stripped, case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// `foo.com` matches exactly `foo.com` (stored lowercase).
    Exact(String),
    /// `*.foo.com` matches `a.foo.com`, `a.b.foo.com`, not `foo.com`.
    /// Stored lowercase with the leading dot: `.foo.com`.
    Suffix(String),
}
