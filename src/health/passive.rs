//! Passive failure accounting with nginx's semantics.
//!
//! `max_fails` failed attempts within `fail_timeout` make a server `unavail` for
//! `fail_timeout`; a success resets the count. When the `unavail` period ends the
//! server is tried again, and — as in nginx — a failure of that first attempt makes
//! it `unavail` again at once instead of waiting for `max_fails` new failures.
//! `max_fails = 0` turns the accounting off.
//!
//! Everything is in the server's atomics: failures are recorded from many threads
//! without a lock, and the picker reads one deadline. Races between two failures
//! recorded at the same instant can at worst count one failure less, which the next
//! failure makes up for.

use std::sync::atomic::Ordering::Relaxed;

use crate::upstream::Server;

/// Outcome of recording a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Counted; the server stays available.
    Counted,
    /// This failure made the server `unavail`.
    BecameUnavail,
}

impl FailureOutcome {
    /// As the log shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureOutcome::Counted => "counted",
            FailureOutcome::BecameUnavail => "became_unavail",
        }
    }
}

/// Records a failed attempt on `server` at `now_ms`.
pub fn record_failure(server: &Server, now_ms: u64) -> FailureOutcome {
    let stats = &server.runtime.stats;
    stats.fails_total.fetch_add(1, Relaxed);
    if server.max_fails == 0 {
        return FailureOutcome::Counted;
    }
    let window = server.fail_timeout.as_millis() as u64;
    // The server came back from an unavail period and has had no success since:
    // like nginx, one failed attempt sends it back (its count stayed at the
    // threshold when it was marked).
    let probing = stats.pick.unavail_until_ms.load(Relaxed) != 0
        && stats.window_fails.load(Relaxed) >= server.max_fails;
    let fails = if probing {
        server.max_fails
    } else if now_ms.saturating_sub(stats.window_start_ms.load(Relaxed)) > window {
        stats.window_start_ms.store(now_ms, Relaxed);
        stats.window_fails.store(1, Relaxed);
        1
    } else {
        stats.window_fails.fetch_add(1, Relaxed) + 1
    };
    if fails >= server.max_fails {
        stats.pick.unavail_until_ms.store(now_ms + window, Relaxed);
        stats.unavail_total.fetch_add(1, Relaxed);
        stats.window_fails.store(server.max_fails, Relaxed);
        stats.window_start_ms.store(now_ms, Relaxed);
        return FailureOutcome::BecameUnavail;
    }
    FailureOutcome::Counted
}

/// Clears passive `unavail` and the failure count (an active check passed).
pub fn clear(stats: &crate::upstream::ServerStats) {
    stats.window_fails.store(0, Relaxed);
    if stats.pick.unavail_until_ms.load(Relaxed) != 0 {
        stats.pick.unavail_until_ms.store(0, Relaxed);
    }
}

/// Records a successful attempt: the failure count starts again from zero.
pub fn record_success(server: &Server) {
    let stats = &server.runtime.stats;
    if stats.window_fails.load(Relaxed) != 0 {
        stats.window_fails.store(0, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{AdminState, ServerRuntime};
    use std::sync::Arc;
    use std::time::Duration;

    fn server(max_fails: u32, fail_timeout_ms: u64) -> Server {
        Server {
            id: 0,
            addr: "127.0.0.1:1".into(),
            sockaddr: "127.0.0.1:1".parse().unwrap(),
            weight: 1,
            max_conns: 0,
            max_fails,
            fail_timeout: Duration::from_millis(fail_timeout_ms),
            slow_start: Duration::ZERO,
            backup: false,
            state: AdminState::Up,
            runtime: Arc::new(ServerRuntime::new(crate::config::KeepaliveConfig::default())),
            origin: Default::default(),
        }
    }

    #[test]
    fn max_fails_within_window_makes_server_unavail_for_fail_timeout() {
        let s = server(3, 10_000);
        assert_eq!(record_failure(&s, 1_000), FailureOutcome::Counted);
        assert_eq!(record_failure(&s, 2_000), FailureOutcome::Counted);
        assert!(s.available(2_000));
        assert_eq!(record_failure(&s, 3_000), FailureOutcome::BecameUnavail);
        assert!(!s.available(3_000));
        assert!(!s.available(12_999));
        assert!(s.available(13_001));
    }

    #[test]
    fn failures_spread_wider_than_the_window_do_not_add_up() {
        let s = server(2, 1_000);
        record_failure(&s, 1_000);
        // 1.5 s later the window has passed: this one starts a new count.
        assert_eq!(record_failure(&s, 2_500), FailureOutcome::Counted);
        assert!(s.available(2_500));
        assert_eq!(record_failure(&s, 3_000), FailureOutcome::BecameUnavail);
    }

    #[test]
    fn a_success_resets_the_count() {
        let s = server(2, 10_000);
        record_failure(&s, 1_000);
        record_success(&s);
        assert_eq!(record_failure(&s, 1_100), FailureOutcome::Counted);
        assert!(s.available(1_100));
    }

    #[test]
    fn a_failed_probe_after_the_unavail_period_re_marks_at_once() {
        let s = server(3, 1_000);
        for t in [100, 200, 300] {
            record_failure(&s, t);
        }
        assert!(!s.available(500));
        assert!(s.available(1_400));
        assert_eq!(record_failure(&s, 1_400), FailureOutcome::BecameUnavail);
        assert!(!s.available(1_401));
        // A success after the next period clears it for good.
        record_success(&s);
        assert_eq!(record_failure(&s, 2_500), FailureOutcome::Counted);
    }

    #[test]
    fn max_fails_zero_never_marks_unavail() {
        let s = server(0, 1_000);
        for t in 0..100 {
            assert_eq!(record_failure(&s, t), FailureOutcome::Counted);
        }
        assert!(s.available(100));
        assert_eq!(s.runtime.stats.fails_total.load(Relaxed), 100);
    }
}
