//! The transmit path: every frame the guest queued goes to the backend (header
//! included), or is dropped while the link is down.
//!
//! Invariant: each chain is returned to the guest once, whether sent or dropped.

use std::io::Read;

use virtio_queue::{QueueT, Reader};

use super::{Active, VirtioNet, TX_QUEUE};
use crate::virtio::queue_util::{pop, queue_err, signal};
use crate::virtio::DeviceError;

impl VirtioNet {
    /// Sends every frame the guest queued (or drops them while the link is down).
    pub(super) fn process_tx(&mut self) -> Result<(), DeviceError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let Active {
            mem,
            interrupt,
            queues,
        } = active;
        let Some(q) = queues.get_mut(TX_QUEUE) else {
            return Ok(());
        };
        let mut used = false;
        while let Some(chain) = pop(q, mem)? {
            let head = chain.head_index();
            used = true;
            let frame = match Reader::new(mem, chain) {
                Ok(mut r) => {
                    let n = r.available_bytes();
                    if n < self.hdr_len || n > self.tx_buf.len() {
                        log::debug!("{}: dropped a {n}-byte transmit request", self.name);
                        None
                    } else {
                        r.read_exact(&mut self.tx_buf[..n]).ok().map(|_| n)
                    }
                }
                Err(e) => {
                    log::debug!("{}: malformed transmit chain: {e}", self.name);
                    None
                }
            };
            if let (Some(n), true) = (frame, self.link_up) {
                if let Err(e) = self.backend.send(&self.tx_buf[..n]) {
                    // As a NIC on a congested or unplugged wire: the frame is lost.
                    log::debug!("{}: backend refused a frame: {e}", self.name);
                }
            }
            q.add_used(mem, head, 0).map_err(queue_err)?;
        }
        if used {
            signal(q, mem, interrupt.as_ref(), TX_QUEUE)?;
        }
        Ok(())
    }
}
