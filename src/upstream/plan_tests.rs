//! Tests of the plan alone: a snapshot and commands in, drafts, events, effects
//! and the ledger out, with no table, store or lock around it.

use super::*;
use crate::config::{Config, ServerConfig};
use crate::upstream::start::assemble;

const NOW: u64 = 42;

/// The first snapshot and ledger of a table with one upstream, `default`.
fn start(addrs: &[&str]) -> (TableSnapshot, Ledger) {
    let servers = addrs.iter().map(|a| ServerConfig::new(*a)).collect();
    let config = Config::single_upstream("127.0.0.1:0".parse().unwrap(), servers);
    let s = assemble(&config, None).unwrap();
    (s.snapshot, s.ledger)
}

fn spec(addr: &str) -> ServerSpec {
    ServerSpec::resolve(ServerConfig::new(addr)).unwrap()
}

fn set(id: u32, state: AdminState) -> Command {
    Command::SetState {
        upstream: "default".into(),
        server: ServerRef::Id(id),
        state,
    }
}

fn servers(plan: &Plan, name: &str) -> Vec<(u32, String, AdminState, u32)> {
    let Some(Some(d)) = plan.changed.get(name) else {
        panic!("{name} not changed: {:?}", plan.changed.keys())
    };
    d.servers
        .iter()
        .map(|s| (s.id, s.addr.clone(), s.state, s.weight))
        .collect()
}

#[test]
fn a_patch_is_a_new_server_with_the_same_runtime_and_one_event_per_field() {
    let (current, ledger) = start(&["127.0.0.1:1", "127.0.0.1:2"]);
    let cmd = Command::Patch {
        upstream: "default".into(),
        server: ServerRef::Addr("127.0.0.1:2".into()),
        patch: ServerPatch {
            weight: Some(5),
            max_fails: Some(7),
            ..ServerPatch::default()
        },
    };
    let p = plan(&current, &ledger, &[cmd], "test", None, NOW).unwrap();
    assert_eq!(
        servers(&p, "default"),
        vec![
            (0, "127.0.0.1:1".into(), AdminState::Up, 1),
            (1, "127.0.0.1:2".into(), AdminState::Up, 5),
        ]
    );
    let was = &current.upstreams["default"].snapshot().servers[1];
    assert!(Arc::ptr_eq(&was.runtime, &p.touched[0].runtime));
    assert_eq!(was.weight, 1, "the published snapshot is left alone");
    let events: Vec<_> = p
        .events
        .iter()
        .map(|e| (e.change.as_str(), e.old.as_deref(), e.new.as_deref()))
        .collect();
    assert_eq!(
        events,
        vec![
            ("weight", Some("1"), Some("5")),
            ("max_fails", Some("1"), Some("7"))
        ]
    );
    assert!(p.events.iter().all(|e| e.origin == "test" && e.seq == 0));
    // Still in rotation: no connection to close, no state accounting.
    assert!(p.effects.close_idle.is_empty());
    assert!(p.effects.admin_state_changes.is_empty());
    assert_eq!(p.ledger, ledger);
}

#[test]
fn leaving_rotation_closes_idle_connections_and_counts_the_change() {
    let (current, ledger) = start(&["127.0.0.1:1"]);
    let p = plan(
        &current,
        &ledger,
        &[set(0, AdminState::Down)],
        "t",
        None,
        NOW,
    )
    .unwrap();
    assert_eq!(p.effects.close_idle.len(), 1);
    let [change] = &p.effects.admin_state_changes[..] else {
        panic!("{:?}", p.effects.admin_state_changes)
    };
    assert!(change.was_up && !change.is_up);
    assert_eq!(change.server.state, AdminState::Down);
    // Back up: connections checked in during the break are not trusted either.
    let (current, ledger) = start(&["127.0.0.1:1"]);
    let cmds = [set(0, AdminState::Drain), set(0, AdminState::Up)];
    let p = plan(&current, &ledger, &cmds, "t", None, NOW).unwrap();
    assert_eq!(p.effects.close_idle.len(), 2);
    let flips: Vec<_> = p
        .effects
        .admin_state_changes
        .iter()
        .map(|c| (c.was_up, c.is_up))
        .collect();
    assert_eq!(flips, vec![(true, false), (false, true)]);
}

#[test]
fn a_refused_command_is_named_by_its_index() {
    let (current, ledger) = start(&["127.0.0.1:1"]);
    let cmds = [
        set(0, AdminState::Down),
        set(9, AdminState::Down),
        set(0, AdminState::Up),
    ];
    let Err(e) = plan(&current, &ledger, &cmds, "t", None, NOW) else {
        panic!("the batch was planned")
    };
    assert_eq!(e.index, Some(1));
    assert_eq!(
        e.error,
        TableError::UnknownServer {
            upstream: "default".into(),
            server: "id 9".into()
        }
    );
    let weight = Command::SetWeight {
        upstream: "default".into(),
        server: ServerRef::Id(0),
        weight: 1001,
    };
    let e = plan(&current, &ledger, &[weight], "t", None, NOW).unwrap_err();
    assert_eq!((e.index, e.error), (Some(0), TableError::BadWeight(1001)));
}

#[test]
fn ids_come_from_the_ledger_and_a_restore_keeps_its_own() {
    let (current, ledger) = start(&["127.0.0.1:1", "127.0.0.1:2"]);
    let cmds = [
        Command::Remove {
            upstream: "default".into(),
            server: ServerRef::Id(1),
        },
        Command::Add {
            upstream: "default".into(),
            server: spec("127.0.0.1:3"),
        },
        Command::Restore {
            upstream: "default".into(),
            id: 7,
            server: spec("127.0.0.1:4"),
            state: AdminState::Drain,
        },
        Command::Add {
            upstream: "default".into(),
            server: spec("127.0.0.1:5"),
        },
    ];
    let p = plan(&current, &ledger, &cmds, "t", None, NOW).unwrap();
    assert_eq!(
        servers(&p, "default"),
        vec![
            (0, "127.0.0.1:1".into(), AdminState::Up, 1),
            (2, "127.0.0.1:3".into(), AdminState::Up, 1),
            (7, "127.0.0.1:4".into(), AdminState::Drain, 1),
            (8, "127.0.0.1:5".into(), AdminState::Up, 1),
        ]
    );
    assert_eq!(p.ledger.next_id["default"], 9);
    let touched: Vec<u32> = p.touched.iter().map(|s| s.id).collect();
    assert_eq!(touched, vec![1, 2, 7, 8]);
    // The removed server's idle connections go; slow start counts from `now`.
    assert_eq!(p.effects.close_idle[0].id, 1);
    let since = |s: &Server| {
        s.runtime
            .stats
            .pick
            .eligible_since_ms
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(since(&p.touched[1]), NOW);

    let again = Command::Restore {
        upstream: "default".into(),
        id: 0,
        server: spec("127.0.0.1:6"),
        state: AdminState::Up,
    };
    let e = plan(&current, &ledger, &[again], "t", None, NOW).unwrap_err();
    assert!(
        matches!(e.error, TableError::DuplicateServer { .. }),
        "{e:?}"
    );
}

#[test]
fn create_and_delete_update_the_ledger_and_the_drafts() {
    let (current, ledger) = start(&["127.0.0.1:1"]);
    let cmds = [
        Command::CreateUpstream {
            name: "new".into(),
            settings: UpstreamSettings::default(),
            servers: vec![spec("127.0.0.1:2"), spec("127.0.0.1:3")],
        },
        Command::DeleteUpstream {
            name: "default".into(),
        },
    ];
    let p = plan(&current, &ledger, &cmds, "t", None, NOW).unwrap();
    assert_eq!(servers(&p, "new").len(), 2);
    assert!(matches!(p.changed.get("default"), Some(None)));
    assert_eq!(p.ledger.next_id.get("new"), Some(&2));
    assert_eq!(p.ledger.next_id.get("default"), None);
    assert!(p.ledger.deleted.contains("default"));
    assert_eq!(
        p.effects.close_idle.len(),
        1,
        "the deleted upstream's server"
    );
    let changes: Vec<_> = p.events.iter().map(|e| e.change.as_str()).collect();
    assert_eq!(changes, vec!["upstream_created", "upstream_deleted"]);

    let upstreams = upstreams_after(&current, p.changed, 2);
    assert_eq!(upstreams.keys().collect::<Vec<_>>(), vec!["new"]);
    assert_eq!(upstreams["new"].snapshot().servers.len(), 2);

    // A name the batch deleted is unknown to the rest of it; one it has is taken.
    let cmds = [
        Command::DeleteUpstream {
            name: "default".into(),
        },
        set(0, AdminState::Down),
    ];
    let e = plan(&current, &ledger, &cmds, "t", None, NOW).unwrap_err();
    assert_eq!(e.index, Some(1));
    assert_eq!(e.error, TableError::UnknownUpstream("default".into()));
    let create = Command::CreateUpstream {
        name: "default".into(),
        settings: UpstreamSettings::default(),
        servers: Vec::new(),
    };
    let e = plan(&current, &ledger, &[create], "t", None, NOW).unwrap_err();
    assert_eq!(e.error, TableError::UpstreamExists("default".into()));
}

#[test]
fn a_followed_ledger_raises_next_ids_and_replaces_deleted_names() {
    let (current, ledger) = start(&["127.0.0.1:1", "127.0.0.1:2"]);
    let theirs = Ledger {
        next_id: [("default".to_string(), 1), ("other".to_string(), 4)].into(),
        deleted: ["gone".to_string()].into(),
    };
    let p = plan(&current, &ledger, &[], "cluster", Some(&theirs), NOW).unwrap();
    assert!(p.changes_nothing());
    assert_eq!(p.ledger.next_id["default"], 2, "never lowered");
    assert_eq!(p.ledger.next_id["other"], 4);
    assert_eq!(p.ledger.deleted, theirs.deleted);
}

#[test]
fn no_command_changes_nothing() {
    let (current, ledger) = start(&["127.0.0.1:1"]);
    let p = plan(&current, &ledger, &[], "t", None, NOW).unwrap();
    assert!(p.changes_nothing());
    assert!(p.events.is_empty() && p.touched.is_empty());
    assert_eq!(p.ledger, ledger);
}
