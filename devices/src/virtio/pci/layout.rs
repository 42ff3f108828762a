//! The BAR layout (one 32 KiB memory BAR: common, ISR, device and notify structures,
//! the MSI-X table and PBA, 4 KiB each), the virtio_pci_cap capabilities that describe
//! it, and the VIRTIO_PCI_CAP_PCI_CFG window into it from config space.
//!
//! Invariant: every structure sits in its own 4 KiB region, so an access never spans
//! two of them (`region_of` refuses one that would).

use super::VirtioPciDevice;

/// The BAR holding every virtio structure and the MSI-X table.
pub const VIRTIO_PCI_BAR: u8 = 0;
pub const VIRTIO_PCI_BAR_SIZE: u64 = 0x8000;
pub const COMMON_CFG_OFFSET: u64 = 0x0000;
pub const ISR_CFG_OFFSET: u64 = 0x1000;
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
pub const NOTIFY_CFG_OFFSET: u64 = 0x3000;
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
pub const MSIX_PBA_OFFSET: u64 = 0x5000;
pub(super) const REGION_SIZE: u64 = 0x1000;
/// Bytes of common configuration the driver may use (up to queue_device).
pub(super) const COMMON_CFG_LEN: u32 = 0x38;
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;

// virtio_pci_cap cfg_type values (virtio 1.2, 4.1.4).
pub(super) const CAP_COMMON_CFG: u8 = 1;
pub(super) const CAP_NOTIFY_CFG: u8 = 2;
pub(super) const CAP_ISR_CFG: u8 = 3;
pub(super) const CAP_DEVICE_CFG: u8 = 4;
pub(super) const CAP_PCI_CFG: u8 = 5;
pub(super) const PCI_CAP_ID_VENDOR: u8 = 0x09;
/// In a virtio PCI_CFG capability: the bar, offset, length and data fields.
pub(super) const PCI_CFG_BAR: usize = 4;
pub(super) const PCI_CFG_OFFSET: usize = 8;
pub(super) const PCI_CFG_LENGTH: usize = 12;
pub(super) const PCI_CFG_DATA: usize = 16;

/// A virtio_pci_cap after its ID and next bytes (virtio 1.2, 4.1.4).
pub(super) fn virtio_cap(cfg_type: u8, offset: u32, length: u32, extra: &[u8]) -> Vec<u8> {
    let mut b = vec![(16 + extra.len()) as u8, cfg_type, VIRTIO_PCI_BAR, 0, 0, 0];
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(&length.to_le_bytes());
    b.extend_from_slice(extra);
    b
}

/// The 4 KiB region of our BAR an access falls in and its offset there; `None` for
/// another BAR, an empty or over-long access, or one straddling two regions.
pub(super) fn region_of(bar: u8, offset: u64, len: usize) -> Option<(u64, u64)> {
    if bar != VIRTIO_PCI_BAR || len == 0 || len > 8 {
        return None;
    }
    let last = offset.checked_add(len as u64 - 1)?;
    let region = offset & !(REGION_SIZE - 1);
    (last < VIRTIO_PCI_BAR_SIZE && last & !(REGION_SIZE - 1) == region)
        .then_some((region, offset - region))
}

impl VirtioPciDevice {
    pub(super) fn pci_cfg_data_reg(&self) -> usize {
        (self.pci_cfg_cap + PCI_CFG_DATA) / 4
    }

    /// The BAR access the PCI_CFG capability selects, if it is a valid one (our BAR,
    /// 1, 2 or 4 bytes, aligned).
    pub(super) fn pci_cfg_window(&self) -> Option<(u64, usize)> {
        let c = &self.config;
        let bar = c.read_u8(self.pci_cfg_cap + PCI_CFG_BAR);
        let offset = c.read_u32(self.pci_cfg_cap + PCI_CFG_OFFSET);
        let len = c.read_u32(self.pci_cfg_cap + PCI_CFG_LENGTH);
        (bar == VIRTIO_PCI_BAR && matches!(len, 1 | 2 | 4) && offset % len == 0)
            .then_some((u64::from(offset), len as usize))
    }
}
