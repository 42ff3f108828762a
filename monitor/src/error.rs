//! Errors: the crate's own error type for mistakes made by the embedding code (the vmm),
//! which never reach a client as such. It wraps the errors of the lower modules (the
//! run-state table's `TransitionError`, and the QMP-visible errors of the `qmp_error`
//! module, re-exported here so `monitor::error::QmpError` etc. keep their paths).
//!
//! It sits above `runstate`: the lower modules answer with `QmpError` from `qmp_error`
//! and never name this module.

pub use crate::qmp_error::{ErrorClass, MachineError, QmpError};

/// Errors of the embedding API: bugs or races in the caller, not client input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("no session with id {0}: it was never connected or has been disconnected")]
    UnknownSession(u64),
    #[error("command '{0}' is already registered; register each command once")]
    DuplicateCommand(String),
    #[error("event '{0}' is already registered; register each event once")]
    DuplicateEvent(String),
    #[error(transparent)]
    RunState(#[from] crate::runstate::TransitionError),
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error("{0}")]
    Qmp(#[from] QmpError),
}
