//! Syntax checks for addresses and host names, for every door that takes one
//! (the file, the APIs, `switchyard import`). Purely textual: names are resolved
//! at start-up or by the table, never while checking.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::listener::HostMatch;

/// Why an address or host name is not one. The text is what every door shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("missing \"]\" after IPv6 address")]
    UnclosedBracket,
    #[error("missing port (expected [IPv6]:port)")]
    MissingIpv6Port,
    #[error("bad IPv6 address {0:?}")]
    BadIpv6(String),
    #[error("missing port (expected host:port)")]
    MissingPort,
    #[error("an IPv6 address needs brackets, as in [::1]:80")]
    Ipv6WithoutBrackets,
    #[error("bad port {0:?}")]
    BadPort(String),
    #[error("port out of range (1..=65535)")]
    PortOutOfRange,
    #[error("{0:?} is not an IP address (expected IP:port)")]
    NotAnIp(String),
    #[error("expected IP:port")]
    NotIpPort,
    #[error("empty host name")]
    EmptyName,
    #[error("host name longer than 253 characters")]
    NameTooLong,
    #[error("bad host name {0:?}: labels must be 1 to 63 characters")]
    LabelLength(String),
    #[error("bad host name {0:?}: only letters, digits, '-' and '.' are allowed")]
    NameCharacters(String),
    #[error("bad host name {0:?}: a label cannot start or end with '-'")]
    LabelHyphen(String),
    #[error("bad IP address {0:?}")]
    BadIp(String),
    #[error("bad host {0:?}: a wildcard is only allowed as a leading \"*.\"")]
    Wildcard(String),
    #[error("bad host {0:?}: a route's host has no port")]
    HostWithPort(String),
}

/// A server address as nginx and NGINX Plus read it: without a port, the port
/// is 80
/// (`192.168.1.1` is `192.168.1.1:80`, `[::1]` is `[::1]:80`, `name` is
/// `name:80`). The NGINX Plus door and `switchyard import nginx` both use it. Anything else (with a port, an IPv6 address without brackets,
/// empty) is left for the address check to judge.
pub fn with_default_port(addr: &str) -> String {
    let bare = match addr.strip_prefix('[') {
        Some(rest) => rest.ends_with(']'),
        None => !addr.is_empty() && !addr.contains(':'),
    };
    if bare {
        format!("{addr}:80")
    } else {
        addr.to_string()
    }
}

/// Splits `host:port`, requiring brackets around an IPv6 host, and checks the port.
fn split_host_port(s: &str) -> Result<(&str, u16), AddrError> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return Err(AddrError::UnclosedBracket);
        };
        let Some(port) = after.strip_prefix(':') else {
            return Err(AddrError::MissingIpv6Port);
        };
        if inner.parse::<Ipv6Addr>().is_err() {
            return Err(AddrError::BadIpv6(inner.to_string()));
        }
        (inner, port)
    } else {
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(AddrError::MissingPort);
        };
        if host.contains(':') {
            return Err(AddrError::Ipv6WithoutBrackets);
        }
        (host, port)
    };
    if port.is_empty() {
        return Err(AddrError::MissingPort);
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AddrError::BadPort(port.to_string()));
    }
    match port.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok((host, p as u16)),
        _ => Err(AddrError::PortOutOfRange),
    }
}

/// A listening address: an IP and a port, since we bind before resolving anything.
pub fn socket_addr(s: &str) -> Result<SocketAddr, AddrError> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let (host, _) = split_host_port(s)?;
    if host.parse::<IpAddr>().is_err() {
        return Err(AddrError::NotAnIp(host.to_string()));
    }
    Err(AddrError::NotIpPort)
}

/// A server address: `IP:port`, `[IPv6]:port` or `name:port`. The rule for a
/// server's `addr` at every door: the file, the native and NGINX Plus APIs.
pub fn check_server_addr(s: &str) -> Result<(), AddrError> {
    let (host, _) = split_host_port(s)?;
    if s.starts_with('[') || host.parse::<Ipv4Addr>().is_ok() {
        return Ok(());
    }
    dns_name(host)
}

/// A DNS name: labels of 1..=63 letters, digits and inner hyphens.
pub fn dns_name(s: &str) -> Result<(), AddrError> {
    if s.is_empty() {
        return Err(AddrError::EmptyName);
    }
    if s.len() > 253 {
        return Err(AddrError::NameTooLong);
    }
    for label in s.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(AddrError::LabelLength(s.to_string()));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(AddrError::NameCharacters(s.to_string()));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(AddrError::LabelHyphen(s.to_string()));
        }
    }
    // "1.2.3.999" is a mistyped IP, not a name: no top-level domain is numeric.
    if s.rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(AddrError::BadIp(s.to_string()));
    }
    Ok(())
}

/// A route's host: `name`, an IP, or `*.suffix`. An IP is kept as the router
/// sees a request's host: without the brackets of an IPv6 literal (the router
/// takes `[::1]:8080` as `::1`), in its usual text form.
pub fn host_match(s: &str) -> Result<HostMatch, AddrError> {
    let lower = s.to_ascii_lowercase();
    if let Some(suffix) = lower.strip_prefix("*.") {
        dns_name(suffix)?;
        return Ok(HostMatch::Suffix(format!(".{suffix}")));
    }
    if lower.contains('*') {
        return Err(AddrError::Wildcard(s.to_string()));
    }
    let bare = lower
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(&lower);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(HostMatch::Exact(ip.to_string()));
    }
    if lower.contains(':') {
        return Err(AddrError::HostWithPort(s.to_string()));
    }
    dns_name(&lower)?;
    Ok(HostMatch::Exact(lower))
}
