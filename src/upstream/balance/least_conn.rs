//! `least_conn` balancing: weighted least connections.
//!
//! Chooses the eligible member with the smallest `active / weight`, comparing by
//! cross-multiplication in `u128` (exact, no division, no overflow). Among equally
//! loaded members the winner rotates: the scan starts at an offset taken from an
//! atomic counter (`fetch_add`, Relaxed) and only a strictly lighter member displaces
//! the current best, so successive ties go to successive members.
//!
//! The load itself lives with the caller (read through [`Peers::active`]), so the
//! built method is just the weights plus that counter: immutable, shared by all
//! threads, no lock or allocation on the pick path. The pick is O(n), as in nginx;
//! `active` counts are racy snapshots anyway, so nothing stronger is needed.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Member, Peers, Select, lighter, weight_of};

#[derive(Debug)]
pub struct LeastConn {
    weights: Box<[u32]>,
    cursor: AtomicUsize,
}

impl Select for LeastConn {
    fn build(members: &[Member<'_>]) -> Self {
        LeastConn {
            weights: members.iter().map(weight_of).collect(),
            cursor: AtomicUsize::new(0),
        }
    }

    fn select<P: Peers>(&self, peers: &P, _key: Option<u64>) -> Option<usize> {
        let n = self.weights.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(usize, u64)> = None;
        for i in (start..n).chain(0..start) {
            if !peers.eligible(i) {
                continue;
            }
            let active = peers.active(i);
            match best {
                Some((b, b_active))
                    if !lighter(active, self.weights[i], b_active, self.weights[b]) => {}
                _ => best = Some((i, active)),
            }
        }
        best.map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::balance::test_util::{TestPeers, addrs, members};

    fn build(weights: &[u32]) -> LeastConn {
        let a = addrs(weights.len());
        LeastConn::build(&members(&a, weights))
    }

    #[test]
    fn picks_least_loaded_weighted() {
        let lc = build(&[1, 4, 1]);
        let mut peers = TestPeers::all(3);
        // loads per weight: 3/1, 8/4 = 2, 3/1 → member 1.
        peers.active = vec![3, 8, 3];
        for _ in 0..5 {
            assert_eq!(lc.select(&peers, None), Some(1));
        }
        // 9/4 = 2.25 vs 2/1 = 2 → member 0 (first of the lightest in rotation).
        peers.active = vec![2, 9, 3];
        for _ in 0..5 {
            assert_eq!(lc.select(&peers, None), Some(0));
        }
    }

    #[test]
    fn ties_rotate() {
        let lc = build(&[2, 1, 2, 1]);
        let mut peers = TestPeers::all(4);
        // All at load 1 per weight unit.
        peers.active = vec![2, 1, 2, 1];
        let got: Vec<_> = (0..8).map(|_| lc.select(&peers, None).unwrap()).collect();
        assert_eq!(got, [0, 1, 2, 3, 0, 1, 2, 3]);
    }

    #[test]
    fn skips_ineligible_even_if_lightest() {
        let lc = build(&[1, 1, 1]);
        let mut peers = TestPeers::all(3);
        peers.active = vec![0, 5, 7];
        peers.eligible[0] = false;
        for _ in 0..4 {
            assert_eq!(lc.select(&peers, None), Some(1));
        }
        peers.eligible.fill(false);
        assert_eq!(lc.select(&peers, None), None);
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        let lc = build(&[1000, 1]);
        let mut peers = TestPeers::all(2);
        peers.active = vec![u64::MAX, u64::MAX / 999];
        // MAX/1000 < (MAX/999)/1.
        assert_eq!(lc.select(&peers, None), Some(0));
    }

    #[test]
    fn finds_sole_eligible_among_10000() {
        let n = 10_000;
        let lc = build(&vec![3; n]);
        for only in [0, 777, n - 1] {
            let mut peers = TestPeers::only(n, only);
            peers.active[only] = 100;
            assert_eq!(lc.select(&peers, None), Some(only));
        }
    }
}
