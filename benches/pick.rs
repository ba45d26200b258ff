//! Micro-benchmarks of the pick path and of a table swap (issue 6).
//!
//! `pick`: one request's choice of a server from an upstream's snapshot, including
//! the lease (the active count taken and given back), for each balancing method at
//! 2, 100 and 10,000 servers. `swap`: one admin change (`SetState`) published in a
//! table of 1,000 upstreams × 10 servers.
//!
//!     cargo bench --bench pick

mod common;

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use switchyard::upstream::{AdminState, Command, ServerRef, Tried};

const METHODS: [&str; 5] = ["round_robin", "least_conn", "random_two", "hash", "ip_hash"];
const SIZES: [usize; 3] = [2, 100, 10_000];

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for method in METHODS {
        for n in SIZES {
            let table = common::one_upstream(method, n);
            let upstream = table.load().upstreams["u"].clone();
            let tried = Tried::default();
            let now = switchyard::clock::now_ms();
            let hashed = matches!(method, "hash" | "ip_hash");
            let mut key: u64 = 0x9e37_79b9_7f4a_7c15;
            group.bench_with_input(BenchmarkId::new(method, n), &n, |b, _| {
                b.iter(|| {
                    // A different key per request for the hash methods (xorshift).
                    key ^= key << 13;
                    key ^= key >> 7;
                    key ^= key << 17;
                    let k = hashed.then_some(key);
                    black_box(upstream.snapshot().pick(black_box(k), &tried, now))
                })
            });
        }
    }
    group.finish();
}

fn swap(c: &mut Criterion) {
    let table = common::many_upstreams(1_000, 10);
    let target = common::name(500);
    let mut down = true;
    c.bench_function("swap/set_state_1000x10", |b| {
        b.iter(|| {
            let state = if down {
                AdminState::Down
            } else {
                AdminState::Up
            };
            down = !down;
            table
                .apply_blocking(&[Command::SetState {
                    upstream: target.clone(),
                    server: ServerRef::Id(3),
                    state,
                }])
                .expect("the change applies")
        })
    });
}

criterion_group!(benches, pick, swap);
criterion_main!(benches);
