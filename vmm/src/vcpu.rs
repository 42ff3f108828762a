//! vCPU threads. Each vCPU is a thread looping on KVM_RUN; the machine steers it through
//! a request word without waiting for the guest to exit on its own: bits are posted,
//! then the thread is kicked with a real-time signal whose handler sets
//! `immediate_exit`, so KVM_RUN returns at once whether the signal lands before or
//! during the ioctl.
//!
//! The run loop's fast path takes no lock: it clears `immediate_exit`, loads the request
//! word once and, if it is zero, enters the guest. Only a non-zero word sends the
//! thread down the slow path, under the `slow` mutex and its condvar:
//!
//! | bit   | set by (machine)        | cleared by               | the vCPU thread, on the slow path          |
//! |-------|-------------------------|--------------------------|--------------------------------------------|
//! | PAUSE | `request_pause`, a fatal exit | `resume`           | finishes the last I/O exit's instruction (one KVM_RUN with `immediate_exit`), KVMCLOCK_CTRL, acks Paused, parks on the condvar until PAUSE clears |
//! | EXIT  | `exit` (and drop)       | never                    | acks Exited, leaves the loop               |
//! | NMI   | `inject_nmi`            | the vCPU thread          | KVM_NMI before the next entry (held while paused) |
//! | REGS  | `registers`             | the vCPU thread (or the asker on time-out) | dumps the registers into `slow.regs`, notifies |
//! | JOB   | `run_job` (save/restore state for migration) | the vCPU thread | runs `slow.job` on its own fd, even while paused |
//! | THROTTLE | `throttle` (auto-converge) | the vCPU thread  | sleeps for its share of the throttle period, off the lock |
//!
//! | ack (under `slow`) | meaning                                   | set when                  |
//! |--------------------|-------------------------------------------|---------------------------|
//! | Starting           | the thread has not yet read the word      | spawn                     |
//! | Running            | the thread may be in KVM_RUN              | leaving the slow path     |
//! | Paused             | parked on the condvar                     | PAUSE seen                |
//! | Exited             | gone                                      | EXIT seen                 |
//!
//! A poster sets the bit first, then reads `ack` under the lock: a parked thread
//! re-reads the word when the condvar wakes it, and a Running one either sees the bit
//! at its next load or has `immediate_exit` set by the kick before it enters the guest
//! (it clears `immediate_exit` before the load, never after). KVM_NMI and KVM_GET_REGS
//! are issued by the vCPU's own thread: from another they would wait on KVM's vCPU
//! mutex until the guest exits.
//!
//! Exits are dispatched to the port and MMIO buses, whose maps are lock-free snapshots
//! (`ArcSwap`): the only lock a vCPU exit takes is the one device's own, briefly.

use std::cell::Cell;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use devices::{Bus, ExitRequest, ExitRequests};
use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::vm_events::VmEvent;
use crate::{ControlEvent, ControlSender};

/// Bits of the request word: what the machine wants of the vCPU thread.
const PAUSE: u32 = 1 << 0;
const EXIT: u32 = 1 << 1;
const NMI: u32 = 1 << 2;
const REGS: u32 = 1 << 3;
const JOB: u32 = 1 << 4;
const THROTTLE: u32 = 1 << 5;

/// Work for the vCPU thread on its own fd (KVM's vCPU ioctls from another thread would
/// wait for the guest to exit).
type Job = Box<dyn FnOnce(&VcpuFd) + Send>;

/// Where the thread is, as acknowledged by the thread itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ack {
    Starting,
    Running,
    Paused,
    Exited,
}

/// The slow path's state, under `Shared::slow`.
struct Slow {
    ack: Ack,
    /// The answer to a REGS request.
    regs: Option<Result<String, String>>,
    /// A JOB request's work, taken by the thread.
    job: Option<Job>,
    /// How long a THROTTLE request sleeps.
    throttle_sleep: std::time::Duration,
}

struct Shared {
    /// The request word (PAUSE | EXIT | NMI | REGS): the one thing the run loop reads
    /// before each KVM_RUN. Zero means: enter the guest.
    req: AtomicU32,
    slow: Mutex<Slow>,
    cv: Condvar,
    tid: AtomicI32,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slow> {
        self.slow.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets request bits, wakes a parked thread and, if it may be in the guest, kicks it
    /// out. The bit is set before the thread's state is read: a thread that acknowledged
    /// Running before this re-reads the word after clearing `immediate_exit`, so either
    /// it sees the bit or the kick's `immediate_exit` stops its next KVM_RUN.
    fn post(&self, bits: u32, thread: Option<&JoinHandle<()>>) {
        self.req.fetch_or(bits, Ordering::SeqCst);
        let c = self.lock();
        let running = c.ack == Ack::Running;
        drop(c);
        self.cv.notify_all();
        if running {
            kick(thread);
        }
    }
}

fn kick(thread: Option<&JoinHandle<()>>) {
    if let Some(t) = thread {
        use std::os::unix::thread::JoinHandleExt;
        // SAFETY: the pthread is alive until joined (we hold its JoinHandle).
        unsafe { libc::pthread_kill(t.as_pthread_t(), SIGRTMIN()) };
    }
}

/// Auto-converge's hold on a vCPU: makes its thread leave the guest and sleep.
///
/// It kicks by thread id with tgkill, which only reaches threads of this process: if
/// the vCPU thread is gone and its id reused by another of our threads, the kick
/// handler finds no `kvm_run` there and does nothing.
#[derive(Clone)]
pub struct ThrottleHandle {
    shared: Arc<Shared>,
    tid: i32,
}

impl ThrottleHandle {
    /// The thread sleeps `sleep` once, at once if it is in the guest.
    pub fn throttle(&self, sleep: std::time::Duration) {
        self.shared.lock().throttle_sleep = sleep;
        self.shared.req.fetch_or(THROTTLE, Ordering::SeqCst);
        let running = self.shared.lock().ack == Ack::Running;
        if running && self.tid > 0 {
            // SAFETY: plain syscall with integer arguments; tgkill targets only a thread
            // of this process group id.
            unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), self.tid, SIGRTMIN()) };
        }
    }
}

/// The machine's handle on one vCPU thread.
pub struct Vcpu {
    index: u8,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

thread_local! {
    /// This thread's `kvm_run` page, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|p| {
        let p = p.get();
        if !p.is_null() {
            // SAFETY: the pointer is this thread's own kvm_run mapping, live for as long as
            // the thread runs its loop (cleared before the VcpuFd is dropped).
            unsafe { std::ptr::write_volatile(&mut (*p).immediate_exit, 1) };
        }
    });
}

/// Installs the kick handler once per process.
pub fn install_kick_handler() -> Result<(), String> {
    register_signal_handler(SIGRTMIN(), kick_handler)
        .map_err(|e| format!("cannot install the vCPU kick signal handler: {e}"))
}

/// Everything a vCPU thread needs besides its fd.
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit_requests: Arc<ExitRequests>,
    pub events: ControlSender,
    /// Generation of the VM this vCPU belongs to: events from an old VM (before a
    /// reset rebuilt it) are ignored by the machine.
    pub generation: u64,
}

impl Vcpu {
    /// Spawns the thread, parked: it runs guest code only after `resume`.
    pub fn spawn(index: u8, name: String, fd: VcpuFd, ctx: VcpuContext) -> std::io::Result<Vcpu> {
        let shared = Arc::new(Shared {
            req: AtomicU32::new(PAUSE),
            slow: Mutex::new(Slow {
                ack: Ack::Starting,
                regs: None,
                job: None,
                throttle_sleep: std::time::Duration::ZERO,
            }),
            cv: Condvar::new(),
            tid: AtomicI32::new(0),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run_thread(index, fd, ctx, s))?;
        let v = Vcpu {
            index,
            shared,
            thread: Some(thread),
        };
        v.wait_for(|a| a != Ack::Starting);
        Ok(v)
    }

    pub fn index(&self) -> u8 {
        self.index
    }

    /// The host thread id (what `query-cpus-fast` reports).
    pub fn thread_id(&self) -> i32 {
        self.shared.tid.load(Ordering::Acquire)
    }

    fn wait_for(&self, done: impl Fn(Ack) -> bool) {
        let mut c = self.shared.lock();
        while !done(c.ack) && c.ack != Ack::Exited {
            c = self.shared.cv.wait(c).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Queues an NMI; the thread injects it before it next enters the guest (a paused
    /// vCPU takes it when resumed, as a real CPU would on leaving its stopped state).
    pub fn inject_nmi(&self) {
        self.shared.post(NMI, self.thread.as_ref());
    }

    /// The vCPU's registers as HMP prints them, read by the vCPU thread itself (it leaves
    /// the guest for a moment if it was running).
    pub fn registers(&self) -> Result<String, String> {
        self.shared.lock().regs = None;
        self.shared.post(REGS, self.thread.as_ref());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut c = self.shared.lock();
        loop {
            if let Some(r) = c.regs.take() {
                return r;
            }
            let now = std::time::Instant::now();
            if now >= deadline || c.ack == Ack::Exited {
                self.shared.req.fetch_and(!REGS, Ordering::SeqCst);
                return Err(format!("vCPU {} did not answer", self.index));
            }
            c = self
                .shared
                .cv
                .wait_timeout(c, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Runs `f` on the vCPU thread with its fd and returns what it returned; the thread
    /// runs it at once if parked, or leaves the guest for it. Used to save and restore
    /// the vCPU's state for migration (with the vCPU paused).
    pub fn run_job<R: Send + 'static>(
        &self,
        f: impl FnOnce(&VcpuFd) -> R + Send + 'static,
    ) -> Result<R, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.shared.lock().job = Some(Box::new(move |fd: &VcpuFd| {
            let _ = tx.send(f(fd));
        }));
        self.shared.post(JOB, self.thread.as_ref());
        rx.recv_timeout(std::time::Duration::from_secs(30))
            .map_err(|_| format!("vCPU {} did not answer", self.index))
    }

    /// A handle that throttles this vCPU from another thread.
    pub fn throttle_handle(&self) -> ThrottleHandle {
        ThrottleHandle {
            shared: self.shared.clone(),
            tid: self.thread_id(),
        }
    }

    /// Asks the thread to pause without waiting (see `wait_paused`).
    pub fn request_pause(&self) {
        self.shared.post(PAUSE, self.thread.as_ref());
    }

    pub fn wait_paused(&self) {
        self.wait_for(|a| a == Ack::Paused);
    }

    pub fn resume(&self) {
        // Clearing PAUSE needs no kick: a running thread has nothing to leave for, and a
        // parked one re-reads the word under the lock when the condvar wakes it.
        self.shared.req.fetch_and(!PAUSE, Ordering::SeqCst);
        let _c = self.shared.lock();
        self.shared.cv.notify_all();
    }

    /// Stops the thread and joins it.
    pub fn exit(&mut self) {
        self.shared.post(EXIT, self.thread.as_ref());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        self.exit();
    }
}

fn run_thread(index: u8, mut fd: VcpuFd, ctx: VcpuContext, shared: Arc<Shared>) {
    // SAFETY: gettid has no preconditions.
    shared
        .tid
        .store(unsafe { libc::gettid() }, Ordering::Release);
    let run_ptr: *mut kvm_run = fd.get_kvm_run();
    KVM_RUN.with(|p| p.set(run_ptr));
    let mut reported = false;
    let mut entered = false;
    // The last exit was port or MMIO I/O, which KVM finishes only at the next KVM_RUN.
    let mut pending_io = false;
    loop {
        // The fast path: clear immediate_exit, then one load of the request word. In
        // this order a kick that lands after the clear stops the coming KVM_RUN, and a
        // request posted before it is in the word.
        fd.set_kvm_immediate_exit(0);
        let req = shared.req.load(Ordering::SeqCst);
        if req != 0 {
            if req & PAUSE != 0 && pending_io {
                pending_io = false;
                complete_pending_io(index, &mut fd, &ctx, &shared);
            }
            if !slow_path(index, &fd, &ctx, &shared) {
                KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
                return;
            }
        }
        if !entered {
            entered = true;
            trace_first_run(index);
        }
        let outcome = match fd.run() {
            Ok(exit) => {
                pending_io = is_io(&exit);
                handle_exit(index, exit, &ctx)
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Outcome::Continue,
            Err(e) => Outcome::Fatal(format!("vCPU {index}: KVM_RUN failed: {e}")),
        };
        deliver(outcome, &ctx, &shared);
        if !reported {
            if let Some(r) = ctx.exit_requests.peek() {
                reported = true;
                let ev = match r {
                    ExitRequest::Reset => VmEvent::Reset,
                    ExitRequest::PowerOff => VmEvent::PowerOff,
                };
                let _ = ctx.events.send(ControlEvent::Vm {
                    generation: ctx.generation,
                    event: ev,
                });
            }
        } else if ctx.exit_requests.peek().is_none() {
            reported = false;
        }
    }
}

fn deliver(outcome: Outcome, ctx: &VcpuContext, shared: &Shared) {
    match outcome {
        Outcome::Continue => {}
        Outcome::Event(ev) => {
            let _ = ctx.events.send(ControlEvent::Vm {
                generation: ctx.generation,
                event: ev,
            });
        }
        Outcome::Fatal(msg) => {
            let _ = ctx.events.send(ControlEvent::Vm {
                generation: ctx.generation,
                event: VmEvent::Fatal(msg),
            });
            // Stay off the CPU until the machine decides.
            shared.req.fetch_or(PAUSE, Ordering::SeqCst);
        }
    }
}

fn is_io(exit: &VcpuExit<'_>) -> bool {
    matches!(
        exit,
        VcpuExit::IoIn(..) | VcpuExit::IoOut(..) | VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..)
    )
}

/// Lets KVM finish the instruction of the last I/O exit without running the guest
/// further: KVM completes port and MMIO accesses (an IN's value into RAX, a string
/// instruction's next step, RIP past the instruction) only at the next KVM_RUN, and
/// until then the vCPU's registers as KVM_GET_* report them are mid-instruction. A
/// pause whose state may be saved (migration, a snapshot) must not park there: the
/// destination would resume a half-done instruction. With `immediate_exit` set KVM
/// completes the access and returns EINTR; a string instruction may exit for its next
/// element first, which is served like any exit.
fn complete_pending_io(index: u8, fd: &mut VcpuFd, ctx: &VcpuContext, shared: &Shared) {
    // A rep string instruction exits once per page of elements at most; bound the loop
    // anyway so a misbehaving kernel cannot keep the thread from pausing.
    for _ in 0..4096 {
        fd.set_kvm_immediate_exit(1);
        match fd.run() {
            Ok(exit) => {
                let more = is_io(&exit);
                deliver(handle_exit(index, exit, ctx), ctx, shared);
                if !more {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    fd.set_kvm_immediate_exit(0);
}

/// Serves the request word under the lock: registers, NMI, pause (parking until
/// resumed) and exit. Returns false when the thread must end.
fn slow_path(index: u8, fd: &VcpuFd, ctx: &VcpuContext, shared: &Shared) -> bool {
    let mut c = shared.lock();
    loop {
        let req = shared.req.load(Ordering::SeqCst);
        if req & REGS != 0 {
            c.regs = Some(dump_registers(fd));
            shared.req.fetch_and(!REGS, Ordering::SeqCst);
            shared.cv.notify_all();
        }
        if req & JOB != 0 {
            shared.req.fetch_and(!JOB, Ordering::SeqCst);
            if let Some(job) = c.job.take() {
                job(fd);
            }
        }
        if req & EXIT != 0 {
            c.ack = Ack::Exited;
            shared.cv.notify_all();
            return false;
        }
        if req & PAUSE != 0 {
            if c.ack != Ack::Paused {
                // Tell KVM the guest was stopped, so its watchdogs don't fire on resume.
                let _ = fd.kvmclock_ctrl();
                c.ack = Ack::Paused;
                shared.cv.notify_all();
            }
            c = shared.cv.wait(c).unwrap_or_else(|p| p.into_inner());
            continue;
        }
        if req & THROTTLE != 0 {
            shared.req.fetch_and(!THROTTLE, Ordering::SeqCst);
            let sleep = c.throttle_sleep;
            drop(c);
            std::thread::sleep(sleep);
            c = shared.lock();
            continue;
        }
        if req & NMI != 0 {
            shared.req.fetch_and(!NMI, Ordering::SeqCst);
            if let Err(e) = fd.nmi() {
                let _ = ctx.events.send(ControlEvent::Vm {
                    generation: ctx.generation,
                    event: VmEvent::Fatal(format!("vCPU {index}: KVM_NMI failed: {e}")),
                });
            }
        }
        if c.ack != Ack::Running {
            c.ack = Ack::Running;
            shared.cv.notify_all();
        }
        return true;
    }
}

fn dump_registers(fd: &VcpuFd) -> Result<String, String> {
    let r = fd.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
    let s = fd.get_sregs().map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
    Ok(arch::regs::format_registers(&r, &s))
}

/// With `KESTREL_TRACE_STARTUP` set, prints when vCPU 0 first enters the guest, as
/// CLOCK_MONOTONIC nanoseconds, so a benchmark can measure exec-to-first-KVM_RUN without
/// tracing the process (which would slow what it measures).
fn trace_first_run(index: u8) {
    if index != 0 || std::env::var_os("KESTREL_TRACE_STARTUP").is_none() {
        return;
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let ns = ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128;
    eprintln!("kestrel-startup: first-kvm-run monotonic-ns={ns}");
}

enum Outcome {
    Continue,
    Event(VmEvent),
    Fatal(String),
}

fn handle_exit(index: u8, exit: VcpuExit<'_>, ctx: &VcpuContext) -> Outcome {
    match exit {
        VcpuExit::IoIn(port, data) => {
            ctx.pio.read(u64::from(port), data);
            Outcome::Continue
        }
        VcpuExit::IoOut(port, data) => {
            ctx.pio.write(u64::from(port), data);
            Outcome::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            ctx.mmio.read(addr, data);
            Outcome::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            ctx.mmio.write(addr, data);
            Outcome::Continue
        }
        // A triple fault: real hardware resets, and so does QEMU.
        VcpuExit::Shutdown => Outcome::Event(VmEvent::Reset),
        VcpuExit::Hlt => Outcome::Continue,
        VcpuExit::Intr | VcpuExit::IrqWindowOpen => Outcome::Continue,
        VcpuExit::SystemEvent(kind, _) => match kind {
            kvm_bindings::KVM_SYSTEM_EVENT_RESET => Outcome::Event(VmEvent::Reset),
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Outcome::Event(VmEvent::PowerOff),
            _ => Outcome::Continue,
        },
        VcpuExit::InternalError => Outcome::Fatal(format!("vCPU {index}: KVM internal error")),
        VcpuExit::FailEntry(reason, cpu) => Outcome::Fatal(format!(
            "vCPU {index}: KVM failed to enter the guest (hardware reason {reason:#x}, cpu {cpu})"
        )),
        other => Outcome::Fatal(format!("vCPU {index}: unexpected KVM exit {other:?}")),
    }
}
