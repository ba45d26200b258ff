//! What the API shows of the table: plain serializable views, built from one
//! snapshot so that every field of a view agrees with the others, and the
//! words every page uses for a server's state ([`health`], [`peer_state`]).
//!
//! A leaf that only reads: it never writes to the table, and knows no door's
//! routes or error shape, so that every door and page can import it.

use std::sync::atomic::Ordering::Relaxed;

use serde::Serialize;

use crate::upstream::{AdminState, Health, Server, Upstream};

/// Formats a duration as the API writes it: `"10s"`, `"500ms"`, `"0s"`.
pub fn duration(d: std::time::Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    humantime::format_duration(d).to_string().replace(' ', "")
}

/// A duration the API (or `ctl --wait`) could not read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("bad duration {text:?}: {source}")]
pub struct DurationError {
    pub text: String,
    pub source: humantime::DurationError,
}

/// Parses a duration as the API takes it: `"10s"`, `"500ms"`, `"1m"`, or a bare
/// number of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, DurationError> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|source| DurationError {
        text: s.to_string(),
        source,
    })
}

/// Health as observed (never what an operator asked for): the active checks'
/// verdict, or passive `unavail` when the checks have nothing against the server.
pub fn health(server: &Server, now_ms: u64) -> &'static str {
    match server.runtime.stats.health() {
        Health::Unhealthy => "unhealthy",
        Health::Checking => "checking",
        Health::Healthy if server.runtime.stats.is_unavail(now_ms) => "unavail",
        Health::Healthy => "healthy",
    }
}

/// The peer state NGINX Plus would show; the status page and `/metrics` use
/// the same words, so a server reads alike on every page.
pub fn peer_state(s: &Server, now_ms: u64) -> &'static str {
    match (s.state, s.runtime.stats.health()) {
        (AdminState::Down, _) => "down",
        (AdminState::Drain, _) => "draining",
        (AdminState::Up, Health::Unhealthy) => "unhealthy",
        (AdminState::Up, Health::Checking) => "checking",
        (AdminState::Up, Health::Healthy) if s.runtime.stats.is_unavail(now_ms) => "unavail",
        (AdminState::Up, Health::Healthy) => "up",
    }
}

/// Formats a Unix time in milliseconds as RFC 3339 (UTC, milliseconds); `None`
/// for 0 (never).
pub fn unix_ms_rfc3339(ms: u64) -> Option<String> {
    (ms != 0).then(|| {
        humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
        .to_string()
    })
}

/// What the active checks recorded for one server.
#[derive(Debug, Serialize)]
pub struct ChecksView {
    pub checks: u64,
    pub fails: u64,
    pub unhealthy: u64,
    pub consecutive_passes: u32,
    pub consecutive_fails: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_check: Option<String>,
    pub last_check_passed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_passed: Option<String>,
}

impl ChecksView {
    pub fn of(s: &Server) -> ChecksView {
        let st = &s.runtime.stats;
        let (passes, fails, last, last_ok, last_passed) = st.check_record();
        ChecksView {
            checks: st.checks_total.load(Relaxed),
            fails: st.checks_failed.load(Relaxed),
            unhealthy: st.unhealthy_total.load(Relaxed),
            consecutive_passes: passes,
            consecutive_fails: fails,
            last_check: unix_ms_rfc3339(last),
            last_check_passed: last_ok,
            last_passed: unix_ms_rfc3339(last_passed),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Responses {
    #[serde(rename = "1xx")]
    pub r1xx: u64,
    #[serde(rename = "2xx")]
    pub r2xx: u64,
    #[serde(rename = "3xx")]
    pub r3xx: u64,
    #[serde(rename = "4xx")]
    pub r4xx: u64,
    #[serde(rename = "5xx")]
    pub r5xx: u64,
}

#[derive(Debug, Serialize)]
pub struct ServerView {
    pub id: u32,
    pub addr: String,
    pub weight: u32,
    pub max_conns: u32,
    pub max_fails: u32,
    pub fail_timeout: String,
    pub slow_start: String,
    pub backup: bool,
    /// Where it came from: `config`, `api`, or `dns: NAME` (kept in step by
    /// the resolver).
    pub origin: String,
    /// What an operator asked for: `up`, `down`, `drain`.
    pub state: AdminState,
    /// What was observed: `healthy`, `unhealthy`, `checking` (active checks), or
    /// `unavail` (passive failures).
    pub health: &'static str,
    /// Passive failure accounting on its own: `unavail` or `ok`.
    pub passive: &'static str,
    /// Whether it takes new requests now.
    pub eligible: bool,
    pub active: u64,
    pub requests: u64,
    pub responses: Responses,
    pub fails: u64,
    pub unavail: u64,
    /// Milliseconds out of traffic, by operator or by failures.
    pub downtime: u64,
    pub idle_connections: usize,
    /// Bytes written to and read from the server.
    pub sent: u64,
    pub received: u64,
    /// Mean time to response headers and to the end of the response, in ms.
    pub header_time: u64,
    pub response_time: u64,
    pub health_checks: ChecksView,
}

impl ServerView {
    pub fn of(s: &Server, now_ms: u64) -> ServerView {
        let st = &s.runtime.stats;
        let r = |i: usize| st.responses[i].load(Relaxed);
        // The check counts before the verdict: a count comes with the
        // verdict it led to (see `ServerStats::check_record`).
        let health_checks = ChecksView::of(s);
        ServerView {
            id: s.id,
            addr: s.addr.clone(),
            weight: s.weight,
            max_conns: s.max_conns,
            max_fails: s.max_fails,
            fail_timeout: duration(s.fail_timeout),
            slow_start: duration(s.slow_start),
            backup: s.backup,
            origin: s.origin.to_string(),
            state: s.state,
            health: health(s, now_ms),
            passive: if st.is_unavail(now_ms) {
                "unavail"
            } else {
                "ok"
            },
            eligible: s.state == AdminState::Up && s.available(now_ms),
            active: st.pick.active.load(Relaxed),
            requests: st.requests.load(Relaxed),
            responses: Responses {
                r1xx: r(0),
                r2xx: r(1),
                r3xx: r(2),
                r4xx: r(3),
                r5xx: r(4),
            },
            fails: st.fails_total.load(Relaxed),
            unavail: st.unavail_total.load(Relaxed),
            downtime: st.downtime_ms(s.fail_timeout, now_ms),
            idle_connections: s.runtime.pool.idle_len(),
            sent: st.bytes_sent.load(Relaxed),
            received: st.bytes_received.load(Relaxed),
            header_time: st.header_time.mean_ms(),
            response_time: st.response_time.mean_ms(),
            health_checks,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct UpstreamView {
    pub name: String,
    pub balance: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<String>,
    pub keepalive: usize,
    pub eligible_servers: usize,
    /// Panic mode: its threshold, absent when it is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub panic_threshold: Option<u8>,
    /// Whether the upstream is in panic now (with a `panic_threshold` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_panic: Option<bool>,
    /// Times the upstream went into panic.
    pub panic_entries: u64,
    pub servers: Vec<ServerView>,
}

impl UpstreamView {
    pub fn of(u: &Upstream, now_ms: u64) -> UpstreamView {
        let servers: Vec<ServerView> = u
            .snapshot()
            .servers
            .iter()
            .map(|s| ServerView::of(s, now_ms))
            .collect();
        UpstreamView {
            name: u.name.clone(),
            balance: u.settings.balance.as_str(),
            hash_key: u.settings.hash_key.as_ref().map(ToString::to_string),
            keepalive: u.settings.keepalive.max_idle,
            eligible_servers: servers.iter().filter(|s| s.eligible).count(),
            panic_threshold: u.settings.panic_threshold,
            in_panic: u.snapshot().panic_status(now_ms).map(|p| p.in_panic),
            panic_entries: u.panic_entries(),
            servers,
        }
    }
}
