//! A guest driver for tests that go through the transport: BAR and MSI-X programming,
//! feature negotiation, queue setup from virtio-queue mock rings, DRIVER_OK, kicks, a
//! dump of every register a driver can read, and the serde round trip of a saved
//! state. Device tests (virtio-blk, -net, -console) use it to check migration end to
//! end; it only drives the transport's public surface plus the common-config layout.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use virtio_queue::mock::MockSplitQueue;

use super::common::*;
use super::{
    VirtioPciDevice, VirtioPciState, COMMON_CFG_OFFSET, DEVICE_CFG_OFFSET, MSIX_TABLE_OFFSET,
    NOTIFY_CFG_OFFSET, NOTIFY_OFF_MULTIPLIER,
};
use crate::pci::msix::tests::Recorder;
use crate::pci::msix::MSIX_CAP_ID;
use crate::pci::PciDevice;
use crate::virtio::{
    VirtioDevice, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};
use crate::GuestMemoryMmap;

/// Where the tests place BAR 0.
pub(crate) const BAR_ADDR: u64 = 0xc000_0000;

pub(crate) struct PciDriver {
    pub(crate) dev: VirtioPciDevice,
    pub(crate) msi: Arc<Recorder>,
}

impl PciDriver {
    pub(crate) fn new(device: Box<dyn VirtioDevice>, mem: &GuestMemoryMmap) -> Self {
        let msi = Arc::new(Recorder::default());
        let dev = VirtioPciDevice::new(device, mem.clone(), msi.clone(), None).unwrap();
        PciDriver { dev, msi }
    }

    pub(crate) fn write(&mut self, off: u64, v: u64, len: usize) {
        self.dev
            .write_bar(0, COMMON_CFG_OFFSET + off, &v.to_le_bytes()[..len]);
    }

    pub(crate) fn read(&mut self, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.dev.read_bar(0, COMMON_CFG_OFFSET + off, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    fn msix_cap(&mut self) -> usize {
        let mut at = usize::from(self.dev.config().read_u8(0x34));
        while at != 0 {
            if self.dev.config().read_u8(at) == MSIX_CAP_ID {
                return at;
            }
            at = usize::from(self.dev.config().read_u8(at + 1));
        }
        panic!("no MSI-X capability");
    }

    /// What firmware and the driver do: BAR 0 placed and decoded, bus mastering, MSI-X
    /// enabled with vector v sending data 0x40 + v, features, queue `i` on `queues[i]`
    /// of `size` entries, with vector i + 1 (config on vector 0), DRIVER_OK.
    pub(crate) fn start(
        &mut self,
        features: u64,
        size: u16,
        queues: &[&MockSplitQueue<GuestMemoryMmap>],
    ) {
        self.dev.write_config(4, BAR_ADDR as u32, 0xffff_ffff);
        self.dev.write_config(5, 0, 0xffff_ffff);
        self.dev.write_config(1, 0x6, 0xffff);
        let vectors = u64::from(self.dev.msix_vectors());
        for v in 0..vectors {
            let e = MSIX_TABLE_OFFSET + 16 * v;
            self.dev.write_bar(0, e, &0xfee0_0000u32.to_le_bytes());
            self.dev
                .write_bar(0, e + 8, &(0x40 + v as u32).to_le_bytes());
            self.dev.write_bar(0, e + 12, &0u32.to_le_bytes());
        }
        let cap = self.msix_cap();
        self.dev.write_config(cap / 4, 0x8000 << 16, 0xffff_0000);

        let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
        self.write(DEVICE_STATUS, u64::from(STATUS_ACKNOWLEDGE), 1);
        self.write(DEVICE_STATUS, u64::from(s), 1);
        self.write(DRIVER_FEATURE_SELECT, 0, 4);
        self.write(DRIVER_FEATURE, features & 0xffff_ffff, 4);
        self.write(DRIVER_FEATURE_SELECT, 1, 4);
        self.write(DRIVER_FEATURE, features >> 32, 4);
        self.write(DEVICE_STATUS, u64::from(s | STATUS_FEATURES_OK), 1);
        assert_ne!(
            self.read(DEVICE_STATUS, 1) as u8 & STATUS_FEATURES_OK,
            0,
            "features {features:#x} refused"
        );
        self.write(MSIX_CONFIG, 0, 2);
        for (i, q) in queues.iter().enumerate() {
            self.write(QUEUE_SELECT, i as u64, 2);
            self.write(QUEUE_SIZE, u64::from(size), 2);
            self.write(QUEUE_DESC, q.desc_table_addr().0, 8);
            self.write(QUEUE_DRIVER, q.avail_addr().0, 8);
            self.write(QUEUE_DEVICE, q.used_addr().0, 8);
            self.write(QUEUE_MSIX_VECTOR, i as u64 + 1, 2);
            self.write(QUEUE_ENABLE, 1, 2);
        }
        self.write(
            DEVICE_STATUS,
            u64::from(s | STATUS_FEATURES_OK | STATUS_DRIVER_OK),
            1,
        );
        assert!(self.dev.is_activated(), "status {:#x}", self.dev.status());
    }

    /// The driver wrote queue `q`'s doorbell.
    pub(crate) fn kick(&mut self, q: u16) {
        let off = NOTIFY_CFG_OFFSET + u64::from(q) * u64::from(NOTIFY_OFF_MULTIPLIER);
        self.dev.write_bar(0, off, &q.to_le_bytes());
    }

    /// Every register a driver reads without side effects: configuration space, the
    /// common configuration for each queue, the device config and the MSI-X table.
    /// The queue selector is put back.
    pub(crate) fn registers(&mut self) -> Vec<u64> {
        let mut out: Vec<u64> = (0..64)
            .map(|r| u64::from(self.dev.read_config(r)))
            .collect();
        let select = self.read(QUEUE_SELECT, 2);
        for (field, width) in COMMON_FIELDS {
            out.push(self.read(field, width as usize));
        }
        let n = self.read(NUM_QUEUES, 2);
        for q in 0..n {
            self.write(QUEUE_SELECT, q, 2);
            for (field, width) in &COMMON_FIELDS[9..] {
                out.push(self.read(*field, *width as usize));
            }
        }
        self.write(QUEUE_SELECT, select, 2);
        let mut b = [0u8; 64];
        self.dev.read_bar(0, DEVICE_CFG_OFFSET, &mut b);
        out.extend(b.iter().map(|&x| u64::from(x)));
        let mut t = vec![0u8; 16 * usize::from(self.dev.msix_vectors())];
        self.dev.read_bar(0, MSIX_TABLE_OFFSET, &mut t);
        out.extend(t.iter().map(|&x| u64::from(x)));
        out
    }

    /// The state as the migration stream carries it: saved, to JSON and back.
    pub(crate) fn save(&self) -> VirtioPciState {
        let s = self.dev.state().unwrap();
        let json = serde_json::to_string(&s).unwrap();
        let back: VirtioPciState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        back
    }

    /// Restores `state` into this freshly built transport and checks it is refused with
    /// an error containing `why`, leaving the device inactive.
    pub(crate) fn assert_refuses(mut self, state: &VirtioPciState, why: &str) {
        let e = self.dev.restore(state).unwrap_err().to_string();
        assert!(e.contains(why), "{e}");
        assert!(!self.dev.is_activated());
    }
}
