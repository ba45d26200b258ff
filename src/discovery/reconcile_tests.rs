use std::sync::Arc;

use super::*;
use crate::config::{KeepaliveConfig, ServerConfig};
use crate::upstream::ServerRuntime;

fn entry() -> Entry {
    let mut c = ServerConfig::new("app.test:8080");
    c.resolve = true;
    c.weight = 2;
    Entry::from_config("u", &c).unwrap()
}

fn server(id: u32, addr: &str, origin: Origin, state: AdminState) -> Arc<Server> {
    Arc::new(Server {
        runtime: Arc::new(ServerRuntime::new(KeepaliveConfig::default())),
        slow_start: std::time::Duration::ZERO,
        id,
        max_conns: 0,
        weight: 2,
        state,
        backup: false,
        addr: addr.into(),
        sockaddr: addr.parse().unwrap(),
        max_fails: 1,
        fail_timeout: std::time::Duration::from_secs(10),
        origin,
    })
}

fn answer(addrs: &[&str]) -> Answer {
    Answer {
        targets: addrs
            .iter()
            .map(|a| Target {
                addr: a.parse().unwrap(),
                weight: 2,
                backup: false,
            })
            .collect(),
        ttl: std::time::Duration::from_secs(1),
    }
}

fn kinds(step: &Step) -> Vec<String> {
    step.commands
        .iter()
        .map(|c| match c {
            Command::Add { server, .. } => {
                format!("add {} w{}", server.config.addr, server.config.weight)
            }
            Command::SetState { server, state, .. } => format!("{} {}", state.as_str(), server),
            Command::Patch { server, patch, .. } => format!("patch {server} {patch:?}"),
            Command::Remove { server, .. } => format!("remove {server}"),
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn new_addresses_are_added_gone_ones_drained_and_staying_ones_left_alone() {
    let dns = Origin::dns("app.test:8080");
    let servers = vec![
        server(0, "127.0.0.1:8080", dns.clone(), AdminState::Up),
        // An operator's `down` on an address that stays: kept.
        server(1, "127.0.0.2:8080", dns.clone(), AdminState::Down),
        // Someone else's: never touched.
        server(2, "127.0.0.9:8080", Origin::Config, AdminState::Up),
    ];
    let step = super::step(
        &entry(),
        &servers,
        &answer(&["127.0.0.2:8080", "127.0.0.3:8080", "127.0.0.9:8080"]),
        &Memory::default(),
        true,
    );
    assert_eq!(kinds(&step), vec!["add 127.0.0.3:8080 w2", "drain id 0"]);
    assert_eq!(step.drain, vec![0]);
    assert_eq!(step.skipped, vec!["127.0.0.9:8080".parse().unwrap()]);
    let Command::Add { server: spec, .. } = &step.commands[0] else {
        panic!()
    };
    assert_eq!(spec.origin, dns);
}

#[test]
fn a_drained_address_that_comes_back_is_up_again_and_only_then_not_removed() {
    let dns = Origin::dns("app.test:8080");
    let servers = vec![server(0, "127.0.0.1:8080", dns.clone(), AdminState::Drain)];
    let mut memory = Memory::default();
    let gone = super::step(
        &entry(),
        &servers,
        &answer(&["127.0.0.2:8080"]),
        &memory,
        true,
    );
    memory.applied(&gone, &answer(&["127.0.0.2:8080"]));
    assert!(memory.draining.contains(&0));
    assert!(removal(&entry(), &servers, &memory, 0).is_some());
    let back = super::step(
        &entry(),
        &servers,
        &answer(&["127.0.0.1:8080"]),
        &memory,
        true,
    );
    assert_eq!(
        kinds(&back),
        vec![format!(
            "patch id 0 {:?}",
            ServerPatch {
                state: Some(AdminState::Up),
                ..Default::default()
            }
        )]
    );
    memory.applied(&back, &answer(&["127.0.0.1:8080"]));
    assert!(memory.draining.is_empty());
    assert!(removal(&entry(), &servers, &memory, 0).is_none());
}

#[test]
fn an_operators_drain_is_not_undone() {
    let dns = Origin::dns("app.test:8080");
    let servers = vec![server(0, "127.0.0.1:8080", dns, AdminState::Drain)];
    let step = super::step(
        &entry(),
        &servers,
        &answer(&["127.0.0.1:8080"]),
        &Memory::default(),
        true,
    );
    assert!(step.commands.is_empty(), "{:?}", kinds(&step));
}

#[test]
fn srv_weights_follow_the_record_and_backups_are_left_out_where_not_allowed() {
    let dns = Origin::dns("app.test:8080");
    let servers = vec![server(0, "127.0.0.1:8080", dns, AdminState::Up)];
    let mut a = answer(&["127.0.0.1:8080", "127.0.0.2:8080"]);
    a.targets[0].weight = 5;
    a.targets[1].backup = true;
    let step = super::step(&entry(), &servers, &a, &Memory::default(), false);
    assert_eq!(
        kinds(&step),
        vec![format!(
            "patch id 0 {:?}",
            ServerPatch {
                weight: Some(5),
                ..Default::default()
            }
        )]
    );
    // The record unchanged since the last answer: an operator's weight stays.
    let mut memory = Memory::default();
    memory.applied(&step, &a);
    let again = super::step(&entry(), &servers, &a, &memory, false);
    assert!(again.commands.is_empty(), "{:?}", kinds(&again));
}
