//! virtio-net feature bits, the guest receive offloads they stand for, and the config
//! space (`struct virtio_net_config`: mac, status, max_virtqueue_pairs).
//!
//! Invariant: `has` answers for the features the driver acked, never for offered ones.

use net::Offloads;

use super::{VirtioNet, VIRTIO_NET_S_LINK_UP};

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

/// Guest receive offloads a feature set asks for.
pub(super) fn guest_offloads(features: u64) -> Offloads {
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

pub(super) const GUEST_OFFLOAD_FEATURES: u64 = VIRTIO_NET_F_GUEST_CSUM
    | VIRTIO_NET_F_GUEST_TSO4
    | VIRTIO_NET_F_GUEST_TSO6
    | VIRTIO_NET_F_GUEST_ECN
    | VIRTIO_NET_F_GUEST_UFO
    | VIRTIO_NET_F_GUEST_USO4
    | VIRTIO_NET_F_GUEST_USO6;
impl VirtioNet {
    pub(super) fn has(&self, feature: u64) -> bool {
        self.acked_features & feature != 0
    }

    pub(super) fn config_bytes(&self) -> [u8; 10] {
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
}
