//! The admin API: its own listener, served by axum on its own thread and runtime,
//! so neither admin load nor a slow state-file fsync can starve the data plane.
//!
//! Every door here — the native API ([`native`]), the seed's `/ups_api`
//! ([`ups_api`]) and the NGINX Plus API ([`nginx`]) — parses its input into `upstream::Command`s and hands them to
//! `Table::apply_as`; none of them touches the table any other way. The status
//! page ([`status`]) and `/metrics` ([`metrics`]) only read. Access control
//! ([`access`]) runs before any handler. `GET /` is the dashboard ([`dashboard`]),
//! a page that uses the same API.

pub mod access;
mod dashboard;
mod error;
pub mod metrics;
mod native;
mod nginx;
mod probes;
pub mod status;
mod ups_api;
pub mod views;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use tracing::{info, warn};

pub use access::Access;
pub use error::ApiError;

use crate::config::AdminConfig;
use crate::reload::ReloadRequest;
use crate::tls::TlsReloader;
use crate::upstream::Table;

/// Runs the table's single writer off the async threads (it fsyncs the state
/// file). Every door's writes go through here; the outer error is a writer that
/// panicked, the inner one a refused change (with the failing command's index).
pub(crate) async fn write(
    table: &Arc<Table>,
    commands: Vec<crate::upstream::Command>,
    origin: String,
) -> Result<Result<Vec<Arc<crate::upstream::Server>>, crate::upstream::BatchError>, String> {
    let table = Arc::clone(table);
    tokio::task::spawn_blocking(move || table.apply_batch_as(&commands, &origin))
        .await
        .map_err(|e| format!("the table's writer failed: {e}"))
}

/// Bodies larger than this are refused with 413.
pub const MAX_BODY: usize = 1 << 20;

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

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on {addr} (admin): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Exposed(String),
    #[error("cannot start the admin thread: {0}")]
    Thread(std::io::Error),
}

/// The admin listener, bound and ready to serve.
pub struct AdminServer {
    listener: std::net::TcpListener,
    app: Router,
}

async fn guard(
    State(app): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    match app.access.check(client.ip(), req.method(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(denied) => {
            let path = req.uri().path();
            warn!(%client, method = %req.method(), %path, reason = %denied.message, "admin request refused");
            // Each family of paths answers in its own shape.
            match Family::of(path) {
                Family::UpsApi => ups_api::denied(denied.status, denied.message),
                Family::Nginx => nginx::error(denied.status, denied.code, denied.message),
                Family::Native => {
                    ApiError::new(denied.status, denied.code, denied.message).into_response()
                }
            }
        }
    }
}

/// Which API a path belongs to, for the shape of its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Native,
    UpsApi,
    Nginx,
}

impl Family {
    fn of(path: &str) -> Family {
        if path == "/ups_api" {
            return Family::UpsApi;
        }
        let Some(rest) = path.strip_prefix("/api") else {
            return Family::Native;
        };
        let first = rest.trim_start_matches('/').split('/').next().unwrap_or("");
        if !(rest.is_empty() || rest.starts_with('/')) || first == "v1" {
            Family::Native
        } else {
            Family::Nginx
        }
    }
}

/// Reads every TLS listener's certificate files again. New handshakes get the new
/// certificates; open connections keep theirs. On failure the old ones stay.
async fn tls_reload(State(app): State<AppState>) -> Response {
    let tls = app.tls.clone();
    // File reads and key parsing: off the admin runtime's only thread.
    match tokio::task::spawn_blocking(move || tls.reload()).await {
        Ok(Ok(n)) => axum::Json(serde_json::json!({ "reloaded": n })).into_response(),
        Ok(Err(e)) => ApiError::unprocessable("TlsReloadFailed", e).into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "TlsReloadFailed",
            e.to_string(),
        )
        .into_response(),
    }
}

/// `POST /api/v1/logs/reopen`: every access log opens its file again (after
/// logrotate moved it), as `SIGUSR1` does.
async fn reopen_logs() -> Response {
    let n = crate::proxy::access_log::reopen_all();
    axum::Json(serde_json::json!({ "reopened": n })).into_response()
}

/// Re-reads the configuration file and applies what changed (see
/// [`crate::reload`]): 200 with what changed, 422 with every problem (nothing
/// changed), 409 when the process runs without a file.
async fn reload_config(State(app): State<AppState>) -> Response {
    let Some(tx) = app.reload.clone() else {
        return ApiError::new(
            StatusCode::CONFLICT,
            "NoConfigFile",
            "this process runs without a configuration file (proxy or demo); nothing to reload",
        )
        .into_response();
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let gone = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ReloadUnavailable",
            "the process is shutting down",
        )
        .into_response()
    };
    if tx.send(reply).await.is_err() {
        return gone();
    }
    match answer.await {
        Ok(Ok(report)) => axum::Json(report).into_response(),
        Ok(Err(problems)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(serde_json::json!({
                "error": {
                    "code": "ReloadRejected",
                    "message": problems.join("\n"),
                    "problems": problems,
                }
            })),
        )
            .into_response(),
        Err(_) => gone(),
    }
}

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
        .route("/api/v1/tls/reload", post(tls_reload))
        .route("/api/v1/cluster", get(native::cluster))
        .route("/api/v1/whoami", get(native::whoami))
        .route("/api/v1/reload", post(reload_config))
        .route("/api/v1/logs/reopen", post(reopen_logs))
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
    api.layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

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
        access
            .check_exposure(config.listen)
            .map_err(AdminError::Exposed)?;
        let listener =
            std::net::TcpListener::bind(config.listen).map_err(|source| AdminError::Bind {
                addr: config.listen,
                source,
            })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| AdminError::Bind {
                addr: config.listen,
                source,
            })?;
        let mut app = router_with_reload(table, access, tls, reload);
        // For the NGINX Plus door's `/nginx` (`address`).
        if let Ok(local) = listener.local_addr() {
            app = app.layer(axum::Extension(nginx::AdminAddr(local)));
        }
        Ok(AdminServer { listener, app })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// What `GET /readyz` reads: the proxy's readiness. Without it, the table
    /// alone decides.
    pub fn with_readiness(mut self, readiness: Arc<crate::proxy::Readiness>) -> AdminServer {
        self.app = self.app.layer(axum::Extension(readiness));
        self
    }

    /// Serves on a thread of its own, with its own single-threaded runtime, for the
    /// life of the process.
    pub fn spawn(self) -> Result<std::thread::JoinHandle<()>, AdminError> {
        std::thread::Builder::new()
            .name("switchyard-admin".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        warn!(error = %e, "cannot start the admin runtime");
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(self.listener) {
                        Ok(l) => l,
                        Err(e) => {
                            warn!(error = %e, "cannot use the admin socket");
                            return;
                        }
                    };
                    if let Ok(addr) = listener.local_addr() {
                        info!(%addr, "admin API listening");
                    }
                    let app = self.app.into_make_service_with_connect_info::<SocketAddr>();
                    if let Err(e) = axum::serve(listener, app).await {
                        warn!(error = %e, "admin API stopped");
                    }
                });
            })
            .map_err(AdminError::Thread)
    }
}

#[cfg(test)]
mod tests {
    use super::Family;

    #[test]
    fn paths_belong_to_their_family() {
        assert_eq!(Family::of("/ups_api"), Family::UpsApi);
        assert_eq!(Family::of("/api"), Family::Nginx);
        assert_eq!(Family::of("/api/"), Family::Nginx);
        assert_eq!(Family::of("/api/9/http/upstreams"), Family::Nginx);
        assert_eq!(Family::of("/api/v10"), Family::Nginx);
        assert_eq!(Family::of("/api/v1"), Family::Native);
        assert_eq!(Family::of("/api/v1/upstreams"), Family::Native);
        assert_eq!(Family::of("/apix"), Family::Native);
        assert_eq!(Family::of("/metrics"), Family::Native);
    }
}
