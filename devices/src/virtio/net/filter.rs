//! The receive filter the guest programs through the control queue (promiscuous and
//! all/no-unicast/multicast modes, MAC tables, VLAN table), the test every received
//! frame passes, and its QMP view with the NIC_RX_FILTER_CHANGED gating.
//!
//! Invariant: after `filter_changed` notifies once, it stays silent until
//! `rx_filter` (query-rx-filter) re-arms it, as QEMU's rxfilter_notify_enabled.

use super::config::VIRTIO_NET_F_CTRL_VLAN;
use super::VirtioNet;

/// QEMU's MAC_TABLE_ENTRIES: unicast and multicast entries together.
pub const MAC_TABLE_ENTRIES: usize = 64;
pub(super) const MAX_VLAN: usize = 4096;

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

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// The receive filter the guest programs through the control queue.
#[derive(Clone, Debug)]
pub(super) struct RxFilter {
    pub(super) mac: [u8; 6],
    pub(super) promisc: bool,
    pub(super) allmulti: bool,
    pub(super) alluni: bool,
    pub(super) nomulti: bool,
    pub(super) nouni: bool,
    pub(super) nobcast: bool,
    pub(super) unicast: Vec<[u8; 6]>,
    pub(super) multicast: Vec<[u8; 6]>,
    pub(super) uni_overflow: bool,
    pub(super) multi_overflow: bool,
    /// One bit per VLAN id; all set when the guest has no VLAN filtering.
    pub(super) vlans: Vec<u32>,
}

impl RxFilter {
    pub(super) fn new(mac: [u8; 6]) -> Self {
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

    pub(super) fn vlan_allowed(&self, vid: usize) -> bool {
        self.vlans
            .get(vid / 32)
            .is_some_and(|w| w & (1 << (vid % 32)) != 0)
    }

    /// Whether a frame (Ethernet header first) passes, as QEMU's receive_filter.
    pub(super) fn accepts(&self, frame: &[u8]) -> bool {
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

impl VirtioNet {
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

    pub(super) fn filter_changed(&mut self) {
        if self.notify_enabled {
            self.notify_enabled = false;
            self.events.rx_filter_changed();
        }
    }
}
