//! Keep-alive connections to one server.
//!
//! Each server owns its pool (it lives in the server's runtime, so it survives
//! snapshot swaps and goes away with the server). That gives drain and remove a
//! direct handle: [`Pool::clear`] closes a server's idle connections the moment it
//! stops taking traffic. The idle stack is a bounded lock-free queue, so checking a
//! connection in or out takes no lock on the request path.
//!
//! A connection is only ever in the pool while idle: it is checked back in when its
//! response body has been read to the end, never earlier, so a new request never
//! waits behind another one's body.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use hyper::client::conn::http1::SendRequest;

use super::body::UpstreamBody;

/// The sending half of an HTTP/1.1 connection to a server.
pub type Sender = SendRequest<UpstreamBody>;

struct Idle {
    sender: Sender,
    since: Instant,
}

/// Idle connections to one server.
pub struct Pool {
    /// Created on the first check-in, so a server that never takes traffic (a
    /// backup, a big table) costs no queue; never created when `keepalive = 0`.
    idle: OnceLock<ArrayQueue<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &self.idle_len())
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

impl Pool {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Pool {
        Pool {
            idle: OnceLock::new(),
            max_idle,
            idle_timeout,
        }
    }

    /// An idle connection that is still open and younger than the idle timeout.
    pub fn checkout(&self) -> Option<Sender> {
        let idle = self.idle.get()?;
        while let Some(conn) = idle.pop() {
            if conn.since.elapsed() < self.idle_timeout && !conn.sender.is_closed() {
                return Some(conn.sender);
            }
        }
        None
    }

    /// Returns a connection whose exchange has finished. Dropped (and so closed)
    /// when the pool is full or keep-alive is off.
    pub fn checkin(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        if self.max_idle == 0 {
            return;
        }
        let idle = self.idle.get_or_init(|| ArrayQueue::new(self.max_idle));
        let _ = idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// Closes every idle connection (server removed, drained or set down).
    pub fn clear(&self) {
        if let Some(idle) = self.idle.get() {
            while idle.pop().is_some() {}
        }
    }

    /// Closes idle connections that timed out or that the server closed.
    pub fn sweep(&self) {
        let Some(idle) = self.idle.get() else { return };
        for _ in 0..idle.len() {
            let Some(conn) = idle.pop() else { break };
            if conn.since.elapsed() < self.idle_timeout && !conn.sender.is_closed() {
                // Full only if requests checked connections in meanwhile: then
                // this one is surplus and may close.
                let _ = idle.push(conn);
            }
        }
    }

    pub fn idle_len(&self) -> usize {
        self.idle.get().map_or(0, ArrayQueue::len)
    }
}
