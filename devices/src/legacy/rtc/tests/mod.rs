//! RTC unit tests: a hand-moved host clock, an event log, the rig wiring a device to
//! a manual guest clock and timer, and the test groups.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use super::irq::cycles_to_ns;
use super::*;
use crate::legacy::testutil::CountingIrq;
use crate::timer::{ManualClock, ManualTimer};

/// 2024-02-29 13:05:09 UTC, a Thursday.
const T0: i64 = 1_709_211_909;
const SEC: u64 = 1_000_000_000;

struct FakeClock(AtomicI64);

impl FakeClock {
    fn at(secs: i64) -> Arc<Self> {
        Arc::new(Self(AtomicI64::new(secs * 1_000_000_000)))
    }
    fn set_nanos(&self, n: i64) {
        self.0.store(n, Ordering::SeqCst);
    }
    fn advance_secs(&self, s: i64) {
        self.0.fetch_add(s * 1_000_000_000, Ordering::SeqCst);
    }
    fn advance_nanos(&self, n: u64) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.0.fetch_add(n, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now_unix_nanos(&self) -> i128 {
        i128::from(self.0.load(Ordering::SeqCst))
    }
}

#[derive(Default)]
struct EventLog(Mutex<Vec<i64>>);

impl EventLog {
    fn take(&self) -> Vec<i64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl RtcEvents for EventLog {
    fn time_changed(&self, offset_secs: i64) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(offset_secs);
    }
}

/// Everything but the wall clock an RTC is wired to.
#[derive(Clone, Default)]
struct Parts {
    guest: Arc<ManualClock>,
    timer: Arc<ManualTimer>,
    irq: Arc<CountingIrq>,
    events: Arc<EventLog>,
    slew: bool,
}

impl Parts {
    fn config(&self, clock: Arc<dyn Clock>) -> RtcConfig {
        RtcConfig {
            clock,
            guest_clock: self.guest.clone(),
            timer: self.timer.clone(),
            irq: self.irq.clone(),
            events: self.events.clone(),
            slew: self.slew,
        }
    }
}

fn rtc_at(secs: i64) -> (CmosRtc, Arc<FakeClock>) {
    let c = FakeClock::at(secs);
    (CmosRtc::new(Parts::default().config(c.clone())), c)
}

/// An RTC whose wall clock and guest clock (from 0) move together.
struct Rig {
    d: CmosRtc,
    wall: Arc<FakeClock>,
    p: Parts,
}

fn rig(secs: i64, slew: bool) -> Rig {
    let wall = FakeClock::at(secs);
    let p = Parts {
        slew,
        ..Parts::default()
    };
    Rig {
        d: CmosRtc::new(p.config(wall.clone())),
        wall,
        p,
    }
}

impl Rig {
    fn advance_ns(&self, ns: u64) {
        self.wall.advance_nanos(ns);
        self.p.guest.advance(ns);
    }

    fn now(&self) -> u64 {
        self.p.guest.now_ns()
    }

    fn deadline(&self) -> Option<u64> {
        self.p.timer.deadline()
    }

    /// Moves time to the timer's deadline (if still ahead) and fires it.
    fn fire(&mut self) -> bool {
        let Some(t) = self.deadline() else {
            return false;
        };
        self.advance_ns(t.saturating_sub(self.now()));
        self.d.timer_fired();
        true
    }

    fn irqs(&self) -> usize {
        self.p.irq.count()
    }

    fn rd(&mut self, index: u8) -> u8 {
        rd(&mut self.d, index)
    }

    fn wr(&mut self, index: u8, v: u8) {
        wr(&mut self.d, index, v)
    }
}

fn rd(d: &mut CmosRtc, index: u8) -> u8 {
    d.write(0, &[index]);
    let mut b = [0u8];
    d.read(1, &mut b);
    b[0]
}

fn wr(d: &mut CmosRtc, index: u8, v: u8) {
    d.write(0, &[index]);
    d.write(1, &[v]);
}

/// sec, min, hour, dow, mday, month, year, century
fn time_regs(d: &mut CmosRtc) -> [u8; 8] {
    [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32].map(|i| rd(d, i))
}

/// A host clock stuck at one instant, however absurd.
struct EdgeClock(i128);

impl Clock for EdgeClock {
    fn now_unix_nanos(&self) -> i128 {
        self.0
    }
}

mod interrupts;
mod registers;
