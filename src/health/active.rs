//! Active health checks: one checker per process, whatever the number of worker
//! threads, probing every server of every upstream that has a check.
//!
//! The checker follows the table: on every change it starts probing servers that
//! appeared and stops probing those that went, so a server added through the API
//! is checked from its first moment (lua-resty-upstream-healthcheck captured its
//! peer list once, so added servers were never checked). Servers an operator set
//! `down` are still probed — operators want to see them healthy before bringing
//! them back — but only health is written here, never admin state.
//!
//! Probes use their own connections, never the traffic pool; how many run at once
//! is bounded per upstream by its `concurrency`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, Release};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use regex::Regex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::debug;

use crate::config::{HealthCheckConfig, HealthCheckKind};
use crate::tls::TlsError;
use crate::upstream::{Health, Server, ServerStats, Table};

/// The most of a check response that is read; the rest is cut, never read
/// forever.
pub const MAX_RESPONSE: usize = 64 * 1024;

/// Why a probe failed: the server did not answer as a healthy one does. Only
/// logged (at debug) and counted; the server's health follows `fall`/`rise`.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The upstream's TLS files could not be loaded: every probe fails so.
    #[error("TLS settings: {0}")]
    TlsSettings(#[source] Arc<TlsError>),
    /// The name to verify is not one (`tls_server_name`, or the address's host).
    #[error(transparent)]
    ServerName(TlsError),
    #[error("TLS handshake: {0}")]
    Handshake(#[source] std::io::Error),
    #[error("send: {0}")]
    Send(#[source] std::io::Error),
    #[error("read: {0}")]
    Read(#[source] std::io::Error),
    #[error("connection closed before a whole response")]
    Closed,
    #[error(transparent)]
    Response(#[from] ResponseError),
    #[error(transparent)]
    Verdict(#[from] CheckFailed),
}

/// What a check response was, if not an HTTP response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("response headers incomplete")]
    Incomplete,
    #[error("not an HTTP response: {0}")]
    NotHttp(#[source] httparse::Error),
    #[error("no status code")]
    NoStatus,
}

/// Why a whole response does not pass the check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckFailed {
    #[error("status {0}")]
    Status(u16),
    #[error("body does not contain {0:?}")]
    BodyLacks(String),
    #[error("body does not match /{0}/")]
    BodyMismatch(String),
}

/// Starts the process's checker on the current runtime.
pub fn spawn(table: Arc<Table>) -> JoinHandle<()> {
    tokio::spawn(supervise(table))
}

struct Running {
    check: Arc<HealthCheckConfig>,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Keeps one probe task per (upstream, server id) in step with the table.
async fn supervise(table: Arc<Table>) {
    let mut running: HashMap<(String, u32), Running> = HashMap::new();
    let mut limits: HashMap<String, (u32, Arc<Semaphore>)> = HashMap::new();
    let mut changes = table.subscribe();
    loop {
        let snapshot = table.load();
        let mut wanted = std::collections::HashSet::new();
        for (name, upstream) in &snapshot.upstreams {
            let Some(check) = &upstream.settings.health_check else {
                continue;
            };
            let sem = match limits.get(name) {
                Some((n, sem)) if *n == check.concurrency => Arc::clone(sem),
                _ => {
                    let sem = Arc::new(Semaphore::new(check.concurrency as usize));
                    limits.insert(name.clone(), (check.concurrency, Arc::clone(&sem)));
                    sem
                }
            };
            for server in &upstream.snapshot().servers {
                let key = (name.clone(), server.id);
                wanted.insert(key.clone());
                if running.get(&key).is_some_and(|r| *r.check == *check) {
                    continue;
                }
                let check = Arc::new(check.clone());
                let probe = Probe::new(
                    name.clone(),
                    Arc::clone(server),
                    Arc::clone(&check),
                    Arc::clone(&sem),
                    Arc::clone(&table),
                    tls_for(name, &upstream.settings),
                );
                running.insert(
                    key,
                    Running {
                        check,
                        task: tokio::spawn(probe.run()),
                    },
                );
            }
        }
        running.retain(|key, _| wanted.contains(key));
        limits.retain(|name, _| snapshot.upstreams.contains_key(name));
        drop(snapshot);
        // Wake on the next change; a lagged receiver just looks again.
        tokio::select! {
            r = changes.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r {
                    return;
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The TLS side of an `https` check: the upstream's client configuration for
/// checks, and the name to verify. A check whose TLS files fail to load fails
/// every probe with that reason (it never passes unverified); shared, so each
/// probe can report it.
type ProbeTls =
    Option<Result<(Arc<rustls::ClientConfig>, crate::config::UpstreamTls), Arc<TlsError>>>;

fn tls_for(name: &str, settings: &crate::upstream::UpstreamSettings) -> ProbeTls {
    let check = settings.health_check.as_ref()?;
    if check.kind != HealthCheckKind::Https {
        return None;
    }
    let client = match &settings.tls_client {
        Some(c) => Ok(Arc::clone(&c.check)),
        None => {
            crate::tls::TlsClient::build(name, settings.scheme, settings.protocol, &settings.tls)
                .map(|c| c.check)
        }
    };
    Some(
        client
            .map(|c| (c, (*settings.tls).clone()))
            .map_err(Arc::new),
    )
}

struct Probe {
    tls: ProbeTls,
    upstream: String,
    server: Arc<Server>,
    check: Arc<HealthCheckConfig>,
    request: Vec<u8>,
    body_regex: Option<Regex>,
    limit: Arc<Semaphore>,
    table: Arc<Table>,
}

impl Probe {
    fn new(
        upstream: String,
        server: Arc<Server>,
        check: Arc<HealthCheckConfig>,
        limit: Arc<Semaphore>,
        table: Arc<Table>,
        tls: ProbeTls,
    ) -> Probe {
        let request = request_bytes(&check, &server.addr);
        // Validated when the check was configured; a bad one here only disables
        // the body match.
        let body_regex = check.body_regex.as_deref().and_then(|r| Regex::new(r).ok());
        Probe {
            tls,
            upstream,
            server,
            check,
            request,
            body_regex,
            limit,
            table,
        }
    }

    async fn run(self) {
        let interval = self.check.interval;
        // A server waiting for its first verdict is checked at once; others are
        // spread over the first interval so checks do not all fire together.
        let mut base = if self.server.runtime.stats.health() == Health::Checking {
            Instant::now()
        } else {
            Instant::now() + interval.mul_f64(fastrand::f64())
        };
        let mut next = base;
        loop {
            sleep_until(next).await;
            let started = Instant::now();
            let outcome = {
                let Ok(_permit) = self.limit.acquire().await else {
                    return;
                };
                match timeout(self.check.timeout, self.probe()).await {
                    Ok(r) => r,
                    Err(_) => Err(ProbeError::Timeout(self.check.timeout)),
                }
            };
            if let Err(reason) = &outcome {
                debug!(upstream = %self.upstream, server = %self.server.addr, %reason, "health check failed");
            }
            let stats = &self.server.runtime.stats;
            if let Some((old, new)) = record(
                stats,
                outcome.is_ok(),
                self.check.rise,
                self.check.fall,
                crate::clock::now_ms(),
            ) {
                self.table
                    .report_health(&self.upstream, &self.server, old, new);
            }
            // Keep to the schedule, so late wake-ups do not add up; after a
            // check that overran its interval, the schedule starts again from
            // that check.
            base = (base + interval).max(started);
            next = base + self.check.jitter.mul_f64(fastrand::f64());
        }
    }

    fn target(&self) -> SocketAddr {
        let addr = self.server.sockaddr;
        SocketAddr::new(addr.ip(), self.check.port.unwrap_or(addr.port()))
    }

    async fn probe(&self) -> Result<(), ProbeError> {
        let stream = TcpStream::connect(self.target())
            .await
            .map_err(ProbeError::Connect)?;
        // Close with a reset: a check connection has nothing left to say, and
        // this spares both ends a FIN exchange and the TIME_WAIT state, which
        // add up at thousands of checks a second.
        let _ = stream.set_zero_linger();
        if self.check.kind == HealthCheckKind::Tcp {
            return Ok(());
        }
        let response = match &self.tls {
            None => self.exchange(stream).await?,
            Some(Err(e)) => return Err(ProbeError::TlsSettings(Arc::clone(e))),
            // Boxed: a TLS handshake's state is large, and inline it would make
            // every probe task that large, TLS or not.
            Some(Ok((client, tls))) => {
                Box::pin(async {
                    let name = crate::tls::server_name(tls, &self.server.addr)
                        .map_err(ProbeError::ServerName)?;
                    let stream = tokio_rustls::TlsConnector::from(Arc::clone(client))
                        .connect(name, stream)
                        .await
                        .map_err(ProbeError::Handshake)?;
                    self.exchange(stream).await
                })
                .await?
            }
        };
        Ok(judge(&self.check, self.body_regex.as_ref(), &response)?)
    }

    async fn exchange<S>(&self, mut stream: S) -> Result<CheckResponse, ProbeError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        stream
            .write_all(&self.request)
            .await
            .map_err(ProbeError::Send)?;
        read_response(&mut stream).await
    }
}

/// The request a check sends: the raw `http_req` byte for byte, or one built from
/// the structured settings (HTTP/1.0, so the server closes when done).
pub fn request_bytes(check: &HealthCheckConfig, addr: &str) -> Vec<u8> {
    if let Some(raw) = &check.http_req {
        return raw.as_bytes().to_vec();
    }
    let host = check.host.as_deref().unwrap_or(addr);
    let mut req = format!(
        "{} {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: switchyard-health-check\r\n",
        check.method, check.path
    );
    for (k, v) in &check.headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    req.into_bytes()
}

/// A parsed check response.
#[derive(Debug, PartialEq, Eq)]
pub struct CheckResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

async fn read_response<S>(stream: &mut S) -> Result<CheckResponse, ProbeError>
where
    S: tokio::io::AsyncRead + Unpin,
{
    // Read into a heap buffer: a buffer on the stack would be part of every probe
    // task's future, whether or not it ever reads (10,000 servers, 10,000 tasks).
    let mut buf = Vec::with_capacity(4096);
    loop {
        if buf.capacity() == buf.len() {
            buf.reserve(4096.min(MAX_RESPONSE - buf.len()).max(1));
        }
        let n = match stream.read_buf(&mut buf).await {
            Ok(n) => n,
            // A TLS server that closes without close_notify: the end all the same.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(ProbeError::Read(e)),
        };
        buf.truncate(MAX_RESPONSE);
        match parse_response(&buf, n == 0 || buf.len() >= MAX_RESPONSE)? {
            Some(r) => return Ok(r),
            None if n == 0 => return Err(ProbeError::Closed),
            None => {}
        }
    }
}

/// Parses what was read so far: `Ok(None)` when more is needed. `done` means no
/// more will come (end of stream, or the size bound was reached).
pub fn parse_response(buf: &[u8], done: bool) -> Result<Option<CheckResponse>, ResponseError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if done => {
            return Err(ResponseError::Incomplete);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ResponseError::NotHttp(e)),
    };
    let status = resp.code.ok_or(ResponseError::NoStatus)?;
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    let body = &buf[head_len..];
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if body.len() >= len || done {
            return Ok(Some(CheckResponse {
                status,
                body: body[..len.min(body.len())].to_vec(),
            }));
        }
        return Ok(None);
    }
    if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        return match dechunk(body) {
            Some(b) => Ok(Some(CheckResponse { status, body: b })),
            None if done => Ok(Some(CheckResponse {
                status,
                body: body.to_vec(),
            })),
            None => Ok(None),
        };
    }
    if done {
        return Ok(Some(CheckResponse {
            status,
            body: body.to_vec(),
        }));
    }
    Ok(None)
}

/// The body of a complete chunked encoding, or `None` if it is not complete yet.
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if raw.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// Whether a response passes the check.
pub fn judge(
    check: &HealthCheckConfig,
    body_regex: Option<&Regex>,
    r: &CheckResponse,
) -> Result<(), CheckFailed> {
    let status_ok = if check.valid_statuses.is_empty() {
        (200..400).contains(&r.status)
    } else {
        check.valid_statuses.contains(&r.status)
    };
    if !status_ok {
        return Err(CheckFailed::Status(r.status));
    }
    let body = String::from_utf8_lossy(&r.body);
    if let Some(needle) = &check.body
        && !body.contains(needle.as_str())
    {
        return Err(CheckFailed::BodyLacks(needle.clone()));
    }
    if let Some(re) = body_regex
        && !re.is_match(&body)
    {
        return Err(CheckFailed::BodyMismatch(re.as_str().to_string()));
    }
    Ok(())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Records one check result, following `fall`/`rise` exactly: a healthy server
/// becomes unhealthy after `fall` failures in a row, an unhealthy one healthy
/// after `rise` passes in a row; a server still `checking` takes its first pass.
/// A pass also clears passive `unavail`. Returns the transition, if any.
pub fn record(
    stats: &ServerStats,
    passed: bool,
    rise: u32,
    fall: u32,
    now_ms: u64,
) -> Option<(Health, Health)> {
    stats.checks_total.fetch_add(1, Relaxed);
    let wall = unix_ms();
    stats.last_check_unix_ms.store(wall, Relaxed);
    stats.last_check_passed.store(passed, Relaxed);
    let health = stats.health();
    // The verdict is set before the count that leads to it is stored
    // (Release), so that a reader of the count (Acquire, `check_record`) sees
    // the verdict too: never "healthy" with `fall` failures in a row. One
    // checker per server writes these.
    if passed {
        stats.last_passed_unix_ms.store(wall, Relaxed);
        stats.check_fails.store(0, Release);
        let passes = stats.check_passes.load(Relaxed).saturating_add(1);
        crate::health::passive::clear(stats);
        let recovers = match health {
            Health::Checking => true,
            Health::Unhealthy => passes >= rise,
            Health::Healthy => false,
        };
        if recovers {
            stats.set_health(Health::Healthy);
            stats.pick.eligible_since_ms.store(now_ms, Relaxed);
        }
        stats.check_passes.store(passes, Release);
        recovers.then_some((health, Health::Healthy))
    } else {
        stats.checks_failed.fetch_add(1, Relaxed);
        stats.check_passes.store(0, Release);
        let fails = stats.check_fails.load(Relaxed).saturating_add(1);
        let falls = health != Health::Unhealthy && fails >= fall;
        if falls {
            stats.set_health(Health::Unhealthy);
            stats.unhealthy_total.fetch_add(1, Relaxed);
        }
        stats.check_fails.store(fails, Release);
        falls.then_some((health, Health::Unhealthy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http() -> HealthCheckConfig {
        HealthCheckConfig::new(HealthCheckKind::Http)
    }

    #[test]
    fn fall_and_rise_are_followed_exactly() {
        let stats = ServerStats::default();
        let (rise, fall) = (2, 3);
        assert_eq!(record(&stats, false, rise, fall, 1), None);
        assert_eq!(record(&stats, false, rise, fall, 2), None);
        assert_eq!(
            record(&stats, false, rise, fall, 3),
            Some((Health::Healthy, Health::Unhealthy))
        );
        assert_eq!(
            record(&stats, false, rise, fall, 4),
            None,
            "no second transition"
        );
        assert_eq!(record(&stats, true, rise, fall, 5), None);
        // A failure in between starts the count of passes again.
        assert_eq!(record(&stats, false, rise, fall, 6), None);
        assert_eq!(record(&stats, true, rise, fall, 7), None);
        assert_eq!(
            record(&stats, true, rise, fall, 8),
            Some((Health::Unhealthy, Health::Healthy))
        );
        assert_eq!(stats.checks_total.load(Relaxed), 8);
        assert_eq!(stats.checks_failed.load(Relaxed), 5);
        assert_eq!(stats.unhealthy_total.load(Relaxed), 1);
    }

    #[test]
    fn a_checking_server_is_healthy_after_its_first_pass() {
        let stats = ServerStats::default();
        stats.set_health(Health::Checking);
        assert_eq!(
            record(&stats, true, 5, 5, 1),
            Some((Health::Checking, Health::Healthy))
        );
    }

    #[test]
    fn a_pass_clears_passive_unavail() {
        let stats = ServerStats::default();
        stats.pick.unavail_until_ms.store(10_000, Relaxed);
        assert!(stats.is_unavail(5_000));
        record(&stats, true, 1, 1, 5_000);
        assert!(!stats.is_unavail(5_000));
    }

    #[test]
    fn raw_http_req_is_sent_byte_for_byte_and_structured_requests_are_built() {
        let mut c = http();
        c.http_req = Some("GET / HTTP/1.0\r\nHost: foo.com\r\n\r\n".into());
        assert_eq!(
            request_bytes(&c, "1.2.3.4:80"),
            b"GET / HTTP/1.0\r\nHost: foo.com\r\n\r\n"
        );
        let mut c = http();
        c.path = "/health".into();
        c.headers = vec![("X-Probe".into(), "1".into())];
        let req = String::from_utf8(request_bytes(&c, "1.2.3.4:80")).unwrap();
        assert!(
            req.starts_with("GET /health HTTP/1.0\r\nHost: 1.2.3.4:80\r\n"),
            "{req}"
        );
        assert!(req.contains("X-Probe: 1\r\n") && req.ends_with("\r\n\r\n"));
    }

    #[test]
    fn responses_are_parsed_by_length_chunks_or_end_of_stream() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_response(&full[..30], false).unwrap(), None);
        assert_eq!(
            parse_response(full, false).unwrap(),
            Some(CheckResponse {
                status: 200,
                body: b"hello".to_vec()
            })
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked, false).unwrap().unwrap().body,
            b"abcde"
        );
        let close = b"HTTP/1.0 302 Found\r\n\r\nbye";
        assert_eq!(parse_response(close, false).unwrap(), None);
        assert_eq!(parse_response(close, true).unwrap().unwrap().status, 302);
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", true).is_err());
        assert!(parse_response(b"HTTP/1.1 200", true).is_err());
    }

    #[test]
    fn statuses_and_bodies_are_judged() {
        let r = |status, body: &str| CheckResponse {
            status,
            body: body.as_bytes().to_vec(),
        };
        let c = http();
        assert!(judge(&c, None, &r(204, "")).is_ok());
        assert!(judge(&c, None, &r(302, "")).is_ok());
        assert!(judge(&c, None, &r(500, "")).is_err());
        let mut c = http();
        c.valid_statuses = vec![200, 302];
        assert!(judge(&c, None, &r(302, "")).is_ok());
        assert!(judge(&c, None, &r(301, "")).is_err());
        let mut c = http();
        c.body = Some("OK".into());
        assert!(judge(&c, None, &r(200, "all OK")).is_ok());
        assert!(judge(&c, None, &r(200, "fail")).is_err());
        let re = Regex::new(r"^up \d+$").unwrap();
        assert!(judge(&http(), Some(&re), &r(200, "up 42")).is_ok());
        assert!(judge(&http(), Some(&re), &r(200, "down 42")).is_err());
    }
}
