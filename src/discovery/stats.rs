//! Counters per DNS entry, for `/metrics`: lookups, failed lookups, and the
//! size of the set in force. Process-wide (one resolver per process), so the
//! admin API reads them without being handed anything.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// One entry's counters.
#[derive(Debug, Default)]
pub struct NameStats {
    pub resolutions: AtomicU64,
    pub failures: AtomicU64,
    /// Addresses in the last good answer (0 before the first).
    pub addresses: AtomicU64,
}

/// A reading of one entry's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameReading {
    pub upstream: String,
    pub name: String,
    pub resolutions: u64,
    pub failures: u64,
    pub addresses: u64,
}

type Registry = Mutex<BTreeMap<(String, String), Arc<NameStats>>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

/// The counters of `name` in `upstream`, made on first use.
pub fn for_name(upstream: &str, name: &str) -> Arc<NameStats> {
    let mut map = registry().lock().unwrap_or_else(|p| p.into_inner());
    Arc::clone(
        map.entry((upstream.to_string(), name.to_string()))
            .or_default(),
    )
}

/// Every entry's counters, by upstream then name.
pub fn readings() -> Vec<NameReading> {
    let map = registry().lock().unwrap_or_else(|p| p.into_inner());
    map.iter()
        .map(|((upstream, name), s)| NameReading {
            upstream: upstream.clone(),
            name: name.clone(),
            resolutions: s.resolutions.load(Ordering::Relaxed),
            failures: s.failures.load(Ordering::Relaxed),
            addresses: s.addresses.load(Ordering::Relaxed),
        })
        .collect()
}
