//! The conversation with etcd: the guarded write (and, when its answer is
//! lost, finding out whether it was applied), the full read (with the seeding
//! of an empty prefix), the watch that follows the store, and the ping that
//! measures how far behind this instance is and probes each endpoint.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::gateway::{EtcdError, Gateway};
use super::keys;
use super::wire::{
    Compare, EventType, KeyValue, RangeRequest, RangeResponse, RequestOp, ResponseHeader,
    TxnRequest, TxnResponse, WatchRequest,
};
use crate::upstream::Table;

/// etcd refuses a transaction of more than 128 operations by default
/// (`--max-txn-ops`); seeding writes in pieces below that.
const MAX_TXN_OPS: usize = 100;
const RETRY_MIN: Duration = Duration::from_millis(100);
/// A write's pauses between tries: short, since it holds the table's writer
/// and the client waits; an election on loopback takes a few hundred ms.
const RETRY_FIRST: Duration = Duration::from_millis(20);
const RETRY_MAX_WRITE: Duration = Duration::from_millis(320);
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
    /// Everything under the prefix, as a full read at `revision` found it.
    fn reset_view(&self, read: Snapshot);
    /// Changes the watch brought (a `None` value: deleted), up to `newest`.
    fn merge(&self, events: Vec<(String, Option<Vec<u8>>, u64)>, newest: u64);
    /// Brings the table in line with the view (blocking: the table's writer
    /// lock); how many changes that made.
    fn follow_view(&self, table: &Table) -> usize;
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

/// A local change, as keys to put and delete, each guarded by the revision
/// of the value the change was computed from.
pub(crate) struct Write {
    pub prefix: String,
    pub puts: Vec<(String, Vec<u8>)>,
    pub deletes: Vec<String>,
    /// Every key put or deleted, with the revision it was last written at as
    /// this instance knows it (`None`: absent). The write holds only if none
    /// of them changed since: a change to another key is no conflict.
    pub guards: Vec<(String, Option<u64>)>,
    pub meta: String,
    /// This instance's writer key (`keys::writer_key`), its revision as last
    /// written here, and the id this write leaves in it.
    pub writer_key: String,
    pub writer_rev: Option<u64>,
    pub id: String,
}

/// How a write ended.
#[derive(Debug)]
pub(crate) enum WriteEnd {
    /// Applied at this revision.
    Applied(u64),
    /// A guarded key changed first; the newest revision under the prefix.
    Conflict(u64),
    /// Not applied: etcd could not be reached, or refused before proposing,
    /// until the deadline; or the write was looked up and found not applied
    /// (and fenced off) and the retries ran out of time.
    NotApplied(EtcdError),
    /// Sent, and whether it was applied could not be found out in time.
    Unknown(EtcdError),
}

/// What one transaction did.
enum Written {
    Applied(u64),
    /// The newest revision under the prefix, and the writer key's revision.
    Conflict(u64, Option<u64>),
}

fn guard(key: &str, revision: Option<u64>) -> Compare {
    match revision {
        Some(r) => Compare::unchanged_since(key, i64::try_from(r).unwrap_or(i64::MAX)),
        None => Compare::absent(key),
    }
}

/// One try of `w`, in one transaction.
async fn write_once(conn: &Connection, w: &Write) -> Result<Written, EtcdError> {
    let mut success: Vec<RequestOp> = w
        .puts
        .iter()
        .map(|(k, v)| RequestOp::put(k.clone(), v.clone()))
        .collect();
    success.extend(w.deletes.iter().cloned().map(RequestOp::delete));
    success.push(RequestOp::put(keys::meta_key(&w.prefix), w.meta.clone()));
    success.push(RequestOp::put(w.writer_key.clone(), w.id.clone()));
    let mut compare: Vec<Compare> = w.guards.iter().map(|(k, r)| guard(k, *r)).collect();
    compare.push(guard(&w.writer_key, w.writer_rev));
    let req = TxnRequest {
        compare,
        success,
        failure: vec![
            RequestOp::Range(RangeRequest::newest_under(&range(&w.prefix))),
            RequestOp::Range(RangeRequest::key(&w.writer_key)),
        ],
    };
    let resp = txn(conn, &req).await?;
    let revision = ResponseHeader::revision(resp.header.as_ref());
    if resp.succeeded {
        return Ok(Written::Applied(revision));
    }
    let first = |i: usize| {
        resp.responses.get(i).and_then(|r| {
            r.response_range
                .as_ref()?
                .kvs
                .first()
                .map(KeyValue::mod_revision)
        })
    };
    Ok(Written::Conflict(first(0).unwrap_or(revision), first(1)))
}

/// Whether the write that left `id` in `writer_key` was applied: if the key
/// holds it, at which revision; if not, the key is overwritten in the same
/// transaction, so that the write, should it still be on its way, fails its
/// guard on the key and can never be applied after this answer.
async fn look_up(conn: &Connection, writer_key: &str, id: &str) -> Result<Written, EtcdError> {
    let req = TxnRequest {
        compare: vec![Compare::holds(writer_key, id.as_bytes())],
        success: vec![RequestOp::Range(RangeRequest::key(writer_key))],
        failure: vec![RequestOp::put(writer_key, format!("fenced {id}"))],
    };
    let resp = txn(conn, &req).await?;
    let revision = ResponseHeader::revision(resp.header.as_ref());
    if resp.succeeded {
        let at = resp
            .responses
            .first()
            .and_then(|r| {
                r.response_range
                    .as_ref()?
                    .kvs
                    .first()
                    .map(KeyValue::mod_revision)
            })
            .unwrap_or(revision);
        return Ok(Written::Applied(at));
    }
    // Not applied; the fence's revision is the writer key's revision now.
    Ok(Written::Conflict(0, Some(revision)))
}

/// Writes `w` until it is applied, refused by a guard, or `deadline` passes.
/// A failure that sent nothing is tried again (after a pause, on the next
/// endpoint); a failure after which the write may have been applied is looked
/// up first (`look_up`), so that a write is never applied twice and never
/// reported unapplied when it was. Returns how it ended and the writer key's
/// revision as now known. `count` counts every failed call by kind.
pub(crate) async fn write(
    conn: Connection,
    mut w: Write,
    deadline: tokio::time::Instant,
    count: impl Fn(&'static str) + Send,
) -> (WriteEnd, Option<u64>) {
    let mut pause = RETRY_FIRST;
    let mut attempt = 0u32;
    let base_id = w.id.clone();
    loop {
        let error = match write_once(&conn, &w).await {
            Ok(Written::Applied(r)) => return (WriteEnd::Applied(r), Some(r)),
            // Only this instance writes its writer key; one that moved (an
            // earlier write's outcome unknown, a restart under the same name)
            // is taken as it is and the write sent again.
            Ok(Written::Conflict(_, writer)) if writer != w.writer_rev && attempt < 3 => {
                attempt += 1;
                w.writer_rev = writer;
                continue;
            }
            Ok(Written::Conflict(newest, _)) => return (WriteEnd::Conflict(newest), w.writer_rev),
            Err(e) => e,
        };
        count(error.kind());
        if !error.not_sent() {
            count("outcome_looked_up");
            match settle(&conn, &w, deadline, &mut pause, &count).await {
                Settled::Applied(r) => return (WriteEnd::Applied(r), Some(r)),
                Settled::NotApplied(fence) => w.writer_rev = Some(fence),
                Settled::Unknown => return (WriteEnd::Unknown(error), None),
            }
        }
        if tokio::time::Instant::now() + pause >= deadline {
            return (WriteEnd::NotApplied(error), w.writer_rev);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RETRY_MAX_WRITE);
        attempt += 1;
        w.id = format!("{base_id}.{attempt}");
    }
}

enum Settled {
    Applied(u64),
    NotApplied(u64),
    Unknown,
}

/// Looks the write up until etcd answers or `deadline` passes.
async fn settle(
    conn: &Connection,
    w: &Write,
    deadline: tokio::time::Instant,
    pause: &mut Duration,
    count: &impl Fn(&'static str),
) -> Settled {
    loop {
        match look_up(conn, &w.writer_key, &w.id).await {
            Ok(Written::Applied(r)) => return Settled::Applied(r),
            Ok(Written::Conflict(_, fence)) => return Settled::NotApplied(fence.unwrap_or(0)),
            Err(e) => count(e.kind()),
        }
        if tokio::time::Instant::now() + *pause >= deadline {
            return Settled::Unknown;
        }
        tokio::time::sleep(*pause).await;
        *pause = (*pause * 2).min(RETRY_MAX_WRITE);
    }
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

/// Everything under the prefix, with the revision each key was last written
/// at, and the revision of the read.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub entries: Vec<(String, Vec<u8>, u64)>,
    pub revision: u64,
}

/// Everything under the prefix, with each key's revision. An empty prefix is
/// seeded first with `table` as it is (the first instance's configuration),
/// then read.
pub(crate) async fn read_all<S: Follower>(
    store: &Arc<S>,
    table: &Arc<Table>,
) -> Result<Snapshot, ReadError> {
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
            let entries = resp
                .kvs
                .into_iter()
                .map(|kv| {
                    let r = kv.mod_revision();
                    (String::from_utf8_lossy(&kv.key).into_owned(), kv.value, r)
                })
                .collect();
            store.set_up(Some(newest.unwrap_or(revision)));
            return Ok(Snapshot { entries, revision });
        }
        seed(store, table, &prefix).await?;
        // Read it back: each key with the revision it was written at.
    }
}

/// Seeds the empty prefix from `table`, unless another instance does first.
async fn seed<S: Follower>(
    store: &Arc<S>,
    table: &Arc<Table>,
    prefix: &str,
) -> Result<(), ReadError> {
    let conn = store.connection();
    let t = Arc::clone(table);
    let doc = tokio::task::spawn_blocking(move || t.saved_form())
        .await
        .map_err(ReadError::Snapshot)?;
    let want = keys::to_kvs(prefix, &doc);
    let meta = keys::meta_key(prefix);
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
        return Ok(()); // another instance seeded it first: read theirs
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
    Ok(())
}

fn newest_in(raw: &[KeyValue]) -> Option<u64> {
    raw.iter().map(KeyValue::mod_revision).max()
}

/// Brings the table in line with the store's view, on a blocking thread.
async fn follow<S: Follower>(store: &Arc<S>, table: &Arc<Table>) {
    let s = Arc::clone(store);
    let t = Arc::clone(table);
    let _ = tokio::task::spawn_blocking(move || s.follow_view(&t)).await;
}

/// Follows the store for the life of the process: resumes the watch from the
/// last revision seen after any break, and re-reads everything when that
/// revision is gone (compacted) or was never known.
pub(crate) async fn watch_forever<S: Follower>(
    store: Arc<S>,
    table: Arc<Table>,
    mut seen: Option<u64>,
) {
    let mut pause = RETRY_MIN;
    loop {
        let Some(revision) = seen.as_mut() else {
            match read_all(&store, &table).await {
                Ok(read) => {
                    let r = read.revision;
                    store.reset_view(read);
                    follow(&store, &table).await;
                    seen = Some(r);
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
        let resync = follow_stream(&store, &table, &mut stream, revision, &mut pause).await;
        if resync {
            seen = None;
        } else {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
        }
    }
}

/// Applies what an open watch brings until it breaks; whether everything must
/// be read again (the revisions missed were compacted, or etcd cancelled it).
async fn follow_stream<S: Follower>(
    store: &Arc<S>,
    table: &Arc<Table>,
    stream: &mut super::gateway::WatchStream,
    revision: &mut u64,
    pause: &mut Duration,
) -> bool {
    loop {
        match stream.message().await {
            Ok(Some(resp)) => {
                if resp.compact_revision > 0 {
                    warn!(
                        from = *revision + 1,
                        compacted = resp.compact_revision,
                        "cluster store: the revisions this instance missed were compacted; reading everything again"
                    );
                    return true;
                }
                if resp.canceled {
                    warn!(
                        reason = %resp.cancel_reason,
                        "cluster store: watch cancelled; reading everything again"
                    );
                    return true;
                }
                *pause = RETRY_MIN;
                if resp.events.is_empty() {
                    continue;
                }
                let mut newest = *revision;
                let mut events = Vec::with_capacity(resp.events.len());
                for ev in resp.events {
                    let Some(kv) = ev.kv else { continue };
                    let r = kv.mod_revision();
                    newest = newest.max(r);
                    let key = String::from_utf8_lossy(&kv.key).into_owned();
                    let value = match ev.kind {
                        EventType::Put => Some(kv.value),
                        EventType::Delete => None,
                    };
                    events.push((key, value, r));
                }
                *revision = newest;
                store.merge(events, newest);
                follow(store, table).await;
                // After following: connected, and in step if nothing newer came.
                store.set_up(None);
            }
            Ok(None) => {
                store.set_down("etcd closed the watch");
                return false;
            }
            Err(e) => {
                store.set_down(&format!("etcd watch broke: {e}"));
                return false;
            }
        }
    }
}

/// Every second: the newest revision under the prefix, so that the status can
/// tell how far behind the table is, and whether etcd answers at all; and each
/// endpoint's health and leadership.
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
        store.connection().probe().await;
    }
}
