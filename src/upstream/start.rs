//! The table as the process starts: the configuration file and, when the state
//! store holds one, the saved table, merged into the first snapshot and the
//! writer's ledger.
//!
//! Steps, each its own function: the config's upstreams ([`from_config`]), the
//! saved ones over them ([`overlay_saved`]), then servers and TLS clients made
//! ([`build`]). Resolving addresses and loading TLS files are blocking: this
//! runs before serving. It does not read the store (the table hands it what was
//! loaded) and publishes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::command::{ServerSpec, TableError};
use super::persist::{
    SavedSettingsError, origin_from_state, server_from_state, settings_from_saved,
};
use super::plan::{Ledger, dense, new_server};
use super::published::{TableSnapshot, Upstream};
use super::server::{AdminState, Health, Origin};
use super::settings::{TlsSetupError, UpstreamSettings};
use crate::config::{Config, UpstreamConfig};
use crate::state::{StateDoc, StateError, UpstreamState};

/// Why the table could not be built at start-up.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Table(#[from] TableError),
    #[error("state file {path}: upstream {upstream:?}: {source}")]
    BadState {
        path: String,
        upstream: String,
        source: SavedSettingsError,
    },
    #[error("upstream {upstream:?}: TLS: {source}")]
    Tls {
        upstream: String,
        source: TlsSetupError,
    },
}

/// What the store held at start-up, and where it lives (for messages).
pub(super) struct Saved {
    pub doc: StateDoc,
    pub path: String,
}

/// The table the process starts with.
pub(super) struct Start {
    pub snapshot: TableSnapshot,
    pub ledger: Ledger,
    /// Route slots by upstream name, routes to missing upstreams included.
    pub slots: BTreeMap<String, usize>,
}

/// A server as start-up assembles it.
struct StartServer {
    id: u32,
    spec: ServerSpec,
    state: AdminState,
}

/// An upstream as start-up assembles it.
struct StartDraft {
    settings: UpstreamSettings,
    servers: Vec<StartServer>,
    next_id: u32,
}

/// The saved servers of an upstream win over the config's list (as NGINX
/// Plus's `state` file), upstreams created through the API come back, and
/// config upstreams deleted through the API stay deleted.
pub(super) fn assemble(config: &Config, saved: Option<&Saved>) -> Result<Start, OpenError> {
    let deleted = saved.map(|s| s.doc.deleted.clone()).unwrap_or_default();
    let mut drafts = from_config(config, &deleted)?;
    if let Some(saved) = saved {
        overlay_saved(&mut drafts, config, saved, &deleted)?;
    }
    let Built {
        upstreams,
        mut slots,
        next_id,
    } = build(drafts)?;
    // Routes may name upstreams that do not exist (yet): give them slots too.
    for l in &config.listeners {
        for r in &l.routes {
            let n = slots.len();
            slots.entry(r.upstream.clone()).or_insert(n);
        }
    }
    Ok(Start {
        snapshot: TableSnapshot::new(1, upstreams, &slots),
        ledger: Ledger { next_id, deleted },
        slots,
    })
}

/// The config's upstreams, but those deleted through the API.
fn from_config(
    config: &Config,
    deleted: &BTreeSet<String>,
) -> Result<BTreeMap<String, StartDraft>, OpenError> {
    let mut drafts = BTreeMap::new();
    for (name, up) in &config.upstreams {
        if deleted.contains(name) {
            continue;
        }
        let mut servers = Vec::new();
        // Entries with `resolve = true` are the resolver's to fill in, once it
        // runs (`discovery`): a name that does not resolve yet is no reason
        // not to start. Ids stay those of the entries' places in the file.
        for (i, s) in up.servers.iter().enumerate() {
            if s.is_dynamic() {
                continue;
            }
            let state = if s.down {
                AdminState::Down
            } else {
                AdminState::Up
            };
            servers.push(StartServer {
                id: i as u32,
                spec: ServerSpec::resolve(s.clone())?.with_origin(Origin::Config),
                state,
            });
        }
        let next_id = up.servers.len() as u32;
        let settings = UpstreamSettings::from_config(up);
        drafts.insert(
            name.clone(),
            StartDraft {
                settings,
                servers,
                next_id,
            },
        );
    }
    Ok(drafts)
}

/// Every saved upstream replaces the config's of the same name.
fn overlay_saved(
    drafts: &mut BTreeMap<String, StartDraft>,
    config: &Config,
    saved: &Saved,
    deleted: &BTreeSet<String>,
) -> Result<(), OpenError> {
    for (name, up) in &saved.doc.upstreams {
        let saved_settings =
            settings_from_saved(&up.settings).map_err(|source| OpenError::BadState {
                path: saved.path.clone(),
                upstream: name.clone(),
                source,
            })?;
        let from_file = config
            .upstreams
            .get(name)
            .filter(|_| !deleted.contains(name));
        let settings = merged_settings(saved_settings, from_file);
        drafts.insert(name.clone(), saved_draft(settings, up)?);
    }
    Ok(())
}

/// The config's settings win, unless the config's upstream was deleted through
/// the API (and this one created there since): `from_file` is then `None`. A
/// health check set through the API is kept either way.
fn merged_settings(
    saved: UpstreamSettings,
    from_file: Option<&UpstreamConfig>,
) -> UpstreamSettings {
    match from_file {
        Some(c) => {
            let from_file = UpstreamSettings::from_config(c);
            UpstreamSettings {
                health_check: saved.health_check.or(from_file.health_check.clone()),
                ..from_file
            }
        }
        None => saved,
    }
}

/// A saved upstream's servers, with their ids and admin states.
fn saved_draft(settings: UpstreamSettings, up: &UpstreamState) -> Result<StartDraft, TableError> {
    let mut servers = Vec::new();
    for s in &up.servers {
        let (config, state) = server_from_state(s);
        servers.push(StartServer {
            id: s.id,
            spec: ServerSpec::resolve(config)?.with_origin(origin_from_state(s)),
            state,
        });
    }
    let past_ids = servers.iter().map(|s| s.id + 1).max().unwrap_or(0);
    Ok(StartDraft {
        settings,
        servers,
        next_id: up.next_id.max(past_ids),
    })
}

/// The upstreams made at start-up, by name.
struct Built {
    upstreams: BTreeMap<String, Arc<Upstream>>,
    /// One route slot each, in name order.
    slots: BTreeMap<String, usize>,
    next_id: BTreeMap<String, u32>,
}

/// The servers and TLS clients of every upstream.
fn build(drafts: BTreeMap<String, StartDraft>) -> Result<Built, OpenError> {
    let mut slots = BTreeMap::new();
    let mut upstreams = BTreeMap::new();
    let mut next_id = BTreeMap::new();
    for (name, draft) in drafts {
        let StartDraft {
            mut settings,
            servers,
            next_id: next,
        } = draft;
        settings
            .prepare_tls(&name)
            .map_err(|source| OpenError::Tls {
                upstream: name.clone(),
                source,
            })?;
        // At start-up servers take traffic at once, unless the check is
        // mandatory: then they wait for a first pass.
        let mandatory = settings.health_check.as_ref().is_some_and(|c| c.mandatory);
        let servers = dense(servers.iter().map(|s| {
            let mut server = new_server(s.id, &s.spec, settings.keepalive);
            server.state = s.state;
            if mandatory {
                server.runtime.stats.set_health(Health::Checking);
            }
            server
        }));
        slots.insert(name.clone(), slots.len());
        next_id.insert(name.clone(), next);
        upstreams.insert(name.clone(), Upstream::build(&name, settings, 1, servers));
    }
    Ok(Built {
        upstreams,
        slots,
        next_id,
    })
}
