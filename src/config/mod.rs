//! Configuration: the TOML file format, its validation and its defaults.
//!
//! This module owns the *validated* configuration types that the rest of the
//! program is built from, the rules those types follow — one home for each, so
//! that every door (the file, the native, NGINX Plus and `/ups_api` APIs, the
//! state file, the fleet's store) checks the same way — and the reader that
//! produces them from `switchyard.toml`. It is pure: apart from reading the file
//! in [`load`], it does no I/O — it does not resolve host names, bind sockets or
//! touch runtime state. Runtime structures (`upstream`, `proxy`) are built *from*
//! these types and never write back into them.
//!
//! Every problem found in a file is reported with its place (file, line, column),
//! and all of them are reported at once, so `switchyard check` can list them all.
//!
//! This file only declares and re-exports: each name is defined in the file of
//! its concern, and the files depend on each other in one direction (`read`
//! on the types, the types on `addr`), never in a circle.

mod addr;
mod error;
mod health_check;
mod listener;
mod log;
mod read;
mod resolver;
mod root;
pub mod rules;
mod server;
#[cfg(test)]
mod tests;
mod upstream;

pub use addr::{AddrError, check_server_addr, with_default_port};
pub use error::{ConfigError, ConfigErrors};
pub use health_check::{HealthCheckConfig, HealthCheckError, HealthCheckKind};
pub use listener::{
    ACCESS_LOG_VARIABLES, AccessLogConfig, AccessLogFormat, AccessLogTarget, CertificatePair,
    ClientLimits, HealthUriError, HostMatch, ListenerConfig, ListenerTls, RouteConfig,
    TemplateError, TlsVersion, template_variables,
};
pub use log::{LogConfig, LogFormat, LogLevel, LogLevelError};
pub use read::{load, parse, peek_log};
pub use resolver::{DNS_PORT, ResolverConfig, ResolverError, parse_name_server};
pub use root::{AccessRule, AdminConfig, ClusterConfig, Config, RuntimeConfig};
pub use server::{
    MAX_WEIGHT, MIN_WEIGHT, ServerConfig, ServerError, ServiceError, WEIGHTS, check_service_name,
};
pub use upstream::{
    Balance, HashKey, KeepaliveConfig, MIN_TRIES, RetryPolicy, Scheme, Timeouts, UpstreamConfig,
    UpstreamError, UpstreamProtocol, UpstreamTls,
};
