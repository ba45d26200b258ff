//! The shared table as etcd keys: one key per upstream definition and one per
//! server, JSON values, so that an operator can read and even edit them with
//! `etcdctl`, and so that a change to one server rewrites one small key.
//!
//! ```text
//! {prefix}/meta                     who wrote last (every switchyard write puts it)
//! {prefix}/upstreams/{name}         {"settings":{...},"next_id":N}
//! {prefix}/servers/{name}/{id:010}  {"id":N,"addr":"…","weight":…,"state":"up",…}
//! {prefix}/deleted/{name}           a config upstream deleted through the API
//! {prefix}/writers/{instance}       the id of that instance's last write (see `writer_key`)
//! ```
//!
//! Pure functions, no I/O: the etcd side lives in `etcd.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::state::{ServerState, SettingsState, StateDoc, UpstreamState};

/// Keys (full, with the prefix) and their values.
pub(crate) type Kvs = BTreeMap<String, Vec<u8>>;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamEntry {
    settings: SettingsState,
    next_id: u32,
}

pub(crate) fn meta_key(prefix: &str) -> String {
    format!("{prefix}/meta")
}

/// Where an instance records the id of each write it makes, in the same
/// transaction: after an answer that never came, reading it back tells whether
/// the write was applied (see `etcd::resolve`). One key per running instance,
/// which nobody else writes.
pub(crate) fn writer_key(prefix: &str, instance: &str) -> String {
    let name: String = instance
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{prefix}/writers/{name}")
}

/// Whether `key` holds part of the table (not `meta`, not a writer key).
pub(crate) fn is_table_key(prefix: &str, key: &str) -> bool {
    match key.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) {
        Some(rest) => rest != "meta" && !rest.starts_with("writers/"),
        None => false,
    }
}

/// Every key of `doc` (not `meta`, not the writers' keys).
pub(crate) fn to_kvs(prefix: &str, doc: &StateDoc) -> Kvs {
    let mut out = Kvs::new();
    for (name, up) in &doc.upstreams {
        let entry = UpstreamEntry {
            settings: up.settings.clone(),
            next_id: up.next_id,
        };
        out.insert(format!("{prefix}/upstreams/{name}"), json(&entry));
        for s in &up.servers {
            out.insert(format!("{prefix}/servers/{name}/{:010}", s.id), json(s));
        }
    }
    for name in &doc.deleted {
        out.insert(format!("{prefix}/deleted/{name}"), b"{}".to_vec());
    }
    out
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    // These types serialise to JSON without fail (string keys, no maps of
    // non-string keys); an empty value would be read back as a bad entry.
    serde_json::to_vec(v).unwrap_or_default()
}

/// The table `kvs` describe, and what in them could not be read (each entry
/// names its key); a bad entry is left out, the rest still applies.
pub(crate) fn from_kvs(prefix: &str, kvs: &Kvs) -> (StateDoc, Vec<String>) {
    let mut doc = StateDoc::new();
    let mut problems = Vec::new();
    let mut servers: BTreeMap<String, Vec<ServerState>> = BTreeMap::new();
    let head = format!("{prefix}/");
    for (key, value) in kvs {
        let Some(rest) = key.strip_prefix(&head) else {
            continue;
        };
        let mut bad = |reason: String| problems.push(format!("key {key}: {reason}"));
        match rest.split_once('/') {
            Some(("upstreams", name)) if !name.is_empty() && !name.contains('/') => {
                match serde_json::from_slice::<UpstreamEntry>(value) {
                    Ok(e) => {
                        doc.upstreams.insert(
                            name.to_string(),
                            UpstreamState {
                                settings: e.settings,
                                next_id: e.next_id,
                                servers: Vec::new(),
                            },
                        );
                    }
                    Err(e) => bad(format!("not an upstream definition: {e}")),
                }
            }
            Some(("servers", path)) => {
                let Some((name, id)) = path.rsplit_once('/') else {
                    bad("expected servers/UPSTREAM/ID".into());
                    continue;
                };
                match serde_json::from_slice::<ServerState>(value) {
                    Ok(s) if id.parse::<u32>().ok() == Some(s.id) => {
                        servers.entry(name.to_string()).or_default().push(s);
                    }
                    Ok(s) => bad(format!(
                        "the key's id {id:?} is not the server's id {}",
                        s.id
                    )),
                    Err(e) => bad(format!("not a server: {e}")),
                }
            }
            Some(("deleted", name)) if !name.is_empty() => {
                doc.deleted.insert(name.to_string());
            }
            _ if rest == "meta" || rest.starts_with("writers/") => {}
            _ => bad("not a key switchyard knows".into()),
        }
    }
    for (name, list) in servers {
        match doc.upstreams.get_mut(&name) {
            Some(up) => {
                up.next_id = list.iter().map(|s| s.id + 1).fold(up.next_id, u32::max);
                up.servers = list;
            }
            None => problems.push(format!(
                "servers of upstream {name:?}, which has no {prefix}/upstreams/{name} key"
            )),
        }
    }
    (doc, problems)
}

/// What to put and what to delete to go from `old` to `new`.
pub(crate) fn diff(old: &Kvs, new: &Kvs) -> (Vec<(String, Vec<u8>)>, Vec<String>) {
    let puts = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let deletes = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
    (puts, deletes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::AdminState;

    fn settings() -> SettingsState {
        SettingsState {
            balance: "round_robin".into(),
            hash_key: None,
            keepalive: 32,
            keepalive_timeout_ms: 60_000,
            connect_timeout_ms: 1000,
            read_timeout_ms: 60_000,
            send_timeout_ms: 60_000,
            retry_tries: 2,
            retry_timeout_ms: 0,
            retry_non_idempotent: false,
            health_check: None,
            scheme: None,
            protocol: None,
            tls_server_name: None,
            tls_ca: None,
            tls_verify: None,
            tls_client_cert: None,
            tls_client_key: None,
            panic_threshold: None,
        }
    }

    fn server(id: u32, addr: &str) -> ServerState {
        ServerState {
            id,
            addr: addr.into(),
            weight: 1,
            max_conns: 0,
            max_fails: 1,
            fail_timeout_ms: 10_000,
            slow_start_ms: 0,
            backup: false,
            state: AdminState::Up,
            origin: None,
        }
    }

    fn doc() -> StateDoc {
        let mut d = StateDoc::new();
        d.upstreams.insert(
            "web".into(),
            UpstreamState {
                settings: settings(),
                next_id: 12,
                servers: vec![server(3, "10.0.0.1:80"), server(11, "10.0.0.2:80")],
            },
        );
        d.deleted.insert("old".into());
        d
    }

    #[test]
    fn keys_round_trip() {
        let kvs = to_kvs("/sy", &doc());
        let keys: Vec<&str> = kvs.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "/sy/deleted/old",
                "/sy/servers/web/0000000003",
                "/sy/servers/web/0000000011",
                "/sy/upstreams/web"
            ]
        );
        let (back, problems) = from_kvs("/sy", &kvs);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(back, doc());
    }

    #[test]
    fn bad_entries_are_named_and_skipped() {
        let mut kvs = to_kvs("/sy", &doc());
        kvs.insert("/sy/servers/web/0000000004".into(), b"{not json".to_vec());
        kvs.insert(
            "/sy/servers/web/0000000005".into(),
            serde_json::to_vec(&server(6, "10.0.0.9:80")).unwrap(),
        );
        kvs.insert(
            "/sy/servers/ghost/0000000000".into(),
            serde_json::to_vec(&server(0, "10.0.0.7:80")).unwrap(),
        );
        kvs.insert("/sy/what".into(), b"1".to_vec());
        kvs.insert("/sy/meta".into(), b"{}".to_vec());
        kvs.insert("/sy/writers/h_pid_1".into(), b"w-1".to_vec());
        let (back, problems) = from_kvs("/sy", &kvs);
        assert_eq!(back, doc());
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("0000000004"), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("\"ghost\"")));
    }

    #[test]
    fn next_id_covers_every_stored_id() {
        let mut d = doc();
        d.upstreams.get_mut("web").unwrap().next_id = 0;
        let (back, _) = from_kvs("/sy", &to_kvs("/sy", &d));
        assert_eq!(back.upstreams["web"].next_id, 12);
    }

    #[test]
    fn diff_puts_changed_and_deletes_gone() {
        let old = to_kvs("/sy", &doc());
        let mut d = doc();
        let web = d.upstreams.get_mut("web").unwrap();
        web.servers[0].state = AdminState::Down;
        web.servers.remove(1);
        let new = to_kvs("/sy", &d);
        let (puts, deletes) = diff(&old, &new);
        assert_eq!(puts.len(), 1);
        assert_eq!(puts[0].0, "/sy/servers/web/0000000003");
        assert_eq!(deletes, ["/sy/servers/web/0000000011"]);
        assert_eq!(diff(&new, &new), (vec![], vec![]));
    }
}
