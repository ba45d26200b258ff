//! The upstream table (skeleton).
pub mod balance;
