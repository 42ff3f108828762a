//! The root bus, its host bridge, the configuration mechanisms and BAR regions.
//!
//! Lock order: a config mechanism's own mutex (taken by the PIO/MMIO bus) -> the
//! device's mutex, released before the [`BarRemapHandler`] runs. The slot map is an
//! `ArcSwap` snapshot, as in [`crate::bus::Bus`]: a config access takes no bus lock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use super::config::{BarKind, PciBarInfo, PciConfiguration, PciHeader};
use super::{PciAddress, PciDevice, PciError, PCI_FUNCTIONS, PCI_SLOTS};
use crate::bus::{BusDevice, SharedDevice};

/// The legacy configuration mechanism #1: CONFIG_ADDRESS at 0xcf8, CONFIG_DATA at 0xcfc.
pub const PCI_CONFIG_IO_PORT: u16 = 0xcf8;
pub const PCI_CONFIG_IO_LEN: u64 = 8;
/// ECAM gives each bus 1 MiB: 32 devices x 8 functions x 4 KiB.
pub const ECAM_BUS_SIZE: u64 = 1 << 20;

/// The host bridge at 00.0 identifies as QEMU's generic PCIe host bridge ("gpex",
/// 1b36:0008): an id Linux binds no quirk to, for a bridge that, like Kestrel's, has
/// no registers beyond its header.
pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x1b36;
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0008;
/// The subsystem ids QEMU gives every device it emulates.
const SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
const SUBSYSTEM_ID: u16 = 0x1100;

const CONFIG_ADDRESS_ENABLE: u32 = 1 << 31;
/// Enable, bus, device, function and register: reserved bits 30:24 and 1:0 read 0.
const CONFIG_ADDRESS_MASK: u32 = 0x80ff_fffc;

pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// A device mutex poisoned by a panic elsewhere still answers: its state is plain data.
fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A change of where one BAR decodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BarRemap {
    pub address: PciAddress,
    pub bar: u8,
    pub kind: BarKind,
    pub size: u64,
    /// Where it decoded before (remove the bus region and ioeventfds there).
    pub old: Option<u64>,
    /// Where it decodes now (insert a [`PciBarRegion`] there, on the PIO bus for
    /// [`BarKind::Io`], the MMIO bus otherwise).
    pub new: Option<u64>,
}

/// The machine's side of BAR placement (implemented by the vmm). Called for each BAR
/// already mapped when a device is added, for each mapped BAR when it is removed, and
/// whenever a configuration write maps, unmaps or moves one. No PCI lock is held.
pub trait BarRemapHandler: Send + Sync {
    fn bar_remapped(&self, remap: &BarRemap, device: &SharedPciDevice);
}

/// One row of `query-pci`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciDeviceInfo {
    pub bus: u8,
    pub slot: u8,
    pub function: u8,
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
    pub revision: u8,
    pub vendor_id: u16,
    pub device_id: u16,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
    /// 0: none, 1..=4: INTA..INTD.
    pub irq_pin: u8,
    /// The interrupt line register, when the function has a pin.
    pub irq: Option<u8>,
    pub bars: Vec<PciBarInfo>,
    pub qdev_id: String,
}

impl PciDeviceInfo {
    /// Class and subclass as QMP's `class_info.class` (e.g. 0x0600 for a host bridge).
    pub fn class_code(&self) -> u16 {
        (u16::from(self.class) << 8) | u16::from(self.subclass)
    }
}

struct Slot {
    dev: SharedPciDevice,
    id: String,
}

/// PCI segment 0, bus 0.
pub struct PciBus {
    /// devfn -> function; replaced whole on hotplug.
    slots: ArcSwap<BTreeMap<u8, Arc<Slot>>>,
    /// Serialises add and remove (each copies the map and swaps it in).
    writer: Mutex<()>,
    remap: Mutex<Option<Arc<dyn BarRemapHandler>>>,
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

impl PciBus {
    /// A bus with only the host bridge, at 00.0.
    pub fn new() -> Self {
        let bridge: SharedPciDevice = Arc::new(Mutex::new(PciHostBridge::new()));
        let mut map = BTreeMap::new();
        map.insert(
            0,
            Arc::new(Slot {
                dev: bridge,
                id: String::new(),
            }),
        );
        Self {
            slots: ArcSwap::from_pointee(map),
            writer: Mutex::new(()),
            remap: Mutex::new(None),
        }
    }

    /// Set before adding devices: only later changes are reported.
    pub fn set_remap_handler(&self, handler: Arc<dyn BarRemapHandler>) {
        *lock(&self.remap) = Some(handler);
    }

    fn notify(&self, remaps: &[BarRemap], dev: &SharedPciDevice) {
        if remaps.is_empty() {
            return;
        }
        let handler = lock(&self.remap).clone();
        if let Some(h) = handler {
            for r in remaps {
                h.bar_remapped(r, dev);
            }
        }
    }

    /// The first slot from 1 up with no function in it.
    pub fn free_slot(&self) -> Option<PciAddress> {
        let map = self.slots.load();
        (1..PCI_SLOTS)
            .find(|d| !map.keys().any(|devfn| devfn >> 3 == *d))
            .map(|d| PciAddress {
                bus: 0,
                device: d,
                function: 0,
            })
    }

    /// Plugs `dev` in at `addr` under the qdev id `id`. Sets its interrupt line to
    /// its INTx GSI and reports its BARs that already decode (see [`BarAllocator::assign`](super::BarAllocator::assign)).
    pub fn add_device(
        &self,
        addr: PciAddress,
        dev: SharedPciDevice,
        id: impl Into<String>,
    ) -> Result<(), PciError> {
        let addr = PciAddress::new(addr.bus, addr.device, addr.function)?;
        let remaps = {
            let _w = lock(&self.writer);
            let cur = self.slots.load();
            let devfn = addr.devfn();
            if cur.contains_key(&devfn) {
                return Err(PciError::SlotOccupied(addr));
            }
            let first = addr.devfn() & !7;
            let siblings = (1..PCI_FUNCTIONS).any(|f| cur.contains_key(&(first | f)));
            let remaps = {
                let mut d = lock(&dev);
                let pin = d.config().interrupt_pin();
                if let Some(gsi) = addr.intx_gsi(pin) {
                    d.config_mut().set_interrupt_line(gsi as u8);
                }
                if addr.function == 0 && siblings {
                    d.config_mut().set_multifunction(true);
                }
                mapped(addr, &d.bars(), true)
            };
            if addr.function != 0 {
                if let Some(f0) = cur.get(&first) {
                    lock(&f0.dev).config_mut().set_multifunction(true);
                }
            }
            let mut next = (**cur).clone();
            next.insert(
                devfn,
                Arc::new(Slot {
                    dev: dev.clone(),
                    id: id.into(),
                }),
            );
            self.slots.store(Arc::new(next));
            remaps
        };
        self.notify(&remaps, &dev);
        Ok(())
    }

    /// Unplugs the function at `addr`, reporting its mapped BARs as unmapped.
    pub fn remove_device(&self, addr: PciAddress) -> Option<SharedPciDevice> {
        let slot = {
            let _w = lock(&self.writer);
            let cur = self.slots.load();
            let devfn = addr.devfn();
            let slot = cur.get(&devfn)?.clone();
            let mut next = (**cur).clone();
            next.remove(&devfn);
            self.slots.store(Arc::new(next));
            slot
        };
        let remaps = mapped(addr, &lock(&slot.dev).bars(), false);
        self.notify(&remaps, &slot.dev);
        Some(slot.dev.clone())
    }

    pub fn device(&self, addr: PciAddress) -> Option<SharedPciDevice> {
        self.slots
            .load()
            .get(&addr.devfn())
            .filter(|_| addr.bus == 0)
            .map(|s| s.dev.clone())
    }

    /// Every function, in address order.
    pub fn devices(&self) -> Vec<(PciAddress, SharedPciDevice)> {
        self.slots
            .load()
            .iter()
            .map(|(devfn, s)| (PciAddress::from_devfn(*devfn), s.dev.clone()))
            .collect()
    }

    /// The function the guest reaches at `addr`: functions other than 0 are hidden
    /// while function 0 is absent, because the guest scans only slots whose
    /// function 0 answers.
    fn visible(&self, bus: u8, device: u8, function: u8) -> Option<Arc<Slot>> {
        let addr = PciAddress::new(bus, device, function).ok()?;
        let map = self.slots.load();
        if function != 0 && !map.contains_key(&(addr.devfn() & !7)) {
            return None;
        }
        map.get(&addr.devfn()).cloned()
    }

    /// A configuration read; all ones when no function answers there.
    pub fn read_config(&self, bus: u8, device: u8, function: u8, reg: usize) -> u32 {
        match self.visible(bus, device, function) {
            Some(slot) => lock(&slot.dev).read_config(reg),
            None => 0xffff_ffff,
        }
    }

    /// A configuration write of `value` in the byte lanes of `mask`; reports every BAR
    /// mapping it changed, to the device and then (unlocked) to the machine.
    pub fn write_config(
        &self,
        bus: u8,
        device: u8,
        function: u8,
        reg: usize,
        value: u32,
        mask: u32,
    ) {
        let Some(slot) = self.visible(bus, device, function) else {
            return;
        };
        let addr = PciAddress::from_devfn((device << 3) | function);
        let remaps = {
            let mut d = lock(&slot.dev);
            let before = d.bars();
            d.write_config(reg, value, mask);
            let after = d.bars();
            let remaps = diff_remaps(addr, &before, &after);
            for r in &remaps {
                d.bar_moved(r);
            }
            remaps
        };
        self.notify(&remaps, &slot.dev);
    }

    /// Reports the BAR mappings of the function at `addr` that differ from `before`
    /// (its `bars()` before the machine changed it directly, e.g. restoring migrated
    /// state), to the device and then, unlocked, to the machine: as after the guest's
    /// own BAR programming.
    pub fn refresh_bars(&self, addr: PciAddress, before: &[PciBarInfo]) {
        let Some(dev) = self.device(addr) else {
            return;
        };
        let remaps = {
            let mut d = lock(&dev);
            let after = d.bars();
            let remaps = diff_remaps(addr, before, &after);
            for r in &remaps {
                d.bar_moved(r);
            }
            remaps
        };
        self.notify(&remaps, &dev);
    }

    /// `query-pci`'s rows.
    pub fn info(&self) -> Vec<PciDeviceInfo> {
        self.slots
            .load()
            .iter()
            .map(|(devfn, slot)| {
                let addr = PciAddress::from_devfn(*devfn);
                let d = lock(&slot.dev);
                let c = d.config();
                let h: PciHeader = c.header();
                PciDeviceInfo {
                    bus: addr.bus,
                    slot: addr.device,
                    function: addr.function,
                    class: h.class,
                    subclass: h.subclass,
                    prog_if: h.prog_if,
                    revision: h.revision,
                    vendor_id: h.vendor_id,
                    device_id: h.device_id,
                    subsystem_vendor_id: h.subsystem_vendor_id,
                    subsystem_id: h.subsystem_id,
                    irq_pin: h.interrupt_pin,
                    irq: (h.interrupt_pin != 0).then(|| c.interrupt_line()),
                    bars: d.bars(),
                    qdev_id: slot.id.clone(),
                }
            })
            .collect()
    }
}

/// The mapped BARs of a function being plugged (`plug`) or unplugged.
/// The BARs whose mapping changed between `before` and `after`.
fn diff_remaps(addr: PciAddress, before: &[PciBarInfo], after: &[PciBarInfo]) -> Vec<BarRemap> {
    before
        .iter()
        .zip(after)
        .filter(|(b, a)| b.index == a.index && b.mapped != a.mapped)
        .map(|(b, a)| BarRemap {
            address: addr,
            bar: a.index,
            kind: a.kind,
            size: a.size,
            old: b.mapped,
            new: a.mapped,
        })
        .collect()
}

fn mapped(addr: PciAddress, bars: &[PciBarInfo], plug: bool) -> Vec<BarRemap> {
    bars.iter()
        .filter_map(|b| {
            let at = b.mapped?;
            Some(BarRemap {
                address: addr,
                bar: b.index,
                kind: b.kind,
                size: b.size,
                old: (!plug).then_some(at),
                new: plug.then_some(at),
            })
        })
        .collect()
}

/// The host bridge at 00.0: a header and nothing else.
pub struct PciHostBridge {
    config: PciConfiguration,
}

impl Default for PciHostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciHostBridge {
    pub fn new() -> Self {
        Self {
            config: PciConfiguration::new(&PciHeader {
                vendor_id: HOST_BRIDGE_VENDOR_ID,
                device_id: HOST_BRIDGE_DEVICE_ID,
                revision: 0,
                class: 0x06,    // bridge
                subclass: 0x00, // host bridge
                prog_if: 0,
                subsystem_vendor_id: SUBSYSTEM_VENDOR_ID,
                subsystem_id: SUBSYSTEM_ID,
                interrupt_pin: 0,
            }),
        }
    }
}

impl PciDevice for PciHostBridge {
    fn config(&self) -> &PciConfiguration {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }
}

/// The value and byte-lane mask of a `data.len()`-byte write at byte `byte` of a
/// dword, or `None` for an access that is empty or leaves the dword.
fn lanes(byte: u64, data: &[u8]) -> Option<(u32, u32)> {
    if data.is_empty() || byte.checked_add(data.len() as u64)? > 4 {
        return None;
    }
    let (mut value, mut mask) = (0u32, 0u32);
    for (i, b) in data.iter().enumerate() {
        let shift = 8 * (byte as u32 + i as u32);
        value |= u32::from(*b) << shift;
        mask |= 0xff << shift;
    }
    Some((value, mask))
}

/// Copies the bytes of `dword` at `byte` into `data`; all ones for an access that is
/// empty or leaves the dword.
fn extract(dword: u32, byte: u64, data: &mut [u8]) {
    let bytes = dword.to_le_bytes();
    match usize::try_from(byte)
        .ok()
        .and_then(|b| bytes.get(b..b.checked_add(data.len())?))
    {
        Some(src) if !data.is_empty() => data.copy_from_slice(src),
        _ => data.fill(0xff),
    }
}

/// Configuration mechanism #1 at [`PCI_CONFIG_IO_PORT`], [`PCI_CONFIG_IO_LEN`] ports.
pub struct PciConfigIo {
    bus: Arc<PciBus>,
    address: u32,
}

impl PciConfigIo {
    pub fn new(bus: Arc<PciBus>) -> Self {
        Self { bus, address: 0 }
    }

    /// Bus, device, function and register CONFIG_ADDRESS selects, if enabled.
    fn target(&self) -> Option<(u8, u8, u8, usize)> {
        let a = self.address;
        (a & CONFIG_ADDRESS_ENABLE != 0).then_some((
            (a >> 16) as u8,
            ((a >> 11) & 0x1f) as u8,
            ((a >> 8) & 0x7) as u8,
            ((a >> 2) & 0x3f) as usize,
        ))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            // Only a whole-dword access is CONFIG_ADDRESS; narrower ones at 0xcf8..0xcfb
            // belong to other (absent) devices.
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            4..=7 => match self.target() {
                Some((b, d, f, reg)) => {
                    let v = self.bus.read_config(b, d, f, reg);
                    extract(v, offset - 4, data);
                }
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                self.address = u32::from_le_bytes(b) & CONFIG_ADDRESS_MASK;
            }
            4..=7 => {
                if let (Some((b, d, f, reg)), Some((value, mask))) =
                    (self.target(), lanes(offset - 4, data))
                {
                    self.bus.write_config(b, d, f, reg, value, mask);
                }
            }
            _ => {}
        }
    }
}

/// ECAM (PCI Express enhanced configuration access): bus `b`, device `d`, function
/// `f`, register byte `r` at offset `b << 20 | d << 15 | f << 12 | r`. Insert it with
/// [`ECAM_BUS_SIZE`] per decoded bus; only bus 0 has devices.
pub struct PciConfigMmio {
    bus: Arc<PciBus>,
}

impl PciConfigMmio {
    pub fn new(bus: Arc<PciBus>) -> Self {
        Self { bus }
    }

    fn decode(offset: u64) -> Option<(u8, u8, u8, usize, u64)> {
        let bus = u8::try_from(offset >> 20).ok()?;
        Some((
            bus,
            ((offset >> 15) & 0x1f) as u8,
            ((offset >> 12) & 0x7) as u8,
            ((offset & 0xfff) >> 2) as usize,
            offset & 0x3,
        ))
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match Self::decode(offset) {
            Some((b, d, f, reg, byte)) if lanes(byte, data).is_some() => {
                let v = self.bus.read_config(b, d, f, reg);
                extract(v, byte, data);
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((b, d, f, reg, byte)) = Self::decode(offset) {
            if let Some((value, mask)) = lanes(byte, data) {
                self.bus.write_config(b, d, f, reg, value, mask);
            }
        }
    }
}

/// One BAR of a device as a bus region: insert it where the BAR decodes.
pub struct PciBarRegion {
    dev: SharedPciDevice,
    bar: u8,
}

impl PciBarRegion {
    pub fn new(dev: SharedPciDevice, bar: u8) -> Self {
        Self { dev, bar }
    }

    /// The region ready for [`crate::Bus::insert`].
    pub fn shared(dev: SharedPciDevice, bar: u8) -> SharedDevice {
        Arc::new(Mutex::new(Self::new(dev, bar)))
    }
}

impl BusDevice for PciBarRegion {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.dev).read_bar(self.bar, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.dev).write_bar(self.bar, offset, data);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::pci::config::{COMMAND_IO, COMMAND_MEMORY};
    use crate::Bus;

    /// A function with one 64-bit memory BAR of RAM and one I/O BAR.
    struct TestDev {
        config: PciConfiguration,
        ram: Vec<u8>,
    }

    impl TestDev {
        fn new(pin: u8) -> Self {
            let mut config = PciConfiguration::new(&PciHeader {
                vendor_id: 0x1234,
                device_id: 0x5678,
                revision: 2,
                class: 0x02,
                subclass: 0x00,
                prog_if: 0,
                subsystem_vendor_id: 0x1af4,
                subsystem_id: 0x1100,
                interrupt_pin: pin,
            });
            config.add_bar(0, BarKind::Memory64, 0x1000, true).unwrap();
            config.add_bar(2, BarKind::Io, 0x10, false).unwrap();
            Self {
                config,
                ram: vec![0; 0x1000],
            }
        }

        fn shared(pin: u8) -> Arc<Mutex<TestDev>> {
            Arc::new(Mutex::new(Self::new(pin)))
        }
    }

    impl PciDevice for TestDev {
        fn config(&self) -> &PciConfiguration {
            &self.config
        }
        fn config_mut(&mut self) -> &mut PciConfiguration {
            &mut self.config
        }
        fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
            for (i, d) in data.iter_mut().enumerate() {
                *d = if bar == 0 {
                    self.ram.get(offset as usize + i).copied().unwrap_or(0)
                } else {
                    0xaa
                };
            }
        }
        fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
            if bar == 0 {
                for (i, d) in data.iter().enumerate() {
                    if let Some(b) = self.ram.get_mut(offset as usize + i) {
                        *b = *d;
                    }
                }
            }
        }
    }

    fn addr(d: u8, f: u8) -> PciAddress {
        PciAddress::new(0, d, f).unwrap()
    }

    fn cf8(d: u8, f: u8, reg: u32) -> [u8; 4] {
        (0x8000_0000 | (u32::from(d) << 11) | (u32::from(f) << 8) | (reg << 2)).to_le_bytes()
    }

    fn io_read(io: &mut PciConfigIo, port: u64, len: usize) -> u32 {
        let mut b = [0u8; 4];
        io.read(port - 0xcf8, &mut b[..len]);
        u32::from_le_bytes(b)
    }

    #[test]
    fn config_io_reads_host_bridge_and_devices() {
        let bus = Arc::new(PciBus::new());
        bus.add_device(addr(3, 0), TestDev::shared(1), "nic0")
            .unwrap();
        let mut io = PciConfigIo::new(bus.clone());

        // Enable bit clear: data reads all ones.
        io.write(0, &0x0000_0000u32.to_le_bytes());
        assert_eq!(io_read(&mut io, 0xcfc, 4), 0xffff_ffff);

        io.write(0, &cf8(0, 0, 0));
        assert_eq!(io_read(&mut io, 0xcf8, 4), 0x8000_0000);
        assert_eq!(io_read(&mut io, 0xcfc, 4), 0x0008_1b36);
        assert_eq!(io_read(&mut io, 0xcfc, 2), 0x1b36);
        assert_eq!(io_read(&mut io, 0xcfe, 2), 0x0008);
        assert_eq!(io_read(&mut io, 0xcfd, 1), 0x1b);
        assert_eq!(
            io_read(&mut io, 0xcfd, 2),
            0x081b,
            "a word inside the dword"
        );
        assert_eq!(
            io_read(&mut io, 0xcff, 2),
            0xffff,
            "a word leaving the dword"
        );
        io.write(0, &cf8(0, 0, 2));
        assert_eq!(
            io_read(&mut io, 0xcfc, 4) >> 16,
            0x0600,
            "host bridge class"
        );

        io.write(0, &cf8(3, 0, 0));
        assert_eq!(io_read(&mut io, 0xcfc, 4), 0x5678_1234);
        io.write(0, &cf8(3, 0, 15));
        assert_eq!(io_read(&mut io, 0xcfc, 4), 0x0000_0113, "INTA, line 16+3");

        // Absent function, slot and bus read all ones.
        for a in [cf8(3, 1, 0), cf8(4, 0, 0)] {
            io.write(0, &a);
            assert_eq!(io_read(&mut io, 0xcfc, 4), 0xffff_ffff);
        }
        io.write(0, &(0x8001_0000u32).to_le_bytes());
        assert_eq!(io_read(&mut io, 0xcfc, 4), 0xffff_ffff);

        // Reserved bits of CONFIG_ADDRESS read 0; narrow accesses are not ours.
        io.write(0, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(io_read(&mut io, 0xcf8, 4), 0x80ff_fffc);
        io.write(1, &[0x00]);
        assert_eq!(io_read(&mut io, 0xcf8, 4), 0x80ff_fffc);
        assert_eq!(io_read(&mut io, 0xcf9, 1), 0xff);
        let mut big = [0u8; 8];
        io.read(4, &mut big);
        io.write(4, &big);
        io.read(100, &mut big[..2]);
        io.write(u64::MAX, &big[..1]);
    }

    #[test]
    fn config_io_writes_by_byte_lane() {
        let bus = Arc::new(PciBus::new());
        bus.add_device(addr(1, 0), TestDev::shared(1), "").unwrap();
        let mut io = PciConfigIo::new(bus.clone());
        io.write(0, &cf8(1, 0, 15));
        io.write(7, &[0x0b]); // 0xcff: max_lat, read-only
        io.write(4, &[0x0a]); // 0xcfc: interrupt line
        assert_eq!(io_read(&mut io, 0xcfc, 4), 0x0000_010a);
        io.write(0, &cf8(1, 0, 3));
        io.write(5, &[0x40]); // 0xcfd: latency timer
        assert_eq!(io_read(&mut io, 0xcfd, 1), 0x40);
        assert_eq!(io_read(&mut io, 0xcfc, 1), 0x00);
    }

    #[test]
    fn ecam_decodes_bus_device_function_register() {
        let bus = Arc::new(PciBus::new());
        bus.add_device(addr(5, 0), TestDev::shared(2), "a").unwrap();
        bus.add_device(addr(5, 2), TestDev::shared(0), "b").unwrap();
        bus.add_device(addr(7, 1), TestDev::shared(0), "hidden")
            .unwrap();
        let mut ecam = PciConfigMmio::new(bus.clone());
        let rd = |e: &mut PciConfigMmio, off: u64, len: usize| {
            let mut b = [0u8; 4];
            e.read(off, &mut b[..len]);
            u32::from_le_bytes(b)
        };
        assert_eq!(rd(&mut ecam, 0, 4), 0x0008_1b36);
        let f0 = 5 << 15;
        assert_eq!(rd(&mut ecam, f0, 4), 0x5678_1234);
        assert_eq!(rd(&mut ecam, f0 + 2, 2), 0x5678);
        assert_eq!(rd(&mut ecam, f0 + 0xe, 1), 0x80, "multi-function header");
        assert_eq!(
            rd(&mut ecam, f0 + 0x3c, 4),
            0x0000_0212,
            "INTB of slot 5: GSI 18"
        );
        assert_eq!(rd(&mut ecam, f0 | (2 << 12), 4), 0x5678_1234);
        assert_eq!(rd(&mut ecam, f0 | (1 << 12), 4), 0xffff_ffff);
        assert_eq!(
            rd(&mut ecam, 7 << 15 | 1 << 12, 4),
            0xffff_ffff,
            "no function 0"
        );
        assert_eq!(rd(&mut ecam, f0 + 0x100, 4), 0, "extended space reads 0");
        assert_eq!(rd(&mut ecam, f0 + 0xffc, 4), 0);
        assert_eq!(rd(&mut ecam, 1 << 20, 4), 0xffff_ffff, "bus 1");
        assert_eq!(rd(&mut ecam, u64::MAX - 3, 4), 0xffff_ffff);
        assert_eq!(rd(&mut ecam, f0 + 3, 2), 0xffff, "crosses a dword");
        let mut eight = [0u8; 8];
        ecam.read(f0, &mut eight);
        assert_eq!(eight, [0xff; 8]);
        ecam.write(f0 + 0x3c, &[0x42]);
        assert_eq!(rd(&mut ecam, f0 + 0x3c, 1), 0x42);
        ecam.write(f0 + 0x3c, &eight);
        ecam.write(u64::MAX, &[1]);
        assert_eq!(rd(&mut ecam, f0 + 0x3c, 1), 0x42);
    }

    #[derive(Default)]
    struct Remaps(Mutex<Vec<BarRemap>>);
    impl BarRemapHandler for Remaps {
        fn bar_remapped(&self, remap: &BarRemap, device: &SharedPciDevice) {
            // The bus must not hold the device's lock while the machine remaps.
            assert!(device.try_lock().is_ok(), "device locked during remap");
            self.0.lock().unwrap().push(remap.clone());
        }
    }

    impl Remaps {
        fn take(&self) -> Vec<BarRemap> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    #[test]
    fn bar_moves_are_reported_with_decode_and_sizing_ignored() {
        let bus = Arc::new(PciBus::new());
        let handler = Arc::new(Remaps::default());
        bus.set_remap_handler(handler.clone());
        let dev = TestDev::shared(1);
        let mut alloc = super::super::BarAllocator::new(0xc000_0000..0xe000_0000, 0x1000..0x10000);
        alloc.assign(&mut *dev.lock().unwrap()).unwrap();
        let a = addr(2, 0);
        bus.add_device(a, dev.clone(), "d").unwrap();
        let plugged = handler.take();
        assert_eq!(
            plugged,
            [
                BarRemap {
                    address: a,
                    bar: 0,
                    kind: BarKind::Memory64,
                    size: 0x1000,
                    old: None,
                    new: Some(0xc000_0000)
                },
                BarRemap {
                    address: a,
                    bar: 2,
                    kind: BarKind::Io,
                    size: 0x10,
                    old: None,
                    new: Some(0x1000)
                }
            ]
        );

        let cmd = u32::from(COMMAND_IO | COMMAND_MEMORY);
        // Linux sizes with decode off: one unmap each way, nothing while sizing.
        bus.write_config(0, 2, 0, 1, 0, 0xffff);
        assert_eq!(
            handler.take().iter().map(|r| r.new).collect::<Vec<_>>(),
            [None, None]
        );
        for reg in [4, 5, 8] {
            let orig = bus.read_config(0, 2, 0, reg);
            bus.write_config(0, 2, 0, reg, 0xffff_ffff, 0xffff_ffff);
            bus.write_config(0, 2, 0, reg, orig, 0xffff_ffff);
        }
        assert!(handler.take().is_empty());
        bus.write_config(0, 2, 0, 1, cmd, 0xffff);
        assert_eq!(handler.take().len(), 2);

        // The guest moves BAR 0 with decode on: low dword, then high dword.
        bus.write_config(0, 2, 0, 4, 0xd000_0000, 0xffff_ffff);
        let r = handler.take();
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].bar, r[0].old, r[0].new),
            (0, Some(0xc000_0000), Some(0xd000_0000))
        );
        bus.write_config(0, 2, 0, 5, 0x1, 0xffff_ffff);
        let r = handler.take();
        assert_eq!(
            (r[0].old, r[0].new),
            (Some(0xd000_0000), Some(0x1_d000_0000))
        );
        // A write that changes nothing reports nothing.
        bus.write_config(0, 2, 0, 5, 0x1, 0xffff_ffff);
        assert!(handler.take().is_empty());

        // Regions dispatch to the device's BAR.
        let mmio = Bus::new();
        mmio.insert(PciBarRegion::shared(dev.clone(), 0), 0x1_d000_0000, 0x1000)
            .unwrap();
        assert!(mmio.write(0x1_d000_0010, &[1, 2, 3, 4]));
        let mut b = [0u8; 4];
        assert!(mmio.read(0x1_d000_0010, &mut b));
        assert_eq!(b, [1, 2, 3, 4]);

        let removed = bus.remove_device(a).unwrap();
        assert!(Arc::ptr_eq(&removed, &(dev.clone() as SharedPciDevice)));
        let r = handler.take();
        assert_eq!(
            r.iter().map(|r| (r.old, r.new)).collect::<Vec<_>>(),
            [(Some(0x1_d000_0000), None), (Some(0x1000), None)]
        );
        assert!(bus.remove_device(a).is_none());
    }

    #[test]
    fn slots_and_query_pci() {
        let bus = PciBus::new();
        assert_eq!(bus.free_slot(), Some(addr(1, 0)));
        bus.add_device(addr(1, 0), TestDev::shared(1), "disk0")
            .unwrap();
        assert_eq!(
            bus.add_device(addr(1, 0), TestDev::shared(1), "x"),
            Err(PciError::SlotOccupied(addr(1, 0)))
        );
        assert!(bus
            .add_device(
                PciAddress {
                    bus: 0,
                    device: 40,
                    function: 0
                },
                TestDev::shared(1),
                "x"
            )
            .is_err());
        assert_eq!(bus.free_slot(), Some(addr(2, 0)));
        assert!(bus.device(addr(1, 0)).is_some());
        assert!(bus.device(addr(1, 1)).is_none());
        assert_eq!(bus.devices().len(), 2);

        let info = bus.info();
        assert_eq!(info.len(), 2);
        let hb = &info[0];
        assert_eq!(
            (hb.vendor_id, hb.device_id, hb.class_code()),
            (0x1b36, 0x0008, 0x0600)
        );
        assert_eq!((hb.irq_pin, hb.irq), (0, None));
        assert!(hb.bars.is_empty());
        let d = &info[1];
        assert_eq!((d.bus, d.slot, d.function), (0, 1, 0));
        assert_eq!((d.vendor_id, d.device_id, d.revision), (0x1234, 0x5678, 2));
        assert_eq!((d.subsystem_vendor_id, d.subsystem_id), (0x1af4, 0x1100));
        assert_eq!(d.class_code(), 0x0200);
        assert_eq!((d.irq_pin, d.irq), (1, Some(17)));
        assert_eq!(d.qdev_id, "disk0");
        assert_eq!(d.bars.len(), 2);
        assert_eq!(d.bars[0].mapped, None, "not placed");

        for s in 2..32 {
            bus.add_device(addr(s, 0), TestDev::shared(0), "").unwrap();
        }
        assert_eq!(bus.free_slot(), None);
    }
}
