//! One server of an upstream: its settings and admin state (immutable, inside a
//! snapshot) and its runtime (counters and connection pool, shared by every
//! snapshot that contains the server, so a swap loses nothing).
//!
//! The pool's contents are the proxy's business: the server only holds them
//! ([`Connections`]), so that they live and die with it and the table can let
//! them go when the server stops taking traffic. Nothing here names a type of
//! the proxy.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::pick_stats::{PickSlot, PickStats};
use crate::config::KeepaliveConfig;

/// What an operator asked for (defined with the saved state, which keeps it).
pub use crate::state::AdminState;

/// What the active checks observed. Written only by the `health` module (and set
/// to its starting value when a server or a check is added).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Passing, or not checked at all.
    Healthy,
    /// Failed `fall` checks in a row.
    Unhealthy,
    /// No verdict yet: takes no traffic until a first pass.
    Checking,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Checking => "checking",
        }
    }

    fn from_u8(v: u8) -> Health {
        match v {
            1 => Health::Unhealthy,
            2 => Health::Checking,
            _ => Health::Healthy,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Health::Healthy => 0,
            Health::Unhealthy => 1,
            Health::Checking => 2,
        }
    }
}

/// A server as one snapshot sees it. Changing any field makes a new `Server` in a
/// new snapshot; `runtime` is carried over.
///
/// `repr(C)`, the fields a pick reads first: with thousands of servers every
/// candidate a pick looks at is a cache miss, so they should share one line.
#[derive(Debug)]
#[repr(C)]
pub struct Server {
    pub runtime: Arc<ServerRuntime>,
    pub slow_start: Duration,
    /// Stable inside its upstream, never reused.
    pub id: u32,
    pub max_conns: u32,
    pub weight: u32,
    pub state: AdminState,
    pub backup: bool,
    /// `host:port` as configured (the identity operators use).
    pub addr: String,
    /// Where connections go (the resolved `addr`).
    pub sockaddr: SocketAddr,
    pub max_fails: u32,
    pub fail_timeout: Duration,
    /// Where the server came from (cold: only the API and the resolver read it).
    pub origin: Origin,
}

/// Where a server came from: the configuration file, the API (or a door like
/// it), or a DNS name that the resolver keeps in step (`discovery`). The
/// resolver changes only servers of its own name; an operator's change to one
/// of them (say, `down`) is kept as long as the address stays in the records.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Origin {
    #[default]
    Config,
    Api,
    /// The entry's name as written: `app.internal:8080` or `_http._tcp.app.internal`.
    Dns(Arc<str>),
}

impl Origin {
    pub fn dns(name: &str) -> Origin {
        Origin::Dns(Arc::from(name))
    }

    /// The saved form back (see `Display`); anything unknown, or nothing (a
    /// file written before origins were kept), is `config`.
    pub fn parse(s: Option<&str>) -> Origin {
        match s {
            Some("api") => Origin::Api,
            Some(s) => match s.strip_prefix("dns:") {
                Some(name) if !name.trim().is_empty() => Origin::dns(name.trim()),
                _ => Origin::Config,
            },
            None => Origin::Config,
        }
    }

    /// The DNS name, for a server that came from one.
    pub fn dns_name(&self) -> Option<&str> {
        match self {
            Origin::Dns(name) => Some(name),
            _ => None,
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Config => f.write_str("config"),
            Origin::Api => f.write_str("api"),
            Origin::Dns(name) => write!(f, "dns: {name}"),
        }
    }
}

impl Server {
    /// A copy with the same id and runtime; the caller then changes fields.
    pub(crate) fn clone_settings(&self) -> Server {
        Server {
            id: self.id,
            addr: self.addr.clone(),
            sockaddr: self.sockaddr,
            weight: self.weight,
            max_conns: self.max_conns,
            max_fails: self.max_fails,
            fail_timeout: self.fail_timeout,
            slow_start: self.slow_start,
            backup: self.backup,
            state: self.state,
            runtime: Arc::clone(&self.runtime),
            origin: self.origin.clone(),
        }
    }

    /// Whether this server may take a new request now, judged from runtime state
    /// (admin state is already applied: only `up` servers are in a tier).
    #[inline]
    pub fn available(&self, now_ms: u64) -> bool {
        self.runtime.stats.pick.available(self.max_conns, now_ms)
    }

    /// During slow start, the share of its weight the server takes now (from a
    /// tenth up to all of it, linearly over `slow_start`); `None` outside it.
    /// The ramp starts when the server became eligible again: set up, added,
    /// recovered from a failed check, or back from passive `unavail`.
    #[inline]
    pub fn ramp(&self, now_ms: u64) -> Option<f64> {
        if self.slow_start.is_zero() {
            return None;
        }
        self.runtime.stats.pick.ramp(self.slow_start, now_ms)
    }
}

/// What the table asks of a server's idle connections, whatever they are:
/// how many there are, and to let them go.
pub trait IdleConnections: Any + Send + Sync + std::fmt::Debug {
    /// Closes every idle connection (server removed, drained or set down).
    fn clear(&self);
    /// Closes idle connections that timed out or that the server closed.
    fn sweep(&self);
    fn idle_len(&self) -> usize;
}

/// A server's idle connections, made by their user on first use (a server
/// that never takes traffic costs none) with the upstream's keep-alive
/// settings of the moment the server was made.
#[derive(Debug)]
pub struct Connections {
    keepalive: KeepaliveConfig,
    held: OnceLock<Box<dyn IdleConnections>>,
}

impl Connections {
    pub fn new(keepalive: KeepaliveConfig) -> Connections {
        Connections {
            keepalive,
            held: OnceLock::new(),
        }
    }

    /// The pool, made by `make` if there is none yet. `None` if a pool of
    /// another type was made first (one user per process, so never in practice).
    #[inline]
    pub fn get_or_init<P: IdleConnections>(
        &self,
        make: impl FnOnce(&KeepaliveConfig) -> P,
    ) -> Option<&P> {
        let held = self.held.get_or_init(|| Box::new(make(&self.keepalive)));
        (&**held as &dyn Any).downcast_ref::<P>()
    }

    pub fn clear(&self) {
        if let Some(p) = self.held.get() {
            p.clear();
        }
    }

    pub fn sweep(&self) {
        if let Some(p) = self.held.get() {
            p.sweep();
        }
    }

    pub fn idle_len(&self) -> usize {
        self.held.get().map_or(0, |p| p.idle_len())
    }
}

/// State of a server that outlives snapshots.
#[derive(Debug)]
#[repr(C)]
pub struct ServerRuntime {
    /// First: its hot line starts the allocation.
    pub stats: ServerStats,
    pub pool: Connections,
    /// Woken when the last request in flight ends (`active` reaches 0), for
    /// operators waiting on a drain.
    pub idle: tokio::sync::Notify,
}

impl ServerRuntime {
    pub fn new(keepalive: KeepaliveConfig) -> Self {
        ServerRuntime {
            stats: ServerStats::default(),
            pool: Connections::new(keepalive),
            idle: tokio::sync::Notify::new(),
        }
    }

    /// Waits until no request is in flight on this server, or `timeout` passes.
    /// Returns the requests still in flight (0 when it became idle). A timeout
    /// too long to be a point in time (`?wait=18446744073709551615`, in seconds) waits for idle.
    pub async fn wait_idle(&self, timeout: std::time::Duration) -> u64 {
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        // Counted before `active` is read (both SeqCst, as the lease's decrement
        // and its read of the count): either this sees the last request's end, or
        // that lease sees a waiter and wakes it. The guard uncounts on any exit,
        // a dropped future included.
        let _waiting = IdleWaiter::new(&self.stats.pick);
        loop {
            // Register before reading, so a wake-up between the two is not lost.
            let notified = self.idle.notified();
            let active = self.stats.pick.active.load(Ordering::SeqCst);
            if active == 0 {
                return 0;
            }
            match deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d, notified).await.is_err() {
                        return self.stats.pick.active.load(Ordering::SeqCst);
                    }
                }
                None => notified.await,
            }
        }
    }
}

/// One task in [`ServerRuntime::wait_idle`], counted in its server's
/// `idle_waiters` for as long as it lives.
struct IdleWaiter<'a>(&'a PickStats);

impl<'a> IdleWaiter<'a> {
    fn new(stats: &'a PickStats) -> Self {
        stats.idle_waiters.fetch_add(1, Ordering::SeqCst);
        IdleWaiter(stats)
    }
}

impl Drop for IdleWaiter<'_> {
    fn drop(&mut self) {
        self.0.idle_waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counters of one server. Written with relaxed atomics: each is a statistic or a
/// deadline on its own, and no reader needs two of them to agree.
///
/// What a pick reads (`active`, `unavail_until_ms`, `health`,
/// `eligible_since_ms`) is in `pick`, a slot of the dense slab in
/// [`super::pick_stats`]: one line per candidate, next to the other servers'.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Requests in flight, passive `unavail`, health, slow-start origin.
    pub pick: PickSlot,
    /// Requests sent to this server.
    pub requests: AtomicU64,
    /// Responses by class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub responses: [AtomicU64; 5],
    /// Bytes written to and read from the server (headers included).
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    /// Time to response headers, and until the end of the response body.
    pub header_time: super::histogram::Histogram,
    pub response_time: super::histogram::Histogram,
    /// Wall-clock time (Unix ms) the server was last picked for a request.
    pub selected_unix_ms: AtomicU64,
    /// Failed attempts (connect errors, resets, timeouts), ever.
    pub fails_total: AtomicU64,
    /// Times the server became `unavail`.
    pub unavail_total: AtomicU64,
    /// Failures in the current `fail_timeout` window (passive accounting).
    pub(crate) window_fails: AtomicU32,
    /// Start of the current failure window, in `clock::now_ms` time.
    pub(crate) window_start_ms: AtomicU64,
    /// Consecutive passed / failed active checks.
    pub(crate) check_passes: AtomicU32,
    pub(crate) check_fails: AtomicU32,
    /// Active checks done and failed, and times the server became unhealthy.
    pub checks_total: AtomicU64,
    pub checks_failed: AtomicU64,
    pub unhealthy_total: AtomicU64,
    /// Wall-clock time (Unix ms) of the last check and of the last passed one.
    pub(crate) last_check_unix_ms: AtomicU64,
    pub(crate) last_passed_unix_ms: AtomicU64,
    pub(crate) last_check_passed: AtomicBool,
    /// Time spent out of traffic by an operator's `down`/`drain`, ended periods.
    pub(crate) admin_downtime_ms: AtomicU64,
    /// When the current `down`/`drain` began (0: the server is `up`).
    pub(crate) admin_down_since_ms: AtomicU64,
}

impl ServerStats {
    /// Counts a response by its status class.
    #[inline]
    pub fn count_response(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Whether passive accounting has the server `unavail` at `now_ms`.
    pub fn is_unavail(&self, now_ms: u64) -> bool {
        self.pick.unavail_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// Total time the server was out of traffic, by operator or by passive
    /// `unavail` (each unavail period lasts `fail_timeout`; the current one counts
    /// up to now).
    pub fn downtime_ms(&self, fail_timeout: Duration, now_ms: u64) -> u64 {
        let since = self.admin_down_since_ms.load(Ordering::Relaxed);
        let admin = self.admin_downtime_ms.load(Ordering::Relaxed)
            + if since == 0 {
                0
            } else {
                now_ms.saturating_sub(since)
            };
        let periods = self.unavail_total.load(Ordering::Relaxed);
        let until = self.pick.unavail_until_ms.load(Ordering::Relaxed);
        let window = fail_timeout.as_millis() as u64;
        let passive = periods * window - until.saturating_sub(now_ms).min(window * periods);
        admin + passive
    }

    pub fn health(&self) -> Health {
        Health::from_u8(self.pick.health.load(Ordering::Relaxed))
    }

    /// Sets health (the `health` module's verdicts, and starting values).
    pub(crate) fn set_health(&self, h: Health) -> Health {
        Health::from_u8(self.pick.health.swap(h.to_u8(), Ordering::Relaxed))
    }

    /// Consecutive passes and fails, last check time and result, last pass time.
    pub fn check_record(&self) -> (u32, u32, u64, bool, u64) {
        (
            // Acquire: a count read here comes with the verdict it led to
            // (`health::active::record` sets the verdict first).
            self.check_passes.load(Ordering::Acquire),
            self.check_fails.load(Ordering::Acquire),
            self.last_check_unix_ms.load(Ordering::Relaxed),
            self.last_check_passed.load(Ordering::Relaxed),
            self.last_passed_unix_ms.load(Ordering::Relaxed),
        )
    }

    /// Records an admin state change for downtime accounting.
    pub(crate) fn admin_state_changed(&self, was_up: bool, is_up: bool, now_ms: u64) {
        if !was_up && is_up {
            self.pick.eligible_since_ms.store(now_ms, Ordering::Relaxed);
        }
        if was_up && !is_up {
            self.admin_down_since_ms.store(now_ms, Ordering::Relaxed);
        } else if !was_up && is_up {
            let since = self.admin_down_since_ms.swap(0, Ordering::Relaxed);
            if since != 0 {
                self.admin_downtime_ms
                    .fetch_add(now_ms.saturating_sub(since), Ordering::Relaxed);
            }
        }
    }

    /// Zeroes the statistics (not the passive state or the active count).
    pub fn reset(&self) {
        self.requests.store(0, Ordering::Relaxed);
        for r in &self.responses {
            r.store(0, Ordering::Relaxed);
        }
        self.fails_total.store(0, Ordering::Relaxed);
        self.unavail_total.store(0, Ordering::Relaxed);
        self.admin_downtime_ms.store(0, Ordering::Relaxed);
        self.bytes_sent.store(0, Ordering::Relaxed);
        self.bytes_received.store(0, Ordering::Relaxed);
        self.header_time.reset();
        self.response_time.reset();
        self.checks_total.store(0, Ordering::Relaxed);
        self.checks_failed.store(0, Ordering::Relaxed);
        self.unhealthy_total.store(0, Ordering::Relaxed);
    }
}
