//! How an image is opened: QEMU's `-drive` options that concern the file (`cache=`,
//! `discard=`, `aio=`, read-only, serial, locking) as [`DiskConfig`] and its mode enums,
//! with QEMU's spellings and defaults. Plain values: nothing here touches a file.

use std::path::PathBuf;
use std::str::FromStr;

use crate::engine::threads::DEFAULT_THREADS;
use crate::engine::uring::DEFAULT_QUEUE_DEPTH;
use crate::BlockError;

/// The unit of virtio-blk addresses and of capacities.
pub const SECTOR_SIZE: u64 = 512;

/// QEMU's `cache=` modes, as the pair (O_DIRECT, O_DSYNC) plus whether flush is honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// O_DIRECT: bypass the host page cache; flush still makes writes durable.
    None,
    /// The host page cache holds writes until the guest flushes (QEMU's default).
    #[default]
    Writeback,
    /// O_DSYNC: every write is durable when it completes.
    Writethrough,
    /// O_DIRECT and O_DSYNC.
    DirectSync,
    /// Like writeback, but guest flushes are ignored: fast and unsafe on host crash.
    Unsafe,
}

impl CacheMode {
    pub fn direct(self) -> bool {
        matches!(self, CacheMode::None | CacheMode::DirectSync)
    }
    pub fn dsync(self) -> bool {
        matches!(self, CacheMode::Writethrough | CacheMode::DirectSync)
    }
    pub fn ignores_flush(self) -> bool {
        self == CacheMode::Unsafe
    }
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::None => "none",
            CacheMode::Writeback => "writeback",
            CacheMode::Writethrough => "writethrough",
            CacheMode::DirectSync => "directsync",
            CacheMode::Unsafe => "unsafe",
        }
    }
}

impl FromStr for CacheMode {
    type Err = BlockError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "none" | "off" => CacheMode::None,
            "writeback" => CacheMode::Writeback,
            "writethrough" => CacheMode::Writethrough,
            "directsync" => CacheMode::DirectSync,
            "unsafe" => CacheMode::Unsafe,
            _ => {
                return Err(BlockError::Option(format!(
                    "cache={s}: expected none, writeback, writethrough, directsync or unsafe"
                )))
            }
        })
    }
}

/// QEMU's `discard=`: whether guest discards punch holes in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiscardMode {
    /// Discards complete successfully and do nothing (QEMU's default).
    #[default]
    Ignore,
    /// Discards deallocate the range (fallocate PUNCH_HOLE).
    Unmap,
}

impl FromStr for DiscardMode {
    type Err = BlockError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ignore" | "off" => Ok(DiscardMode::Ignore),
            "unmap" | "on" => Ok(DiscardMode::Unmap),
            _ => Err(BlockError::Option(format!(
                "discard={s}: expected ignore (off) or unmap (on)"
            ))),
        }
    }
}

/// QEMU's `aio=`: which engine serves the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AioMode {
    /// io_uring where the host allows it, the thread pool otherwise.
    #[default]
    Auto,
    /// io_uring, or fail to open (`aio=io_uring`; `aio=native` maps here too: Linux AIO
    /// is what io_uring replaces).
    IoUring,
    /// The thread pool (`aio=threads`).
    Threads,
}

impl FromStr for AioMode {
    type Err = BlockError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(AioMode::Auto),
            "io_uring" | "native" => Ok(AioMode::IoUring),
            "threads" => Ok(AioMode::Threads),
            _ => Err(BlockError::Option(format!(
                "aio={s}: expected threads, io_uring or native"
            ))),
        }
    }
}

/// How to open an image: what `-drive file=...,readonly=,cache=,discard=,aio=,serial=`
/// says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
    pub cache: CacheMode,
    pub discard: DiscardMode,
    pub aio: AioMode,
    /// io_uring entries (operations in the kernel at once).
    pub queue_depth: u32,
    /// Worker threads of the thread pool.
    pub threads: usize,
    /// The serial the guest reads (virtio-blk GET_ID: at most 20 bytes are shown). `None`
    /// derives a stable one from the image path.
    pub serial: Option<String>,
    /// QEMU-compatible image locking (see [`crate::lock`]).
    pub locking: crate::Locking,
    /// Let other users write the image too (a device's `share-rw=on`).
    pub share_rw: bool,
}

impl DiskConfig {
    /// Defaults for `path`: read-write, cache=writeback, discard=ignore, aio=auto.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DiskConfig {
            path: path.into(),
            read_only: false,
            cache: CacheMode::default(),
            discard: DiscardMode::default(),
            aio: AioMode::default(),
            queue_depth: DEFAULT_QUEUE_DEPTH,
            threads: DEFAULT_THREADS,
            serial: None,
            locking: crate::Locking::Auto,
            share_rw: false,
        }
    }
}
