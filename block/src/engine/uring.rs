//! The io_uring engine: one ring per disk, an eventfd registered for completions, at most
//! `depth` operations in the kernel at once (more wait in a backlog, so callers never see
//! a full ring). Each operation in the kernel owns a slot whose index is the SQE's
//! user_data; the slot keeps the buffers alive and lets a short read or write, or a
//! write-zeroes the file system cannot fallocate, be continued without the caller noticing.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, squeue, types, IoUring};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    fallocate_unsupported, zero_buffers, Completion, IoEngine, Op, FALLOC_DISCARD, FALLOC_ZERO,
    IOV_MAX,
};
use crate::{BlockError, IoBuffers};

/// Operations in the kernel at once when the caller does not say.
pub const DEFAULT_QUEUE_DEPTH: u32 = 128;

struct Slot {
    token: u64,
    op: Op,
    /// Bytes transferred so far by a read or write.
    done: u64,
    /// A write-zeroes being served by writing zeroes: it completes with 0, not a count.
    zero_write: bool,
}

/// An operation waiting for a free slot.
struct Pending {
    op: Op,
    token: u64,
    zero_write: bool,
}

pub struct IoUringEngine {
    ring: IoUring,
    file: File,
    eventfd: EventFd,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    backlog: VecDeque<Pending>,
    ready: VecDeque<Completion>,
    /// Set after the first EOPNOTSUPP from ZERO_RANGE, to write zeroes straight away.
    zero_range_unsupported: bool,
    /// Scratch for draining the completion queue.
    cqes: Vec<(u64, i32)>,
}

impl IoUringEngine {
    /// Serves `file` with a ring of `depth` entries (clamped to 1..=4096).
    pub fn new(file: File, depth: u32) -> Result<Self, BlockError> {
        let depth = depth.clamp(1, 4096);
        let ring = IoUring::new(depth).map_err(BlockError::IoUringUnavailable)?;
        let eventfd = EventFd::new(EFD_NONBLOCK).map_err(BlockError::EventFd)?;
        ring.submitter()
            .register_eventfd(eventfd.as_raw_fd())
            .map_err(BlockError::IoUringUnavailable)?;
        let n = depth as usize;
        Ok(IoUringEngine {
            ring,
            file,
            eventfd,
            slots: (0..n).map(|_| None).collect(),
            free: (0..n).rev().collect(),
            backlog: VecDeque::new(),
            ready: VecDeque::new(),
            zero_range_unsupported: false,
            cqes: Vec::with_capacity(n),
        })
    }

    /// Whether io_uring can be set up on this host at all (it may be compiled out,
    /// disabled by `kernel.io_uring_disabled`, or refused by a seccomp filter).
    pub fn is_supported() -> bool {
        IoUring::new(2).is_ok()
    }

    fn slots_used(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    fn queue(&mut self, op: Op, token: u64) -> Result<(), BlockError> {
        let (op, zero_write) = match op {
            Op::WriteZeroes { offset, len } if self.zero_range_unsupported => {
                match zero_buffers(len) {
                    Ok(bufs) => (Op::Write { offset, bufs }, true),
                    Err(e) => {
                        self.finish_now(token, Err(e));
                        return Ok(());
                    }
                }
            }
            op => (op, false),
        };
        self.backlog.push_back(Pending {
            op,
            token,
            zero_write,
        });
        self.fill_from_backlog();
        Ok(())
    }

    fn finish_now(&mut self, token: u64, result: io::Result<u32>) {
        self.ready.push_back((token, result));
        self.notify();
    }

    fn fill_from_backlog(&mut self) {
        while let Some(idx) = self.free.last().copied() {
            let Some(p) = self.backlog.pop_front() else {
                break;
            };
            self.free.pop();
            self.slots[idx] = Some(Slot {
                token: p.token,
                op: p.op,
                done: 0,
                zero_write: p.zero_write,
            });
            self.push_sqe(idx);
        }
    }

    fn entry(&self, idx: usize) -> Option<squeue::Entry> {
        let slot = self.slots.get(idx)?.as_ref()?;
        let fd = types::Fd(self.file.as_raw_fd());
        let entry = match &slot.op {
            Op::Read { offset, bufs } => {
                let iov = bufs.iovecs();
                opcode::Readv::new(fd, iov.as_ptr(), iov.len().min(IOV_MAX) as u32)
                    .offset(*offset)
                    .build()
            }
            Op::Write { offset, bufs } => {
                let iov = bufs.iovecs();
                opcode::Writev::new(fd, iov.as_ptr(), iov.len().min(IOV_MAX) as u32)
                    .offset(*offset)
                    .build()
            }
            Op::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            Op::Discard { offset, len } => opcode::Fallocate::new(fd, *len)
                .offset(*offset)
                .mode(FALLOC_DISCARD)
                .build(),
            Op::WriteZeroes { offset, len } => opcode::Fallocate::new(fd, *len)
                .offset(*offset)
                .mode(FALLOC_ZERO)
                .build(),
        };
        Some(entry.user_data(idx as u64))
    }

    /// Queues the SQE for slot `idx`. The submission queue has as many entries as there
    /// are slots, so it is never full; if the kernel says otherwise the operation fails
    /// with EAGAIN rather than being lost.
    fn push_sqe(&mut self, idx: usize) {
        let Some(entry) = self.entry(idx) else {
            return;
        };
        // SAFETY: the SQE points at the slot's iovecs, whose buffers the slot owns until
        // the CQE for `idx` is reaped (and Drop waits for every outstanding CQE).
        let mut pushed = unsafe { self.ring.submission().push(&entry).is_ok() };
        if !pushed {
            let _ = self.ring.submit();
            // SAFETY: as above.
            pushed = unsafe { self.ring.submission().push(&entry).is_ok() };
        }
        if !pushed {
            self.finish_slot(idx, Err(io::Error::from_raw_os_error(libc::EAGAIN)));
            self.notify();
        }
    }

    fn finish_slot(&mut self, idx: usize, result: io::Result<u32>) {
        if let Some(slot) = self.slots.get_mut(idx).and_then(Option::take) {
            self.free.push(idx);
            self.ready.push_back((slot.token, result));
        }
    }

    /// Handles one CQE: finishes the slot or continues it (short transfer, EINTR/EAGAIN,
    /// write-zeroes fallback).
    fn on_cqe(&mut self, user_data: u64, res: i32) {
        let idx = user_data as usize;
        let mut zero_range_unsupported = false;
        let Some(slot) = self.slots.get_mut(idx).and_then(Option::as_mut) else {
            log::warn!("io_uring completion for unknown slot {user_data}");
            return;
        };
        if res == -libc::EINTR || res == -libc::EAGAIN {
            self.push_sqe(idx);
            return;
        }
        let is_write_zeroes = matches!(slot.op, Op::WriteZeroes { .. });
        let outcome: Option<io::Result<u32>> = match &mut slot.op {
            _ if res < 0 && !is_write_zeroes => Some(Err(io::Error::from_raw_os_error(-res))),
            Op::Read { offset, bufs } => {
                if res == 0 {
                    // End of file: the rest reads as zeroes.
                    slot.done += bufs.len() as u64;
                    bufs.zero_fill();
                } else {
                    bufs.advance(res as usize);
                    *offset += res as u64;
                    slot.done += res as u64;
                }
                bufs.is_empty().then_some(Ok(slot.done as u32))
            }
            Op::Write { offset, bufs } => {
                if res == 0 {
                    Some(Err(io::Error::from_raw_os_error(libc::EIO)))
                } else {
                    bufs.advance(res as usize);
                    *offset += res as u64;
                    slot.done += res as u64;
                    let result = if slot.zero_write { 0 } else { slot.done as u32 };
                    bufs.is_empty().then_some(Ok(result))
                }
            }
            Op::Flush | Op::Discard { .. } => Some(Ok(0)),
            Op::WriteZeroes { offset, len } => {
                if res >= 0 {
                    Some(Ok(0))
                } else if fallocate_unsupported(-res) {
                    zero_range_unsupported = true;
                    match zero_buffers(*len) {
                        Ok(bufs) => {
                            slot.op = Op::Write {
                                offset: *offset,
                                bufs,
                            };
                            slot.zero_write = true;
                            None
                        }
                        Err(e) => Some(Err(e)),
                    }
                } else {
                    Some(Err(io::Error::from_raw_os_error(-res)))
                }
            }
        };
        self.zero_range_unsupported |= zero_range_unsupported;
        match outcome {
            Some(result) => self.finish_slot(idx, result),
            None => self.push_sqe(idx),
        }
    }

    fn reap(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(
            self.ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result())),
        );
        for &(user_data, res) in &cqes {
            self.on_cqe(user_data, res);
        }
        self.cqes = cqes;
        self.fill_from_backlog();
    }

    /// Enters the kernel if SQEs are waiting. Transient refusals (EBUSY while the
    /// completion queue is full, EAGAIN, EINTR) leave them queued for the next call.
    fn submit_pending(&mut self) -> io::Result<()> {
        self.fill_from_backlog();
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EBUSY | libc::EAGAIN | libc::EINTR)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

impl IoEngine for IoUringEngine {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn completion_fd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    fn read_vectored(
        &mut self,
        offset: u64,
        bufs: IoBuffers,
        token: u64,
    ) -> Result<(), BlockError> {
        if bufs.is_empty() {
            self.finish_now(token, Ok(0));
            return Ok(());
        }
        self.queue(Op::Read { offset, bufs }, token)
    }

    fn write_vectored(
        &mut self,
        offset: u64,
        bufs: IoBuffers,
        token: u64,
    ) -> Result<(), BlockError> {
        if bufs.is_empty() {
            self.finish_now(token, Ok(0));
            return Ok(());
        }
        self.queue(Op::Write { offset, bufs }, token)
    }

    fn flush(&mut self, token: u64) -> Result<(), BlockError> {
        self.queue(Op::Flush, token)
    }

    fn discard(&mut self, offset: u64, len: u64, token: u64) -> Result<(), BlockError> {
        self.queue(Op::Discard { offset, len }, token)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, token: u64) -> Result<(), BlockError> {
        self.queue(Op::WriteZeroes { offset, len }, token)
    }

    fn submit(&mut self) -> Result<(), BlockError> {
        self.submit_pending().map_err(BlockError::Submit)
    }

    fn next_completion(&mut self) -> Option<Completion> {
        if let Some(c) = self.ready.pop_front() {
            return Some(c);
        }
        let _ = self.eventfd.read();
        self.reap();
        if let Err(e) = self.submit_pending() {
            log::warn!("io_uring submission failed, will retry: {e}");
        }
        self.ready.pop_front()
    }

    fn in_flight(&self) -> usize {
        self.slots_used() + self.backlog.len() + self.ready.len()
    }

    fn wait_idle(&mut self) -> Result<(), BlockError> {
        loop {
            self.reap();
            self.submit_pending().map_err(BlockError::Submit)?;
            if self.slots_used() == 0 && self.backlog.is_empty() {
                return Ok(());
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EBUSY | libc::EAGAIN | libc::EINTR)
                    ) => {}
                Err(e) => return Err(BlockError::Wait(e)),
            }
        }
    }

    fn notify(&self) {
        let _ = self.eventfd.write(1);
    }
}

impl Drop for IoUringEngine {
    fn drop(&mut self) {
        // The kernel may still write into buffers the slots own: wait before freeing them.
        if let Err(e) = self.wait_idle() {
            log::error!("io_uring engine dropped with I/O in flight: {e}");
            // Leak the buffers rather than let the kernel write into freed memory.
            for slot in self.slots.drain(..).flatten() {
                std::mem::forget(slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_range_fallback_is_remembered() {
        if !IoUringEngine::is_supported() {
            eprintln!("io_uring is unavailable on this host: test skipped");
            return;
        }
        let shm = std::path::Path::new("/dev/shm");
        if !shm.is_dir() {
            eprintln!("no /dev/shm tmpfs: test skipped");
            return;
        }
        let t = vmm_sys_util::tempfile::TempFile::new_in(shm).unwrap();
        let f = t.as_file().try_clone().unwrap();
        f.set_len(1 << 20).unwrap();
        let mut e = IoUringEngine::new(f, 4).unwrap();
        e.write_zeroes(0, 8192, 1).unwrap();
        e.wait_idle().unwrap();
        assert_eq!(
            e.next_completion().map(|(t, r)| (t, r.ok())),
            Some((1, Some(0)))
        );
        assert!(e.zero_range_unsupported, "tmpfs refuses ZERO_RANGE");
    }

    #[test]
    fn depth_is_clamped() {
        if !IoUringEngine::is_supported() {
            eprintln!("io_uring is unavailable on this host: test skipped");
            return;
        }
        let f = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        let e = IoUringEngine::new(f, 0).unwrap();
        assert_eq!(e.slots.len(), 1);
        assert_eq!(e.name(), "io_uring");
    }
}
