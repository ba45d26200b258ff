//! Who may use the admin API: nginx-style `allow`/`deny` rules (first match wins,
//! anything unmatched is denied once there are rules), separate rules for
//! changes, a read-only switch, a bearer token for changes, and no changes from a
//! browser page of another site.

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, Method, StatusCode, header};

use crate::config::{AccessRule, AdminConfig};

/// The access policy of one admin listener.
#[derive(Debug, Clone)]
pub struct Access {
    rules: Vec<AccessRule>,
    write_rules: Option<Vec<AccessRule>>,
    read_only: bool,
    token: Option<String>,
}

/// An admin listener anyone on the network could reach and steer: not on
/// loopback, with neither `allow` rules nor a token. Refused before binding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "admin listener {listen} is not on loopback and has no allow rules and no token: \
     anyone who can reach it could change the table; add `allow` rules or a `token`, \
     or listen on 127.0.0.1"
)]
pub struct Exposed {
    pub listen: SocketAddr,
}

/// Why a request was refused, with the status that fits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// What one client may do, as `GET /api/v1/whoami` tells it: the dashboard
/// shows its buttons only where a change would be let through.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Capabilities {
    /// The client's address, as the rules see it.
    pub client: String,
    /// Changes from this client pass `read_only` and the write rules (the
    /// token, when one is set, is still needed on each change).
    pub write: bool,
    /// Why not, when `write` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub read_only: bool,
    /// Changes need `Authorization: Bearer TOKEN`.
    pub token_required: bool,
    /// This request carried the valid token.
    pub token_valid: bool,
}

/// Whether `method` changes anything.
pub fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn matches(rules: &[AccessRule], ip: IpAddr) -> bool {
    if rules.is_empty() {
        return true;
    }
    for rule in rules {
        match rule {
            AccessRule::Allow(net) if net.contains(&ip) => return true,
            AccessRule::Deny(net) if net.contains(&ip) => return false,
            _ => {}
        }
    }
    false
}

/// Compares without an early exit, so the time taken does not tell how much of a
/// guessed token was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Access {
    pub fn from_config(c: &AdminConfig) -> Access {
        Access {
            rules: c.rules.clone(),
            write_rules: c.write_rules.clone(),
            read_only: c.read_only,
            token: c.token.clone().or_else(|| {
                std::env::var("SWITCHYARD_ADMIN_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty())
            }),
        }
    }

    /// Refuses an admin listener that anyone on the network could steer.
    pub fn check_exposure(&self, listen: SocketAddr) -> Result<(), Exposed> {
        if !listen.ip().is_loopback() && self.rules.is_empty() && self.token.is_none() {
            return Err(Exposed { listen });
        }
        Ok(())
    }

    /// Whether the request carries the configured token.
    pub fn has_token(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| same_secret(given.trim().as_bytes(), token.as_bytes()))
    }

    /// What `client` may do, the request's own token taken into account. Reads
    /// are allowed (the request that asks got through the rules).
    pub fn capabilities(&self, client: IpAddr, headers: &HeaderMap) -> Capabilities {
        let client = client.to_canonical();
        let reason = if self.read_only {
            Some("the admin API is read-only (read_only = true)".to_string())
        } else if let Some(rules) = &self.write_rules
            && !matches(rules, client)
        {
            Some(format!("{client} may read but not change the table"))
        } else {
            None
        };
        Capabilities {
            client: client.to_string(),
            write: reason.is_none(),
            reason,
            read_only: self.read_only,
            token_required: self.token.is_some(),
            token_valid: self.has_token(headers),
        }
    }

    /// Decides a request from `client`.
    pub fn check(
        &self,
        client: IpAddr,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<(), Denied> {
        let client = client.to_canonical();
        if !matches(&self.rules, client) {
            return Err(Denied {
                status: StatusCode::FORBIDDEN,
                code: "Forbidden",
                message: format!("{client} may not use the admin API"),
            });
        }
        if !is_write(method) {
            return Ok(());
        }
        if self.read_only {
            return Err(Denied {
                status: StatusCode::METHOD_NOT_ALLOWED,
                code: "MethodDisabled",
                message: "the admin API is read-only (read_only = true)".into(),
            });
        }
        if let Some(rules) = &self.write_rules
            && !matches(rules, client)
        {
            return Err(Denied {
                status: StatusCode::FORBIDDEN,
                code: "Forbidden",
                message: format!("{client} may read but not change the table"),
            });
        }
        if self.token.is_some() && !self.has_token(headers) {
            let message = if headers.contains_key(header::AUTHORIZATION) {
                "the bearer token is not valid"
            } else {
                "changes need `Authorization: Bearer TOKEN`"
            };
            return Err(Denied {
                status: StatusCode::UNAUTHORIZED,
                code: "Unauthorized",
                message: message.into(),
            });
        }
        // A page of another site can make a browser send a form here; browsers
        // say so in these headers, scripts (curl, ctl) send neither.
        let cross_site = headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == "cross-site" || v == "same-site");
        let foreign_origin = match (headers.get(header::ORIGIN), headers.get(header::HOST)) {
            (Some(origin), Some(host)) => {
                let origin = origin.to_str().unwrap_or("");
                let host = host.to_str().unwrap_or("");
                origin.split_once("://").map(|(_, h)| h) != Some(host)
            }
            (Some(_), None) => true,
            _ => false,
        };
        if cross_site || foreign_origin {
            return Err(Denied {
                status: StatusCode::FORBIDDEN,
                code: "CrossSite",
                message: "changes from a page of another site are refused".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(rules: &[&str], write: Option<&[&str]>, token: Option<&str>) -> Access {
        let parse = |r: &&str| {
            let (verb, net) = r.split_once(' ').unwrap();
            let net = net.parse().unwrap();
            if verb == "allow" {
                AccessRule::Allow(net)
            } else {
                AccessRule::Deny(net)
            }
        };
        Access {
            rules: rules.iter().map(parse).collect(),
            write_rules: write.map(|w| w.iter().map(parse).collect()),
            read_only: false,
            token: token.map(String::from),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn first_matching_rule_wins_and_unmatched_is_denied() {
        let a = access(&["deny 10.0.0.5/32", "allow 10.0.0.0/8"], None, None);
        let h = HeaderMap::new();
        assert!(a.check(ip("10.1.2.3"), &Method::GET, &h).is_ok());
        assert_eq!(
            a.check(ip("10.0.0.5"), &Method::GET, &h)
                .unwrap_err()
                .status,
            StatusCode::FORBIDDEN
        );
        assert!(a.check(ip("192.168.1.1"), &Method::GET, &h).is_err());
        // IPv4-mapped IPv6 clients are judged as IPv4.
        assert!(a.check(ip("::ffff:10.1.2.3"), &Method::GET, &h).is_ok());
    }

    #[test]
    fn write_rules_and_token_guard_changes_only() {
        let a = access(
            &["allow 127.0.0.0/8"],
            Some(&["allow 127.0.0.1/32"]),
            Some("sixteen-chars-token"),
        );
        let mut h = HeaderMap::new();
        assert!(a.check(ip("127.0.0.2"), &Method::GET, &h).is_ok());
        assert_eq!(
            a.check(ip("127.0.0.2"), &Method::POST, &h)
                .unwrap_err()
                .status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            a.check(ip("127.0.0.1"), &Method::POST, &h)
                .unwrap_err()
                .status,
            StatusCode::UNAUTHORIZED
        );
        h.insert(header::AUTHORIZATION, "Bearer wrong".parse().unwrap());
        assert_eq!(
            a.check(ip("127.0.0.1"), &Method::PATCH, &h)
                .unwrap_err()
                .status,
            StatusCode::UNAUTHORIZED
        );
        h.insert(
            header::AUTHORIZATION,
            "Bearer sixteen-chars-token".parse().unwrap(),
        );
        assert!(a.check(ip("127.0.0.1"), &Method::DELETE, &h).is_ok());
    }

    #[test]
    fn browser_writes_from_another_site_are_refused() {
        let a = access(&[], None, None);
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:18080".parse().unwrap());
        h.insert(header::ORIGIN, "http://127.0.0.1:18080".parse().unwrap());
        assert!(a.check(ip("127.0.0.1"), &Method::POST, &h).is_ok());
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert_eq!(
            a.check(ip("127.0.0.1"), &Method::POST, &h)
                .unwrap_err()
                .code,
            "CrossSite"
        );
        let mut h = HeaderMap::new();
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(a.check(ip("127.0.0.1"), &Method::POST, &h).is_err());
        assert!(a.check(ip("127.0.0.1"), &Method::GET, &h).is_ok());
    }

    #[test]
    fn capabilities_follow_the_rules_that_decide_a_write() {
        let h = HeaderMap::new();
        let open = access(&[], None, None).capabilities(ip("127.0.0.1"), &h);
        assert!(open.write && !open.token_required && !open.token_valid);
        assert_eq!(open.reason, None);

        let mut ro = access(&[], None, None);
        ro.read_only = true;
        let c = ro.capabilities(ip("127.0.0.1"), &h);
        assert!(!c.write && c.read_only);
        assert!(c.reason.unwrap().contains("read_only"));

        let a = access(
            &["allow 127.0.0.0/8"],
            Some(&["allow 127.0.0.1/32"]),
            Some("sixteen-chars-token"),
        );
        let reader = a.capabilities(ip("127.0.0.2"), &h);
        assert!(!reader.write && reader.token_required);
        assert_eq!(reader.client, "127.0.0.2");
        // Judged as a write would be: IPv4-mapped clients as IPv4.
        let writer = a.capabilities(ip("::ffff:127.0.0.1"), &h);
        assert!(writer.write && !writer.token_valid);
        assert_eq!(writer.client, "127.0.0.1");
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer wrong".parse().unwrap());
        assert!(!a.capabilities(ip("127.0.0.1"), &h).token_valid);
        h.insert(
            header::AUTHORIZATION,
            "Bearer sixteen-chars-token".parse().unwrap(),
        );
        assert!(a.capabilities(ip("127.0.0.1"), &h).token_valid);
    }

    #[test]
    fn an_exposed_listener_without_rules_or_token_is_refused() {
        let open = access(&[], None, None);
        assert!(
            open.check_exposure("0.0.0.0:18080".parse().unwrap())
                .is_err()
        );
        assert!(
            open.check_exposure("127.0.0.1:18080".parse().unwrap())
                .is_ok()
        );
        let ruled = access(&["allow 10.0.0.0/8"], None, None);
        assert!(
            ruled
                .check_exposure("0.0.0.0:18080".parse().unwrap())
                .is_ok()
        );
    }
}
