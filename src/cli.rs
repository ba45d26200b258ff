//! The command line: parse arguments, build the pieces, run them. Errors end here
//! as messages for a person, with a non-zero exit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tracing::{info, warn};

use crate::admin::AdminServer;
use crate::config::{self, AdminConfig, Config, LogConfig, LogFormat, LogLevel, ServerConfig};
use crate::discovery::Leadership;
use crate::proxy::{Proxy, Shutdown};
use crate::state::{FileStore, StateError, StateStore};
use crate::upstream::{OpenError, Table};

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A reverse proxy and load balancer whose upstream table is live"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Sets up logging from the flags and, for `run` and `check`, the `[log]`
    /// section of the config file (read ahead of the rest of it). Call once,
    /// before [`run`].
    pub fn init_logging(&self) {
        let file = match &self.command {
            Command::Run { config, .. } | Command::Check { config } => config::peek_log(config),
            _ => None,
        };
        crate::logging::init(&self.log.to_config(), file.as_ref());
    }
}

/// How the log on stderr looks; every command takes these.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Log lines as `text` or `json` (one object a line); overrides `[log] format`.
    #[arg(long, global = true, value_name = "FORMAT", value_parser = log_format)]
    pub log_format: Option<LogFormat>,
    /// Which log lines to write: trace, debug, info, warn, error or off, or
    /// directives as RUST_LOG takes them ("warn,switchyard::admin=debug");
    /// overrides `[log] level` and RUST_LOG.
    #[arg(long, global = true, value_name = "LEVEL", value_parser = LogLevel::parse)]
    pub log_level: Option<LogLevel>,
}

impl LogArgs {
    pub fn to_config(&self) -> LogConfig {
        LogConfig {
            format: self.log_format,
            level: self.log_level.clone(),
        }
    }
}

/// clap's parser for `--log-format`; clap puts the flag and value before the
/// message.
fn log_format(s: &str) -> Result<LogFormat> {
    LogFormat::parse(s).context("expected text or json")
}

/// Options about the saved state, shared by the commands that serve.
#[derive(Debug, Clone, clap::Args)]
pub struct StateArgs {
    /// Where changes are saved (overrides `[admin] state_file`).
    #[arg(long, value_name = "FILE")]
    pub state_file: Option<PathBuf>,
    /// If the state file cannot be read, move it aside (NAME.bad-TIME) and start
    /// from the configuration instead of refusing to start.
    #[arg(long)]
    pub discard_bad_state: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run from a configuration file.
    Run {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Worker threads (overrides `[runtime] workers`; default: one per core).
        #[arg(long)]
        workers: Option<usize>,
        #[command(flatten)]
        state: StateArgs,
    },
    /// A one-line proxy without a configuration file.
    Proxy {
        #[arg(long, value_name = "ADDR")]
        listen: SocketAddr,
        /// A server to balance to (repeat for more).
        #[arg(long = "to", value_name = "ADDR", required = true)]
        to: Vec<String>,
        /// Serve the admin API here (loopback unless you know what you do).
        #[arg(long, value_name = "ADDR")]
        admin: Option<SocketAddr>,
        #[arg(long)]
        workers: Option<usize>,
        /// Log every request to FILE (`-`: stdout), in nginx's combined format
        /// unless --access-log-format says otherwise.
        #[arg(long, value_name = "FILE")]
        access_log: Option<PathBuf>,
        /// `combined`, `json`, or a template of nginx variables (`$remote_addr ...`).
        #[arg(
            long,
            value_name = "FORMAT",
            default_value = "combined",
            requires = "access_log"
        )]
        access_log_format: String,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Start three demo backends and a proxy in front of them, on loopback.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:18080")]
        admin: SocketAddr,
        /// Ports of the three demo backends (alpha, bravo, charlie).
        #[arg(long, value_delimiter = ',', default_value = "9001,9002,9003")]
        backend_ports: Vec<u16>,
        #[arg(long)]
        workers: Option<usize>,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Validate a configuration file and print every problem with its place.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Use the admin API from the shell.
    Ctl(crate::ctl::CtlArgs),
    /// Translate another proxy's configuration into switchyard's TOML.
    #[command(subcommand)]
    Import(ImportFrom),
}

/// What `switchyard import` reads.
#[derive(Debug, Subcommand)]
pub enum ImportFrom {
    /// An nginx or OpenResty configuration (following its includes). The TOML
    /// goes to stdout (or OUT), the report of what was not translated to stderr.
    Nginx {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Write the configuration here instead of stdout.
        #[arg(short, long, value_name = "OUT")]
        output: Option<PathBuf>,
    },
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check { config } => Ok(check(&config)),
        Command::Run {
            config,
            workers,
            state,
        } => {
            let cfg = config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            let workers = workers.or(cfg.runtime.workers);
            let (rt, workers) = runtimes(workers)?;
            rt.block_on(serve(cfg, Some(config), None, state, &workers, |_| ()))
        }
        Command::Proxy {
            listen,
            to,
            admin,
            workers,
            access_log,
            access_log_format,
            state,
        } => {
            let servers = to.into_iter().map(ServerConfig::new).collect();
            let mut cfg = Config::single_upstream(listen, servers);
            if let Some(path) = access_log {
                let format = match access_log_format.as_str() {
                    "combined" => config::AccessLogFormat::Combined,
                    "json" => config::AccessLogFormat::Json,
                    t => {
                        config::template_variables(t)
                            .map_err(|e| anyhow::anyhow!("--access-log-format: {e}"))?;
                        config::AccessLogFormat::Template(t.to_string())
                    }
                };
                let target = if path.as_os_str() == "-" {
                    config::AccessLogTarget::Stdout
                } else {
                    config::AccessLogTarget::File(path)
                };
                for l in &mut cfg.listeners {
                    l.access_log = Some(config::AccessLogConfig {
                        path: target.clone(),
                        format: format.clone(),
                    });
                }
            }
            let (rt, workers) = runtimes(workers)?;
            rt.block_on(serve(cfg, None, admin, state, &workers, |_| ()))
        }
        Command::Demo {
            listen,
            admin,
            backend_ports,
            workers,
            state,
        } => {
            let (rt, workers) = runtimes(workers)?;
            rt.block_on(demo(listen, admin, backend_ports, state, &workers))
        }
        Command::Ctl(args) => crate::ctl::run(args),
        Command::Import(ImportFrom::Nginx { file, output }) => {
            Ok(import_nginx(&file, output.as_deref()))
        }
    }
}

/// `switchyard import nginx`: exit 0 when a configuration was produced (with or
/// without things left untranslated), 1 when nothing could be.
fn import_nginx(file: &Path, output: Option<&Path>) -> ExitCode {
    let imported = match crate::import::nginx::import(file) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("switchyard import: {e}");
            return ExitCode::FAILURE;
        }
    };
    let name = output.map_or_else(|| "(stdout)".to_string(), |p| p.display().to_string());
    // The output is checked like any configuration before it is handed over.
    let problems = match config::parse(&imported.toml, &name) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
    };
    let written = match output {
        Some(path) => std::fs::write(path, &imported.toml)
            .map_err(|e| format!("cannot write {}: {e}", path.display())),
        None => {
            use std::io::Write as _;
            std::io::stdout()
                .write_all(imported.toml.as_bytes())
                .map_err(|e| format!("cannot write to stdout: {e}"))
        }
    };
    if let Err(e) = written {
        eprintln!("switchyard import: {e}");
        return ExitCode::FAILURE;
    }
    if imported.notes.is_empty() {
        eprintln!("switchyard import: every directive was translated");
    } else {
        eprintln!(
            "switchyard import: {} directive(s) not translated (or only in part):",
            imported.notes.len()
        );
        for n in &imported.notes {
            eprintln!("  {n}");
        }
    }
    if !problems.is_empty() {
        eprintln!("switchyard import: the configuration needs a hand before it runs:");
        for p in &problems {
            eprintln!("  {p}");
        }
    }
    ExitCode::SUCCESS
}

fn check(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok(cfg) => {
            for warning in cfg.warnings().into_iter().chain(state_warnings(&cfg)) {
                eprintln!("{}: warning: {warning}", path.display());
            }
            println!(
                "{}: ok ({} listener(s), {} upstream(s))",
                path.display(),
                cfg.listeners.len(),
                cfg.upstreams.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            eprintln!("{} problem(s) found", errors.0.len());
            ExitCode::FAILURE
        }
    }
}

/// Where the saved state of a config would come from, and how it differs: the
/// state file wins at start-up, so an operator editing the file should know.
fn state_warnings(cfg: &Config) -> Vec<String> {
    if let Some(c) = &cfg.cluster {
        // The store wins at start-up; the file is only its cache.
        return vec![format!(
            "[cluster]: the upstream table is shared through etcd {} under {}; at start the store's table wins over this file's upstreams (an empty store is seeded from them)",
            c.endpoints.join(","),
            c.prefix
        )];
    }
    let Some(path) = cfg.admin.as_ref().and_then(|a| a.state_file.as_ref()) else {
        return Vec::new();
    };
    let store = FileStore::new(path);
    let doc = match store.load() {
        Ok(Some(doc)) => doc,
        Ok(None) => return Vec::new(),
        Err(e) => {
            return vec![format!(
                "{e}; `run` will refuse to start until it is fixed or --discard-bad-state is given"
            )];
        }
    };
    let mut out = Vec::new();
    for (name, up) in &cfg.upstreams {
        if doc.deleted.contains(name) && doc.upstreams.contains_key(name) {
            out.push(format!(
                "upstream {name:?} was deleted and created again through the API; the state file {} keeps the API's version",
                path.display()
            ));
            continue;
        }
        if doc.deleted.contains(name) {
            out.push(format!(
                "upstream {name:?} was deleted through the API; the state file {} keeps it deleted",
                path.display()
            ));
            continue;
        }
        let Some(saved) = doc.upstreams.get(name) else {
            continue;
        };
        let configured: Vec<&str> = up.servers.iter().map(|s| s.addr.as_str()).collect();
        let stored: Vec<&str> = saved.servers.iter().map(|s| s.addr.as_str()).collect();
        if configured != stored {
            out.push(format!(
                "upstream {name:?}: the state file {} overrides the configured servers [{}] with [{}]",
                path.display(),
                configured.join(", "),
                stored.join(", ")
            ));
        }
    }
    for name in doc
        .upstreams
        .keys()
        .filter(|n| !cfg.upstreams.contains_key(*n))
    {
        out.push(format!(
            "upstream {name:?} exists only in the state file {} (created through the API)",
            path.display()
        ));
    }
    out
}

/// The data plane's runtimes: one current-thread runtime per worker, each on a
/// thread of its own, as nginx has one process per worker. The main thread is
/// worker 0 and also runs the admin API, health checks and reloads; each extra
/// worker accepts on its own socket of every listener (`SO_REUSEPORT`) and
/// serves its connections start to end, with its own idle upstream connections,
/// so a request never crosses threads. A multi-thread runtime's cross-thread
/// wake-ups and work-stealing bookkeeping cost about a tenth of the small-GET
/// throughput here (BENCHMARKS.md).
fn runtimes(workers: Option<usize>) -> Result<(tokio::runtime::Runtime, Workers)> {
    if let Some(n) = workers {
        anyhow::ensure!(n >= 1, "--workers must be at least 1");
    }
    let n = workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // Before any table (and so any pool) exists.
    crate::proxy::pool::set_workers(n);
    let main = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let mut extra = Workers::default();
    for i in 1..n {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("switchyard-worker-{i}"))
            .spawn(move || {
                crate::proxy::pool::set_worker(i);
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => {
                        let _ = tx.send(Ok(rt.handle().clone()));
                        rt.block_on(async {
                            let _ = stopped.await;
                        });
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })
            .context("cannot start a worker thread")?;
        let handle = rx
            .recv()
            .context("a worker thread ended at start")?
            .context("cannot start a worker's runtime")?;
        extra.0.push(Worker {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        });
    }
    Ok((main, extra))
}

/// The extra workers' threads; dropping this stops them (after the proxy has
/// finished with its connections).
#[derive(Default)]
struct Workers(Vec<Worker>);

struct Worker {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Workers {
    fn handles(&self) -> Vec<tokio::runtime::Handle> {
        self.0.iter().map(|w| w.handle.clone()).collect()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `SIGHUP` reloads the TLS listeners' certificates (elsewhere than Unix: never).
async fn reload_on_hangup(reloader: crate::tls::TlsReloader) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; TLS reload only through the admin API");
                return;
            }
        };
        while hup.recv().await.is_some() {
            let r = reloader.clone();
            match tokio::task::spawn_blocking(move || r.reload()).await {
                Ok(Ok(n)) => info!(listeners = n, "SIGHUP: TLS certificates reloaded"),
                Ok(Err(e)) => tracing::warn!(error = %e, "SIGHUP: TLS reload failed"),
                Err(e) => tracing::warn!(error = %e, "SIGHUP: TLS reload failed"),
            }
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await;
}

/// Where the proxy's first listener and the admin API ended up listening.
struct Bound {
    listener: Option<SocketAddr>,
    admin: Option<SocketAddr>,
}

/// `SIGUSR1` reopens the access logs (logrotate's convention, as nginx's).
fn reopen_access_logs_on_usr1() -> Option<tokio::task::JoinHandle<()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut usr1 = match signal(SignalKind::user_defined1()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGUSR1; reopen access logs through the admin API");
                return None;
            }
        };
        Some(tokio::spawn(async move {
            while usr1.recv().await.is_some() {
                let n = crate::proxy::access_log::reopen_all().await.unwrap_or(0);
                info!(access_logs = n, "SIGUSR1: access logs reopened");
            }
        }))
    }
    #[cfg(not(unix))]
    None
}

/// SIGTERM or SIGINT. The handlers are installed when this is called, not when
/// the future is first polled: a signal that arrives after the readiness lines
/// but before the serve loop then stops the process gracefully instead of
/// killing it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{Signal, SignalKind, signal};
        let install = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, signal = name, "cannot listen for the signal");
                None
            }
        };
        let mut term = install(SignalKind::terminate(), "SIGTERM");
        let mut int = install(SignalKind::interrupt(), "SIGINT");
        async fn recv(s: &mut Option<Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        async move {
            tokio::select! {
                _ = recv(&mut term) => {}
                _ = recv(&mut int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Builds the table from the config and the saved state. A state file that
/// cannot be read stops the start (naming the file), unless told to set it aside.
fn open_table(cfg: &Config, state_file: Option<PathBuf>, discard_bad: bool) -> Result<Table> {
    let Some(path) = state_file else {
        return Ok(Table::open(cfg, None)?);
    };
    let store = Arc::new(FileStore::new(&path));
    match Table::open(cfg, Some(store.clone() as Arc<dyn StateStore>)) {
        Ok(t) => Ok(t),
        Err(e) if is_bad_state(&e) => {
            if !discard_bad {
                anyhow::bail!(
                    "{e}\n(fix or remove the file, or start with --discard-bad-state to move it aside and start from the configuration)"
                );
            }
            let aside = store
                .set_aside()
                .with_context(|| format!("cannot move {} aside", path.display()))?;
            warn!(file = %path.display(), aside = %aside.display(), error = %e, "state file unreadable; moved aside, starting from the configuration");
            Ok(Table::open(cfg, Some(store as Arc<dyn StateStore>))?)
        }
        Err(e) => Err(e.into()),
    }
}

fn is_bad_state(e: &OpenError) -> bool {
    matches!(
        e,
        OpenError::State(StateError::Corrupt { .. } | StateError::Read { .. })
            | OpenError::BadState { .. }
    )
}

/// Serves `cfg`; `file` is where it came from (`run -c FILE`): then `SIGHUP`
/// and `POST /api/v1/reload` reload it, else `SIGHUP` reloads TLS certificates.
async fn serve(
    cfg: Config,
    file: Option<PathBuf>,
    admin: Option<SocketAddr>,
    state: StateArgs,
    workers: &Workers,
    ready: impl FnOnce(Bound),
) -> Result<ExitCode> {
    for warning in cfg.warnings() {
        tracing::warn!("{warning}");
    }
    let admin_cfg = admin_config(&cfg, admin)?;
    let state_file = state
        .state_file
        .or_else(|| admin_cfg.as_ref().and_then(|a| a.state_file.clone()));
    let (table, leadership) = serve_table(&cfg, state_file.as_ref(), state.discard_bad_state)?;
    // Names with `resolve = true` are looked up before the listeners open, so
    // the first requests find their servers; a name server that does not
    // answer delays the start by twice its timeout, 5 s at most.
    let mut discovery = crate::discovery::spawn(&cfg, Arc::clone(&table), leadership);
    // A saved table may hold servers of entries the file no longer has.
    discovery.remove_orphans(&cfg).await;
    if !discovery.is_empty() {
        let wait = (cfg.resolver.timeout * 2).min(std::time::Duration::from_secs(5));
        discovery.first_round(wait).await;
    }
    // A reload starts, changes and stops DNS entries too.
    let discovery = Arc::new(tokio::sync::Mutex::new(discovery));
    let shutdown = shutdown_signal();
    // Before the listeners print their lines: a SIGUSR1 from then on reopens
    // the access logs instead of ending the process (its default action).
    let usr1 = reopen_access_logs_on_usr1();
    let proxy = Proxy::bind_with_workers(&cfg, Arc::clone(&table), workers.handles()).await?;
    let checker = crate::health::active::spawn(Arc::clone(&table));
    for (addr, tls) in proxy.local_addrs().into_iter().zip(proxy.tls_flags()) {
        let scheme = if tls { "https" } else { "http" };
        println!("switchyard: listening on {scheme}://{addr}");
    }
    let (reload_tx, hup) = reloading(file, &cfg, &table, &proxy, &discovery);
    let bound = Bound {
        listener: proxy.local_addrs().first().copied(),
        admin: match &admin_cfg {
            Some(a) => start_admin(a, &table, &proxy, reload_tx)?,
            None => None,
        },
    };
    if let Some(path) = &state_file {
        info!(file = %path.display(), "changes are saved to the state file");
    }
    ready(bound);
    let outcome = proxy.run(shutdown).await;
    if let Some(h) = usr1 {
        h.abort();
    }
    // Lines still buffered go out before the process ends.
    crate::proxy::access_log::flush_all(std::time::Duration::from_secs(2));
    checker.abort();
    drop(discovery);
    if let Some(h) = hup {
        h.abort();
    }
    match outcome {
        Shutdown::Clean => info!("stopped; every in-flight request finished"),
        Shutdown::GraceExpired(n) => info!(cut = n, "stopped; grace period expired"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The admin settings in force: the file's `[admin]`, its address replaced by
/// `--admin`. An exposed admin listener is refused here, before anything else
/// happens: no listener bound, no state file read or set aside.
fn admin_config(cfg: &Config, admin: Option<SocketAddr>) -> Result<Option<AdminConfig>> {
    let admin_cfg = match (admin, &cfg.admin) {
        (Some(addr), Some(c)) => Some(AdminConfig {
            listen: addr,
            ..c.clone()
        }),
        (Some(addr), None) => Some(AdminConfig::new(addr)),
        (None, c) => c.clone(),
    };
    if let Some(a) = &admin_cfg {
        crate::admin::Access::from_config(a).check_exposure(a.listen)?;
    }
    Ok(admin_cfg)
}

/// The table `serve` runs: shared through etcd with `[cluster]` (the state
/// file, if any, its local cache), else from the configuration and the state
/// file.
/// Also who resolves DNS names: this instance alone, or in a fleet the
/// holder of each upstream's resolver lease.
fn serve_table(
    cfg: &Config,
    state_file: Option<&PathBuf>,
    discard_bad_state: bool,
) -> Result<(Arc<Table>, Arc<dyn Leadership>)> {
    let Some(cluster) = &cfg.cluster else {
        let table = open_table(cfg, state_file.cloned(), discard_bad_state)?;
        return Ok((Arc::new(table), Arc::new(crate::discovery::Alone)));
    };
    let cache = state_file.map(FileStore::new);
    if cache.is_none() {
        warn!(
            "[cluster] without a state file: a restart while etcd is unreachable comes back with the configuration, not the shared table (set [admin] state_file)"
        );
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let instance = format!("{host} pid {}", std::process::id());
    let store = crate::cluster::ClusterStore::new(cluster, cache, instance)?;
    let table = Arc::new(Table::open(
        cfg,
        Some(Arc::clone(&store) as Arc<dyn StateStore>),
    )?);
    store.start(&table);
    // Every upstream of the file, not only those with DNS entries now: a
    // reload may give one an entry, and only a lease holder resolves it.
    let leases = store.resolver_leases(cfg.upstreams.keys().cloned().collect());
    Ok((table, Arc::new(LeaseHolder(leases))))
}

/// In a fleet, an upstream's names are resolved by the instance that holds
/// its lease in etcd (`cluster::lease`).
struct LeaseHolder(Arc<crate::cluster::ResolverLeases>);

impl Leadership for LeaseHolder {
    fn is_resolver(&self, upstream: &str) -> bool {
        self.0.holds(upstream)
    }
}

/// What reloads what: with a file, the reloader (`SIGHUP` and the channel
/// `POST /api/v1/reload` sends on); without one, `SIGHUP` reloads the TLS
/// listeners' certificates, when there are any.
fn reloading(
    file: Option<PathBuf>,
    cfg: &Config,
    table: &Arc<Table>,
    proxy: &Proxy,
    discovery: &Arc<tokio::sync::Mutex<crate::discovery::Discovery>>,
) -> (
    Option<tokio::sync::mpsc::Sender<crate::reload::ReloadRequest>>,
    Option<tokio::task::JoinHandle<()>>,
) {
    match file {
        Some(path) => {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let reloader =
                crate::reload::Reloader::new(path, cfg.clone(), Arc::clone(table), proxy.handle())
                    .with_discovery(Arc::clone(discovery));
            (Some(tx), Some(tokio::spawn(reloader.run(rx))))
        }
        None => {
            let reloader = proxy.tls_reloader();
            let hup = (!reloader.is_empty()).then(|| tokio::spawn(reload_on_hangup(reloader)));
            (None, hup)
        }
    }
}

/// Binds and starts the admin API on its own thread; its bound address.
fn start_admin(
    a: &AdminConfig,
    table: &Arc<Table>,
    proxy: &Proxy,
    reload_tx: Option<tokio::sync::mpsc::Sender<crate::reload::ReloadRequest>>,
) -> Result<Option<SocketAddr>> {
    let server =
        AdminServer::bind_with_reload(a, Arc::clone(table), proxy.tls_reloader(), reload_tx)?
            .with_readiness(proxy.readiness());
    let addr = server.local_addr();
    if let Some(addr) = addr {
        println!("switchyard: admin API on http://{addr}");
    }
    server.spawn()?;
    Ok(addr)
}

async fn demo(
    listen: SocketAddr,
    admin: SocketAddr,
    ports: Vec<u16>,
    mut state: StateArgs,
    workers: &Workers,
) -> Result<ExitCode> {
    anyhow::ensure!(
        ports.len() == 3,
        "--backend-ports takes three ports (alpha,bravo,charlie), got {}",
        ports.len()
    );
    let mut backends = [listen; 3];
    for ((slot, name), port) in backends.iter_mut().zip(crate::demo::BACKENDS).zip(&ports) {
        *slot = crate::demo::spawn_backend(name, *port)
            .await
            .with_context(|| format!("cannot start the demo backend {name} on 127.0.0.1:{port}"))?;
    }
    let text = crate::demo::config_text(listen, &backends);
    let cfg = config::parse(&text, "<demo>").map_err(|e| anyhow::anyhow!("{e}"))?;
    // The demo keeps its table across restarts, like a real deployment.
    if state.state_file.is_none() {
        state.state_file = Some(
            std::env::temp_dir().join(format!("switchyard-demo-{}.state.json", listen.port())),
        );
    }
    let state_note = state
        .state_file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    println!(
        "switchyard demo: backends alpha={} bravo={} charlie={} (backup)",
        backends[0], backends[1], backends[2]
    );
    println!("--- configuration in use ---\n{}---", text.trim_start());
    serve(cfg, None, Some(admin), state, workers, move |bound| {
        // The addresses as bound: port 0 asks the system for one.
        let listen = bound.listener.unwrap_or(listen);
        let admin = bound.admin.unwrap_or(admin);
        let ctl = format!("switchyard ctl --admin http://{admin}");
        println!("Try:");
        println!("  for i in 1 2 3 4 5 6; do curl -s http://{listen}/; done   # alpha twice as often as bravo");
        println!("  {ctl} list demo");
        println!("  {ctl} down demo {}                      # traffic leaves alpha at once", backends[0]);
        println!("  {ctl} up demo {}", backends[0]);
        println!("  curl -s 'http://{admin}/ups_api?ups=demo&act=list'       # the seed's API");
        println!("  curl -s -X POST http://{}/_demo/fail                # bravo's health check fails: unhealthy in 2s", backends[1]);
        println!("  curl -s http://{admin}/healthcheck                         # the status page");
        println!("  curl -s -X POST http://{}/_demo/recover", backends[1]);
        println!("  curl -s http://{admin}/api/9/http/upstreams/demo/servers  # NGINX Plus API");
        println!("  open http://{admin}/ in a browser                         # the live dashboard");
        println!("Changes are saved in {state_note}; restart the demo and they are still there.");
        println!("Ctrl-C stops the demo (in-flight requests finish first).");
    })
    .await
}
