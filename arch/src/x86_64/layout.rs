//! Where things live in guest-physical memory and port space. One table, so the
//! firmware tables, the device buses and the boot code cannot disagree.

/// Real-mode / boot structures in the first MiB.
pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info`, followed by its memory map.
pub const PVH_INFO_ADDR: u64 = 0x6000;
pub const PVH_MEMMAP_ADDR: u64 = 0x6040;
pub const PVH_MEMMAP_MAX_ENTRIES: usize = 64;
/// Linux `boot_params` (the "zero page") for the 64-bit boot protocol.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack for the boot CPU, growing down.
pub const BOOT_STACK_ADDR: u64 = 0x8ff0;
/// Identity-map page tables for 64-bit entry: PML4, PDPT and PD cover the first 4 GiB.
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPTE_ADDR: u64 = 0xa000;
pub const PDE_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// End of conventional memory: the EBDA (MP table) and the BIOS area above it are reserved.
pub const EBDA_START: u64 = 0x9fc00;
/// MP floating pointer and table, in the EBDA where the kernel scans for it.
pub const MPTABLE_START: u64 = EBDA_START;
/// ACPI: RSDP in the BIOS read-only area (0xe0000-0xfffff, scanned by the kernel),
/// the other tables right after it.
pub const RSDP_ADDR: u64 = 0xe0000;
pub const ACPI_TABLES_START: u64 = 0xe0100;
pub const ACPI_TABLES_END: u64 = 0x100000;
/// High memory starts at 1 MiB; the kernel is loaded there.
pub const HIMEM_START: u64 = 0x10_0000;

/// The 32-bit hole for MMIO below 4 GiB: RAM stops at `MMIO32_START` and continues at 4 GiB.
pub const MMIO32_START: u64 = 0xc000_0000;
pub const MMIO32_END: u64 = 0x1_0000_0000;
/// Firmware-fixed MMIO at the top of the hole.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const APIC_ADDR: u64 = 0xfee0_0000;
/// The ACPI Generic Event Device's event register (one 32-bit word of pending
/// `ACPI_GED_EVENT_*` bits, cleared by reading it), which the DSDT's `\_SB.GED0._EVT`
/// reads. It is firmware-fixed MMIO like the IOAPIC, just below it, so a PCI window
/// carved from the hole must end below `ACPI_GED_ADDR`.
pub const ACPI_GED_ADDR: u64 = 0xfeb0_0000;
pub const ACPI_GED_LEN: u64 = 4;
pub const HIGH_RAM_START: u64 = MMIO32_END;

/// PCI (segment 0, bus 0). The 32-bit MMIO hole is split: BARs are placed in
/// `[PCI_MMIO32_START, PCI_MMIO32_END)` (the `_CRS` memory window of `\_SB.PCI0`), the
/// ECAM configuration window follows it, and the firmware-fixed MMIO above
/// (GED, IOAPIC, LAPIC) stays outside both.
pub const PCI_MMIO32_START: u64 = MMIO32_START;
pub const PCI_MMIO32_END: u64 = 0xe000_0000;
/// ECAM: 1 MiB of configuration space per bus, room for all 256; the MCFG table
/// describes buses `0..PCI_ECAM_BUSES` and the DSDT reserves the whole window as a
/// motherboard resource (`PNP0C02`), which Linux requires before it uses MMCONFIG.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
pub const PCI_ECAM_SIZE: u64 = 0x1000_0000;
pub const PCI_ECAM_BUS_SIZE: u64 = 1 << 20;
/// Buses that exist (and that the ECAM device must decode): just the root bus.
pub const PCI_ECAM_BUSES: u8 = 1;
/// The legacy configuration mechanism: CONFIG_ADDRESS at 0xcf8, CONFIG_DATA at 0xcfc.
pub const PCI_CONFIG_IO_PORT: u16 = 0xcf8;
pub const PCI_CONFIG_IO_LEN: u64 = 8;
/// I/O BARs come from `[PCI_IO_START, PCI_IO_END)`: above every legacy port.
pub const PCI_IO_START: u64 = 0x1000;
pub const PCI_IO_END: u64 = 0x1_0000;
/// INTx: the `_PRT` wires slot `s`, pin `p` (INTA = 1) to IOAPIC GSI
/// `PCI_INTX_GSI_BASE + (s + p - 1) % PCI_INTX_GSI_COUNT`, level-triggered, active
/// low (the default Linux applies to a `_PRT` entry naming a GSI). The vmm raises
/// them through irqfds with a resample fd. devices/src/pci keeps a copy of the formula.
pub const PCI_INTX_GSI_BASE: u32 = 16;
pub const PCI_INTX_GSI_COUNT: u32 = 4;
/// Pins of the (KVM in-kernel) IOAPIC, as the MADT describes it.
pub const IOAPIC_NUM_PINS: u32 = 24;

// The BAR window, then ECAM, inside the hole; I/O BARs inside the port space.
const _: () = assert!(PCI_MMIO32_START >= MMIO32_START);
const _: () = assert!(PCI_MMIO32_END <= PCI_ECAM_START);
const _: () = assert!(PCI_IO_START < PCI_IO_END && PCI_IO_END <= 0x1_0000);

/// The GSI of INTx pin `pin` (1..=4 for INTA..INTD) of slot `slot`.
pub const fn pci_intx_gsi(slot: u8, pin: u8) -> u32 {
    PCI_INTX_GSI_BASE + (slot as u32 + pin as u32 + PCI_INTX_GSI_COUNT - 1) % PCI_INTX_GSI_COUNT
}

/// Legacy port I/O devices and their ISA interrupts.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const COM2_PORT: u16 = 0x2f8;
pub const COM2_IRQ: u32 = 3;
pub const I8042_PORT: u16 = 0x60;
pub const I8042_IRQ: u32 = 1;
pub const RTC_PORT: u16 = 0x70;
pub const RTC_IRQ: u32 = 8;
/// ACPI hardware-reduced sleep and reset registers (FADT SLEEP_CONTROL_REG,
/// SLEEP_STATUS_REG, RESET_REG), one byte each.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
pub const ACPI_RESET_PORT: u16 = 0x602;
/// Value the guest writes to `ACPI_RESET_PORT` to reset (FADT RESET_VALUE).
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// Window of the ACPI power-management device on the port bus.
pub const ACPI_PM_PORT_BASE: u16 = 0x600;
pub const ACPI_PM_PORT_LEN: u64 = 4;
/// Sleep type the DSDT's `\_S5` package gives, and the SLP_EN bit (ACPI 6.4, 4.8.3.7).
pub const ACPI_S5_SLP_TYP: u8 = 5;
pub const ACPI_SLP_EN: u8 = 1 << 5;
/// SCI line for ACPI events.
pub const ACPI_SCI_IRQ: u32 = 9;
/// The GED's interrupt (edge, active high): an ISA line no other device uses
/// (PIT 0, i8042 1, cascade 2, COM2 3, COM1 4, RTC 8, SCI 9), so it needs no sharing.
pub const ACPI_GED_IRQ: u32 = 10;
/// GED event bits. Power button: `_EVT` sends `Notify(\_SB.PWRB, 0x80)`, which the
/// guest's ACPI button driver turns into KEY_POWER; QMP `system_powerdown` sets it.
/// devices/src/legacy/acpi_ged.rs keeps a copy (devices does not depend on arch).
pub const ACPI_GED_EVENT_POWER_BUTTON: u32 = 1 << 0;

/// The guest RAM regions for `mem_size` bytes, skipping the 32-bit MMIO hole.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO32_START {
        vec![(0, mem_size)]
    } else {
        vec![(0, MMIO32_START), (HIGH_RAM_START, mem_size - MMIO32_START)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_skips_the_mmio_hole() {
        assert_eq!(ram_regions(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(ram_regions(MMIO32_START), vec![(0, MMIO32_START)]);
        let r = ram_regions(4 << 30);
        assert_eq!(
            r,
            vec![(0, MMIO32_START), (1 << 32, (4 << 30) - MMIO32_START)]
        );
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), 4 << 30);
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let mut spans = [
            (GDT_ADDR, 0x20),
            (IDT_ADDR, 0x8),
            (PVH_INFO_ADDR, 0x40),
            (PVH_MEMMAP_ADDR, (PVH_MEMMAP_MAX_ENTRIES * 24) as u64),
            (ZERO_PAGE_ADDR, 0x1000),
            (PML4_ADDR, 0x1000),
            (PDPTE_ADDR, 0x1000),
            (PDE_ADDR, 0x4000),
            (CMDLINE_ADDR, CMDLINE_MAX_SIZE as u64),
            (MPTABLE_START, RSDP_ADDR - MPTABLE_START),
            (RSDP_ADDR, ACPI_TABLES_END - RSDP_ADDR),
        ];
        spans.sort();
        for w in spans.windows(2) {
            assert!(
                w[0].0 + w[0].1 <= w[1].0,
                "{:x?} overlaps {:x?}",
                w[0],
                w[1]
            );
        }
        assert!(spans.last().unwrap().0 + spans.last().unwrap().1 <= HIMEM_START);
    }

    #[test]
    fn fixed_mmio_stays_in_the_hole_and_apart() {
        // The IOAPIC and local APIC each decode a 4 KiB page.
        let mut spans = [
            (ACPI_GED_ADDR, ACPI_GED_LEN),
            (IOAPIC_ADDR, 0x1000),
            (APIC_ADDR, 0x1000),
        ];
        spans.sort();
        assert!(spans[0].0 >= MMIO32_START);
        for w in spans.windows(2) {
            assert!(
                w[0].0 + w[0].1 <= w[1].0,
                "{:x?} overlaps {:x?}",
                w[0],
                w[1]
            );
        }
        assert!(spans[2].0 + spans[2].1 <= MMIO32_END);
    }

    #[test]
    fn pci_windows_fit_the_hole_apart_from_fixed_mmio() {
        assert_eq!(PCI_ECAM_SIZE, 256 * PCI_ECAM_BUS_SIZE);
        assert!(u64::from(PCI_ECAM_BUSES) * PCI_ECAM_BUS_SIZE <= PCI_ECAM_SIZE);
        let ecam_end = PCI_ECAM_START + PCI_ECAM_SIZE;
        for fixed in [ACPI_GED_ADDR, IOAPIC_ADDR, APIC_ADDR] {
            assert!(fixed >= ecam_end, "{fixed:#x} inside a PCI window");
        }
        assert!(ecam_end <= MMIO32_END);
        // ECAM and the BAR window are naturally aligned.
        assert_eq!(PCI_ECAM_START % PCI_ECAM_SIZE, 0);
        assert_eq!(PCI_MMIO32_START % (PCI_MMIO32_END - PCI_MMIO32_START), 0);
    }

    #[test]
    fn pci_io_window_is_above_the_legacy_ports() {
        let legacy = [
            (COM1_PORT, 8),
            (COM2_PORT, 8),
            (I8042_PORT, 5),
            (RTC_PORT, 2),
            (ACPI_PM_PORT_BASE, ACPI_PM_PORT_LEN),
            (PCI_CONFIG_IO_PORT, PCI_CONFIG_IO_LEN),
        ];
        for (port, len) in legacy {
            assert!(u64::from(port) + len <= PCI_IO_START, "{port:#x}");
        }
    }

    #[test]
    fn pci_intx_swizzles_over_ioapic_pins_above_isa() {
        assert_eq!(pci_intx_gsi(0, 1), 16);
        assert_eq!(pci_intx_gsi(0, 4), 19);
        assert_eq!(pci_intx_gsi(1, 1), 17);
        assert_eq!(pci_intx_gsi(3, 2), 16);
        assert_eq!(pci_intx_gsi(31, 4), 18);
        for slot in 0..32 {
            for pin in 1..=4 {
                let gsi = pci_intx_gsi(slot, pin);
                assert!((16..IOAPIC_NUM_PINS).contains(&gsi), "ISA lines stay ISA");
            }
        }
    }

    #[test]
    fn isa_irqs_are_distinct() {
        // 0 is the PIT and 2 the PIC cascade, which no device here may take.
        let mut irqs = [
            0,
            2,
            I8042_IRQ,
            COM2_IRQ,
            COM1_IRQ,
            RTC_IRQ,
            ACPI_SCI_IRQ,
            ACPI_GED_IRQ,
        ];
        irqs.sort();
        assert!(irqs.windows(2).all(|w| w[0] < w[1]), "{irqs:?}");
        assert!(irqs.iter().all(|&i| i < 16), "ISA lines are 0..16");
    }
}
