//! PCI identity and capabilities, feature negotiation, queue setup and activation,
//! NEEDS_RESET, reset and the activation hook.

use super::*;

#[test]
fn pci_identity_and_capabilities() {
    let mut rig = rig();
    let d = &mut rig.dev;
    assert_eq!(d.read_config(0), 0x1042_1af4, "1af4:1040 + block");
    assert_eq!(d.read_config(2), 0x0100_0001, "class 01/00, revision 1");
    assert_eq!(d.read_config(11), 0x1100_1af4);
    assert_eq!(d.read_config(15) >> 8 & 0xff, 1, "INTA");
    assert_ne!(
        d.read_config(1) >> 16 & u32::from(crate::pci::config::STATUS_CAP_LIST),
        0
    );
    // BAR 0: 64-bit, non-prefetchable, 32 KiB.
    d.write_config(4, 0xffff_ffff, 0xffff_ffff);
    d.write_config(5, 0xffff_ffff, 0xffff_ffff);
    assert_eq!(d.read_config(4), 0xffff_8004);
    assert_eq!(d.read_config(5), 0xffff_ffff);
    for reg in 6..10 {
        assert_eq!(d.read_config(reg), 0);
    }

    let list = caps(d);
    let mut vendor = Vec::new();
    for &(at, id) in &list {
        let c = d.config();
        if id == PCI_CAP_ID_VENDOR {
            vendor.push((
                c.read_u8(at + 3),
                c.read_u8(at + 2),
                c.read_u8(at + 4),
                c.read_u32(at + 8),
                c.read_u32(at + 12),
            ));
            if c.read_u8(at + 3) == CAP_NOTIFY_CFG {
                assert_eq!(c.read_u32(at + 16), 4, "notify_off_multiplier");
            }
        }
    }
    assert_eq!(
        vendor,
        [
            (CAP_COMMON_CFG, 16, 0, 0x0000, 0x38),
            (CAP_ISR_CFG, 16, 0, 0x1000, 1),
            (CAP_DEVICE_CFG, 16, 0, 0x2000, 0x1000),
            (CAP_NOTIFY_CFG, 20, 0, 0x3000, 12),
            (CAP_PCI_CFG, 20, 0, 0, 0),
        ]
    );
    let &(msix, _) = list.iter().find(|(_, id)| *id == MSIX_CAP_ID).unwrap();
    let c = d.config();
    assert_eq!(c.read_u16(msix + 2), 3, "4 vectors: 3 queues + config");
    assert_eq!(c.read_u32(msix + 4), 0x4000, "table in BAR 0");
    assert_eq!(c.read_u32(msix + 8), 0x5000, "PBA in BAR 0");
}

#[test]
fn other_device_types_get_their_ids_and_classes() {
    assert_eq!(class_of(TYPE_NET), (0x02, 0x00));
    assert_eq!(class_of(TYPE_CONSOLE), (0x07, 0x80));
    assert_eq!(class_of(99), (0xff, 0x00));
}

#[test]
fn feature_negotiation_refuses_unknown_features() {
    let mut rig = rig();
    rig.w(DEVICE_FEATURE_SELECT, 0, 4);
    assert_eq!(
        rig.r(DEVICE_FEATURE, 4),
        VIRTIO_F_RING_EVENT_IDX | FEATURE_X
    );
    rig.w(DEVICE_FEATURE_SELECT, 1, 4);
    assert_eq!(rig.r(DEVICE_FEATURE, 4), 1, "VERSION_1");
    rig.w(DEVICE_FEATURE_SELECT, 2, 4);
    assert_eq!(rig.r(DEVICE_FEATURE, 4), 0);

    // A feature the device does not offer.
    rig.negotiate(VIRTIO_F_VERSION_1 | 1 << 40);
    assert_eq!(rig.status(), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    assert_eq!(rig.fake.lock().unwrap().acked, None);
    // Without VERSION_1 a modern device refuses too.
    rig.set_status(0);
    rig.negotiate(FEATURE_X);
    assert_eq!(rig.status() & STATUS_FEATURES_OK, 0);
    // DRIVER_OK without FEATURES_OK does not start the device.
    rig.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK);
    assert_eq!(rig.status() & STATUS_DRIVER_OK, 0);
    assert!(!rig.dev.is_activated());

    rig.set_status(0);
    let want = VIRTIO_F_VERSION_1 | FEATURE_X;
    rig.negotiate(want);
    assert_eq!(rig.status() & STATUS_FEATURES_OK, STATUS_FEATURES_OK);
    assert_eq!(rig.fake.lock().unwrap().acked, Some(want));
    rig.w(DRIVER_FEATURE_SELECT, 0, 4);
    assert_eq!(rig.r(DRIVER_FEATURE, 4), FEATURE_X);
    // Frozen after FEATURES_OK.
    rig.w(DRIVER_FEATURE, 0, 4);
    assert_eq!(rig.r(DRIVER_FEATURE, 4), FEATURE_X);
    // The driver cannot set NEEDS_RESET, nor clear a bit without a reset.
    rig.set_status(STATUS_NEEDS_RESET);
    assert_eq!(
        rig.status(),
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK
    );
}

#[test]
fn queue_setup_then_driver_ok_activates_with_the_guest_rings() {
    let mut rig = rig();
    assert_eq!(rig.r(NUM_QUEUES, 2), 3);
    rig.w(QUEUE_SELECT, 1, 2);
    assert_eq!(
        rig.r(QUEUE_SIZE, 2),
        128,
        "max size until the driver shrinks it"
    );
    assert_eq!(rig.r(QUEUE_NOTIFY_OFF, 2), 1);
    assert_eq!(rig.r(QUEUE_MSIX_VECTOR, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
    rig.w(QUEUE_SELECT, 7, 2);
    assert_eq!(rig.r(QUEUE_SIZE, 2), 0, "no such queue");
    rig.w(QUEUE_SIZE, 64, 2);
    rig.w(QUEUE_ENABLE, 1, 2);

    rig.start();
    let s = rig.fake.lock().unwrap();
    assert_eq!(
        s.queues.as_deref().unwrap(),
        [
            (true, 128, 0x1000, 0x2000, 0x3000, true),
            (true, 128, 0x4000, 0x5000, 0x6000, true),
        ],
        "queues 0..=last enabled, in order, with the driver's addresses"
    );
    drop(s);
    rig.w(QUEUE_SELECT, 0, 2);
    assert_eq!(rig.r(QUEUE_DESC, 8), 0x1000);
    assert_eq!(rig.r(QUEUE_DRIVER + 4, 4), 0);
    assert_eq!(rig.r(QUEUE_ENABLE, 2), 1);
    // Queue registers are frozen once the device runs.
    rig.w(QUEUE_DESC, 0x8000, 8);
    assert_eq!(rig.r(QUEUE_DESC, 8), 0x1000);
}

#[test]
fn a_gap_in_enabled_queues_is_passed_not_ready() {
    let mut rig = rig();
    rig.negotiate(VIRTIO_F_VERSION_1);
    rig.setup_queue(0, 256);
    rig.setup_queue(2, 64);
    rig.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    let s = rig.fake.lock().unwrap();
    let q = s.queues.as_deref().unwrap();
    assert_eq!(q.len(), 3);
    assert_eq!((q[0].0, q[1].0, q[2].0), (true, false, true));
    assert!(!q[0].5, "EVENT_IDX not negotiated");
}

#[test]
fn bad_rings_or_a_failing_device_set_needs_reset() {
    for case in 0..3 {
        let mut rig = rig();
        rig.negotiate(VIRTIO_F_VERSION_1);
        rig.setup_queue(0, 128);
        match case {
            0 => {
                rig.w(QUEUE_SELECT, 1, 2);
                rig.w(QUEUE_SIZE, 100, 2); // not a power of two
                rig.w(QUEUE_ENABLE, 1, 2);
            }
            1 => {
                rig.w(QUEUE_SELECT, 1, 2);
                rig.w(QUEUE_DESC, 0x7fff_0000_0000, 8); // outside guest memory
                rig.w(QUEUE_ENABLE, 1, 2);
            }
            _ => rig.fake.lock().unwrap().fail_activate = true,
        }
        rig.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        assert!(!rig.dev.is_activated(), "case {case}");
        assert_ne!(rig.status() & STATUS_NEEDS_RESET, 0, "case {case}");
        assert_eq!(rig.intx.count(), 1, "config interrupt, case {case}");
        assert_eq!(rig.r(ISR_CFG_OFFSET, 1), u64::from(ISR_CONFIG));
        // Kicks are ignored until the driver resets.
        rig.w(NOTIFY_CFG_OFFSET, 0, 2);
        assert!(rig.fake.lock().unwrap().processed.is_empty());
    }
}

#[test]
fn reset_clears_the_device_but_keeps_the_msix_table() {
    let mut rig = rig();
    rig.w(MSIX_TABLE_OFFSET + 16, 0xfee0_0000, 4);
    rig.w(MSIX_TABLE_OFFSET + 24, 0x4021, 4);
    rig.w(MSIX_CONFIG, 1, 2);
    rig.w(QUEUE_SELECT, 0, 2);
    rig.w(QUEUE_MSIX_VECTOR, 2, 2);
    rig.start();
    rig.set_status(0);
    assert_eq!(rig.status(), 0);
    assert!(!rig.dev.is_activated());
    let s = rig.fake.lock().unwrap();
    assert_eq!(s.resets, 1);
    assert!(s.queues.is_none());
    drop(s);
    assert_eq!(rig.r(QUEUE_SELECT, 2), 0);
    assert_eq!(rig.r(QUEUE_SIZE, 2), 256, "back to the maximum");
    assert_eq!(rig.r(QUEUE_ENABLE, 2), 0);
    assert_eq!(rig.r(QUEUE_DESC, 8), 0);
    assert_eq!(rig.r(QUEUE_MSIX_VECTOR, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
    assert_eq!(rig.r(MSIX_CONFIG, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
    rig.w(DRIVER_FEATURE_SELECT, 0, 4);
    assert_eq!(rig.r(DRIVER_FEATURE, 4), 0);
    assert_eq!(rig.r(MSIX_TABLE_OFFSET + 16, 4), 0xfee0_0000);
    assert_eq!(rig.r(MSIX_TABLE_OFFSET + 24, 4), 0x4021);
    // Negotiation works again from scratch.
    rig.start();
    assert_eq!(rig.fake.lock().unwrap().queues.as_ref().unwrap().len(), 2);
}

#[test]
fn activation_hook_follows_driver_ok_and_reset() {
    let mut rig = rig();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    rig.dev
        .set_activation_hook(Box::new(move |on| s.lock().unwrap().push(on)));
    assert!(rig.dev.event_fds().is_empty());
    rig.set_status(0); // reset before start: nothing to report
    rig.start();
    rig.set_status(0);
    rig.set_status(0);
    assert_eq!(*seen.lock().unwrap(), [true, false]);
}
