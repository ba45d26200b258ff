//! A fleet of switchyards sharing one upstream table through etcd.
//!
//! [`ClusterStore`] is the table's [`StateStore`] when `[cluster]` is
//! configured. A change made through any door of any instance is written to etcd
//! in one transaction that holds only if none of the keys it changes was written
//! since the revision this instance's table holds of it (`view`): instances that
//! change different servers do not get in each other's way. Then it is published
//! locally in the same swap as any change (read-your-writes) and the API answers.
//! If another instance changed one of those keys first, the transaction fails,
//! the table waits until the watch has brought that write in, and runs the
//! command again on top of it (the writer's retry loop in
//! `Table::apply_batch_as`). Every instance follows the store through one watch,
//! in revision order, with `Table::follow`; a watch that fell behind a
//! compaction re-reads everything and applies the difference.
//!
//! A write whose answer is lost (the member died with it, or timed out) may have
//! been applied: before answering, the store finds out (`etcd::write`), through
//! the id every write leaves in this instance's writer key. Applied: the API
//! says so; not applied: the write is fenced off and sent again; still unknown
//! at the write's deadline: `StateError::OutcomeUnknown`, never "not applied".
//!
//! Admin state, weights and membership are shared; health is not: each instance
//! checks from where it stands and no key carries a verdict.
//!
//! While etcd cannot be reached the table stays as it was, writes answer 503,
//! and the local state file keeps a copy of the last table with its revision, so
//! a restart during the outage comes back with it.
//!
//! This module owns the key layout (`keys`), the per-key view (`view`) and the
//! etcd conversation (`etcd`); it changes the table only through
//! `Table::follow` and the store interface.

mod etcd;
mod gateway;
mod keys;
mod lease;
mod view;
mod wire;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::config::ClusterConfig;
pub use crate::state::ClusterStatus;
use crate::state::{FileStore, StateDoc, StateError, StateStore};
use crate::upstream::Table;
use etcd::{Follower, ReadError, Snapshot, WriteEnd};
use gateway::EtcdError;
use keys::Kvs;
pub use lease::ResolverLeases;
use view::{Revisions, View};

/// A write is tried, and looked up, for at most this many `[cluster]
/// timeout`s: long enough to ride out an election (a member's `timeout` spent
/// waiting for a dead leader, the lookup, the try again).
const WRITE_DEADLINE_TIMEOUTS: u32 = 3;

/// The table's side: what it holds, in canonical keys (the base a local
/// write's difference is taken from), and the revision of each key it holds
/// (what a write's guards name).
#[derive(Debug, Default)]
struct Mirror {
    kvs: Kvs,
    revs: Revisions,
    /// The view's version the table holds (see `View::version`).
    version: u64,
    /// Everything the watch delivered up to here is in the table.
    followed: u64,
    /// The newest revision in the table, own writes included.
    revision: u64,
}

/// The view and the table's side of it, under one lock.
#[derive(Debug, Default)]
struct Shared {
    view: View,
    mirror: Mirror,
    /// This instance's writer key's revision, as last written here.
    writer_rev: Option<u64>,
    /// This instance's writes started and ended so far (see `follow_view`):
    /// one is on its way to etcd while they differ.
    writes_started: u64,
    writes_ended: u64,
}

/// Failed calls and looked-up writes, by kind, for `/metrics`.
#[derive(Debug, Default)]
struct Counters(Mutex<BTreeMap<&'static str, u64>>);

impl Counters {
    fn add(&self, kind: &'static str) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(kind).or_default() += 1;
    }

    fn get(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[derive(Debug)]
struct Link {
    connected: bool,
    store_revision: u64,
    last_error: Option<String>,
    /// When the table was last seen to hold the store's newest revision.
    in_step_at: Instant,
}

/// The shared table in etcd, with the state file as its local cache.
pub struct ClusterStore {
    cfg: ClusterConfig,
    /// Who writes, for the `meta` key.
    instance: String,
    runtime: tokio::runtime::Handle,
    client: etcd::Connection,
    shared: Mutex<Shared>,
    /// Signalled whenever `Mirror::followed` moves (for `catch_up`).
    applied: Condvar,
    /// Signalled when a write of this instance's has ended.
    write_ended: Condvar,
    cache: Option<FileStore>,
    link: Mutex<Link>,
    errors: Arc<Counters>,
    /// Numbers this instance's writes (their ids in the writer key).
    writes: AtomicU64,
}

impl std::fmt::Debug for ClusterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterStore")
            .field("endpoints", &self.cfg.endpoints)
            .field("prefix", &self.cfg.prefix)
            .finish()
    }
}

/// Why the cluster store could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster: cannot start its runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cluster: TLS to etcd: {0}")]
    Tls(#[source] crate::tls::TlsError),
}

impl ClusterStore {
    /// Sets up the store (its own small runtime, so that the table's writer can
    /// wait on etcd from any thread without stalling the data plane). Nothing is
    /// read yet: see [`ClusterStore::start`].
    pub fn new(
        cfg: &ClusterConfig,
        cache: Option<FileStore>,
        instance: String,
    ) -> Result<Arc<ClusterStore>, ClusterError> {
        let runtime = spawn_runtime().map_err(ClusterError::Runtime)?;
        let client = etcd::Connection::new(cfg).map_err(ClusterError::Tls)?;
        Ok(Arc::new(ClusterStore {
            cfg: cfg.clone(),
            instance,
            runtime,
            client,
            shared: Mutex::new(Shared::default()),
            applied: Condvar::new(),
            write_ended: Condvar::new(),
            cache,
            errors: Arc::new(Counters::default()),
            writes: AtomicU64::new(0),
            link: Mutex::new(Link {
                connected: false,
                store_revision: 0,
                last_error: None,
                in_step_at: Instant::now(),
            }),
        }))
    }

    /// Brings `table` in line with the store before traffic starts — or, when
    /// the store cannot be reached, with the cached copy — and then follows the
    /// store for the life of the process. An empty prefix is seeded from
    /// `table` (this instance's configuration).
    pub fn start(self: &Arc<Self>, table: &Arc<Table>) {
        let first = {
            let store = Arc::clone(self);
            let table = Arc::clone(table);
            let deadline = self.cfg.timeout * 2;
            self.run(
                async move { etcd::read_all(&store, &table).await },
                deadline,
            )
            .unwrap_or_else(|e| Err(ReadError::Unanswered(e)))
        };
        let seen = match first {
            Ok(read) => {
                let revision = read.revision;
                self.reset_view(read);
                let n = self.follow_view(table);
                if n > 0 {
                    warn!(
                        changes = n,
                        prefix = %self.cfg.prefix,
                        "this instance's configuration differs from the cluster store; following the store (each difference is logged above as a table change)"
                    );
                }
                info!(prefix = %self.cfg.prefix, revision, "following the cluster store");
                Some(revision)
            }
            Err(e) => {
                let e = e.to_string();
                self.set_down(&e);
                self.follow_cache(table, &e);
                // The watch reads everything when etcd answers: the cache
                // has no revisions per key to guard writes with.
                None
            }
        };
        let store = Arc::clone(self);
        let t = Arc::clone(table);
        self.runtime.spawn(etcd::watch_forever(store, t, seen));
        let store = Arc::clone(self);
        self.runtime.spawn(etcd::ping_forever(store));
    }

    /// Start-up while etcd is away: the cached table, if there is one.
    fn follow_cache(&self, table: &Table, why: &str) {
        let cached = match &self.cache {
            Some(cache) => match cache.load() {
                Ok(doc) => doc,
                Err(e) => {
                    warn!(error = %e, "cluster store unreachable and the cached table cannot be read; serving the configuration");
                    return;
                }
            },
            None => None,
        };
        let Some(doc) = cached else {
            warn!(
                error = %why,
                "cluster store unreachable and no cached table; serving the configuration until the store answers"
            );
            return;
        };
        let revision = doc.revision.unwrap_or(0);
        let adopt = |saved: &StateDoc| {
            let mut s = self.lock_shared();
            s.mirror.kvs = keys::to_kvs(&self.cfg.prefix, saved);
            s.mirror.revision = revision;
            Ok(())
        };
        if let Err(e) = table.follow(&doc, "cluster", &adopt) {
            warn!(error = %e, "cluster store: the cached table could not be applied");
        }
        warn!(
            error = %why,
            cache = %self.describe_cache(),
            revision,
            "cluster store unreachable; serving the cached table until it answers"
        );
    }

    /// The table took the view at `version` (under its writer lock); refused
    /// when the view changed since (a local write, or the watch), for the
    /// caller to take it again.
    fn adopt(
        &self,
        saved: &StateDoc,
        revs: &Revisions,
        version: u64,
        watched: u64,
    ) -> Result<(), StateError> {
        let kvs = keys::to_kvs(&self.cfg.prefix, saved);
        let mut s = self.lock_shared();
        if s.view.version() != version {
            return Err(StateError::Conflict {
                revision: s.view.watched(),
            });
        }
        let changed = s.mirror.kvs != kvs;
        s.mirror.kvs = kvs;
        s.mirror.revs = revs.clone();
        s.mirror.version = version;
        s.view.held(version);
        s.mirror.followed = s.mirror.followed.max(watched);
        s.mirror.revision = s.mirror.revision.max(watched);
        let revision = s.mirror.revision;
        drop(s);
        self.applied.notify_all();
        if changed {
            self.save_cache(saved, revision);
        }
        Ok(())
    }

    /// The write that makes the store hold `want`: the keys that differ from
    /// what the table holds, each guarded by the revision the table holds of
    /// it; `None` when nothing differs.
    fn write_for(&self, want: &Kvs) -> Option<etcd::Write> {
        let s = self.lock_shared();
        let (puts, deletes) = keys::diff(&s.mirror.kvs, want);
        if puts.is_empty() && deletes.is_empty() {
            return None;
        }
        let guards = puts
            .iter()
            .map(|(k, _)| k)
            .chain(&deletes)
            .map(|k| (k.clone(), s.mirror.revs.get(k).copied()))
            .collect();
        let writer_rev = s.writer_rev;
        drop(s);
        let n = self.writes.fetch_add(1, Ordering::Relaxed);
        Some(etcd::Write {
            prefix: self.cfg.prefix.clone(),
            puts,
            deletes,
            guards,
            meta: serde_json::json!({
                "writer": self.instance,
                "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            })
            .to_string(),
            writer_key: keys::writer_key(&self.cfg.prefix, &self.instance),
            writer_rev,
            id: format!("{}-{n}", std::process::id()),
        })
    }

    /// An own write was applied at `revision`: the table will hold `want`
    /// (it publishes right after), and the view has the write.
    fn written(&self, want: Kvs, puts: &[(String, Vec<u8>)], deletes: &[String], revision: u64) {
        let mut s = self.lock_shared();
        s.mirror.kvs = want;
        for (k, _) in puts {
            s.mirror.revs.insert(k.clone(), revision);
        }
        for k in deletes {
            s.mirror.revs.remove(k);
        }
        // The table held the whole view: with the write it still does. So
        // it does when the watch brought this very write first.
        let ours = |k: &str| puts.iter().any(|(p, _)| p == k) || deletes.iter().any(|d| d == k);
        let whole = s.view.only_since(s.mirror.version, revision, &ours);
        s.view.own_write(puts, deletes, revision);
        if whole {
            s.mirror.version = s.view.version();
            let v = s.mirror.version;
            s.view.held(v);
        }
        s.mirror.revision = s.mirror.revision.max(revision);
    }

    /// The table is the view as it is: what the watch delivered is followed.
    fn in_step(&self) -> bool {
        let mut s = self.lock_shared();
        if s.mirror.version != s.view.version() {
            return false;
        }
        let v = s.mirror.version;
        s.view.held(v);
        s.mirror.followed = s.mirror.followed.max(s.view.watched());
        s.mirror.revision = s.mirror.revision.max(s.view.watched());
        drop(s);
        self.applied.notify_all();
        true
    }

    /// Waits until the writes of this instance's on their way now have ended
    /// (at most a write's deadline); not for writes that start after.
    fn wait_for_own_write(&self) {
        let within = self.cfg.timeout * (WRITE_DEADLINE_TIMEOUTS + 1);
        let s = self.lock_shared();
        let target = s.writes_started;
        let _s = self
            .write_ended
            .wait_timeout_while(s, within, |s| s.writes_ended < target)
            .unwrap_or_else(|p| p.into_inner());
    }

    fn save_cache(&self, doc: &StateDoc, revision: u64) {
        if let Some(cache) = &self.cache {
            let mut doc = doc.clone();
            doc.revision = Some(revision);
            if let Err(e) = cache.save(&doc) {
                warn!(error = %e, "cluster store: the local cached copy could not be written");
            }
        }
    }

    fn describe_cache(&self) -> String {
        self.cache
            .as_ref()
            .map_or_else(|| "none".into(), |c| c.path().display().to_string())
    }

    fn lock_shared(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_link(&self) -> MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `fut` on the store's runtime and waits for it from this (blocking)
    /// thread, at most `within` (then [`EtcdError::Timeout`]).
    fn run<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
        within: Duration,
    ) -> Result<T, EtcdError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let task = self.runtime.spawn(async move {
            let _ = tx.send(fut.await);
        });
        match rx.recv_timeout(within + Duration::from_millis(500)) {
            Ok(r) => Ok(r),
            Err(_) => {
                task.abort();
                Err(EtcdError::Timeout(
                    humantime::format_duration(within).to_string(),
                ))
            }
        }
    }

    /// Competes for the DNS resolver lease of each of `upstreams` (`lease`).
    pub fn resolver_leases(&self, upstreams: Vec<String>) -> Arc<ResolverLeases> {
        let client = self.client.clone();
        lease::spawn(&self.runtime, client, &self.cfg, &self.instance, upstreams)
    }

    /// The store as this instance sees it now.
    pub fn status(&self) -> ClusterStatus {
        let applied = self.lock_shared().mirror.revision;
        let link = self.lock_link();
        let store_revision = link.store_revision.max(applied);
        let lag = if link.connected && applied >= store_revision {
            0.0
        } else {
            link.in_step_at.elapsed().as_secs_f64()
        };
        ClusterStatus {
            store: "etcd",
            endpoints: self.cfg.endpoints.clone(),
            prefix: self.cfg.prefix.clone(),
            connected: link.connected,
            applied_revision: applied,
            store_revision,
            lag_seconds: lag,
            last_error: link.last_error.clone(),
            members: self.client.health(),
            errors: self.errors.get(),
        }
    }
}

impl Follower for ClusterStore {
    fn prefix(&self) -> &str {
        &self.cfg.prefix
    }

    fn connection(&self) -> &etcd::Connection {
        &self.client
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    fn set_up(&self, store_revision: Option<u64>) {
        let applied = self.lock_shared().mirror.revision;
        let mut link = self.lock_link();
        link.connected = true;
        link.last_error = None;
        if let Some(r) = store_revision {
            link.store_revision = r;
        }
        if applied >= link.store_revision {
            link.in_step_at = Instant::now();
        }
    }

    fn set_down(&self, error: &str) {
        let mut link = self.lock_link();
        if link.connected || link.last_error.is_none() {
            warn!(
                error = %error,
                "cluster store unreachable; serving the last table, writes answer 503"
            );
        }
        link.connected = false;
        link.last_error = Some(error.to_string());
    }

    fn reset_view(&self, read: Snapshot) {
        let prefix = &self.cfg.prefix;
        let entries = read
            .entries
            .into_iter()
            .filter(|(k, _, _)| keys::is_table_key(prefix, k))
            .collect();
        self.lock_shared().view.reset(entries, read.revision);
    }

    fn merge(&self, events: Vec<(String, Option<Vec<u8>>, u64)>, newest: u64) {
        let prefix = &self.cfg.prefix;
        let mut s = self.lock_shared();
        for (key, value, revision) in events {
            if keys::is_table_key(prefix, &key) {
                s.view.event(key, value, revision);
            }
        }
        s.view.watched_to(newest);
    }

    fn follow_view(&self, table: &Table) -> usize {
        // The watch often brings this instance's own write before etcd's
        // answer to it has come back: wait for that answer, which makes the
        // table hold the view again (`written`), rather than work out the
        // difference from the whole table only to find none.
        self.wait_for_own_write();
        // A local write between taking the view and adopting it makes the
        // table refuse it (it would undo the write): take it again.
        for _ in 0..8 {
            if self.in_step() {
                return 0;
            }
            let (kvs, revs, version, watched) = {
                let mut s = self.lock_shared();
                let (kvs, revs) = s.view.snapshot();
                (kvs, revs, s.view.version(), s.view.watched())
            };
            let (doc, problems) = keys::from_kvs(&self.cfg.prefix, &kvs);
            for p in problems {
                warn!(problem = %p, "cluster store: entry left out");
            }
            let stale = std::cell::Cell::new(false);
            let adopt = |saved: &StateDoc| {
                let r = self.adopt(saved, &revs, version, watched);
                stale.set(r.is_err());
                r
            };
            match table.follow(&doc, "cluster", &adopt) {
                Ok(_) if stale.get() => continue,
                Ok(n) => return n,
                Err(e) => {
                    warn!(error = %e, revision = watched, "cluster store: change could not be applied here");
                    return 0;
                }
            }
        }
        0
    }
}

impl StateStore for ClusterStore {
    /// The table starts from the configuration; [`ClusterStore::start`] then
    /// makes it the store's (or the cache's).
    fn load(&self) -> Result<Option<StateDoc>, StateError> {
        Ok(None)
    }

    fn save(&self, doc: &StateDoc) -> Result<(), StateError> {
        let want = keys::to_kvs(&self.cfg.prefix, doc);
        let Some(write) = self.write_for(&want) else {
            return Ok(());
        };
        let _writing = Writing::start(self);
        let (puts, deletes) = (write.puts.clone(), write.deletes.clone());
        let within = self.cfg.timeout * WRITE_DEADLINE_TIMEOUTS;
        let deadline = tokio::time::Instant::now() + within;
        let errors = Arc::clone(&self.errors);
        let count = move |kind: &'static str| errors.add(kind);
        let (end, writer_rev) = self
            .run(
                etcd::write(self.client.clone(), write, deadline, count),
                within + self.cfg.timeout,
            )
            .unwrap_or_else(|e| (WriteEnd::Unknown(e), None));
        self.lock_shared().writer_rev = writer_rev;
        let revision = match end {
            WriteEnd::Applied(revision) => revision,
            WriteEnd::Conflict(newest) => {
                self.errors.add("conflict");
                // What refused it is newer than what the watch delivered.
                let followed = self.lock_shared().mirror.followed;
                return Err(StateError::Conflict {
                    revision: newest.max(followed + 1),
                });
            }
            WriteEnd::NotApplied(e) => {
                let e = format!("etcd write failed: {e}");
                self.set_down(&e);
                return Err(StateError::Unavailable(e));
            }
            WriteEnd::Unknown(e) => {
                self.errors.add("outcome_unknown");
                let e = format!(
                    "etcd did not answer ({e}) and could not be asked within {} whether the write was applied: it may have been; the table shows it once the store is reachable again if it was",
                    humantime::format_duration(within)
                );
                self.set_down(&e);
                return Err(StateError::OutcomeUnknown(e));
            }
        };
        self.written(want, &puts, &deletes, revision);
        self.set_up(Some(revision));
        self.save_cache(doc, revision);
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "etcd {} prefix {} (cache: {})",
            self.cfg.endpoints.join(","),
            self.cfg.prefix,
            self.describe_cache()
        )
    }

    fn catch_up(&self, revision: u64, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut s = self.lock_shared();
        while s.mirror.followed < revision {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = match self.applied.wait_timeout(s, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }

    fn cluster_status(&self) -> Option<ClusterStatus> {
        Some(self.status())
    }
}

/// A write of this instance's on its way, from the transaction until its
/// outcome is in the mirror: `follow_view` waits for it to end.
struct Writing<'a>(&'a ClusterStore);

impl<'a> Writing<'a> {
    fn start(store: &'a ClusterStore) -> Writing<'a> {
        store.lock_shared().writes_started += 1;
        Writing(store)
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.lock_shared().writes_ended += 1;
        self.0.write_ended.notify_all();
    }
}

/// The store's own runtime, on threads of its own for the life of the process.
fn spawn_runtime() -> std::io::Result<tokio::runtime::Handle> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cluster")
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name("cluster".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}
