//! Migration state of the virtio-pci transport: [`VirtioPciState`], everything a
//! guest driver programmed through the function (configuration space, MSI-X table,
//! common configuration, each queue's rings and how far the device got in them) plus
//! the wrapped device's own state, and the restore that brings a freshly built
//! transport (same command line) to where the source stopped.
//!
//! Invariants: everything restored state controls is checked before any of it is
//! applied, so a refused state leaves the transport as it was built; an activation
//! that fails afterwards (rings outside guest memory) resets the virtio side as a
//! driver reset would. Nothing in the state can panic the VMM. A device the driver had started is activated again with its queues at the
//! saved positions, so the next kick is served as it would have been on the source.
//!
//! Uses `common` (queue configuration, activation) and `irq` (the vectors, ISR and
//! config generation it holds).

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use virtio_queue::QueueT;

use super::common::QueueConfig;
use super::{lock, VirtioPciDevice, VIRTIO_MSI_NO_VECTOR};
use crate::pci::config::COMMAND_INTX_DISABLE;
use crate::pci::{MsixState, PciConfigState};
use crate::virtio::{VirtioDeviceState, STATUS_DRIVER_OK, STATUS_FEATURES_OK, VIRTIO_F_VERSION_1};

/// One queue as the driver set it up, and the device's progress in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioPciQueueState {
    /// queue_size as the driver wrote it.
    pub size: u16,
    /// queue_enable.
    pub enabled: bool,
    /// Guest addresses of the descriptor table, the available (driver) ring and the
    /// used (device) ring.
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
    /// queue_msix_vector.
    pub msix_vector: u16,
    /// The next available-ring entry the device will take, and the next used-ring
    /// entry it will fill (0 for a queue not served).
    pub next_avail: u16,
    pub next_used: u16,
}

/// The state of a virtio-pci function and its device, serde-ready for migration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioPciState {
    /// BARs, command register, MSI-X control, the PCI_CFG window.
    pub pci_config: PciConfigState,
    pub msix: MsixState,
    pub device_feature_select: u32,
    pub driver_feature_select: u32,
    /// The features the driver wrote (and the device acked, with FEATURES_OK).
    pub driver_features: u64,
    /// device_status.
    pub status: u8,
    /// The device was serving its queues (DRIVER_OK and a successful activation).
    pub activated: bool,
    pub queue_select: u16,
    pub config_generation: u8,
    pub isr: u8,
    /// msix_config.
    pub config_msix_vector: u16,
    pub queues: Vec<VirtioPciQueueState>,
    /// The wrapped device's own state.
    pub device: VirtioDeviceState,
}

#[derive(Debug, thiserror::Error)]
pub enum VirtioPciStateError {
    #[error("cannot save the virtio device: {0}")]
    Save(String),
    #[error("invalid virtio-pci state: {0}")]
    Invalid(String),
    #[error("cannot restore the virtio device: {0}")]
    Device(String),
    #[error("cannot restart the restored virtio device: {0}")]
    Activate(String),
}

fn invalid(why: String) -> VirtioPciStateError {
    VirtioPciStateError::Invalid(why)
}

impl VirtioDeviceState {
    /// The features the device state says the driver acked.
    fn acked_features(&self) -> u64 {
        match self {
            VirtioDeviceState::Balloon(s) => s.acked_features,
            VirtioDeviceState::Block(s) => s.acked_features,
            VirtioDeviceState::Net(s) => s.acked_features,
            VirtioDeviceState::Console(s) => s.acked_features,
        }
    }
}

impl VirtioPciDevice {
    /// The state to migrate. Take it with the vCPUs paused and the device quiet (e.g.
    /// virtio-blk refuses while requests are in flight).
    pub fn state(&self) -> Result<VirtioPciState, VirtioPciStateError> {
        let device = self
            .device
            .save_state()
            .map_err(VirtioPciStateError::Save)?;
        let live = if self.activated {
            self.device.queue_positions()
        } else {
            Vec::new()
        };
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let (next_avail, next_used) = live.get(i).copied().unwrap_or((0, 0));
                VirtioPciQueueState {
                    size: q.size,
                    enabled: q.enable,
                    desc: q.desc,
                    driver: q.driver,
                    device: q.device,
                    msix_vector: self
                        .signals
                        .queue_vectors
                        .get(i)
                        .map_or(VIRTIO_MSI_NO_VECTOR, |v| v.load(Ordering::SeqCst)),
                    next_avail,
                    next_used,
                }
            })
            .collect();
        Ok(VirtioPciState {
            pci_config: self.config.state(),
            msix: lock(&self.signals.msix).state(),
            device_feature_select: self.device_feature_select,
            driver_feature_select: self.driver_feature_select,
            driver_features: self.driver_features,
            status: self.status,
            activated: self.activated,
            queue_select: self.queue_select,
            config_generation: self.signals.generation.load(Ordering::SeqCst),
            isr: self.signals.isr.load(Ordering::SeqCst),
            config_msix_vector: self.signals.config_vector.load(Ordering::SeqCst),
            queues,
            device,
        })
    }

    /// Restores `s` into this transport, built as the source's was and not touched by
    /// a driver yet, then restarts the device if the driver had started it. The machine
    /// then maps the BARs and registers [`Self::notify_addresses`] as after a guest's
    /// own BAR programming.
    pub fn restore(&mut self, s: &VirtioPciState) -> Result<(), VirtioPciStateError> {
        if self.status != 0 || self.activated {
            return Err(invalid(
                "restore into a device a driver has already set up".into(),
            ));
        }
        self.check(s)?;
        let mut config = self.config.clone();
        config
            .restore(&s.pci_config)
            .map_err(|e| invalid(e.to_string()))?;
        // The device checks its state before it applies any of it; past this point
        // nothing fails but the activation, which resets what was restored.
        self.device
            .restore_state(&s.device)
            .map_err(VirtioPciStateError::Device)?;

        self.config = config;
        {
            let mut msix = lock(&self.signals.msix);
            msix.restore(s.msix.clone())
                .map_err(|e| invalid(e.to_string()))?;
            msix.set_control(self.config.read_u16(self.msix_cap + 2));
        }
        let intx_disabled = self.config.command() & COMMAND_INTX_DISABLE != 0;
        self.signals
            .intx_disabled
            .store(intx_disabled, Ordering::SeqCst);
        self.device_feature_select = s.device_feature_select;
        self.driver_feature_select = s.driver_feature_select;
        self.driver_features = s.driver_features;
        self.status = s.status;
        self.queue_select = s.queue_select;
        self.signals
            .generation
            .store(s.config_generation, Ordering::SeqCst);
        self.signals.isr.store(s.isr, Ordering::SeqCst);
        self.signals
            .config_vector
            .store(s.config_msix_vector, Ordering::SeqCst);
        for ((cfg, vector), q) in self
            .queues
            .iter_mut()
            .zip(&self.signals.queue_vectors)
            .zip(&s.queues)
        {
            *cfg = QueueConfig {
                max_size: cfg.max_size,
                size: q.size,
                enable: q.enabled,
                desc: q.desc,
                driver: q.driver,
                device: q.device,
            };
            vector.store(q.msix_vector, Ordering::SeqCst);
        }

        if s.activated {
            if let Err(e) = self.reactivate(s) {
                self.reset();
                return Err(VirtioPciStateError::Activate(e));
            }
        }
        // A level-triggered line the source had raised is raised again.
        self.resample_intx();
        Ok(())
    }

    /// Everything in `s` the transport itself can check before applying any of it.
    fn check(&self, s: &VirtioPciState) -> Result<(), VirtioPciStateError> {
        if s.queues.len() != self.queues.len() {
            return Err(invalid(format!(
                "{} queues; this device has {}",
                s.queues.len(),
                self.queues.len()
            )));
        }
        let vectors = s.msix.vectors().map_err(|e| invalid(e.to_string()))?;
        if vectors != self.msix_vectors() {
            return Err(invalid(format!(
                "{vectors} MSI-X vectors; this device has {}",
                self.msix_vectors()
            )));
        }
        let vector_ok = |v: u16| v == VIRTIO_MSI_NO_VECTOR || v < vectors;
        if !vector_ok(s.config_msix_vector) {
            return Err(invalid(format!(
                "config MSI-X vector {} of {vectors}",
                s.config_msix_vector
            )));
        }
        for (i, (q, cfg)) in s.queues.iter().zip(&self.queues).enumerate() {
            if !vector_ok(q.msix_vector) {
                return Err(invalid(format!(
                    "queue {i}: MSI-X vector {} of {vectors}",
                    q.msix_vector
                )));
            }
            // A disabled queue's size is only a register the driver may still rewrite;
            // an enabled one is checked as activation would.
            if q.enabled && (!q.size.is_power_of_two() || q.size > cfg.max_size) {
                return Err(invalid(format!(
                    "queue {i}: size {} is not a power of two up to {}",
                    q.size, cfg.max_size
                )));
            }
        }
        let offered = self.device.features();
        let extra = s.driver_features & !offered;
        if extra != 0 {
            return Err(invalid(format!(
                "driver features {extra:#x} are not offered by this device"
            )));
        }
        let features_ok = s.status & STATUS_FEATURES_OK != 0;
        if features_ok && s.driver_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(invalid("FEATURES_OK without VIRTIO_F_VERSION_1".into()));
        }
        let acked = s.device.acked_features();
        let expected = if features_ok { s.driver_features } else { 0 };
        if acked != expected {
            return Err(invalid(format!(
                "the device acked features {acked:#x}, the transport says {expected:#x}"
            )));
        }
        if s.status & STATUS_DRIVER_OK != 0 && !features_ok {
            return Err(invalid("DRIVER_OK without FEATURES_OK".into()));
        }
        if s.activated && s.status & STATUS_DRIVER_OK == 0 {
            return Err(invalid("an active device without DRIVER_OK".into()));
        }
        Ok(())
    }

    /// Activates the device as DRIVER_OK did on the source, with each queue resuming
    /// at its saved positions.
    fn reactivate(&mut self, s: &VirtioPciState) -> Result<(), String> {
        let mut queues = self.build_queues()?;
        for (q, saved) in queues.iter_mut().zip(&s.queues) {
            q.set_next_avail(saved.next_avail);
            q.set_next_used(saved.next_used);
        }
        self.start_device(queues)
    }
}
