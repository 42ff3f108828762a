//! Time for device models that count it (the RTC's interrupts, the watchdog, the
//! balloon's statistics polling): a guest clock that stands still while the VM is
//! stopped, as QEMU's virtual clock does, and one-shot timers on it.
//!
//! A model never sleeps or spawns: it arms its `Timer` for the guest-clock instant it
//! next needs service and does the work when the machine calls it back (the model's own
//! `timer_fired`-style method), reading the clock to see what is due. The machine backs
//! a `Timer` with a timerfd; tests with [`ManualClock`] and [`ManualTimer`], moving time
//! by hand, so every stage of a timer is tested without waiting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Monotonic guest time in nanoseconds: it starts at 0 when the machine is built and
/// does not advance while the VM is stopped.
pub trait GuestClock: Send + Sync {
    fn now_ns(&self) -> u64;
}

/// A one-shot timer on the guest clock. Arming again replaces the previous deadline;
/// `None` disarms. When the deadline passes, the machine calls the owning model back
/// once (a deadline already past fires at once).
pub trait Timer: Send + Sync {
    fn arm(&self, deadline_ns: Option<u64>);
}

/// A clock moved by hand (tests, benchmarks).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start_ns: u64) -> Self {
        Self(AtomicU64::new(start_ns))
    }

    pub fn advance(&self, ns: u64) {
        self.0.fetch_add(ns, Ordering::SeqCst);
    }

    pub fn set(&self, ns: u64) {
        self.0.store(ns, Ordering::SeqCst);
    }
}

impl GuestClock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A timer that records its deadline; the test fires it by calling the model.
#[derive(Debug, Default)]
pub struct ManualTimer(Mutex<Option<u64>>);

impl ManualTimer {
    pub fn deadline(&self) -> Option<u64> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Timer for ManualTimer {
    fn arm(&self, deadline_ns: Option<u64>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = deadline_ns;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_and_timer_do_what_the_test_says() {
        let c = ManualClock::new(5);
        c.advance(10);
        assert_eq!(c.now_ns(), 15);
        c.set(3);
        assert_eq!(c.now_ns(), 3);
        let t = ManualTimer::default();
        assert_eq!(t.deadline(), None);
        t.arm(Some(100));
        t.arm(Some(50));
        assert_eq!(t.deadline(), Some(50));
        t.arm(None);
        assert_eq!(t.deadline(), None);
    }
}
