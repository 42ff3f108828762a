//! The MC146818 CMOS RTC (port 0x70 index, 0x71 data; a window of 2): the guest's
//! wall clock and 114 bytes of battery-backed NVRAM.
//!
//! The time is never stored: every read computes it from the host's `Clock` plus
//! `guest_offset_secs`, the only thing a guest changes when it sets the clock (and what
//! migration carries, so the guest's clock keeps its distance from the host's). While
//! the guest holds register B's SET bit, the time registers are frozen at the value
//! they had, take the guest's writes field by field (an impossible date such as
//! 31 February on the way from 31 January to 15 February is fine), and the new offset
//! is computed when SET clears. Without SET, a write to one field moves the offset at once.
//!
//! Kept as on the chip: BCD or binary (register B bit 2), 12 or 24 hours (bit 1, PM in
//! bit 7 of the hour), UIP in register A for the last 244 µs before each second turns
//! over (never while SET is held or the divider is not running, so it never sticks),
//! VRT always set in register D, bit 7 of an index write (the NMI mask) ignored, the
//! century at index 0x32 (the PC convention that the FADT's CENTURY field names).
//!
//! Not modelled yet: the update-ended, alarm and periodic interrupts. Their enable bits
//! in register B and the alarm registers read back what the guest wrote, register C
//! always reads 0 and IRQ8 is never raised, so Linux's rtc-cmos falls back to polling.
//! The day of week is derived from the date (writes to it are ignored), the divider
//! bits of register A are stored but the clock never stops for them, and daylight
//! saving (register B bit 0) is stored but never applied.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{read_bytes, write_bytes, LegacyError};
use crate::BusDevice;

const NANOS_PER_SEC: i128 = 1_000_000_000;
/// UIP rises this long before each update (MC146818 datasheet, t_BUC).
const UIP_LEAD_NANOS: i128 = 244_000;

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

const REG_A_UIP: u8 = 1 << 7;
const REG_A_DIVIDER_MASK: u8 = 0x70;
/// 32.768 kHz time base, divider running.
const REG_A_DIVIDER_NORMAL: u8 = 0x20;
const REG_B_SET: u8 = 1 << 7;
const REG_B_UIE: u8 = 1 << 4;
const REG_B_BINARY: u8 = 1 << 2;
const REG_B_24H: u8 = 1 << 1;
const REG_D_VRT: u8 = 1 << 7;
const HOUR_PM: u8 = 1 << 7;

/// Power-on values as a PC BIOS leaves them: 32.768 kHz, 1024 Hz rate; BCD, 24 hours.
const DEFAULT_REG_A: u8 = 0x26;
const DEFAULT_REG_B: u8 = REG_B_24H;

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
        }
    }
}

/// The CMOS RTC on the port bus.
pub struct CmosRtc {
    clock: Arc<dyn Clock>,
    s: RtcState,
}

impl CmosRtc {
    /// Length of the port window at 0x70.
    pub const WINDOW_LEN: u64 = 2;

    /// An RTC showing the host clock's time, NVRAM cleared.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            s: RtcState::default(),
        }
    }

    /// An RTC in a saved state.
    pub fn from_state(state: &RtcState, clock: Arc<dyn Clock>) -> Result<Self, LegacyError> {
        let mut d = Self::new(clock);
        d.restore(state)?;
        Ok(d)
    }

    pub fn state(&self) -> RtcState {
        self.s.clone()
    }

    /// Replaces the guest-visible state; on error the device is unchanged.
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
        self.s = state.clone();
        self.s.reg_a &= !REG_A_UIP;
        Ok(())
    }

    /// Guest time minus host time, in seconds: what the guest did to its clock. A new
    /// time the guest is in the middle of setting (SET held) counts once SET clears.
    pub fn guest_offset_secs(&self) -> i64 {
        self.s.guest_offset_secs
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

    fn uip(&self, nanos_into_second: i128) -> bool {
        self.s.frozen.is_none()
            && self.s.reg_a & REG_A_DIVIDER_MASK == REG_A_DIVIDER_NORMAL
            && nanos_into_second >= NANOS_PER_SEC - UIP_LEAD_NANOS
    }

    fn read_register(&self, index: u8) -> u8 {
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
            // No interrupt sources are modelled: no flags ever.
            REG_C => 0,
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
            Some(frozen) => *frozen = t,
            None => self.s.guest_offset_secs = t.to_unix().saturating_sub(host_secs),
        }
    }

    fn write_register(&mut self, index: u8, v: u8) {
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
            REG_A => self.s.reg_a = v & !REG_A_UIP,
            REG_B => self.write_reg_b(v),
            REG_DAY_OF_WEEK | REG_C | REG_D => {}
            i => {
                if let Some(n) = self.nvram_slot(i) {
                    self.s.nvram[n] = v;
                }
            }
        }
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
            self.s.guest_offset_secs = t.to_unix().saturating_sub(host_secs);
        }
        self.s.reg_b = v;
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

    use super::*;

    /// 2024-02-29 13:05:09 UTC, a Thursday.
    const T0: i64 = 1_709_211_909;

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
    }

    impl Clock for FakeClock {
        fn now_unix_nanos(&self) -> i128 {
            i128::from(self.0.load(Ordering::SeqCst))
        }
    }

    fn rtc_at(secs: i64) -> (CmosRtc, Arc<FakeClock>) {
        let c = FakeClock::at(secs);
        (CmosRtc::new(c.clone()), c)
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
        assert_eq!(rd(&mut d, 0x0c), 0, "no interrupt flags");
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
            let mut d = CmosRtc::new(Arc::new(EdgeClock(n)));
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
        let (mut d, c) = rtc_at(T0);
        wr(&mut d, 0x40, 0x99);
        wr(&mut d, 0x01, 0x30);
        wr(&mut d, 0x0b, 0x86);
        wr(&mut d, 0x00, 30);
        let s = d.state();
        assert!(s.frozen.is_some());
        assert_eq!(s.index, 0x00);
        let mut e = CmosRtc::from_state(&s, c.clone()).unwrap_or_else(|e| panic!("{e}"));
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
}
