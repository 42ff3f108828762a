//! The control queue: receive modes, MAC tables and address, VLAN filtering.

use super::*;

#[test]
fn control_queue_sets_rx_modes_and_notifies_once_until_queried() {
    let mem = memory();
    let (mut dev, env) = device(Offloads::NONE);
    let (rx, tx, mut cq) = (
        Vq::new(&mem, 0),
        Vq::new(&mem, 0x1_0000),
        Vq::new(&mem, 0x2_0000),
    );
    activate(&mut dev, &env, &mem, &[&rx, &tx, &cq], BASIC);

    let f = dev.rx_filter();
    assert!(f.promiscuous, "QEMU starts promiscuous");
    assert_eq!(
        (f.unicast, f.multicast, f.vlan),
        (RxState::Normal, RxState::Normal, RxState::All)
    );
    assert!(f.broadcast_allowed);
    assert_eq!(f.main_mac, "52:54:00:12:34:56");

    let mut at = 0x50_0000;
    let mut cmd = |dev: &mut VirtioNet, class, c, data: &[u8]| {
        at += 0x1000;
        ctrl(dev, &mem, &mut cq, at, class, c, data)
    };
    assert_eq!(cmd(&mut dev, CTRL_RX, CTRL_RX_PROMISC, &[0]), NET_OK);
    assert_eq!(env.events.0.load(Ordering::SeqCst), 1);
    assert_eq!(cmd(&mut dev, CTRL_RX, CTRL_RX_ALLMULTI, &[1]), NET_OK);
    assert_eq!(cmd(&mut dev, CTRL_RX, CTRL_RX_NOUNI, &[1]), NET_OK);
    assert_eq!(cmd(&mut dev, CTRL_RX, CTRL_RX_NOBCAST, &[1]), NET_OK);
    assert_eq!(
        env.events.0.load(Ordering::SeqCst),
        1,
        "gated until queried"
    );
    let f = dev.rx_filter();
    assert!(!f.promiscuous);
    assert_eq!(f.multicast, RxState::All);
    assert_eq!(f.unicast, RxState::None);
    assert!(!f.broadcast_allowed);
    assert_eq!(cmd(&mut dev, CTRL_RX, CTRL_RX_NOUNI, &[0]), NET_OK);
    assert_eq!(cmd(&mut dev, CTRL_RX, CTRL_RX_ALLUNI, &[1]), NET_OK);
    assert_eq!(cmd(&mut dev, CTRL_RX, CTRL_RX_ALLMULTI, &[0]), NET_OK);
    assert_eq!(cmd(&mut dev, CTRL_RX, CTRL_RX_NOMULTI, &[1]), NET_OK);
    assert_eq!(env.events.0.load(Ordering::SeqCst), 2);
    let f = dev.rx_filter();
    assert_eq!((f.unicast, f.multicast), (RxState::All, RxState::None));

    // Errors: unknown command, unknown class, missing data. No event for them.
    assert_eq!(cmd(&mut dev, CTRL_RX, 9, &[1]), NET_ERR);
    assert_eq!(cmd(&mut dev, 77, 0, &[1]), NET_ERR);
    assert_eq!(cmd(&mut dev, CTRL_RX, CTRL_RX_PROMISC, &[]), NET_ERR);
    assert_eq!(env.events.0.load(Ordering::SeqCst), 2);
    assert_eq!(cq.used().len(), 11);
    assert!(cq.used().iter().all(|&(_, len)| len == 1));
}

#[test]
fn mac_table_and_address_program_the_filter() {
    let mem = memory();
    let (mut dev, env) = device(Offloads::NONE);
    let (mut rx, tx, mut cq) = (
        Vq::new(&mem, 0),
        Vq::new(&mem, 0x1_0000),
        Vq::new(&mem, 0x2_0000),
    );
    activate(
        &mut dev,
        &env,
        &mem,
        &[&rx, &tx, &cq],
        BASIC | VIRTIO_NET_F_CTRL_MAC_ADDR,
    );

    let uni = [[0x02, 1, 2, 3, 4, 5], [0x02, 9, 9, 9, 9, 9]];
    let multi = [[0x01, 0, 0x5e, 0, 0, 1]];
    assert_eq!(
        ctrl(
            &mut dev,
            &mem,
            &mut cq,
            0x50_0000,
            CTRL_RX,
            CTRL_RX_PROMISC,
            &[0]
        ),
        NET_OK
    );
    assert_eq!(
        ctrl(
            &mut dev,
            &mem,
            &mut cq,
            0x51_0000,
            CTRL_MAC,
            CTRL_MAC_TABLE_SET,
            &mac_table(&uni, &multi)
        ),
        NET_OK
    );
    let f = dev.rx_filter();
    assert_eq!(
        f.unicast_table,
        vec!["02:01:02:03:04:05", "02:09:09:09:09:09"]
    );
    assert_eq!(f.multicast_table, vec!["01:00:5e:00:00:01"]);
    assert!(!f.unicast_overflow && !f.multicast_overflow);

    // What passes: our MAC, table entries, broadcast; not strangers.
    let frames = [
        (eth_frame(MAC, 60, 1), true),
        (eth_frame(uni[1], 60, 2), true),
        (eth_frame(multi[0], 60, 3), true),
        (eth_frame([0xff; 6], 60, 4), true),
        (eth_frame([0x02, 7, 7, 7, 7, 7], 60, 5), false),
        (eth_frame([0x01, 0, 0x5e, 0, 0, 9], 60, 6), false),
    ];
    for (i, (f, _)) in frames.iter().enumerate() {
        env.state.lock().unwrap().to_guest.push_back(with_hdr(f));
        rx.add(&[(0x10_0000 + i as u64 * 0x1000, 2048, true)]);
    }
    dev.process_event(BACKEND_TOKEN).unwrap();
    let used = rx.used();
    assert_eq!(used.len(), 4);
    for (i, (f, _)) in frames.iter().filter(|(_, pass)| *pass).enumerate() {
        assert_eq!(
            read(&mem, 0x10_000c + i as u64 * 0x1000, 6),
            f[..6].to_vec()
        );
    }

    // MAC_ADDR_SET changes the config space and the filter's MAC.
    let new_mac = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];
    assert_eq!(
        ctrl(
            &mut dev,
            &mem,
            &mut cq,
            0x52_0000,
            CTRL_MAC,
            CTRL_MAC_ADDR_SET,
            &new_mac
        ),
        NET_OK
    );
    let mut c = [0u8; 6];
    dev.read_config(0, &mut c);
    assert_eq!(c, new_mac);
    assert_eq!(dev.rx_filter().main_mac, "02:aa:bb:cc:dd:ee");
    assert_eq!(
        ctrl(
            &mut dev,
            &mem,
            &mut cq,
            0x53_0000,
            CTRL_MAC,
            CTRL_MAC_ADDR_SET,
            &new_mac[..5]
        ),
        NET_ERR
    );

    // Malformed tables are refused and change nothing: a count past the data,
    // trailing bytes, a missing multicast list.
    let mut long = mac_table(&uni, &multi);
    long[0] = 3;
    let mut trailing = mac_table(&uni, &multi);
    trailing.push(0);
    let mut no_multi = 1u32.to_le_bytes().to_vec();
    no_multi.extend_from_slice(&uni[0]);
    for (i, bad) in [long, trailing, no_multi, vec![0xff; 4]].iter().enumerate() {
        let at = 0x54_0000 + i as u64 * 0x1000;
        assert_eq!(
            ctrl(
                &mut dev,
                &mem,
                &mut cq,
                at,
                CTRL_MAC,
                CTRL_MAC_TABLE_SET,
                bad
            ),
            NET_ERR
        );
    }
    assert_eq!(dev.rx_filter().unicast_table.len(), 2);

    // Overflow: more entries than the table holds accept every address of the kind.
    let many: Vec<[u8; 6]> = (0..65).map(|i| [0x02, 0, 0, 0, 1, i as u8]).collect();
    assert_eq!(
        ctrl(
            &mut dev,
            &mem,
            &mut cq,
            0x58_0000,
            CTRL_MAC,
            CTRL_MAC_TABLE_SET,
            &mac_table(&many, &[])
        ),
        NET_OK
    );
    let f = dev.rx_filter();
    assert!(f.unicast_overflow && !f.multicast_overflow);
    assert!(f.unicast_table.is_empty());
    let many_multi: Vec<[u8; 6]> = (0..64).map(|i| [0x01, 0, 0, 0, 1, i as u8]).collect();
    assert_eq!(
        ctrl(
            &mut dev,
            &mem,
            &mut cq,
            0x59_0000,
            CTRL_MAC,
            CTRL_MAC_TABLE_SET,
            &mac_table(&uni[..1], &many_multi)
        ),
        NET_OK
    );
    let f = dev.rx_filter();
    assert!(!f.unicast_overflow && f.multicast_overflow);
    assert_eq!(f.unicast_table.len(), 1);
    env.state
        .lock()
        .unwrap()
        .to_guest
        .push_back(with_hdr(&eth_frame([0x02, 7, 7, 7, 7, 7], 60, 5)));
    env.state
        .lock()
        .unwrap()
        .to_guest
        .push_back(with_hdr(&eth_frame([0x01, 3, 3, 3, 3, 3], 60, 5)));
    rx.add(&[(0x20_0000, 2048, true)]);
    dev.process_event(BACKEND_TOKEN).unwrap();
    assert_eq!(
        rx.used().len(),
        5,
        "the stranger unicast is dropped, any multicast passes"
    );

    // Reset: back to the configured MAC, promiscuous, empty tables.
    dev.reset();
    let f = dev.rx_filter();
    assert_eq!(f.main_mac, "52:54:00:12:34:56");
    assert!(f.promiscuous && f.unicast_table.is_empty() && !f.multicast_overflow);
    assert_eq!(dev.mac(), MAC);
}

#[test]
fn vlan_filtering() {
    let mem = memory();
    let (mut dev, env) = device(Offloads::NONE);
    let (mut rx, tx, mut cq) = (
        Vq::new(&mem, 0),
        Vq::new(&mem, 0x1_0000),
        Vq::new(&mem, 0x2_0000),
    );
    activate(
        &mut dev,
        &env,
        &mem,
        &[&rx, &tx, &cq],
        BASIC | VIRTIO_NET_F_CTRL_VLAN,
    );
    assert_eq!(dev.rx_filter().vlan, RxState::None);
    assert_eq!(
        ctrl(
            &mut dev,
            &mem,
            &mut cq,
            0x50_0000,
            CTRL_RX,
            CTRL_RX_PROMISC,
            &[0]
        ),
        NET_OK
    );
    let tagged = |vid: u16| {
        let mut f = MAC.to_vec();
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x81, 0x00]);
        f.extend_from_slice(&vid.to_be_bytes());
        f.extend_from_slice(&[0x08, 0x00]);
        f.resize(64, 0);
        with_hdr(&f)
    };
    env.state.lock().unwrap().to_guest.push_back(tagged(5));
    rx.add(&[(0x10_0000, 2048, true)]);
    dev.process_event(BACKEND_TOKEN).unwrap();
    assert!(rx.used().is_empty());

    assert_eq!(
        ctrl(
            &mut dev,
            &mem,
            &mut cq,
            0x51_0000,
            CTRL_VLAN,
            CTRL_VLAN_ADD,
            &5u16.to_le_bytes()
        ),
        NET_OK
    );
    assert_eq!(
        ctrl(
            &mut dev,
            &mem,
            &mut cq,
            0x52_0000,
            CTRL_VLAN,
            CTRL_VLAN_ADD,
            &4096u16.to_le_bytes()
        ),
        NET_ERR
    );
    let f = dev.rx_filter();
    assert_eq!((f.vlan, f.vlan_table.clone()), (RxState::Normal, vec![5]));
    env.state.lock().unwrap().to_guest.push_back(tagged(5));
    env.state.lock().unwrap().to_guest.push_back(tagged(6));
    dev.process_event(BACKEND_TOKEN).unwrap();
    assert_eq!(rx.used().len(), 1);
    assert_eq!(
        ctrl(
            &mut dev,
            &mem,
            &mut cq,
            0x53_0000,
            CTRL_VLAN,
            CTRL_VLAN_DEL,
            &5u16.to_le_bytes()
        ),
        NET_OK
    );
    assert!(dev.rx_filter().vlan_table.is_empty());
}
