//! The DSDT: the `\_S5_` sleep type and the devices under `\_SB` that the guest binds
//! drivers to by PNP id: the legacy ISA devices (UARTs, RTC, PS/2 keyboard, pvpanic), the
//! power button with the Generic Event Device that notifies it, the PCI Express root bus
//! with its `_CRS` windows and `_PRT` routing, and the motherboard resources that
//! reserve the ECAM window.
//!
//! Invariant: each device described here must be one the VMM emulates at the ports,
//! addresses and IRQs of [`layout`] (see [`AcpiConfig`]).

use acpi_tables::aml;
use acpi_tables::sdt::Sdt;
use acpi_tables::{Aml, AmlSink};

use super::{AcpiConfig, DSDT_REVISION, OEM_ID, OEM_REVISION, SDT_HEADER_SIZE};
use crate::x86_64::layout;

/// DSDT: the S5 sleep type and the legacy devices under `\_SB`.
pub(super) fn build_dsdt(cfg: &AcpiConfig) -> Vec<u8> {
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
