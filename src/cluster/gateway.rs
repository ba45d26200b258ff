//! A small client for etcd's v3 JSON gateway, over the hyper client the rest of
//! the crate already builds on.
//!
//! Why not a gRPC client: the gRPC crates generate etcd's API from `.proto` files
//! at build time, which needs `protoc` on every machine that builds switchyard.
//! The fleet makes four calls (range, txn, watch, authenticate), all of which
//! etcd (3.3 and later) also serves as JSON on its client URLs, so the build
//! needs nothing but the Rust toolchain.
//!
//! What the gRPC client did for us and this one now does itself:
//! - **Endpoints**: calls go to one endpoint until it cannot be connected to;
//!   then the next is tried, in the same call (a refused connection sent
//!   nothing, so trying elsewhere cannot apply anything twice). A call that was
//!   sent and got no answer (the member died, or cannot reach the leader)
//!   fails, and the next call starts at the next endpoint: whether to send it
//!   again is the caller's decision (`etcd::write` finds out first).
//! - **Health**: each endpoint's last result, and, from `probe`, whether it is
//!   the leader, for `/api/v1/cluster`.
//! - **Authentication**: with `username`/`password`, a token is fetched on
//!   first use and again whenever etcd says it is invalid (etcd forgets tokens
//!   when it restarts, and expires them after `--auth-token-ttl`).
//! - **TLS**: rustls with the `[cluster]` CA and client certificate, HTTP/1.1
//!   only (etcd sends HTTP/2 on a TLS port to its gRPC server).
//!
//! Owns: connections, endpoints, tokens, error reporting. Does not know what the
//! keys mean (see `etcd` and `keys`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::wire::{
    AuthenticateRequest, AuthenticateResponse, ErrorBody, StatusRequest, StatusResponse,
    WatchMessage, WatchRequest, WatchResponse,
};
use crate::config::{ClusterConfig, UpstreamTls};
use crate::state::EndpointStatus;

/// gRPC's `UNAUTHENTICATED`: etcd's answer to a token it does not know.
const UNAUTHENTICATED: i32 = 16;

/// Why a call to etcd did not give an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum EtcdError {
    /// No endpoint could be connected to: nothing was sent.
    #[error("cannot connect to etcd ({0})")]
    Connect(String),
    /// etcd answered with an error (its gRPC code and message).
    #[error("{message}")]
    Status { code: i32, message: String },
    /// Sent, but no whole answer came back (the outcome is unknown).
    #[error("{0}")]
    Transport(String),
    #[error("no answer from etcd within {0}")]
    Timeout(String),
    #[error("etcd's answer could not be read: {0}")]
    Decode(String),
}

impl EtcdError {
    /// The kind, for the error counters.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            EtcdError::Connect(_) => "connect",
            EtcdError::Status { .. } => "status",
            EtcdError::Transport(_) => "transport",
            EtcdError::Timeout(_) => "timeout",
            EtcdError::Decode(_) => "decode",
        }
    }

    /// Nothing reached etcd, or etcd said it did not take the request: a
    /// write that failed so was certainly not applied.
    pub(crate) fn not_sent(&self) -> bool {
        match self {
            EtcdError::Connect(_) => true,
            // Refusals before anything is proposed: no leader to propose to
            // (14), a bad request (3), no permission (7), too many requests
            // (8), an unknown token (16). Anything else ("request timed
            // out", possibly after the proposal) may have been applied.
            EtcdError::Status { code, message } => {
                message.contains("no leader") || matches!(code, 3 | 7 | 8 | 16)
            }
            EtcdError::Transport(_) | EtcdError::Timeout(_) | EtcdError::Decode(_) => false,
        }
    }

    /// The endpoint that gave this is worth leaving for the next one: it
    /// took the request and did not answer, or cannot reach a leader.
    fn member_trouble(&self) -> bool {
        match self {
            EtcdError::Connect(_) => false,
            // 14: Unavailable ("no leader", "leader changed"); 4:
            // DeadlineExceeded ("request timed out").
            EtcdError::Status { code, message } => {
                *code == 14 || *code == 4 || message.contains("leader")
            }
            EtcdError::Transport(_) | EtcdError::Timeout(_) | EtcdError::Decode(_) => true,
        }
    }

    fn is_unauthenticated(&self) -> bool {
        match self {
            EtcdError::Status { code, message } => {
                *code == UNAUTHENTICATED || message.contains("invalid auth token")
            }
            _ => false,
        }
    }
}

/// An error and its root cause in a line ("tcp connect error: Connection
/// refused (os error 111)"), not the whole debug chain.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.contains(&next) {
            text = format!("{text}: {next}");
        }
        cause = c.source();
    }
    text
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The client for the process: cloned cheaply (its pool and token are shared).
#[derive(Clone)]
pub(crate) struct Gateway {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    /// `http(s)://host:port`, without a trailing `/`.
    endpoints: Vec<String>,
    /// Where calls go first: the last endpoint that could be connected to.
    preferred: AtomicUsize,
    http: HttpClient,
    credentials: Option<AuthenticateRequest>,
    token: Mutex<Option<String>>,
    timeout: Duration,
    /// Each endpoint's last result, in `endpoints` order.
    health: Mutex<Vec<EndpointStatus>>,
}

impl Gateway {
    /// The client `cfg` describes; fails only on TLS files that cannot be read.
    pub(crate) fn new(cfg: &ClusterConfig) -> Result<Gateway, crate::tls::TlsError> {
        let tls = cfg.tls_ca.is_some()
            || cfg.tls_cert.is_some()
            || cfg.endpoints.iter().any(|e| e.starts_with("https://"));
        let scheme = if tls { "https://" } else { "http://" };
        let endpoints = cfg
            .endpoints
            .iter()
            .map(|e| {
                let e = e.trim_end_matches('/');
                if e.contains("://") {
                    e.to_string()
                } else {
                    format!("{scheme}{e}")
                }
            })
            .collect();
        let tls_config = crate::tls::client_config(
            &UpstreamTls {
                ca: cfg.tls_ca.clone(),
                client_cert: cfg.tls_cert.clone(),
                client_key: cfg.tls_key.clone(),
                ..UpstreamTls::default()
            },
            // hyper-rustls offers ALPN itself (HTTP/1.1 only, as enabled below).
            &[],
        )?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.timeout));
        // A member that vanishes without a reset (power, partition) is noticed
        // by the watch through TCP keep-alive.
        http.set_keepalive(Some(Duration::from_secs(5)));
        http.set_keepalive_interval(Some(Duration::from_secs(2)));
        http.set_keepalive_retries(Some(3));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            .build(https);
        let credentials = match (&cfg.username, &cfg.password) {
            (Some(name), Some(password)) => Some(AuthenticateRequest {
                name: name.clone(),
                password: password.clone(),
            }),
            _ => None,
        };
        let health = cfg
            .endpoints
            .iter()
            .map(|e| EndpointStatus {
                endpoint: e.clone(),
                reachable: None,
                leader: None,
                last_error: None,
            })
            .collect();
        Ok(Gateway {
            inner: std::sync::Arc::new(Inner {
                health: Mutex::new(health),
                endpoints,
                preferred: AtomicUsize::new(0),
                http: client,
                credentials,
                token: Mutex::new(None),
                timeout: cfg.timeout,
            }),
        })
    }

    /// One call (`path` such as `/v3/kv/range`) and its decoded answer. A token
    /// etcd no longer knows is replaced once, and the call made again.
    pub(crate) async fn call<Q: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        req: &Q,
    ) -> Result<R, EtcdError> {
        let body = encode(req)?;
        let mut renewed = false;
        loop {
            let token = self.token(renewed).await?;
            match self.exchange(path, body.clone(), token.as_deref()).await {
                Err(e)
                    if e.is_unauthenticated() && !renewed && self.inner.credentials.is_some() =>
                {
                    renewed = true;
                }
                other => return other,
            }
        }
    }

    /// One POST and its decoded answer, within the timeout (no token renewal).
    /// An endpoint that took the request and then failed to answer is noted,
    /// and the next call starts at the next one.
    async fn exchange<R: DeserializeOwned>(
        &self,
        path: &str,
        body: Bytes,
        token: Option<&str>,
    ) -> Result<R, EtcdError> {
        let at = AtomicUsize::new(usize::MAX);
        let answer = async {
            let (resp, _) = self.send(path, body, token, None, &at).await?;
            self.read_answer(resp).await
        };
        let result = tokio::time::timeout(self.inner.timeout, answer)
            .await
            .unwrap_or_else(|_| Err(self.timed_out()));
        let used = at.load(Ordering::Relaxed);
        if let Err(e) = &result
            && used != usize::MAX
            && e.member_trouble()
        {
            self.mark(used, Some(e.to_string()));
            let _ = self.inner.preferred.compare_exchange(
                used,
                (used + 1) % self.inner.endpoints.len(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        result
    }

    /// The body of an answer, decoded, or etcd's error.
    async fn read_answer<R: DeserializeOwned>(
        &self,
        resp: hyper::Response<Incoming>,
    ) -> Result<R, EtcdError> {
        {
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| EtcdError::Transport(root_cause(&e)))?
                .to_bytes();
            if status != StatusCode::OK {
                return Err(status_error(status, &bytes));
            }
            serde_json::from_slice::<R>(&bytes).map_err(|e| EtcdError::Decode(e.to_string()))
        }
    }

    /// Asks every endpoint, one by one, whether it is up and whether it is the
    /// leader (`/v3/maintenance/status`), for the status page.
    pub(crate) async fn probe(&self) {
        let body = match encode(&StatusRequest {}) {
            Ok(b) => b,
            Err(_) => return,
        };
        for at in 0..self.inner.endpoints.len() {
            let asked = async {
                let token = self.token(false).await?;
                let tried = AtomicUsize::new(at);
                let (resp, _) = self
                    .send(
                        "/v3/maintenance/status",
                        body.clone(),
                        token.as_deref(),
                        Some(at),
                        &tried,
                    )
                    .await?;
                self.read_answer::<StatusResponse>(resp).await
            };
            let answer = tokio::time::timeout(self.inner.timeout, asked)
                .await
                .unwrap_or_else(|_| Err(self.timed_out()));
            let mut health = self.lock_health();
            if let Some(h) = health.get_mut(at) {
                match answer {
                    Ok(s) => {
                        h.reachable = Some(true);
                        h.leader = Some(s.is_leader());
                        h.last_error = None;
                    }
                    Err(e) => {
                        h.reachable = Some(false);
                        h.leader = None;
                        h.last_error = Some(e.to_string());
                    }
                }
            }
        }
    }

    /// Each endpoint as last found.
    pub(crate) fn health(&self) -> Vec<EndpointStatus> {
        self.lock_health().clone()
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, Vec<EndpointStatus>> {
        self.inner.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes the result of a call to endpoint `at`: reached, or this error.
    fn mark(&self, at: usize, error: Option<String>) {
        if let Some(h) = self.lock_health().get_mut(at) {
            h.reachable = Some(error.is_none());
            if error.is_some() {
                h.leader = None;
            }
            h.last_error = error;
        }
    }

    /// Opens a watch and waits for etcd to confirm it.
    pub(crate) async fn watch(&self, req: &WatchRequest) -> Result<WatchStream, EtcdError> {
        let body = encode(req)?;
        let mut renewed = false;
        loop {
            let token = self.token(renewed).await?;
            let opened = async {
                let tried = AtomicUsize::new(usize::MAX);
                let (resp, _) = self
                    .send("/v3/watch", body.clone(), token.as_deref(), None, &tried)
                    .await?;
                let status = resp.status();
                if status != StatusCode::OK {
                    let bytes = resp
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    return Err(status_error(status, &bytes));
                }
                let mut stream = WatchStream {
                    body: resp.into_body(),
                    buf: BytesMut::new(),
                };
                // The first message says whether the watch was made.
                let first = stream.message().await?;
                Ok((stream, first))
            };
            let opened = tokio::time::timeout(self.inner.timeout, opened)
                .await
                .unwrap_or_else(|_| Err(self.timed_out()));
            let error = match opened {
                Ok((stream, Some(first))) if first.created && !first.canceled => {
                    return Ok(stream);
                }
                Ok((_, Some(first))) if first.canceled => EtcdError::Status {
                    code: if first.cancel_reason.contains("Unauthenticated") {
                        UNAUTHENTICATED
                    } else {
                        0
                    },
                    message: format!("etcd refused the watch: {}", first.cancel_reason),
                },
                Ok((_, Some(_))) => EtcdError::Transport(
                    "etcd answered the watch with something other than its confirmation".into(),
                ),
                Ok((_, None)) => {
                    EtcdError::Transport("etcd closed the watch before confirming it".into())
                }
                Err(e) => e,
            };
            if error.is_unauthenticated() && !renewed && self.inner.credentials.is_some() {
                renewed = true;
                continue;
            }
            return Err(error);
        }
    }

    fn timed_out(&self) -> EtcdError {
        EtcdError::Timeout(humantime::format_duration(self.inner.timeout).to_string())
    }

    /// The token to send: none without credentials; the one held, unless
    /// `renew`; else a new one.
    async fn token(&self, renew: bool) -> Result<Option<String>, EtcdError> {
        let Some(credentials) = &self.inner.credentials else {
            return Ok(None);
        };
        if !renew && let Some(t) = self.lock_token().clone() {
            return Ok(Some(t));
        }
        let answer = self
            .exchange::<AuthenticateResponse>("/v3/auth/authenticate", encode(credentials)?, None)
            .await;
        let token = match answer {
            Ok(a) => a.token,
            Err(EtcdError::Status { code, message }) => {
                return Err(EtcdError::Status {
                    code,
                    message: format!("etcd authentication failed: {message}"),
                });
            }
            Err(e) => return Err(e),
        };
        *self.lock_token() = Some(token.clone());
        Ok(Some(token))
    }

    fn lock_token(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.inner.token.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends a POST to the preferred endpoint, or, when it cannot be connected
    /// to, to the next one, until one takes it; `only`: to that endpoint alone.
    /// The answer's head, and the endpoint that gave it.
    async fn send(
        &self,
        path: &str,
        body: Bytes,
        token: Option<&str>,
        only: Option<usize>,
        trying: &AtomicUsize,
    ) -> Result<(hyper::Response<Incoming>, usize), EtcdError> {
        let n = self.inner.endpoints.len();
        let first = only.unwrap_or_else(|| self.inner.preferred.load(Ordering::Relaxed) % n);
        let tries = if only.is_some() { 1 } else { n };
        let mut refused = Vec::new();
        for i in 0..tries {
            let at = (first + i) % n;
            let endpoint = &self.inner.endpoints[at];
            let mut req = Request::builder()
                .method(Method::POST)
                .uri(format!("{endpoint}{path}"))
                .header(hyper::header::CONTENT_TYPE, "application/json");
            if let Some(t) = token {
                req = req.header(hyper::header::AUTHORIZATION, t);
            }
            let req = req
                .body(Full::new(body.clone()))
                .map_err(|e| EtcdError::Connect(format!("bad endpoint {endpoint:?}: {e}")))?;
            trying.store(at, Ordering::Relaxed);
            match self.inner.http.request(req).await {
                Ok(resp) => {
                    if at != first && only.is_none() {
                        self.inner.preferred.store(at, Ordering::Relaxed);
                    }
                    self.mark(at, None);
                    return Ok((resp, at));
                }
                Err(e) if e.is_connect() => {
                    let why = format!("{endpoint}: {}", root_cause(&e));
                    self.mark(at, Some(why.clone()));
                    refused.push(why);
                }
                Err(e) => {
                    let why = format!("{endpoint}: {}", root_cause(&e));
                    self.mark(at, Some(why.clone()));
                    if only.is_none() {
                        self.inner.preferred.store((at + 1) % n, Ordering::Relaxed);
                    }
                    return Err(EtcdError::Transport(why));
                }
            }
        }
        Err(EtcdError::Connect(refused.join("; ")))
    }
}

/// A request as the gateway reads it.
fn encode<Q: Serialize>(req: &Q) -> Result<Bytes, EtcdError> {
    serde_json::to_vec(req)
        .map(Bytes::from)
        .map_err(|e| EtcdError::Decode(e.to_string()))
}

/// The error a non-200 answer carries.
fn status_error(status: StatusCode, body: &[u8]) -> EtcdError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) if !e.text().is_empty() => EtcdError::Status {
            code: e.code,
            message: e.text().to_string(),
        },
        _ => EtcdError::Status {
            code: 0,
            message: format!(
                "etcd answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
        },
    }
}

/// The messages of an open watch, as etcd sends them.
pub(crate) struct WatchStream {
    body: Incoming,
    buf: BytesMut,
}

impl WatchStream {
    /// The next response; `None` when etcd ended the stream.
    pub(crate) async fn message(&mut self) -> Result<Option<WatchResponse>, EtcdError> {
        loop {
            if let Some(msg) = self.take_one()? {
                if let Some(e) = msg.error {
                    return Err(EtcdError::Status {
                        code: e.code,
                        message: e.text().to_string(),
                    });
                }
                if let Some(r) = msg.result {
                    return Ok(Some(r));
                }
                continue;
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(EtcdError::Transport(root_cause(&e))),
                None => return Ok(None),
            }
        }
    }

    /// The first whole message in the buffer, taken out of it.
    fn take_one(&mut self) -> Result<Option<WatchMessage>, EtcdError> {
        take_message(&mut self.buf)
    }
}

fn take_message(buf: &mut BytesMut) -> Result<Option<WatchMessage>, EtcdError> {
    let start = buf
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(buf.len());
    let _ = buf.split_to(start);
    if buf.is_empty() {
        return Ok(None);
    }
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<WatchMessage>();
    match it.next() {
        Some(Ok(msg)) => {
            let used = it.byte_offset();
            let _ = buf.split_to(used);
            Ok(Some(msg))
        }
        Some(Err(e)) if e.is_eof() => Ok(None),
        Some(Err(e)) => Err(EtcdError::Decode(e.to_string())),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_messages_are_taken_whole_from_a_split_stream() {
        let stream = concat!(
            r#"{"result":{"header":{"revision":"3"},"created":true}}"#,
            "\n",
            r#"{"result":{"header":{"revision":"4"},"events":[{"kv":{"key":"YQ==","mod_revision":"4"}}]}}"#,
            "\n"
        );
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        // One byte at a time: every split point is seen.
        for b in stream.as_bytes() {
            buf.extend_from_slice(&[*b]);
            while let Some(m) = take_message(&mut buf).unwrap() {
                got.push(m.result.unwrap());
            }
        }
        assert_eq!(got.len(), 2);
        assert!(got[0].created);
        assert_eq!(got[1].events.len(), 1);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_garbled_watch_stream_is_an_error() {
        let mut buf = BytesMut::from(&b"{\"result\": nonsense}\n"[..]);
        assert!(matches!(take_message(&mut buf), Err(EtcdError::Decode(_))));
    }

    #[test]
    fn error_answers_keep_etcds_code_and_message() {
        let e = status_error(
            StatusCode::UNAUTHORIZED,
            br#"{"error":"etcdserver: invalid auth token","message":"etcdserver: invalid auth token","code":16}"#,
        );
        assert!(e.is_unauthenticated());
        assert_eq!(e.to_string(), "etcdserver: invalid auth token");
        let e = status_error(StatusCode::BAD_GATEWAY, b"<html>proxy</html>");
        assert!(!e.is_unauthenticated());
        assert!(e.to_string().contains("502"), "{e}");
    }
}
