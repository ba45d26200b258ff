//! The counters a pick reads about a server, stored densely.
//!
//! A pick judges a candidate by four atomics: requests in flight, the end of a
//! passive `unavail` period, the health verdict and the slow-start origin. They
//! outlive snapshots (a swap must not reset them), so they cannot live in the
//! per-snapshot arrays; inside each server's own `ServerRuntime` allocation (about
//! 700 bytes, the histograms and the pool beside them) the 10,000 hot lines of a
//! big upstream are spread over ~7 MB and ~1,700 pages, and every candidate of a
//! pick was a cache and TLB miss.
//!
//! This module owns a process-wide slab of [`PickStats`], one cache line each,
//! handed out in chunks of [`CHUNK`] that are allocated once and never freed or
//! moved (`Box::leak`), so a slot is a plain `&'static` and needs no `unsafe`.
//! Servers created together sit side by side: 10,000 of them take 640 KB and 160
//! pages. A slot goes back to a free list when the [`PickSlot`] that owns it is
//! dropped (with its server's runtime: after every snapshot and lease that could
//! read it), zeroed first, and the next server created takes it. The slab keeps at
//! most the peak number of servers alive at once, 64 bytes each.
//!
//! One line per slot (`align(64)`): two workers counting requests on two different
//! servers never contend for a line.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Slots allocated at once when the free list is empty (16 KiB).
const CHUNK: usize = 256;

/// What a pick reads about a server, and the lease writes. Relaxed atomics, as the
/// rest of a server's counters: each is a statistic or a deadline on its own.
#[derive(Debug, Default)]
#[repr(C, align(64))]
pub struct PickStats {
    /// Requests in flight (from pick to the end of the response body).
    pub active: AtomicU64,
    /// The server is `unavail` until this time (0: never was).
    pub(crate) unavail_until_ms: AtomicU64,
    /// When the server last became eligible again (slow start origin; 0: never,
    /// as at process start).
    pub(crate) eligible_since_ms: AtomicU64,
    /// [`Health`](super::Health) as a number (0 healthy, 1 unhealthy, 2 checking).
    pub(crate) health: AtomicU8,
    /// Tasks in [`ServerRuntime::wait_idle`](super::ServerRuntime::wait_idle):
    /// a lease that ends the last request wakes them only when there are any, so
    /// the request path does not take the `Notify`'s lock (nor read a line of the
    /// runtime) for nobody.
    pub(crate) idle_waiters: AtomicU32,
}

impl PickStats {
    /// [`Server::available`](super::Server::available) with the server's `max_conns` given: the pick path
    /// reads it from its own copy, so that it need not touch the `Server`.
    #[inline]
    pub(crate) fn available(&self, max_conns: u32, now_ms: u64) -> bool {
        if self.unavail_until_ms.load(Ordering::Relaxed) > now_ms
            || self.health.load(Ordering::Relaxed) != 0
        {
            return false;
        }
        max_conns == 0 || self.active.load(Ordering::Relaxed) < u64::from(max_conns)
    }

    /// Health as panic mode judges it: `None` while `checking` (no verdict yet),
    /// else whether the server is healthy and not passively `unavail`.
    #[inline]
    pub(crate) fn verdict(&self, now_ms: u64) -> Option<bool> {
        match self.health.load(Ordering::Relaxed) {
            2 => None,
            h => Some(h == 0 && self.unavail_until_ms.load(Ordering::Relaxed) <= now_ms),
        }
    }

    /// [`Server::ramp`](super::Server::ramp) with the server's `slow_start` given (not zero).
    #[inline]
    pub(crate) fn ramp(&self, slow_start: Duration, now_ms: u64) -> Option<f64> {
        let since = self.eligible_since_ms.load(Ordering::Relaxed);
        let unavail_end = self.unavail_until_ms.load(Ordering::Relaxed);
        let start = if unavail_end <= now_ms {
            since.max(unavail_end)
        } else {
            since
        };
        if start == 0 {
            return None;
        }
        let elapsed = now_ms.saturating_sub(start) as f64;
        let total = slow_start.as_millis() as f64;
        (elapsed < total).then(|| (elapsed / total).max(0.1))
    }

    /// Back to the state of a new server (a slot about to be reused).
    fn clear(&self) {
        self.active.store(0, Ordering::Relaxed);
        self.unavail_until_ms.store(0, Ordering::Relaxed);
        self.eligible_since_ms.store(0, Ordering::Relaxed);
        self.health.store(0, Ordering::Relaxed);
    }
}

/// Free slots. Taken on server creation and given back when a server's runtime is
/// dropped: the admin path, never the pick path.
static FREE: Mutex<Vec<&'static PickStats>> = Mutex::new(Vec::new());

/// One server's slot in the slab; derefs to its [`PickStats`].
#[derive(Debug)]
pub struct PickSlot(&'static PickStats);

impl PickSlot {
    /// The slot as a plain reference, for per-snapshot arrays. Valid (and this
    /// server's) for as long as the `PickSlot` lives: the snapshot that copies it
    /// also holds the server.
    #[inline]
    pub(crate) fn get(&self) -> &'static PickStats {
        self.0
    }
}

impl Default for PickSlot {
    fn default() -> Self {
        // A poisoned lock only means another thread panicked while pushing or
        // popping a `&'static`: the list itself is still whole.
        let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
        if free.is_empty() {
            let chunk: &'static [PickStats] =
                Box::leak((0..CHUNK).map(|_| PickStats::default()).collect());
            // Reversed, so that `pop` hands out the chunk in address order.
            free.extend(chunk.iter().rev());
        }
        match free.pop() {
            Some(slot) => PickSlot(slot),
            // Unreachable (the list was just refilled); a slot of its own is the
            // safe answer anyway.
            None => PickSlot(Box::leak(Box::default())),
        }
    }
}

impl Drop for PickSlot {
    fn drop(&mut self) {
        self.0.clear();
        let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
        free.push(self.0);
    }
}

impl std::ops::Deref for PickSlot {
    type Target = PickStats;
    #[inline]
    fn deref(&self) -> &PickStats {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_one_line_each_and_distinct() {
        assert_eq!(std::mem::size_of::<PickStats>(), 64);
        let a = PickSlot::default();
        let b = PickSlot::default();
        assert!(!std::ptr::eq(a.get(), b.get()));
        assert_eq!(a.get() as *const PickStats as usize % 64, 0);
    }

    #[test]
    fn a_slot_given_back_is_cleared_for_its_next_server() {
        let a = PickSlot::default();
        a.active.store(7, Ordering::Relaxed);
        a.unavail_until_ms.store(9, Ordering::Relaxed);
        a.eligible_since_ms.store(11, Ordering::Relaxed);
        a.health.store(2, Ordering::Relaxed);
        a.clear();
        assert_eq!(a.active.load(Ordering::Relaxed), 0);
        assert_eq!(a.unavail_until_ms.load(Ordering::Relaxed), 0);
        assert_eq!(a.eligible_since_ms.load(Ordering::Relaxed), 0);
        assert_eq!(a.health.load(Ordering::Relaxed), 0);
    }
}
