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

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use super::layout;
use super::mptable::MAX_CPUS;

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

/// DSDT: the S5 sleep type and the legacy devices under `\_SB`.
fn build_dsdt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut body = Vec::new();

    // \_S5_ = Package { SLP_TYPa, SLP_TYPb, reserved, reserved }.
    let slp_typ = layout::ACPI_S5_SLP_TYP;
    aml::Name::new(
        "\\_S5_".into(),
        &aml::Package::new(vec![&slp_typ, &aml::ZERO, &aml::ZERO, &aml::ZERO]),
    )
    .to_aml_bytes(&mut body);

    let mut devices = Vec::new();
    if cfg.com1 {
        uart("COM1", 1, layout::COM1_PORT, layout::COM1_IRQ).to_aml_bytes(&mut devices);
    }
    if cfg.com2 {
        uart("COM2", 2, layout::COM2_PORT, layout::COM2_IRQ).to_aml_bytes(&mut devices);
    }
    if cfg.rtc {
        rtc().to_aml_bytes(&mut devices);
    }
    if cfg.i8042 {
        ps2_keyboard().to_aml_bytes(&mut devices);
    }
    if cfg.ged {
        PowerButton.to_aml_bytes(&mut devices);
        Ged.to_aml_bytes(&mut devices);
    }
    if cfg.pci {
        PciRoot.to_aml_bytes(&mut devices);
        MotherboardResources.to_aml_bytes(&mut devices);
    }
    if let Some(port) = cfg.pvpanic {
        Pvpanic(port).to_aml_bytes(&mut devices);
    }
    if !devices.is_empty() {
        body.extend_from_slice(&aml::Scope::raw("\\_SB_".into(), devices));
    }

    let mut dsdt = Sdt::new(
        *b"DSDT",
        SDT_HEADER_SIZE,
        DSDT_REVISION,
        OEM_ID,
        *b"KSTDSDT ",
        OEM_REVISION,
    );
    dsdt.append_slice(&body);
    dsdt.as_slice().to_vec()
}

/// An ISA device: `_HID` (an EISA id), optional `_UID`, and `_CRS` with fixed I/O
/// ranges (base, length) and one edge-triggered, active-high ISA interrupt.
struct IsaDevice {
    name: &'static str,
    hid: &'static str,
    uid: Option<u8>,
    io: Vec<(u16, u8)>,
    irq: u32,
}

impl Aml for IsaDevice {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let hid = aml::Name::new("_HID".into(), &aml::EISAName::new(self.hid));
        let uid = self.uid.map(|uid| aml::Name::new("_UID".into(), &uid));
        let io: Vec<aml::IO> = self
            .io
            .iter()
            .map(|&(base, len)| aml::IO::new(base, base, 1, len))
            .collect();
        let irq = aml::Interrupt::new(true, true, false, false, self.irq);
        let mut resources: Vec<&dyn Aml> = io.iter().map(|io| io as &dyn Aml).collect();
        resources.push(&irq);
        let crs = aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(resources));

        let mut children: Vec<&dyn Aml> = vec![&hid];
        if let Some(uid) = &uid {
            children.push(uid);
        }
        children.push(&crs);
        aml::Device::new(self.name.into(), children).to_aml_bytes(sink);
    }
}

fn uart(name: &'static str, uid: u8, port: u16, irq: u32) -> IsaDevice {
    IsaDevice {
        name,
        hid: "PNP0501", // 16550A-compatible
        uid: Some(uid),
        io: vec![(port, 8)],
        irq,
    }
}

fn rtc() -> IsaDevice {
    IsaDevice {
        name: "RTC_",
        hid: "PNP0B00", // AT real-time clock
        uid: None,
        io: vec![(layout::RTC_PORT, 2)],
        irq: layout::RTC_IRQ,
    }
}

fn ps2_keyboard() -> IsaDevice {
    IsaDevice {
        name: "PS2K",
        hid: "PNP0303", // IBM enhanced keyboard on an 8042
        uid: None,
        // Data port, then the command/status port 4 above it.
        io: vec![(layout::I8042_PORT, 1), (layout::I8042_PORT + 4, 1)],
        irq: layout::I8042_IRQ,
    }
}

/// `\_SB.PEVT`: the ISA pvpanic device. Linux's pvpanic driver binds to `QEMU0001` and
/// takes its port from `_CRS`.
struct Pvpanic(u16);

impl Aml for Pvpanic {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let hid = aml::Name::new("_HID".into(), &"QEMU0001");
        let io = aml::IO::new(self.0, self.0, 1, 1);
        let crs = aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&io]));
        aml::Device::new("PEVT".into(), vec![&hid, &crs]).to_aml_bytes(sink);
    }
}

/// `\_SB.PWRB`: the control-method power button. Linux's ACPI button driver binds to
/// `PNP0C0C` and reports Notify 0x80 on it as KEY_POWER.
struct PowerButton;

impl Aml for PowerButton {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C"));
        let uid = aml::Name::new("_UID".into(), &aml::ZERO);
        aml::Device::new("PWRB".into(), vec![&hid, &uid]).to_aml_bytes(sink);
    }
}

/// The Generic Event Device. Linux's evged driver requests every interrupt in `_CRS`
/// and runs `_EVT(gsi)` from a thread when it fires.
struct Ged;

/// Name of the 32-bit field over the GED's event register.
const GED_FIELD: [u8; 4] = *b"GDAT";

impl Aml for Ged {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let hid = aml::Name::new("_HID".into(), &"ACPI0013");
        let uid = aml::Name::new("_UID".into(), &aml::ZERO);
        // Only the interrupt: evged walks `_CRS` and fails its probe ("unable to
        // parse the _CRS record") on any resource that is not an interrupt, so the
        // register window is reached through the operation region alone.
        let irq = aml::Interrupt::new(true, true, false, false, layout::ACPI_GED_IRQ);
        let crs = aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&irq]));

        let addr = layout::ACPI_GED_ADDR as u32;
        let len = layout::ACPI_GED_LEN as u32;
        let region =
            aml::OpRegion::new("GREG".into(), aml::OpRegionSpace::SystemMemory, &addr, &len);
        // DWordAcc: the device clears its pending bits only on a whole 32-bit read.
        let field = aml::Field::new(
            "GREG".into(),
            aml::FieldAccessType::DWord,
            aml::FieldLockRule::NoLock,
            aml::FieldUpdateRule::Preserve,
            vec![aml::FieldEntry::Named(GED_FIELD, 32)],
        );

        // Reading GDAT acknowledges every pending event, so it is read exactly once
        // into Local0 and each event bit is tested there.
        let events = aml::Local(0);
        let gdat = aml::Path::new("GDAT");
        let read = aml::Store::new(&events, &gdat);
        let button_bit = layout::ACPI_GED_EVENT_POWER_BUTTON;
        // And with target Zero (the null name): compute without storing.
        let pressed = aml::And::new(&aml::ZERO, &events, &button_bit);
        let pwrb = aml::Path::new("\\_SB_.PWRB");
        let notify_value: u8 = 0x80; // "button pressed" for a PNP0C0C device
        let notify = aml::Notify::new(&pwrb, &notify_value);
        let if_pressed = aml::If::new(&pressed, vec![&notify]);
        // Serialized: two _EVT runs must not interleave their read and their tests.
        let evt = aml::Method::new("_EVT".into(), 1, true, vec![&read, &if_pressed]);

        aml::Device::new("GED0".into(), vec![&hid, &uid, &crs, &region, &field, &evt])
            .to_aml_bytes(sink);
    }
}

/// `\_SB.PCI0`: the PCI Express root bus (bus 0 of segment 0).
struct PciRoot;

impl Aml for PciRoot {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08"));
        let cid = aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03"));
        let seg = aml::Name::new("_SEG".into(), &aml::ZERO);
        let bbn = aml::Name::new("_BBN".into(), &aml::ZERO);
        let uid = aml::Name::new("_UID".into(), &aml::ZERO);

        let last_bus = u16::from(layout::PCI_ECAM_BUSES - 1);
        let buses = aml::AddressSpace::new_bus_number(0u16, last_bus);
        // The configuration ports are the bridge's own (consumed, not a window).
        let cfg_ports = aml::IO::new(
            layout::PCI_CONFIG_IO_PORT,
            layout::PCI_CONFIG_IO_PORT,
            1,
            layout::PCI_CONFIG_IO_LEN as u8,
        );
        let io = aml::AddressSpace::new_io(
            layout::PCI_IO_START as u16,
            (layout::PCI_IO_END - 1) as u16,
            None,
        );
        let mmio = aml::AddressSpace::new_memory(
            aml::AddressSpaceCacheable::NotCacheable,
            true,
            layout::PCI_MMIO32_START as u32,
            (layout::PCI_MMIO32_END - 1) as u32,
            None,
        );
        let crs = aml::Name::new(
            "_CRS".into(),
            &aml::ResourceTemplate::new(vec![&buses, &cfg_ports, &io, &mmio]),
        );

        // _PRT: { address 0xSSSSFFFF (any function of slot S), pin (0 = INTA),
        // source Zero (a GSI, not a link device), GSI }.
        let routes: Vec<(u32, u8, u32)> = (0..32u8)
            .flat_map(|slot| {
                (0..4u8).map(move |pin| {
                    (
                        (u32::from(slot) << 16) | 0xffff,
                        pin,
                        layout::pci_intx_gsi(slot, pin + 1),
                    )
                })
            })
            .collect();
        let entries: Vec<aml::Package> = routes
            .iter()
            .map(|(addr, pin, gsi)| aml::Package::new(vec![addr, pin, &aml::ZERO, gsi]))
            .collect();
        let prt = aml::Package::new(entries.iter().map(|e| e as &dyn Aml).collect());
        let prt = aml::Name::new("_PRT".into(), &prt);

        aml::Device::new(
            "PCI0".into(),
            vec![&hid, &cid, &seg, &bbn, &uid, &crs, &prt],
        )
        .to_aml_bytes(sink);
    }
}

/// `\_SB.MBRD`: motherboard resources, reserving the ECAM window the MCFG describes.
struct MotherboardResources;

impl Aml for MotherboardResources {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C02"));
        let uid = aml::Name::new("_UID".into(), &aml::ZERO);
        let ecam = aml::Memory32Fixed::new(
            true,
            layout::PCI_ECAM_START as u32,
            layout::PCI_ECAM_SIZE as u32,
        );
        let crs = aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&ecam]));
        aml::Device::new("MBRD".into(), vec![&hid, &uid, &crs]).to_aml_bytes(sink);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::path::PathBuf;
    use std::process::Command;
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
}
