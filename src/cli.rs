//! The command line: parse arguments, build the pieces, run them. Errors end here
//! as messages for a person, with a non-zero exit.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tracing::info;

use crate::config::{self, Config, ServerConfig};
use crate::proxy::{Proxy, Shutdown};
use crate::upstream::Table;

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A reverse proxy and load balancer whose upstream table is live"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
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
    },
    /// A one-line proxy without a configuration file.
    Proxy {
        #[arg(long, value_name = "ADDR")]
        listen: SocketAddr,
        /// A server to balance to (repeat for more).
        #[arg(long = "to", value_name = "ADDR", required = true)]
        to: Vec<String>,
        /// Where the admin API will listen.
        #[arg(long, value_name = "ADDR")]
        admin: Option<SocketAddr>,
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Start three demo backends and a proxy in front of them, on loopback.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:18080")]
        admin: SocketAddr,
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Validate a configuration file and print every problem with its place.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check { config } => Ok(check(&config)),
        Command::Run { config, workers } => {
            let cfg = config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            let workers = workers.or(cfg.runtime.workers);
            runtime(workers)?.block_on(serve(cfg, None, || ()))
        }
        Command::Proxy {
            listen,
            to,
            admin,
            workers,
        } => {
            let servers = to.into_iter().map(ServerConfig::new).collect();
            let cfg = Config::single_upstream(listen, servers);
            runtime(workers)?.block_on(serve(cfg, admin, || ()))
        }
        Command::Demo {
            listen,
            admin,
            workers,
        } => runtime(workers)?.block_on(demo(listen, admin)),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(cfg) => {
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

fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        anyhow::ensure!(n >= 1, "--workers must be at least 1");
        b.worker_threads(n);
    }
    b.enable_all().build().context("cannot start the runtime")
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn serve(cfg: Config, admin: Option<SocketAddr>, ready: impl FnOnce()) -> Result<ExitCode> {
    let table = Arc::new(Table::from_config(&cfg)?);
    let proxy = Proxy::bind(&cfg, Arc::clone(&table)).await?;
    for addr in proxy.local_addrs() {
        println!("switchyard: listening on http://{addr}");
    }
    if let Some(addr) = admin.or(cfg.admin.as_ref().map(|a| a.listen)) {
        println!("switchyard: admin API on {addr} is not available in this version yet");
    }
    ready();
    match proxy.run(shutdown_signal()).await {
        Shutdown::Clean => info!("stopped; every in-flight request finished"),
        Shutdown::GraceExpired(n) => info!(cut = n, "stopped; grace period expired"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn demo(listen: SocketAddr, admin: SocketAddr) -> Result<ExitCode> {
    let mut backends = [listen; 3];
    for (slot, name) in backends.iter_mut().zip(crate::demo::BACKENDS) {
        *slot = crate::demo::spawn_backend(name)
            .await
            .context("cannot start a demo backend")?;
    }
    let text = crate::demo::config_text(listen, &backends);
    let cfg = config::parse(&text, "<demo>").map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "switchyard demo: backends alpha={} bravo={} charlie={} (backup)",
        backends[0], backends[1], backends[2]
    );
    println!("--- configuration in use ---\n{}---", text.trim_start());
    serve(cfg, None, move || {
        println!("Try:");
        println!(
            "  for i in 1 2 3 4 5 6; do curl -s http://{listen}/; done   # alpha twice as often as bravo"
        );
        println!(
            "  curl -si --http2-prior-knowledge http://{listen}/            # HTTP/2 cleartext works too"
        );
        println!(
            "Admin API ({admin}): not available in this version yet; it arrives with the live upstream API."
        );
        println!("Ctrl-C stops the demo (in-flight requests finish first).");
    })
    .await
}
