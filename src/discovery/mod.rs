//! Servers from DNS: the entries written with `resolve = true` (A/AAAA names)
//! or `service = "_srv._proto.NAME"` (SRV), looked up again and again while
//! traffic flows, as NGINX Plus's `resolve` and HAProxy's `resolvers` do.
//!
//! DNS is one more writer of the live table, and it writes only through the
//! table's single writer (`Table::apply_batch_as(.., "dns")`), so its changes
//! are linearizable, saved, shared through the fleet and reported as events
//! like any other. Per entry: look up (`lookup`), work out the commands
//! (`reconcile`, pure), apply them, wait for the records' TTL or `valid`
//! (`run`). A failed or empty lookup keeps the last good set.
//!
//! In a fleet only one instance resolves each upstream: whoever
//! [`Leadership::is_resolver`] says (the holder of an etcd lease, wired in by
//! `cli`); the others follow the table through the store.
//!
//! Owns: the resolver, the per-name counters. Must not touch servers of
//! another origin, nor the admin state of servers that stay in the records,
//! nor anything but the table's public writer.

mod entry;
mod leadership;
mod lookup;
mod reconcile;
mod run;
mod stats;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{error, info};

pub use entry::{Entry, Kind, Target, entries};
pub use leadership::{Alone, Leadership, ORIGIN};
pub use lookup::{LookupError, SetupError};
pub use stats::{NameReading, readings};

use crate::config::Config;
use crate::upstream::Table;

/// The running resolvers, one task per entry; stopped when dropped.
#[derive(Debug)]
pub struct Discovery {
    tasks: Vec<JoinHandle<()>>,
    first: Vec<oneshot::Receiver<()>>,
}

/// Starts a resolver for every DNS entry of `config`; `None` when there is
/// none. Needs a Tokio runtime. A resolver that cannot be set up (no
/// resolv.conf, say) is logged, and every lookup then counts as failed: the
/// upstreams keep what they have, and the process serves on.
pub fn spawn(
    config: &Config,
    table: Arc<Table>,
    leadership: Arc<dyn Leadership>,
) -> Option<Discovery> {
    let list = entries(config);
    if list.is_empty() {
        return None;
    }
    let lookup = match lookup::Lookup::new(&config.resolver) {
        Ok(l) => Some(l),
        Err(e) => {
            error!(error = %e, "DNS: no resolver; servers from DNS names stay as they are");
            None
        }
    };
    let shared = Arc::new(run::Shared {
        table,
        lookup,
        leadership,
    });
    let mut tasks = Vec::new();
    let mut first = Vec::new();
    for entry in list {
        info!(upstream = %entry.upstream, name = %entry.key, "DNS: resolving");
        let (tx, rx) = oneshot::channel();
        first.push(rx);
        tasks.push(tokio::spawn(run::run(entry, Arc::clone(&shared), tx)));
    }
    Some(Discovery { tasks, first })
}

impl Discovery {
    /// Waits until every entry had its first round (found, failed, or not
    /// this instance's to do), at most `within`: start-up can then serve
    /// with the names already in the table.
    pub async fn first_round(&mut self, within: Duration) {
        let all = futures_util::future::join_all(self.first.drain(..));
        let _ = tokio::time::timeout(within, all).await;
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
