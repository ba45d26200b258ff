//! Importing other proxies' configurations: today nginx and OpenResty
//! (`switchyard import nginx FILE`).
//!
//! An import reads the foreign files (following `include` as nginx does),
//! translates what has a switchyard equivalent into a TOML configuration whose
//! comments name where each part came from, and reports every directive it did
//! not translate, with its place and why. The output is plain text: it is then
//! checked by `config` like any other file, never trusted because it was
//! generated.
//!
//! Owns: the readers of foreign syntaxes and their translation. Does not touch a
//! running table or the network.

mod emit;
mod lexer;
mod lua;
pub mod nginx;

pub use lexer::SyntaxError;

/// A directive that was not translated (or only in part), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// `file:line`.
    pub place: String,
    /// The directive as written (name and arguments).
    pub directive: String,
    pub why: String,
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.place, self.directive, self.why)
    }
}

/// What an import produced: the configuration, and the report.
#[derive(Debug, Clone)]
pub struct Imported {
    pub toml: String,
    pub notes: Vec<Note>,
}

/// Why nothing could be produced.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Syntax(#[from] SyntaxError),
    #[error("bad include pattern at {place}: {message}")]
    Include { place: String, message: String },
    #[error("nothing to translate: {0}")]
    Nothing(String),
}
