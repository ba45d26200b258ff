//! One immutable view of an upstream, and picking a server from it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::balance::{self, Balancer, Peers};
use super::panic::{Counts, Mode, Panic, PanicState, PanicStatus};
use super::pick_stats::PickStats;
use super::server::{AdminState, Server};
use crate::config::Balance;

/// The servers of one tier (primary or backup) that an operator has `up`, with the
/// balancer built over them.
#[derive(Debug)]
struct Tier {
    members: Box<[Member]>,
    balancer: Option<Balancer>,
}

/// One member of a tier: the server, and where its live counters are.
///
/// A pick judges a candidate by reading both at once (the two addresses are right
/// here, side by side in one contiguous array), so at 10,000 servers a candidate
/// costs two cache misses in parallel: the `Server`'s first line (its id and
/// `max_conns`, and the reference count the lease then takes) and its line of the
/// dense [`PickStats`] slab. Reached through the `Server`, the counters were a
/// second miss after the first, and a third for the runtime they sat in. (Copying
/// id and `max_conns` here instead, so that only the winner's `Server` is read,
/// measured slower: that miss then comes after the choice instead of alongside.)
#[derive(Debug)]
struct Member {
    server: Arc<Server>,
    /// The server's slot in the slab (`server` keeps it the server's).
    stats: &'static PickStats,
}

impl Tier {
    fn build(method: Balance, members: Vec<Arc<Server>>) -> Tier {
        let balancer = if members.is_empty() {
            None
        } else {
            let view: Vec<balance::Member<'_>> = members
                .iter()
                .map(|s| balance::Member {
                    weight: s.weight,
                    key: &s.addr,
                })
                .collect();
            Some(Balancer::build(method, &view))
        };
        let members = members
            .into_iter()
            .map(|server| Member {
                stats: server.runtime.stats.pick.get(),
                server,
            })
            .collect();
        Tier { members, balancer }
    }

    /// Whether any member is in slow start (then a second look without the
    /// ramp is worth it).
    fn ramping(&self, now_ms: u64) -> bool {
        self.members.iter().any(|m| m.server.ramp(now_ms).is_some())
    }
}

/// An upstream as of one change: every server (in id order) and the tiers.
#[derive(Debug)]
pub struct Snapshot {
    /// Bumped by every published change.
    pub generation: u64,
    /// All servers, whatever their state, in id order.
    pub servers: Vec<Arc<Server>>,
    primary: Tier,
    backup: Tier,
    /// Panic mode, when the upstream has a `panic_threshold` (see `upstream::panic`).
    panic: Option<Panic>,
}

/// Servers already tried for one request (not picked again for it). The first
/// few are kept inline, so a request that needs no more tries than that
/// allocates nothing (`retry.tries` defaults to 3).
#[derive(Debug, Default)]
pub struct Tried {
    inline: [u32; TRIED_INLINE],
    len: usize,
    more: Vec<u32>,
}

const TRIED_INLINE: usize = 4;

impl Tried {
    pub fn contains(&self, id: u32) -> bool {
        self.inline[..self.len.min(TRIED_INLINE)].contains(&id) || self.more.contains(&id)
    }
    pub fn push(&mut self, id: u32) {
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = id,
            None => self.more.push(id),
        }
        self.len += 1;
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

struct View<'a> {
    members: &'a [Member],
    tried: &'a Tried,
    skip: Option<u32>,
    now_ms: u64,
    /// Whether servers in slow start take only their ramped share. The second
    /// look at a tier turns it off, so a ramping server that is the only one left
    /// still serves instead of the client getting a 502.
    ramp: bool,
}

impl Peers for View<'_> {
    #[inline]
    fn eligible(&self, i: usize) -> bool {
        let Member { server: s, stats } = &self.members[i];
        if self.tried.contains(s.id)
            || self.skip == Some(s.id)
            || !stats.available(s.max_conns, self.now_ms)
        {
            return false;
        }
        // Slow start: skipping a ramping server's turns with probability
        // 1 - share gives it `share` of its weight, with no rebuild per step.
        if !self.ramp || s.slow_start.is_zero() {
            return true;
        }
        match stats.ramp(s.slow_start, self.now_ms) {
            Some(share) => fastrand::f64() < share,
            None => true,
        }
    }
    #[inline]
    fn active(&self, i: usize) -> u64 {
        self.members[i].stats.active.load(Ordering::Relaxed)
    }
}

/// The primary tier in panic: every member may take the request, whatever its
/// health or passive `unavail`, within its `max_conns` and unless tried.
struct PanicView<'a> {
    members: &'a [Member],
    tried: &'a Tried,
    skip: Option<u32>,
}

impl Peers for PanicView<'_> {
    #[inline]
    fn eligible(&self, i: usize) -> bool {
        let Member { server: s, stats } = &self.members[i];
        !self.tried.contains(s.id)
            && self.skip != Some(s.id)
            && (s.max_conns == 0 || stats.active.load(Ordering::Relaxed) < u64::from(s.max_conns))
    }
    #[inline]
    fn active(&self, i: usize) -> u64 {
        self.members[i].stats.active.load(Ordering::Relaxed)
    }
}

/// A picked server with one request counted as active on it; dropping the lease
/// ends the request's count.
#[derive(Debug)]
pub struct Lease {
    server: Arc<Server>,
    /// The server's counters (kept by `server`), so that ending the lease touches
    /// the line the pick already read and not the server's runtime.
    stats: &'static PickStats,
}

impl Lease {
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // SeqCst, as `ServerRuntime::wait_idle`'s count and read: see there.
        if self.stats.active.fetch_sub(1, Ordering::SeqCst) == 1
            && self.stats.idle_waiters.load(Ordering::SeqCst) != 0
        {
            self.server.runtime.idle.notify_waiters();
        }
    }
}

impl Snapshot {
    /// `panic`: the upstream's `panic_threshold` and the state its versions share.
    pub(crate) fn build(
        method: Balance,
        generation: u64,
        servers: Vec<Arc<Server>>,
        panic: (Option<u8>, &Arc<PanicState>),
    ) -> Snapshot {
        let tier = |backup: bool| {
            servers
                .iter()
                .filter(|s| s.backup == backup && s.state == AdminState::Up)
                .cloned()
                .collect::<Vec<_>>()
        };
        Snapshot {
            generation,
            primary: Tier::build(method, tier(false)),
            backup: Tier::build(method, tier(true)),
            panic: panic
                .0
                .map(|t| Panic::new(t, generation, Arc::clone(panic.1))),
            servers,
        }
    }

    /// Picks a server for a request: an eligible primary, else an eligible backup
    /// (with a `panic_threshold`, see `upstream::panic` for what changes).
    /// The lease counts the request as active, and respects `max_conns` even when
    /// several threads race for a server's last slot.
    #[inline]
    pub fn pick(&self, key: Option<u64>, tried: &Tried, now_ms: u64) -> Option<Lease> {
        // Panic mode off: this one branch is all it costs.
        if let Some(panic) = &self.panic {
            return self.pick_guarded(panic, key, tried, now_ms);
        }
        self.pick_tier(&self.primary, key, tried, now_ms)
            .or_else(|| self.pick_tier(&self.backup, key, tried, now_ms))
    }

    /// [`Snapshot::pick`] for an upstream with a `panic_threshold`.
    #[inline(never)]
    fn pick_guarded(
        &self,
        panic: &Panic,
        key: Option<u64>,
        tried: &Tried,
        now_ms: u64,
    ) -> Option<Lease> {
        let (first, then) = (&self.primary, &self.backup);
        match panic.mode(now_ms, || self.count(now_ms)) {
            Mode::Normal => {}
            Mode::Spill if panic.primaries_first() => {}
            Mode::Spill => {
                return self
                    .pick_tier(then, key, tried, now_ms)
                    .or_else(|| self.pick_tier(first, key, tried, now_ms));
            }
            Mode::Panic => {
                let members = &first.members;
                return Self::lease_from(first, key, |skip| PanicView {
                    members,
                    tried,
                    skip,
                })
                .or_else(|| self.pick_tier(then, key, tried, now_ms));
            }
        }
        self.pick_tier(first, key, tried, now_ms)
            .or_else(|| self.pick_tier(then, key, tried, now_ms))
    }

    /// An eligible member of `tier`: first with slow start's ramp, then, if a
    /// member is ramping, without it.
    #[inline(always)]
    fn pick_tier(
        &self,
        tier: &Tier,
        key: Option<u64>,
        tried: &Tried,
        now_ms: u64,
    ) -> Option<Lease> {
        for ramp in [true, false] {
            if !ramp && !tier.ramping(now_ms) {
                continue;
            }
            let members = &tier.members;
            let lease = Self::lease_from(tier, key, |skip| View {
                members,
                tried,
                skip,
                now_ms,
                ramp,
            });
            if lease.is_some() {
                return lease;
            }
        }
        None
    }

    /// The tier's balancer's choice among the members `view` finds eligible,
    /// with the request counted on it.
    #[inline(always)]
    fn lease_from<P: Peers>(
        tier: &Tier,
        key: Option<u64>,
        view: impl Fn(Option<u32>) -> P,
    ) -> Option<Lease> {
        let balancer = tier.balancer.as_ref()?;
        let mut skip = None;
        // A server can lose its last slot between the check and the count; the
        // loop then looks once more without it. Bounded by the tier size.
        for _ in 0..=tier.members.len() {
            let i = balancer.select(&view(skip), key)?;
            let Member { server, stats } = &tier.members[i];
            let active = stats.active.fetch_add(1, Ordering::Relaxed);
            if server.max_conns != 0 && active >= u64::from(server.max_conns) {
                stats.active.fetch_sub(1, Ordering::Relaxed);
                skip = Some(server.id);
                continue;
            }
            return Some(Lease {
                server: Arc::clone(server),
                stats,
            });
        }
        None
    }

    /// The primaries `up`, judged by health, and whether a backup could serve.
    #[cold]
    fn count(&self, now_ms: u64) -> Counts {
        let mut c = Counts::default();
        for m in self.primary.members.iter() {
            if let Some(healthy) = m.stats.verdict(now_ms) {
                c.judged += 1;
                c.healthy += u32::from(healthy);
            }
        }
        c.backup_eligible = self
            .backup
            .members
            .iter()
            .any(|m| m.stats.available(m.server.max_conns, now_ms));
        c
    }

    /// Panic mode's state (`None`: no `panic_threshold`), counted afresh if
    /// the last count is older than `upstream::panic::RECOUNT_MS`.
    pub fn panic_status(&self, now_ms: u64) -> Option<PanicStatus> {
        let panic = self.panic.as_ref()?;
        Some(panic.status(now_ms, || self.count(now_ms)))
    }

    /// A server's health changed (an active check's verdict): panic mode is
    /// judged again now, so that an upstream no request reaches still enters
    /// (and logs, and counts) panic when it happens, not at its next request.
    pub fn health_changed(&self, now_ms: u64) {
        if let Some(panic) = &self.panic {
            panic.recount_now();
            let _ = self.panic_status(now_ms);
        }
    }

    /// The server with this id, whatever its state.
    pub fn server(&self, id: u32) -> Option<&Arc<Server>> {
        self.servers
            .binary_search_by_key(&id, |s| s.id)
            .ok()
            .map(|i| &self.servers[i])
    }
}

#[cfg(test)]
#[path = "snapshot_panic_tests.rs"]
mod panic_tests;
