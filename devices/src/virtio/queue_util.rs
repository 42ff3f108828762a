//! Queue handling shared by the virtio device models: taking the next chain and telling
//! the driver about used buffers, with virtio-queue's errors mapped to `DeviceError`.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{DeviceError, VirtioInterrupt};

pub(crate) type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

pub(crate) fn queue_err(e: impl std::fmt::Display) -> DeviceError {
    DeviceError::Queue(e.to_string())
}

/// The next available chain, or None when the driver has offered none (or has not set
/// the queue up).
pub(crate) fn pop<'a>(
    q: &mut Queue,
    mem: &'a GuestMemoryMmap,
) -> Result<Option<Chain<'a>>, DeviceError> {
    if !q.ready() {
        return Ok(None);
    }
    Ok(q.iter(mem).map_err(queue_err)?.next())
}

/// Interrupts the driver for queue `index` if the ring's notification rules say so.
pub(crate) fn signal(
    q: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &dyn VirtioInterrupt,
    index: usize,
) -> Result<(), DeviceError> {
    if q.needs_notification(mem).map_err(queue_err)? {
        interrupt
            .trigger_queue(index as u16)
            .map_err(|e| DeviceError::Backend(format!("cannot interrupt the guest: {e}")))?;
    }
    Ok(())
}
