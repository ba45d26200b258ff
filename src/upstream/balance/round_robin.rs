//! `round_robin` balancing: nginx's smooth weighted round robin.
//!
//! nginx's algorithm keeps a mutable `current_weight` per peer and, for every pick,
//! adds each peer's weight to it, takes the largest and subtracts the total from the
//! winner. That needs a lock (or a CAS over all peers) on every request. But the
//! sequence it produces depends only on the weights, and it is periodic with period
//! `P = sum(weights) / gcd(weights)`, in which each peer appears exactly
//! `weight / gcd` times. So we run nginx's algorithm once, at build time, and store
//! the period as a `Box<[u32]>`; a pick is then one `fetch_add` (Relaxed) on a
//! shared cursor plus an index, with no lock and no allocation. The built method is
//! immutable apart from that cursor, so one instance serves every thread.
//!
//! Three plans, chosen at build time:
//! - **Cyclic** — all weights equal: nginx gives `0, 1, 2, …`; nothing materialised.
//! - **Smooth** — the exact nginx sequence, when simulating it is cheap: `P × n ≤
//!   2^24` steps and `P ≤ 2^20` entries (≤ 4 MiB). This covers every realistic
//!   small and mid-sized tier (e.g. 20 servers with weights up to 1000).
//! - **Rotation** — for big tiers where the simulation would be too slow or the
//!   period too large (10,000 servers with weights 1..=1000 have `P ≈ 5·10^6` and
//!   would need `≈ 5·10^10` steps). Instead of scaling weights down (which with a
//!   minimum of 1 distorts small weights and cannot even meet the budget when
//!   `n² > 2^24`), pick step `t` lands on `x = t·c mod P`, where `c` is coprime to
//!   `P` and `c/P ≈ 1/φ`, and `x` is mapped to a member through the cumulative
//!   weight table (binary search). Because `x ↦ x·c mod P` is a permutation, every
//!   member gets *exactly* its weight share in each period (like nginx), and by the
//!   three-gap theorem the picks of any one member are evenly spread (gaps take at
//!   most three values, close to `P / weight`), so it is smooth too — just not
//!   nginx's exact order. Build is O(n), a pick is O(log n), memory is O(n).
//!
//! When the member next in sequence is not eligible, the pick takes the next steps
//! of the shared sequence (moving the cursor, so the skipped member's turns are
//! shared by the others in proportion to their weights), a few at most, then falls
//! back to a scan of all members from a rotating offset.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::method::{Member, Peers, Select, scan_from, weight_of};

/// Upper bound on `P × n` for simulating nginx's algorithm at build time.
const MAX_SIM_STEPS: u64 = 1 << 24;
/// Upper bound on the materialised period (entries of 4 bytes).
const MAX_PERIOD: u64 = 1 << 20;
/// Steps along the sequence tried past an ineligible member before scanning.
const PROBES: usize = 8;

#[derive(Debug)]
enum Plan {
    /// Equal weights: member `t mod n`.
    Cyclic,
    /// nginx's exact smooth WRR period.
    Smooth(Box<[u32]>),
    /// Golden-ratio rotation over the cumulative weights (see module docs).
    Rotation {
        period: u64,
        step: u64,
        /// `cumulative[i]` = sum of reduced weights `0..=i`.
        cumulative: Box<[u64]>,
    },
}

#[derive(Debug)]
pub struct RoundRobin {
    n: usize,
    plan: Plan,
    cursor: AtomicUsize,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Runs nginx's smooth weighted round robin for one full period.
fn nginx_period(weights: &[u64], period: u64) -> Box<[u32]> {
    let total: i64 = weights.iter().map(|&w| w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    let mut seq = Vec::with_capacity(period as usize);
    for _ in 0..period {
        let mut best = 0usize;
        let mut best_cur = i64::MIN;
        for (i, (cur, &w)) in current.iter_mut().zip(weights).enumerate() {
            *cur += w as i64;
            // Strictly greater: on a tie the earlier peer wins, as in nginx.
            if *cur > best_cur {
                best = i;
                best_cur = *cur;
            }
        }
        current[best] -= total;
        seq.push(best as u32);
    }
    seq.into_boxed_slice()
}

impl RoundRobin {
    /// Member at step `t` of the sequence.
    #[inline]
    fn member_at(&self, t: usize) -> usize {
        match &self.plan {
            Plan::Cyclic => t % self.n,
            Plan::Smooth(seq) => seq[t % seq.len()] as usize,
            Plan::Rotation {
                period,
                step,
                cumulative,
            } => {
                let x = ((t as u128 % u128::from(*period)) * u128::from(*step)
                    % u128::from(*period)) as u64;
                cumulative.partition_point(|&c| c <= x)
            }
        }
    }
}

impl Select for RoundRobin {
    fn build(members: &[Member<'_>]) -> Self {
        let n = members.len();
        let raw: Vec<u64> = members.iter().map(|m| u64::from(weight_of(m))).collect();
        let g = raw.iter().fold(0, |g, &w| gcd(g, w)).max(1);
        let weights: Vec<u64> = raw.iter().map(|&w| w / g).collect();
        let period: u64 = weights.iter().sum();

        let plan = if weights.iter().all(|&w| w == 1) {
            Plan::Cyclic
        } else if period <= MAX_PERIOD && period.saturating_mul(n as u64) <= MAX_SIM_STEPS {
            Plan::Smooth(nginx_period(&weights, period))
        } else {
            // step ≈ period / φ, nudged up to the nearest value coprime to period.
            let mut step = ((u128::from(period) * 0x9E37_79B9_7F4A_7C15) >> 64) as u64;
            step = step.max(1);
            while gcd(step, period) != 1 {
                step += 1;
            }
            let cumulative = weights
                .iter()
                .scan(0u64, |acc, &w| {
                    *acc += w;
                    Some(*acc)
                })
                .collect();
            Plan::Rotation {
                period,
                step,
                cumulative,
            }
        };
        RoundRobin {
            n,
            plan,
            cursor: AtomicUsize::new(0),
        }
    }

    fn select<P: Peers>(&self, peers: &P, _key: Option<u64>) -> Option<usize> {
        if self.n == 0 {
            return None;
        }
        // An ineligible member's step is consumed from the shared cursor, so its
        // turns are spread over the others by weight (as nginx leaves unavailable
        // peers out of the round) instead of all going to the member after it.
        let mut t = self.cursor.fetch_add(1, Ordering::Relaxed);
        for _ in 0..PROBES {
            let i = self.member_at(t);
            if peers.eligible(i) {
                return Some(i);
            }
            t = self.cursor.fetch_add(1, Ordering::Relaxed);
        }
        scan_from(peers, self.n, t % self.n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::balance::test_util::{TestPeers, addrs, members, random_weights};

    fn build(weights: &[u32]) -> RoundRobin {
        let a = addrs(weights.len());
        RoundRobin::build(&members(&a, weights))
    }

    fn picks(rr: &RoundRobin, peers: &TestPeers, k: usize) -> Vec<usize> {
        (0..k).map(|_| rr.select(peers, None).unwrap()).collect()
    }

    #[test]
    fn nginx_sequence_5_1_1() {
        let rr = build(&[5, 1, 1]);
        assert!(matches!(rr.plan, Plan::Smooth(_)));
        let got = picks(&rr, &TestPeers::all(3), 14);
        // a a b a c a a, twice around.
        assert_eq!(got, [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn nginx_sequence_small_cases() {
        assert_eq!(
            picks(&build(&[2, 1]), &TestPeers::all(2), 6),
            [0, 1, 0, 0, 1, 0]
        );
        // gcd reduction does not change the order: 10,2,2 == 5,1,1.
        assert_eq!(
            picks(&build(&[10, 2, 2]), &TestPeers::all(3), 7),
            [0, 0, 1, 0, 2, 0, 0]
        );
    }

    #[test]
    fn equal_weights_are_cyclic() {
        for w in [1, 7] {
            let rr = build(&[w, w, w]);
            assert!(matches!(rr.plan, Plan::Cyclic));
            assert_eq!(picks(&rr, &TestPeers::all(3), 6), [0, 1, 2, 0, 1, 2]);
        }
    }

    #[test]
    fn exact_shares_over_full_periods() {
        let weights = random_weights(20, 1, 100, 7);
        let rr = build(&weights);
        assert!(matches!(rr.plan, Plan::Smooth(_)));
        let g = weights.iter().fold(0u64, |g, &w| gcd(g, u64::from(w)));
        let period: u64 = weights.iter().map(|&w| u64::from(w) / g).sum();
        let k = 3;
        let peers = TestPeers::all(20);
        let mut count = [0u64; 20];
        for _ in 0..period * k {
            count[rr.select(&peers, None).unwrap()] += 1;
        }
        for (c, &w) in count.iter().zip(&weights) {
            assert_eq!(*c, u64::from(w) / g * k);
        }
    }

    #[test]
    fn rotation_plan_exact_shares_and_smooth() {
        let weights = random_weights(2000, 1, 1000, 11);
        let rr = build(&weights);
        let Plan::Rotation { period, .. } = rr.plan else {
            panic!("expected rotation plan");
        };
        let heavy = (0..weights.len()).max_by_key(|&i| weights[i]).unwrap();
        let mut count = vec![0u64; weights.len()];
        let (mut last, mut max_gap) = (None, 0usize);
        for t in 0..period as usize {
            let i = rr.member_at(t);
            count[i] += 1;
            if i == heavy {
                if let Some(l) = last {
                    max_gap = max_gap.max(t - l);
                }
                last = Some(t);
            }
        }
        let g = weights.iter().fold(0u64, |g, &w| gcd(g, u64::from(w)));
        for (c, &w) in count.iter().zip(&weights) {
            assert_eq!(*c, u64::from(w) / g);
        }
        // Evenly spread: no gap much above the mean period / weight.
        let mean = period as f64 / (f64::from(weights[heavy]) / g as f64);
        assert!(
            (max_gap as f64) < 2.0 * mean,
            "max gap {max_gap}, mean {mean}"
        );
    }

    #[test]
    fn exact_shares_across_threads() {
        let weights = [5u32, 3, 1, 1];
        let rr = build(&weights);
        let per_thread = 10 * 1000; // 4 threads × 10,000 = 4,000 full periods of 10
        let counts: Vec<[u64; 4]> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let peers = TestPeers::all(4);
                        let mut c = [0u64; 4];
                        for _ in 0..per_thread {
                            c[rr.select(&peers, None).unwrap()] += 1;
                        }
                        c
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, &w) in weights.iter().enumerate() {
            let total: u64 = counts.iter().map(|c| c[i]).sum();
            assert_eq!(total, u64::from(w) * 4_000);
        }
    }

    #[test]
    fn skips_ineligible() {
        let rr = build(&[5, 1, 1]);
        let mut peers = TestPeers::all(3);
        peers.eligible[0] = false;
        let got = picks(&rr, &peers, 70);
        assert!(got.iter().all(|&i| i != 0));
        assert!(got.contains(&1) && got.contains(&2));
    }

    #[test]
    fn an_ineligible_members_turns_are_shared_by_weight() {
        // Equal weights, one of three out: the other two alternate.
        let rr = build(&[1, 1, 1]);
        let mut peers = TestPeers::all(3);
        peers.eligible[0] = false;
        let got = picks(&rr, &peers, 100);
        let count = |m| got.iter().filter(|&&i| i == m).count();
        assert_eq!((count(0), count(1), count(2)), (0, 50, 50));
        // 5:1:1 with the heavy one out: the rest keep their 1:1.
        let rr = build(&[5, 1, 1]);
        let mut peers = TestPeers::all(3);
        peers.eligible[0] = false;
        let got = picks(&rr, &peers, 60);
        let count = |m| got.iter().filter(|&&i| i == m).count();
        assert_eq!((count(1), count(2)), (30, 30));
        // 5:1:1 with a light one out: 5:1 between the other two.
        let rr = build(&[5, 1, 1]);
        let mut peers = TestPeers::all(3);
        peers.eligible[2] = false;
        let got = picks(&rr, &peers, 60);
        let count = |m| got.iter().filter(|&&i| i == m).count();
        assert_eq!((count(0), count(1)), (50, 10));
    }

    #[test]
    fn none_when_all_ineligible() {
        for weights in [
            vec![1, 1, 1],
            vec![5, 1, 1],
            random_weights(3000, 1, 1000, 3),
        ] {
            let rr = build(&weights);
            let mut peers = TestPeers::all(weights.len());
            peers.eligible.fill(false);
            assert_eq!(rr.select(&peers, None), None);
        }
    }

    #[test]
    fn finds_sole_eligible_among_10000() {
        let n = 10_000;
        for weights in [vec![1; n], random_weights(n, 1, 1000, 5), {
            let mut w = vec![1; n];
            w[0] = 2; // smooth plan (P × n ≤ 2^24)
            w
        }] {
            let rr = build(&weights);
            for only in [0, 4321, n - 1] {
                let peers = TestPeers::only(n, only);
                for _ in 0..3 {
                    assert_eq!(rr.select(&peers, None), Some(only));
                }
            }
        }
    }

    /// Release-mode build-time check:
    /// `cargo test --release --lib build_time_10000 -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn build_time_10000() {
        let weights = random_weights(10_000, 1, 1000, 1);
        let a = addrs(weights.len());
        let m = members(&a, &weights);
        let t0 = std::time::Instant::now();
        let rr = RoundRobin::build(&m);
        let dt = t0.elapsed();
        let peers = TestPeers::all(weights.len());
        let t1 = std::time::Instant::now();
        let mut s = 0usize;
        for _ in 0..1_000_000 {
            s = s.wrapping_add(rr.select(&peers, None).unwrap());
        }
        let pick = t1.elapsed() / 1_000_000;
        let plan = match rr.plan {
            Plan::Cyclic => "cyclic",
            Plan::Smooth(_) => "smooth",
            Plan::Rotation { .. } => "rotation",
        };
        println!("round_robin build(10k, w 1..=1000): {dt:?} plan={plan}, pick ≈ {pick:?} ({s})");

        // Worst case for the exact plan: P × n just under the 2^24-step budget.
        let weights = random_weights(180, 1, 1000, 1);
        let period: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let a = addrs(weights.len());
        let m = members(&a, &weights);
        let t0 = std::time::Instant::now();
        let rr = RoundRobin::build(&m);
        let dt = t0.elapsed();
        assert!(matches!(rr.plan, Plan::Smooth(_)));
        println!(
            "round_robin build(180, w 1..=1000, P×n = {}): {dt:?} plan=smooth",
            period * 180
        );
    }
}
