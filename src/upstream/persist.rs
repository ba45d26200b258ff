//! Between the table and its saved form (`state::StateDoc`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::server::AdminState;
use super::table::{Upstream, UpstreamSettings};
use crate::config::{Balance, HashKey, KeepaliveConfig, RetryPolicy, ServerConfig, Timeouts};
use crate::state::{ServerState, SettingsState, StateDoc, UpstreamState};

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
    }
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
            .map(|s| ServerState {
                id: s.id,
                addr: s.addr.clone(),
                weight: s.weight,
                max_conns: s.max_conns,
                max_fails: s.max_fails,
                fail_timeout_ms: ms(s.fail_timeout),
                slow_start_ms: ms(s.slow_start),
                backup: s.backup,
                state: s.state,
            })
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
