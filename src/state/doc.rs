//! The saved form of the table: plain serde types, versioned, independent of the
//! runtime types so that the file format changes only on purpose.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::AdminState;

/// Version of the format written by this build.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateDoc {
    pub version: u32,
    /// Every upstream the table has, by name.
    pub upstreams: BTreeMap<String, UpstreamState>,
    /// Upstreams that were deleted through the API (so a restart does not bring
    /// a config upstream back). A name also in `upstreams` was created again
    /// through the API: its saved settings win over the config's.
    #[serde(default)]
    pub deleted: BTreeSet<String>,
    /// With a cluster store: the store revision this copy reflects (the file is
    /// then the local cache of the shared table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
}

impl StateDoc {
    pub fn new() -> StateDoc {
        StateDoc {
            version: FORMAT_VERSION,
            upstreams: BTreeMap::new(),
            deleted: BTreeSet::new(),
            revision: None,
        }
    }
}

impl Default for StateDoc {
    fn default() -> Self {
        StateDoc::new()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamState {
    pub settings: SettingsState,
    /// The id the next added server gets (ids are never reused).
    pub next_id: u32,
    pub servers: Vec<ServerState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsState {
    pub balance: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<String>,
    pub keepalive: usize,
    pub keepalive_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub read_timeout_ms: u64,
    pub send_timeout_ms: u64,
    pub retry_tries: u32,
    pub retry_timeout_ms: u64,
    pub retry_non_idempotent: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckState>,
    /// `https`; absent means `http` (and so in files written before TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// `h2` or `h2c`; absent means HTTP/1.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Only ever `false` when present; absent means verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_verify: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_cert: Option<std::path::PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_key: Option<std::path::PathBuf>,
    /// Panic mode's percentage; absent means off (and so in older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic_threshold: Option<u8>,
}

/// An active health check as saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckState {
    /// `http`, `https` or `tcp`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_req: Option<String>,
    pub method: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    pub interval_ms: u64,
    pub jitter_ms: u64,
    pub timeout_ms: u64,
    pub fall: u32,
    pub rise: u32,
    #[serde(default)]
    pub valid_statuses: Vec<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub concurrency: u32,
    pub mandatory: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerState {
    pub id: u32,
    pub addr: String,
    pub weight: u32,
    pub max_conns: u32,
    pub max_fails: u32,
    pub fail_timeout_ms: u64,
    pub slow_start_ms: u64,
    pub backup: bool,
    pub state: AdminState,
    /// Where the server came from: `config`, `api` or `dns: NAME` (a name the
    /// resolver keeps in step). Absent in files written before origins were
    /// kept, and for servers from the configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}
