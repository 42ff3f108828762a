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

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::config::{
    BAR0, CACHE_LINE_SIZE, COMMAND, COMMAND_BUS_MASTER, COMMAND_INTX_DISABLE, COMMAND_IO,
    COMMAND_MEMORY, COMMAND_PARITY, COMMAND_SERR, LATENCY_TIMER,
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

/// The PCI header fields the guest (or its firmware) programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct I6300EsbPciState {
    pub command: u16,
    /// BAR0's register (a 16-byte 32-bit memory BAR: the low 4 bits are 0).
    pub bar0: u32,
    pub interrupt_line: u8,
    pub cache_line_size: u8,
    pub latency_timer: u8,
}

/// Everything the guest can see of the device, for migration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct I6300EsbState {
    pub pci: I6300EsbPciState,
    /// ESB config register (0x60).
    pub config: u16,
    /// Lock register (0x68).
    pub lock: u8,
    pub timer1_preload: u32,
    pub timer2_preload: u32,
    pub gintsr: u32,
    /// The reload register's TIMEOUT flag.
    pub timed_out: bool,
    /// Progress through the unlock sequence: 0 locked, 1 after 0x80, 2 unlocked.
    pub unlock: u8,
    /// The stage counting (or last counted): 1 or 2.
    pub stage: u8,
    /// Guest nanoseconds left in the current stage; `None` while not counting.
    pub remaining_ns: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("i6300esb state is invalid: {0}; the migration stream is corrupt or from an incompatible version")]
pub struct I6300EsbStateError(pub String);

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

    pub fn state(&self) -> I6300EsbState {
        let now = self.clock.now_ns();
        let r = &self.regs;
        I6300EsbState {
            pci: I6300EsbPciState {
                command: self.config.command(),
                bar0: self.config.read_u32(BAR0),
                interrupt_line: self.config.interrupt_line(),
                cache_line_size: self.config.read_u8(CACHE_LINE_SIZE),
                latency_timer: self.config.read_u8(LATENCY_TIMER),
            },
            config: r.config,
            lock: r.lock,
            timer1_preload: r.timer1_preload,
            timer2_preload: r.timer2_preload,
            gintsr: r.gintsr,
            timed_out: r.timed_out,
            unlock: r.unlock,
            stage: r.stage,
            remaining_ns: self.deadline.map(|d| d.saturating_sub(now)),
        }
    }

    /// Replaces the guest-visible state and re-arms the timer for what is left of the
    /// stage. On error the device is unchanged. The machine maps BAR0 afresh from
    /// [`PciDevice::bars`] afterwards.
    pub fn restore(&mut self, s: &I6300EsbState) -> Result<(), I6300EsbStateError> {
        let bad = |reason: String| Err(I6300EsbStateError(reason));
        if s.pci.command & !COMMAND_BITS != 0 {
            return bad(format!("command register {:#06x}", s.pci.command));
        }
        if s.pci.bar0 & 0xf != 0 {
            return bad(format!("BAR0 {:#010x} is not 16-byte aligned", s.pci.bar0));
        }
        if s.config & !CONFIG_BITS != 0 {
            return bad(format!("config register {:#06x}", s.config));
        }
        if s.lock & !LOCK_BITS != 0 {
            return bad(format!("lock register {:#04x}", s.lock));
        }
        for (n, p) in [(1, s.timer1_preload), (2, s.timer2_preload)] {
            if p > ESB_PRELOAD_MASK {
                return bad(format!("timer {n} preload {p:#x} is over 20 bits"));
            }
        }
        if s.gintsr & !ESB_GINTSR_STAGE1 != 0 {
            return bad(format!("GINTSR {:#x}", s.gintsr));
        }
        if s.unlock > 2 {
            return bad(format!("unlock step {}", s.unlock));
        }
        if !(1..=2).contains(&s.stage) {
            return bad(format!("stage {}", s.stage));
        }
        if let Some(ns) = s.remaining_ns {
            if s.lock & ESB_WDT_ENABLE == 0 {
                return bad("counting while disabled".into());
            }
            let max = preload_ns(ESB_PRELOAD_MASK, false);
            if ns > max {
                return bad(format!("{ns} ns left in a stage of at most {max} ns"));
            }
        }
        self.config.write_u16(COMMAND, s.pci.command);
        self.config.write_u32(BAR0, s.pci.bar0);
        self.config.set_interrupt_line(s.pci.interrupt_line);
        self.config.write_u8(CACHE_LINE_SIZE, s.pci.cache_line_size);
        self.config.write_u8(LATENCY_TIMER, s.pci.latency_timer);
        self.regs = Regs {
            config: s.config,
            lock: s.lock,
            timer1_preload: s.timer1_preload,
            timer2_preload: s.timer2_preload,
            gintsr: s.gintsr,
            timed_out: s.timed_out,
            unlock: s.unlock,
            stage: s.stage,
        };
        match s.remaining_ns {
            Some(ns) => {
                let deadline = self.clock.now_ns().saturating_add(ns);
                self.deadline = Some(deadline);
                self.timer.arm(Some(deadline));
            }
            None => self.stop(),
        }
        Ok(())
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
mod tests {
    use super::*;
    use crate::pci::config::INTERRUPT_PIN;
    use crate::timer::{ManualClock, ManualTimer};
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct CountingSink(AtomicUsize);

    impl CountingSink {
        fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl WatchdogSink for CountingSink {
        fn expired(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    const SEC: u64 = 1_000_000_000;
    /// One stage with Linux's default 30 s heartbeat: (30 << 9) << 15 PCI clocks.
    const HALF_30: u64 = 15_252_014_545;

    struct Rig {
        clock: Arc<ManualClock>,
        timer: Arc<ManualTimer>,
        sink: Arc<CountingSink>,
        dev: I6300Esb,
    }

    impl Rig {
        fn new() -> Self {
            let clock = Arc::new(ManualClock::new(1_000));
            let timer = Arc::new(ManualTimer::default());
            let sink = Arc::new(CountingSink::default());
            let dev = I6300Esb::new(clock.clone(), timer.clone(), sink.clone()).unwrap();
            Self {
                clock,
                timer,
                sink,
                dev,
            }
        }

        fn now(&self) -> u64 {
            self.clock.now_ns()
        }

        /// A configuration write of `len` bytes at byte offset `off`, as the bus
        /// hands it to the device.
        fn cfg_write(&mut self, off: usize, len: usize, v: u32) {
            let shift = 8 * (off % 4);
            let mask = (u32::MAX >> (32 - 8 * len)) << shift;
            self.dev.write_config(off / 4, v << shift, mask);
        }

        fn cfg_read(&mut self, off: usize, len: usize) -> u32 {
            let shift = 8 * (off % 4);
            (self.dev.read_config(off / 4) >> shift) & (u32::MAX >> (32 - 8 * len))
        }

        fn w8(&mut self, off: u64, v: u8) {
            self.dev.write_bar(0, off, &[v]);
        }

        fn w16(&mut self, off: u64, v: u16) {
            self.dev.write_bar(0, off, &v.to_le_bytes());
        }

        fn w32(&mut self, off: u64, v: u32) {
            self.dev.write_bar(0, off, &v.to_le_bytes());
        }

        fn r16(&mut self, off: u64) -> u16 {
            let mut b = [0; 2];
            self.dev.read_bar(0, off, &mut b);
            u16::from_le_bytes(b)
        }

        fn r32(&mut self, off: u64) -> u32 {
            let mut b = [0; 4];
            self.dev.read_bar(0, off, &mut b);
            u32::from_le_bytes(b)
        }

        fn unlock(&mut self) {
            self.w16(ESB_RELOAD_REG, 0x80);
            self.w16(ESB_RELOAD_REG, 0x86);
        }

        /// Linux's esb_initdevice and esb_timer_set_heartbeat; returns whether the
        /// driver saw the TIMEOUT flag (its WDIOF_CARDRESET boot status).
        fn linux_probe(&mut self, heartbeat: u32) -> bool {
            self.cfg_write(ESB_CONFIG_REG, 2, 0x0003);
            let _ = self.cfg_read(ESB_LOCK_REG, 1);
            self.cfg_write(ESB_LOCK_REG, 1, 0);
            self.unlock();
            let triggered = self.r16(ESB_RELOAD_REG) & ESB_WDT_TIMEOUT != 0;
            self.unlock();
            self.w16(ESB_RELOAD_REG, ESB_WDT_TIMEOUT | ESB_WDT_RELOAD);
            self.linux_set_heartbeat(heartbeat);
            triggered
        }

        fn linux_set_heartbeat(&mut self, heartbeat: u32) {
            self.unlock();
            self.w32(ESB_TIMER1_REG, heartbeat << 9);
            self.unlock();
            self.w32(ESB_TIMER2_REG, heartbeat << 9);
            self.ping();
        }

        /// esb_timer_start.
        fn linux_start(&mut self, nowayout: bool) {
            self.ping();
            let lock = ESB_WDT_ENABLE | if nowayout { ESB_WDT_LOCK } else { 0 };
            self.cfg_write(ESB_LOCK_REG, 1, u32::from(lock));
        }

        /// esb_timer_keepalive.
        fn ping(&mut self) {
            self.unlock();
            self.w16(ESB_RELOAD_REG, ESB_WDT_RELOAD);
        }

        /// Moves the clock to `t`, calling the device back at every deadline passed
        /// on the way, as the machine would.
        fn run_until(&mut self, t: u64) {
            for _ in 0..10_000 {
                match self.timer.deadline() {
                    Some(d) if d <= t => {
                        self.clock.set(d.max(self.now()));
                        self.dev.timer_fired();
                    }
                    _ => break,
                }
            }
            self.clock.set(t);
        }
    }

    #[test]
    fn pci_identity_and_bar0() {
        let mut r = Rig::new();
        assert_eq!(r.cfg_read(0, 4), 0x25ab_8086);
        assert_eq!(r.cfg_read(0x08, 4) >> 8, 0x08_80_00);
        assert_eq!(r.cfg_read(INTERRUPT_PIN, 1), 1, "INTA");
        let bars = r.dev.bars();
        assert_eq!(bars.len(), 1);
        assert_eq!(bars[0].index, 0);
        assert_eq!(bars[0].kind, BarKind::Memory32);
        assert_eq!(bars[0].size, 16);
        r.cfg_write(BAR0, 4, 0xffff_ffff);
        assert_eq!(r.cfg_read(BAR0, 4), 0xffff_fff0);
        // Power-on registers.
        assert_eq!(r.cfg_read(ESB_CONFIG_REG, 2), 0);
        assert_eq!(r.cfg_read(ESB_LOCK_REG, 1), 0);
        assert_eq!(r.r32(ESB_TIMER1_REG), ESB_PRELOAD_RESET);
        assert_eq!(r.r32(ESB_TIMER2_REG), ESB_PRELOAD_RESET);
        assert_eq!(r.timer.deadline(), None);
    }

    #[test]
    fn linux_driver_sequence_arms_half_the_heartbeat() {
        let mut r = Rig::new();
        assert!(!r.linux_probe(30));
        assert_eq!(r.cfg_read(ESB_CONFIG_REG, 2), 0x0003);
        assert_eq!(r.r32(ESB_TIMER1_REG), 30 << 9);
        assert_eq!(r.r32(ESB_TIMER2_REG), 30 << 9);
        assert_eq!(r.timer.deadline(), None, "not counting until enabled");
        r.clock.advance(SEC);
        r.linux_start(false);
        assert_eq!(r.cfg_read(ESB_LOCK_REG, 1), u32::from(ESB_WDT_ENABLE));
        let armed = r.timer.deadline().unwrap() - r.now();
        assert_eq!(armed, HALF_30);
        assert!((15 * SEC..16 * SEC).contains(&armed), "about heartbeat/2");
    }

    #[test]
    fn both_stages_expire_then_the_sink_fires_once_at_the_heartbeat() {
        let mut r = Rig::new();
        r.linux_probe(30);
        r.linux_start(false);
        let t0 = r.now();
        r.run_until(t0 + HALF_30 - 1);
        assert_eq!(r.dev.regs.stage, 1);
        r.run_until(t0 + HALF_30);
        assert_eq!(r.dev.regs.stage, 2);
        assert_eq!(r.timer.deadline(), Some(t0 + 2 * HALF_30));
        assert_eq!(r.sink.count(), 0);
        assert_eq!(r.dev.regs.gintsr, 0, "Linux disables the stage-1 interrupt");
        r.run_until(t0 + 2 * HALF_30 - 1);
        assert_eq!(r.sink.count(), 0);
        r.run_until(t0 + 2 * HALF_30);
        assert_eq!(r.sink.count(), 1);
        assert!((30 * SEC..31 * SEC).contains(&(2 * HALF_30)));
        assert_eq!(r.timer.deadline(), None, "not re-armed");
        assert!(r.dev.timed_out());
        assert_eq!(r.r16(ESB_RELOAD_REG) & ESB_WDT_TIMEOUT, ESB_WDT_TIMEOUT);
        r.run_until(t0 + 1000 * SEC);
        r.dev.timer_fired();
        assert_eq!(r.sink.count(), 1, "exactly once");
        // Still enabled: a ping starts it over.
        r.ping();
        assert_eq!(r.timer.deadline(), Some(r.now() + HALF_30));
        r.run_until(r.now() + 2 * HALF_30);
        assert_eq!(r.sink.count(), 2);
    }

    #[test]
    fn a_late_callback_does_not_stretch_stage_two() {
        let mut r = Rig::new();
        r.linux_probe(30);
        r.linux_start(false);
        let t0 = r.now();
        r.clock.set(t0 + HALF_30 + 3 * SEC);
        r.dev.timer_fired();
        assert_eq!(r.timer.deadline(), Some(t0 + 2 * HALF_30));
        r.clock.set(t0 + 2 * HALF_30 + 20 * SEC);
        r.dev.timer_fired();
        assert_eq!(r.sink.count(), 1);
    }

    #[test]
    fn pings_keep_it_from_firing() {
        let mut r = Rig::new();
        r.linux_probe(30);
        r.linux_start(false);
        let t0 = r.now();
        for i in 1..=20 {
            r.run_until(t0 + i * 10 * SEC);
            r.ping();
            assert_eq!(r.timer.deadline(), Some(r.now() + HALF_30));
        }
        // A ping during stage 2 starts stage 1 again.
        r.run_until(r.now() + HALF_30 + SEC);
        assert_eq!(r.dev.regs.stage, 2);
        r.ping();
        assert_eq!(r.dev.regs.stage, 1);
        assert_eq!(r.timer.deadline(), Some(r.now() + HALF_30));
        r.run_until(r.now() + 2 * HALF_30 - 1);
        assert_eq!(r.sink.count(), 0);
        r.run_until(r.now() + 1);
        assert_eq!(r.sink.count(), 1);
    }

    #[test]
    fn writes_without_the_unlock_sequence_are_ignored() {
        let mut r = Rig::new();
        r.linux_probe(30);
        r.linux_start(false);
        let deadline = r.timer.deadline();
        r.w32(ESB_TIMER1_REG, 5);
        r.w32(ESB_TIMER2_REG, 5);
        assert_eq!(r.r32(ESB_TIMER1_REG), 30 << 9);
        assert_eq!(r.r32(ESB_TIMER2_REG), 30 << 9);
        // The steps reversed, only the first step, or a wrong second value.
        r.w16(ESB_RELOAD_REG, 0x86);
        r.w16(ESB_RELOAD_REG, 0x80);
        r.w32(ESB_TIMER1_REG, 5);
        assert_eq!(r.r32(ESB_TIMER1_REG), 30 << 9);
        r.w16(ESB_RELOAD_REG, 0x80);
        r.w16(ESB_RELOAD_REG, 0x87);
        r.w32(ESB_TIMER1_REG, 5);
        assert_eq!(r.r32(ESB_TIMER1_REG), 30 << 9);
        assert_eq!(r.dev.regs.unlock, 1);
        // As in QEMU, stray writes between the steps do not undo the first one.
        r.w16(ESB_RELOAD_REG, 0x86);
        r.w32(ESB_TIMER1_REG, 30 << 9);
        assert_eq!(r.dev.regs.unlock, 0);
        // A ping without the sequence does not reload.
        r.clock.advance(SEC);
        r.w16(ESB_RELOAD_REG, ESB_WDT_RELOAD);
        assert_eq!(r.timer.deadline(), deadline);
        // One unlock, one write: the second write is locked again.
        r.unlock();
        r.w32(ESB_TIMER1_REG, 0x123);
        r.w32(ESB_TIMER1_REG, 0x456);
        assert_eq!(r.r32(ESB_TIMER1_REG), 0x123);
        // Writing one preload uses up the unlock for the other and for the reload.
        r.unlock();
        r.w32(ESB_TIMER2_REG, 0x777);
        r.w16(ESB_RELOAD_REG, ESB_WDT_RELOAD);
        assert_eq!(r.timer.deadline(), deadline);
        // GINTSR is not behind the lock and leaves an unlock in place.
        r.unlock();
        r.w32(ESB_GINTSR_REG, 1);
        r.w32(ESB_TIMER2_REG, 0xfff_ffff);
        assert_eq!(r.r32(ESB_TIMER2_REG), ESB_PRELOAD_MASK, "20 bits kept");
        // The old driver unlocks with byte writes; a byte write may also reload.
        r.w8(ESB_RELOAD_REG, 0x80);
        r.w8(ESB_RELOAD_REG, 0x86);
        r.w8(ESB_RELOAD_REG + 1, (ESB_WDT_RELOAD >> 8) as u8);
        assert_eq!(r.timer.deadline(), Some(r.now() + preload_ns(0x123, false)));
        // Byte-wide preload writes merge into the register.
        r.unlock();
        r.w8(ESB_TIMER1_REG + 2, 0xff);
        assert_eq!(r.r32(ESB_TIMER1_REG), 0xf_0123);
    }

    #[test]
    fn one_mhz_scale() {
        let mut r = Rig::new();
        r.cfg_write(ESB_CONFIG_REG, 2, u32::from(ESB_WDT_FREQ_1MHZ | 3));
        r.unlock();
        r.w32(ESB_TIMER1_REG, 1000);
        r.unlock();
        r.w32(ESB_TIMER2_REG, 33_000);
        r.cfg_write(ESB_LOCK_REG, 1, u32::from(ESB_WDT_ENABLE));
        let t0 = r.now();
        // 1000 << 5 clocks at 33 MHz.
        assert_eq!(r.timer.deadline(), Some(t0 + 969_696));
        r.run_until(t0 + 969_696);
        // 33_000 << 5 clocks: exactly 32 ms.
        assert_eq!(r.timer.deadline(), Some(t0 + 969_696 + 32_000_000));
        r.run_until(t0 + SEC);
        assert_eq!(r.sink.count(), 1);
        assert_eq!(preload_ns(1, false), 992_969);
    }

    #[test]
    fn reboot_disabled_never_fires() {
        let mut r = Rig::new();
        r.linux_probe(2);
        r.cfg_write(ESB_CONFIG_REG, 2, u32::from(ESB_WDT_REBOOT_DISABLE | 3));
        r.linux_start(false);
        r.run_until(r.now() + 100 * SEC);
        assert_eq!(r.sink.count(), 0);
        assert_eq!(r.timer.deadline(), None, "stops after stage 2");
        assert!(!r.dev.timed_out());
        // Free-running: stage 1 over and over, still no reboot.
        r.cfg_write(ESB_LOCK_REG, 1, 0);
        r.cfg_write(
            ESB_LOCK_REG,
            1,
            u32::from(ESB_WDT_ENABLE | ESB_WDT_FREE_RUN),
        );
        r.run_until(r.now() + 100 * SEC);
        assert!(r.timer.deadline().is_some());
        assert_eq!(r.sink.count(), 0);
    }

    #[test]
    fn disabling_disarms() {
        let mut r = Rig::new();
        r.linux_probe(30);
        r.linux_start(false);
        assert!(r.timer.deadline().is_some());
        r.cfg_write(ESB_LOCK_REG, 1, 0);
        assert_eq!(r.timer.deadline(), None);
        // A callback that was already on its way does nothing.
        r.clock.advance(100 * SEC);
        r.dev.timer_fired();
        assert_eq!(r.timer.deadline(), None);
        assert_eq!(r.sink.count(), 0);
        // Pings while disabled do not start it.
        r.ping();
        assert_eq!(r.timer.deadline(), None);
        // Re-enabling writes of ENABLE keep the running count.
        r.linux_start(false);
        let d = r.timer.deadline();
        r.clock.advance(SEC);
        r.cfg_write(ESB_LOCK_REG, 1, u32::from(ESB_WDT_ENABLE));
        assert_eq!(r.timer.deadline(), d);
    }

    #[test]
    fn lock_bit_freezes_enable() {
        let mut r = Rig::new();
        r.linux_probe(30);
        r.linux_start(true);
        assert_eq!(
            r.cfg_read(ESB_LOCK_REG, 1),
            u32::from(ESB_WDT_ENABLE | ESB_WDT_LOCK)
        );
        let d = r.timer.deadline();
        r.cfg_write(ESB_LOCK_REG, 1, 0);
        r.cfg_write(ESB_LOCK_REG, 4, 0);
        assert_eq!(
            r.cfg_read(ESB_LOCK_REG, 1),
            u32::from(ESB_WDT_ENABLE | ESB_WDT_LOCK)
        );
        assert_eq!(r.timer.deadline(), d);
        // Pings and new preloads still work.
        r.linux_set_heartbeat(10);
        assert!(r.timer.deadline().is_some());
        // A device reset unlocks and disables.
        r.dev.reset();
        assert_eq!(r.cfg_read(ESB_LOCK_REG, 1), 0);
        assert_eq!(r.timer.deadline(), None);
        // Locking while disabled keeps it disabled.
        r.cfg_write(ESB_LOCK_REG, 1, u32::from(ESB_WDT_LOCK));
        r.cfg_write(ESB_LOCK_REG, 1, u32::from(ESB_WDT_ENABLE));
        assert_eq!(r.cfg_read(ESB_LOCK_REG, 1), u32::from(ESB_WDT_LOCK));
        assert_eq!(r.timer.deadline(), None);
    }

    #[test]
    fn timeout_flag_reads_and_clears_on_write_one() {
        let mut r = Rig::new();
        r.linux_probe(1);
        r.linux_start(false);
        r.run_until(r.now() + 2 * SEC);
        assert_eq!(r.sink.count(), 1);
        assert_eq!(r.r16(ESB_RELOAD_REG), ESB_WDT_TIMEOUT | ESB_WDT_TIMEOUT_OLD);
        // Not without the unlock, and not by writing 0.
        r.w16(ESB_RELOAD_REG, ESB_WDT_TIMEOUT);
        r.unlock();
        r.w16(ESB_RELOAD_REG, 0);
        assert!(r.dev.timed_out());
        // A reset keeps it: the driver of the next boot reads it and clears it.
        r.dev.reset();
        assert!(r.dev.timed_out());
        assert!(r.linux_probe(30));
        assert!(!r.dev.timed_out());
        assert_eq!(r.r16(ESB_RELOAD_REG), 0);
        // The old driver's bit 12 clears it too.
        r.dev.regs.timed_out = true;
        r.unlock();
        r.w16(ESB_RELOAD_REG, 0x1100);
        assert!(!r.dev.timed_out());
    }

    #[test]
    fn stage_one_sets_the_interrupt_status_unless_disabled() {
        let mut r = Rig::new();
        r.unlock();
        r.w32(ESB_TIMER1_REG, 10);
        r.cfg_write(ESB_LOCK_REG, 1, u32::from(ESB_WDT_ENABLE));
        r.run_until(r.now() + preload_ns(10, false));
        assert_eq!(r.dev.regs.stage, 2);
        assert_eq!(r.r32(ESB_GINTSR_REG), ESB_GINTSR_STAGE1);
        r.w32(ESB_GINTSR_REG, 0);
        assert_eq!(r.r32(ESB_GINTSR_REG), ESB_GINTSR_STAGE1);
        r.w8(ESB_GINTSR_REG, 1);
        assert_eq!(r.r32(ESB_GINTSR_REG), 0);
    }

    #[test]
    fn early_timer_fired_rearms_and_does_not_fire() {
        let mut r = Rig::new();
        r.linux_probe(30);
        r.linux_start(false);
        let d = r.timer.deadline().unwrap();
        r.clock.set(d - 1);
        r.timer.arm(None);
        r.dev.timer_fired();
        assert_eq!(r.timer.deadline(), Some(d));
        assert_eq!(r.dev.regs.stage, 1);
        r.run_until(d + HALF_30 - 1);
        r.dev.timer_fired();
        assert_eq!(r.dev.regs.stage, 2);
        assert_eq!(r.timer.deadline(), Some(d + HALF_30));
        assert_eq!(r.sink.count(), 0);
    }

    #[test]
    fn zero_preloads_still_take_a_tick() {
        let mut r = Rig::new();
        r.unlock();
        r.w32(ESB_TIMER1_REG, 0);
        r.unlock();
        r.w32(ESB_TIMER2_REG, 0);
        r.cfg_write(ESB_LOCK_REG, 1, u32::from(ESB_WDT_ENABLE));
        assert_eq!(r.timer.deadline(), Some(r.now() + preload_ns(1, false)));
        r.run_until(r.now() + 2 * preload_ns(1, false));
        assert_eq!(r.sink.count(), 1);
    }

    #[test]
    fn guest_accesses_anywhere_never_panic() {
        let mut r = Rig::new();
        r.cfg_write(0x04, 2, u32::from(COMMAND_MEMORY));
        let offsets = [
            0,
            1,
            2,
            3,
            4,
            7,
            8,
            0xb,
            0xc,
            0xd,
            0xe,
            0xf,
            0x10,
            0x11,
            0x1000,
            u64::MAX / 2,
            u64::MAX - 3,
            u64::MAX - 1,
            u64::MAX,
        ];
        let mut seed = 0x1234_5678_9abc_def0u64;
        for bar in [0u8, 1, 5, 6, 7, 0xff] {
            for &off in &offsets {
                for len in 0..=9 {
                    let mut buf = vec![0xa5u8; len];
                    r.dev.read_bar(bar, off, &mut buf);
                    if bar != 0 || off >= 16 {
                        assert!(buf.iter().all(|b| *b == 0), "{bar} {off:#x} {len}");
                    }
                    for v in [0x80u64, 0x86, 0x100, 0x300, u64::MAX, seed] {
                        let bytes = v.to_le_bytes();
                        let data: Vec<u8> = bytes.iter().cycle().take(len).copied().collect();
                        r.dev.write_bar(bar, off, &data);
                    }
                    seed = seed.rotate_left(13).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                }
            }
        }
        for reg in (0..1100).chain([usize::MAX - 1, usize::MAX]) {
            for mask in [0, 0xff, 0xff00, 0xffff, 0xffff_0000, 0xffff_ffff] {
                let _ = r.dev.read_config(reg);
                seed = seed.rotate_left(7).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                // Leave the header alone so the BAR stays where it is.
                if reg >= 0x10 {
                    r.dev.write_config(reg, seed as u32, mask);
                }
            }
        }
        for _ in 0..100 {
            r.clock.advance(seed % (2000 * SEC));
            r.dev.timer_fired();
            seed = seed.rotate_left(7).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
        assert_eq!(r.dev.config().header().device_id, I6300ESB_DEVICE_ID);
    }

    /// A device counting in stage 2 with every register away from its reset value.
    fn busy_rig() -> Rig {
        let mut r = Rig::new();
        r.cfg_write(0x04, 2, u32::from(COMMAND_MEMORY));
        r.cfg_write(BAR0, 4, 0xfebf_f000);
        r.cfg_write(0x3c, 1, 11);
        r.cfg_write(ESB_CONFIG_REG, 2, 0x0001);
        r.linux_set_heartbeat(30);
        r.unlock();
        r.w32(ESB_TIMER2_REG, 2 << 9);
        r.linux_start(true);
        r.run_until(r.now() + HALF_30 + SEC);
        r.unlock();
        r
    }

    #[test]
    fn state_round_trips_and_the_count_carries_on() {
        let r = busy_rig();
        let s = r.dev.state();
        assert_eq!(s.stage, 2);
        assert_eq!(s.unlock, 2);
        assert_eq!(s.gintsr, ESB_GINTSR_STAGE1);
        assert_eq!(s.lock, ESB_WDT_ENABLE | ESB_WDT_LOCK);
        assert_eq!(s.pci.bar0, 0xfebf_f000);
        let left = s.remaining_ns.unwrap();
        assert_eq!(left, preload_ns(2 << 9, false) - SEC);
        let json = serde_json::to_string(&s).unwrap();
        let back: I6300EsbState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);

        // A new machine whose clock starts elsewhere.
        let mut n = Rig::new();
        n.clock.set(77 * SEC);
        n.dev.restore(&back).unwrap();
        assert_eq!(n.dev.state(), s);
        assert_eq!(n.timer.deadline(), Some(77 * SEC + left));
        assert_eq!(n.dev.bars()[0].mapped, Some(0xfebf_f000));
        assert_eq!(n.cfg_read(ESB_LOCK_REG, 1), 3);
        n.run_until(77 * SEC + left - 1);
        assert_eq!(n.sink.count(), 0);
        n.run_until(77 * SEC + left);
        assert_eq!(n.sink.count(), 1);

        // Restoring an idle state disarms.
        let idle = Rig::new().dev.state();
        n.dev.restore(&idle).unwrap();
        assert_eq!(n.timer.deadline(), None);
        assert_eq!(n.dev.state(), idle);
    }

    #[test]
    fn restore_rejects_bad_state_and_leaves_the_device_alone() {
        let mut r = busy_rig();
        let good = r.dev.state();
        let deadline = r.timer.deadline();
        let bad: Vec<(&str, I6300EsbState)> = vec![
            (
                "preload 1",
                I6300EsbState {
                    timer1_preload: 0x10_0000,
                    ..good.clone()
                },
            ),
            (
                "preload 2",
                I6300EsbState {
                    timer2_preload: u32::MAX,
                    ..good.clone()
                },
            ),
            (
                "stage 0",
                I6300EsbState {
                    stage: 0,
                    ..good.clone()
                },
            ),
            (
                "stage 3",
                I6300EsbState {
                    stage: 3,
                    ..good.clone()
                },
            ),
            (
                "unlock",
                I6300EsbState {
                    unlock: 3,
                    ..good.clone()
                },
            ),
            (
                "config",
                I6300EsbState {
                    config: 0x0100,
                    ..good.clone()
                },
            ),
            (
                "lock",
                I6300EsbState {
                    lock: 0x08,
                    ..good.clone()
                },
            ),
            (
                "gintsr",
                I6300EsbState {
                    gintsr: 2,
                    ..good.clone()
                },
            ),
            (
                "counting while disabled",
                I6300EsbState {
                    lock: 0,
                    ..good.clone()
                },
            ),
            (
                "stage too long",
                I6300EsbState {
                    remaining_ns: Some(u64::MAX),
                    ..good.clone()
                },
            ),
            (
                "bar0",
                I6300EsbState {
                    pci: I6300EsbPciState {
                        bar0: 0xfebf_f008,
                        ..good.pci
                    },
                    ..good.clone()
                },
            ),
            (
                "command",
                I6300EsbState {
                    pci: I6300EsbPciState {
                        command: 0x8000,
                        ..good.pci
                    },
                    ..good.clone()
                },
            ),
        ];
        for (what, s) in bad {
            assert!(r.dev.restore(&s).is_err(), "{what}");
            assert_eq!(r.dev.state(), good, "{what}");
            assert_eq!(r.timer.deadline(), deadline, "{what}");
        }
        let e = r
            .dev
            .restore(&I6300EsbState {
                stage: 9,
                ..good.clone()
            })
            .unwrap_err();
        assert!(e.to_string().contains("stage 9"), "{e}");
        // Longest possible stage is accepted.
        let longest = I6300EsbState {
            remaining_ns: Some(preload_ns(ESB_PRELOAD_MASK, false)),
            ..good
        };
        r.dev.restore(&longest).unwrap();
    }

    #[test]
    fn reset_returns_to_power_on_but_keeps_the_timeout_flag() {
        let mut r = busy_rig();
        r.dev.regs.timed_out = true;
        r.dev.reset();
        let s = r.dev.state();
        assert_eq!(s.config, 0);
        assert_eq!(s.lock, 0);
        assert_eq!(s.timer1_preload, ESB_PRELOAD_RESET);
        assert_eq!(s.timer2_preload, ESB_PRELOAD_RESET);
        assert_eq!(s.gintsr, 0);
        assert_eq!(s.unlock, 0);
        assert_eq!(s.stage, 1);
        assert_eq!(s.remaining_ns, None);
        assert!(s.timed_out);
        assert_eq!(r.timer.deadline(), None);
        // The PCI header is the bus's.
        assert_eq!(s.pci.bar0, 0xfebf_f000);
    }
}
