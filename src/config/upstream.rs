//! `[upstream.NAME]`: how a group of servers is balanced, reached and retried,
//! and the rules between those settings (a hash needs a key, `h2` needs TLS,
//! backups do not mix with hashing). Every door that takes an upstream's
//! settings checks them here. Types and rules only: the TOML reader is
//! `read::upstream`; servers and health checks have files of their own.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::health_check::HealthCheckConfig;
use super::server::ServerConfig;

/// The fewest servers a request may be tried on (the first one).
pub const MIN_TRIES: u32 = 1;

/// Why an upstream's settings are refused. The text is the one users see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("unknown balance method {0:?} (expected one of: {list})", list = Balance::names().join(", "))]
    UnknownBalance(String),
    #[error(
        "bad hash_key {0:?} (expected \"uri\", \"remote_addr\", \"header:NAME\" or \"cookie:NAME\")"
    )]
    BadHashKey(String),
    #[error(
        "balance \"hash\" needs a hash_key (\"uri\", \"remote_addr\", \"header:NAME\" or \"cookie:NAME\")"
    )]
    HashWithoutKey,
    #[error("hash_key is only used with balance = \"hash\" (balance is {:?})", .0.as_str())]
    KeyWithoutHash(Balance),
    #[error("backup servers cannot be used with balance {:?}", .0.as_str())]
    BackupWithHash(Balance),
    #[error("unknown scheme {0:?} (expected \"http\" or \"https\")")]
    UnknownScheme(String),
    #[error("unknown protocol {0:?} (expected \"http1\", \"h2\" or \"h2c\")")]
    UnknownProtocol(String),
    #[error(
        "protocol \"h2\" is agreed through TLS: it needs scheme = \"https\" (use \"h2c\" for cleartext HTTP/2)"
    )]
    H2WithoutTls,
    #[error("protocol \"h2c\" is cleartext HTTP/2: with scheme = \"https\" use \"h2\"")]
    H2cWithTls,
    #[error("bad tls_server_name {0:?} (expected a DNS name or an IP address)")]
    BadServerName(String),
    #[error("{0} must name a file")]
    EmptyPath(&'static str),
    #[error("{0} needs {1} too (a client certificate and its key)")]
    HalfClientCert(&'static str, &'static str),
    #[error("tls_verify = false ignores tls_ca: keep one of the two")]
    VerifyOffWithCa,
    #[error(
        "panic_threshold {0} out of range {min}..={max} (a percentage of the primary servers; leave it out for no panic mode)",
        min = PANIC_THRESHOLDS.start(),
        max = PANIC_THRESHOLDS.end()
    )]
    BadPanicThreshold(i128),
}

/// `panic_threshold`: a percentage of the primary servers. 0 would never panic
/// (that is what leaving it out says) and above 100 would always panic.
pub const PANIC_THRESHOLDS: std::ops::RangeInclusive<u8> = 1..=100;

/// A `panic_threshold` as given (any integer) → the percentage, or why not.
pub fn check_panic_threshold(v: i128) -> Result<u8, UpstreamError> {
    u8::try_from(v)
        .ok()
        .filter(|p| PANIC_THRESHOLDS.contains(p))
        .ok_or(UpstreamError::BadPanicThreshold(v))
}

/// A hash key with hashing, and hashing with a key.
pub fn check_hash_key(balance: Balance, hash_key: Option<&HashKey>) -> Result<(), UpstreamError> {
    match (hash_key, balance) {
        (None, Balance::Hash) => Err(UpstreamError::HashWithoutKey),
        (Some(_), b) if b != Balance::Hash => Err(UpstreamError::KeyWithoutHash(b)),
        _ => Ok(()),
    }
}

/// nginx refuses backup servers with hashing: a key's server must not change
/// merely because another server went down, which a backup would make it do.
pub fn check_backup(balance: Balance, backup: bool) -> Result<(), UpstreamError> {
    match balance {
        Balance::Hash | Balance::IpHash if backup => Err(UpstreamError::BackupWithHash(balance)),
        _ => Ok(()),
    }
}

/// The HTTP version fits the scheme: `h2` is agreed in the TLS handshake, `h2c`
/// is its cleartext form.
pub fn check_protocol(scheme: Scheme, protocol: UpstreamProtocol) -> Result<(), UpstreamError> {
    match (protocol, scheme) {
        (UpstreamProtocol::H2, Scheme::Http) => Err(UpstreamError::H2WithoutTls),
        (UpstreamProtocol::H2c, Scheme::Https) => Err(UpstreamError::H2cWithTls),
        _ => Ok(()),
    }
}

/// `tls_server_name`: what rustls can send as SNI and verify.
pub fn check_server_name(name: &str) -> Result<(), UpstreamError> {
    rustls_pki_types::ServerName::try_from(name)
        .map(drop)
        .map_err(|_| UpstreamError::BadServerName(name.to_string()))
}

/// `/api/v1/upstreams` names are path segments; the file's table keys are not.
pub fn is_api_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/')
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
    /// Panic mode: when fewer than this percentage of the primary servers are
    /// healthy, balance over all of them regardless of health. `None`: off.
    pub panic_threshold: Option<u8>,
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

    /// [`Balance::parse`], refusing an unknown name with the list of known ones.
    pub fn from_name(s: &str) -> Result<Balance, UpstreamError> {
        Self::parse(s).ok_or_else(|| UpstreamError::UnknownBalance(s.to_string()))
    }

    fn names() -> Vec<&'static str> {
        Balance::ALL.iter().map(|b| b.as_str()).collect()
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

    /// [`HashKey::parse`], refusing a bad key with the forms it may take.
    pub fn from_name(s: &str) -> Result<HashKey, UpstreamError> {
        Self::parse(s).ok_or_else(|| UpstreamError::BadHashKey(s.to_string()))
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

    pub fn from_name(s: &str) -> Result<Scheme, UpstreamError> {
        match s {
            "http" => Ok(Scheme::Http),
            "https" => Ok(Scheme::Https),
            _ => Err(UpstreamError::UnknownScheme(s.to_string())),
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

    pub fn from_name(s: &str) -> Result<UpstreamProtocol, UpstreamError> {
        Self::parse(s).ok_or_else(|| UpstreamError::UnknownProtocol(s.to_string()))
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

impl UpstreamTls {
    /// Every rule of the `tls_*` settings together, first broken one first (the
    /// file checks them key by key, to place each).
    pub fn validate(&self) -> Result<(), UpstreamError> {
        for (key, path) in [
            ("tls_ca", &self.ca),
            ("tls_client_cert", &self.client_cert),
            ("tls_client_key", &self.client_key),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(UpstreamError::EmptyPath(key));
            }
        }
        if let Some(name) = &self.server_name {
            check_server_name(name)?;
        }
        match (&self.client_cert, &self.client_key) {
            (Some(_), None) => Err(UpstreamError::HalfClientCert(
                "tls_client_cert",
                "tls_client_key",
            )),
            (None, Some(_)) => Err(UpstreamError::HalfClientCert(
                "tls_client_key",
                "tls_client_cert",
            )),
            _ if !self.verify && self.ca.is_some() => Err(UpstreamError::VerifyOffWithCa),
            _ => Ok(()),
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

impl RetryPolicy {
    /// `tries` brought up to [`MIN_TRIES`]: the doors that take it leniently
    /// (the native API, a saved table) read 0 as "no retry".
    pub fn at_least_one_try(tries: u32) -> u32 {
        tries.max(MIN_TRIES)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_and_its_key_go_together() {
        assert_eq!(check_hash_key(Balance::Hash, Some(&HashKey::Uri)), Ok(()));
        assert_eq!(check_hash_key(Balance::RoundRobin, None), Ok(()));
        assert_eq!(
            check_hash_key(Balance::Hash, None),
            Err(UpstreamError::HashWithoutKey)
        );
        assert_eq!(
            check_hash_key(Balance::LeastConn, Some(&HashKey::Uri))
                .unwrap_err()
                .to_string(),
            "hash_key is only used with balance = \"hash\" (balance is \"least_conn\")"
        );
    }

    #[test]
    fn backups_do_not_mix_with_hashing() {
        assert!(check_backup(Balance::RoundRobin, true).is_ok());
        assert!(check_backup(Balance::Hash, false).is_ok());
        assert_eq!(
            check_backup(Balance::IpHash, true).unwrap_err().to_string(),
            "backup servers cannot be used with balance \"ip_hash\""
        );
    }

    #[test]
    fn protocols_fit_schemes() {
        assert!(check_protocol(Scheme::Https, UpstreamProtocol::H2).is_ok());
        assert!(check_protocol(Scheme::Http, UpstreamProtocol::H2c).is_ok());
        assert_eq!(
            check_protocol(Scheme::Http, UpstreamProtocol::H2),
            Err(UpstreamError::H2WithoutTls)
        );
        assert_eq!(
            check_protocol(Scheme::Https, UpstreamProtocol::H2c),
            Err(UpstreamError::H2cWithTls)
        );
    }

    #[test]
    fn names_and_their_messages() {
        assert_eq!(Balance::from_name("least_conn"), Ok(Balance::LeastConn));
        assert_eq!(
            Balance::from_name("rr").unwrap_err().to_string(),
            "unknown balance method \"rr\" (expected one of: round_robin, least_conn, ip_hash, hash, random_two)"
        );
        assert!(HashKey::from_name("header:").is_err());
        assert_eq!(Scheme::from_name("https"), Ok(Scheme::Https));
        assert!(Scheme::from_name("ftp").is_err());
        assert!(UpstreamProtocol::from_name("h3").is_err());
        assert!(is_api_name("app") && !is_api_name("") && !is_api_name("a/b"));
        assert_eq!(RetryPolicy::at_least_one_try(0), 1);
    }

    #[test]
    fn panic_threshold_is_a_percentage() {
        assert_eq!(check_panic_threshold(1), Ok(1));
        assert_eq!(check_panic_threshold(100), Ok(100));
        assert_eq!(
            check_panic_threshold(0),
            Err(UpstreamError::BadPanicThreshold(0))
        );
        assert_eq!(
            check_panic_threshold(101).unwrap_err().to_string(),
            "panic_threshold 101 out of range 1..=100 (a percentage of the primary servers; leave it out for no panic mode)"
        );
        assert!(check_panic_threshold(-5).is_err());
        assert!(check_panic_threshold(i128::from(u64::MAX)).is_err());
    }

    #[test]
    fn tls_settings() {
        assert_eq!(UpstreamTls::default().validate(), Ok(()));
        let tls = UpstreamTls {
            client_cert: Some("c.pem".into()),
            ..UpstreamTls::default()
        };
        assert!(matches!(
            tls.validate(),
            Err(UpstreamError::HalfClientCert(..))
        ));
        let tls = UpstreamTls {
            verify: false,
            ca: Some("ca.pem".into()),
            ..UpstreamTls::default()
        };
        assert_eq!(tls.validate(), Err(UpstreamError::VerifyOffWithCa));
        let tls = UpstreamTls {
            server_name: Some("bad name".into()),
            ..UpstreamTls::default()
        };
        assert!(matches!(
            tls.validate(),
            Err(UpstreamError::BadServerName(_))
        ));
    }
}
