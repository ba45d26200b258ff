//! Change events: one per thing that changed, for the API's event stream and the
//! log. Sent after the change is published, in the order changes were made.

use serde::Serialize;

/// One change to the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Increases by one per event, from 1, for the life of the process.
    pub seq: u64,
    /// RFC 3339 with milliseconds, UTC.
    pub time: String,
    /// Who asked: an API client's address, `config`, `state`...
    pub origin: String,
    pub upstream: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    /// What changed: `upstream_created`, `upstream_deleted`, `server_added`,
    /// `server_removed`, or a server field (`state`, `weight`, `max_conns`,
    /// `max_fails`, `fail_timeout`, `slow_start`, `backup`).
    pub change: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<String>,
}
