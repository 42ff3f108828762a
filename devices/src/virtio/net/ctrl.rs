//! The control queue (virtio 1.2, 5.1.6.5): reads each command, applies it to the
//! receive filter, the MAC tables, the VLAN table or the guest offloads, and writes
//! the ack byte.
//!
//! Invariant: a command that fails validation changes nothing and answers NET_ERR; a
//! malformed chain fails that command only.

use std::io::{Read, Write};

use virtio_queue::{QueueT, Reader, Writer};

use super::config::{guest_offloads, GUEST_OFFLOAD_FEATURES, VIRTIO_NET_F_CTRL_GUEST_OFFLOADS};
use super::filter::{MAC_TABLE_ENTRIES, MAX_VLAN};
use super::{Active, VirtioNet, CTRL_QUEUE};
use crate::virtio::queue_util::{pop, queue_err, signal};
use crate::virtio::DeviceError;

// Control queue classes and commands (virtio 1.2, 5.1.6.5).
pub(super) const CTRL_RX: u8 = 0;
pub(super) const CTRL_RX_PROMISC: u8 = 0;
pub(super) const CTRL_RX_ALLMULTI: u8 = 1;
pub(super) const CTRL_RX_ALLUNI: u8 = 2;
pub(super) const CTRL_RX_NOMULTI: u8 = 3;
pub(super) const CTRL_RX_NOUNI: u8 = 4;
pub(super) const CTRL_RX_NOBCAST: u8 = 5;
pub(super) const CTRL_MAC: u8 = 1;
pub(super) const CTRL_MAC_TABLE_SET: u8 = 0;
pub(super) const CTRL_MAC_ADDR_SET: u8 = 1;
pub(super) const CTRL_VLAN: u8 = 2;
pub(super) const CTRL_VLAN_ADD: u8 = 0;
pub(super) const CTRL_VLAN_DEL: u8 = 1;
pub(super) const CTRL_GUEST_OFFLOADS: u8 = 5;
pub(super) const CTRL_GUEST_OFFLOADS_SET: u8 = 0;
pub(super) const NET_OK: u8 = 0;
pub(super) const NET_ERR: u8 = 1;

/// The most command data the control queue reads (a full MAC table is under 500 bytes).
pub(super) const MAX_CTRL_DATA: usize = 4096;

impl VirtioNet {
    pub(super) fn process_ctrl(&mut self) -> Result<(), DeviceError> {
        let Some(mut active) = self.active.take() else {
            return Ok(());
        };
        let r = self.ctrl_loop(&mut active);
        self.active = Some(active);
        r
    }

    fn ctrl_loop(&mut self, active: &mut Active) -> Result<(), DeviceError> {
        let Active {
            mem,
            interrupt,
            queues,
        } = active;
        let Some(q) = queues.get_mut(CTRL_QUEUE) else {
            return Ok(());
        };
        let mut used = false;
        while let Some(chain) = pop(q, mem)? {
            used = true;
            let head = chain.head_index();
            let len = match (Reader::new(mem, chain.clone()), Writer::new(mem, chain)) {
                (Ok(mut r), Ok(mut w)) if r.available_bytes() >= 2 && w.available_bytes() >= 1 => {
                    let mut hdr = [0u8; 2];
                    let n = r.available_bytes() - 2;
                    let ack = if r.read_exact(&mut hdr).is_err() || n > MAX_CTRL_DATA {
                        NET_ERR
                    } else {
                        let mut data = vec![0u8; n];
                        match r.read_exact(&mut data) {
                            Ok(()) => self.ctrl_command(hdr[0], hdr[1], &data),
                            Err(_) => NET_ERR,
                        }
                    };
                    match w.write_all(&[ack]) {
                        Ok(()) => 1,
                        Err(_) => 0,
                    }
                }
                _ => {
                    log::debug!("{}: malformed control request", self.name);
                    0
                }
            };
            q.add_used(mem, head, len).map_err(queue_err)?;
        }
        if used {
            signal(q, mem, interrupt.as_ref(), CTRL_QUEUE)?;
        }
        Ok(())
    }

    /// Runs one control command, returning the ack byte.
    fn ctrl_command(&mut self, class: u8, cmd: u8, data: &[u8]) -> u8 {
        let ok = match class {
            CTRL_RX => self.ctrl_rx(cmd, data),
            CTRL_MAC => self.ctrl_mac(cmd, data),
            CTRL_VLAN => self.ctrl_vlan(cmd, data),
            CTRL_GUEST_OFFLOADS => self.ctrl_offloads(cmd, data),
            _ => false,
        };
        if ok {
            NET_OK
        } else {
            NET_ERR
        }
    }

    fn ctrl_rx(&mut self, cmd: u8, data: &[u8]) -> bool {
        let Some(&on) = data.first() else {
            return false;
        };
        let on = on != 0;
        let f = &mut self.filter;
        match cmd {
            CTRL_RX_PROMISC => f.promisc = on,
            CTRL_RX_ALLMULTI => f.allmulti = on,
            CTRL_RX_ALLUNI => f.alluni = on,
            CTRL_RX_NOMULTI => f.nomulti = on,
            CTRL_RX_NOUNI => f.nouni = on,
            CTRL_RX_NOBCAST => f.nobcast = on,
            _ => return false,
        }
        self.filter_changed();
        true
    }

    fn ctrl_mac(&mut self, cmd: u8, data: &[u8]) -> bool {
        match cmd {
            CTRL_MAC_ADDR_SET => {
                let Ok(mac) = <[u8; 6]>::try_from(data) else {
                    return false;
                };
                self.filter.mac = mac;
                self.filter_changed();
                true
            }
            CTRL_MAC_TABLE_SET => {
                let Some(t) = parse_mac_table(data) else {
                    return false;
                };
                let f = &mut self.filter;
                f.unicast = t.unicast;
                f.multicast = t.multicast;
                f.uni_overflow = t.uni_overflow;
                f.multi_overflow = t.multi_overflow;
                self.filter_changed();
                true
            }
            _ => false,
        }
    }

    fn ctrl_vlan(&mut self, cmd: u8, data: &[u8]) -> bool {
        let Ok(vid) = <[u8; 2]>::try_from(data) else {
            return false;
        };
        let vid = usize::from(u16::from_le_bytes(vid));
        if vid >= MAX_VLAN {
            return false;
        }
        let (word, bit) = (vid / 32, 1u32 << (vid % 32));
        match cmd {
            CTRL_VLAN_ADD => self.filter.vlans[word] |= bit,
            CTRL_VLAN_DEL => self.filter.vlans[word] &= !bit,
            _ => return false,
        }
        self.filter_changed();
        true
    }

    fn ctrl_offloads(&mut self, cmd: u8, data: &[u8]) -> bool {
        if cmd != CTRL_GUEST_OFFLOADS_SET || !self.has(VIRTIO_NET_F_CTRL_GUEST_OFFLOADS) {
            return false;
        }
        let Ok(bits) = <[u8; 8]>::try_from(data) else {
            return false;
        };
        let bits = u64::from_le_bytes(bits);
        let allowed = self.acked_features & GUEST_OFFLOAD_FEATURES;
        if bits & !allowed != 0 {
            return false;
        }
        match self.backend.set_offloads(guest_offloads(bits)) {
            Ok(()) => {
                self.offloads = bits;
                true
            }
            Err(e) => {
                log::warn!("{}: cannot change offloads: {e}", self.name);
                false
            }
        }
    }
}

struct MacTable {
    unicast: Vec<[u8; 6]>,
    multicast: Vec<[u8; 6]>,
    uni_overflow: bool,
    multi_overflow: bool,
}

/// Two `virtio_net_ctrl_mac` lists (le32 count, then 6-byte addresses): unicast, then
/// multicast, which must end the data exactly. Lists past the table's room set the
/// overflow flag instead of being stored, as in QEMU.
fn parse_mac_table(data: &[u8]) -> Option<MacTable> {
    fn list(data: &[u8]) -> Option<(Vec<[u8; 6]>, &[u8])> {
        let count = u32::from_le_bytes(data.get(..4)?.try_into().ok()?) as usize;
        let bytes = count.checked_mul(6)?;
        let macs = data.get(4..4usize.checked_add(bytes)?)?;
        let list = macs
            .chunks_exact(6)
            .filter_map(|c| <[u8; 6]>::try_from(c).ok())
            .collect();
        Some((list, &data[4 + bytes..]))
    }
    let (uni, rest) = list(data)?;
    let (multi, rest) = list(rest)?;
    if !rest.is_empty() {
        return None;
    }
    let mut t = MacTable {
        unicast: Vec::new(),
        multicast: Vec::new(),
        uni_overflow: false,
        multi_overflow: false,
    };
    if uni.len() <= MAC_TABLE_ENTRIES {
        t.unicast = uni;
    } else {
        t.uni_overflow = true;
    }
    if t.unicast.len() + multi.len() <= MAC_TABLE_ENTRIES {
        t.multicast = multi;
    } else {
        t.multi_overflow = true;
    }
    Some(t)
}
