//! Panic mode through `Snapshot::pick`: who is picked in panic and out of it,
//! the threshold's boundary, `down`/`drain` and `checking` servers, backups.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config;
use crate::upstream::{AdminState, Command, Health, ServerRef, Table, Tried, Upstream};

/// Upstream `u` of `n` servers on 127.0.0.1 ports 1.. (`backups` more after
/// them), with `extra` lines in its table.
fn table(n: usize, backups: usize, extra: &str) -> Table {
    let mut servers = String::new();
    for i in 0..n + backups {
        let backup = if i >= n { ", backup = true" } else { "" };
        servers.push_str(&format!(
            "  {{ addr = \"127.0.0.1:{}\"{backup} }},\n",
            i + 1
        ));
    }
    let toml = format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ path_prefix = \"/\", upstream = \"u\" }}]\n\
         [upstream.u]\n{extra}\nservers = [\n{servers}]\n"
    );
    let cfg = config::parse(&toml, "panic.toml").expect("test config is valid");
    Table::from_config(&cfg).expect("test table builds")
}

fn upstream(t: &Table) -> Arc<Upstream> {
    t.upstream("u").expect("upstream u")
}

fn set_health(t: &Table, ids: &[u32], h: Health) {
    let up = upstream(t);
    for &id in ids {
        let s = up.snapshot().server(id).expect("server");
        s.runtime.stats.set_health(h);
    }
}

fn set_state(t: &Table, id: u32, state: AdminState) {
    t.apply_blocking(&[Command::SetState {
        upstream: "u".into(),
        server: ServerRef::Id(id),
        state,
    }])
    .expect("state change applies");
}

/// Picks `k` times (each lease ended before the next pick) at `now` (distinct
/// calls a recount apart, so each sees the current health), by server id.
fn picks(t: &Table, k: usize, now: u64) -> BTreeMap<u32, usize> {
    let up = upstream(t);
    let mut count = BTreeMap::new();
    for _ in 0..k {
        if let Some(lease) = up.snapshot().pick(None, &Tried::default(), now) {
            *count.entry(lease.server().id).or_insert(0) += 1;
        }
    }
    count
}

/// A time a recount past the last one asked for, so that every call sees the
/// health just set (tests give `pick` the time; nothing waits).
fn now() -> u64 {
    static NOW: AtomicU64 = AtomicU64::new(1_000_000);
    NOW.fetch_add(2 * crate::upstream::PANIC_RECOUNT_MS, Ordering::Relaxed)
}

#[test]
fn without_a_threshold_the_healthy_one_takes_everything() {
    let t = table(4, 0, "");
    set_health(&t, &[1, 2, 3], Health::Unhealthy);
    assert_eq!(picks(&t, 40, now()), BTreeMap::from([(0, 40)]));
    assert_eq!(upstream(&t).snapshot().panic_status(now()), None);
}

#[test]
fn in_panic_every_method_spreads_over_all_primaries() {
    for method in ["round_robin", "least_conn", "random_two"] {
        let t = table(
            4,
            0,
            &format!("balance = \"{method}\"\npanic_threshold = 50"),
        );
        set_health(&t, &[1, 2, 3], Health::Unhealthy);
        let got = picks(&t, 400, now());
        assert_eq!(got.len(), 4, "{method}: {got:?}");
        assert!(got.values().all(|&c| c >= 50), "{method}: {got:?}");
        if method != "random_two" {
            assert!(got.values().all(|&c| c == 100), "{method}: {got:?}");
        }
        let status = upstream(&t).snapshot().panic_status(now()).expect("status");
        assert!(status.in_panic);
        assert_eq!((status.healthy, status.judged), (1, 4));
        assert_eq!(upstream(&t).panic_entries(), 1, "{method}");
    }
}

#[test]
fn hashing_in_panic_keeps_keys_on_their_servers() {
    let t = table(
        4,
        0,
        "balance = \"hash\"\nhash_key = \"uri\"\npanic_threshold = 50",
    );
    set_health(&t, &[1, 2, 3], Health::Unhealthy);
    let up = upstream(&t);
    let pick = |key: u64| {
        up.snapshot()
            .pick(Some(key), &Tried::default(), now())
            .map(|l| l.server().id)
    };
    let servers: std::collections::BTreeSet<_> = (0..200u64)
        .map(|k| pick(crate::upstream::balance::hash_key(&k.to_le_bytes())))
        .collect();
    assert_eq!(servers.len(), 4, "{servers:?}");
    let key = crate::upstream::balance::hash_key(b"same");
    assert_eq!(pick(key), pick(key));
}

#[test]
fn at_the_threshold_there_is_no_panic() {
    let t = table(4, 0, "panic_threshold = 50");
    set_health(&t, &[2, 3], Health::Unhealthy);
    assert_eq!(picks(&t, 40, now()), BTreeMap::from([(0, 20), (1, 20)]));
    assert_eq!(upstream(&t).panic_entries(), 0);
    // One more down by health: 1 of 4 is below 50%.
    set_health(&t, &[1], Health::Unhealthy);
    assert_eq!(picks(&t, 40, now()).len(), 4);
    assert_eq!(upstream(&t).panic_entries(), 1);
    // Healthy again: out of panic, and only the healthy take traffic.
    set_health(&t, &[1, 2], Health::Healthy);
    assert_eq!(picks(&t, 30, now()).len(), 3);
    assert!(
        !upstream(&t)
            .snapshot()
            .panic_status(now())
            .expect("on")
            .in_panic
    );
}

#[test]
fn down_and_draining_servers_get_nothing_in_panic_and_do_not_count() {
    let t = table(6, 0, "panic_threshold = 50");
    set_state(&t, 4, AdminState::Down);
    set_state(&t, 5, AdminState::Drain);
    // Of the four `up`: one healthy, so panic. Were the healthy down and
    // draining servers counted, 3 of 6 would be no panic.
    set_health(&t, &[1, 2, 3], Health::Unhealthy);
    let got = picks(&t, 400, now());
    assert_eq!(
        got,
        BTreeMap::from([(0, 100), (1, 100), (2, 100), (3, 100)])
    );
    // 2 of the 4 `up`: no panic.
    set_health(&t, &[1], Health::Healthy);
    assert_eq!(picks(&t, 40, now()), BTreeMap::from([(0, 20), (1, 20)]));
}

#[test]
fn checking_servers_are_not_judged() {
    let t = table(4, 0, "panic_threshold = 50");
    // All without a verdict: nothing to judge, no panic, no pick (as without).
    set_health(&t, &[0, 1, 2, 3], Health::Checking);
    assert!(picks(&t, 10, now()).is_empty());
    assert_eq!(upstream(&t).panic_entries(), 0);
    // One healthy of one judged: no panic, though three are still checking.
    set_health(&t, &[0], Health::Healthy);
    assert_eq!(picks(&t, 10, now()), BTreeMap::from([(0, 10)]));
    // One unhealthy of one judged: panic, and the checking ones serve too.
    set_health(&t, &[0], Health::Unhealthy);
    assert_eq!(picks(&t, 40, now()).len(), 4);
    assert_eq!(upstream(&t).panic_entries(), 1);
}

#[test]
fn passive_unavail_counts_as_unhealthy_and_is_ignored_in_panic() {
    let t = table(2, 0, "panic_threshold = 100");
    let at = now();
    let up = upstream(&t);
    let s1 = up.snapshot().server(1).expect("server 1");
    s1.runtime
        .stats
        .pick
        .unavail_until_ms
        .store(at + 1_000_000_000, Ordering::Relaxed);
    assert_eq!(picks(&t, 10, at), BTreeMap::from([(0, 5), (1, 5)]));
    assert_eq!(up.panic_entries(), 1);
}

#[test]
fn a_healthy_backup_takes_the_unhealthy_primaries_share_instead_of_panic() {
    fastrand::seed(3);
    let t = table(4, 1, "panic_threshold = 50");
    set_health(&t, &[1, 2, 3], Health::Unhealthy);
    let got = picks(&t, 4_000, now());
    // The healthy primary keeps its own quarter; the backup (id 4) the rest.
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), [0, 4]);
    assert!((800..1_200).contains(&got[&0]), "{got:?}");
    assert_eq!(upstream(&t).panic_entries(), 0);
    // The backup fails too: panic over the primaries.
    set_health(&t, &[4], Health::Unhealthy);
    assert_eq!(picks(&t, 40, now()).len(), 4);
    assert_eq!(upstream(&t).panic_entries(), 1);
}

#[test]
fn a_table_change_is_no_new_entry_and_a_reload_turns_it_off() {
    let t = table(4, 0, "panic_threshold = 50");
    set_health(&t, &[1, 2, 3], Health::Unhealthy);
    assert_eq!(picks(&t, 4, now()).len(), 4);
    t.apply_blocking(&[Command::SetWeight {
        upstream: "u".into(),
        server: ServerRef::Id(0),
        weight: 2,
    }])
    .expect("weight change applies");
    assert_eq!(picks(&t, 5, now()).len(), 4);
    assert_eq!(upstream(&t).panic_entries(), 1);
    let mut settings = upstream(&t).settings.clone();
    settings.panic_threshold = None;
    t.apply_blocking(&[Command::SetSettings {
        upstream: "u".into(),
        settings,
    }])
    .expect("settings apply");
    assert_eq!(picks(&t, 10, now()), BTreeMap::from([(0, 10)]));
    assert_eq!(upstream(&t).snapshot().panic_status(now()), None);
}

#[test]
fn a_health_change_judges_panic_again_with_no_request() {
    let t = table(4, 0, "panic_threshold = 50");
    set_health(&t, &[0, 1, 2, 3], Health::Healthy);
    // A count just now: the next is not due for a recount period.
    let counted = crate::clock::now_ms();
    let status = upstream(&t).snapshot().panic_status(counted);
    assert_eq!(status.map(|s| s.in_panic), Some(false));
    // Three fail their checks; the checker reports each change, and nothing
    // picks or reads the status.
    for id in [1, 2, 3] {
        let s = Arc::clone(upstream(&t).snapshot().server(id).expect("server"));
        s.runtime.stats.set_health(Health::Unhealthy);
        t.report_health("u", &s, Health::Healthy, Health::Unhealthy);
    }
    assert_eq!(upstream(&t).panic_entries(), 1, "in panic, counted once");
}
