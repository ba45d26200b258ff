//! `least_conn` balancing (stub).

use super::{Member, Peers, Select};

#[derive(Debug)]
pub struct LeastConn {
    n: usize,
}

impl Select for LeastConn {
    fn build(members: &[Member<'_>]) -> Self {
        LeastConn { n: members.len() }
    }

    fn select(&self, peers: &dyn Peers, _key: Option<u64>) -> Option<usize> {
        (0..self.n).find(|&i| peers.eligible(i))
    }
}
