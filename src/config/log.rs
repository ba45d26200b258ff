//! `[log]`: the log's format and level, and the rules a level must follow. Owns
//! the types only; `crate::logging` puts them together with the command line.

use std::fmt;

/// `[log]`: what the log on stderr looks like and how much of it there is. What
/// the file leaves out, `--log-format`/`--log-level`, `RUST_LOG` and the defaults
/// decide (`crate::logging` puts them together).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogConfig {
    pub format: Option<LogFormat>,
    pub level: Option<LogLevel>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One line of text per event (`format = "text"`, the default).
    #[default]
    Text,
    /// One JSON object per line (`format = "json"`), for log shippers.
    Json,
}

impl LogFormat {
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Which log lines are written: a level (`trace`, `debug`, `info`, `warn`,
/// `error`, `off`), or comma-separated directives as `RUST_LOG` takes them, each
/// a level or `TARGET=LEVEL` (`"warn,switchyard::admin=debug"`). Checked here,
/// so that a misspelt level is an error and not a filter that shows nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLevel(String);

/// A level or directive that is not one: `piece` is the bad part, `whole` the
/// whole text when it had more than that part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad log level {piece:?}{}: expected one of {}, or directives such as \"warn,switchyard::admin=debug\"",
    whole.as_ref().map(|w| format!(" in {w:?}")).unwrap_or_default(),
    LogLevel::LEVELS.join(", ")
)]
pub struct LogLevelError {
    pub piece: String,
    pub whole: Option<String>,
}

impl LogLevel {
    const LEVELS: [&'static str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

    pub fn parse(s: &str) -> Result<LogLevel, LogLevelError> {
        let level = |l: &str| Self::LEVELS.iter().any(|n| l.eq_ignore_ascii_case(n));
        let target = |t: &str| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-:".contains(&b))
        };
        let s = s.trim();
        let mut directives = Vec::new();
        for d in s.split(',').map(str::trim) {
            match d.split_once('=').map(|(t, l)| (t.trim(), l.trim())) {
                None if level(d) => directives.push(d.to_string()),
                Some((t, l)) if target(t) && level(l) => directives.push(format!("{t}={l}")),
                _ => {
                    return Err(LogLevelError {
                        piece: d.to_string(),
                        whole: (d != s).then(|| s.to_string()),
                    });
                }
            }
        }
        Ok(LogLevel(directives.join(",")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
