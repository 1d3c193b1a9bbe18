//! Plumbing every Tollgate binary shares: logging set up the same way, the same shutdown
//! signals, and the same exit codes.
#![forbid(unsafe_code)]

pub mod exit;
pub mod logging;
pub mod shutdown;
