//! An active health check and the rules it follows. Every door that takes a
//! check — the file's `health_check`, the native API's
//! `PUT .../health_check`, the state file and the fleet's store — checks it
//! here: the file key by key (to place each problem), the others with
//! [`HealthCheckConfig::validate`]. Pure: the `health` module runs checks.

use std::ops::RangeInclusive;
use std::time::Duration;

/// The statuses a check may expect.
pub const STATUSES: RangeInclusive<u16> = 100..=599;
/// The ports a check may probe instead of the server's.
pub const PORTS: RangeInclusive<u16> = 1..=65535;
/// The least `fall`, `rise` and `concurrency` may be.
pub const MIN_COUNT: u32 = 1;
/// The method and path of a structured request when none are given.
pub const DEFAULT_METHOD: &str = "GET";
pub const DEFAULT_PATH: &str = "/";

/// Keys that describe the request, which `http_req` gives whole instead.
pub const REQUEST_KEYS: [&str; 4] = ["method", "path", "host", "headers"];
/// Keys only a check that speaks HTTP takes.
pub const HTTP_ONLY_KEYS: [&str; 8] = [
    "http_req",
    "body",
    "body_regex",
    "valid_statuses",
    "method",
    "path",
    "host",
    "headers",
];

/// Why a health check is refused. The text is the one users see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthCheckError {
    #[error("unknown health check type {0:?} (expected \"http\", \"https\" or \"tcp\")")]
    UnknownKind(String),
    #[error("http_req is the whole request; {0} cannot be used with it")]
    WithHttpReq(&'static str),
    #[error(
        "{0} is only used with type = \"http\" or \"https\": a tcp check takes no request, status or body settings"
    )]
    HttpOnly(&'static str),
    #[error("bad method {0:?} (expected an upper-case HTTP method such as GET)")]
    BadMethod(String),
    #[error("bad path {0:?} (must start with \"/\" and have no spaces)")]
    BadPath(String),
    #[error("bad header {0:?}")]
    BadHeaderName(String),
    #[error("header {0:?} must be a one-line string")]
    BadHeaderValue(String),
    #[error("{0} must be greater than 0")]
    NotPositive(&'static str),
    #[error("{0} must be at least {MIN_COUNT}")]
    TooFew(&'static str),
    #[error("status {0} out of range {least}..={most}", least = STATUSES.start(), most = STATUSES.end())]
    BadStatus(u16),
    #[error("bad body_regex: {0}")]
    BadRegex(String),
    #[error("port {0} out of range {least}..={most}", least = PORTS.start(), most = PORTS.end())]
    BadPort(u16),
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
            method: DEFAULT_METHOD.into(),
            path: DEFAULT_PATH.into(),
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

    /// Whether the check sets `key` (one of [`HTTP_ONLY_KEYS`]) to anything but
    /// its default.
    fn sets(&self, key: &str) -> bool {
        match key {
            "http_req" => self.http_req.is_some(),
            "body" => self.body.is_some(),
            "body_regex" => self.body_regex.is_some(),
            "valid_statuses" => !self.valid_statuses.is_empty(),
            "method" => self.method != DEFAULT_METHOD,
            "path" => self.path != DEFAULT_PATH,
            "host" => self.host.is_some(),
            "headers" => !self.headers.is_empty(),
            _ => false,
        }
    }

    /// Every rule of a whole check, stopping at the first one broken: for the
    /// doors that take a check in one piece (the native API, the state file,
    /// the fleet's store). The file checks the same rules key by key.
    pub fn validate(&self) -> Result<(), HealthCheckError> {
        if let Some((_, e)) = misplaced_keys(self.kind, |k| self.sets(k))
            .into_iter()
            .next()
        {
            return Err(e);
        }
        check_method(&self.method)?;
        check_path(&self.path)?;
        for (name, value) in &self.headers {
            check_header(name, value)?;
        }
        check_positive("interval", self.interval)?;
        check_positive("timeout", self.timeout)?;
        check_count("fall", self.fall)?;
        check_count("rise", self.rise)?;
        check_count("concurrency", self.concurrency)?;
        for &code in &self.valid_statuses {
            check_status(code)?;
        }
        if let Some(re) = &self.body_regex {
            check_body_regex(re)?;
        }
        if let Some(port) = self.port {
            check_port(port)?;
        }
        Ok(())
    }
}

/// Settings that cannot go together, each with the key to point at: the
/// request's parts beside `http_req` (pointed at `http_req`), and HTTP settings
/// on a `tcp` check. `given` says whether a key was set.
pub fn misplaced_keys(
    kind: HealthCheckKind,
    given: impl Fn(&str) -> bool,
) -> Vec<(&'static str, HealthCheckError)> {
    let mut out = Vec::new();
    if given("http_req") {
        for key in REQUEST_KEYS {
            if given(key) {
                out.push(("http_req", HealthCheckError::WithHttpReq(key)));
            }
        }
    }
    if kind == HealthCheckKind::Tcp {
        for key in HTTP_ONLY_KEYS {
            if given(key) {
                out.push((key, HealthCheckError::HttpOnly(key)));
            }
        }
    }
    out
}

/// An upper-case token, as request lines carry methods.
pub fn check_method(m: &str) -> Result<(), HealthCheckError> {
    if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HealthCheckError::BadMethod(m.to_string()));
    }
    Ok(())
}

/// A path that fits in a request line as is.
pub fn check_path(p: &str) -> Result<(), HealthCheckError> {
    if !p.starts_with('/')
        || p.bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(HealthCheckError::BadPath(p.to_string()));
    }
    Ok(())
}

/// A header the request can carry: a name with no separator in it, a value on
/// one line (a line break would start a header of the sender's choosing).
pub fn check_header(name: &str, value: &str) -> Result<(), HealthCheckError> {
    if name.is_empty() || name.contains([':', '\r', '\n', ' ']) {
        return Err(HealthCheckError::BadHeaderName(name.to_string()));
    }
    if value.contains(['\r', '\n']) {
        return Err(HealthCheckError::BadHeaderValue(name.to_string()));
    }
    Ok(())
}

/// `interval` and `timeout`: a zero would probe without pause or never wait.
pub fn check_positive(name: &'static str, d: Duration) -> Result<(), HealthCheckError> {
    if d.is_zero() {
        return Err(HealthCheckError::NotPositive(name));
    }
    Ok(())
}

/// `fall`, `rise` and `concurrency`.
pub fn check_count(name: &'static str, n: u32) -> Result<(), HealthCheckError> {
    if n < MIN_COUNT {
        return Err(HealthCheckError::TooFew(name));
    }
    Ok(())
}

pub fn check_status(code: u16) -> Result<(), HealthCheckError> {
    if !STATUSES.contains(&code) {
        return Err(HealthCheckError::BadStatus(code));
    }
    Ok(())
}

pub fn check_body_regex(re: &str) -> Result<(), HealthCheckError> {
    regex::Regex::new(re)
        .map(drop)
        .map_err(|e| HealthCheckError::BadRegex(e.to_string()))
}

pub fn check_port(port: u16) -> Result<(), HealthCheckError> {
    if !PORTS.contains(&port) {
        return Err(HealthCheckError::BadPort(port));
    }
    Ok(())
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

    /// [`HealthCheckKind::parse`], refusing an unknown name with the message
    /// every door shows.
    pub fn from_name(s: &str) -> Result<HealthCheckKind, HealthCheckError> {
        Self::parse(s).ok_or_else(|| HealthCheckError::UnknownKind(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http() -> HealthCheckConfig {
        HealthCheckConfig::new(HealthCheckKind::Http)
    }

    #[test]
    fn defaults_pass() {
        assert_eq!(http().validate(), Ok(()));
        assert_eq!(
            HealthCheckConfig::new(HealthCheckKind::Tcp).validate(),
            Ok(())
        );
    }

    #[test]
    fn field_rules() {
        assert!(check_method("GET").is_ok());
        for m in ["", "get", "GE T"] {
            assert_eq!(check_method(m), Err(HealthCheckError::BadMethod(m.into())));
        }
        assert!(check_path("/health?x=1").is_ok());
        for p in ["health", "/a b", "/a\x01"] {
            assert!(check_path(p).is_err(), "{p:?}");
        }
        assert!(check_header("X-Check", "yes").is_ok());
        assert!(matches!(
            check_header("X:Y", "v"),
            Err(HealthCheckError::BadHeaderName(_))
        ));
        assert!(matches!(
            check_header("", "v"),
            Err(HealthCheckError::BadHeaderName(_))
        ));
        assert!(matches!(
            check_header("X", "a\r\nInjected: 1"),
            Err(HealthCheckError::BadHeaderValue(_))
        ));
        assert!(check_positive("interval", Duration::from_millis(1)).is_ok());
        assert_eq!(
            check_positive("interval", Duration::ZERO)
                .unwrap_err()
                .to_string(),
            "interval must be greater than 0"
        );
        assert_eq!(
            check_count("fall", 0).unwrap_err().to_string(),
            "fall must be at least 1"
        );
        assert!(check_count("rise", 1).is_ok());
        assert!(check_status(100).is_ok() && check_status(599).is_ok());
        assert_eq!(
            check_status(99).unwrap_err().to_string(),
            "status 99 out of range 100..=599"
        );
        assert!(check_status(600).is_err());
        assert!(check_body_regex("^ok$").is_ok());
        assert!(
            check_body_regex("(")
                .unwrap_err()
                .to_string()
                .starts_with("bad body_regex: ")
        );
        assert_eq!(
            check_port(0).unwrap_err().to_string(),
            "port 0 out of range 1..=65535"
        );
        assert!(check_port(1).is_ok());
    }

    #[test]
    fn kinds_by_name() {
        assert_eq!(
            HealthCheckKind::from_name("https"),
            Ok(HealthCheckKind::Https)
        );
        assert_eq!(
            HealthCheckKind::from_name("udp").unwrap_err().to_string(),
            "unknown health check type \"udp\" (expected \"http\", \"https\" or \"tcp\")"
        );
    }

    #[test]
    fn combinations() {
        let given = |keys: &'static [&'static str]| move |k: &str| keys.contains(&k);
        assert!(misplaced_keys(HealthCheckKind::Http, given(&["path", "body"])).is_empty());
        assert_eq!(
            misplaced_keys(HealthCheckKind::Http, given(&["http_req", "path", "host"])),
            vec![
                ("http_req", HealthCheckError::WithHttpReq("path")),
                ("http_req", HealthCheckError::WithHttpReq("host")),
            ]
        );
        assert_eq!(
            misplaced_keys(HealthCheckKind::Tcp, given(&["body", "port"])),
            vec![("body", HealthCheckError::HttpOnly("body"))]
        );
        assert!(
            HealthCheckError::HttpOnly("path")
                .to_string()
                .contains("a tcp check takes no")
        );
    }

    #[test]
    fn a_whole_check_is_checked() {
        let mut c = HealthCheckConfig::new(HealthCheckKind::Tcp);
        c.path = "/x".into();
        assert_eq!(c.validate(), Err(HealthCheckError::HttpOnly("path")));
        let mut c = http();
        c.http_req = Some("GET / HTTP/1.0\r\n\r\n".into());
        c.headers.push(("X".into(), "y".into()));
        assert_eq!(c.validate(), Err(HealthCheckError::WithHttpReq("headers")));
        let mut c = http();
        c.valid_statuses = vec![200, 700];
        assert_eq!(c.validate(), Err(HealthCheckError::BadStatus(700)));
        let mut c = http();
        c.concurrency = 0;
        assert_eq!(c.validate(), Err(HealthCheckError::TooFew("concurrency")));
        let mut c = http();
        c.port = Some(0);
        assert_eq!(c.validate(), Err(HealthCheckError::BadPort(0)));
        let mut c = http();
        c.timeout = Duration::ZERO;
        assert_eq!(c.validate(), Err(HealthCheckError::NotPositive("timeout")));
    }
}
