//! A property test of the table's single writer: seeded random sequences of
//! operations through `Table::apply` (add, remove, set state, set weight, patch,
//! batches of several, create and delete upstream, valid and invalid alike) keep
//! the table consistent, a refused operation changes nothing, and the state file
//! written along the way reloads to an equal table.
//!
//! A seeded loop over `fastrand` (already a dependency) rather than proptest: no
//! new dependency, and a failure prints its seed; `TABLE_PROPS_SEED=N` replays
//! one seed, `TABLE_PROPS_OPS=N` changes the length of each run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use switchyard::config::{Balance, Config, HashKey, ServerConfig};
use switchyard::state::{FileStore, StateStore};
use switchyard::upstream::{
    AdminState, Command, ServerPatch, ServerRef, ServerSpec, Table, UpstreamSettings,
};

/// Upstream names the operations draw from; `ghost` is never in the config.
const NAMES: [&str; 4] = ["default", "hashy", "extra", "ghost"];
/// Server addresses the operations draw from (few, so duplicates happen).
const PORTS: std::ops::Range<u16> = 1..9;
/// A port outside [`PORTS`], for probes.
const PROBE_PORT: u16 = 60_000;
const WEIGHTS: [u32; 6] = [0, 1, 2, 5, 1000, 1001];
const STATES: [AdminState; 3] = [AdminState::Up, AdminState::Down, AdminState::Drain];

/// Everything of a server that is saved.
#[derive(Debug, Clone, PartialEq)]
struct ServerDump {
    id: u32,
    addr: String,
    state: AdminState,
    weight: u32,
    backup: bool,
    max_conns: u32,
    max_fails: u32,
    fail_timeout: Duration,
    slow_start: Duration,
}

type Dump = BTreeMap<String, (UpstreamSettings, Vec<ServerDump>)>;

fn dump(t: &Table) -> Dump {
    t.load()
        .upstreams
        .iter()
        .map(|(name, u)| {
            let servers = u
                .snapshot()
                .servers
                .iter()
                .map(|s| ServerDump {
                    id: s.id,
                    addr: s.addr.clone(),
                    state: s.state,
                    weight: s.weight,
                    backup: s.backup,
                    max_conns: s.max_conns,
                    max_fails: s.max_fails,
                    fail_timeout: s.fail_timeout,
                    slow_start: s.slow_start,
                })
                .collect();
            (name.clone(), (u.settings.clone(), servers))
        })
        .collect()
}

/// `default` (round robin over two servers) and `hashy` (hash by uri, one server).
fn base_config() -> Config {
    let mut cfg = Config::single_upstream(
        "127.0.0.1:0".parse().unwrap(),
        vec![
            ServerConfig::new("127.0.0.1:1"),
            ServerConfig::new("127.0.0.1:2"),
        ],
    );
    let mut hashy = cfg.upstreams["default"].clone();
    hashy.name = "hashy".into();
    hashy.balance = Balance::Hash;
    hashy.hash_key = Some(HashKey::parse("uri").unwrap());
    hashy.servers = vec![ServerConfig::new("127.0.0.1:3")];
    cfg.upstreams.insert("hashy".into(), hashy);
    cfg
}

fn pick<T: Copy>(rng: &mut fastrand::Rng, items: &[T]) -> T {
    items[rng.usize(..items.len())]
}

fn spec(rng: &mut fastrand::Rng) -> ServerSpec {
    let mut c = ServerConfig::new(format!("127.0.0.1:{}", rng.u16(PORTS)));
    c.weight = pick(rng, &WEIGHTS);
    c.backup = rng.u8(..5) == 0;
    c.down = rng.bool();
    ServerSpec::resolve(c).unwrap()
}

fn server_ref(rng: &mut fastrand::Rng) -> ServerRef {
    if rng.bool() {
        ServerRef::Id(rng.u32(..12))
    } else {
        ServerRef::Addr(format!("127.0.0.1:{}", rng.u16(PORTS)))
    }
}

fn command(rng: &mut fastrand::Rng) -> Command {
    let upstream = pick(rng, &NAMES).to_string();
    match rng.u8(..8) {
        0 | 1 => Command::Add {
            upstream,
            server: spec(rng),
        },
        2 => Command::Remove {
            upstream,
            server: server_ref(rng),
        },
        3 => Command::SetState {
            upstream,
            server: server_ref(rng),
            state: pick(rng, &STATES),
        },
        4 => Command::SetWeight {
            upstream,
            server: server_ref(rng),
            weight: pick(rng, &WEIGHTS),
        },
        5 => Command::Patch {
            upstream,
            server: server_ref(rng),
            patch: ServerPatch {
                state: rng.bool().then(|| pick(rng, &STATES)),
                weight: rng.bool().then(|| pick(rng, &WEIGHTS)),
                max_conns: rng.bool().then(|| rng.u32(..20)),
                max_fails: rng.bool().then(|| rng.u32(..5)),
                fail_timeout: rng.bool().then(|| Duration::from_millis(rng.u64(..60_000))),
                slow_start: None,
                backup: (rng.u8(..4) == 0).then(|| rng.bool()),
            },
        },
        6 => {
            let mut settings = UpstreamSettings::default();
            if rng.bool() {
                settings.balance = Balance::Hash;
                settings.hash_key = HashKey::parse("header:x-user");
            } else if rng.bool() {
                settings.balance = Balance::LeastConn;
            }
            let servers = (0..rng.usize(..3)).map(|_| spec(rng)).collect();
            Command::CreateUpstream {
                name: upstream,
                settings,
                servers,
            }
        }
        _ => Command::DeleteUpstream { name: upstream },
    }
}

/// Checks what must hold of any table.
fn check_consistent(d: &Dump, context: &str) {
    for (name, (settings, servers)) in d {
        let ids: Vec<u32> = servers.iter().map(|s| s.id).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{context}: {name}: ids not unique and in order: {ids:?}"
        );
        let addrs: BTreeSet<&str> = servers.iter().map(|s| s.addr.as_str()).collect();
        assert_eq!(
            addrs.len(),
            servers.len(),
            "{context}: {name}: duplicate addr"
        );
        for s in servers {
            assert!((1..=1000).contains(&s.weight), "{context}: {name}: {s:?}");
            assert!(STATES.contains(&s.state));
            if matches!(settings.balance, Balance::Hash | Balance::IpHash) {
                assert!(!s.backup, "{context}: {name}: backup with hash: {s:?}");
            }
        }
    }
}

struct Run {
    seed: u64,
    table: Table,
    config: Config,
    state: std::path::PathBuf,
    dir: tempfile::TempDir,
    /// Highest id ever seen per upstream (since its latest creation).
    max_seen: BTreeMap<String, u32>,
    applied: usize,
    refused: usize,
    reloads: usize,
}

impl Run {
    fn new(seed: u64) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let config = base_config();
        let store: Arc<dyn StateStore> = Arc::new(FileStore::new(&state));
        let table = Table::open(&config, Some(store)).unwrap();
        let mut run = Run {
            seed,
            table,
            config,
            state,
            dir,
            max_seen: BTreeMap::new(),
            applied: 0,
            refused: 0,
            reloads: 0,
        };
        let d = dump(&run.table);
        run.note_ids(&d);
        run
    }

    fn note_ids(&mut self, d: &Dump) {
        for (name, (_, servers)) in d {
            if let Some(top) = servers.iter().map(|s| s.id).max() {
                let m = self.max_seen.entry(name.clone()).or_insert(top);
                *m = (*m).max(top);
            }
        }
    }

    /// Applies `commands` and checks the table before and after.
    fn step(&mut self, commands: &[Command], context: &str) -> bool {
        let before = dump(&self.table);
        let generation = self.table.load().generation;
        let mut events = self.table.subscribe();
        let result = self.table.apply_blocking(commands);
        let after = dump(&self.table);
        check_consistent(&after, context);
        match result {
            Err(e) => {
                self.refused += 1;
                assert_eq!(after, before, "{context}: refused ({e}) but changed");
                assert_eq!(
                    self.table.load().generation,
                    generation,
                    "{context}: refused ({e}) but the generation moved"
                );
                assert!(
                    events.try_recv().is_err(),
                    "{context}: refused ({e}) but sent an event"
                );
                false
            }
            Ok(_) => {
                self.applied += 1;
                assert_eq!(self.table.load().generation, generation + 1, "{context}");
                // A (re)created upstream starts its own ids.
                for c in commands {
                    if let Command::CreateUpstream { name, .. } = c {
                        self.max_seen.remove(name);
                    }
                }
                for (name, (_, servers)) in &after {
                    let old: BTreeSet<u32> = before
                        .get(name)
                        .map(|(_, s)| s.iter().map(|s| s.id).collect())
                        .unwrap_or_default();
                    let max = self.max_seen.get(name).copied();
                    for s in servers.iter().filter(|s| !old.contains(&s.id)) {
                        assert!(
                            max.is_none_or(|m| s.id > m),
                            "{context}: {name}: new id {} reuses one (max seen {max:?})",
                            s.id
                        );
                    }
                }
                self.note_ids(&after);
                true
            }
        }
    }

    /// Reloads a copy of the state file with the same config: the same table, and
    /// the next id of every upstream is the same as in the running table.
    fn check_reload(&mut self, context: &str) {
        self.reloads += 1;
        if !self.state.exists() {
            return; // nothing applied yet
        }
        let copy = self.dir.path().join("reload.json");
        std::fs::copy(&self.state, &copy).unwrap();
        let store: Arc<dyn StateStore> = Arc::new(FileStore::new(&copy));
        let reloaded = Table::open(&self.config, Some(store))
            .unwrap_or_else(|e| panic!("{context}: the state file does not reload: {e}"));
        let (running, back) = (dump(&self.table), dump(&reloaded));
        assert_eq!(back, running, "{context}: the reloaded table differs");

        for name in running.keys() {
            let probe = Command::Add {
                upstream: name.clone(),
                server: ServerSpec::resolve(ServerConfig::new(format!("127.0.0.1:{PROBE_PORT}")))
                    .unwrap(),
            };
            let there = reloaded
                .apply_blocking(std::slice::from_ref(&probe))
                .unwrap()[0]
                .id;
            assert!(
                self.step(std::slice::from_ref(&probe), context),
                "{context}: probe refused"
            );
            let here = dump(&self.table)[name]
                .1
                .iter()
                .find(|s| s.addr.ends_with(&PROBE_PORT.to_string()))
                .unwrap()
                .id;
            assert_eq!(
                there, here,
                "{context}: {name}: next id differs after reload"
            );
            let remove = Command::Remove {
                upstream: name.clone(),
                server: ServerRef::Id(here),
            };
            assert!(
                self.step(&[remove], context),
                "{context}: probe not removed"
            );
        }
    }
}

fn run_seed(seed: u64, ops: usize) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut run = Run::new(seed);
    for i in 0..ops {
        let n = if rng.u8(..4) == 0 { rng.usize(2..5) } else { 1 };
        let commands: Vec<Command> = (0..n).map(|_| command(&mut rng)).collect();
        let context = format!("seed {seed}, op {i}: {commands:?}");
        run.step(&commands, &context);
        if i % 40 == 39 {
            run.check_reload(&format!("seed {seed}, reload after op {i}"));
        }
    }
    run.check_reload(&format!("seed {seed}, final reload"));
    assert!(
        run.applied > ops / 10 && run.refused > ops / 10,
        "seed {}: the run should both apply and refuse often (applied {}, refused {})",
        run.seed,
        run.applied,
        run.refused
    );
    assert!(run.reloads > 0);
}

#[test]
fn random_operations_keep_the_table_consistent_refusals_change_nothing_and_the_state_file_reloads_equal()
 {
    let ops = std::env::var("TABLE_PROPS_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seeds: Vec<u64> = match std::env::var("TABLE_PROPS_SEED") {
        Ok(s) => vec![s.parse().expect("TABLE_PROPS_SEED is a number")],
        Err(_) => vec![1, 2, 3, 4],
    };
    for seed in seeds {
        run_seed(seed, ops);
    }
}
