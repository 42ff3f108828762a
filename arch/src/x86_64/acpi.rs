//! The ACPI tables of a hardware-reduced x86 platform: RSDP, XSDT, FADT, DSDT, MADT and,
//! with PCI, MCFG.
//!
//! The guest finds the RSDP by scanning the BIOS area, at [`layout::RSDP_ADDR`]; the other
//! tables are packed from [`layout::ACPI_TABLES_START`] and must end by
//! [`layout::ACPI_TABLES_END`]:
//!
//! ```text
//! RSDP --XSDT address--> XSDT --> FADT --X_DSDT--> DSDT (\_S5_, \_SB.COM1, RTC_, PS2K,
//!                                                      GED0, PWRB, PCI0, MBRD, ...)
//!                            \--> MADT (local APICs, I/O APIC)
//!                            \--> MCFG (ECAM of PCI segment 0)
//! ```
//!
//! PCI is one root bus, `\_SB.PCI0` (`PNP0A08`, PCI Express root, compatible with
//! `PNP0A03`): its `_CRS` gives bus 0, the 0xcf8 configuration ports, the I/O window and
//! the 32-bit memory window of [`layout`]; its `_PRT` wires every slot's INTA-D to
//! the IOAPIC GSIs of [`layout::pci_intx_gsi`]. The ECAM window the MCFG points at is
//! reserved by a motherboard-resources device, `\_SB.MBRD` (`PNP0C02`): Linux ignores
//! an MCFG region that no such device (or E820 entry) reserves.
//!
//! "Hardware-reduced" means there is no PM1/GPE fixed hardware: power-off and reset go
//! through the FADT's SLEEP_CONTROL_REG and RESET_REG, one-byte ports of the ACPI PM
//! device (see [`layout::ACPI_PM_PORT_BASE`]). The legacy devices the VMM emulates are
//! described in the DSDT so the kernel binds its drivers to them through PNP ids.
//!
//! Nor is there a fixed power button: the button is a `PNP0C0C` device, `\_SB.PWRB`, that
//! a Generic Event Device (`ACPI0013`, ACPI 6.5 section 5.6.9), `\_SB.GED0`, notifies
//! when the VMM sets a bit in its event register and pulses its interrupt.
//!
//! Every table is serialised with rust-vmm's `acpi_tables`, which keeps length and
//! checksum right as the table grows.
//!
//! This module places the tables and builds RSDP, XSDT, FADT, MADT and MCFG; the DSDT and
//! its devices are built in `dsdt`.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use super::layout;
use super::mptable::MAX_CPUS;

mod dsdt;

use dsdt::build_dsdt;

/// Errors while building the ACPI tables.
#[derive(Debug, Error)]
pub enum AcpiError {
    #[error("the ACPI tables need at least one CPU")]
    NoCpus,
    #[error("{0} CPUs requested; the MADT describes at most {MAX_CPUS}")]
    TooManyCpus(u8),
    #[error(
        "the ACPI {table} ({size} bytes at {addr:#x}) does not fit below {:#x}",
        layout::ACPI_TABLES_END
    )]
    OutOfSpace {
        table: &'static str,
        addr: u64,
        size: usize,
    },
    #[error("cannot write the ACPI {table} to guest memory at {addr:#x} (is RAM mapped there?): {source}")]
    GuestMemory {
        table: &'static str,
        addr: u64,
        #[source]
        source: GuestMemoryError,
    },
}

/// What the tables describe: the CPUs and which legacy devices the VMM put on the
/// port bus. A device listed here must answer at the ports and raise the IRQ that
/// [`layout`] gives it, or the guest driver bound to it will hang or time out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcpiConfig {
    pub num_cpus: u8,
    /// 16550 UART at [`layout::COM1_PORT`], IRQ [`layout::COM1_IRQ`].
    pub com1: bool,
    /// 16550 UART at [`layout::COM2_PORT`], IRQ [`layout::COM2_IRQ`].
    pub com2: bool,
    /// CMOS RTC at [`layout::RTC_PORT`] (index and data), IRQ [`layout::RTC_IRQ`].
    pub rtc: bool,
    /// i8042 keyboard controller at [`layout::I8042_PORT`] (data) and +4
    /// (command/status), IRQ [`layout::I8042_IRQ`].
    pub i8042: bool,
    /// Generic Event Device with its register at [`layout::ACPI_GED_ADDR`], IRQ
    /// [`layout::ACPI_GED_IRQ`], and the power button it notifies.
    pub ged: bool,
    /// The PCI root bus: `\_SB.PCI0`, the MCFG and the ECAM reservation. The machine
    /// must then answer configuration cycles at [`layout::PCI_CONFIG_IO_PORT`] and in
    /// the ECAM window, and raise INTx on the GSIs of [`layout::pci_intx_gsi`].
    pub pci: bool,
    /// The ISA pvpanic device (`QEMU0001`) at this I/O port, if present.
    pub pvpanic: Option<u16>,
}

impl AcpiConfig {
    /// The standard machine: COM1, the RTC, the i8042, the GED and PCI, no COM2.
    pub fn new(num_cpus: u8) -> Self {
        Self {
            num_cpus,
            com1: true,
            com2: false,
            rtc: true,
            i8042: true,
            ged: true,
            pci: true,
            pvpanic: None,
        }
    }
}

const OEM_ID: [u8; 6] = *b"KESTRL";
const OEM_REVISION: u32 = 1;
/// FADT HYPERVISOR_VENDOR_IDENTITY, so a guest can tell whose tables these are.
const HYPERVISOR_VENDOR: [u8; 8] = *b"KESTREL ";
/// Revision 2 makes AML integers 64-bit.
const DSDT_REVISION: u8 = 2;
const SDT_HEADER_SIZE: u32 = 36;
/// Tables start on 8-byte boundaries, so 64-bit fields are naturally aligned.
const TABLE_ALIGN: u64 = 8;

// IAPC_BOOT_ARCH flags (ACPI 6.5, table 5.11).
const IAPC_LEGACY_DEVICES: u16 = 1 << 0;
const IAPC_8042: u16 = 1 << 1;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
// Bit 3 is "MSI not supported": never set, it would turn off MSI/MSI-X for virtio-pci.
const IAPC_PCIE_ASPM_CONTROLS: u16 = 1 << 4;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

// The fixed addresses and the SCI line fit the FADT and MADT field widths.
const _: () = assert!(layout::APIC_ADDR <= u32::MAX as u64);
const _: () = assert!(layout::IOAPIC_ADDR <= u32::MAX as u64);
const _: () = assert!(layout::ACPI_SCI_IRQ <= u16::MAX as u32);
const _: () = assert!(layout::I8042_PORT <= u16::MAX - 4);
// The GED register is described with 32-bit AML integers and a 32-bit field.
const _: () = assert!(layout::ACPI_GED_ADDR + layout::ACPI_GED_LEN <= u32::MAX as u64);
const _: () = assert!(layout::ACPI_GED_LEN == 4);
// The PCI windows are described with 32-bit AML integers and word I/O descriptors.
const _: () = assert!(layout::PCI_ECAM_START + layout::PCI_ECAM_SIZE <= u32::MAX as u64 + 1);
const _: () = assert!(layout::PCI_MMIO32_END <= u32::MAX as u64 + 1);
const _: () = assert!(layout::PCI_IO_END <= u16::MAX as u64 + 1);
const _: () = assert!(layout::PCI_ECAM_BUSES >= 1);

/// Write the ACPI tables for `cfg` and return the RSDP's address
/// ([`layout::RSDP_ADDR`]), which the boot protocol hands to the kernel.
pub fn create_acpi_tables<M: GuestMemory>(
    mem: &M,
    cfg: &AcpiConfig,
) -> Result<GuestAddress, AcpiError> {
    if cfg.num_cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    if cfg.num_cpus > MAX_CPUS {
        return Err(AcpiError::TooManyCpus(cfg.num_cpus));
    }

    let mut space = TableSpace::new(layout::ACPI_TABLES_START, layout::ACPI_TABLES_END);

    let dsdt_addr = space.place(mem, "DSDT", &build_dsdt(cfg))?;
    let fadt_addr = space.place(mem, "FADT", &build_fadt(cfg, dsdt_addr))?;
    let madt_addr = space.place(mem, "MADT", &build_madt(cfg.num_cpus))?;
    let mcfg_addr = match cfg.pci {
        true => Some(space.place(mem, "MCFG", &build_mcfg())?),
        false => None,
    };

    // The DSDT is reached through the FADT, not listed in the XSDT.
    let mut xsdt = XSDT::new(OEM_ID, *b"KSTXSDT ", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    if let Some(addr) = mcfg_addr {
        xsdt.add_entry(addr);
    }
    let xsdt_addr = space.place(mem, "XSDT", &to_bytes(&xsdt))?;

    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    write(mem, "RSDP", layout::RSDP_ADDR, &rsdp)?;
    Ok(GuestAddress(layout::RSDP_ADDR))
}

/// Hands out guest addresses for tables from a fixed window, first fit.
struct TableSpace {
    next: u64,
    end: u64,
}

impl TableSpace {
    fn new(start: u64, end: u64) -> Self {
        Self { next: start, end }
    }

    /// Write `table` at the next aligned address of the window and return that address.
    fn place<M: GuestMemory>(
        &mut self,
        mem: &M,
        table: &'static str,
        bytes: &[u8],
    ) -> Result<u64, AcpiError> {
        let addr = self.next.next_multiple_of(TABLE_ALIGN);
        let end = addr.checked_add(bytes.len() as u64);
        if end.is_none_or(|end| end > self.end) {
            return Err(AcpiError::OutOfSpace {
                table,
                addr,
                size: bytes.len(),
            });
        }
        write(mem, table, addr, bytes)?;
        self.next = addr + bytes.len() as u64;
        Ok(addr)
    }
}

fn write<M: GuestMemory>(
    mem: &M,
    table: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), AcpiError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| AcpiError::GuestMemory {
            table,
            addr,
            source,
        })
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// FADT (revision 6.5) for a hardware-reduced platform.
fn build_fadt(cfg: &AcpiConfig, dsdt_addr: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, *b"KSTFACP ", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // No fixed-feature power or sleep button: a button, if any, is a device in the DSDT.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);

    // Ignored on hardware-reduced platforms, but kernels that predate that check
    // configure the SCI from this field, and 0 would turn IRQ 0 level-triggered.
    fadt.sci_int = (layout::ACPI_SCI_IRQ as u16).into();

    // LEGACY_DEVICES keeps the kernel's PNP probing of ISA devices; 8042 and the
    // CMOS RTC follow what the VMM emulates. MSI must stay supported.
    let mut boot_arch = IAPC_LEGACY_DEVICES | IAPC_VGA_NOT_PRESENT | IAPC_PCIE_ASPM_CONTROLS;
    if cfg.i8042 {
        boot_arch |= IAPC_8042;
    }
    if !cfg.rtc {
        boot_arch |= IAPC_CMOS_RTC_NOT_PRESENT;
    }
    fadt.iapc_boot_arch = boot_arch.into();

    // Linux resets by writing RESET_VALUE to RESET_REG, and powers off (S5) by writing
    // SLP_TYP << 2 | SLP_EN to SLEEP_CONTROL_REG, SLP_TYP coming from the DSDT's \_S5_.
    fadt.reset_reg = io_port_byte(layout::ACPI_RESET_PORT);
    fadt.reset_value = layout::ACPI_RESET_VALUE;
    fadt.sleep_control_reg = io_port_byte(layout::ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_port_byte(layout::ACPI_SLEEP_STATUS_PORT);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR).into();

    to_bytes(&fadt.finalize())
}

/// An 8-bit register in system I/O space.
fn io_port_byte(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// MADT: one enabled local APIC per CPU (APIC id = ACPI processor UID = index) and the
/// I/O APIC, id `num_cpus`, serving GSIs 0..24. ISA IRQ n is GSI n: no interrupt source
/// overrides, matching KVM's default routing and the MP table.
fn build_madt(num_cpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        *b"KSTAPIC ",
        OEM_REVISION,
        LocalInterruptController::Address(layout::APIC_ADDR as u32),
    );
    for cpu in 0..num_cpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(num_cpus, layout::IOAPIC_ADDR as u32, 0));
    to_bytes(&madt)
}

/// MCFG: one ECAM region, segment 0, buses `0..PCI_ECAM_BUSES`.
fn build_mcfg() -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, *b"KSTMCFG ", OEM_REVISION);
    mcfg.add_ecam(layout::PCI_ECAM_START, 0, 0, layout::PCI_ECAM_BUSES - 1);
    to_bytes(&mcfg)
}

#[cfg(test)]
mod tests;
