//! The state of a running x86 machine that lives in KVM rather than in Kestrel's device
//! models: each vCPU's registers, special registers, FPU/SSE/AVX (XSAVE), XCRs, MSRs
//! (the kvmclock ones included), local APIC, MP state, pending events and debug
//! registers, and the VM's in-kernel PIC pair, IOAPIC, PIT and KVM clock. Migration
//! saves these on the source and restores them on the destination; the types are serde
//! structs, so they travel as versioned device sections of the stream.
//!
//! Order matters, and follows what KVM needs (Firecracker and QEMU do the same):
//! - saving a vCPU: MP state first (reading it flushes pending APIC events into it),
//!   the vCPU events last (they hold what is pending after everything else was read);
//! - restoring a vCPU: CPUID is already set when the vCPU is created; then MP state,
//!   registers, special registers, XSAVE, XCRs, debug registers, LAPIC, MSRs and the
//!   vCPU events last, so that nothing restored later clears a pending exception or NMI.
//!
//! A vCPU must not be running while its state is read or written (the vCPU thread does
//! it, or the vCPU is parked); the VM state is taken with every vCPU parked.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

/// Version of [`VcpuState`] and [`VmState`] in the migration stream.
pub const STATE_VERSION: u16 = 1;

/// KVM_GET_MSRS/KVM_SET_MSRS take at most this many entries per call.
const MSR_BATCH: usize = 255;

/// A KVM call that failed while saving or restoring state.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {err}")]
pub struct StateError {
    pub what: &'static str,
    pub err: kvm_ioctls::Error,
}

fn kvm<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, StateError> {
    r.map_err(|err| StateError { what, err })
}

/// One vCPU's architectural state.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    /// (index, value) of every MSR KVM lets us save.
    pub msrs: Vec<(u32, u64)>,
    pub events: kvm_vcpu_events,
    /// The guest's TSC frequency, when KVM reports it.
    pub tsc_khz: Option<u32>,
}

/// The VM-wide in-kernel state.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

/// The MSRs of this host's KVM that a vCPU can both read and write back: KVM's list of
/// MSRs to save, less those a KVM_GET_MSRS on `vcpu` refuses (KVM stops at the first
/// one it cannot read).
pub fn msrs_to_save(kvm_fd: &Kvm, vcpu: &VcpuFd) -> Result<Vec<u32>, StateError> {
    let list = kvm("KVM_GET_MSR_INDEX_LIST", kvm_fd.get_msr_index_list())?;
    let mut candidates: Vec<u32> = list.as_slice().to_vec();
    let mut ok = Vec::with_capacity(candidates.len());
    while !candidates.is_empty() {
        let batch: Vec<u32> = candidates.iter().take(MSR_BATCH).copied().collect();
        let n = read_msrs(vcpu, &batch)?.len();
        ok.extend_from_slice(&batch[..n]);
        // The one at `n` (if any) was refused: skip it and go on after it.
        let consumed = (n + 1).min(batch.len());
        candidates.drain(..consumed);
    }
    Ok(ok)
}

/// Reads `indices`; the values of as many as KVM returned, in order.
fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<(u32, u64)>, StateError> {
    let entries: Vec<kvm_msr_entry> = indices
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut msrs = kvm(
        "building an MSR list",
        Msrs::from_entries(&entries).map_err(|_| kvm_ioctls::Error::new(libc::E2BIG)),
    )?;
    let n = kvm("KVM_GET_MSRS", vcpu.get_msrs(&mut msrs))?;
    Ok(msrs.as_slice()[..n]
        .iter()
        .map(|e| (e.index, e.data))
        .collect())
}

/// Saves one vCPU, which must not be running. `msrs` is [`msrs_to_save`]'s list.
pub fn save_vcpu(vcpu: &VcpuFd, msrs: &[u32]) -> Result<VcpuState, StateError> {
    let mp_state = kvm("KVM_GET_MP_STATE", vcpu.get_mp_state())?;
    let regs = kvm("KVM_GET_REGS", vcpu.get_regs())?;
    let sregs = kvm("KVM_GET_SREGS", vcpu.get_sregs())?;
    let xsave = kvm("KVM_GET_XSAVE", vcpu.get_xsave())?;
    let xcrs = kvm("KVM_GET_XCRS", vcpu.get_xcrs())?;
    let debugregs = kvm("KVM_GET_DEBUGREGS", vcpu.get_debug_regs())?;
    let lapic = kvm("KVM_GET_LAPIC", vcpu.get_lapic())?;
    let tsc_khz = vcpu.get_tsc_khz().ok();
    let mut values = Vec::with_capacity(msrs.len());
    for batch in msrs.chunks(MSR_BATCH) {
        let got = read_msrs(vcpu, batch)?;
        if got.len() != batch.len() {
            return Err(StateError {
                what: "KVM_GET_MSRS (an MSR that could be read before was refused)",
                err: kvm_ioctls::Error::new(libc::EIO),
            });
        }
        values.extend(got);
    }
    let events = kvm("KVM_GET_VCPU_EVENTS", vcpu.get_vcpu_events())?;
    Ok(VcpuState {
        mp_state,
        regs,
        sregs,
        xsave,
        xcrs,
        debugregs,
        lapic,
        msrs: values,
        events,
        tsc_khz,
    })
}

/// Restores one vCPU (created with the same CPUID as the source's), not running.
pub fn restore_vcpu(vcpu: &VcpuFd, s: &VcpuState) -> Result<(), StateError> {
    if let Some(khz) = s.tsc_khz {
        // A host that cannot scale the TSC keeps its own frequency, as QEMU without
        // tsc-frequency does; the guest's kvmclock absorbs the difference.
        let _ = vcpu.set_tsc_khz(khz);
    }
    kvm("KVM_SET_MP_STATE", vcpu.set_mp_state(s.mp_state))?;
    kvm("KVM_SET_REGS", vcpu.set_regs(&s.regs))?;
    kvm("KVM_SET_SREGS", vcpu.set_sregs(&s.sregs))?;
    // SAFETY: `s.xsave` is a whole kvm_xsave (4 KiB region); a guest using a larger
    // XSAVE area than that (AMX) is not supported by this legacy call and KVM refuses it.
    kvm("KVM_SET_XSAVE", unsafe { vcpu.set_xsave(&s.xsave) })?;
    kvm("KVM_SET_XCRS", vcpu.set_xcrs(&s.xcrs))?;
    kvm("KVM_SET_DEBUGREGS", vcpu.set_debug_regs(&s.debugregs))?;
    kvm("KVM_SET_LAPIC", vcpu.set_lapic(&s.lapic))?;
    for batch in s.msrs.chunks(MSR_BATCH) {
        let entries: Vec<kvm_msr_entry> = batch
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = kvm(
            "building an MSR list",
            Msrs::from_entries(&entries).map_err(|_| kvm_ioctls::Error::new(libc::E2BIG)),
        )?;
        let n = kvm("KVM_SET_MSRS", vcpu.set_msrs(&msrs))?;
        if n != batch.len() {
            return Err(StateError {
                what: if n < batch.len() {
                    "KVM_SET_MSRS refused an MSR the source saved (a different host CPU or KVM?)"
                } else {
                    "KVM_SET_MSRS"
                },
                err: kvm_ioctls::Error::new(libc::EINVAL),
            });
        }
    }
    kvm("KVM_SET_VCPU_EVENTS", vcpu.set_vcpu_events(&s.events))?;
    Ok(())
}

fn irqchip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, StateError> {
    let mut c = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    kvm("KVM_GET_IRQCHIP", vm.get_irqchip(&mut c))?;
    Ok(c)
}

/// Saves the in-kernel PICs, IOAPIC, PIT and clock, with every vCPU parked.
pub fn save_vm(vm: &VmFd) -> Result<VmState, StateError> {
    Ok(VmState {
        pic_master: irqchip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: irqchip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: irqchip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: kvm("KVM_GET_PIT2", vm.get_pit2())?,
        clock: kvm("KVM_GET_CLOCK", vm.get_clock())?,
    })
}

/// Restores what [`save_vm`] saved into a VM created with the same irqchip and PIT.
pub fn restore_vm(vm: &VmFd, s: &VmState) -> Result<(), StateError> {
    kvm(
        "KVM_SET_IRQCHIP (PIC master)",
        vm.set_irqchip(&s.pic_master),
    )?;
    kvm("KVM_SET_IRQCHIP (PIC slave)", vm.set_irqchip(&s.pic_slave))?;
    kvm("KVM_SET_IRQCHIP (IOAPIC)", vm.set_irqchip(&s.ioapic))?;
    kvm("KVM_SET_PIT2", vm.set_pit2(&s.pit))?;
    // Only the clock's value goes back: its flags describe the source host's clock.
    let clock = kvm_clock_data {
        clock: s.clock.clock,
        ..Default::default()
    };
    kvm("KVM_SET_CLOCK", vm.set_clock(&clock))?;
    Ok(())
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
