//! The legacy PC devices a Linux guest needs to live: the 16550 UART (console), the
//! i8042 controller (probe and `reboot=k`), the MC146818 CMOS RTC (wall clock) and the
//! hardware-reduced ACPI sleep/reset registers (poweroff and reboot), and the ACPI
//! Generic Event Device (the power button).
//!
//! Each but the GED is a `BusDevice` on the port bus. They are byte-wide hardware: a
//! wider access is split into consecutive byte accesses, as the ISA bus does, and the
//! bytes that fall outside the device's window read as all ones (open bus) and are
//! dropped on write. The GED is one 32-bit register on the MMIO bus.

pub mod acpi_ged;
pub mod acpi_pm;
pub mod i8042;
pub mod pvpanic;
pub mod rtc;
pub mod serial;

pub use acpi_ged::{AcpiGed, AcpiGedState};
pub use acpi_pm::{AcpiPmDevice, AcpiPmState};
pub use i8042::{I8042Device, I8042State};
pub use rtc::{Clock, CmosRtc, RtcConfig, RtcDateTime, RtcEvents, RtcState, SystemClock};
pub use serial::{SerialDevice, SerialDeviceState};

/// Why a saved device state could not be restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LegacyError {
    #[error("{device} state is invalid: {reason}; the migration stream is corrupt or from an incompatible version")]
    InvalidState {
        device: &'static str,
        reason: String,
    },
}

/// Splits a read of `data.len()` bytes at `offset` into byte reads of the registers
/// in a window of `len` bytes.
pub(crate) fn read_bytes(offset: u64, len: u64, data: &mut [u8], mut f: impl FnMut(u8) -> u8) {
    for (i, d) in data.iter_mut().enumerate() {
        *d = match offset.checked_add(i as u64) {
            Some(o) if o < len => f(o as u8),
            _ => 0xff,
        };
    }
}

/// Splits a write like `read_bytes`.
pub(crate) fn write_bytes(offset: u64, len: u64, data: &[u8], mut f: impl FnMut(u8, u8)) {
    for (i, d) in data.iter().enumerate() {
        if let Some(o) = offset.checked_add(i as u64).filter(|o| *o < len) {
            f(o as u8, *d);
        }
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::Interrupt;

    /// An interrupt line that counts its pulses.
    #[derive(Default)]
    pub struct CountingIrq(AtomicUsize);

    impl CountingIrq {
        pub fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl Interrupt for CountingIrq {
        fn trigger(&self) -> std::io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    /// An interrupt line whose irqfd is gone.
    pub struct BrokenIrq;

    impl Interrupt for BrokenIrq {
        fn trigger(&self) -> std::io::Result<()> {
            Err(std::io::Error::other("irqfd closed"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_and_stray_accesses_stay_in_the_window() {
        let mut seen = Vec::new();
        let mut data = [0u8; 4];
        read_bytes(2, 4, &mut data, |o| {
            seen.push(o);
            o + 10
        });
        assert_eq!(data, [12, 13, 0xff, 0xff]);
        assert_eq!(seen, [2, 3]);
        read_bytes(u64::MAX, 4, &mut data, |_| 0);
        assert_eq!(data, [0xff; 4]);
        let mut w = Vec::new();
        write_bytes(3, 4, &[1, 2, 3], |o, v| w.push((o, v)));
        assert_eq!(w, [(3, 1)]);
        write_bytes(u64::MAX - 1, 4, &[1, 2, 3], |o, v| w.push((o, v)));
        assert_eq!(w, [(3, 1)]);
    }
}
