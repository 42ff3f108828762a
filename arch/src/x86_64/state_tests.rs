//! vCPU and VM state against real KVM: what is saved from one VM and restored into a
//! second reads back the same, through the JSON the migration stream carries.

use super::*;
use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES};

fn machine() -> (Kvm, VmFd, VcpuFd) {
    let kvm = Kvm::new().expect("/dev/kvm");
    let vm = kvm.create_vm().unwrap();
    vm.create_irq_chip().unwrap();
    vm.create_pit2(kvm_pit_config::default()).unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
    vcpu.set_cpuid2(&cpuid).unwrap();
    (kvm, vm, vcpu)
}

fn json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap()
}

const MSR_STAR: u32 = 0xc000_0081;
const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;

#[test]
fn a_vcpu_restored_into_another_vm_reads_back_the_same() {
    let (kvm, _vm, vcpu) = machine();
    let mut regs = vcpu.get_regs().unwrap();
    regs.rax = 0xdead_beef;
    regs.rip = 0x1234;
    regs.rsp = 0x8000;
    vcpu.set_regs(&regs).unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cr3 = 0x9000;
    vcpu.set_sregs(&sregs).unwrap();
    let star = kvm_msr_entry {
        index: MSR_STAR,
        data: 0x0023_0010_0000_0000,
        ..Default::default()
    };
    vcpu.set_msrs(&Msrs::from_entries(&[star]).unwrap())
        .unwrap();

    let list = msrs_to_save(&kvm, &vcpu).unwrap();
    assert!(list.contains(&MSR_STAR), "{list:x?}");
    assert!(
        list.contains(&MSR_KVM_SYSTEM_TIME_NEW),
        "the kvmclock MSRs travel too"
    );
    let saved = save_vcpu(&vcpu, &list).unwrap();
    assert!(saved.msrs.contains(&(MSR_STAR, 0x0023_0010_0000_0000)));

    // Through the stream's encoding, into a fresh VM.
    let text = serde_json::to_string(&saved).unwrap();
    let loaded: VcpuState = serde_json::from_str(&text).unwrap();
    let (_kvm2, _vm2, vcpu2) = machine();
    restore_vcpu(&vcpu2, &loaded).unwrap();
    let again = save_vcpu(&vcpu2, &list).unwrap();
    assert_eq!(again.regs.rax, 0xdead_beef);
    assert_eq!(again.regs.rip, 0x1234);
    assert_eq!(again.sregs.cr3, 0x9000);
    assert_eq!(json(&again.regs), json(&saved.regs));
    assert_eq!(json(&again.sregs), json(&saved.sregs));
    assert_eq!(json(&again.xcrs), json(&saved.xcrs));
    assert_eq!(json(&again.lapic), json(&saved.lapic));
    assert_eq!(json(&again.mp_state), json(&saved.mp_state));
    let star_after = again.msrs.iter().find(|(i, _)| *i == MSR_STAR);
    assert_eq!(star_after, Some(&(MSR_STAR, 0x0023_0010_0000_0000)));
}

#[test]
fn the_vm_state_moves_with_its_clock() {
    let (_kvm, vm, _vcpu) = machine();
    let mut pit = vm.get_pit2().unwrap();
    pit.channels[0].count = 0x1234;
    vm.set_pit2(&pit).unwrap();
    let saved = save_vm(&vm).unwrap();
    let loaded: VmState = serde_json::from_str(&serde_json::to_string(&saved).unwrap()).unwrap();

    let (_kvm2, vm2, _vcpu2) = machine();
    restore_vm(&vm2, &loaded).unwrap();
    let again = save_vm(&vm2).unwrap();
    assert_eq!(again.pit.channels[0].count, 0x1234);
    assert_eq!(json(&again.pic_master), json(&saved.pic_master));
    assert_eq!(json(&again.ioapic), json(&saved.ioapic));
    // The clock goes on from the source's value, not from the new VM's zero.
    assert!(
        again.clock.clock >= saved.clock.clock,
        "{} < {}",
        again.clock.clock,
        saved.clock.clock
    );
}

#[test]
fn a_corrupt_state_is_refused_by_kvm_not_applied_blindly() {
    let (kvm, _vm, vcpu) = machine();
    let list = msrs_to_save(&kvm, &vcpu).unwrap();
    let mut s = save_vcpu(&vcpu, &list).unwrap();
    // An MSR no CPU has: KVM refuses it and the restore says so.
    s.msrs.push((0xdead_0000, 1));
    let (_kvm2, _vm2, vcpu2) = machine();
    let e = restore_vcpu(&vcpu2, &s).unwrap_err();
    assert!(e.to_string().contains("KVM_SET_MSRS"), "{e}");
}
