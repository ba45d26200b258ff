//! The writer's first step: what a batch of commands makes of the table.
//!
//! [`plan`] takes the published snapshot, the writer's ledger and the commands,
//! and returns the upstreams the batch changes, the events it will report and
//! the side effects to run once it is published — or the command that refused
//! it. It is pure: no I/O, no lock, no clock (the caller passes `now_ms`), and
//! nothing it returns is visible to anyone until the writer publishes it. Saving,
//! publishing and running the effects are the table's (`table.rs`); this module
//! must not touch the store, the `ArcSwap` or a server's runtime counters.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::command::{BatchError, Command, ServerPatch, ServerRef, ServerSpec, TableError};
use super::events::Event;
use super::published::{TableSnapshot, Upstream};
use super::server::{AdminState, Health, Server, ServerRuntime};
use super::settings::UpstreamSettings;
use crate::config::{Balance, HealthCheckConfig, KeepaliveConfig, WEIGHTS};

/// What the writer keeps between batches, besides the snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Ledger {
    /// Next id per upstream; ids are never reused.
    pub next_id: BTreeMap<String, u32>,
    /// Upstreams deleted through the API, also once created again: a config
    /// upstream named here neither comes back nor lends its settings at start-up.
    pub deleted: BTreeSet<String>,
}

/// One upstream as a batch is building it.
#[derive(Debug)]
pub(super) struct Draft {
    pub settings: UpstreamSettings,
    pub servers: Vec<Arc<Server>>,
}

/// A server whose health verdict starts over once the batch is published.
#[derive(Debug)]
pub(super) struct HealthReset {
    pub server: Arc<Server>,
    pub health: Health,
}

/// A server whose admin state changed, for the accounting of time in rotation.
#[derive(Debug)]
pub(super) struct AdminStateChange {
    pub server: Arc<Server>,
    pub was_up: bool,
    pub is_up: bool,
}

/// What to do to server runtimes once the batch is published, and only then:
/// before, a request could still pick the old version.
#[derive(Debug, Default)]
pub(super) struct Effects {
    /// Servers whose idle connections are no longer wanted.
    pub close_idle: Vec<Arc<Server>>,
    pub health_resets: Vec<HealthReset>,
    pub admin_state_changes: Vec<AdminStateChange>,
}

/// A batch the writer can save and publish.
#[derive(Debug)]
pub(super) struct Plan {
    /// Upstreams the batch changes, as they will be published; `None`: deleted.
    pub changed: BTreeMap<String, Option<Draft>>,
    /// The ledger after the batch.
    pub ledger: Ledger,
    /// One per change, in order; `seq` and `time` are stamped when sent.
    pub events: Vec<Event>,
    pub effects: Effects,
    /// The server each server command touched, as it is after the change (a
    /// removed server as it was).
    pub touched: Vec<Arc<Server>>,
}

impl Plan {
    /// Whether the batch changes no upstream (no command, or none that stuck).
    pub fn changes_nothing(&self) -> bool {
        self.changed.is_empty()
    }
}

/// Works out what `commands` make of `current`, all of them or none.
/// `follow`: the ledger of a shared store being followed, whose id counters
/// and deleted names replace the writer's. `now_ms`: when added servers start
/// their slow start.
pub(super) fn plan(
    current: &TableSnapshot,
    ledger: &Ledger,
    commands: &[Command],
    origin: &str,
    follow: Option<&Ledger>,
    now_ms: u64,
) -> Result<Plan, BatchError> {
    let mut p = Planner {
        current,
        now_ms,
        changed: BTreeMap::new(),
        ledger: ledger.clone(),
        events: Events {
            origin,
            list: Vec::new(),
        },
        effects: Effects::default(),
        touched: Vec::new(),
    };
    for (index, cmd) in commands.iter().enumerate() {
        p.command(cmd).map_err(|error| BatchError {
            index: Some(index),
            error,
        })?;
    }
    if let Some(theirs) = follow {
        for (name, &next) in &theirs.next_id {
            let n = p.ledger.next_id.entry(name.clone()).or_insert(0);
            *n = (*n).max(next);
        }
        p.ledger.deleted.clone_from(&theirs.deleted);
    }
    Ok(Plan {
        changed: p.changed,
        ledger: p.ledger,
        events: p.events.list,
        effects: p.effects,
        touched: p.touched,
    })
}

/// The table's upstreams once `changed` is applied to `current`'s; unchanged
/// upstreams are shared with `current`.
pub(super) fn upstreams_after(
    current: &TableSnapshot,
    changed: BTreeMap<String, Option<Draft>>,
    generation: u64,
) -> BTreeMap<String, Arc<Upstream>> {
    let mut upstreams = current.upstreams.clone();
    for (name, draft) in changed {
        match draft {
            Some(d) => {
                let previous = current.upstreams.get(&name).map(|u| &**u);
                let built =
                    Upstream::build_after(&name, d.settings, generation, d.servers, previous);
                upstreams.insert(name, built);
            }
            None => {
                upstreams.remove(&name);
            }
        }
    }
    upstreams
}

/// The events of a batch, all from one origin.
struct Events<'a> {
    origin: &'a str,
    list: Vec<Event>,
}

impl Events<'_> {
    fn push(
        &mut self,
        upstream: &str,
        server: Option<&Server>,
        change: &str,
        old: Option<String>,
        new: Option<String>,
    ) {
        self.list.push(Event {
            seq: 0,
            time: String::new(),
            origin: self.origin.to_string(),
            upstream: upstream.to_string(),
            server: server.map(|s| s.addr.clone()),
            id: server.map(|s| s.id),
            change: change.to_string(),
            old,
            new,
        });
    }
}

/// A batch being worked out, one command after the other.
struct Planner<'a> {
    current: &'a TableSnapshot,
    now_ms: u64,
    changed: BTreeMap<String, Option<Draft>>,
    ledger: Ledger,
    events: Events<'a>,
    effects: Effects,
    touched: Vec<Arc<Server>>,
}

impl Planner<'_> {
    fn command(&mut self, cmd: &Command) -> Result<(), TableError> {
        let name = cmd.upstream();
        match cmd {
            Command::CreateUpstream {
                settings, servers, ..
            } => self.create_upstream(name, settings, servers),
            Command::DeleteUpstream { .. } => self.delete_upstream(name),
            Command::Add { server, .. } => self.add_server(name, server, None),
            Command::Restore {
                id, server, state, ..
            } => self.add_server(name, server, Some((*id, *state))),
            Command::SetHealthCheck { check, .. } => self.set_health_check(name, check),
            Command::SetSettings { settings, .. } => self.set_settings(name, settings),
            Command::Remove { server, .. } => self.remove_server(name, server),
            Command::SetState { .. }
            | Command::SetWeight { .. }
            | Command::SetMaxConns { .. }
            | Command::Patch { .. } => match cmd.as_patch() {
                Some((server, patch)) => self.patch_server(name, server, &patch),
                None => Ok(()),
            },
        }
    }

    fn create_upstream(
        &mut self,
        name: &str,
        settings: &UpstreamSettings,
        servers: &[ServerSpec],
    ) -> Result<(), TableError> {
        let exists = match self.changed.get(name) {
            Some(d) => d.is_some(),
            None => self.current.upstreams.contains_key(name),
        };
        if exists {
            return Err(TableError::UpstreamExists(name.to_string()));
        }
        let mut made: Vec<Server> = Vec::new();
        for (i, spec) in servers.iter().enumerate() {
            validate_new(name, settings, made.iter().map(|s| &*s.addr), spec)?;
            made.push(added_server(i as u32, spec, settings, self.now_ms));
        }
        let list = dense(made);
        self.ledger
            .next_id
            .insert(name.to_string(), list.len() as u32);
        // A name stays in `deleted` when it is created again: the config's
        // definition of it no longer applies.
        self.events.push(name, None, "upstream_created", None, None);
        let draft = Draft {
            settings: settings.clone(),
            servers: list,
        };
        self.changed.insert(name.to_string(), Some(draft));
        Ok(())
    }

    fn delete_upstream(&mut self, name: &str) -> Result<(), TableError> {
        let draft = draft_mut(&mut self.changed, self.current, name)?;
        self.effects.close_idle.append(&mut draft.servers);
        self.changed.insert(name.to_string(), None);
        self.ledger.deleted.insert(name.to_string());
        self.ledger.next_id.remove(name);
        self.events.push(name, None, "upstream_deleted", None, None);
        Ok(())
    }

    /// `restore`: the id and admin state the shared store gives the server; a
    /// new server otherwise takes the next id.
    fn add_server(
        &mut self,
        name: &str,
        spec: &ServerSpec,
        restore: Option<(u32, AdminState)>,
    ) -> Result<(), TableError> {
        let draft = draft_mut(&mut self.changed, self.current, name)?;
        validate_new(
            name,
            &draft.settings,
            draft.servers.iter().map(|s| &*s.addr),
            spec,
        )?;
        let next = self.ledger.next_id.entry(name.to_string()).or_insert(0);
        let (id, state) = match restore {
            Some((id, _)) if draft.servers.iter().any(|s| s.id == id) => {
                return Err(TableError::DuplicateServer {
                    upstream: name.to_string(),
                    addr: format!("id {id}"),
                });
            }
            Some((id, state)) => (id, Some(state)),
            None => (*next, None),
        };
        *next = (*next).max(id.saturating_add(1));
        let mut new = added_server(id, spec, &draft.settings, self.now_ms);
        if let Some(state) = state {
            new.state = state;
        }
        let new = Arc::new(new);
        self.events.push(
            name,
            Some(&new),
            "server_added",
            None,
            Some(new.state.as_str().into()),
        );
        draft.servers.push(Arc::clone(&new));
        self.touched.push(new);
        Ok(())
    }

    fn set_health_check(
        &mut self,
        name: &str,
        check: &Option<HealthCheckConfig>,
    ) -> Result<(), TableError> {
        let draft = draft_mut(&mut self.changed, self.current, name)?;
        let old = draft.settings.health_check.take();
        let kind = |c: &Option<HealthCheckConfig>| c.as_ref().map(|c| c.kind.as_str().to_string());
        self.events
            .push(name, None, "health_check", kind(&old), kind(check));
        // Without a check there is no verdict: everyone is healthy. A new check
        // judges from its first results on; a mandatory one holds servers back
        // until they pass.
        let start = match check {
            None => Some(Health::Healthy),
            Some(c) if c.mandatory && old.is_none() => Some(Health::Checking),
            Some(_) => None,
        };
        if let Some(health) = start {
            reset_health(&mut self.effects, &draft.servers, health);
        }
        draft.settings.health_check = check.clone();
        Ok(())
    }

    fn set_settings(&mut self, name: &str, settings: &UpstreamSettings) -> Result<(), TableError> {
        let draft = draft_mut(&mut self.changed, self.current, name)?;
        for s in &draft.servers {
            check_backup(settings, s.backup)?;
        }
        let old = &draft.settings;
        self.events.push(
            name,
            None,
            "settings",
            Some(describe_settings(old)),
            Some(describe_settings(settings)),
        );
        // The health verdicts, as `SetHealthCheck` treats them.
        let start = match (&old.health_check, &settings.health_check) {
            (Some(_), None) => Some(Health::Healthy),
            (None, Some(c)) if c.mandatory => Some(Health::Checking),
            _ => None,
        };
        if let Some(health) = start {
            reset_health(&mut self.effects, &draft.servers, health);
        }
        draft.settings = settings.clone();
        Ok(())
    }

    fn remove_server(&mut self, name: &str, server: &ServerRef) -> Result<(), TableError> {
        let draft = draft_mut(&mut self.changed, self.current, name)?;
        let i = position(name, &draft.servers, server)?;
        let old = draft.servers.remove(i);
        self.events.push(
            name,
            Some(&old),
            "server_removed",
            Some(old.state.as_str().into()),
            None,
        );
        self.effects.close_idle.push(Arc::clone(&old));
        self.touched.push(old);
        Ok(())
    }

    fn patch_server(
        &mut self,
        name: &str,
        server: &ServerRef,
        patch: &ServerPatch,
    ) -> Result<(), TableError> {
        let draft = draft_mut(&mut self.changed, self.current, name)?;
        let i = position(name, &draft.servers, server)?;
        let old = Arc::clone(&draft.servers[i]);
        let new = Arc::new(patched(&old, patch, &draft.settings)?);
        draft.servers[i] = Arc::clone(&new);
        for c in diff(&old, &new) {
            self.events
                .push(name, Some(&new), c.field, Some(c.old), Some(c.new));
        }
        // Out of rotation: its idle connections are not wanted. Back in: those
        // that requests finishing during a drain checked in may lead to a
        // process that has been replaced meanwhile.
        if new.state != AdminState::Up || old.state != AdminState::Up {
            self.effects.close_idle.push(Arc::clone(&new));
        }
        if new.state != old.state {
            self.effects.admin_state_changes.push(AdminStateChange {
                server: Arc::clone(&new),
                was_up: old.state == AdminState::Up,
                is_up: new.state == AdminState::Up,
            });
        }
        self.touched.push(new);
        Ok(())
    }
}

fn reset_health(effects: &mut Effects, servers: &[Arc<Server>], health: Health) {
    effects
        .health_resets
        .extend(servers.iter().map(|s| HealthReset {
            server: Arc::clone(s),
            health,
        }));
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

/// Where the server `r` names is in `list`.
fn position(upstream: &str, list: &[Arc<Server>], r: &ServerRef) -> Result<usize, TableError> {
    list.iter()
        .position(|s| r.matches(s))
        .ok_or_else(|| TableError::UnknownServer {
            upstream: upstream.to_string(),
            server: r.to_string(),
        })
}

/// Puts servers made together into their `Arc`s one after the other, once all of
/// them are made: their allocations then sit side by side instead of between
/// their runtimes' (~700 bytes each), so the first lines of a big upstream's
/// servers, which every pick reads for its candidates (and the lease's reference
/// count), span a few hundred pages instead of a few thousand: at 10,000 servers
/// that is the difference between a TLB-and-L3 miss per candidate and mostly
/// cache hits.
pub(super) fn dense(servers: impl IntoIterator<Item = Server>) -> Vec<Arc<Server>> {
    let made: Vec<Server> = servers.into_iter().collect();
    made.into_iter().map(Arc::new).collect()
}

/// A server added at run time: with a health check it starts `checking`, and
/// slow start counts from `now_ms`.
fn added_server(id: u32, spec: &ServerSpec, settings: &UpstreamSettings, now_ms: u64) -> Server {
    let s = new_server(id, spec, settings.keepalive);
    if settings.health_check.is_some() {
        s.runtime.stats.set_health(Health::Checking);
    }
    s.runtime
        .stats
        .pick
        .eligible_since_ms
        .store(now_ms, std::sync::atomic::Ordering::Relaxed);
    s
}

/// A server with a fresh runtime, in the admin state its config says.
pub(super) fn new_server(id: u32, spec: &ServerSpec, keepalive: KeepaliveConfig) -> Server {
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
        origin: spec.origin.clone(),
    }
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

fn validate_new<'a>(
    upstream: &str,
    settings: &UpstreamSettings,
    mut addrs: impl Iterator<Item = &'a str>,
    spec: &ServerSpec,
) -> Result<(), TableError> {
    if !WEIGHTS.contains(&spec.config.weight) {
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
        if !WEIGHTS.contains(&w) {
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

/// One setting of a server that a change gave a new value, as events show it.
struct FieldChange {
    field: &'static str,
    old: String,
    new: String,
}

/// What differs between two versions of a server.
fn diff(a: &Server, b: &Server) -> Vec<FieldChange> {
    let mut out = Vec::new();
    let mut cmp = |field: &'static str, old: String, new: String| {
        if old != new {
            out.push(FieldChange { field, old, new });
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

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
