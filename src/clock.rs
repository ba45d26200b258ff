//! A coarse monotonic clock in milliseconds, cheap enough for the request path.
//!
//! Failure windows and `unavail` deadlines are kept in atomics as milliseconds since
//! a process-wide origin, so they can be compared without locks. Logic that depends
//! on time takes `now_ms` as an argument, which keeps it testable without waiting.

use std::sync::OnceLock;
use std::time::Instant;

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the first call in this process (never 0, so 0 can mean "never").
pub fn now_ms() -> u64 {
    let origin = ORIGIN.get_or_init(Instant::now);
    origin.elapsed().as_millis() as u64 + 1
}
