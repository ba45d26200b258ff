//! The admin API: its own listener, served by axum on its own thread and runtime,
//! so neither admin load nor a slow state-file fsync can starve the data plane.
//!
//! Every door here — the native API ([`native`]), the seed's `/ups_api`
//! ([`ups_api`]) and the NGINX Plus API ([`nginx`]) — parses its input into `upstream::Command`s and hands them to
//! `Table::apply_as`; none of them touches the table any other way. The status
//! page ([`status`]) and `/metrics` ([`metrics`]) only read. Access control
//! ([`access`]) runs before any handler ([`guard`]). `GET /` is the dashboard ([`dashboard`]),
//! a page that uses the same API.
//!
//! This file only declares the modules, builds the router and re-exports.
//! What the handlers share lives in leaves ([`app`] for the state and the
//! table write, [`error`] for the JSON errors, [`views`] for what the API
//! shows of a server, [`form`] for URL-encoded input), so that no child
//! imports this file: the import graph goes from here down, never back up.

pub mod access;
mod app;
mod dashboard;
mod error;
mod form;
mod guard;
mod listener;
pub mod metrics;
mod native;
mod nginx;
mod probes;
mod process;
pub mod status;
mod ups_api;
pub mod views;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{any, get, post};

pub use access::Access;
pub use app::AppState;
pub use error::ApiError;
pub use listener::{AdminError, AdminServer};

use crate::config::AdminConfig;
use crate::reload::ReloadRequest;
use crate::tls::TlsReloader;
use crate::upstream::Table;

/// Bodies larger than this are refused with 413.
pub const MAX_BODY: usize = 1 << 20;

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NotFound", "no such admin endpoint")
}

/// A method a native route does not take: 405 with a reason (axum's own 405 has
/// an empty body), `Allow` still listing the methods it takes.
async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("method {method} is not allowed on this endpoint"),
    )
}

/// The admin routes over `table`, behind `access`.
pub fn router(table: Arc<Table>, access: Access) -> Router {
    router_with_tls(table, access, TlsReloader::default())
}

/// The admin routes, with the TLS listeners that `POST /api/v1/tls/reload` reloads.
pub fn router_with_tls(table: Arc<Table>, access: Access, tls: TlsReloader) -> Router {
    router_with_reload(table, access, tls, None)
}

/// The admin routes, with the serve loop that `POST /api/v1/reload` asks.
pub fn router_with_reload(
    table: Arc<Table>,
    access: Access,
    tls: TlsReloader,
    reload: Option<tokio::sync::mpsc::Sender<ReloadRequest>>,
) -> Router {
    let registry = Arc::new(metrics::registry(Arc::clone(&table)));
    let state = AppState {
        table,
        access: Arc::new(access),
        tls,
        reload,
    };
    let api = Router::new()
        .route(
            "/api/v1/upstreams",
            get(native::list_upstreams).post(native::create_upstream),
        )
        .route(
            "/api/v1/upstreams/{name}",
            get(native::get_upstream).delete(native::delete_upstream),
        )
        .route(
            "/api/v1/upstreams/{name}/servers",
            get(native::list_servers).post(native::add_server),
        )
        .route(
            "/api/v1/upstreams/{name}/servers/{server}",
            get(native::get_server)
                .patch(native::patch_server)
                .delete(native::delete_server),
        )
        .route(
            "/api/v1/upstreams/{name}/health_check",
            get(native::get_health_check)
                .put(native::put_health_check)
                .delete(native::delete_health_check),
        )
        .route("/api/v1/batch", post(native::batch))
        .route("/api/v1/events", get(native::events))
        .route("/api/v1/tls/reload", post(process::tls_reload))
        .route("/api/v1/cluster", get(native::cluster))
        .route("/api/v1/whoami", get(native::whoami))
        .route("/api/v1/reload", post(process::reload_config))
        .route("/api/v1/logs/reopen", post(process::reopen_logs))
        .route("/healthcheck", get(status::handle))
        .route("/livez", get(probes::livez))
        .route("/readyz", get(probes::readyz))
        .route(
            "/metrics",
            get(move |headers: axum::http::HeaderMap| {
                metrics::handle(Arc::clone(&registry), headers)
            }),
        )
        .route("/ups_api", any(ups_api::handle))
        .route("/api", any(nginx::handle_root))
        .route("/api/", any(nginx::handle_root))
        .route("/api/{*rest}", any(nginx::handle))
        .merge(dashboard::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    api.layer(middleware::from_fn_with_state(state.clone(), guard::guard))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

// The binding lives here rather than in `listener`, beside the router it
// builds, so that `listener` never has to import this file.
impl AdminServer {
    /// Binds the admin listener (port 0 picks a free port). Refuses a listener
    /// reachable from the network with neither rules nor a token.
    pub fn bind(config: &AdminConfig, table: Arc<Table>) -> Result<AdminServer, AdminError> {
        AdminServer::bind_with_tls(config, table, TlsReloader::default())
    }

    /// [`AdminServer::bind`], with the TLS listeners the API may reload.
    pub fn bind_with_tls(
        config: &AdminConfig,
        table: Arc<Table>,
        tls: TlsReloader,
    ) -> Result<AdminServer, AdminError> {
        AdminServer::bind_with_reload(config, table, tls, None)
    }

    /// [`AdminServer::bind_with_tls`], with the serve loop `POST /api/v1/reload`
    /// asks to reload the configuration file.
    pub fn bind_with_reload(
        config: &AdminConfig,
        table: Arc<Table>,
        tls: TlsReloader,
        reload: Option<tokio::sync::mpsc::Sender<ReloadRequest>>,
    ) -> Result<AdminServer, AdminError> {
        let access = Access::from_config(config);
        let socket = listener::bind(config, &access)?;
        let app = router_with_reload(table, access, tls, reload);
        Ok(AdminServer::new(socket, app))
    }
}
