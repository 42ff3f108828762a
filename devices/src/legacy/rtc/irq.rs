//! The interrupt sources: update-ended (UF), alarm (AF) and periodic (PF), IRQF and its
//! pulse on IRQ 8, slew reinjection of coalesced periodic ticks, and the one timer
//! deadline that covers whichever enabled source is due next.
//!
//! Invariants: flags nobody waits on are derived lazily (`catch_up`) when register C
//! is read; the timer is armed only for the next instant an enabled source is due;
//! periodic ticks stay on the 32.768 kHz grid of the guest clock; owed ticks never
//! exceed [`MAX_OWED_TICKS`].

use super::clock::{NANOS_PER_SEC, SECS_PER_DAY};

use super::{
    CmosRtc, ALARM_DONT_CARE, REG_A_DIVIDER_MASK, REG_A_DIVIDER_NORMAL, REG_A_RATE_MASK, REG_B_AIE,
    REG_B_PIE, REG_B_UIE, REG_C_AF, REG_C_FLAGS, REG_C_IRQF, REG_C_PF, REG_C_UF,
};

/// UIP rises this long before each update (MC146818 datasheet, t_BUC).
pub(super) const UIP_LEAD_NANOS: i128 = 244_000;
/// The time base the periodic rates divide: 32.768 kHz.
pub(super) const BASE_HZ: u128 = 32_768;

/// The most periodic ticks `slew` owes the guest: one second at the 1024 Hz Windows
/// asks for when it wants a fine clock, 16 s at its usual 64 Hz. Owing more would mean
/// racing the guest's clock for longer than the stall that caused the debt; past the
/// cap, ticks are lost as without `slew`.
pub const MAX_OWED_TICKS: u32 = 1024;
/// An alarm further away than this is waited for in steps of this long, so a wall clock
/// that moved while the guest clock stood still (the VM stopped, the host's clock
/// stepped) makes the alarm late by at most this much.
pub(super) const MAX_ALARM_WAIT_SECS: u64 = 10;

/// One alarm register, decoded in the current mode.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum AlarmField {
    Any,
    At(u64),
    /// A value no time encodes to (BCD 0x60 seconds, hour 25): never matches.
    Never,
}

impl AlarmField {
    pub(super) fn matches(self, v: u64) -> bool {
        match self {
            AlarmField::Any => true,
            AlarmField::At(a) => a == v,
            AlarmField::Never => false,
        }
    }
}

/// The periodic interrupt while it runs; times in cycles of the 32.768 kHz base counted
/// on the guest clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Periodic {
    pub(super) period: u64,
    /// The next tick: a multiple of `period`.
    pub(super) next: u64,
    /// Where an owed tick is delivered under `slew`: half way to `next`.
    pub(super) reinject_at: Option<u64>,
}

pub(super) fn ns_to_cycles(ns: u64) -> u64 {
    // < 2^64 * 2^15 / 10^9 < 2^50: fits.
    (u128::from(ns) * BASE_HZ / NANOS_PER_SEC as u128) as u64
}

/// The first guest-clock nanosecond at or after a cycle.
pub(super) fn cycles_to_ns(cycles: u64) -> u64 {
    let ns = (u128::from(cycles) * NANOS_PER_SEC as u128).div_ceil(BASE_HZ);
    u64::try_from(ns).unwrap_or(u64::MAX)
}

impl CmosRtc {
    /// The time registers count: not while SET is held or the divider is stopped.
    pub(super) fn updating(&self) -> bool {
        self.s.frozen.is_none() && self.s.reg_a & REG_A_DIVIDER_MASK == REG_A_DIVIDER_NORMAL
    }

    pub(super) fn uip(&self, nanos_into_second: i128) -> bool {
        self.updating() && nanos_into_second >= NANOS_PER_SEC - UIP_LEAD_NANOS
    }

    /// The periodic rate in cycles of the time base, if it runs.
    pub(super) fn period_cycles(&self) -> Option<u64> {
        if self.s.reg_a & REG_A_DIVIDER_MASK != REG_A_DIVIDER_NORMAL {
            return None;
        }
        match self.s.reg_a & REG_A_RATE_MASK {
            0 => None,
            // 256 Hz and 128 Hz, where the pattern would give 32 and 16 kHz.
            1 => Some(128),
            2 => Some(256),
            r => Some(1 << (r - 1)),
        }
    }

    /// Starts, stops or re-times the periodic ticks after register A changed.
    pub(super) fn sync_periodic(&mut self) {
        let period = self.period_cycles();
        if self.periodic.map(|p| p.period) == period {
            return;
        }
        let now = ns_to_cycles(self.guest_clock.now_ns());
        self.periodic = period.map(|period| Periodic {
            period,
            next: (now / period + 1) * period,
            reinject_at: None,
        });
    }

    /// Sets flags in register C and raises IRQF (one pulse) if an enabled one is set.
    pub(super) fn raise(&mut self, flags: u8) {
        self.s.reg_c |= flags;
        self.update_irqf();
    }

    /// IRQF = PF·PIE + AF·AIE + UF·UIE; its rise is an edge on IRQ 8.
    pub(super) fn update_irqf(&mut self) {
        if self.s.reg_c & self.s.reg_b & REG_C_FLAGS == 0 {
            self.s.reg_c &= !REG_C_IRQF;
        } else if self.s.reg_c & REG_C_IRQF == 0 {
            self.s.reg_c |= REG_C_IRQF;
            // A closed irqfd means the machine is going away; nothing to do about it.
            let _ = self.irq.trigger();
        }
    }

    /// Raises whatever came due since the last call.
    pub(super) fn catch_up(&mut self) {
        self.catch_up_periodic();
        self.catch_up_updates();
    }

    pub(super) fn catch_up_periodic(&mut self) {
        let Some(mut p) = self.periodic else {
            return;
        };
        let now = ns_to_cycles(self.guest_clock.now_ns());
        let pie = self.s.reg_b & REG_B_PIE != 0;
        if let Some(at) = p.reinject_at.filter(|at| *at <= now) {
            // One owed tick per period, and only onto an acknowledged line.
            p.reinject_at = None;
            if pie
                && self.s.coalesced_ticks > 0
                && self.s.reg_c & (REG_C_IRQF | REG_C_PF) == 0
                && at < p.next
            {
                self.s.coalesced_ticks -= 1;
                self.raise(REG_C_PF);
            }
        }
        if now >= p.next {
            let ticks = (now - p.next) / p.period + 1;
            p.next += ticks * p.period;
            let lost = if self.s.reg_c & REG_C_PF != 0 {
                ticks
            } else {
                self.raise(REG_C_PF);
                ticks - 1
            };
            if pie && self.slew {
                let owed = u64::from(self.s.coalesced_ticks).saturating_add(lost);
                self.s.coalesced_ticks = owed.min(u64::from(MAX_OWED_TICKS)) as u32;
            }
            p.reinject_at =
                (pie && self.slew && self.s.coalesced_ticks > 0).then(|| p.next - p.period / 2);
        }
        self.periodic = Some(p);
    }

    /// UF and AF for the second turnovers since the last call.
    pub(super) fn catch_up_updates(&mut self) {
        let (now, _) = self.host_now();
        let last = std::mem::replace(&mut self.updated_to_secs, now);
        if now <= last || !self.updating() {
            return;
        }
        let elapsed = i128::from(now) - i128::from(last);
        let mut flags = REG_C_UF;
        let from = last.saturating_add(self.s.guest_offset_secs);
        if self
            .next_alarm_in_secs(from)
            .is_some_and(|d| i128::from(d) <= elapsed)
        {
            flags |= REG_C_AF;
        }
        self.raise(flags);
    }

    pub(super) fn alarm_field(&self, v: u8, count: u8, encode: impl Fn(u8) -> u8) -> AlarmField {
        if v & ALARM_DONT_CARE == ALARM_DONT_CARE {
            return AlarmField::Any;
        }
        (0..count)
            .find(|x| encode(*x) == v)
            .map_or(AlarmField::Never, |x| AlarmField::At(u64::from(x)))
    }

    /// How many turnovers after guest time `guest_secs` the alarm next matches (1 to a
    /// day), if it ever does.
    pub(super) fn next_alarm_in_secs(&self, guest_secs: i64) -> Option<u64> {
        let h = self.alarm_field(self.s.alarm_hour, 24, |x| self.encode_hour(x));
        let m = self.alarm_field(self.s.alarm_minute, 60, |x| self.encode(x));
        let s = self.alarm_field(self.s.alarm_second, 60, |x| self.encode(x));
        if [h, m, s].contains(&AlarmField::Never) {
            return None;
        }
        // `tod` < 86400: the search stays far from overflow.
        let tod = guest_secs.rem_euclid(SECS_PER_DAY) as u64;
        let mut t = tod + 1;
        while t <= tod + SECS_PER_DAY as u64 {
            let x = t % SECS_PER_DAY as u64;
            let (hour, minute, second) = (x / 3600, x / 60 % 60, x % 60);
            if !h.matches(hour) {
                t = (t / 3600 + 1) * 3600;
            } else if !m.matches(minute) {
                t = (t / 60 + 1) * 60;
            } else if !s.matches(second) {
                t = match s {
                    AlarmField::At(want) if want > second => t + want - second,
                    _ => (t / 60 + 1) * 60,
                };
            } else {
                return Some(t - tod);
            }
        }
        None
    }

    /// The guest-clock instant the next enabled interrupt is due.
    pub(super) fn next_deadline(&self) -> Option<u64> {
        let b = self.s.reg_b;
        let mut due = None;
        if b & REG_B_PIE != 0 {
            if let Some(p) = self.periodic {
                let at = p.reinject_at.map_or(p.next, |r| r.min(p.next));
                due = Some(cycles_to_ns(at));
            }
        }
        if b & (REG_B_UIE | REG_B_AIE) != 0 && self.updating() {
            let (secs, frac) = self.host_now();
            let whole_secs_after = if b & REG_B_UIE != 0 {
                Some(0)
            } else {
                self.next_alarm_in_secs(secs.saturating_add(self.s.guest_offset_secs))
                    .map(|d| d.min(MAX_ALARM_WAIT_SECS) - 1)
            };
            if let Some(k) = whole_secs_after {
                // `frac` < 1 s.
                let to_turnover = (NANOS_PER_SEC - frac) as u64;
                let at = self
                    .guest_clock
                    .now_ns()
                    .saturating_add(to_turnover + k * NANOS_PER_SEC as u64);
                due = Some(due.map_or(at, |d: u64| d.min(at)));
            }
        }
        due
    }

    pub(super) fn rearm(&mut self) {
        let due = self.next_deadline();
        if due != self.armed {
            self.armed = due;
            self.timer.arm(due);
        }
    }
}
