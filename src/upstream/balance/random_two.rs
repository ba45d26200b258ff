//! `random_two` balancing: the power of two choices.
//!
//! Draws two distinct members at random, each with probability proportional to its
//! weight, and takes the one with the lower `active / weight` (cross-multiplied, so
//! exact). This gets most of `least_conn`'s load spreading at O(1) (O(log n) when
//! weighted) per pick, and, unlike a global minimum, doesn't send a burst of requests
//! from many threads to the same momentarily idle server.
//!
//! The draws are [`Sampler`]'s: a uniform index with equal weights, else a binary
//! search in a cumulative-weight table built once per snapshot, with `fastrand`'s
//! thread-local generator, so the built method is fully immutable: no lock, no
//! shared counter, no allocation on the pick path.
//! If neither drawn member is eligible, the pick scans all members from a random
//! offset.

use super::method::{Member, Peers, Sampler, Select, lighter, scan_from, weight_of};

/// Redraws of the second choice when it repeats the first (weighted case only).
const REDRAWS: usize = 4;

#[derive(Debug)]
pub struct RandomTwo {
    weights: Box<[u32]>,
    sampler: Sampler,
}

impl RandomTwo {
    /// A second member, distinct from `a` when that is possible.
    #[inline]
    fn draw_other(&self, a: usize) -> usize {
        let n = self.weights.len();
        match &self.sampler.cumulative {
            // Uniform and distinct in one draw.
            None => {
                let b = fastrand::usize(..n - 1);
                if b >= a { b + 1 } else { b }
            }
            Some(_) => {
                let mut b = self.sampler.draw();
                for _ in 0..REDRAWS {
                    if b != a {
                        break;
                    }
                    b = self.sampler.draw();
                }
                b
            }
        }
    }
}

impl Select for RandomTwo {
    fn build(members: &[Member<'_>]) -> Self {
        let weights: Box<[u32]> = members.iter().map(weight_of).collect();
        RandomTwo {
            sampler: Sampler::build(&weights),
            weights,
        }
    }

    fn select<P: Peers>(&self, peers: &P, _key: Option<u64>) -> Option<usize> {
        let n = self.weights.len();
        if n <= 1 {
            return (n == 1 && peers.eligible(0)).then_some(0);
        }
        let a = self.sampler.draw();
        let b = self.draw_other(a);
        let ea = peers.eligible(a);
        let eb = b != a && peers.eligible(b);
        match (ea, eb) {
            (true, true) => {
                let w = &self.weights;
                if lighter(peers.active(b), w[b], peers.active(a), w[a]) {
                    Some(b)
                } else {
                    Some(a)
                }
            }
            (true, false) => Some(a),
            (false, true) => Some(b),
            (false, false) => scan_from(peers, n, fastrand::usize(..n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::balance::test_util::{TestPeers, addrs, members, random_weights};

    fn build(weights: &[u32]) -> RandomTwo {
        let a = addrs(weights.len());
        RandomTwo::build(&members(&a, weights))
    }

    #[test]
    fn weighted_shares_when_idle() {
        fastrand::seed(17);
        let weights = random_weights(20, 1, 100, 17);
        let r2 = build(&weights);
        assert!(r2.sampler.cumulative.is_some());
        let peers = TestPeers::all(20);
        let picks = 400_000u64;
        let mut count = [0u64; 20];
        for _ in 0..picks {
            count[r2.select(&peers, None).unwrap()] += 1;
        }
        let total: u32 = weights.iter().sum();
        for (i, (&c, &w)) in count.iter().zip(&weights).enumerate() {
            let want = f64::from(w) / f64::from(total);
            let got = c as f64 / picks as f64;
            // Within 3% of the share plus a little absolute slack for tiny weights.
            assert!(
                (got - want).abs() < 0.03 * want + 0.001,
                "member {i} (w {w}): {got} vs {want}"
            );
        }
    }

    #[test]
    fn uniform_shares_when_idle() {
        fastrand::seed(3);
        let r2 = build(&[5; 8]);
        assert!(r2.sampler.cumulative.is_none());
        let peers = TestPeers::all(8);
        let mut count = [0u64; 8];
        for _ in 0..80_000 {
            count[r2.select(&peers, None).unwrap()] += 1;
        }
        assert!(
            count.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{count:?}"
        );
    }

    #[test]
    fn prefers_less_loaded_of_two() {
        fastrand::seed(5);
        // Two members: the two choices are always both, so the idle one always wins.
        let r2 = build(&[1, 1]);
        let mut peers = TestPeers::all(2);
        peers.active = vec![10, 0];
        assert!((0..100).all(|_| r2.select(&peers, None) == Some(1)));

        // Weighted: 1/1 is heavier than 3/4.
        let r2 = build(&[1, 4]);
        peers.active = vec![1, 3];
        assert!((0..100).all(|_| r2.select(&peers, None) == Some(1)));

        // Ten members, one busy: it loses every comparison, so it is never chosen.
        let r2 = build(&[1; 10]);
        let mut peers = TestPeers::all(10);
        peers.active[0] = 50;
        assert!((0..1000).all(|_| r2.select(&peers, None) != Some(0)));
    }

    #[test]
    fn skips_ineligible_and_none_when_all_ineligible() {
        for weights in [vec![1; 6], vec![1, 2, 3, 4, 5, 6]] {
            let r2 = build(&weights);
            let mut peers = TestPeers::all(6);
            peers.eligible[1] = false;
            peers.eligible[4] = false;
            for _ in 0..500 {
                let i = r2.select(&peers, None).unwrap();
                assert!(i != 1 && i != 4);
            }
            peers.eligible.fill(false);
            assert_eq!(r2.select(&peers, None), None);
        }
        let single = build(&[3]);
        assert_eq!(single.select(&TestPeers::all(1), None), Some(0));
        assert_eq!(single.select(&TestPeers::only(2, 1), None), None);
    }

    #[test]
    fn finds_sole_eligible_among_10000() {
        let n = 10_000;
        for weights in [vec![1; n], random_weights(n, 1, 1000, 8)] {
            let r2 = build(&weights);
            for only in [0, 9_000, n - 1] {
                let peers = TestPeers::only(n, only);
                assert!((0..5).all(|_| r2.select(&peers, None) == Some(only)));
            }
        }
    }
}
