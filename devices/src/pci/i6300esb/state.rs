//! The watchdog's migration state: what the guest can see of the device (PCI header
//! fields, watchdog registers, where each stage stands), its capture and its restore.
//!
//! Invariant: `restore` validates the whole state before changing anything, so a
//! rejected state leaves the device as it was.

use serde::{Deserialize, Serialize};

use super::{
    preload_ns, I6300Esb, Regs, COMMAND_BITS, CONFIG_BITS, ESB_GINTSR_STAGE1, ESB_PRELOAD_MASK,
    ESB_WDT_ENABLE, LOCK_BITS,
};
use crate::pci::config::{BAR0, CACHE_LINE_SIZE, COMMAND, LATENCY_TIMER};

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

impl I6300Esb {
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
