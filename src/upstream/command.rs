//! The typed changes every door translates its input into: the native API, the
//! compatibility layers, the state file replay. One type, one code path into the
//! table.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::server::{AdminState, Origin, Server};
use super::settings::UpstreamSettings;
use crate::config::{HealthCheckConfig, ServerConfig};

/// A server to add, its address already resolved (resolution is I/O and happens
/// before the writer is entered).
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub config: ServerConfig,
    pub sockaddr: SocketAddr,
    /// Where it comes from, for the API to show and the resolver to find its own.
    pub origin: Origin,
}

impl ServerSpec {
    /// Resolves `config.addr` (blocking: for start-up, or on a blocking thread).
    /// The server is the API's unless [`ServerSpec::with_origin`] says otherwise.
    pub fn resolve(config: ServerConfig) -> Result<ServerSpec, TableError> {
        let sockaddr = resolve(&config.addr)?;
        Ok(ServerSpec {
            config,
            sockaddr,
            origin: Origin::Api,
        })
    }

    /// A server whose address is already known (the resolver's): no lookup.
    pub fn at(config: ServerConfig, sockaddr: SocketAddr, origin: Origin) -> ServerSpec {
        ServerSpec {
            config,
            sockaddr,
            origin,
        }
    }

    pub fn with_origin(mut self, origin: Origin) -> ServerSpec {
        self.origin = origin;
        self
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

/// How a command names a server: by its stable id or by its `addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerRef {
    Id(u32),
    Addr(String),
}

impl ServerRef {
    /// A path segment or form value: digits are an id, anything else an address.
    pub fn parse(s: &str) -> ServerRef {
        match s.parse::<u32>() {
            Ok(id) => ServerRef::Id(id),
            Err(_) => ServerRef::Addr(s.to_string()),
        }
    }

    /// Whether `server` is the one this names.
    pub fn matches(&self, server: &Server) -> bool {
        match self {
            ServerRef::Id(id) => server.id == *id,
            ServerRef::Addr(a) => server.addr == *a,
        }
    }
}

impl std::fmt::Display for ServerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerRef::Id(id) => write!(f, "id {id}"),
            ServerRef::Addr(a) => f.write_str(a),
        }
    }
}

/// Settings of a server to change; `None` leaves one as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerPatch {
    pub state: Option<AdminState>,
    pub weight: Option<u32>,
    pub max_conns: Option<u32>,
    pub max_fails: Option<u32>,
    pub fail_timeout: Option<Duration>,
    pub slow_start: Option<Duration>,
    pub backup: Option<bool>,
}

impl ServerPatch {
    pub fn is_empty(&self) -> bool {
        *self == ServerPatch::default()
    }
}

/// One change to the table.
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
    Patch {
        upstream: String,
        server: ServerRef,
        patch: ServerPatch,
    },
    /// A new upstream (routes that name it start to reach it).
    CreateUpstream {
        name: String,
        settings: UpstreamSettings,
        servers: Vec<ServerSpec>,
    },
    /// Removes an upstream; routes that name it answer 502 until it is created again.
    DeleteUpstream {
        name: String,
    },
    /// Sets or removes an upstream's active health check.
    SetHealthCheck {
        upstream: String,
        check: Option<HealthCheckConfig>,
    },
    /// A server exactly as the shared store has it: its id, its admin state.
    /// Only the cluster follower issues it (ids are otherwise the table's to give).
    Restore {
        upstream: String,
        id: u32,
        server: ServerSpec,
        state: AdminState,
    },
    /// Replaces an upstream's settings (balance, timeouts, retry, health check,
    /// TLS...) and keeps its servers and their runtimes. `settings.tls_client` is
    /// used as given: build it first ([`UpstreamSettings::prepare_tls`]) when
    /// the upstream needs one. Servers keep their connection pools, sized as
    /// they were.
    SetSettings {
        upstream: String,
        settings: UpstreamSettings,
    },
}

impl Command {
    pub fn upstream(&self) -> &str {
        match self {
            Command::Add { upstream, .. }
            | Command::Restore { upstream, .. }
            | Command::Remove { upstream, .. }
            | Command::SetState { upstream, .. }
            | Command::SetWeight { upstream, .. }
            | Command::SetMaxConns { upstream, .. }
            | Command::Patch { upstream, .. }
            | Command::SetHealthCheck { upstream, .. }
            | Command::SetSettings { upstream, .. } => upstream,
            Command::CreateUpstream { name, .. } | Command::DeleteUpstream { name } => name,
        }
    }

    /// The general form of the server setters.
    pub(crate) fn as_patch(&self) -> Option<(&ServerRef, ServerPatch)> {
        match self {
            Command::SetState { server, state, .. } => Some((
                server,
                ServerPatch {
                    state: Some(*state),
                    ..Default::default()
                },
            )),
            Command::SetWeight { server, weight, .. } => Some((
                server,
                ServerPatch {
                    weight: Some(*weight),
                    ..Default::default()
                },
            )),
            Command::SetMaxConns {
                server, max_conns, ..
            } => Some((
                server,
                ServerPatch {
                    max_conns: Some(*max_conns),
                    ..Default::default()
                },
            )),
            Command::Patch { server, patch, .. } => Some((server, patch.clone())),
            _ => None,
        }
    }
}

/// Why a change was refused. A refused change leaves the table — and the state
/// file — as they were.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("no upstream named {0:?}")]
    UnknownUpstream(String),
    #[error("upstream {0:?} already exists")]
    UpstreamExists(String),
    #[error("upstream {upstream:?} has no server {server}")]
    UnknownServer { upstream: String, server: String },
    #[error("upstream {upstream:?} already has a server {addr}")]
    DuplicateServer { upstream: String, addr: String },
    #[error("weight {0} out of range {MIN_WEIGHT}..={MAX_WEIGHT}", MIN_WEIGHT = crate::config::MIN_WEIGHT, MAX_WEIGHT = crate::config::MAX_WEIGHT)]
    BadWeight(u32),
    #[error("backup servers cannot be used with balance {0:?}")]
    BackupWithHash(&'static str),
    #[error("cannot resolve server address {addr:?}: {reason}")]
    Resolve { addr: String, reason: String },
    #[error("the change was not saved, so it was not applied: {0}")]
    Store(String),
    /// The shared store kept refusing the change because other instances kept
    /// changing the table first.
    #[error("the change conflicted with concurrent changes from other instances: {0}")]
    Conflict(String),
    /// The shared store cannot be reached: the table serves as it was, and
    /// changes wait until the store is back.
    #[error("the change was not applied: {0}")]
    StoreUnavailable(String),
    /// The shared store took the change and its answer was lost, and it could
    /// not be asked in time whether the change was applied: it may have been.
    #[error("the change may or may not have been applied: {0}")]
    StoreOutcomeUnknown(String),
}

/// A refused batch: the error, and the index of the command that caused it
/// (`None` when the batch as a whole failed, e.g. it could not be saved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchError {
    pub index: Option<usize>,
    pub error: TableError,
}
