//! `random_two` balancing (stub).

use super::{Member, Peers, Select};

#[derive(Debug)]
pub struct RandomTwo {
    n: usize,
}

impl Select for RandomTwo {
    fn build(members: &[Member<'_>]) -> Self {
        RandomTwo { n: members.len() }
    }

    fn select(&self, peers: &dyn Peers, _key: Option<u64>) -> Option<usize> {
        (0..self.n).find(|&i| peers.eligible(i))
    }
}
