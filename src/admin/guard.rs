//! The access check in front of every admin handler, and the shape a refusal
//! takes: each family of paths (the native API, the seed's `/ups_api`, the
//! NGINX Plus API) answers in its own error shape, so a client of one API
//! never sees another's.
//!
//! The policy itself (who may do what) is [`super::access`]'s; this file only
//! asks it and words the answer. It must not touch the table.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::warn;

use super::app::AppState;
use super::error::ApiError;
use super::{nginx, ups_api};

/// The middleware: runs the handler when access allows, else answers the
/// refusal in the path's family's shape.
pub async fn guard(
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
