//! virtio-blk feature bits, the device config space (`struct virtio_blk_config`) and
//! the `-device virtio-blk-pci`/`-drive` parameters the device is built from.
//!
//! Invariant: the config space is built once, at construction, from the image and the
//! parameters; nothing in it changes while the device lives (no CONFIG_WCE, no resize).

use block::{RawImage, SECTOR_SIZE};

use super::errors::ErrorPolicy;
use super::DEFAULT_QUEUE_SIZE;

/// Feature bits (virtio 1.2, 5.2.3).
pub const VIRTIO_BLK_F_SIZE_MAX: u64 = 1 << 1;
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
pub const VIRTIO_BLK_F_MQ: u64 = 1 << 12;
pub const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
pub const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;

/// Discard and write-zeroes limits advertised in the config space.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
pub const MAX_DISCARD_SEG: u32 = 32;
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 22;
pub const MAX_WRITE_ZEROES_SEG: u32 = 32;

/// struct virtio_blk_config up to write_zeroes_may_unmap and its padding.
pub(super) const CONFIG_LEN: usize = 60;

/// The virtio-blk part of `-device virtio-blk-pci,...` and `-drive ...,werror=,rerror=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioBlockConfig {
    /// Names the device in BLOCK_IO_ERROR (the drive or qdev id).
    pub id: String,
    /// `num-queues`: request queues offered (F_MQ when more than one).
    pub num_queues: u16,
    /// `queue-size`: entries per queue, a power of two up to 32768.
    pub queue_size: u16,
    /// `rerror=`, for reads (default report).
    pub rerror: ErrorPolicy,
    /// `werror=`, for writes, flushes, discards and write-zeroes (default enospc).
    pub werror: ErrorPolicy,
    /// Offer VIRTIO_F_RING_EVENT_IDX (interrupt suppression).
    pub event_idx: bool,
}

impl VirtioBlockConfig {
    pub fn new(id: impl Into<String>) -> Self {
        VirtioBlockConfig {
            id: id.into(),
            num_queues: 1,
            queue_size: DEFAULT_QUEUE_SIZE,
            rerror: ErrorPolicy::Report,
            werror: ErrorPolicy::Enospc,
            event_idx: true,
        }
    }
}

pub(super) fn build_config(disk: &RawImage, cfg: &VirtioBlockConfig) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
    let blk_size = disk.alignment().max(SECTOR_SIZE as usize) as u32;
    put(0, &(disk.size() / SECTOR_SIZE).to_le_bytes());
    // seg_max: a chain holds the header and status besides the data segments.
    put(
        12,
        &(u32::from(cfg.queue_size).saturating_sub(2).max(1)).to_le_bytes(),
    );
    put(20, &blk_size.to_le_bytes());
    put(34, &cfg.num_queues.to_le_bytes());
    if !disk.read_only() {
        let granularity = blk_size / SECTOR_SIZE as u32;
        put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(40, &MAX_DISCARD_SEG.to_le_bytes());
        put(44, &granularity.to_le_bytes());
        put(48, &MAX_WRITE_ZEROES_SECTORS.to_le_bytes());
        put(52, &MAX_WRITE_ZEROES_SEG.to_le_bytes());
        let may_unmap = disk.discard_mode() == block::DiscardMode::Unmap;
        put(56, &[u8::from(may_unmap)]);
    }
    c
}
