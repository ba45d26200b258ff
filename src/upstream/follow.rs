//! The difference between the table and a saved form of it, as commands: how an
//! instance of a fleet follows the shared store. Servers are matched by id, so
//! one that stays keeps its runtime (counters, health, idle connections).

use std::collections::BTreeMap;
use std::time::Duration;

use tracing::warn;

use super::command::{Command, ServerPatch, ServerRef, ServerSpec};
use super::persist::{
    origin_from_state, server_from_state, server_to_state, settings_from_saved, settings_to_state,
};
use super::published::TableSnapshot;
use super::settings::UpstreamSettings;
use crate::state::{ServerState, StateDoc, UpstreamState};

/// Commands that turn `current` into what `doc` describes (ids, admin states,
/// weights, settings, membership). What cannot be turned into a command (an
/// address that does not resolve here, settings this build cannot load) is
/// logged and left out, so one bad entry in the store does not stop the rest.
pub(crate) fn commands_toward(current: &TableSnapshot, doc: &StateDoc) -> Vec<Command> {
    let mut out = Vec::new();
    for name in current.upstreams.keys() {
        if !doc.upstreams.contains_key(name) {
            out.push(Command::DeleteUpstream { name: name.clone() });
        }
    }
    for (name, want) in &doc.upstreams {
        match current.upstreams.get(name) {
            None => create(name, want, &mut out),
            Some(have) => {
                if settings_to_state(&have.settings) != want.settings {
                    match load_settings(name, want) {
                        Some(settings) => out.push(Command::SetSettings {
                            upstream: name.clone(),
                            settings,
                        }),
                        None => continue,
                    }
                }
                let have: Vec<ServerState> = have
                    .snapshot()
                    .servers
                    .iter()
                    .map(|s| server_to_state(s))
                    .collect();
                servers_toward(name, &have, &want.servers, &mut out);
            }
        }
    }
    out
}

fn load_settings(name: &str, want: &UpstreamState) -> Option<UpstreamSettings> {
    let mut settings = match settings_from_saved(&want.settings) {
        Ok(s) => s,
        Err(reason) => {
            warn!(upstream = %name, %reason, "cluster store: cannot apply this upstream's settings here; left as they were");
            return None;
        }
    };
    if let Err(reason) = settings.prepare_tls(name) {
        warn!(upstream = %name, %reason, "cluster store: cannot apply this upstream's settings here; left as they were");
        return None;
    }
    Some(settings)
}

fn create(name: &str, want: &UpstreamState, out: &mut Vec<Command>) {
    let Some(settings) = load_settings(name, want) else {
        return;
    };
    out.push(Command::CreateUpstream {
        name: name.to_string(),
        settings,
        servers: Vec::new(),
    });
    servers_toward(name, &[], &want.servers, out);
}

fn servers_toward(
    upstream: &str,
    have: &[ServerState],
    want: &[ServerState],
    out: &mut Vec<Command>,
) {
    // By id, both sides: a table of thousands of servers is followed on every
    // write another instance makes, so no search of one list per server of
    // the other.
    let wanted: BTreeMap<u32, &ServerState> = want.iter().map(|w| (w.id, w)).collect();
    let had: BTreeMap<u32, &ServerState> = have.iter().map(|h| (h.id, h)).collect();
    let mut restores = Vec::new();
    // Removals first, so a server re-added under a new id with the same address
    // does not collide with its old self.
    for h in have {
        let stays = wanted.get(&h.id).is_some_and(|w| w.addr == h.addr);
        if !stays {
            out.push(Command::Remove {
                upstream: upstream.to_string(),
                server: ServerRef::Id(h.id),
            });
        }
    }
    for w in want {
        match had.get(&w.id).filter(|h| h.addr == w.addr) {
            Some(h) => {
                let patch = patch_between(h, w);
                if !patch.is_empty() {
                    out.push(Command::Patch {
                        upstream: upstream.to_string(),
                        server: ServerRef::Id(w.id),
                        patch,
                    });
                }
            }
            None => {
                let (config, state) = server_from_state(w);
                let spec = ServerSpec::resolve(config).map(|s| s.with_origin(origin_from_state(w)));
                match spec {
                    Ok(server) => restores.push(Command::Restore {
                        upstream: upstream.to_string(),
                        id: w.id,
                        server,
                        state,
                    }),
                    Err(e) => {
                        warn!(%upstream, id = w.id, error = %e, "cluster store: server left out here");
                    }
                }
            }
        }
    }
    out.append(&mut restores);
}

fn patch_between(h: &ServerState, w: &ServerState) -> ServerPatch {
    let ms = Duration::from_millis;
    ServerPatch {
        state: (h.state != w.state).then_some(w.state),
        weight: (h.weight != w.weight).then_some(crate::config::rules::clamp_weight(w.weight)),
        max_conns: (h.max_conns != w.max_conns).then_some(w.max_conns),
        max_fails: (h.max_fails != w.max_fails).then_some(w.max_fails),
        fail_timeout: (h.fail_timeout_ms != w.fail_timeout_ms).then(|| ms(w.fail_timeout_ms)),
        slow_start: (h.slow_start_ms != w.slow_start_ms).then(|| ms(w.slow_start_ms)),
        backup: (h.backup != w.backup).then_some(w.backup),
    }
}
