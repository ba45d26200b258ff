//! `GET /livez` and `GET /readyz`: the health of switchyard itself, for an
//! outer balancer or an orchestrator (Kubernetes' liveness and readiness
//! probes).
//!
//! - `/livez`: 200 while the process runs (the admin API answering is the
//!   proof; it has its own thread and runtime).
//! - `/readyz`: 200 once the listeners are bound and the table is loaded (and,
//!   with `[cluster]`, has been in step with the store), 503 with the reason
//!   otherwise — from the moment SIGTERM arrives (see
//!   [`crate::proxy::readiness`]).
//!
//! Both are behind the same access rules as the rest of the admin API: a
//! prober must be allowed to read (no token is needed for a read).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Extension;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::app::AppState;
use crate::proxy::Readiness;

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

pub async fn livez() -> Response {
    text(StatusCode::OK, "ok\n".into())
}

pub async fn readyz(
    State(app): State<AppState>,
    readiness: Option<Extension<Arc<Readiness>>>,
) -> Response {
    let verdict = match readiness {
        Some(Extension(r)) => r.check(&app.table),
        // An admin API without a proxy (a library user, some tests): the table
        // alone decides, unlatched.
        None => crate::proxy::readiness::cluster_check(&AtomicBool::new(false), &app.table),
    };
    match verdict {
        Ok(()) => text(StatusCode::OK, "ready\n".into()),
        Err(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}
