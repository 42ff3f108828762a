//! The CMOS register file: reads and writes through the index/data ports, the time
//! registers (frozen while SET is held), registers A to D and the NVRAM.
//!
//! Invariant: no value the guest writes at any index panics or corrupts the state; a
//! write that changes register A or B re-derives the periodic rate and the timer.

use super::clock::RtcDateTime;
use super::{CmosRtc, NVRAM_START, REG_A_UIP, REG_B_SET, REG_B_UIE, REG_D_VRT};

// Register indices (the NVRAM starts at `NVRAM_START`).
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

impl CmosRtc {
    pub(super) fn read_register(&mut self, index: u8) -> u8 {
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

    pub(super) fn nvram_slot(&self, index: u8) -> Option<usize> {
        usize::from(index)
            .checked_sub(usize::from(NVRAM_START))
            .filter(|n| *n < self.s.nvram.len())
    }

    /// Sets one field of the time the guest sees.
    pub(super) fn write_time(&mut self, f: impl FnOnce(&mut RtcDateTime)) {
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

    pub(super) fn write_register(&mut self, index: u8, v: u8) {
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

    pub(super) fn write_reg_b(&mut self, mut v: u8) {
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
