//! What the writer publishes and readers load: one [`Upstream`] per name, all of
//! them together in one [`TableSnapshot`].
//!
//! Both are immutable once built. This module only builds and reads them; it
//! does not decide what goes in them (the writer's plan does) nor swap them in
//! (the table does), so the saved form and the follower can name them without
//! depending on the writer.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::panic::PanicState;
use super::server::Server;
use super::settings::UpstreamSettings;
use super::snapshot::Snapshot;

/// A named group of servers as of one change. Immutable.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub settings: UpstreamSettings,
    snapshot: Snapshot,
    /// Panic mode's verdict and entries, kept by every version of the upstream.
    panic: Arc<PanicState>,
}

impl Upstream {
    /// Builds the balancer of `servers` for `settings.balance`.
    pub(super) fn build(
        name: &str,
        settings: UpstreamSettings,
        generation: u64,
        servers: Vec<Arc<Server>>,
    ) -> Arc<Upstream> {
        Self::build_after(name, settings, generation, servers, None)
    }

    /// [`Upstream::build`] for the next version of `previous`, whose panic
    /// state it carries on (so a table change is no new entry into panic).
    pub(super) fn build_after(
        name: &str,
        settings: UpstreamSettings,
        generation: u64,
        servers: Vec<Arc<Server>>,
        previous: Option<&Upstream>,
    ) -> Arc<Upstream> {
        let panic = previous.map_or_else(|| PanicState::new(name), |p| Arc::clone(&p.panic));
        let snapshot = Snapshot::build(
            settings.balance,
            generation,
            servers,
            (settings.panic_threshold, &panic),
        );
        Arc::new(Upstream {
            name: name.to_string(),
            snapshot,
            settings,
            panic,
        })
    }

    /// Times this upstream went into panic (also while panic mode is off now).
    pub fn panic_entries(&self) -> u64 {
        self.panic.entries()
    }

    /// The servers and balancer of this version of the upstream.
    #[inline]
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }
}

/// Every upstream as of one change.
#[derive(Debug)]
pub struct TableSnapshot {
    pub generation: u64,
    /// By name, for listing.
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// By route slot (see `Table::slot`): `None` while no upstream has the name.
    by_slot: Vec<Option<Arc<Upstream>>>,
}

impl TableSnapshot {
    /// `slots` gives every name that has a route slot its slot; an upstream
    /// without one is reachable by name only.
    pub(super) fn new(
        generation: u64,
        upstreams: BTreeMap<String, Arc<Upstream>>,
        slots: &BTreeMap<String, usize>,
    ) -> TableSnapshot {
        let mut by_slot = vec![None; slots.len()];
        for (name, &slot) in slots {
            by_slot[slot] = upstreams.get(name).cloned();
        }
        TableSnapshot {
            generation,
            upstreams,
            by_slot,
        }
    }

    #[inline]
    pub fn by_slot(&self, slot: usize) -> Option<&Arc<Upstream>> {
        self.by_slot.get(slot).and_then(Option::as_ref)
    }
}
