//! Client-side counters of each listener, and of the process: what the NGINX
//! Plus-style read-only endpoints (`/api/N/connections`, `/api/N/http/requests`,
//! `/api/N/http/server_zones`, `/api/N/nginx`) show.
//!
//! Cheap by construction: a connection costs one relaxed atomic add when it is
//! accepted; a request two (one when it starts, one for its response's class)
//! plus its duration in a histogram of atomic buckets (two clock reads, two
//! adds), and one more add only when it ends without a response. Open
//! connections are not counted at all: they are the listener's
//! `max_connections` slots in use. Idle ones are those parked with their accept
//! loop (plain HTTP/1.1 path, idle past `h1::LINGER`), counted when they park
//! and wake. A TLS listener counts its handshakes, done and failed.
//!
//! A request's duration runs from its start (its head read) to its response's
//! head, where the response is counted: switchyard's own answers and upstream
//! attempts, retries included; not the body's streaming.
//!
//! What is not counted: bytes from and to clients (that would take a wrapper
//! around every client socket), so a zone's `received` and `sent` read 0; and
//! requests hyper answers by itself (a malformed request's 400) never reach a
//! count.
//!
//! Listeners register here when they start serving ([`listeners`]) and drop out
//! once nothing holds them (a listener a reload removed, after its last
//! connection). The registry is process-wide: one process is one proxy.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Semaphore;

use crate::upstream::histogram::Histogram;

/// The counters of one listener.
#[derive(Debug)]
pub struct ListenerStats {
    /// The configured address.
    listen: SocketAddr,
    /// The bound address (the port a `:0` got), once bound.
    local: OnceLock<SocketAddr>,
    accepted: AtomicU64,
    requests: AtomicU64,
    /// By class: 1xx to 5xx.
    responses: [AtomicU64; 5],
    /// Requests that ended without a response (the client went away first).
    discarded: AtomicU64,
    /// Connections parked idle with the accept loops.
    idle: AtomicU64,
    /// From a request's start to its response's head.
    duration: Histogram,
    /// Whether the listener terminates TLS (as last built: a reload may change it).
    tls: AtomicBool,
    /// TLS handshakes: done, failed (or timed out).
    handshakes: [AtomicU64; 2],
    /// The listener's `max_connections` slots: a connection holds one while open.
    slots: Arc<Semaphore>,
    max_connections: usize,
}

/// What a listener's counters read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerCounts {
    pub accepted: u64,
    /// Connections open now (idle ones included).
    pub open: u64,
    pub idle: u64,
    pub requests: u64,
    /// Requests started and neither answered nor discarded yet.
    pub processing: u64,
    pub responses: [u64; 5],
    pub discarded: u64,
}

impl ListenerCounts {
    pub fn responses_total(&self) -> u64 {
        self.responses.iter().sum()
    }
}

impl ListenerStats {
    pub fn new(listen: SocketAddr, max_connections: usize) -> ListenerStats {
        ListenerStats {
            listen,
            local: OnceLock::new(),
            accepted: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            responses: Default::default(),
            discarded: AtomicU64::new(0),
            idle: AtomicU64::new(0),
            duration: Histogram::default(),
            tls: AtomicBool::new(false),
            handshakes: Default::default(),
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
        }
    }

    /// The listener's connection slots (`max_connections`).
    pub(super) fn slots(&self) -> &Arc<Semaphore> {
        &self.slots
    }

    pub(super) fn set_local(&self, addr: SocketAddr) {
        let _ = self.local.set(addr);
    }

    /// The bound address (the configured one until bound).
    pub fn addr(&self) -> SocketAddr {
        self.local.get().copied().unwrap_or(self.listen)
    }

    pub(super) fn accepted(&self) {
        self.accepted.fetch_add(1, Relaxed);
    }

    pub(super) fn parked(&self, n: u64) {
        self.idle.fetch_add(n, Relaxed);
    }

    pub(super) fn unparked(&self, n: u64) {
        // Never below 0, whatever the order of updates.
        let _ = self
            .idle
            .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(n)));
    }

    /// Counts a request; the returned guard counts how it ended.
    pub(super) fn request(&self) -> Exchange<'_> {
        self.requests.fetch_add(1, Relaxed);
        Exchange {
            stats: self,
            started: Instant::now(),
            answered: false,
        }
    }

    pub(super) fn set_tls(&self, tls: bool) {
        self.tls.store(tls, Relaxed);
    }

    /// Counts a TLS handshake that was done (`true`) or failed.
    pub(super) fn tls_handshake(&self, ok: bool) {
        self.handshakes[usize::from(!ok)].fetch_add(1, Relaxed);
    }

    /// Whether the listener terminates TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.load(Relaxed)
    }

    /// TLS handshakes done and failed.
    pub fn handshakes(&self) -> (u64, u64) {
        (
            self.handshakes[0].load(Relaxed),
            self.handshakes[1].load(Relaxed),
        )
    }

    /// Requests' durations, to their response's head.
    pub fn durations(&self) -> &Histogram {
        &self.duration
    }

    /// A request answered with `status` at once (for other modules' tests).
    #[cfg(test)]
    pub fn test_answer(&self, status: u16) {
        self.request().answered(status);
    }

    /// Reads the counters (each exact, together a close approximation of one
    /// moment).
    pub fn counts(&self) -> ListenerCounts {
        // Answers before requests: a request that starts between the two reads
        // shows as processing, never as answered before it started.
        let responses: [u64; 5] = std::array::from_fn(|i| self.responses[i].load(Relaxed));
        let discarded = self.discarded.load(Relaxed);
        let requests = self.requests.load(Relaxed);
        let ended = responses.iter().sum::<u64>() + discarded;
        let open = self
            .max_connections
            .saturating_sub(self.slots.available_permits()) as u64;
        ListenerCounts {
            accepted: self.accepted.load(Relaxed),
            open,
            idle: self.idle.load(Relaxed).min(open),
            requests,
            processing: requests.saturating_sub(ended),
            responses,
            discarded,
        }
    }
}

/// One request in progress: [`Exchange::answered`] counts its response's
/// class; dropped without it (the client went away, the connection was cut),
/// the request counts as discarded.
pub(super) struct Exchange<'a> {
    stats: &'a ListenerStats,
    started: Instant,
    answered: bool,
}

impl Exchange<'_> {
    pub fn answered(mut self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.stats.responses[class].fetch_add(1, Relaxed);
        self.stats.duration.observe(self.started.elapsed());
        self.answered = true;
    }
}

impl Drop for Exchange<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.stats.discarded.fetch_add(1, Relaxed);
        }
    }
}

static LISTENERS: Mutex<Vec<Weak<ListenerStats>>> = Mutex::new(Vec::new());

/// Lists a listener that starts serving.
pub(super) fn register(stats: &Arc<ListenerStats>) {
    let mut all = LISTENERS.lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|w| w.strong_count() > 0);
    if !all
        .iter()
        .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(stats)))
    {
        all.push(Arc::downgrade(stats));
    }
}

/// Every listener of the process still serving (or finishing), in the order
/// they started.
pub fn listeners() -> Vec<Arc<ListenerStats>> {
    let all = LISTENERS.lock().unwrap_or_else(|e| e.into_inner());
    all.iter().filter_map(Weak::upgrade).collect()
}

static RELOADS: AtomicU64 = AtomicU64::new(0);
/// Unix milliseconds of the start, then of the last reload.
static LOADED_MS: AtomicU64 = AtomicU64::new(0);

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Notes that the configuration was loaded (the proxy bound its listeners),
/// once per process.
pub(super) fn loaded() {
    let _ = LOADED_MS.compare_exchange(0, unix_ms(), Relaxed, Relaxed);
}

/// Notes a configuration reload put in service.
pub(super) fn reloaded() {
    RELOADS.fetch_add(1, Relaxed);
    LOADED_MS.store(unix_ms(), Relaxed);
}

/// Configuration reloads since the start (NGINX's `generation`).
pub fn reloads() -> u64 {
    RELOADS.load(Relaxed)
}

/// When the configuration in use was loaded, in Unix milliseconds; `None`
/// before the proxy bound its listeners (an admin API on its own).
pub fn loaded_unix_ms() -> Option<u64> {
    Some(LOADED_MS.load(Relaxed)).filter(|&ms| ms != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> ListenerStats {
        ListenerStats::new(SocketAddr::from(([127, 0, 0, 1], 0)), 100)
    }

    #[test]
    fn requests_end_answered_or_discarded() {
        let s = stats();
        let a = s.request();
        let b = s.request();
        let c = s.request();
        let d = s.request();
        let n = s.counts();
        assert_eq!((n.requests, n.processing, n.responses_total()), (4, 4, 0));
        a.answered(200);
        b.answered(503);
        c.answered(101);
        drop(d);
        let n = s.counts();
        assert_eq!(n.requests, 4);
        assert_eq!(n.responses, [1, 1, 0, 0, 1]);
        assert_eq!((n.discarded, n.processing), (1, 0));
        // Out-of-range statuses land in the nearest class.
        s.request().answered(99);
        s.request().answered(600);
        assert_eq!(s.counts().responses, [2, 1, 0, 0, 2]);
        // Every answer has its duration; a discarded request has none.
        let (_, observed, _) = s.durations().read();
        assert_eq!(observed, 5);
    }

    #[test]
    fn a_duration_runs_from_the_start_to_the_answer() {
        let s = stats();
        let e = s.request();
        std::thread::sleep(std::time::Duration::from_millis(3));
        e.answered(200);
        let (sum, count, buckets) = s.durations().read();
        assert_eq!(count, 1);
        assert!(sum >= 0.003, "{sum}");
        // Not in the first two buckets (1 ms, 2 ms).
        assert_eq!(buckets[0] + buckets[1], 0);
    }

    #[test]
    fn tls_handshakes_are_counted_by_outcome() {
        let s = stats();
        assert!(!s.is_tls());
        s.set_tls(true);
        s.tls_handshake(true);
        s.tls_handshake(true);
        s.tls_handshake(false);
        assert!(s.is_tls());
        assert_eq!(s.handshakes(), (2, 1));
    }

    #[test]
    fn open_connections_are_slots_in_use_and_idle_ones_a_part_of_them() {
        let s = stats();
        let permits: Vec<_> = (0..3)
            .map(|_| Arc::clone(s.slots()).try_acquire_owned().unwrap())
            .collect();
        s.accepted();
        s.accepted();
        s.accepted();
        s.parked(2);
        let n = s.counts();
        assert_eq!((n.accepted, n.open, n.idle), (3, 3, 2));
        s.unparked(1);
        drop(permits);
        let n = s.counts();
        // Idle never exceeds open, nor goes below 0.
        assert_eq!((n.open, n.idle), (0, 0));
        s.unparked(5);
        assert_eq!(s.counts().idle, 0);
        assert_eq!(s.counts().accepted, 3);
    }

    #[test]
    fn the_name_is_the_bound_address_once_bound() {
        let s = stats();
        assert_eq!(s.addr().to_string(), "127.0.0.1:0");
        s.set_local(SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(s.addr().to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn registered_listeners_are_listed_while_held() {
        let a = Arc::new(stats());
        let b = Arc::new(stats());
        register(&a);
        register(&a);
        register(&b);
        let listed =
            |x: &Arc<ListenerStats>| listeners().iter().filter(|l| Arc::ptr_eq(l, x)).count();
        assert_eq!((listed(&a), listed(&b)), (1, 1));
        let weak = Arc::downgrade(&b);
        drop(b);
        assert!(weak.upgrade().is_none());
        assert!(
            !listeners()
                .iter()
                .any(|l| std::ptr::eq(Arc::as_ptr(l), weak.as_ptr()))
        );
        assert_eq!(listed(&a), 1);
    }
}
