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
//! This module owns no server state and takes no locks on the pick path. What
//! every method is built from and shares lives in `method`, a leaf the methods
//! import; this file only puts them together ([`Balancer`]).

mod hash;
mod least_conn;
mod method;
mod random_two;
mod round_robin;

pub use hash::HashRing;
pub use least_conn::LeastConn;
pub use method::{Member, Peers, Select};
pub use random_two::RandomTwo;
pub use round_robin::RoundRobin;

use crate::config::Balance;

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
