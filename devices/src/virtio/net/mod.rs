//! virtio-net (device type 1) over a `net::NetBackend` (a tap in the machine, a fake in
//! tests). Owns the guest-visible NIC: features and config space, the receive queue fed
//! from the backend (one frame spread over several buffers with MRG_RXBUF), the transmit
//! queue drained to the backend, the control queue with the receive filter it programs,
//! and the link state.
//!
//! Receive is driven by the backend's fd, which the machine must watch edge-triggered
//! (EPOLLIN | EPOLLET): the device reads until the backend is empty or the guest has no
//! buffer left, keeps the frame that did not fit, and resumes when the guest refills
//! the receive queue (`process_queue(RX_QUEUE)`).
//!
//! The receive filter, its QMP view (`query-rx-filter`) and the NIC_RX_FILTER_CHANGED
//! gating (one event, then none until the filter is queried again) follow QEMU's
//! `hw/net/virtio-net.c`.
//!
//! One file per path through the device, as Firecracker keeps device logic apart from
//! its event handling:
//! - `rx`: backend -> receive queue (frame delivery, MRG_RXBUF, the pending frame);
//! - `tx`: transmit queue -> backend;
//! - `ctrl`: the control queue and the commands that program the filter and offloads;
//! - `filter`: the receive filter itself and its QMP view (`query-rx-filter`);
//! - `config`: feature bits, guest offloads and the config space.
//!
//! Dependencies run one way: `config` uses no sibling; `filter` uses `config`; `rx`
//! uses `config` (and calls into `filter` through the device state); `ctrl` uses
//! `filter` and `config`; `tx` uses none. This file holds the shared state
//! ([`VirtioNet`], `Active`) and the [`VirtioDevice`] impl that
//! dispatches into the paths. No locks: the device is driven through `&mut self`.

mod config;
mod ctrl;
mod filter;
mod rx;
mod tx;

#[cfg(test)]
pub(crate) mod testutil;

pub use config::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_GUEST_OFFLOADS, VIRTIO_NET_F_CTRL_MAC_ADDR,
    VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_RX_EXTRA, VIRTIO_NET_F_CTRL_VLAN, VIRTIO_NET_F_CTRL_VQ,
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_GUEST_USO4,
    VIRTIO_NET_F_GUEST_USO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_HOST_USO, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_STATUS,
};

pub use filter::{format_mac, RxFilterInfo, RxState, MAC_TABLE_ENTRIES};

use config::{guest_offloads, GUEST_OFFLOAD_FEATURES};
use filter::{RxFilter, MAX_VLAN};

use std::os::fd::RawFd;
use std::sync::Arc;

use crate::GuestMemoryMmap;
use net::{NetBackend, Offloads, MAX_FRAME_LEN, VNET_HDR_LEN, VNET_HDR_LEN_LEGACY};
use virtio_queue::Queue;

use super::{
    state_kind, ActivateError, DeviceError, VirtioDevice, VirtioDeviceState, VirtioInterrupt,
    TYPE_NET, VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};

/// Config space `status` bits.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// Queue indices.
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const CTRL_QUEUE: usize = 2;
pub const QUEUE_SIZE: u16 = 256;

/// The token `event_fds` gives the backend's fd.
pub const BACKEND_TOKEN: u32 = 0;

/// What the NIC tells the machine.
pub trait NetEvents: Send + Sync {
    /// The guest changed the receive filter (rx mode, MAC table, MAC address, VLANs).
    /// Called once, then not again until `VirtioNet::rx_filter` has been called: the
    /// machine emits NIC_RX_FILTER_CHANGED for it.
    fn rx_filter_changed(&self);
}

/// How the machine configures the NIC.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// The NIC's name in QMP (`id=` of the device; QEMU's netclient name).
    pub name: String,
    /// The guest's MAC address (`mac=`).
    pub mac: [u8; 6],
}

/// The guest-visible state of a virtio-net device, for migration: the negotiated
/// features, the receive filter the driver programmed through the control queue, the
/// guest offloads it set, and the link state. A frame read from the backend but not
/// yet delivered is not in it (the destination's backend is its own).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetState {
    pub acked_features: u64,
    /// The guest's current MAC (MAC_ADDR_SET), shown in the config space.
    pub mac: [u8; 6],
    pub link_up: bool,
    /// Guest receive offloads in force (feature bits; CTRL_GUEST_OFFLOADS_SET).
    pub guest_offloads: u64,
    pub promisc: bool,
    pub allmulti: bool,
    pub alluni: bool,
    pub nomulti: bool,
    pub nouni: bool,
    pub nobcast: bool,
    pub unicast: Vec<[u8; 6]>,
    pub multicast: Vec<[u8; 6]>,
    pub uni_overflow: bool,
    pub multi_overflow: bool,
    /// One bit per VLAN id, 4096 bits.
    pub vlans: Vec<u32>,
}

struct Active {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    queues: Vec<Queue>,
}

use super::queue_util::read_config_bytes;

/// The virtio-net device model.
pub struct VirtioNet {
    name: String,
    /// The MAC from the command line; the filter's MAC is the guest's current one.
    config_mac: [u8; 6],
    backend: Box<dyn NetBackend>,
    events: Arc<dyn NetEvents>,
    avail_features: u64,
    acked_features: u64,
    /// Guest receive offloads in force: the acked ones, then what the driver set.
    offloads: u64,
    link_up: bool,
    filter: RxFilter,
    /// QEMU's rxfilter_notify_enabled.
    notify_enabled: bool,
    hdr_len: usize,
    rx_buf: Vec<u8>,
    /// Length of the frame in `rx_buf` that the guest had no room for yet.
    rx_pending: Option<usize>,
    tx_buf: Vec<u8>,
    active: Option<Active>,
}

impl VirtioNet {
    /// A NIC on `backend`, link up, offering the offloads the backend supports.
    pub fn new(
        backend: Box<dyn NetBackend>,
        config: NetConfig,
        events: Arc<dyn NetEvents>,
    ) -> Self {
        let s = backend.supported_offloads();
        let mut f = VIRTIO_F_VERSION_1
            | VIRTIO_F_RING_INDIRECT_DESC
            | VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_STATUS
            | VIRTIO_NET_F_MRG_RXBUF
            | VIRTIO_NET_F_CTRL_VQ
            | VIRTIO_NET_F_CTRL_RX
            | VIRTIO_NET_F_CTRL_RX_EXTRA
            | VIRTIO_NET_F_CTRL_VLAN
            | VIRTIO_NET_F_CTRL_MAC_ADDR;
        // Transmit offloads need only a header on the backend's side, which checksum
        // offload proves; receive offloads need the backend to produce them.
        if s.csum {
            f |= VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_CTRL_GUEST_OFFLOADS;
            if s.tso4 {
                f |= VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_GUEST_TSO4;
            }
            if s.tso6 {
                f |= VIRTIO_NET_F_HOST_TSO6 | VIRTIO_NET_F_GUEST_TSO6;
            }
            if s.ecn && (s.tso4 || s.tso6) {
                f |= VIRTIO_NET_F_HOST_ECN | VIRTIO_NET_F_GUEST_ECN;
            }
            if s.ufo {
                f |= VIRTIO_NET_F_HOST_UFO | VIRTIO_NET_F_GUEST_UFO;
            }
            if s.uso4 && s.uso6 {
                f |= VIRTIO_NET_F_HOST_USO | VIRTIO_NET_F_GUEST_USO4 | VIRTIO_NET_F_GUEST_USO6;
            }
        }
        VirtioNet {
            name: config.name,
            config_mac: config.mac,
            backend,
            events,
            avail_features: f,
            acked_features: 0,
            offloads: 0,
            link_up: true,
            filter: RxFilter::new(config.mac),
            notify_enabled: true,
            hdr_len: VNET_HDR_LEN,
            rx_buf: vec![0; MAX_FRAME_LEN],
            rx_pending: None,
            tx_buf: vec![0; MAX_FRAME_LEN],
            active: None,
        }
    }

    /// The guest's current MAC address (changed by MAC_ADDR_SET, restored on reset).
    pub fn mac(&self) -> [u8; 6] {
        self.filter.mac
    }

    /// Sends one self-announcement for the guest's MAC out of the backend, as QEMU's
    /// `qemu_announce_self` does after a migration: a broadcast RARP frame from the
    /// MAC, so switches learn the guest's new port. Nothing when the link is down.
    pub fn announce(&mut self) -> std::io::Result<()> {
        if !self.link_up {
            return Ok(());
        }
        let mut frame = vec![0u8; self.hdr_len];
        frame.extend_from_slice(&rarp_announcement(self.filter.mac));
        self.backend.send(&frame)
    }

    pub fn link_up(&self) -> bool {
        self.link_up
    }

    /// The state to migrate (see [`NetState`]).
    pub fn state(&self) -> NetState {
        let f = &self.filter;
        NetState {
            acked_features: self.acked_features,
            mac: f.mac,
            link_up: self.link_up,
            guest_offloads: self.offloads,
            promisc: f.promisc,
            allmulti: f.allmulti,
            alluni: f.alluni,
            nomulti: f.nomulti,
            nouni: f.nouni,
            nobcast: f.nobcast,
            unicast: f.unicast.clone(),
            multicast: f.multicast.clone(),
            uni_overflow: f.uni_overflow,
            multi_overflow: f.multi_overflow,
            vlans: f.vlans.clone(),
        }
    }

    /// Loads saved state into a device that is not active yet; the backend gets the
    /// offloads when the transport activates the device.
    pub fn restore(&mut self, s: &NetState) -> Result<(), String> {
        let bad = |why: String| Err(format!("invalid virtio-net state: {why}"));
        if self.active.is_some() {
            return bad("restore into a device the driver already started".into());
        }
        let extra = s.acked_features & !self.avail_features;
        if extra != 0 {
            return bad(format!(
                "acked features {extra:#x} are not offered by this device"
            ));
        }
        let extra = s.guest_offloads & !(s.acked_features & GUEST_OFFLOAD_FEATURES);
        if extra != 0 {
            return bad(format!("guest offloads {extra:#x} were not negotiated"));
        }
        if s.unicast.len() + s.multicast.len() > MAC_TABLE_ENTRIES {
            return bad(format!(
                "{} MAC table entries; the table holds {MAC_TABLE_ENTRIES}",
                s.unicast.len() + s.multicast.len()
            ));
        }
        if s.vlans.len() != MAX_VLAN / 32 {
            return bad(format!(
                "VLAN table of {} words; expected {}",
                s.vlans.len(),
                MAX_VLAN / 32
            ));
        }
        self.acked_features = s.acked_features;
        self.offloads = s.guest_offloads;
        self.link_up = s.link_up;
        self.filter = RxFilter {
            mac: s.mac,
            promisc: s.promisc,
            allmulti: s.allmulti,
            alluni: s.alluni,
            nomulti: s.nomulti,
            nouni: s.nouni,
            nobcast: s.nobcast,
            unicast: s.unicast.clone(),
            multicast: s.multicast.clone(),
            uni_overflow: s.uni_overflow,
            multi_overflow: s.multi_overflow,
            vlans: s.vlans.clone(),
        };
        Ok(())
    }

    /// QMP `set_link`: the status field follows, the driver gets a config interrupt, and
    /// while down, transmitted frames are dropped and received ones discarded.
    pub fn set_link(&mut self, up: bool) -> Result<(), DeviceError> {
        if up == self.link_up {
            return Ok(());
        }
        self.link_up = up;
        if !up {
            self.rx_pending = None;
        }
        if let Some(a) = &self.active {
            a.interrupt
                .trigger_config()
                .map_err(|e| DeviceError::Backend(format!("cannot interrupt the guest: {e}")))?;
        }
        if up {
            self.process_rx()
        } else {
            self.process_tx()
        }
    }
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
        self.offloads = self.acked_features & GUEST_OFFLOAD_FEATURES;
        // Without VLAN filtering every VLAN passes; with it, none until the guest adds it.
        let fill = if self.has(VIRTIO_NET_F_CTRL_VLAN) {
            0
        } else {
            u32::MAX
        };
        self.filter.vlans.fill(fill);
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The MAC is read-only for a VERSION_1 driver; it changes it with MAC_ADDR_SET.
        log::debug!(
            "{}: ignored a {}-byte config write at {offset}",
            self.name,
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        let want = if self.has(VIRTIO_NET_F_CTRL_VQ) { 3 } else { 2 };
        if queues.len() < want {
            return Err(ActivateError::QueueCount {
                got: queues.len(),
                want,
            });
        }
        self.hdr_len = if self.has(VIRTIO_F_VERSION_1) || self.has(VIRTIO_NET_F_MRG_RXBUF) {
            VNET_HDR_LEN
        } else {
            VNET_HDR_LEN_LEGACY
        };
        self.backend
            .set_vnet_hdr_len(self.hdr_len)
            .map_err(|e| ActivateError::Failed(format!("{}: {e}", self.name)))?;
        self.backend
            .set_offloads(guest_offloads(self.offloads))
            .map_err(|e| ActivateError::Failed(format!("{}: setting offloads: {e}", self.name)))?;
        self.rx_pending = None;
        self.active = Some(Active {
            mem,
            interrupt,
            queues,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        self.offloads = 0;
        self.rx_pending = None;
        self.filter = RxFilter::new(self.config_mac);
        if let Err(e) = self.backend.set_offloads(Offloads::NONE) {
            log::warn!("{}: cannot clear offloads on reset: {e}", self.name);
        }
    }

    fn process_queue(&mut self, index: usize) -> Result<(), DeviceError> {
        match index {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => self.process_tx(),
            CTRL_QUEUE => self.process_ctrl(),
            _ => Ok(()),
        }
    }

    fn event_fds(&self) -> Vec<(RawFd, u32)> {
        self.backend
            .raw_fd()
            .map(|fd| vec![(fd, BACKEND_TOKEN)])
            .unwrap_or_default()
    }

    fn process_event(&mut self, token: u32) -> Result<(), DeviceError> {
        if token == BACKEND_TOKEN {
            self.process_rx()
        } else {
            Ok(())
        }
    }

    fn active_queues(&self) -> &[Queue] {
        self.active.as_ref().map_or(&[], |a| &a.queues)
    }

    fn save_state(&self) -> Result<VirtioDeviceState, String> {
        Ok(VirtioDeviceState::Net(self.state()))
    }

    fn restore_state(&mut self, state: &VirtioDeviceState) -> Result<(), String> {
        match state {
            VirtioDeviceState::Net(s) => self.restore(s),
            other => Err(format!("{} state for a virtio-net", state_kind(other))),
        }
    }
}

#[cfg(test)]
mod tests;

/// QEMU's announcement frame (`announce_self_create`): Ethernet broadcast from `mac`,
/// a RARP "reverse request" naming `mac` as sender and target, padded to 60 bytes.
pub fn rarp_announcement(mac: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&0x8035u16.to_be_bytes()); // RARP
    f.extend_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f.extend_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f.extend_from_slice(&[6, 4]);
    f.extend_from_slice(&3u16.to_be_bytes()); // reverse request
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0; 4]);
    f.resize(60, 0);
    f
}
