//! `hash` and `ip_hash` balancing: a consistent-hash ring (ketama-style).
//!
//! Every member puts `160 × weight` points on a 64-bit ring (as nginx's
//! `hash … consistent` does). Point `j` of a member is `xxh3_64_with_seed(addr, j)`
//! (its high bits; the low bits of a stored point name its owner):
//! it depends only on that member's own identity, so adding or removing *other*
//! members never moves it, and a request key keeps its server unless its server is
//! the one that came or went. A request key (already hashed by
//! [`super::hash_key`]) goes to the owner of the first point at or after it,
//! clockwise; if that owner is not eligible the pick walks on clockwise — which
//! sends the key exactly where it would go if that member were removed — for a
//! bounded number of points, then falls back to an O(n) scan.
//!
//! The ring is capped at about 2^20 points (≈ 12 MiB): above that, every member's
//! point count is halved (rounding, minimum 1) until it fits. Halving by a power of
//! two rather than scaling to an exact budget means the factor only changes when the
//! tier crosses a power-of-two size, so ordinary membership changes still leave the
//! other members' points untouched; when it does change, members keep their first
//! points (same seeds) and lose only the rest, so few keys move.
//!
//! The ring is built once per snapshot and is immutable: a keyed pick is a binary
//! search plus a short walk, no lock, no allocation. Without a key (`None`) the pick
//! walks the ring itself from an atomic cursor, which visits members in a
//! well-mixed, weight-proportional rotation.

use std::sync::atomic::{AtomicUsize, Ordering};

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::method::{Member, Peers, Select, scan_from, weight_of};

/// Ring points per unit of weight (nginx's ketama uses 160).
const POINTS_PER_WEIGHT: u64 = 160;
/// Soft cap on ring points (exceeded only when there are more members than this).
const MAX_POINTS: u64 = 1 << 20;
/// Ring points walked past ineligible owners before scanning all members.
const WALK: usize = 64;

#[derive(Debug)]
pub struct HashRing {
    n: usize,
    /// Sorted ring points, each its position in the high bits and its owner (the
    /// member's index) in the low `owner_bits`: the point a key lands on carries
    /// its owner in the same cache line, one miss less per pick at 10,000
    /// servers. Positions keep `64 - owner_bits` bits (50 at 10,000 members),
    /// far more than the ring's million points need.
    points: Box<[u64]>,
    owner_bits: u32,
    /// `index[b]` is the first ring position whose point's top `bits` bits are
    /// `>= b` (one entry per bucket, plus the end): a key's search starts within
    /// its bucket of about 8 points instead of over the whole ring, which at
    /// 10,000 servers is 8 MB of points and one cache miss per bisection step.
    /// Empty when the ring is small enough to search whole (`bits == 0`).
    index: Box<[u32]>,
    bits: u32,
    /// Rotation for keyless picks.
    cursor: AtomicUsize,
}

/// About this many ring points per bucket of the index.
const POINTS_PER_BUCKET: usize = 8;
/// At most 2^16 buckets (256 KiB of index).
const MAX_BUCKET_BITS: u32 = 16;

/// The bucket index over sorted `points` (see [`HashRing::index`]).
fn bucket_index(points: &[u64]) -> (Box<[u32]>, u32) {
    let buckets_wanted = points.len() / POINTS_PER_BUCKET;
    if buckets_wanted < 2 {
        return (Box::new([]), 0);
    }
    let bits = (usize::BITS - 1 - buckets_wanted.leading_zeros()).min(MAX_BUCKET_BITS);
    let shift = 64 - bits;
    let buckets = 1usize << bits;
    let mut index = Vec::with_capacity(buckets + 1);
    let mut j = 0;
    for b in 0..=buckets as u64 {
        while j < points.len() && (points[j] >> shift) < b {
            j += 1;
        }
        index.push(j as u32);
    }
    (index.into_boxed_slice(), bits)
}

/// Points for a member of weight `w` after halving `shift` times (rounded, ≥ 1).
#[inline]
fn points_for(w: u32, shift: u32) -> u64 {
    let full = POINTS_PER_WEIGHT * u64::from(w);
    ((full + ((1u64 << shift) >> 1)) >> shift).max(1)
}

impl HashRing {
    /// The member owning ring point `j`.
    #[inline]
    fn owner(&self, j: usize) -> usize {
        (self.points[j] & ((1u64 << self.owner_bits) - 1)) as usize
    }

    /// Index into the ring where `key` lands (first point at or after the key's
    /// position, wrapping).
    #[inline]
    fn slot(&self, key: u64) -> usize {
        let key = key & !((1u64 << self.owner_bits) - 1);
        let p = if self.bits == 0 {
            self.points.partition_point(|&x| x < key)
        } else {
            // Every point before `lo` is below the key's bucket, every point from
            // `hi` on above it: the first point >= key lies in `lo..=hi`.
            let b = (key >> (64 - self.bits)) as usize;
            let (lo, hi) = (self.index[b] as usize, self.index[b + 1] as usize);
            lo + self.points[lo..hi].partition_point(|&x| x < key)
        };
        if p == self.points.len() { 0 } else { p }
    }
}

impl Select for HashRing {
    fn build(members: &[Member<'_>]) -> Self {
        let n = members.len();
        let count = |shift: u32| -> u64 {
            members
                .iter()
                .map(|m| points_for(weight_of(m), shift))
                .sum()
        };
        let mut shift = 0;
        let mut total = count(shift);
        // Stop once everyone is down to one point (`total == n`): nothing left to cut.
        while total > MAX_POINTS && total > n as u64 && shift < 32 {
            shift += 1;
            total = count(shift);
        }

        // Enough low bits for any member index (at least one).
        let owner_bits = (usize::BITS - n.saturating_sub(1).leading_zeros()).max(1);
        let low = (1u64 << owner_bits) - 1;
        let mut ring: Vec<(u64, u32)> = Vec::with_capacity(total as usize);
        for (i, m) in members.iter().enumerate() {
            for j in 0..points_for(weight_of(m), shift) {
                ring.push((xxh3_64_with_seed(m.key.as_bytes(), j) & !low, i as u32));
            }
        }
        // Ties (position collisions, or duplicate addrs) break by addr, then by
        // index, so the order never depends on where a member sits in the slice.
        ring.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| members[a.1 as usize].key.cmp(members[b.1 as usize].key))
                .then_with(|| a.1.cmp(&b.1))
        });
        let points: Vec<u64> = ring.iter().map(|&(p, i)| p | u64::from(i)).collect();
        let (index, bits) = bucket_index(&points);
        HashRing {
            n,
            points: points.into_boxed_slice(),
            owner_bits,
            index,
            bits,
            cursor: AtomicUsize::new(0),
        }
    }

    fn select<P: Peers>(&self, peers: &P, key: Option<u64>) -> Option<usize> {
        let len = self.points.len();
        if len == 0 {
            return None;
        }
        let start = match key {
            Some(k) => self.slot(k),
            None => self.cursor.fetch_add(1, Ordering::Relaxed) % len,
        };
        for step in 0..WALK.min(len) {
            let mut j = start + step;
            if j >= len {
                j -= len;
            }
            let i = self.owner(j);
            if peers.eligible(i) {
                return Some(i);
            }
        }
        // Deterministic per key: scan on from the key's own server.
        scan_from(peers, self.n, self.owner(start) + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::balance::hash_key;
    use crate::upstream::balance::test_util::{TestPeers, addrs, members, random_weights};

    fn keys(k: u64) -> impl Iterator<Item = u64> {
        (0..k).map(|i| hash_key(format!("client-{i}").as_bytes()))
    }

    #[test]
    fn bucket_index_finds_the_same_slot_as_a_search_of_the_whole_ring() {
        for n in [1, 2, 7, 100, 3_000] {
            let a = addrs(n);
            let ring = HashRing::build(&members(&a, &random_weights(n, 1, 20, 7)));
            // A key lands by its position (its high bits, as the points' are).
            let position = |k: u64| k & !((1u64 << ring.owner_bits) - 1);
            let whole = |k: u64| match ring.points.partition_point(|&x| x < position(k)) {
                p if p == ring.points.len() => 0,
                p => p,
            };
            let edges = ring
                .points
                .iter()
                .flat_map(|&p| [p.wrapping_sub(1), p, p.wrapping_add(1)]);
            for k in keys(2_000).chain(edges).chain([0, u64::MAX]) {
                assert_eq!(ring.slot(k), whole(k), "n={n} key={k:#x}");
            }
        }
    }

    #[test]
    fn removal_moves_only_the_removed_servers_keys() {
        let a = addrs(10);
        let all = members(&a, &[1; 10]);
        let full = HashRing::build(&all);
        let removed = 3;
        let rest: Vec<_> = (0..10).filter(|&i| i != removed).map(|i| all[i]).collect();
        let less = HashRing::build(&rest);
        let peers10 = TestPeers::all(10);
        let peers9 = TestPeers::all(9);

        let (mut changed, mut strays, total) = (0u64, 0u64, 100_000u64);
        for k in keys(total) {
            let before = all[full.select(&peers10, Some(k)).unwrap()].key;
            let after = rest[less.select(&peers9, Some(k)).unwrap()].key;
            if before != after {
                changed += 1;
                if before != a[removed] {
                    strays += 1;
                }
            }
        }
        let share = changed as f64 / total as f64;
        assert!(changed > 0 && share < 0.15, "changed share {share}");
        // No scaling at this size, so the other servers' points are identical.
        assert_eq!(strays, 0);
    }

    #[test]
    fn ineligible_member_is_like_removal() {
        let a = addrs(10);
        let all = members(&a, &[2; 10]);
        let full = HashRing::build(&all);
        let rest: Vec<_> = all.iter().copied().filter(|m| m.key != a[4]).collect();
        let less = HashRing::build(&rest);
        let mut peers = TestPeers::all(10);
        peers.eligible[4] = false;
        let peers9 = TestPeers::all(9);
        for k in keys(20_000) {
            let got = all[full.select(&peers, Some(k)).unwrap()].key;
            let want = rest[less.select(&peers9, Some(k)).unwrap()].key;
            assert_eq!(got, want);
        }
    }

    #[test]
    fn same_key_same_server_across_builds() {
        let a = addrs(25);
        let w = random_weights(25, 1, 10, 9);
        let r1 = HashRing::build(&members(&a, &w));
        let r2 = HashRing::build(&members(&a, &w));
        // A different slice order must not matter either.
        let mut rev = members(&a, &w);
        rev.reverse();
        let r3 = HashRing::build(&rev);
        let p = TestPeers::all(25);
        for k in keys(10_000) {
            let x = r1.select(&p, Some(k)).unwrap();
            assert_eq!(r2.select(&p, Some(k)), Some(x));
            assert_eq!(rev[r3.select(&p, Some(k)).unwrap()].key, a[x]);
        }
    }

    #[test]
    fn weighted_shares() {
        let a = addrs(3);
        let ring = HashRing::build(&members(&a, &[1, 2, 3]));
        let p = TestPeers::all(3);
        let total = 120_000u64;
        let mut count = [0u64; 3];
        for k in keys(total) {
            count[ring.select(&p, Some(k)).unwrap()] += 1;
        }
        for (i, want) in [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0].into_iter().enumerate() {
            let got = count[i] as f64 / total as f64;
            assert!((got - want).abs() < 0.04, "member {i}: {got} vs {want}");
        }
    }

    #[test]
    fn keyless_rotates_among_eligible() {
        let a = addrs(4);
        let ring = HashRing::build(&members(&a, &[1; 4]));
        let mut p = TestPeers::all(4);
        p.eligible[2] = false;
        let mut count = [0u64; 4];
        for _ in 0..ring.points.len() {
            count[ring.select(&p, None).unwrap()] += 1;
        }
        assert_eq!(count[2], 0);
        assert!(count.iter().enumerate().all(|(i, &c)| i == 2 || c > 100));
    }

    #[test]
    fn none_when_all_ineligible() {
        let a = addrs(5);
        let ring = HashRing::build(&members(&a, &[1, 2, 3, 4, 5]));
        let mut p = TestPeers::all(5);
        p.eligible.fill(false);
        assert_eq!(ring.select(&p, Some(42)), None);
        assert_eq!(ring.select(&p, None), None);
    }

    #[test]
    fn finds_sole_eligible_among_10000() {
        let n = 10_000;
        let a = addrs(n);
        let w = random_weights(n, 1, 1000, 2);
        let ring = HashRing::build(&members(&a, &w));
        assert!(ring.points.len() as u64 <= MAX_POINTS);
        for only in [0, 5555, n - 1] {
            let p = TestPeers::only(n, only);
            for k in keys(5) {
                assert_eq!(ring.select(&p, Some(k)), Some(only));
            }
            assert_eq!(ring.select(&p, None), Some(only));
        }
    }

    #[test]
    fn scaling_keeps_most_keys_when_members_change() {
        // 10,000 members of weight 1000 need scaling; removing one changes no factor.
        let n = 10_000;
        let a = addrs(n);
        let all = members(&a, &vec![1000; n]);
        let full = HashRing::build(&all);
        let rest = &all[1..];
        let less = HashRing::build(rest);
        let (p, p1) = (TestPeers::all(n), TestPeers::all(n - 1));
        let mut strays = 0;
        for k in keys(20_000) {
            let before = all[full.select(&p, Some(k)).unwrap()].key;
            let after = rest[less.select(&p1, Some(k)).unwrap()].key;
            if before != after && before != a[0] {
                strays += 1;
            }
        }
        assert_eq!(strays, 0);
    }

    /// `cargo test --release --lib hash::tests::build_time -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn build_time_10000() {
        let n = 10_000;
        let a = addrs(n);
        let m = members(&a, &random_weights(n, 1, 1000, 1));
        let t0 = std::time::Instant::now();
        let ring = HashRing::build(&m);
        println!(
            "hash build(10k, w 1..=1000): {:?}, {} points",
            t0.elapsed(),
            ring.points.len()
        );
    }
}
