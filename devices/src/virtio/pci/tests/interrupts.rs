//! INTx and ISR, MSI-X vectors, notify addresses, device config passthrough, the
//! PCI_CFG window, and arbitrary guest accesses.

use super::*;

#[test]
fn intx_sets_isr_which_reading_clears() {
    let mut rig = rig();
    rig.start();
    let irq = rig.fake.lock().unwrap().interrupt.clone().unwrap();
    irq.trigger_queue(0).unwrap();
    assert_eq!(rig.intx.count(), 1);
    assert_ne!(
        rig.dev.read_config(1) & (u32::from(STATUS_INTERRUPT) << 16),
        0
    );
    // The guest EOIs before reading the ISR: the line is raised again.
    rig.dev.resample_intx();
    assert_eq!(rig.intx.count(), 2);
    assert_eq!(rig.r(ISR_CFG_OFFSET, 1), u64::from(ISR_QUEUE));
    assert_eq!(rig.r(ISR_CFG_OFFSET, 1), 0, "read clears");
    assert_eq!(
        rig.dev.read_config(1) & (u32::from(STATUS_INTERRUPT) << 16),
        0
    );
    rig.dev.resample_intx();
    assert_eq!(rig.intx.count(), 2);

    irq.trigger_config().unwrap();
    assert_eq!(rig.r(ISR_CFG_OFFSET, 4), u64::from(ISR_CONFIG));
    irq.trigger_queue(9).unwrap(); // no such queue
    assert_eq!(rig.intx.count(), 3);

    // INTx disabled in the command register: ISR only, the line stays quiet
    // until the guest enables it again.
    rig.dev
        .write_config(1, u32::from(COMMAND_INTX_DISABLE), 0xffff);
    irq.trigger_queue(1).unwrap();
    assert_eq!(rig.intx.count(), 3);
    rig.dev.write_config(1, 0, 0xffff);
    assert_eq!(rig.intx.count(), 4);
    assert!(rig
        .msi
        .take()
        .iter()
        .all(|e| !matches!(e, Event::Trigger(_))));
}

#[test]
fn msix_vectors_per_queue_and_config() {
    let mut rig = rig();
    let msix_cap = caps(&mut rig.dev)
        .into_iter()
        .find(|(_, id)| *id == MSIX_CAP_ID)
        .unwrap()
        .0;
    // Vector 1: program and unmask through the BAR.
    rig.w(MSIX_TABLE_OFFSET + 16, 0xfee0_0000, 4);
    rig.w(MSIX_TABLE_OFFSET + 20, 0, 4);
    rig.w(MSIX_TABLE_OFFSET + 24, 0x31, 4);
    rig.w(MSIX_TABLE_OFFSET + 28, 0, 4);
    // MSI-X enable through configuration space (Message Control, high byte).
    rig.dev.write_config(msix_cap / 4, 0x8000_0000, 0xff00_0000);
    let msg = MsiMessage {
        addr: 0xfee0_0000,
        data: 0x31,
    };
    assert!(rig.msi.take().contains(&Event::Update(1, msg, false)));

    rig.w(MSIX_CONFIG, 0, 2);
    rig.w(QUEUE_SELECT, 0, 2);
    rig.w(QUEUE_MSIX_VECTOR, 1, 2);
    assert_eq!(rig.r(QUEUE_MSIX_VECTOR, 2), 1);
    rig.w(QUEUE_SELECT, 1, 2);
    rig.w(QUEUE_MSIX_VECTOR, 99, 2);
    assert_eq!(
        rig.r(QUEUE_MSIX_VECTOR, 2),
        u64::from(VIRTIO_MSI_NO_VECTOR),
        "a vector beyond the table is refused"
    );
    rig.start();
    let irq = rig.fake.lock().unwrap().interrupt.clone().unwrap();
    irq.trigger_queue(0).unwrap();
    assert_eq!(rig.msi.take(), [Event::Trigger(1)]);
    irq.trigger_queue(1).unwrap(); // NO_VECTOR: nothing at all
    assert!(rig.msi.take().is_empty());
    // Vector 0 is still masked: the config interrupt pends in the PBA.
    let generation = rig.r(CONFIG_GENERATION, 1);
    irq.trigger_config().unwrap();
    assert!(rig.msi.take().is_empty());
    assert_eq!(rig.r(MSIX_PBA_OFFSET, 8), 1);
    assert_eq!(rig.r(CONFIG_GENERATION, 1), generation + 1);
    assert_eq!(rig.r(ISR_CFG_OFFSET, 1), 0, "no ISR with MSI-X");
    assert_eq!(rig.intx.count(), 0);
    rig.w(MSIX_TABLE_OFFSET + 12, 0, 4); // unmask vector 0
    assert_eq!(rig.msi.take().last(), Some(&Event::Trigger(0)));
}

#[test]
fn notify_writes_and_addresses() {
    let mut rig = rig();
    assert!(rig.dev.notify_addresses().is_empty(), "BAR not mapped");
    rig.w(NOTIFY_CFG_OFFSET + 4, 1, 2); // before DRIVER_OK: ignored
    rig.start();
    rig.w(NOTIFY_CFG_OFFSET + 4, 1, 2);
    rig.w(NOTIFY_CFG_OFFSET, 0, 2);
    rig.w(NOTIFY_CFG_OFFSET + 8, 2, 2); // queue 2 was not enabled
    rig.w(NOTIFY_CFG_OFFSET + 0x800, 0, 2); // no such queue
    assert_eq!(rig.fake.lock().unwrap().processed, [1, 0]);
    rig.dev.process_queue(1);
    rig.dev.process_queue(u16::MAX);
    assert_eq!(rig.fake.lock().unwrap().processed, [1, 0, 1]);

    // Placed on a bus, the doorbells follow BAR 0.
    let bus = PciBus::new();
    let fake = rig.fake.clone();
    let dev = Arc::new(Mutex::new(rig.dev));
    let mut alloc = crate::pci::BarAllocator::new(0xc000_0000..0xe000_0000, 0x1000..0x1_0000);
    alloc.assign(&mut *dev.lock().unwrap()).unwrap();
    let addr = PciAddress::new(0, 4, 0).unwrap();
    bus.add_device(addr, dev.clone(), "blk0").unwrap();
    assert_eq!(
        dev.lock().unwrap().notify_addresses(),
        [(0xc000_3000, 0), (0xc000_3004, 1), (0xc000_3008, 2)]
    );
    assert_eq!(bus.info()[1].irq, Some(16), "slot 4 INTA");

    // A device error: NEEDS_RESET and a config interrupt; later kicks are dropped.
    fake.lock().unwrap().fail_queue = true;
    dev.lock().unwrap().process_queue(0);
    let mut d = dev.lock().unwrap();
    assert_ne!(d.status() & STATUS_NEEDS_RESET, 0);
    assert_eq!(rig.intx.count(), 1);
    d.process_queue(0);
    assert_eq!(fake.lock().unwrap().processed, [1, 0, 1, 0]);
}

#[test]
fn device_config_passes_through() {
    let mut rig = rig();
    assert_eq!(rig.r(DEVICE_CFG_OFFSET + 4, 4), 0x0706_0504);
    rig.w(DEVICE_CFG_OFFSET + 1, 0xaa, 1);
    assert_eq!(rig.fake.lock().unwrap().config[1], 0xaa);
}

#[test]
fn pci_cfg_window_reaches_the_bar() {
    let mut rig = rig();
    let cap = rig.dev.pci_cfg_cap;
    let reg = |off: usize| (cap + off) / 4;
    // bar = 0 (byte 0 of the dword at cap + 4), offset, length.
    rig.dev.write_config(reg(PCI_CFG_BAR), 0, 0xff);
    rig.dev
        .write_config(reg(PCI_CFG_OFFSET), DEVICE_STATUS as u32, 0xffff_ffff);
    rig.dev.write_config(reg(PCI_CFG_LENGTH), 1, 0xffff_ffff);
    rig.dev
        .write_config(reg(PCI_CFG_DATA), u32::from(STATUS_ACKNOWLEDGE), 0xff);
    assert_eq!(rig.status(), STATUS_ACKNOWLEDGE);
    rig.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    assert_eq!(
        rig.dev.read_config(reg(PCI_CFG_DATA)),
        u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER)
    );
    // A misaligned or over-long window does nothing.
    rig.dev.write_config(reg(PCI_CFG_LENGTH), 3, 0xffff_ffff);
    rig.dev.write_config(reg(PCI_CFG_DATA), 0, 0xffff_ffff);
    assert_eq!(rig.status(), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    // The capability's read-only fields stay put.
    rig.dev.write_config(cap / 4, 0xffff_ffff, 0xffff_ffff);
    assert_eq!(rig.dev.config().read_u8(cap + 3), CAP_PCI_CFG);
}

#[test]
fn any_guest_access_is_safe() {
    let mut rig = rig();
    rig.start();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let offsets = [
        0u64,
        1,
        0x37,
        0x38,
        0xfff,
        0x1000,
        0x1001,
        0x2ffe,
        0x3ffc,
        0x4ffe,
        0x5000,
        0x7fff,
        0x8000,
        u64::MAX - 3,
        u64::MAX,
    ];
    for i in 0..20_000 {
        let off = if i % 2 == 0 {
            offsets[(next() % offsets.len() as u64) as usize]
        } else {
            next() % 0x9000
        };
        let len = (next() % 10) as usize;
        let mut buf = [0u8; 10];
        let bar = (next() % 3) as u8;
        if next() % 2 == 0 {
            rig.dev.read_bar(bar, off, &mut buf[..len]);
        } else {
            // Never write 0 status etc. deliberately: random data, random field.
            buf.iter_mut().for_each(|b| *b = next() as u8);
            rig.dev.write_bar(bar, off, &buf[..len]);
        }
        let reg = (next() % 1100) as usize;
        if next() % 2 == 0 {
            rig.dev.read_config(reg);
        } else {
            rig.dev.write_config(reg, next() as u32, next() as u32);
        }
    }
}
