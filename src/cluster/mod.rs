//! A fleet of switchyards sharing one upstream table through etcd.
//!
//! [`ClusterStore`] is the table's [`StateStore`] when `[cluster]` is
//! configured. A change made through any door of any instance is written to etcd
//! in one transaction that holds only if nothing under the prefix changed since
//! the revision this instance's table reflects; then it is published locally in
//! the same swap as any change (read-your-writes) and the API answers. If another
//! instance wrote first, the transaction fails, the table waits until the watch
//! has brought that write in, and runs the command again on top of it (the
//! writer's retry loop in `Table::apply_batch_as`). Every instance follows the
//! store through one watch, in revision order, with `Table::follow`; a watch that
//! fell behind a compaction re-reads everything and applies the difference.
//!
//! Admin state, weights and membership are shared; health is not: each instance
//! checks from where it stands and no key carries a verdict.
//!
//! While etcd cannot be reached the table stays as it was, writes answer 503,
//! and the local state file keeps a copy of the last table with its revision, so
//! a restart during the outage comes back with it.
//!
//! This module owns the key layout (`keys`) and the etcd conversation (`etcd`);
//! it changes the table only through `Table::follow` and the store interface.

mod etcd;
mod gateway;
mod keys;
mod lease;
mod wire;

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::config::ClusterConfig;
pub use crate::state::ClusterStatus;
pub use lease::ResolverLeases;
use crate::state::{FileStore, StateDoc, StateError, StateStore};
use crate::upstream::Table;
use etcd::{Follower, ReadError, WriteError};
use gateway::EtcdError;
use keys::Kvs;

/// The table as the store had it at `revision`, in canonical keys: the base a
/// local write's difference is taken from.
#[derive(Debug, Default)]
struct Mirror {
    kvs: Kvs,
    revision: u64,
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
    mirror: Mutex<Mirror>,
    applied: Condvar,
    cache: Option<FileStore>,
    link: Mutex<Link>,
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
            mirror: Mutex::new(Mirror::default()),
            applied: Condvar::new(),
            cache,
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
        let view = match first {
            Ok(view) => {
                let (doc, _) = keys::from_kvs(&self.cfg.prefix, &view.0);
                let n = self.follow(table, &doc, view.1);
                if n > 0 {
                    warn!(
                        changes = n,
                        prefix = %self.cfg.prefix,
                        "this instance's configuration differs from the cluster store; following the store (each difference is logged above as a table change)"
                    );
                }
                info!(prefix = %self.cfg.prefix, revision = view.1, "following the cluster store");
                Some(view)
            }
            Err(e) => {
                let e = e.to_string();
                self.set_down(&e);
                self.follow_cache(table, &e)
            }
        };
        let store = Arc::clone(self);
        let t = Arc::clone(table);
        self.runtime.spawn(etcd::watch_forever(store, t, view));
        let store = Arc::clone(self);
        self.runtime.spawn(etcd::ping_forever(store));
    }

    /// Start-up while etcd is away: the cached table, if there is one.
    fn follow_cache(&self, table: &Table, why: &str) -> Option<(Kvs, u64)> {
        let cached = match &self.cache {
            Some(cache) => match cache.load() {
                Ok(doc) => doc,
                Err(e) => {
                    warn!(error = %e, "cluster store unreachable and the cached table cannot be read; serving the configuration");
                    return None;
                }
            },
            None => None,
        };
        let Some(doc) = cached else {
            warn!(
                error = %why,
                "cluster store unreachable and no cached table; serving the configuration until the store answers"
            );
            return None;
        };
        let revision = doc.revision.unwrap_or(0);
        self.follow(table, &doc, revision);
        warn!(
            error = %why,
            cache = %self.describe_cache(),
            revision,
            "cluster store unreachable; serving the cached table until it answers"
        );
        (revision > 0).then(|| (keys::to_kvs(&self.cfg.prefix, &doc), revision))
    }

    /// The table took the store's view at `revision` (under its writer lock).
    fn adopt(&self, saved: &StateDoc, revision: u64) -> Result<(), StateError> {
        let kvs = keys::to_kvs(&self.cfg.prefix, saved);
        let mut m = self.lock_mirror();
        if revision < m.revision {
            // A local write already published something newer.
            return Err(StateError::Conflict {
                revision: m.revision,
            });
        }
        let changed = m.kvs != kvs || m.revision != revision;
        m.kvs = kvs;
        m.revision = revision;
        drop(m);
        self.applied.notify_all();
        if changed {
            self.save_cache(saved, revision);
        }
        Ok(())
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

    fn lock_mirror(&self) -> MutexGuard<'_, Mirror> {
        self.mirror.lock().unwrap_or_else(|p| p.into_inner())
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

    /// The store as this instance sees it now.
    pub fn status(&self) -> ClusterStatus {
        let applied = self.lock_mirror().revision;
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
        let applied = self.lock_mirror().revision;
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

    fn follow(&self, table: &Table, doc: &StateDoc, revision: u64) -> usize {
        let adopt = |saved: &StateDoc| self.adopt(saved, revision);
        match table.follow(doc, "cluster", &adopt) {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, revision, "cluster store: change could not be applied here");
                0
            }
        }
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
        let (base, puts, deletes) = {
            let m = self.lock_mirror();
            let (puts, deletes) = keys::diff(&m.kvs, &want);
            (m.revision, puts, deletes)
        };
        if puts.is_empty() && deletes.is_empty() {
            return Ok(());
        }
        let write = etcd::Write {
            prefix: self.cfg.prefix.clone(),
            base,
            puts,
            deletes,
            meta: serde_json::json!({
                "writer": self.instance,
                "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            })
            .to_string(),
        };
        let client = self.client.clone();
        let outcome = self
            .run(etcd::write(client, write), self.cfg.timeout)
            .unwrap_or_else(|e| Err(WriteError::Unanswered(e)));
        let revision = match outcome {
            Ok(revision) => revision,
            Err(WriteError::Conflict(latest)) => {
                return Err(StateError::Conflict { revision: latest });
            }
            Err(e) => {
                let e = e.to_string();
                self.set_down(&e);
                return Err(StateError::Unavailable(e));
            }
        };
        {
            let mut m = self.lock_mirror();
            m.kvs = want;
            m.revision = m.revision.max(revision);
        }
        self.applied.notify_all();
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
        let mut m = self.lock_mirror();
        while m.revision < revision {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            m = match self.applied.wait_timeout(m, left) {
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
