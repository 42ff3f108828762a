//! What a boot reports to the machine: [`VmEvent`], and [`BootEvents`], the sink every
//! device model of one boot reports through (pvpanic, the RTC, the watchdog, the balloon,
//! virtio-blk errors). Both the boot (`vm`) and its PCI devices (`pci`) use it, so it
//! sits below them. Each report reaches the event loop tagged with its boot's generation:
//! after a reset, reports of the old boot are recognised and dropped.

use devices::legacy::pvpanic::{PanicEvent, PanicSink};
use devices::legacy::rtc::RtcEvents;
use devices::pci::i6300esb::WatchdogSink;
use devices::virtio::balloon::BalloonEvents;
use devices::virtio::block::{BlockErrorHandler, BlockIoError};

use crate::ControlSender;

/// What the guest did that the machine must act on.
#[derive(Clone, Debug)]
pub enum VmEvent {
    /// The guest reset the machine (i8042, ACPI reset register, triple fault).
    Reset,
    /// The guest powered the machine off (ACPI S5).
    PowerOff,
    /// The vCPU cannot go on (KVM internal error, failed entry).
    Fatal(String),
    /// A block device hit a host I/O error (BLOCK_IO_ERROR; with action stop the
    /// machine goes to io-error).
    BlockIoError(devices::virtio::block::BlockIoError),
    /// A NIC's receive filter changed (NIC_RX_FILTER_CHANGED).
    NicRxFilterChanged { name: String, path: String },
    /// The guest reported a panic or a loaded crash kernel through pvpanic.
    GuestPanic(devices::legacy::pvpanic::PanicEvent),
    /// The guest opened or closed a virtio-serial port (VSERPORT_CHANGE).
    VserportChange { id: String, open: bool },
    /// The watchdog expired: WATCHDOG, then the watchdog action.
    WatchdogExpired,
    /// The balloon driver reported a new balloon size, in 4 KiB pages (BALLOON_CHANGE).
    BalloonChange { actual_pages: u32 },
    /// The guest set its RTC; `offset` is guest minus base time in seconds (RTC_CHANGE).
    RtcChange { offset: i64 },
}

/// What a device of one boot tells the machine: each report becomes a [`VmEvent`] for
/// the event loop, tagged with the boot it came from (a reset makes older ones stale).
#[derive(Clone)]
pub(crate) struct BootEvents {
    pub(crate) tx: ControlSender,
    pub(crate) generation: u64,
}

impl BootEvents {
    pub(crate) fn send(&self, event: VmEvent) {
        let _ = self.tx.send(crate::ControlEvent::Vm {
            generation: self.generation,
            event,
        });
    }
}

/// pvpanic: GUEST_PANICKED and friends, and the panic action.
impl PanicSink for BootEvents {
    fn guest_panic(&self, event: PanicEvent) {
        self.send(VmEvent::GuestPanic(event));
    }
}

/// The guest set its clock: RTC_CHANGE.
impl RtcEvents for BootEvents {
    fn time_changed(&self, offset_secs: i64) {
        self.send(VmEvent::RtcChange {
            offset: offset_secs,
        });
    }
}

/// The watchdog expired: WATCHDOG and the watchdog action.
impl WatchdogSink for BootEvents {
    fn expired(&self) {
        self.send(VmEvent::WatchdogExpired);
    }
}

/// The balloon driver's new size: BALLOON_CHANGE.
impl BalloonEvents for BootEvents {
    fn actual_changed(&self, actual_pages: u32) {
        self.send(VmEvent::BalloonChange { actual_pages });
    }
}

/// A disk's host I/O error: BLOCK_IO_ERROR, and with `werror=stop` the io-error stop.
impl BlockErrorHandler for BootEvents {
    fn io_error(&self, e: &BlockIoError) {
        self.send(VmEvent::BlockIoError(e.clone()));
    }
}
