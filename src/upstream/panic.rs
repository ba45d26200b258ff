//! Panic mode (Envoy's panic threshold): when too few of an upstream's primary
//! servers are healthy, balance over all of them regardless of health rather
//! than pile every request onto the few that are left (or answer 502).
//!
//! **What is counted.** The primaries an operator has `up` (the primary tier):
//! `down` servers never count, and neither do `drain`ing ones, since an
//! operator draining half the fleet for maintenance must not tip the rest into
//! panic — panic answers failures, not operators. Of those, a server is
//! *judged* once its health has a verdict (`checking` servers count neither
//! way: counting them as unhealthy would put every upstream with a `mandatory`
//! check into panic at start-up, sending traffic to servers that were
//! expressly to pass first; counting them as healthy would hide an outage), and
//! *healthy* when judged healthy and not passively `unavail`. The upstream is
//! below its threshold when `healthy × 100 < threshold × judged`.
//!
//! **What happens below it.** With an eligible backup, the backups stand in
//! for the failed primaries (as Envoy spills load to its next priority before it
//! panics): a request tries the primaries first with probability
//! `healthy / judged`, else the backups first — so the healthy primaries keep
//! their own share and no more. With no eligible backup the upstream is *in
//! panic*: the primary tier's own balancing method picks among all of its
//! members, health and `unavail` ignored (`max_conns` and the request's tried
//! servers still apply); backups are then still tried after it.
//!
//! **How it is judged without slowing the pick.** Health and `unavail` are
//! atomics written outside the table, and `unavail` even ends by the clock
//! alone, with no event to hook a counter on. So the verdict is recounted
//! lazily: the first pick after [`RECOUNT_MS`] wins a compare-and-swap and
//! counts the tier (two loads per member, on the dense pick-stats slab: some
//! microseconds at 10,000 servers, ten times a second at most), and every other
//! pick reads one cached byte. An upstream without `panic_threshold` has no
//! [`Panic`] in its snapshot and pays one predictable branch. The verdict lives
//! in a [`PanicState`] shared by every version of the upstream, so that a table
//! change does not count a new entry into panic, and the views and metrics read
//! (and refresh) the same one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};

use tracing::{info, warn};

/// At most this long between two counts of an upstream's health.
pub const RECOUNT_MS: u64 = 100;

/// What a pick does, as of the last count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Enough healthy primaries (or panic mode off): the usual pick.
    Normal,
    /// Below the threshold, with an eligible backup: backups take the share of
    /// the unhealthy primaries.
    Spill,
    /// Below the threshold and no backup to stand in: all primaries, health ignored.
    Panic,
}

impl Mode {
    fn from_u8(v: u8) -> Mode {
        match v {
            1 => Mode::Spill,
            2 => Mode::Panic,
            _ => Mode::Normal,
        }
    }
}

/// One count of an upstream's servers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Primaries `up` with a health verdict.
    pub judged: u32,
    /// Of those, healthy and not `unavail`.
    pub healthy: u32,
    /// Whether any backup could take a request now.
    pub backup_eligible: bool,
}

impl Counts {
    /// Whether `threshold` percent is more than the healthy share.
    pub fn below(&self, threshold: u8) -> bool {
        u64::from(self.healthy) * 100 < u64::from(threshold) * u64::from(self.judged)
    }

    fn pack(&self) -> u64 {
        (u64::from(self.healthy) << 32) | u64::from(self.judged)
    }

    fn unpack(v: u64) -> (u32, u32) {
        ((v >> 32) as u32, v as u32)
    }
}

/// An upstream's panic verdict and its history, shared by every version of it
/// (see the module docs).
#[derive(Debug)]
pub struct PanicState {
    name: Box<str>,
    /// [`Mode`] as of the last count.
    mode: AtomicU8,
    /// The next count is due at this `clock::now_ms` time (0: at the next pick).
    due_ms: AtomicU64,
    /// The newest generation that counted: an older snapshot still finishing
    /// a request after a swap must not overwrite its verdict.
    counted_generation: AtomicU64,
    /// The last count's healthy and judged primaries (`healthy << 32 | judged`).
    counts: AtomicU64,
    /// Times the upstream went into panic.
    entries: AtomicU64,
}

impl PanicState {
    pub(crate) fn new(name: &str) -> Arc<PanicState> {
        Arc::new(PanicState {
            name: name.into(),
            mode: AtomicU8::new(Mode::Normal as u8),
            due_ms: AtomicU64::new(0),
            counted_generation: AtomicU64::new(0),
            counts: AtomicU64::new(0),
            entries: AtomicU64::new(0),
        })
    }

    /// Times the upstream went into panic (`switchyard_upstream_panic_total`).
    pub fn entries(&self) -> u64 {
        self.entries.load(Relaxed)
    }
}

/// Panic mode as one snapshot of an upstream applies it.
#[derive(Debug)]
pub(crate) struct Panic {
    threshold: u8,
    generation: u64,
    state: Arc<PanicState>,
}

/// Panic mode's state for views and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PanicStatus {
    pub threshold: u8,
    pub in_panic: bool,
    /// As of the last count: primaries `up` with a verdict, and the healthy ones.
    pub judged: u32,
    pub healthy: u32,
}

impl Panic {
    pub(crate) fn new(threshold: u8, generation: u64, state: Arc<PanicState>) -> Panic {
        Panic {
            threshold,
            generation,
            state,
        }
    }

    /// A server's health changed: the next look counts again, however recent
    /// the last count.
    pub(crate) fn recount_now(&self) {
        self.state.due_ms.store(0, Relaxed);
    }

    /// The mode for a pick at `now_ms`, counting first (with `count`) when the
    /// last count is stale or was made by an older version of the upstream.
    #[inline]
    pub(crate) fn mode(&self, now_ms: u64, count: impl FnOnce() -> Counts) -> Mode {
        let s = &self.state;
        let due = s.due_ms.load(Relaxed);
        let newer = self.generation > s.counted_generation.load(Relaxed);
        if (now_ms >= due || newer)
            && self.generation >= s.counted_generation.load(Relaxed)
            && s.due_ms
                .compare_exchange(due, now_ms + RECOUNT_MS, Relaxed, Relaxed)
                .is_ok()
        {
            s.counted_generation.fetch_max(self.generation, Relaxed);
            self.judge(count());
        }
        Mode::from_u8(s.mode.load(Relaxed))
    }

    /// Records a count's verdict; logs and counts the way into panic and out.
    #[cold]
    fn judge(&self, c: Counts) {
        let s = &self.state;
        let mode = match (c.below(self.threshold), c.backup_eligible) {
            (false, _) => Mode::Normal,
            (true, true) => Mode::Spill,
            (true, false) => Mode::Panic,
        };
        s.counts.store(c.pack(), Relaxed);
        let was = Mode::from_u8(s.mode.swap(mode as u8, Relaxed));
        if was == mode {
            return;
        }
        let (healthy, judged, threshold) = (c.healthy, c.judged, self.threshold);
        match (was, mode) {
            (_, Mode::Panic) => {
                s.entries.fetch_add(1, Relaxed);
                warn!(upstream = %s.name, healthy, judged, threshold, "panic mode: too few healthy primaries, balancing over all of them regardless of health");
            }
            (Mode::Panic, _) => {
                info!(upstream = %s.name, healthy, judged, threshold, "panic mode: left");
            }
            (_, Mode::Spill) => {
                info!(upstream = %s.name, healthy, judged, threshold, "panic threshold: too few healthy primaries, backups take the share of the unhealthy ones");
            }
            _ => {
                info!(upstream = %s.name, healthy, judged, threshold, "panic threshold: primaries healthy enough again");
            }
        }
    }

    /// The share of requests that try the primaries first while spilling to
    /// backups: `healthy / judged`, as a draw against `judged`.
    #[inline]
    pub(crate) fn primaries_first(&self) -> bool {
        let (healthy, judged) = Counts::unpack(self.state.counts.load(Relaxed));
        judged == 0 || fastrand::u32(..judged) < healthy
    }

    /// The status as of a count at `now_ms` at the latest.
    pub(crate) fn status(&self, now_ms: u64, count: impl FnOnce() -> Counts) -> PanicStatus {
        let in_panic = self.mode(now_ms, count) == Mode::Panic;
        let (healthy, judged) = Counts::unpack(self.state.counts.load(Relaxed));
        PanicStatus {
            threshold: self.threshold,
            in_panic,
            judged,
            healthy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(healthy: u32, judged: u32, backup_eligible: bool) -> Counts {
        Counts {
            judged,
            healthy,
            backup_eligible,
        }
    }

    #[test]
    fn below_is_strict_at_the_boundary() {
        // 2 of 4 is 50%: not below 50, below 51.
        assert!(!counts(2, 4, false).below(50));
        assert!(counts(2, 4, false).below(51));
        assert!(counts(1, 4, false).below(50));
        assert!(!counts(4, 4, false).below(100));
        assert!(counts(3, 4, false).below(100));
        // Nothing judged (all `checking`, or no primary up): never below.
        assert!(!counts(0, 0, false).below(100));
        assert!(counts(0, 1, false).below(1));
    }

    #[test]
    fn entries_count_transitions_into_panic_only() {
        let state = PanicState::new("u");
        let p = Panic::new(50, 1, Arc::clone(&state));
        let mut now = 1;
        let mut at = |c: Counts| {
            now += RECOUNT_MS;
            p.mode(now, || c)
        };
        assert_eq!(at(counts(4, 4, false)), Mode::Normal);
        assert_eq!(at(counts(1, 4, false)), Mode::Panic);
        assert_eq!(at(counts(0, 4, false)), Mode::Panic);
        assert_eq!(state.entries(), 1, "staying in panic is one entry");
        assert_eq!(at(counts(1, 4, true)), Mode::Spill);
        assert_eq!(at(counts(2, 4, false)), Mode::Normal);
        assert_eq!(at(counts(1, 4, false)), Mode::Panic);
        assert_eq!(state.entries(), 2);
    }

    #[test]
    fn counts_at_most_once_per_period_and_for_a_newer_version() {
        let state = PanicState::new("u");
        let old = Panic::new(50, 1, Arc::clone(&state));
        let calls = std::cell::Cell::new(0);
        let c = |h| {
            calls.set(calls.get() + 1);
            counts(h, 4, false)
        };
        assert_eq!(old.mode(10, || c(0)), Mode::Panic);
        assert_eq!(old.mode(11, || c(4)), Mode::Panic, "not due yet");
        assert_eq!(calls.get(), 1);
        // A new version of the upstream counts at once, and is not in a new panic.
        let new = Panic::new(50, 2, Arc::clone(&state));
        assert_eq!(new.mode(12, || c(1)), Mode::Panic);
        assert_eq!((calls.get(), state.entries()), (2, 1));
        // The old version, still finishing a request, counts no more.
        assert_eq!(old.mode(10_000, || c(4)), Mode::Panic);
        assert_eq!(calls.get(), 2);
        assert_eq!(new.mode(10_000, || c(4)), Mode::Normal);
        let st = new.status(10_001, || c(4));
        assert_eq!((st.in_panic, st.healthy, st.judged), (false, 4, 4));
    }

    #[test]
    fn spilling_tries_primaries_by_their_healthy_share() {
        fastrand::seed(7);
        let p = Panic::new(50, 1, PanicState::new("u"));
        assert_eq!(p.mode(1, || counts(1, 4, true)), Mode::Spill);
        let first = (0..40_000).filter(|_| p.primaries_first()).count();
        assert!((9_000..11_000).contains(&first), "{first}");
    }
}
