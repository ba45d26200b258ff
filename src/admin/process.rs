//! The endpoints that act on the process rather than on the table: reloading
//! the TLS certificates, reopening the access logs, reloading the
//! configuration file. None of them touches the table directly: a
//! configuration reload is handed to the serve loop, which owns it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::app::AppState;
use super::error::ApiError;

/// Reads every TLS listener's certificate files again. New handshakes get the new
/// certificates; open connections keep theirs. On failure the old ones stay.
pub async fn tls_reload(State(app): State<AppState>) -> Response {
    let tls = app.tls.clone();
    // File reads and key parsing: off the admin runtime's only thread.
    match tokio::task::spawn_blocking(move || tls.reload()).await {
        Ok(Ok(n)) => axum::Json(serde_json::json!({ "reloaded": n })).into_response(),
        Ok(Err(e)) => ApiError::unprocessable("TlsReloadFailed", e.to_string()).into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "TlsReloadFailed",
            e.to_string(),
        )
        .into_response(),
    }
}

/// `POST /api/v1/logs/reopen`: every access log opens its file again (after
/// logrotate moved it), as `SIGUSR1` does; the answer comes once they have.
pub async fn reopen_logs() -> Response {
    match crate::proxy::access_log::reopen_all().await {
        Ok(n) => axum::Json(serde_json::json!({ "reopened": n })).into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ReopenFailed",
            e.to_string(),
        )
        .into_response(),
    }
}

/// Re-reads the configuration file and applies what changed (see
/// [`crate::reload`]): 200 with what changed, 422 with every problem (nothing
/// changed), 409 when the process runs without a file.
pub async fn reload_config(State(app): State<AppState>) -> Response {
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
