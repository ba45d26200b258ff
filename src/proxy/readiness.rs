//! Whether this process should be sent traffic: what `GET /readyz` on the
//! admin listener and a listener's `health_uri` answer.
//!
//! One [`Readiness`] per [`super::Proxy`]: `Starting` while the listeners are
//! being bound, `Serving` once they all are (the kernel queues connections
//! from then on; the accept loops start right after), `ShuttingDown` from the
//! moment the shutdown signal (SIGTERM, SIGINT) arrives
//! — before `[runtime] shutdown_delay` and the listeners closing, so that an
//! outer balancer probing either endpoint stops sending first.
//!
//! `/readyz` also waits, with `[cluster]`, for the table to have been in step
//! with the cluster store once. That is latched: an etcd outage afterwards does
//! not make the instance unready (it keeps serving its last table, as every
//! instance of the fleet would, and an outer balancer taking them all out would
//! turn a control-plane outage into a data-plane one). `/metrics` and
//! `/api/v1/cluster` show the store's state as it is now.
//!
//! Reading it is one relaxed atomic load; a listener's `health_uri` costs a
//! path compare per request only when it is set.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU8};

use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use super::body::ProxyBody;
use crate::upstream::Table;

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Listeners being bound.
    Starting,
    /// Listeners bound: serving.
    Serving,
    /// The shutdown signal arrived.
    ShuttingDown,
}

/// The proxy's readiness, shared by its listeners and the admin API.
#[derive(Debug, Default)]
pub struct Readiness {
    /// A [`Phase`] as a number.
    phase: AtomicU8,
    /// With `[cluster]`: the table was once seen in step with the store.
    cluster_synced: AtomicBool,
}

const STARTING: u8 = 0;
const SERVING: u8 = 1;
const SHUTTING_DOWN: u8 = 2;

impl Readiness {
    pub fn new() -> Readiness {
        Readiness::default()
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Relaxed) {
            STARTING => Phase::Starting,
            SERVING => Phase::Serving,
            _ => Phase::ShuttingDown,
        }
    }

    /// The listeners are bound: ready (unless shutting down already).
    pub fn set_serving(&self) {
        let _ = self
            .phase
            .compare_exchange(STARTING, SERVING, Relaxed, Relaxed);
    }

    /// The shutdown signal arrived: not ready, for good.
    pub fn set_shutting_down(&self) {
        self.phase.store(SHUTTING_DOWN, Relaxed);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.phase.load(Relaxed) == SHUTTING_DOWN
    }

    /// Ready, or why not (`GET /readyz`): serving, and with `[cluster]`, the
    /// table in step with the store (once; see the module's doc).
    pub fn check(&self, table: &Table) -> Result<(), NotReady> {
        match self.phase() {
            Phase::Starting => return Err(NotReady::Starting),
            Phase::ShuttingDown => return Err(NotReady::ShuttingDown),
            Phase::Serving => {}
        }
        cluster_check(&self.cluster_synced, table)
    }
}

/// Why the instance is not ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("listeners are not bound yet")]
    Starting,
    #[error("shutting down")]
    ShuttingDown,
    #[error("not in step with the cluster store yet: cannot reach the cluster store: {0}")]
    StoreUnreachable(String),
    #[error("not in step with the cluster store yet: the cluster store has not answered yet")]
    StoreSilent,
    #[error(
        "not in step with the cluster store yet: catching up with the cluster store (revision {applied} of {store})"
    )]
    CatchingUp { applied: u64, store: u64 },
}

/// With `[cluster]`: whether the table has been in step with the store, latched
/// in `synced` the first time it is.
pub fn cluster_check(synced: &AtomicBool, table: &Table) -> Result<(), NotReady> {
    if synced.load(Relaxed) {
        return Ok(());
    }
    let Some(c) = table.store().and_then(|s| s.cluster_status()) else {
        return Ok(());
    };
    if c.connected && c.applied_revision >= c.store_revision {
        synced.store(true, Relaxed);
        return Ok(());
    }
    Err(match (&c.last_error, c.connected) {
        (Some(e), false) => NotReady::StoreUnreachable(e.clone()),
        (None, false) => NotReady::StoreSilent,
        (_, true) => NotReady::CatchingUp {
            applied: c.applied_revision,
            store: c.store_revision,
        },
    })
}

/// A listener's `health_uri`: that path is answered by the listener itself,
/// before routing, with 200, or 503 while shutting down. Such requests are not
/// forwarded and not counted in the listener's requests (HAProxy's
/// `monitor-uri`).
#[derive(Debug)]
pub struct HealthUri {
    path: Box<str>,
    readiness: Arc<Readiness>,
}

impl HealthUri {
    pub fn new(path: &str, readiness: Arc<Readiness>) -> HealthUri {
        HealthUri {
            path: path.into(),
            readiness,
        }
    }

    /// Whether a request's path (without its query) is this one.
    pub fn matches(&self, path: &str) -> bool {
        *self.path == *path
    }

    /// 200 (`true`), or 503 while shutting down.
    pub fn ok(&self) -> bool {
        !self.readiness.is_shutting_down()
    }

    /// The answer on hyper's path.
    pub fn response(&self) -> Response<ProxyBody> {
        let (status, body) = answer(self.ok());
        let mut resp = Response::new(ProxyBody::text(body));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

fn answer(ok: bool) -> (StatusCode, &'static str) {
    if ok {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    }
}

/// The answer on the plain HTTP/1.1 path, head and body, into `out`; `date` is
/// the `Date` header's value.
pub fn write_h1(ok: bool, head_request: bool, close: bool, date: &[u8], out: &mut Vec<u8>) {
    let (status, body) = answer(ok);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\ncache-control: no-store\r\ncontent-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    out.extend_from_slice(date);
    if close {
        out.extend_from_slice(b"\r\nconnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    if !head_request {
        out.extend_from_slice(body.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_go_forward_only() {
        let r = Readiness::new();
        assert_eq!(r.phase(), Phase::Starting);
        r.set_serving();
        assert_eq!(r.phase(), Phase::Serving);
        r.set_shutting_down();
        assert!(r.is_shutting_down());
        // A listener added by a reload during the shutdown does not undo it.
        r.set_serving();
        assert_eq!(r.phase(), Phase::ShuttingDown);
    }

    #[test]
    fn ready_only_while_serving() {
        let config = crate::config::Config::single_upstream(
            "127.0.0.1:0".parse().unwrap(),
            vec![crate::config::ServerConfig::new("127.0.0.1:1")],
        );
        let table = Table::from_config(&config).unwrap();
        let r = Readiness::new();
        assert_eq!(r.check(&table), Err(NotReady::Starting));
        assert!(NotReady::Starting.to_string().contains("not bound"));
        r.set_serving();
        assert_eq!(r.check(&table), Ok(()));
        r.set_shutting_down();
        assert_eq!(r.check(&table), Err(NotReady::ShuttingDown));
    }

    #[test]
    fn health_uri_matches_its_path_exactly_and_turns_503() {
        let r = Arc::new(Readiness::new());
        let h = HealthUri::new("/healthz", Arc::clone(&r));
        assert!(h.matches("/healthz"));
        for other in ["/healthz/", "/healthz2", "/Healthz", "/", ""] {
            assert!(!h.matches(other), "{other}");
        }
        assert_eq!(h.response().status(), StatusCode::OK);
        r.set_shutting_down();
        assert!(!h.ok());
        assert_eq!(h.response().status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn the_h1_answer_is_framed() {
        let date = b"Sun, 06 Nov 1994 08:49:37 GMT";
        let mut out = Vec::new();
        write_h1(true, false, false, date, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncache-control: no-store\r\n\
             content-length: 3\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\nok\n"
        );
        let mut out = Vec::new();
        write_h1(false, true, true, date, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(text.contains("content-length: 14\r\n"));
        assert!(text.ends_with("connection: close\r\n\r\n"), "{text}");
    }
}
