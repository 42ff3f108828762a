//! The I/O engine contract and what its implementations share. One file per engine:
//! `uring.rs` (io_uring) and `threads.rs` (a pool of threads doing preadv/pwritev, for hosts
//! where io_uring is disabled or missing: QEMU's `aio=threads`).
//!
//! An engine serves one open file. Operations are submitted with an opaque `u64` token and
//! complete in any order; the engine signals completions on an eventfd the machine's event
//! loop watches, and the owner then drains [`IoEngine::next_completion`]. Every operation
//! completes exactly once, with the number of bytes transferred or the errno the host
//! returned (EIO, ENOSPC, ... kept in `io::Error::raw_os_error`). Short reads and writes are
//! continued inside the engine; a read past the end of the file reads zeroes.

pub mod threads;
pub mod uring;

use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, OnceLock};

use crate::{AlignedBuf, BlockError, IoBuffers};

/// A finished operation: its token and the bytes transferred (0 for flush, discard and
/// write-zeroes) or the host error.
pub type Completion = (u64, io::Result<u32>);

/// An asynchronous I/O engine over one file.
pub trait IoEngine: Send {
    /// Short name for logs and `query-block` ("io_uring", "threads").
    fn name(&self) -> &'static str;

    /// The eventfd that becomes readable when completions may be waiting. Level
    /// semantics are the engine's business: draining `next_completion` until `None`
    /// re-arms it.
    fn completion_fd(&self) -> RawFd;

    /// Reads `bufs.len()` bytes at `offset` into `bufs`.
    fn read_vectored(&mut self, offset: u64, bufs: IoBuffers, token: u64)
        -> Result<(), BlockError>;

    /// Writes `bufs` at `offset`.
    fn write_vectored(
        &mut self,
        offset: u64,
        bufs: IoBuffers,
        token: u64,
    ) -> Result<(), BlockError>;

    /// Makes every write completed before this call durable (fdatasync).
    fn flush(&mut self, token: u64) -> Result<(), BlockError>;

    /// Deallocates a range, keeping the file size (fallocate PUNCH_HOLE|KEEP_SIZE); the
    /// range reads back as zeroes. EOPNOTSUPP is reported, not hidden: the caller decides.
    fn discard(&mut self, offset: u64, len: u64, token: u64) -> Result<(), BlockError>;

    /// Zeroes a range (fallocate ZERO_RANGE|KEEP_SIZE, or writing zeroes where the file
    /// system cannot).
    fn write_zeroes(&mut self, offset: u64, len: u64, token: u64) -> Result<(), BlockError>;

    /// Hands everything queued so far to the kernel or the workers. Engines may batch
    /// submissions until this call, so call it after a batch (e.g. at the end of a queue
    /// notification). `next_completion` and `wait_idle` also submit what is queued.
    fn submit(&mut self) -> Result<(), BlockError>;

    /// The next finished operation, if any. Call until `None` after the eventfd fires.
    fn next_completion(&mut self) -> Option<Completion>;

    /// Operations submitted and not yet returned by `next_completion`.
    fn in_flight(&self) -> usize;

    /// Blocks until every submitted operation has finished; their completions stay
    /// queued for `next_completion`.
    fn wait_idle(&mut self) -> Result<(), BlockError>;

    /// Writes to the completion eventfd, so the owner's event loop comes back to
    /// `next_completion` (used for completions produced without the engine).
    fn notify(&self);
}

/// One operation as the engines keep it until it completes.
pub(crate) enum Op {
    Read { offset: u64, bufs: IoBuffers },
    Write { offset: u64, bufs: IoBuffers },
    Flush,
    Discard { offset: u64, len: u64 },
    WriteZeroes { offset: u64, len: u64 },
}

/// The kernel refuses more segments than this in one preadv/pwritev/readv SQE; longer
/// lists are transferred in pieces by the short-transfer continuation.
pub(crate) const IOV_MAX: usize = 1024;

pub(crate) const FALLOC_DISCARD: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
pub(crate) const FALLOC_ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

/// Size of the shared zero buffer that write-zeroes falls back to writing.
const ZERO_CHUNK: usize = 1 << 20;

/// Whether an errno from fallocate means "this file system cannot do it", so
/// write-zeroes should write zeroes instead.
pub(crate) fn fallocate_unsupported(errno: i32) -> bool {
    errno == libc::EOPNOTSUPP || errno == libc::ENOTTY || errno == libc::ENODEV
}

/// Buffers covering `len` bytes of zeroes, all pointing at one shared read-only buffer
/// (aligned for O_DIRECT).
pub(crate) fn zero_buffers(len: u64) -> io::Result<IoBuffers> {
    static ZERO: OnceLock<Option<Arc<AlignedBuf>>> = OnceLock::new();
    let buf = ZERO
        .get_or_init(|| AlignedBuf::new(ZERO_CHUNK, 4096).ok().map(Arc::new))
        .clone()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
    let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut iovecs = Vec::with_capacity(len.div_ceil(ZERO_CHUNK));
    let mut left = len;
    while left > 0 {
        let n = left.min(ZERO_CHUNK);
        iovecs.push(libc::iovec {
            iov_base: buf.as_ptr().cast(),
            iov_len: n,
        });
        left -= n;
    }
    let keep: Arc<dyn std::any::Any + Send + Sync> = buf;
    // SAFETY: every iovec points into the shared zero buffer, which `keep` keeps alive; it
    // is only ever written to by its zeroed allocation (engines only write *from* it).
    unsafe { IoBuffers::from_raw(iovecs, Some(keep)) }
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn cvt(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

fn to_off(offset: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// preadv until `bufs` is full; zeroes what lies past the end of the file.
pub(crate) fn read_sync(fd: RawFd, mut offset: u64, mut bufs: IoBuffers) -> io::Result<u32> {
    let total = bufs.len();
    while !bufs.is_empty() {
        let iov = bufs.iovecs();
        let cnt = iov.len().min(IOV_MAX) as libc::c_int;
        // SAFETY: the iovecs describe live, writable memory (IoBuffers invariant).
        let r = cvt(unsafe { libc::preadv(fd, iov.as_ptr(), cnt, to_off(offset)?) });
        match r {
            Ok(0) => bufs.zero_fill(),
            Ok(n) => {
                bufs.advance(n);
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total as u32)
}

/// pwritev until all of `bufs` is written.
pub(crate) fn write_sync(fd: RawFd, mut offset: u64, mut bufs: IoBuffers) -> io::Result<u32> {
    let total = bufs.len();
    while !bufs.is_empty() {
        let iov = bufs.iovecs();
        let cnt = iov.len().min(IOV_MAX) as libc::c_int;
        // SAFETY: the iovecs describe live, readable memory (IoBuffers invariant).
        let r = cvt(unsafe { libc::pwritev(fd, iov.as_ptr(), cnt, to_off(offset)?) });
        match r {
            // No progress and no error: report it rather than spin.
            Ok(0) => return Err(io::Error::from_raw_os_error(libc::EIO)),
            Ok(n) => {
                bufs.advance(n);
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total as u32)
}

pub(crate) fn fallocate_sync(fd: RawFd, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let off = to_off(offset)?;
    let len = to_off(len)?;
    loop {
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::fallocate(fd, mode, off, len) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

pub(crate) fn fdatasync_sync(fd: RawFd) -> io::Result<()> {
    loop {
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::fdatasync(fd) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Runs one operation synchronously (the thread pool's workers).
pub(crate) fn run_sync(fd: RawFd, op: Op) -> io::Result<u32> {
    match op {
        Op::Read { offset, bufs } => read_sync(fd, offset, bufs),
        Op::Write { offset, bufs } => write_sync(fd, offset, bufs),
        Op::Flush => fdatasync_sync(fd).map(|()| 0),
        Op::Discard { offset, len } => fallocate_sync(fd, FALLOC_DISCARD, offset, len).map(|()| 0),
        Op::WriteZeroes { offset, len } => match fallocate_sync(fd, FALLOC_ZERO, offset, len) {
            Ok(()) => Ok(0),
            Err(e) if e.raw_os_error().is_some_and(fallocate_unsupported) => {
                write_sync(fd, offset, zero_buffers(len)?).map(|_| 0)
            }
            Err(e) => Err(e),
        },
    }
}

#[cfg(test)]
mod tests;
