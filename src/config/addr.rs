//! Syntax checks for addresses and host names. Purely textual: names are
//! resolved at start-up, never while checking a file.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::HostMatch;

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
fn split_host_port(s: &str) -> Result<(&str, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return Err("missing \"]\" after IPv6 address".into());
        };
        let Some(port) = after.strip_prefix(':') else {
            return Err("missing port (expected [IPv6]:port)".into());
        };
        if inner.parse::<Ipv6Addr>().is_err() {
            return Err(format!("bad IPv6 address {inner:?}"));
        }
        (inner, port)
    } else {
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err("missing port (expected host:port)".into());
        };
        if host.contains(':') {
            return Err("an IPv6 address needs brackets, as in [::1]:80".into());
        }
        (host, port)
    };
    if port.is_empty() {
        return Err("missing port (expected host:port)".into());
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad port {port:?}"));
    }
    match port.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok((host, p as u16)),
        _ => Err("port out of range (1..=65535)".into()),
    }
}

/// A listening address: an IP and a port, since we bind before resolving anything.
pub(super) fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let (host, _) = split_host_port(s)?;
    if host.parse::<IpAddr>().is_err() {
        return Err(format!("{host:?} is not an IP address (expected IP:port)"));
    }
    Err("expected IP:port".into())
}

/// A server address: `IP:port`, `[IPv6]:port` or `name:port`.
pub(super) fn server_addr(s: &str) -> Result<(), String> {
    let (host, _) = split_host_port(s)?;
    if s.starts_with('[') || host.parse::<Ipv4Addr>().is_ok() {
        return Ok(());
    }
    dns_name(host)
}

/// A DNS name: labels of 1..=63 letters, digits and inner hyphens.
pub(super) fn dns_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty host name".into());
    }
    if s.len() > 253 {
        return Err("host name longer than 253 characters".into());
    }
    for label in s.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "bad host name {s:?}: labels must be 1 to 63 characters"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "bad host name {s:?}: only letters, digits, '-' and '.' are allowed"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "bad host name {s:?}: a label cannot start or end with '-'"
            ));
        }
    }
    // "1.2.3.999" is a mistyped IP, not a name: no top-level domain is numeric.
    if s.rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("bad IP address {s:?}"));
    }
    Ok(())
}

/// A route's host: `name`, an IP, or `*.suffix`. An IP is kept as the router
/// sees a request's host: without the brackets of an IPv6 literal (the router
/// takes `[::1]:8080` as `::1`), in its usual text form.
pub(super) fn host_match(s: &str) -> Result<HostMatch, String> {
    let lower = s.to_ascii_lowercase();
    if let Some(suffix) = lower.strip_prefix("*.") {
        dns_name(suffix)?;
        return Ok(HostMatch::Suffix(format!(".{suffix}")));
    }
    if lower.contains('*') {
        return Err(format!(
            "bad host {s:?}: a wildcard is only allowed as a leading \"*.\""
        ));
    }
    let bare = lower
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(&lower);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(HostMatch::Exact(ip.to_string()));
    }
    if lower.contains(':') {
        return Err(format!("bad host {s:?}: a route's host has no port"));
    }
    dns_name(&lower)?;
    Ok(HostMatch::Exact(lower))
}
