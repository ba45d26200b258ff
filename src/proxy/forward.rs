//! The hyper path: every request the plain HTTP/1.1 path does not take (TLS
//! listeners, HTTP/2, bodies, upgrades, HTTPS and HTTP/2 upstreams), served by
//! hyper on both sides. Here the request is routed, checked against the
//! listener's limits, its headers made into what the server gets, and handed
//! to the exchange core (`exchange`) with hyper's client as the transport.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use futures_util::future::Either;
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::{Instant, timeout};

use super::access_log::{Record, Text};
use super::body::{LoggedBody, ProxyBody, UpstreamResponse};
use super::connect::connect_pooled;
use super::exchange::{self, Answered, AttemptError, Route, SendError, Transport};
use super::io::SendTimeout;
use super::listener::{Forwarder, Listening};
use super::pool::{self, Sender};
use super::request::{
    Client, FORWARDED, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REAL_IP,
    X_REQUEST_ID, connection_tokens, forwarded_element, host_without_port, new_request_id,
    request_key, strip_hop_by_hop, valid_host,
};
use super::request_body::{BodyVerdict, ClientBodyFault, UpstreamBody};
use crate::config::Scheme;
use crate::upstream::{Server, Upstream, UpstreamSettings};

/// What is kept of a body-less request so that it can be sent again.
struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Replay {
    fn request(&self) -> Request<UpstreamBody> {
        let mut req = Request::new(UpstreamBody::Empty);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

fn text_response(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::text(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The request's host without port, from `Host` or the URI (HTTP/2 `:authority`).
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))?;
    host_without_port(raw)
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// An HTTP/2 request carries its scheme and authority in the URI.
fn h2_form(mut req: Request<UpstreamBody>, scheme: Scheme) -> Request<UpstreamBody> {
    // HTTP/2 frames bodies itself; the HTTP/1.1 coding header is not allowed.
    req.headers_mut().remove(header::TRANSFER_ENCODING);
    if req.uri().authority().is_some() {
        return req;
    }
    let authority = req
        .headers_mut()
        .remove(header::HOST)
        .and_then(|h| h.to_str().ok().map(str::to_string))
        .unwrap_or_else(|| "localhost".to_string());
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_string();
    if let Ok(uri) = Uri::builder()
        .scheme(scheme.as_str())
        .authority(authority.as_str())
        .path_and_query(pq)
        .build()
    {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = Version::HTTP_2;
    req
}

impl Forwarder {
    /// Answers one request (hyper's path), counted in the listener's stats.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        client: Client,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let exchange = self.stats.request();
        let mut req = req;
        if self.request_id && !req.headers().contains_key(&X_REQUEST_ID) {
            let id = new_request_id();
            if let Ok(v) = HeaderValue::from_bytes(&id) {
                req.headers_mut().insert(X_REQUEST_ID.clone(), v);
            }
        }
        let mut record = self.access_log.as_ref().map(|_| record_of(&req, &client));
        let resp = self.respond(req, client, &mut record).await;
        exchange.answered(resp.status().as_u16());
        Ok(match (record, &self.access_log) {
            (Some(mut r), Some(log)) => {
                r.status = resp.status().as_u16();
                let (parts, body) = resp.into_parts();
                let head_bytes = head_bytes(&parts);
                Response::from_parts(
                    parts,
                    ProxyBody::Logged(Box::new(LoggedBody {
                        inner: body,
                        record: Some(r),
                        log: Arc::clone(log),
                        head_bytes,
                        body_bytes: 0,
                    })),
                )
            }
            _ => resp,
        })
    }

    async fn respond(
        &self,
        req: Request<Incoming>,
        client: Client,
        record: &mut Option<Box<Record>>,
    ) -> Response<ProxyBody> {
        let mut req = req;
        if let Err(why) = settle_host(&mut req) {
            return text_response(StatusCode::BAD_REQUEST, format!("400 Bad Request: {why}\n"));
        }
        if !plain_chunked(&req) {
            return text_response(
                StatusCode::NOT_IMPLEMENTED,
                "501 Not Implemented: the only transfer coding taken is chunked\n".into(),
            );
        }
        let Some(target) = self.router.route(request_host(&req), req.uri().path()) else {
            return text_response(
                StatusCode::NOT_FOUND,
                "404 Not Found: no route for this host and path\n".into(),
            );
        };
        let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
        if target_len > self.limits.max_uri_length {
            return text_response(
                StatusCode::URI_TOO_LONG,
                format!(
                    "414 URI Too Long: the request target has {target_len} bytes, the most is {}\n",
                    self.limits.max_uri_length
                ),
            );
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let (Some(limit), Some(len)) = (target.max_body_size, declared)
            && len > limit
        {
            return too_large(limit);
        }
        let Some(upstream) = self.table.load().by_slot(target.slot).cloned() else {
            return text_response(
                StatusCode::BAD_GATEWAY,
                format!(
                    "502 Bad Gateway: upstream \"{}\" does not exist\n",
                    target.upstream
                ),
            );
        };
        // A body of unknown length is counted as it streams.
        let limit = target.max_body_size.filter(|_| declared.is_none());
        forward(self, target.slot, &upstream, req, client, limit, record).await
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one `Host`, and a valid one;
/// an absolute-form target's authority replaces it. (HTTP/2 carries
/// `:authority` in the URI.)
fn settle_host<B>(req: &mut Request<B>) -> Result<(), &'static str> {
    if req.version() >= Version::HTTP_2 {
        return Ok(());
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    if second.is_some() {
        return Err("more than one Host header");
    }
    if first.is_some_and(|h| !valid_host(h.as_bytes())) {
        return Err("the Host header is not a valid authority");
    }
    let authority = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    match (authority, first.is_some()) {
        (Some(a), _) => {
            req.headers_mut().insert(header::HOST, a);
        }
        (None, false) if req.version() == Version::HTTP_11 => {
            return Err("an HTTP/1.1 request needs a Host header");
        }
        (None, _) => {}
    }
    Ok(())
}

/// Whether a request's transfer coding, if it has one, is `chunked` alone:
/// other codings (`gzip, chunked`, `identity, chunked`) are not decoded here,
/// and nginx refuses them too (501).
fn plain_chunked<B>(req: &Request<B>) -> bool {
    let mut codings = req.headers().get_all(header::TRANSFER_ENCODING).iter();
    match (codings.next(), codings.next()) {
        (None, _) => true,
        (Some(only), None) => only
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => false,
    }
}

/// The access-log record of a request that starts now.
fn record_of<B>(req: &Request<B>, client: &Client) -> Box<Record> {
    let mut r = Record::start(client.addr);
    let header = |name: &HeaderName| req.headers().get(name).map_or(&b""[..], |v| v.as_bytes());
    r.set(Text::Method, req.method().as_str().as_bytes());
    match req.uri().path_and_query() {
        Some(pq) => r.set(Text::Uri, pq.as_str().as_bytes()),
        None => r.set(Text::Uri, req.uri().to_string().as_bytes()),
    }
    r.protocol = match req.version() {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    };
    r.set(Text::Host, request_host(req).unwrap_or_default().as_bytes());
    r.set(Text::RequestId, header(&X_REQUEST_ID));
    r.set(Text::UserAgent, header(&header::USER_AGENT));
    r.set(Text::Referer, header(&header::REFERER));
    r
}

/// About how many bytes hyper writes for this response head (HTTP/1.1).
fn head_bytes(parts: &hyper::http::response::Parts) -> u64 {
    let status_line = 9 + 3 + 1 + parts.status.canonical_reason().map_or(0, str::len) + 2;
    let headers: usize = parts
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + 2 + v.len() + 2)
        .sum();
    (status_line + headers + 2) as u64
}

fn too_large(limit: u64) -> Response<ProxyBody> {
    let (status, text) = too_large_text(limit);
    text_response(status, text)
}

fn too_large_text(limit: u64) -> (StatusCode, String) {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("413 Content Too Large: this route takes request bodies up to {limit} bytes\n"),
    )
}

/// The request as the server gets it: hop-by-hop headers gone (an upgrade's
/// kept), `Host` from the URI's authority when it had none, the forwarding
/// headers added, an origin-form target.
fn upstream_head(
    forwarder: &Forwarder,
    client: &Client,
    parts: &mut hyper::http::request::Parts,
    upgrade: bool,
) {
    if parts.headers.get(header::HOST).is_none()
        && let Some(authority) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        parts.headers.insert(header::HOST, authority);
    }
    let upgrade_proto = parts.headers.get(header::UPGRADE).cloned();
    // `TE: trailers` says the client takes trailers, which the proxy passes on:
    // gRPC servers insist on it.
    let te_trailers = parts
        .headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    strip_hop_by_hop(&mut parts.headers);
    if te_trailers {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let (true, Some(proto)) = (upgrade, upgrade_proto) {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, proto);
    }
    forwarding_headers(forwarder, client, &mut parts.headers);
    parts.version = Version::HTTP_11;
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|pq| Uri::from(pq.clone()))
        .unwrap_or_else(|| Uri::from_static("/"));
}

/// `X-Forwarded-For` (appended to), `X-Real-IP`, `X-Forwarded-Proto`,
/// `X-Forwarded-Host` and, when the listener asks, RFC 7239 `Forwarded`.
fn forwarding_headers(forwarder: &Forwarder, client: &Client, headers: &mut HeaderMap) {
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", client.addr.ip())).ok(),
        None => Some(client.ip.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_REAL_IP.clone(), client.ip.clone());
    headers.insert(X_FORWARDED_PROTO.clone(), forwarder.proto.clone());
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    if forwarder.forwarded {
        let element = forwarded_element(
            client.addr.ip(),
            headers.get(header::HOST).map(HeaderValue::as_bytes),
            forwarder.proto.as_bytes(),
        );
        let value = match headers.get(&FORWARDED) {
            Some(prev) => [prev.as_bytes(), b", ", &element].concat(),
            None => element,
        };
        if let Ok(v) = HeaderValue::from_bytes(&value) {
            headers.insert(FORWARDED.clone(), v);
        }
    }
}

/// nginx's status for a client that closed its connection before the answer
/// (logged; the client is not there to read it).
const CLIENT_CLOSED: StatusCode = match StatusCode::from_u16(499) {
    Ok(s) => s,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// hyper's client as the exchange's transport: the request (kept for a
/// resend when it has no body), sent on a pooled or new connection.
struct HyperTransport {
    /// The request, until a send takes it (given back when it was not sent).
    pending: Option<Request<UpstreamBody>>,
    /// What makes the request again, when it may be sent again.
    replay: Option<Replay>,
    upgrade: bool,
    /// How the client's body ended, when it had one to come.
    verdict: Option<Arc<BodyVerdict>>,
    body_limit: Option<u64>,
}

impl Transport for HyperTransport {
    type Conn = Sender;
    type Response = (Response<Incoming>, Sender);

    fn checkout(&mut self, server: &Server) -> Option<Sender> {
        if self.upgrade {
            return None;
        }
        pool::of(server)?.checkout()
    }

    fn connect(
        &mut self,
        server: &Arc<Server>,
        settings: &UpstreamSettings,
    ) -> impl Future<Output = Result<Sender, AttemptError>> {
        connect_pooled(server, settings, self.upgrade)
    }

    async fn ready(&mut self, mut conn: Sender) -> Result<Sender, AttemptError> {
        match conn.ready().await {
            Ok(()) => Ok(conn),
            Err(_) => Err(AttemptError::ClosedBeforeReady),
        }
    }

    async fn send(
        &mut self,
        mut conn: Sender,
        _server: &Server,
        settings: &UpstreamSettings,
        _sent_at: Instant,
    ) -> Result<(Response<Incoming>, Sender), SendError> {
        let Some(mut req) = self
            .pending
            .take()
            .or_else(|| self.replay.as_ref().map(Replay::request))
        else {
            return Err(SendError::Failed(AttemptError::ClosedBeforeReady));
        };
        if conn.is_h2() {
            req = h2_form(req, settings.scheme);
        }
        let read = settings.timeouts.read;
        match timeout(read, conn.send(req)).await {
            // A switch the client never asked for would leave its connection
            // speaking nothing it knows: the server's failure, as on the
            // plain path.
            Ok(Ok(resp)) if resp.status() == StatusCode::SWITCHING_PROTOCOLS && !self.upgrade => {
                Err(SendError::Failed(AttemptError::Response(
                    "101 Switching Protocols without an upgrade".into(),
                )))
            }
            Ok(Ok(resp)) => Ok((resp, conn)),
            Ok(Err(mut e)) => {
                self.pending = e.take_message();
                Err(SendError::Stale(AttemptError::Send(e.into_error())))
            }
            Err(_) => Err(SendError::Failed(AttemptError::ResponseTimeout(read))),
        }
    }

    fn can_send(&self) -> bool {
        self.pending.is_some() || self.replay.is_some()
    }

    fn client_fault(&self) -> Option<(StatusCode, String)> {
        // The client broke its own body: not the server's fault, and no other
        // server would fare better.
        Some(match self.verdict.as_ref()?.fault()? {
            ClientBodyFault::TooLarge => too_large_text(self.body_limit.unwrap_or(0)),
            ClientBodyFault::Aborted => (
                CLIENT_CLOSED,
                "499 Client Closed Request: the request body ended before its length\n".into(),
            ),
            ClientBodyFault::Malformed => (
                StatusCode::BAD_REQUEST,
                "400 Bad Request: the request body's framing is not valid\n".into(),
            ),
        })
    }

    fn status(response: &Self::Response) -> u16 {
        response.0.status().as_u16()
    }
}

async fn forward(
    forwarder: &Forwarder,
    slot: usize,
    upstream: &Upstream,
    mut req: Request<Incoming>,
    client: Client,
    body_limit: Option<u64>,
    record: &mut Option<Box<Record>>,
) -> Response<ProxyBody> {
    let key = request_key(upstream, &req, client.addr.ip());
    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    upstream_head(forwarder, &client, &mut parts, upgrade);
    // hyper's client sends a GET's or HEAD's body only when the head says how
    // it is framed; a body of unknown length would be dropped without it.
    if !body.is_end_stream()
        && matches!(parts.method, Method::GET | Method::HEAD)
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        parts.headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }

    let settings = &upstream.settings;
    let replay = (body.is_end_stream()
        && !upgrade
        && (is_idempotent(&parts.method) || settings.retry.non_idempotent))
        .then(|| Replay {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
        });
    // Watched (and so allocated) only when there is a body to come.
    let (body, verdict) = if body.is_end_stream() {
        (UpstreamBody::Client(body), None)
    } else {
        let verdict = Arc::new(BodyVerdict::default());
        let watched = UpstreamBody::Watched {
            body,
            left: body_limit,
            verdict: Arc::clone(&verdict),
        };
        (watched, Some(verdict))
    };
    let mut transport = HyperTransport {
        pending: Some(Request::from_parts(parts, body)),
        replay,
        upgrade,
        verdict,
        body_limit,
    };
    let route = Route {
        table: &forwarder.table,
        upstream,
        slot,
        key,
    };
    match exchange::run(&route, &mut transport, record).await {
        Ok(answered) => {
            let verdict = transport.verdict.take();
            respond(upstream, answered, client_upgrade, verdict)
        }
        Err((status, text)) => text_response(status, text),
    }
}

fn respond(
    upstream: &Upstream,
    answered: Answered<(Response<Incoming>, Sender)>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    verdict: Option<Arc<BodyVerdict>>,
) -> Response<ProxyBody> {
    let Answered {
        response: (mut resp, sender),
        attempt,
        ..
    } = answered;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let (parts, _) = resp.into_parts();
        if let Some(lease) = attempt.into_lease() {
            tokio::spawn(super::upgrade::tunnel(
                client_upgrade,
                upstream_upgrade,
                lease,
                sender,
            ));
        }
        return Response::from_parts(parts, ProxyBody::empty());
    }
    let (mut parts, body) = resp.into_parts();
    // A chunked body's length is the chunks': a `Content-Length` beside it
    // is the server's mistake and would frame the client's copy wrong.
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(&mut parts.headers);
    // The client's connection has its own version; an HTTP/1.0 server's answer
    // must not make hyper speak 1.0 to a 1.1 client.
    parts.version = Version::HTTP_11;
    Response::from_parts(
        parts,
        ProxyBody::Upstream(UpstreamResponse::new(
            body,
            attempt,
            sender,
            upstream.settings.timeouts.read,
            verdict,
        )),
    )
}

/// Serves a client connection with hyper (HTTP/1.1 or HTTP/2) until it closes;
/// when `shutdown` turns, hyper finishes the requests in flight and closes.
pub(super) async fn serve_hyper<I>(
    io: I,
    listening: &Listening,
    client: Client,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let forwarder = Arc::clone(&listening.forwarder);
    let health = listening.health.clone();
    // Boxed: hyper keeps room for the service's future in every connection,
    // idle or not, so the (large) forwarding future is allocated per request
    // instead (BENCHMARKS.md, idle RSS).
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        // `health_uri`, before routing; any method, HTTP/1.1 or HTTP/2.
        if let Some(h) = health.as_ref().filter(|h| h.matches(req.uri().path())) {
            return Either::Left(std::future::ready(Ok(h.response())));
        }
        Either::Right(Box::pin(Arc::clone(&forwarder).handle(req, client.clone())))
    });
    let conn = listening.builder.serve_connection_with_upgrades(
        TokioIo::new(SendTimeout::client(io, listening.limits.send_timeout)),
        service,
    );
    tokio::pin!(conn);
    if !*shutdown.borrow() {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = shutdown.changed() => {}
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}
