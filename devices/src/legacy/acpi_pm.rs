//! The hardware-reduced ACPI sleep and reset registers (FADT SLEEP_CONTROL_REG,
//! SLEEP_STATUS_REG and RESET_REG): one byte each, in a port window of 4. This is how a
//! Linux guest on a hardware-reduced machine powers off (`poweroff`: S5) and reboots
//! (`reboot=a`, the default first choice when the FADT has a reset register).
//!
//! Only S5 is implemented: other sleep types are latched and ignored, so the guest stays
//! awake and WAK_STS never sets.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{read_bytes, write_bytes, LegacyError};
use crate::{BusDevice, ExitRequest, ExitRequests};

// These mirror arch/src/x86_64/layout.rs (ACPI_PM_PORT_BASE and neighbours), which the
// FADT and DSDT are built from; devices does not depend on arch.
/// Base of the window on the port bus.
pub const ACPI_PM_PORT_BASE: u16 = 0x600;
/// Offsets in the window.
pub const SLEEP_CONTROL_OFFSET: u8 = 0;
pub const SLEEP_STATUS_OFFSET: u8 = 1;
pub const RESET_OFFSET: u8 = 2;
/// The FADT's RESET_VALUE.
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// The sleep type the DSDT's `\_S5` package gives.
pub const ACPI_S5_SLP_TYP: u8 = 5;
/// SLP_EN in the sleep control register (ACPI 6.4, 4.8.3.7).
pub const ACPI_SLP_EN: u8 = 1 << 5;

const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;
/// WAK_STS in the sleep status register, write 1 to clear.
const WAK_STS: u8 = 1 << 7;

/// The guest-visible state of the registers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct AcpiPmState {
    /// SLP_TYP of the last write to the sleep control register.
    pub sleep_type: u8,
    /// The sleep status register (WAK_STS in bit 7; never set while only S5 exists).
    pub sleep_status: u8,
}

/// The ACPI sleep/reset registers on the port bus.
pub struct AcpiPmDevice {
    exit: Arc<ExitRequests>,
    s: AcpiPmState,
}

impl AcpiPmDevice {
    /// Length of the port window (layout.rs ACPI_PM_PORT_LEN).
    pub const WINDOW_LEN: u64 = 4;

    /// Registers that ask `exit` to power off on S5 and to reset on the reset value.
    pub fn new(exit: Arc<ExitRequests>) -> Self {
        Self {
            exit,
            s: AcpiPmState::default(),
        }
    }

    pub fn from_state(state: &AcpiPmState, exit: Arc<ExitRequests>) -> Result<Self, LegacyError> {
        let mut d = Self::new(exit);
        d.restore(state)?;
        Ok(d)
    }

    pub fn state(&self) -> AcpiPmState {
        self.s.clone()
    }

    /// Any byte values are a state the registers can hold, so this cannot fail today;
    /// it returns a `Result` like the other devices' for the day WAK_STS means something.
    pub fn restore(&mut self, state: &AcpiPmState) -> Result<(), LegacyError> {
        self.s = AcpiPmState {
            sleep_type: state.sleep_type & SLP_TYP_MASK,
            sleep_status: state.sleep_status,
        };
        Ok(())
    }

    fn write_sleep_control(&mut self, v: u8) {
        let typ = (v >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
        self.s.sleep_type = typ;
        if v & ACPI_SLP_EN != 0 && typ == ACPI_S5_SLP_TYP {
            self.exit.request(ExitRequest::PowerOff);
        }
    }
}

impl BusDevice for AcpiPmDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_bytes(offset, Self::WINDOW_LEN, data, |o| match o {
            // SLP_EN is write-only and reads 0; SLP_TYP reads back.
            SLEEP_CONTROL_OFFSET => self.s.sleep_type << SLP_TYP_SHIFT,
            SLEEP_STATUS_OFFSET => self.s.sleep_status,
            // The reset register is write-only.
            _ => 0,
        });
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        write_bytes(offset, Self::WINDOW_LEN, data, |o, v| match o {
            SLEEP_CONTROL_OFFSET => self.write_sleep_control(v),
            SLEEP_STATUS_OFFSET => self.s.sleep_status &= !(v & WAK_STS),
            RESET_OFFSET if v == ACPI_RESET_VALUE => self.exit.request(ExitRequest::Reset),
            _ => {}
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> (AcpiPmDevice, Arc<ExitRequests>) {
        let exit = Arc::new(ExitRequests::new());
        (AcpiPmDevice::new(exit.clone()), exit)
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let (mut d, exit) = dev();
        // What Linux's acpi_hw_extended_sleep() writes: clear WAK_STS, then SLP_TYP|SLP_EN.
        d.write(1, &[0x80]);
        assert_eq!(exit.peek(), None);
        d.write(0, &[(5 << 2) | 0x20]);
        assert_eq!(exit.take(), Some(ExitRequest::PowerOff));
    }

    #[test]
    fn other_values_do_nothing() {
        let (mut d, exit) = dev();
        for v in [
            5 << 2,
            0x20,
            (3 << 2) | 0x20,
            (4 << 2) | 0x20,
            !(0x7 << 2),
            0x00,
        ] {
            d.write(0, &[v]);
        }
        d.write(2, &[0x00]);
        d.write(2, &[0x02]);
        d.write(3, &[0x01]);
        d.write(u64::MAX, &[0x01]);
        assert_eq!(exit.peek(), None);
        let mut b = [0u8; 4];
        d.read(0, &mut b);
        assert_eq!(b, [0, 0, 0, 0]);
    }

    #[test]
    fn reset_value_resets() {
        let (mut d, exit) = dev();
        d.write(2, &[ACPI_RESET_VALUE]);
        assert_eq!(exit.take(), Some(ExitRequest::Reset));
        // A 16-bit write at offset 1 puts its high byte in the reset register.
        d.write(1, &[0x00, ACPI_RESET_VALUE]);
        assert_eq!(exit.take(), Some(ExitRequest::Reset));
    }

    #[test]
    fn state_round_trips() {
        let (mut d, exit) = dev();
        d.write(0, &[3 << 2]);
        let s = d.state();
        assert_eq!(s.sleep_type, 3);
        let mut e = AcpiPmDevice::from_state(&s, exit).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.state(), s);
        let mut b = [0u8];
        e.read(0, &mut b);
        assert_eq!(b[0], 3 << 2);
    }
}
