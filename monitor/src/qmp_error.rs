//! Errors a QMP client can see: the five QEMU error classes (`ErrorClass`), the error
//! answered on the wire (`QmpError`) and the machine's failures (`MachineError`), which
//! reach a client as a `GenericError`.
//!
//! The bottom of the crate: it uses no other module, so every module can answer with a
//! `QmpError` without depending on the embedding API's [`Error`](crate::Error), which
//! wraps errors from higher modules (the run-state table).

use serde::Serialize;

/// The five error classes QEMU puts on the wire (qmp-protocol.md §6.1). Strict clients
/// (the `qapi` crate) refuse anything else, so there is deliberately no sixth variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ErrorClass {
    GenericError,
    CommandNotFound,
    DeviceNotActive,
    DeviceNotFound,
    KVMMissingCap,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotActive => "DeviceNotActive",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
            ErrorClass::KVMMissingCap => "KVMMissingCap",
        }
    }
}

/// An error answered to a QMP client: `{"error": {"class": ..., "desc": ...}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{desc}")]
pub struct QmpError {
    pub class: ErrorClass,
    pub desc: String,
}

impl QmpError {
    pub fn new(class: ErrorClass, desc: impl Into<String>) -> Self {
        QmpError {
            class,
            desc: desc.into(),
        }
    }

    pub fn generic(desc: impl Into<String>) -> Self {
        Self::new(ErrorClass::GenericError, desc)
    }

    pub fn command_not_found(desc: impl Into<String>) -> Self {
        Self::new(ErrorClass::CommandNotFound, desc)
    }

    pub fn device_not_found(desc: impl Into<String>) -> Self {
        Self::new(ErrorClass::DeviceNotFound, desc)
    }

    pub fn device_not_active(desc: impl Into<String>) -> Self {
        Self::new(ErrorClass::DeviceNotActive, desc)
    }

    pub fn kvm_missing_cap(desc: impl Into<String>) -> Self {
        Self::new(ErrorClass::KVMMissingCap, desc)
    }
}

/// Failures of the machine behind the `Machine` trait, as the vmm reports them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineError {
    /// The machine cannot do this at all (no such device, not on this target...).
    /// QEMU's wording, so clients that match on it keep working.
    #[error("this feature or command is not currently supported")]
    Unsupported,
    /// The operation was attempted and failed; the text goes to the client as is.
    #[error("{0}")]
    Failed(String),
}

impl From<MachineError> for QmpError {
    fn from(e: MachineError) -> Self {
        QmpError::generic(e.to_string())
    }
}
