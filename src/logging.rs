//! Logging: the process's one tracing subscriber, set up once at start, and the
//! small `Display` helpers that log fields use.
//!
//! This module owns what the log on stderr looks like and how much of it there is:
//! - Level: `--log-level`, else `[log] level` of the config file, else `RUST_LOG`,
//!   else `info`.
//! - Format: `--log-format`, else `[log] format`, else `text`. `json` writes one
//!   JSON object per line: `timestamp`, `level`, `target`, and `fields` (the
//!   `message` and the event's fields).
//! - Colour: text only, and only when stderr is a terminal and `NO_COLOR` is not
//!   set, so a log sent to a file or a pipe carries no escape codes.
//!
//! Log fields print values, not Rust syntax: strings and addresses with `%`,
//! options through [`or_dash`] (`old=-` for none) and lists through [`joined`],
//! so a line reads `server=127.0.0.1:9001 old=-`, never `Some("…")`.

use std::fmt;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat, LogLevel};

/// The filter used when nothing else says.
const DEFAULT_LEVEL: &str = "info";

/// Whether [`init`] chose JSON lines, for [`fatal`].
static JSON: AtomicBool = AtomicBool::new(false);

/// Sets up logging to stderr: `flags` (the command line) win over `file` (the
/// config file's `[log]`), which wins over `RUST_LOG`. Call once, before
/// anything logs; a second call changes nothing.
pub fn init(flags: &LogConfig, file: Option<&LogConfig>) {
    let none = LogConfig::default();
    let file = file.unwrap_or(&none);
    let env = std::env::var("RUST_LOG").ok();
    let format = flags.format.or(file.format).unwrap_or_default();
    let chosen = level(flags, file, env.as_deref());
    let (filter, ignored) = match EnvFilter::builder().parse(chosen) {
        Ok(f) => (f, None),
        // Only RUST_LOG can get here: the flag and the file are checked when read.
        Err(e) => (EnvFilter::new(DEFAULT_LEVEL), Some((chosen.to_string(), e))),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(format, std::io::stderr().is_terminal()));
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
    // An error means a subscriber is already set: the first one stays.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Some((rust_log, error)) = ignored {
        tracing::warn!(%rust_log, %error, "RUST_LOG is not a valid filter; logging at {DEFAULT_LEVEL}");
    }
}

/// Reports the error that ends the process on stderr: `switchyard: ERROR` as
/// text, or, when the log is JSON, an `error` line like every other, so that a
/// log shipper reads the reason too (unless the level filters errors out: the
/// reason is never lost).
pub fn fatal(error: &dyn fmt::Display) {
    if JSON.load(Ordering::Relaxed) && tracing::enabled!(tracing::Level::ERROR) {
        tracing::error!(%error, "switchyard stopped");
    } else {
        eprintln!("switchyard: {error}");
    }
}

/// The filter in force: the flag's, the file's, `RUST_LOG` (when not blank), or
/// the default.
fn level<'a>(flags: &'a LogConfig, file: &'a LogConfig, env: Option<&'a str>) -> &'a str {
    flags
        .level
        .as_ref()
        .or(file.level.as_ref())
        .map(LogLevel::as_str)
        .or(env.filter(|e| !e.trim().is_empty()))
        .unwrap_or(DEFAULT_LEVEL)
}

/// Whether to colour: text on a terminal, unless `NO_COLOR` asks not to
/// (<https://no-color.org>).
fn colour(format: LogFormat, terminal: bool) -> bool {
    format == LogFormat::Text
        && terminal
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// An optional log field value: the value itself, or `-` when there is none.
#[derive(Debug, Clone, Copy)]
pub struct OrDash<'a, T>(&'a Option<T>);

/// `field = %or_dash(&option)`: prints `field=value` or `field=-`.
pub fn or_dash<T: fmt::Display>(v: &Option<T>) -> OrDash<'_, T> {
    OrDash(v)
}

impl<T: fmt::Display> fmt::Display for OrDash<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// A list as a log field value: its items separated by commas, or `-` when it
/// is empty.
#[derive(Debug, Clone, Copy)]
pub struct Joined<'a, T>(&'a [T]);

/// `field = %joined(&list)`: prints `field=a,b` or `field=-`.
pub fn joined<T: fmt::Display>(v: &[T]) -> Joined<'_, T> {
    Joined(v)
}

impl<T: fmt::Display> fmt::Display for Joined<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("-");
        }
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            v.fmt(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(format: Option<LogFormat>, level: Option<&str>) -> LogConfig {
        LogConfig {
            format,
            level: level.map(|l| LogLevel::parse(l).unwrap()),
        }
    }

    #[test]
    fn the_flag_beats_the_file_beats_rust_log_beats_info() {
        let none = LogConfig::default();
        let flag = log(None, Some("warn"));
        let file = log(None, Some("debug"));
        assert_eq!(level(&flag, &file, Some("trace")), "warn");
        assert_eq!(level(&none, &file, Some("trace")), "debug");
        assert_eq!(level(&none, &none, Some("trace")), "trace");
        assert_eq!(level(&none, &none, Some("  ")), "info");
        assert_eq!(level(&none, &none, None), "info");
        // A format alone in the file leaves the level to RUST_LOG.
        assert_eq!(
            level(&none, &log(Some(LogFormat::Json), None), Some("error")),
            "error"
        );
    }

    #[test]
    fn every_accepted_level_is_a_filter_tracing_takes() {
        for l in [
            "trace",
            "OFF",
            "warn,switchyard::admin=debug",
            "hyper=error",
        ] {
            let l = LogLevel::parse(l).unwrap();
            assert!(EnvFilter::builder().parse(l.as_str()).is_ok(), "{l}");
        }
    }

    #[test]
    fn colour_only_for_text_on_a_terminal() {
        assert!(!colour(LogFormat::Text, false));
        assert!(!colour(LogFormat::Json, true));
        assert!(!colour(LogFormat::Json, false));
        if std::env::var_os("NO_COLOR").is_none() {
            assert!(colour(LogFormat::Text, true));
        }
    }

    #[test]
    fn options_and_lists_print_as_values() {
        let addr = Some("127.0.0.1:9001".to_string());
        assert_eq!(or_dash(&addr).to_string(), "127.0.0.1:9001");
        assert_eq!(or_dash(&None::<String>).to_string(), "-");
        assert_eq!(or_dash(&Some(7)).to_string(), "7");
        assert_eq!(joined(&["a", "b c"]).to_string(), "a,b c");
        assert_eq!(joined::<String>(&[]).to_string(), "-");
    }
}
