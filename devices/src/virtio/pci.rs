//! The virtio-pci transport, modern only (virtio 1.2, 4.1): a [`VirtioDevice`] behind
//! a PCI function the guest's virtio_pci driver binds to.
//!
//! Everything lives in one 64-bit memory BAR (BAR 0), one 4 KiB page per structure,
//! each found by the driver through a vendor capability:
//!
//! ```text
//!  0x0000  COMMON_CFG  features, status, queue setup            (0x38 bytes)
//!  0x1000  ISR_CFG     one byte, cleared by reading it
//!  0x2000  DEVICE_CFG  the device's own configuration          (passed through)
//!  0x3000  NOTIFY_CFG  queue q's doorbell at 0x3000 + 4 q       (notify_off_multiplier 4)
//!  0x4000  MSI-X table (queues + 1 vectors)
//!  0x5000  MSI-X PBA
//! ```
//!
//! plus the PCI_CFG capability, a window onto the BAR through configuration space.
//!
//! Kicks: the machine registers an ioeventfd on each of [`VirtioPciDevice::notify_addresses`]
//! and calls [`VirtioPciDevice::process_queue`] when one fires; a doorbell write that
//! reaches the device anyway (no ioeventfd registered) is handled the same way.
//! Interrupts: the device gets an `Arc<dyn VirtioInterrupt>` that raises the queue's
//! (or the config) MSI-X vector when MSI-X is enabled, and otherwise sets the ISR bit
//! and raises INTx.
//!
//! Lock order: the device's mutex -> the MSI-X table's mutex -> [`MsiTrigger`] (vmm).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{
    VirtioDevice, VirtioInterrupt, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK,
    STATUS_NEEDS_RESET, TYPE_BALLOON, TYPE_BLOCK, TYPE_CONSOLE, TYPE_NET, VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_VERSION_1,
};
use crate::pci::config::{COMMAND_INTX_DISABLE, STATUS_INTERRUPT};
use crate::pci::msix::MSIX_CAP_ID;
use crate::pci::{BarKind, MsiTrigger, Msix, PciConfiguration, PciDevice, PciError, PciHeader};
use crate::Interrupt;

pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// A modern device's PCI device id is this plus its virtio device type.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Revision 1 and up: a non-transitional (modern-only) device.
pub const VIRTIO_PCI_REVISION: u8 = 1;
/// The subsystem ids QEMU gives modern virtio devices (the spec asks for >= 0x40).
pub const VIRTIO_PCI_SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
pub const VIRTIO_PCI_SUBSYSTEM_ID: u16 = 0x1100;
/// "No MSI-X vector" in msix_config and queue_msix_vector.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

/// The BAR holding every virtio structure and the MSI-X table.
pub const VIRTIO_PCI_BAR: u8 = 0;
pub const VIRTIO_PCI_BAR_SIZE: u64 = 0x8000;
pub const COMMON_CFG_OFFSET: u64 = 0x0000;
pub const ISR_CFG_OFFSET: u64 = 0x1000;
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
pub const NOTIFY_CFG_OFFSET: u64 = 0x3000;
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
pub const MSIX_PBA_OFFSET: u64 = 0x5000;
const REGION_SIZE: u64 = 0x1000;
/// Bytes of common configuration the driver may use (up to queue_device).
const COMMON_CFG_LEN: u32 = 0x38;
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// Queues the layout has room for: one MSI-X vector each plus config fits the 4 KiB
/// table page (16 bytes a vector).
pub const MAX_QUEUES: usize = 255;
const MAX_QUEUE_SIZE: u16 = 32768;

// virtio_pci_cap cfg_type values (virtio 1.2, 4.1.4).
const CAP_COMMON_CFG: u8 = 1;
const CAP_NOTIFY_CFG: u8 = 2;
const CAP_ISR_CFG: u8 = 3;
const CAP_DEVICE_CFG: u8 = 4;
const CAP_PCI_CFG: u8 = 5;
const PCI_CAP_ID_VENDOR: u8 = 0x09;
/// In a virtio PCI_CFG capability: the bar, offset, length and data fields.
const PCI_CFG_BAR: usize = 4;
const PCI_CFG_OFFSET: usize = 8;
const PCI_CFG_LENGTH: usize = 12;
const PCI_CFG_DATA: usize = 16;

const ISR_QUEUE: u8 = 1;
const ISR_CONFIG: u8 = 2;

// Common configuration fields: (offset, width), virtio 1.2, 4.1.4.3.
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const MSIX_CONFIG: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;
const COMMON_FIELDS: [(u64, u64); 16] = [
    (DEVICE_FEATURE_SELECT, 4),
    (DEVICE_FEATURE, 4),
    (DRIVER_FEATURE_SELECT, 4),
    (DRIVER_FEATURE, 4),
    (MSIX_CONFIG, 2),
    (NUM_QUEUES, 2),
    (DEVICE_STATUS, 1),
    (CONFIG_GENERATION, 1),
    (QUEUE_SELECT, 2),
    (QUEUE_SIZE, 2),
    (QUEUE_MSIX_VECTOR, 2),
    (QUEUE_ENABLE, 2),
    (QUEUE_NOTIFY_OFF, 2),
    (QUEUE_DESC, 8),
    (QUEUE_DRIVER, 8),
    (QUEUE_DEVICE, 8),
];

fn common_field(off: u64) -> Option<(u64, u64)> {
    COMMON_FIELDS
        .iter()
        .copied()
        .find(|(o, w)| off >= *o && off < o + w)
}

#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    #[error("virtio device type {0} has no PCI device id")]
    DeviceType(u32),
    #[error("the device has {0} queues; virtio-pci here supports at most {MAX_QUEUES}")]
    TooManyQueues(usize),
    #[error("queue {queue}: maximum size {size} is not a power of two in 1..=32768")]
    QueueSize { queue: usize, size: u16 },
    #[error(transparent)]
    Pci(#[from] PciError),
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// PCI class, subclass for a virtio device type, as QEMU reports them.
fn class_of(device_type: u32) -> (u8, u8) {
    match device_type {
        TYPE_NET => (0x02, 0x00),     // network: ethernet
        TYPE_BLOCK => (0x01, 0x00),   // mass storage: SCSI
        TYPE_CONSOLE => (0x07, 0x80), // communication: other
        TYPE_BALLOON => (0x00, 0xff), // QEMU's PCI_CLASS_OTHERS, as a class/subclass word
        _ => (0xff, 0x00),            // unassigned class
    }
}

/// The interrupt side, shared with the device once it is activated (and with
/// whatever thread it completes requests on).
struct Signals {
    msix: Mutex<Msix>,
    isr: AtomicU8,
    generation: AtomicU8,
    config_vector: AtomicU16,
    queue_vectors: Vec<AtomicU16>,
    intx: Option<Arc<dyn Interrupt>>,
    intx_disabled: AtomicBool,
}

impl Signals {
    fn signal(&self, vector: u16, isr: u8) -> std::io::Result<()> {
        {
            let mut msix = lock(&self.msix);
            if msix.enabled() {
                if vector == VIRTIO_MSI_NO_VECTOR {
                    return Ok(());
                }
                return msix.fire(vector);
            }
        }
        self.isr.fetch_or(isr, Ordering::SeqCst);
        self.assert_intx()
    }

    fn assert_intx(&self) -> std::io::Result<()> {
        if self.intx_disabled.load(Ordering::SeqCst) {
            return Ok(());
        }
        match &self.intx {
            Some(line) => line.trigger(),
            None => Ok(()),
        }
    }

    fn msix_enabled(&self) -> bool {
        lock(&self.msix).enabled()
    }
}

impl VirtioInterrupt for Signals {
    fn trigger_queue(&self, queue: u16) -> std::io::Result<()> {
        match self.queue_vectors.get(usize::from(queue)) {
            Some(v) => self.signal(v.load(Ordering::SeqCst), ISR_QUEUE),
            None => Ok(()),
        }
    }

    fn trigger_config(&self) -> std::io::Result<()> {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.signal(self.config_vector.load(Ordering::SeqCst), ISR_CONFIG)
    }
}

/// What the driver programmed for one queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct QueueConfig {
    max_size: u16,
    size: u16,
    enable: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            enable: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// A virtio device on PCI. Put it on the [`crate::pci::PciBus`] as a
/// `SharedPciDevice`; keep the concrete `Arc<Mutex<VirtioPciDevice>>` to call
/// [`Self::process_queue`] and [`Self::process_event`] from the event loop.
pub struct VirtioPciDevice {
    config: PciConfiguration,
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    signals: Arc<Signals>,
    queues: Vec<QueueConfig>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    queue_select: u16,
    activated: bool,
    activation_hook: Option<ActivationHook>,
    msix_cap: usize,
    pci_cfg_cap: usize,
}

/// Told `true` when the driver started the device, `false` when it reset a started
/// one.
pub type ActivationHook = Box<dyn Fn(bool) + Send>;

impl VirtioPciDevice {
    /// Wraps `device`, whose rings live in `mem`. `msi` routes and fires the
    /// function's MSI-X vectors (one per queue plus one; the driver decides which
    /// serves what). `intx`, if any, raises the slot's INTA GSI (see
    /// [`crate::pci::PciAddress::intx_gsi`]), a level-triggered line: the machine
    /// calls [`Self::resample_intx`] when the guest EOIs it.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        msi: Arc<dyn MsiTrigger>,
        intx: Option<Arc<dyn Interrupt>>,
    ) -> Result<Self, VirtioPciError> {
        let sizes = device.queue_max_sizes();
        if sizes.len() > MAX_QUEUES {
            return Err(VirtioPciError::TooManyQueues(sizes.len()));
        }
        for (queue, &size) in sizes.iter().enumerate() {
            if !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
                return Err(VirtioPciError::QueueSize { queue, size });
            }
        }
        let ty = device.device_type();
        let device_id = u16::try_from(ty)
            .ok()
            .and_then(|t| VIRTIO_PCI_DEVICE_ID_BASE.checked_add(t))
            .ok_or(VirtioPciError::DeviceType(ty))?;
        let (class, subclass) = class_of(ty);
        let mut config = PciConfiguration::new(&PciHeader {
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            device_id,
            revision: VIRTIO_PCI_REVISION,
            class,
            subclass,
            prog_if: 0,
            subsystem_vendor_id: VIRTIO_PCI_SUBSYSTEM_VENDOR_ID,
            subsystem_id: VIRTIO_PCI_SUBSYSTEM_ID,
            interrupt_pin: 1,
        });
        config.add_bar(
            VIRTIO_PCI_BAR,
            BarKind::Memory64,
            VIRTIO_PCI_BAR_SIZE,
            false,
        )?;

        let num_queues = sizes.len() as u32;
        let caps: [(u8, u64, u32, &[u8]); 4] = [
            (CAP_COMMON_CFG, COMMON_CFG_OFFSET, COMMON_CFG_LEN, &[]),
            (CAP_ISR_CFG, ISR_CFG_OFFSET, 1, &[]),
            (CAP_DEVICE_CFG, DEVICE_CFG_OFFSET, REGION_SIZE as u32, &[]),
            (
                CAP_NOTIFY_CFG,
                NOTIFY_CFG_OFFSET,
                num_queues.max(1) * NOTIFY_OFF_MULTIPLIER,
                &NOTIFY_OFF_MULTIPLIER.to_le_bytes(),
            ),
        ];
        for (cfg_type, offset, length, extra) in caps {
            config.add_capability(
                PCI_CAP_ID_VENDOR,
                &virtio_cap(cfg_type, offset as u32, length, extra),
                &[],
            )?;
        }
        // PCI_CFG: bar, offset, length and data are the driver's to write.
        let mut pci_cfg_wmask = vec![0u8; 18];
        pci_cfg_wmask[PCI_CFG_BAR - 2] = 0xff;
        pci_cfg_wmask[PCI_CFG_OFFSET - 2..].fill(0xff);
        let pci_cfg_cap = config.add_capability(
            PCI_CAP_ID_VENDOR,
            &virtio_cap(CAP_PCI_CFG, 0, 0, &[0; 4]),
            &pci_cfg_wmask,
        )?;

        let msix = Msix::new(sizes.len() as u16 + 1, msi)?;
        let (body, wmask) = msix.capability(
            VIRTIO_PCI_BAR,
            MSIX_TABLE_OFFSET as u32,
            VIRTIO_PCI_BAR,
            MSIX_PBA_OFFSET as u32,
        );
        let msix_cap = config.add_capability(MSIX_CAP_ID, &body, &wmask)?;

        let signals = Arc::new(Signals {
            msix: Mutex::new(msix),
            isr: AtomicU8::new(0),
            generation: AtomicU8::new(0),
            config_vector: AtomicU16::new(VIRTIO_MSI_NO_VECTOR),
            queue_vectors: sizes
                .iter()
                .map(|_| AtomicU16::new(VIRTIO_MSI_NO_VECTOR))
                .collect(),
            intx,
            intx_disabled: AtomicBool::new(false),
        });
        Ok(Self {
            config,
            device,
            mem,
            signals,
            queues: sizes.into_iter().map(QueueConfig::new).collect(),
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            queue_select: 0,
            activated: false,
            activation_hook: None,
            msix_cap,
            pci_cfg_cap,
        })
    }

    /// Where each queue's doorbell is, as BAR 0 is mapped now (empty while it is not):
    /// register a KVM ioeventfd (no datamatch; the driver writes a 16-bit queue index)
    /// on each and call [`Self::process_queue`] with the queue when it fires.
    pub fn notify_addresses(&self) -> Vec<(u64, u16)> {
        let Some(base) = self.config.mapped_bar(VIRTIO_PCI_BAR) else {
            return Vec::new();
        };
        (0..self.queues.len() as u16)
            .map(|q| {
                let off = NOTIFY_CFG_OFFSET + u64::from(q) * u64::from(NOTIFY_OFF_MULTIPLIER);
                (base + off, q)
            })
            .collect()
    }

    /// The driver kicked `queue`. Ignored before DRIVER_OK, for a queue the driver did
    /// not enable, and once the device needs a reset. A device error marks the device
    /// NEEDS_RESET and raises the config interrupt (virtio 1.2, 2.1.2).
    pub fn process_queue(&mut self, queue: u16) {
        if !self.serving()
            || !self
                .queues
                .get(usize::from(queue))
                .is_some_and(|q| q.enable)
        {
            return;
        }
        if let Err(e) = self.device.process_queue(usize::from(queue)) {
            self.needs_reset(&format!("queue {queue}: {e}"));
        }
    }

    /// One of the device's own fds (see [`Self::event_fds`]) is ready.
    pub fn process_event(&mut self, token: u32) {
        if !self.serving() {
            return;
        }
        if let Err(e) = self.device.process_event(token) {
            self.needs_reset(&format!("event {token}: {e}"));
        }
    }

    /// Called with `true` once the device is activated and `false` when a started
    /// device is reset, so the machine can watch [`Self::event_fds`] only meanwhile.
    /// It runs on a vCPU thread with this device locked: it must not lock the device,
    /// only hand the news to the event loop (which then calls `event_fds`).
    pub fn set_activation_hook(&mut self, hook: ActivationHook) {
        self.activation_hook = Some(hook);
    }

    /// The device's own fds to watch while it is active.
    pub fn event_fds(&self) -> Vec<(RawFd, u32)> {
        if self.activated {
            self.device.event_fds()
        } else {
            Vec::new()
        }
    }

    fn serving(&self) -> bool {
        self.activated && self.status & STATUS_NEEDS_RESET == 0
    }

    /// The guest EOIed the INTx line (KVM's resample eventfd fired): raise it again
    /// if the ISR still has bits the driver has not read.
    pub fn resample_intx(&self) {
        if self.signals.isr.load(Ordering::SeqCst) != 0 && !self.signals.msix_enabled() {
            let _ = self.signals.assert_intx();
        }
    }

    /// The interrupt the device gets at activation, e.g. to report a host-side
    /// configuration change (`trigger_config` bumps config_generation).
    pub fn interrupt(&self) -> Arc<dyn VirtioInterrupt> {
        self.signals.clone()
    }

    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// device_status as the driver reads it.
    pub fn status(&self) -> u8 {
        self.status
    }

    pub fn is_activated(&self) -> bool {
        self.activated
    }

    pub fn msix_vectors(&self) -> u16 {
        lock(&self.signals.msix).num_vectors()
    }

    fn needs_reset(&mut self, why: &str) {
        log::error!(
            "virtio-pci {:04x}: {why}; the device needs a reset",
            self.config.header().device_id
        );
        self.status |= STATUS_NEEDS_RESET;
        let _ = self.signals.trigger_config();
    }

    fn valid_vector(&self, v: u16) -> u16 {
        if v != VIRTIO_MSI_NO_VECTOR && v >= self.msix_vectors() {
            VIRTIO_MSI_NO_VECTOR
        } else {
            v
        }
    }

    /// The selected queue, if it exists.
    fn selected(&self) -> Option<&QueueConfig> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// The selected queue while the driver may still configure it.
    fn selected_setup(&mut self) -> Option<&mut QueueConfig> {
        if self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        self.queues
            .get_mut(usize::from(self.queue_select))
            .filter(|q| !q.enable)
    }

    fn common_value(&self, field: u64) -> u64 {
        let word = |v: u64, select: u32| match select {
            0 => v & 0xffff_ffff,
            1 => v >> 32,
            _ => 0,
        };
        let q = self.selected();
        match field {
            DEVICE_FEATURE_SELECT => u64::from(self.device_feature_select),
            DEVICE_FEATURE => word(self.device.features(), self.device_feature_select),
            DRIVER_FEATURE_SELECT => u64::from(self.driver_feature_select),
            DRIVER_FEATURE => word(self.driver_features, self.driver_feature_select),
            MSIX_CONFIG => u64::from(self.signals.config_vector.load(Ordering::SeqCst)),
            NUM_QUEUES => self.queues.len() as u64,
            DEVICE_STATUS => u64::from(self.status),
            CONFIG_GENERATION => u64::from(self.signals.generation.load(Ordering::SeqCst)),
            QUEUE_SELECT => u64::from(self.queue_select),
            QUEUE_SIZE => q.map_or(0, |q| u64::from(q.size)),
            QUEUE_MSIX_VECTOR => u64::from(
                self.signals
                    .queue_vectors
                    .get(usize::from(self.queue_select))
                    .map_or(VIRTIO_MSI_NO_VECTOR, |v| v.load(Ordering::SeqCst)),
            ),
            QUEUE_ENABLE => q.map_or(0, |q| u64::from(q.enable)),
            QUEUE_NOTIFY_OFF => q.map_or(0, |_| u64::from(self.queue_select)),
            QUEUE_DESC => q.map_or(0, |q| q.desc),
            QUEUE_DRIVER => q.map_or(0, |q| q.driver),
            QUEUE_DEVICE => q.map_or(0, |q| q.device),
            _ => 0,
        }
    }

    fn set_common(&mut self, field: u64, v: u64) {
        match field {
            DEVICE_FEATURE_SELECT => self.device_feature_select = v as u32,
            DRIVER_FEATURE_SELECT => self.driver_feature_select = v as u32,
            // Features are fixed once FEATURES_OK is accepted.
            DRIVER_FEATURE if self.status & STATUS_FEATURES_OK == 0 => {
                let w = v & 0xffff_ffff;
                match self.driver_feature_select {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | w,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (w << 32),
                    _ => {}
                }
            }
            MSIX_CONFIG => {
                let v = self.valid_vector(v as u16);
                self.signals.config_vector.store(v, Ordering::SeqCst);
            }
            DEVICE_STATUS => self.write_status(v as u8),
            QUEUE_SELECT => self.queue_select = v as u16,
            QUEUE_MSIX_VECTOR => {
                let vector = self.valid_vector(v as u16);
                if let Some(slot) = self
                    .signals
                    .queue_vectors
                    .get(usize::from(self.queue_select))
                {
                    slot.store(vector, Ordering::SeqCst);
                }
            }
            QUEUE_SIZE => {
                if let Some(q) = self.selected_setup() {
                    q.size = v as u16;
                }
            }
            // Only 1 may be written: disabling a queue takes a reset (or VIRTIO_F_RING_RESET).
            QUEUE_ENABLE if v as u16 == 1 => {
                if let Some(q) = self.selected_setup() {
                    q.enable = true;
                }
            }
            QUEUE_DESC => {
                if let Some(q) = self.selected_setup() {
                    q.desc = v;
                }
            }
            QUEUE_DRIVER => {
                if let Some(q) = self.selected_setup() {
                    q.driver = v;
                }
            }
            QUEUE_DEVICE => {
                if let Some(q) = self.selected_setup() {
                    q.device = v;
                }
            }
            _ => {}
        }
    }

    fn read_common(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let off = offset + i as u64;
            *b = match common_field(off) {
                Some((field, _)) => (self.common_value(field) >> (8 * (off - field))) as u8,
                None => 0,
            };
        }
    }

    /// Any access width and alignment: each field the access touches is read,
    /// patched with the bytes written, and written back once.
    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let mut i = 0;
        while i < data.len() {
            let Some((field, width)) = common_field(offset + i as u64) else {
                i += 1;
                continue;
            };
            let mut v = self.common_value(field);
            while i < data.len() && offset + (i as u64) < field + width {
                let shift = 8 * (offset + i as u64 - field);
                v = (v & !(0xff << shift)) | (u64::from(data[i]) << shift);
                i += 1;
            }
            self.set_common(field, v);
        }
    }

    /// The device_status state machine (virtio 1.2, 3.1.1). Bits only accumulate
    /// until a reset; NEEDS_RESET is the device's to set.
    fn write_status(&mut self, v: u8) {
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        let mut new = old | (v & !STATUS_NEEDS_RESET);
        if new & STATUS_FEATURES_OK != 0 && old & STATUS_FEATURES_OK == 0 {
            let offered = self.device.features();
            let f = self.driver_features;
            if f & !offered == 0 && f & VIRTIO_F_VERSION_1 != 0 {
                self.device.ack_features(f);
            } else {
                // The driver reads FEATURES_OK back clear and gives up on the device.
                new &= !STATUS_FEATURES_OK;
            }
        }
        let start = new & STATUS_DRIVER_OK != 0 && old & STATUS_DRIVER_OK == 0;
        if start && (new & STATUS_FEATURES_OK == 0 || new & STATUS_FAILED != 0) {
            new &= !STATUS_DRIVER_OK;
        }
        self.status = new;
        if start && new & STATUS_DRIVER_OK != 0 {
            self.activate();
        }
    }

    /// Queues `0..=last enabled`, in index order (so `queues[i]` is queue i); a
    /// queue the driver left disabled is passed with `ready() == false`.
    fn build_queues(&self) -> Result<Vec<Queue>, String> {
        let n = self
            .queues
            .iter()
            .rposition(|q| q.enable)
            .map_or(0, |i| i + 1);
        let event_idx = self.driver_features & VIRTIO_F_RING_EVENT_IDX != 0;
        let mut out = Vec::with_capacity(n);
        for (i, cfg) in self.queues[..n].iter().enumerate() {
            let err = |e: virtio_queue::Error| format!("queue {i}: {e}");
            let mut q = Queue::new(cfg.max_size).map_err(err)?;
            if cfg.enable {
                q.try_set_size(cfg.size).map_err(err)?;
                q.try_set_desc_table_address(GuestAddress(cfg.desc))
                    .map_err(err)?;
                q.try_set_avail_ring_address(GuestAddress(cfg.driver))
                    .map_err(err)?;
                q.try_set_used_ring_address(GuestAddress(cfg.device))
                    .map_err(err)?;
                q.set_event_idx(event_idx);
                q.set_ready(true);
                if !q.is_valid(&self.mem) {
                    return Err(format!("queue {i}: its rings are not in guest memory"));
                }
            }
            out.push(q);
        }
        Ok(out)
    }

    fn activate(&mut self) {
        let result = self.build_queues().and_then(|queues| {
            let interrupt: Arc<dyn VirtioInterrupt> = self.signals.clone();
            self.device
                .activate(self.mem.clone(), interrupt, queues)
                .map_err(|e| e.to_string())
        });
        match result {
            Ok(()) => {
                self.activated = true;
                if let Some(hook) = &self.activation_hook {
                    hook(true);
                }
            }
            Err(e) => self.needs_reset(&format!("activation failed: {e}")),
        }
    }

    /// Back to the state after power-on, except the MSI-X table and its control bits,
    /// which belong to the PCI function, not to the virtio device.
    fn reset(&mut self) {
        if self.status != 0 || self.activated {
            self.device.reset();
        }
        if self.activated {
            if let Some(hook) = &self.activation_hook {
                hook(false);
            }
        }
        self.activated = false;
        self.status = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        for q in &mut self.queues {
            *q = QueueConfig::new(q.max_size);
        }
        self.signals.isr.store(0, Ordering::SeqCst);
        self.signals
            .config_vector
            .store(VIRTIO_MSI_NO_VECTOR, Ordering::SeqCst);
        for v in &self.signals.queue_vectors {
            v.store(VIRTIO_MSI_NO_VECTOR, Ordering::SeqCst);
        }
    }

    fn pci_cfg_data_reg(&self) -> usize {
        (self.pci_cfg_cap + PCI_CFG_DATA) / 4
    }

    /// The BAR access the PCI_CFG capability selects, if it is a valid one (our BAR,
    /// 1, 2 or 4 bytes, aligned).
    fn pci_cfg_window(&self) -> Option<(u64, usize)> {
        let c = &self.config;
        let bar = c.read_u8(self.pci_cfg_cap + PCI_CFG_BAR);
        let offset = c.read_u32(self.pci_cfg_cap + PCI_CFG_OFFSET);
        let len = c.read_u32(self.pci_cfg_cap + PCI_CFG_LENGTH);
        (bar == VIRTIO_PCI_BAR && matches!(len, 1 | 2 | 4) && offset % len == 0)
            .then_some((u64::from(offset), len as usize))
    }
}

/// A virtio_pci_cap after its ID and next bytes (virtio 1.2, 4.1.4).
fn virtio_cap(cfg_type: u8, offset: u32, length: u32, extra: &[u8]) -> Vec<u8> {
    let mut b = vec![(16 + extra.len()) as u8, cfg_type, VIRTIO_PCI_BAR, 0, 0, 0];
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(&length.to_le_bytes());
    b.extend_from_slice(extra);
    b
}

impl PciDevice for VirtioPciDevice {
    fn config(&self) -> &PciConfiguration {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }

    fn read_config(&mut self, reg: usize) -> u32 {
        if reg == self.pci_cfg_data_reg() {
            if let Some((offset, len)) = self.pci_cfg_window() {
                let mut buf = [0u8; 4];
                self.read_bar(VIRTIO_PCI_BAR, offset, &mut buf[..len]);
                let at = self.pci_cfg_cap + PCI_CFG_DATA;
                self.config.write_u32(at, u32::from_le_bytes(buf));
            }
        }
        let mut v = self.config.read_reg(reg);
        if reg == 1 && self.signals.isr.load(Ordering::SeqCst) != 0 && !self.signals.msix_enabled()
        {
            v |= u32::from(STATUS_INTERRUPT) << 16;
        }
        v
    }

    fn write_config(&mut self, reg: usize, value: u32, mask: u32) {
        self.config.write_reg(reg, value, mask);
        if reg == 1 {
            let disabled = self.config.command() & COMMAND_INTX_DISABLE != 0;
            let was = self.signals.intx_disabled.swap(disabled, Ordering::SeqCst);
            if was && !disabled {
                self.resample_intx();
            }
        } else if reg == self.msix_cap / 4 {
            let ctrl = self.config.read_u16(self.msix_cap + 2);
            lock(&self.signals.msix).set_control(ctrl);
        } else if reg == self.pci_cfg_data_reg() {
            if let Some((offset, len)) = self.pci_cfg_window() {
                let data = self
                    .config
                    .read_u32(self.pci_cfg_cap + PCI_CFG_DATA)
                    .to_le_bytes();
                self.write_bar(VIRTIO_PCI_BAR, offset, &data[..len]);
            }
        }
    }

    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some((region, rel)) = region_of(bar, offset, data.len()) else {
            return;
        };
        match region {
            COMMON_CFG_OFFSET => self.read_common(rel, data),
            ISR_CFG_OFFSET if rel == 0 => data[0] = self.signals.isr.swap(0, Ordering::SeqCst),
            DEVICE_CFG_OFFSET => self.device.read_config(rel, data),
            MSIX_TABLE_OFFSET => lock(&self.signals.msix).read_table(rel, data),
            MSIX_PBA_OFFSET => lock(&self.signals.msix).read_pba(rel, data),
            _ => {}
        }
    }

    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        let Some((region, rel)) = region_of(bar, offset, data.len()) else {
            return;
        };
        match region {
            COMMON_CFG_OFFSET => self.write_common(rel, data),
            DEVICE_CFG_OFFSET => self.device.write_config(rel, data),
            NOTIFY_CFG_OFFSET => {
                if let Ok(q) = u16::try_from(rel / u64::from(NOTIFY_OFF_MULTIPLIER)) {
                    self.process_queue(q);
                }
            }
            MSIX_TABLE_OFFSET => lock(&self.signals.msix).write_table(rel, data),
            _ => {}
        }
    }

    fn notify_addresses(&self) -> Vec<(u64, u16)> {
        VirtioPciDevice::notify_addresses(self)
    }
}

/// The 4 KiB region of our BAR an access falls in and its offset there; `None` for
/// another BAR, an empty or over-long access, or one straddling two regions.
fn region_of(bar: u8, offset: u64, len: usize) -> Option<(u64, u64)> {
    if bar != VIRTIO_PCI_BAR || len == 0 || len > 8 {
        return None;
    }
    let last = offset.checked_add(len as u64 - 1)?;
    let region = offset & !(REGION_SIZE - 1);
    (last < VIRTIO_PCI_BAR_SIZE && last & !(REGION_SIZE - 1) == region)
        .then_some((region, offset - region))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::pci::msix::tests::{Event, Recorder};
    use crate::pci::{MsiMessage, PciAddress, PciBus};
    use crate::virtio::{ActivateError, DeviceError, STATUS_ACKNOWLEDGE, STATUS_DRIVER};
    use std::sync::atomic::AtomicUsize;

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
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
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
            self.set_status(
                STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
            );
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

    #[test]
    fn pci_identity_and_capabilities() {
        let mut rig = rig();
        let d = &mut rig.dev;
        assert_eq!(d.read_config(0), 0x1042_1af4, "1af4:1040 + block");
        assert_eq!(d.read_config(2), 0x0100_0001, "class 01/00, revision 1");
        assert_eq!(d.read_config(11), 0x1100_1af4);
        assert_eq!(d.read_config(15) >> 8 & 0xff, 1, "INTA");
        assert_ne!(
            d.read_config(1) >> 16 & u32::from(crate::pci::config::STATUS_CAP_LIST),
            0
        );
        // BAR 0: 64-bit, non-prefetchable, 32 KiB.
        d.write_config(4, 0xffff_ffff, 0xffff_ffff);
        d.write_config(5, 0xffff_ffff, 0xffff_ffff);
        assert_eq!(d.read_config(4), 0xffff_8004);
        assert_eq!(d.read_config(5), 0xffff_ffff);
        for reg in 6..10 {
            assert_eq!(d.read_config(reg), 0);
        }

        let list = caps(d);
        let mut vendor = Vec::new();
        for &(at, id) in &list {
            let c = d.config();
            if id == PCI_CAP_ID_VENDOR {
                vendor.push((
                    c.read_u8(at + 3),
                    c.read_u8(at + 2),
                    c.read_u8(at + 4),
                    c.read_u32(at + 8),
                    c.read_u32(at + 12),
                ));
                if c.read_u8(at + 3) == CAP_NOTIFY_CFG {
                    assert_eq!(c.read_u32(at + 16), 4, "notify_off_multiplier");
                }
            }
        }
        assert_eq!(
            vendor,
            [
                (CAP_COMMON_CFG, 16, 0, 0x0000, 0x38),
                (CAP_ISR_CFG, 16, 0, 0x1000, 1),
                (CAP_DEVICE_CFG, 16, 0, 0x2000, 0x1000),
                (CAP_NOTIFY_CFG, 20, 0, 0x3000, 12),
                (CAP_PCI_CFG, 20, 0, 0, 0),
            ]
        );
        let &(msix, _) = list.iter().find(|(_, id)| *id == MSIX_CAP_ID).unwrap();
        let c = d.config();
        assert_eq!(c.read_u16(msix + 2), 3, "4 vectors: 3 queues + config");
        assert_eq!(c.read_u32(msix + 4), 0x4000, "table in BAR 0");
        assert_eq!(c.read_u32(msix + 8), 0x5000, "PBA in BAR 0");
    }

    #[test]
    fn other_device_types_get_their_ids_and_classes() {
        assert_eq!(class_of(TYPE_NET), (0x02, 0x00));
        assert_eq!(class_of(TYPE_CONSOLE), (0x07, 0x80));
        assert_eq!(class_of(99), (0xff, 0x00));
    }

    #[test]
    fn feature_negotiation_refuses_unknown_features() {
        let mut rig = rig();
        rig.w(DEVICE_FEATURE_SELECT, 0, 4);
        assert_eq!(
            rig.r(DEVICE_FEATURE, 4),
            VIRTIO_F_RING_EVENT_IDX | FEATURE_X
        );
        rig.w(DEVICE_FEATURE_SELECT, 1, 4);
        assert_eq!(rig.r(DEVICE_FEATURE, 4), 1, "VERSION_1");
        rig.w(DEVICE_FEATURE_SELECT, 2, 4);
        assert_eq!(rig.r(DEVICE_FEATURE, 4), 0);

        // A feature the device does not offer.
        rig.negotiate(VIRTIO_F_VERSION_1 | 1 << 40);
        assert_eq!(rig.status(), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        assert_eq!(rig.fake.lock().unwrap().acked, None);
        // Without VERSION_1 a modern device refuses too.
        rig.set_status(0);
        rig.negotiate(FEATURE_X);
        assert_eq!(rig.status() & STATUS_FEATURES_OK, 0);
        // DRIVER_OK without FEATURES_OK does not start the device.
        rig.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK);
        assert_eq!(rig.status() & STATUS_DRIVER_OK, 0);
        assert!(!rig.dev.is_activated());

        rig.set_status(0);
        let want = VIRTIO_F_VERSION_1 | FEATURE_X;
        rig.negotiate(want);
        assert_eq!(rig.status() & STATUS_FEATURES_OK, STATUS_FEATURES_OK);
        assert_eq!(rig.fake.lock().unwrap().acked, Some(want));
        rig.w(DRIVER_FEATURE_SELECT, 0, 4);
        assert_eq!(rig.r(DRIVER_FEATURE, 4), FEATURE_X);
        // Frozen after FEATURES_OK.
        rig.w(DRIVER_FEATURE, 0, 4);
        assert_eq!(rig.r(DRIVER_FEATURE, 4), FEATURE_X);
        // The driver cannot set NEEDS_RESET, nor clear a bit without a reset.
        rig.set_status(STATUS_NEEDS_RESET);
        assert_eq!(
            rig.status(),
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK
        );
    }

    #[test]
    fn queue_setup_then_driver_ok_activates_with_the_guest_rings() {
        let mut rig = rig();
        assert_eq!(rig.r(NUM_QUEUES, 2), 3);
        rig.w(QUEUE_SELECT, 1, 2);
        assert_eq!(
            rig.r(QUEUE_SIZE, 2),
            128,
            "max size until the driver shrinks it"
        );
        assert_eq!(rig.r(QUEUE_NOTIFY_OFF, 2), 1);
        assert_eq!(rig.r(QUEUE_MSIX_VECTOR, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
        rig.w(QUEUE_SELECT, 7, 2);
        assert_eq!(rig.r(QUEUE_SIZE, 2), 0, "no such queue");
        rig.w(QUEUE_SIZE, 64, 2);
        rig.w(QUEUE_ENABLE, 1, 2);

        rig.start();
        let s = rig.fake.lock().unwrap();
        assert_eq!(
            s.queues.as_deref().unwrap(),
            [
                (true, 128, 0x1000, 0x2000, 0x3000, true),
                (true, 128, 0x4000, 0x5000, 0x6000, true),
            ],
            "queues 0..=last enabled, in order, with the driver's addresses"
        );
        drop(s);
        rig.w(QUEUE_SELECT, 0, 2);
        assert_eq!(rig.r(QUEUE_DESC, 8), 0x1000);
        assert_eq!(rig.r(QUEUE_DRIVER + 4, 4), 0);
        assert_eq!(rig.r(QUEUE_ENABLE, 2), 1);
        // Queue registers are frozen once the device runs.
        rig.w(QUEUE_DESC, 0x8000, 8);
        assert_eq!(rig.r(QUEUE_DESC, 8), 0x1000);
    }

    #[test]
    fn a_gap_in_enabled_queues_is_passed_not_ready() {
        let mut rig = rig();
        rig.negotiate(VIRTIO_F_VERSION_1);
        rig.setup_queue(0, 256);
        rig.setup_queue(2, 64);
        rig.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        let s = rig.fake.lock().unwrap();
        let q = s.queues.as_deref().unwrap();
        assert_eq!(q.len(), 3);
        assert_eq!((q[0].0, q[1].0, q[2].0), (true, false, true));
        assert!(!q[0].5, "EVENT_IDX not negotiated");
    }

    #[test]
    fn bad_rings_or_a_failing_device_set_needs_reset() {
        for case in 0..3 {
            let mut rig = rig();
            rig.negotiate(VIRTIO_F_VERSION_1);
            rig.setup_queue(0, 128);
            match case {
                0 => {
                    rig.w(QUEUE_SELECT, 1, 2);
                    rig.w(QUEUE_SIZE, 100, 2); // not a power of two
                    rig.w(QUEUE_ENABLE, 1, 2);
                }
                1 => {
                    rig.w(QUEUE_SELECT, 1, 2);
                    rig.w(QUEUE_DESC, 0x7fff_0000_0000, 8); // outside guest memory
                    rig.w(QUEUE_ENABLE, 1, 2);
                }
                _ => rig.fake.lock().unwrap().fail_activate = true,
            }
            rig.set_status(
                STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
            );
            assert!(!rig.dev.is_activated(), "case {case}");
            assert_ne!(rig.status() & STATUS_NEEDS_RESET, 0, "case {case}");
            assert_eq!(rig.intx.count(), 1, "config interrupt, case {case}");
            assert_eq!(rig.r(ISR_CFG_OFFSET, 1), u64::from(ISR_CONFIG));
            // Kicks are ignored until the driver resets.
            rig.w(NOTIFY_CFG_OFFSET, 0, 2);
            assert!(rig.fake.lock().unwrap().processed.is_empty());
        }
    }

    #[test]
    fn reset_clears_the_device_but_keeps_the_msix_table() {
        let mut rig = rig();
        rig.w(MSIX_TABLE_OFFSET + 16, 0xfee0_0000, 4);
        rig.w(MSIX_TABLE_OFFSET + 24, 0x4021, 4);
        rig.w(MSIX_CONFIG, 1, 2);
        rig.w(QUEUE_SELECT, 0, 2);
        rig.w(QUEUE_MSIX_VECTOR, 2, 2);
        rig.start();
        rig.set_status(0);
        assert_eq!(rig.status(), 0);
        assert!(!rig.dev.is_activated());
        let s = rig.fake.lock().unwrap();
        assert_eq!(s.resets, 1);
        assert!(s.queues.is_none());
        drop(s);
        assert_eq!(rig.r(QUEUE_SELECT, 2), 0);
        assert_eq!(rig.r(QUEUE_SIZE, 2), 256, "back to the maximum");
        assert_eq!(rig.r(QUEUE_ENABLE, 2), 0);
        assert_eq!(rig.r(QUEUE_DESC, 8), 0);
        assert_eq!(rig.r(QUEUE_MSIX_VECTOR, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
        assert_eq!(rig.r(MSIX_CONFIG, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
        rig.w(DRIVER_FEATURE_SELECT, 0, 4);
        assert_eq!(rig.r(DRIVER_FEATURE, 4), 0);
        assert_eq!(rig.r(MSIX_TABLE_OFFSET + 16, 4), 0xfee0_0000);
        assert_eq!(rig.r(MSIX_TABLE_OFFSET + 24, 4), 0x4021);
        // Negotiation works again from scratch.
        rig.start();
        assert_eq!(rig.fake.lock().unwrap().queues.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn activation_hook_follows_driver_ok_and_reset() {
        let mut rig = rig();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        rig.dev
            .set_activation_hook(Box::new(move |on| s.lock().unwrap().push(on)));
        assert!(rig.dev.event_fds().is_empty());
        rig.set_status(0); // reset before start: nothing to report
        rig.start();
        rig.set_status(0);
        rig.set_status(0);
        assert_eq!(*seen.lock().unwrap(), [true, false]);
    }

    #[test]
    fn intx_sets_isr_which_reading_clears() {
        let mut rig = rig();
        rig.start();
        let irq = rig.fake.lock().unwrap().interrupt.clone().unwrap();
        irq.trigger_queue(0).unwrap();
        assert_eq!(rig.intx.count(), 1);
        assert_ne!(
            rig.dev.read_config(1) & (u32::from(STATUS_INTERRUPT) << 16),
            0
        );
        // The guest EOIs before reading the ISR: the line is raised again.
        rig.dev.resample_intx();
        assert_eq!(rig.intx.count(), 2);
        assert_eq!(rig.r(ISR_CFG_OFFSET, 1), u64::from(ISR_QUEUE));
        assert_eq!(rig.r(ISR_CFG_OFFSET, 1), 0, "read clears");
        assert_eq!(
            rig.dev.read_config(1) & (u32::from(STATUS_INTERRUPT) << 16),
            0
        );
        rig.dev.resample_intx();
        assert_eq!(rig.intx.count(), 2);

        irq.trigger_config().unwrap();
        assert_eq!(rig.r(ISR_CFG_OFFSET, 4), u64::from(ISR_CONFIG));
        irq.trigger_queue(9).unwrap(); // no such queue
        assert_eq!(rig.intx.count(), 3);

        // INTx disabled in the command register: ISR only, the line stays quiet
        // until the guest enables it again.
        rig.dev
            .write_config(1, u32::from(COMMAND_INTX_DISABLE), 0xffff);
        irq.trigger_queue(1).unwrap();
        assert_eq!(rig.intx.count(), 3);
        rig.dev.write_config(1, 0, 0xffff);
        assert_eq!(rig.intx.count(), 4);
        assert!(rig
            .msi
            .take()
            .iter()
            .all(|e| !matches!(e, Event::Trigger(_))));
    }

    #[test]
    fn msix_vectors_per_queue_and_config() {
        let mut rig = rig();
        let msix_cap = caps(&mut rig.dev)
            .into_iter()
            .find(|(_, id)| *id == MSIX_CAP_ID)
            .unwrap()
            .0;
        // Vector 1: program and unmask through the BAR.
        rig.w(MSIX_TABLE_OFFSET + 16, 0xfee0_0000, 4);
        rig.w(MSIX_TABLE_OFFSET + 20, 0, 4);
        rig.w(MSIX_TABLE_OFFSET + 24, 0x31, 4);
        rig.w(MSIX_TABLE_OFFSET + 28, 0, 4);
        // MSI-X enable through configuration space (Message Control, high byte).
        rig.dev.write_config(msix_cap / 4, 0x8000_0000, 0xff00_0000);
        let msg = MsiMessage {
            addr: 0xfee0_0000,
            data: 0x31,
        };
        assert!(rig.msi.take().contains(&Event::Update(1, msg, false)));

        rig.w(MSIX_CONFIG, 0, 2);
        rig.w(QUEUE_SELECT, 0, 2);
        rig.w(QUEUE_MSIX_VECTOR, 1, 2);
        assert_eq!(rig.r(QUEUE_MSIX_VECTOR, 2), 1);
        rig.w(QUEUE_SELECT, 1, 2);
        rig.w(QUEUE_MSIX_VECTOR, 99, 2);
        assert_eq!(
            rig.r(QUEUE_MSIX_VECTOR, 2),
            u64::from(VIRTIO_MSI_NO_VECTOR),
            "a vector beyond the table is refused"
        );
        rig.start();
        let irq = rig.fake.lock().unwrap().interrupt.clone().unwrap();
        irq.trigger_queue(0).unwrap();
        assert_eq!(rig.msi.take(), [Event::Trigger(1)]);
        irq.trigger_queue(1).unwrap(); // NO_VECTOR: nothing at all
        assert!(rig.msi.take().is_empty());
        // Vector 0 is still masked: the config interrupt pends in the PBA.
        let generation = rig.r(CONFIG_GENERATION, 1);
        irq.trigger_config().unwrap();
        assert!(rig.msi.take().is_empty());
        assert_eq!(rig.r(MSIX_PBA_OFFSET, 8), 1);
        assert_eq!(rig.r(CONFIG_GENERATION, 1), generation + 1);
        assert_eq!(rig.r(ISR_CFG_OFFSET, 1), 0, "no ISR with MSI-X");
        assert_eq!(rig.intx.count(), 0);
        rig.w(MSIX_TABLE_OFFSET + 12, 0, 4); // unmask vector 0
        assert_eq!(rig.msi.take().last(), Some(&Event::Trigger(0)));
    }

    #[test]
    fn notify_writes_and_addresses() {
        let mut rig = rig();
        assert!(rig.dev.notify_addresses().is_empty(), "BAR not mapped");
        rig.w(NOTIFY_CFG_OFFSET + 4, 1, 2); // before DRIVER_OK: ignored
        rig.start();
        rig.w(NOTIFY_CFG_OFFSET + 4, 1, 2);
        rig.w(NOTIFY_CFG_OFFSET, 0, 2);
        rig.w(NOTIFY_CFG_OFFSET + 8, 2, 2); // queue 2 was not enabled
        rig.w(NOTIFY_CFG_OFFSET + 0x800, 0, 2); // no such queue
        assert_eq!(rig.fake.lock().unwrap().processed, [1, 0]);
        rig.dev.process_queue(1);
        rig.dev.process_queue(u16::MAX);
        assert_eq!(rig.fake.lock().unwrap().processed, [1, 0, 1]);

        // Placed on a bus, the doorbells follow BAR 0.
        let bus = PciBus::new();
        let fake = rig.fake.clone();
        let dev = Arc::new(Mutex::new(rig.dev));
        let mut alloc = crate::pci::BarAllocator::new(0xc000_0000..0xe000_0000, 0x1000..0x1_0000);
        alloc.assign(&mut *dev.lock().unwrap()).unwrap();
        let addr = PciAddress::new(0, 4, 0).unwrap();
        bus.add_device(addr, dev.clone(), "blk0").unwrap();
        assert_eq!(
            dev.lock().unwrap().notify_addresses(),
            [(0xc000_3000, 0), (0xc000_3004, 1), (0xc000_3008, 2)]
        );
        assert_eq!(bus.info()[1].irq, Some(16), "slot 4 INTA");

        // A device error: NEEDS_RESET and a config interrupt; later kicks are dropped.
        fake.lock().unwrap().fail_queue = true;
        dev.lock().unwrap().process_queue(0);
        let mut d = dev.lock().unwrap();
        assert_ne!(d.status() & STATUS_NEEDS_RESET, 0);
        assert_eq!(rig.intx.count(), 1);
        d.process_queue(0);
        assert_eq!(fake.lock().unwrap().processed, [1, 0, 1, 0]);
    }

    #[test]
    fn device_config_passes_through() {
        let mut rig = rig();
        assert_eq!(rig.r(DEVICE_CFG_OFFSET + 4, 4), 0x0706_0504);
        rig.w(DEVICE_CFG_OFFSET + 1, 0xaa, 1);
        assert_eq!(rig.fake.lock().unwrap().config[1], 0xaa);
    }

    #[test]
    fn pci_cfg_window_reaches_the_bar() {
        let mut rig = rig();
        let cap = rig.dev.pci_cfg_cap;
        let reg = |off: usize| (cap + off) / 4;
        // bar = 0 (byte 0 of the dword at cap + 4), offset, length.
        rig.dev.write_config(reg(PCI_CFG_BAR), 0, 0xff);
        rig.dev
            .write_config(reg(PCI_CFG_OFFSET), DEVICE_STATUS as u32, 0xffff_ffff);
        rig.dev.write_config(reg(PCI_CFG_LENGTH), 1, 0xffff_ffff);
        rig.dev
            .write_config(reg(PCI_CFG_DATA), u32::from(STATUS_ACKNOWLEDGE), 0xff);
        assert_eq!(rig.status(), STATUS_ACKNOWLEDGE);
        rig.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        assert_eq!(
            rig.dev.read_config(reg(PCI_CFG_DATA)),
            u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER)
        );
        // A misaligned or over-long window does nothing.
        rig.dev.write_config(reg(PCI_CFG_LENGTH), 3, 0xffff_ffff);
        rig.dev.write_config(reg(PCI_CFG_DATA), 0, 0xffff_ffff);
        assert_eq!(rig.status(), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        // The capability's read-only fields stay put.
        rig.dev.write_config(cap / 4, 0xffff_ffff, 0xffff_ffff);
        assert_eq!(rig.dev.config().read_u8(cap + 3), CAP_PCI_CFG);
    }

    #[test]
    fn any_guest_access_is_safe() {
        let mut rig = rig();
        rig.start();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let offsets = [
            0u64,
            1,
            0x37,
            0x38,
            0xfff,
            0x1000,
            0x1001,
            0x2ffe,
            0x3ffc,
            0x4ffe,
            0x5000,
            0x7fff,
            0x8000,
            u64::MAX - 3,
            u64::MAX,
        ];
        for i in 0..20_000 {
            let off = if i % 2 == 0 {
                offsets[(next() % offsets.len() as u64) as usize]
            } else {
                next() % 0x9000
            };
            let len = (next() % 10) as usize;
            let mut buf = [0u8; 10];
            let bar = (next() % 3) as u8;
            if next() % 2 == 0 {
                rig.dev.read_bar(bar, off, &mut buf[..len]);
            } else {
                // Never write 0 status etc. deliberately: random data, random field.
                buf.iter_mut().for_each(|b| *b = next() as u8);
                rig.dev.write_bar(bar, off, &buf[..len]);
            }
            let reg = (next() % 1100) as usize;
            if next() % 2 == 0 {
                rig.dev.read_config(reg);
            } else {
                rig.dev.write_config(reg, next() as u32, next() as u32);
            }
        }
    }
}
