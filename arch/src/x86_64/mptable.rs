//! The Intel MultiProcessor Specification (1.4) table: the floating pointer and the
//! configuration table a Linux guest reads when it does not use ACPI (`acpi=off`), and
//! as a fallback. It lists the CPUs, the ISA bus, the I/O APIC and how ISA interrupts
//! reach the I/O APIC and the local APICs.
//!
//! Both structures sit at [`layout::MPTABLE_START`], the last KiB of conventional memory,
//! one of the places the kernel scans for the `_MP_` signature; the configuration table
//! follows the floating pointer and may run past that KiB (the whole span up to
//! [`layout::RSDP_ADDR`] is reserved in the e820 map).
//!
//! The structures are serialised field by field in little-endian order, so no
//! `repr(packed)` type or `unsafe` is needed.

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use super::layout;

/// Most CPUs the tables describe: APIC ids are one byte, 0xff is the broadcast id,
/// and the I/O APIC takes the id after the last CPU.
pub const MAX_CPUS: u8 = 254;

/// Errors while building the MP table.
#[derive(Debug, Error)]
pub enum MptableError {
    #[error("the MP table needs at least one CPU")]
    NoCpus,
    #[error("{0} CPUs requested; the MP table describes at most {MAX_CPUS}")]
    TooManyCpus(u8),
    #[error(
        "the MP table is {size} bytes but only {room} fit between {:#x} and {:#x}",
        layout::MPTABLE_START,
        layout::RSDP_ADDR
    )]
    TooBig { size: usize, room: u64 },
    #[error(
        "cannot write the MP table to guest memory at {addr:#x} (is RAM mapped there?): {source}"
    )]
    GuestMemory {
        addr: u64,
        #[source]
        source: GuestMemoryError,
    },
}

// Sizes of the structures, from the MP specification 1.4, chapter 4.
const FLOATING_POINTER_SIZE: usize = 16;
const CONFIG_HEADER_SIZE: usize = 44;
const PROCESSOR_ENTRY_SIZE: usize = 20;
const BUS_ENTRY_SIZE: usize = 8;
const IOAPIC_ENTRY_SIZE: usize = 8;
const IO_INTERRUPT_ENTRY_SIZE: usize = 8;
const LOCAL_INTERRUPT_ENTRY_SIZE: usize = 8;

// Entry types of the configuration table.
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

// Interrupt types of the interrupt entries.
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger "conform to the bus": edge, active high for ISA.
const INT_FLAGS_CONFORMS: u16 = 0;

const SPEC_REVISION_1_4: u8 = 4;
const CPU_FLAG_ENABLED: u8 = 1 << 0;
const CPU_FLAG_BSP: u8 = 1 << 1;
/// Version of KVM's local APIC; Linux warns about and patches a version of 0.
const LAPIC_VERSION: u8 = 0x14;
/// Version of KVM's in-kernel I/O APIC (an 82093AA).
const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_FLAG_ENABLED: u8 = 1 << 0;
/// CPU signature: family 6. Linux only prints it; the real CPUID comes from the vCPU.
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID.1:EDX bits the entry claims: FPU and on-chip APIC.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
/// The ISA bus is the only bus; its id is what interrupt entries name as source.
const ISA_BUS_ID: u8 = 0;
/// ISA IRQs routed through the I/O APIC, each to the pin of the same number. KVM's
/// in-kernel I/O APIC has 24 pins; the upper 8 are left for PCI, which the ISA bus
/// entries do not describe.
const ISA_IRQS: u8 = 16;
/// Local interrupt entries: ExtINT (the 8259's output) on LINT0, NMI on LINT1.
const LOCAL_INTERRUPTS: usize = 2;
const ALL_LOCAL_APICS: u8 = 0xff;

const OEM_ID: [u8; 8] = *b"KESTREL ";
const PRODUCT_ID: [u8; 12] = *b"KESTREL VM  ";

// The 32-bit address fields hold fixed addresses below 4 GiB.
const _: () = assert!(layout::APIC_ADDR <= u32::MAX as u64);
const _: () = assert!(layout::IOAPIC_ADDR <= u32::MAX as u64);
const _: () = assert!(layout::MPTABLE_START + (FLOATING_POINTER_SIZE as u64) <= u32::MAX as u64);

/// Bytes of the configuration table (header and entries) for `num_cpus` CPUs.
fn config_table_size(num_cpus: u8) -> usize {
    CONFIG_HEADER_SIZE
        + usize::from(num_cpus) * PROCESSOR_ENTRY_SIZE
        + BUS_ENTRY_SIZE
        + IOAPIC_ENTRY_SIZE
        + usize::from(ISA_IRQS) * IO_INTERRUPT_ENTRY_SIZE
        + LOCAL_INTERRUPTS * LOCAL_INTERRUPT_ENTRY_SIZE
}

/// The value that makes the bytes of `data` sum to zero (mod 256).
fn checksum(data: &[u8]) -> u8 {
    0u8.wrapping_sub(data.iter().fold(0u8, |acc, b| acc.wrapping_add(*b)))
}

/// Write the MP floating pointer and configuration table for `num_cpus` CPUs at
/// [`layout::MPTABLE_START`]. CPU `i` has APIC id `i` (CPU 0 is the bootstrap
/// processor); the I/O APIC has id `num_cpus` and its registers at
/// [`layout::IOAPIC_ADDR`].
pub fn setup_mptable<M: GuestMemory>(mem: &M, num_cpus: u8) -> Result<(), MptableError> {
    let table = build_mptable(num_cpus)?;
    mem.write_slice(&table, GuestAddress(layout::MPTABLE_START))
        .map_err(|source| MptableError::GuestMemory {
            addr: layout::MPTABLE_START,
            source,
        })
}

/// The floating pointer followed by the configuration table, checksums filled in.
fn build_mptable(num_cpus: u8) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 {
        return Err(MptableError::NoCpus);
    }
    if num_cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let config_size = config_table_size(num_cpus);
    let size = FLOATING_POINTER_SIZE + config_size;
    let room = layout::RSDP_ADDR - layout::MPTABLE_START;
    if size as u64 > room {
        return Err(MptableError::TooBig { size, room });
    }
    // Checked above: the table fits below RSDP_ADDR, so its length fits in 16 bits.
    let config_len = u16::try_from(config_size).map_err(|_| MptableError::TooBig { size, room })?;

    let mut out = Vec::with_capacity(size);
    let config_addr = layout::MPTABLE_START as u32 + FLOATING_POINTER_SIZE as u32;

    // Floating pointer.
    out.extend_from_slice(b"_MP_");
    put_u32(&mut out, config_addr);
    out.push(1); // length in 16-byte paragraphs
    out.push(SPEC_REVISION_1_4);
    out.push(0); // checksum, below
                 // Feature byte 1 = 0: a configuration table is present (no default configuration).
                 // Feature byte 2 = 0: no IMCR, the PIC is in virtual-wire mode through LINT0.
    out.extend_from_slice(&[0; 5]);
    out[10] = checksum(&out[..FLOATING_POINTER_SIZE]);

    // Configuration table header.
    let header = out.len();
    out.extend_from_slice(b"PCMP");
    put_u16(&mut out, config_len);
    out.push(SPEC_REVISION_1_4);
    out.push(0); // checksum, below
    out.extend_from_slice(&OEM_ID);
    out.extend_from_slice(&PRODUCT_ID);
    put_u32(&mut out, 0); // no OEM table
    put_u16(&mut out, 0); // OEM table size
    let entry_count = u16::from(num_cpus) + 2 + u16::from(ISA_IRQS) + LOCAL_INTERRUPTS as u16;
    put_u16(&mut out, entry_count);
    put_u32(&mut out, layout::APIC_ADDR as u32);
    put_u16(&mut out, 0); // no extended table
    out.push(0); // extended table checksum
    out.push(0); // reserved

    for cpu in 0..num_cpus {
        let mut flags = CPU_FLAG_ENABLED;
        if cpu == 0 {
            flags |= CPU_FLAG_BSP;
        }
        out.extend_from_slice(&[ENTRY_PROCESSOR, cpu, LAPIC_VERSION, flags]);
        put_u32(&mut out, CPU_SIGNATURE);
        put_u32(&mut out, CPU_FEATURES);
        out.extend_from_slice(&[0; 8]); // reserved
    }

    out.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    out.extend_from_slice(b"ISA   ");

    let ioapic_id = num_cpus;
    out.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, IOAPIC_FLAG_ENABLED]);
    put_u32(&mut out, layout::IOAPIC_ADDR as u32);

    for irq in 0..ISA_IRQS {
        out.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_TYPE_INT]);
        put_u16(&mut out, INT_FLAGS_CONFORMS);
        out.extend_from_slice(&[ISA_BUS_ID, irq, ioapic_id, irq]);
    }

    // Only the BSP's LINT0 takes the 8259's output (virtual-wire mode); every local
    // APIC gets NMI on LINT1.
    out.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT]);
    put_u16(&mut out, INT_FLAGS_CONFORMS);
    out.extend_from_slice(&[ISA_BUS_ID, 0, 0, 0]);
    out.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI]);
    put_u16(&mut out, INT_FLAGS_CONFORMS);
    out.extend_from_slice(&[ISA_BUS_ID, 0, ALL_LOCAL_APICS, 1]);

    debug_assert_eq!(out.len(), size);
    out[header + 7] = checksum(&out[header..]);
    Ok(out)
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), layout::HIMEM_START as usize)])
            .unwrap()
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    fn sum(data: &[u8]) -> u8 {
        data.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    fn u16_at(data: &[u8], off: usize) -> u16 {
        u16::from_le_bytes([data[off], data[off + 1]])
    }

    fn u32_at(data: &[u8], off: usize) -> u32 {
        u32::from_le_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]])
    }

    /// The floating pointer and the configuration table as the guest finds them.
    fn written(num_cpus: u8) -> (Vec<u8>, Vec<u8>) {
        let mem = memory();
        setup_mptable(&mem, num_cpus).unwrap();
        let fp = read(&mem, layout::MPTABLE_START, FLOATING_POINTER_SIZE);
        let config_addr = u64::from(u32_at(&fp, 4));
        let header = read(&mem, config_addr, CONFIG_HEADER_SIZE);
        let config = read(&mem, config_addr, usize::from(u16_at(&header, 4)));
        (fp, config)
    }

    /// The configuration table's entries as (type, bytes).
    fn entries(config: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut off = CONFIG_HEADER_SIZE;
        while off < config.len() {
            let len = if config[off] == ENTRY_PROCESSOR {
                20
            } else {
                8
            };
            out.push(&config[off..off + len]);
            off += len;
        }
        assert_eq!(off, config.len(), "entries overrun the table length");
        out
    }

    #[test]
    fn floating_pointer_is_valid() {
        let (fp, _) = written(2);
        assert_eq!(&fp[0..4], b"_MP_");
        assert_eq!(u64::from(u32_at(&fp, 4)), layout::MPTABLE_START + 16);
        assert_eq!(fp[8], 1, "length in paragraphs");
        assert_eq!(fp[9], 4, "spec revision 1.4");
        assert_eq!(fp[11], 0, "feature byte 1: a table is present");
        assert_eq!(sum(&fp), 0);
    }

    #[test]
    fn config_table_is_valid() {
        for cpus in [1, 2, 7, MAX_CPUS] {
            let (_, config) = written(cpus);
            assert_eq!(&config[0..4], b"PCMP");
            assert_eq!(config[6], 4);
            assert_eq!(sum(&config), 0, "checksum with {cpus} CPUs");
            assert_eq!(u64::from(u32_at(&config, 36)), layout::APIC_ADDR);
            let count = usize::from(u16_at(&config, 34));
            let entries = entries(&config);
            assert_eq!(count, entries.len());
            let of_type = |t: u8| entries.iter().filter(|e| e[0] == t).count();
            assert_eq!(of_type(ENTRY_PROCESSOR), usize::from(cpus));
            assert_eq!(of_type(ENTRY_BUS), 1);
            assert_eq!(of_type(ENTRY_IOAPIC), 1);
            assert_eq!(of_type(ENTRY_IO_INTERRUPT), 16);
            assert_eq!(of_type(ENTRY_LOCAL_INTERRUPT), 2);
        }
    }

    #[test]
    fn entries_describe_the_machine() {
        let cpus = 4;
        let (_, config) = written(cpus);
        let entries = entries(&config);

        let procs: Vec<_> = entries.iter().filter(|e| e[0] == ENTRY_PROCESSOR).collect();
        for (i, p) in procs.iter().enumerate() {
            assert_eq!(usize::from(p[1]), i, "APIC id = CPU index");
            assert_eq!(p[3] & CPU_FLAG_ENABLED, CPU_FLAG_ENABLED);
            assert_eq!(p[3] & CPU_FLAG_BSP != 0, i == 0, "only CPU 0 is the BSP");
        }

        let bus = entries.iter().find(|e| e[0] == ENTRY_BUS).unwrap();
        assert_eq!(&bus[2..8], b"ISA   ");

        let ioapic = entries.iter().find(|e| e[0] == ENTRY_IOAPIC).unwrap();
        assert_eq!(ioapic[1], cpus, "I/O APIC id follows the CPUs");
        assert_eq!(ioapic[2], 0x11);
        assert_eq!(ioapic[3], 1, "enabled");
        assert_eq!(u64::from(u32_at(ioapic, 4)), layout::IOAPIC_ADDR);

        let ints: Vec<_> = entries
            .iter()
            .filter(|e| e[0] == ENTRY_IO_INTERRUPT)
            .collect();
        for (irq, e) in ints.iter().enumerate() {
            assert_eq!(e[1], INT_TYPE_INT);
            assert_eq!(e[4], bus[1], "source is the ISA bus");
            assert_eq!(usize::from(e[5]), irq);
            assert_eq!(e[6], cpus, "destination is the I/O APIC");
            assert_eq!(usize::from(e[7]), irq, "ISA IRQ n on pin n");
        }

        let locals: Vec<_> = entries
            .iter()
            .filter(|e| e[0] == ENTRY_LOCAL_INTERRUPT)
            .collect();
        assert_eq!(
            (locals[0][1], locals[0][7]),
            (INT_TYPE_EXTINT, 0),
            "ExtINT on LINT0"
        );
        assert_eq!(
            (locals[1][1], locals[1][7]),
            (INT_TYPE_NMI, 1),
            "NMI on LINT1"
        );
    }

    #[test]
    fn cpu_count_is_checked() {
        let mem = memory();
        assert!(matches!(setup_mptable(&mem, 0), Err(MptableError::NoCpus)));
        assert!(matches!(
            setup_mptable(&mem, 255),
            Err(MptableError::TooManyCpus(255))
        ));
    }

    #[test]
    fn largest_table_fits_before_the_rsdp() {
        let size = FLOATING_POINTER_SIZE + config_table_size(MAX_CPUS);
        assert!(layout::MPTABLE_START + size as u64 <= layout::RSDP_ADDR);
    }

    #[test]
    fn missing_memory_is_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            setup_mptable(&mem, 1),
            Err(MptableError::GuestMemory { .. })
        ));
    }
}
