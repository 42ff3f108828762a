//! The PIO and MMIO buses. The device map is an immutable snapshot behind an
//! `ArcSwap`: a vCPU exit loads it without a lock, and hotplug swaps in a whole new
//! map. Each device sits behind its own mutex, held only for one register access.
//! Lock order: the bus takes no lock; a device lock is a leaf (a device never calls
//! back into the bus while holding it).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

/// One register window of a device. `offset` is relative to the window's base.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} overlaps a device already there")]
    Overlap { base: u64, len: u64 },
    #[error("bus range at {base:#x} has zero length")]
    ZeroLength { base: u64 },
}

#[derive(Clone)]
struct Entry {
    len: u64,
    dev: SharedDevice,
}

/// An address space of devices (one for port I/O, one for MMIO).
#[derive(Default)]
pub struct Bus {
    map: ArcSwap<BTreeMap<u64, Entry>>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `dev` at `[base, base+len)`. Copies the map and swaps it in whole.
    pub fn insert(&self, dev: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength { base });
        }
        let cur = self.map.load();
        let end = base.saturating_add(len);
        let overlaps = cur
            .range(..end)
            .next_back()
            .is_some_and(|(b, e)| b + e.len > base);
        if overlaps {
            return Err(BusError::Overlap { base, len });
        }
        let mut next: BTreeMap<u64, Entry> = (**cur).clone();
        next.insert(base, Entry { len, dev });
        self.map.store(Arc::new(next));
        Ok(())
    }

    /// Removes the device whose window starts at `base`; returns whether one was there.
    pub fn remove(&self, base: u64) -> bool {
        let cur = self.map.load();
        if !cur.contains_key(&base) {
            return false;
        }
        let mut next: BTreeMap<u64, Entry> = (**cur).clone();
        next.remove(&base);
        self.map.store(Arc::new(next));
        true
    }

    fn find(&self, addr: u64) -> Option<(u64, SharedDevice)> {
        let map = self.map.load();
        let (base, e) = map.range(..=addr).next_back()?;
        (addr - base < e.len).then(|| (*base, e.dev.clone()))
    }

    /// Dispatches a read; returns false (and leaves `data` as all ones) when no device
    /// claims `addr`, as an open bus reads on real hardware.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((base, dev)) => {
                lock(&dev).read(addr - base, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false when no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((base, dev)) => {
                lock(&dev).write(addr - base, data);
                true
            }
            None => false,
        }
    }
}

/// A device whose mutex was poisoned by a panic elsewhere still answers: its state is
/// plain data, and a stuck guest is worse than a register read after a bug.
fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(Vec<u8>);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            for (i, d) in data.iter_mut().enumerate() {
                *d = self.0[offset as usize + i];
            }
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            for (i, d) in data.iter().enumerate() {
                self.0[offset as usize + i] = *d;
            }
        }
    }

    #[test]
    fn dispatches_by_range_and_rejects_overlap() {
        let bus = Bus::new();
        let a: SharedDevice = Arc::new(Mutex::new(Reg(vec![0; 8])));
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        assert_eq!(
            bus.insert(a.clone(), 0x3fc, 2),
            Err(BusError::Overlap {
                base: 0x3fc,
                len: 2
            })
        );
        assert_eq!(
            bus.insert(a.clone(), 0x3f0, 9),
            Err(BusError::Overlap {
                base: 0x3f0,
                len: 9
            })
        );
        bus.insert(a.clone(), 0x3f0, 8).unwrap();
        assert!(bus.write(0x3fa, &[7]));
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b[0], 7);
        assert!(!bus.read(0x400, &mut b));
        assert_eq!(b[0], 0xff);
        assert!(bus.remove(0x3f8));
        assert!(!bus.read(0x3fa, &mut b));
        assert_eq!(bus.insert(a, 0, 0), Err(BusError::ZeroLength { base: 0 }));
    }
}
