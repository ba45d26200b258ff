//! `[resolver]`: how server names written with `resolve = true` are looked up
//! while the process runs (the `discovery` room does the looking up). Types,
//! defaults and rules only; no lookup happens here.

use std::net::SocketAddr;
use std::time::Duration;

/// `[resolver]`, with nginx's `resolver` directive's meanings.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolverConfig {
    /// Name servers to ask, in order; empty: the system's (`/etc/resolv.conf`).
    pub servers: Vec<SocketAddr>,
    /// Re-resolve this often whatever the records' TTLs say (nginx's `valid=`).
    pub valid: Option<Duration>,
    /// How long one query may take before it counts as failed.
    pub timeout: Duration,
    /// Which address families to ask for (A, AAAA); at least one.
    pub ipv4: bool,
    pub ipv6: bool,
}

/// The port a name server listens on when `servers` gives none.
pub const DNS_PORT: u16 = 53;

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            servers: Vec::new(),
            valid: None,
            timeout: Duration::from_secs(5),
            ipv4: true,
            ipv6: true,
        }
    }
}

/// Why `[resolver]` is refused. The text is the one users see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolverError {
    #[error("bad name server {0:?} (expected IP or IP:PORT, as in \"10.0.0.2:53\")")]
    BadServer(String),
    #[error("ipv4 and ipv6 cannot both be false: no address could be asked for")]
    NoFamily,
    #[error("{0} must be above zero")]
    Zero(&'static str),
}

/// A name server as written: `IP:PORT`, `IP` (port 53), `[IPv6]:PORT`.
pub fn parse_name_server(s: &str) -> Result<SocketAddr, ResolverError> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let bare = s.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, DNS_PORT))
        .map_err(|_| ResolverError::BadServer(s.to_string()))
}

impl ResolverConfig {
    pub fn validate(&self) -> Result<(), ResolverError> {
        if !self.ipv4 && !self.ipv6 {
            return Err(ResolverError::NoFamily);
        }
        if self.timeout.is_zero() {
            return Err(ResolverError::Zero("timeout"));
        }
        if self.valid.is_some_and(|v| v.is_zero()) {
            return Err(ResolverError::Zero("valid"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_servers_take_port_53_by_default() {
        assert_eq!(
            parse_name_server("10.0.0.2"),
            Ok("10.0.0.2:53".parse().unwrap())
        );
        assert_eq!(
            parse_name_server("127.0.0.1:5353"),
            Ok("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(parse_name_server("[::1]"), Ok("[::1]:53".parse().unwrap()));
        assert!(parse_name_server("dns.internal:53").is_err());
    }

    #[test]
    fn one_family_at_least() {
        let c = ResolverConfig {
            ipv4: false,
            ipv6: false,
            ..ResolverConfig::default()
        };
        assert_eq!(c.validate(), Err(ResolverError::NoFamily));
        assert_eq!(ResolverConfig::default().validate(), Ok(()));
    }
}
