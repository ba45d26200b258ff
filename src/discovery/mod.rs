//! Servers from DNS: the entries written with `resolve = true` (A/AAAA names)
//! or `service = "_srv._proto.NAME"` (SRV), looked up again and again while
//! traffic flows, as NGINX Plus's `resolve` and HAProxy's `resolvers` do.
//!
//! DNS is one more writer of the live table, and it writes only through the
//! table's single writer (`Table::apply_batch_as(.., "dns")`), so its changes
//! are linearizable, saved, shared through the fleet and reported as events
//! like any other. Per entry: look up (`lookup`), work out the commands
//! (`reconcile`, pure), apply them, wait for the records' TTL or `valid`
//! (`run`). A failed or empty lookup keeps the last good set.
//!
//! In a fleet only one instance resolves each upstream: whoever
//! [`Leadership::is_resolver`] says (the holder of an etcd lease, wired in by
//! `cli`); the others follow the table through the store.
//!
//! Owns: the resolver, the per-name counters. Must not touch servers of
//! another origin, nor the admin state of servers that stay in the records,
//! nor anything but the table's public writer.

mod entry;
mod leadership;
mod lookup;
mod reconcile;
mod run;
mod stats;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

pub use entry::{Entry, Kind, Target, entries};
pub use leadership::{Alone, Leadership, ORIGIN};
pub use lookup::{LookupError, SetupError};
pub use stats::{NameReading, readings};

use crate::config::{Config, ResolverConfig};
use crate::upstream::Table;

/// The running resolvers, one task per entry; stopped when dropped.
pub struct Discovery {
    table: Arc<Table>,
    leadership: Arc<dyn Leadership>,
    /// The `[resolver]` the running tasks were started with.
    resolver: ResolverConfig,
    /// What the tasks share; made with the first entry (so a configuration
    /// without any reads no resolv.conf).
    shared: Option<Arc<run::Shared>>,
    /// Each entry's task, and where a new version of the entry goes.
    running: Vec<(Entry, JoinHandle<()>, watch::Sender<Entry>)>,
    first: Vec<oneshot::Receiver<()>>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("entries", &self.running.len())
            .finish()
    }
}

/// Starts a resolver for every DNS entry of `config`. Needs a Tokio runtime.
/// A resolver that cannot be set up (no resolv.conf, say) is logged, and
/// every lookup then counts as failed: the upstreams keep what they have, and
/// the process serves on.
pub fn spawn(config: &Config, table: Arc<Table>, leadership: Arc<dyn Leadership>) -> Discovery {
    let mut d = Discovery {
        table,
        leadership,
        resolver: config.resolver.clone(),
        shared: None,
        running: Vec::new(),
        first: Vec::new(),
    };
    for entry in entries(config) {
        let first = d.start(entry);
        d.first.push(first);
    }
    d
}

impl Discovery {
    /// Waits until every entry had its first round (found, failed, or not
    /// this instance's to do), at most `within`: start-up can then serve
    /// with the names already in the table.
    pub async fn first_round(&mut self, within: Duration) {
        let all = futures_util::future::join_all(self.first.drain(..));
        let _ = tokio::time::timeout(within, all).await;
    }

    /// Whether any entry is being resolved.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Follows a reloaded configuration: a new entry starts; one whose
    /// parameters changed is looked up again at once and its servers take
    /// them (keeping their ids, and what the resolver remembers); one that
    /// is gone stops, and the servers it had put in the table are removed
    /// (requests in flight on them finish); a changed `[resolver]` restarts
    /// every entry on the new one. What changed, one line per entry.
    pub async fn reconfigure(&mut self, config: &Config) -> Vec<String> {
        let want = entries(config);
        let all = config.resolver != self.resolver;
        if all {
            self.resolver = config.resolver.clone();
            self.shared = None;
        }
        let mut changed = Vec::new();
        let mut stopped = Vec::new();
        for (entry, task, update) in std::mem::take(&mut self.running) {
            match want.iter().find(|e| e.is(&entry)) {
                Some(now) if !all => {
                    if *now != entry {
                        changed.push(format!("re-resolve {} in {}", entry.key, entry.upstream));
                        update.send_replace(now.clone());
                    }
                    self.running.push((now.clone(), task, update));
                }
                found => {
                    task.abort();
                    stopped.push(task);
                    if found.is_none() {
                        changed.push(format!(
                            "stop resolving {} in {}",
                            entry.key, entry.upstream
                        ));
                    }
                }
            }
        }
        // A stopped resolver writes nothing more once its task has ended.
        for task in stopped {
            let _ = task.await;
        }
        for entry in want {
            if !self.running.iter().any(|(e, _, _)| e.is(&entry)) {
                changed.push(format!("resolve {} in {}", entry.key, entry.upstream));
                // Nobody waits for a reloaded entry's first round.
                drop(self.start(entry));
            }
        }
        self.remove_orphans(config).await;
        changed
    }

    /// Removes the servers that came from DNS entries `config` no longer
    /// has (left out of the file for a reload, or while the process was
    /// down and its table saved); requests in flight on them finish.
    pub async fn remove_orphans(&self, config: &Config) {
        let wanted = entries(config);
        let mut removals = Vec::new();
        for (name, up) in &self.table.load().upstreams {
            // In a fleet only the upstream's resolver: an instance whose file
            // differs must not take away what the resolver put there.
            if !self.leadership.is_resolver(name) {
                continue;
            }
            let keys: BTreeSet<&str> = wanted
                .iter()
                .filter(|e| e.upstream == *name)
                .map(|e| e.key.as_str())
                .collect();
            removals.extend(reconcile::orphans(name, &keys, &up.snapshot().servers));
        }
        if removals.is_empty() {
            return;
        }
        let n = removals.len();
        if self
            .table
            .apply_batch_as(removals.clone(), "reload")
            .await
            .is_ok()
        {
            info!(
                servers = n,
                "DNS: removed the servers of entries no longer configured"
            );
            return;
        }
        // One of them may have gone meanwhile (a resolver stopped a moment
        // ago was removing it): the rest one by one.
        for cmd in removals {
            if let Err(e) = self.table.apply_batch_as(vec![cmd], "reload").await {
                warn!(error = %e.error, "DNS: a server of an entry no longer configured could not be removed");
            }
        }
    }

    /// Starts `entry`'s resolver; the receiver hears when its first round
    /// is done.
    fn start(&mut self, entry: Entry) -> oneshot::Receiver<()> {
        info!(upstream = %entry.upstream, name = %entry.key, "DNS: resolving");
        let shared = match &self.shared {
            Some(s) => Arc::clone(s),
            None => {
                let lookup = match lookup::Lookup::new(&self.resolver) {
                    Ok(l) => Some(l),
                    Err(e) => {
                        error!(error = %e, "DNS: no resolver; servers from DNS names stay as they are");
                        None
                    }
                };
                let s = Arc::new(run::Shared {
                    table: Arc::clone(&self.table),
                    lookup,
                    leadership: Arc::clone(&self.leadership),
                });
                self.shared = Some(Arc::clone(&s));
                s
            }
        };
        let (tx, rx) = oneshot::channel();
        let (update, updates) = watch::channel(entry.clone());
        let task = tokio::spawn(run::run(entry.clone(), shared, tx, updates));
        self.running.push((entry, task, update));
        rx
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        for (_, t, _) in &self.running {
            t.abort();
        }
    }
}
