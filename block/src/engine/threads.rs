//! The thread-pool engine (`aio=threads`): a few worker threads take operations from a
//! channel and run them with preadv/pwritev/fdatasync/fallocate; finished operations go to
//! a shared queue and the eventfd is written, the same contract as io_uring. Concurrency is
//! the worker count; any number of operations may be queued.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{run_sync, Completion, IoEngine, Op};
use crate::{BlockError, IoBuffers};

/// Worker threads started when the caller does not say (QEMU's pool grows to 64; a
/// handful keeps a device busy without flooding a 2-core host).
pub const DEFAULT_THREADS: usize = 4;

struct Job {
    op: Op,
    token: u64,
}

struct Shared {
    done: Mutex<VecDeque<Completion>>,
    /// Signalled whenever `done` grows, for `wait_idle`.
    grew: Condvar,
    eventfd: EventFd,
}

impl Shared {
    fn done(&self) -> MutexGuard<'_, VecDeque<Completion>> {
        self.done.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct ThreadPoolEngine {
    jobs: Option<Sender<Job>>,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    ready: VecDeque<Completion>,
    /// Submitted and not yet moved to `ready`.
    in_workers: usize,
    _file: Arc<File>,
}

impl ThreadPoolEngine {
    /// Serves `file` with `threads` workers (at least one).
    pub fn new(file: File, threads: usize) -> Result<Self, BlockError> {
        let eventfd = EventFd::new(EFD_NONBLOCK).map_err(BlockError::EventFd)?;
        let shared = Arc::new(Shared {
            done: Mutex::new(VecDeque::new()),
            grew: Condvar::new(),
            eventfd,
        });
        let file = Arc::new(file);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut engine = ThreadPoolEngine {
            jobs: Some(tx),
            shared,
            workers: Vec::new(),
            ready: VecDeque::new(),
            in_workers: 0,
            _file: file.clone(),
        };
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let shared = engine.shared.clone();
            let file = file.clone();
            let handle = std::thread::Builder::new()
                .name(format!("blk-io-{i}"))
                .spawn(move || worker(&rx, &shared, &file))
                // Dropping `engine` on this path stops the workers already started.
                .map_err(BlockError::Thread)?;
            engine.workers.push(handle);
        }
        Ok(engine)
    }

    fn queue(&mut self, op: Op, token: u64) -> Result<(), BlockError> {
        let tx = self.jobs.as_ref().ok_or(BlockError::EngineGone)?;
        tx.send(Job { op, token })
            .map_err(|_| BlockError::EngineGone)?;
        self.in_workers += 1;
        Ok(())
    }

    fn collect(&mut self) {
        let mut done = self.shared.done();
        self.in_workers -= done.len().min(self.in_workers);
        self.ready.extend(done.drain(..));
    }
}

fn worker(rx: &Mutex<Receiver<Job>>, shared: &Shared, file: &File) {
    let fd: RawFd = file.as_raw_fd();
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
            rx.recv()
        };
        let Ok(Job { op, token }) = job else {
            return; // the engine is gone and the channel drained
        };
        let result = run_sync(fd, op);
        shared.done().push_back((token, result));
        shared.grew.notify_all();
        // Only fails if the counter would overflow, and then it is readable anyway.
        let _ = shared.eventfd.write(1);
    }
}

impl IoEngine for ThreadPoolEngine {
    fn name(&self) -> &'static str {
        "threads"
    }

    fn completion_fd(&self) -> RawFd {
        self.shared.eventfd.as_raw_fd()
    }

    fn read_vectored(
        &mut self,
        offset: u64,
        bufs: IoBuffers,
        token: u64,
    ) -> Result<(), BlockError> {
        self.queue(Op::Read { offset, bufs }, token)
    }

    fn write_vectored(
        &mut self,
        offset: u64,
        bufs: IoBuffers,
        token: u64,
    ) -> Result<(), BlockError> {
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
        // Jobs go to the workers as they are queued.
        Ok(())
    }

    fn next_completion(&mut self) -> Option<Completion> {
        if let Some(c) = self.ready.pop_front() {
            return Some(c);
        }
        // Reset the eventfd before looking, so a completion landing after the look
        // fires it again.
        let _ = self.shared.eventfd.read();
        self.collect();
        self.ready.pop_front()
    }

    fn in_flight(&self) -> usize {
        self.in_workers + self.ready.len()
    }

    fn wait_idle(&mut self) -> Result<(), BlockError> {
        loop {
            self.collect();
            if self.in_workers == 0 {
                return Ok(());
            }
            if self.workers.iter().all(|w| w.is_finished()) {
                return Err(BlockError::EngineGone);
            }
            let done = self.shared.done();
            if done.is_empty() {
                // A bounded wait, so a worker that died is noticed above.
                let _ = self
                    .shared
                    .grew
                    .wait_timeout(done, std::time::Duration::from_millis(100));
            }
        }
    }

    fn notify(&self) {
        let _ = self.shared.eventfd.write(1);
    }
}

impl Drop for ThreadPoolEngine {
    fn drop(&mut self) {
        // Closing the channel lets the workers finish what is queued and exit; joining
        // them means no worker touches a buffer after the engine (and its buffers) is gone.
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_threads_means_one() {
        let f = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        let e = ThreadPoolEngine::new(f, 0).unwrap();
        assert_eq!(e.workers.len(), 1);
        assert_eq!(e.name(), "threads");
    }
}
