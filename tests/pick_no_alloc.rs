//! The pick path allocates nothing: a counting global allocator (per thread, so the
//! test harness's other threads don't count) around `Snapshot::pick` and the
//! lease's drop, for every balancing method.

#[path = "../benches/common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use switchyard::upstream::Tried;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCS.with(Cell::get)
}

#[test]
fn picking_a_server_allocates_nothing_for_any_method() {
    for method in ["round_robin", "least_conn", "random_two", "hash", "ip_hash"] {
        for n in [2, 100, 10_000] {
            let table = common::one_upstream(method, n);
            let upstream = table.load().upstreams["u"].clone();
            let tried = Tried::default();
            let now = switchyard::clock::now_ms();
            // Warm up thread-locals (the random generator) before counting.
            drop(upstream.snapshot().pick(Some(1), &tried, now));
            let before = allocations();
            for key in 0..1_000u64 {
                let lease = upstream.snapshot().pick(
                    Some(key.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                    &tried,
                    now,
                );
                assert!(lease.is_some(), "{method} at {n} servers picked nobody");
                drop(lease);
            }
            let during = allocations() - before;
            assert_eq!(
                during, 0,
                "{method} at {n} servers: {during} allocations in 1,000 picks"
            );
        }
    }
}

/// Panic mode's picks allocate nothing either, in panic (most servers passively
/// `unavail`) and out of it, for every method.
#[test]
fn picking_in_panic_mode_allocates_nothing() {
    use switchyard::upstream::Table;
    for method in ["round_robin", "least_conn", "random_two", "hash", "ip_hash"] {
        for n in [4, 100, 10_000] {
            let mut toml = String::from(
                "[[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{ path_prefix = \"/\", upstream = \"u\" }]\n",
            );
            toml.push_str(&format!(
                "[upstream.u]\nbalance = \"{method}\"\npanic_threshold = 50\n"
            ));
            if method == "hash" {
                toml.push_str("hash_key = \"uri\"\n");
            }
            toml.push_str("servers = [\n");
            for i in 0..n {
                toml.push_str(&format!("  {{ addr = \"{}\" }},\n", common::addr(i)));
            }
            toml.push_str("]\n");
            let cfg = switchyard::config::parse(&toml, "panic.toml").expect("config is valid");
            let table = Table::from_config(&cfg).expect("table builds");
            let upstream = table.load().upstreams["u"].clone();
            let now = switchyard::clock::now_ms();
            // Three in four servers fail (passively `unavail`, max_fails = 1).
            for s in upstream
                .snapshot()
                .servers
                .iter()
                .filter(|s| !s.id.is_multiple_of(4))
            {
                switchyard::health::passive::record_failure(s, now);
            }
            let tried = Tried::default();
            // The first pick counts and enters panic (and logs); count after it.
            drop(upstream.snapshot().pick(Some(1), &tried, now));
            let status = upstream
                .snapshot()
                .panic_status(now)
                .expect("panic mode on");
            assert!(status.in_panic, "{method} at {n}: {status:?}");
            let before = allocations();
            let mut failed = 0;
            for key in 0..1_000u64 {
                let lease = upstream.snapshot().pick(
                    Some(key.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                    &tried,
                    // Later and later: some picks recount.
                    now + key,
                );
                let lease = lease.expect("in panic, someone is picked");
                failed += usize::from(!lease.server().id.is_multiple_of(4));
                drop(lease);
            }
            let during = allocations() - before;
            assert_eq!(
                during, 0,
                "{method} at {n} servers in panic: {during} allocations"
            );
            assert!(
                failed > 500,
                "{method} at {n}: {failed} of 1,000 to failed servers"
            );
        }
    }
}
