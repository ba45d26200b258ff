//! The live upstream table: servers, admin state, snapshots and balancing.
//!
//! The table publishes an immutable [`TableSnapshot`] — every upstream with its
//! membership, admin state, weights and built balancer — behind one `ArcSwap`; the
//! request path loads it without a lock. Every change goes through [`Table::apply`], the single writer:
//! it builds the next snapshots, and returns only after they are published, so a
//! request that starts after `apply` returns routes by the change on every thread.
//!
//! Runtime state that changes per request — counters, passive `unavail`, the
//! connection pool — lives in each server's `Arc<ServerRuntime>`, which the next
//! snapshot takes over; a swap loses nothing and a verdict never needs a rebuild.
//!
//! This module does not open connections or read health checks: `proxy` uses the
//! pool, `health` writes the failure counters.

pub mod balance;
mod command;
mod events;
mod follow;
pub mod histogram;
mod panic;
mod persist;
mod pick_stats;
pub use persist::{SavedSettingsError, check_view};
mod plan;
mod published;
mod server;
mod settings;
mod snapshot;
mod start;
mod table;

pub use command::{BatchError, Command, ServerPatch, ServerRef, ServerSpec, TableError, resolve};
pub use events::Event;
pub use panic::{PanicStatus, RECOUNT_MS as PANIC_RECOUNT_MS};
pub use pick_stats::{PickSlot, PickStats};
pub use published::{TableSnapshot, Upstream};
pub use server::{
    AdminState, Connections, Health, IdleConnections, Origin, Server, ServerRuntime, ServerStats,
};
pub use settings::{TlsSetupError, UpstreamSettings};
pub use snapshot::{Lease, Snapshot, Tried};
pub use start::OpenError;
pub use table::Table;
