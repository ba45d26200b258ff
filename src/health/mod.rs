//! Health: what is observed about servers, as opposed to what operators asked for.
//!
//! This module writes health state only — the passive failure accounting in
//! [`passive`] and the active checks in [`active`] — and never touches a server's
//! admin state, which belongs to the operator (see `upstream::AdminState`).

pub mod active;
pub mod passive;
