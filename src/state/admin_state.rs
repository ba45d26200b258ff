//! The operator's word on a server — up, down or drain — as the saved state
//! keeps it. `upstream` re-exports it: it is the table's vocabulary too, but
//! the state must be able to name it without knowing the table.

use serde::{Deserialize, Serialize};

/// What an operator asked for. Orthogonal to health: a check never writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Takes new requests when health allows.
    Up,
    /// Takes no new requests.
    Down,
    /// Takes no new requests; in-flight ones finish.
    Drain,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Up => "up",
            AdminState::Down => "down",
            AdminState::Drain => "drain",
        }
    }
}

/// A word that is not an admin state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state {0:?} (expected up, down or drain)")]
pub struct UnknownAdminState(pub String);

impl std::str::FromStr for AdminState {
    type Err = UnknownAdminState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "up" => Ok(AdminState::Up),
            "down" => Ok(AdminState::Down),
            "drain" | "draining" => Ok(AdminState::Drain),
            other => Err(UnknownAdminState(other.to_string())),
        }
    }
}
