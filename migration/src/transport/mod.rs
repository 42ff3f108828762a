//! Migration transports: QEMU's migration URIs, to be turned into connected byte streams
//! for the source and the destination. So far the URIs themselves: [`parse`] and
//! [`MigrationUri`], which name no host resource yet.

mod uri;

#[cfg(test)]
mod tests;

use std::io;

pub use uri::{parse, MigrationUri};

/// A transport failure, worded for the user (QEMU's wording where it has one).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    message: String,
    kind: Option<io::ErrorKind>,
}

impl TransportError {
    fn new(message: impl Into<String>) -> Self {
        TransportError {
            message: message.into(),
            kind: None,
        }
    }

    /// The kind of the OS error behind this one, if there is one.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        self.kind
    }
}
