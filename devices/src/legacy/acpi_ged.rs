//! The ACPI Generic Event Device (GED, `ACPI0013`): how the VMM raises ACPI events on a
//! hardware-reduced machine, which has no GPE blocks. The VMM sets event bits and pulses
//! the GED's interrupt; the guest's GED driver (Linux: drivers/acpi/evged.c) runs the
//! DSDT's `\_SB.GED0._EVT`, which reads the pending bits from this device's one 32-bit
//! register and notifies the matching devices (the power button for QMP
//! `system_powerdown`).
//!
//! The register is read-to-clear: the read in `_EVT` is the acknowledgement, so an event
//! set after it raises a new interrupt and a new `_EVT` instead of being lost.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{read_bytes, LegacyError};
use crate::{BusDevice, Interrupt};

// These mirror arch/src/x86_64/layout.rs (ACPI_GED_EVENT_*, ACPI_GED_LEN), which the
// DSDT's `_EVT` is built from; devices does not depend on arch.
/// The power button was pressed: `_EVT` sends `Notify(\_SB.PWRB, 0x80)`.
pub const ACPI_GED_EVENT_POWER_BUTTON: u32 = 1 << 0;

/// The guest-visible state of the device.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct AcpiGedState {
    /// Events raised and not yet read by the guest.
    pub pending: u32,
}

/// The GED's event register on the MMIO bus.
pub struct AcpiGed {
    irq: Arc<dyn Interrupt>,
    s: AcpiGedState,
}

impl AcpiGed {
    /// Length of the MMIO window (layout.rs ACPI_GED_LEN).
    pub const WINDOW_LEN: u64 = 4;

    /// A device with no pending events that raises `irq` (edge) on each notify.
    pub fn new(irq: Arc<dyn Interrupt>) -> Self {
        Self {
            irq,
            s: AcpiGedState::default(),
        }
    }

    pub fn from_state(state: &AcpiGedState, irq: Arc<dyn Interrupt>) -> Result<Self, LegacyError> {
        let mut d = Self::new(irq);
        d.restore(state)?;
        Ok(d)
    }

    pub fn state(&self) -> AcpiGedState {
        self.s.clone()
    }

    /// Every bit pattern is accepted, including bits this build has no constant for:
    /// the guest runs the `_EVT` of the DSDT it booted with, which may come from a newer
    /// source, and an unknown bit is read and dropped there without harm.
    ///
    /// The interrupt is not raised again: a pulse already sent before the save is in
    /// the migrated interrupt controller state, and a second one would run `_EVT` twice.
    pub fn restore(&mut self, state: &AcpiGedState) -> Result<(), LegacyError> {
        self.s = state.clone();
        Ok(())
    }

    /// Add `events` (`ACPI_GED_EVENT_*` bits) to the pending ones and pulse the
    /// interrupt so the guest runs `_EVT`. With no bits there is nothing to tell the
    /// guest, so no interrupt. If the pulse fails the bits stay pending and go out
    /// with the next successful notify.
    pub fn notify(&mut self, events: u32) -> std::io::Result<()> {
        if events == 0 {
            return Ok(());
        }
        self.s.pending |= events;
        self.irq.trigger()
    }
}

impl BusDevice for AcpiGed {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let word = self.s.pending.to_le_bytes();
        read_bytes(offset, Self::WINDOW_LEN, data, |o| {
            word.get(usize::from(o)).copied().unwrap_or(0xff)
        });
        // Only the access `_EVT` makes (the DWordAcc field GDAT) acknowledges; a
        // narrower or misplaced read (a debugger, a stray driver) must not eat events.
        if offset == 0 && data.len() == 4 {
            self.s.pending = 0;
        }
    }

    /// The register is read-only.
    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::testutil::{BrokenIrq, CountingIrq};

    fn dev() -> (AcpiGed, Arc<CountingIrq>) {
        let irq = Arc::new(CountingIrq::default());
        (AcpiGed::new(irq.clone()), irq)
    }

    fn read32(d: &mut AcpiGed) -> u32 {
        let mut b = [0u8; 4];
        d.read(0, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn notify_sets_the_bit_and_pulses_the_interrupt() {
        let (mut d, irq) = dev();
        assert!(d.notify(ACPI_GED_EVENT_POWER_BUTTON).is_ok());
        assert_eq!(irq.count(), 1);
        assert_eq!(d.state().pending, ACPI_GED_EVENT_POWER_BUTTON);
        // A second press before the guest looks: one more pulse, the same bit.
        assert!(d.notify(ACPI_GED_EVENT_POWER_BUTTON).is_ok());
        assert_eq!(irq.count(), 2);
        assert_eq!(d.state().pending, ACPI_GED_EVENT_POWER_BUTTON);
        assert!(d.notify(0).is_ok());
        assert_eq!(irq.count(), 2, "no event, no interrupt");
    }

    #[test]
    fn a_dword_read_returns_and_clears() {
        let (mut d, _irq) = dev();
        assert!(d.notify(ACPI_GED_EVENT_POWER_BUTTON | 1 << 5).is_ok());
        assert_eq!(read32(&mut d), 0x21);
        assert_eq!(read32(&mut d), 0, "the first read acknowledged");
        assert!(d.notify(ACPI_GED_EVENT_POWER_BUTTON).is_ok());
        assert_eq!(read32(&mut d), ACPI_GED_EVENT_POWER_BUTTON);
    }

    #[test]
    fn other_reads_do_not_clear() {
        let (mut d, _irq) = dev();
        assert!(d.notify(0x0403_0201).is_ok());
        let mut b = [0u8];
        d.read(0, &mut b);
        assert_eq!(b, [0x01]);
        let mut w = [0u8; 2];
        d.read(2, &mut w);
        assert_eq!(w, [0x03, 0x04]);
        let mut q = [0u8; 8];
        d.read(0, &mut q);
        assert_eq!(q, [1, 2, 3, 4, 0xff, 0xff, 0xff, 0xff]);
        let mut off = [0u8; 4];
        d.read(1, &mut off);
        assert_eq!(off, [2, 3, 4, 0xff]);
        d.read(u64::MAX, &mut off);
        assert_eq!(off, [0xff; 4]);
        assert_eq!(d.state().pending, 0x0403_0201);
        assert_eq!(read32(&mut d), 0x0403_0201);
    }

    #[test]
    fn writes_are_ignored() {
        let (mut d, irq) = dev();
        assert!(d.notify(ACPI_GED_EVENT_POWER_BUTTON).is_ok());
        d.write(0, &[0xff; 4]);
        d.write(0, &[0; 4]);
        d.write(u64::MAX, &[0; 4]);
        assert_eq!(d.state().pending, ACPI_GED_EVENT_POWER_BUTTON);
        assert_eq!(irq.count(), 1);
    }

    #[test]
    fn a_failed_pulse_keeps_the_event() {
        let mut d = AcpiGed::new(Arc::new(BrokenIrq));
        assert!(d.notify(ACPI_GED_EVENT_POWER_BUTTON).is_err());
        assert_eq!(d.state().pending, ACPI_GED_EVENT_POWER_BUTTON);
    }

    #[test]
    fn state_round_trips() {
        let (mut d, irq) = dev();
        assert!(d.notify(ACPI_GED_EVENT_POWER_BUTTON).is_ok());
        let s = d.state();
        let mut e = AcpiGed::from_state(&s, irq.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.state(), s);
        assert_eq!(irq.count(), 1, "restore does not pulse again");
        assert_eq!(read32(&mut e), ACPI_GED_EVENT_POWER_BUTTON);
        assert_eq!(e.state(), AcpiGedState::default());
    }
}
