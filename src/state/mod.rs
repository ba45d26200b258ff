//! Durable state: what the table looks like, kept so that a restart comes back
//! with every change operators made.
//!
//! The table hands the whole next state to a [`StateStore`] *before* it publishes a
//! change; a store that cannot save makes the change fail, so memory and disk never
//! disagree. Today's store is a file ([`FileStore`]); a distributed store plugs in
//! behind the same trait. This module knows nothing of snapshots, pools or HTTP.

mod doc;
mod file;

pub use doc::{HealthCheckState, ServerState, SettingsState, StateDoc, UpstreamState};
pub use file::FileStore;

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
    /// A shared store could not be reached or did not answer in time.
    #[error("the cluster store is unavailable: {0}")]
    Unavailable(String),
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
    fn cluster_status(&self) -> Option<crate::cluster::ClusterStatus> {
        None
    }
}
