//! How an upstream is reached, apart from its servers: [`UpstreamSettings`].
//!
//! A leaf of `upstream`: the commands, the writer, the saved form and the
//! follower all name these settings, so they live apart from all of them. This
//! module reads configuration types and builds the TLS client; it knows nothing
//! of the table, its servers or its writer.

use crate::config::{
    Balance, HashKey, HealthCheckConfig, HealthCheckKind, KeepaliveConfig, RetryPolicy, Scheme,
    Timeouts, UpstreamProtocol, UpstreamTls,
};

/// How an upstream is reached, apart from its servers.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSettings {
    pub balance: Balance,
    pub hash_key: Option<HashKey>,
    pub keepalive: KeepaliveConfig,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    pub health_check: Option<HealthCheckConfig>,
    pub scheme: Scheme,
    pub protocol: UpstreamProtocol,
    /// Boxed: most upstreams have no TLS, and settings travel in every command.
    pub tls: Box<UpstreamTls>,
    /// Built from `tls` by [`UpstreamSettings::prepare_tls`] when the upstream is
    /// HTTPS or has an `https` check; shared by every generation of the upstream.
    pub tls_client: Option<crate::tls::TlsClient>,
    /// Panic mode's threshold, a percentage of the primaries (`None`: off). See
    /// `upstream::panic`.
    pub panic_threshold: Option<u8>,
}

/// The TLS files an upstream names could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct TlsSetupError {
    pub reason: String,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            balance: Balance::RoundRobin,
            hash_key: None,
            keepalive: KeepaliveConfig::default(),
            timeouts: Timeouts::default(),
            retry: RetryPolicy::default(),
            health_check: None,
            scheme: Scheme::Http,
            protocol: UpstreamProtocol::Http1,
            tls: Box::default(),
            tls_client: None,
            panic_threshold: None,
        }
    }
}

impl UpstreamSettings {
    pub fn from_config(up: &crate::config::UpstreamConfig) -> Self {
        UpstreamSettings {
            balance: up.balance,
            hash_key: up.hash_key.clone(),
            keepalive: up.keepalive,
            timeouts: up.timeouts,
            retry: up.retry,
            health_check: up.health_check.clone(),
            scheme: up.scheme,
            protocol: up.protocol,
            tls: Box::new(up.tls.clone()),
            tls_client: None,
            panic_threshold: up.panic_threshold,
        }
    }

    /// Whether this upstream needs TLS client settings.
    pub fn needs_tls(&self) -> bool {
        self.scheme == Scheme::Https
            || self
                .health_check
                .as_ref()
                .is_some_and(|c| c.kind == HealthCheckKind::Https)
    }

    /// Loads the TLS files once, when the upstream needs them and has no client
    /// configuration yet (blocking: file reads).
    pub fn prepare_tls(&mut self, upstream: &str) -> Result<(), TlsSetupError> {
        if self.tls_client.is_none() && self.needs_tls() {
            let client =
                crate::tls::TlsClient::build(upstream, self.scheme, self.protocol, &self.tls)
                    .map_err(|e| TlsSetupError {
                        reason: e.to_string(),
                    })?;
            self.tls_client = Some(client);
        }
        Ok(())
    }
}
