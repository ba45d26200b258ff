//! `round_robin` balancing (stub).

use super::{Member, Peers, Select};

#[derive(Debug)]
pub struct RoundRobin {
    n: usize,
}

impl Select for RoundRobin {
    fn build(members: &[Member<'_>]) -> Self {
        RoundRobin { n: members.len() }
    }

    fn select(&self, peers: &dyn Peers, _key: Option<u64>) -> Option<usize> {
        (0..self.n).find(|&i| peers.eligible(i))
    }
}
