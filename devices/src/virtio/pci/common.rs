//! The common configuration structure (virtio 1.2, 4.1.4.3): feature negotiation,
//! queue selection and setup, device status, and the activation and reset that
//! DRIVER_OK and a zero status write trigger.
//!
//! Invariants: queue fields are writable only before DRIVER_OK; a driver that gets the
//! rings or the negotiation wrong sets DEVICE_NEEDS_RESET, it never panics the VMM.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::{VirtioPciDevice, VIRTIO_MSI_NO_VECTOR};
use crate::virtio::{
    VirtioInterrupt, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK, STATUS_NEEDS_RESET,
    VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1,
};

// Common configuration fields: (offset, width), virtio 1.2, 4.1.4.3.
pub(super) const DEVICE_FEATURE_SELECT: u64 = 0x00;
pub(super) const DEVICE_FEATURE: u64 = 0x04;
pub(super) const DRIVER_FEATURE_SELECT: u64 = 0x08;
pub(super) const DRIVER_FEATURE: u64 = 0x0c;
pub(super) const MSIX_CONFIG: u64 = 0x10;
pub(super) const NUM_QUEUES: u64 = 0x12;
pub(super) const DEVICE_STATUS: u64 = 0x14;
pub(super) const CONFIG_GENERATION: u64 = 0x15;
pub(super) const QUEUE_SELECT: u64 = 0x16;
pub(super) const QUEUE_SIZE: u64 = 0x18;
pub(super) const QUEUE_MSIX_VECTOR: u64 = 0x1a;
pub(super) const QUEUE_ENABLE: u64 = 0x1c;
pub(super) const QUEUE_NOTIFY_OFF: u64 = 0x1e;
pub(super) const QUEUE_DESC: u64 = 0x20;
pub(super) const QUEUE_DRIVER: u64 = 0x28;
pub(super) const QUEUE_DEVICE: u64 = 0x30;
pub(super) const COMMON_FIELDS: [(u64, u64); 16] = [
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

pub(super) fn common_field(off: u64) -> Option<(u64, u64)> {
    COMMON_FIELDS
        .iter()
        .copied()
        .find(|(o, w)| off >= *o && off < o + w)
}

/// What the driver programmed for one queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct QueueConfig {
    pub(super) max_size: u16,
    pub(super) size: u16,
    pub(super) enable: bool,
    pub(super) desc: u64,
    pub(super) driver: u64,
    pub(super) device: u64,
}

impl QueueConfig {
    pub(super) fn new(max_size: u16) -> Self {
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

impl VirtioPciDevice {
    pub(super) fn needs_reset(&mut self, why: &str) {
        log::error!(
            "virtio-pci {:04x}: {why}; the device needs a reset",
            self.config.header().device_id
        );
        self.status |= STATUS_NEEDS_RESET;
        let _ = self.signals.trigger_config();
    }

    /// The selected queue, if it exists.
    pub(super) fn selected(&self) -> Option<&QueueConfig> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// The selected queue while the driver may still configure it.
    pub(super) fn selected_setup(&mut self) -> Option<&mut QueueConfig> {
        if self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        self.queues
            .get_mut(usize::from(self.queue_select))
            .filter(|q| !q.enable)
    }

    pub(super) fn common_value(&self, field: u64) -> u64 {
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

    pub(super) fn set_common(&mut self, field: u64, v: u64) {
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

    pub(super) fn read_common(&self, offset: u64, data: &mut [u8]) {
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
    pub(super) fn write_common(&mut self, offset: u64, data: &[u8]) {
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
    pub(super) fn write_status(&mut self, v: u8) {
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
    pub(super) fn build_queues(&self) -> Result<Vec<Queue>, String> {
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

    pub(super) fn activate(&mut self) {
        let result = self
            .build_queues()
            .and_then(|queues| self.start_device(queues));
        if let Err(e) = result {
            self.needs_reset(&format!("activation failed: {e}"));
        }
    }

    /// Hands the device its queues, guest memory and interrupt, and tells the machine.
    pub(super) fn start_device(&mut self, queues: Vec<Queue>) -> Result<(), String> {
        let interrupt: Arc<dyn VirtioInterrupt> = self.signals.clone();
        self.device
            .activate(self.mem.clone(), interrupt, queues)
            .map_err(|e| e.to_string())?;
        self.activated = true;
        if let Some(hook) = &self.activation_hook {
            hook(true);
        }
        Ok(())
    }

    /// Back to the state after power-on, except the MSI-X table and its control bits,
    /// which belong to the PCI function, not to the virtio device.
    pub(super) fn reset(&mut self) {
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
}
