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

use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::sync::Arc;

use net::{NetBackend, Offloads, MAX_FRAME_LEN, VNET_HDR_LEN, VNET_HDR_LEN_LEGACY};
use virtio_queue::{Queue, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use super::{
    ActivateError, DeviceError, VirtioDevice, VirtioInterrupt, TYPE_NET,
    VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};

/// Feature bits (virtio 1.2, 5.1.3).
pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
pub const VIRTIO_NET_F_CTRL_GUEST_OFFLOADS: u64 = 1 << 2;
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
pub const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
pub const VIRTIO_NET_F_GUEST_ECN: u64 = 1 << 9;
pub const VIRTIO_NET_F_GUEST_UFO: u64 = 1 << 10;
pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
pub const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
pub const VIRTIO_NET_F_HOST_ECN: u64 = 1 << 13;
pub const VIRTIO_NET_F_HOST_UFO: u64 = 1 << 14;
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
pub const VIRTIO_NET_F_CTRL_VQ: u64 = 1 << 17;
pub const VIRTIO_NET_F_CTRL_RX: u64 = 1 << 18;
pub const VIRTIO_NET_F_CTRL_VLAN: u64 = 1 << 19;
pub const VIRTIO_NET_F_CTRL_RX_EXTRA: u64 = 1 << 20;
pub const VIRTIO_NET_F_CTRL_MAC_ADDR: u64 = 1 << 23;
pub const VIRTIO_NET_F_GUEST_USO4: u64 = 1 << 54;
pub const VIRTIO_NET_F_GUEST_USO6: u64 = 1 << 55;
pub const VIRTIO_NET_F_HOST_USO: u64 = 1 << 56;

/// Config space `status` bits.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// Queue indices.
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const CTRL_QUEUE: usize = 2;
pub const QUEUE_SIZE: u16 = 256;

/// The token `event_fds` gives the backend's fd.
pub const BACKEND_TOKEN: u32 = 0;

/// QEMU's MAC_TABLE_ENTRIES: unicast and multicast entries together.
pub const MAC_TABLE_ENTRIES: usize = 64;
const MAX_VLAN: usize = 4096;

// Control queue classes and commands (virtio 1.2, 5.1.6.5).
const CTRL_RX: u8 = 0;
const CTRL_RX_PROMISC: u8 = 0;
const CTRL_RX_ALLMULTI: u8 = 1;
const CTRL_RX_ALLUNI: u8 = 2;
const CTRL_RX_NOMULTI: u8 = 3;
const CTRL_RX_NOUNI: u8 = 4;
const CTRL_RX_NOBCAST: u8 = 5;
const CTRL_MAC: u8 = 1;
const CTRL_MAC_TABLE_SET: u8 = 0;
const CTRL_MAC_ADDR_SET: u8 = 1;
const CTRL_VLAN: u8 = 2;
const CTRL_VLAN_ADD: u8 = 0;
const CTRL_VLAN_DEL: u8 = 1;
const CTRL_GUEST_OFFLOADS: u8 = 5;
const CTRL_GUEST_OFFLOADS_SET: u8 = 0;
const NET_OK: u8 = 0;
const NET_ERR: u8 = 1;

/// The most command data the control queue reads (a full MAC table is under 500 bytes).
const MAX_CTRL_DATA: usize = 4096;

/// What the NIC tells the machine.
pub trait NetEvents: Send + Sync {
    /// The guest changed the receive filter (rx mode, MAC table, MAC address, VLANs).
    /// Called once, then not again until `VirtioNet::rx_filter` has been called: the
    /// machine emits NIC_RX_FILTER_CHANGED for it.
    fn rx_filter_changed(&self);
}

/// A receive-filter mode, as QAPI's `RxState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RxState {
    Normal,
    None,
    All,
}

/// The reply to QMP `query-rx-filter` for this NIC (QAPI `RxFilterInfo`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RxFilterInfo {
    pub name: String,
    pub promiscuous: bool,
    pub multicast: RxState,
    pub unicast: RxState,
    pub vlan: RxState,
    pub broadcast_allowed: bool,
    pub multicast_overflow: bool,
    pub unicast_overflow: bool,
    pub main_mac: String,
    pub vlan_table: Vec<u16>,
    pub unicast_table: Vec<String>,
    pub multicast_table: Vec<String>,
}

/// How the machine configures the NIC.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// The NIC's name in QMP (`id=` of the device; QEMU's netclient name).
    pub name: String,
    /// The guest's MAC address (`mac=`).
    pub mac: [u8; 6],
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// The receive filter the guest programs through the control queue.
#[derive(Clone, Debug)]
struct RxFilter {
    mac: [u8; 6],
    promisc: bool,
    allmulti: bool,
    alluni: bool,
    nomulti: bool,
    nouni: bool,
    nobcast: bool,
    unicast: Vec<[u8; 6]>,
    multicast: Vec<[u8; 6]>,
    uni_overflow: bool,
    multi_overflow: bool,
    /// One bit per VLAN id; all set when the guest has no VLAN filtering.
    vlans: Vec<u32>,
}

impl RxFilter {
    fn new(mac: [u8; 6]) -> Self {
        RxFilter {
            mac,
            // QEMU starts promiscuous: a driver without CTRL_RX must see everything.
            promisc: true,
            allmulti: false,
            alluni: false,
            nomulti: false,
            nouni: false,
            nobcast: false,
            unicast: Vec::new(),
            multicast: Vec::new(),
            uni_overflow: false,
            multi_overflow: false,
            vlans: vec![u32::MAX; MAX_VLAN / 32],
        }
    }

    fn vlan_allowed(&self, vid: usize) -> bool {
        self.vlans
            .get(vid / 32)
            .is_some_and(|w| w & (1 << (vid % 32)) != 0)
    }

    /// Whether a frame (Ethernet header first) passes, as QEMU's receive_filter.
    fn accepts(&self, frame: &[u8]) -> bool {
        if self.promisc {
            return true;
        }
        if frame.len() < 14 {
            return false;
        }
        if frame[12..14] == [0x81, 0x00] && frame.len() >= 16 {
            let vid = (usize::from(frame[14]) << 8 | usize::from(frame[15])) & 0xfff;
            if !self.vlan_allowed(vid) {
                return false;
            }
        }
        let mut dst = [0u8; 6];
        dst.copy_from_slice(&frame[..6]);
        if dst[0] & 1 != 0 {
            if dst == [0xff; 6] {
                return !self.nobcast;
            }
            if self.nomulti {
                return false;
            }
            if self.allmulti || self.multi_overflow {
                return true;
            }
            self.multicast.contains(&dst)
        } else {
            if self.nouni {
                return false;
            }
            if self.alluni || self.uni_overflow || dst == self.mac {
                return true;
            }
            self.unicast.contains(&dst)
        }
    }
}

fn mode(none: bool, all: bool) -> RxState {
    if none {
        RxState::None
    } else if all {
        RxState::All
    } else {
        RxState::Normal
    }
}

/// Guest receive offloads a feature set asks for.
fn guest_offloads(features: u64) -> Offloads {
    Offloads {
        csum: features & VIRTIO_NET_F_GUEST_CSUM != 0,
        tso4: features & VIRTIO_NET_F_GUEST_TSO4 != 0,
        tso6: features & VIRTIO_NET_F_GUEST_TSO6 != 0,
        ecn: features & VIRTIO_NET_F_GUEST_ECN != 0,
        ufo: features & VIRTIO_NET_F_GUEST_UFO != 0,
        uso4: features & VIRTIO_NET_F_GUEST_USO4 != 0,
        uso6: features & VIRTIO_NET_F_GUEST_USO6 != 0,
    }
    .consistent()
}

const GUEST_OFFLOAD_FEATURES: u64 = VIRTIO_NET_F_GUEST_CSUM
    | VIRTIO_NET_F_GUEST_TSO4
    | VIRTIO_NET_F_GUEST_TSO6
    | VIRTIO_NET_F_GUEST_ECN
    | VIRTIO_NET_F_GUEST_UFO
    | VIRTIO_NET_F_GUEST_USO4
    | VIRTIO_NET_F_GUEST_USO6;

struct Active {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    queues: Vec<Queue>,
}

use super::queue_util::{pop, queue_err, read_config_bytes, signal};

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

/// The virtio-net device model.
pub struct VirtioNet {
    name: String,
    /// The MAC from the command line; the filter's MAC is the guest's current one.
    config_mac: [u8; 6],
    backend: Box<dyn NetBackend>,
    events: Arc<dyn NetEvents>,
    avail_features: u64,
    acked_features: u64,
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

    pub fn link_up(&self) -> bool {
        self.link_up
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

    /// The receive filter for QMP `query-rx-filter`. Re-arms the NIC_RX_FILTER_CHANGED
    /// notification, as QEMU does.
    pub fn rx_filter(&mut self) -> RxFilterInfo {
        self.notify_enabled = true;
        let f = &self.filter;
        let vlan_filtering = self.acked_features & VIRTIO_NET_F_CTRL_VLAN != 0;
        let vlan_table: Vec<u16> = if vlan_filtering {
            (0..MAX_VLAN)
                .filter(|&v| f.vlan_allowed(v))
                .map(|v| v as u16)
                .collect()
        } else {
            Vec::new()
        };
        let vlan = if !vlan_filtering {
            RxState::All
        } else if vlan_table.is_empty() {
            RxState::None
        } else {
            RxState::Normal
        };
        RxFilterInfo {
            name: self.name.clone(),
            promiscuous: f.promisc,
            multicast: mode(f.nomulti, f.allmulti),
            unicast: mode(f.nouni, f.alluni),
            vlan,
            broadcast_allowed: !f.nobcast,
            multicast_overflow: f.multi_overflow,
            unicast_overflow: f.uni_overflow,
            main_mac: format_mac(&f.mac),
            vlan_table,
            unicast_table: f.unicast.iter().map(format_mac).collect(),
            multicast_table: f.multicast.iter().map(format_mac).collect(),
        }
    }

    fn filter_changed(&mut self) {
        if self.notify_enabled {
            self.notify_enabled = false;
            self.events.rx_filter_changed();
        }
    }

    fn has(&self, feature: u64) -> bool {
        self.acked_features & feature != 0
    }

    fn config_bytes(&self) -> [u8; 10] {
        let mut c = [0u8; 10];
        c[..6].copy_from_slice(&self.filter.mac);
        let status = if self.link_up {
            VIRTIO_NET_S_LINK_UP
        } else {
            0
        };
        c[6..8].copy_from_slice(&status.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c
    }

    /// Moves frames from the backend to the guest until one side runs dry.
    fn process_rx(&mut self) -> Result<(), DeviceError> {
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

    /// Sends every frame the guest queued (or drops them while the link is down).
    fn process_tx(&mut self) -> Result<(), DeviceError> {
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

    fn process_ctrl(&mut self) -> Result<(), DeviceError> {
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
            Ok(()) => true,
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
    let mut writers: Vec<(u16, Writer<'_>)> = Vec::new();
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
            .set_offloads(guest_offloads(self.acked_features))
            .map_err(|e| ActivateError::Failed(format!("{}: setting offloads: {e}", self.name)))?;
        // Without VLAN filtering every VLAN passes; with it, none until the guest adds it.
        let fill = if self.has(VIRTIO_NET_F_CTRL_VLAN) {
            0
        } else {
            u32::MAX
        };
        self.filter.vlans.fill(fill);
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
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Driver-side helpers shared by the virtio device tests.
    use std::io;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use crate::virtio::VirtioInterrupt;

    pub const F_NEXT: u16 = 1;
    pub const F_WRITE: u16 = 2;
    pub const VQ_SIZE: u16 = 64;

    #[derive(Default)]
    pub struct Irq {
        pub queues: Mutex<Vec<u16>>,
        pub config: AtomicUsize,
    }

    impl VirtioInterrupt for Irq {
        fn trigger_queue(&self, queue: u16) -> io::Result<()> {
            self.queues.lock().unwrap().push(queue);
            Ok(())
        }
        fn trigger_config(&self) -> io::Result<()> {
            self.config.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    /// A driver-side queue: chains are written at increasing descriptor indices.
    pub struct Vq<'a> {
        pub mock: MockSplitQueue<'a, GuestMemoryMmap>,
        next: u16,
    }

    impl<'a> Vq<'a> {
        pub fn new(mem: &'a GuestMemoryMmap, at: u64) -> Self {
            Vq {
                mock: MockSplitQueue::create(mem, GuestAddress(at), VQ_SIZE),
                next: 0,
            }
        }

        /// Offers a chain of (address, length, device-writable) buffers.
        pub fn add(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
            let start = self.next;
            let descs: Vec<RawDescriptor> = bufs
                .iter()
                .enumerate()
                .map(|(i, &(addr, len, w))| {
                    let mut flags = if w { F_WRITE } else { 0 };
                    if i + 1 < bufs.len() {
                        flags |= F_NEXT;
                    }
                    SplitDescriptor::new(addr, len, flags, start + i as u16 + 1).into()
                })
                .collect();
            self.mock.add_desc_chains(&descs, start).unwrap();
            self.next += bufs.len() as u16;
            start
        }

        /// (head, len) of every used entry so far.
        pub fn used(&self) -> Vec<(u16, u32)> {
            let n = self.mock.used().idx().load();
            (0..n)
                .map(|i| {
                    let e = self.mock.used().ring().ref_at(i as usize).unwrap().load();
                    (e.id() as u16, e.len())
                })
                .collect()
        }

        pub fn queue(&self) -> Queue {
            self.mock.create_queue().unwrap()
        }
    }

    pub fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
    }

    pub fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::{memory, read, Irq, Vq};
    use super::*;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use vm_memory::{Bytes, GuestAddress};

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    #[derive(Default)]
    struct FakeState {
        to_guest: VecDeque<Vec<u8>>,
        sent: Vec<Vec<u8>>,
        offloads: Vec<Offloads>,
        hdr_len: usize,
    }

    struct FakeBackend {
        state: Arc<Mutex<FakeState>>,
        supported: Offloads,
    }

    impl NetBackend for FakeBackend {
        fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.state.lock().unwrap().to_guest.pop_front() {
                Some(f) => {
                    buf[..f.len()].copy_from_slice(&f);
                    Ok(f.len())
                }
                None => Err(io::ErrorKind::WouldBlock.into()),
            }
        }
        fn send(&mut self, frame: &[u8]) -> io::Result<()> {
            self.state.lock().unwrap().sent.push(frame.to_vec());
            Ok(())
        }
        fn set_vnet_hdr_len(&mut self, len: usize) -> io::Result<()> {
            self.state.lock().unwrap().hdr_len = len;
            Ok(())
        }
        fn supported_offloads(&self) -> Offloads {
            self.supported
        }
        fn set_offloads(&mut self, o: Offloads) -> io::Result<()> {
            self.state.lock().unwrap().offloads.push(o);
            Ok(())
        }
        fn raw_fd(&self) -> Option<RawFd> {
            Some(42)
        }
    }

    #[derive(Default)]
    struct Events(AtomicUsize);

    impl NetEvents for Events {
        fn rx_filter_changed(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Env {
        state: Arc<Mutex<FakeState>>,
        irq: Arc<Irq>,
        events: Arc<Events>,
    }

    fn device(supported: Offloads) -> (VirtioNet, Env) {
        let state = Arc::new(Mutex::new(FakeState::default()));
        let events = Arc::new(Events::default());
        let dev = VirtioNet::new(
            Box::new(FakeBackend {
                state: state.clone(),
                supported,
            }),
            NetConfig {
                name: "net0".into(),
                mac: MAC,
            },
            events.clone(),
        );
        let env = Env {
            state,
            irq: Arc::new(Irq::default()),
            events,
        };
        (dev, env)
    }

    fn activate(dev: &mut VirtioNet, env: &Env, mem: &GuestMemoryMmap, vqs: &[&Vq], features: u64) {
        dev.ack_features(features);
        let queues = vqs.iter().map(|v| v.queue()).collect();
        dev.activate(mem.clone(), env.irq.clone(), queues).unwrap();
    }

    const BASIC: u64 = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_CTRL_VQ | VIRTIO_NET_F_CTRL_RX;

    fn eth_frame(dst: [u8; 6], len: usize, tag: u8) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
        while f.len() < len {
            f.push((f.len() as u8) ^ tag);
        }
        f
    }

    fn with_hdr(frame: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; VNET_HDR_LEN];
        v[0] = 1; // NEEDS_CSUM: the header passes through untouched
        v.extend_from_slice(frame);
        v
    }

    /// Sends a control command; returns the ack byte (0xee if none was written).
    fn ctrl(
        dev: &mut VirtioNet,
        mem: &GuestMemoryMmap,
        cq: &mut Vq,
        at: u64,
        class: u8,
        cmd: u8,
        data: &[u8],
    ) -> u8 {
        let mut req = vec![class, cmd];
        req.extend_from_slice(data);
        mem.write_slice(&req, GuestAddress(at)).unwrap();
        mem.write_obj(0xeeu8, GuestAddress(at + 0x800)).unwrap();
        cq.add(&[
            (at, 2, false),
            (at + 2, data.len() as u32, false),
            (at + 0x800, 1, true),
        ]);
        dev.process_queue(CTRL_QUEUE).unwrap();
        mem.read_obj(GuestAddress(at + 0x800)).unwrap()
    }

    fn mac_table(uni: &[[u8; 6]], multi: &[[u8; 6]]) -> Vec<u8> {
        let mut d = (uni.len() as u32).to_le_bytes().to_vec();
        uni.iter().for_each(|m| d.extend_from_slice(m));
        d.extend_from_slice(&(multi.len() as u32).to_le_bytes());
        multi.iter().for_each(|m| d.extend_from_slice(m));
        d
    }

    #[test]
    fn features_follow_the_backend_and_config_space_is_mac_status_pairs() {
        let (dev, _) = device(Offloads::NONE);
        let f = dev.features();
        for bit in [
            VIRTIO_F_VERSION_1,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_STATUS,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_NET_F_CTRL_VQ,
            VIRTIO_NET_F_CTRL_RX,
            VIRTIO_NET_F_CTRL_MAC_ADDR,
        ] {
            assert_ne!(f & bit, 0, "{bit:#x}");
        }
        assert_eq!(
            f & (VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_HOST_TSO4),
            0
        );

        let (dev, _) = device(Offloads {
            csum: true,
            tso4: true,
            tso6: true,
            ecn: true,
            ufo: false,
            uso4: true,
            uso6: true,
        });
        let f = dev.features();
        for bit in [
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_USO4,
            VIRTIO_NET_F_HOST_USO,
        ] {
            assert_ne!(f & bit, 0, "{bit:#x}");
        }
        assert_eq!(f & (VIRTIO_NET_F_HOST_UFO | VIRTIO_NET_F_GUEST_UFO), 0);

        assert_eq!(dev.device_type(), TYPE_NET);
        assert_eq!(dev.queue_max_sizes().len(), 3);
        let mut c = [0u8; 10];
        dev.read_config(0, &mut c);
        assert_eq!(&c[..6], &MAC);
        assert_eq!(u16::from_le_bytes([c[6], c[7]]), VIRTIO_NET_S_LINK_UP);
        assert_eq!(u16::from_le_bytes([c[8], c[9]]), 1);
        let mut s = [0xffu8; 4];
        dev.read_config(8, &mut s);
        assert_eq!(s, [1, 0, 0, 0]);
        dev.read_config(u64::MAX, &mut s);
        assert_eq!(s, [0; 4]);
    }

    #[test]
    fn a_transmitted_frame_reaches_the_backend_with_its_header() {
        let mem = memory();
        let (mut dev, env) = device(Offloads::ALL);
        let (rx, mut tx) = (Vq::new(&mem, 0), Vq::new(&mem, 0x1_0000));
        activate(
            &mut dev,
            &env,
            &mem,
            &[&rx, &tx],
            VIRTIO_F_VERSION_1 | VIRTIO_NET_F_CSUM,
        );
        assert_eq!(env.state.lock().unwrap().hdr_len, VNET_HDR_LEN);

        let frame = with_hdr(&eth_frame([0xff; 6], 300, 1));
        mem.write_slice(&frame, GuestAddress(0x10_0000)).unwrap();
        // Header and payload in separate descriptors, as Linux does.
        let head = tx.add(&[
            (0x10_0000, 12, false),
            (0x10_000c, frame.len() as u32 - 12, false),
        ]);
        dev.process_queue(TX_QUEUE).unwrap();
        assert_eq!(env.state.lock().unwrap().sent, vec![frame]);
        assert_eq!(tx.used(), vec![(head, 0)]);
        assert_eq!(*env.irq.queues.lock().unwrap(), vec![TX_QUEUE as u16]);
    }

    #[test]
    fn a_received_frame_lands_in_one_buffer_without_mrg_rxbuf() {
        let mem = memory();
        let (mut dev, env) = device(Offloads::NONE);
        let mut rx = Vq::new(&mem, 0);
        let tx = Vq::new(&mem, 0x1_0000);
        activate(&mut dev, &env, &mem, &[&rx, &tx], VIRTIO_F_VERSION_1);
        assert_eq!(dev.event_fds(), vec![(42, BACKEND_TOKEN)]);

        let frame = with_hdr(&eth_frame(MAC, 1000, 2));
        env.state.lock().unwrap().to_guest.push_back(frame.clone());
        let head = rx.add(&[(0x10_0000, 2048, true)]);
        dev.process_event(BACKEND_TOKEN).unwrap();
        assert_eq!(rx.used(), vec![(head, frame.len() as u32)]);
        let got = read(&mem, 0x10_0000, frame.len());
        assert_eq!(&got[..10], &frame[..10]);
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
        assert_eq!(&got[12..], &frame[12..]);
        assert_eq!(*env.irq.queues.lock().unwrap(), vec![RX_QUEUE as u16]);
    }

    #[test]
    fn mrg_rxbuf_spreads_a_large_frame_and_counts_the_buffers() {
        let mem = memory();
        let (mut dev, env) = device(Offloads::NONE);
        let mut rx = Vq::new(&mem, 0);
        let tx = Vq::new(&mem, 0x1_0000);
        activate(
            &mut dev,
            &env,
            &mem,
            &[&rx, &tx],
            VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF,
        );

        let frame = with_hdr(&eth_frame(MAC, 3000, 3));
        env.state.lock().unwrap().to_guest.push_back(frame.clone());
        // Only two 1 KiB buffers: not enough, so nothing is used yet and the frame waits.
        let a = rx.add(&[(0x10_0000, 1024, true)]);
        let b = rx.add(&[(0x20_0000, 512, true), (0x20_1000, 512, true)]);
        dev.process_event(BACKEND_TOKEN).unwrap();
        assert!(rx.used().is_empty());
        assert!(env.state.lock().unwrap().to_guest.is_empty());

        let c = rx.add(&[(0x30_0000, 1024, true)]);
        let d = rx.add(&[(0x40_0000, 1024, true)]);
        dev.process_queue(RX_QUEUE).unwrap();
        let total = frame.len() as u32;
        assert_eq!(rx.used(), vec![(a, 1024), (b, 1024), (c, total - 2048)]);
        let mut got = read(&mem, 0x10_0000, 1024);
        got.extend(read(&mem, 0x20_0000, 512));
        got.extend(read(&mem, 0x20_1000, 512));
        got.extend(read(&mem, 0x30_0000, (total - 2048) as usize));
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3, "num_buffers");
        assert_eq!(&got[12..], &frame[12..]);

        // The fourth buffer takes the next frame whole.
        let small = with_hdr(&eth_frame([0xff; 6], 60, 4));
        env.state.lock().unwrap().to_guest.push_back(small.clone());
        dev.process_event(BACKEND_TOKEN).unwrap();
        assert_eq!(rx.used()[3], (d, small.len() as u32));
        let got = read(&mem, 0x40_0000, small.len());
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
    }

    #[test]
    fn without_mrg_rxbuf_a_frame_too_big_for_the_buffer_is_dropped_and_the_buffer_kept() {
        let mem = memory();
        let (mut dev, env) = device(Offloads::NONE);
        let mut rx = Vq::new(&mem, 0);
        let tx = Vq::new(&mem, 0x1_0000);
        activate(&mut dev, &env, &mem, &[&rx, &tx], VIRTIO_F_VERSION_1);
        let big = with_hdr(&eth_frame(MAC, 1500, 5));
        let small = with_hdr(&eth_frame(MAC, 100, 6));
        env.state
            .lock()
            .unwrap()
            .to_guest
            .extend([big, small.clone()]);
        let head = rx.add(&[(0x10_0000, 512, true)]);
        dev.process_event(BACKEND_TOKEN).unwrap();
        assert_eq!(rx.used(), vec![(head, small.len() as u32)]);
        assert_eq!(&read(&mem, 0x10_000c, 100)[..], &small[12..]);
    }

    #[test]
    fn frames_wait_in_the_backend_until_the_driver_sets_up_buffers() {
        let mem = memory();
        let (mut dev, env) = device(Offloads::NONE);
        // Nothing happens before activation.
        env.state
            .lock()
            .unwrap()
            .to_guest
            .push_back(with_hdr(&eth_frame(MAC, 80, 7)));
        dev.process_event(BACKEND_TOKEN).unwrap();
        dev.process_queue(RX_QUEUE).unwrap();
        assert_eq!(env.state.lock().unwrap().to_guest.len(), 1);

        let mut rx = Vq::new(&mem, 0);
        let tx = Vq::new(&mem, 0x1_0000);
        activate(&mut dev, &env, &mem, &[&rx, &tx], VIRTIO_F_VERSION_1);
        let head = rx.add(&[(0x10_0000, 2048, true)]);
        dev.process_queue(RX_QUEUE).unwrap();
        assert_eq!(rx.used(), vec![(head, 92)]);
    }

    #[test]
    fn control_queue_sets_rx_modes_and_notifies_once_until_queried() {
        let mem = memory();
        let (mut dev, env) = device(Offloads::NONE);
        let (rx, tx, mut cq) = (
            Vq::new(&mem, 0),
            Vq::new(&mem, 0x1_0000),
            Vq::new(&mem, 0x2_0000),
        );
        activate(&mut dev, &env, &mem, &[&rx, &tx, &cq], BASIC);

        let f = dev.rx_filter();
        assert!(f.promiscuous, "QEMU starts promiscuous");
        assert_eq!(
            (f.unicast, f.multicast, f.vlan),
            (RxState::Normal, RxState::Normal, RxState::All)
        );
        assert!(f.broadcast_allowed);
        assert_eq!(f.main_mac, "52:54:00:12:34:56");

        let mut at = 0x50_0000;
        let mut cmd = |dev: &mut VirtioNet, class, c, data: &[u8]| {
            at += 0x1000;
            ctrl(dev, &mem, &mut cq, at, class, c, data)
        };
        assert_eq!(cmd(&mut dev, CTRL_RX, CTRL_RX_PROMISC, &[0]), NET_OK);
        assert_eq!(env.events.0.load(Ordering::SeqCst), 1);
        assert_eq!(cmd(&mut dev, CTRL_RX, CTRL_RX_ALLMULTI, &[1]), NET_OK);
        assert_eq!(cmd(&mut dev, CTRL_RX, CTRL_RX_NOUNI, &[1]), NET_OK);
        assert_eq!(cmd(&mut dev, CTRL_RX, CTRL_RX_NOBCAST, &[1]), NET_OK);
        assert_eq!(
            env.events.0.load(Ordering::SeqCst),
            1,
            "gated until queried"
        );
        let f = dev.rx_filter();
        assert!(!f.promiscuous);
        assert_eq!(f.multicast, RxState::All);
        assert_eq!(f.unicast, RxState::None);
        assert!(!f.broadcast_allowed);
        assert_eq!(cmd(&mut dev, CTRL_RX, CTRL_RX_NOUNI, &[0]), NET_OK);
        assert_eq!(cmd(&mut dev, CTRL_RX, CTRL_RX_ALLUNI, &[1]), NET_OK);
        assert_eq!(cmd(&mut dev, CTRL_RX, CTRL_RX_ALLMULTI, &[0]), NET_OK);
        assert_eq!(cmd(&mut dev, CTRL_RX, CTRL_RX_NOMULTI, &[1]), NET_OK);
        assert_eq!(env.events.0.load(Ordering::SeqCst), 2);
        let f = dev.rx_filter();
        assert_eq!((f.unicast, f.multicast), (RxState::All, RxState::None));

        // Errors: unknown command, unknown class, missing data. No event for them.
        assert_eq!(cmd(&mut dev, CTRL_RX, 9, &[1]), NET_ERR);
        assert_eq!(cmd(&mut dev, 77, 0, &[1]), NET_ERR);
        assert_eq!(cmd(&mut dev, CTRL_RX, CTRL_RX_PROMISC, &[]), NET_ERR);
        assert_eq!(env.events.0.load(Ordering::SeqCst), 2);
        assert_eq!(cq.used().len(), 11);
        assert!(cq.used().iter().all(|&(_, len)| len == 1));
    }

    #[test]
    fn mac_table_and_address_program_the_filter() {
        let mem = memory();
        let (mut dev, env) = device(Offloads::NONE);
        let (mut rx, tx, mut cq) = (
            Vq::new(&mem, 0),
            Vq::new(&mem, 0x1_0000),
            Vq::new(&mem, 0x2_0000),
        );
        activate(
            &mut dev,
            &env,
            &mem,
            &[&rx, &tx, &cq],
            BASIC | VIRTIO_NET_F_CTRL_MAC_ADDR,
        );

        let uni = [[0x02, 1, 2, 3, 4, 5], [0x02, 9, 9, 9, 9, 9]];
        let multi = [[0x01, 0, 0x5e, 0, 0, 1]];
        assert_eq!(
            ctrl(
                &mut dev,
                &mem,
                &mut cq,
                0x50_0000,
                CTRL_RX,
                CTRL_RX_PROMISC,
                &[0]
            ),
            NET_OK
        );
        assert_eq!(
            ctrl(
                &mut dev,
                &mem,
                &mut cq,
                0x51_0000,
                CTRL_MAC,
                CTRL_MAC_TABLE_SET,
                &mac_table(&uni, &multi)
            ),
            NET_OK
        );
        let f = dev.rx_filter();
        assert_eq!(
            f.unicast_table,
            vec!["02:01:02:03:04:05", "02:09:09:09:09:09"]
        );
        assert_eq!(f.multicast_table, vec!["01:00:5e:00:00:01"]);
        assert!(!f.unicast_overflow && !f.multicast_overflow);

        // What passes: our MAC, table entries, broadcast; not strangers.
        let frames = [
            (eth_frame(MAC, 60, 1), true),
            (eth_frame(uni[1], 60, 2), true),
            (eth_frame(multi[0], 60, 3), true),
            (eth_frame([0xff; 6], 60, 4), true),
            (eth_frame([0x02, 7, 7, 7, 7, 7], 60, 5), false),
            (eth_frame([0x01, 0, 0x5e, 0, 0, 9], 60, 6), false),
        ];
        for (i, (f, _)) in frames.iter().enumerate() {
            env.state.lock().unwrap().to_guest.push_back(with_hdr(f));
            rx.add(&[(0x10_0000 + i as u64 * 0x1000, 2048, true)]);
        }
        dev.process_event(BACKEND_TOKEN).unwrap();
        let used = rx.used();
        assert_eq!(used.len(), 4);
        for (i, (f, _)) in frames.iter().filter(|(_, pass)| *pass).enumerate() {
            assert_eq!(
                read(&mem, 0x10_000c + i as u64 * 0x1000, 6),
                f[..6].to_vec()
            );
        }

        // MAC_ADDR_SET changes the config space and the filter's MAC.
        let new_mac = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];
        assert_eq!(
            ctrl(
                &mut dev,
                &mem,
                &mut cq,
                0x52_0000,
                CTRL_MAC,
                CTRL_MAC_ADDR_SET,
                &new_mac
            ),
            NET_OK
        );
        let mut c = [0u8; 6];
        dev.read_config(0, &mut c);
        assert_eq!(c, new_mac);
        assert_eq!(dev.rx_filter().main_mac, "02:aa:bb:cc:dd:ee");
        assert_eq!(
            ctrl(
                &mut dev,
                &mem,
                &mut cq,
                0x53_0000,
                CTRL_MAC,
                CTRL_MAC_ADDR_SET,
                &new_mac[..5]
            ),
            NET_ERR
        );

        // Malformed tables are refused and change nothing: a count past the data,
        // trailing bytes, a missing multicast list.
        let mut long = mac_table(&uni, &multi);
        long[0] = 3;
        let mut trailing = mac_table(&uni, &multi);
        trailing.push(0);
        let mut no_multi = 1u32.to_le_bytes().to_vec();
        no_multi.extend_from_slice(&uni[0]);
        for (i, bad) in [long, trailing, no_multi, vec![0xff; 4]].iter().enumerate() {
            let at = 0x54_0000 + i as u64 * 0x1000;
            assert_eq!(
                ctrl(
                    &mut dev,
                    &mem,
                    &mut cq,
                    at,
                    CTRL_MAC,
                    CTRL_MAC_TABLE_SET,
                    bad
                ),
                NET_ERR
            );
        }
        assert_eq!(dev.rx_filter().unicast_table.len(), 2);

        // Overflow: more entries than the table holds accept every address of the kind.
        let many: Vec<[u8; 6]> = (0..65).map(|i| [0x02, 0, 0, 0, 1, i as u8]).collect();
        assert_eq!(
            ctrl(
                &mut dev,
                &mem,
                &mut cq,
                0x58_0000,
                CTRL_MAC,
                CTRL_MAC_TABLE_SET,
                &mac_table(&many, &[])
            ),
            NET_OK
        );
        let f = dev.rx_filter();
        assert!(f.unicast_overflow && !f.multicast_overflow);
        assert!(f.unicast_table.is_empty());
        let many_multi: Vec<[u8; 6]> = (0..64).map(|i| [0x01, 0, 0, 0, 1, i as u8]).collect();
        assert_eq!(
            ctrl(
                &mut dev,
                &mem,
                &mut cq,
                0x59_0000,
                CTRL_MAC,
                CTRL_MAC_TABLE_SET,
                &mac_table(&uni[..1], &many_multi)
            ),
            NET_OK
        );
        let f = dev.rx_filter();
        assert!(!f.unicast_overflow && f.multicast_overflow);
        assert_eq!(f.unicast_table.len(), 1);
        env.state
            .lock()
            .unwrap()
            .to_guest
            .push_back(with_hdr(&eth_frame([0x02, 7, 7, 7, 7, 7], 60, 5)));
        env.state
            .lock()
            .unwrap()
            .to_guest
            .push_back(with_hdr(&eth_frame([0x01, 3, 3, 3, 3, 3], 60, 5)));
        rx.add(&[(0x20_0000, 2048, true)]);
        dev.process_event(BACKEND_TOKEN).unwrap();
        assert_eq!(
            rx.used().len(),
            5,
            "the stranger unicast is dropped, any multicast passes"
        );

        // Reset: back to the configured MAC, promiscuous, empty tables.
        dev.reset();
        let f = dev.rx_filter();
        assert_eq!(f.main_mac, "52:54:00:12:34:56");
        assert!(f.promiscuous && f.unicast_table.is_empty() && !f.multicast_overflow);
        assert_eq!(dev.mac(), MAC);
    }

    #[test]
    fn vlan_filtering() {
        let mem = memory();
        let (mut dev, env) = device(Offloads::NONE);
        let (mut rx, tx, mut cq) = (
            Vq::new(&mem, 0),
            Vq::new(&mem, 0x1_0000),
            Vq::new(&mem, 0x2_0000),
        );
        activate(
            &mut dev,
            &env,
            &mem,
            &[&rx, &tx, &cq],
            BASIC | VIRTIO_NET_F_CTRL_VLAN,
        );
        assert_eq!(dev.rx_filter().vlan, RxState::None);
        assert_eq!(
            ctrl(
                &mut dev,
                &mem,
                &mut cq,
                0x50_0000,
                CTRL_RX,
                CTRL_RX_PROMISC,
                &[0]
            ),
            NET_OK
        );
        let tagged = |vid: u16| {
            let mut f = MAC.to_vec();
            f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x81, 0x00]);
            f.extend_from_slice(&vid.to_be_bytes());
            f.extend_from_slice(&[0x08, 0x00]);
            f.resize(64, 0);
            with_hdr(&f)
        };
        env.state.lock().unwrap().to_guest.push_back(tagged(5));
        rx.add(&[(0x10_0000, 2048, true)]);
        dev.process_event(BACKEND_TOKEN).unwrap();
        assert!(rx.used().is_empty());

        assert_eq!(
            ctrl(
                &mut dev,
                &mem,
                &mut cq,
                0x51_0000,
                CTRL_VLAN,
                CTRL_VLAN_ADD,
                &5u16.to_le_bytes()
            ),
            NET_OK
        );
        assert_eq!(
            ctrl(
                &mut dev,
                &mem,
                &mut cq,
                0x52_0000,
                CTRL_VLAN,
                CTRL_VLAN_ADD,
                &4096u16.to_le_bytes()
            ),
            NET_ERR
        );
        let f = dev.rx_filter();
        assert_eq!((f.vlan, f.vlan_table.clone()), (RxState::Normal, vec![5]));
        env.state.lock().unwrap().to_guest.push_back(tagged(5));
        env.state.lock().unwrap().to_guest.push_back(tagged(6));
        dev.process_event(BACKEND_TOKEN).unwrap();
        assert_eq!(rx.used().len(), 1);
        assert_eq!(
            ctrl(
                &mut dev,
                &mem,
                &mut cq,
                0x53_0000,
                CTRL_VLAN,
                CTRL_VLAN_DEL,
                &5u16.to_le_bytes()
            ),
            NET_OK
        );
        assert!(dev.rx_filter().vlan_table.is_empty());
    }

    #[test]
    fn guest_offloads_drive_the_backend() {
        let mem = memory();
        let (mut dev, env) = device(Offloads::ALL);
        let (rx, tx, mut cq) = (
            Vq::new(&mem, 0),
            Vq::new(&mem, 0x1_0000),
            Vq::new(&mem, 0x2_0000),
        );
        let feats = BASIC
            | VIRTIO_NET_F_GUEST_CSUM
            | VIRTIO_NET_F_GUEST_TSO4
            | VIRTIO_NET_F_GUEST_TSO6
            | VIRTIO_NET_F_CTRL_GUEST_OFFLOADS;
        activate(&mut dev, &env, &mem, &[&rx, &tx, &cq], feats);
        let want = Offloads {
            csum: true,
            tso4: true,
            tso6: true,
            ..Offloads::NONE
        };
        assert_eq!(env.state.lock().unwrap().offloads.last(), Some(&want));

        // ethtool -K: TSO off, then asking for an offload never negotiated.
        let bits = VIRTIO_NET_F_GUEST_CSUM.to_le_bytes();
        assert_eq!(
            ctrl(
                &mut dev,
                &mem,
                &mut cq,
                0x50_0000,
                CTRL_GUEST_OFFLOADS,
                0,
                &bits
            ),
            NET_OK
        );
        let csum_only = Offloads {
            csum: true,
            ..Offloads::NONE
        };
        assert_eq!(env.state.lock().unwrap().offloads.last(), Some(&csum_only));
        let bits = (VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_UFO).to_le_bytes();
        assert_eq!(
            ctrl(
                &mut dev,
                &mem,
                &mut cq,
                0x51_0000,
                CTRL_GUEST_OFFLOADS,
                0,
                &bits
            ),
            NET_ERR
        );
        // A guest acking TSO without checksum offload gets neither.
        dev.reset();
        assert_eq!(
            env.state.lock().unwrap().offloads.last(),
            Some(&Offloads::NONE)
        );
        activate(
            &mut dev,
            &env,
            &mem,
            &[&rx, &tx, &cq],
            BASIC | VIRTIO_NET_F_GUEST_TSO4,
        );
        assert_eq!(
            env.state.lock().unwrap().offloads.last(),
            Some(&Offloads::NONE)
        );
    }

    #[test]
    fn link_down_drops_tx_discards_rx_and_interrupts_config() {
        let mem = memory();
        let (mut dev, env) = device(Offloads::NONE);
        let (mut rx, mut tx) = (Vq::new(&mem, 0), Vq::new(&mem, 0x1_0000));
        activate(
            &mut dev,
            &env,
            &mem,
            &[&rx, &tx],
            VIRTIO_F_VERSION_1 | VIRTIO_NET_F_STATUS,
        );

        let frame = with_hdr(&eth_frame([0xff; 6], 100, 1));
        mem.write_slice(&frame, GuestAddress(0x30_0000)).unwrap();
        tx.add(&[(0x30_0000, frame.len() as u32, false)]);
        dev.set_link(false).unwrap();
        assert!(!dev.link_up());
        assert_eq!(env.irq.config.load(Ordering::SeqCst), 1);
        let mut st = [0u8; 2];
        dev.read_config(6, &mut st);
        assert_eq!(u16::from_le_bytes(st), 0);
        // The queued frame was dropped when the link went down, and so are new ones.
        assert_eq!(tx.used().len(), 1);
        tx.add(&[(0x30_0000, frame.len() as u32, false)]);
        dev.process_queue(TX_QUEUE).unwrap();
        assert_eq!(tx.used().len(), 2);
        assert!(env.state.lock().unwrap().sent.is_empty());
        // Received frames are read and discarded.
        env.state
            .lock()
            .unwrap()
            .to_guest
            .push_back(with_hdr(&eth_frame(MAC, 80, 2)));
        rx.add(&[(0x10_0000, 2048, true)]);
        dev.process_event(BACKEND_TOKEN).unwrap();
        assert!(rx.used().is_empty());
        assert!(env.state.lock().unwrap().to_guest.is_empty());

        dev.set_link(false).unwrap();
        assert_eq!(
            env.irq.config.load(Ordering::SeqCst),
            1,
            "no change, no interrupt"
        );
        dev.set_link(true).unwrap();
        assert_eq!(env.irq.config.load(Ordering::SeqCst), 2);
        dev.read_config(6, &mut st);
        assert_eq!(u16::from_le_bytes(st), VIRTIO_NET_S_LINK_UP);
        tx.add(&[(0x30_0000, frame.len() as u32, false)]);
        dev.process_queue(TX_QUEUE).unwrap();
        assert_eq!(env.state.lock().unwrap().sent, vec![frame]);
        env.state
            .lock()
            .unwrap()
            .to_guest
            .push_back(with_hdr(&eth_frame(MAC, 80, 3)));
        dev.process_event(BACKEND_TOKEN).unwrap();
        assert_eq!(rx.used().len(), 1);

        // Before activation, set_link only changes the status.
        let (mut idle, env2) = device(Offloads::NONE);
        idle.set_link(false).unwrap();
        assert_eq!(env2.irq.config.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn malformed_chains_fail_their_request_only() {
        let mem = memory();
        let (mut dev, env) = device(Offloads::NONE);
        let (mut rx, mut tx, mut cq) = (
            Vq::new(&mem, 0),
            Vq::new(&mem, 0x1_0000),
            Vq::new(&mem, 0x2_0000),
        );
        activate(
            &mut dev,
            &env,
            &mem,
            &[&rx, &tx, &cq],
            BASIC | VIRTIO_NET_F_MRG_RXBUF,
        );

        // Transmit: a buffer outside guest memory, one shorter than the header, one
        // device-writable only; then a good one.
        let frame = with_hdr(&eth_frame([0xff; 6], 64, 1));
        mem.write_slice(&frame, GuestAddress(0x30_0000)).unwrap();
        tx.add(&[(0x4000_0000, 100, false)]);
        tx.add(&[(0x30_0000, 4, false)]);
        tx.add(&[(0x30_0000, 100, true)]);
        tx.add(&[(0xffff_ffff_ffff_f000, 0x2000, false)]);
        tx.add(&[(0x30_0000, frame.len() as u32, false)]);
        dev.process_queue(TX_QUEUE).unwrap();
        assert_eq!(tx.used().len(), 5);
        assert_eq!(env.state.lock().unwrap().sent, vec![frame]);

        // Receive: a buffer outside memory and one too small for the header are returned
        // empty; the frame goes to the next good one.
        let f = with_hdr(&eth_frame(MAC, 80, 2));
        env.state.lock().unwrap().to_guest.push_back(f.clone());
        let bad1 = rx.add(&[(0x4000_0000, 2048, true)]);
        let bad2 = rx.add(&[(0x10_0000, 4, true)]);
        let good = rx.add(&[(0x11_0000, 2048, true)]);
        dev.process_event(BACKEND_TOKEN).unwrap();
        assert_eq!(
            rx.used(),
            vec![(bad1, 0), (bad2, 0), (good, f.len() as u32)]
        );

        // Control: no ack buffer, no header, then a good one still answered.
        mem.write_slice(&[CTRL_RX, CTRL_RX_PROMISC, 0], GuestAddress(0x50_0000))
            .unwrap();
        cq.add(&[(0x50_0000, 3, false)]);
        cq.add(&[(0x50_1000, 1, true)]);
        cq.add(&[(0x50_0000, 3, false), (0x4000_0000, 1, true)]);
        assert_eq!(
            ctrl(
                &mut dev,
                &mem,
                &mut cq,
                0x51_0000,
                CTRL_RX,
                CTRL_RX_PROMISC,
                &[0]
            ),
            NET_OK
        );
        let used = cq.used();
        assert_eq!(
            used.iter().map(|u| u.1).collect::<Vec<_>>(),
            vec![0, 0, 0, 1]
        );

        // A driver that claims more available entries than the ring holds breaks the
        // device (NEEDS_RESET), it does not panic.
        let idx_addr = tx.mock.avail_addr().0 + 2;
        mem.write_obj(1000u16, GuestAddress(idx_addr)).unwrap();
        assert!(matches!(
            dev.process_queue(TX_QUEUE),
            Err(DeviceError::Queue(_))
        ));
    }

    #[test]
    fn activation_wants_the_control_queue_when_negotiated() {
        let mem = memory();
        let (mut dev, env) = device(Offloads::NONE);
        let (rx, tx) = (Vq::new(&mem, 0), Vq::new(&mem, 0x1_0000));
        dev.ack_features(BASIC);
        let e = dev
            .activate(mem.clone(), env.irq.clone(), vec![rx.queue(), tx.queue()])
            .unwrap_err();
        assert!(matches!(e, ActivateError::QueueCount { got: 2, want: 3 }));
        // Unknown queues and tokens are ignored.
        dev.process_queue(7).unwrap();
        dev.process_event(9).unwrap();
    }

    #[test]
    fn rx_filter_serialises_with_qapi_names() {
        let (mut dev, _) = device(Offloads::NONE);
        let v = serde_json::to_value(dev.rx_filter()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "name": "net0", "promiscuous": true, "multicast": "normal",
                "unicast": "normal", "vlan": "all", "broadcast-allowed": true,
                "multicast-overflow": false, "unicast-overflow": false,
                "main-mac": "52:54:00:12:34:56", "vlan-table": [],
                "unicast-table": [], "multicast-table": []
            })
        );
    }

    /// The device over a real tap, in a network namespace this test's thread makes
    /// (gone with the thread): guest frames come out on the interface, frames sent on
    /// the interface land in guest buffers behind the tap's virtio-net header.
    #[test]
    fn over_a_real_tap_in_a_private_namespace() {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let t = std::thread::spawn(|| {
            // SAFETY: unshare affects only this thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                eprintln!(
                    "skipped: no network namespace: {}",
                    io::Error::last_os_error()
                );
                return;
            }
            let tap = match net::Tap::open("kn0") {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("skipped: {e}");
                    return;
                }
            };
            tap.set_up(true).unwrap();
            let ifindex = {
                let c = std::ffi::CString::new("kn0").unwrap();
                // SAFETY: a NUL-terminated name.
                unsafe { libc::if_nametoindex(c.as_ptr()) }
            };
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2), owned at once.
            let sock = unsafe {
                OwnedFd::from_raw_fd(libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_NONBLOCK,
                    proto.into(),
                ))
            };
            // SAFETY: sockaddr_ll is plain data.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = ifindex as i32;
            // SAFETY: bind reads one sockaddr_ll.
            let r = unsafe {
                libc::bind(
                    sock.as_raw_fd(),
                    &sll as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(r, 0);
            let ours = |f: &[u8]| f.len() > 14 && f[12..14] == [0x88, 0xb5];
            let frame = |tag: u8| {
                let mut f = MAC.to_vec();
                f.extend_from_slice(&[0x02, 0, 0, 0, 0, tag, 0x88, 0xb5]);
                f.resize(200, tag);
                f
            };
            let poll = |fd: i32| {
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one pollfd.
                unsafe { libc::poll(&mut p, 1, 100) };
            };

            let mem = memory();
            let events: Arc<Events> = Arc::new(Events::default());
            let mut dev = VirtioNet::new(
                Box::new(tap),
                NetConfig {
                    name: "nic0".into(),
                    mac: MAC,
                },
                events,
            );
            assert_ne!(
                dev.features() & VIRTIO_NET_F_GUEST_TSO4,
                0,
                "the tap offers TSO"
            );
            let (mut rx, mut tx) = (Vq::new(&mem, 0), Vq::new(&mem, 0x1_0000));
            dev.ack_features(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_NET_F_GUEST_CSUM);
            let irq = Arc::new(Irq::default());
            dev.activate(mem.clone(), irq, vec![rx.queue(), tx.queue()])
                .unwrap();
            let tap_fd = dev.event_fds()[0].0;

            // Guest to host.
            let out = with_hdr(&frame(1));
            let mut plain = out.clone();
            plain[0] = 0; // no partial checksum on a non-IP frame
            mem.write_slice(&plain, GuestAddress(0x30_0000)).unwrap();
            tx.add(&[(0x30_0000, plain.len() as u32, false)]);
            dev.process_queue(TX_QUEUE).unwrap();
            let mut buf = vec![0u8; 4096];
            let mut seen = None;
            for _ in 0..20 {
                // SAFETY: recv into buf.
                let n =
                    unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n > 0 && ours(&buf[..n as usize]) {
                    seen = Some(buf[..n as usize].to_vec());
                    break;
                }
                poll(sock.as_raw_fd());
            }
            assert_eq!(seen.as_deref(), Some(&plain[12..]));

            // Host to guest.
            let inbound = frame(2);
            // SAFETY: send from a live buffer.
            let n =
                unsafe { libc::send(sock.as_raw_fd(), inbound.as_ptr().cast(), inbound.len(), 0) };
            assert_eq!(n, inbound.len() as isize);
            let mut landed = None;
            for i in 0..20u64 {
                let addr = 0x40_0000 + i * 0x1000;
                rx.add(&[(addr, 2048, true)]);
                poll(tap_fd);
                dev.process_event(BACKEND_TOKEN).unwrap();
                for (k, &(_, len)) in rx.used().iter().enumerate() {
                    let got = read(&mem, 0x40_0000 + k as u64 * 0x1000, len as usize);
                    if ours(&got[12..]) {
                        landed = Some(got);
                    }
                }
                if landed.is_some() {
                    break;
                }
            }
            let got = landed.expect("the frame reached the guest");
            assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
            assert_eq!(&got[12..], &inbound[..]);
        });
        if let Err(p) = t.join() {
            std::panic::resume_unwind(p);
        }
    }
}
