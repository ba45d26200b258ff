//! The conversation with etcd: the guarded write, the full read (with the
//! seeding of an empty prefix), the watch that follows the store, and the ping
//! that measures how far behind this instance is.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    SortOrder, SortTarget, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tracing::{info, warn};

use super::ClusterStore;
use super::keys::{self, Kvs};
use crate::config::ClusterConfig;
use crate::upstream::Table;

/// etcd refuses a transaction of more than 128 operations by default
/// (`--max-txn-ops`); seeding writes in pieces below that.
const MAX_TXN_OPS: usize = 100;
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
const PING_EVERY: Duration = Duration::from_secs(1);

/// One client for the process, made on first use and kept: its channel
/// reconnects by itself when etcd comes back.
#[derive(Clone)]
pub(crate) struct Connection {
    endpoints: Vec<String>,
    options: ConnectOptions,
    client: Arc<tokio::sync::Mutex<Option<Client>>>,
}

impl Connection {
    pub(crate) fn new(cfg: &ClusterConfig) -> Result<Connection, String> {
        let mut options = ConnectOptions::new()
            .with_timeout(cfg.timeout)
            .with_connect_timeout(cfg.timeout)
            .with_keep_alive(Duration::from_secs(5), cfg.timeout);
        if let (Some(user), Some(password)) = (&cfg.username, &cfg.password) {
            // etcd's tokens expire (`--auth-token-ttl`, 5 minutes by default); the
            // client only fetches a new one when told to.
            options = options
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        let tls = cfg.tls_ca.is_some()
            || cfg.tls_cert.is_some()
            || cfg.endpoints.iter().any(|e| e.starts_with("https://"));
        if tls {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
            };
            let mut t = TlsOptions::new();
            if let Some(ca) = &cfg.tls_ca {
                t = t.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) {
                t = t.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(t);
        }
        let scheme = if tls { "https://" } else { "http://" };
        let endpoints = cfg
            .endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else {
                    format!("{scheme}{e}")
                }
            })
            .collect();
        Ok(Connection {
            endpoints,
            options,
            client: Arc::new(tokio::sync::Mutex::new(None)),
        })
    }

    async fn get(&self) -> Result<Client, String> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = Client::connect(&self.endpoints, Some(self.options.clone()))
            .await
            .map_err(|e| {
                format!(
                    "cannot connect to etcd {}: {}",
                    self.endpoints.join(","),
                    brief(&e)
                )
            })?;
        *slot = Some(c.clone());
        Ok(c)
    }
}

/// An etcd error in a line: the gRPC message and its root cause ("tcp connect
/// error: Connection refused (os error 111)"), not tonic's whole debug chain.
fn brief(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let mut root = None;
            let mut cause = std::error::Error::source(status);
            while let Some(c) = cause {
                root = Some(c);
                cause = c.source();
            }
            match root {
                Some(r) => format!("{}: {r}", status.message()),
                None if status.message().is_empty() => status.code().description().to_string(),
                None => status.message().to_string(),
            }
        }
        other => other.to_string(),
    }
}

/// The most recently changed key under a prefix (its `mod_revision` is the
/// newest revision there), without its value.
fn newest_key() -> GetOptions {
    GetOptions::new()
        .with_prefix()
        .with_keys_only()
        .with_sort(SortTarget::Mod, SortOrder::Descend)
        .with_limit(1)
}

fn range(prefix: &str) -> String {
    format!("{prefix}/")
}

fn revision_of(h: Option<&etcd_client::ResponseHeader>) -> u64 {
    h.map_or(0, |h| h.revision().max(0) as u64)
}

/// A local change, as keys to put and delete on top of revision `base`.
pub(crate) struct Write {
    pub prefix: String,
    pub base: u64,
    pub puts: Vec<(String, Vec<u8>)>,
    pub deletes: Vec<String>,
    pub meta: String,
}

pub(crate) enum WriteError {
    /// Something under the prefix changed after `base`: the newest revision there.
    Conflict(u64),
    Unavailable(String),
}

/// Writes `w` in one transaction that holds only if no key under the prefix
/// changed after `w.base`; the new revision.
pub(crate) async fn write(conn: Connection, w: Write) -> Result<u64, WriteError> {
    let mut client = conn.get().await.map_err(WriteError::Unavailable)?;
    let all = range(&w.prefix);
    let mut ops: Vec<TxnOp> = w
        .puts
        .into_iter()
        .map(|(k, v)| TxnOp::put(k, v, None))
        .collect();
    ops.extend(w.deletes.into_iter().map(|k| TxnOp::delete(k, None)));
    ops.push(TxnOp::put(keys::meta_key(&w.prefix), w.meta, None));
    let newest = newest_key();
    let base = i64::try_from(w.base).unwrap_or(i64::MAX - 1);
    let txn = Txn::new()
        .when([Compare::mod_revision(all.clone(), CompareOp::Less, base + 1).with_prefix()])
        .and_then(ops)
        .or_else([TxnOp::get(all, Some(newest))]);
    let resp = client
        .txn(txn)
        .await
        .map_err(|e| WriteError::Unavailable(format!("etcd write failed: {}", brief(&e))))?;
    let revision = revision_of(resp.header());
    if resp.succeeded() {
        return Ok(revision);
    }
    let latest = resp
        .op_responses()
        .into_iter()
        .find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision().max(0) as u64),
            _ => None,
        })
        .unwrap_or(revision);
    Err(WriteError::Conflict(latest))
}

/// Everything under the prefix and its revision. An empty prefix is seeded
/// first with `table` as it is (the first instance's configuration).
pub(crate) async fn read_all(
    store: &Arc<ClusterStore>,
    table: &Arc<Table>,
) -> Result<(Kvs, u64), String> {
    let prefix = store.prefix().to_string();
    let all = range(&prefix);
    let mut client = store.client.get().await?;
    loop {
        let resp = client
            .get(all.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| format!("etcd read failed: {}", brief(&e)))?;
        let revision = revision_of(resp.header());
        if !resp.kvs().is_empty() {
            let mut kvs = Kvs::new();
            for kv in resp.kvs() {
                kvs.insert(
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                );
            }
            store.set_up(Some(newest_in(resp.kvs()).unwrap_or(revision)));
            return Ok((kvs, revision));
        }
        let t = Arc::clone(table);
        let doc = tokio::task::spawn_blocking(move || t.saved_form())
            .await
            .map_err(|e| e.to_string())?;
        let want = keys::to_kvs(&prefix, &doc);
        let meta = keys::meta_key(&prefix);
        let mut ops: Vec<TxnOp> = want
            .iter()
            .map(|(k, v)| TxnOp::put(k.clone(), v.clone(), None))
            .collect();
        let rest = ops.split_off(ops.len().min(MAX_TXN_OPS));
        ops.push(TxnOp::put(
            meta.clone(),
            serde_json::json!({ "writer": store.instance, "seeded": true }).to_string(),
            None,
        ));
        let first = Txn::new()
            .when([Compare::version(meta, CompareOp::Equal, 0)])
            .and_then(ops);
        let resp = client
            .txn(first)
            .await
            .map_err(|e| format!("etcd write failed: {}", brief(&e)))?;
        if !resp.succeeded() {
            continue; // another instance seeded it first: read theirs
        }
        let mut revision = revision_of(resp.header());
        for chunk in rest.chunks(MAX_TXN_OPS) {
            let resp = client
                .txn(Txn::new().and_then(chunk.to_vec()))
                .await
                .map_err(|e| format!("etcd write failed while seeding: {}", brief(&e)))?;
            revision = revision_of(resp.header());
        }
        info!(prefix = %prefix, keys = want.len(), revision, "the cluster store was empty: seeded it from this instance's table");
        let mut kvs = want;
        kvs.insert(keys::meta_key(&prefix), Vec::new());
        store.set_up(Some(revision));
        return Ok((kvs, revision));
    }
}

fn newest_in(raw: &[etcd_client::KeyValue]) -> Option<u64> {
    raw.iter().map(|kv| kv.mod_revision().max(0) as u64).max()
}

async fn follow(store: &Arc<ClusterStore>, table: &Arc<Table>, kvs: &Kvs, revision: u64) {
    let (doc, problems) = keys::from_kvs(store.prefix(), kvs);
    for p in problems {
        warn!(problem = %p, "cluster store: entry left out");
    }
    let s = Arc::clone(store);
    let t = Arc::clone(table);
    let _ = tokio::task::spawn_blocking(move || s.follow(&t, &doc, revision)).await;
}

/// Follows the store for the life of the process: resumes the watch from the
/// last revision seen after any break, and re-reads everything when that
/// revision is gone (compacted) or was never known.
pub(crate) async fn watch_forever(
    store: Arc<ClusterStore>,
    table: Arc<Table>,
    mut view: Option<(Kvs, u64)>,
) {
    let mut pause = RETRY_MIN;
    loop {
        let Some((kvs, revision)) = view.as_mut() else {
            match read_all(&store, &table).await {
                Ok((kvs, revision)) => {
                    follow(&store, &table, &kvs, revision).await;
                    view = Some((kvs, revision));
                    pause = RETRY_MIN;
                }
                Err(e) => {
                    store.set_down(&e);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
            continue;
        };
        let mut client = match store.client.get().await {
            Ok(c) => c,
            Err(e) => {
                store.set_down(&e);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
                continue;
            }
        };
        let from = i64::try_from(*revision + 1).unwrap_or(i64::MAX);
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_progress_notify();
        let mut stream = match client.watch(range(store.prefix()), Some(options)).await {
            Ok(s) => s,
            Err(e) => {
                store.set_down(&format!("etcd watch failed: {}", brief(&e)));
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
                continue;
            }
        };
        let mut resync = false;
        loop {
            match stream.message().await {
                Ok(Some(resp)) => {
                    if resp.compact_revision() > 0 {
                        warn!(
                            from = *revision + 1,
                            compacted = resp.compact_revision(),
                            "cluster store: the revisions this instance missed were compacted; reading everything again"
                        );
                        resync = true;
                        break;
                    }
                    if resp.canceled() {
                        warn!(
                            reason = resp.cancel_reason(),
                            "cluster store: watch cancelled; reading everything again"
                        );
                        resync = true;
                        break;
                    }
                    pause = RETRY_MIN;
                    if resp.events().is_empty() {
                        continue;
                    }
                    let mut newest = *revision;
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let key = String::from_utf8_lossy(kv.key()).into_owned();
                        match ev.event_type() {
                            EventType::Put => {
                                kvs.insert(key, kv.value().to_vec());
                            }
                            EventType::Delete => {
                                kvs.remove(&key);
                            }
                        }
                        newest = newest.max(kv.mod_revision().max(0) as u64);
                    }
                    *revision = newest;
                    follow(&store, &table, kvs, newest).await;
                    // After following: connected, and in step if nothing newer came.
                    store.set_up(None);
                }
                Ok(None) => {
                    store.set_down("etcd closed the watch");
                    break;
                }
                Err(e) => {
                    store.set_down(&format!("etcd watch broke: {}", brief(&e)));
                    break;
                }
            }
        }
        if resync {
            view = None;
        } else {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
        }
    }
}

/// Every second: the newest revision under the prefix, so that the status can
/// tell how far behind the table is, and whether etcd answers at all.
pub(crate) async fn ping_forever(store: Arc<ClusterStore>) {
    let newest = newest_key();
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let answer = match store.client.get().await {
            Ok(mut c) => c
                .get(range(store.prefix()), Some(newest.clone()))
                .await
                .map_err(|e| format!("etcd does not answer: {}", brief(&e))),
            Err(e) => Err(e),
        };
        match answer {
            Ok(resp) => {
                let newest = resp
                    .kvs()
                    .first()
                    .map_or(0, |kv| kv.mod_revision().max(0) as u64);
                store.set_up(Some(newest));
            }
            Err(e) => store.set_down(&e),
        }
    }
}
