//! The guest clock and the device timers of one boot.
//!
//! [`VmClock`] is QEMU's virtual clock: guest nanoseconds since the boot was built,
//! standing still while the vCPUs are stopped (it starts stopped, like the vCPUs, and
//! `Vm::resume`/`Vm::pause` move it). Device models arm [`devices::timer::Timer`]s on
//! it; each is a non-blocking timerfd, and one thread per boot runs an `event-manager`
//! loop with a subscriber per timer that calls the owning model back. While the clock
//! is stopped no timerfd is armed, and on resume every pending deadline is programmed
//! again from the time left, so a guest stopped for an hour does not find its watchdog
//! expired the instant it runs again.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::timer::{GuestClock, Timer};
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use crate::worker::{Subscribers, Worker};

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct ClockState {
    /// `Some` while stopped: the instant it stopped.
    stopped_at: Option<Instant>,
    stopped_total: Duration,
    /// Added to the elapsed time: set when a migrated guest's clock is taken over.
    offset_ns: i128,
}

/// Guest time: host monotonic time since `start`, minus the time spent stopped.
pub struct VmClock {
    start: Instant,
    state: Mutex<ClockState>,
}

impl VmClock {
    /// A clock at 0, stopped.
    pub fn new() -> Self {
        let start = Instant::now();
        VmClock {
            start,
            state: Mutex::new(ClockState {
                stopped_at: Some(start),
                stopped_total: Duration::ZERO,
                offset_ns: 0,
            }),
        }
    }

    fn now_at(&self, s: &ClockState, host: Instant) -> u64 {
        let t = s.stopped_at.unwrap_or(host);
        let d = t
            .saturating_duration_since(self.start)
            .saturating_sub(s.stopped_total);
        let ns = i128::try_from(d.as_nanos()).unwrap_or(i128::MAX) + s.offset_ns;
        u64::try_from(ns.max(0)).unwrap_or(u64::MAX)
    }

    /// Sets the clock to `ns` (a migrated guest's clock, taken over by the destination).
    pub fn set_now(&self, ns: u64) {
        let mut s = lock(&self.state);
        s.offset_ns = 0;
        let now = self.now_at(&s, Instant::now());
        s.offset_ns = i128::from(ns) - i128::from(now);
    }

    pub fn is_running(&self) -> bool {
        lock(&self.state).stopped_at.is_none()
    }

    pub fn stop(&self) {
        let mut s = lock(&self.state);
        if s.stopped_at.is_none() {
            s.stopped_at = Some(Instant::now());
        }
    }

    pub fn run(&self) {
        let mut s = lock(&self.state);
        if let Some(at) = s.stopped_at.take() {
            s.stopped_total += at.elapsed();
        }
    }
}

impl Default for VmClock {
    fn default() -> Self {
        Self::new()
    }
}

impl GuestClock for VmClock {
    fn now_ns(&self) -> u64 {
        let s = lock(&self.state);
        self.now_at(&s, Instant::now())
    }
}

/// A non-blocking CLOCK_MONOTONIC timerfd.
struct TimerFd(OwnedFd);

impl TimerFd {
    fn new() -> std::io::Result<Self> {
        // SAFETY: no pointers; the result is checked.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new fd that nothing else owns.
        Ok(TimerFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Fires once after `after` (`None` disarms).
    fn set(&self, after: Option<Duration>) {
        let value = match after {
            // A zero it_value would disarm: a deadline already due fires in 1 ns.
            Some(d) => libc::timespec {
                tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: if d.is_zero() {
                    1
                } else {
                    libc::c_long::from(d.subsec_nanos() as i32)
                },
            },
            None => libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: value,
        };
        // SAFETY: `spec` is a valid itimerspec; the old value is not asked for.
        let r =
            unsafe { libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if r < 0 {
            eprintln!(
                "kestrel: timerfd_settime: {}",
                std::io::Error::last_os_error()
            );
        }
    }

    fn drain(&self) {
        let mut n = 0u64;
        // SAFETY: reads 8 bytes into `n`; EAGAIN (nothing expired) is fine.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
    }
}

/// One device timer.
struct Slot {
    fd: TimerFd,
    deadline: Mutex<Option<u64>>,
    clock: Arc<VmClock>,
}

impl Slot {
    /// Programs the timerfd for the deadline, if the clock runs.
    fn program(&self, deadline: Option<u64>) {
        match deadline {
            Some(d) if self.clock.is_running() => {
                let now = self.clock.now_ns();
                self.fd
                    .set(Some(Duration::from_nanos(d.saturating_sub(now))));
            }
            _ => self.fd.set(None),
        }
    }
}

/// The handle a device model arms.
struct SlotTimer(Arc<Slot>);

impl Timer for SlotTimer {
    fn arm(&self, deadline_ns: Option<u64>) {
        let mut d = lock(&self.0.deadline);
        *d = deadline_ns;
        self.0.program(deadline_ns);
    }
}

/// One timer's timerfd: calls the model back when its deadline has passed.
struct TimerSub {
    slot: Arc<Slot>,
    callback: Option<Callback>,
}

impl MutEventSubscriber for TimerSub {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.slot.fd.0, EventSet::IN)) {
            eprintln!("kestrel: timers: cannot watch a timer: {e:?}");
        }
    }

    fn process(&mut self, _: Events, _: &mut EventOps) {
        let slot = &self.slot;
        slot.fd.drain();
        let due = {
            let mut d = lock(&slot.deadline);
            match *d {
                Some(at) if slot.clock.is_running() && slot.clock.now_ns() >= at => {
                    *d = None;
                    true
                }
                // Early (the clock was stopped meanwhile), or re-armed later since:
                // program what is pending now.
                other => {
                    slot.program(other);
                    false
                }
            }
        };
        if due {
            if let Some(cb) = &mut self.callback {
                cb();
            }
        }
    }
}

type Callback = Box<dyn FnMut() + Send>;

/// The boot's timers: create them, hand each its callback, then `start`.
pub struct Timers {
    clock: Arc<VmClock>,
    slots: Vec<Arc<Slot>>,
    callbacks: Vec<Option<Callback>>,
    thread: Option<Worker>,
}

/// Which timer `Timers::timer` made, for `set_callback`.
#[derive(Clone, Copy, Debug)]
pub struct TimerId(usize);

impl Timers {
    pub fn new() -> Self {
        Timers {
            clock: Arc::new(VmClock::new()),
            slots: Vec::new(),
            callbacks: Vec::new(),
            thread: None,
        }
    }

    pub fn clock(&self) -> Arc<VmClock> {
        self.clock.clone()
    }

    /// A new timer; it calls nothing until `set_callback`.
    pub fn timer(&mut self) -> std::io::Result<(Arc<dyn Timer>, TimerId)> {
        let slot = Arc::new(Slot {
            fd: TimerFd::new()?,
            deadline: Mutex::new(None),
            clock: self.clock.clone(),
        });
        self.slots.push(slot.clone());
        self.callbacks.push(None);
        Ok((Arc::new(SlotTimer(slot)), TimerId(self.slots.len() - 1)))
    }

    /// What the timer calls when its deadline passes (typically: lock the model and
    /// call its `timer_fired`, which may arm the timer again).
    pub fn set_callback(&mut self, id: TimerId, f: impl FnMut() + Send + 'static) {
        if let Some(c) = self.callbacks.get_mut(id.0) {
            *c = Some(Box::new(f));
        }
    }

    /// Starts the thread that serves the timers (nothing to do without any): a
    /// [`Worker`] with one subscriber per timer. Dropping `Timers` stops and joins it.
    pub fn start(&mut self) -> std::io::Result<()> {
        if self.slots.is_empty() || self.thread.is_some() {
            return Ok(());
        }
        let callbacks = std::mem::take(&mut self.callbacks);
        let subs: Subscribers = self
            .slots
            .iter()
            .zip(callbacks)
            .map(|(slot, callback)| {
                Box::new(TimerSub {
                    slot: slot.clone(),
                    callback,
                }) as Box<dyn MutEventSubscriber + Send>
            })
            .collect();
        self.thread = Some(Worker::spawn(
            "timers",
            "device timers will not fire",
            subs,
        )?);
        Ok(())
    }

    /// The vCPUs run: the guest clock runs, pending deadlines are programmed.
    pub fn resume(&self) {
        self.clock.run();
        for s in &self.slots {
            let d = lock(&s.deadline);
            s.program(*d);
        }
    }

    /// The vCPUs stopped: so do the guest clock and every timerfd.
    pub fn pause(&self) {
        self.clock.stop();
        for s in &self.slots {
            let _d = lock(&s.deadline);
            s.fd.set(None);
        }
    }
}

impl Default for Timers {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn the_guest_clock_stands_still_while_stopped() {
        let c = VmClock::new();
        let t0 = c.now_ns();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(c.now_ns(), t0, "a new clock is stopped");
        c.run();
        std::thread::sleep(Duration::from_millis(20));
        let t1 = c.now_ns();
        assert!(t1 >= t0 + 15_000_000, "{t1}");
        c.stop();
        let t2 = c.now_ns();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(c.now_ns(), t2);
        c.run();
        assert!(c.now_ns() < t2 + 10_000_000, "stopped time is not counted");
    }

    #[test]
    fn timers_fire_once_at_their_deadline_and_wait_out_a_stop() {
        let mut ts = Timers::new();
        let (timer, id) = ts.timer().unwrap();
        let (tx, rx) = mpsc::channel();
        let clock = ts.clock();
        ts.set_callback(id, move || {
            let _ = tx.send(clock.now_ns());
        });
        ts.start().unwrap();
        ts.resume();
        let now = ts.clock().now_ns();
        timer.arm(Some(now + 30_000_000));
        let fired = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(fired >= now + 30_000_000);
        assert!(
            rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "one-shot"
        );

        // Armed, then stopped: nothing while stopped; it fires after the rest of its
        // time once the clock runs again.
        let now = ts.clock().now_ns();
        timer.arm(Some(now + 50_000_000));
        ts.pause();
        assert!(rx.recv_timeout(Duration::from_millis(150)).is_err());
        let resumed = Instant::now();
        ts.resume();
        let fired = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(fired >= now + 50_000_000);
        assert!(resumed.elapsed() >= Duration::from_millis(20));

        // Disarmed: never fires; re-armed past: fires at once.
        timer.arm(Some(ts.clock().now_ns() + 20_000_000));
        timer.arm(None);
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        timer.arm(Some(0));
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
    }
}
