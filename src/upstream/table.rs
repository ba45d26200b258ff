//! The table of upstreams and its single writer.
//!
//! The whole table is one immutable [`TableSnapshot`] behind one `ArcSwap`, so a
//! batch that touches several upstreams is seen by readers all at once or not at
//! all. Unchanged upstreams are shared between consecutive snapshots; changed ones
//! are rebuilt around the same server runtimes.
//!
//! A batch goes through the writer in named steps: plan (`plan.rs`, pure), save
//! (to the state store, durable before visible), publish (one swap), run the
//! effects and send the events. Saving can fsync, wait for etcd and wait to catch
//! up with it, so the public writer is async and runs on a blocking thread
//! ([`Table::apply`]); the `_blocking` variants are for code that already is on
//! one. This module does not work out what a command means (that is the plan's)
//! nor how the table is saved (`persist.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::broadcast;
use tracing::info;

use super::command::{BatchError, Command, TableError};
use super::events::Event;
use super::persist::to_doc;
use super::plan::{self, Effects, Ledger, Plan};
use super::published::{TableSnapshot, Upstream};
use super::server::{Health, Server};
use super::start::{self, OpenError, Saved};
use crate::config::Config;
use crate::logging::or_dash;
use crate::state::{StateDoc, StateError, StateStore};

/// What only the writer changes, behind its lock.
struct Writer {
    ledger: Ledger,
    /// Route slots by upstream name (a name keeps its slot for the process's life).
    slots: BTreeMap<String, usize>,
}

impl Writer {
    fn reserve_slots<'a>(&mut self, names: impl IntoIterator<Item = &'a String>) {
        for name in names {
            let n = self.slots.len();
            self.slots.entry(name.clone()).or_insert(n);
        }
    }
}

/// Every upstream, and the one place that changes them.
pub struct Table {
    current: ArcSwap<TableSnapshot>,
    writer: Mutex<Writer>,
    store: Option<Arc<dyn StateStore>>,
    events: broadcast::Sender<Event>,
    event_seq: AtomicU64,
    /// Changes published by `apply*` (one per event; health reports excluded),
    /// for the `switchyard_admin_changes_total` metric.
    admin_changes: AtomicU64,
    /// Batches waiting for the writer, to be saved together (group commit).
    queue: Mutex<Vec<Arc<Waiting>>>,
}

/// A batch waiting for the writer. With a state store, every batch that
/// arrives while another is being saved waits here; the next one to get the
/// writer takes all that wait, plans them one after the other, saves them in
/// one go (one etcd transaction, one fsync) and publishes them in one swap,
/// and gives each its own answer. A batch refused by the plan is answered
/// alone and does not hold the others back.
struct Waiting {
    commands: Vec<Command>,
    origin: String,
    state: Mutex<Turn>,
    done: Condvar,
}

enum Turn {
    Queued,
    /// In a group another caller is writing.
    Taken,
    Done(Result<Vec<Arc<Server>>, BatchError>),
}

impl Waiting {
    fn lock(&self) -> MutexGuard<'_, Turn> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn finish(&self, result: Result<Vec<Arc<Server>>, BatchError>) {
        *self.lock() = Turn::Done(result);
        self.done.notify_all();
    }

    /// Waits until the caller writing this batch's group answers it.
    fn wait(&self) -> Result<Vec<Arc<Server>>, BatchError> {
        let mut turn = self.lock();
        loop {
            if let Turn::Done(_) = &*turn {
                let Turn::Done(r) = std::mem::replace(&mut *turn, Turn::Taken) else {
                    unreachable!("matched Done above")
                };
                return r;
            }
            turn = match self.done.wait(turn) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
    }
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("upstreams", &self.current.load().upstreams.keys())
            .field("store", &self.store)
            .finish()
    }
}

/// How long a batch is run again after the shared store refused it because
/// another instance changed what it changes first (each time once the table
/// holds that change): a client sees `Conflict` only if the batch keeps losing
/// for this long.
const CONFLICT_DEADLINE: Duration = Duration::from_secs(10);

/// Why a batch under the writer lock did not publish.
enum Refused {
    Batch(BatchError),
    /// The shared store holds a newer table (its revision).
    Conflict(u64),
}

impl Table {
    /// Builds the table from a validated configuration, resolving host names; no
    /// state store.
    pub fn from_config(config: &Config) -> Result<Table, TableError> {
        Table::open(config, None).map_err(|e| match e {
            OpenError::Table(t) => t,
            other => TableError::Store(other.to_string()),
        })
    }

    /// Builds the table from `config` and, when `store` holds a saved state, from
    /// that: the saved servers of an upstream win over the config's list (as NGINX
    /// Plus's `state` file), upstreams created through the API come back, and
    /// config upstreams deleted through the API stay deleted. Blocking (it reads
    /// the store, resolves addresses and loads TLS files): for start-up.
    pub fn open(config: &Config, store: Option<Arc<dyn StateStore>>) -> Result<Table, OpenError> {
        let saved = match &store {
            Some(s) => s.load()?.map(|doc| Saved {
                doc,
                path: s.describe(),
            }),
            None => None,
        };
        let start = start::assemble(config, saved.as_ref())?;
        let (events, _) = broadcast::channel(1024);
        Ok(Table {
            current: ArcSwap::from_pointee(start.snapshot),
            writer: Mutex::new(Writer {
                ledger: start.ledger,
                slots: start.slots,
            }),
            store,
            events,
            event_seq: AtomicU64::new(0),
            admin_changes: AtomicU64::new(0),
            queue: Mutex::new(Vec::new()),
        })
    }

    /// The current table. Cheap and lock-free.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<TableSnapshot>> {
        self.current.load()
    }

    /// The current version of one upstream.
    pub fn upstream(&self, name: &str) -> Option<Arc<Upstream>> {
        self.current.load().upstreams.get(name).cloned()
    }

    /// The route slot of an upstream name: stable for the life of the process,
    /// whether or not the upstream exists now.
    pub fn slot(&self, name: &str) -> usize {
        let mut w = self.lock_writer();
        let n = w.slots.len();
        let slot = *w.slots.entry(name.to_string()).or_insert(n);
        drop(w);
        slot
    }

    /// Follows every change made from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Where changes are saved, if anywhere.
    pub fn store(&self) -> Option<&Arc<dyn StateStore>> {
        self.store.as_ref()
    }

    /// [`Table::apply_as`] on behalf of the process itself.
    pub async fn apply(
        self: &Arc<Self>,
        commands: Vec<Command>,
    ) -> Result<Vec<Arc<Server>>, TableError> {
        self.apply_as(commands, "internal").await
    }

    /// Applies `commands` all together or not at all: the result is saved to the
    /// state store, then published in one swap, and only then does this return. A
    /// request that starts afterwards, on any thread, routes by the change.
    /// Returns the server each server command touched, as it is after the change
    /// (a removed server as it was).
    ///
    /// The writer runs on a blocking thread of the current Tokio runtime (saving
    /// can fsync, wait for etcd and wait to catch up with it), so the task that
    /// awaits this keeps its worker free for other tasks. Dropping the future
    /// does not cancel the change: it is applied or refused all the same.
    ///
    /// # Panics
    /// Outside a Tokio runtime; and, resumed here, if the writer panicked.
    pub async fn apply_as(
        self: &Arc<Self>,
        commands: Vec<Command>,
        origin: &str,
    ) -> Result<Vec<Arc<Server>>, TableError> {
        self.apply_batch_as(commands, origin)
            .await
            .map_err(|e| e.error)
    }

    /// [`Table::apply_as`], telling which command of a refused batch failed.
    pub async fn apply_batch_as(
        self: &Arc<Self>,
        commands: Vec<Command>,
        origin: &str,
    ) -> Result<Vec<Arc<Server>>, BatchError> {
        let table = Arc::clone(self);
        let origin = origin.to_string();
        let writer =
            tokio::task::spawn_blocking(move || table.apply_batch_as_blocking(&commands, &origin));
        match writer.await {
            Ok(result) => result,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // The runtime shut down before the writer ran: nothing changed.
                Err(e) => Err(BatchError {
                    index: None,
                    error: TableError::Store(format!("the table's writer did not run: {e}")),
                }),
            },
        }
    }

    /// [`Table::apply_as_blocking`] on behalf of the process itself.
    ///
    /// Blocks the calling thread until the change is saved and published: call
    /// it outside any async runtime or on a blocking thread, never from async
    /// code (use [`Table::apply`] there).
    pub fn apply_blocking(&self, commands: &[Command]) -> Result<Vec<Arc<Server>>, TableError> {
        self.apply_as_blocking(commands, "internal")
    }

    /// [`Table::apply_as`] on the calling thread, which it blocks (fsync, etcd,
    /// up to `CONFLICT_DEADLINE` of waits to catch up with a shared store): for
    /// code outside any async runtime or on a blocking thread, never for async
    /// code.
    pub fn apply_as_blocking(
        &self,
        commands: &[Command],
        origin: &str,
    ) -> Result<Vec<Arc<Server>>, TableError> {
        self.apply_batch_as_blocking(commands, origin)
            .map_err(|e| e.error)
    }

    /// [`Table::apply_batch_as`] on the calling thread, which it blocks: see
    /// [`Table::apply_as_blocking`].
    pub fn apply_batch_as_blocking(
        &self,
        commands: &[Command],
        origin: &str,
    ) -> Result<Vec<Arc<Server>>, BatchError> {
        // Without a store there is no round trip to share.
        if self.store.is_none() {
            return self.apply_alone(commands, origin);
        }
        let me = Arc::new(Waiting {
            commands: commands.to_vec(),
            origin: origin.to_string(),
            state: Mutex::new(Turn::Queued),
            done: Condvar::new(),
        });
        self.lock_queue().push(Arc::clone(&me));
        let writer = self.lock_writer();
        if !matches!(&*me.lock(), Turn::Queued) {
            // Another caller took this batch into its group.
            drop(writer);
            return me.wait();
        }
        let mut group = std::mem::take(&mut *self.lock_queue());
        if group.len() == 1 {
            drop(writer);
            return self.apply_alone(commands, origin);
        }
        // Under the writer lock: a caller that gets it next sees its batch
        // taken and waits for the answer.
        for w in &group {
            *w.lock() = Turn::Taken;
        }
        match self.write_group(writer, &group) {
            Some(results) => {
                for (w, r) in group.iter().zip(results) {
                    w.finish(r);
                }
            }
            // Refused as a whole (a conflict, the store): each on its own,
            // with the retries a single batch gets.
            None => {
                for w in group.drain(..) {
                    w.finish(self.apply_alone(&w.commands, &w.origin));
                }
            }
        }
        me.wait()
    }

    fn lock_queue(&self) -> MutexGuard<'_, Vec<Arc<Waiting>>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Plans the batches of `group` one on top of the other, saves the result
    /// once and publishes it in one swap: each batch's answer, or `None` when
    /// another instance changed what the group changes first (nothing
    /// changed; the caller runs each alone, with a single batch's retries).
    fn write_group(
        &self,
        mut writer: MutexGuard<'_, Writer>,
        group: &[Arc<Waiting>],
    ) -> Option<Vec<Result<Vec<Arc<Server>>, BatchError>>> {
        let current = self.current.load_full();
        let now = crate::clock::now_ms();
        let mut base = Arc::clone(&current);
        let mut ledger = writer.ledger.clone();
        let (mut results, mut events, mut effects) = (Vec::new(), Vec::new(), Vec::new());
        for w in group {
            let plan = match plan::plan(&base, &ledger, &w.commands, &w.origin, None, now) {
                Ok(p) => p,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            if !plan.changes_nothing() {
                let generation = base.generation + 1;
                let upstreams = plan::upstreams_after(&base, plan.changed, generation);
                writer.reserve_slots(upstreams.keys());
                base = Arc::new(TableSnapshot::new(generation, upstreams, &writer.slots));
                ledger = plan.ledger;
                events.extend(plan.events);
                effects.push(plan.effects);
            }
            results.push(Ok(plan.touched));
        }
        if base.generation != current.generation {
            let save = |doc: &StateDoc| match &self.store {
                Some(store) => store.save(doc),
                None => Ok(()),
            };
            match save_step(&save, &base.upstreams, &ledger) {
                Ok(()) => {}
                Err(Refused::Conflict(_)) => return None,
                // The store failed the whole group: every batch in it gets
                // the same answer (not applied, or may have been).
                Err(Refused::Batch(e)) => {
                    return Some(
                        results
                            .into_iter()
                            .map(|r| r.and_then(|_| Err(e.clone())))
                            .collect(),
                    );
                }
            }
            self.current.store(base);
            writer.ledger = ledger;
        }
        drop(writer);
        for e in effects {
            run_effects(e);
        }
        self.send_events(events);
        Some(results)
    }

    /// One batch through the writer, run again after conflicts until
    /// `CONFLICT_DEADLINE`.
    fn apply_alone(
        &self,
        commands: &[Command],
        origin: &str,
    ) -> Result<Vec<Arc<Server>>, BatchError> {
        // With a shared store, another instance may have changed the table since
        // this one last heard of it: the store then refuses the save. Wait until
        // that change is applied here and run the batch again on top of it, so an
        // accepted change is never lost and a stale one never overwrites a newer.
        let save = |doc: &StateDoc| match &self.store {
            Some(store) => store.save(doc),
            None => Ok(()),
        };
        let mut conflicts = 0;
        let deadline = std::time::Instant::now() + CONFLICT_DEADLINE;
        loop {
            match self.write_locked(self.lock_writer(), commands, origin, &save, None) {
                Err(Refused::Conflict(revision)) => {
                    conflicts += 1;
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    let caught_up = self
                        .store
                        .as_ref()
                        .is_some_and(|s| s.catch_up(revision, left));
                    if !caught_up || std::time::Instant::now() >= deadline {
                        return Err(BatchError {
                            index: None,
                            error: TableError::Conflict(format!(
                                "refused {conflicts} time(s); the store is at revision {revision}"
                            )),
                        });
                    }
                }
                Err(Refused::Batch(e)) => return Err(e),
                Ok(touched) => return Ok(touched),
            }
        }
    }

    /// A poisoned lock means a writer panicked before publishing; what is
    /// published is still consistent, so go on.
    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the table what `doc` (the shared store's view) says: the difference
    /// as commands, applied like any batch (servers that stay keep their
    /// runtimes, counters and health), then the store's id counters and deleted
    /// names. `adopt` stands in for the store's `save`: it gets the table's new
    /// saved form under the writer lock and may refuse with
    /// [`StateError::Conflict`] when the table already holds something newer,
    /// and then nothing changes. Returns how many changes were applied; what
    /// cannot be applied (an address that does not resolve, settings this
    /// instance cannot load) is logged and skipped. Blocking (it resolves
    /// addresses, loads TLS files and runs `adopt`): on a blocking thread.
    pub fn follow(
        &self,
        doc: &StateDoc,
        origin: &str,
        adopt: &dyn Fn(&StateDoc) -> Result<(), StateError>,
    ) -> Result<usize, TableError> {
        'recompute: loop {
            let base = self.current.load_full();
            let mut commands = super::follow::commands_toward(&base, doc);
            loop {
                let writer = self.lock_writer();
                if self.current.load().generation != base.generation {
                    continue 'recompute; // changed while the difference was worked out
                }
                match self.write_locked(writer, &commands, origin, adopt, Some(doc)) {
                    Ok(_) => return Ok(commands.len()),
                    Err(Refused::Conflict(_)) => return Ok(0),
                    // One entry this table refuses (say, a backup server written
                    // into a hash upstream by hand) must not hold the rest back,
                    // or the instance would stop following the store.
                    Err(Refused::Batch(BatchError {
                        index: Some(i),
                        error,
                    })) if i < commands.len() => {
                        tracing::warn!(%error, "cluster store: a change cannot be applied here; left out");
                        commands.remove(i);
                    }
                    Err(Refused::Batch(e)) => return Err(e.error),
                }
            }
        }
    }

    /// One batch under the writer lock, in its steps: plan, save, publish, run
    /// the effects and send the events. `follow`: the store's view being
    /// followed, whose id counters and deleted names replace the table's.
    fn write_locked(
        &self,
        mut writer: MutexGuard<'_, Writer>,
        commands: &[Command],
        origin: &str,
        save: &dyn Fn(&StateDoc) -> Result<(), StateError>,
        follow: Option<&StateDoc>,
    ) -> Result<Vec<Arc<Server>>, Refused> {
        let current = self.current.load_full();
        let theirs = follow.map(ledger_of);
        let now = crate::clock::now_ms();
        let plan = plan::plan(
            &current,
            &writer.ledger,
            commands,
            origin,
            theirs.as_ref(),
            now,
        )
        .map_err(Refused::Batch)?;
        if plan.changes_nothing() && follow.is_none() {
            return Ok(plan.touched);
        }
        let Plan {
            changed,
            ledger,
            events,
            effects,
            touched,
        } = plan;
        let publish = !changed.is_empty();
        let generation = current.generation + 1;
        let upstreams = plan::upstreams_after(&current, changed, generation);
        writer.reserve_slots(upstreams.keys());

        // Durable before visible: if the store refuses, nothing changes. (Without
        // a store and not following one there is nothing to save: the saved form
        // of a big table is not free.)
        if self.store.is_some() || follow.is_some() {
            save_step(save, &upstreams, &ledger)?;
        }
        if publish {
            let next = TableSnapshot::new(generation, upstreams, &writer.slots);
            self.current.store(Arc::new(next));
        }
        writer.ledger = ledger;
        drop(writer);

        run_effects(effects);
        self.send_events(events);
        Ok(touched)
    }

    /// Stamps the events of a published batch and sends them, in order.
    fn send_events(&self, events: Vec<Event>) {
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        for mut e in events {
            e.seq = self.event_seq.fetch_add(1, Ordering::Relaxed) + 1;
            self.admin_changes.fetch_add(1, Ordering::Relaxed);
            e.time.clone_from(&time);
            info!(origin = %e.origin, upstream = %e.upstream, server = %or_dash(&e.server), change = %e.change, old = %or_dash(&e.old), new = %or_dash(&e.new), "table change");
            let _ = self.events.send(e);
        }
    }

    /// The table as it would be saved now (for seeding a shared store).
    pub fn saved_form(&self) -> StateDoc {
        let writer = self.lock_writer();
        let current = self.current.load();
        to_doc(
            &current.upstreams,
            &writer.ledger.next_id,
            &writer.ledger.deleted,
        )
    }

    /// Table changes published so far (admin API, batch, config): one per event.
    pub fn admin_changes(&self) -> u64 {
        self.admin_changes.load(Ordering::Relaxed)
    }

    /// Reports a health transition (from the `health` module) to the event stream
    /// and the log. It changes nothing in the table: health is not admin state.
    pub fn report_health(&self, upstream: &str, server: &Server, old: Health, new: Health) {
        let e = Event {
            seq: self.event_seq.fetch_add(1, Ordering::Relaxed) + 1,
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            origin: "health_check".into(),
            upstream: upstream.to_string(),
            server: Some(server.addr.clone()),
            id: Some(server.id),
            change: "health".into(),
            old: Some(old.as_str().into()),
            new: Some(new.as_str().into()),
        };
        info!(%upstream, server = %server.addr, old = %old.as_str(), new = %new.as_str(), "health change");
        let _ = self.events.send(e);
        if let Some(up) = self.upstream(upstream) {
            up.snapshot().health_changed(crate::clock::now_ms());
        }
    }

    /// Closes idle connections that timed out, on every server.
    pub fn sweep_idle(&self) {
        for upstream in self.current.load().upstreams.values() {
            for server in &upstream.snapshot().servers {
                server.runtime.pool.sweep();
            }
        }
    }
}

/// The id counters and deleted names of a shared store's view.
fn ledger_of(doc: &StateDoc) -> Ledger {
    Ledger {
        next_id: doc
            .upstreams
            .iter()
            .map(|(name, up)| (name.clone(), up.next_id))
            .collect(),
        deleted: doc.deleted.clone(),
    }
}

/// The save step: the table's saved form, as it will be once published, to
/// the store. A refusal leaves the table as it was.
fn save_step(
    save: &dyn Fn(&StateDoc) -> Result<(), StateError>,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    ledger: &Ledger,
) -> Result<(), Refused> {
    let doc = to_doc(upstreams, &ledger.next_id, &ledger.deleted);
    save(&doc).map_err(|e| match e {
        StateError::Conflict { revision } => Refused::Conflict(revision),
        StateError::Unavailable(_) => Refused::Batch(BatchError {
            index: None,
            error: TableError::StoreUnavailable(e.to_string()),
        }),
        StateError::OutcomeUnknown(_) => Refused::Batch(BatchError {
            index: None,
            error: TableError::StoreOutcomeUnknown(e.to_string()),
        }),
        other => Refused::Batch(BatchError {
            index: None,
            error: TableError::Store(other.to_string()),
        }),
    })
}

/// After publishing: no new request can pick the old versions any more, so
/// their idle connections will not be wanted (in-flight ones finish on their
/// own), and health and rotation accounting start over from now.
fn run_effects(effects: Effects) {
    for server in effects.close_idle {
        server.runtime.pool.clear();
    }
    for reset in effects.health_resets {
        reset.server.runtime.stats.set_health(reset.health);
    }
    let now = crate::clock::now_ms();
    for change in effects.admin_state_changes {
        change
            .server
            .runtime
            .stats
            .admin_state_changed(change.was_up, change.is_up, now);
    }
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
