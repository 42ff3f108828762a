//! The receive path: frames read from the backend, passed through the receive filter,
//! and offered to the receive queue (header first; spread over several buffers with
//! MRG_RXBUF).
//!
//! Invariant: a frame the guest has no room for yet is kept in `rx_buf`
//! (`rx_pending`) and is the first one offered when the guest refills the queue; the
//! backend is read until it is empty (its fd is watched edge-triggered).

use std::io::{self, Write};

use crate::GuestMemoryMmap;
use net::VNET_HDR_LEN;
use virtio_queue::{Queue, QueueT, Writer};

use super::config::VIRTIO_NET_F_MRG_RXBUF;
use super::{Active, VirtioNet, RX_QUEUE};
use crate::virtio::queue_util::{pop, queue_err, signal};
use crate::virtio::DeviceError;

/// Outcome of offering one frame to the receive queue.
enum Delivery {
    Delivered,
    /// The guest has not offered enough buffers yet: keep the frame.
    NoBuffers,
    /// The frame cannot ever fit the guest's buffers: drop it.
    Dropped,
    /// As `Dropped`, and malformed chains were returned on the way.
    DroppedUsed,
}

impl VirtioNet {
    /// Moves frames from the backend to the guest until one side runs dry.
    pub(super) fn process_rx(&mut self) -> Result<(), DeviceError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let Active {
            mem,
            interrupt,
            queues,
        } = active;
        let Some(q) = queues.get_mut(RX_QUEUE) else {
            return Ok(());
        };
        let mergeable = self.acked_features & VIRTIO_NET_F_MRG_RXBUF != 0;
        let mut used = false;
        let result = loop {
            let len = match self.rx_pending.take() {
                Some(n) => n,
                None => match self.backend.recv(&mut self.rx_buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // The backend's own trouble (e.g. a tap whose interface vanished)
                        // is not the guest's: stop reading, keep the device working.
                        log::warn!("{}: receive from the backend failed: {e}", self.name);
                        break Ok(());
                    }
                },
            };
            if !self.link_up || len < self.hdr_len + 14 {
                continue;
            }
            let frame = &mut self.rx_buf[..len];
            if !self.filter.accepts(&frame[self.hdr_len..]) {
                continue;
            }
            match deliver(q, mem, frame, self.hdr_len, mergeable) {
                Ok(Delivery::Delivered) => used = true,
                Ok(d @ (Delivery::Dropped | Delivery::DroppedUsed)) => {
                    used |= matches!(d, Delivery::DroppedUsed);
                    log::debug!(
                        "{}: dropped a {len}-byte frame: guest buffers too small",
                        self.name
                    );
                }
                Ok(Delivery::NoBuffers) => {
                    self.rx_pending = Some(len);
                    break Ok(());
                }
                Err(e) => break Err(e),
            }
        };
        if used {
            signal(q, mem, interrupt.as_ref(), RX_QUEUE)?;
        }
        result
    }
}

/// Offers one frame (header first) to the receive queue. With `mergeable`, the frame
/// may span several chains, each used entry consecutive and `num_buffers` set; without,
/// it must fit one chain. Chains the guest got wrong are returned empty and skipped.
fn deliver(
    q: &mut Queue,
    mem: &GuestMemoryMmap,
    frame: &mut [u8],
    hdr_len: usize,
    mergeable: bool,
) -> Result<Delivery, DeviceError> {
    let mut writers: Vec<(u16, Writer<'_, crate::GuestBitmapSlice<'_>>)> = Vec::new();
    let mut bad: Vec<u16> = Vec::new();
    let mut room = 0usize;
    let mut popped: u16 = 0;
    while room < frame.len() && (mergeable || writers.is_empty()) {
        let Some(chain) = pop(q, mem)? else {
            break;
        };
        popped = popped.wrapping_add(1);
        let head = chain.head_index();
        match Writer::new(mem, chain) {
            // Each buffer must at least hold the header (virtio 1.2, 5.1.6.3.2).
            Ok(w) if w.available_bytes() >= hdr_len => {
                room += w.available_bytes();
                writers.push((head, w));
            }
            _ => bad.push(head),
        }
    }
    if room < frame.len() {
        if mergeable || writers.is_empty() {
            // Not enough offered yet: give the chains back for the next try.
            q.set_next_avail(q.next_avail().wrapping_sub(popped));
            return Ok(Delivery::NoBuffers);
        }
        // One buffer too small for this frame: drop the frame, keep the buffer (the
        // last one popped; the bad ones before it are done with).
        q.set_next_avail(q.next_avail().wrapping_sub(1));
        if bad.is_empty() {
            return Ok(Delivery::Dropped);
        }
        for head in bad {
            q.add_used(mem, head, 0).map_err(queue_err)?;
        }
        return Ok(Delivery::DroppedUsed);
    }
    for head in bad {
        q.add_used(mem, head, 0).map_err(queue_err)?;
    }
    if hdr_len >= VNET_HDR_LEN {
        frame[10..12].copy_from_slice(&(writers.len() as u16).to_le_bytes());
    }
    let mut rest: &[u8] = frame;
    for (head, mut w) in writers {
        let n = w.available_bytes().min(rest.len());
        let written = w.write(&rest[..n]).unwrap_or(0);
        rest = &rest[written..];
        q.add_used(mem, head, written as u32).map_err(queue_err)?;
    }
    Ok(Delivery::Delivered)
}
