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

//!
//! Split by what the guest touches:
//! - `layout`: the BAR layout, the virtio capabilities and the VIRTIO_PCI_CAP_PCI_CFG
//!   window;
//! - `irq`: the interrupt side (notify -> ISR / MSI-X vector / INTx) shared with the
//!   device once activated;
//! - `common`: the common configuration structure: feature negotiation, queue setup,
//!   device status, activation and reset.
//!
//! - `state`: the migration state ([`VirtioPciState`]) and its restore.
//!
//! Dependencies run one way: `layout` and `irq` use no sibling; `common` uses `irq`;
//! `state` uses `common` and `irq`.
//! This file holds [`VirtioPciDevice`], its construction and the [`PciDevice`] impl
//! that routes config-space and BAR accesses to the pieces.
//!
//! Lock order: the transport's own `Mutex<VirtioPciDevice>` (held by the bus or the
//! event loop) before the MSI-X table lock inside `Signals`; `Signals` never calls
//! back into the device.

mod common;
mod irq;
mod layout;
mod state;
#[cfg(test)]
pub(crate) mod testutil;

pub use state::{VirtioPciQueueState, VirtioPciState, VirtioPciStateError};

pub use layout::{
    COMMON_CFG_OFFSET, DEVICE_CFG_OFFSET, ISR_CFG_OFFSET, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET,
    NOTIFY_CFG_OFFSET, NOTIFY_OFF_MULTIPLIER, VIRTIO_PCI_BAR, VIRTIO_PCI_BAR_SIZE,
};

use common::QueueConfig;
use irq::Signals;
use layout::{
    region_of, virtio_cap, CAP_COMMON_CFG, CAP_DEVICE_CFG, CAP_ISR_CFG, CAP_NOTIFY_CFG,
    CAP_PCI_CFG, COMMON_CFG_LEN, PCI_CAP_ID_VENDOR, PCI_CFG_BAR, PCI_CFG_DATA, PCI_CFG_OFFSET,
    REGION_SIZE,
};

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::GuestMemoryMmap;

use super::{
    VirtioDevice, VirtioInterrupt, STATUS_NEEDS_RESET, TYPE_BALLOON, TYPE_BLOCK, TYPE_CONSOLE,
    TYPE_NET,
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

/// Queues the layout has room for: one MSI-X vector each plus config fits the 4 KiB
/// table page (16 bytes a vector).
pub const MAX_QUEUES: usize = 255;
const MAX_QUEUE_SIZE: u16 = 32768;

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

#[cfg(test)]
mod tests;
