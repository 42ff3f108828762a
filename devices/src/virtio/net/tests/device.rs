//! Guest offloads, link state, malformed chains, activation, the QAPI view, and the
//! device over a real tap.

use super::*;

#[test]
fn guest_offloads_drive_the_backend() {
    let mem = memory();
    let (mut dev, env) = device(Offloads::ALL);
    let (rx, tx, mut cq) = (
        Vq::new(&mem, 0),
        Vq::new(&mem, 0x1_0000),
        Vq::new(&mem, 0x2_0000),
    );
    let feats = BASIC
        | VIRTIO_NET_F_GUEST_CSUM
        | VIRTIO_NET_F_GUEST_TSO4
        | VIRTIO_NET_F_GUEST_TSO6
        | VIRTIO_NET_F_CTRL_GUEST_OFFLOADS;
    activate(&mut dev, &env, &mem, &[&rx, &tx, &cq], feats);
    let want = Offloads {
        csum: true,
        tso4: true,
        tso6: true,
        ..Offloads::NONE
    };
    assert_eq!(env.state.lock().unwrap().offloads.last(), Some(&want));

    // ethtool -K: TSO off, then asking for an offload never negotiated.
    let bits = VIRTIO_NET_F_GUEST_CSUM.to_le_bytes();
    assert_eq!(
        ctrl(
            &mut dev,
            &mem,
            &mut cq,
            0x50_0000,
            CTRL_GUEST_OFFLOADS,
            0,
            &bits
        ),
        NET_OK
    );
    let csum_only = Offloads {
        csum: true,
        ..Offloads::NONE
    };
    assert_eq!(env.state.lock().unwrap().offloads.last(), Some(&csum_only));
    let bits = (VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_UFO).to_le_bytes();
    assert_eq!(
        ctrl(
            &mut dev,
            &mem,
            &mut cq,
            0x51_0000,
            CTRL_GUEST_OFFLOADS,
            0,
            &bits
        ),
        NET_ERR
    );
    // A guest acking TSO without checksum offload gets neither.
    dev.reset();
    assert_eq!(
        env.state.lock().unwrap().offloads.last(),
        Some(&Offloads::NONE)
    );
    activate(
        &mut dev,
        &env,
        &mem,
        &[&rx, &tx, &cq],
        BASIC | VIRTIO_NET_F_GUEST_TSO4,
    );
    assert_eq!(
        env.state.lock().unwrap().offloads.last(),
        Some(&Offloads::NONE)
    );
}

#[test]
fn link_down_drops_tx_discards_rx_and_interrupts_config() {
    let mem = memory();
    let (mut dev, env) = device(Offloads::NONE);
    let (mut rx, mut tx) = (Vq::new(&mem, 0), Vq::new(&mem, 0x1_0000));
    activate(
        &mut dev,
        &env,
        &mem,
        &[&rx, &tx],
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_STATUS,
    );

    let frame = with_hdr(&eth_frame([0xff; 6], 100, 1));
    mem.write_slice(&frame, GuestAddress(0x30_0000)).unwrap();
    tx.add(&[(0x30_0000, frame.len() as u32, false)]);
    dev.set_link(false).unwrap();
    assert!(!dev.link_up());
    assert_eq!(env.irq.config.load(Ordering::SeqCst), 1);
    let mut st = [0u8; 2];
    dev.read_config(6, &mut st);
    assert_eq!(u16::from_le_bytes(st), 0);
    // The queued frame was dropped when the link went down, and so are new ones.
    assert_eq!(tx.used().len(), 1);
    tx.add(&[(0x30_0000, frame.len() as u32, false)]);
    dev.process_queue(TX_QUEUE).unwrap();
    assert_eq!(tx.used().len(), 2);
    assert!(env.state.lock().unwrap().sent.is_empty());
    // Received frames are read and discarded.
    env.state
        .lock()
        .unwrap()
        .to_guest
        .push_back(with_hdr(&eth_frame(MAC, 80, 2)));
    rx.add(&[(0x10_0000, 2048, true)]);
    dev.process_event(BACKEND_TOKEN).unwrap();
    assert!(rx.used().is_empty());
    assert!(env.state.lock().unwrap().to_guest.is_empty());

    dev.set_link(false).unwrap();
    assert_eq!(
        env.irq.config.load(Ordering::SeqCst),
        1,
        "no change, no interrupt"
    );
    dev.set_link(true).unwrap();
    assert_eq!(env.irq.config.load(Ordering::SeqCst), 2);
    dev.read_config(6, &mut st);
    assert_eq!(u16::from_le_bytes(st), VIRTIO_NET_S_LINK_UP);
    tx.add(&[(0x30_0000, frame.len() as u32, false)]);
    dev.process_queue(TX_QUEUE).unwrap();
    assert_eq!(env.state.lock().unwrap().sent, vec![frame]);
    env.state
        .lock()
        .unwrap()
        .to_guest
        .push_back(with_hdr(&eth_frame(MAC, 80, 3)));
    dev.process_event(BACKEND_TOKEN).unwrap();
    assert_eq!(rx.used().len(), 1);

    // Before activation, set_link only changes the status.
    let (mut idle, env2) = device(Offloads::NONE);
    idle.set_link(false).unwrap();
    assert_eq!(env2.irq.config.load(Ordering::SeqCst), 0);
}

#[test]
fn malformed_chains_fail_their_request_only() {
    let mem = memory();
    let (mut dev, env) = device(Offloads::NONE);
    let (mut rx, mut tx, mut cq) = (
        Vq::new(&mem, 0),
        Vq::new(&mem, 0x1_0000),
        Vq::new(&mem, 0x2_0000),
    );
    activate(
        &mut dev,
        &env,
        &mem,
        &[&rx, &tx, &cq],
        BASIC | VIRTIO_NET_F_MRG_RXBUF,
    );

    // Transmit: a buffer outside guest memory, one shorter than the header, one
    // device-writable only; then a good one.
    let frame = with_hdr(&eth_frame([0xff; 6], 64, 1));
    mem.write_slice(&frame, GuestAddress(0x30_0000)).unwrap();
    tx.add(&[(0x4000_0000, 100, false)]);
    tx.add(&[(0x30_0000, 4, false)]);
    tx.add(&[(0x30_0000, 100, true)]);
    tx.add(&[(0xffff_ffff_ffff_f000, 0x2000, false)]);
    tx.add(&[(0x30_0000, frame.len() as u32, false)]);
    dev.process_queue(TX_QUEUE).unwrap();
    assert_eq!(tx.used().len(), 5);
    assert_eq!(env.state.lock().unwrap().sent, vec![frame]);

    // Receive: a buffer outside memory and one too small for the header are returned
    // empty; the frame goes to the next good one.
    let f = with_hdr(&eth_frame(MAC, 80, 2));
    env.state.lock().unwrap().to_guest.push_back(f.clone());
    let bad1 = rx.add(&[(0x4000_0000, 2048, true)]);
    let bad2 = rx.add(&[(0x10_0000, 4, true)]);
    let good = rx.add(&[(0x11_0000, 2048, true)]);
    dev.process_event(BACKEND_TOKEN).unwrap();
    assert_eq!(
        rx.used(),
        vec![(bad1, 0), (bad2, 0), (good, f.len() as u32)]
    );

    // Control: no ack buffer, no header, then a good one still answered.
    mem.write_slice(&[CTRL_RX, CTRL_RX_PROMISC, 0], GuestAddress(0x50_0000))
        .unwrap();
    cq.add(&[(0x50_0000, 3, false)]);
    cq.add(&[(0x50_1000, 1, true)]);
    cq.add(&[(0x50_0000, 3, false), (0x4000_0000, 1, true)]);
    assert_eq!(
        ctrl(
            &mut dev,
            &mem,
            &mut cq,
            0x51_0000,
            CTRL_RX,
            CTRL_RX_PROMISC,
            &[0]
        ),
        NET_OK
    );
    let used = cq.used();
    assert_eq!(
        used.iter().map(|u| u.1).collect::<Vec<_>>(),
        vec![0, 0, 0, 1]
    );

    // A driver that claims more available entries than the ring holds breaks the
    // device (NEEDS_RESET), it does not panic.
    let idx_addr = tx.mock.avail_addr().0 + 2;
    mem.write_obj(1000u16, GuestAddress(idx_addr)).unwrap();
    assert!(matches!(
        dev.process_queue(TX_QUEUE),
        Err(DeviceError::Queue(_))
    ));
}

#[test]
fn activation_wants_the_control_queue_when_negotiated() {
    let mem = memory();
    let (mut dev, env) = device(Offloads::NONE);
    let (rx, tx) = (Vq::new(&mem, 0), Vq::new(&mem, 0x1_0000));
    dev.ack_features(BASIC);
    let e = dev
        .activate(mem.clone(), env.irq.clone(), vec![rx.queue(), tx.queue()])
        .unwrap_err();
    assert!(matches!(e, ActivateError::QueueCount { got: 2, want: 3 }));
    // Unknown queues and tokens are ignored.
    dev.process_queue(7).unwrap();
    dev.process_event(9).unwrap();
}

#[test]
fn rx_filter_serialises_with_qapi_names() {
    let (mut dev, _) = device(Offloads::NONE);
    let v = serde_json::to_value(dev.rx_filter()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "name": "net0", "promiscuous": true, "multicast": "normal",
            "unicast": "normal", "vlan": "all", "broadcast-allowed": true,
            "multicast-overflow": false, "unicast-overflow": false,
            "main-mac": "52:54:00:12:34:56", "vlan-table": [],
            "unicast-table": [], "multicast-table": []
        })
    );
}

/// The device over a real tap, in a network namespace this test's thread makes
/// (gone with the thread): guest frames come out on the interface, frames sent on
/// the interface land in guest buffers behind the tap's virtio-net header.
#[test]
fn over_a_real_tap_in_a_private_namespace() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let t = std::thread::spawn(|| {
        // SAFETY: unshare affects only this thread.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            eprintln!(
                "skipped: no network namespace: {}",
                io::Error::last_os_error()
            );
            return;
        }
        let tap = match net::Tap::open("kn0") {
            Ok(t) => t,
            Err(e) => {
                eprintln!("skipped: {e}");
                return;
            }
        };
        tap.set_up(true).unwrap();
        let ifindex = {
            let c = std::ffi::CString::new("kn0").unwrap();
            // SAFETY: a NUL-terminated name.
            unsafe { libc::if_nametoindex(c.as_ptr()) }
        };
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2), owned at once.
        let sock = unsafe {
            OwnedFd::from_raw_fd(libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK,
                proto.into(),
            ))
        };
        // SAFETY: sockaddr_ll is plain data.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: bind reads one sockaddr_ll.
        let r = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(r, 0);
        let ours = |f: &[u8]| f.len() > 14 && f[12..14] == [0x88, 0xb5];
        let frame = |tag: u8| {
            let mut f = MAC.to_vec();
            f.extend_from_slice(&[0x02, 0, 0, 0, 0, tag, 0x88, 0xb5]);
            f.resize(200, tag);
            f
        };
        let poll = |fd: i32| {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd.
            unsafe { libc::poll(&mut p, 1, 100) };
        };

        let mem = memory();
        let events: Arc<Events> = Arc::new(Events::default());
        let mut dev = VirtioNet::new(
            Box::new(tap),
            NetConfig {
                name: "nic0".into(),
                mac: MAC,
            },
            events,
        );
        assert_ne!(
            dev.features() & VIRTIO_NET_F_GUEST_TSO4,
            0,
            "the tap offers TSO"
        );
        let (mut rx, mut tx) = (Vq::new(&mem, 0), Vq::new(&mem, 0x1_0000));
        dev.ack_features(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_NET_F_GUEST_CSUM);
        let irq = Arc::new(Irq::default());
        dev.activate(mem.clone(), irq, vec![rx.queue(), tx.queue()])
            .unwrap();
        let tap_fd = dev.event_fds()[0].0;

        // Guest to host.
        let out = with_hdr(&frame(1));
        let mut plain = out.clone();
        plain[0] = 0; // no partial checksum on a non-IP frame
        mem.write_slice(&plain, GuestAddress(0x30_0000)).unwrap();
        tx.add(&[(0x30_0000, plain.len() as u32, false)]);
        dev.process_queue(TX_QUEUE).unwrap();
        let mut buf = vec![0u8; 4096];
        let mut seen = None;
        for _ in 0..20 {
            // SAFETY: recv into buf.
            let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 && ours(&buf[..n as usize]) {
                seen = Some(buf[..n as usize].to_vec());
                break;
            }
            poll(sock.as_raw_fd());
        }
        assert_eq!(seen.as_deref(), Some(&plain[12..]));

        // Host to guest.
        let inbound = frame(2);
        // SAFETY: send from a live buffer.
        let n = unsafe { libc::send(sock.as_raw_fd(), inbound.as_ptr().cast(), inbound.len(), 0) };
        assert_eq!(n, inbound.len() as isize);
        let mut landed = None;
        for i in 0..20u64 {
            let addr = 0x40_0000 + i * 0x1000;
            rx.add(&[(addr, 2048, true)]);
            poll(tap_fd);
            dev.process_event(BACKEND_TOKEN).unwrap();
            for (k, &(_, len)) in rx.used().iter().enumerate() {
                let got = read(&mem, 0x40_0000 + k as u64 * 0x1000, len as usize);
                if ours(&got[12..]) {
                    landed = Some(got);
                }
            }
            if landed.is_some() {
                break;
            }
        }
        let got = landed.expect("the frame reached the guest");
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
        assert_eq!(&got[12..], &inbound[..]);
    });
    if let Err(p) = t.join() {
        std::panic::resume_unwind(p);
    }
}
