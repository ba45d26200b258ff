//! Who resolves DNS names for an upstream in a fleet: the instance holding
//! that upstream's key under an etcd lease. Without it, N instances would each
//! look the names up and write, and fight over every change.
//!
//! Per instance, one lease (granted, kept alive every third of its TTL); per
//! upstream, one key `{prefix}.resolver/{upstream}`, created only if absent
//! and tied to the lease, whose value names the holder. The key lives beside
//! the table's prefix, not under it, on purpose: the table reads every key
//! under `{prefix}/` as part of itself (its watch and its full reads), so a
//! lease key there would wake every follower when a holder changes, and would
//! have to be told apart from the table's keys everywhere. When the holder stops (or loses etcd for a TTL), its lease ends,
//! etcd deletes the keys, and another instance creates them.
//!
//! Owns: the lease conversation (grant, keepalive, claim) over the gateway.
//! Does not touch the table, nor know what resolving is: it answers
//! [`ResolverLeases::holds`], which `cli` hands to `discovery`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::gateway::{EtcdError, Gateway};
use super::wire::{Compare, RangeRequest, RequestOp, TxnResponse};
use crate::config::ClusterConfig;

/// The shortest lease etcd grants in practice (its minimum TTL is about
/// 1.5 election timeouts); shorter ones are raised to it.
const MIN_TTL: Duration = Duration::from_secs(2);

/// Which upstreams this instance resolves now.
#[derive(Debug)]
pub struct ResolverLeases {
    held: BTreeMap<String, AtomicBool>,
}

impl ResolverLeases {
    /// Whether this instance holds `upstream`'s key under a live lease.
    pub fn holds(&self, upstream: &str) -> bool {
        self.held
            .get(upstream)
            .is_some_and(|h| h.load(Ordering::Relaxed))
    }

    fn set(&self, upstream: &str, held: bool) {
        if let Some(h) = self.held.get(upstream) {
            let was = h.swap(held, Ordering::Relaxed);
            if was != held {
                info!(%upstream, held, "cluster: resolver lease for this upstream {}", if held { "taken" } else { "lost" });
            }
        }
    }

    fn drop_all(&self) {
        for name in self.held.keys() {
            self.set(name, false);
        }
    }
}

/// Starts competing for the resolver lease of each of `upstreams`, on
/// `runtime` (the store's), for the life of the process. The lease lasts three
/// times the store's timeout (at least 2 s).
pub(super) fn spawn(
    runtime: &tokio::runtime::Handle,
    gateway: Gateway,
    cfg: &ClusterConfig,
    instance: &str,
    upstreams: Vec<String>,
) -> Arc<ResolverLeases> {
    let leases = Arc::new(ResolverLeases {
        held: upstreams
            .into_iter()
            .map(|u| (u, AtomicBool::new(false)))
            .collect(),
    });
    let keeper = Keeper {
        gateway,
        key_prefix: format!("{}.resolver/", cfg.prefix),
        instance: instance.to_string(),
        ttl: (cfg.timeout * 3).max(MIN_TTL),
        leases: Arc::clone(&leases),
    };
    runtime.spawn(keeper.run());
    leases
}

/// The task that keeps this instance's lease and claims keys with it.
struct Keeper {
    gateway: Gateway,
    key_prefix: String,
    instance: String,
    ttl: Duration,
    leases: Arc<ResolverLeases>,
}

/// Why the lease was lost or could not be had.
#[derive(Debug, thiserror::Error)]
enum LeaseError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("etcd says the lease has expired")]
    Expired,
}

impl Keeper {
    async fn run(self) {
        loop {
            let id = match self.grant().await {
                Ok(id) => id,
                Err(e) => {
                    warn!(error = %e, "cluster: no resolver lease (etcd); trying again");
                    self.leases.drop_all();
                    tokio::time::sleep(self.ttl / 3).await;
                    continue;
                }
            };
            if let Err(e) = self.hold(id).await {
                warn!(error = %e, "cluster: resolver lease lost; taking a new one");
            }
            // Stop writing before anyone else can have taken over.
            self.leases.drop_all();
        }
    }

    /// Keeps lease `id` alive and claims every unheld key with it, until the
    /// lease is lost.
    async fn hold(&self, id: i64) -> Result<(), LeaseError> {
        let token = format!("{} lease {id:x}", self.instance);
        loop {
            for name in self.leases.held.keys() {
                match self.claim(name, id, &token).await {
                    Ok(held) => self.leases.set(name, held),
                    Err(e) => {
                        self.leases.set(name, false);
                        warn!(upstream = %name, error = %e, "cluster: resolver lease key not claimed");
                    }
                }
            }
            tokio::time::sleep(self.ttl / 3).await;
            self.keep_alive(id).await?;
        }
    }

    async fn grant(&self) -> Result<i64, LeaseError> {
        let req = GrantRequest {
            ttl: self.ttl.as_secs().max(1).to_string(),
            id: "0".into(),
        };
        let resp: GrantResponse = self.gateway.call("/v3/lease/grant", &req).await?;
        if !resp.error.is_empty() || resp.id == 0 {
            return Err(LeaseError::Etcd(EtcdError::Status {
                code: 0,
                message: format!("lease not granted: {}", resp.error),
            }));
        }
        Ok(resp.id)
    }

    async fn keep_alive(&self, id: i64) -> Result<(), LeaseError> {
        let req = KeepAliveRequest { id: id.to_string() };
        let resp: KeepAliveAnswer = self.gateway.call("/v3/lease/keepalive", &req).await?;
        // An expired lease is answered with TTL 0, which the gateway leaves out.
        match resp.result {
            Some(r) if r.ttl > 0 => Ok(()),
            _ => Err(LeaseError::Expired),
        }
    }

    /// Creates `name`'s key with lease `id` if there is none; whether this
    /// instance holds it (now or already).
    async fn claim(&self, name: &str, id: i64, token: &str) -> Result<bool, EtcdError> {
        let key = format!("{}{name}", self.key_prefix);
        let req = ClaimTxn {
            compare: vec![Compare::absent(&key)],
            success: vec![LeasedPut {
                request_put: PutWithLease {
                    key: STANDARD.encode(&key),
                    value: STANDARD.encode(token),
                    lease: id.to_string(),
                },
            }],
            failure: vec![RequestOp::Range(RangeRequest {
                key: key.as_bytes().to_vec(),
                ..RangeRequest::default()
            })],
        };
        let resp: TxnResponse = self.gateway.call("/v3/kv/txn", &req).await?;
        if resp.succeeded {
            return Ok(true);
        }
        let holder = resp.responses.iter().find_map(|r| {
            r.response_range
                .as_ref()?
                .kvs
                .first()
                .map(|kv| kv.value.clone())
        });
        Ok(holder.is_some_and(|v| v == token.as_bytes()))
    }
}

#[derive(Serialize)]
struct GrantRequest {
    #[serde(rename = "TTL")]
    ttl: String,
    #[serde(rename = "ID")]
    id: String,
}

#[derive(Deserialize)]
struct GrantResponse {
    #[serde(
        rename = "ID",
        default,
        deserialize_with = "super::wire::i64s::deserialize"
    )]
    id: i64,
    #[serde(default)]
    error: String,
}

#[derive(Serialize)]
struct KeepAliveRequest {
    #[serde(rename = "ID")]
    id: String,
}

/// The keepalive stream's one message (the request body ends after one).
#[derive(Deserialize)]
struct KeepAliveAnswer {
    result: Option<KeepAliveResult>,
}

#[derive(Deserialize)]
struct KeepAliveResult {
    #[serde(
        rename = "TTL",
        default,
        deserialize_with = "super::wire::i64s::deserialize"
    )]
    ttl: i64,
}

/// A transaction whose put carries a lease (the table's `RequestOp` has none).
#[derive(Serialize)]
struct ClaimTxn {
    compare: Vec<Compare>,
    success: Vec<LeasedPut>,
    failure: Vec<RequestOp>,
}

#[derive(Serialize)]
struct LeasedPut {
    request_put: PutWithLease,
}

#[derive(Serialize)]
struct PutWithLease {
    key: String,
    value: String,
    lease: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_spells_lease_ids_and_ttls_as_strings() {
        let g: GrantResponse =
            serde_json::from_str(r#"{"header":{},"ID":"7587869581453330441","TTL":"6"}"#).unwrap();
        assert_eq!(g.id, 7587869581453330441);
        let k: KeepAliveAnswer =
            serde_json::from_str("{\"result\":{\"header\":{},\"ID\":\"5\",\"TTL\":\"4\"}}\n")
                .unwrap();
        assert_eq!(k.result.map(|r| r.ttl), Some(4));
        // Expired: TTL 0, left out.
        let k: KeepAliveAnswer =
            serde_json::from_str(r#"{"result":{"header":{},"ID":"5"}}"#).unwrap();
        assert_eq!(k.result.map(|r| r.ttl), Some(0));
    }
}
