//! Guest RAM's KVM memory slots, and the dirty-page log migration reads from them.
//!
//! Each RAM region of guest memory is one KVM slot, numbered in region order. While a
//! migration copies RAM the slots carry KVM_MEM_LOG_DIRTY_PAGES, so KVM records the
//! pages vCPUs write; what device models write is in guest memory's own bitmap
//! (`devices::GuestMemoryMmap`). [`read`] takes both, each read-and-cleared by its owner,
//! and returns their union per region, so a page written after a read is in the next
//! one: nothing is lost between passes.

use devices::GuestMemoryMmap;
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;
use migration::dirty::RegionLog;
use migration::protocol::PAGE_SIZE;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};

/// Registers (or re-registers) every RAM region as a KVM slot, with dirty logging on or
/// off. Turning logging on starts KVM's log clean.
pub fn register_slots(vm: &VmFd, mem: &GuestMemoryMmap, log_dirty: bool) -> Result<(), String> {
    for (slot, r) in mem.iter().enumerate() {
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: r.start_addr().raw_value(),
            memory_size: r.len(),
            userspace_addr: r.as_ptr() as u64,
            flags: if log_dirty {
                KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
        };
        // SAFETY: the mapping is owned by `mem`, which the caller keeps alive longer than
        // the VM fd, and regions of one guest memory never overlap.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(|e| format!("registering guest memory with KVM: {e}"))?;
    }
    Ok(())
}

/// The pages written since the last read (or since logging began), per region: KVM's
/// log of vCPU writes merged with guest memory's bitmap of device writes.
// The precopy driver, the next step of the migration issue, is its caller; until then
// only the test below is.
#[allow(dead_code)]
pub fn read(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<Vec<RegionLog>, String> {
    let mut logs = Vec::new();
    for (slot, r) in mem.iter().enumerate() {
        let pages = r.len() / PAGE_SIZE;
        let kvm = vm
            .get_dirty_log(slot as u32, r.len() as usize)
            .map_err(|e| format!("reading KVM's dirty log of slot {slot}: {e}"))?;
        let mut log = RegionLog::from_words(r.start_addr().raw_value(), pages, kvm);
        log.merge(&std::ops::Deref::deref(r).bitmap().get_and_reset());
        logs.push(log);
    }
    Ok(logs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arch::regs::{self, BootProtocol};
    use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
    use kvm_ioctls::{Kvm, VcpuExit};
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn a_pass_sees_what_the_vcpu_and_a_device_wrote_and_nothing_else() {
        let kvm = Kvm::new().expect("/dev/kvm");
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let mem = crate::memory::RamBacking::anonymous(2 << 20)
            .map(&[(GuestAddress(0), 2 << 20)])
            .unwrap();
        // 32-bit code at 0x1000: mov dword [0x8000], 0x12345678; out 0x80, al.
        let code = [
            0xc7, 0x05, 0x00, 0x80, 0x00, 0x00, 0x78, 0x56, 0x34, 0x12, 0xe6, 0x80,
        ];
        mem.write_slice(&code, GuestAddress(0x1000)).unwrap();
        register_slots(&vm, &mem, true).unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        vcpu.set_cpuid2(&kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap())
            .unwrap();
        regs::setup_vcpu(&vcpu, BootProtocol::Pvh, 0x1000, 0).unwrap();
        // The loader's own writes (the code) are in guest memory's bitmap: a first read
        // takes them, as a first pass sends all of RAM anyway.
        let first = read(&vm, &mem).unwrap();
        assert_eq!(first[0].runs(), [(0x1000, 1)]);

        let mut vcpu = vcpu;
        loop {
            match vcpu.run().unwrap() {
                VcpuExit::IoOut(0x80, _) => break,
                VcpuExit::Intr | VcpuExit::IrqWindowOpen => {}
                other => panic!("unexpected exit {other:?}"),
            }
        }
        mem.write_obj(1u32, GuestAddress(0x10_0004)).unwrap(); // a device writes
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x8000)).unwrap(),
            0x1234_5678
        );

        let logs = read(&vm, &mem).unwrap();
        assert_eq!(
            logs[0].runs(),
            [(0x8000, 1), (0x10_0000, 1)],
            "the vCPU's write (KVM's log) and the device's (the bitmap), not the code it ran"
        );
        // Both logs were cleared by the read.
        assert_eq!(read(&vm, &mem).unwrap()[0].count(), 0);
    }
}
