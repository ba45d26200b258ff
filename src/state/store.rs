//! The one trait every place the table is kept implements ([`StateStore`]),
//! what goes wrong with it ([`StateError`]), and what a shared store says of
//! itself ([`ClusterStatus`]). Knows no store in particular: the file is
//! `file`, the fleet's store is `crate::cluster`.

use serde::Serialize;

use super::doc::StateDoc;

/// What `/api/v1/cluster`, `/healthcheck` and `/metrics` show of a shared
/// store. Defined here, beside the trait that hands it out, so that the trait
/// needs nothing from `cluster`; `cluster` re-exports it.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub store: &'static str,
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// The last request to etcd succeeded.
    pub connected: bool,
    /// The store revision this instance's table reflects.
    pub applied_revision: u64,
    /// The newest revision under the prefix, as last seen.
    pub store_revision: u64,
    /// How long this instance has not been known to be in step with the store:
    /// 0 while it is.
    pub lag_seconds: f64,
    pub last_error: Option<String>,
    /// Each endpoint as this instance last found it, in `endpoints` order.
    pub members: Vec<EndpointStatus>,
    /// Failed calls to the store since start, by kind (`connect`, `timeout`,
    /// `transport`, `status`, `decode`), and writes whose outcome had to be
    /// looked up (`outcome_looked_up`) or stayed unknown (`outcome_unknown`).
    pub errors: std::collections::BTreeMap<&'static str, u64>,
}

/// One endpoint of a shared store.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointStatus {
    pub endpoint: String,
    /// The last call or probe reached it; `None` before the first.
    pub reachable: Option<bool>,
    /// It said it is the leader when last probed; `None` when it could not say.
    pub leader: Option<bool>,
    pub last_error: Option<String>,
}

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("state file {path} is not valid: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("cannot write state file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    /// A shared store refused the change because another writer changed the
    /// table first; `revision` is the store's revision to catch up with.
    #[error("another instance changed the table first (store revision {revision})")]
    Conflict { revision: u64 },
    /// A shared store could not be reached or did not answer in time, and the
    /// change is known not to have been applied.
    #[error("the cluster store is unavailable: {0}")]
    Unavailable(String),
    /// The change was sent, and the store could not be asked whether it was
    /// applied before the write's deadline: it may have been.
    #[error("the cluster store did not confirm the write: {0}")]
    OutcomeUnknown(String),
}

/// Where the table's state is kept.
pub trait StateStore: Send + Sync + std::fmt::Debug {
    /// The saved state, or `None` when nothing was ever saved.
    fn load(&self) -> Result<Option<StateDoc>, StateError>;
    /// Saves `doc` durably; returns only once it would survive a crash.
    fn save(&self, doc: &StateDoc) -> Result<(), StateError>;
    /// Where the state lives, for messages.
    fn describe(&self) -> String;
    /// After a [`StateError::Conflict`]: waits until the table has applied the
    /// store's `revision`, at most `within`; whether it did. A store that has no
    /// other writers never conflicts.
    fn catch_up(&self, revision: u64, within: std::time::Duration) -> bool {
        let _ = (revision, within);
        true
    }
    /// The shared store's state, for the status page and metrics; `None` for a
    /// store of this instance alone.
    fn cluster_status(&self) -> Option<ClusterStatus> {
        None
    }
}
