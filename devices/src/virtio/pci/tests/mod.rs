//! virtio-pci transport tests: a fake virtio device, an INTx line counter, and a rig
//! wiring the transport onto a PCI bus with an MSI recorder.

#![allow(clippy::unwrap_used)]

use super::common::*;
use super::irq::*;
use super::layout::*;
use super::*;
use crate::pci::msix::tests::{Event, Recorder};
use crate::pci::{MsiMessage, PciAddress, PciBus};
use crate::virtio::{
    ActivateError, DeviceError, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK,
    STATUS_FEATURES_OK, STATUS_NEEDS_RESET, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1,
};

use std::sync::atomic::AtomicUsize;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

const FEATURE_X: u64 = 1 << 5;

/// (ready, size, desc, avail, used, event_idx) of a queue passed to activate.
type QueueSeen = (bool, u16, u64, u64, u64, bool);

#[derive(Default)]
struct FakeState {
    acked: Option<u64>,
    queues: Option<Vec<QueueSeen>>,
    interrupt: Option<Arc<dyn VirtioInterrupt>>,
    resets: usize,
    processed: Vec<usize>,
    config: Vec<u8>,
    fail_queue: bool,
    fail_activate: bool,
}

struct Fake(Arc<Mutex<FakeState>>);

impl VirtioDevice for Fake {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![256, 128, 64]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX | FEATURE_X
    }
    fn ack_features(&mut self, features: u64) {
        self.0.lock().unwrap().acked = Some(features);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let s = self.0.lock().unwrap();
        for (i, d) in data.iter_mut().enumerate() {
            *d = s.config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut s = self.0.lock().unwrap();
        for (i, d) in data.iter().enumerate() {
            if let Some(b) = s.config.get_mut(offset as usize + i) {
                *b = *d;
            }
        }
    }
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        let mut s = self.0.lock().unwrap();
        if s.fail_activate {
            return Err(ActivateError::Failed("no backend".into()));
        }
        s.queues = Some(
            queues
                .iter()
                .map(|q| {
                    (
                        q.ready(),
                        q.size(),
                        q.desc_table(),
                        q.avail_ring(),
                        q.used_ring(),
                        q.event_idx_enabled(),
                    )
                })
                .collect(),
        );
        s.interrupt = Some(interrupt);
        Ok(())
    }
    fn reset(&mut self) {
        let mut s = self.0.lock().unwrap();
        s.resets += 1;
        s.queues = None;
        s.interrupt = None;
    }
    fn process_queue(&mut self, index: usize) -> Result<(), DeviceError> {
        let mut s = self.0.lock().unwrap();
        s.processed.push(index);
        if s.fail_queue {
            return Err(DeviceError::Queue("bad chain".into()));
        }
        Ok(())
    }
}

#[derive(Default)]
struct Line(AtomicUsize);

impl Interrupt for Line {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl Line {
    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

struct Rig {
    dev: VirtioPciDevice,
    fake: Arc<Mutex<FakeState>>,
    msi: Arc<Recorder>,
    intx: Arc<Line>,
}

fn rig() -> Rig {
    let fake = Arc::new(Mutex::new(FakeState {
        config: (0..16).collect(),
        ..Default::default()
    }));
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let msi = Arc::new(Recorder::default());
    let intx = Arc::new(Line::default());
    let dev = VirtioPciDevice::new(
        Box::new(Fake(fake.clone())),
        mem,
        msi.clone(),
        Some(intx.clone()),
    )
    .unwrap();
    Rig {
        dev,
        fake,
        msi,
        intx,
    }
}

impl Rig {
    fn w(&mut self, off: u64, v: u64, len: usize) {
        self.dev.write_bar(0, off, &v.to_le_bytes()[..len]);
    }
    fn r(&mut self, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.dev.read_bar(0, off, &mut b[..len]);
        u64::from_le_bytes(b)
    }
    fn status(&mut self) -> u8 {
        self.r(DEVICE_STATUS, 1) as u8
    }
    fn set_status(&mut self, s: u8) {
        self.w(DEVICE_STATUS, u64::from(s), 1);
    }
    fn driver_features(&mut self, f: u64) {
        self.w(DRIVER_FEATURE_SELECT, 0, 4);
        self.w(DRIVER_FEATURE, f & 0xffff_ffff, 4);
        self.w(DRIVER_FEATURE_SELECT, 1, 4);
        self.w(DRIVER_FEATURE, f >> 32, 4);
    }
    fn negotiate(&mut self, f: u64) {
        self.set_status(STATUS_ACKNOWLEDGE);
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        self.driver_features(f);
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    }
    /// Queue q at 0x1000 * (1 + 3 q): descriptors, then avail, then used pages.
    fn setup_queue(&mut self, q: u16, size: u16) {
        let base = 0x1000 * (1 + 3 * u64::from(q));
        self.w(QUEUE_SELECT, u64::from(q), 2);
        self.w(QUEUE_SIZE, u64::from(size), 2);
        // Descriptor table as two dword writes, as a 32-bit driver does.
        self.w(QUEUE_DESC, base & 0xffff_ffff, 4);
        self.w(QUEUE_DESC + 4, base >> 32, 4);
        self.w(QUEUE_DRIVER, base + 0x1000, 8);
        self.w(QUEUE_DEVICE, base + 0x2000, 8);
        self.w(QUEUE_ENABLE, 1, 2);
    }
    fn start(&mut self) {
        self.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX);
        self.setup_queue(0, 128);
        self.setup_queue(1, 128);
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        assert!(self.dev.is_activated());
    }
}

/// Walks the capability list: (offset, id) of each capability.
fn caps(dev: &mut VirtioPciDevice) -> Vec<(usize, u8)> {
    let mut out = Vec::new();
    let mut at = dev.config().read_u8(0x34) as usize;
    while at != 0 && out.len() < 48 {
        out.push((at, dev.config().read_u8(at)));
        at = dev.config().read_u8(at + 1) as usize;
    }
    out
}

mod config;
mod interrupts;
