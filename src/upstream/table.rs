//! The table of upstreams and its single writer.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::server::{AdminState, Server, ServerRuntime};
use super::snapshot::Snapshot;
use crate::config::{
    Balance, Config, HashKey, KeepaliveConfig, RetryPolicy, ServerConfig, Timeouts,
};
use crate::proxy::pool::Pool;

/// How an upstream is reached, apart from its servers.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSettings {
    pub balance: Balance,
    pub hash_key: Option<HashKey>,
    pub keepalive: KeepaliveConfig,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
}

/// A named group of servers. The request path reads [`Upstream::snapshot`]; only
/// [`Table::apply`] publishes a new one.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub settings: UpstreamSettings,
    snapshot: ArcSwap<Snapshot>,
}

impl Upstream {
    /// The current snapshot. Cheap and lock-free; hold it for the span of one pick,
    /// not across awaits.
    #[inline]
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }
}

/// A server to add, its address already resolved (resolution is I/O and happens
/// before the writer is entered).
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub config: ServerConfig,
    pub sockaddr: SocketAddr,
}

impl ServerSpec {
    /// Resolves `config.addr` (blocking; for start-up and the CLI).
    pub fn resolve(config: ServerConfig) -> Result<ServerSpec, TableError> {
        let sockaddr = resolve(&config.addr)?;
        Ok(ServerSpec { config, sockaddr })
    }
}

/// How a command names a server: by its stable id or by its `addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerRef {
    Id(u32),
    Addr(String),
}

impl std::fmt::Display for ServerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerRef::Id(id) => write!(f, "id {id}"),
            ServerRef::Addr(a) => f.write_str(a),
        }
    }
}

/// One change to the table. Every door (API, compatibility layers, state replay)
/// translates its input into these.
#[derive(Debug, Clone)]
pub enum Command {
    Add {
        upstream: String,
        server: ServerSpec,
    },
    Remove {
        upstream: String,
        server: ServerRef,
    },
    SetState {
        upstream: String,
        server: ServerRef,
        state: AdminState,
    },
    SetWeight {
        upstream: String,
        server: ServerRef,
        weight: u32,
    },
    SetMaxConns {
        upstream: String,
        server: ServerRef,
        max_conns: u32,
    },
}

impl Command {
    fn upstream(&self) -> &str {
        match self {
            Command::Add { upstream, .. }
            | Command::Remove { upstream, .. }
            | Command::SetState { upstream, .. }
            | Command::SetWeight { upstream, .. }
            | Command::SetMaxConns { upstream, .. } => upstream,
        }
    }
}

/// Why a change was refused. A refused change leaves the table as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("no upstream named {0:?}")]
    UnknownUpstream(String),
    #[error("upstream {upstream:?} has no server {server}")]
    UnknownServer { upstream: String, server: String },
    #[error("upstream {upstream:?} already has a server {addr}")]
    DuplicateServer { upstream: String, addr: String },
    #[error("weight {0} out of range 1..=1000")]
    BadWeight(u32),
    #[error("cannot resolve server address {addr:?}: {reason}")]
    Resolve { addr: String, reason: String },
}

struct Writer {
    /// Next id per upstream; ids are never reused.
    next_id: BTreeMap<String, u32>,
}

/// Every upstream, and the one place that changes them.
pub struct Table {
    upstreams: BTreeMap<String, Arc<Upstream>>,
    writer: Mutex<Writer>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("upstreams", &self.upstreams.keys())
            .finish()
    }
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
        runtime: Arc::new(ServerRuntime::new(Pool::new(
            keepalive.max_idle,
            keepalive.idle_timeout,
        ))),
    }
}

/// Resolves `host:port`; an IP literal needs no lookup. The first address wins.
pub fn resolve(addr: &str) -> Result<SocketAddr, TableError> {
    if let Ok(sa) = addr.parse() {
        return Ok(sa);
    }
    let err = |reason: String| TableError::Resolve {
        addr: addr.to_string(),
        reason,
    };
    addr.to_socket_addrs()
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("no address found".into()))
}

impl Table {
    /// Builds the table from a validated configuration, resolving host names.
    pub fn from_config(config: &Config) -> Result<Table, TableError> {
        let mut specs = BTreeMap::new();
        for (name, up) in &config.upstreams {
            let servers = up
                .servers
                .iter()
                .map(|s| ServerSpec::resolve(s.clone()))
                .collect::<Result<Vec<_>, _>>()?;
            specs.insert(name.clone(), servers);
        }
        Ok(Table::from_resolved(config, specs))
    }

    fn from_resolved(config: &Config, specs: BTreeMap<String, Vec<ServerSpec>>) -> Table {
        let mut upstreams = BTreeMap::new();
        let mut next_id = BTreeMap::new();
        for (name, up) in &config.upstreams {
            let settings = UpstreamSettings {
                balance: up.balance,
                hash_key: up.hash_key.clone(),
                keepalive: up.keepalive,
                timeouts: up.timeouts,
                retry: up.retry,
            };
            let servers: Vec<Arc<Server>> = specs
                .get(name)
                .map(|list| {
                    list.iter()
                        .enumerate()
                        .map(|(i, spec)| Arc::new(new_server(i as u32, spec, up.keepalive)))
                        .collect()
                })
                .unwrap_or_default();
            next_id.insert(name.clone(), servers.len() as u32);
            let snapshot = Snapshot::build(up.balance, 1, servers);
            upstreams.insert(
                name.clone(),
                Arc::new(Upstream {
                    name: name.clone(),
                    settings,
                    snapshot: ArcSwap::from_pointee(snapshot),
                }),
            );
        }
        Table {
            upstreams,
            writer: Mutex::new(Writer { next_id }),
        }
    }

    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.get(name)
    }

    pub fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.upstreams.values()
    }

    /// Applies `commands` all together or not at all, and returns once every
    /// affected upstream's new snapshot is published. Returns the server each
    /// command touched, as it is after the change (a removed server as it was).
    pub fn apply(&self, commands: &[Command]) -> Result<Vec<Arc<Server>>, TableError> {
        // A poisoned lock means a writer panicked between building and
        // publishing; what is published is still consistent, so go on.
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut next_id = writer.next_id.clone();
        let mut working: BTreeMap<&str, Vec<Arc<Server>>> = BTreeMap::new();
        let mut touched = Vec::with_capacity(commands.len());
        let mut closed: Vec<Arc<Server>> = Vec::new();

        for cmd in commands {
            let name = cmd.upstream();
            let upstream = self
                .upstreams
                .get(name)
                .ok_or_else(|| TableError::UnknownUpstream(name.to_string()))?;
            let list = working
                .entry(upstream.name.as_str())
                .or_insert_with(|| upstream.snapshot().servers.clone());
            let find = |list: &[Arc<Server>], r: &ServerRef| {
                list.iter()
                    .position(|s| match r {
                        ServerRef::Id(id) => s.id == *id,
                        ServerRef::Addr(a) => s.addr == *a,
                    })
                    .ok_or_else(|| TableError::UnknownServer {
                        upstream: name.to_string(),
                        server: r.to_string(),
                    })
            };
            match cmd {
                Command::Add { server, .. } => {
                    if !(1..=1000).contains(&server.config.weight) {
                        return Err(TableError::BadWeight(server.config.weight));
                    }
                    if list.iter().any(|s| s.addr == server.config.addr) {
                        return Err(TableError::DuplicateServer {
                            upstream: name.to_string(),
                            addr: server.config.addr.clone(),
                        });
                    }
                    let id = next_id.entry(name.to_string()).or_insert(0);
                    let new = Arc::new(new_server(*id, server, upstream.settings.keepalive));
                    *id += 1;
                    list.push(Arc::clone(&new));
                    touched.push(new);
                }
                Command::Remove { server, .. } => {
                    let i = find(list, server)?;
                    let old = list.remove(i);
                    closed.push(Arc::clone(&old));
                    touched.push(old);
                }
                Command::SetState { server, state, .. } => {
                    let i = find(list, server)?;
                    let mut s = list[i].clone_settings();
                    s.state = *state;
                    let s = Arc::new(s);
                    if *state != AdminState::Up {
                        closed.push(Arc::clone(&s));
                    }
                    list[i] = Arc::clone(&s);
                    touched.push(s);
                }
                Command::SetWeight { server, weight, .. } => {
                    if !(1..=1000).contains(weight) {
                        return Err(TableError::BadWeight(*weight));
                    }
                    let i = find(list, server)?;
                    let mut s = list[i].clone_settings();
                    s.weight = *weight;
                    let s = Arc::new(s);
                    list[i] = Arc::clone(&s);
                    touched.push(s);
                }
                Command::SetMaxConns {
                    server, max_conns, ..
                } => {
                    let i = find(list, server)?;
                    let mut s = list[i].clone_settings();
                    s.max_conns = *max_conns;
                    let s = Arc::new(s);
                    list[i] = Arc::clone(&s);
                    touched.push(s);
                }
            }
        }

        for (name, servers) in working {
            if let Some(upstream) = self.upstreams.get(name) {
                let generation = upstream.snapshot().generation + 1;
                let next = Snapshot::build(upstream.settings.balance, generation, servers);
                upstream.snapshot.store(Arc::new(next));
            }
        }
        writer.next_id = next_id;
        drop(writer);
        // After publishing: no new request can pick these any more, so their idle
        // connections will not be wanted. In-flight ones finish on their own.
        for server in closed {
            server.runtime.pool.clear();
        }
        Ok(touched)
    }

    /// Closes idle connections that timed out, on every server.
    pub fn sweep_idle(&self) {
        for upstream in self.upstreams.values() {
            for server in &upstream.snapshot().servers {
                server.runtime.pool.sweep();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Tried;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    fn table(addrs: &[&str]) -> Table {
        let servers = addrs.iter().map(|a| ServerConfig::new(*a)).collect();
        Table::from_config(&Config::single_upstream(
            "127.0.0.1:0".parse().unwrap(),
            servers,
        ))
        .unwrap()
    }

    fn spec(addr: &str) -> ServerSpec {
        ServerSpec::resolve(ServerConfig::new(addr)).unwrap()
    }

    fn set(server: ServerRef, state: AdminState) -> Command {
        Command::SetState {
            upstream: "default".into(),
            server,
            state,
        }
    }

    #[test]
    fn ids_are_stable_and_never_reused() {
        let t = table(&["127.0.0.1:1", "127.0.0.1:2"]);
        let removed = t
            .apply(&[Command::Remove {
                upstream: "default".into(),
                server: ServerRef::Id(1),
            }])
            .unwrap();
        assert_eq!(removed[0].addr, "127.0.0.1:2");
        let added = t
            .apply(&[Command::Add {
                upstream: "default".into(),
                server: spec("127.0.0.1:2"),
            }])
            .unwrap();
        assert_eq!(
            added[0].id, 2,
            "a removed server's id is not handed out again"
        );
        let snap = t.upstream("default").unwrap().snapshot();
        let ids: Vec<u32> = snap.servers.iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![0, 2]);
    }

    #[test]
    fn counters_survive_a_swap() {
        let t = table(&["127.0.0.1:1"]);
        let before = Arc::clone(&t.upstream("default").unwrap().snapshot().servers[0]);
        before.runtime.stats.requests.store(41, Ordering::Relaxed);
        t.apply(&[Command::SetWeight {
            upstream: "default".into(),
            server: ServerRef::Addr("127.0.0.1:1".into()),
            weight: 5,
        }])
        .unwrap();
        let after = Arc::clone(&t.upstream("default").unwrap().snapshot().servers[0]);
        assert_eq!(after.weight, 5);
        assert_eq!(after.runtime.stats.requests.load(Ordering::Relaxed), 41);
        assert!(Arc::ptr_eq(&before.runtime, &after.runtime));
    }

    #[test]
    fn a_batch_with_one_bad_command_changes_nothing() {
        let t = table(&["127.0.0.1:1", "127.0.0.1:2"]);
        let generation = t.upstream("default").unwrap().snapshot().generation;
        let err = t
            .apply(&[
                set(ServerRef::Id(0), AdminState::Down),
                set(ServerRef::Addr("127.0.0.1:9".into()), AdminState::Down),
            ])
            .unwrap_err();
        assert_eq!(
            err,
            TableError::UnknownServer {
                upstream: "default".into(),
                server: "127.0.0.1:9".into()
            }
        );
        let snap = t.upstream("default").unwrap().snapshot();
        assert_eq!(snap.generation, generation);
        assert!(snap.servers.iter().all(|s| s.state == AdminState::Up));
        // Same for a bad weight, an unknown upstream and a duplicate add.
        for bad in [
            Command::SetWeight {
                upstream: "default".into(),
                server: ServerRef::Id(0),
                weight: 1001,
            },
            Command::Remove {
                upstream: "nope".into(),
                server: ServerRef::Id(0),
            },
            Command::Add {
                upstream: "default".into(),
                server: spec("127.0.0.1:1"),
            },
        ] {
            assert!(
                t.apply(&[set(ServerRef::Id(1), AdminState::Drain), bad])
                    .is_err()
            );
        }
        assert_eq!(
            t.upstream("default").unwrap().snapshot().generation,
            generation
        );
    }

    #[test]
    fn down_and_drained_servers_are_not_picked_and_backups_serve_only_when_no_primary_is_eligible()
    {
        let mut cfg = Config::single_upstream(
            "127.0.0.1:0".parse().unwrap(),
            vec![
                ServerConfig::new("127.0.0.1:1"),
                ServerConfig::new("127.0.0.1:2"),
            ],
        );
        let mut backup = ServerConfig::new("127.0.0.1:3");
        backup.backup = true;
        if let Some(u) = cfg.upstreams.get_mut("default") {
            u.servers.push(backup);
        }
        let t = Table::from_config(&cfg).unwrap();
        let up = t.upstream("default").unwrap();
        let pick = || {
            up.snapshot()
                .pick(None, &Tried::default(), 1)
                .map(|l| l.server().id)
        };
        assert_ne!(pick(), Some(2));
        t.apply(&[set(ServerRef::Id(0), AdminState::Down)]).unwrap();
        assert_eq!(pick(), Some(1));
        t.apply(&[set(ServerRef::Id(1), AdminState::Drain)])
            .unwrap();
        assert_eq!(
            pick(),
            Some(2),
            "the backup serves when no primary is eligible"
        );
        t.apply(&[set(ServerRef::Id(1), AdminState::Up)]).unwrap();
        assert_eq!(pick(), Some(1), "and hands back when one returns");
        t.apply(&[
            set(ServerRef::Id(2), AdminState::Down),
            set(ServerRef::Id(1), AdminState::Down),
        ])
        .unwrap();
        assert_eq!(pick(), None);
    }

    #[test]
    fn max_conns_caps_leases() {
        let t = table(&["127.0.0.1:1"]);
        t.apply(&[Command::SetMaxConns {
            upstream: "default".into(),
            server: ServerRef::Id(0),
            max_conns: 2,
        }])
        .unwrap();
        let snap = t.upstream("default").unwrap().snapshot();
        let a = snap.pick(None, &Tried::default(), 1);
        let b = snap.pick(None, &Tried::default(), 1);
        assert!(a.is_some() && b.is_some());
        assert!(snap.pick(None, &Tried::default(), 1).is_none());
        drop(a);
        assert!(snap.pick(None, &Tried::default(), 1).is_some());
    }

    /// The linearizability promise: once `apply` has returned, no pick that starts
    /// afterwards, on any thread, selects the server it set down.
    #[test]
    fn no_pick_after_apply_returns_selects_a_server_set_down() {
        let addrs: Vec<String> = (1..=4).map(|p| format!("127.0.0.1:{p}")).collect();
        let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        let t = Arc::new(table(&refs));
        const ROUNDS: u32 = 200;
        // `fence` holds `generation << 8 | id` of the last completed apply: the
        // snapshot generation it published and the server it set down.
        let fence = Arc::new(AtomicU64::new(u64::MAX));
        let stop = Arc::new(AtomicBool::new(false));
        let violations = Arc::new(AtomicU64::new(0));
        let picks = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..8)
            .map(|_| {
                let (t, fence, stop, violations, picks) = (
                    Arc::clone(&t),
                    Arc::clone(&fence),
                    Arc::clone(&stop),
                    Arc::clone(&violations),
                    Arc::clone(&picks),
                );
                std::thread::spawn(move || {
                    let up = Arc::clone(t.upstream("default").unwrap());
                    while !stop.load(Ordering::SeqCst) {
                        let f = fence.load(Ordering::SeqCst);
                        let snap = up.snapshot();
                        let lease = snap.pick(None, &Tried::default(), 1);
                        if f == u64::MAX {
                            continue;
                        }
                        let (published, down) = (f >> 8, f & 0xff);
                        // A pick that starts after apply returned must see that
                        // snapshot or a later one...
                        if snap.generation < published {
                            violations.fetch_add(1, Ordering::SeqCst);
                        }
                        if let Some(lease) = lease {
                            picks.fetch_add(1, Ordering::Relaxed);
                            // ...and in that snapshot, not the server it set down.
                            if snap.generation == published && u64::from(lease.server().id) == down
                            {
                                violations.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                })
            })
            .collect();
        for round in 0..ROUNDS {
            let id = round % 4;
            let prev = (round + 3) % 4;
            t.apply(&[
                set(ServerRef::Id(prev), AdminState::Up),
                set(ServerRef::Id(id), AdminState::Down),
            ])
            .unwrap();
            let published = t.upstream("default").unwrap().snapshot().generation;
            fence.store(published << 8 | u64::from(id), Ordering::SeqCst);
            // Let the workers pick a while under this table.
            let seen = picks.load(Ordering::Relaxed);
            while picks.load(Ordering::Relaxed) < seen + 200 {
                std::hint::spin_loop();
            }
        }
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(violations.load(Ordering::SeqCst), 0);
        assert!(picks.load(Ordering::Relaxed) >= u64::from(ROUNDS) * 200);
    }
}
