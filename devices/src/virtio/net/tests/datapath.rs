//! Features and config space, transmit, and receive with and without MRG_RXBUF.

use super::*;

#[test]
fn features_follow_the_backend_and_config_space_is_mac_status_pairs() {
    let (dev, _) = device(Offloads::NONE);
    let f = dev.features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_CTRL_VQ,
        VIRTIO_NET_F_CTRL_RX,
        VIRTIO_NET_F_CTRL_MAC_ADDR,
    ] {
        assert_ne!(f & bit, 0, "{bit:#x}");
    }
    assert_eq!(
        f & (VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_HOST_TSO4),
        0
    );

    let (dev, _) = device(Offloads {
        csum: true,
        tso4: true,
        tso6: true,
        ecn: true,
        ufo: false,
        uso4: true,
        uso6: true,
    });
    let f = dev.features();
    for bit in [
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_USO4,
        VIRTIO_NET_F_HOST_USO,
    ] {
        assert_ne!(f & bit, 0, "{bit:#x}");
    }
    assert_eq!(f & (VIRTIO_NET_F_HOST_UFO | VIRTIO_NET_F_GUEST_UFO), 0);

    assert_eq!(dev.device_type(), TYPE_NET);
    assert_eq!(dev.queue_max_sizes().len(), 3);
    let mut c = [0u8; 10];
    dev.read_config(0, &mut c);
    assert_eq!(&c[..6], &MAC);
    assert_eq!(u16::from_le_bytes([c[6], c[7]]), VIRTIO_NET_S_LINK_UP);
    assert_eq!(u16::from_le_bytes([c[8], c[9]]), 1);
    let mut s = [0xffu8; 4];
    dev.read_config(8, &mut s);
    assert_eq!(s, [1, 0, 0, 0]);
    dev.read_config(u64::MAX, &mut s);
    assert_eq!(s, [0; 4]);
}

#[test]
fn a_transmitted_frame_reaches_the_backend_with_its_header() {
    let mem = memory();
    let (mut dev, env) = device(Offloads::ALL);
    let (rx, mut tx) = (Vq::new(&mem, 0), Vq::new(&mem, 0x1_0000));
    activate(
        &mut dev,
        &env,
        &mem,
        &[&rx, &tx],
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_CSUM,
    );
    assert_eq!(env.state.lock().unwrap().hdr_len, VNET_HDR_LEN);

    let frame = with_hdr(&eth_frame([0xff; 6], 300, 1));
    mem.write_slice(&frame, GuestAddress(0x10_0000)).unwrap();
    // Header and payload in separate descriptors, as Linux does.
    let head = tx.add(&[
        (0x10_0000, 12, false),
        (0x10_000c, frame.len() as u32 - 12, false),
    ]);
    dev.process_queue(TX_QUEUE).unwrap();
    assert_eq!(env.state.lock().unwrap().sent, vec![frame]);
    assert_eq!(tx.used(), vec![(head, 0)]);
    assert_eq!(*env.irq.queues.lock().unwrap(), vec![TX_QUEUE as u16]);
}

#[test]
fn a_received_frame_lands_in_one_buffer_without_mrg_rxbuf() {
    let mem = memory();
    let (mut dev, env) = device(Offloads::NONE);
    let mut rx = Vq::new(&mem, 0);
    let tx = Vq::new(&mem, 0x1_0000);
    activate(&mut dev, &env, &mem, &[&rx, &tx], VIRTIO_F_VERSION_1);
    assert_eq!(dev.event_fds(), vec![(42, BACKEND_TOKEN)]);

    let frame = with_hdr(&eth_frame(MAC, 1000, 2));
    env.state.lock().unwrap().to_guest.push_back(frame.clone());
    let head = rx.add(&[(0x10_0000, 2048, true)]);
    dev.process_event(BACKEND_TOKEN).unwrap();
    assert_eq!(rx.used(), vec![(head, frame.len() as u32)]);
    let got = read(&mem, 0x10_0000, frame.len());
    assert_eq!(&got[..10], &frame[..10]);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    assert_eq!(&got[12..], &frame[12..]);
    assert_eq!(*env.irq.queues.lock().unwrap(), vec![RX_QUEUE as u16]);
}

#[test]
fn mrg_rxbuf_spreads_a_large_frame_and_counts_the_buffers() {
    let mem = memory();
    let (mut dev, env) = device(Offloads::NONE);
    let mut rx = Vq::new(&mem, 0);
    let tx = Vq::new(&mem, 0x1_0000);
    activate(
        &mut dev,
        &env,
        &mem,
        &[&rx, &tx],
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF,
    );

    let frame = with_hdr(&eth_frame(MAC, 3000, 3));
    env.state.lock().unwrap().to_guest.push_back(frame.clone());
    // Only two 1 KiB buffers: not enough, so nothing is used yet and the frame waits.
    let a = rx.add(&[(0x10_0000, 1024, true)]);
    let b = rx.add(&[(0x20_0000, 512, true), (0x20_1000, 512, true)]);
    dev.process_event(BACKEND_TOKEN).unwrap();
    assert!(rx.used().is_empty());
    assert!(env.state.lock().unwrap().to_guest.is_empty());

    let c = rx.add(&[(0x30_0000, 1024, true)]);
    let d = rx.add(&[(0x40_0000, 1024, true)]);
    dev.process_queue(RX_QUEUE).unwrap();
    let total = frame.len() as u32;
    assert_eq!(rx.used(), vec![(a, 1024), (b, 1024), (c, total - 2048)]);
    let mut got = read(&mem, 0x10_0000, 1024);
    got.extend(read(&mem, 0x20_0000, 512));
    got.extend(read(&mem, 0x20_1000, 512));
    got.extend(read(&mem, 0x30_0000, (total - 2048) as usize));
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3, "num_buffers");
    assert_eq!(&got[12..], &frame[12..]);

    // The fourth buffer takes the next frame whole.
    let small = with_hdr(&eth_frame([0xff; 6], 60, 4));
    env.state.lock().unwrap().to_guest.push_back(small.clone());
    dev.process_event(BACKEND_TOKEN).unwrap();
    assert_eq!(rx.used()[3], (d, small.len() as u32));
    let got = read(&mem, 0x40_0000, small.len());
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
}

#[test]
fn without_mrg_rxbuf_a_frame_too_big_for_the_buffer_is_dropped_and_the_buffer_kept() {
    let mem = memory();
    let (mut dev, env) = device(Offloads::NONE);
    let mut rx = Vq::new(&mem, 0);
    let tx = Vq::new(&mem, 0x1_0000);
    activate(&mut dev, &env, &mem, &[&rx, &tx], VIRTIO_F_VERSION_1);
    let big = with_hdr(&eth_frame(MAC, 1500, 5));
    let small = with_hdr(&eth_frame(MAC, 100, 6));
    env.state
        .lock()
        .unwrap()
        .to_guest
        .extend([big, small.clone()]);
    let head = rx.add(&[(0x10_0000, 512, true)]);
    dev.process_event(BACKEND_TOKEN).unwrap();
    assert_eq!(rx.used(), vec![(head, small.len() as u32)]);
    assert_eq!(&read(&mem, 0x10_000c, 100)[..], &small[12..]);
}

#[test]
fn frames_wait_in_the_backend_until_the_driver_sets_up_buffers() {
    let mem = memory();
    let (mut dev, env) = device(Offloads::NONE);
    // Nothing happens before activation.
    env.state
        .lock()
        .unwrap()
        .to_guest
        .push_back(with_hdr(&eth_frame(MAC, 80, 7)));
    dev.process_event(BACKEND_TOKEN).unwrap();
    dev.process_queue(RX_QUEUE).unwrap();
    assert_eq!(env.state.lock().unwrap().to_guest.len(), 1);

    let mut rx = Vq::new(&mem, 0);
    let tx = Vq::new(&mem, 0x1_0000);
    activate(&mut dev, &env, &mem, &[&rx, &tx], VIRTIO_F_VERSION_1);
    let head = rx.add(&[(0x10_0000, 2048, true)]);
    dev.process_queue(RX_QUEUE).unwrap();
    assert_eq!(rx.used(), vec![(head, 92)]);
}
