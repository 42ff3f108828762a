//! Queue handling shared by the virtio device models: taking the next chain and telling
//! the driver about used buffers, with virtio-queue's errors mapped to `DeviceError`.

use crate::GuestMemoryMmap;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use super::{DeviceError, VirtioInterrupt};

pub(crate) type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

pub(crate) fn queue_err(e: impl std::fmt::Display) -> DeviceError {
    DeviceError::Queue(e.to_string())
}

/// A driver's read of `data.len()` bytes at `offset` in a device configuration space
/// laid out in `config`; bytes past its end (or at an absurd offset) read as 0.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Some(rest) = usize::try_from(offset).ok().and_then(|o| config.get(o..)) else {
        return;
    };
    let n = data.len().min(rest.len());
    data[..n].copy_from_slice(&rest[..n]);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_stay_inside_the_space() {
        let c = [1u8, 2, 3, 4];
        let mut d = [0xffu8; 3];
        read_config_bytes(&c, 2, &mut d);
        assert_eq!(d, [3, 4, 0]);
        read_config_bytes(&c, 4, &mut d);
        assert_eq!(d, [0, 0, 0]);
        read_config_bytes(&c, u64::MAX, &mut d);
        assert_eq!(d, [0, 0, 0]);
        read_config_bytes(&c, 0, &mut d);
        assert_eq!(d, [1, 2, 3]);
    }
}
