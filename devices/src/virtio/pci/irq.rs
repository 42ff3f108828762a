//! The interrupt side of the transport: `Signals`, which the device gets at activation
//! as its [`VirtioInterrupt`], raising an MSI-X vector when MSI-X is enabled and the
//! INTx line plus the ISR bits otherwise.
//!
//! Invariants: the ISR is set before INTx is asserted, and reading it clears it; a
//! vector the table does not have reads back as VIRTIO_MSI_NO_VECTOR.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use super::{lock, VirtioPciDevice, VIRTIO_MSI_NO_VECTOR};
use crate::pci::Msix;
use crate::virtio::VirtioInterrupt;
use crate::Interrupt;

pub(super) const ISR_QUEUE: u8 = 1;
pub(super) const ISR_CONFIG: u8 = 2;

/// The interrupt side, shared with the device once it is activated (and with
/// whatever thread it completes requests on).
pub(super) struct Signals {
    pub(super) msix: Mutex<Msix>,
    pub(super) isr: AtomicU8,
    pub(super) generation: AtomicU8,
    pub(super) config_vector: AtomicU16,
    pub(super) queue_vectors: Vec<AtomicU16>,
    pub(super) intx: Option<Arc<dyn Interrupt>>,
    pub(super) intx_disabled: AtomicBool,
}

impl Signals {
    pub(super) fn signal(&self, vector: u16, isr: u8) -> std::io::Result<()> {
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

    pub(super) fn assert_intx(&self) -> std::io::Result<()> {
        if self.intx_disabled.load(Ordering::SeqCst) {
            return Ok(());
        }
        match &self.intx {
            Some(line) => line.trigger(),
            None => Ok(()),
        }
    }

    pub(super) fn msix_enabled(&self) -> bool {
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

impl VirtioPciDevice {
    pub(super) fn valid_vector(&self, v: u16) -> u16 {
        if v != VIRTIO_MSI_NO_VECTOR && v >= self.msix_vectors() {
            VIRTIO_MSI_NO_VECTOR
        } else {
            v
        }
    }
}
