//! Interrupt routing: KVM's GSI table, kept in full by us (KVM_SET_GSI_ROUTING replaces
//! the whole table), with the default ISA/IOAPIC routes plus one MSI route per MSI-X
//! vector, each vector delivered through its own irqfd so a device raises it with one
//! eventfd write and no VM exit.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

/// GSIs 0-23 are the IOAPIC's pins; MSI routes take the numbers after them.
pub const IOAPIC_PINS: u32 = 24;
/// KVM's limit on routes (KVM_MAX_IRQ_ROUTES) bounds how many vectors we hand out.
const MAX_GSI: u32 = 4096;

fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

fn msi(gsi: u32, addr: u64, data: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = addr as u32;
    e.u.msi.address_hi = (addr >> 32) as u32;
    e.u.msi.data = data;
    e
}

/// The routes KVM installs by itself with the in-kernel irqchip: ISA IRQs 0-15 to the PIC
/// and the IOAPIC pin of the same number, GSIs 16-23 to the IOAPIC only.
pub fn default_routes() -> Vec<kvm_irq_routing_entry> {
    let mut v = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        if gsi < 16 && gsi != 2 {
            let (chip, pin) = if gsi < 8 {
                (KVM_IRQCHIP_PIC_MASTER, gsi)
            } else {
                (KVM_IRQCHIP_PIC_SLAVE, gsi - 8)
            };
            v.push(irqchip(gsi, chip, pin));
        }
        v.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    v
}

#[derive(Debug, thiserror::Error)]
pub enum IrqError {
    #[error("no GSI left for another MSI vector")]
    Exhausted,
    #[error("KVM: {0}")]
    Kvm(#[from] kvm_ioctls::Error),
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
}

struct Table {
    msi: BTreeMap<u32, kvm_irq_routing_entry>,
    next_gsi: u32,
}

/// The VM's GSI routing table.
pub struct Routing {
    vm: Arc<VmFd>,
    table: Mutex<Table>,
}

/// One MSI vector: its GSI and the irqfd that raises it.
pub struct MsiVector {
    pub gsi: u32,
    pub irqfd: EventFd,
}

impl Routing {
    pub fn new(vm: Arc<VmFd>) -> Routing {
        Routing {
            vm,
            table: Mutex::new(Table {
                msi: BTreeMap::new(),
                next_gsi: IOAPIC_PINS,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new vector, routed nowhere until `update` gives it an address.
    pub fn allocate(&self) -> Result<MsiVector, IrqError> {
        let gsi = {
            let mut t = self.lock();
            if t.next_gsi >= MAX_GSI {
                return Err(IrqError::Exhausted);
            }
            t.next_gsi += 1;
            t.next_gsi - 1
        };
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(IrqError::EventFd)?;
        self.vm.register_irqfd(&irqfd, gsi)?;
        Ok(MsiVector { gsi, irqfd })
    }

    /// Points `gsi` at an MSI address/data pair (or removes its route when masked, so a
    /// stray eventfd write delivers nothing) and installs the table.
    pub fn update(&self, gsi: u32, addr: u64, data: u32, masked: bool) -> Result<(), IrqError> {
        let mut t = self.lock();
        if masked {
            t.msi.remove(&gsi);
        } else {
            t.msi.insert(gsi, msi(gsi, addr, data));
        }
        let mut all = default_routes();
        all.extend(t.msi.values().copied());
        let mut r = KvmIrqRouting::new(all.len()).map_err(|_| IrqError::Exhausted)?;
        r.as_mut_slice().copy_from_slice(&all);
        self.vm.set_gsi_routing(&r)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_match_kvms() {
        let r = default_routes();
        // 15 ISA IRQs (not 2) on the PIC, 24 IOAPIC pins.
        assert_eq!(r.len(), 15 + 24);
        // SAFETY: reading the union field that `irqchip` wrote.
        let pin = |e: &kvm_irq_routing_entry| unsafe { (e.u.irqchip.irqchip, e.u.irqchip.pin) };
        let gsi9: Vec<_> = r.iter().filter(|e| e.gsi == 9).map(pin).collect();
        assert_eq!(gsi9, [(KVM_IRQCHIP_PIC_SLAVE, 1), (KVM_IRQCHIP_IOAPIC, 9)]);
        let gsi2: Vec<_> = r.iter().filter(|e| e.gsi == 2).map(pin).collect();
        assert_eq!(gsi2, [(KVM_IRQCHIP_IOAPIC, 2)]);
        assert!(r.iter().all(|e| e.gsi < IOAPIC_PINS));
    }

    #[test]
    fn msi_entry_splits_the_address() {
        let e = msi(30, 0x1_fee0_1000, 0x4041);
        // SAFETY: reading the union field that `msi` wrote.
        let (lo, hi, data) = unsafe { (e.u.msi.address_lo, e.u.msi.address_hi, e.u.msi.data) };
        assert_eq!(
            (e.gsi, e.type_, lo, hi, data),
            (30, KVM_IRQ_ROUTING_MSI, 0xfee0_1000, 1, 0x4041)
        );
    }
}
