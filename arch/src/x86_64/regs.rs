//! The boot CPU's register state for each boot protocol: GDT and segments, control
//! registers, identity page tables for 64-bit entry, FPU, MSRs and the LAPIC's LINT pins.
//! Values are computed by pure functions (tested without KVM); `setup_*` apply them.

use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs,
};
use vm_memory::bitmap::Bitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout;

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("writing boot page tables or GDT into guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("KVM refused the boot register state ({what}): {err}")]
    Kvm {
        what: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error("KVM accepted {set} of {want} boot MSRs")]
    Msrs { set: usize, want: usize },
}

/// How the kernel is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// Xen PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh,
    /// Linux 64-bit boot protocol: long mode on identity page tables, RSI = boot_params.
    Linux64,
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// A GDT descriptor from flags (access byte plus the flags nibble, as `0xFA0AA` style
/// `flags` = granularity/size nibble << 12 | access byte), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The KVM view of a GDT descriptor loaded into segment register `index`.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = (((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000)) as u32;
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    kvm_segment {
        base: base as u64,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: if (entry >> 47) & 1 == 0 { 1 } else { 0 },
    }
}

/// The GDT for a protocol: null, code, data, TSS (selectors 0x8, 0x10, 0x18).
pub fn gdt(proto: BootProtocol) -> [u64; 4] {
    match proto {
        BootProtocol::Pvh => [
            0,
            gdt_entry(0xc09b, 0, 0xffff_ffff), // 32-bit code, 4 GiB
            gdt_entry(0xc093, 0, 0xffff_ffff), // data, 4 GiB
            gdt_entry(0x008b, 0, 0x67),        // TSS
        ],
        BootProtocol::Linux64 => [
            0,
            gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code
            gdt_entry(0xc093, 0, 0xfffff), // data
            gdt_entry(0x808b, 0, 0xfffff), // TSS
        ],
    }
}

/// Special registers for entry: segments from `gdt`, CR0/CR4/EFER as the protocol wants.
pub fn boot_sregs(mut sregs: kvm_sregs, proto: BootProtocol) -> kvm_sregs {
    let g = gdt(proto);
    let code = segment_from_gdt(g[1], 1);
    let data = segment_from_gdt(g[2], 2);
    let tss = segment_from_gdt(g[3], 3);
    sregs.gdt.base = layout::GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&g) - 1) as u16;
    sregs.idt.base = layout::IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    match proto {
        BootProtocol::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        BootProtocol::Linux64 => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.cr3 = layout::PML4_ADDR;
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
    sregs
}

/// General registers for entry at `entry` with the boot structure at `boot_info`.
pub fn boot_regs(proto: BootProtocol, entry: u64, boot_info: u64) -> kvm_regs {
    let mut r = kvm_regs {
        rflags: 0x2, // bit 1 is reserved and always set
        rip: entry,
        ..Default::default()
    };
    match proto {
        BootProtocol::Pvh => r.rbx = boot_info,
        BootProtocol::Linux64 => {
            r.rsp = layout::BOOT_STACK_ADDR;
            r.rbp = layout::BOOT_STACK_ADDR;
            r.rsi = boot_info;
        }
    }
    r
}

/// Writes the GDT and an empty IDT, and for 64-bit entry identity page tables for the
/// first 4 GiB (2 MiB pages), which covers the kernel and its boot structures.
pub fn write_boot_structures<B: Bitmap>(
    mem: &GuestMemoryMmap<B>,
    proto: BootProtocol,
) -> Result<(), RegsError> {
    for (i, e) in gdt(proto).iter().enumerate() {
        mem.write_obj(*e, GuestAddress(layout::GDT_ADDR + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(layout::IDT_ADDR))?;
    if proto == BootProtocol::Linux64 {
        // PML4[0] -> PDPT; PDPT[0..4] -> four PDs; each PD maps 1 GiB with 2 MiB pages.
        mem.write_obj(layout::PDPTE_ADDR | 0x03, GuestAddress(layout::PML4_ADDR))?;
        for i in 0..4u64 {
            let pd = layout::PDE_ADDR + i * 0x1000;
            mem.write_obj(pd | 0x03, GuestAddress(layout::PDPTE_ADDR + i * 8))?;
            for j in 0..512u64 {
                let phys = (i << 30) | (j << 21);
                mem.write_obj(phys | 0x83, GuestAddress(pd + j * 8))?;
            }
        }
    }
    Ok(())
}

/// FPU state at reset: x87 control word 0x37f, MXCSR 0x1f80 (all exceptions masked).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
pub const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;
pub const MSR_CSTAR: u32 = 0xc000_0083;
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
pub const MSR_IA32_TSC: u32 = 0x10;
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;

/// MSRs at boot: syscall MSRs cleared, fast strings on, MTRRs enabled with write-back
/// default (without it the guest maps all RAM uncached and crawls).
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let e = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        e(MSR_IA32_SYSENTER_CS, 0),
        e(MSR_IA32_SYSENTER_ESP, 0),
        e(MSR_IA32_SYSENTER_EIP, 0),
        e(MSR_STAR, 0),
        e(MSR_CSTAR, 0),
        e(MSR_KERNEL_GS_BASE, 0),
        e(MSR_SYSCALL_MASK, 0),
        e(MSR_LSTAR, 0),
        e(MSR_IA32_TSC, 0),
        e(MSR_IA32_MISC_ENABLE, 1), // FAST_STRING
        e(MSR_MTRR_DEF_TYPE, (1 << 11) | 6),
    ]
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(l: &kvm_lapic_state, off: usize) -> u32 {
    let b = &l.regs[off..off + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(l: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        l.regs[off + i] = *b as _;
    }
}

/// LINT0 as ExtINT (the PIC's output) and LINT1 as NMI, as firmware leaves them.
pub fn set_lint(mut l: kvm_lapic_state) -> kvm_lapic_state {
    let lvt0 = lapic_reg(&l, APIC_LVT0);
    set_lapic_reg(&mut l, APIC_LVT0, (lvt0 & !0x700) | (APIC_MODE_EXTINT << 8));
    let lvt1 = lapic_reg(&l, APIC_LVT1);
    set_lapic_reg(&mut l, APIC_LVT1, (lvt1 & !0x700) | (APIC_MODE_NMI << 8));
    l
}

/// Puts a vCPU into its boot state for `proto`. All vCPUs get it; the in-kernel LAPIC
/// keeps application processors waiting for INIT/SIPI regardless.
pub fn setup_vcpu(
    vcpu: &kvm_ioctls::VcpuFd,
    proto: BootProtocol,
    entry: u64,
    boot_info: u64,
) -> Result<(), RegsError> {
    let kvm = |what| move |err| RegsError::Kvm { what, err };
    let msrs = boot_msrs();
    let want = msrs.len();
    let m = Msrs::from_entries(&msrs).map_err(|_| RegsError::Msrs { set: 0, want })?;
    let set = vcpu.set_msrs(&m).map_err(kvm("MSRs"))?;
    if set != want {
        return Err(RegsError::Msrs { set, want });
    }
    vcpu.set_regs(&boot_regs(proto, entry, boot_info))
        .map_err(kvm("registers"))?;
    let sregs = vcpu.get_sregs().map_err(kvm("reading special registers"))?;
    vcpu.set_sregs(&boot_sregs(sregs, proto))
        .map_err(kvm("special registers"))?;
    vcpu.set_fpu(&boot_fpu()).map_err(kvm("FPU"))?;
    let lapic = vcpu.get_lapic().map_err(kvm("reading LAPIC"))?;
    vcpu.set_lapic(&set_lint(lapic)).map_err(kvm("LAPIC"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_round_trip_to_segments() {
        let cs = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!(
            (cs.selector, cs.type_, cs.l, cs.db, cs.present, cs.s),
            (8, 0xb, 1, 0, 1, 1)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let cs32 = segment_from_gdt(gdt_entry(0xc09b, 0, 0xffff_ffff), 1);
        assert_eq!((cs32.l, cs32.db, cs32.g), (0, 1, 1));
        let ds = segment_from_gdt(gdt_entry(0xc093, 0, 0xfffff), 2);
        assert_eq!((ds.selector, ds.type_, ds.db), (0x10, 3, 1));
        let tss = segment_from_gdt(gdt_entry(0x008b, 0, 0x67), 3);
        assert_eq!((tss.type_, tss.limit, tss.g, tss.s), (0xb, 0x67, 0, 0));
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn pvh_enters_protected_mode_without_paging() {
        let s = boot_sregs(kvm_sregs::default(), BootProtocol::Pvh);
        assert_eq!(s.cr0 & X86_CR0_PE, X86_CR0_PE);
        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.efer, 0);
        assert_eq!(s.cs.db, 1);
        let r = boot_regs(BootProtocol::Pvh, 0x100_0000, layout::PVH_INFO_ADDR);
        assert_eq!(
            (r.rip, r.rbx, r.rflags),
            (0x100_0000, layout::PVH_INFO_ADDR, 2)
        );
    }

    #[test]
    fn linux64_enters_long_mode_on_identity_tables() {
        let s = boot_sregs(kvm_sregs::default(), BootProtocol::Linux64);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, layout::PML4_ADDR);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.cs.l, 1);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write_boot_structures(&mem, BootProtocol::Linux64).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(layout::PML4_ADDR)).unwrap();
        assert_eq!(pml4, layout::PDPTE_ADDR | 3);
        // The 2 MiB page that maps 3 GiB + 4 MiB: PD 3, entry 2.
        let pde: u64 = mem
            .read_obj(GuestAddress(layout::PDE_ADDR + 3 * 0x1000 + 2 * 8))
            .unwrap();
        assert_eq!(pde, (3 << 30) | (2 << 21) | 0x83);
        let gdt1: u64 = mem.read_obj(GuestAddress(layout::GDT_ADDR + 8)).unwrap();
        assert_eq!(gdt1, gdt(BootProtocol::Linux64)[1]);
    }

    #[test]
    fn lint_pins_are_extint_and_nmi() {
        let l = set_lint(kvm_lapic_state::default());
        assert_eq!((lapic_reg(&l, APIC_LVT0) >> 8) & 7, APIC_MODE_EXTINT);
        assert_eq!((lapic_reg(&l, APIC_LVT1) >> 8) & 7, APIC_MODE_NMI);
    }

    #[test]
    fn boot_msrs_enable_mtrr_writeback() {
        let m = boot_msrs();
        let def = m.iter().find(|e| e.index == MSR_MTRR_DEF_TYPE).unwrap();
        assert_eq!(def.data, 0x806);
    }
}

/// The register dump of HMP `info registers`, laid out as QEMU's x86 `cpu_dump_state`
/// (the general, segment, descriptor-table and control registers).
pub fn format_registers(r: &kvm_regs, s: &kvm_sregs) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "RAX={:016x} RBX={:016x} RCX={:016x} RDX={:016x}",
        r.rax, r.rbx, r.rcx, r.rdx
    );
    let _ = writeln!(
        o,
        "RSI={:016x} RDI={:016x} RBP={:016x} RSP={:016x}",
        r.rsi, r.rdi, r.rbp, r.rsp
    );
    let _ = writeln!(
        o,
        "R8 ={:016x} R9 ={:016x} R10={:016x} R11={:016x}",
        r.r8, r.r9, r.r10, r.r11
    );
    let _ = writeln!(
        o,
        "R12={:016x} R13={:016x} R14={:016x} R15={:016x}",
        r.r12, r.r13, r.r14, r.r15
    );
    let f = r.rflags;
    let flag = |bit: u32, c: char| if f & (1 << bit) != 0 { c } else { '-' };
    let _ = writeln!(
        o,
        "RIP={:016x} RFL={:08x} [{}{}{}{}{}{}{}] CPL={}",
        r.rip,
        f,
        flag(11, 'O'),
        flag(10, 'D'),
        flag(7, 'S'),
        flag(6, 'Z'),
        flag(4, 'A'),
        flag(2, 'P'),
        flag(0, 'C'),
        s.cs.dpl
    );
    let seg = |o: &mut String, name: &str, g: &kvm_segment| {
        // QEMU prints the descriptor flags word: type, S, DPL, P, AVL, L, DB, G.
        let flags = (u32::from(g.type_) << 8)
            | (u32::from(g.s) << 12)
            | (u32::from(g.dpl) << 13)
            | (u32::from(g.present) << 15)
            | (u32::from(g.avl) << 20)
            | (u32::from(g.l) << 21)
            | (u32::from(g.db) << 22)
            | (u32::from(g.g) << 23);
        let _ = writeln!(
            o,
            "{name}={:04x} {:016x} {:08x} {:08x}",
            g.selector, g.base, g.limit, flags
        );
    };
    seg(&mut o, "ES ", &s.es);
    seg(&mut o, "CS ", &s.cs);
    seg(&mut o, "SS ", &s.ss);
    seg(&mut o, "DS ", &s.ds);
    seg(&mut o, "FS ", &s.fs);
    seg(&mut o, "GS ", &s.gs);
    seg(&mut o, "LDT", &s.ldt);
    seg(&mut o, "TR ", &s.tr);
    let _ = writeln!(o, "GDT=     {:016x} {:08x}", s.gdt.base, s.gdt.limit);
    let _ = writeln!(o, "IDT=     {:016x} {:08x}", s.idt.base, s.idt.limit);
    let _ = writeln!(
        o,
        "CR0={:08x} CR2={:016x} CR3={:016x} CR4={:08x}",
        s.cr0, s.cr2, s.cr3, s.cr4
    );
    let _ = writeln!(o, "EFER={:016x}", s.efer);
    o
}

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn register_dump_has_qemus_layout() {
        let r = boot_regs(BootProtocol::Linux64, 0x100_0200, layout::ZERO_PAGE_ADDR);
        let s = boot_sregs(kvm_sregs::default(), BootProtocol::Linux64);
        let d = format_registers(&r, &s);
        let lines: Vec<&str> = d.lines().collect();
        assert_eq!(
            lines[0],
            "RAX=0000000000000000 RBX=0000000000000000 RCX=0000000000000000 RDX=0000000000000000"
        );
        assert!(
            lines[1].starts_with("RSI=0000000000007000 "),
            "{}",
            lines[1]
        );
        assert_eq!(
            lines[4],
            "RIP=0000000001000200 RFL=00000002 [-------] CPL=0"
        );
        assert_eq!(lines[6], "CS =0008 0000000000000000 ffffffff 00a09b00");
        assert!(d.contains("CR0=80000011 "), "{d}");
        assert!(d.contains("EFER=0000000000000500"), "{d}");
        assert_eq!(lines.len(), 17);
    }
}
