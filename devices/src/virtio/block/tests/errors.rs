//! Failure paths: malformed chains, the `rerror=`/`werror=` policies (stop, enospc,
//! report, ignore), many requests in flight, reset mid-I/O, EVENT_IDX suppression.

use super::*;

/// The request is finished with IOERR; nothing was read or written on the disk.
fn expect_ioerr(d: &mut Driver, st: u64) {
    d.run(0);
    assert_eq!(d.status(st), VIRTIO_BLK_S_IOERR);
    assert_eq!(d.used(0).last().unwrap().1, 1);
}

#[test]
fn malformed_chains_fail_with_ioerr() {
    let mut d = Driver::new(Setup::default());
    d.file.as_file().write_all_at(&[0x5au8; 4096], 0).unwrap();

    // Header shorter than 16 bytes.
    let h = d.header(VIRTIO_BLK_T_IN, 0);
    let st = d.alloc(1, 0xee);
    d.push(0, &[(h, 8, false), (st, 1, true)]);
    expect_ioerr(&mut d, st);

    // Header address outside guest memory.
    let st = d.alloc(1, 0xee);
    d.push(0, &[(MEM_SIZE + 0x1000, 16, false), (st, 1, true)]);
    expect_ioerr(&mut d, st);

    // Wrong direction: a write whose data is device-writable...
    let buf = d.alloc(512, 0x11);
    let st = d.request(0, VIRTIO_BLK_T_OUT, 0, &[(buf, 512, true)]);
    expect_ioerr(&mut d, st);
    // ...a read whose data is device-readable...
    let st = d.request(0, VIRTIO_BLK_T_IN, 0, &[(buf, 512, false)]);
    expect_ioerr(&mut d, st);
    assert_eq!(d.read(buf, 512), vec![0x11u8; 512], "nothing read into it");
    // ...and a readable descriptor after a writable one.
    let h = d.header(VIRTIO_BLK_T_OUT, 0);
    let st = d.alloc(1, 0xee);
    d.push(
        0,
        &[
            (h, 16, false),
            (buf, 512, true),
            (buf, 512, false),
            (st, 1, true),
        ],
    );
    expect_ioerr(&mut d, st);

    // No data where data is needed.
    let st = d.request(0, VIRTIO_BLK_T_IN, 0, &[]);
    expect_ioerr(&mut d, st);
    let st = d.request(0, VIRTIO_BLK_T_OUT, 0, &[(buf, 0, false)]);
    expect_ioerr(&mut d, st);
    // Data that is not whole sectors.
    let st = d.request(0, VIRTIO_BLK_T_OUT, 0, &[(buf, 500, false)]);
    expect_ioerr(&mut d, st);

    // Data outside guest memory, and straddling its end.
    let st = d.request(0, VIRTIO_BLK_T_IN, 0, &[(MEM_SIZE, 512, true)]);
    expect_ioerr(&mut d, st);
    let st = d.request(0, VIRTIO_BLK_T_OUT, 0, &[(MEM_SIZE - 256, 512, false)]);
    expect_ioerr(&mut d, st);

    // Sectors past the end, and a sector number that overflows.
    let st = d.request(0, VIRTIO_BLK_T_IN, CAPACITY - 1, &[(buf, 1024, true)]);
    expect_ioerr(&mut d, st);
    let st = d.request(0, VIRTIO_BLK_T_OUT, CAPACITY, &[(buf, 512, false)]);
    expect_ioerr(&mut d, st);
    let st = d.request(0, VIRTIO_BLK_T_IN, u64::MAX / 256, &[(buf, 512, true)]);
    expect_ioerr(&mut d, st);

    // GET_ID without room for the id.
    let st = d.request(0, VIRTIO_BLK_T_GET_ID, 0, &[]);
    expect_ioerr(&mut d, st);

    assert_eq!(
        d.file_bytes(0, 4096),
        vec![0x5au8; 4096],
        "the disk is untouched"
    );
    assert_eq!(d.dev.inflight_requests(), 0);
    let s = d.dev.stats().snapshot();
    assert_eq!(s.rd_operations + s.wr_operations, 0);
    assert!(
        s.invalid_rd_operations >= 4 && s.invalid_wr_operations >= 4,
        "{s:?}"
    );
}

/// The chain came back with length 0 and guest memory is as it was.
fn expect_dropped(d: &mut Driver, n_used: usize, sentinel: u64) {
    d.run(0);
    let used = d.used(0);
    assert_eq!(used.len(), n_used);
    assert_eq!(used[n_used - 1].1, 0, "dropped chains have used length 0");
    assert_eq!(d.read(sentinel, 17), vec![0xeeu8; 17]);
}

#[test]
fn malformed_chains_without_a_status_byte_are_dropped() {
    let mut d = Driver::new(Setup::default());
    let mut n = 0;
    // The sentinel stands where a status byte or header would be: never written.
    let sentinel = d.alloc(17, 0xee);
    let h = d.header(VIRTIO_BLK_T_FLUSH, 0);
    let fill = |d: &mut Driver| {
        d.mem
            .write_slice(&[0xeeu8; 17], GuestAddress(sentinel))
            .unwrap();
    };
    fill(&mut d);

    // The last descriptor is device-readable.
    d.push(0, &[(h, 16, false), (sentinel, 1, false)]);
    n += 1;
    expect_dropped(&mut d, n, sentinel);
    // The status descriptor is empty.
    d.push(0, &[(h, 16, false), (sentinel, 0, true)]);
    n += 1;
    expect_dropped(&mut d, n, sentinel);
    // The status byte is outside guest memory.
    d.push(0, &[(h, 16, false), (MEM_SIZE, 1, true)]);
    n += 1;
    expect_dropped(&mut d, n, sentinel);
    // A loop: 0 -> 1 -> 0 -> ...
    d.push_raw(
        0,
        &[(h, 16, F_NEXT, 1), (sentinel, 17, F_NEXT | F_WRITE, 0)],
    );
    n += 1;
    expect_dropped(&mut d, n, sentinel);
    // A next index past the table.
    d.push_raw(0, &[(h, 16, F_NEXT, QSIZE + 3)]);
    n += 1;
    // (push_raw wraps `next` modulo the size: write the bad index directly.)
    let head = d.next_desc[0].wrapping_sub(1) % QSIZE;
    d.queues[0]
        .desc_table()
        .store(
            head,
            RawDescriptor::from(SplitDescriptor::new(h, 16, F_NEXT, 999)),
        )
        .unwrap();
    expect_dropped(&mut d, n, sentinel);
    // An indirect table whose length is not whole descriptors.
    d.push_raw(0, &[(sentinel, 17, F_INDIRECT, 0)]);
    n += 1;
    expect_dropped(&mut d, n, sentinel);
    // An indirect table outside guest memory.
    d.push_raw(0, &[(MEM_SIZE + 4096, 32, F_INDIRECT, 0)]);
    n += 1;
    expect_dropped(&mut d, n, sentinel);
    fill(&mut d);
    assert_eq!(d.dev.inflight_requests(), 0);
    assert_eq!(d.dev.stats().snapshot().flush_operations, 0);
}

#[test]
fn werror_stop_holds_and_retries() {
    let faults = Arc::new(Mutex::new(Faults::default()));
    let mut d = Driver::new(Setup {
        faults: Some(faults.clone()),
        cfg: |c| c.werror = ErrorPolicy::Stop,
        ..Default::default()
    });
    faults.lock().unwrap().write = Some(libc::EIO);
    let buf = d.alloc(1024, 0x3c);
    let st = d.request(0, VIRTIO_BLK_T_OUT, 4, &[(buf, 1024, false)]);
    d.run(0);
    assert!(d.used(0).is_empty(), "a held request is not completed");
    assert_eq!(d.status(st), 0xee, "nor is its status written");
    assert_eq!(d.dev.held_requests(), 1);
    let events = d.errors.0.lock().unwrap().clone();
    assert_eq!(
        events,
        vec![BlockIoError {
            device: "disk0".into(),
            operation: IoOperation::Write,
            action: IoErrorAction::Stop,
            nospace: false,
            errno: libc::EIO,
            reason: "Input/output error".into(),
        }]
    );
    assert_eq!(d.dev.stats().snapshot().failed_wr_operations, 1);

    // `cont`: the host is fixed, the request goes again.
    faults.lock().unwrap().write = None;
    d.dev.retry_held().unwrap();
    d.settle();
    assert_eq!(d.dev.held_requests(), 0);
    assert_eq!(d.status(st), VIRTIO_BLK_S_OK);
    assert_eq!(d.used(0), vec![(0, 1)]);
    assert_eq!(d.file_bytes(4 * 512, 1024), vec![0x3cu8; 1024]);
    let s = d.dev.stats().snapshot();
    assert_eq!((s.wr_operations, s.failed_wr_operations), (1, 1));
}

#[test]
fn werror_enospc_stops_only_on_enospc() {
    let faults = Arc::new(Mutex::new(Faults::default()));
    let mut d = Driver::new(Setup {
        faults: Some(faults.clone()),
        ..Default::default()
    });
    assert_eq!(d.dev.config().werror, ErrorPolicy::Enospc, "QEMU's default");
    faults.lock().unwrap().write = Some(libc::ENOSPC);
    let buf = d.alloc(512, 1);
    let st1 = d.request(0, VIRTIO_BLK_T_OUT, 0, &[(buf, 512, false)]);
    d.run(0);
    assert_eq!(d.dev.held_requests(), 1);
    faults.lock().unwrap().write = Some(libc::EIO);
    let st2 = d.request(0, VIRTIO_BLK_T_FLUSH, 0, &[]);
    d.run(0);
    assert_eq!(d.status(st2), VIRTIO_BLK_S_IOERR, "EIO is reported");
    let ev = d.errors.0.lock().unwrap().clone();
    assert_eq!(ev.len(), 2);
    assert_eq!((ev[0].action, ev[0].nospace), (IoErrorAction::Stop, true));
    assert_eq!(ev[0].reason, "No space left on device");
    assert_eq!(
        (ev[1].action, ev[1].nospace),
        (IoErrorAction::Report, false)
    );
    assert_eq!(ev[1].operation, IoOperation::Write, "a flush is a write");

    // Still full on retry: held again, another event.
    faults.lock().unwrap().write = Some(libc::ENOSPC);
    d.dev.retry_held().unwrap();
    d.settle();
    assert_eq!(d.dev.held_requests(), 1);
    assert_eq!(d.errors.0.lock().unwrap().len(), 3);
    faults.lock().unwrap().write = None;
    d.dev.retry_held().unwrap();
    d.settle();
    assert_eq!(d.status(st1), VIRTIO_BLK_S_OK);
    assert_eq!(d.used(0).len(), 2);
}

#[test]
fn rerror_report_and_ignore() {
    for (policy, want) in [
        (ErrorPolicy::Report, VIRTIO_BLK_S_IOERR),
        (ErrorPolicy::Ignore, VIRTIO_BLK_S_OK),
    ] {
        let faults = Arc::new(Mutex::new(Faults {
            read: Some(libc::EIO),
            write: None,
        }));
        let mut d = Driver::new(Setup {
            faults: Some(faults),
            cfg: match policy {
                ErrorPolicy::Ignore => |c| c.rerror = ErrorPolicy::Ignore,
                _ => |_| {},
            },
            ..Default::default()
        });
        let buf = d.alloc(512, 0);
        let st = d.request(0, VIRTIO_BLK_T_IN, 0, &[(buf, 512, true)]);
        d.run(0);
        assert_eq!(d.status(st), want, "{policy:?}");
        let ev = d.errors.0.lock().unwrap().clone();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].operation, IoOperation::Read);
        assert_eq!(ev[0].action.as_str(), policy.as_str());
        assert_eq!(d.dev.stats().snapshot().failed_rd_operations, 1);
        assert_eq!(d.dev.held_requests(), 0);
    }
}

#[test]
fn many_requests_in_flight() {
    for aio in aio_modes() {
        let mut d = Driver::new(Setup {
            aio,
            ..Default::default()
        });
        let n = (QSIZE / 3) as usize; // three descriptors each
        let mut sts = Vec::new();
        for i in 0..n {
            let buf = d.alloc(4096, i as u8);
            sts.push(d.request(0, VIRTIO_BLK_T_OUT, i as u64 * 8, &[(buf, 4096, false)]));
        }
        d.kick(0);
        assert!(d.dev.inflight_requests() > 0);
        d.settle();
        assert_eq!(d.used(0).len(), n);
        for (i, st) in sts.iter().enumerate() {
            assert_eq!(d.status(*st), VIRTIO_BLK_S_OK);
            assert_eq!(d.file_bytes(i as u64 * 4096, 4096), vec![i as u8; 4096]);
        }
    }
}

#[test]
fn reset_with_requests_in_flight() {
    let mut d = Driver::new(Setup::default());
    let buf = d.alloc(4096, 0);
    d.request(0, VIRTIO_BLK_T_IN, 0, &[(buf, 4096, true)]);
    d.kick(0);
    d.dev.reset();
    assert_eq!(d.dev.inflight_requests(), 0);
    d.dev.process_event(COMPLETION_TOKEN).unwrap();
    d.dev.process_queue(0).unwrap();
    assert!(d.dev.retry_held().is_ok());
    assert!(d.used(0).is_empty(), "nothing is completed after a reset");
}

#[test]
fn event_idx_suppresses_interrupts() {
    let mut d = Driver::new(Setup::default());
    // used_event = 1: the driver wants an interrupt only once entry 1 is used.
    let used_event = GuestAddress(d.queues[0].avail_addr().0 + 4 + 2 * u64::from(QSIZE));
    d.mem.write_obj(1u16, used_event).unwrap();
    let id = d.alloc(20, 0);
    d.request(0, VIRTIO_BLK_T_GET_ID, 0, &[(id, 20, true)]);
    d.kick(0);
    assert_eq!(d.intr.count(0), 0, "entry 0 used: no interrupt yet");
    d.request(0, VIRTIO_BLK_T_GET_ID, 0, &[(id, 20, true)]);
    d.kick(0);
    assert_eq!(d.intr.count(0), 1);
}
