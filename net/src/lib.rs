//! Network backends and their offloads. A backend moves whole Ethernet frames, each
//! preceded by a virtio-net header, between the host and a NIC model: the device model
//! (`devices::virtio::net`) sees only the `NetBackend` trait, so it is tested with a
//! fake backend, and the tap backend (`Tap`) is tested against the kernel inside a
//! network namespace of its own.
//!
//! Offloads follow the guest: a tap delivers checksum-less or segmentation-offloaded
//! (GSO) frames only for the offloads enabled with `set_offloads`, which the NIC model
//! derives from the features the guest driver accepted.

use std::io;
use std::os::fd::RawFd;

mod tap;

pub use tap::Tap;

/// Size of `struct virtio_net_hdr_v1` (virtio 1.x, and legacy with MRG_RXBUF): flags,
/// gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers.
pub const VNET_HDR_LEN: usize = 12;
/// Size of the legacy `struct virtio_net_hdr` (no num_buffers).
pub const VNET_HDR_LEN_LEGACY: usize = 10;

/// The largest frame a backend hands over: a 64 KiB GSO super-frame (the kernel's
/// legacy gso_max_size), its Ethernet and VLAN headers and the virtio-net header.
pub const MAX_FRAME_LEN: usize = VNET_HDR_LEN + 65536 + 14 + 4;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/net/tun: {0} (is the tun module loaded, and are we allowed CAP_NET_ADMIN?)")]
    OpenTun(io::Error),
    #[error("invalid tap interface name '{0}': it must be 1 to 15 bytes, without '/', ':' or whitespace")]
    InvalidName(String),
    #[error("cannot create or attach tap interface '{name}': {err}")]
    CreateTap { name: String, err: io::Error },
    #[error("file descriptor {fd} is not a tap device: {reason}")]
    NotATap { fd: RawFd, reason: String },
    #[error("tap '{name}': {what} failed: {err}")]
    Ioctl {
        name: String,
        what: &'static str,
        err: io::Error,
    },
    #[error(
        "tap '{name}' was opened without a virtio-net header (vnet_hdr=off): {what} needs one"
    )]
    NoVnetHdr { name: String, what: &'static str },
    #[error("virtio-net header length {0} is not supported (10 or 12)")]
    VnetHdrLen(usize),
}

/// Segmentation and checksum offloads a backend can deliver to the guest (`TUNSETOFFLOAD`).
/// Every offload other than `csum` needs `csum`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offloads {
    /// Frames may carry a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM).
    pub csum: bool,
    pub tso4: bool,
    pub tso6: bool,
    /// TSO frames may carry ECN (CWR) bits.
    pub ecn: bool,
    /// UDP fragmentation offload (the legacy UFO).
    pub ufo: bool,
    /// UDP segmentation offload, IPv4 and IPv6.
    pub uso4: bool,
    pub uso6: bool,
}

impl Offloads {
    pub const NONE: Offloads = Offloads {
        csum: false,
        tso4: false,
        tso6: false,
        ecn: false,
        ufo: false,
        uso4: false,
        uso6: false,
    };

    pub const ALL: Offloads = Offloads {
        csum: true,
        tso4: true,
        tso6: true,
        ecn: true,
        ufo: true,
        uso4: true,
        uso6: true,
    };

    /// The `TUN_F_*` bits for `TUNSETOFFLOAD`.
    pub fn tun_flags(&self) -> u32 {
        let mut f = 0;
        let bits = [
            (self.csum, libc::TUN_F_CSUM),
            (self.tso4, libc::TUN_F_TSO4),
            (self.tso6, libc::TUN_F_TSO6),
            (self.ecn, libc::TUN_F_TSO_ECN),
            (self.ufo, libc::TUN_F_UFO),
            (self.uso4, libc::TUN_F_USO4),
            (self.uso6, libc::TUN_F_USO6),
        ];
        for (on, bit) in bits {
            if on {
                f |= bit;
            }
        }
        f
    }

    /// Only the offloads present in both.
    pub fn intersect(&self, other: &Offloads) -> Offloads {
        Offloads {
            csum: self.csum && other.csum,
            tso4: self.tso4 && other.tso4,
            tso6: self.tso6 && other.tso6,
            ecn: self.ecn && other.ecn,
            ufo: self.ufo && other.ufo,
            uso4: self.uso4 && other.uso4,
            uso6: self.uso6 && other.uso6,
        }
    }

    /// The same set with everything that depends on `csum` cleared when `csum` is off
    /// (the kernel refuses segmentation offloads without checksum offload).
    pub fn consistent(&self) -> Offloads {
        if self.csum {
            *self
        } else {
            Offloads::NONE
        }
    }
}

/// What a NIC model needs of a network backend. Frames in both directions start with a
/// virtio-net header of the length last set with `set_vnet_hdr_len` (12 until then); a
/// backend that cannot carry headers synthesises an empty one on receive and strips it
/// on send, and then offers no offloads.
pub trait NetBackend: Send {
    /// Receives one frame into `buf`, returning its length with the header. Returns
    /// `ErrorKind::WouldBlock` when no frame is waiting.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Sends one frame (header first).
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
    /// Sets the virtio-net header length both directions use (10 or 12).
    fn set_vnet_hdr_len(&mut self, len: usize) -> io::Result<()>;
    /// The offloads `set_offloads` can enable.
    fn supported_offloads(&self) -> Offloads;
    /// Enables these receive offloads (a subset of `supported_offloads`).
    fn set_offloads(&mut self, offloads: Offloads) -> io::Result<()>;
    /// The fd to watch for readability (edge-triggered), if the backend has one.
    fn raw_fd(&self) -> Option<RawFd>;
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match &e {
            Error::OpenTun(err) | Error::CreateTap { err, .. } | Error::Ioctl { err, .. } => {
                err.kind()
            }
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offload_flags_map_to_tun_bits() {
        assert_eq!(Offloads::NONE.tun_flags(), 0);
        assert_eq!(Offloads::ALL.tun_flags(), 0x7f);
        let o = Offloads {
            csum: true,
            tso4: true,
            ..Offloads::NONE
        };
        assert_eq!(o.tun_flags(), libc::TUN_F_CSUM | libc::TUN_F_TSO4);
        let no_csum = Offloads {
            tso6: true,
            ..Offloads::NONE
        };
        assert_eq!(no_csum.consistent(), Offloads::NONE);
        assert_eq!(o.intersect(&no_csum), Offloads::NONE);
    }
}
