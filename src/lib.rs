//! switchyard: a reverse proxy and load balancer whose upstream table is live.
//!
//! The tree follows the concerns of the product, one module each:
//! - [`config`]: the file format, validation and defaults (pure).
//! - [`upstream`]: the live table — servers, admin state, snapshots, balancing.
//! - [`proxy`]: listeners, routing, forwarding, retries, connection pools.
//! - [`health`]: active checks and passive failure accounting; writes
//!   health, never admin state.
//! - [`admin`]: the HTTP API that changes the table, and who may use it.
//! - [`state`]: durable state behind one trait.
//! - [`cluster`]: the etcd store a fleet of instances shares the table through.
//! - [`tls`]: certificates and rustls configurations for listeners and upstreams.
//! - [`reload`]: hot reload of the configuration file (`SIGHUP`, the API).
//! - [`cli`]: argument parsing and the commands `run`, `proxy`, `demo`, `check`.
//! - [`logging`]: the log on stderr — level, text or JSON, colour — and the
//!   helpers that make log fields print as values.
//! - [`ctl`]: `switchyard ctl`, a client of the admin API for the shell.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod discovery;
pub mod health;
pub mod import;
pub mod logging;
pub mod proxy;
pub mod reload;
pub mod state;
pub mod tls;
pub mod upstream;
