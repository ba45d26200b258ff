//! Asking DNS: the `[resolver]` section made into a hickory resolver, and one
//! entry's names looked up into the addresses (with ports, weights and tiers)
//! the table should have. Owns no state and writes nothing: the answer goes
//! to `reconcile`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig as DnsConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

use super::entry::{Entry, Kind, Target};
use crate::config::{MAX_WEIGHT, MIN_WEIGHT, ResolverConfig};

/// The shortest time an answer is kept when its records' TTLs say less (a
/// TTL of 0 would otherwise make the resolver ask without pause); `valid`
/// overrides it, as the operator asked.
const MIN_TTL: Duration = Duration::from_secs(1);

/// Why a lookup gave no usable answer. The last good set then stays.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    #[error("{name}: {reason}")]
    Failed { name: String, reason: String },
    #[error("{0}: no records")]
    Empty(String),
    #[error("{0}: no answer within {1:?}")]
    Timeout(String, Duration),
}

/// Why the resolver could not be set up (the system's configuration could
/// not be read, say).
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the DNS resolver: {0}")]
pub struct SetupError(String);

/// What one lookup found, and how long it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub targets: Vec<Target>,
    pub ttl: Duration,
}

/// The resolver of the process, as `[resolver]` describes it.
pub struct Lookup {
    resolver: TokioResolver,
    cfg: ResolverConfig,
}

impl std::fmt::Debug for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookup").field("cfg", &self.cfg).finish()
    }
}

impl Lookup {
    pub fn new(cfg: &ResolverConfig) -> Result<Lookup, SetupError> {
        let mut builder = if cfg.servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| SetupError(e.to_string()))?
        } else {
            let servers = cfg.servers.iter().map(|a| name_server(*a)).collect();
            let dns = DnsConfig::from_parts(None, Vec::new(), servers);
            TokioResolver::builder_with_config(dns, TokioRuntimeProvider::default())
        };
        let opts = builder.options_mut();
        opts.timeout = cfg.timeout;
        opts.attempts = 1;
        opts.ip_strategy = match (cfg.ipv4, cfg.ipv6) {
            (true, false) => LookupIpStrategy::Ipv4Only,
            (false, true) => LookupIpStrategy::Ipv6Only,
            _ => LookupIpStrategy::Ipv4AndIpv6,
        };
        let resolver = builder.build().map_err(|e| SetupError(e.to_string()))?;
        Ok(Lookup {
            resolver,
            cfg: cfg.clone(),
        })
    }

    /// How long to wait before asking again after a failure.
    pub fn retry_after(&self) -> Duration {
        self.cfg
            .valid
            .unwrap_or(Duration::from_secs(5))
            .min(Duration::from_secs(5))
    }

    /// The entry's targets now. Bounded: one query's timeout each, a few
    /// queries for an SRV name (its records, then each target's addresses).
    pub async fn find(&self, entry: &Entry) -> Result<Answer, LookupError> {
        // Answers are kept as long as `valid` or the TTL says, here, not in
        // hickory's cache: asking again must ask the server.
        self.resolver.clear_cache();
        let within = self.cfg.timeout * 4;
        let found = tokio::time::timeout(within, async {
            match &entry.kind {
                Kind::Addr { host, port } => self.addresses(entry, host, *port).await,
                Kind::Srv { service } => self.service(entry, service).await,
            }
        })
        .await
        .unwrap_or_else(|_| Err(LookupError::Timeout(entry.key.clone(), within)))?;
        if found.targets.is_empty() {
            return Err(LookupError::Empty(entry.key.clone()));
        }
        Ok(Answer {
            ttl: self.cfg.valid.unwrap_or(found.ttl.max(MIN_TTL)),
            ..found
        })
    }

    /// A and AAAA records of `host`, each address with `port`.
    async fn addresses(&self, entry: &Entry, host: &str, port: u16) -> Result<Answer, LookupError> {
        let (ips, ttl) = self.ips(host).await?;
        let targets = ips
            .into_iter()
            .map(|ip| Target {
                addr: SocketAddr::new(ip, port),
                weight: entry.template.weight,
                backup: entry.template.backup,
            })
            .collect();
        Ok(Answer { targets, ttl })
    }

    async fn ips(&self, host: &str) -> Result<(Vec<IpAddr>, Duration), LookupError> {
        let found = self
            .resolver
            .lookup_ip(host)
            .await
            .map_err(|e| failed(host, &e))?;
        let ttl = found
            .valid_until()
            .saturating_duration_since(Instant::now());
        let mut ips: Vec<IpAddr> = found.iter().collect();
        ips.sort();
        ips.dedup();
        Ok((ips, ttl))
    }

    /// SRV records of `service`: each target's addresses with the record's
    /// port and weight; the lowest priority is primary, the others backup
    /// (as NGINX Plus reads them). A target that does not resolve fails the
    /// whole lookup, so that a flaky answer never shrinks the set.
    async fn service(&self, entry: &Entry, service: &str) -> Result<Answer, LookupError> {
        let found = self
            .resolver
            .srv_lookup(service)
            .await
            .map_err(|e| failed(service, &e))?;
        let mut ttl = found
            .valid_until()
            .saturating_duration_since(Instant::now());
        let records: Vec<_> = found
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some(srv.clone()),
                _ => None,
            })
            .collect();
        let Some(primary) = records.iter().map(|s| s.priority).min() else {
            return Err(LookupError::Empty(entry.key.clone()));
        };
        let mut by_addr: BTreeMap<SocketAddr, Target> = BTreeMap::new();
        for srv in &records {
            let target = srv.target.to_string();
            let (ips, t) = self.ips(&target).await?;
            ttl = ttl.min(t);
            for ip in ips {
                let addr = SocketAddr::new(ip, srv.port);
                // The same address twice: the more preferred record wins.
                let t = Target {
                    addr,
                    weight: u32::from(srv.weight).clamp(MIN_WEIGHT, MAX_WEIGHT),
                    backup: srv.priority != primary,
                };
                by_addr
                    .entry(addr)
                    .and_modify(|have| {
                        if have.backup && !t.backup {
                            *have = t.clone();
                        }
                    })
                    .or_insert(t);
            }
        }
        Ok(Answer {
            targets: by_addr.into_values().collect(),
            ttl,
        })
    }
}

fn failed(name: &str, e: &hickory_resolver::net::NetError) -> LookupError {
    if e.is_no_records_found() {
        return LookupError::Empty(name.to_string());
    }
    LookupError::Failed {
        name: name.to_string(),
        reason: e.to_string(),
    }
}

/// A name server at `addr`, over UDP (TCP when an answer is truncated).
fn name_server(addr: SocketAddr) -> NameServerConfig {
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
}
