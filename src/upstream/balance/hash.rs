//! `hash` balancing (stub).

use super::{Member, Peers, Select};

#[derive(Debug)]
pub struct HashRing {
    n: usize,
}

impl Select for HashRing {
    fn build(members: &[Member<'_>]) -> Self {
        HashRing { n: members.len() }
    }

    fn select(&self, peers: &dyn Peers, _key: Option<u64>) -> Option<usize> {
        (0..self.n).find(|&i| peers.eligible(i))
    }
}
