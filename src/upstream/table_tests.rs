//! Tests of the table's writer: ids, swaps, batches, linearizability.

use super::*;
use crate::config::{Balance, HashKey, ServerConfig};
use crate::upstream::{AdminState, ServerPatch, ServerRef, ServerSpec, Tried, UpstreamSettings};
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
        .apply_blocking(&[Command::Remove {
            upstream: "default".into(),
            server: ServerRef::Id(1),
        }])
        .unwrap();
    assert_eq!(removed[0].addr, "127.0.0.1:2");
    let added = t
        .apply_blocking(&[Command::Add {
            upstream: "default".into(),
            server: spec("127.0.0.1:2"),
        }])
        .unwrap();
    assert_eq!(
        added[0].id, 2,
        "a removed server's id is not handed out again"
    );
    let up = t.upstream("default").unwrap();
    let snap = up.snapshot();
    let ids: Vec<u32> = snap.servers.iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![0, 2]);
}

#[test]
fn counters_survive_a_swap() {
    let t = table(&["127.0.0.1:1"]);
    let before = Arc::clone(&t.upstream("default").unwrap().snapshot().servers[0]);
    before.runtime.stats.requests.store(41, Ordering::Relaxed);
    t.apply_blocking(&[Command::SetWeight {
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
        .apply_blocking(&[
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
    let up = t.upstream("default").unwrap();
    let snap = up.snapshot();
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
            t.apply_blocking(&[set(ServerRef::Id(1), AdminState::Drain), bad])
                .is_err()
        );
    }
    assert_eq!(
        t.upstream("default").unwrap().snapshot().generation,
        generation
    );
}

#[test]
fn down_and_drained_servers_are_not_picked_and_backups_serve_only_when_no_primary_is_eligible() {
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
    // Each pick reads the table anew, as each request does.
    let pick = || {
        t.upstream("default")
            .unwrap()
            .snapshot()
            .pick(None, &Tried::default(), 1)
            .map(|l| l.server().id)
    };
    assert_ne!(pick(), Some(2));
    t.apply_blocking(&[set(ServerRef::Id(0), AdminState::Down)])
        .unwrap();
    assert_eq!(pick(), Some(1));
    t.apply_blocking(&[set(ServerRef::Id(1), AdminState::Drain)])
        .unwrap();
    assert_eq!(
        pick(),
        Some(2),
        "the backup serves when no primary is eligible"
    );
    t.apply_blocking(&[set(ServerRef::Id(1), AdminState::Up)])
        .unwrap();
    assert_eq!(pick(), Some(1), "and hands back when one returns");
    t.apply_blocking(&[
        set(ServerRef::Id(2), AdminState::Down),
        set(ServerRef::Id(1), AdminState::Down),
    ])
    .unwrap();
    assert_eq!(pick(), None);
}

#[test]
fn max_conns_caps_leases() {
    let t = table(&["127.0.0.1:1"]);
    t.apply_blocking(&[Command::SetMaxConns {
        upstream: "default".into(),
        server: ServerRef::Id(0),
        max_conns: 2,
    }])
    .unwrap();
    let up = t.upstream("default").unwrap();
    let snap = up.snapshot();
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
                while !stop.load(Ordering::SeqCst) {
                    let f = fence.load(Ordering::SeqCst);
                    let table = t.load();
                    let snap = table.upstreams["default"].snapshot();
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
                        if snap.generation == published && u64::from(lease.server().id) == down {
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
        t.apply_blocking(&[
            set(ServerRef::Id(prev), AdminState::Up),
            set(ServerRef::Id(id), AdminState::Down),
        ])
        .unwrap();
        let published = t.load().generation;
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

#[test]
fn upstreams_can_be_created_and_deleted_and_routes_keep_their_slot() {
    let t = table(&["127.0.0.1:1"]);
    let slot = t.slot("blue");
    assert!(t.load().by_slot(slot).is_none());
    t.apply_blocking(&[Command::CreateUpstream {
        name: "blue".into(),
        settings: UpstreamSettings::default(),
        servers: vec![spec("127.0.0.1:7"), spec("127.0.0.1:8")],
    }])
    .unwrap();
    let blue = t.load().by_slot(slot).cloned().unwrap();
    assert_eq!(blue.snapshot().servers.len(), 2);
    assert_eq!(
        t.apply_blocking(&[Command::CreateUpstream {
            name: "blue".into(),
            settings: UpstreamSettings::default(),
            servers: vec![],
        }])
        .unwrap_err(),
        TableError::UpstreamExists("blue".into())
    );
    t.apply_blocking(&[Command::DeleteUpstream {
        name: "blue".into(),
    }])
    .unwrap();
    assert!(t.load().by_slot(slot).is_none());
    assert_eq!(t.slot("blue"), slot);
}

#[test]
fn a_batch_across_upstreams_is_published_in_one_swap() {
    let t = table(&["127.0.0.1:1"]);
    let before = t.load().generation;
    t.apply_blocking(&[
        Command::CreateUpstream {
            name: "green".into(),
            settings: UpstreamSettings::default(),
            servers: vec![spec("127.0.0.1:5")],
        },
        set(ServerRef::Id(0), AdminState::Drain),
        Command::Add {
            upstream: "green".into(),
            server: spec("127.0.0.1:6"),
        },
    ])
    .unwrap();
    let now = t.load();
    assert_eq!(now.generation, before + 1);
    assert_eq!(now.upstreams["green"].snapshot().servers.len(), 2);
    assert_eq!(
        now.upstreams["default"].snapshot().servers[0].state,
        AdminState::Drain
    );
}

#[test]
fn patch_changes_several_fields_and_refuses_backup_with_hash() {
    let t = table(&["127.0.0.1:1"]);
    let out = t
        .apply_blocking(&[Command::Patch {
            upstream: "default".into(),
            server: ServerRef::Id(0),
            patch: ServerPatch {
                weight: Some(7),
                max_fails: Some(4),
                fail_timeout: Some(Duration::from_secs(3)),
                backup: Some(true),
                ..Default::default()
            },
        }])
        .unwrap();
    assert_eq!(
        (
            out[0].weight,
            out[0].max_fails,
            out[0].fail_timeout,
            out[0].backup
        ),
        (7, 4, Duration::from_secs(3), true)
    );
    let settings = UpstreamSettings {
        balance: Balance::Hash,
        hash_key: Some(HashKey::Uri),
        ..Default::default()
    };
    t.apply_blocking(&[Command::CreateUpstream {
        name: "h".into(),
        settings,
        servers: vec![spec("127.0.0.1:2")],
    }])
    .unwrap();
    let err = t
        .apply_blocking(&[Command::Patch {
            upstream: "h".into(),
            server: ServerRef::Id(0),
            patch: ServerPatch {
                backup: Some(true),
                ..Default::default()
            },
        }])
        .unwrap_err();
    assert_eq!(err, TableError::BackupWithHash("hash"));
}

#[test]
fn every_change_is_an_event_with_old_and_new_in_order() {
    let t = table(&["127.0.0.1:1"]);
    let mut rx = t.subscribe();
    t.apply_as_blocking(
        &[
            set(ServerRef::Id(0), AdminState::Drain),
            Command::Add {
                upstream: "default".into(),
                server: spec("127.0.0.1:2"),
            },
        ],
        "127.0.0.1:5555",
    )
    .unwrap();
    let a = rx.try_recv().unwrap();
    let b = rx.try_recv().unwrap();
    assert_eq!(
        (a.change.as_str(), a.old.as_deref(), a.new.as_deref()),
        ("state", Some("up"), Some("drain"))
    );
    assert_eq!(a.origin, "127.0.0.1:5555");
    assert_eq!((b.change.as_str(), b.id), ("server_added", Some(1)));
    assert_eq!(b.seq, a.seq + 1);
    assert!(rx.try_recv().is_err());
}

#[derive(Debug, Default)]
struct FlakyStore {
    fail: std::sync::atomic::AtomicBool,
    saved: Mutex<Option<crate::state::StateDoc>>,
}

impl StateStore for FlakyStore {
    fn load(&self) -> Result<Option<crate::state::StateDoc>, StateError> {
        Ok(self.saved.lock().unwrap().clone())
    }
    fn save(&self, doc: &crate::state::StateDoc) -> Result<(), StateError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StateError::Write {
                path: "flaky".into(),
                source: std::io::Error::other("disk full"),
            });
        }
        *self.saved.lock().unwrap() = Some(doc.clone());
        Ok(())
    }
    fn describe(&self) -> String {
        "flaky".into()
    }
}

#[test]
fn a_change_the_store_refuses_is_not_applied() {
    let store = Arc::new(FlakyStore::default());
    let cfg = Config::single_upstream(
        "127.0.0.1:0".parse().unwrap(),
        vec![ServerConfig::new("127.0.0.1:1")],
    );
    let t = Table::open(&cfg, Some(store.clone() as Arc<dyn StateStore>)).unwrap();
    store.fail.store(true, Ordering::SeqCst);
    let err = t
        .apply_blocking(&[set(ServerRef::Id(0), AdminState::Down)])
        .unwrap_err();
    assert!(
        matches!(err, TableError::Store(ref m) if m.contains("disk full")),
        "{err}"
    );
    assert_eq!(
        t.upstream("default").unwrap().snapshot().servers[0].state,
        AdminState::Up
    );
    assert!(store.saved.lock().unwrap().is_none());
}

#[test]
fn a_reopened_table_has_the_saved_servers_states_and_ids() {
    let store = Arc::new(FlakyStore::default());
    let cfg = Config::single_upstream(
        "127.0.0.1:0".parse().unwrap(),
        vec![
            ServerConfig::new("127.0.0.1:1"),
            ServerConfig::new("127.0.0.1:2"),
        ],
    );
    let t = Table::open(&cfg, Some(store.clone() as Arc<dyn StateStore>)).unwrap();
    t.apply_blocking(&[
        Command::Remove {
            upstream: "default".into(),
            server: ServerRef::Id(0),
        },
        set(ServerRef::Id(1), AdminState::Drain),
        Command::Add {
            upstream: "default".into(),
            server: spec("127.0.0.1:3"),
        },
        Command::CreateUpstream {
            name: "extra".into(),
            settings: UpstreamSettings::default(),
            servers: vec![spec("127.0.0.1:4")],
        },
    ])
    .unwrap();
    let again = Table::open(&cfg, Some(store as Arc<dyn StateStore>)).unwrap();
    let up = again.upstream("default").unwrap();
    let got: Vec<(u32, &str, AdminState)> = up
        .snapshot()
        .servers
        .iter()
        .map(|s| (s.id, s.addr.as_str(), s.state))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "127.0.0.1:2", AdminState::Drain),
            (2, "127.0.0.1:3", AdminState::Up)
        ]
    );
    assert!(again.upstream("extra").is_some());
    // Ids go on from where they were: 3, not a reused 0.
    let added = again
        .apply_blocking(&[Command::Add {
            upstream: "default".into(),
            server: spec("127.0.0.1:9"),
        }])
        .unwrap();
    assert_eq!(added[0].id, 3);
}

#[test]
fn a_config_upstream_deleted_and_created_again_through_the_api_reopens_with_the_apis_settings() {
    let store = Arc::new(FlakyStore::default());
    let cfg = Config::single_upstream(
        "127.0.0.1:0".parse().unwrap(),
        vec![ServerConfig::new("127.0.0.1:1")],
    );
    let t = Table::open(&cfg, Some(store.clone() as Arc<dyn StateStore>)).unwrap();
    let settings = UpstreamSettings {
        balance: Balance::LeastConn,
        ..UpstreamSettings::default()
    };
    t.apply_blocking(&[
        Command::DeleteUpstream {
            name: "default".into(),
        },
        Command::CreateUpstream {
            name: "default".into(),
            settings: settings.clone(),
            servers: vec![spec("127.0.0.1:2")],
        },
    ])
    .unwrap();
    let again = Table::open(&cfg, Some(store as Arc<dyn StateStore>)).unwrap();
    let up = again.upstream("default").unwrap();
    assert_eq!(up.settings, settings, "not the config's round robin");
    assert_eq!(up.snapshot().servers[0].addr, "127.0.0.1:2");
}

/// The table's saved form with `edit` applied: what a shared store would hold
/// after another instance's change.
fn edited(t: &Table, edit: impl FnOnce(&mut crate::state::StateDoc)) -> crate::state::StateDoc {
    let mut doc = t.saved_form();
    edit(&mut doc);
    doc
}

#[test]
fn follow_applies_the_difference_by_id_and_keeps_runtimes() {
    let t = table(&["127.0.0.1:1", "127.0.0.1:2"]);
    let kept = Arc::clone(&t.upstream("default").unwrap().snapshot().servers[0]);
    kept.runtime.stats.requests.store(7, Ordering::Relaxed);
    let doc = edited(&t, |d| {
        let up = d.upstreams.get_mut("default").unwrap();
        up.servers[0].state = AdminState::Drain;
        up.servers[0].weight = 5;
        up.servers.remove(1);
        let mut s = up.servers[0].clone();
        s.id = 9;
        s.addr = "127.0.0.1:9".into();
        s.state = AdminState::Down;
        up.servers.push(s);
        up.next_id = 10;
    });
    let adopted = Mutex::new(None);
    let adopt = |d: &crate::state::StateDoc| {
        *adopted.lock().unwrap() = Some(d.clone());
        Ok(())
    };
    let n = t.follow(&doc, "cluster", &adopt).unwrap();
    assert_eq!(n, 3, "patch, remove, restore");
    let snap = t.upstream("default").unwrap();
    let servers = &snap.snapshot().servers;
    let got: Vec<(u32, &str, AdminState, u32)> = servers
        .iter()
        .map(|s| (s.id, s.addr.as_str(), s.state, s.weight))
        .collect();
    assert_eq!(
        got,
        [
            (0, "127.0.0.1:1", AdminState::Drain, 5),
            (9, "127.0.0.1:9", AdminState::Down, 5)
        ]
    );
    assert!(
        Arc::ptr_eq(&servers[0].runtime, &kept.runtime),
        "a server that stays keeps its counters"
    );
    assert_eq!(t.saved_form(), doc, "the table is now what the store says");
    assert_eq!(adopted.lock().unwrap().as_ref(), Some(&doc));
    // The next id given out locally follows the store's.
    let added = t
        .apply_blocking(&[Command::Add {
            upstream: "default".into(),
            server: spec("127.0.0.1:3"),
        }])
        .unwrap();
    assert_eq!(added[0].id, 10);
}

#[test]
fn follow_creates_and_deletes_upstreams() {
    let t = table(&["127.0.0.1:1"]);
    let doc = edited(&t, |d| {
        let mut up = d.upstreams.remove("default").unwrap();
        up.servers[0].id = 4;
        up.next_id = 5;
        d.upstreams.insert("other".into(), up);
        d.deleted.insert("default".into());
    });
    t.follow(&doc, "cluster", &|_| Ok(())).unwrap();
    assert!(t.upstream("default").is_none());
    let other = t.upstream("other").unwrap();
    assert_eq!(other.snapshot().servers[0].id, 4);
    assert_eq!(t.saved_form(), doc);
}

#[test]
fn follow_refused_by_the_store_changes_nothing() {
    let t = table(&["127.0.0.1:1"]);
    let doc = edited(&t, |d| {
        d.upstreams.get_mut("default").unwrap().servers[0].state = AdminState::Down;
    });
    let n = t
        .follow(&doc, "cluster", &|_| {
            Err(StateError::Conflict { revision: 99 })
        })
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(
        t.upstream("default").unwrap().snapshot().servers[0].state,
        AdminState::Up,
        "a stale view does not overwrite a newer local change"
    );
}

/// A store that refuses the first `conflicts` saves as if another instance
/// had written first, and counts how often it was asked to catch up; while
/// `stuck`, it cannot catch up.
#[derive(Debug, Default)]
struct ContendedStore {
    conflicts: AtomicU64,
    catch_ups: AtomicU64,
    saves: AtomicU64,
    stuck: AtomicBool,
}

impl StateStore for ContendedStore {
    fn load(&self) -> Result<Option<crate::state::StateDoc>, StateError> {
        Ok(None)
    }
    fn save(&self, _: &crate::state::StateDoc) -> Result<(), StateError> {
        self.saves.fetch_add(1, Ordering::SeqCst);
        if self.conflicts.load(Ordering::SeqCst) > 0 {
            self.conflicts.fetch_sub(1, Ordering::SeqCst);
            return Err(StateError::Conflict { revision: 7 });
        }
        Ok(())
    }
    fn describe(&self) -> String {
        "contended".into()
    }
    fn catch_up(&self, revision: u64, _: std::time::Duration) -> bool {
        assert_eq!(revision, 7);
        self.catch_ups.fetch_add(1, Ordering::SeqCst);
        !self.stuck.load(Ordering::SeqCst)
    }
}

#[test]
fn a_conflicting_write_is_run_again_after_catching_up_then_refused_with_409() {
    let store = Arc::new(ContendedStore::default());
    let cfg = Config::single_upstream(
        "127.0.0.1:0".parse().unwrap(),
        vec![ServerConfig::new("127.0.0.1:1")],
    );
    let t = Table::open(&cfg, Some(store.clone() as Arc<dyn StateStore>)).unwrap();
    store.conflicts.store(2, Ordering::SeqCst);
    t.apply_blocking(&[set(ServerRef::Id(0), AdminState::Down)])
        .unwrap();
    assert_eq!(store.saves.load(Ordering::SeqCst), 3);
    assert_eq!(store.catch_ups.load(Ordering::SeqCst), 2);
    assert_eq!(
        t.upstream("default").unwrap().snapshot().servers[0].state,
        AdminState::Down
    );

    // Refused again and again, and the table cannot catch up: 409.
    store.conflicts.store(1000, Ordering::SeqCst);
    store.stuck.store(true, Ordering::SeqCst);
    let err = t
        .apply_blocking(&[set(ServerRef::Id(0), AdminState::Up)])
        .unwrap_err();
    assert!(matches!(err, TableError::Conflict(_)), "{err}");
    assert_eq!(
        t.upstream("default").unwrap().snapshot().servers[0].state,
        AdminState::Down,
        "a refused change is not applied"
    );
}

#[test]
fn an_unreachable_store_refuses_with_store_unavailable() {
    #[derive(Debug)]
    struct Down;
    impl StateStore for Down {
        fn load(&self) -> Result<Option<crate::state::StateDoc>, StateError> {
            Ok(None)
        }
        fn save(&self, _: &crate::state::StateDoc) -> Result<(), StateError> {
            Err(StateError::Unavailable("connection refused".into()))
        }
        fn describe(&self) -> String {
            "down".into()
        }
    }
    let cfg = Config::single_upstream(
        "127.0.0.1:0".parse().unwrap(),
        vec![ServerConfig::new("127.0.0.1:1")],
    );
    let t = Table::open(&cfg, Some(Arc::new(Down) as Arc<dyn StateStore>)).unwrap();
    let err = t
        .apply_blocking(&[set(ServerRef::Id(0), AdminState::Down)])
        .unwrap_err();
    assert!(
        matches!(err, TableError::StoreUnavailable(ref m) if m.contains("connection refused")),
        "{err}"
    );
}

#[test]
fn follow_leaves_out_what_this_table_refuses_and_applies_the_rest() {
    let t = table(&["127.0.0.1:1"]);
    let doc = edited(&t, |d| {
        let up = d.upstreams.get_mut("default").unwrap();
        let mut dup = up.servers[0].clone();
        dup.id = 5; // the same address under a second id: refused here
        let mut fresh = up.servers[0].clone();
        fresh.id = 6;
        fresh.addr = "127.0.0.1:6".into();
        up.servers[0].weight = 9;
        up.servers.push(dup);
        up.servers.push(fresh);
        up.next_id = 7;
    });
    let adopted = AtomicBool::new(false);
    let n = t
        .follow(&doc, "cluster", &|_| {
            adopted.store(true, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
    assert_eq!(
        n, 2,
        "the weight and the new server; the duplicate left out"
    );
    let up = t.upstream("default").unwrap();
    let got: Vec<(u32, u32)> = up
        .snapshot()
        .servers
        .iter()
        .map(|s| (s.id, s.weight))
        .collect();
    assert_eq!(got, [(0, 9), (6, 1)]);
    assert!(
        adopted.load(Ordering::SeqCst),
        "the revision still counts as applied"
    );
}

/// A store whose every save takes 20 ms, counting saves.
#[derive(Debug, Default)]
struct Slow {
    saves: AtomicU64,
}

impl StateStore for Slow {
    fn load(&self) -> Result<Option<crate::state::StateDoc>, StateError> {
        Ok(None)
    }
    fn save(&self, _: &crate::state::StateDoc) -> Result<(), StateError> {
        std::thread::sleep(Duration::from_millis(20));
        self.saves.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn describe(&self) -> String {
        "slow".into()
    }
}

#[test]
fn concurrent_batches_are_saved_together_and_each_gets_its_own_answer() {
    let cfg = Config::single_upstream(
        "127.0.0.1:0".parse().unwrap(),
        vec![ServerConfig::new("127.0.0.1:1")],
    );
    let store = Arc::new(Slow::default());
    let t = Arc::new(Table::open(&cfg, Some(Arc::clone(&store) as Arc<dyn StateStore>)).unwrap());
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let t = Arc::clone(&t);
            std::thread::spawn(move || {
                // Every fourth batch is refused by its plan: it must not take
                // the others down with it.
                let addr = if i % 4 == 3 {
                    "127.0.0.1:1".to_string()
                } else {
                    format!("127.0.0.1:{}", 100 + i)
                };
                let r = t.apply_blocking(&[Command::Add {
                    upstream: "default".into(),
                    server: spec(&addr),
                }]);
                (addr, r)
            })
        })
        .collect();
    let mut ids = Vec::new();
    for th in threads {
        let (addr, r) = th.join().unwrap();
        if addr == "127.0.0.1:1" {
            assert!(
                matches!(r, Err(TableError::DuplicateServer { .. })),
                "{r:?}"
            );
        } else {
            let touched = r.unwrap();
            assert_eq!(touched[0].addr, addr);
            ids.push(touched[0].id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 12, "each add its own id");
    assert_eq!(t.upstream("default").unwrap().snapshot().servers.len(), 13);
    let saves = store.saves.load(Ordering::Relaxed);
    assert!(
        saves < 12,
        "adds waiting together were saved together: {saves} saves"
    );
}
