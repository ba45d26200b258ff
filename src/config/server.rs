//! One server of an upstream and the rules its parameters follow. Every door
//! that takes a server — the file, the native API, the NGINX Plus API, the state
//! file and the fleet's store — checks it here, so that a rule changes in one
//! place. Pure: no resolving, no table.

use std::ops::RangeInclusive;
use std::time::Duration;

use super::addr::{AddrError, check_server_addr};

/// The lightest weight a server can have.
pub const MIN_WEIGHT: u32 = 1;
/// The heaviest weight a server can have: the balancers' arithmetic (smooth
/// round robin's period, the hash ring's points) is sized for it.
pub const MAX_WEIGHT: u32 = 1000;
/// Every weight a server may have.
pub const WEIGHTS: RangeInclusive<u32> = MIN_WEIGHT..=MAX_WEIGHT;

/// Why a server's parameters are refused. The text is the one users see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    #[error("bad address {addr:?}: {reason}")]
    BadAddress { addr: String, reason: AddrError },
    #[error("weight {0} out of range {MIN_WEIGHT}..={MAX_WEIGHT}")]
    BadWeight(u32),
}

/// Why an entry with `service` (SRV records) is refused. Its own type: only
/// the file has such entries, and the API's answers to [`ServerError`] stay as
/// they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error("service needs resolve = true (servers from SRV records are looked up while running)")]
    ServiceWithoutResolve,
    #[error("give addr or service, not both (service takes ports from the SRV records)")]
    ServiceWithAddr,
    #[error(
        "backup is taken from the SRV records' priorities (the lowest is primary, the others backup)"
    )]
    BackupWithService,
    #[error("bad service name {0:?} (expected a name such as \"_http._tcp.app.internal\")")]
    BadService(String),
}

/// A name to ask SRV records of: labels of letters, digits, `-` and `_`
/// (`_http._tcp.app.internal`), at most 253 characters.
pub fn check_service_name(name: &str) -> Result<(), ServiceError> {
    let bad = || ServiceError::BadService(name.to_string());
    let name_part = name.strip_suffix('.').unwrap_or(name);
    if name_part.is_empty() || name_part.len() > 253 {
        return Err(bad());
    }
    for label in name_part.split('.') {
        let ok_chars = label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if label.is_empty() || label.len() > 63 || !ok_chars {
            return Err(bad());
        }
    }
    Ok(())
}

/// `w`, when it is a weight a server may have.
pub fn check_weight(w: u32) -> Result<u32, ServerError> {
    if WEIGHTS.contains(&w) {
        Ok(w)
    } else {
        Err(ServerError::BadWeight(w))
    }
}

/// A weight read from a saved table, brought into range rather than refused: a
/// state file or the fleet's store must bring the table back even when a value
/// in it is off.
pub fn clamp_weight(w: u32) -> u32 {
    w.clamp(MIN_WEIGHT, MAX_WEIGHT)
}

/// One server of an upstream, as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// `host:port`, as written (a host name is resolved at start-up, not here).
    pub addr: String,
    /// [`MIN_WEIGHT`]..=[`MAX_WEIGHT`], default 1.
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
    /// `resolve = true`: `addr` is a name the resolver keeps re-resolving, one
    /// table server per address (`discovery`), instead of once at start-up.
    pub resolve: bool,
    /// `service = "_http._tcp.NAME"` (with `resolve`): servers from SRV
    /// records, which give their ports and weights. `addr` then holds the same
    /// name, so that messages and duplicate checks have one identity.
    pub service: Option<String>,
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
            resolve: false,
            service: None,
        }
    }

    /// Whether the entry stands for servers the resolver finds (`resolve =
    /// true`) rather than for one server.
    pub fn is_dynamic(&self) -> bool {
        self.resolve
    }

    /// Checks every rule a server follows on its own (the address, then the
    /// weight). Rules that need the upstream — backups with hashing, duplicate
    /// addresses — are the upstream's and the table's.
    /// (An entry with `service` has no address to check: see
    /// [`ServerConfig::check_service`].)
    pub fn validate(&self) -> Result<(), ServerError> {
        if self.service.is_none() {
            check_server_addr(&self.addr).map_err(|reason| ServerError::BadAddress {
                addr: self.addr.clone(),
                reason,
            })?;
        }
        check_weight(self.weight)?;
        Ok(())
    }

    /// The rules of an SRV entry: `resolve` on, no `backup` of its own.
    pub fn check_service(&self, service: &str) -> Result<(), ServiceError> {
        check_service_name(service)?;
        if !self.resolve {
            return Err(ServiceError::ServiceWithoutResolve);
        }
        if self.backup {
            return Err(ServiceError::BackupWithService);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_one_to_a_thousand() {
        assert_eq!(check_weight(1), Ok(1));
        assert_eq!(check_weight(1000), Ok(1000));
        assert_eq!(check_weight(0), Err(ServerError::BadWeight(0)));
        assert_eq!(
            check_weight(1001).unwrap_err().to_string(),
            "weight 1001 out of range 1..=1000"
        );
        assert_eq!(
            (clamp_weight(0), clamp_weight(7), clamp_weight(5000)),
            (1, 7, 1000)
        );
    }

    #[test]
    fn a_server_is_checked_address_first() {
        assert_eq!(ServerConfig::new("127.0.0.1:80").validate(), Ok(()));
        let mut s = ServerConfig::new("127.0.0.1");
        s.weight = 0;
        assert!(matches!(s.validate(), Err(ServerError::BadAddress { .. })));
        s.addr = "backend.internal:8080".into();
        assert_eq!(s.validate(), Err(ServerError::BadWeight(0)));
    }
}
