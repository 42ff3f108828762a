//! Cancelling a transport from another thread, and the exec child's lifetime.
//!
//! A [`Canceller`] shares one [`Cancel`] with the streams of one migration. `cancel()`
//! sets a flag that every read, write and accept checks, then runs the hooks the
//! transport registered to wake what is blocked in the kernel: `shutdown(2)` on a
//! duplicate of each socket, a byte into the wake pipe a blocked accept polls, and
//! SIGKILL to the exec child's process group. Hooks are idempotent and a hook added after
//! the cancel runs at once, so a channel opened late is cancelled too.
//!
//! Invariant: the exec child is reaped only under its slot's lock, and the slot is
//! emptied when it is, so a kill never reaches a recycled pid.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The error a cancelled read, write or accept returns.
fn cancelled_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "Migration cancelled")
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What `cancel()` does besides setting the flag.
pub(super) enum Hook {
    /// `shutdown(SHUT_RDWR)` on this duplicate of a socket: blocked reads see EOF and
    /// blocked writes fail with EPIPE.
    Shutdown(OwnedFd),
    /// Write a byte to this end of a socket pair; a blocked accept polls the other end.
    Wake(UnixStream),
    /// Kill the exec child's process group.
    Kill(Arc<ChildSlot>),
}

impl Hook {
    fn run(&self) {
        match self {
            Hook::Shutdown(fd) => {
                // SAFETY: `fd` is an open descriptor owned by this hook for the whole
                // call; shutdown(2) reads no memory of ours. A failure (ENOTCONN: the
                // peer is gone already) leaves nothing to wake.
                unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
            }
            Hook::Wake(stream) => {
                // Non-blocking; a full buffer already holds a wake-up byte.
                let _ = (&*stream).write(&[1]);
            }
            Hook::Kill(slot) => slot.kill(),
        }
    }
}

/// The shared cancel state of one migration's streams.
#[derive(Default)]
pub(super) struct Cancel {
    cancelled: AtomicBool,
    hooks: Mutex<Vec<Hook>>,
}

impl Cancel {
    pub(super) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    pub(super) fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        for hook in lock(&self.hooks).iter() {
            hook.run();
        }
    }

    /// Registers a hook; runs it at once if the cancel already happened.
    pub(super) fn add(&self, hook: Hook) {
        let mut hooks = lock(&self.hooks);
        // Checked under the lock: cancel() sets the flag before it takes the lock, so
        // either it sees this hook or this sees its flag.
        if self.is_cancelled() {
            hook.run();
        }
        hooks.push(hook);
    }

    /// Registers `shutdown` on a duplicate of `socket`.
    pub(super) fn add_shutdown(&self, socket: BorrowedFd<'_>) -> io::Result<()> {
        self.add(Hook::Shutdown(socket.try_clone_to_owned()?));
        Ok(())
    }
}

/// A handle another thread uses to cancel a migration's transport: blocked writes and
/// reads fail promptly, a blocked accept returns, the exec child is killed.
#[derive(Clone)]
pub struct Canceller(pub(super) Arc<Cancel>);

impl std::fmt::Debug for Canceller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Canceller")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl Canceller {
    /// Cancels; calling it again does nothing more.
    pub fn cancel(&self) {
        self.0.cancel();
    }

    /// Whether `cancel()` was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }
}

/// A stream that fails with "Migration cancelled" once its [`Cancel`] is set, whatever
/// the underlying error (EPIPE, EOF) the cancel hook caused.
pub(super) struct Guarded<T> {
    pub(super) inner: T,
    pub(super) cancel: Arc<Cancel>,
}

impl<T: Write> Write for Guarded<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(cancelled_error());
        }
        match self.inner.write(buf) {
            Err(_) if self.cancel.is_cancelled() => Err(cancelled_error()),
            other => other,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.cancel.is_cancelled() {
            return Err(cancelled_error());
        }
        self.inner.flush()
    }
}

impl<T: Read> Read for Guarded<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(cancelled_error());
        }
        match self.inner.read(buf) {
            _ if self.cancel.is_cancelled() => Err(cancelled_error()),
            other => other,
        }
    }
}

/// The exec child: killed by a cancel or a drop, reaped by `wait` or the drop.
pub(super) struct ChildSlot {
    child: Mutex<Option<Child>>,
}

impl ChildSlot {
    /// Takes a child spawned as the leader of its own process group.
    pub(super) fn new(child: Child) -> Self {
        ChildSlot {
            child: Mutex::new(Some(child)),
        }
    }

    /// SIGKILL to the child's process group (the shell and whatever it started), if the
    /// child is not reaped yet.
    pub(super) fn kill(&self) {
        if let Some(child) = lock(&self.child).as_ref() {
            let Ok(pgid) = libc::pid_t::try_from(child.id()) else {
                return;
            };
            // SAFETY: kill(2) takes no memory. The child is not reaped while the lock is
            // held and the slot is full, so its pid, which is its process group's id,
            // still names this group.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }

    /// Blocks until the child exits, without holding the lock (so a cancel can still
    /// kill it), then reaps it. None if it was reaped already.
    pub(super) fn wait(&self) -> io::Result<Option<ExitStatus>> {
        let Some(pid) = lock(&self.child).as_ref().map(Child::id) else {
            return Ok(None);
        };
        let pid = libc::id_t::from(pid);
        loop {
            // SAFETY: siginfo_t is plain data that waitid fills; all zeroes is a valid
            // value of it.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: `info` is a valid, writable siginfo_t for the call. WNOWAIT leaves
            // the child unreaped, so its pid stays valid until `Child::wait` below.
            let rc =
                unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
            if rc == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        let mut slot = lock(&self.child);
        match slot.take() {
            Some(mut child) => child.wait().map(Some),
            None => Ok(None),
        }
    }
}

impl ChildSlot {
    /// Kills and reaps the child unless it was reaped already: what an abandoned
    /// transport does, so that no exec child outlives it or stays a zombie.
    pub(super) fn kill_and_reap(&self) {
        self.kill();
        if let Some(mut child) = lock(&self.child).take() {
            let _ = child.wait();
        }
    }
}

/// Blocks until `fd` is readable (a connection to accept) or the wake end is, which a
/// cancel makes it. Retries on EINTR.
pub(super) fn wait_readable(fd: BorrowedFd<'_>, wake: &UnixStream) -> io::Result<()> {
    let mut fds = [
        libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd for the call and both descriptors
        // stay open while it runs (borrowed from their owners).
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
