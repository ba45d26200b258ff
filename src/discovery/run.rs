//! One entry's resolver: look up, reconcile, write through the table's single
//! writer, wait for the TTL (or `valid`), again, for the life of the process;
//! and remove the servers it drained once their requests have finished.
//!
//! Only the instance that is the resolver for the upstream (see
//! [`super::Leadership`]) looks up and writes; the others follow the table.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::entry::Entry;
use super::leadership::{Leadership, ORIGIN};
use super::lookup::{Answer, Lookup};
use super::reconcile::{self, Memory};
use super::stats::{self, NameStats};
use crate::config::Balance;
use crate::upstream::Table;

/// How often an instance that is not the resolver looks again whether it
/// has become it (an atomic read; the lease itself is kept elsewhere).
const FOLLOWER_RECHECK: Duration = Duration::from_millis(250);
/// The longest a drained server waits for its requests before it is removed
/// anyway (a long-lived stream would otherwise keep it forever).
const DRAIN_LIMIT: Duration = Duration::from_secs(120);
/// How long before a change the table refused is tried again.
const REFUSED_RETRY: Duration = Duration::from_secs(1);

/// What every entry's resolver shares.
pub(super) struct Shared {
    pub table: Arc<Table>,
    /// `None`: the resolver could not be set up (logged once at start).
    pub lookup: Option<Lookup>,
    pub leadership: Arc<dyn Leadership>,
}

/// One entry's resolver and what it remembers.
struct Resolving {
    entry: Entry,
    shared: Arc<Shared>,
    stats: Arc<NameStats>,
    memory: Memory,
    /// Whether the last lookup failed (a streak is logged once, not per try).
    failing: bool,
    idle_tx: mpsc::UnboundedSender<u32>,
}

/// Runs `entry`'s resolver for the life of the process; `first` is sent once
/// its first round is done (found, failed, or not this instance's to do).
/// A new version of the entry (a reload changed its parameters) comes on
/// `updates`: it is looked up at once, and what this resolver remembers (the
/// servers it drained) carries over.
pub(super) async fn run(
    entry: Entry,
    shared: Arc<Shared>,
    first: oneshot::Sender<()>,
    mut updates: watch::Receiver<Entry>,
) {
    let (idle_tx, mut idle_rx) = mpsc::unbounded_channel();
    let mut r = Resolving {
        stats: stats::for_name(&entry.upstream, &entry.key),
        entry,
        shared,
        memory: Memory::default(),
        failing: false,
        idle_tx,
    };
    let mut first = Some(first);
    let mut next = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            Some(id) = idle_rx.recv() => {
                r.remove_idle(id).await;
                continue;
            }
            Ok(()) = updates.changed() => {
                r.entry = updates.borrow_and_update().clone();
                r.memory.retemplate = true;
            }
        }
        next = Instant::now() + r.round().await;
        if let Some(tx) = first.take() {
            let _ = tx.send(());
        }
    }
}

impl Resolving {
    /// One lookup and what follows from it; how long until the next.
    async fn round(&mut self) -> Duration {
        if !self.shared.leadership.is_resolver(&self.entry.upstream) {
            // What a writer remembers is its own; a later term starts afresh.
            self.memory = Memory::default();
            return FOLLOWER_RECHECK;
        }
        let Some(lookup) = &self.shared.lookup else {
            self.stats.resolutions.fetch_add(1, Ordering::Relaxed);
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            return Duration::from_secs(5);
        };
        self.stats.resolutions.fetch_add(1, Ordering::Relaxed);
        match lookup.find(&self.entry).await {
            Ok(answer) => {
                if std::mem::take(&mut self.failing) {
                    info!(upstream = %self.entry.upstream, name = %self.entry.key, addresses = answer.targets.len(), "DNS: the name resolves again");
                }
                self.stats
                    .addresses
                    .store(answer.targets.len() as u64, Ordering::Relaxed);
                match self.apply(&answer).await {
                    Ok(()) => answer.ttl,
                    Err(()) => REFUSED_RETRY,
                }
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                if std::mem::replace(&mut self.failing, true) {
                    debug!(upstream = %self.entry.upstream, error = %e, "DNS: lookup failed again; keeping the last good set");
                } else {
                    warn!(upstream = %self.entry.upstream, error = %e, "DNS: lookup failed; keeping the last good set");
                }
                lookup.retry_after()
            }
        }
    }

    /// Brings the table in line with `answer`, in one batch.
    async fn apply(&mut self, answer: &Answer) -> Result<(), ()> {
        let Some(up) = self.shared.table.upstream(&self.entry.upstream) else {
            warn!(upstream = %self.entry.upstream, "DNS: the upstream does not exist (deleted?); nothing to resolve into");
            return Err(());
        };
        let backups = !matches!(up.settings.balance, Balance::Hash | Balance::IpHash);
        let servers = up.snapshot().servers.clone();
        let step = reconcile::step(&self.entry, &servers, answer, &self.memory, backups);
        for addr in &step.skipped {
            debug!(upstream = %self.entry.upstream, %addr, "DNS: address already in the upstream from another door; left to it");
        }
        if !step.commands.is_empty() {
            let n = step.commands.len();
            let applied = self
                .shared
                .table
                .apply_batch_as(step.commands.clone(), ORIGIN)
                .await;
            if let Err(e) = applied {
                warn!(upstream = %self.entry.upstream, name = %self.entry.key, error = %e.error, "DNS: the table refused the change; trying again");
                return Err(());
            }
            debug!(upstream = %self.entry.upstream, name = %self.entry.key, changes = n, "DNS: table updated");
        }
        for id in &step.drain {
            if self.memory.draining.contains(id) {
                continue;
            }
            if let Some(s) = servers.iter().find(|s| s.id == *id) {
                let runtime = Arc::clone(&s.runtime);
                let tx = self.idle_tx.clone();
                let id = *id;
                tokio::spawn(async move {
                    runtime.wait_idle(DRAIN_LIMIT).await;
                    let _ = tx.send(id);
                });
            }
        }
        self.memory.applied(&step, answer);
        Ok(())
    }

    /// Removes a server this resolver drained, now that its requests are done.
    async fn remove_idle(&mut self, id: u32) {
        if !self.shared.leadership.is_resolver(&self.entry.upstream) {
            return;
        }
        let Some(up) = self.shared.table.upstream(&self.entry.upstream) else {
            return;
        };
        let servers = &up.snapshot().servers;
        if !servers.iter().any(|s| s.id == id) {
            self.memory.draining.remove(&id);
            return;
        }
        let Some(cmd) = reconcile::removal(&self.entry, servers, &self.memory, id) else {
            return;
        };
        match self.shared.table.apply_batch_as(vec![cmd], ORIGIN).await {
            Ok(_) => {
                self.memory.draining.remove(&id);
            }
            Err(e) => {
                warn!(upstream = %self.entry.upstream, id, error = %e.error, "DNS: a drained server could not be removed yet; trying again");
                let tx = self.idle_tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(REFUSED_RETRY).await;
                    let _ = tx.send(id);
                });
            }
        }
    }
}
