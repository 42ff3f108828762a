//! A type-0 (endpoint) configuration space: the 256 bytes every PCI function answers
//! with, a per-byte write mask and write-one-to-clear mask (so read-only and RW1C bits
//! need no code), the six BAR registers with their sizing semantics, and the
//! capability list.
//!
//! BAR sizing falls out of the write mask: a BAR's writable bits are exactly its
//! address bits above its size, so the guest writing all ones reads back the size
//! mask with the type bits, as on hardware.

use serde::{Deserialize, Serialize};

use super::PciError;

/// Bytes of conventional configuration space; an ECAM access beyond it reads 0.
pub const CONFIG_SPACE_SIZE: usize = 256;
/// Dword registers in [`CONFIG_SPACE_SIZE`].
pub const CONFIG_REGS: usize = CONFIG_SPACE_SIZE / 4;
pub const NUM_BARS: usize = 6;

// Header offsets (PCI Local Bus 3.0, 6.1).
pub const VENDOR_ID: usize = 0x00;
pub const DEVICE_ID: usize = 0x02;
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const REVISION_ID: usize = 0x08;
pub const PROG_IF: usize = 0x09;
pub const SUBCLASS: usize = 0x0a;
pub const CLASS_CODE: usize = 0x0b;
pub const CACHE_LINE_SIZE: usize = 0x0c;
pub const LATENCY_TIMER: usize = 0x0d;
pub const HEADER_TYPE: usize = 0x0e;
pub const BAR0: usize = 0x10;
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const SUBSYSTEM_ID: usize = 0x2e;
pub const CAPABILITIES_POINTER: usize = 0x34;
pub const INTERRUPT_LINE: usize = 0x3c;
pub const INTERRUPT_PIN: usize = 0x3d;

pub const COMMAND_IO: u16 = 1 << 0;
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_PARITY: u16 = 1 << 6;
pub const COMMAND_SERR: u16 = 1 << 8;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// The command bits a guest may change; the rest are hardwired to 0.
const COMMAND_WRITABLE: u16 = COMMAND_IO
    | COMMAND_MEMORY
    | COMMAND_BUS_MASTER
    | COMMAND_PARITY
    | COMMAND_SERR
    | COMMAND_INTX_DISABLE;

pub const STATUS_INTERRUPT: u16 = 1 << 3;
pub const STATUS_CAP_LIST: u16 = 1 << 4;
/// Error bits of the status register: read, then cleared by writing 1.
const STATUS_W1C: u16 = 0xf900;

const HEADER_TYPE_MULTIFUNCTION: u8 = 0x80;
/// Capabilities live after the 64-byte header, dword aligned.
const CAP_START: usize = 0x40;

/// Highest guest-physical address bit a 64-bit BAR may use (x86's architectural
/// MAXPHYADDR); a BAR programmed above it, as happens half-way through sizing, is
/// treated as unmapped rather than reported to the machine.
const MAX_PHYS_ADDR: u64 = 1 << 52;
/// The x86 I/O port space.
const IO_SPACE_END: u64 = 0x1_0000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BarKind {
    /// I/O ports, 16-bit decode, 4..=256 bytes.
    Io,
    /// Memory below 4 GiB.
    Memory32,
    /// Memory anywhere in the 64-bit space; takes this BAR register and the next.
    Memory64,
}

impl BarKind {
    pub fn is_memory(self) -> bool {
        self != BarKind::Io
    }
}

/// What a BAR decodes, fixed by the device model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BarSpec {
    pub kind: BarKind,
    pub size: u64,
    pub prefetchable: bool,
}

/// One BAR as the machine and `query-pci` see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciBarInfo {
    pub index: u8,
    pub kind: BarKind,
    pub prefetchable: bool,
    pub size: u64,
    /// The address in the BAR register (whatever the guest last wrote).
    pub address: u64,
    /// Where the BAR decodes now: `None` while the command register disables its
    /// space or the address is invalid (0, all-ones during sizing, wrapping).
    pub mapped: Option<u64>,
}

/// The identity of a function: what its header says it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciHeader {
    pub vendor_id: u16,
    pub device_id: u16,
    pub revision: u8,
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
    /// 0: no INTx; 1..=4: INTA..INTD.
    pub interrupt_pin: u8,
}

/// What a guest (or firmware) wrote to a configuration space, for migration: the 256
/// bytes as they read now. Only the bits the guest may change are taken on restore;
/// the rest must match the destination's own, built from the same command line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciConfigState {
    pub bytes: Vec<u8>,
}

/// A type-0 configuration space. Plain data (serde), so migration can carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciConfiguration {
    bytes: Vec<u8>,
    /// Bits the guest may change.
    wmask: Vec<u8>,
    /// Bits the guest clears by writing 1.
    w1cmask: Vec<u8>,
    /// Indexed by BAR register; the upper register of a 64-bit BAR is `None`.
    bars: Vec<Option<BarSpec>>,
    /// Offset of the last capability (0: none yet) and of the next free byte.
    last_cap: usize,
    next_cap: usize,
}

impl PciConfiguration {
    pub fn new(header: &PciHeader) -> Self {
        let mut c = Self {
            bytes: vec![0; CONFIG_SPACE_SIZE],
            wmask: vec![0; CONFIG_SPACE_SIZE],
            w1cmask: vec![0; CONFIG_SPACE_SIZE],
            bars: vec![None; NUM_BARS],
            last_cap: 0,
            next_cap: CAP_START,
        };
        c.write_u16(VENDOR_ID, header.vendor_id);
        c.write_u16(DEVICE_ID, header.device_id);
        c.write_u8(REVISION_ID, header.revision);
        c.write_u8(PROG_IF, header.prog_if);
        c.write_u8(SUBCLASS, header.subclass);
        c.write_u8(CLASS_CODE, header.class);
        c.write_u16(SUBSYSTEM_VENDOR_ID, header.subsystem_vendor_id);
        c.write_u16(SUBSYSTEM_ID, header.subsystem_id);
        c.write_u8(INTERRUPT_PIN, header.interrupt_pin.min(4));
        c.set_wmask_u16(COMMAND, COMMAND_WRITABLE);
        c.w1cmask[STATUS..STATUS + 2].copy_from_slice(&STATUS_W1C.to_le_bytes());
        c.wmask[CACHE_LINE_SIZE] = 0xff;
        c.wmask[LATENCY_TIMER] = 0xff;
        c.wmask[INTERRUPT_LINE] = 0xff;
        c
    }

    fn set_wmask_u16(&mut self, off: usize, mask: u16) {
        self.wmask[off..off + 2].copy_from_slice(&mask.to_le_bytes());
    }

    fn set_wmask_u32(&mut self, off: usize, mask: u32) {
        self.wmask[off..off + 4].copy_from_slice(&mask.to_le_bytes());
    }

    /// Declares BAR `index`. A 64-bit BAR also takes register `index + 1`.
    pub fn add_bar(
        &mut self,
        index: u8,
        kind: BarKind,
        size: u64,
        prefetchable: bool,
    ) -> Result<(), PciError> {
        let i = usize::from(index);
        let regs = if kind == BarKind::Memory64 { 2 } else { 1 };
        if i + regs > NUM_BARS {
            return Err(PciError::BarIndex(index));
        }
        if (i..i + regs).any(|r| self.bar_register_used(r)) {
            return Err(PciError::BarInUse(index));
        }
        let (min, max) = match kind {
            BarKind::Io => (4, 256),
            BarKind::Memory32 => (16, 1 << 31),
            BarKind::Memory64 => (16, 1 << 63),
        };
        if !size.is_power_of_two() || size < min || size > max {
            return Err(PciError::BarSize { index, kind, size });
        }
        let prefetchable = prefetchable && kind.is_memory();
        let off = BAR0 + 4 * i;
        let addr_mask = !(size - 1);
        let (type_bits, low_mask) = match kind {
            BarKind::Io => (0x1, addr_mask as u32 & 0xffff & !0x3),
            BarKind::Memory32 => (0x0, addr_mask as u32 & !0xf),
            BarKind::Memory64 => (0x4, addr_mask as u32 & !0xf),
        };
        let type_bits = type_bits | if prefetchable { 0x8 } else { 0 };
        self.write_u32(off, type_bits);
        self.set_wmask_u32(off, low_mask);
        if kind == BarKind::Memory64 {
            self.write_u32(off + 4, 0);
            self.set_wmask_u32(off + 4, (addr_mask >> 32) as u32);
        }
        self.bars[i] = Some(BarSpec {
            kind,
            size,
            prefetchable,
        });
        Ok(())
    }

    fn bar_register_used(&self, reg: usize) -> bool {
        self.bars[reg].is_some()
            || (reg > 0 && self.bars[reg - 1].is_some_and(|b| b.kind == BarKind::Memory64))
    }

    pub fn bar_spec(&self, index: u8) -> Option<BarSpec> {
        self.bars.get(usize::from(index)).copied().flatten()
    }

    /// The address in BAR `index`'s register(s), type bits stripped (0 if no BAR).
    pub fn bar_address(&self, index: u8) -> u64 {
        let Some(spec) = self.bar_spec(index) else {
            return 0;
        };
        let off = BAR0 + 4 * usize::from(index);
        let low = u64::from(self.read_u32(off));
        match spec.kind {
            BarKind::Io => low & !0x3,
            BarKind::Memory32 => low & !0xf,
            BarKind::Memory64 => (u64::from(self.read_u32(off + 4)) << 32) | (low & !0xf),
        }
    }

    /// Programs BAR `index` as firmware would (the machine placing a device).
    pub fn set_bar_address(&mut self, index: u8, addr: u64) -> Result<(), PciError> {
        let spec = self.bar_spec(index).ok_or(PciError::BarIndex(index))?;
        let limit = match spec.kind {
            BarKind::Io => IO_SPACE_END,
            BarKind::Memory32 => 1 << 32,
            BarKind::Memory64 => MAX_PHYS_ADDR,
        };
        let fits = addr.checked_add(spec.size).is_some_and(|end| end <= limit);
        if addr % spec.size != 0 || !fits {
            return Err(PciError::BarAddress {
                index,
                addr,
                size: spec.size,
            });
        }
        let off = BAR0 + 4 * usize::from(index);
        let type_bits = self.read_u32(off) & if spec.kind == BarKind::Io { 0x3 } else { 0xf };
        self.write_u32(off, (addr as u32) | type_bits);
        if spec.kind == BarKind::Memory64 {
            self.write_u32(off + 4, (addr >> 32) as u32);
        }
        Ok(())
    }

    /// Where BAR `index` decodes now, if anywhere (see [`PciBarInfo::mapped`]).
    pub fn mapped_bar(&self, index: u8) -> Option<u64> {
        let spec = self.bar_spec(index)?;
        let enable = if spec.kind == BarKind::Io {
            COMMAND_IO
        } else {
            COMMAND_MEMORY
        };
        if self.command() & enable == 0 {
            return None;
        }
        let addr = self.bar_address(index);
        let end = addr.checked_add(spec.size)?;
        // The last byte of each space is never valid: a BAR there is one being sized.
        let limit = match spec.kind {
            BarKind::Io => IO_SPACE_END - 1,
            BarKind::Memory32 => (1 << 32) - 1,
            BarKind::Memory64 => MAX_PHYS_ADDR,
        };
        (addr != 0 && end <= limit).then_some(addr)
    }

    /// Every BAR the device declares, lowest index first.
    pub fn bars(&self) -> Vec<PciBarInfo> {
        (0..NUM_BARS as u8)
            .filter_map(|index| {
                let spec = self.bar_spec(index)?;
                Some(PciBarInfo {
                    index,
                    kind: spec.kind,
                    prefetchable: spec.prefetchable,
                    size: spec.size,
                    address: self.bar_address(index),
                    mapped: self.mapped_bar(index),
                })
            })
            .collect()
    }

    /// Appends a capability with ID `id`; `body` follows the ID and next-pointer
    /// bytes, and `body_wmask` marks which of its bits the guest may write (missing
    /// bytes are read-only). Returns the capability's offset.
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        body_wmask: &[u8],
    ) -> Result<usize, PciError> {
        let off = self.next_cap;
        let len = 2 + body.len();
        let end = off + len;
        if end > CONFIG_SPACE_SIZE {
            return Err(PciError::CapabilitySpace { len });
        }
        self.bytes[off] = id;
        self.bytes[off + 1] = 0;
        self.bytes[off + 2..end].copy_from_slice(body);
        for (i, m) in body_wmask.iter().take(body.len()).enumerate() {
            self.wmask[off + 2 + i] = *m;
        }
        if self.last_cap == 0 {
            self.bytes[CAPABILITIES_POINTER] = off as u8;
        } else {
            self.bytes[self.last_cap + 1] = off as u8;
        }
        let status = self.read_u16(STATUS) | STATUS_CAP_LIST;
        self.write_u16(STATUS, status);
        self.last_cap = off;
        self.next_cap = end.next_multiple_of(4);
        Ok(off)
    }

    /// Dword register `reg` as the guest reads it; beyond the header space reads 0.
    pub fn read_reg(&self, reg: usize) -> u32 {
        if reg >= CONFIG_REGS {
            return 0;
        }
        self.read_u32(reg * 4)
    }

    /// A guest write of `value` to dword register `reg`, in the byte lanes set in
    /// `mask` (0xff per enabled byte). Read-only bits keep their value; RW1C bits
    /// clear where `value` has a 1.
    pub fn write_reg(&mut self, reg: usize, value: u32, mask: u32) {
        if reg >= CONFIG_REGS {
            return;
        }
        for i in 0..4 {
            let off = reg * 4 + i;
            let lane = (mask >> (8 * i)) as u8;
            let v = (value >> (8 * i)) as u8;
            let w = self.wmask[off] & lane;
            let mut b = (self.bytes[off] & !w) | (v & w);
            b &= !(v & lane & self.w1cmask[off]);
            self.bytes[off] = b;
        }
    }

    /// Device-side accessors: they bypass the write masks, and are no-ops (or read 0)
    /// outside the configuration space.
    pub fn read_u8(&self, off: usize) -> u8 {
        self.bytes.get(off).copied().unwrap_or(0)
    }

    pub fn read_u16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.read_u8(off), self.read_u8(off + 1)])
    }

    pub fn read_u32(&self, off: usize) -> u32 {
        u32::from_le_bytes([
            self.read_u8(off),
            self.read_u8(off + 1),
            self.read_u8(off + 2),
            self.read_u8(off + 3),
        ])
    }

    pub fn write_u8(&mut self, off: usize, v: u8) {
        if let Some(b) = self.bytes.get_mut(off) {
            *b = v;
        }
    }

    pub fn write_u16(&mut self, off: usize, v: u16) {
        for (i, b) in v.to_le_bytes().into_iter().enumerate() {
            self.write_u8(off + i, b);
        }
    }

    pub fn write_u32(&mut self, off: usize, v: u32) {
        for (i, b) in v.to_le_bytes().into_iter().enumerate() {
            self.write_u8(off + i, b);
        }
    }

    /// The registers to migrate (see [`PciConfigState`]).
    pub fn state(&self) -> PciConfigState {
        PciConfigState {
            bytes: self.bytes.clone(),
        }
    }

    /// Takes the guest-writable bits of `state` (BARs, command, interrupt line,
    /// capability control words...). Refuses, changing nothing, a state of another
    /// size or whose read-only bits differ from this function's (another device, or
    /// another layout of capabilities).
    pub fn restore(&mut self, state: &PciConfigState) -> Result<(), PciError> {
        if state.bytes.len() != CONFIG_SPACE_SIZE {
            return Err(PciError::ConfigState(format!(
                "{} bytes, expected {CONFIG_SPACE_SIZE}",
                state.bytes.len()
            )));
        }
        let mismatch = (0..CONFIG_SPACE_SIZE).find(|&off| {
            let ro = !(self.wmask[off] | self.w1cmask[off]);
            (state.bytes[off] ^ self.bytes[off]) & ro != 0
        });
        if let Some(off) = mismatch {
            return Err(PciError::ConfigState(format!(
                "read-only byte {off:#x} is {:#04x}, this device has {:#04x}",
                state.bytes[off], self.bytes[off]
            )));
        }
        self.bytes.copy_from_slice(&state.bytes);
        Ok(())
    }

    pub fn command(&self) -> u16 {
        self.read_u16(COMMAND)
    }

    /// Sets decode enables as firmware does after placing the BARs.
    pub fn enable_decode(&mut self, io: bool, memory: bool) {
        let mut cmd = self.command();
        if io {
            cmd |= COMMAND_IO;
        }
        if memory {
            cmd |= COMMAND_MEMORY;
        }
        self.write_u16(COMMAND, cmd);
    }

    pub fn header(&self) -> PciHeader {
        PciHeader {
            vendor_id: self.read_u16(VENDOR_ID),
            device_id: self.read_u16(DEVICE_ID),
            revision: self.read_u8(REVISION_ID),
            class: self.read_u8(CLASS_CODE),
            subclass: self.read_u8(SUBCLASS),
            prog_if: self.read_u8(PROG_IF),
            subsystem_vendor_id: self.read_u16(SUBSYSTEM_VENDOR_ID),
            subsystem_id: self.read_u16(SUBSYSTEM_ID),
            interrupt_pin: self.read_u8(INTERRUPT_PIN),
        }
    }

    pub fn interrupt_pin(&self) -> u8 {
        self.read_u8(INTERRUPT_PIN)
    }

    pub fn interrupt_line(&self) -> u8 {
        self.read_u8(INTERRUPT_LINE)
    }

    pub fn set_interrupt_line(&mut self, line: u8) {
        self.write_u8(INTERRUPT_LINE, line);
    }

    pub fn set_multifunction(&mut self, on: bool) {
        let t = self.read_u8(HEADER_TYPE);
        let t = if on {
            t | HEADER_TYPE_MULTIFUNCTION
        } else {
            t & !HEADER_TYPE_MULTIFUNCTION
        };
        self.write_u8(HEADER_TYPE, t);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn header() -> PciHeader {
        PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            revision: 1,
            class: 0x01,
            subclass: 0x00,
            prog_if: 0,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1100,
            interrupt_pin: 1,
        }
    }

    /// The guest's view: size a BAR register the way Linux does.
    fn size_reg(c: &mut PciConfiguration, reg: usize) -> u32 {
        let orig = c.read_reg(reg);
        c.write_reg(reg, 0xffff_ffff, 0xffff_ffff);
        let v = c.read_reg(reg);
        c.write_reg(reg, orig, 0xffff_ffff);
        assert_eq!(c.read_reg(reg), orig, "restored");
        v
    }

    #[test]
    fn header_fields_are_read_only() {
        let mut c = PciConfiguration::new(&header());
        assert_eq!(c.read_reg(0), 0x1042_1af4);
        assert_eq!(c.read_reg(2), 0x0100_0001);
        assert_eq!(c.read_reg(11), 0x1100_1af4);
        assert_eq!(c.read_reg(15) >> 8 & 0xff, 1, "INTA");
        for reg in [0, 2, 11] {
            let before = c.read_reg(reg);
            c.write_reg(reg, 0xdead_beef, 0xffff_ffff);
            assert_eq!(c.read_reg(reg), before, "reg {reg}");
        }
        // Interrupt line is RW, pin is not.
        c.write_reg(15, 0xffff_ff0b, 0xffff_ffff);
        assert_eq!(c.read_reg(15), 0x0000_010b);
        // Beyond the header space.
        assert_eq!(c.read_reg(64), 0);
        assert_eq!(c.read_reg(usize::MAX), 0);
        c.write_reg(usize::MAX, 1, 0xffff_ffff);
    }

    #[test]
    fn command_keeps_only_defined_bits_and_status_errors_clear_on_one() {
        let mut c = PciConfiguration::new(&header());
        c.write_reg(1, 0xffff_ffff, 0x0000_ffff);
        assert_eq!(c.command(), COMMAND_WRITABLE);
        // A byte write to the high command byte only touches that lane.
        c.write_reg(1, 0x0000_0000, 0x0000_ff00);
        assert_eq!(c.command(), COMMAND_WRITABLE & 0xff);
        // Status: an error bit set by the device is cleared by writing 1 to it, and
        // CAP_LIST is read-only.
        c.write_u16(STATUS, 0x8000 | STATUS_CAP_LIST);
        c.write_reg(1, 0x0000_0000, 0xffff_0000);
        assert_eq!(c.read_u16(STATUS), 0x8000 | STATUS_CAP_LIST);
        c.write_reg(1, 0xffff_0000, 0xffff_0000);
        assert_eq!(c.read_u16(STATUS), STATUS_CAP_LIST);
    }

    #[test]
    fn memory32_bar_sizing() {
        let mut c = PciConfiguration::new(&header());
        c.add_bar(0, BarKind::Memory32, 0x4000, false).unwrap();
        assert_eq!(size_reg(&mut c, 4), 0xffff_c000);
        c.add_bar(1, BarKind::Memory32, 0x10_0000, true).unwrap();
        assert_eq!(size_reg(&mut c, 5), 0xfff0_0008, "prefetchable bit");
        c.write_reg(4, 0xc000_0000 | 0x123, 0xffff_ffff);
        assert_eq!(c.read_reg(4), 0xc000_0000, "low bits are read-only");
        assert_eq!(c.bar_address(0), 0xc000_0000);
    }

    #[test]
    fn memory64_bar_sizing_takes_two_registers() {
        let mut c = PciConfiguration::new(&header());
        c.add_bar(2, BarKind::Memory64, 0x8000, false).unwrap();
        assert_eq!(size_reg(&mut c, 6), 0xffff_8004);
        assert_eq!(size_reg(&mut c, 7), 0xffff_ffff);
        assert_eq!(
            c.add_bar(3, BarKind::Memory32, 16, false),
            Err(PciError::BarInUse(3))
        );
        assert_eq!(
            c.add_bar(5, BarKind::Memory64, 16, false),
            Err(PciError::BarIndex(5))
        );
        // A BAR bigger than 4 GiB has writable-zero low dword bits.
        c.add_bar(0, BarKind::Memory64, 1 << 33, true).unwrap();
        assert_eq!(size_reg(&mut c, 4), 0x0000_000c);
        assert_eq!(size_reg(&mut c, 5), 0xffff_fffe);
        c.set_bar_address(2, 0x1_2345_8000).unwrap();
        assert_eq!(c.read_reg(6), 0x2345_8004);
        assert_eq!(c.read_reg(7), 0x1);
        assert_eq!(c.bar_address(2), 0x1_2345_8000);
    }

    #[test]
    fn io_bar_sizing() {
        let mut c = PciConfiguration::new(&header());
        c.add_bar(4, BarKind::Io, 0x40, true).unwrap();
        assert_eq!(size_reg(&mut c, 8), 0x0000_ffc1, "16-bit decode, I/O bit");
        assert!(!c.bar_spec(4).unwrap().prefetchable);
        for size in [2, 512, 0x30] {
            assert!(c.add_bar(5, BarKind::Io, size, false).is_err(), "{size}");
        }
    }

    #[test]
    fn unimplemented_bars_and_rom_read_zero() {
        let mut c = PciConfiguration::new(&header());
        for reg in 4..10 {
            assert_eq!(size_reg(&mut c, reg), 0);
        }
        assert_eq!(size_reg(&mut c, 12), 0, "no expansion ROM");
        assert!(c.bars().is_empty());
    }

    #[test]
    fn a_bar_maps_only_with_decode_on_and_a_valid_address() {
        let mut c = PciConfiguration::new(&header());
        c.add_bar(0, BarKind::Memory32, 0x1000, false).unwrap();
        c.add_bar(1, BarKind::Memory64, 0x1000, false).unwrap();
        c.add_bar(3, BarKind::Io, 0x20, false).unwrap();
        c.set_bar_address(0, 0xc000_0000).unwrap();
        c.set_bar_address(1, 0xc000_1000).unwrap();
        c.set_bar_address(3, 0x1000).unwrap();
        assert_eq!(c.mapped_bar(0), None, "decode off");
        c.enable_decode(false, true);
        assert_eq!(c.mapped_bar(0), Some(0xc000_0000));
        assert_eq!(c.mapped_bar(1), Some(0xc000_1000));
        assert_eq!(c.mapped_bar(3), None);
        c.enable_decode(true, true);
        assert_eq!(c.mapped_bar(3), Some(0x1000));
        // During sizing the all-ones address is not a mapping.
        c.write_reg(4, 0xffff_ffff, 0xffff_ffff);
        assert_eq!(c.mapped_bar(0), None);
        c.write_reg(6, 0xffff_ffff, 0xffff_ffff);
        c.write_reg(5, 0xffff_ffff, 0xffff_ffff);
        assert_eq!(c.mapped_bar(1), None);
        c.write_reg(5, 0xc000_1000, 0xffff_ffff);
        assert_eq!(c.mapped_bar(1), None, "high dword still all ones");
        c.write_reg(7, 0xffff_ffff, 0xffff_ffff);
        assert_eq!(c.mapped_bar(3), None);
        c.write_reg(4, 0, 0xffff_ffff);
        assert_eq!(c.mapped_bar(0), None, "address 0");
        assert_eq!(c.mapped_bar(2), None, "upper half of a 64-bit BAR");
        let infos = c.bars();
        assert_eq!(infos.iter().map(|b| b.index).collect::<Vec<_>>(), [0, 1, 3]);
    }

    #[test]
    fn set_bar_address_checks_alignment_and_range() {
        let mut c = PciConfiguration::new(&header());
        c.add_bar(0, BarKind::Memory32, 0x1000, false).unwrap();
        c.add_bar(1, BarKind::Io, 0x100, false).unwrap();
        assert!(c.set_bar_address(0, 0xc000_0800).is_err());
        assert!(c.set_bar_address(0, 0x1_0000_0000).is_err());
        assert!(c.set_bar_address(1, 0xff00).is_ok());
        assert!(c.set_bar_address(1, 0x1_0000).is_err());
        assert!(c.set_bar_address(2, 0).is_err());
    }

    #[test]
    fn capability_list_links_and_masks() {
        let mut c = PciConfiguration::new(&header());
        assert_eq!(c.read_u16(STATUS) & STATUS_CAP_LIST, 0);
        let a = c.add_capability(0x09, &[1, 2, 3], &[]).unwrap();
        let b = c.add_capability(0x11, &[0, 0, 9, 9], &[0, 0xc0]).unwrap();
        assert_eq!(a, 0x40);
        assert_eq!(b, 0x48, "dword aligned after a 5-byte capability");
        assert_ne!(c.read_u16(STATUS) & STATUS_CAP_LIST, 0);
        assert_eq!(c.read_u8(CAPABILITIES_POINTER), 0x40);
        assert_eq!(c.read_reg(0x40 / 4), 0x0201_4809);
        assert_eq!(c.read_reg(0x48 / 4), 0x0000_0011, "last: next is 0");
        c.write_reg(0x40 / 4, 0xffff_ffff, 0xffff_ffff);
        assert_eq!(c.read_reg(0x40 / 4), 0x0201_4809, "read-only body");
        c.write_reg(0x48 / 4, 0xffff_ffff, 0xffff_ffff);
        assert_eq!(c.read_reg(0x48 / 4), 0xc000_0011, "writable bits only");
        assert!(matches!(
            c.add_capability(0x09, &[0; 200], &[]),
            Err(PciError::CapabilitySpace { .. })
        ));
    }
}
