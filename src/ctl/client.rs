//! The HTTP side of `switchyard ctl`: the admin base URL, one request at a time
//! to the native API (hyper 1 + hyper-util on the caller's runtime), and every way
//! a call can fail as a [`CtlError`] that knows its exit code.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

/// How long to wait for a TCP connection to the admin API.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a call may take on top of any server-side wait it asked for.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Exit codes scripts can test.
pub mod exit {
    pub const OK: u8 = 0;
    /// The API refused the request (4xx).
    pub const REFUSED: u8 = 1;
    /// The command line is wrong (clap uses 2 as well).
    pub const USAGE: u8 = 2;
    /// The admin API cannot be reached.
    pub const UNREACHABLE: u8 = 3;
    /// A `--wait` ran out with requests still active.
    pub const STILL_ACTIVE: u8 = 4;
    /// The admin API failed (5xx) or answered something that is not the API.
    pub const SERVER: u8 = 5;
}

/// Why a call did not give the answer asked for.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("bad --admin URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach the admin API at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the admin API at {url} did not answer within {after:?}")]
    TimedOut { url: String, after: Duration },
    /// A 4xx with the API's error code and message.
    #[error("{code}: {message}{}", at_index(*.index))]
    Refused {
        status: StatusCode,
        code: String,
        message: String,
        index: Option<usize>,
    },
    /// A 5xx.
    #[error("the admin API failed ({status}): {code}: {message}")]
    ServerFailed {
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("unexpected answer from {url}: {reason}")]
    Unexpected { url: String, reason: String },
}

fn at_index(index: Option<usize>) -> String {
    index.map_or_else(String::new, |i| format!(" (operation {i})"))
}

impl CtlError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::BadUrl { .. } => exit::USAGE,
            CtlError::Unreachable { .. } | CtlError::TimedOut { .. } => exit::UNREACHABLE,
            CtlError::Refused { .. } => exit::REFUSED,
            CtlError::ServerFailed { .. } | CtlError::Unexpected { .. } => exit::SERVER,
        }
    }
}

/// The admin API's base: `http://host:port` plus an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminUrl {
    /// `http://host:port`, no trailing slash.
    origin: String,
    /// `""` or `/prefix` (no trailing slash).
    prefix: String,
}

impl AdminUrl {
    /// Accepts `http://host[:port][/prefix]` only.
    pub fn parse(s: &str) -> Result<AdminUrl, CtlError> {
        let bad = |reason: &str| CtlError::BadUrl {
            url: s.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = s
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "https is not supported; the admin API speaks plain http (keep it on loopback or a private network)",
                ));
            }
            Some(other) => {
                return Err(bad(&format!(
                    "scheme {other:?} is not supported, use http://"
                )));
            }
            None => return Err(bad("expected http://HOST:PORT")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| bad("expected http://HOST:PORT"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user info is not supported; use --token"));
        }
        if uri.query().is_some() {
            return Err(bad("a query is not allowed in the base URL"));
        }
        let host = authority.host();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = authority.port_u16().unwrap_or(80);
        Ok(AdminUrl {
            origin: format!("http://{host}:{port}"),
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// The full URL of `path` (which starts with `/`).
    pub fn join(&self, path: &str) -> String {
        format!("{}{}{}", self.origin, self.prefix, path)
    }
}

impl std::fmt::Display for AdminUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.origin, self.prefix)
    }
}

/// Percent-encodes one path segment (an upstream name or a server reference).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A successful answer: its status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Answer {
    /// The body as `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, CtlError> {
        serde_json::from_slice(&self.body).map_err(|e| CtlError::Unexpected {
            url: url.to_string(),
            reason: format!("not the JSON expected: {e}"),
        })
    }

    /// The body as text, for `--json`.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim_end().to_string()
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorInner,
}

#[derive(Deserialize)]
struct ErrorInner {
    code: String,
    message: String,
    index: Option<usize>,
}

/// A client of one admin API.
#[derive(Clone)]
pub struct Client {
    base: AdminUrl,
    token: Option<String>,
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    /// Must be created inside a tokio runtime.
    pub fn new(base: AdminUrl, token: Option<String>) -> Client {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let http = HyperClient::builder(TokioExecutor::new()).build(connector);
        Client { base, token, http }
    }

    pub fn base(&self) -> &AdminUrl {
        &self.base
    }

    pub async fn get(&self, path: &str) -> Result<Answer, CtlError> {
        self.call(Method::GET, path, None, Duration::ZERO).await
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Result<Answer, CtlError> {
        self.call(Method::POST, path, Some(body), Duration::ZERO)
            .await
    }

    /// A PATCH; `wait` is how long the server may hold the answer (`?wait=`).
    pub async fn patch(
        &self,
        path: &str,
        body: &serde_json::Value,
        wait: Duration,
    ) -> Result<Answer, CtlError> {
        self.call(Method::PATCH, path, Some(body), wait).await
    }

    pub async fn delete(&self, path: &str) -> Result<Answer, CtlError> {
        self.call(Method::DELETE, path, None, Duration::ZERO).await
    }

    /// Sends one request; 2xx is an [`Answer`], anything else a [`CtlError`].
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        wait: Duration,
    ) -> Result<Answer, CtlError> {
        let url = self.base.join(path);
        let unexpected = |reason: String| CtlError::Unexpected {
            url: url.clone(),
            reason,
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| CtlError::BadUrl {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::ACCEPT, "application/json");
        if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                CtlError::BadUrl {
                    url: self.base.to_string(),
                    reason: "the token holds characters a header cannot carry".into(),
                }
            })?;
            req = req.header(header::AUTHORIZATION, value);
        }
        let bytes = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| unexpected(format!("cannot build the request: {e}")))?;

        let limit = CALL_TIMEOUT + wait;
        let exchange = async {
            let resp = self.http.request(req).await.map_err(|e| {
                let reason = if e.is_connect() {
                    error_chain(&e)
                } else {
                    format!("the connection failed: {}", error_chain(&e))
                };
                CtlError::Unreachable {
                    url: self.base.to_string(),
                    reason,
                }
            })?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| CtlError::Unreachable {
                    url: self.base.to_string(),
                    reason: format!("the answer broke off: {e}"),
                })?
                .to_bytes();
            Ok::<_, CtlError>(Answer { status, body })
        };
        let answer =
            tokio::time::timeout(limit, exchange)
                .await
                .map_err(|_| CtlError::TimedOut {
                    url: self.base.to_string(),
                    after: limit,
                })??;
        classify(answer).map_err(|e| match e {
            CtlError::Unexpected { reason, .. } => unexpected(reason),
            other => other,
        })
    }
}

/// 2xx passes; 4xx and 5xx become errors carrying the API's code and message.
fn classify(answer: Answer) -> Result<Answer, CtlError> {
    let status = answer.status;
    if status.is_success() {
        return Ok(answer);
    }
    let (code, message, index) = match serde_json::from_slice::<ErrorBody>(&answer.body) {
        Ok(b) => (b.error.code, b.error.message, b.error.index),
        Err(_) => {
            let text = String::from_utf8_lossy(&answer.body);
            let text: String = text.trim().chars().take(200).collect();
            (
                status
                    .canonical_reason()
                    .unwrap_or("Error")
                    .replace(' ', ""),
                if text.is_empty() {
                    format!("HTTP {status}")
                } else {
                    text
                },
                None,
            )
        }
    };
    if status.is_client_error() {
        Err(CtlError::Refused {
            status,
            code,
            message,
            index,
        })
    } else if status.is_server_error() {
        Err(CtlError::ServerFailed {
            status,
            code,
            message,
        })
    } else {
        Err(CtlError::Unexpected {
            url: String::new(),
            reason: format!("HTTP {status}"),
        })
    }
}

/// An error and its sources, joined: hyper-util's own message is terse.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_plain() {
        let u = AdminUrl::parse("http://127.0.0.1:18080").unwrap();
        assert_eq!(
            u.join("/api/v1/upstreams"),
            "http://127.0.0.1:18080/api/v1/upstreams"
        );
        assert_eq!(u.to_string(), "http://127.0.0.1:18080");
    }

    #[test]
    fn url_prefix_and_default_port() {
        let u = AdminUrl::parse("http://admin.local/switchyard/").unwrap();
        assert_eq!(
            u.join("/api/v1/batch"),
            "http://admin.local:80/switchyard/api/v1/batch"
        );
    }

    #[test]
    fn url_ipv6() {
        let u = AdminUrl::parse("http://[::1]:9000").unwrap();
        assert_eq!(u.join("/x"), "http://[::1]:9000/x");
    }

    #[test]
    fn url_refused() {
        for (s, needle) in [
            ("https://127.0.0.1:1", "https is not supported"),
            ("ftp://h:1", "scheme"),
            ("127.0.0.1:18080", "http://"),
            ("http://u:p@h:1", "user info"),
            ("http://h:1/?q=1", "query"),
            ("http://h:1/ a", "bad --admin URL"),
        ] {
            let e = AdminUrl::parse(s).unwrap_err();
            assert_eq!(e.exit_code(), exit::USAGE);
            assert!(e.to_string().contains(needle), "{s}: {e}");
        }
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("127.0.0.1:80"), "127.0.0.1:80");
        assert_eq!(segment("[::1]:80"), "%5B::1%5D:80");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn errors_map_to_exit_codes() {
        let refused = classify(Answer {
            status: StatusCode::NOT_FOUND,
            body: Bytes::from_static(
                br#"{"error":{"code":"UpstreamNotFound","message":"no upstream \"x\""}}"#,
            ),
        })
        .unwrap_err();
        assert_eq!(refused.exit_code(), exit::REFUSED);
        assert_eq!(refused.to_string(), "UpstreamNotFound: no upstream \"x\"");

        let batch = classify(Answer {
            status: StatusCode::NOT_FOUND,
            body: Bytes::from_static(
                br#"{"error":{"code":"ServerNotFound","message":"m","index":1}}"#,
            ),
        })
        .unwrap_err();
        assert!(matches!(batch, CtlError::Refused { index: Some(1), .. }));

        let failed = classify(Answer {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: Bytes::from_static(b"oops"),
        })
        .unwrap_err();
        assert_eq!(failed.exit_code(), exit::SERVER);
        assert!(failed.to_string().contains("oops"));

        let ok = classify(Answer {
            status: StatusCode::ACCEPTED,
            body: Bytes::new(),
        });
        assert!(ok.is_ok());
    }
}
