//! The Intel 6300ESB watchdog timer as a PCI function (QEMU's `-device i6300esb`,
//! 8086:25ab, class 08.80), the watchdog Linux's `i6300esb` driver binds to.
//!
//! ```text
//!  config 0x60  ESB config (16 bit)  bit 5: WDT output (reboot) disabled when set
//!                                    bit 2: clock scale, 1 MHz when set, else 1 kHz
//!                                    bits 1:0: interrupt type at stage 1 (3 = none)
//!  config 0x68  lock (8 bit)         bit 0: LOCK  bit 1: ENABLE  bit 2: free-running
//!  BAR0 0x00    timer 1 preload (20 bit)   } written only right after the unlock
//!  BAR0 0x04    timer 2 preload (20 bit)   } sequence: 0x80 then 0x86 to 0x0c,
//!  BAR0 0x0c    reload (16 bit)            } and one write re-locks them
//!               bit 8: RELOAD (ping)  bit 9: TIMEOUT (this watchdog reset the machine;
//!               write 1 to clear)
//!  BAR0 0x08    GINTSR: bit 0 set when stage 1 ran out (write 1 to clear)
//! ```
//!
//! Counting: enabling the watchdog (0 -> 1 of ENABLE) or a ping starts stage 1, which
//! lasts timer 1's preload; when it runs out stage 2 starts with timer 2's preload.
//! When stage 2 runs out with the output enabled the watchdog fires: the TIMEOUT flag
//! is set, [`WatchdogSink::expired`] is called once and nothing is re-armed until the
//! guest pings or re-enables. With the output disabled nothing happens, except that a
//! free-running watchdog starts stage 1 again. A preload unit is 2^15 PCI clocks
//! (33 MHz) at the 1 kHz scale and 2^5 at the 1 MHz scale; Linux writes `heartbeat << 9`
//! to both preloads, so each stage is about half the heartbeat.
//!
//! As in QEMU, the stage-1 interrupt (IRQ or SMI) is not delivered: only GINTSR's bit
//! records it. Also as in QEMU, LOCK freezes the lock register only (the ESB config
//! register stays writable), the unlock sequence survives stray writes between 0x80
//! and 0x86, and the reload register reads the TIMEOUT flag at bit 12 too and clears it
//! on bit 12 as well, for old Linux drivers that used that bit. Unlike QEMU, the
//! preloads and GINTSR read back, and after firing the device stays enabled (QEMU
//! resets it) so a guest that survives the action (`-watchdog-action none`) can ping
//! it back to life.
//!
//! [`I6300Esb::reset`] is a device reset and keeps the TIMEOUT flag, so the guest's
//! driver learns after a watchdog reboot that the watchdog caused it. The PCI header
//! (command register, BAR address) is the bus's to reset: changing it here would
//! move BAR0 without telling the machine.
//!
//! Time: the model arms one [`Timer`] on the [`GuestClock`] for the end of the current
//! stage, and the machine calls [`I6300Esb::timer_fired`] when it passes. The sink is
//! called with the device borrowed mutably (the machine holds the device's lock), so
//! it must not call back into the device; it should queue the action.
//!
//! Migration (the saved state, its validation and restore) lives in `state`, which
//! uses only this file's items; this file holds the watchdog's registers, its two
//! stages on the guest clock, and the [`PciDevice`] impl. The device takes no lock of
//! its own: the caller holds the device (by `&mut`) across every call.

mod state;

pub use state::{I6300EsbPciState, I6300EsbState, I6300EsbStateError};

use std::sync::Arc;

use super::config::{
    COMMAND_BUS_MASTER, COMMAND_INTX_DISABLE, COMMAND_IO, COMMAND_MEMORY, COMMAND_PARITY,
    COMMAND_SERR,
};
use super::{BarKind, PciConfiguration, PciDevice, PciError, PciHeader};
use crate::timer::{GuestClock, Timer};

pub const I6300ESB_VENDOR_ID: u16 = 0x8086;
pub const I6300ESB_DEVICE_ID: u16 = 0x25ab;
/// Base class "base system peripheral", subclass "other".
pub const I6300ESB_CLASS: u8 = 0x08;
pub const I6300ESB_SUBCLASS: u8 = 0x80;
/// BAR0: 16 bytes of 32-bit memory.
pub const I6300ESB_BAR: u8 = 0;
pub const I6300ESB_BAR_SIZE: u64 = 16;

/// Configuration-space registers beyond the header.
pub const ESB_CONFIG_REG: usize = 0x60;
pub const ESB_LOCK_REG: usize = 0x68;

/// ESB config register bits.
pub const ESB_WDT_REBOOT_DISABLE: u16 = 1 << 5;
pub const ESB_WDT_FREQ_1MHZ: u16 = 1 << 2;
pub const ESB_WDT_INTTYPE: u16 = 0x3;
/// Interrupt type 3: no interrupt at the end of stage 1 (what Linux programs).
pub const ESB_INTTYPE_DISABLED: u16 = 0x3;
const CONFIG_BITS: u16 = ESB_WDT_REBOOT_DISABLE | ESB_WDT_FREQ_1MHZ | ESB_WDT_INTTYPE;

/// Lock register bits.
pub const ESB_WDT_LOCK: u8 = 1 << 0;
pub const ESB_WDT_ENABLE: u8 = 1 << 1;
pub const ESB_WDT_FREE_RUN: u8 = 1 << 2;
const LOCK_BITS: u8 = ESB_WDT_LOCK | ESB_WDT_ENABLE | ESB_WDT_FREE_RUN;

/// BAR0 register offsets.
pub const ESB_TIMER1_REG: u64 = 0x00;
pub const ESB_TIMER2_REG: u64 = 0x04;
pub const ESB_GINTSR_REG: u64 = 0x08;
pub const ESB_RELOAD_REG: u64 = 0x0c;

/// GINTSR bit 0: stage 1 ran out.
pub const ESB_GINTSR_STAGE1: u32 = 1 << 0;
/// Reload register bits.
pub const ESB_WDT_RELOAD: u16 = 1 << 8;
pub const ESB_WDT_TIMEOUT: u16 = 1 << 9;
/// Where Linux's driver before 2.6.27 looked for (and cleared) the TIMEOUT flag.
const ESB_WDT_TIMEOUT_OLD: u16 = 1 << 12;
/// The unlock sequence, written to the reload register.
pub const ESB_UNLOCK1: u32 = 0x80;
pub const ESB_UNLOCK2: u32 = 0x86;

/// The preloads are 20-bit counts; both reset to the largest.
pub const ESB_PRELOAD_MASK: u32 = 0xf_ffff;
pub const ESB_PRELOAD_RESET: u32 = ESB_PRELOAD_MASK;

/// The command register bits a guest can set.
const COMMAND_BITS: u16 = COMMAND_IO
    | COMMAND_MEMORY
    | COMMAND_BUS_MASTER
    | COMMAND_PARITY
    | COMMAND_SERR
    | COMMAND_INTX_DISABLE;

const PCI_CLOCK_HZ: u128 = 33_000_000;
const NS_PER_SEC: u128 = 1_000_000_000;

/// The machine's side: emits WATCHDOG and carries out `-watchdog-action`.
pub trait WatchdogSink: Send + Sync {
    fn expired(&self);
}

/// The watchdog's registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Regs {
    config: u16,
    lock: u8,
    timer1_preload: u32,
    timer2_preload: u32,
    gintsr: u32,
    timed_out: bool,
    unlock: u8,
    stage: u8,
}

impl Regs {
    /// Power-on values (the TIMEOUT flag is the caller's to choose).
    fn power_on(timed_out: bool) -> Self {
        Self {
            config: 0,
            lock: 0,
            timer1_preload: ESB_PRELOAD_RESET,
            timer2_preload: ESB_PRELOAD_RESET,
            gintsr: 0,
            timed_out,
            unlock: 0,
            stage: 1,
        }
    }
}

/// Nanoseconds `preload` units last; a 0 preload counts as 1 so that a stage always
/// takes some time.
fn preload_ns(preload: u32, one_mhz: bool) -> u64 {
    let shift = if one_mhz { 5 } else { 15 };
    let clocks = u128::from(preload.clamp(1, ESB_PRELOAD_MASK)) << shift;
    (clocks * NS_PER_SEC / PCI_CLOCK_HZ) as u64
}

pub struct I6300Esb {
    config: PciConfiguration,
    regs: Regs,
    /// Guest-clock end of the current stage while counting.
    deadline: Option<u64>,
    clock: Arc<dyn GuestClock>,
    timer: Arc<dyn Timer>,
    sink: Arc<dyn WatchdogSink>,
}

impl I6300Esb {
    pub fn new(
        clock: Arc<dyn GuestClock>,
        timer: Arc<dyn Timer>,
        sink: Arc<dyn WatchdogSink>,
    ) -> Result<Self, PciError> {
        let mut config = PciConfiguration::new(&PciHeader {
            vendor_id: I6300ESB_VENDOR_ID,
            device_id: I6300ESB_DEVICE_ID,
            revision: 0,
            class: I6300ESB_CLASS,
            subclass: I6300ESB_SUBCLASS,
            prog_if: 0,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
            interrupt_pin: 1,
        });
        config.add_bar(I6300ESB_BAR, BarKind::Memory32, I6300ESB_BAR_SIZE, false)?;
        Ok(Self {
            config,
            regs: Regs::power_on(false),
            deadline: None,
            clock,
            timer,
            sink,
        })
    }

    /// Back to power-on: disabled, unlocked, preloads at their maximum, output enabled
    /// at the 1 kHz scale. The TIMEOUT flag survives, as on a warm reset.
    pub fn reset(&mut self) {
        self.stop();
        self.regs = Regs::power_on(self.regs.timed_out);
    }

    /// Whether the reload register's TIMEOUT flag is set (the watchdog fired and the
    /// guest has not cleared it). A machine that rebuilds the device on reset carries
    /// it over with [`I6300Esb::state`] and [`I6300Esb::restore`].
    pub fn timed_out(&self) -> bool {
        self.regs.timed_out
    }

    /// A new device standing in for one that fired before a machine reset: the TIMEOUT
    /// flag is set, as it would have survived the warm reset.
    pub fn set_timed_out(&mut self) {
        self.regs.timed_out = true;
    }

    fn enabled(&self) -> bool {
        self.regs.lock & ESB_WDT_ENABLE != 0
    }

    fn stage_ns(&self, stage: u8) -> u64 {
        let preload = if stage == 1 {
            self.regs.timer1_preload
        } else {
            self.regs.timer2_preload
        };
        preload_ns(preload, self.regs.config & ESB_WDT_FREQ_1MHZ != 0)
    }

    /// Starts counting `stage` from guest time `from`.
    fn start_stage(&mut self, stage: u8, from: u64) {
        self.regs.stage = stage;
        let deadline = from.saturating_add(self.stage_ns(stage));
        self.deadline = Some(deadline);
        self.timer.arm(Some(deadline));
    }

    fn stop(&mut self) {
        self.deadline = None;
        self.timer.arm(None);
    }

    /// Enable or ping: stage 1 from now; nothing while disabled.
    fn restart(&mut self) {
        if self.enabled() {
            let now = self.clock.now_ns();
            self.start_stage(1, now);
        }
    }

    /// The machine's callback when the armed deadline passes.
    pub fn timer_fired(&mut self) {
        // Disarmed since: a stale callback.
        let Some(deadline) = self.deadline else {
            return;
        };
        if self.clock.now_ns() < deadline {
            self.timer.arm(Some(deadline));
            return;
        }
        // The next stage counts from when this one ran out, not from when the
        // callback came, so a late callback does not stretch the watchdog.
        if self.regs.stage == 1 {
            // The interrupt itself is not delivered (see the module doc).
            if self.regs.config & ESB_WDT_INTTYPE != ESB_INTTYPE_DISABLED {
                self.regs.gintsr |= ESB_GINTSR_STAGE1;
            }
            self.start_stage(2, deadline);
        } else if self.regs.config & ESB_WDT_REBOOT_DISABLE == 0 {
            self.stop();
            self.regs.timed_out = true;
            self.sink.expired();
        } else if self.regs.lock & ESB_WDT_FREE_RUN != 0 {
            self.start_stage(1, deadline);
        } else {
            self.stop();
        }
    }

    fn write_lock_reg(&mut self, v: u8) {
        if self.regs.lock & ESB_WDT_LOCK != 0 {
            return;
        }
        let was_enabled = self.enabled();
        self.regs.lock = v & LOCK_BITS;
        if !self.enabled() {
            self.stop();
        } else if !was_enabled {
            self.restart();
        }
    }

    /// The 16 bytes of BAR0 as the guest reads them.
    fn bar_image(&self) -> [u8; 16] {
        let reload = if self.regs.timed_out {
            ESB_WDT_TIMEOUT | ESB_WDT_TIMEOUT_OLD
        } else {
            0
        };
        let mut img = [0u8; 16];
        img[0..4].copy_from_slice(&self.regs.timer1_preload.to_le_bytes());
        img[4..8].copy_from_slice(&self.regs.timer2_preload.to_le_bytes());
        img[8..12].copy_from_slice(&self.regs.gintsr.to_le_bytes());
        img[12..14].copy_from_slice(&reload.to_le_bytes());
        img
    }

    /// A guest write to BAR0: naturally aligned 1, 2 or 4 bytes; anything else is
    /// dropped.
    fn write_reg(&mut self, offset: u64, data: &[u8]) {
        let len = data.len();
        if !matches!(len, 1 | 2 | 4) || offset >= I6300ESB_BAR_SIZE || offset % len as u64 != 0 {
            return;
        }
        let mut buf = [0u8; 4];
        buf[..len].copy_from_slice(data);
        let value = u32::from_le_bytes(buf);
        let reg = offset & !3;
        let shift = 8 * (offset & 3) as u32;
        let lanes = (u32::MAX >> (32 - 8 * len as u32)) << shift;
        let bits = (value << shift) & lanes;
        match reg {
            ESB_RELOAD_REG if offset == ESB_RELOAD_REG && value == ESB_UNLOCK1 => {
                self.regs.unlock = 1;
            }
            ESB_RELOAD_REG
                if offset == ESB_RELOAD_REG && value == ESB_UNLOCK2 && self.regs.unlock == 1 =>
            {
                self.regs.unlock = 2;
            }
            ESB_GINTSR_REG => self.regs.gintsr &= !(bits & ESB_GINTSR_STAGE1),
            // Locked (or half-way through the sequence, which a stray write does not
            // undo).
            _ if self.regs.unlock != 2 => {}
            ESB_TIMER1_REG => {
                let old = self.regs.timer1_preload;
                self.regs.timer1_preload = ((old & !lanes) | bits) & ESB_PRELOAD_MASK;
                self.regs.unlock = 0;
            }
            ESB_TIMER2_REG => {
                let old = self.regs.timer2_preload;
                self.regs.timer2_preload = ((old & !lanes) | bits) & ESB_PRELOAD_MASK;
                self.regs.unlock = 0;
            }
            _ => {
                self.regs.unlock = 0;
                let bits = bits as u16;
                if bits & (ESB_WDT_TIMEOUT | ESB_WDT_TIMEOUT_OLD) != 0 {
                    self.regs.timed_out = false;
                }
                if bits & ESB_WDT_RELOAD != 0 {
                    self.restart();
                }
            }
        }
    }
}

impl PciDevice for I6300Esb {
    fn config(&self) -> &PciConfiguration {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }

    fn read_config(&mut self, reg: usize) -> u32 {
        let v = self.config.read_reg(reg);
        if reg == ESB_CONFIG_REG / 4 {
            (v & !0xffff) | u32::from(self.regs.config)
        } else if reg == ESB_LOCK_REG / 4 {
            (v & !0xff) | u32::from(self.regs.lock)
        } else {
            v
        }
    }

    fn write_config(&mut self, reg: usize, value: u32, mask: u32) {
        self.config.write_reg(reg, value, mask);
        // Every defined bit of both registers is in their first byte.
        if mask & 0xff == 0 {
            return;
        }
        if reg == ESB_CONFIG_REG / 4 {
            self.regs.config = value as u16 & CONFIG_BITS & 0xff;
        } else if reg == ESB_LOCK_REG / 4 {
            self.write_lock_reg(value as u8);
        }
    }

    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != I6300ESB_BAR {
            return;
        }
        let img = self.bar_image();
        for (i, d) in data.iter_mut().enumerate() {
            if let Some(b) = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| img.get(o))
            {
                *d = *b;
            }
        }
    }

    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar == I6300ESB_BAR {
            self.write_reg(offset, data);
        }
    }
}

#[cfg(test)]
mod tests;
