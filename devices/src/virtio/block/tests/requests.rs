//! Request handling: features and config space, reads and writes, framing, indirect
//! chains, flush and GET_ID, discard and write-zeroes, read-only disks, multiqueue.

use super::*;

#[test]
fn features_and_config_space() {
    let d = Driver::new(Setup::default());
    let f = d.dev.features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
        VIRTIO_F_RING_EVENT_IDX,
    ] {
        assert_ne!(f & bit, 0, "{bit:#x}");
    }
    assert_eq!(f & (VIRTIO_BLK_F_RO | VIRTIO_BLK_F_MQ), 0);
    assert_eq!(d.dev.device_type(), TYPE_BLOCK);
    assert_eq!(d.dev.queue_max_sizes(), vec![QSIZE]);

    let mut c = [0u8; CONFIG_LEN];
    d.dev.read_config(0, &mut c);
    let u32_at = |o: usize| u32::from_le_bytes(c[o..o + 4].try_into().unwrap());
    assert_eq!(u64::from_le_bytes(c[..8].try_into().unwrap()), CAPACITY);
    assert_eq!(u32_at(12), u32::from(QSIZE) - 2, "seg_max");
    assert_eq!(u32_at(20), 512, "blk_size");
    assert_eq!(u16::from_le_bytes([c[34], c[35]]), 1, "num_queues");
    assert_eq!(u32_at(36), MAX_DISCARD_SECTORS);
    assert_eq!(u32_at(40), MAX_DISCARD_SEG);
    assert_eq!(u32_at(44), 1, "discard_sector_alignment");
    assert_eq!(u32_at(48), MAX_WRITE_ZEROES_SECTORS);
    assert_eq!(u32_at(52), MAX_WRITE_ZEROES_SEG);
    assert_eq!(c[56], 1, "write_zeroes_may_unmap with discard=unmap");

    // Partial and out-of-range reads.
    let mut b = [0xffu8; 4];
    d.dev.read_config(20, &mut b);
    assert_eq!(u32::from_le_bytes(b), 512);
    let mut b = [0xffu8; 8];
    d.dev.read_config(56, &mut b);
    assert_eq!(b, [1, 0, 0, 0, 0, 0, 0, 0]);
    d.dev.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0; 8]);
}

#[test]
fn config_validation() {
    let f = TempFile::new().unwrap();
    let img = || RawImage::open(&DiskConfig::new(f.as_path())).unwrap();
    let mut cfg = VirtioBlockConfig::new("d");
    cfg.num_queues = 0;
    assert!(VirtioBlock::new(img(), cfg.clone()).is_err());
    cfg.num_queues = 2;
    cfg.queue_size = 100;
    let e = VirtioBlock::new(img(), cfg).unwrap_err().to_string();
    assert!(e.contains("queue-size=100"), "{e}");
    assert_eq!("stop".parse::<ErrorPolicy>().unwrap(), ErrorPolicy::Stop);
    assert!("halt".parse::<ErrorPolicy>().is_err());
    assert_eq!(
        ErrorPolicy::Enospc.action_for(Some(libc::ENOSPC)),
        IoErrorAction::Stop
    );
    assert_eq!(
        ErrorPolicy::Enospc.action_for(Some(libc::EIO)),
        IoErrorAction::Report
    );
}

#[test]
fn write_then_read_back() {
    for aio in aio_modes() {
        let mut d = Driver::new(Setup {
            aio,
            ..Default::default()
        });
        let data = pattern(3072, 5);
        let a = d.alloc(1024, 0);
        let b = d.alloc(2048, 0);
        d.mem.write_slice(&data[..1024], GuestAddress(a)).unwrap();
        d.mem.write_slice(&data[1024..], GuestAddress(b)).unwrap();
        let st = d.request(
            0,
            VIRTIO_BLK_T_OUT,
            10,
            &[(a, 1024, false), (b, 2048, false)],
        );
        d.run(0);
        assert_eq!(d.status(st), VIRTIO_BLK_S_OK, "{aio:?}");
        assert_eq!(d.used(0), vec![(0, 1)]);
        assert_eq!(d.file_bytes(10 * 512, 3072), data);
        assert!(d.intr.count(0) >= 1);

        // Read it back into three pieces.
        let r: Vec<u64> = (0..3).map(|_| d.alloc(1024, 0xcc)).collect();
        let st = d.request(
            0,
            VIRTIO_BLK_T_IN,
            10,
            &[(r[0], 1024, true), (r[1], 1024, true), (r[2], 1024, true)],
        );
        d.run(0);
        assert_eq!(d.status(st), VIRTIO_BLK_S_OK);
        assert_eq!(
            d.used(0)[1].1,
            3072 + 1,
            "used length counts data and status"
        );
        let got: Vec<u8> = r.iter().flat_map(|&a| d.read(a, 1024)).collect();
        assert_eq!(got, data);

        let s = d.dev.stats().snapshot();
        assert_eq!((s.wr_operations, s.wr_bytes), (1, 3072));
        assert_eq!((s.rd_operations, s.rd_bytes), (1, 3072));
        assert_eq!(s.wr_highest_offset, 10 * 512 + 3072);
    }
}

#[test]
fn framing_is_not_assumed() {
    let mut d = Driver::new(Setup::default());
    // Header and data in one readable descriptor.
    let buf = d.alloc(16 + 512, 0);
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
    h[8..].copy_from_slice(&3u64.to_le_bytes());
    d.mem.write_slice(&h, GuestAddress(buf)).unwrap();
    d.mem
        .write_slice(&[0x42u8; 512], GuestAddress(buf + 16))
        .unwrap();
    let st = d.alloc(1, 0xee);
    d.push(0, &[(buf, 16 + 512, false), (st, 1, true)]);
    d.run(0);
    assert_eq!(d.status(st), VIRTIO_BLK_S_OK);
    assert_eq!(d.file_bytes(3 * 512, 512), vec![0x42u8; 512]);

    // Header split over two descriptors; data and status in one writable one.
    let h1 = d.alloc(16, 0);
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    h[8..].copy_from_slice(&3u64.to_le_bytes());
    d.mem.write_slice(&h, GuestAddress(h1)).unwrap();
    let out = d.alloc(513, 0);
    d.push(0, &[(h1, 6, false), (h1 + 6, 10, false), (out, 513, true)]);
    d.run(0);
    assert_eq!(d.status(out + 512), VIRTIO_BLK_S_OK);
    assert_eq!(d.read(out, 512), vec![0x42u8; 512]);
    assert_eq!(d.used(0)[1].1, 513);
}

#[test]
fn indirect_descriptors() {
    let mut d = Driver::new(Setup::default());
    let h = d.header(VIRTIO_BLK_T_OUT, 0);
    let data = d.alloc(1024, 0x77);
    let st = d.alloc(1, 0xee);
    let table = d.alloc(3 * 16, 0);
    let descs = [
        SplitDescriptor::new(h, 16, F_NEXT, 1),
        SplitDescriptor::new(data, 1024, F_NEXT, 2),
        SplitDescriptor::new(st, 1, F_WRITE, 0),
    ];
    for (i, desc) in descs.iter().enumerate() {
        d.mem
            .write_obj(
                RawDescriptor::from(*desc),
                GuestAddress(table + 16 * i as u64),
            )
            .unwrap();
    }
    d.push_raw(0, &[(table, 48, F_INDIRECT, 0)]);
    d.run(0);
    assert_eq!(d.status(st), VIRTIO_BLK_S_OK);
    assert_eq!(d.file_bytes(0, 1024), vec![0x77u8; 1024]);
}

#[test]
fn flush_and_get_id() {
    let mut d = Driver::new(Setup::default());
    let st = d.request(0, VIRTIO_BLK_T_FLUSH, 0, &[]);
    d.run(0);
    assert_eq!(d.status(st), VIRTIO_BLK_S_OK);
    assert_eq!(d.dev.stats().snapshot().flush_operations, 1);

    let id = d.alloc(VIRTIO_BLK_ID_BYTES as u64, 0xff);
    let st = d.request(0, VIRTIO_BLK_T_GET_ID, 0, &[(id, 20, true)]);
    d.kick(0);
    assert_eq!(d.status(st), VIRTIO_BLK_S_OK, "GET_ID completes at once");
    assert_eq!(
        d.read(id, 20),
        b"kestrel-serial-01234".to_vec(),
        "truncated to 20"
    );
    assert_eq!(d.used(0)[1].1, 21);

    // A shorter buffer gets what fits.
    let id = d.alloc(8, 0xff);
    let st = d.request(0, VIRTIO_BLK_T_GET_ID, 0, &[(id, 8, true)]);
    d.kick(0);
    assert_eq!(d.status(st), VIRTIO_BLK_S_OK);
    assert_eq!(d.read(id, 8), b"kestrel-".to_vec());
    assert_eq!(d.used(0)[2].1, 9);
}

#[test]
fn unsupported_requests() {
    let mut d = Driver::new(Setup::default());
    let buf = d.alloc(512, 0);
    let st = d.request(0, 99, 0, &[(buf, 512, true)]);
    d.kick(0);
    assert_eq!(d.status(st), VIRTIO_BLK_S_UNSUPP);

    // Discard and write-zeroes need their features.
    let mut d = Driver::new(Setup::default());
    d.dev.reset();
    let qs = vec![d.queues[0].create_queue::<Queue>().unwrap()];
    d.dev.ack_features(VIRTIO_F_VERSION_1);
    d.dev.activate(d.mem.clone(), d.intr.clone(), qs).unwrap();
    let seg = d.alloc(16, 0);
    d.mem.write_obj(1u32, GuestAddress(seg + 8)).unwrap();
    let st = d.request(0, VIRTIO_BLK_T_DISCARD, 0, &[(seg, 16, false)]);
    d.kick(0);
    assert_eq!(d.status(st), VIRTIO_BLK_S_UNSUPP);
}

fn segment(d: &mut Driver, sector: u64, num: u32, flags: u32) -> u64 {
    let a = d.alloc(16, 0);
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&num.to_le_bytes());
    s[12..].copy_from_slice(&flags.to_le_bytes());
    d.mem.write_slice(&s, GuestAddress(a)).unwrap();
    a
}

#[test]
fn discard_and_write_zeroes() {
    for aio in aio_modes() {
        let mut d = Driver::new(Setup {
            aio,
            ..Default::default()
        });
        d.file.as_file().write_all_at(&[0xabu8; 65536], 0).unwrap();
        // Two discard segments (and an empty one) in one request.
        let segs = d.alloc(48, 0);
        for (i, (sector, num)) in [(0u64, 8u32), (16, 8), (40, 0)].into_iter().enumerate() {
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&sector.to_le_bytes());
            raw[8..12].copy_from_slice(&num.to_le_bytes());
            let at = GuestAddress(segs + 16 * i as u64);
            d.mem.write_slice(&raw, at).unwrap();
        }
        let st = d.request(0, VIRTIO_BLK_T_DISCARD, 0, &[(segs, 48, false)]);
        d.run(0);
        assert_eq!(d.status(st), VIRTIO_BLK_S_OK, "{aio:?}");
        assert!(d.file_bytes(0, 4096).iter().all(|&b| b == 0));
        assert!(d.file_bytes(4096, 4096).iter().all(|&b| b == 0xab));
        assert!(d.file_bytes(8192, 4096).iter().all(|&b| b == 0));

        let s = segment(&mut d, 32, 16, 0);
        let st = d.request(0, VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(s, 16, false)]);
        d.run(0);
        assert_eq!(d.status(st), VIRTIO_BLK_S_OK);
        assert!(d.file_bytes(32 * 512, 8192).iter().all(|&b| b == 0));
        let s = segment(&mut d, 64, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
        let st = d.request(0, VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(s, 16, false)]);
        d.run(0);
        assert_eq!(d.status(st), VIRTIO_BLK_S_OK);
        assert!(d.file_bytes(64 * 512, 4096).iter().all(|&b| b == 0));
        assert!(d.file_bytes(72 * 512, 512).iter().all(|&b| b == 0xab));

        let stats = d.dev.stats().snapshot();
        assert_eq!((stats.unmap_operations, stats.unmap_bytes), (2, 8192));
        assert_eq!((stats.wr_operations, stats.wr_bytes), (2, 8192 + 4096));
    }
}

#[test]
fn discard_and_write_zeroes_segment_checks() {
    let mut d = Driver::new(Setup::default());
    // Discard has no flags.
    let s = segment(&mut d, 0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    let st = d.request(0, VIRTIO_BLK_T_DISCARD, 0, &[(s, 16, false)]);
    d.kick(0);
    assert_eq!(d.status(st), VIRTIO_BLK_S_UNSUPP);
    // Unknown write-zeroes flags.
    let s = segment(&mut d, 0, 8, 2);
    let st = d.request(0, VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(s, 16, false)]);
    d.kick(0);
    assert_eq!(d.status(st), VIRTIO_BLK_S_UNSUPP);
    // Past the end.
    let s = segment(&mut d, CAPACITY - 4, 8, 0);
    let st = d.request(0, VIRTIO_BLK_T_DISCARD, 0, &[(s, 16, false)]);
    d.kick(0);
    assert_eq!(d.status(st), VIRTIO_BLK_S_IOERR);
    // Too many sectors in one segment.
    let s = segment(&mut d, 0, MAX_DISCARD_SECTORS + 1, 0);
    let st = d.request(0, VIRTIO_BLK_T_DISCARD, 0, &[(s, 16, false)]);
    d.kick(0);
    assert_eq!(d.status(st), VIRTIO_BLK_S_IOERR);
    // Segment data that is not whole segments.
    let s = segment(&mut d, 0, 8, 0);
    let st = d.request(0, VIRTIO_BLK_T_DISCARD, 0, &[(s, 12, false)]);
    d.kick(0);
    assert_eq!(d.status(st), VIRTIO_BLK_S_IOERR);
    // More segments than advertised.
    let many = d.alloc(16 * (u64::from(MAX_DISCARD_SEG) + 1), 0);
    let st = d.request(
        0,
        VIRTIO_BLK_T_DISCARD,
        0,
        &[(many, 16 * (MAX_DISCARD_SEG + 1), false)],
    );
    d.kick(0);
    assert_eq!(d.status(st), VIRTIO_BLK_S_UNSUPP);
    assert_eq!(d.used(0).len(), 6);
    assert_eq!(d.dev.inflight_requests(), 0);
    let s = d.dev.stats().snapshot();
    assert_eq!(s.invalid_unmap_operations, 3);
    assert_eq!(s.unmap_operations, 0);
}

#[test]
fn read_only_refuses_writes() {
    let mut d = Driver::new(Setup {
        read_only: true,
        ..Default::default()
    });
    let f = d.dev.features();
    assert_ne!(f & VIRTIO_BLK_F_RO, 0);
    assert_eq!(f & (VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES), 0);
    d.file.as_file().write_all_at(&[9u8; 512], 0).unwrap();

    let buf = d.alloc(512, 1);
    let st_w = d.request(0, VIRTIO_BLK_T_OUT, 0, &[(buf, 512, false)]);
    let s = segment(&mut d, 0, 1, 0);
    let st_d = d.request(0, VIRTIO_BLK_T_DISCARD, 0, &[(s, 16, false)]);
    let st_z = d.request(0, VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(s, 16, false)]);
    let rd = d.alloc(512, 0);
    let st_r = d.request(0, VIRTIO_BLK_T_IN, 0, &[(rd, 512, true)]);
    d.run(0);
    assert_eq!(d.status(st_w), VIRTIO_BLK_S_IOERR);
    assert_eq!(d.status(st_d), VIRTIO_BLK_S_IOERR);
    assert_eq!(d.status(st_z), VIRTIO_BLK_S_IOERR);
    assert_eq!(d.status(st_r), VIRTIO_BLK_S_OK);
    assert_eq!(d.read(rd, 512), vec![9u8; 512]);
    assert_eq!(d.file_bytes(0, 512), vec![9u8; 512], "nothing written");
    let s = d.dev.stats().snapshot();
    assert_eq!(s.invalid_wr_operations, 2);
    assert_eq!(s.invalid_unmap_operations, 1);
}

#[test]
fn multiqueue() {
    let mut d = Driver::new(Setup {
        num_queues: 4,
        active_queues: 4,
        ..Default::default()
    });
    assert_ne!(d.dev.features() & VIRTIO_BLK_F_MQ, 0);
    let mut c = [0u8; 2];
    d.dev.read_config(34, &mut c);
    assert_eq!(u16::from_le_bytes(c), 4);
    assert_eq!(d.dev.queue_max_sizes().len(), 4);

    let mut statuses = Vec::new();
    for q in 0..4 {
        let buf = d.alloc(512, q as u8 + 1);
        statuses.push(d.request(q, VIRTIO_BLK_T_OUT, q as u64, &[(buf, 512, false)]));
    }
    // Queues 2 and 3 first, together in flight, then 0 and 1.
    d.kick(2);
    d.kick(3);
    d.settle();
    assert_eq!(d.used(2).len(), 1);
    assert_eq!(d.used(3).len(), 1);
    assert!(d.used(0).is_empty() && d.used(1).is_empty());
    assert_eq!(d.intr.count(0), 0);
    d.kick(0);
    d.kick(1);
    d.settle();
    for (q, &st) in statuses.iter().enumerate() {
        assert_eq!(d.status(st), VIRTIO_BLK_S_OK);
        assert_eq!(d.used(q).len(), 1, "queue {q}");
        assert!(d.intr.count(q as u16) >= 1, "queue {q} interrupted");
        assert_eq!(d.file_bytes(q as u64 * 512, 512), vec![q as u8 + 1; 512]);
    }
    assert!(d.dev.process_queue(4).is_err(), "no fifth queue");

    // A driver may use fewer queues than offered, never more.
    d.dev.reset();
    let q = d.queues[0].create_queue::<Queue>().unwrap();
    d.dev
        .activate(d.mem.clone(), d.intr.clone(), vec![q])
        .unwrap();
    d.dev.reset();
    let qs = (0..5).map(|_| Queue::new(QSIZE).unwrap()).collect();
    assert!(d.dev.activate(d.mem.clone(), d.intr.clone(), qs).is_err());
}
