//! The QMP-facing side of host I/O errors: the `rerror=`/`werror=` policy, the
//! BLOCK_IO_ERROR event the device hands to the machine, and the handler trait through
//! which it does.
//!
//! Pure types: nothing here touches the device or guest memory.

use std::io;
use std::str::FromStr;

/// What to do when the host fails a request: QEMU's `rerror=`/`werror=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// The guest sees an I/O error (QEMU's default for reads).
    Report,
    /// The guest sees success.
    Ignore,
    /// The request is held and the VM paused until `cont`.
    Stop,
    /// Stop on ENOSPC, report anything else (QEMU's default for writes).
    Enospc,
}

impl ErrorPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorPolicy::Report => "report",
            ErrorPolicy::Ignore => "ignore",
            ErrorPolicy::Stop => "stop",
            ErrorPolicy::Enospc => "enospc",
        }
    }

    /// What this policy does with an error of `errno`.
    pub fn action_for(self, errno: Option<i32>) -> IoErrorAction {
        match self {
            ErrorPolicy::Report => IoErrorAction::Report,
            ErrorPolicy::Ignore => IoErrorAction::Ignore,
            ErrorPolicy::Stop => IoErrorAction::Stop,
            ErrorPolicy::Enospc if errno == Some(libc::ENOSPC) => IoErrorAction::Stop,
            ErrorPolicy::Enospc => IoErrorAction::Report,
        }
    }
}

impl FromStr for ErrorPolicy {
    type Err = VirtioBlockError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "report" => ErrorPolicy::Report,
            "ignore" => ErrorPolicy::Ignore,
            "stop" => ErrorPolicy::Stop,
            "enospc" => ErrorPolicy::Enospc,
            _ => return Err(VirtioBlockError::ErrorPolicy(s.to_string())),
        })
    }
}

/// The QAPI `IoOperationType` of BLOCK_IO_ERROR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOperation {
    Read,
    Write,
}

impl IoOperation {
    pub fn as_str(self) -> &'static str {
        match self {
            IoOperation::Read => "read",
            IoOperation::Write => "write",
        }
    }
}

/// The QAPI `BlockErrorAction` of BLOCK_IO_ERROR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoErrorAction {
    Report,
    Ignore,
    Stop,
}

impl IoErrorAction {
    pub fn as_str(self) -> &'static str {
        match self {
            IoErrorAction::Report => "report",
            IoErrorAction::Ignore => "ignore",
            IoErrorAction::Stop => "stop",
        }
    }
}

/// One host I/O error, as QMP BLOCK_IO_ERROR carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockIoError {
    /// The device id given in [`VirtioBlockConfig::id`].
    pub device: String,
    pub operation: IoOperation,
    pub action: IoErrorAction,
    /// The error was ENOSPC.
    pub nospace: bool,
    /// The host errno (0 if the error had none).
    pub errno: i32,
    /// strerror of `errno`, e.g. "No space left on device".
    pub reason: String,
}

/// How the device tells the machine about host I/O errors. Called once per failed
/// request, for every action (QEMU emits BLOCK_IO_ERROR for report and ignore too).
/// When `error.action` is `Stop` the request is held: the machine must pause the VM into
/// the `io-error` run state, and call [`VirtioBlock::retry_held`] when it resumes.
/// Called on the thread that runs the device's `process_event`; must not call back into
/// the device.
pub trait BlockErrorHandler: Send + Sync {
    fn io_error(&self, error: &BlockIoError);
}

/// "No space left on device", without io::Error's " (os error 28)".
pub(super) fn strerror(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VirtioBlockError {
    #[error("num-queues={0}: virtio-blk needs between 1 and 1024 queues")]
    NumQueues(u16),
    #[error("queue-size={0}: must be a power of two between 2 and 32768")]
    QueueSize(u16),
    #[error("unknown error policy '{0}': expected report, ignore, stop or enospc")]
    ErrorPolicy(String),
    #[error("invalid virtio-blk state: {0}")]
    InvalidState(String),
}
