//! Places BARs as firmware would: naturally aligned windows handed out first-fit
//! from the machine's PCI memory and I/O windows, returned on unplug.

use std::collections::BTreeMap;
use std::ops::Range;

use super::config::BarKind;
use super::{PciDevice, PciError};

/// First-fit allocator of naturally aligned blocks in `[start, end)`.
#[derive(Clone, Debug)]
struct RangeAllocator {
    range: Range<u64>,
    /// base -> size of every block handed out.
    used: BTreeMap<u64, u64>,
}

impl RangeAllocator {
    fn new(range: Range<u64>) -> Self {
        Self {
            range,
            used: BTreeMap::new(),
        }
    }

    fn allocate(&mut self, size: u64) -> Option<u64> {
        if !size.is_power_of_two() {
            return None;
        }
        let mut candidate = self.range.start.checked_next_multiple_of(size)?;
        for (&base, &len) in &self.used {
            let end = candidate.checked_add(size)?;
            if end <= base {
                break;
            }
            if base + len > candidate {
                candidate = (base + len).checked_next_multiple_of(size)?;
            }
        }
        let end = candidate.checked_add(size)?;
        (end <= self.range.end).then(|| {
            self.used.insert(candidate, size);
            candidate
        })
    }

    fn free(&mut self, base: u64) -> bool {
        self.used.remove(&base).is_some()
    }
}

/// The BAR windows of a machine: 32-bit MMIO (64-bit BARs are placed there too, so
/// the guest needs no 64-bit window in `_CRS`) and I/O ports.
#[derive(Clone, Debug)]
pub struct BarAllocator {
    mmio: RangeAllocator,
    io: RangeAllocator,
}

impl BarAllocator {
    pub fn new(mmio32: Range<u64>, io: Range<u64>) -> Self {
        Self {
            mmio: RangeAllocator::new(mmio32),
            io: RangeAllocator::new(io),
        }
    }

    fn space(&mut self, kind: BarKind) -> &mut RangeAllocator {
        match kind {
            BarKind::Io => &mut self.io,
            BarKind::Memory32 | BarKind::Memory64 => &mut self.mmio,
        }
    }

    /// A naturally aligned block of `size` (a power of two) for a BAR of `kind`.
    pub fn allocate(&mut self, kind: BarKind, size: u64) -> Result<u64, PciError> {
        self.space(kind)
            .allocate(size)
            .ok_or(PciError::OutOfSpace { kind, size })
    }

    /// Returns the block at `base`; false if it was not handed out.
    pub fn free(&mut self, kind: BarKind, base: u64) -> bool {
        self.space(kind).free(base)
    }

    /// Places every BAR of `dev` and turns on the decoding it needs, as firmware
    /// does before the OS boots. On failure, whatever was taken is given back.
    pub fn assign(&mut self, dev: &mut dyn PciDevice) -> Result<(), PciError> {
        let mut taken: Vec<(BarKind, u64)> = Vec::new();
        let mut result = Ok(());
        for bar in dev.config().bars() {
            let placed = self.allocate(bar.kind, bar.size).and_then(|addr| {
                taken.push((bar.kind, addr));
                dev.config_mut().set_bar_address(bar.index, addr)
            });
            if let Err(e) = placed {
                result = Err(e);
                break;
            }
        }
        if result.is_err() {
            for (kind, addr) in taken {
                self.free(kind, addr);
            }
            return result;
        }
        let io = taken.iter().any(|(k, _)| *k == BarKind::Io);
        let mem = taken.iter().any(|(k, _)| k.is_memory());
        dev.config_mut().enable_decode(io, mem);
        Ok(())
    }

    /// Gives back every BAR of `dev` (on unplug). Addresses the guest moved since
    /// `assign` were never ours and are left alone.
    pub fn release(&mut self, dev: &dyn PciDevice) {
        for bar in dev.config().bars() {
            self.free(bar.kind, bar.address);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::pci::config::{COMMAND_IO, COMMAND_MEMORY};
    use crate::pci::{PciConfiguration, PciHeader};

    fn decode_enabled(dev: &dyn PciDevice, kind: BarKind) -> bool {
        let bit = if kind == BarKind::Io {
            COMMAND_IO
        } else {
            COMMAND_MEMORY
        };
        dev.config().command() & bit != 0
    }

    struct Dev(PciConfiguration);
    impl PciDevice for Dev {
        fn config(&self) -> &PciConfiguration {
            &self.0
        }
        fn config_mut(&mut self) -> &mut PciConfiguration {
            &mut self.0
        }
    }

    #[test]
    fn blocks_are_aligned_first_fit_and_reusable() {
        let mut a = BarAllocator::new(0xc000_0000..0xc001_0000, 0x1000..0x1100);
        assert_eq!(a.allocate(BarKind::Memory32, 0x1000).unwrap(), 0xc000_0000);
        assert_eq!(a.allocate(BarKind::Memory64, 0x4000).unwrap(), 0xc000_4000);
        assert_eq!(a.allocate(BarKind::Memory32, 0x1000).unwrap(), 0xc000_1000);
        assert_eq!(a.allocate(BarKind::Memory32, 0x8000).unwrap(), 0xc000_8000);
        assert_eq!(a.allocate(BarKind::Memory32, 0x2000).unwrap(), 0xc000_2000);
        assert!(matches!(
            a.allocate(BarKind::Memory32, 0x1000),
            Err(PciError::OutOfSpace { .. })
        ));
        assert!(a.free(BarKind::Memory32, 0xc000_1000));
        assert!(!a.free(BarKind::Memory32, 0xc000_1000));
        assert_eq!(a.allocate(BarKind::Memory32, 0x1000).unwrap(), 0xc000_1000);
        assert!(
            a.allocate(BarKind::Memory32, 0x3000).is_err(),
            "not a power of two"
        );
        assert!(a.allocate(BarKind::Memory32, 1 << 63).is_err());

        assert_eq!(a.allocate(BarKind::Io, 0x40).unwrap(), 0x1000);
        assert_eq!(a.allocate(BarKind::Io, 0x80).unwrap(), 0x1080);
        assert_eq!(a.allocate(BarKind::Io, 0x20).unwrap(), 0x1040);
        assert!(a.allocate(BarKind::Io, 0x40).is_err());
    }

    #[test]
    fn assign_places_every_bar_and_enables_decode() {
        let mut c = PciConfiguration::new(&PciHeader::default());
        c.add_bar(0, BarKind::Memory64, 0x8000, false).unwrap();
        c.add_bar(2, BarKind::Memory32, 0x1000, false).unwrap();
        c.add_bar(3, BarKind::Io, 0x20, false).unwrap();
        let mut dev = Dev(c);
        let mut a = BarAllocator::new(0xc000_0000..0xe000_0000, 0x1000..0x1_0000);
        a.assign(&mut dev).unwrap();
        let bars = dev.config().bars();
        assert_eq!(bars[0].mapped, Some(0xc000_0000));
        assert_eq!(bars[1].mapped, Some(0xc000_8000));
        assert_eq!(bars[2].mapped, Some(0x1000));
        assert!(decode_enabled(&dev, BarKind::Io));
        assert!(decode_enabled(&dev, BarKind::Memory32));
        a.release(&dev);
        assert_eq!(a.allocate(BarKind::Memory32, 0x8000).unwrap(), 0xc000_0000);
    }

    #[test]
    fn failed_assign_gives_back_what_it_took() {
        let mut c = PciConfiguration::new(&PciHeader::default());
        c.add_bar(0, BarKind::Memory32, 0x1000, false).unwrap();
        c.add_bar(1, BarKind::Memory32, 0x10_0000, false).unwrap();
        let mut dev = Dev(c);
        let mut a = BarAllocator::new(0xc000_0000..0xc001_0000, 0x1000..0x2000);
        assert!(a.assign(&mut dev).is_err());
        assert!(!decode_enabled(&dev, BarKind::Memory32));
        assert_eq!(a.allocate(BarKind::Memory32, 0x1000).unwrap(), 0xc000_0000);
    }
}
