//! Time: the host's wall clock as the RTC sees it, the proleptic Gregorian calendar
//! arithmetic between Unix seconds and broken-down dates, and the encoding of the time
//! registers (BCD or binary, 12 or 24 hours) in the guest's current mode.
//!
//! Invariant: the time is never stored; it is the host clock plus the guest offset
//! (or the frozen value while SET is held). The arithmetic saturates or carries,
//! never panics, for any offset up to `MAX_OFFSET_SECS` and year up to `MAX_YEAR`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{CmosRtc, HOUR_PM, REG_B_24H, REG_B_BINARY};

pub(super) const NANOS_PER_SEC: i128 = 1_000_000_000;
pub(super) const SECS_PER_DAY: i64 = 86_400;

/// Far beyond anything the registers can express (year 0 to 25755), and small enough
/// that the calendar arithmetic cannot overflow: a saved state past these is corrupt.
pub(super) const MAX_OFFSET_SECS: u64 = 1 << 40;
pub(super) const MAX_YEAR: u64 = 1_000_000;

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
    pub(super) fn day_of_week(&self) -> u8 {
        let days = days_from_civil(self.year, i64::from(self.month), i64::from(self.day));
        // 1970-01-01 was a Thursday.
        ((days + 4).rem_euclid(7) + 1) as u8
    }
}

/// Days since 1970-01-01 of a date; a month outside 1..=12 or a day past the month's
/// end carries into the following ones (Howard Hinnant's `days_from_civil`).
pub(super) fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
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

pub(super) fn civil_from_days(days: i64) -> (i64, u8, u8) {
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

impl CmosRtc {
    /// Host time as whole seconds and the nanoseconds into the current second.
    pub(super) fn host_now(&self) -> (i64, i128) {
        let n = self.clock.now_unix_nanos();
        let secs = n.div_euclid(NANOS_PER_SEC);
        let secs = i64::try_from(secs).unwrap_or(if secs < 0 { i64::MIN } else { i64::MAX });
        (secs, n.rem_euclid(NANOS_PER_SEC))
    }

    /// What the time registers show now.
    pub(super) fn current(&self, host_secs: i64) -> RtcDateTime {
        self.s.frozen.unwrap_or_else(|| {
            RtcDateTime::from_unix(host_secs.saturating_add(self.s.guest_offset_secs))
        })
    }

    pub(super) fn binary(&self) -> bool {
        self.s.reg_b & REG_B_BINARY != 0
    }

    pub(super) fn encode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            let v = v % 100;
            ((v / 10) << 4) | (v % 10)
        }
    }

    /// Garbage BCD digits are taken at face value (0xff reads as 165), as on the chip.
    pub(super) fn decode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            (v >> 4) * 10 + (v & 0x0f)
        }
    }

    pub(super) fn encode_hour(&self, h: u8) -> u8 {
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

    pub(super) fn decode_hour(&self, v: u8) -> u8 {
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
}
