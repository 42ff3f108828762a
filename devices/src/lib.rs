//! Device models. A device sees only its own register window and talks back to the
//! machine through small traits (`Interrupt`, `ExitRequests`), so every model is
//! tested without KVM. Each device keeps its state in a plain serde struct, so
//! migration can save and restore it.

pub mod bus;
pub mod legacy;
pub mod pci;
pub mod timer;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError, SharedDevice};

/// Guest memory as Kestrel maps it: mmap'ed regions, each with a dirty bitmap that
/// vm-memory sets on every write a device model makes through it (used rings, rx
/// buffers, block reads, marked by `block::IoBuffers` for the kernel's writes), so
/// migration can send again what devices wrote while it copied. What vCPUs write is in
/// KVM's dirty log instead.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;

/// The bitmap of a slice of [`GuestMemoryMmap`], as descriptor-chain readers and
/// writers carry it.
pub type GuestBitmapSlice<'a> = vm_memory::bitmap::BS<'a, vm_memory::bitmap::AtomicBitmap>;

use std::sync::atomic::{AtomicU8, Ordering};

/// A level or edge interrupt line into the guest (an irqfd in the machine, a counter in tests).
pub trait Interrupt: Send + Sync {
    /// Raise the line (for an edge-triggered line: one pulse).
    fn trigger(&self) -> std::io::Result<()>;
}

/// What the guest asked of the machine through a device: reset or power off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ExitRequest {
    Reset,
    PowerOff,
}

/// The machine's side of `ExitRequest`: the vCPU loop checks it after each exit.
/// First request wins until `take` clears it.
#[derive(Default, Debug)]
pub struct ExitRequests(AtomicU8);

impl ExitRequests {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn request(&self, r: ExitRequest) {
        let v = match r {
            ExitRequest::Reset => 1,
            ExitRequest::PowerOff => 2,
        };
        let _ = self
            .0
            .compare_exchange(0, v, Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn peek(&self) -> Option<ExitRequest> {
        match self.0.load(Ordering::Acquire) {
            1 => Some(ExitRequest::Reset),
            2 => Some(ExitRequest::PowerOff),
            _ => None,
        }
    }

    pub fn take(&self) -> Option<ExitRequest> {
        let r = self.peek();
        self.0.store(0, Ordering::Release);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_exit_request_wins_until_taken() {
        let e = ExitRequests::new();
        assert_eq!(e.peek(), None);
        e.request(ExitRequest::PowerOff);
        e.request(ExitRequest::Reset);
        assert_eq!(e.take(), Some(ExitRequest::PowerOff));
        assert_eq!(e.take(), None);
        e.request(ExitRequest::Reset);
        assert_eq!(e.peek(), Some(ExitRequest::Reset));
    }
}
