//! `switchyard ctl`: the admin API from the shell. This module owns the command
//! line of `ctl` and what each command asks of the API; [`client`] owns the HTTP
//! calls and the exit codes of failures, [`table`] the human output.
//!
//! Exit codes: 0 success, 1 the API refused (4xx), 2 usage error, 3 the admin
//! API cannot be reached, 4 a `--wait` ran out with requests still active,
//! 5 the admin API failed (5xx).

pub mod client;
pub mod table;

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use client::{AdminUrl, Client, CtlError, exit, segment};
use table::{Server, Upstream, server_name};

/// Arguments of `switchyard ctl`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit codes: 0 done; 1 the API refused (its error code and message on stderr); \
2 usage error; 3 cannot reach the admin API; 4 a --wait ran out with requests \
still active; 5 the admin API failed (5xx).")]
pub struct CtlArgs {
    /// The admin API's base URL: http://HOST:PORT[/PREFIX].
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "SWITCHYARD_ADMIN",
        default_value = "http://127.0.0.1:18080"
    )]
    pub admin: String,
    /// Sent as `Authorization: Bearer TOKEN`.
    #[arg(
        long,
        global = true,
        value_name = "TOKEN",
        env = "SWITCHYARD_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Print the API's JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// What `ctl` does.
#[derive(Debug, clap::Subcommand)]
pub enum CtlCommand {
    /// Show all upstreams, or one, with their servers.
    List { upstream: Option<String> },
    /// Put servers back in rotation (all or none).
    Up(ChangeArgs),
    /// Take servers out of rotation at once (all or none).
    Down(ChangeArgs),
    /// Stop sending new requests to servers; in-flight ones finish (all or none).
    Drain(ChangeArgs),
    /// Add a server to an upstream; prints its id.
    Add {
        upstream: String,
        #[arg(value_name = "ADDR")]
        addr: String,
        #[arg(long, value_name = "N")]
        weight: Option<u32>,
        /// Only used when every primary server is unavailable.
        #[arg(long)]
        backup: bool,
        #[arg(long, value_name = "N")]
        max_conns: Option<u32>,
        #[arg(long, value_name = "N")]
        max_fails: Option<u32>,
        #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
        fail_timeout: Option<Duration>,
        /// Add it in state `down`.
        #[arg(long)]
        down: bool,
    },
    /// Remove a server from an upstream.
    Remove {
        upstream: String,
        /// An id or an address.
        #[arg(value_name = "SERVER")]
        server: String,
    },
    /// Set a server's weight.
    Weight {
        upstream: String,
        /// An id or an address.
        #[arg(value_name = "SERVER")]
        server: String,
        #[arg(value_name = "N")]
        weight: u32,
    },
}

/// Arguments of `up`, `down` and `drain`.
#[derive(Debug, clap::Args)]
pub struct ChangeArgs {
    pub upstream: String,
    /// Ids or addresses; changed in one atomic batch.
    #[arg(value_name = "SERVER", required = true)]
    pub servers: Vec<String>,
    /// Then wait (at most this long, e.g. 30s) until no request is in flight on
    /// them; exit 4 if some still are.
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub wait: Option<Duration>,
}

fn duration_arg(s: &str) -> Result<Duration, crate::admin::views::DurationError> {
    crate::admin::views::parse_duration(s)
}

/// Runs `switchyard ctl`; failures are reported on stderr and become the exit code.
pub fn run(args: CtlArgs) -> anyhow::Result<ExitCode> {
    let base = match AdminUrl::parse(&args.admin) {
        Ok(b) => b,
        Err(e) => return Ok(report(&e)),
    };
    let token = args.token.clone().filter(|t| !t.is_empty());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    Ok(rt.block_on(async move {
        let client = Client::new(base, token);
        match execute(&client, &args).await {
            Ok(code) => ExitCode::from(code),
            Err(e) => report(&e),
        }
    }))
}

fn report(e: &CtlError) -> ExitCode {
    let _ = writeln!(std::io::stderr().lock(), "switchyard ctl: {e}");
    ExitCode::from(e.exit_code())
}

/// Writes a line to stdout; a closed pipe is not worth a panic.
fn say(text: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

fn warn(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "switchyard ctl: {text}");
}

fn upstream_path(upstream: &str) -> String {
    format!("/api/v1/upstreams/{}", segment(upstream))
}

fn server_path(upstream: &str, server: &str) -> String {
    format!("{}/servers/{}", upstream_path(upstream), segment(server))
}

/// A server reference as the batch takes it: a number is an id.
fn server_ref(s: &str) -> Value {
    match s.parse::<u32>() {
        Ok(id) => json!(id),
        Err(_) => json!(s),
    }
}

/// The one batch that sets `state` on every server.
pub fn state_batch(upstream: &str, servers: &[String], state: &str) -> Value {
    let operations: Vec<Value> = servers
        .iter()
        .map(|s| {
            json!({
                "op": "patch",
                "upstream": upstream,
                "server": server_ref(s),
                "set": { "state": state },
            })
        })
        .collect();
    json!({ "operations": operations })
}

/// The body of `add`.
pub fn new_server(command: &CtlCommand) -> Option<Value> {
    let CtlCommand::Add {
        addr,
        weight,
        backup,
        max_conns,
        max_fails,
        fail_timeout,
        down,
        ..
    } = command
    else {
        return None;
    };
    let mut body = serde_json::Map::new();
    body.insert("addr".into(), json!(addr));
    if let Some(w) = weight {
        body.insert("weight".into(), json!(w));
    }
    if *backup {
        body.insert("backup".into(), json!(true));
    }
    if let Some(n) = max_conns {
        body.insert("max_conns".into(), json!(n));
    }
    if let Some(n) = max_fails {
        body.insert("max_fails".into(), json!(n));
    }
    if let Some(d) = fail_timeout {
        body.insert(
            "fail_timeout".into(),
            json!(crate::admin::views::duration(*d)),
        );
    }
    if *down {
        body.insert("state".into(), json!("down"));
    }
    Some(Value::Object(body))
}

#[derive(Deserialize)]
struct BatchAnswer {
    servers: Vec<Server>,
}

async fn execute(client: &Client, args: &CtlArgs) -> Result<u8, CtlError> {
    match &args.command {
        CtlCommand::List { upstream } => list(client, upstream.as_deref(), args.json).await,
        CtlCommand::Up(c) => change(client, c, "up", args.json).await,
        CtlCommand::Down(c) => change(client, c, "down", args.json).await,
        CtlCommand::Drain(c) => change(client, c, "drain", args.json).await,
        cmd @ CtlCommand::Add { upstream, .. } => {
            let body = new_server(cmd).unwrap_or_default();
            let path = format!("{}/servers", upstream_path(upstream));
            let answer = client.post(&path, &body).await?;
            if args.json {
                say(&answer.text());
            } else {
                let s: Server = answer.json(&client.base().join(&path))?;
                say(&s.id.to_string());
            }
            Ok(exit::OK)
        }
        CtlCommand::Remove { upstream, server } => {
            let path = server_path(upstream, server);
            let answer = client.delete(&path).await?;
            if args.json {
                say(&answer.text());
            } else {
                let s: Server = answer.json(&client.base().join(&path))?;
                say(&format!("{upstream}: removed {}", server_name(&s)));
            }
            Ok(exit::OK)
        }
        CtlCommand::Weight {
            upstream,
            server,
            weight,
        } => {
            let path = server_path(upstream, server);
            let url = client.base().join(&path);
            let before: Server = client.get(&path).await?.json(&url)?;
            let answer = client
                .patch(&path, &json!({ "weight": weight }), Duration::ZERO)
                .await?;
            if args.json {
                say(&answer.text());
            } else {
                let s: Server = answer.json(&url)?;
                say(&format!(
                    "{upstream}: {}: weight {} -> {}",
                    server_name(&s),
                    before.weight,
                    s.weight
                ));
            }
            Ok(exit::OK)
        }
    }
}

async fn list(client: &Client, upstream: Option<&str>, json: bool) -> Result<u8, CtlError> {
    let path = match upstream {
        Some(u) => upstream_path(u),
        None => "/api/v1/upstreams".to_string(),
    };
    let answer = client.get(&path).await?;
    if json {
        say(&answer.text());
        return Ok(exit::OK);
    }
    let url = client.base().join(&path);
    let ups: Vec<Upstream> = match upstream {
        Some(_) => vec![answer.json(&url)?],
        None => answer.json(&url)?,
    };
    let text = table::render(&ups);
    say(text.trim_end());
    Ok(exit::OK)
}

/// `up`, `down`, `drain`: one batch, then the optional wait.
async fn change(client: &Client, c: &ChangeArgs, state: &str, json: bool) -> Result<u8, CtlError> {
    let up_path = upstream_path(&c.upstream);
    // Only to show what changed; the batch below decides.
    let before: Upstream = client
        .get(&up_path)
        .await?
        .json(&client.base().join(&up_path))?;
    let answer = client
        .post(
            "/api/v1/batch",
            &state_batch(&c.upstream, &c.servers, state),
        )
        .await
        .map_err(|e| name_operation(e, &c.servers))?;
    let changed: BatchAnswer = answer.json(&client.base().join("/api/v1/batch"))?;
    if json {
        say(&answer.text());
    } else {
        for s in &changed.servers {
            let was = before
                .servers
                .iter()
                .find(|b| b.id == s.id)
                .map(|b| b.state.as_str());
            let what = match was {
                Some(w) if w == s.state => format!("already {}", s.state),
                Some(w) => format!("{w} -> {}", s.state),
                None => s.state.clone(),
            };
            say(&format!("{}: {}: {what}", c.upstream, server_name(s)));
        }
    }
    let Some(wait) = c.wait else {
        return Ok(exit::OK);
    };
    wait_idle(client, &c.upstream, &changed.servers, state, wait, json).await
}

/// Says which SERVER argument a failing batch operation was about.
fn name_operation(e: CtlError, servers: &[String]) -> CtlError {
    match e {
        CtlError::Refused {
            status,
            code,
            message,
            index: Some(i),
        } => CtlError::Refused {
            status,
            code,
            message: match servers.get(i) {
                Some(s) => format!("{message} (server argument {s:?}; nothing was changed)"),
                None => message,
            },
            index: None,
        },
        other => other,
    }
}

/// Asks the API to hold a PATCH (same state again) until each server is idle, all
/// at once and within one deadline.
async fn wait_idle(
    client: &Client,
    upstream: &str,
    servers: &[Server],
    state: &str,
    wait: Duration,
    json: bool,
) -> Result<u8, CtlError> {
    let deadline = Instant::now() + wait;
    let body = json!({ "state": state });
    let calls = servers.iter().map(|s| {
        let left = deadline.saturating_duration_since(Instant::now());
        let path = format!(
            "{}?wait={}ms",
            server_path(upstream, &s.id.to_string()),
            left.as_millis()
        );
        let body = &body;
        async move {
            let answer = client.patch(&path, body, left).await?;
            let view: Server = answer.json(&client.base().join(&path))?;
            Ok::<_, CtlError>((answer.status, view))
        }
    });
    let results = futures_util::future::join_all(calls).await;
    let mut busy = 0;
    for r in results {
        let (status, s) = r?;
        if status == StatusCode::ACCEPTED && s.active > 0 {
            busy += 1;
            warn(&format!(
                "{upstream}: {}: still {} request(s) in flight after {}",
                server_name(&s),
                s.active,
                crate::admin::views::duration(wait)
            ));
        } else if !json {
            say(&format!("{upstream}: {}: idle", server_name(&s)));
        }
    }
    Ok(if busy > 0 {
        exit::STILL_ACTIVE
    } else {
        exit::OK
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<CtlArgs, clap::Error> {
        let mut all = vec!["switchyard", "ctl"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all)?.command {
            Command::Ctl(a) => Ok(a),
            other => panic!("not ctl: {other:?}"),
        }
    }

    #[test]
    fn global_options_go_before_or_after_the_command() {
        let a = parse(&["--admin", "http://h:1", "list", "demo", "--json"]).unwrap();
        assert_eq!(a.admin, "http://h:1");
        assert!(a.json);
        assert!(matches!(a.command, CtlCommand::List { upstream: Some(ref u) } if u == "demo"));
        let a = parse(&["list", "--token", "t"]).unwrap();
        assert_eq!(a.token.as_deref(), Some("t"));
        assert!(matches!(a.command, CtlCommand::List { upstream: None }));
    }

    #[test]
    fn drain_takes_several_servers_and_a_wait() {
        let a = parse(&["drain", "demo", "1", "10.0.0.2:80", "--wait", "30s"]).unwrap();
        let CtlCommand::Drain(c) = a.command else {
            panic!("not drain")
        };
        assert_eq!(c.servers, ["1", "10.0.0.2:80"]);
        assert_eq!(c.wait, Some(Duration::from_secs(30)));
    }

    #[test]
    fn usage_errors_exit_2() {
        for args in [
            &["down", "demo"][..],
            &["drain", "demo", "1", "--wait", "soon"],
            &["weight", "demo", "1", "heavy"],
            &["frobnicate"],
            &["add", "demo"],
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn batch_has_one_operation_per_server() {
        let body = state_batch("demo", &["2".into(), "10.0.0.1:80".into()], "down");
        assert_eq!(
            body,
            json!({"operations": [
                {"op": "patch", "upstream": "demo", "server": 2, "set": {"state": "down"}},
                {"op": "patch", "upstream": "demo", "server": "10.0.0.1:80", "set": {"state": "down"}},
            ]})
        );
    }

    #[test]
    fn add_sends_only_what_was_given() {
        let a = parse(&["add", "demo", "10.0.0.9:80"]).unwrap();
        assert_eq!(new_server(&a.command), Some(json!({"addr": "10.0.0.9:80"})));
        let a = parse(&[
            "add",
            "demo",
            "10.0.0.9:80",
            "--weight",
            "3",
            "--backup",
            "--max-conns",
            "10",
            "--max-fails",
            "2",
            "--fail-timeout",
            "1m",
            "--down",
        ])
        .unwrap();
        assert_eq!(
            new_server(&a.command),
            Some(json!({"addr": "10.0.0.9:80", "weight": 3, "backup": true,
                "max_conns": 10, "max_fails": 2, "fail_timeout": "1m", "state": "down"}))
        );
    }

    #[test]
    fn paths_encode_their_segments() {
        assert_eq!(
            server_path("my up", "[::1]:80"),
            "/api/v1/upstreams/my%20up/servers/%5B::1%5D:80"
        );
    }

    #[test]
    fn failing_operation_names_its_argument() {
        let e = name_operation(
            CtlError::Refused {
                status: StatusCode::NOT_FOUND,
                code: "ServerNotFound".into(),
                message: "no server 9".into(),
                index: Some(1),
            },
            &["1".into(), "9".into()],
        );
        assert_eq!(
            e.to_string(),
            "ServerNotFound: no server 9 (server argument \"9\"; nothing was changed)"
        );
    }
}
