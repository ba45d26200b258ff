//! Hot reload: re-reading the configuration file and applying what changed in
//! it to the running process, in place.
//!
//! This module owns the *upstream* side of a reload: [`diff`] compares the
//! previous and the new file (both validated) and lists the file's own changes;
//! [`commands`] turns them into `upstream::Command`s against the current table,
//! skipping those that no longer apply (the API got there first), resolving
//! addresses and loading TLS files. The [`Reloader`] runs a whole reload: read
//! and validate the file, bind new listeners, apply the commands in one
//! `Table::apply_as(.., "reload")`, then swap the listeners
//! ([`crate::proxy::ProxyHandle`]), and last hand the new file to the DNS
//! resolvers (`discovery`), which start, change and stop entries with
//! `resolve = true` (their servers are theirs, not the diff's). Any error
//! before the table changes leaves everything as it was.
//!
//! The reloader runs on the main runtime, which is also data-plane worker 0:
//! everything that blocks (reading the file, resolving, loading TLS files, the
//! table's save) runs on blocking threads, so a slow disk or state store holds
//! up the reload and never that worker's requests.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::{info, warn};

use crate::config::{self, Config, ServerConfig};
use crate::discovery::Discovery;
use crate::logging::joined;
use crate::proxy::ProxyHandle;
use crate::upstream::{
    AdminState, Command, Origin, ServerPatch, ServerRef, ServerSpec, Table, TableError,
    TableSnapshot, TlsSetupError, UpstreamSettings,
};

/// One change the file made to its upstreams.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    CreateUpstream {
        name: String,
        settings: UpstreamSettings,
        servers: Vec<ServerConfig>,
    },
    DeleteUpstream {
        name: String,
    },
    SetSettings {
        upstream: String,
        settings: UpstreamSettings,
    },
    AddServer {
        upstream: String,
        server: ServerConfig,
    },
    RemoveServer {
        upstream: String,
        addr: String,
    },
    PatchServer {
        upstream: String,
        addr: String,
        patch: ServerPatch,
    },
}

/// What changed in a server's parameters from `old` to `new` (by the file).
fn server_patch(old: &ServerConfig, new: &ServerConfig) -> ServerPatch {
    ServerPatch {
        state: (old.down != new.down).then_some(if new.down {
            AdminState::Down
        } else {
            AdminState::Up
        }),
        weight: (old.weight != new.weight).then_some(new.weight),
        max_conns: (old.max_conns != new.max_conns).then_some(new.max_conns),
        max_fails: (old.max_fails != new.max_fails).then_some(new.max_fails),
        fail_timeout: (old.fail_timeout != new.fail_timeout).then_some(new.fail_timeout),
        slow_start: (old.slow_start != new.slow_start).then_some(new.slow_start),
        backup: (old.backup != new.backup).then_some(new.backup),
    }
}

/// The file's own changes to its upstreams, from `old` to `new`. Pure: the
/// running table is not looked at (see [`commands`]).
pub fn diff(old: &Config, new: &Config) -> Vec<Change> {
    let mut out = Vec::new();
    for name in old.upstreams.keys() {
        if !new.upstreams.contains_key(name) {
            out.push(Change::DeleteUpstream { name: name.clone() });
        }
    }
    for (name, up) in &new.upstreams {
        let Some(was) = old.upstreams.get(name) else {
            out.push(Change::CreateUpstream {
                name: name.clone(),
                settings: UpstreamSettings::from_config(up),
                servers: fixed(&up.servers).cloned().collect(),
            });
            continue;
        };
        let settings = UpstreamSettings::from_config(up);
        if settings != UpstreamSettings::from_config(was) {
            out.push(Change::SetSettings {
                upstream: name.clone(),
                settings,
            });
        }
        // Entries with `resolve = true` are the resolver's (`discovery`),
        // read at start-up: a reload leaves their servers alone.
        for s in fixed(&was.servers) {
            if !fixed(&up.servers).any(|n| n.addr == s.addr) {
                out.push(Change::RemoveServer {
                    upstream: name.clone(),
                    addr: s.addr.clone(),
                });
            }
        }
        for s in fixed(&up.servers) {
            match fixed(&was.servers).find(|o| o.addr == s.addr) {
                None => out.push(Change::AddServer {
                    upstream: name.clone(),
                    server: s.clone(),
                }),
                Some(o) => {
                    let patch = server_patch(o, s);
                    if !patch.is_empty() {
                        out.push(Change::PatchServer {
                            upstream: name.clone(),
                            addr: s.addr.clone(),
                            patch,
                        });
                    }
                }
            }
        }
    }
    out
}

/// The entries that are one server each (not names the resolver follows).
fn fixed(servers: &[ServerConfig]) -> impl Iterator<Item = &ServerConfig> {
    servers.iter().filter(|s| !s.is_dynamic())
}

/// The changes that still apply to `table`, in the order they can be applied
/// (removals first, so a server moved between `backup` and not, or an upstream
/// switched to a hash balance, goes through). Pure.
pub fn applicable(changes: Vec<Change>, table: &TableSnapshot) -> Vec<Change> {
    let has_server = |up: &str, addr: &str| {
        table
            .upstreams
            .get(up)
            .is_some_and(|u| u.snapshot().servers.iter().any(|s| s.addr == addr))
    };
    let mut kept: Vec<Change> = changes
        .into_iter()
        .filter(|c| match c {
            Change::CreateUpstream { name, .. } => !table.upstreams.contains_key(name),
            Change::DeleteUpstream { name } => table.upstreams.contains_key(name),
            Change::SetSettings { upstream, .. } => table.upstreams.contains_key(upstream),
            Change::AddServer { upstream, server } => {
                table.upstreams.contains_key(upstream) && !has_server(upstream, &server.addr)
            }
            Change::RemoveServer { upstream, addr }
            | Change::PatchServer { upstream, addr, .. } => has_server(upstream, addr),
        })
        .collect();
    let rank = |c: &Change| match c {
        Change::DeleteUpstream { .. } => 0,
        Change::RemoveServer { .. } => 1,
        Change::SetSettings { .. } => 2,
        Change::PatchServer { .. } => 3,
        Change::CreateUpstream { .. } => 4,
        Change::AddServer { .. } => 5,
    };
    kept.sort_by_key(rank);
    kept
}

/// Why a change of the file could not be turned into a table command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// A server address that does not resolve.
    #[error(transparent)]
    Resolve(#[from] TableError),
    #[error("upstream {upstream:?}: TLS: {source}")]
    Tls {
        upstream: String,
        source: TlsSetupError,
    },
}

/// Turns applicable changes into table commands: resolves addresses and loads
/// TLS client files (blocking: run on a blocking thread). A TLS client that the
/// change does not touch is kept as it is.
pub fn commands(changes: &[Change], table: &TableSnapshot) -> Result<Vec<Command>, CommandError> {
    let resolve = |c: &ServerConfig| {
        ServerSpec::resolve(c.clone())
            .map(|s| s.with_origin(Origin::Config))
            .map_err(CommandError::from)
    };
    let prepare = |name: &str, settings: &UpstreamSettings| {
        let mut s = settings.clone();
        if let Some(cur) = table.upstreams.get(name) {
            let c = &cur.settings;
            if c.scheme == s.scheme && c.protocol == s.protocol && c.tls == s.tls {
                s.tls_client.clone_from(&c.tls_client);
            }
        }
        s.prepare_tls(name).map_err(|source| CommandError::Tls {
            upstream: name.to_string(),
            source,
        })?;
        Ok::<_, CommandError>(s)
    };
    let mut out = Vec::new();
    for c in changes {
        out.push(match c {
            Change::CreateUpstream {
                name,
                settings,
                servers,
            } => Command::CreateUpstream {
                name: name.clone(),
                settings: prepare(name, settings)?,
                servers: servers.iter().map(resolve).collect::<Result<_, _>>()?,
            },
            Change::DeleteUpstream { name } => Command::DeleteUpstream { name: name.clone() },
            Change::SetSettings { upstream, settings } => Command::SetSettings {
                upstream: upstream.clone(),
                settings: prepare(upstream, settings)?,
            },
            Change::AddServer { upstream, server } => Command::Add {
                upstream: upstream.clone(),
                server: resolve(server)?,
            },
            Change::RemoveServer { upstream, addr } => Command::Remove {
                upstream: upstream.clone(),
                server: ServerRef::Addr(addr.clone()),
            },
            Change::PatchServer {
                upstream,
                addr,
                patch,
            } => Command::Patch {
                upstream: upstream.clone(),
                server: ServerRef::Addr(addr.clone()),
                patch: patch.clone(),
            },
        });
    }
    Ok(out)
}

/// A short account of one change, for the report.
fn describe(c: &Change) -> String {
    match c {
        Change::CreateUpstream { name, servers, .. } => {
            format!("create upstream {name} ({} servers)", servers.len())
        }
        Change::DeleteUpstream { name } => format!("delete upstream {name}"),
        Change::SetSettings { upstream, .. } => format!("set settings of upstream {upstream}"),
        Change::AddServer { upstream, server } => {
            format!("add server {} to {upstream}", server.addr)
        }
        Change::RemoveServer { upstream, addr } => format!("remove server {addr} from {upstream}"),
        Change::PatchServer { upstream, addr, .. } => {
            format!("change server {addr} of {upstream}")
        }
    }
}

/// What a reload changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadReport {
    /// Listeners opened, by bound address.
    pub listeners_added: Vec<String>,
    /// Listeners closed (in-flight requests on them finish), by bound address.
    pub listeners_removed: Vec<String>,
    /// Listeners kept, with the new routes, limits and TLS.
    pub listeners_kept: Vec<String>,
    /// Upstream changes applied to the table.
    pub applied: Vec<String>,
    /// Changes of the file that no longer applied to the table (the admin API
    /// had made them already), so were skipped.
    pub skipped: Vec<String>,
    /// Sections whose changes need a restart (`admin`, `runtime`, `log`).
    pub not_applied: Vec<String>,
}

/// Why a reload was refused: every problem, one a line. Nothing changed.
pub type Problems = Vec<String>;

/// A request to reload, from the admin API to the serve loop.
pub type ReloadRequest = oneshot::Sender<Result<ReloadReport, Problems>>;

/// Runs reloads from one configuration file, one at a time.
pub struct Reloader {
    path: PathBuf,
    table: Arc<Table>,
    proxy: ProxyHandle,
    current: Mutex<Config>,
    discovery: Option<Arc<Mutex<Discovery>>>,
}

impl Reloader {
    pub fn new(path: PathBuf, config: Config, table: Arc<Table>, proxy: ProxyHandle) -> Self {
        Reloader {
            path,
            table,
            proxy,
            current: Mutex::new(config),
            discovery: None,
        }
    }

    /// The process's DNS resolvers, which a reload reconfigures.
    pub fn with_discovery(mut self, discovery: Arc<Mutex<Discovery>>) -> Self {
        self.discovery = Some(discovery);
        self
    }

    /// Re-reads the file and applies what changed in it; all or nothing.
    pub async fn reload(&self) -> Result<ReloadReport, Problems> {
        let mut current = self.current.lock().await;
        let path = self.path.clone();
        let new = tokio::task::spawn_blocking(move || config::load(&path))
            .await
            .map_err(|e| vec![e.to_string()])?
            .map_err(|errors| errors.0.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
        let all = diff(&current, &new);
        let snapshot: Arc<TableSnapshot> = Arc::clone(&self.table.load());
        let todo = applicable(all.clone(), &snapshot);
        let skipped = all
            .iter()
            .filter(|c| !todo.contains(c))
            .map(describe)
            .collect();
        let cmds = {
            let todo = todo.clone();
            tokio::task::spawn_blocking(move || commands(&todo, &snapshot))
                .await
                .map_err(|e| vec![e.to_string()])?
                .map_err(|e| vec![e.to_string()])?
        };
        // Sockets and certificates first: a failure there changes nothing.
        let prepared = self
            .proxy
            .prepare(&new)
            .await
            .map_err(|e| vec![e.to_string()])?;
        if !cmds.is_empty() {
            self.table
                .apply_as(cmds, "reload")
                .await
                .map_err(|e| vec![format!("upstreams: {e}")])?;
        }
        let listeners = self.proxy.commit(prepared).await;
        let mut applied: Vec<String> = todo.iter().map(describe).collect();
        if let Some(d) = &self.discovery {
            applied.extend(d.lock().await.reconfigure(&new).await);
        }
        let mut not_applied = Vec::new();
        if current.admin != new.admin {
            not_applied.push("admin (needs a restart)".to_string());
        }
        if current.runtime != new.runtime {
            not_applied.push("runtime (needs a restart)".to_string());
        }
        if current.log != new.log {
            not_applied.push("log (needs a restart)".to_string());
        }
        *current = new;
        Ok(ReloadReport {
            listeners_added: listeners.added,
            listeners_removed: listeners.removed,
            listeners_kept: listeners.kept,
            applied,
            skipped,
            not_applied,
        })
    }

    /// Reloads and logs the outcome; `trigger` names what asked.
    pub async fn reload_logged(&self, trigger: &str) -> Result<ReloadReport, Problems> {
        let r = self.reload().await;
        match &r {
            Ok(rep) => info!(
                %trigger,
                file = %self.path.display(),
                added = %joined(&rep.listeners_added),
                removed = %joined(&rep.listeners_removed),
                applied = %joined(&rep.applied),
                skipped = %joined(&rep.skipped),
                "configuration reloaded"
            ),
            Err(problems) => warn!(
                %trigger,
                file = %self.path.display(),
                problems = %problems.join("; "),
                "configuration reload rejected; the old configuration keeps serving"
            ),
        }
        r
    }

    /// Serves reload requests (admin API) and `SIGHUP` until the process ends.
    pub async fn run(self, mut requests: mpsc::Receiver<ReloadRequest>) {
        #[cfg(unix)]
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP; reload only through the admin API");
                None
            }
        };
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<Option<()>>();
            tokio::select! {
                req = requests.recv() => match req {
                    Some(reply) => {
                        let r = self.reload_logged("admin API").await;
                        let _ = reply.send(r);
                    }
                    None => requests = mpsc::channel(1).1,
                },
                sig = hangup => {
                    if sig.is_none() {
                        hup = None;
                        continue;
                    }
                    let _ = self.reload_logged("SIGHUP").await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg(text: &str) -> Config {
        match config::parse(text, "t.toml") {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    const BASE: &str = r#"
[[listener]]
listen = "127.0.0.1:0"
routes = [{ upstream = "a" }]

[upstream.a]
servers = [
  { addr = "127.0.0.1:1001" },
  { addr = "127.0.0.1:1002", weight = 2 },
]

[upstream.b]
servers = [{ addr = "127.0.0.1:2001" }]
"#;

    #[test]
    fn same_file_changes_nothing() {
        assert_eq!(diff(&cfg(BASE), &cfg(BASE)), vec![]);
    }

    #[test]
    fn servers_added_removed_and_patched_by_addr() {
        let new = BASE
            .replace(
                r#"{ addr = "127.0.0.1:1001" },"#,
                r#"{ addr = "127.0.0.1:1003", backup = true },"#,
            )
            .replace("weight = 2", "weight = 5, down = true");
        let changes = diff(&cfg(BASE), &cfg(&new));
        assert_eq!(
            changes,
            vec![
                Change::RemoveServer {
                    upstream: "a".into(),
                    addr: "127.0.0.1:1001".into()
                },
                Change::AddServer {
                    upstream: "a".into(),
                    server: ServerConfig {
                        backup: true,
                        ..ServerConfig::new("127.0.0.1:1003")
                    }
                },
                Change::PatchServer {
                    upstream: "a".into(),
                    addr: "127.0.0.1:1002".into(),
                    patch: ServerPatch {
                        state: Some(AdminState::Down),
                        weight: Some(5),
                        ..Default::default()
                    }
                },
            ]
        );
    }

    #[test]
    fn upstreams_created_deleted_and_settings_changed() {
        let new = BASE.replace("[upstream.b]", "[upstream.c]").replace(
            "[upstream.a]",
            "[upstream.a]\nbalance = \"least_conn\"\nconnect_timeout = \"2s\"",
        );
        let changes = diff(&cfg(BASE), &cfg(&new));
        assert_eq!(changes.len(), 3, "{changes:#?}");
        assert_eq!(changes[0], Change::DeleteUpstream { name: "b".into() });
        let Change::SetSettings { upstream, settings } = &changes[1] else {
            panic!("{changes:#?}")
        };
        assert_eq!(upstream, "a");
        assert_eq!(settings.balance, config::Balance::LeastConn);
        assert_eq!(settings.timeouts.connect, Duration::from_secs(2));
        let Change::CreateUpstream { name, servers, .. } = &changes[2] else {
            panic!("{changes:#?}")
        };
        assert_eq!(name, "c");
        assert_eq!(servers[0].addr, "127.0.0.1:2001");
    }

    #[test]
    fn changes_the_api_made_already_are_skipped() {
        let old = cfg(BASE);
        let new = cfg(
            &BASE.replace(r#"{ addr = "127.0.0.1:1001" },"#, "").replace(
                r#"servers = [{ addr = "127.0.0.1:2001" }]"#,
                r#"servers = [{ addr = "127.0.0.1:2001" }, { addr = "127.0.0.1:2002" }]"#,
            ),
        );
        let table = Table::from_config(&old).unwrap_or_else(|e| panic!("{e}"));
        // The API removed 1001 and added 2002 before the file did.
        table
            .apply_blocking(&[
                Command::Remove {
                    upstream: "a".into(),
                    server: ServerRef::Addr("127.0.0.1:1001".into()),
                },
                Command::Add {
                    upstream: "b".into(),
                    server: ServerSpec::resolve(ServerConfig::new("127.0.0.1:2002"))
                        .unwrap_or_else(|e| panic!("{e}")),
                },
            ])
            .unwrap_or_else(|e| panic!("{e}"));
        let changes = diff(&old, &new);
        assert_eq!(changes.len(), 2);
        assert_eq!(applicable(changes, &Arc::clone(&table.load())), vec![]);
    }

    #[test]
    fn applied_changes_keep_ids_and_admin_state() {
        let old = cfg(BASE);
        let new = cfg(&BASE.replace(
            r#"{ addr = "127.0.0.1:1001" },"#,
            r#"{ addr = "127.0.0.1:1001" }, { addr = "127.0.0.1:1004" },"#,
        ));
        let table = Table::from_config(&old).unwrap_or_else(|e| panic!("{e}"));
        table
            .apply_blocking(&[Command::SetState {
                upstream: "a".into(),
                server: ServerRef::Addr("127.0.0.1:1002".into()),
                state: AdminState::Drain,
            }])
            .unwrap_or_else(|e| panic!("{e}"));
        let snap = Arc::clone(&table.load());
        let todo = applicable(diff(&old, &new), &snap);
        let cmds = commands(&todo, &snap).unwrap_or_else(|e| panic!("{e}"));
        table
            .apply_as_blocking(&cmds, "reload")
            .unwrap_or_else(|e| panic!("{e}"));
        let up = table.upstream("a").unwrap_or_else(|| panic!("no a"));
        let servers: Vec<_> = up
            .snapshot()
            .servers
            .iter()
            .map(|s| (s.id, s.addr.clone(), s.state))
            .collect();
        assert_eq!(
            servers,
            vec![
                (0, "127.0.0.1:1001".to_string(), AdminState::Up),
                (1, "127.0.0.1:1002".to_string(), AdminState::Drain),
                (2, "127.0.0.1:1004".to_string(), AdminState::Up),
            ]
        );
    }

    #[test]
    fn settings_change_keeps_servers() {
        let old = cfg(BASE);
        let new = cfg(&BASE.replace("[upstream.a]", "[upstream.a]\nbalance = \"least_conn\""));
        let table = Table::from_config(&old).unwrap_or_else(|e| panic!("{e}"));
        let before = table.upstream("a").unwrap_or_else(|| panic!("no a"));
        let snap = Arc::clone(&table.load());
        let cmds =
            commands(&applicable(diff(&old, &new), &snap), &snap).unwrap_or_else(|e| panic!("{e}"));
        table
            .apply_as_blocking(&cmds, "reload")
            .unwrap_or_else(|e| panic!("{e}"));
        let after = table.upstream("a").unwrap_or_else(|| panic!("no a"));
        assert_eq!(after.settings.balance, config::Balance::LeastConn);
        for (a, b) in before
            .snapshot()
            .servers
            .iter()
            .zip(&after.snapshot().servers)
        {
            assert!(Arc::ptr_eq(&a.runtime, &b.runtime));
        }
    }
}
