//! pvpanic (QEMU's `-device pvpanic`, ACPI id QEMU0001, one port, 0x505 by default, and
//! `-device pvpanic-pci`, Red Hat 1b36:0011, the same byte at offset 0 of BAR 0): the
//! guest reads which events the device supports and writes the event that happened.
//! Linux's pvpanic drivers write PANICKED from the panic notifier, CRASH_LOADED when
//! a kdump kernel is loaded and takes over, and (since 6.9) SHUTDOWN from a low-priority
//! power-off handler, reached when no firmware method powered the guest off first.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::pci::{BarKind, PciConfiguration, PciDevice, PciError, PciHeader};
use crate::BusDevice;

/// Event bits (QEMU's include/hw/misc/pvpanic.h).
pub const PVPANIC_PANICKED: u8 = 1 << 0;
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;
/// The guest is powering off (QEMU 9.1, Linux 6.9): GUEST_PVSHUTDOWN.
pub const PVPANIC_SHUTDOWN: u8 = 1 << 2;

/// What the guest reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PanicEvent {
    Panicked,
    CrashLoaded,
    /// The guest asks to be powered off.
    Shutdown,
}

/// The machine's side: turns the report into GUEST_PANICKED / GUEST_CRASHLOADED.
pub trait PanicSink: Send + Sync {
    fn guest_panic(&self, event: PanicEvent);
}

/// The device has no guest-writable state; this records what it offers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PvpanicState {
    pub events: u8,
}

pub struct Pvpanic {
    events: u8,
    sink: Arc<dyn PanicSink>,
}

impl Pvpanic {
    pub const WINDOW_LEN: u64 = 1;

    pub fn new(sink: Arc<dyn PanicSink>) -> Self {
        Pvpanic {
            events: PVPANIC_PANICKED | PVPANIC_CRASH_LOADED | PVPANIC_SHUTDOWN,
            sink,
        }
    }

    pub fn state(&self) -> PvpanicState {
        PvpanicState {
            events: self.events,
        }
    }
}

impl BusDevice for Pvpanic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.read_register(offset, data)
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.write_register(offset, data)
    }
}

impl Pvpanic {
    fn read_register(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 {
            if let Some(b) = data.first_mut() {
                *b = self.events;
            }
        }
    }

    fn write_register(&self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        if offset != 0 {
            return;
        }
        // One event per write, PANICKED first, as in QEMU: the guest is going down.
        let v = v & self.events;
        if v & PVPANIC_PANICKED != 0 {
            self.sink.guest_panic(PanicEvent::Panicked);
        } else if v & PVPANIC_CRASH_LOADED != 0 {
            self.sink.guest_panic(PanicEvent::CrashLoaded);
        } else if v & PVPANIC_SHUTDOWN != 0 {
            self.sink.guest_panic(PanicEvent::Shutdown);
        }
    }
}

/// `pvpanic-pci`: the same register behind a PCI function's memory BAR.
pub struct PvpanicPci {
    config: PciConfiguration,
    inner: Pvpanic,
}

impl PvpanicPci {
    pub const VENDOR_ID: u16 = 0x1b36;
    pub const DEVICE_ID: u16 = 0x0011;
    /// QEMU's BAR is 2 bytes; 16 is the smallest a memory BAR may be.
    const BAR_SIZE: u64 = 16;

    pub fn new(sink: Arc<dyn PanicSink>) -> Result<Self, PciError> {
        let mut config = PciConfiguration::new(&PciHeader {
            vendor_id: Self::VENDOR_ID,
            device_id: Self::DEVICE_ID,
            revision: 1,
            // Other system peripheral, as QEMU's.
            class: 0x08,
            subclass: 0x80,
            prog_if: 0,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1100,
            interrupt_pin: 0,
        });
        config.add_bar(0, BarKind::Memory32, Self::BAR_SIZE, false)?;
        Ok(Self {
            config,
            inner: Pvpanic::new(sink),
        })
    }
}

impl PciDevice for PvpanicPci {
    fn config(&self) -> &PciConfiguration {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }

    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if bar == 0 {
            self.inner.read_register(offset, data);
        } else {
            data.fill(0xff);
        }
    }

    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar == 0 {
            self.inner.write_register(offset, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn the_pci_flavour_is_the_same_register_in_bar0() {
        let log = Arc::new(Log::default());
        let mut d = PvpanicPci::new(log.clone()).unwrap();
        assert_eq!(d.config().read_reg(0), 0x0011_1b36);
        assert_eq!(d.config().read_reg(2) >> 16, 0x0880);
        let bars = d.bars();
        assert_eq!(bars.len(), 1);
        assert_eq!((bars[0].kind, bars[0].size), (BarKind::Memory32, 16));
        let mut b = [0u8; 1];
        d.read_bar(0, 0, &mut b);
        assert_eq!(
            b[0],
            PVPANIC_PANICKED | PVPANIC_CRASH_LOADED | PVPANIC_SHUTDOWN
        );
        d.read_bar(3, 0, &mut b);
        assert_eq!(b[0], 0xff);
        d.write_bar(1, 0, &[PVPANIC_PANICKED]);
        d.write_bar(0, 8, &[PVPANIC_PANICKED]);
        d.write_bar(0, 0, &[PVPANIC_CRASH_LOADED]);
        d.write_bar(0, 0, &[PVPANIC_PANICKED]);
        assert_eq!(
            *log.0.lock().unwrap(),
            [PanicEvent::CrashLoaded, PanicEvent::Panicked]
        );
    }

    #[derive(Default)]
    struct Log(Mutex<Vec<PanicEvent>>);

    impl PanicSink for Log {
        fn guest_panic(&self, event: PanicEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    #[test]
    fn reports_supported_events_and_what_the_guest_writes() {
        let log = Arc::new(Log::default());
        let mut d = Pvpanic::new(log.clone());
        let mut b = [0u8; 1];
        d.read(0, &mut b);
        assert_eq!(
            b[0],
            PVPANIC_PANICKED | PVPANIC_CRASH_LOADED | PVPANIC_SHUTDOWN
        );
        d.write(0, &[PVPANIC_CRASH_LOADED]);
        d.write(0, &[PVPANIC_PANICKED | PVPANIC_CRASH_LOADED]);
        d.write(0, &[PVPANIC_SHUTDOWN]);
        d.write(0, &[PVPANIC_CRASH_LOADED | PVPANIC_SHUTDOWN]);
        d.write(0, &[0]);
        d.write(0, &[0x80]);
        d.write(1, &[PVPANIC_PANICKED]);
        d.write(0, &[]);
        let mut wide = [0xffu8; 4];
        d.read(0, &mut wide);
        assert_eq!(wide, [7, 0, 0, 0]);
        assert_eq!(
            *log.0.lock().unwrap(),
            [
                PanicEvent::CrashLoaded,
                PanicEvent::Panicked,
                PanicEvent::Shutdown,
                PanicEvent::CrashLoaded
            ]
        );
        assert_eq!(d.state(), PvpanicState { events: 7 });
    }
}
