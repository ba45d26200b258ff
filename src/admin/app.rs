//! What every admin handler shares: the state axum hands each of them
//! ([`AppState`]) and the one way any door writes to the table ([`write`]).
//!
//! A leaf: the doors (`native`, `ups_api`, `nginx`), the read-only pages and
//! the router import from here, and this file imports none of them, so that
//! no door depends on the module that wires them together.

use std::sync::Arc;

use crate::reload::ReloadRequest;
use crate::tls::TlsReloader;
use crate::upstream::{BatchError, Command, Server, Table};

use super::access::Access;

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub table: Arc<Table>,
    pub access: Arc<Access>,
    /// The TLS listeners, for `POST /api/v1/tls/reload`.
    pub tls: TlsReloader,
    /// Asks the serve loop to reload the configuration file (`POST
    /// /api/v1/reload`); `None` when there is no file (`proxy`, `demo`, tests).
    pub reload: Option<tokio::sync::mpsc::Sender<ReloadRequest>>,
}

/// The table's writer did not come back: it panicked (or its task was
/// cancelled), so whether the change was made is unknown to the caller.
#[derive(Debug, thiserror::Error)]
#[error("the table's writer failed: {0}")]
pub(crate) struct WriterFailed(#[source] tokio::task::JoinError);

/// Runs the table's single writer off the async threads (it fsyncs the state
/// file). Every door's writes go through here; the outer error is a writer that
/// panicked, the inner one a refused change (with the failing command's index).
pub(crate) async fn write(
    table: &Arc<Table>,
    commands: Vec<Command>,
    origin: String,
) -> Result<Result<Vec<Arc<Server>>, BatchError>, WriterFailed> {
    let table = Arc::clone(table);
    // A task of its own so that a writer's panic (resumed by `apply_batch_as`)
    // still answers with the outer error rather than dropping the connection.
    tokio::spawn(async move { table.apply_batch_as(commands, &origin).await })
        .await
        .map_err(WriterFailed)
}
