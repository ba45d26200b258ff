//! Keeping the workers of one listener level: each worker's accept loop
//! hands a client it accepted to the worker holding the fewest connections
//! when it holds more than that one.
//!
//! Why: every worker accepts on its own `SO_REUSEPORT` socket, and the kernel
//! spreads new connections over them by a hash of the addresses, blind to
//! load. 64 keep-alive clients arriving at once split 38/26 often enough, and
//! stay that way for their lives. On a machine whose cores are shared (with
//! the load generator, the servers), the busier worker's thread gets no more
//! CPU than the other, so its clients queue: p99 went from 11 ms to 900 ms
//! between runs that differed only in that split (BENCHMARKS.md). nginx avoids
//! it differently: its workers share one socket and whichever is idle accepts.
//!
//! The counts are each accept loop's own (its connection tasks and parked
//! connections), published when they change there; a worker handing a client
//! to another counts it there at once, so a burst spreads without waiting for
//! the other loop to run. Only the accept crosses threads: a connection is
//! served start to end by the worker that gets it.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::mpsc;

/// A client handed from one worker to another, outside any runtime.
pub type Handed = (std::net::TcpStream, SocketAddr);

/// The workers of one listener.
pub struct Spread {
    /// Connections each worker holds, as last published.
    open: Vec<AtomicUsize>,
    /// Where each worker receives clients handed to it.
    inboxes: Vec<mpsc::UnboundedSender<Handed>>,
}

/// One worker's seat in a [`Spread`]: its place, and its inbox.
pub struct Seat {
    place: Place,
    inbox: mpsc::UnboundedReceiver<Handed>,
}

/// A worker's place in a [`Spread`], without its inbox.
pub struct Place {
    index: usize,
    spread: std::sync::Arc<Spread>,
}

impl Spread {
    /// A spread over `workers` workers, and each one's seat in it.
    pub fn seats(workers: usize) -> Vec<Seat> {
        let (inboxes, receivers): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let spread = std::sync::Arc::new(Spread {
            open: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            inboxes,
        });
        receivers
            .into_iter()
            .enumerate()
            .map(|(index, inbox)| Seat {
                place: Place {
                    index,
                    spread: std::sync::Arc::clone(&spread),
                },
                inbox,
            })
            .collect()
    }
}

impl Seat {
    /// The place and the inbox apart: the accept loop polls the one and
    /// reads the other.
    pub fn split(self) -> (Place, mpsc::UnboundedReceiver<Handed>) {
        (self.place, self.inbox)
    }
}

impl Place {
    /// Publishes how many connections this worker holds.
    pub fn publish(&self, open: usize) {
        self.spread.open[self.index].store(open, Relaxed);
    }

    /// Where a client this worker just accepted goes, holding `open`
    /// connections itself: `None` to keep it here. The worker chosen counts
    /// it at once.
    pub fn elsewhere(&self, open: usize) -> Option<usize> {
        let counts = self.spread.open.iter().map(|c| c.load(Relaxed));
        let target = least_loaded(self.index, open, counts)?;
        self.spread.open[target].fetch_add(1, Relaxed);
        Some(target)
    }

    /// Sends a client to worker `target`; gives it back if that worker is gone.
    pub fn hand(&self, target: usize, client: Handed) -> Result<(), Handed> {
        self.spread.inboxes[target]
            .send(client)
            .map_err(|mpsc::error::SendError(c)| c)
    }
}

/// The other worker with the fewest connections, if `me`, holding `mine`,
/// holds more than it: keeping the new client would put the two more than
/// one apart.
fn least_loaded(me: usize, mine: usize, counts: impl Iterator<Item = usize>) -> Option<usize> {
    let (target, least) = counts
        .enumerate()
        .filter(|(i, _)| *i != me)
        .min_by_key(|(_, n)| *n)?;
    (mine > least).then_some(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_goes_to_the_least_loaded_worker_when_this_one_holds_more() {
        assert_eq!(least_loaded(0, 5, [5, 5].into_iter()), None);
        assert_eq!(least_loaded(0, 5, [5, 4].into_iter()), Some(1));
        assert_eq!(least_loaded(1, 9, [7, 9, 2, 4].into_iter()), Some(2));
        assert_eq!(least_loaded(0, 3, [3].into_iter()), None);
    }

    #[test]
    fn a_burst_on_one_worker_ends_level() {
        // 64 clients all accepted by worker 0 of two: it keeps a client when
        // level and hands it over otherwise; worker 1 publishes nothing (its
        // loop has not run) and is counted by the hand-offs alone.
        let mut seats = Spread::seats(2).into_iter();
        let (zero, _inbox) = seats.next().unwrap().split();
        let (one, _) = seats.next().unwrap().split();
        let mut kept = 0;
        for _ in 0..64 {
            if zero.elsewhere(kept).is_none() {
                kept += 1;
                zero.publish(kept);
            }
        }
        let handed = one.spread.open[1].load(Relaxed);
        assert_eq!(kept + handed, 64);
        assert!(kept.abs_diff(handed) <= 1, "kept {kept}, handed {handed}");
    }
}
