//! The table of upstreams and its single writer.
//!
//! The whole table is one immutable [`TableSnapshot`] behind one `ArcSwap`, so a
//! batch that touches several upstreams is seen by readers all at once or not at
//! all. Unchanged upstreams are shared between consecutive snapshots; changed ones
//! are rebuilt around the same server runtimes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::broadcast;
use tracing::info;

use super::command::{Command, ServerPatch, ServerRef, ServerSpec, TableError};
use super::events::Event;
use super::server::{AdminState, Health, Server, ServerRuntime};
use super::snapshot::Snapshot;
use crate::config::{
    Balance, Config, HashKey, HealthCheckConfig, HealthCheckKind, KeepaliveConfig, RetryPolicy,
    Scheme, Timeouts, UpstreamProtocol, UpstreamTls,
};
use crate::logging::or_dash;
use crate::state::{StateDoc, StateError, StateStore};

/// How an upstream is reached, apart from its servers.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSettings {
    pub balance: Balance,
    pub hash_key: Option<HashKey>,
    pub keepalive: KeepaliveConfig,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    pub health_check: Option<HealthCheckConfig>,
    pub scheme: Scheme,
    pub protocol: UpstreamProtocol,
    /// Boxed: most upstreams have no TLS, and settings travel in every command.
    pub tls: Box<UpstreamTls>,
    /// Built from `tls` by [`UpstreamSettings::prepare_tls`] when the upstream is
    /// HTTPS or has an `https` check; shared by every generation of the upstream.
    pub tls_client: Option<crate::tls::TlsClient>,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            balance: Balance::RoundRobin,
            hash_key: None,
            keepalive: KeepaliveConfig::default(),
            timeouts: Timeouts::default(),
            retry: RetryPolicy::default(),
            health_check: None,
            scheme: Scheme::Http,
            protocol: UpstreamProtocol::Http1,
            tls: Box::default(),
            tls_client: None,
        }
    }
}

impl UpstreamSettings {
    pub fn from_config(up: &crate::config::UpstreamConfig) -> Self {
        UpstreamSettings {
            balance: up.balance,
            hash_key: up.hash_key.clone(),
            keepalive: up.keepalive,
            timeouts: up.timeouts,
            retry: up.retry,
            health_check: up.health_check.clone(),
            scheme: up.scheme,
            protocol: up.protocol,
            tls: Box::new(up.tls.clone()),
            tls_client: None,
        }
    }

    /// Whether this upstream needs TLS client settings.
    pub fn needs_tls(&self) -> bool {
        self.scheme == Scheme::Https
            || self
                .health_check
                .as_ref()
                .is_some_and(|c| c.kind == HealthCheckKind::Https)
    }

    /// Loads the TLS files once, when the upstream needs them and has no client
    /// configuration yet.
    pub fn prepare_tls(&mut self, upstream: &str) -> Result<(), String> {
        if self.tls_client.is_none() && self.needs_tls() {
            self.tls_client = Some(crate::tls::TlsClient::build(
                upstream,
                self.scheme,
                self.protocol,
                &self.tls,
            )?);
        }
        Ok(())
    }
}

/// A named group of servers as of one change. Immutable.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub settings: UpstreamSettings,
    snapshot: Snapshot,
}

impl Upstream {
    /// The servers and balancer of this version of the upstream.
    #[inline]
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }
}

/// Every upstream as of one change.
#[derive(Debug)]
pub struct TableSnapshot {
    pub generation: u64,
    /// By name, for listing.
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// By route slot (see [`Table::slot`]): `None` while no upstream has the name.
    by_slot: Vec<Option<Arc<Upstream>>>,
}

impl TableSnapshot {
    #[inline]
    pub fn by_slot(&self, slot: usize) -> Option<&Arc<Upstream>> {
        self.by_slot.get(slot).and_then(Option::as_ref)
    }
}

struct Writer {
    /// Next id per upstream; ids are never reused.
    next_id: BTreeMap<String, u32>,
    /// Upstreams deleted through the API, also once created again: a config
    /// upstream named here neither comes back nor lends its settings at start-up.
    deleted: BTreeSet<String>,
    /// Route slots by upstream name (a name keeps its slot for the process's life).
    slots: BTreeMap<String, usize>,
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
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("upstreams", &self.current.load().upstreams.keys())
            .field("store", &self.store)
            .finish()
    }
}

/// How often a batch is run again after the shared store refused it because
/// another instance wrote first, and how long each time it waits to catch up.
const CONFLICT_ATTEMPTS: usize = 8;
const CONFLICT_WAIT: Duration = Duration::from_secs(5);

/// Why `apply_locked` did not publish.
enum Refused {
    Batch(BatchError),
    /// The shared store holds a newer table (its revision).
    Conflict(u64),
}

/// A refused batch: the error, and the index of the command that caused it
/// (`None` when the batch as a whole failed, e.g. it could not be saved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchError {
    pub index: Option<usize>,
    pub error: TableError,
}

/// An upstream as start-up assembles it: settings, (id, server, state), next id.
type StartDraft = (UpstreamSettings, Vec<(u32, ServerSpec, AdminState)>, u32);

/// Why the table could not be built at start-up.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Table(#[from] TableError),
    #[error("state file {path}: {reason}")]
    BadState { path: String, reason: String },
    #[error("upstream {upstream:?}: TLS: {reason}")]
    Tls { upstream: String, reason: String },
}

/// Puts servers made together into their `Arc`s one after the other, once all of
/// them are made: their allocations then sit side by side instead of between
/// their runtimes' (~700 bytes each), so the first lines of a big upstream's
/// servers, which every pick reads for its candidates (and the lease's reference
/// count), span a few hundred pages instead of a few thousand: at 10,000 servers
/// that is the difference between a TLB-and-L3 miss per candidate and mostly
/// cache hits.
fn dense(servers: impl IntoIterator<Item = Server>) -> Vec<Arc<Server>> {
    let made: Vec<Server> = servers.into_iter().collect();
    made.into_iter().map(Arc::new).collect()
}

/// A server added at run time: with a health check it starts `checking`, and
/// slow start counts from now.
fn added_server(id: u32, spec: &ServerSpec, settings: &UpstreamSettings) -> Server {
    let s = new_server(id, spec, settings.keepalive);
    if settings.health_check.is_some() {
        s.runtime.stats.set_health(Health::Checking);
    }
    s.runtime
        .stats
        .pick
        .eligible_since_ms
        .store(crate::clock::now_ms(), std::sync::atomic::Ordering::Relaxed);
    s
}

fn new_server(id: u32, spec: &ServerSpec, keepalive: KeepaliveConfig) -> Server {
    let c = &spec.config;
    Server {
        id,
        addr: c.addr.clone(),
        sockaddr: spec.sockaddr,
        weight: c.weight,
        max_conns: c.max_conns,
        max_fails: c.max_fails,
        fail_timeout: c.fail_timeout,
        slow_start: c.slow_start,
        backup: c.backup,
        state: if c.down {
            AdminState::Down
        } else {
            AdminState::Up
        },
        runtime: Arc::new(ServerRuntime::new(keepalive)),
    }
}

fn build_upstream(
    name: &str,
    settings: UpstreamSettings,
    generation: u64,
    servers: Vec<Arc<Server>>,
) -> Arc<Upstream> {
    Arc::new(Upstream {
        name: name.to_string(),
        snapshot: Snapshot::build(settings.balance, generation, servers),
        settings,
    })
}

/// One upstream as a batch is building it.
struct Draft {
    settings: UpstreamSettings,
    servers: Vec<Arc<Server>>,
}

fn check_backup(settings: &UpstreamSettings, backup: bool) -> Result<(), TableError> {
    match settings.balance {
        Balance::Hash | Balance::IpHash if backup => {
            Err(TableError::BackupWithHash(settings.balance.as_str()))
        }
        _ => Ok(()),
    }
}

/// A short account of an upstream's settings, for the `settings` event.
fn describe_settings(s: &UpstreamSettings) -> String {
    format!(
        "balance={} scheme={} protocol={} health_check={}",
        s.balance.as_str(),
        s.scheme.as_str(),
        s.protocol.as_str(),
        s.health_check.as_ref().map_or("none", |c| c.kind.as_str())
    )
}

fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
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
    /// config upstreams deleted through the API stay deleted.
    pub fn open(config: &Config, store: Option<Arc<dyn StateStore>>) -> Result<Table, OpenError> {
        let saved = match &store {
            Some(s) => s.load()?,
            None => None,
        };
        let mut drafts: BTreeMap<String, StartDraft> = BTreeMap::new();
        let deleted = saved
            .as_ref()
            .map(|d| d.deleted.clone())
            .unwrap_or_default();
        for (name, up) in &config.upstreams {
            if deleted.contains(name) {
                continue;
            }
            let mut servers = Vec::new();
            for (i, s) in up.servers.iter().enumerate() {
                let spec = ServerSpec::resolve(s.clone())?;
                let state = if s.down {
                    AdminState::Down
                } else {
                    AdminState::Up
                };
                servers.push((i as u32, spec, state));
            }
            let n = servers.len() as u32;
            drafts.insert(
                name.clone(),
                (UpstreamSettings::from_config(up), servers, n),
            );
        }
        if let Some(doc) = &saved {
            let path = store.as_ref().map(|s| s.describe()).unwrap_or_default();
            for (name, up) in &doc.upstreams {
                let bad = |reason: String| OpenError::BadState {
                    path: path.clone(),
                    reason: format!("upstream {name:?}: {reason}"),
                };
                let saved_settings =
                    super::persist::settings_from_state(&up.settings).map_err(bad)?;
                // The config's settings win, unless the config's upstream was
                // deleted through the API (and this one created there since); a
                // health check set through the API is kept either way.
                let settings = match config.upstreams.get(name) {
                    Some(c) if !deleted.contains(name) => {
                        let from_file = UpstreamSettings::from_config(c);
                        UpstreamSettings {
                            health_check: saved_settings
                                .health_check
                                .or(from_file.health_check.clone()),
                            ..from_file
                        }
                    }
                    _ => saved_settings,
                };
                let mut servers = Vec::new();
                for s in &up.servers {
                    let (config, state) = super::persist::server_from_state(s);
                    servers.push((s.id, ServerSpec::resolve(config)?, state));
                }
                let next = up
                    .next_id
                    .max(servers.iter().map(|(id, ..)| id + 1).max().unwrap_or(0));
                drafts.insert(name.clone(), (settings, servers, next));
            }
        }

        let mut slots = BTreeMap::new();
        let mut upstreams = BTreeMap::new();
        let mut next_id = BTreeMap::new();
        for (name, (mut settings, specs, next)) in drafts {
            settings
                .prepare_tls(&name)
                .map_err(|reason| OpenError::Tls {
                    upstream: name.clone(),
                    reason,
                })?;
            // At start-up servers take traffic at once, unless the check is
            // mandatory: then they wait for a first pass.
            let mandatory = settings.health_check.as_ref().is_some_and(|c| c.mandatory);
            let servers = dense(specs.iter().map(|(id, spec, state)| {
                let mut s = new_server(*id, spec, settings.keepalive);
                s.state = *state;
                if mandatory {
                    s.runtime.stats.set_health(Health::Checking);
                }
                s
            }));
            slots.insert(name.clone(), slots.len());
            next_id.insert(name.clone(), next);
            upstreams.insert(name.clone(), build_upstream(&name, settings, 1, servers));
        }
        // Routes may name upstreams that do not exist (yet): give them slots too.
        for l in &config.listeners {
            for r in &l.routes {
                let n = slots.len();
                slots.entry(r.upstream.clone()).or_insert(n);
            }
        }
        let by_slot = slot_vec(&slots, &upstreams);
        let (events, _) = broadcast::channel(1024);
        Ok(Table {
            current: ArcSwap::from_pointee(TableSnapshot {
                generation: 1,
                upstreams,
                by_slot,
            }),
            writer: Mutex::new(Writer {
                next_id,
                deleted,
                slots,
            }),
            store,
            events,
            event_seq: AtomicU64::new(0),
            admin_changes: AtomicU64::new(0),
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
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
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
    pub fn apply(&self, commands: &[Command]) -> Result<Vec<Arc<Server>>, TableError> {
        self.apply_as(commands, "internal")
    }

    /// Applies `commands` all together or not at all: the result is saved to the
    /// state store, then published in one swap, and only then does this return. A
    /// request that starts afterwards, on any thread, routes by the change.
    /// Returns the server each server command touched, as it is after the change
    /// (a removed server as it was).
    pub fn apply_as(
        &self,
        commands: &[Command],
        origin: &str,
    ) -> Result<Vec<Arc<Server>>, TableError> {
        self.apply_batch_as(commands, origin).map_err(|e| e.error)
    }

    /// [`Table::apply_as`], telling which command of a refused batch failed.
    pub fn apply_batch_as(
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
        loop {
            match self.apply_locked(self.lock_writer(), commands, origin, &save, None) {
                Err(Refused::Conflict(revision)) => {
                    conflicts += 1;
                    let caught_up = self
                        .store
                        .as_ref()
                        .is_some_and(|s| s.catch_up(revision, CONFLICT_WAIT));
                    if conflicts >= CONFLICT_ATTEMPTS || !caught_up {
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
    fn lock_writer(&self) -> std::sync::MutexGuard<'_, Writer> {
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
    /// instance cannot load) is logged and skipped.
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
                match self.apply_locked(writer, &commands, origin, adopt, Some(doc)) {
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

    /// One batch under the writer lock. `target`: the store's view being
    /// followed, whose id counters and deleted names replace the table's.
    fn apply_locked(
        &self,
        mut writer: std::sync::MutexGuard<'_, Writer>,
        commands: &[Command],
        origin: &str,
        save: &dyn Fn(&StateDoc) -> Result<(), StateError>,
        target: Option<&StateDoc>,
    ) -> Result<Vec<Arc<Server>>, Refused> {
        let current = self.current.load_full();
        let mut next_id = writer.next_id.clone();
        let mut deleted = writer.deleted.clone();
        // Upstreams this batch changes: `None` = deleted.
        let mut drafts: BTreeMap<String, Option<Draft>> = BTreeMap::new();
        let mut touched = Vec::new();
        let mut closed: Vec<Arc<Server>> = Vec::new();
        let mut events: Vec<Event> = Vec::new();
        let mut state_changes: Vec<(Arc<Server>, bool, bool)> = Vec::new();
        let mut health_resets: Vec<(Arc<Server>, Health)> = Vec::new();
        let event = |upstream: &str,
                     server: Option<&Server>,
                     change: &str,
                     old: Option<String>,
                     new: Option<String>| Event {
            seq: 0,
            time: String::new(),
            origin: origin.to_string(),
            upstream: upstream.to_string(),
            server: server.map(|s| s.addr.clone()),
            id: server.map(|s| s.id),
            change: change.to_string(),
            old,
            new,
        };

        for (index, cmd) in commands.iter().enumerate() {
            let mut step = || -> Result<(), TableError> {
                let name = cmd.upstream();
                match cmd {
                    Command::CreateUpstream {
                        settings, servers, ..
                    } => {
                        let exists = match drafts.get(name) {
                            Some(d) => d.is_some(),
                            None => current.upstreams.contains_key(name),
                        };
                        if exists {
                            return Err(TableError::UpstreamExists(name.to_string()));
                        }
                        let mut made: Vec<Server> = Vec::new();
                        for (i, spec) in servers.iter().enumerate() {
                            validate_new(name, settings, made.iter().map(|s| &*s.addr), spec)?;
                            made.push(added_server(i as u32, spec, settings));
                        }
                        let list = dense(made);
                        next_id.insert(name.to_string(), list.len() as u32);
                        // A name stays in `deleted` when it is created again: the
                        // config's definition of it no longer applies.
                        events.push(event(name, None, "upstream_created", None, None));
                        drafts.insert(
                            name.to_string(),
                            Some(Draft {
                                settings: settings.clone(),
                                servers: list,
                            }),
                        );
                        return Ok(());
                    }
                    Command::DeleteUpstream { .. } => {
                        let draft = draft_mut(&mut drafts, &current, name)?;
                        closed.append(&mut draft.servers);
                        drafts.insert(name.to_string(), None);
                        deleted.insert(name.to_string());
                        next_id.remove(name);
                        events.push(event(name, None, "upstream_deleted", None, None));
                        return Ok(());
                    }
                    _ => {}
                }
                let draft = draft_mut(&mut drafts, &current, name)?;
                let find = |list: &[Arc<Server>], r: &ServerRef| {
                    list.iter().position(|s| r.matches(s)).ok_or_else(|| {
                        TableError::UnknownServer {
                            upstream: name.to_string(),
                            server: r.to_string(),
                        }
                    })
                };
                match cmd {
                    Command::Add { server, .. } | Command::Restore { server, .. } => {
                        validate_new(
                            name,
                            &draft.settings,
                            draft.servers.iter().map(|s| &*s.addr),
                            server,
                        )?;
                        let next = next_id.entry(name.to_string()).or_insert(0);
                        // A new server takes the next id; one the shared store
                        // already has keeps its id and admin state.
                        let (id, state) = match cmd {
                            Command::Restore { id, state, .. } => {
                                if draft.servers.iter().any(|s| s.id == *id) {
                                    return Err(TableError::DuplicateServer {
                                        upstream: name.to_string(),
                                        addr: format!("id {id}"),
                                    });
                                }
                                (*id, Some(*state))
                            }
                            _ => (*next, None),
                        };
                        *next = (*next).max(id.saturating_add(1));
                        let mut new = added_server(id, server, &draft.settings);
                        if let Some(state) = state {
                            new.state = state;
                        }
                        let new = Arc::new(new);
                        events.push(event(
                            name,
                            Some(&new),
                            "server_added",
                            None,
                            Some(new.state.as_str().into()),
                        ));
                        draft.servers.push(Arc::clone(&new));
                        touched.push(new);
                    }
                    Command::SetHealthCheck { check, .. } => {
                        let old = draft.settings.health_check.take();
                        let describe = |c: &Option<HealthCheckConfig>| {
                            c.as_ref().map(|c| c.kind.as_str().to_string())
                        };
                        events.push(event(
                            name,
                            None,
                            "health_check",
                            describe(&old),
                            describe(check),
                        ));
                        // Without a check there is no verdict: everyone is healthy.
                        // A new check judges from its first results on; a
                        // mandatory one holds servers back until they pass.
                        let start = match check {
                            None => Some(Health::Healthy),
                            Some(c) if c.mandatory && old.is_none() => Some(Health::Checking),
                            Some(_) => None,
                        };
                        if let Some(h) = start {
                            health_resets.extend(draft.servers.iter().map(|s| (Arc::clone(s), h)));
                        }
                        draft.settings.health_check = check.clone();
                    }
                    Command::SetSettings { settings, .. } => {
                        for s in &draft.servers {
                            check_backup(settings, s.backup)?;
                        }
                        let old = &draft.settings;
                        events.push(event(
                            name,
                            None,
                            "settings",
                            Some(describe_settings(old)),
                            Some(describe_settings(settings)),
                        ));
                        // The health verdicts, as `SetHealthCheck` treats them.
                        let start = match (&old.health_check, &settings.health_check) {
                            (Some(_), None) => Some(Health::Healthy),
                            (None, Some(c)) if c.mandatory => Some(Health::Checking),
                            _ => None,
                        };
                        if let Some(h) = start {
                            health_resets.extend(draft.servers.iter().map(|s| (Arc::clone(s), h)));
                        }
                        draft.settings = settings.clone();
                    }
                    Command::Remove { server, .. } => {
                        let i = find(&draft.servers, server)?;
                        let old = draft.servers.remove(i);
                        events.push(event(
                            name,
                            Some(&old),
                            "server_removed",
                            Some(old.state.as_str().into()),
                            None,
                        ));
                        closed.push(Arc::clone(&old));
                        touched.push(old);
                    }
                    other => {
                        let Some((server, patch)) = other.as_patch() else {
                            return Ok(());
                        };
                        let i = find(&draft.servers, server)?;
                        let old = &draft.servers[i];
                        let new = Arc::new(patched(old, &patch, &draft.settings)?);
                        for (change, was, now) in diff(old, &new) {
                            events.push(event(name, Some(&new), change, Some(was), Some(now)));
                        }
                        // Out of rotation: its idle connections are not wanted. Back
                        // in: those that requests finishing during a drain checked in
                        // may lead to a process that has been replaced meanwhile.
                        if new.state != AdminState::Up || old.state != AdminState::Up {
                            closed.push(Arc::clone(&new));
                        }
                        if new.state != old.state {
                            state_changes.push((
                                Arc::clone(&new),
                                old.state == AdminState::Up,
                                new.state == AdminState::Up,
                            ));
                        }
                        draft.servers[i] = Arc::clone(&new);
                        touched.push(new);
                    }
                }
                Ok(())
            };
            step().map_err(|error| {
                Refused::Batch(BatchError {
                    index: Some(index),
                    error,
                })
            })?;
        }
        if let Some(doc) = target {
            for (name, up) in &doc.upstreams {
                let n = next_id.entry(name.clone()).or_insert(0);
                *n = (*n).max(up.next_id);
            }
            deleted.clone_from(&doc.deleted);
        }

        if drafts.is_empty() && target.is_none() {
            return Ok(touched);
        }
        let drafts_empty = drafts.is_empty();
        let generation = current.generation + 1;
        let mut upstreams = current.upstreams.clone();
        for (name, draft) in drafts {
            match draft {
                Some(d) => {
                    upstreams.insert(
                        name.clone(),
                        build_upstream(&name, d.settings, generation, d.servers),
                    );
                }
                None => {
                    upstreams.remove(&name);
                }
            }
        }
        for name in upstreams.keys() {
            let n = writer.slots.len();
            writer.slots.entry(name.clone()).or_insert(n);
        }

        // Durable before visible: if the store refuses, nothing changes. (Without
        // a store and not following one there is nothing to save: the saved form
        // of a big table is not free.)
        if self.store.is_some() || target.is_some() {
            let doc = super::persist::to_doc(&upstreams, &next_id, &deleted);
            save(&doc).map_err(|e| match e {
                StateError::Conflict { revision } => Refused::Conflict(revision),
                StateError::Unavailable(_) => Refused::Batch(BatchError {
                    index: None,
                    error: TableError::StoreUnavailable(e.to_string()),
                }),
                other => Refused::Batch(BatchError {
                    index: None,
                    error: TableError::Store(other.to_string()),
                }),
            })?;
        }
        if !drafts_empty {
            let by_slot = slot_vec(&writer.slots, &upstreams);
            self.current.store(Arc::new(TableSnapshot {
                generation,
                upstreams,
                by_slot,
            }));
        }
        writer.next_id = next_id;
        writer.deleted = deleted;
        drop(writer);

        // After publishing: no new request can pick these any more, so their idle
        // connections will not be wanted. In-flight ones finish on their own.
        for server in closed {
            server.runtime.pool.clear();
        }
        for (server, health) in health_resets {
            server.runtime.stats.set_health(health);
        }
        let now = crate::clock::now_ms();
        for (server, was_up, is_up) in state_changes {
            server.runtime.stats.admin_state_changed(was_up, is_up, now);
        }
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        for mut e in events {
            e.seq = self.event_seq.fetch_add(1, Ordering::Relaxed) + 1;
            self.admin_changes.fetch_add(1, Ordering::Relaxed);
            e.time.clone_from(&time);
            info!(origin = %e.origin, upstream = %e.upstream, server = %or_dash(&e.server), change = %e.change, old = %or_dash(&e.old), new = %or_dash(&e.new), "table change");
            let _ = self.events.send(e);
        }
        Ok(touched)
    }

    /// The table as it would be saved now (for seeding a shared store).
    pub fn saved_form(&self) -> StateDoc {
        let writer = self.lock_writer();
        let current = self.current.load();
        super::persist::to_doc(&current.upstreams, &writer.next_id, &writer.deleted)
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

/// The batch's draft of an upstream, starting from the published one.
fn draft_mut<'a>(
    drafts: &'a mut BTreeMap<String, Option<Draft>>,
    current: &TableSnapshot,
    name: &str,
) -> Result<&'a mut Draft, TableError> {
    let unknown = || TableError::UnknownUpstream(name.to_string());
    let slot = match drafts.entry(name.to_string()) {
        std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
        std::collections::btree_map::Entry::Vacant(v) => {
            let u = current.upstreams.get(name).ok_or_else(unknown)?;
            v.insert(Some(Draft {
                settings: u.settings.clone(),
                servers: u.snapshot().servers.clone(),
            }))
        }
    };
    slot.as_mut().ok_or_else(unknown)
}

fn validate_new<'a>(
    upstream: &str,
    settings: &UpstreamSettings,
    mut addrs: impl Iterator<Item = &'a str>,
    spec: &ServerSpec,
) -> Result<(), TableError> {
    if !(1..=1000).contains(&spec.config.weight) {
        return Err(TableError::BadWeight(spec.config.weight));
    }
    check_backup(settings, spec.config.backup)?;
    if addrs.any(|a| a == spec.config.addr) {
        return Err(TableError::DuplicateServer {
            upstream: upstream.to_string(),
            addr: spec.config.addr.clone(),
        });
    }
    Ok(())
}

fn patched(
    old: &Server,
    p: &ServerPatch,
    settings: &UpstreamSettings,
) -> Result<Server, TableError> {
    let mut s = old.clone_settings();
    if let Some(w) = p.weight {
        if !(1..=1000).contains(&w) {
            return Err(TableError::BadWeight(w));
        }
        s.weight = w;
    }
    if let Some(b) = p.backup {
        check_backup(settings, b)?;
        s.backup = b;
    }
    if let Some(v) = p.state {
        s.state = v;
    }
    if let Some(v) = p.max_conns {
        s.max_conns = v;
    }
    if let Some(v) = p.max_fails {
        s.max_fails = v;
    }
    if let Some(v) = p.fail_timeout {
        s.fail_timeout = v;
    }
    if let Some(v) = p.slow_start {
        s.slow_start = v;
    }
    Ok(s)
}

/// What differs between two versions of a server: (field, old, new).
fn diff(a: &Server, b: &Server) -> Vec<(&'static str, String, String)> {
    let mut out = Vec::new();
    let mut cmp = |field: &'static str, x: String, y: String| {
        if x != y {
            out.push((field, x, y));
        }
    };
    cmp("state", a.state.as_str().into(), b.state.as_str().into());
    cmp("weight", a.weight.to_string(), b.weight.to_string());
    cmp(
        "max_conns",
        a.max_conns.to_string(),
        b.max_conns.to_string(),
    );
    cmp(
        "max_fails",
        a.max_fails.to_string(),
        b.max_fails.to_string(),
    );
    cmp(
        "fail_timeout",
        fmt_duration(a.fail_timeout),
        fmt_duration(b.fail_timeout),
    );
    cmp(
        "slow_start",
        fmt_duration(a.slow_start),
        fmt_duration(b.slow_start),
    );
    cmp("backup", a.backup.to_string(), b.backup.to_string());
    out
}

fn slot_vec(
    slots: &BTreeMap<String, usize>,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
) -> Vec<Option<Arc<Upstream>>> {
    let mut v = vec![None; slots.len()];
    for (name, &slot) in slots {
        v[slot] = upstreams.get(name).cloned();
    }
    v
}
#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
