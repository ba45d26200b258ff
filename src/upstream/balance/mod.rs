//! Balancing methods: given the members of one tier of an upstream snapshot, choose
//! one for a request.
//!
//! A method is *built* once per snapshot from the members' weights and identities
//! (so its precomputed structures are immutable and shared by every thread), then
//! asked to *select* for each request. Selection asks the caller, through
//! [`Peers`], whether a member is eligible right now (not `unavail`, under
//! `max_conns`, not already tried for this request) and how loaded it is, so a
//! method never needs rebuilding when a server's runtime state changes.
//!
//! This module owns no server state and takes no locks on the pick path.

mod hash;
mod least_conn;
mod random_two;
mod round_robin;

pub use hash::HashRing;
pub use least_conn::LeastConn;
pub use random_two::RandomTwo;
pub use round_robin::RoundRobin;

use crate::config::Balance;

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

/// A built method of any kind (enum dispatch keeps the pick path free of vtables).
#[derive(Debug)]
pub enum Balancer {
    RoundRobin(RoundRobin),
    LeastConn(LeastConn),
    /// `hash` and `ip_hash`: the key's source differs, the ring is the same.
    Hash(HashRing),
    RandomTwo(RandomTwo),
}

impl Balancer {
    pub fn build(method: Balance, members: &[Member<'_>]) -> Balancer {
        match method {
            Balance::RoundRobin => Balancer::RoundRobin(RoundRobin::build(members)),
            Balance::LeastConn => Balancer::LeastConn(LeastConn::build(members)),
            Balance::IpHash | Balance::Hash => Balancer::Hash(HashRing::build(members)),
            Balance::RandomTwo => Balancer::RandomTwo(RandomTwo::build(members)),
        }
    }

    #[inline]
    pub fn select<P: Peers>(&self, peers: &P, key: Option<u64>) -> Option<usize> {
        match self {
            Balancer::RoundRobin(m) => m.select(peers, key),
            Balancer::LeastConn(m) => m.select(peers, key),
            Balancer::Hash(m) => m.select(peers, key),
            Balancer::RandomTwo(m) => m.select(peers, key),
        }
    }
}

/// Hashes a request key (header value, cookie, URI, client network) to the `u64`
/// that [`Select::select`] takes. Stable across processes and versions, so every
/// instance of a fleet maps a key to the same server.
#[inline]
pub fn hash_key(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// Linear scan for the first eligible member, starting at `start` and wrapping.
/// The O(n) fallback every method ends with, so `select` returns `None` only when
/// no member at all is eligible. Kept out of line: it is the rare path, and
/// inlined it made each method's common path larger (and slower).
#[cold]
#[inline(never)]
fn scan_from<P: Peers>(peers: &P, n: usize, start: usize) -> Option<usize> {
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
struct Sampler {
    n: usize,
    /// `cumulative[i]` = sum of weights `0..=i`; `None` when all weights are equal.
    cumulative: Option<Box<[u64]>>,
}

impl Sampler {
    fn build(weights: &[u32]) -> Sampler {
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
    fn draw(&self) -> usize {
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
fn lighter(a_active: u64, a_weight: u32, b_active: u64, b_weight: u32) -> bool {
    u128::from(a_active) * u128::from(b_weight) < u128::from(b_active) * u128::from(a_weight)
}

/// A weight as the methods use it: the configured 1..=1000, with 0 read as 1 so a
/// bad value can never divide by zero or starve a member.
#[inline]
fn weight_of(m: &Member<'_>) -> u32 {
    m.weight.max(1)
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::{Member, Peers};

    /// A test view of runtime state: who is eligible and how loaded.
    pub struct TestPeers {
        pub eligible: Vec<bool>,
        pub active: Vec<u64>,
    }

    impl TestPeers {
        pub fn all(n: usize) -> Self {
            TestPeers {
                eligible: vec![true; n],
                active: vec![0; n],
            }
        }

        pub fn only(n: usize, i: usize) -> Self {
            let mut p = TestPeers {
                eligible: vec![false; n],
                active: vec![0; n],
            };
            p.eligible[i] = true;
            p
        }
    }

    impl Peers for TestPeers {
        fn eligible(&self, i: usize) -> bool {
            self.eligible[i]
        }
        fn active(&self, i: usize) -> u64 {
            self.active[i]
        }
    }

    /// Owned addr strings for `n` members (`10.0.0.x:80`-style).
    pub fn addrs(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.{}.{}.{}:80", i >> 16, (i >> 8) & 255, i & 255))
            .collect()
    }

    pub fn members<'a>(addrs: &'a [String], weights: &[u32]) -> Vec<Member<'a>> {
        addrs
            .iter()
            .zip(weights)
            .map(|(a, &w)| Member { weight: w, key: a })
            .collect()
    }

    /// Seeded random weights in `lo..=hi`.
    pub fn random_weights(n: usize, lo: u32, hi: u32, seed: u64) -> Vec<u32> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..n).map(|_| rng.u32(lo..=hi)).collect()
    }
}
