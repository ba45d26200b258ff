//! Every integration test in one binary. Each module below was once its own
//! `tests/NAME.rs`; one binary links the crate once instead of forty times, which
//! keeps a clean `cargo test` within a CI machine's disk and minutes. Run one file's
//! tests with `cargo test --test suite NAME::`.
//!
//! `tests/pick_no_alloc.rs` stays apart: it installs a counting global allocator.

mod support;

mod access_log;
mod admin_access;
mod admin_api;
mod admin_durable;
mod admin_linearizable;
mod architecture;
mod balancing;
mod compat_nginx;
mod compat_nginxplus_client;
mod compat_ups_api;
mod config_file;
mod ctl;
mod dashboard_browser;
mod differential;
mod dns;
mod dns_fleet;
mod exchange_paths;
mod failover;
mod fleet;
mod fleet_faults;
mod fuzz_admin;
mod fuzz_config;
mod health;
mod hostile_clients;
mod import_nginx;
mod ipv6;
mod lifecycle;
mod logging;
mod misbehaving_backends;
mod ops_health_metrics;
mod panic_mode;
mod plain_http1;
mod protocol_hardening;
mod reload;
mod reload_slow_store;
mod request_buffering;
mod rolling_deploy;
mod slow_start;
mod state_faults;
mod status_metrics;
mod streaming;
mod table_props;
mod tls;
