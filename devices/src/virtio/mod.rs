//! Virtio devices (virtio 1.x) and the contract between a device model and its
//! transport. A device never sees the transport: it is handed its queues, guest memory
//! and an interrupt when the driver sets DRIVER_OK, and the machine calls
//! `process_queue` when a queue's ioeventfd fires (and `process_event` for the device's
//! own fds, e.g. io_uring completions or a tap). So every model is driven in unit tests
//! with virtio-queue's mock queues, no KVM and no threads.
//!
//! All descriptor handling goes through virtio-queue; a malformed chain from the guest
//! fails that request (or marks the device NEEDS_RESET), never panics, never touches
//! memory outside the guest's.

pub mod balloon;
pub mod block;
pub mod console;
pub mod net;

pub mod pci;
mod queue_util;

use std::os::fd::RawFd;
use std::sync::Arc;

use crate::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};

pub use balloon::BalloonState;
pub use block::BlockState;
pub use console::{ConsolePortState, ConsoleState};
pub use net::NetState;

/// Virtio device ids (virtio 1.2, 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_CONSOLE: u32 = 3;
pub const TYPE_BALLOON: u32 = 5;

/// Feature bits every device offers (virtio 1.2, 6).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_F_RING_EVENT_IDX: u64 = 1 << 29;
pub const VIRTIO_F_RING_INDIRECT_DESC: u64 = 1 << 28;

/// Device status bits (virtio 1.2, 2.1).
pub const STATUS_ACKNOWLEDGE: u8 = 1;
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_NEEDS_RESET: u8 = 64;
pub const STATUS_FAILED: u8 = 128;

/// How a device signals the driver. The transport implements it (MSI-X vectors through
/// irqfds, or the INTx line and ISR); tests count calls.
pub trait VirtioInterrupt: Send + Sync {
    /// Buffers were used on queue `queue`.
    fn trigger_queue(&self, queue: u16) -> std::io::Result<()>;
    /// The device configuration changed (config generation is bumped by the transport).
    fn trigger_config(&self) -> std::io::Result<()>;
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the driver set up {got} queues; the device needs {want}")]
    QueueCount { got: usize, want: usize },
    #[error("cannot activate the device: {0}")]
    Failed(String),
}

/// What processing a queue or event found wrong with the device as a whole; the
/// transport then sets DEVICE_NEEDS_RESET and tells the driver.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("guest memory or ring error: {0}")]
    Queue(String),
    #[error("backend error: {0}")]
    Backend(String),
}

/// A device model's own guest-visible state, for migration: what the driver negotiated
/// and programmed beyond the transport's registers. Host-side resources (images, taps,
/// chardevs) are not in it; the destination opens its own from its command line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum VirtioDeviceState {
    Balloon(BalloonState),
    Block(BlockState),
    Net(NetState),
    Console(ConsoleState),
}

/// The device a state is for, in errors.
pub(crate) fn state_kind(s: &VirtioDeviceState) -> &'static str {
    match s {
        VirtioDeviceState::Balloon(_) => "virtio-balloon",
        VirtioDeviceState::Block(_) => "virtio-blk",
        VirtioDeviceState::Net(_) => "virtio-net",
        VirtioDeviceState::Console(_) => "virtio-console",
    }
}

/// A virtio device model.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the number of entries is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Features offered (including `VIRTIO_F_VERSION_1`).
    fn features(&self) -> u64;
    /// The features the driver accepted (a subset of `features`, checked by the transport).
    fn ack_features(&mut self, features: u64);
    /// Device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set DRIVER_OK: start serving these queues.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError>;
    /// The driver reset the device: stop, drop the queues, return to the initial state.
    fn reset(&mut self);
    /// The driver notified queue `index` (its ioeventfd fired).
    fn process_queue(&mut self, index: usize) -> Result<(), DeviceError>;
    /// Host-side fds the machine must watch for this device once active, each with a
    /// token passed back to `process_event` (io_uring completions, tap readable, ...).
    fn event_fds(&self) -> Vec<(RawFd, u32)> {
        Vec::new()
    }
    fn process_event(&mut self, token: u32) -> Result<(), DeviceError> {
        let _ = token;
        Ok(())
    }
    /// The queues the device serves since `activate` (empty while it is not active),
    /// so the transport can save how far each one got.
    fn active_queues(&self) -> &[Queue] {
        &[]
    }
    /// Where the device is in each of its active queues: (next available entry, next
    /// used entry). Derived from [`Self::active_queues`]; a wrapper that cannot lend
    /// its queues out (a model behind a mutex) forwards this instead.
    fn queue_positions(&self) -> Vec<(u16, u16)> {
        self.active_queues()
            .iter()
            .map(|q| (q.next_avail(), q.next_used()))
            .collect()
    }
    /// The device's own state for migration. Fails for a device model that has none, or
    /// that cannot be saved right now (e.g. requests still in flight).
    fn save_state(&self) -> Result<VirtioDeviceState, String> {
        Err(format!(
            "virtio device type {} cannot be migrated",
            self.device_type()
        ))
    }
    /// Loads state saved by [`Self::save_state`] into a device that is not active yet
    /// (the transport activates it afterwards when the driver had). Refuses state that
    /// is for another device type or that this device could not have reached.
    fn restore_state(&mut self, state: &VirtioDeviceState) -> Result<(), String> {
        let _ = state;
        Err(format!(
            "virtio device type {} cannot be migrated",
            self.device_type()
        ))
    }
}
