//! Configuration: the TOML file format, its validation and its defaults.
//!
//! This module owns the *validated* configuration types that the rest of the
//! program is built from, and the parser that produces them from
//! `switchyard.toml`. It is pure: apart from reading the file in [`load`], it does
//! no I/O — it does not resolve host names, bind sockets or touch runtime state.
//! Runtime structures (`upstream`, `proxy`) are built *from* these types and never
//! write back into them.
//!
//! Every problem found in a file is reported with its place (file, line, column),
//! and all of them are reported at once, so `switchyard check` can list them all.

mod addr;
mod fields;
mod parse;
#[cfg(test)]
mod tests;
mod upstream;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

pub use addr::with_default_port;
pub use parse::parse;

/// The `[log]` section of the file at `path` alone, to set up logging before the
/// whole file is read. `None` when the file cannot be read or its `[log]` has a
/// problem: [`load`] reports those, with their places.
pub fn peek_log(path: &Path) -> Option<LogConfig> {
    parse::log_section(&std::fs::read_to_string(path).ok()?)
}

/// Checks a server address the way the file's `addr` is checked: `host:port`, an
/// IP or a valid DNS name (not resolved here). For the API's new servers.
pub fn check_server_addr(s: &str) -> Result<(), String> {
    addr::server_addr(s)
}

/// A whole, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub admin: Option<AdminConfig>,
    /// `[cluster]`: share the table with other instances through a store.
    pub cluster: Option<ClusterConfig>,
    pub runtime: RuntimeConfig,
    /// `[log]`: the log's format and level (the command line can override both).
    pub log: LogConfig,
    pub listeners: Vec<ListenerConfig>,
    /// Upstreams by name. Every route's `upstream` names a key of this map.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
}

/// `[cluster]`: a fleet of instances sharing one upstream table through etcd.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// `host:port` or `http(s)://host:port`, tried in turn by the client.
    pub endpoints: Vec<String>,
    /// Every key of the shared table lives under it (no trailing `/`).
    pub prefix: String,
    /// Per request to the store; a write that cannot finish in it answers 503.
    pub timeout: Duration,
    pub username: Option<String>,
    pub password: Option<String>,
    /// TLS to etcd: the CA that signed its certificate; with `tls_cert` and
    /// `tls_key`, a client certificate too.
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// `[admin]`: where the admin API listens and who may use it.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Who may use the API at all: first match wins; when there are rules, an
    /// address no rule matches is denied. No rules: everyone who can connect.
    pub rules: Vec<AccessRule>,
    /// Who may change things (checked after `rules`); `None`: the same as `rules`.
    pub write_rules: Option<Vec<AccessRule>>,
    /// No changes through the API at all.
    pub read_only: bool,
    /// Bearer token required for every change, when set.
    pub token: Option<String>,
    pub state_file: Option<PathBuf>,
}

impl AdminConfig {
    /// Loopback only, no rules, no token, no state file.
    pub fn new(listen: SocketAddr) -> AdminConfig {
        AdminConfig {
            listen,
            rules: Vec::new(),
            write_rules: None,
            read_only: false,
            token: None,
            state_file: None,
        }
    }
}

/// One nginx-style `allow`/`deny` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessRule {
    Allow(IpNet),
    Deny(IpNet),
}

/// `[runtime]`: process-wide settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConfig {
    /// Data-plane worker threads; `None` means one per core.
    pub workers: Option<usize>,
    /// How long in-flight requests may run after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// How long the listeners keep accepting after SIGTERM/SIGINT, while
    /// `/readyz` and `health_uri` answer 503 (default 0: they close at once).
    pub shutdown_delay: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: None,
            shutdown_grace: Duration::from_secs(30),
            shutdown_delay: Duration::ZERO,
        }
    }
}

/// `[log]`: what the log on stderr looks like and how much of it there is. What
/// the file leaves out, `--log-format`/`--log-level`, `RUST_LOG` and the defaults
/// decide (`crate::logging` puts them together).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogConfig {
    pub format: Option<LogFormat>,
    pub level: Option<LogLevel>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One line of text per event (`format = "text"`, the default).
    #[default]
    Text,
    /// One JSON object per line (`format = "json"`), for log shippers.
    Json,
}

impl LogFormat {
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Which log lines are written: a level (`trace`, `debug`, `info`, `warn`,
/// `error`, `off`), or comma-separated directives as `RUST_LOG` takes them, each
/// a level or `TARGET=LEVEL` (`"warn,switchyard::admin=debug"`). Checked here,
/// so that a misspelt level is an error and not a filter that shows nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLevel(String);

impl LogLevel {
    const LEVELS: [&'static str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

    pub fn parse(s: &str) -> Result<LogLevel, String> {
        let level = |l: &str| Self::LEVELS.iter().any(|n| l.eq_ignore_ascii_case(n));
        let target = |t: &str| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-:".contains(&b))
        };
        let s = s.trim();
        let bad = |piece: &str| {
            let whole = if piece == s {
                String::new()
            } else {
                format!(" in {s:?}")
            };
            Err(format!(
                "bad log level {piece:?}{whole}: expected one of {}, or directives such as \"warn,switchyard::admin=debug\"",
                Self::LEVELS.join(", ")
            ))
        };
        let mut directives = Vec::new();
        for d in s.split(',').map(str::trim) {
            match d.split_once('=').map(|(t, l)| (t.trim(), l.trim())) {
                None if level(d) => directives.push(d.to_string()),
                Some((t, l)) if target(t) && level(l) => directives.push(format!("{t}={l}")),
                _ => return bad(d),
            }
        }
        Ok(LogLevel(directives.join(",")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

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

/// The variable names a template uses, in order (`$name` or `${name}`), or the
/// first one that is not in [`ACCESS_LOG_VARIABLES`].
pub fn template_variables(template: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        rest = &rest[i + 1..];
        let name = if let Some(inner) = rest.strip_prefix('{') {
            let end = inner
                .find('}')
                .ok_or_else(|| "a ${ is not closed".to_string())?;
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
            return Err(format!(
                "unknown variable ${name} (known: {})",
                ACCESS_LOG_VARIABLES.join(", ")
            ));
        }
        out.push(name.to_string());
    }
    Ok(out)
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
    /// Most bytes of request line and headers (`max_header_size`, default 64 KiB,
    /// at least 8 KiB; more: 431).
    pub max_header_size: usize,
    /// Longest request target (`max_uri_length`, default 8 KiB; longer: 414).
    pub max_uri_length: usize,
    /// Most client connections open at once (`max_connections`, default 10000);
    /// further ones wait in the kernel's accept queue until one closes.
    pub max_connections: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            header_timeout: Duration::from_secs(30),
            max_headers: 100,
            max_header_size: 64 * 1024,
            max_uri_length: 8 * 1024,
            max_connections: 10_000,
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

/// How switchyard talks to an upstream's servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheme {
    #[default]
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The HTTP version spoken to an upstream's servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (`protocol = "http1"`, the default).
    #[default]
    Http1,
    /// HTTP/2 over TLS, agreed through ALPN (`protocol = "h2"`, needs `scheme = "https"`).
    H2,
    /// HTTP/2 over cleartext with prior knowledge (`protocol = "h2c"`).
    H2c,
}

impl UpstreamProtocol {
    pub fn parse(s: &str) -> Option<UpstreamProtocol> {
        match s {
            "http1" => Some(UpstreamProtocol::Http1),
            "h2" => Some(UpstreamProtocol::H2),
            "h2c" => Some(UpstreamProtocol::H2c),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2 => "h2",
            UpstreamProtocol::H2c => "h2c",
        }
    }
}

/// TLS towards an upstream's servers (used with `scheme = "https"` and by
/// `type = "https"` health checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// SNI and the name verified; default: the host of each server's `addr`.
    pub server_name: Option<String>,
    /// Verify against this CA file instead of the built-in web roots.
    pub ca: Option<PathBuf>,
    /// `false` accepts any certificate (logged as a warning at start-up).
    pub verify: bool,
    /// Client certificate and key for mTLS to the servers.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl Default for UpstreamTls {
    fn default() -> Self {
        UpstreamTls {
            server_name: None,
            ca: None,
            verify: true,
            client_cert: None,
            client_key: None,
        }
    }
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

/// `[upstream.NAME]`: a named group of servers and how to reach them.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub name: String,
    pub balance: Balance,
    /// Required when `balance = "hash"`, forbidden otherwise.
    pub hash_key: Option<HashKey>,
    pub servers: Vec<ServerConfig>,
    pub keepalive: KeepaliveConfig,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    pub health_check: Option<HealthCheckConfig>,
    pub scheme: Scheme,
    pub protocol: UpstreamProtocol,
    pub tls: UpstreamTls,
}

/// Balancing method of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConn,
    IpHash,
    Hash,
    RandomTwo,
}

impl Balance {
    pub const ALL: [Balance; 5] = [
        Balance::RoundRobin,
        Balance::LeastConn,
        Balance::IpHash,
        Balance::Hash,
        Balance::RandomTwo,
    ];

    /// The method named as in the file (`"round_robin"`...).
    pub fn parse(s: &str) -> Option<Balance> {
        Balance::ALL.into_iter().find(|b| b.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::IpHash => "ip_hash",
            Balance::Hash => "hash",
            Balance::RandomTwo => "random_two",
        }
    }
}

/// Where `balance = "hash"` takes its key from. In the file:
/// `"uri"`, `"remote_addr"`, `"header:NAME"`, `"cookie:NAME"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// Path and query of the request.
    Uri,
    /// The client's IP address.
    RemoteAddr,
    /// A request header (name stored lowercase).
    Header(String),
    /// A cookie by name.
    Cookie(String),
}

impl HashKey {
    /// Parses the file's form: `"uri"`, `"remote_addr"`, `"header:NAME"`,
    /// `"cookie:NAME"` (names must be HTTP tokens).
    pub fn parse(s: &str) -> Option<HashKey> {
        let token = |n: &str| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        match s.split_once(':') {
            None if s == "uri" => Some(HashKey::Uri),
            None if s == "remote_addr" => Some(HashKey::RemoteAddr),
            Some(("header", n)) if token(n) => Some(HashKey::Header(n.to_ascii_lowercase())),
            Some(("cookie", n)) if token(n) => Some(HashKey::Cookie(n.to_string())),
            _ => None,
        }
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::Uri => f.write_str("uri"),
            HashKey::RemoteAddr => f.write_str("remote_addr"),
            HashKey::Header(n) => write!(f, "header:{n}"),
            HashKey::Cookie(n) => write!(f, "cookie:{n}"),
        }
    }
}

/// One server of an upstream, as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// `host:port`, as written (a host name is resolved at start-up, not here).
    pub addr: String,
    /// 1..=1000, default 1.
    pub weight: u32,
    /// 0 means unlimited.
    pub max_conns: u32,
    /// Default 1; 0 disables passive failure accounting.
    pub max_fails: u32,
    /// Default 10s.
    pub fail_timeout: Duration,
    /// Default 0 (off).
    pub slow_start: Duration,
    pub backup: bool,
    /// Starts with admin state `down`.
    pub down: bool,
}

impl ServerConfig {
    /// A server with every setting at its default.
    pub fn new(addr: impl Into<String>) -> Self {
        ServerConfig {
            addr: addr.into(),
            weight: 1,
            max_conns: 0,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            slow_start: Duration::ZERO,
            backup: false,
            down: false,
        }
    }
}

/// Idle keep-alive connections kept per server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveConfig {
    /// Most idle connections kept per server and worker (`keepalive`; 0 = no
    /// reuse). The default, [`KeepaliveConfig::DEFAULT_MAX_IDLE`], keeps every
    /// connection that comes back for any realistic number of clients: `keepalive`
    /// is a cap for those who want one, not a size to tune.
    pub max_idle: usize,
    /// Idle connections older than this are closed (`keepalive_timeout`, default 60s).
    pub idle_timeout: Duration,
}

impl KeepaliveConfig {
    /// Large enough that 10,000 concurrent clients through one worker to one
    /// server do not churn its connections; idle ones still close after
    /// `keepalive_timeout`.
    pub const DEFAULT_MAX_IDLE: usize = 16_384;
}

impl Default for KeepaliveConfig {
    fn default() -> Self {
        KeepaliveConfig {
            max_idle: Self::DEFAULT_MAX_IDLE,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Timeouts towards the servers of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect (`connect_timeout`, default 5s).
    pub connect: Duration,
    /// Waiting for response headers, and between two reads of the response body
    /// (`read_timeout`, default 60s). Expiry before headers is a 504.
    pub read: Duration,
    /// Between two successful writes to the server (`send_timeout`, default 60s).
    pub send: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(60),
            send: Duration::from_secs(60),
        }
    }
}

/// `retry = { tries = 3, timeout = "0s", non_idempotent = false }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most servers tried for one request, the first included (default 3; 1 = no retry).
    pub tries: u32,
    /// Give up trying further servers after this long (0 = no limit).
    pub timeout: Duration,
    /// Also retry non-idempotent requests (POST, PATCH) after a reset before response
    /// headers. Connect failures are always retried, since nothing was sent.
    pub non_idempotent: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            tries: 3,
            timeout: Duration::ZERO,
            non_idempotent: false,
        }
    }
}

/// `health_check = { ... }`. Parsed and validated here; run by the `health` module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub kind: HealthCheckKind,
    /// Raw request bytes, as lua-resty-upstream-healthcheck takes them; sent as is.
    pub http_req: Option<String>,
    /// Structured request (when there is no `http_req`): method, path, host, headers.
    pub method: String,
    pub path: String,
    /// `Host` header; default: the server's `addr`.
    pub host: Option<String>,
    pub headers: Vec<(String, String)>,
    pub interval: Duration,
    /// Up to this much is added at random to each interval, so checks of many
    /// servers do not fire together.
    pub jitter: Duration,
    pub timeout: Duration,
    pub fall: u32,
    pub rise: u32,
    /// Empty means any 2xx or 3xx.
    pub valid_statuses: Vec<u16>,
    /// The body must contain this.
    pub body: Option<String>,
    /// The body must match this regular expression (validated here).
    pub body_regex: Option<String>,
    /// Check this port instead of the server's.
    pub port: Option<u16>,
    /// Most checks in flight at once across the whole process.
    pub concurrency: u32,
    /// Servers start `checking` (no traffic until a first pass) even at start-up.
    pub mandatory: bool,
}

impl HealthCheckConfig {
    /// A check of `kind` with every other setting at its default.
    pub fn new(kind: HealthCheckKind) -> Self {
        HealthCheckConfig {
            kind,
            http_req: None,
            method: "GET".into(),
            path: "/".into(),
            host: None,
            headers: Vec::new(),
            interval: Duration::from_secs(2),
            jitter: Duration::ZERO,
            timeout: Duration::from_secs(1),
            fall: 3,
            rise: 2,
            valid_statuses: Vec::new(),
            body: None,
            body_regex: None,
            port: None,
            concurrency: 10,
            mandatory: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthCheckKind {
    Http,
    /// HTTP over TLS, verified with the upstream's TLS settings.
    Https,
    Tcp,
}

impl HealthCheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthCheckKind::Http => "http",
            HealthCheckKind::Https => "https",
            HealthCheckKind::Tcp => "tcp",
        }
    }

    pub fn parse(s: &str) -> Option<HealthCheckKind> {
        match s {
            "http" => Some(HealthCheckKind::Http),
            "https" => Some(HealthCheckKind::Https),
            "tcp" => Some(HealthCheckKind::Tcp),
            _ => None,
        }
    }
}

/// One problem in a configuration, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the problem has no place in the file.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

/// Every problem found in one configuration, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
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

impl Config {
    /// What is valid but almost certainly not what was meant: each a sentence
    /// naming the part. `switchyard check` prints them; `run` logs them.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, u) in &self.upstreams {
            if let Some(c) = &u.health_check
                && u.scheme == Scheme::Https
                && c.kind == HealthCheckKind::Http
            {
                out.push(format!(
                    "upstream {name:?}: scheme is \"https\" but its health_check type is \"http\": \
                     the probe would go in cleartext to a TLS port and fail (use type = \"https\")"
                ));
            }
        }
        out
    }

    /// Makes every relative TLS file path relative to `dir`.
    pub fn resolve_paths(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        for l in &mut self.listeners {
            if let Some(tls) = &mut l.tls {
                for pair in &mut tls.certificates {
                    fix(&mut pair.cert);
                    fix(&mut pair.key);
                }
            }
        }
        for u in self.upstreams.values_mut() {
            for p in [&mut u.tls.ca, &mut u.tls.client_cert, &mut u.tls.client_key]
                .into_iter()
                .flatten()
            {
                fix(p);
            }
        }
    }

    /// The configuration `switchyard proxy --listen L --to A --to B` stands for: one
    /// listener routing everything to one round-robin upstream named `default`.
    pub fn single_upstream(listen: SocketAddr, servers: Vec<ServerConfig>) -> Config {
        let name = "default".to_string();
        let mut upstreams = BTreeMap::new();
        upstreams.insert(
            name.clone(),
            UpstreamConfig {
                name: name.clone(),
                balance: Balance::RoundRobin,
                hash_key: None,
                servers,
                keepalive: KeepaliveConfig::default(),
                timeouts: Timeouts::default(),
                retry: RetryPolicy::default(),
                health_check: None,
                scheme: Scheme::Http,
                protocol: UpstreamProtocol::Http1,
                tls: UpstreamTls::default(),
            },
        );
        Config {
            admin: None,
            cluster: None,
            runtime: RuntimeConfig::default(),
            log: LogConfig::default(),
            listeners: vec![ListenerConfig {
                listen,
                routes: vec![RouteConfig {
                    host: None,
                    path_prefix: None,
                    upstream: name,
                    max_body_size: None,
                }],
                health_uri: None,
                limits: ClientLimits::default(),
                tls: None,
                access_log: None,
                request_id: true,
                forwarded: false,
            }],
            upstreams,
        }
    }
}
