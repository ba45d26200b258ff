//! Between the table and its saved form (`state::StateDoc`): the state file's
//! and the fleet store's door into the table. What comes back is held to the
//! same rules as every other door (`config::rules`, each type's `validate`),
//! except where a saved number is brought into range instead of refused, so
//! that a saved table comes back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::published::Upstream;
use super::server::{AdminState, Origin, Server};
use super::settings::UpstreamSettings;
use crate::config::rules::{
    MIN_COUNT, check_hash_key, check_panic_threshold, check_protocol, clamp_weight,
};
use crate::config::{
    Balance, HashKey, HealthCheckConfig, HealthCheckError, HealthCheckKind, KeepaliveConfig,
    RetryPolicy, Scheme, ServerConfig, Timeouts, UpstreamError, UpstreamProtocol, UpstreamTls,
};
use crate::state::{HealthCheckState, ServerState, SettingsState, StateDoc, UpstreamState};

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

pub(crate) fn settings_to_state(s: &UpstreamSettings) -> SettingsState {
    SettingsState {
        balance: s.balance.as_str().to_string(),
        hash_key: s.hash_key.as_ref().map(ToString::to_string),
        keepalive: s.keepalive.max_idle,
        keepalive_timeout_ms: ms(s.keepalive.idle_timeout),
        connect_timeout_ms: ms(s.timeouts.connect),
        read_timeout_ms: ms(s.timeouts.read),
        send_timeout_ms: ms(s.timeouts.send),
        retry_tries: s.retry.tries,
        retry_timeout_ms: ms(s.retry.timeout),
        retry_non_idempotent: s.retry.non_idempotent,
        health_check: s.health_check.as_ref().map(check_to_state),
        scheme: (s.scheme != Scheme::Http).then(|| s.scheme.as_str().to_string()),
        protocol: (s.protocol != UpstreamProtocol::Http1).then(|| s.protocol.as_str().to_string()),
        tls_server_name: s.tls.server_name.clone(),
        tls_ca: s.tls.ca.clone(),
        tls_verify: (!s.tls.verify).then_some(false),
        tls_client_cert: s.tls.client_cert.clone(),
        tls_client_key: s.tls.client_key.clone(),
        panic_threshold: s.panic_threshold,
    }
}

/// A check as the API shows it (the same shape it is saved in).
pub fn check_view(c: &HealthCheckConfig) -> HealthCheckState {
    check_to_state(c)
}

pub(crate) fn check_to_state(c: &HealthCheckConfig) -> HealthCheckState {
    HealthCheckState {
        kind: c.kind.as_str().into(),
        http_req: c.http_req.clone(),
        method: c.method.clone(),
        path: c.path.clone(),
        host: c.host.clone(),
        headers: c.headers.clone(),
        interval_ms: ms(c.interval),
        jitter_ms: ms(c.jitter),
        timeout_ms: ms(c.timeout),
        fall: c.fall,
        rise: c.rise,
        valid_statuses: c.valid_statuses.clone(),
        body: c.body.clone(),
        body_regex: c.body_regex.clone(),
        port: c.port,
        concurrency: c.concurrency,
        mandatory: c.mandatory,
    }
}

/// Why saved settings cannot be taken back: the rule they break.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SavedSettingsError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    HealthCheck(#[from] HealthCheckError),
}

pub(crate) fn check_from_saved(
    s: &HealthCheckState,
) -> Result<HealthCheckConfig, HealthCheckError> {
    let kind = HealthCheckKind::from_name(&s.kind)?;
    let positive = |v: u64| Duration::from_millis(v.max(1));
    let count = |n: u32| n.max(MIN_COUNT);
    let check = HealthCheckConfig {
        kind,
        http_req: s.http_req.clone(),
        method: s.method.clone(),
        path: s.path.clone(),
        host: s.host.clone(),
        headers: s.headers.clone(),
        interval: positive(s.interval_ms),
        jitter: Duration::from_millis(s.jitter_ms),
        timeout: positive(s.timeout_ms),
        fall: count(s.fall),
        rise: count(s.rise),
        valid_statuses: s.valid_statuses.clone(),
        body: s.body.clone(),
        body_regex: s.body_regex.clone(),
        port: s.port,
        concurrency: count(s.concurrency),
        mandatory: s.mandatory,
    };
    check.validate()?;
    Ok(check)
}

pub(crate) fn settings_from_saved(
    s: &SettingsState,
) -> Result<UpstreamSettings, SavedSettingsError> {
    let balance = Balance::from_name(&s.balance)?;
    let hash_key = s.hash_key.as_deref().map(HashKey::from_name).transpose()?;
    check_hash_key(balance, hash_key.as_ref())?;
    let scheme = s
        .scheme
        .as_deref()
        .map_or(Ok(Scheme::Http), Scheme::from_name)?;
    let protocol = s
        .protocol
        .as_deref()
        .map_or(Ok(UpstreamProtocol::Http1), UpstreamProtocol::from_name)?;
    check_protocol(scheme, protocol)?;
    let tls = UpstreamTls {
        server_name: s.tls_server_name.clone(),
        ca: s.tls_ca.clone(),
        verify: s.tls_verify.unwrap_or(true),
        client_cert: s.tls_client_cert.clone(),
        client_key: s.tls_client_key.clone(),
    };
    tls.validate()?;
    Ok(UpstreamSettings {
        balance,
        hash_key,
        keepalive: KeepaliveConfig {
            max_idle: s.keepalive,
            idle_timeout: Duration::from_millis(s.keepalive_timeout_ms),
        },
        timeouts: Timeouts {
            connect: Duration::from_millis(s.connect_timeout_ms),
            read: Duration::from_millis(s.read_timeout_ms),
            send: Duration::from_millis(s.send_timeout_ms),
        },
        retry: RetryPolicy {
            tries: RetryPolicy::at_least_one_try(s.retry_tries),
            timeout: Duration::from_millis(s.retry_timeout_ms),
            non_idempotent: s.retry_non_idempotent,
        },
        health_check: s.health_check.as_ref().map(check_from_saved).transpose()?,
        scheme,
        protocol,
        tls: Box::new(tls),
        tls_client: None,
        panic_threshold: s
            .panic_threshold
            .map(|p| check_panic_threshold(i128::from(p)))
            .transpose()?,
    })
}

/// A saved server's settings and admin state; its origin is [`origin_from_state`].
pub(crate) fn server_from_state(s: &ServerState) -> (ServerConfig, AdminState) {
    let config = ServerConfig {
        addr: s.addr.clone(),
        weight: clamp_weight(s.weight),
        max_conns: s.max_conns,
        max_fails: s.max_fails,
        fail_timeout: Duration::from_millis(s.fail_timeout_ms),
        slow_start: Duration::from_millis(s.slow_start_ms),
        backup: s.backup,
        down: s.state == AdminState::Down,
        ..ServerConfig::new(s.addr.clone())
    };
    (config, s.state)
}

pub(crate) fn origin_from_state(s: &ServerState) -> Origin {
    Origin::parse(s.origin.as_deref())
}

pub(crate) fn server_to_state(s: &Server) -> ServerState {
    ServerState {
        id: s.id,
        addr: s.addr.clone(),
        weight: s.weight,
        max_conns: s.max_conns,
        max_fails: s.max_fails,
        fail_timeout_ms: ms(s.fail_timeout),
        slow_start_ms: ms(s.slow_start),
        backup: s.backup,
        state: s.state,
        // A config server is saved as before origins were kept.
        origin: (s.origin != Origin::Config).then(|| s.origin.to_string()),
    }
}

pub(crate) fn to_doc(
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    next_id: &BTreeMap<String, u32>,
    deleted: &BTreeSet<String>,
) -> StateDoc {
    let mut doc = StateDoc::new();
    doc.deleted = deleted.clone();
    for (name, u) in upstreams {
        let servers = u
            .snapshot()
            .servers
            .iter()
            .map(|s| server_to_state(s))
            .collect();
        doc.upstreams.insert(
            name.clone(),
            UpstreamState {
                settings: settings_to_state(&u.settings),
                next_id: next_id.get(name).copied().unwrap_or(0),
                servers,
            },
        );
    }
    doc
}
