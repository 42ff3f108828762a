//! The MC146818 CMOS RTC (port 0x70 index, 0x71 data; a window of 2): the guest's
//! wall clock, its three interrupt sources on IRQ 8 and 114 bytes of battery-backed NVRAM.
//!
//! The time is never stored: every read computes it from the host's `Clock` plus
//! `guest_offset_secs`, the only thing a guest changes when it sets the clock (and what
//! migration carries, so the guest's clock keeps its distance from the host's). While
//! the guest holds register B's SET bit, the time registers are frozen at the value
//! they had, take the guest's writes field by field (an impossible date such as
//! 31 February on the way from 31 January to 15 February is fine), and the new offset
//! is computed when SET clears. Without SET, a write to one field moves the offset at once.
//! Each time the guest moves the offset, `RtcEvents::time_changed` says so (QMP's
//! RTC_CHANGE); SET raised and dropped with no time written in between changes nothing.
//!
//! Kept as on the chip: BCD or binary (register B bit 2), 12 or 24 hours (bit 1, PM in
//! bit 7 of the hour), UIP in register A for the last 244 µs before each second turns
//! over (never while SET is held or the divider is not running, so it never sticks),
//! VRT always set in register D, bit 7 of an index write (the NMI mask) ignored, the
//! century at index 0x32 (the PC convention that the FADT's CENTURY field names).
//!
//! Interrupts, as on the chip: the periodic flag PF at the rate register A's RS bits
//! select, the update-ended flag UF at each second's turnover and the alarm flag AF at
//! the turnover to a time whose seconds, minutes and hours equal the alarm registers
//! (in the current BCD/binary and 12/24-hour encoding; a value 0xC0..=0xFF matches any).
//! The flags rise whether or not their enables (PIE, AIE, UIE in register B) are set;
//! IRQF is PF·PIE + AF·AIE + UF·UIE, each rise of IRQF is one pulse on the `Interrupt`,
//! and reading register C returns the flags and clears them. Updates (UF, AF, UIP) stop
//! while SET is held or the divider (register A bits 6:4) is not 010, and so do the
//! periodic ticks. Flags nobody waits on are derived when register C is read, so a
//! guest that polls costs no timer; the `Timer` is armed only for the next instant an
//! enabled source is due, on the `GuestClock`, and the machine calls
//! [`CmosRtc::timer_fired`] when it expires. Periodic ticks sit on a fixed grid of the
//! 32.768 kHz time base counted on the guest clock, so they keep their phase however
//! late the timer is served.
//!
//! A periodic tick that finds PF still set from the previous one (the guest has not
//! read register C since) is coalesced into it. Without `slew` it is lost; with it
//! (`-rtc driftfix=slew`) it is owed, up to [`MAX_OWED_TICKS`], and once the guest has
//! acknowledged, each period delivers one owed tick half way between two regular ones
//! (twice the rate) until none is owed. `reset_reinjection` forgets the debt.
//!
//! Not modelled: the day of week is derived from the date (writes to it are ignored),
//! the divider bits only start and stop updates and ticks (no 4.194 or 1.049 MHz time
//! base, no half-second delay after leaving reset), the square-wave output does not
//! exist, and daylight saving (register B bit 0) is stored but never applied.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{read_bytes, write_bytes, LegacyError};
use crate::timer::{GuestClock, Timer};
use crate::{BusDevice, Interrupt};

const NANOS_PER_SEC: i128 = 1_000_000_000;
/// UIP rises this long before each update (MC146818 datasheet, t_BUC).
const UIP_LEAD_NANOS: i128 = 244_000;
/// The time base the periodic rates divide: 32.768 kHz.
const BASE_HZ: u128 = 32_768;
const SECS_PER_DAY: i64 = 86_400;

const REG_SECONDS: u8 = 0x00;
const REG_ALARM_SECONDS: u8 = 0x01;
const REG_MINUTES: u8 = 0x02;
const REG_ALARM_MINUTES: u8 = 0x03;
const REG_HOURS: u8 = 0x04;
const REG_ALARM_HOURS: u8 = 0x05;
const REG_DAY_OF_WEEK: u8 = 0x06;
const REG_DAY_OF_MONTH: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;
/// First NVRAM index; NVRAM runs to the end of the 128-byte index space.
const NVRAM_START: u8 = 0x0e;
const CMOS_SIZE: usize = 128;
const NVRAM_LEN: usize = CMOS_SIZE - NVRAM_START as usize;

/// Far beyond anything the registers can express (year 0 to 25755), and small enough
/// that the calendar arithmetic cannot overflow: a saved state past these is corrupt.
const MAX_OFFSET_SECS: u64 = 1 << 40;
const MAX_YEAR: u64 = 1_000_000;

/// The most periodic ticks `slew` owes the guest: one second at the 1024 Hz Windows
/// asks for when it wants a fine clock, 16 s at its usual 64 Hz. Owing more would mean
/// racing the guest's clock for longer than the stall that caused the debt; past the
/// cap, ticks are lost as without `slew`.
pub const MAX_OWED_TICKS: u32 = 1024;
/// An alarm further away than this is waited for in steps of this long, so a wall clock
/// that moved while the guest clock stood still (the VM stopped, the host's clock
/// stepped) makes the alarm late by at most this much.
const MAX_ALARM_WAIT_SECS: u64 = 10;

const REG_A_UIP: u8 = 1 << 7;
const REG_A_DIVIDER_MASK: u8 = 0x70;
/// 32.768 kHz time base, divider running.
const REG_A_DIVIDER_NORMAL: u8 = 0x20;
const REG_A_RATE_MASK: u8 = 0x0f;
const REG_B_SET: u8 = 1 << 7;
const REG_B_PIE: u8 = 1 << 6;
const REG_B_AIE: u8 = 1 << 5;
const REG_B_UIE: u8 = 1 << 4;
const REG_B_BINARY: u8 = 1 << 2;
const REG_B_24H: u8 = 1 << 1;
const REG_C_IRQF: u8 = 1 << 7;
const REG_C_PF: u8 = 1 << 6;
const REG_C_AF: u8 = 1 << 5;
const REG_C_UF: u8 = 1 << 4;
/// The flags in register C, and their enables at the same bits of register B.
const REG_C_FLAGS: u8 = REG_C_PF | REG_C_AF | REG_C_UF;
const REG_D_VRT: u8 = 1 << 7;
const HOUR_PM: u8 = 1 << 7;
/// An alarm register with both top bits set matches any value.
const ALARM_DONT_CARE: u8 = 0xc0;

/// Power-on values as a PC BIOS leaves them: 32.768 kHz, 1024 Hz rate; BCD, 24 hours.
const DEFAULT_REG_A: u8 = 0x26;
const DEFAULT_REG_B: u8 = REG_B_24H;

/// Where the RTC tells the machine that the guest set its clock (QMP's RTC_CHANGE).
/// Called with the device borrowed, from the vCPU writing the register: queue, do
/// not block.
pub trait RtcEvents: Send + Sync {
    /// The guest moved its clock: it now runs `offset_secs` ahead of the `Clock`
    /// (behind when negative).
    fn time_changed(&self, offset_secs: i64);
}

/// What a `CmosRtc` is wired to.
#[derive(Clone)]
pub struct RtcConfig {
    /// The wall clock the date and time follow (carrying `-rtc base=`).
    pub clock: Arc<dyn Clock>,
    /// The clock the interrupt deadlines are on.
    pub guest_clock: Arc<dyn GuestClock>,
    /// Armed for the next enabled interrupt; on expiry call [`CmosRtc::timer_fired`].
    pub timer: Arc<dyn Timer>,
    /// IRQ 8, edge: one pulse per rise of IRQF.
    pub irq: Arc<dyn Interrupt>,
    pub events: Arc<dyn RtcEvents>,
    /// `-rtc driftfix=slew`: re-inject coalesced periodic ticks.
    pub slew: bool,
}

/// The host's wall clock, as the RTC sees it. The machine passes `SystemClock` (or a
/// clock shifted for `-rtc base=...`); tests pass a clock they move by hand.
pub trait Clock: Send + Sync {
    /// Nanoseconds since the Unix epoch (negative before it).
    fn now_unix_nanos(&self) -> i128;
}

/// The host's real-time clock (UTC).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_nanos(&self) -> i128 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i128::try_from(d.as_nanos()).unwrap_or(i128::MAX),
            Err(e) => -i128::try_from(e.duration().as_nanos()).unwrap_or(i128::MAX),
        }
    }
}

/// A broken-down UTC date and time (proleptic Gregorian). While the guest is setting the
/// clock its fields may be out of range; `to_unix` carries the excess over linearly.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtcDateTime {
    pub year: i64,
    /// 1..=12
    pub month: u8,
    /// 1..=31
    pub day: u8,
    /// 0..=23
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl RtcDateTime {
    pub fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        Self {
            year,
            month,
            day,
            // `rem` < 86400, so these fit.
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        }
    }

    pub fn to_unix(&self) -> i64 {
        // Saturating only matters for a host clock hundreds of billions of years out.
        days_from_civil(self.year, i64::from(self.month), i64::from(self.day))
            .saturating_mul(86_400)
            .saturating_add(
                i64::from(self.hour) * 3600 + i64::from(self.minute) * 60 + i64::from(self.second),
            )
    }

    /// 1 = Sunday, as the chip counts.
    fn day_of_week(&self) -> u8 {
        let days = days_from_civil(self.year, i64::from(self.month), i64::from(self.day));
        // 1970-01-01 was a Thursday.
        ((days + 4).rem_euclid(7) + 1) as u8
    }
}

/// Days since 1970-01-01 of a date; a month outside 1..=12 or a day past the month's
/// end carries into the following ones (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = year + (month - 1).div_euclid(12);
    let month = (month - 1).rem_euclid(12) + 1;
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468 + (day - 1)
}

fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The guest-visible state of the RTC.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RtcState {
    /// The selected register (0..=127).
    pub index: u8,
    /// Register A without UIP, which is derived from the clock.
    pub reg_a: u8,
    pub reg_b: u8,
    pub alarm_second: u8,
    pub alarm_minute: u8,
    pub alarm_hour: u8,
    /// Guest time minus host time, in seconds.
    pub guest_offset_secs: i64,
    /// The time registers while the guest holds SET (`Some` exactly when reg_b has SET).
    pub frozen: Option<RtcDateTime>,
    /// Indexes 14..128; the byte at the century index (0x32) is unused.
    pub nvram: Vec<u8>,
    /// Register C as last updated: the flags not yet read, and IRQF, which is set
    /// exactly when a flag's enable in register B is. Flags that came due since the
    /// last access to the device are not in it (they are derived when C is read).
    #[serde(default)]
    pub reg_c: u8,
    /// Periodic ticks owed to the guest under `slew` (at most `MAX_OWED_TICKS`).
    #[serde(default)]
    pub coalesced_ticks: u32,
    /// The guest wrote a time register since it raised SET (only while SET is held):
    /// dropping SET then sets the clock.
    #[serde(default)]
    pub set_time_written: bool,
}

impl Default for RtcState {
    fn default() -> Self {
        Self {
            index: 0,
            reg_a: DEFAULT_REG_A,
            reg_b: DEFAULT_REG_B,
            alarm_second: 0,
            alarm_minute: 0,
            alarm_hour: 0,
            guest_offset_secs: 0,
            frozen: None,
            nvram: vec![0; NVRAM_LEN],
            reg_c: 0,
            coalesced_ticks: 0,
            set_time_written: false,
        }
    }
}

/// One alarm register, decoded in the current mode.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AlarmField {
    Any,
    At(u64),
    /// A value no time encodes to (BCD 0x60 seconds, hour 25): never matches.
    Never,
}

impl AlarmField {
    fn matches(self, v: u64) -> bool {
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
struct Periodic {
    period: u64,
    /// The next tick: a multiple of `period`.
    next: u64,
    /// Where an owed tick is delivered under `slew`: half way to `next`.
    reinject_at: Option<u64>,
}

/// The CMOS RTC on the port bus.
pub struct CmosRtc {
    clock: Arc<dyn Clock>,
    guest_clock: Arc<dyn GuestClock>,
    timer: Arc<dyn Timer>,
    irq: Arc<dyn Interrupt>,
    events: Arc<dyn RtcEvents>,
    slew: bool,
    s: RtcState,
    /// The host second up to which UF and AF are accounted for.
    updated_to_secs: i64,
    periodic: Option<Periodic>,
    /// The deadline the timer was last armed for (`None`: disarmed or fired).
    armed: Option<u64>,
}

fn ns_to_cycles(ns: u64) -> u64 {
    // < 2^64 * 2^15 / 10^9 < 2^50: fits.
    (u128::from(ns) * BASE_HZ / NANOS_PER_SEC as u128) as u64
}

/// The first guest-clock nanosecond at or after a cycle.
fn cycles_to_ns(cycles: u64) -> u64 {
    let ns = (u128::from(cycles) * NANOS_PER_SEC as u128).div_ceil(BASE_HZ);
    u64::try_from(ns).unwrap_or(u64::MAX)
}

impl CmosRtc {
    /// Length of the port window at 0x70.
    pub const WINDOW_LEN: u64 = 2;

    /// An RTC showing the clock's time, NVRAM cleared, no interrupt enabled.
    pub fn new(config: RtcConfig) -> Self {
        let RtcConfig {
            clock,
            guest_clock,
            timer,
            irq,
            events,
            slew,
        } = config;
        let mut d = Self {
            clock,
            guest_clock,
            timer,
            irq,
            events,
            slew,
            s: RtcState::default(),
            updated_to_secs: 0,
            periodic: None,
            armed: None,
        };
        d.updated_to_secs = d.host_now().0;
        d.sync_periodic();
        d
    }

    /// An RTC in a saved state.
    pub fn from_state(state: &RtcState, config: RtcConfig) -> Result<Self, LegacyError> {
        let mut d = Self::new(config);
        d.restore(state)?;
        Ok(d)
    }

    pub fn state(&self) -> RtcState {
        self.s.clone()
    }

    /// Replaces the guest-visible state; on error the device is unchanged. IRQF set in
    /// the state was pulsed before it was saved and is not pulsed again; the periodic
    /// ticks take up the grid of this machine's guest clock.
    pub fn restore(&mut self, state: &RtcState) -> Result<(), LegacyError> {
        let invalid = |reason: String| LegacyError::InvalidState {
            device: "rtc",
            reason,
        };
        if state.nvram.len() != NVRAM_LEN {
            return Err(invalid(format!(
                "{} bytes of NVRAM, not {NVRAM_LEN}",
                state.nvram.len()
            )));
        }
        if state.frozen.is_some() != (state.reg_b & REG_B_SET != 0) {
            return Err(invalid(
                "the frozen time and register B's SET bit disagree".into(),
            ));
        }
        if state.reg_b & REG_B_SET != 0 && state.reg_b & REG_B_UIE != 0 {
            return Err(invalid("register B has both SET and UIE".into()));
        }
        if state.set_time_written && state.frozen.is_none() {
            return Err(invalid("a time written under SET without SET".into()));
        }
        if state.guest_offset_secs.unsigned_abs() > MAX_OFFSET_SECS {
            return Err(invalid(format!(
                "a guest clock {} s away from the host's",
                state.guest_offset_secs
            )));
        }
        if let Some(t) = state.frozen.filter(|t| t.year.unsigned_abs() > MAX_YEAR) {
            return Err(invalid(format!("the frozen time is in year {}", t.year)));
        }
        if usize::from(state.index) >= CMOS_SIZE {
            return Err(invalid(format!("index {:#x} is past 0x7f", state.index)));
        }
        if state.reg_c & !(REG_C_IRQF | REG_C_FLAGS) != 0 {
            return Err(invalid(format!(
                "register C {:#04x} has bits 3:0 set",
                state.reg_c
            )));
        }
        let irqf = state.reg_c & state.reg_b & REG_C_FLAGS != 0;
        if (state.reg_c & REG_C_IRQF != 0) != irqf {
            return Err(invalid(format!(
                "register C {:#04x} disagrees with the enables in register B {:#04x}",
                state.reg_c, state.reg_b
            )));
        }
        if state.coalesced_ticks > MAX_OWED_TICKS {
            return Err(invalid(format!(
                "{} periodic ticks owed, more than {MAX_OWED_TICKS}",
                state.coalesced_ticks
            )));
        }
        self.s = state.clone();
        self.s.reg_a &= !REG_A_UIP;
        self.updated_to_secs = self.host_now().0;
        self.periodic = None;
        self.sync_periodic();
        self.rearm();
        Ok(())
    }

    /// Guest time minus host time, in seconds: what the guest did to its clock. A new
    /// time the guest is in the middle of setting (SET held) counts once SET clears.
    pub fn guest_offset_secs(&self) -> i64 {
        self.s.guest_offset_secs
    }

    /// The date and time the guest's RTC shows now (QEMU's `date` property).
    pub fn guest_time(&self) -> RtcDateTime {
        let (host_secs, _) = self.host_now();
        self.current(host_secs)
    }

    /// The timer expired: raise what is due and arm for what comes next.
    pub fn timer_fired(&mut self) {
        self.armed = None;
        self.catch_up();
        self.rearm();
    }

    /// Periodic ticks owed to the guest under `slew` (always 0 without it).
    pub fn coalesced_ticks(&self) -> u32 {
        self.s.coalesced_ticks
    }

    /// Forgets the owed periodic ticks (QMP `rtc-reset-reinjection`).
    pub fn reset_reinjection(&mut self) {
        self.s.coalesced_ticks = 0;
        if let Some(p) = &mut self.periodic {
            p.reinject_at = None;
        }
        self.rearm();
    }

    /// Host time as whole seconds and the nanoseconds into the current second.
    fn host_now(&self) -> (i64, i128) {
        let n = self.clock.now_unix_nanos();
        let secs = n.div_euclid(NANOS_PER_SEC);
        let secs = i64::try_from(secs).unwrap_or(if secs < 0 { i64::MIN } else { i64::MAX });
        (secs, n.rem_euclid(NANOS_PER_SEC))
    }

    /// What the time registers show now.
    fn current(&self, host_secs: i64) -> RtcDateTime {
        self.s.frozen.unwrap_or_else(|| {
            RtcDateTime::from_unix(host_secs.saturating_add(self.s.guest_offset_secs))
        })
    }

    fn binary(&self) -> bool {
        self.s.reg_b & REG_B_BINARY != 0
    }

    fn encode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            let v = v % 100;
            ((v / 10) << 4) | (v % 10)
        }
    }

    /// Garbage BCD digits are taken at face value (0xff reads as 165), as on the chip.
    fn decode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            (v >> 4) * 10 + (v & 0x0f)
        }
    }

    fn encode_hour(&self, h: u8) -> u8 {
        if self.s.reg_b & REG_B_24H != 0 {
            return self.encode(h);
        }
        let pm = if h % 24 >= 12 { HOUR_PM } else { 0 };
        let h12 = match h % 12 {
            0 => 12,
            h => h,
        };
        self.encode(h12) | pm
    }

    fn decode_hour(&self, v: u8) -> u8 {
        if self.s.reg_b & REG_B_24H != 0 {
            return self.decode(v);
        }
        let h = self.decode(v & !HOUR_PM) % 12;
        if v & HOUR_PM != 0 {
            h + 12
        } else {
            h
        }
    }

    /// The time registers count: not while SET is held or the divider is stopped.
    fn updating(&self) -> bool {
        self.s.frozen.is_none() && self.s.reg_a & REG_A_DIVIDER_MASK == REG_A_DIVIDER_NORMAL
    }

    fn uip(&self, nanos_into_second: i128) -> bool {
        self.updating() && nanos_into_second >= NANOS_PER_SEC - UIP_LEAD_NANOS
    }

    /// The periodic rate in cycles of the time base, if it runs.
    fn period_cycles(&self) -> Option<u64> {
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
    fn sync_periodic(&mut self) {
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
    fn raise(&mut self, flags: u8) {
        self.s.reg_c |= flags;
        self.update_irqf();
    }

    /// IRQF = PF·PIE + AF·AIE + UF·UIE; its rise is an edge on IRQ 8.
    fn update_irqf(&mut self) {
        if self.s.reg_c & self.s.reg_b & REG_C_FLAGS == 0 {
            self.s.reg_c &= !REG_C_IRQF;
        } else if self.s.reg_c & REG_C_IRQF == 0 {
            self.s.reg_c |= REG_C_IRQF;
            // A closed irqfd means the machine is going away; nothing to do about it.
            let _ = self.irq.trigger();
        }
    }

    /// Raises whatever came due since the last call.
    fn catch_up(&mut self) {
        self.catch_up_periodic();
        self.catch_up_updates();
    }

    fn catch_up_periodic(&mut self) {
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
    fn catch_up_updates(&mut self) {
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

    fn alarm_field(&self, v: u8, count: u8, encode: impl Fn(u8) -> u8) -> AlarmField {
        if v & ALARM_DONT_CARE == ALARM_DONT_CARE {
            return AlarmField::Any;
        }
        (0..count)
            .find(|x| encode(*x) == v)
            .map_or(AlarmField::Never, |x| AlarmField::At(u64::from(x)))
    }

    /// How many turnovers after guest time `guest_secs` the alarm next matches (1 to a
    /// day), if it ever does.
    fn next_alarm_in_secs(&self, guest_secs: i64) -> Option<u64> {
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
    fn next_deadline(&self) -> Option<u64> {
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

    fn rearm(&mut self) {
        let due = self.next_deadline();
        if due != self.armed {
            self.armed = due;
            self.timer.arm(due);
        }
    }

    fn read_register(&mut self, index: u8) -> u8 {
        let (host_secs, frac) = self.host_now();
        let t = self.current(host_secs);
        match index {
            REG_SECONDS => self.encode(t.second),
            REG_MINUTES => self.encode(t.minute),
            REG_HOURS => self.encode_hour(t.hour),
            REG_DAY_OF_WEEK => self.encode(t.day_of_week()),
            REG_DAY_OF_MONTH => self.encode(t.day),
            REG_MONTH => self.encode(t.month),
            REG_YEAR => self.encode(t.year.rem_euclid(100) as u8),
            REG_CENTURY => self.encode(t.year.div_euclid(100).rem_euclid(100) as u8),
            REG_ALARM_SECONDS => self.s.alarm_second,
            REG_ALARM_MINUTES => self.s.alarm_minute,
            REG_ALARM_HOURS => self.s.alarm_hour,
            REG_A => {
                if self.uip(frac) {
                    self.s.reg_a | REG_A_UIP
                } else {
                    self.s.reg_a
                }
            }
            REG_B => self.s.reg_b,
            REG_C => {
                self.catch_up();
                let c = std::mem::take(&mut self.s.reg_c);
                self.rearm();
                c
            }
            REG_D => REG_D_VRT,
            i => self.nvram_slot(i).map_or(0xff, |n| self.s.nvram[n]),
        }
    }

    fn nvram_slot(&self, index: u8) -> Option<usize> {
        usize::from(index)
            .checked_sub(usize::from(NVRAM_START))
            .filter(|n| *n < self.s.nvram.len())
    }

    /// Sets one field of the time the guest sees.
    fn write_time(&mut self, f: impl FnOnce(&mut RtcDateTime)) {
        let (host_secs, _) = self.host_now();
        let mut t = self.current(host_secs);
        f(&mut t);
        match &mut self.s.frozen {
            Some(frozen) => {
                *frozen = t;
                self.s.set_time_written = true;
            }
            None => {
                self.s.guest_offset_secs = t.to_unix().saturating_sub(host_secs);
                self.events.time_changed(self.s.guest_offset_secs);
            }
        }
    }

    fn write_register(&mut self, index: u8, v: u8) {
        let nvram = self.nvram_slot(index).filter(|_| index != REG_CENTURY);
        if let Some(n) = nvram {
            self.s.nvram[n] = v;
            return;
        }
        // Account for what came due under the old settings before changing them.
        self.catch_up();
        match index {
            REG_SECONDS => {
                let v = self.decode(v);
                self.write_time(|t| t.second = v);
            }
            REG_MINUTES => {
                let v = self.decode(v);
                self.write_time(|t| t.minute = v);
            }
            REG_HOURS => {
                let v = self.decode_hour(v);
                self.write_time(|t| t.hour = v);
            }
            REG_DAY_OF_MONTH => {
                let v = self.decode(v);
                self.write_time(|t| t.day = v);
            }
            REG_MONTH => {
                let v = self.decode(v);
                self.write_time(|t| t.month = v);
            }
            REG_YEAR => {
                let v = i64::from(self.decode(v));
                self.write_time(|t| t.year = t.year.div_euclid(100) * 100 + v);
            }
            REG_CENTURY => {
                let v = i64::from(self.decode(v));
                self.write_time(|t| t.year = v * 100 + t.year.rem_euclid(100));
            }
            REG_ALARM_SECONDS => self.s.alarm_second = v,
            REG_ALARM_MINUTES => self.s.alarm_minute = v,
            REG_ALARM_HOURS => self.s.alarm_hour = v,
            REG_A => {
                self.s.reg_a = v & !REG_A_UIP;
                self.sync_periodic();
            }
            REG_B => self.write_reg_b(v),
            _ => {}
        }
        self.rearm();
    }

    fn write_reg_b(&mut self, mut v: u8) {
        let (host_secs, _) = self.host_now();
        if v & REG_B_SET != 0 {
            // The chip clears UIE while SET is held.
            v &= !REG_B_UIE;
            if self.s.frozen.is_none() {
                self.s.frozen = Some(self.current(host_secs));
            }
        } else if let Some(t) = self.s.frozen.take() {
            if std::mem::take(&mut self.s.set_time_written) {
                self.s.guest_offset_secs = t.to_unix().saturating_sub(host_secs);
                self.events.time_changed(self.s.guest_offset_secs);
            }
        }
        self.s.reg_b = v;
        self.update_irqf();
    }
}

impl BusDevice for CmosRtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_bytes(offset, Self::WINDOW_LEN, data, |o| match o {
            // The index register is write-only.
            0 => 0xff,
            _ => self.read_register(self.s.index),
        });
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        write_bytes(offset, Self::WINDOW_LEN, data, |o, v| match o {
            // Bit 7 is the NMI mask on a PC, not part of the index.
            0 => self.s.index = v & 0x7f,
            _ => self.write_register(self.s.index, v),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Mutex;

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

    #[test]
    fn calendar_conversions_agree() {
        for secs in [0, T0, 951_782_400, 4_107_542_400, -86_400, 253_402_300_799] {
            assert_eq!(RtcDateTime::from_unix(secs).to_unix(), secs);
        }
        let t = RtcDateTime::from_unix(T0);
        assert_eq!((t.year, t.month, t.day), (2024, 2, 29));
        assert_eq!((t.hour, t.minute, t.second), (13, 5, 9));
        assert_eq!(t.day_of_week(), 5);
        // Out-of-range fields carry over.
        let odd = RtcDateTime {
            year: 2025,
            month: 2,
            day: 31,
            hour: 0,
            minute: 0,
            second: 0,
        };
        assert_eq!(RtcDateTime::from_unix(odd.to_unix()).day, 3);
    }

    #[test]
    fn bcd_24h_by_default() {
        let (mut d, _) = rtc_at(T0);
        assert_eq!(
            time_regs(&mut d),
            [0x09, 0x05, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]
        );
        assert_eq!(rd(&mut d, 0x0a), 0x26);
        assert_eq!(rd(&mut d, 0x0b), 0x02);
        assert_eq!(rd(&mut d, 0x0c), 0x00);
        assert_eq!(rd(&mut d, 0x0d), 0x80);
    }

    #[test]
    fn binary_mode_and_reg_b_toggles() {
        let (mut d, _) = rtc_at(T0);
        wr(&mut d, 0x0b, 0x06);
        assert_eq!(rd(&mut d, 0x0b), 0x06);
        assert_eq!(time_regs(&mut d), [9, 5, 13, 5, 29, 2, 24, 20]);
        wr(&mut d, 0x0b, 0x02);
        assert_eq!(rd(&mut d, 0x00), 0x09);
        // Interrupt enables read back; SET clears UIE.
        wr(&mut d, 0x0b, 0x72);
        assert_eq!(rd(&mut d, 0x0b), 0x72);
        wr(&mut d, 0x0b, 0xf2);
        assert_eq!(rd(&mut d, 0x0b), 0xe2);
        wr(&mut d, 0x0b, 0x02);
        assert_eq!(rd(&mut d, 0x0c), 0, "no time passed: no flags");
        // Register A keeps its low seven bits; C and D are read-only.
        wr(&mut d, 0x0a, 0xa6);
        assert_eq!(rd(&mut d, 0x0a), 0x26);
        wr(&mut d, 0x0c, 0xff);
        wr(&mut d, 0x0d, 0x00);
        assert_eq!((rd(&mut d, 0x0c), rd(&mut d, 0x0d)), (0, 0x80));
        assert_eq!(d.guest_offset_secs(), 0);
    }

    #[test]
    fn twelve_hour_mode_sets_the_pm_bit() {
        let (mut d, c) = rtc_at(T0);
        wr(&mut d, 0x0b, 0x00);
        assert_eq!(rd(&mut d, 0x04), 0x81, "1 PM in BCD");
        wr(&mut d, 0x0b, 0x04);
        assert_eq!(rd(&mut d, 0x04), 0x81, "1 PM in binary");
        let midnight = T0 - 13 * 3600 - 5 * 60 - 9;
        c.set_nanos(midnight * 1_000_000_000);
        wr(&mut d, 0x0b, 0x00);
        assert_eq!(rd(&mut d, 0x04), 0x12, "12 AM");
        c.advance_secs(12 * 3600);
        assert_eq!(rd(&mut d, 0x04), 0x92, "12 PM");
        c.advance_secs(11 * 3600);
        assert_eq!(rd(&mut d, 0x04), 0x91, "11 PM");
        // Writing 3 PM in 12-hour mode.
        wr(&mut d, 0x04, 0x83);
        wr(&mut d, 0x0b, 0x02);
        assert_eq!(rd(&mut d, 0x04), 0x15);
        assert_eq!(d.guest_offset_secs(), -8 * 3600);
    }

    #[test]
    fn setting_the_clock_like_linux_moves_the_offset() {
        // 2025-01-31 23:59:58; Linux writes year, month, day, hour, minute, second with SET held.
        let now = 1_738_367_998;
        let (mut d, c) = rtc_at(now);
        wr(&mut d, 0x0b, 0x82);
        c.advance_secs(3);
        assert_eq!(rd(&mut d, 0x00), 0x58, "frozen while SET is held");
        for (i, v) in [
            (0x09, 0x25),
            (0x08, 0x02),
            (0x07, 0x15),
            (0x04, 0x08),
            (0x02, 0x30),
            (0x00, 0x00),
        ] {
            wr(&mut d, i, v);
        }
        assert_eq!(d.guest_offset_secs(), 0, "not committed before SET clears");
        wr(&mut d, 0x0b, 0x02);
        let target = 1_739_608_200; // 2025-02-15 08:30:00
        assert_eq!(d.guest_offset_secs(), target - (now + 3));
        assert_eq!(
            time_regs(&mut d),
            [0x00, 0x30, 0x08, 0x07, 0x15, 0x02, 0x25, 0x20]
        );
        c.advance_secs(5);
        assert_eq!(rd(&mut d, 0x00), 0x05, "and it runs from there");
    }

    #[test]
    fn a_single_write_without_set_moves_the_offset_at_once() {
        let (mut d, _) = rtc_at(T0);
        wr(&mut d, 0x02, 0x07);
        assert_eq!(d.guest_offset_secs(), 120);
        wr(&mut d, 0x32, 0x19);
        assert_eq!(rd(&mut d, 0x09), 0x24);
        assert_eq!(rd(&mut d, 0x32), 0x19);
        let t = RtcDateTime::from_unix(T0 + d.guest_offset_secs());
        assert_eq!((t.year, t.month, t.day, t.minute), (1924, 2, 29, 7));
        // The day of week follows the date and ignores writes.
        wr(&mut d, 0x06, 0x01);
        assert_eq!(rd(&mut d, 0x06), 0x06, "29 Feb 1924 was a Friday");
    }

    #[test]
    fn uip_only_just_before_the_second_turns() {
        let (mut d, c) = rtc_at(T0);
        assert_eq!(rd(&mut d, 0x0a) & 0x80, 0);
        c.set_nanos(T0 * 1_000_000_000 + 999_900_000);
        assert_eq!(rd(&mut d, 0x0a), 0xa6);
        c.set_nanos((T0 + 1) * 1_000_000_000);
        assert_eq!(rd(&mut d, 0x0a), 0x26);
        c.set_nanos(T0 * 1_000_000_000 + 999_900_000);
        wr(&mut d, 0x0b, 0x82);
        assert_eq!(rd(&mut d, 0x0a) & 0x80, 0, "not while SET is held");
        wr(&mut d, 0x0b, 0x02);
        wr(&mut d, 0x0a, 0x66);
        assert_eq!(rd(&mut d, 0x0a), 0x66, "not while the divider is in reset");
    }

    #[test]
    fn nvram_round_trips_and_index_bit_7_is_ignored() {
        let (mut d, _) = rtc_at(T0);
        for i in 14u8..128 {
            if i != 0x32 {
                wr(&mut d, i, i ^ 0xa5);
            }
        }
        for i in 14u8..128 {
            if i != 0x32 {
                assert_eq!(rd(&mut d, i), i ^ 0xa5, "index {i:#x}");
            }
        }
        // 0x80 | 0x20 selects 0x20 (NMI masked).
        wr(&mut d, 0xa0, 0x11);
        assert_eq!(rd(&mut d, 0x20), 0x11);
        assert_eq!(rd(&mut d, 0x8e), 0x0e ^ 0xa5);
        assert_eq!(rd(&mut d, 0x80), 0x09, "0x80 is the seconds register");
        // The index port is write-only; stray and wide accesses are harmless.
        let mut two = [0u8; 2];
        d.read(0, &mut two);
        assert_eq!(two[0], 0xff);
        d.write(0, &[0x20, 0x33]);
        assert_eq!(rd(&mut d, 0x20), 0x33);
        let mut four = [0u8; 4];
        d.read(1, &mut four);
        assert_eq!(four[1..], [0xff; 3]);
        d.write(u64::MAX, &[1, 2]);
    }

    struct EdgeClock(i128);

    impl Clock for EdgeClock {
        fn now_unix_nanos(&self) -> i128 {
            self.0
        }
    }

    #[test]
    fn absurd_host_clocks_and_garbage_writes_do_not_panic() {
        for n in [i128::MAX, i128::MIN, 0, -1] {
            let mut d = CmosRtc::new(Parts::default().config(Arc::new(EdgeClock(n))));
            for b in [0x00, 0x02, 0x06, 0x82, 0x86] {
                wr(&mut d, 0x0b, b);
                for i in 0..0x0e {
                    wr(&mut d, i, 0xff);
                    wr(&mut d, 0x32, 0xff);
                    let _ = time_regs(&mut d);
                }
            }
        }
    }

    #[test]
    fn state_round_trips() {
        let c = FakeClock::at(T0);
        let parts = Parts::default();
        let mut d = CmosRtc::new(parts.config(c.clone()));
        wr(&mut d, 0x40, 0x99);
        wr(&mut d, 0x01, 0x30);
        wr(&mut d, 0x0b, 0x86);
        wr(&mut d, 0x00, 30);
        let s = d.state();
        assert!(s.frozen.is_some());
        assert_eq!(s.index, 0x00);
        let mut e =
            CmosRtc::from_state(&s, parts.config(c.clone())).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.state(), s);
        assert_eq!(rd(&mut e, 0x40), 0x99);
        assert_eq!(rd(&mut e, 0x01), 0x30);
        wr(&mut e, 0x0b, 0x06);
        assert_eq!(e.guest_offset_secs(), 21);
        assert_eq!(rd(&mut e, 0x00), 30);

        let mut bad = s.clone();
        bad.nvram.pop();
        assert!(e.restore(&bad).is_err());
        let mut bad = s.clone();
        bad.frozen = None;
        assert!(e.restore(&bad).is_err());
        let mut bad = s.clone();
        bad.guest_offset_secs = i64::MIN;
        assert!(e.restore(&bad).is_err());
        let mut bad = s.clone();
        bad.frozen = bad.frozen.map(|t| RtcDateTime {
            year: i64::MAX,
            ..t
        });
        assert!(e.restore(&bad).is_err());
        let mut bad = s;
        bad.index = 0x80;
        assert!(e.restore(&bad).is_err());
        assert_eq!(e.guest_offset_secs(), 21, "unchanged by failed restores");
    }

    /// Fires the timer until guest time passes `until_ns`, reading C after each fire
    /// like an interrupt handler; returns the guest times (ns) of the pulses.
    fn run_acking(r: &mut Rig, until_ns: u64) -> Vec<u64> {
        let mut pulses = Vec::new();
        while r.deadline().is_some_and(|t| t <= until_ns) {
            let before = r.irqs();
            assert!(r.fire());
            if r.irqs() > before {
                pulses.push(r.now());
                r.rd(0x0c);
            }
        }
        pulses
    }

    #[test]
    fn update_ended_interrupt_once_per_second() {
        let mut r = rig(T0, false);
        // No periodic rate, so PF stays out of register C.
        r.wr(0x0a, 0x20);
        r.wr(0x0b, 0x12);
        assert_eq!(r.deadline(), Some(SEC), "the next turnover");
        for i in 1..=3 {
            assert!(r.fire());
            assert_eq!(r.now(), i * SEC);
            assert_eq!(r.irqs(), i as usize);
            assert_eq!(r.rd(0x0c), 0x90);
            assert_eq!(r.rd(0x0c), 0x00);
            assert_eq!(r.deadline(), Some((i + 1) * SEC));
        }
        r.advance_ns(SEC / 2);
        assert_eq!(r.rd(0x0c), 0);
        assert_eq!(r.irqs(), 3);
        assert_eq!(r.rd(0x00), 0x12, "13:05:12");
    }

    #[test]
    fn update_flag_without_uie_is_polled_not_interrupted() {
        let mut r = rig(T0, false);
        r.wr(0x0a, 0x20);
        assert_eq!(r.deadline(), None);
        r.advance_ns(SEC);
        assert_eq!(r.rd(0x0c), 0x10);
        assert_eq!(r.rd(0x0c), 0x00);
        // No updates while SET is held, and SET clears UIE.
        r.wr(0x0b, 0x92);
        assert_eq!(r.rd(0x0b), 0x82);
        r.advance_ns(2 * SEC);
        assert_eq!(r.rd(0x0c), 0x00);
        r.wr(0x0b, 0x02);
        r.advance_ns(SEC / 2);
        assert_eq!(r.rd(0x0c), 0x00);
        r.advance_ns(SEC / 2);
        assert_eq!(r.rd(0x0c), 0x10);
        assert_eq!(r.irqs(), 0);
        assert!(r.p.events.take().is_empty(), "SET without a time write");
        // A pending flag raises IRQF as soon as it is enabled.
        r.advance_ns(SEC);
        r.wr(0x0b, 0x12);
        assert_eq!(r.irqs(), 1);
        assert_eq!(r.rd(0x0c), 0x90);
    }

    #[test]
    fn alarm_fires_at_the_matching_second_only() {
        // 13:05:12 in BCD, 24 hours.
        let mut r = rig(T0, false);
        r.wr(0x0a, 0x20);
        r.wr(0x05, 0x13);
        r.wr(0x03, 0x05);
        r.wr(0x01, 0x12);
        r.advance_ns(2 * SEC);
        assert_eq!(r.rd(0x0c), 0x10, "not at 13:05:11");
        r.advance_ns(SEC);
        assert_eq!(r.rd(0x0c), 0x30, "AF without AIE, no interrupt");
        assert_eq!(r.irqs(), 0);

        let mut r = rig(T0, false);
        r.wr(0x05, 0x13);
        r.wr(0x03, 0x05);
        r.wr(0x01, 0x12);
        r.wr(0x0b, 0x22);
        assert_eq!(r.deadline(), Some(3 * SEC));
        assert_eq!(run_acking(&mut r, 200 * SEC), [3 * SEC]);
        assert_eq!(r.irqs(), 1);

        // Any hour and minute, second 30: every minute at :30.
        let mut r = rig(T0, false);
        r.wr(0x05, 0xc0);
        r.wr(0x03, 0xff);
        r.wr(0x01, 0x30);
        r.wr(0x0b, 0x22);
        assert_eq!(
            run_acking(&mut r, 150 * SEC),
            [21 * SEC, 81 * SEC, 141 * SEC]
        );

        // Any hour, 06:00: hourly.
        let mut r = rig(T0, false);
        r.wr(0x05, 0xc3);
        r.wr(0x03, 0x06);
        r.wr(0x01, 0x00);
        r.wr(0x0b, 0x22);
        assert_eq!(run_acking(&mut r, 3700 * SEC), [51 * SEC, 3651 * SEC]);

        // 12 hours (1 PM is 0x81) and binary.
        let mut r = rig(T0, false);
        r.wr(0x0b, 0x20);
        r.wr(0x05, 0x81);
        r.wr(0x03, 0x05);
        r.wr(0x01, 0x15);
        assert_eq!(run_acking(&mut r, 100 * SEC), [6 * SEC]);
        r.wr(0x05, 0x01);
        r.wr(0x03, 0xc0);
        r.wr(0x01, 0xc0);
        assert!(run_acking(&mut r, 200 * SEC).is_empty(), "1 AM is not 1 PM");
        let mut r = rig(T0, false);
        r.wr(0x0b, 0x26);
        r.wr(0x05, 13);
        r.wr(0x03, 5);
        r.wr(0x01, 20);
        assert_eq!(run_acking(&mut r, 100 * SEC), [11 * SEC]);
    }

    #[test]
    fn periodic_1024hz_ticks_over_one_second() {
        let mut r = rig(T0, false);
        r.wr(0x0b, 0x42);
        assert_eq!(r.deadline(), Some(976_563), "1/1024 s, rounded up");
        let mut ticks = 0;
        while r.deadline().is_some_and(|t| t <= SEC) {
            assert!(r.fire());
            assert_eq!(r.rd(0x0c) & 0xc0, 0xc0);
            ticks += 1;
        }
        assert_eq!((ticks, r.irqs()), (1024, 1024));
        assert_eq!(r.now(), SEC, "the 1024th tick is on the second");
        // Served half a period late, the ticks keep their phase.
        let late = r.deadline().unwrap_or_default() - r.now() + 500_000;
        r.advance_ns(late);
        r.d.timer_fired();
        assert_eq!(r.irqs(), 1025);
        assert_eq!(r.deadline(), Some(cycles_to_ns(32_768 + 64)));
        // The other rates.
        for (a, period_ns) in [
            (0x21, 3_906_250),
            (0x22, 7_812_500),
            (0x23, 122_071),
            (0x2f, 500_000_000),
        ] {
            let mut r = rig(T0, false);
            r.wr(0x0a, a);
            r.wr(0x0b, 0x42);
            assert_eq!(r.deadline(), Some(period_ns), "register A {a:#x}");
        }
    }

    #[test]
    fn periodic_stops_with_the_divider_or_rate_zero() {
        let mut r = rig(T0, false);
        r.advance_ns(2_000_000);
        assert_eq!(r.rd(0x0c), 0x40, "PF without PIE");
        r.wr(0x0b, 0x42);
        assert!(r.deadline().is_some());
        for a in [0x20, 0x66, 0x06] {
            r.wr(0x0a, a);
            assert_eq!(r.deadline(), None, "register A {a:#x}");
            r.advance_ns(10_000_000);
            assert_eq!(r.rd(0x0c), 0, "register A {a:#x}");
        }
        r.wr(0x0a, 0x26);
        assert!(r.deadline().is_some());
        r.advance_ns(2_000_000);
        assert_eq!(r.rd(0x0c), 0xc0);
    }

    #[test]
    fn timer_is_disarmed_when_nothing_is_enabled() {
        let mut r = rig(T0, false);
        assert_eq!(r.deadline(), None);
        r.wr(0x0b, 0x72);
        assert!(r.deadline().is_some());
        r.wr(0x0b, 0x02);
        assert_eq!(r.deadline(), None);
        // An alarm no time matches (BCD 0x60 seconds).
        r.wr(0x01, 0x60);
        r.wr(0x0b, 0x22);
        assert_eq!(r.deadline(), None);
        // Updates stopped: UIE and AIE wait for nothing.
        r.wr(0x01, 0xc0);
        r.wr(0x0b, 0x32);
        assert!(r.deadline().is_some());
        r.wr(0x0a, 0x76);
        assert_eq!(r.deadline(), None);
        r.wr(0x0a, 0x26);
        r.wr(0x0b, 0xb2);
        assert_eq!(r.deadline(), None, "SET held");
        r.wr(0x0b, 0x02);
        assert_eq!(r.deadline(), None);
    }

    #[test]
    fn coalesced_ticks_are_lost_without_slew() {
        let mut r = rig(T0, false);
        r.wr(0x0b, 0x42);
        for _ in 0..10 {
            assert!(r.fire());
        }
        assert_eq!((r.irqs(), r.d.coalesced_ticks()), (1, 0));
        assert_eq!(r.rd(0x0c), 0xc0);
        for _ in 0..5 {
            assert!(r.fire());
            r.rd(0x0c);
        }
        assert_eq!(r.irqs(), 6);
        assert_eq!(r.now(), cycles_to_ns(15 * 32), "no extra deadlines");
    }

    #[test]
    fn slew_reinjects_owed_ticks_after_the_ack() {
        let mut r = rig(T0, true);
        r.wr(0x0b, 0x42);
        while r.now() < cycles_to_ns(10 * 32) {
            assert!(r.fire());
        }
        assert_eq!((r.irqs(), r.d.coalesced_ticks()), (1, 9));
        assert_eq!(r.rd(0x0c), 0xc0);
        // Nine periods of two pulses: regular ticks and owed ones between them.
        let pulses = run_acking(&mut r, cycles_to_ns(19 * 32));
        let expect: Vec<u64> = (0..18).map(|i| cycles_to_ns(336 + i * 16)).collect();
        assert_eq!(pulses, expect);
        assert_eq!(r.d.coalesced_ticks(), 0);
        assert_eq!(
            r.deadline(),
            Some(cycles_to_ns(20 * 32)),
            "back to the rate"
        );

        // rtc-reset-reinjection forgets the debt.
        for _ in 0..5 {
            assert!(r.fire());
        }
        assert!(r.d.coalesced_ticks() > 0);
        r.d.reset_reinjection();
        assert_eq!(r.d.coalesced_ticks(), 0);
        r.rd(0x0c);
        let start = r.now();
        assert_eq!(run_acking(&mut r, start + cycles_to_ns(3 * 32)).len(), 3);

        // A long stall owes at most MAX_OWED_TICKS.
        r.advance_ns(10 * SEC);
        assert!(r.fire());
        assert_eq!(r.d.coalesced_ticks(), MAX_OWED_TICKS);
        r.wr(0x0b, 0x02);
        assert_eq!(r.deadline(), None, "owed ticks wait for PIE");
    }

    #[test]
    fn rtc_change_reports_the_new_offset_once() {
        let mut r = rig(T0, false);
        // Linux sets 14:05:09 on the same day: an hour ahead.
        r.wr(0x0b, 0x82);
        for (i, v) in [(0x09, 0x24), (0x08, 0x02), (0x07, 0x29), (0x04, 0x14)] {
            r.wr(i, v);
        }
        r.wr(0x00, 0x09);
        r.wr(0x02, 0x05);
        assert!(r.p.events.take().is_empty(), "not before SET clears");
        r.wr(0x0b, 0x02);
        assert_eq!(r.p.events.take(), [3600]);
        assert_eq!(r.d.guest_offset_secs(), 3600);
        // SET raised and dropped without a write: nothing.
        r.wr(0x0b, 0x82);
        r.advance_ns(3 * SEC);
        r.wr(0x0b, 0x02);
        assert!(r.p.events.take().is_empty());
        assert_eq!(r.d.guest_offset_secs(), 3600);
        // A direct minute write moves the offset at once.
        r.wr(0x02, 0x06);
        assert_eq!(r.p.events.take(), [3660]);
        assert_eq!(r.rd(0x02), 0x06);
    }

    #[test]
    fn interrupt_state_round_trips_and_bad_state_is_rejected() {
        let mut r = rig(T0, true);
        r.wr(0x0b, 0x42);
        while r.now() < cycles_to_ns(6 * 32) {
            assert!(r.fire());
        }
        r.wr(0x0b, 0x82);
        r.wr(0x00, 0x30);
        let s = r.d.state();
        assert_eq!(
            (s.reg_c, s.coalesced_ticks, s.set_time_written),
            (0x40, 5, true)
        );
        let e = CmosRtc::from_state(&s, r.p.config(r.wall.clone()));
        let mut e = e.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.state(), s);
        assert_eq!(r.irqs(), 1, "restoring does not pulse");
        wr(&mut e, 0x0b, 0x42);
        assert_eq!(r.p.events.take(), [21]);
        assert_eq!(r.irqs(), 2, "PF pending, PIE back on");
        assert_eq!(rd(&mut e, 0x0c), 0xc0);

        let good = RtcState {
            reg_b: 0x42,
            reg_c: 0xc0,
            coalesced_ticks: MAX_OWED_TICKS,
            ..RtcState::default()
        };
        assert!(e.restore(&good).is_ok());
        for bad in [
            RtcState {
                reg_c: 0x01,
                ..good.clone()
            },
            RtcState {
                reg_c: 0x40,
                ..good.clone()
            },
            RtcState {
                reg_b: 0x02,
                ..good.clone()
            },
            RtcState {
                coalesced_ticks: MAX_OWED_TICKS + 1,
                ..good.clone()
            },
            RtcState {
                set_time_written: true,
                ..good.clone()
            },
            RtcState {
                reg_b: 0x92,
                reg_c: 0,
                frozen: Some(RtcDateTime::from_unix(T0)),
                ..good.clone()
            },
        ] {
            assert!(e.restore(&bad).is_err(), "{bad:?}");
        }
        assert_eq!(e.state(), good, "unchanged by failed restores");

        // A state saved before the interrupts existed still loads.
        let mut old = serde_json::to_value(RtcState::default()).unwrap_or_else(|e| panic!("{e}"));
        if let Some(o) = old.as_object_mut() {
            for k in ["reg_c", "coalesced_ticks", "set_time_written"] {
                assert!(o.remove(k).is_some());
            }
        }
        let old: RtcState = serde_json::from_value(old).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(old, RtcState::default());
    }

    #[test]
    fn garbage_at_every_index_does_not_panic() {
        let clocks: [Arc<dyn Clock>; 3] = [
            FakeClock::at(T0),
            Arc::new(EdgeClock(i128::MAX)),
            Arc::new(EdgeClock(i128::MIN)),
        ];
        for (n, clock) in clocks.into_iter().enumerate() {
            let p = Parts {
                slew: true,
                guest: Arc::new(ManualClock::new(if n == 1 { u64::MAX - 7 } else { 0 })),
                ..Parts::default()
            };
            let mut d = CmosRtc::new(p.config(clock));
            for i in 0..=255u8 {
                for v in (0..=255u8).step_by(if n == 0 { 1 } else { 17 }) {
                    wr(&mut d, i, v);
                    rd(&mut d, i);
                    if v % 64 == 0 {
                        p.guest.advance(123_456_789);
                        d.timer_fired();
                        d.write(0, &[0x0c, 0xff]);
                        let mut b = [0; 4];
                        d.read(0, &mut b);
                    }
                }
            }
            let _ = d.coalesced_ticks();
            d.reset_reinjection();
        }
    }
}
