//! Between the table and its saved form (`state::StateDoc`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::server::{AdminState, Server};
use super::table::{Upstream, UpstreamSettings};
use crate::config::{
    Balance, HashKey, HealthCheckConfig, HealthCheckKind, KeepaliveConfig, RetryPolicy, Scheme,
    ServerConfig, Timeouts, UpstreamProtocol, UpstreamTls,
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

pub(crate) fn check_from_state(s: &HealthCheckState) -> Result<HealthCheckConfig, String> {
    let kind = HealthCheckKind::parse(&s.kind)
        .ok_or_else(|| format!("unknown health check type {:?}", s.kind))?;
    if let Some(re) = &s.body_regex {
        regex::Regex::new(re).map_err(|e| format!("bad body_regex: {e}"))?;
    }
    let positive = |v: u64| Duration::from_millis(v.max(1));
    Ok(HealthCheckConfig {
        kind,
        http_req: s.http_req.clone(),
        method: s.method.clone(),
        path: s.path.clone(),
        host: s.host.clone(),
        headers: s.headers.clone(),
        interval: positive(s.interval_ms),
        jitter: Duration::from_millis(s.jitter_ms),
        timeout: positive(s.timeout_ms),
        fall: s.fall.max(1),
        rise: s.rise.max(1),
        valid_statuses: s.valid_statuses.clone(),
        body: s.body.clone(),
        body_regex: s.body_regex.clone(),
        port: s.port,
        concurrency: s.concurrency.max(1),
        mandatory: s.mandatory,
    })
}

pub(crate) fn settings_from_state(s: &SettingsState) -> Result<UpstreamSettings, String> {
    let balance =
        Balance::parse(&s.balance).ok_or_else(|| format!("unknown balance {:?}", s.balance))?;
    let hash_key = match &s.hash_key {
        Some(k) => Some(HashKey::parse(k).ok_or_else(|| format!("bad hash_key {k:?}"))?),
        None => None,
    };
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
            tries: s.retry_tries.max(1),
            timeout: Duration::from_millis(s.retry_timeout_ms),
            non_idempotent: s.retry_non_idempotent,
        },
        health_check: s.health_check.as_ref().map(check_from_state).transpose()?,
        scheme: match s.scheme.as_deref() {
            None | Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            Some(other) => return Err(format!("unknown scheme {other:?}")),
        },
        protocol: match s.protocol.as_deref() {
            None => UpstreamProtocol::Http1,
            Some(p) => {
                UpstreamProtocol::parse(p).ok_or_else(|| format!("unknown protocol {p:?}"))?
            }
        },
        tls: Box::new(UpstreamTls {
            server_name: s.tls_server_name.clone(),
            ca: s.tls_ca.clone(),
            verify: s.tls_verify.unwrap_or(true),
            client_cert: s.tls_client_cert.clone(),
            client_key: s.tls_client_key.clone(),
        }),
        tls_client: None,
    })
}

pub(crate) fn server_from_state(s: &ServerState) -> (ServerConfig, AdminState) {
    let config = ServerConfig {
        addr: s.addr.clone(),
        weight: s.weight.clamp(1, 1000),
        max_conns: s.max_conns,
        max_fails: s.max_fails,
        fail_timeout: Duration::from_millis(s.fail_timeout_ms),
        slow_start: Duration::from_millis(s.slow_start_ms),
        backup: s.backup,
        down: s.state == AdminState::Down,
    };
    (config, s.state)
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
