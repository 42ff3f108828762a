//! pvpanic, the ISA flavour (QEMU's `-device pvpanic`, ACPI id QEMU0001, one port, 0x505
//! by default): the guest reads which events the device supports and writes the event
//! that happened. Linux's pvpanic driver writes PANICKED from its panic notifier and
//! CRASH_LOADED when a kdump kernel is loaded and takes over.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::BusDevice;

/// Event bits (QEMU's include/hw/misc/pvpanic.h).
pub const PVPANIC_PANICKED: u8 = 1 << 0;
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

/// What the guest reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PanicEvent {
    Panicked,
    CrashLoaded,
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
            events: PVPANIC_PANICKED | PVPANIC_CRASH_LOADED,
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
        data.fill(0);
        if offset == 0 {
            if let Some(b) = data.first_mut() {
                *b = self.events;
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        if offset != 0 {
            return;
        }
        // PANICKED wins when both are set, as in QEMU: the guest is going down.
        if v & self.events & PVPANIC_PANICKED != 0 {
            self.sink.guest_panic(PanicEvent::Panicked);
        } else if v & self.events & PVPANIC_CRASH_LOADED != 0 {
            self.sink.guest_panic(PanicEvent::CrashLoaded);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

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
        assert_eq!(b[0], PVPANIC_PANICKED | PVPANIC_CRASH_LOADED);
        d.write(0, &[PVPANIC_CRASH_LOADED]);
        d.write(0, &[PVPANIC_PANICKED | PVPANIC_CRASH_LOADED]);
        d.write(0, &[0]);
        d.write(0, &[0x80]);
        d.write(1, &[PVPANIC_PANICKED]);
        d.write(0, &[]);
        let mut wide = [0xffu8; 4];
        d.read(0, &mut wide);
        assert_eq!(wide, [3, 0, 0, 0]);
        assert_eq!(
            *log.0.lock().unwrap(),
            [PanicEvent::CrashLoaded, PanicEvent::Panicked]
        );
        assert_eq!(d.state(), PvpanicState { events: 3 });
    }
}
