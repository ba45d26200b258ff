//! Forwarding one request: route, pick, connect or reuse, send, retry, answer.
//!
//! Retries follow what is safe: a connect failure sent nothing, so the request
//! always goes on to the next server; a failure after sending is retried only for
//! a request that can be sent again (no body, and idempotent unless the upstream
//! allows more). A stale keep-alive connection — the server closed it while it
//! sat in the pool — is not held against the server: the request is sent again on
//! another connection to the same server.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body::Body as _;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::time::{Instant, timeout};
use tracing::{debug, warn};

use super::access_log::{AccessLog, Record, Text};
use super::body::{LoggedBody, ProxyBody, UpstreamBody, UpstreamResponse};
use super::io::UpstreamIo;
use super::pool::Sender;
use super::router::Router;
use crate::config::{Balance, ClientLimits, HashKey, Scheme, UpstreamProtocol};
use crate::health::passive;
use crate::upstream::balance::hash_key;
use crate::upstream::{Lease, Server, Table, Tried, Upstream, UpstreamSettings};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub(super) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), plus the
/// non-standard ones that clients still send.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

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

/// A new request id: 128 random bits in hex.
pub(super) fn new_request_id() -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    let (a, b) = (fastrand::u64(..), fastrand::u64(..));
    for (i, byte) in a
        .to_be_bytes()
        .iter()
        .chain(b.to_be_bytes().iter())
        .enumerate()
    {
        out[2 * i] = HEX[(byte >> 4) as usize];
        out[2 * i + 1] = HEX[(byte & 15) as usize];
    }
    out
}

/// The RFC 7239 `Forwarded` element for a client: `for=IP;host=H;proto=P`
/// (an IPv6 address quoted and bracketed, a host quoted when it must be).
pub(super) fn forwarded_element(
    ip: std::net::IpAddr,
    host: Option<&[u8]>,
    proto: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    match ip {
        std::net::IpAddr::V4(v4) => out.extend_from_slice(format!("for={v4}").as_bytes()),
        std::net::IpAddr::V6(v6) => out.extend_from_slice(format!("for=\"[{v6}]\"").as_bytes()),
    }
    if let Some(h) = host.filter(|h| h.iter().all(|b| b.is_ascii_graphic() && *b != b'"')) {
        out.extend_from_slice(b";host=");
        let token = h
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(b));
        if !token {
            out.push(b'"');
        }
        out.extend_from_slice(h);
        if !token {
            out.push(b'"');
        }
    }
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(proto);
    out
}

/// Why one attempt on one server failed.
#[derive(Debug)]
pub(super) enum AttemptError {
    Connect(std::io::Error),
    ConnectTimeout(Duration),
    Handshake(hyper::Error),
    /// TLS set-up or handshake failed (certificate verification, among others).
    Tls(String),
    ClosedBeforeReady,
    Send(hyper::Error),
    /// Sending or reading on the plain HTTP/1.1 path failed.
    Io(std::io::Error),
    /// The server's response head was not valid HTTP/1.1.
    Response(String),
    ResponseTimeout(Duration),
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::Connect(e) => write!(f, "connect failed: {e}"),
            AttemptError::ConnectTimeout(d) => write!(f, "connect timed out after {d:?}"),
            AttemptError::Handshake(e) => write!(f, "connection setup failed: {e}"),
            AttemptError::Tls(e) => f.write_str(e),
            AttemptError::ClosedBeforeReady => f.write_str("connection closed before it was ready"),
            AttemptError::Send(e) => write!(f, "request failed: {e}"),
            AttemptError::Io(e) => write!(f, "request failed: {e}"),
            AttemptError::Response(e) => f.write_str(e),
            AttemptError::ResponseTimeout(d) => {
                write!(f, "no response headers within {d:?} (read_timeout)")
            }
        }
    }
}

/// The client of one connection, as every request on it is forwarded.
#[derive(Debug, Clone)]
pub struct Client {
    pub addr: SocketAddr,
    /// The address as a header value (`X-Real-IP`, `X-Forwarded-For`), made once
    /// per connection rather than formatted for every request.
    pub(super) ip: HeaderValue,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        let ip = HeaderValue::from_maybe_shared(bytes::Bytes::from(addr.ip().to_string()))
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Client { addr, ip }
    }
}

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

/// `example.com:8080` → `example.com`, `[::1]:8080` → `::1`.
pub(super) fn host_without_port(raw: &str) -> Option<&str> {
    if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: `[::1]:8080`.
        return rest.split(']').next();
    }
    Some(raw.rsplit_once(':').map_or(raw, |(h, _)| h))
}

/// The comma-separated tokens of every `Connection` header, trimmed.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
///
/// Runs twice per request (request and response), so it avoids the map's hashing
/// when none of them is present (the usual request) and allocates nothing.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Which of the eight are present, in one pass over the names (comparing
    // standard names is an integer compare): removing an absent one would
    // still hash it.
    let mut present = [false; 8];
    let mut any = false;
    for k in headers.keys() {
        if let Some(i) = hop_by_hop_index(k.as_str().as_bytes()) {
            present[i] = true;
            any = true;
        }
    }
    if !any {
        return;
    }
    let mut connection = headers.get_all(header::CONNECTION).iter();
    match (connection.next().cloned(), connection.next()) {
        (None, _) => {}
        // One `Connection` header (the usual case): its tokens are read from a
        // clone of the value (a reference count), so the map is free to change.
        (Some(only), None) => {
            if let Ok(tokens) = only.to_str() {
                for name in tokens.split(',').map(str::trim) {
                    // `keep-alive` and the like go with the eight below.
                    if is_hop_by_hop(name) {
                        continue;
                    }
                    // By `&str`: looked up without building a `HeaderName`; an
                    // invalid name matches nothing.
                    headers.remove(name);
                }
            }
        }
        (Some(_), Some(_)) => {
            let named: Vec<HeaderName> = connection_tokens(headers)
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect();
            for name in &named {
                headers.remove(name);
            }
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
}

/// Whether a header name, in any case, is one of [`HOP_BY_HOP`]. The plain
/// path asks this of every header it relays, so the name is lower-cased into a
/// stack buffer and matched (a switch on the length), not compared with each of
/// the eight in turn.
pub(super) fn is_hop_by_hop(name: &str) -> bool {
    // The longest of the eight is 18 bytes; a longer name is none of them.
    let mut lower = [0u8; 18];
    let Some(lower) = lower.get_mut(..name.len()) else {
        return false;
    };
    lower.copy_from_slice(name.as_bytes());
    lower.make_ascii_lowercase();
    hop_by_hop_index(lower).is_some()
}

/// The position of a (lower-case) name in [`HOP_BY_HOP`]: a match on the
/// bytes, cheaper than comparing `HeaderName`s one by one.
fn hop_by_hop_index(name: &[u8]) -> Option<usize> {
    match name {
        b"connection" => Some(0),
        b"keep-alive" => Some(1),
        b"proxy-connection" => Some(2),
        b"proxy-authenticate" => Some(3),
        b"te" => Some(4),
        b"trailer" => Some(5),
        b"transfer-encoding" => Some(6),
        b"upgrade" => Some(7),
        _ => None,
    }
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// What a balancing key is read from: a hyper request, or a head on the plain
/// HTTP/1.1 path.
pub(super) trait KeySource {
    /// The request target (path and query).
    fn target(&self) -> Option<&str>;
    /// The first value of a header.
    fn header(&self, name: &str) -> Option<&[u8]>;
    /// A cookie's value, from every `Cookie` header.
    fn cookie(&self, name: &str) -> Option<&[u8]>;
}

impl<B> KeySource for Request<B> {
    fn target(&self) -> Option<&str> {
        self.uri().path_and_query().map(|pq| pq.as_str())
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers().get(name).map(HeaderValue::as_bytes)
    }
    fn cookie(&self, name: &str) -> Option<&[u8]> {
        cookie_in(
            self.headers()
                .get_all(header::COOKIE)
                .iter()
                .map(HeaderValue::as_bytes),
            name,
        )
    }
}

/// A cookie's value among `Cookie` header values.
pub(super) fn cookie_in<'a>(
    values: impl Iterator<Item = &'a [u8]>,
    name: &str,
) -> Option<&'a [u8]> {
    values
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_bytes())
}

pub(super) fn request_key(
    upstream: &Upstream,
    req: &impl KeySource,
    client: IpAddr,
) -> Option<u64> {
    match upstream.settings.balance {
        Balance::IpHash => Some(match client {
            // nginx's ip_hash keys IPv4 clients by their /24.
            IpAddr::V4(v4) => hash_key(&v4.octets()[..3]),
            IpAddr::V6(v6) => hash_key(&v6.octets()),
        }),
        Balance::Hash => match upstream.settings.hash_key.as_ref()? {
            HashKey::Uri => req.target().map(|t| hash_key(t.as_bytes())),
            HashKey::RemoteAddr => Some(match client {
                IpAddr::V4(v4) => hash_key(&v4.octets()),
                IpAddr::V6(v6) => hash_key(&v6.octets()),
            }),
            HashKey::Header(name) => req.header(name.as_str()).map(hash_key),
            HashKey::Cookie(name) => req.cookie(name).map(hash_key),
        },
        _ => None,
    }
}

/// A new connection for a request: for an HTTP/2 upstream, one at a time per
/// server, so that requests arriving together share the connection the first of
/// them opens.
async fn connect_pooled(
    server: &Server,
    settings: &UpstreamSettings,
    upgrade: bool,
) -> Result<Sender, AttemptError> {
    let h2 = matches!(
        settings.protocol,
        UpstreamProtocol::H2 | UpstreamProtocol::H2c
    );
    if !h2 || upgrade {
        return connect(server, settings).await;
    }
    let _gate = server.runtime.pool.h2_connect_gate().await;
    if let Some(s) = server.runtime.pool.checkout() {
        return Ok(s);
    }
    let sender = connect(server, settings).await?;
    if let Sender::H2(h2) = &sender {
        server.runtime.pool.checkin(Sender::H2(h2.clone()));
    }
    Ok(sender)
}

/// An HTTP/2 request carries its scheme and authority in the URI.
fn h2_form(mut req: Request<UpstreamBody>, scheme: Scheme) -> Request<UpstreamBody> {
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

/// Opens a new connection to `server` (TCP, then TLS for `https`, then HTTP/1.1 or
/// HTTP/2 as the upstream's `protocol` and ALPN say) and starts driving it.
async fn connect(server: &Server, settings: &UpstreamSettings) -> Result<Sender, AttemptError> {
    let timeouts = &settings.timeouts;
    let deadline = Instant::now() + timeouts.connect;
    let stream = open_tcp(server, deadline, timeouts.connect).await?;
    let io = UpstreamIo::new(stream, timeouts.send, Arc::clone(&server.runtime));
    let addr = server.sockaddr;
    if settings.scheme == Scheme::Http {
        return handshake(io, settings.protocol == UpstreamProtocol::H2c, addr).await;
    }
    let Some(client) = &settings.tls_client else {
        return Err(AttemptError::Tls(
            "the upstream has no TLS client configuration".into(),
        ));
    };
    let name = crate::tls::server_name(&settings.tls, &server.addr).map_err(AttemptError::Tls)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&client.proxy));
    let tls = match tokio::time::timeout_at(deadline, connector.connect(name.clone(), io)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(AttemptError::Tls(format!(
                "TLS handshake with {addr} (server name {}) failed: {e}",
                name.to_str()
            )));
        }
        Err(_) => return Err(AttemptError::ConnectTimeout(timeouts.connect)),
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    handshake(tls, h2, addr).await
}

/// The TCP connection to `server`, by `deadline` (`connect_timeout` after the
/// try began).
pub(super) async fn open_tcp(
    server: &Server,
    deadline: Instant,
    connect_timeout: Duration,
) -> Result<tokio::net::TcpStream, AttemptError> {
    match tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(server.sockaddr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(AttemptError::Connect(e)),
        Err(_) => Err(AttemptError::ConnectTimeout(connect_timeout)),
    }
}

async fn handshake<I>(io: I, h2: bool, addr: SocketAddr) -> Result<Sender, AttemptError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(io);
    if h2 {
        let (sender, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .handshake(io)
                .await
                .map_err(AttemptError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        return Ok(Sender::H2(sender));
    }
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(io)
        .await
        .map_err(AttemptError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(%addr, error = %e, "upstream connection ended");
        }
    });
    Ok(Sender::H1(sender))
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
    text_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("413 Content Too Large: this route takes request bodies up to {limit} bytes\n"),
    )
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
    let table = &forwarder.table;
    let key = request_key(upstream, &req, client.addr.ip());
    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    // The request as the server will see it.
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
    let xff = match parts
        .headers
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", client.addr.ip())).ok(),
        None => Some(client.ip.clone()),
    };
    if let Some(v) = xff {
        parts.headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    parts.headers.insert(X_REAL_IP.clone(), client.ip.clone());
    parts
        .headers
        .insert(X_FORWARDED_PROTO.clone(), forwarder.proto.clone());
    if let Some(host) = parts.headers.get(header::HOST).cloned() {
        parts.headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    if forwarder.forwarded {
        let element = forwarded_element(
            client.addr.ip(),
            parts.headers.get(header::HOST).map(HeaderValue::as_bytes),
            forwarder.proto.as_bytes(),
        );
        let value = match parts.headers.get(&FORWARDED) {
            Some(prev) => [prev.as_bytes(), b", ", &element].concat(),
            None => element,
        };
        if let Ok(v) = HeaderValue::from_bytes(&value) {
            parts.headers.insert(FORWARDED.clone(), v);
        }
    }
    parts.version = Version::HTTP_11;
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|pq| Uri::from(pq.clone()))
        .unwrap_or_else(|| Uri::from_static("/"));

    let settings = &upstream.settings;
    let replay = (body.is_end_stream()
        && !upgrade
        && (is_idempotent(&parts.method) || settings.retry.non_idempotent))
        .then(|| Replay {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
        });
    // Allocated only when a limit applies (most routes have none).
    let mut exceeded = None;
    let body = match body_limit {
        Some(left) if !body.is_end_stream() => {
            let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
            exceeded = Some(Arc::clone(&flag));
            UpstreamBody::Limited {
                body,
                left,
                exceeded: flag,
            }
        }
        _ => UpstreamBody::Client(body),
    };
    let mut pending = Some(Request::from_parts(parts, body));

    // Read only when retries have a time limit.
    let started = (!settings.retry.timeout.is_zero()).then(Instant::now);
    let mut tried = Tried::default();
    let mut last_error: Option<AttemptError> = None;
    let tries = settings.retry.tries.max(1);
    while tried.len() < tries as usize {
        if !tried.is_empty() && started.is_some_and(|t| t.elapsed() >= settings.retry.timeout) {
            break;
        }
        let Some(req) = pending
            .take()
            .or_else(|| replay.as_ref().map(Replay::request))
        else {
            break;
        };
        let Some(lease) = pick_next(table, upstream, slot, key, &mut tried) else {
            if tried.is_empty() {
                let (status, text) = no_server(upstream);
                return text_response(status, text);
            }
            break;
        };
        if let Some(r) = record.as_mut() {
            r.tried(&upstream.name, &lease.server().addr);
        }
        let mut connect_time = None;
        let outcome = attempt(
            lease.server(),
            settings,
            req,
            upgrade,
            replay.as_ref(),
            &mut connect_time,
        )
        .await;
        if let Some(r) = record.as_mut() {
            r.upstream_connect_time = connect_time;
        }
        match outcome {
            Ok((resp, sender, sent_at)) => {
                if let Some(r) = record.as_mut() {
                    r.upstream_status = Some(resp.status().as_u16());
                    r.upstream_response_time = Some(sent_at.elapsed());
                }
                return respond(upstream, lease, resp, sender, sent_at, client_upgrade);
            }
            Err((error, unsent)) => {
                // The client's body broke the route's limit: not the server's
                // fault, and no other server would fare better.
                if exceeded
                    .as_ref()
                    .is_some_and(|e| e.load(std::sync::atomic::Ordering::Relaxed))
                {
                    return too_large(body_limit.unwrap_or(0));
                }
                attempt_failed(upstream, lease.server(), &error);
                pending = unsent;
                let timed_out = matches!(error, AttemptError::ResponseTimeout(_));
                last_error = Some(error);
                if timed_out && pending.is_none() && replay.is_none() {
                    break;
                }
            }
        }
    }
    let (status, text) = failure(upstream, tried.len(), last_error.as_ref());
    text_response(status, text)
}

/// The server for the next try (the first, or a retry), counted as selected.
/// A retry picks from the table as it is now, so it too honours a change made
/// while the request was under way.
pub(super) fn pick_next(
    table: &Table,
    upstream: &Upstream,
    slot: usize,
    key: Option<u64>,
    tried: &mut Tried,
) -> Option<Lease> {
    let now = crate::clock::now_ms();
    let lease = if tried.is_empty() {
        upstream.snapshot().pick(key, tried, now)
    } else {
        table
            .load()
            .by_slot(slot)
            .and_then(|u| u.snapshot().pick(key, tried, now))
    }?;
    tried.push(lease.server().id);
    lease
        .server()
        .runtime
        .stats
        .selected_unix_ms
        .store(unix_ms(), std::sync::atomic::Ordering::Relaxed);
    Some(lease)
}

/// Counts a failed try against its server (passive health) and logs it.
pub(super) fn attempt_failed(upstream: &Upstream, server: &Server, error: &AttemptError) {
    let outcome = passive::record_failure(server, crate::clock::now_ms());
    warn!(upstream = %upstream.name, server = %server.addr, error = %error, outcome = %outcome.as_str(), "upstream attempt failed");
}

pub(super) fn no_server(upstream: &Upstream) -> (StatusCode, String) {
    (
        StatusCode::BAD_GATEWAY,
        format!(
            "502 Bad Gateway: no server available in upstream \"{}\"\n",
            upstream.name
        ),
    )
}

/// The answer when every try failed (or none could be made).
pub(super) fn failure(
    upstream: &Upstream,
    tries: usize,
    last_error: Option<&AttemptError>,
) -> (StatusCode, String) {
    match last_error {
        Some(AttemptError::ResponseTimeout(d)) => (
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "504 Gateway Timeout: upstream \"{}\" sent no response within {d:?}\n",
                upstream.name
            ),
        ),
        Some(e) => (
            StatusCode::BAD_GATEWAY,
            format!(
                "502 Bad Gateway: upstream \"{}\" failed after {tries} tries: {e}\n",
                upstream.name
            ),
        ),
        None => no_server(upstream),
    }
}

type Unsent = Option<Request<UpstreamBody>>;

/// One server's turn: send `req` on a pooled connection (again on another one if
/// that turns out stale) or on a new one. On failure, gives the request back if
/// it was never sent.
async fn attempt(
    server: &Arc<Server>,
    settings: &UpstreamSettings,
    mut req: Request<UpstreamBody>,
    upgrade: bool,
    replay: Option<&Replay>,
    connect_time: &mut Option<Duration>,
) -> Result<(Response<Incoming>, Sender, Instant), (AttemptError, Unsent)> {
    loop {
        let pooled = if upgrade {
            None
        } else {
            server.runtime.pool.checkout()
        };
        let reused = pooled.is_some();
        let mut sender = match pooled {
            Some(s) => s,
            // Boxed: the connect path (TCP, TLS, handshake) is a large future that
            // would otherwise sit inside every request's future, which hyper
            // moves several times per request; a new connection is the rare case.
            None => {
                let began = Instant::now();
                let connected = Box::pin(connect_pooled(server, settings, upgrade)).await;
                *connect_time = Some(began.elapsed());
                match connected {
                    Ok(s) => s,
                    Err(e) => return Err((e, Some(req))),
                }
            }
        };
        if reused && connect_time.is_none() {
            *connect_time = Some(Duration::ZERO);
        }
        if sender.is_h2() {
            req = h2_form(req, settings.scheme);
        }
        if sender.ready().await.is_err() {
            if reused {
                continue;
            }
            return Err((AttemptError::ClosedBeforeReady, Some(req)));
        }
        server
            .runtime
            .stats
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sent_at = Instant::now();
        let timeouts = &settings.timeouts;
        match timeout(timeouts.read, sender.send(req)).await {
            Ok(Ok(resp)) => {
                server.runtime.stats.header_time.observe(sent_at.elapsed());
                return Ok((resp, sender, sent_at));
            }
            Ok(Err(mut e)) => {
                let unsent = e.take_message();
                let error = e.into_error();
                match (reused, unsent, replay) {
                    (true, Some(r), _) => req = r,
                    (true, None, Some(replay)) => req = replay.request(),
                    (_, unsent, _) => return Err((AttemptError::Send(error), unsent)),
                }
                debug!(server = %server.addr, %error, "stale keep-alive connection, sending again");
            }
            Err(_) => return Err((AttemptError::ResponseTimeout(timeouts.read), None)),
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn respond(
    upstream: &Upstream,
    lease: Lease,
    mut resp: Response<Incoming>,
    sender: Sender,
    sent_at: Instant,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ProxyBody> {
    let server = Arc::clone(lease.server());
    server.runtime.stats.count_response(resp.status().as_u16());
    passive::record_success(&server);

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let (parts, _) = resp.into_parts();
        tokio::spawn(super::upgrade::tunnel(
            client_upgrade,
            upstream_upgrade,
            lease,
            sender,
        ));
        return Response::from_parts(parts, ProxyBody::empty());
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The client's connection has its own version; an HTTP/1.0 server's answer
    // must not make hyper speak 1.0 to a 1.1 client.
    parts.version = Version::HTTP_11;
    Response::from_parts(
        parts,
        ProxyBody::Upstream(UpstreamResponse::new(
            body,
            lease,
            sender,
            upstream.settings.timeouts.read,
            sent_at,
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_index_matches_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_str().as_bytes()), Some(i));
        }
        assert_eq!(hop_by_hop_index(b"content-length"), None);
    }

    #[test]
    fn is_hop_by_hop_takes_any_case_and_only_the_eight() {
        for name in &HOP_BY_HOP {
            let upper = name.as_str().to_ascii_uppercase();
            assert!(is_hop_by_hop(name.as_str()), "{name}");
            assert!(is_hop_by_hop(&upper), "{upper}");
        }
        assert!(is_hop_by_hop("Transfer-Encoding"));
        for name in [
            "",
            "t",
            "content-length",
            "Connections",
            "x-proxy-authenticate",
            "Keep-Alive2",
        ] {
            assert!(!is_hop_by_hop(name), "{name}");
        }
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers_only() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Keep-Alive, X-Hop"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["content-type"]);

        // Two Connection headers: the tokens of both count.
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("x-a"));
        h.append(header::CONNECTION, HeaderValue::from_static("x-b"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("1"));
        h.insert("x-c", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-c"]);
    }
}
