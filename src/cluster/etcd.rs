//! The conversation with etcd: the guarded write, the full read (with the
//! seeding of an empty prefix), the watch that follows the store, and the ping
//! that measures how far behind this instance is.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::gateway::{EtcdError, Gateway};
use super::keys::{self, Kvs};
use super::wire::{
    Compare, EventType, KeyValue, RangeRequest, RangeResponse, RequestOp, ResponseHeader,
    TxnRequest, TxnResponse, WatchRequest,
};
use crate::state::StateDoc;
use crate::upstream::Table;

/// etcd refuses a transaction of more than 128 operations by default
/// (`--max-txn-ops`); seeding writes in pieces below that.
const MAX_TXN_OPS: usize = 100;
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
const PING_EVERY: Duration = Duration::from_secs(1);

/// The process's client for etcd (see `gateway`).
pub(crate) type Connection = Gateway;

/// What the conversation needs of the store it serves: where its keys are,
/// the connection, who writes, and where the link's state and the store's
/// view go. `ClusterStore` is the one implementation; a trait so that this
/// file does not import the module that starts it.
pub(crate) trait Follower: Send + Sync + 'static {
    fn prefix(&self) -> &str;
    fn connection(&self) -> &Connection;
    /// Who writes, for the `meta` key.
    fn instance(&self) -> &str;
    /// etcd answered; `store_revision` is the newest revision it showed.
    fn set_up(&self, store_revision: Option<u64>);
    fn set_down(&self, error: &str);
    /// Applies the store's view at `revision` to the table (blocking: the
    /// table's writer lock); how many changes that made.
    fn follow(&self, table: &Table, doc: &StateDoc, revision: u64) -> usize;
}

fn range(prefix: &str) -> String {
    format!("{prefix}/")
}

async fn get(conn: &Gateway, req: &RangeRequest) -> Result<RangeResponse, EtcdError> {
    conn.call("/v3/kv/range", req).await
}

async fn txn(conn: &Gateway, req: &TxnRequest) -> Result<TxnResponse, EtcdError> {
    conn.call("/v3/kv/txn", req).await
}

/// A local change, as keys to put and delete on top of revision `base`.
pub(crate) struct Write {
    pub prefix: String,
    pub base: u64,
    pub puts: Vec<(String, Vec<u8>)>,
    pub deletes: Vec<String>,
    pub meta: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError {
    /// Something under the prefix changed after `base`: the newest revision there.
    #[error("something under the prefix changed since; newest revision {0}")]
    Conflict(u64),
    #[error("etcd write failed: {0}")]
    Unavailable(#[source] EtcdError),
    /// Nothing came back within the store's deadline (`ClusterStore::run`).
    #[error(transparent)]
    Unanswered(EtcdError),
}

/// Why the store's view could not be read, or an empty prefix seeded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("etcd read failed: {0}")]
    Read(#[source] EtcdError),
    #[error("etcd write failed: {0}")]
    Seed(#[source] EtcdError),
    /// The first piece of the seed was written; a later one was not.
    #[error("etcd write failed while seeding: {0}")]
    SeedRest(#[source] EtcdError),
    /// The task that took the table's saved form, to seed with, panicked.
    #[error("{0}")]
    Snapshot(#[source] tokio::task::JoinError),
    /// Nothing came back within the store's deadline (`ClusterStore::run`).
    #[error(transparent)]
    Unanswered(EtcdError),
}

/// Writes `w` in one transaction that holds only if no key under the prefix
/// changed after `w.base`; the new revision.
pub(crate) async fn write(conn: Connection, w: Write) -> Result<u64, WriteError> {
    let all = range(&w.prefix);
    let mut success: Vec<RequestOp> = w
        .puts
        .into_iter()
        .map(|(k, v)| RequestOp::put(k, v))
        .collect();
    success.extend(w.deletes.into_iter().map(RequestOp::delete));
    success.push(RequestOp::put(keys::meta_key(&w.prefix), w.meta));
    let base = i64::try_from(w.base).unwrap_or(i64::MAX - 1);
    let req = TxnRequest {
        compare: vec![Compare::none_changed_since(&all, base + 1)],
        success,
        failure: vec![RequestOp::Range(RangeRequest::newest_under(&all))],
    };
    let resp = txn(&conn, &req).await.map_err(WriteError::Unavailable)?;
    let revision = ResponseHeader::revision(resp.header.as_ref());
    if resp.succeeded {
        return Ok(revision);
    }
    let latest = resp
        .responses
        .iter()
        .find_map(|r| {
            r.response_range
                .as_ref()?
                .kvs
                .first()
                .map(KeyValue::mod_revision)
        })
        .unwrap_or(revision);
    Err(WriteError::Conflict(latest))
}

/// Everything under the prefix and its revision. An empty prefix is seeded
/// first with `table` as it is (the first instance's configuration).
pub(crate) async fn read_all<S: Follower>(
    store: &Arc<S>,
    table: &Arc<Table>,
) -> Result<(Kvs, u64), ReadError> {
    let prefix = store.prefix().to_string();
    let all = range(&prefix);
    let conn = store.connection();
    loop {
        let resp = get(conn, &RangeRequest::prefix(&all))
            .await
            .map_err(ReadError::Read)?;
        let revision = ResponseHeader::revision(resp.header.as_ref());
        if !resp.kvs.is_empty() {
            let newest = newest_in(&resp.kvs);
            let mut kvs = Kvs::new();
            for kv in resp.kvs {
                kvs.insert(String::from_utf8_lossy(&kv.key).into_owned(), kv.value);
            }
            store.set_up(Some(newest.unwrap_or(revision)));
            return Ok((kvs, revision));
        }
        let t = Arc::clone(table);
        let doc = tokio::task::spawn_blocking(move || t.saved_form())
            .await
            .map_err(ReadError::Snapshot)?;
        let want = keys::to_kvs(&prefix, &doc);
        let meta = keys::meta_key(&prefix);
        let mut ops: Vec<RequestOp> = want
            .iter()
            .map(|(k, v)| RequestOp::put(k.clone(), v.clone()))
            .collect();
        let rest = ops.split_off(ops.len().min(MAX_TXN_OPS));
        ops.push(RequestOp::put(
            meta.clone(),
            serde_json::json!({ "writer": store.instance(), "seeded": true }).to_string(),
        ));
        let first = TxnRequest {
            compare: vec![Compare::absent(&meta)],
            success: ops,
            failure: Vec::new(),
        };
        let resp = txn(conn, &first).await.map_err(ReadError::Seed)?;
        if !resp.succeeded {
            continue; // another instance seeded it first: read theirs
        }
        let mut revision = ResponseHeader::revision(resp.header.as_ref());
        for chunk in rest.chunks(MAX_TXN_OPS) {
            let more = TxnRequest {
                success: chunk.to_vec(),
                ..TxnRequest::default()
            };
            let resp = txn(conn, &more).await.map_err(ReadError::SeedRest)?;
            revision = ResponseHeader::revision(resp.header.as_ref());
        }
        info!(prefix = %prefix, keys = want.len(), revision, "the cluster store was empty: seeded it from this instance's table");
        let mut kvs = want;
        kvs.insert(keys::meta_key(&prefix), Vec::new());
        store.set_up(Some(revision));
        return Ok((kvs, revision));
    }
}

fn newest_in(raw: &[KeyValue]) -> Option<u64> {
    raw.iter().map(KeyValue::mod_revision).max()
}

async fn follow<S: Follower>(store: &Arc<S>, table: &Arc<Table>, kvs: &Kvs, revision: u64) {
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
pub(crate) async fn watch_forever<S: Follower>(
    store: Arc<S>,
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
                    store.set_down(&e.to_string());
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
            continue;
        };
        let from = i64::try_from(*revision + 1).unwrap_or(i64::MAX);
        let request = WatchRequest::prefix_from(&range(store.prefix()), from);
        let mut stream = match store.connection().watch(&request).await {
            Ok(s) => s,
            Err(e) => {
                store.set_down(&format!("etcd watch failed: {e}"));
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
                continue;
            }
        };
        let mut resync = false;
        loop {
            match stream.message().await {
                Ok(Some(resp)) => {
                    if resp.compact_revision > 0 {
                        warn!(
                            from = *revision + 1,
                            compacted = resp.compact_revision,
                            "cluster store: the revisions this instance missed were compacted; reading everything again"
                        );
                        resync = true;
                        break;
                    }
                    if resp.canceled {
                        warn!(
                            reason = %resp.cancel_reason,
                            "cluster store: watch cancelled; reading everything again"
                        );
                        resync = true;
                        break;
                    }
                    pause = RETRY_MIN;
                    if resp.events.is_empty() {
                        continue;
                    }
                    let mut newest = *revision;
                    for ev in resp.events {
                        let Some(kv) = ev.kv else { continue };
                        newest = newest.max(kv.mod_revision());
                        let key = String::from_utf8_lossy(&kv.key).into_owned();
                        match ev.kind {
                            EventType::Put => {
                                kvs.insert(key, kv.value);
                            }
                            EventType::Delete => {
                                kvs.remove(&key);
                            }
                        }
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
                    store.set_down(&format!("etcd watch broke: {e}"));
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
pub(crate) async fn ping_forever<S: Follower>(store: Arc<S>) {
    let newest = RangeRequest::newest_under(&range(store.prefix()));
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match get(store.connection(), &newest).await {
            Ok(resp) => {
                let newest = resp.kvs.first().map_or(0, KeyValue::mod_revision);
                store.set_up(Some(newest));
            }
            Err(e) => store.set_down(&format!("etcd does not answer: {e}")),
        }
    }
}
