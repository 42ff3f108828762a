//! The control queues of MULTIPORT (virtio 1.2, 5.3.6.2): messages to the guest
//! (PORT_ADD, CONSOLE_PORT, PORT_NAME, PORT_OPEN, ...) queued and sent while it offers
//! buffers, and the guest's messages (DEVICE_READY, PORT_READY, PORT_OPEN) acted on.
//!
//! Invariant: a malformed or oversized control message is dropped (its buffer
//! returned), never panics; messages to the guest keep their order.

use std::io::{Read, Write};

use virtio_queue::{QueueT, Reader, Writer};

use super::{
    Active, VirtioConsole, CONTROL_RX_QUEUE, CONTROL_TX_QUEUE, VIRTIO_CONSOLE_CONSOLE_PORT,
    VIRTIO_CONSOLE_DEVICE_READY, VIRTIO_CONSOLE_PORT_ADD, VIRTIO_CONSOLE_PORT_NAME,
    VIRTIO_CONSOLE_PORT_OPEN, VIRTIO_CONSOLE_PORT_READY,
};
use crate::virtio::queue_util::{pop, queue_err, signal};
use crate::virtio::DeviceError;

pub(super) const CONTROL_HDR_LEN: usize = 8;
/// Control messages from the guest carry at most a header and a short value.
pub(super) const MAX_CONTROL_MSG: usize = 4096;

pub(super) fn control_msg(id: u32, event: u16, value: u16, data: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTROL_HDR_LEN + data.len());
    m.extend_from_slice(&id.to_le_bytes());
    m.extend_from_slice(&event.to_le_bytes());
    m.extend_from_slice(&value.to_le_bytes());
    m.extend_from_slice(data);
    m
}

impl VirtioConsole {
    /// Sends queued control messages while the guest offers buffers.
    pub(super) fn flush_control(&mut self) -> Result<(), DeviceError> {
        let Some(Active {
            mem,
            interrupt,
            queues,
        }) = self.active.as_mut()
        else {
            return Ok(());
        };
        let Some(q) = queues.get_mut(CONTROL_RX_QUEUE) else {
            return Ok(());
        };
        let mut used = false;
        while let Some(msg) = self.control_out.front() {
            let Some(chain) = pop(q, mem)? else {
                break;
            };
            used = true;
            let head = chain.head_index();
            let written = match Writer::new(mem, chain) {
                Ok(mut w) if w.available_bytes() >= CONTROL_HDR_LEN => {
                    // A name longer than the buffer is cut, as the guest would cut it.
                    let n = w.available_bytes().min(msg.len());
                    w.write_all(&msg[..n]).map(|()| n).unwrap_or(0)
                }
                _ => 0,
            };
            if written > 0 {
                self.control_out.pop_front();
            }
            q.add_used(mem, head, written as u32).map_err(queue_err)?;
        }
        if used {
            signal(q, mem, interrupt.as_ref(), CONTROL_RX_QUEUE)?;
        }
        Ok(())
    }

    /// Handles the guest's control messages.
    pub(super) fn process_control(&mut self) -> Result<(), DeviceError> {
        let mut msgs = Vec::new();
        {
            let Some(Active {
                mem,
                interrupt,
                queues,
            }) = self.active.as_mut()
            else {
                return Ok(());
            };
            let Some(q) = queues.get_mut(CONTROL_TX_QUEUE) else {
                return Ok(());
            };
            let mut used = false;
            while let Some(chain) = pop(q, mem)? {
                used = true;
                let head = chain.head_index();
                if let Ok(mut r) = Reader::new(mem, chain) {
                    let n = r.available_bytes().min(MAX_CONTROL_MSG);
                    let mut m = vec![0u8; n];
                    if n >= CONTROL_HDR_LEN && r.read_exact(&mut m).is_ok() {
                        msgs.push(m);
                    } else {
                        log::debug!("virtio-serial: short control message ({n} bytes)");
                    }
                }
                q.add_used(mem, head, 0).map_err(queue_err)?;
            }
            if used {
                signal(q, mem, interrupt.as_ref(), CONTROL_TX_QUEUE)?;
            }
        }
        for m in msgs {
            let id = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
            let event = u16::from_le_bytes([m[4], m[5]]);
            let value = u16::from_le_bytes([m[6], m[7]]);
            self.control_message(id, event, value)?;
        }
        self.flush_control()
    }

    pub(super) fn control_message(
        &mut self,
        id: u32,
        event: u16,
        value: u16,
    ) -> Result<(), DeviceError> {
        match event {
            VIRTIO_CONSOLE_DEVICE_READY => {
                if value == 0 {
                    log::warn!("virtio-serial: the guest driver failed to initialise");
                    return Ok(());
                }
                self.driver_ready = true;
                for &nr in self.ports.keys() {
                    self.control_out
                        .push_back(control_msg(nr, VIRTIO_CONSOLE_PORT_ADD, 1, &[]));
                }
            }
            VIRTIO_CONSOLE_PORT_READY => {
                let Some(port) = self.ports.get_mut(&id) else {
                    log::debug!("virtio-serial: PORT_READY for unknown port {id}");
                    return Ok(());
                };
                if value == 0 {
                    log::warn!("virtio-serial: the guest failed to set up port {id}");
                    return Ok(());
                }
                port.guest_ready = true;
                if port.console {
                    self.control_out.push_back(control_msg(
                        id,
                        VIRTIO_CONSOLE_CONSOLE_PORT,
                        1,
                        &[],
                    ));
                }
                if let Some(name) = &port.name {
                    let mut data = name.as_bytes().to_vec();
                    data.push(0);
                    self.control_out
                        .push_back(control_msg(id, VIRTIO_CONSOLE_PORT_NAME, 1, &data));
                }
                if port.host_connected {
                    self.control_out
                        .push_back(control_msg(id, VIRTIO_CONSOLE_PORT_OPEN, 1, &[]));
                }
            }
            VIRTIO_CONSOLE_PORT_OPEN => {
                let Some(port) = self.ports.get_mut(&id) else {
                    log::debug!("virtio-serial: PORT_OPEN for unknown port {id}");
                    return Ok(());
                };
                let open = value != 0;
                port.guest_connected = open;
                self.events.port_open_changed(id, open);
                if open {
                    self.flush_input(id)?;
                }
            }
            other => log::debug!("virtio-serial: ignored control event {other} for port {id}"),
        }
        Ok(())
    }
}
