//! What a listener serves with: its request handler's settings
//! ([`Forwarder`]: routes, limits, access log, forwarded headers) and how
//! hyper serves its connections. Swapped whole by a reload; read per
//! connection by both HTTP paths.

use std::sync::Arc;

use hyper::header::HeaderValue;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

use super::access_log::AccessLog;
use super::error::ProxyError;
use super::readiness::{HealthUri, Readiness};
use super::router::Router;
use super::stats::ListenerStats;
use crate::config::{ClientLimits, ListenerConfig};
use crate::tls::ListenerTls;
use crate::upstream::Table;

/// The request handler of one listener.
#[derive(Debug)]
pub struct Forwarder {
    pub(super) router: Router,
    pub(super) table: Arc<Table>,
    pub(super) limits: ClientLimits,
    /// `X-Forwarded-Proto`: `https` on TLS listeners.
    pub(super) proto: HeaderValue,
    /// The listener's counters (requests and how they ended).
    pub(super) stats: Arc<super::stats::ListenerStats>,
    /// Where finished requests are logged, when the listener has an access log.
    pub(super) access_log: Option<Arc<AccessLog>>,
    /// Make an `X-Request-ID` when the client sent none.
    pub(super) request_id: bool,
    /// Add an RFC 7239 `Forwarded` header.
    pub(super) forwarded: bool,
}

impl Forwarder {
    /// A handler for one listener; `tls` when it terminates TLS; requests are
    /// counted into `stats`.
    pub fn new(
        router: Router,
        table: Arc<Table>,
        tls: bool,
        limits: ClientLimits,
        stats: Arc<super::stats::ListenerStats>,
    ) -> Self {
        let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
        Forwarder {
            router,
            table,
            limits,
            proto,
            stats,
            access_log: None,
            request_id: true,
            forwarded: false,
        }
    }

    /// The listener's access log, request id and `Forwarded` settings.
    pub fn with_listener_options(mut self, l: &crate::config::ListenerConfig) -> Self {
        self.access_log = l.access_log.as_ref().map(AccessLog::open);
        self.request_id = l.request_id;
        self.forwarded = l.forwarded;
        self
    }
}

/// What a listener serves with; swapped whole by a reload, read per connection.
pub(super) struct Listening {
    pub forwarder: Arc<Forwarder>,
    pub tls: Option<Arc<ListenerTls>>,
    pub limits: ClientLimits,
    /// How hyper serves a connection (made for `limits`).
    pub builder: auto::Builder<TokioExecutor>,
    /// `health_uri`: answered here, before routing.
    pub health: Option<Arc<HealthUri>>,
    /// Cleartext connections start on the plain HTTP/1.1 path (`plain_http1`).
    pub plain_http1: bool,
}

impl Listening {
    /// Builds what `l` asks for (TLS files are read here); requests count into
    /// `stats` (the listener's, kept across reloads).
    pub fn new(
        l: &ListenerConfig,
        table: &Arc<Table>,
        stats: Arc<ListenerStats>,
        readiness: &Arc<Readiness>,
    ) -> Result<Listening, ProxyError> {
        let router = Router::new(&l.routes, |name| table.slot(name));
        let tls = match &l.tls {
            Some(t) => Some(Arc::new(ListenerTls::new(l.listen, t).map_err(
                |source| ProxyError::Tls {
                    addr: l.listen,
                    source: Box::new(source),
                },
            )?)),
            None => None,
        };
        stats.set_tls(tls.is_some());
        let health = l
            .health_uri
            .as_deref()
            .map(|path| Arc::new(HealthUri::new(path, Arc::clone(readiness))));
        let forwarder = Forwarder::new(router, Arc::clone(table), tls.is_some(), l.limits, stats)
            .with_listener_options(l);
        Ok(Listening {
            forwarder: Arc::new(forwarder),
            tls,
            limits: l.limits,
            builder: connection_builder(&l.limits),
            health,
            plain_http1: l.plain_http1,
        })
    }
}

fn connection_builder(limits: &ClientLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_size);
    // hyper keeps up to 100 headers on the stack; another limit costs a heap
    // allocation per request, so it is set only when asked for.
    if limits.max_headers != ClientLimits::default().max_headers {
        builder.http1().max_headers(limits.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX));
    builder
}
