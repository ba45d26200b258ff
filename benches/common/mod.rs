//! Tables for the micro-benchmarks and the allocation check, built from TOML the
//! way a configuration file would be.

#![allow(dead_code)] // each bench/test uses part of it

use std::fmt::Write as _;

use switchyard::config;
use switchyard::upstream::Table;

/// `n` distinct IP-literal addresses (no DNS at start-up).
pub fn addr(i: usize) -> String {
    format!("10.{}.{}.{}:80", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

/// One upstream `u` of `n` servers with the method `balance` (a `hash` keys by URI).
pub fn one_upstream(balance: &str, n: usize) -> Table {
    let mut toml = String::from(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{ path_prefix = \"/\", upstream = \"u\" }]\n",
    );
    upstream_toml(&mut toml, "u", balance, n, 0);
    table(&toml)
}

/// `upstreams` upstreams `u0000`.. of `servers` servers each, round robin.
pub fn many_upstreams(upstreams: usize, servers: usize) -> Table {
    let mut toml = String::from(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{ path_prefix = \"/\", upstream = \"u0000\" }]\n",
    );
    for u in 0..upstreams {
        upstream_toml(&mut toml, &name(u), "round_robin", servers, u * servers);
    }
    table(&toml)
}

pub fn name(u: usize) -> String {
    format!("u{u:04}")
}

fn upstream_toml(out: &mut String, name: &str, balance: &str, n: usize, first: usize) {
    let _ = writeln!(out, "[upstream.{name}]\nbalance = \"{balance}\"");
    if balance == "hash" {
        out.push_str("hash_key = \"uri\"\n");
    }
    out.push_str("servers = [\n");
    for i in 0..n {
        let _ = writeln!(out, "  {{ addr = \"{}\" }},", addr(first + i));
    }
    out.push_str("]\n");
}

fn table(toml: &str) -> Table {
    let cfg = config::parse(toml, "bench.toml").expect("bench config is valid");
    Table::from_config(&cfg).expect("bench table builds")
}
