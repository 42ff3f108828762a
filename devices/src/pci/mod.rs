//! PCI: the root bus (segment 0, bus 0, 32 slots of 8 functions) with its host
//! bridge, the two configuration mechanisms the guest reaches it through (legacy
//! 0xCF8/0xCFC port I/O and ECAM MMIO), type-0 configuration space, BAR placement
//! and MSI-X.
//!
//! ```text
//!  vCPU PIO exit 0xcf8..0xcff --> PciConfigIo  --\
//!  vCPU MMIO exit in ECAM     --> PciConfigMmio --+--> PciBus --> dyn PciDevice (config)
//!                                                     |
//!                          BarRemapHandler (vmm) <----/  a BAR moved or (un)mapped
//!  vCPU MMIO/PIO exit in a BAR --> PciBarRegion --------> dyn PciDevice (read/write_bar)
//! ```
//!
//! A device model implements [`PciDevice`] around a [`PciConfiguration`]; it never
//! sees KVM. The machine learns where BARs decode through [`BarRemapHandler`], which
//! the bus calls whenever a configuration write (or hotplug) changes a mapping, with
//! no device lock held, so the handler may lock the device to ask for its
//! [`PciDevice::notify_addresses`].
//!
//! INTx: slot `s`, pin `p` (INTA = 1) is wired to GSI [`PCI_INTX_GSI_BASE`] +
//! (s + p - 1) mod 4, level-triggered, active low: the `_PRT` the ACPI tables give
//! the guest (arch `layout::pci_intx_gsi` keeps the same formula).

mod alloc;
mod bus;
pub mod config;
pub mod i6300esb;
pub mod msix;

pub use alloc::BarAllocator;
pub use bus::{
    BarRemap, BarRemapHandler, PciBarRegion, PciBus, PciConfigIo, PciConfigMmio, PciDeviceInfo,
    PciHostBridge, SharedPciDevice, ECAM_BUS_SIZE, HOST_BRIDGE_DEVICE_ID, HOST_BRIDGE_VENDOR_ID,
    PCI_CONFIG_IO_LEN, PCI_CONFIG_IO_PORT,
};
pub use config::{BarKind, BarSpec, PciBarInfo, PciConfigState, PciConfiguration, PciHeader};
pub use msix::{MsiMessage, MsiTrigger, Msix, MsixState};

use serde::{Deserialize, Serialize};

/// Slots on a bus and functions in a slot.
pub const PCI_SLOTS: u8 = 32;
pub const PCI_FUNCTIONS: u8 = 8;

/// First of the IOAPIC GSIs the INTx lines are swizzled over (see the module doc).
pub const PCI_INTX_GSI_BASE: u32 = 16;
pub const PCI_INTX_GSI_COUNT: u32 = 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    #[error("PCI address {bus:02x}:{device:02x}.{function} is invalid: slots are 0..32, functions 0..8, and only bus 0 exists")]
    InvalidAddress { bus: u8, device: u8, function: u8 },
    #[error("PCI slot {0} is already taken; choose another addr=")]
    SlotOccupied(PciAddress),
    #[error("no free slot on PCI bus 0 (32 slots)")]
    BusFull,
    #[error("BAR {0} does not exist (BARs are 0..6 and a 64-bit BAR takes two)")]
    BarIndex(u8),
    #[error("BAR {0} overlaps a BAR already declared")]
    BarInUse(u8),
    #[error("BAR {index}: {size:#x} bytes is not a valid {kind:?} BAR size (a power of two, I/O 4..=256, memory >= 16)")]
    BarSize { index: u8, kind: BarKind, size: u64 },
    #[error("BAR {index} cannot be placed at {addr:#x}: it must be aligned to its size {size:#x} and fit its address space")]
    BarAddress { index: u8, addr: u64, size: u64 },
    #[error("no room for a {len}-byte capability in configuration space")]
    CapabilitySpace { len: usize },
    #[error("{0} MSI-X vectors requested; a function has 1..=2048")]
    MsixVectors(u16),
    #[error("the saved configuration space does not fit this device: {0}")]
    ConfigState(String),
    #[error(
        "the PCI {kind:?} window has no free {size:#x}-byte block; use fewer or smaller devices"
    )]
    OutOfSpace { kind: BarKind, size: u64 },
}

/// Bus, device (slot) and function of a PCI function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PciAddress {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl PciAddress {
    pub fn new(bus: u8, device: u8, function: u8) -> Result<Self, PciError> {
        if bus != 0 || device >= PCI_SLOTS || function >= PCI_FUNCTIONS {
            return Err(PciError::InvalidAddress {
                bus,
                device,
                function,
            });
        }
        Ok(Self {
            bus,
            device,
            function,
        })
    }

    /// Device and function as the 8-bit devfn of the configuration mechanisms.
    pub fn devfn(&self) -> u8 {
        (self.device << 3) | self.function
    }

    fn from_devfn(devfn: u8) -> Self {
        Self {
            bus: 0,
            device: devfn >> 3,
            function: devfn & 7,
        }
    }

    /// The GSI INTx pin `pin` (1 = INTA .. 4 = INTD) of this slot raises; `None` for
    /// pin 0 (no INTx) or an invalid pin.
    pub fn intx_gsi(&self, pin: u8) -> Option<u32> {
        if !(1..=4).contains(&pin) {
            return None;
        }
        Some(PCI_INTX_GSI_BASE + (u32::from(self.device) + u32::from(pin) - 1) % PCI_INTX_GSI_COUNT)
    }
}

impl std::fmt::Display for PciAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// A PCI function as the bus sees it. Everything the guest reaches is a method here;
/// all of them take any guest-controlled register, offset or size without panicking.
pub trait PciDevice: Send {
    fn config(&self) -> &PciConfiguration;
    fn config_mut(&mut self) -> &mut PciConfiguration;

    /// Dword register `reg` (0..64 for conventional space; ECAM may ask up to 1024).
    fn read_config(&mut self, reg: usize) -> u32 {
        self.config().read_reg(reg)
    }

    /// A guest write of `value` to register `reg` in the byte lanes set in `mask`
    /// (0x0000_ff00 for a byte write to byte 1). Devices with side effects (MSI-X
    /// control, virtio's PCI_CFG window) override this and call the default first.
    fn write_config(&mut self, reg: usize, value: u32, mask: u32) {
        self.config_mut().write_reg(reg, value, mask);
    }

    /// A read of `data.len()` bytes at `offset` in BAR `bar`.
    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        let _ = (bar, offset);
        data.fill(0);
    }

    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        let _ = (bar, offset, data);
    }

    fn bars(&self) -> Vec<PciBarInfo> {
        self.config().bars()
    }

    /// The guest moved, mapped or unmapped one of this device's BARs (the machine is
    /// told too, through [`BarRemapHandler`]).
    fn bar_moved(&mut self, remap: &BarRemap) {
        let _ = remap;
    }

    /// Guest-physical addresses, as the BARs are mapped now, where a write only kicks
    /// a queue (the u16): the machine registers an ioeventfd on each so the vCPU
    /// never handles the kick. Empty when none is mapped.
    fn notify_addresses(&self) -> Vec<(u64, u16)> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_intx_swizzle() {
        assert!(PciAddress::new(0, 32, 0).is_err());
        assert!(PciAddress::new(0, 0, 8).is_err());
        assert!(PciAddress::new(1, 0, 0).is_err());
        let a = PciAddress::new(0, 3, 2).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.devfn(), 0x1a);
        assert_eq!(PciAddress::from_devfn(0x1a), a);
        assert_eq!(a.to_string(), "00:03.2");
        assert_eq!(a.intx_gsi(0), None);
        assert_eq!(a.intx_gsi(5), None);
        assert_eq!(a.intx_gsi(1), Some(19));
        assert_eq!(a.intx_gsi(2), Some(16));
        let s0 = PciAddress::new(0, 0, 0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s0.intx_gsi(1), Some(16));
        assert_eq!(s0.intx_gsi(4), Some(19));
    }
}
