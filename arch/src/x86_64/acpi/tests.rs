//! Tests of the ACPI tables: placement in guest memory, checksums, the RSDP/XSDT links,
//! the FADT, MADT and MCFG fields, the DSDT's devices (GED, power button, PCI root and
//! its routing), and a disassembly and recompilation of MCFG and DSDT with `iasl`
//! (acpica-tools), which these tests need on PATH.

#![allow(clippy::unwrap_used)]

use super::*;
use acpi_tables::aml;
use std::path::PathBuf;
use std::process::Command;
use vm_memory::GuestMemoryMmap;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), layout::HIMEM_START as usize)]).unwrap()
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

fn sum(data: &[u8]) -> u8 {
    data.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

fn u16_at(d: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(d[off..off + 2].try_into().unwrap())
}

fn u32_at(d: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(d[off..off + 4].try_into().unwrap())
}

fn u64_at(d: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(d[off..off + 8].try_into().unwrap())
}

/// A table as the guest reads it: its length field, then that many bytes, which
/// must lie inside the table window and sum to zero.
fn table(mem: &GuestMemoryMmap, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
    let header = read(mem, addr, SDT_HEADER_SIZE as usize);
    assert_eq!(&header[0..4], signature, "signature at {addr:#x}");
    let len = u32_at(&header, 4) as usize;
    assert!(addr >= layout::ACPI_TABLES_START);
    assert!(addr + len as u64 <= layout::ACPI_TABLES_END);
    let data = read(mem, addr, len);
    assert_eq!(
        sum(&data),
        0,
        "{} checksum",
        String::from_utf8_lossy(signature)
    );
    data
}

struct Tables {
    rsdp: Vec<u8>,
    xsdt: Vec<u8>,
    fadt: Vec<u8>,
    madt: Vec<u8>,
    dsdt: Vec<u8>,
    /// The third XSDT entry, when there is one.
    mcfg: Option<Vec<u8>>,
}

fn tables(cfg: &AcpiConfig) -> Tables {
    let mem = memory();
    let rsdp_addr = create_acpi_tables(&mem, cfg).unwrap();
    assert_eq!(rsdp_addr, GuestAddress(layout::RSDP_ADDR));
    let rsdp = read(&mem, rsdp_addr.0, 36);
    let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
    let fadt = table(&mem, u64_at(&xsdt, 36), b"FACP");
    let madt = table(&mem, u64_at(&xsdt, 44), b"APIC");
    let dsdt = table(&mem, u64_at(&fadt, 140), b"DSDT");
    let mcfg = (xsdt.len() > 52).then(|| table(&mem, u64_at(&xsdt, 52), b"MCFG"));
    Tables {
        rsdp,
        xsdt,
        fadt,
        madt,
        dsdt,
        mcfg,
    }
}

#[test]
fn rsdp_points_at_the_xsdt() {
    let t = tables(&AcpiConfig::new(2));
    assert_eq!(&t.rsdp[0..8], b"RSD PTR ");
    assert_eq!(t.rsdp[15], 2, "revision 2: XSDT present");
    assert_eq!(sum(&t.rsdp[..20]), 0, "ACPI 1.0 checksum");
    assert_eq!(u32_at(&t.rsdp, 20), 36, "length");
    assert_eq!(sum(&t.rsdp), 0, "extended checksum");
    assert_eq!(&t.xsdt[0..4], b"XSDT");
}

#[test]
fn xsdt_lists_fadt_and_madt() {
    let t = tables(&AcpiConfig {
        pci: false,
        ..AcpiConfig::new(1)
    });
    // The `tables` helper followed both entries and checked their signatures.
    assert_eq!(t.xsdt.len(), 36 + 2 * 8);
    assert_eq!(&t.fadt[0..4], b"FACP");
    assert_eq!(&t.madt[0..4], b"APIC");
}

#[test]
fn fadt_describes_a_hardware_reduced_platform() {
    let t = tables(&AcpiConfig::new(1));
    let f = &t.fadt;
    assert_eq!(f.len(), 276);
    assert_eq!(f[8], 6, "major revision");
    assert_eq!(f[131], 5, "minor revision");
    let flags = u32_at(f, 112);
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
    assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");

    let boot_arch = u16_at(f, 109);
    assert_ne!(boot_arch & IAPC_8042, 0);
    assert_ne!(boot_arch & IAPC_VGA_NOT_PRESENT, 0);
    assert_eq!(
        boot_arch & (1 << 3),
        0,
        "MSI must not be reported unsupported"
    );
    assert_eq!(
        boot_arch & IAPC_CMOS_RTC_NOT_PRESENT,
        0,
        "the RTC is present"
    );

    let io_byte = |off: usize, port: u16| {
        assert_eq!(f[off], 1, "System I/O at {off}");
        assert_eq!(f[off + 1], 8, "8-bit width at {off}");
        assert_eq!(f[off + 2], 0, "bit offset at {off}");
        assert_eq!(f[off + 3], 1, "byte access at {off}");
        assert_eq!(u64_at(f, off + 4), u64::from(port), "port at {off}");
    };
    io_byte(116, layout::ACPI_RESET_PORT);
    assert_eq!(f[128], layout::ACPI_RESET_VALUE);
    io_byte(244, layout::ACPI_SLEEP_CONTROL_PORT);
    io_byte(256, layout::ACPI_SLEEP_STATUS_PORT);

    assert_eq!(u32_at(f, 40), 0, "32-bit DSDT unused");
    assert_eq!(&f[268..276], b"KESTREL ");
}

#[test]
fn fadt_boot_arch_follows_the_devices() {
    let cfg = AcpiConfig {
        rtc: false,
        i8042: false,
        ..AcpiConfig::new(1)
    };
    let boot_arch = u16_at(&tables(&cfg).fadt, 109);
    assert_eq!(boot_arch & IAPC_8042, 0);
    assert_ne!(boot_arch & IAPC_CMOS_RTC_NOT_PRESENT, 0);
}

#[test]
fn madt_lists_every_cpu_and_the_ioapic() {
    for cpus in [1u8, 3, MAX_CPUS] {
        let m = tables(&AcpiConfig::new(cpus)).madt;
        assert_eq!(u64::from(u32_at(&m, 36)), layout::APIC_ADDR);
        let mut lapics = Vec::new();
        let mut ioapics = Vec::new();
        let mut off = 44;
        while off < m.len() {
            let (kind, len) = (m[off], usize::from(m[off + 1]));
            assert!(len >= 2 && off + len <= m.len(), "bad MADT entry at {off}");
            match kind {
                0 => lapics.push(&m[off..off + len]),
                1 => ioapics.push(&m[off..off + len]),
                other => panic!("unexpected MADT entry type {other}"),
            }
            off += len;
        }
        assert_eq!(lapics.len(), usize::from(cpus));
        for (i, l) in lapics.iter().enumerate() {
            assert_eq!(usize::from(l[2]), i, "processor UID");
            assert_eq!(usize::from(l[3]), i, "APIC id");
            assert_eq!(u32_at(l, 4) & 1, 1, "enabled");
        }
        assert_eq!(ioapics.len(), 1);
        let io = ioapics[0];
        assert_eq!(io[2], cpus, "I/O APIC id");
        assert_eq!(u64::from(u32_at(io, 4)), layout::IOAPIC_ADDR);
        assert_eq!(u32_at(io, 8), 0, "GSI base");
    }
}

#[test]
fn cpu_count_is_checked() {
    let mem = memory();
    assert!(matches!(
        create_acpi_tables(&mem, &AcpiConfig::new(0)),
        Err(AcpiError::NoCpus)
    ));
    assert!(matches!(
        create_acpi_tables(&mem, &AcpiConfig::new(255)),
        Err(AcpiError::TooManyCpus(255))
    ));
}

#[test]
fn tables_that_do_not_fit_are_refused() {
    let mem = memory();
    let mut space = TableSpace::new(0x1000, 0x1100);
    assert_eq!(space.place(&mem, "A", &[0; 0x81]).unwrap(), 0x1000);
    // The next table starts at the aligned 0x1088; 0x79 bytes would end at 0x1101.
    let err = space.place(&mem, "B", &[0; 0x79]).unwrap_err();
    assert!(matches!(
        err,
        AcpiError::OutOfSpace {
            table: "B",
            addr: 0x1088,
            ..
        }
    ));
    assert_eq!(space.place(&mem, "C", &[0; 0x78]).unwrap(), 0x1088);
}

#[test]
fn missing_memory_is_an_error() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    assert!(matches!(
        create_acpi_tables(&mem, &AcpiConfig::new(1)),
        Err(AcpiError::GuestMemory { .. })
    ));
}

/// Where `prefix` first occurs in `dsdt`.
fn find(dsdt: &[u8], prefix: &[u8]) -> Option<usize> {
    dsdt.windows(prefix.len()).position(|w| w == prefix)
}

/// What `_EVT` must be, byte for byte: read the event register once, then test
/// the copy. A second `GDAT` reference would lose events the first one cleared.
#[rustfmt::skip]
const EVT_AML: &[u8] = &[
    0x14, 0x1f, b'_', b'E', b'V', b'T', 0x09,   // Method (_EVT, 1, Serialized), 31 bytes
    0x70, b'G', b'D', b'A', b'T', 0x60,         //   Local0 = GDAT
    0xa0, 0x12,                                 //   If (
    0x7b, 0x60, 0x01, 0x00,                     //       Local0 & One)  (target: none)
    0x86, 0x5c, 0x2e,                           //     Notify (\_SB.PWRB,
    b'_', b'S', b'B', b'_', b'P', b'W', b'R', b'B',
    0x0a, 0x80,                                 //             0x80)
];

#[test]
fn ged_evt_reads_the_register_once_and_notifies_the_button() {
    assert_eq!(
        layout::ACPI_GED_EVENT_POWER_BUTTON,
        1,
        "EVT_AML tests bit 0"
    );
    let dsdt = tables(&AcpiConfig::new(1)).dsdt;
    let at = find(&dsdt, EVT_AML).unwrap_or_else(|| panic!("_EVT not found in {dsdt:x?}"));
    assert_eq!(find(&dsdt[at + EVT_AML.len()..], b"_EVT"), None);
    // GDAT: declared once in the field list, read once in _EVT.
    let gdat = dsdt.windows(4).filter(|w| *w == b"GDAT").count();
    assert_eq!(gdat, 2);
}

#[test]
fn ged_crs_holds_only_its_interrupt() {
    let dsdt = tables(&AcpiConfig::new(1)).dsdt;
    #[rustfmt::skip]
    let crs: &[u8] = &[
        0x08, b'_', b'C', b'R', b'S',         // Name (_CRS,
        0x11, 0x0e, 0x0a, 0x0b,               //   Buffer (11)
        0x89, 0x06, 0x00, 0x03, 0x01,         //   Interrupt (Consumer, Edge, High, Exclusive)
        10, 0, 0, 0,                          //     {10}
        0x79, 0x00,                           //   EndTag
    ];
    let irq = layout::ACPI_GED_IRQ.to_le_bytes();
    assert_eq!(&crs[14..18], &irq);
    let hid = find(&dsdt, b"ACPI0013").unwrap();
    let at = find(&dsdt, crs).unwrap_or_else(|| panic!("GED _CRS not found in {dsdt:x?}"));
    assert!(at > hid, "the _CRS after ACPI0013 is the GED's");
}

#[test]
fn ged_can_be_left_out() {
    let cfg = AcpiConfig {
        ged: false,
        ..AcpiConfig::new(1)
    };
    let dsdt = tables(&cfg).dsdt;
    for absent in [&b"ACPI0013"[..], b"GED0", b"PWRB", b"_EVT", b"GDAT"] {
        assert_eq!(
            find(&dsdt, absent),
            None,
            "{}",
            String::from_utf8_lossy(absent)
        );
    }
}

#[test]
fn mcfg_describes_the_ecam_of_bus_0() {
    let t = tables(&AcpiConfig::new(1));
    assert_eq!(t.xsdt.len(), 36 + 3 * 8, "FADT, MADT, MCFG");
    let m = t.mcfg.expect("MCFG listed in the XSDT");
    assert_eq!(m.len(), 36 + 8 + 16, "header, reserved, one allocation");
    assert_eq!(m[8], 1, "revision");
    assert_eq!(u64_at(&m, 44), layout::PCI_ECAM_START);
    assert_eq!(u16_at(&m, 52), 0, "segment");
    assert_eq!(m[54], 0, "start bus");
    assert_eq!(m[55], layout::PCI_ECAM_BUSES - 1, "end bus");
}

#[test]
fn dsdt_has_the_pci_root_with_its_routing() {
    let dsdt = tables(&AcpiConfig::new(1)).dsdt;
    let pci0 = find(&dsdt, b"PCI0").expect("PCI0");
    // EISAID("PNP0A08") and EISAID("PNP0A03") as DWord constants.
    let eisa = |id: &str| {
        let mut b = Vec::new();
        aml::EISAName::new(id).to_aml_bytes(&mut b);
        b
    };
    assert!(find(&dsdt[pci0..], &eisa("PNP0A08")).is_some());
    assert!(find(&dsdt[pci0..], &eisa("PNP0A03")).is_some());
    for name in [&b"_SEG"[..], b"_BBN", b"_PRT", b"_CRS"] {
        assert!(find(&dsdt[pci0..], name).is_some(), "{name:?}");
    }
    // Slot 3 INTB: Package (4) { 0x0003FFFF, One, Zero, 16 + (3 + 2 - 1) % 4 }.
    #[rustfmt::skip]
    let entry: &[u8] = &[
        0x12, 0x0b, 0x04,
        0x0c, 0xff, 0xff, 0x03, 0x00,
        0x01,
        0x00,
        0x0a, 0x10,
    ];
    assert_eq!(layout::pci_intx_gsi(3, 2), 0x10);
    assert!(
        find(&dsdt[pci0..], entry).is_some(),
        "_PRT entry for 03 INTB"
    );
    let mbrd = find(&dsdt, b"MBRD").expect("MBRD");
    assert!(find(&dsdt[mbrd..], &eisa("PNP0C02")).is_some());
}

#[test]
fn pci_can_be_left_out() {
    let t = tables(&AcpiConfig {
        pci: false,
        ..AcpiConfig::new(1)
    });
    assert!(t.mcfg.is_none());
    for absent in [&b"PCI0"[..], b"_PRT", b"MBRD"] {
        assert_eq!(find(&t.dsdt, absent), None);
    }
}

/// Run `iasl ARGS` in `dir`; return its success and its console output.
fn iasl(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = match Command::new("iasl").args(args).current_dir(dir).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("`iasl` is not on PATH: install acpica-tools (apt-get install acpica-tools)")
        }
        Err(e) => panic!("cannot run iasl: {e}"),
    };
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), log)
}

#[test]
fn mcfg_disassembles_with_iasl() {
    let mcfg = tables(&AcpiConfig::new(1)).mcfg.unwrap();
    let dir: PathBuf =
        std::env::temp_dir().join(format!("kestrel-acpi-mcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("mcfg.dat"), &mcfg).unwrap();
    let (ok, log) = iasl(&dir, &["-d", "mcfg.dat"]);
    assert!(ok, "iasl -d failed:\n{log}");
    let dsl = std::fs::read_to_string(dir.join("mcfg.dsl"))
        .unwrap_or_else(|e| panic!("iasl wrote no mcfg.dsl ({e}):\n{log}"));
    for needle in [
        "Signature : \"MCFG\"",
        "Base Address : 00000000E0000000",
        "Segment Group Number : 0000",
        "Start Bus Number : 00",
        "End Bus Number : 00",
    ] {
        assert!(dsl.contains(needle), "{needle} missing from:\n{dsl}");
    }
    assert!(!dsl.contains("**** "), "iasl flagged the MCFG:\n{dsl}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dsdt_disassembles_cleanly_with_iasl() {
    let cfg = AcpiConfig {
        com2: true,
        pvpanic: Some(0x505),
        ..AcpiConfig::new(2)
    };
    let dsdt = tables(&cfg).dsdt;
    let dir: PathBuf =
        std::env::temp_dir().join(format!("kestrel-acpi-dsdt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dsdt.dat"), &dsdt).unwrap();

    let (ok, log) = iasl(&dir, &["-d", "dsdt.dat"]);
    assert!(ok, "iasl -d failed:\n{log}");
    let dsl = std::fs::read_to_string(dir.join("dsdt.dsl"))
        .unwrap_or_else(|e| panic!("iasl wrote no dsdt.dsl ({e}):\n{log}"));
    for needle in [
        "_S5_",
        "Name (\\_S5, Package (0x04)",
        "PNP0501",
        "PNP0B00",
        "PNP0303",
        "Device (COM1)",
        "Device (COM2)",
        "Device (PEVT)",
        "\"QEMU0001\"",
        "0x0505",
        "Device (RTC)",
        "Device (PS2K)",
        "0x03F8",
        "0x02F8",
        "0x0070",
        "0x0060",
        "0x0064",
        "ACPI0013",
        "PNP0C0C",
        "Device (GED0)",
        "Device (PWRB)",
        "Method (_EVT, 1, Serialized)",
        "Notify (\\_SB.PWRB, 0x80)",
        "OperationRegion (GREG, SystemMemory, 0xFEB00000, 0x04)",
        "Field (GREG, DWordAcc, NoLock, Preserve)",
        "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )",
        "0x0000000A,",
        "Device (PCI0)",
        "Name (_HID, EisaId (\"PNP0A08\")",
        "Name (_CID, EisaId (\"PNP0A03\")",
        "Name (_SEG, Zero)",
        "Name (_BBN, Zero)",
        "Name (_PRT, Package (0x80)",
        "0x0003FFFF,",
        "0x001FFFFF,",
        "WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode,",
        "IO (Decode16,",
        "0x0CF8,",
        "WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange,",
        "0x1000,",
        "DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,",
        "0xC0000000,",
        "0xDFFFFFFF,",
        "Device (MBRD)",
        "PNP0C02",
        "Memory32Fixed (ReadWrite,",
        "0xE0000000,",
        "0x10000000,",
    ] {
        assert!(dsl.contains(needle), "{needle} missing from:\n{dsl}");
    }

    // Compiling the disassembly back catches AML that decodes but means nothing
    // (a device without _HID, a malformed resource template).
    let (ok, log) = iasl(&dir, &["-p", "recompiled", "dsdt.dsl"]);
    assert!(ok, "iasl could not recompile the DSDT:\n{log}\n{dsl}");
    assert!(
        log.contains(" 0 Errors, 0 Warnings"),
        "iasl complained:\n{log}\n{dsl}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
