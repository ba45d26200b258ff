//! What every balancing method is built from and shares: the [`Member`]s it is
//! built over, the [`Peers`] it asks at pick time, the [`Select`] trait, and the
//! helpers several methods use (the fallback scan, weighted sampling, load
//! comparison).
//!
//! A leaf: the methods (`round_robin`, `least_conn`, `hash`, `random_two`)
//! import it, and it imports none of them nor `balance/mod.rs`.

/// One member of a tier, as the method is built from it.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    /// 1..=1000.
    pub weight: u32,
    /// Stable identity (the configured `addr`), used by consistent hashing so that a
    /// key keeps its server when *other* servers come and go.
    pub key: &'a str,
}

/// What a method may ask about members at pick time. Indexes are positions in the
/// slice the method was built from. Methods are generic over it (not `&dyn`), so
/// the checks are inlined into the method's loop: no indirect call per member.
pub trait Peers {
    /// Whether member `i` may take this request.
    fn eligible(&self, i: usize) -> bool;
    /// Requests in flight on member `i` (for `least_conn` and `random_two`).
    fn active(&self, i: usize) -> u64;
}

/// A balancing method.
pub trait Select: Send + Sync + Sized {
    /// Builds the method for members in this order. `members` is never empty.
    fn build(members: &[Member<'_>]) -> Self;

    /// Chooses an eligible member, or `None` when no member is eligible.
    ///
    /// `key` is the request's hash key (`hash`, `ip_hash`), `None` when the request
    /// has none or the method takes none. Must not allocate.
    fn select<P: Peers>(&self, peers: &P, key: Option<u64>) -> Option<usize>;
}

/// Linear scan for the first eligible member, starting at `start` and wrapping.
/// The O(n) fallback every method ends with, so `select` returns `None` only when
/// no member at all is eligible. Kept out of line: it is the rare path, and
/// inlined it made each method's common path larger (and slower).
#[cold]
#[inline(never)]
pub(super) fn scan_from<P: Peers>(peers: &P, n: usize, start: usize) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let start = start % n;
    (start..n).chain(0..start).find(|&i| peers.eligible(i))
}

/// Random draws of members, each with probability proportional to its weight
/// (`random_two`'s two choices, `least_conn`'s sample of a big tier).
///
/// With equal weights a draw is a plain uniform index; otherwise it is a binary
/// search of a random number in a cumulative-weight table built once per snapshot.
/// Randomness comes from `fastrand`'s thread-local generator, so the sampler is
/// immutable and shared by every thread: no lock, no shared counter.
#[derive(Debug)]
pub(super) struct Sampler {
    n: usize,
    /// `cumulative[i]` = sum of weights `0..=i`; `None` when all weights are equal.
    pub(super) cumulative: Option<Box<[u64]>>,
}

impl Sampler {
    pub(super) fn build(weights: &[u32]) -> Sampler {
        let uniform = weights.windows(2).all(|w| w[0] == w[1]);
        let cumulative = (!uniform).then(|| {
            weights
                .iter()
                .scan(0u64, |acc, &w| {
                    *acc += u64::from(w);
                    Some(*acc)
                })
                .collect()
        });
        Sampler {
            n: weights.len(),
            cumulative,
        }
    }

    /// One weighted random member (requires `n > 0`).
    #[inline]
    pub(super) fn draw(&self) -> usize {
        match &self.cumulative {
            None => fastrand::usize(..self.n),
            Some(cum) => {
                let total = cum.last().copied().unwrap_or(1);
                let r = fastrand::u64(..total);
                cum.partition_point(|&c| c <= r)
            }
        }
    }
}

/// Whether load `a_active / a_weight` is strictly below `b_active / b_weight`,
/// compared by cross-multiplication (exact, no division, cannot overflow `u128`).
#[inline]
pub(super) fn lighter(a_active: u64, a_weight: u32, b_active: u64, b_weight: u32) -> bool {
    u128::from(a_active) * u128::from(b_weight) < u128::from(b_active) * u128::from(a_weight)
}

/// A weight as the methods use it: the configured 1..=1000, with 0 read as 1 so a
/// bad value can never divide by zero or starve a member.
#[inline]
pub(super) fn weight_of(m: &Member<'_>) -> u32 {
    m.weight.max(1)
}
