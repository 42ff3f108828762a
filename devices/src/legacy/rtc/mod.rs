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
//!
//! Split along the chip's parts:
//! - `clock`: the host clock, calendar arithmetic (`RtcDateTime`) and the BCD/binary,
//!   12/24-hour encoding of the time registers;
//! - `irq`: the three interrupt sources (update-ended, alarm, periodic), IRQF, slew
//!   reinjection and the timer deadline;
//! - `regs`: the CMOS register file the guest reads and writes through the index port.
//!
//! Dependencies run one way: `clock` <- `irq` <- `regs`. This file holds the device
//! state ([`CmosRtc`], [`RtcState`]), the register bits all three use,
//! construction, migration and the port-bus glue. The device takes no lock of its own:
//! the caller holds the device (by `&mut`) across every call.

mod clock;
mod irq;
mod regs;

pub use clock::{Clock, RtcDateTime, SystemClock};
pub use irq::MAX_OWED_TICKS;

use clock::{MAX_OFFSET_SECS, MAX_YEAR};
use irq::Periodic;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{read_bytes, write_bytes, LegacyError};
use crate::timer::{GuestClock, Timer};
use crate::{BusDevice, Interrupt};

/// First NVRAM index; NVRAM runs to the end of the 128-byte index space.
const NVRAM_START: u8 = 0x0e;
const CMOS_SIZE: usize = 128;
const NVRAM_LEN: usize = CMOS_SIZE - NVRAM_START as usize;

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
mod tests;
