//! Images and the block graph. Today: raw images served by an asynchronous I/O engine
//! (io_uring, or a small thread pool where io_uring is unavailable), with per-device
//! statistics for `query-blockstats`. qcow2, the node graph, throttling, dirty bitmaps and
//! block-job data movers come later and sit on the same engine contract.
//!
//! The layering, bottom up:
//! - [`IoEngine`]: submits vectored reads/writes, flush, discard and write-zeroes, each
//!   tagged with a caller token, and reports completions after its eventfd fires. One
//!   file per engine: [`IoUringEngine`], [`ThreadPoolEngine`].
//! - [`IoBuffers`]: the memory an operation reads into or writes from, owned by the engine
//!   until the operation completes (guest memory is kept mapped by holding a clone of it).
//! - [`RawImage`]: an opened image: cache and discard modes, O_DIRECT alignment (bounce
//!   buffers for unaligned memory), bounds and read-only checks, statistics.

mod buffers;
pub mod engine;
pub mod lock;
mod raw;
mod stats;

use std::path::PathBuf;

pub use buffers::{AlignedBuf, IoBuffers};
pub use engine::threads::ThreadPoolEngine;
pub use engine::uring::IoUringEngine;
pub use engine::{Completion, IoEngine};
pub use lock::Locking;
pub use raw::{AioMode, CacheMode, DiscardMode, DiskConfig, RawImage, SECTOR_SIZE};
pub use stats::{BlockStats, OpKind, StatsHandle};

/// Everything that can go wrong opening an image or talking to its engine. Failures of a
/// single request are not here: they arrive as that request's completion, with the errno.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk image {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error("cannot determine the size of disk image {path}: {source}")]
    Size {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "io_uring is not available on this host ({0}); use aio=threads to serve the disk \
         from a thread pool instead"
    )]
    IoUringUnavailable(#[source] std::io::Error),
    #[error("cannot create the completion eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("cannot start an I/O worker thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("submitting I/O to the engine failed: {0}")]
    Submit(#[source] std::io::Error),
    #[error("waiting for in-flight I/O failed: {0}")]
    Wait(#[source] std::io::Error),
    #[error("the I/O engine's worker threads are gone; the disk can no longer serve requests")]
    EngineGone,
    #[error("invalid I/O buffer: {0}")]
    Buffer(String),
    #[error("cannot allocate a {len}-byte buffer aligned to {align}")]
    Alloc { len: usize, align: usize },
    #[error("invalid disk option: {0}")]
    Option(String),
}
