//! Durable state: what the table looks like, kept so that a restart comes back
//! with every change operators made.
//!
//! The table hands the whole next state to a [`StateStore`] *before* it publishes a
//! change; a store that cannot save makes the change fail, so memory and disk never
//! disagree. Today's store is a file ([`FileStore`]); a distributed store plugs in
//! behind the same trait. This module knows nothing of snapshots, pools or HTTP,
//! nor of the table or the fleet that use it: this file only declares and
//! re-exports.

mod admin_state;
mod doc;
mod file;
mod store;

pub use admin_state::{AdminState, UnknownAdminState};
pub use doc::{HealthCheckState, ServerState, SettingsState, StateDoc, UpstreamState};
pub use file::FileStore;
pub use store::{ClusterStatus, EndpointStatus, StateError, StateStore};
