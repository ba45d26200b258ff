//! A whole configuration and its top-level sections: `[admin]`, `[cluster]`,
//! `[runtime]`, and what ties the file together (listeners, upstreams). Types
//! and whole-file helpers only; the sections with rules of their own have
//! their own files, and the TOML reader is `read`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::health_check::HealthCheckKind;
use super::listener::{ClientLimits, ListenerConfig, RouteConfig};
use super::log::LogConfig;
use super::resolver::ResolverConfig;
use super::server::ServerConfig;
use super::upstream::{
    Balance, KeepaliveConfig, RetryPolicy, Scheme, Timeouts, UpstreamConfig, UpstreamProtocol,
    UpstreamTls,
};

/// A whole, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub admin: Option<AdminConfig>,
    /// `[cluster]`: share the table with other instances through a store.
    pub cluster: Option<ClusterConfig>,
    pub runtime: RuntimeConfig,
    /// `[log]`: the log's format and level (the command line can override both).
    pub log: LogConfig,
    /// `[resolver]`: how names of servers with `resolve = true` are looked up.
    pub resolver: ResolverConfig,
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
                panic_threshold: None,
            },
        );
        Config {
            admin: None,
            cluster: None,
            runtime: RuntimeConfig::default(),
            log: LogConfig::default(),
            resolver: ResolverConfig::default(),
            listeners: vec![ListenerConfig {
                listen,
                routes: vec![RouteConfig {
                    host: None,
                    path_prefix: None,
                    upstream: name,
                    max_body_size: None,
                    request_buffering: true,
                }],
                health_uri: None,
                limits: ClientLimits::default(),
                tls: None,
                access_log: None,
                request_id: true,
                forwarded: false,
                plain_http1: true,
            }],
            upstreams,
        }
    }
}
