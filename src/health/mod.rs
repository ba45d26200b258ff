//! Health: what is observed about servers, as opposed to what operators asked for.
//!
//! This module writes health state only — today the passive failure accounting in
//! [`passive`] — and never touches a server's admin state, which belongs to the
//! operator (see `upstream::AdminState`).

pub mod passive;
