//! Migration through the transport: a driver starts a disk and reads from it, the
//! state goes through JSON into a second device built the same way, which then serves
//! the next read where the first one stopped; corrupted states are refused.

use super::*;
use crate::virtio::net::testutil::{Vq, VQ_SIZE};
use crate::virtio::pci::testutil::PciDriver;
use crate::virtio::pci::VirtioPciDevice;

fn disk_device(file: &TempFile) -> Box<VirtioBlock> {
    // Source and destination share the image here, as on shared storage.
    let mut cfg = DiskConfig::new(file.as_path());
    cfg.share_rw = true;
    let disk = RawImage::open(&cfg).unwrap();
    Box::new(VirtioBlock::new(disk, VirtioBlockConfig::new("disk0")).unwrap())
}

/// Completions of `dev`'s requests until queue 0's used ring holds `n` entries.
fn settle(dev: &mut VirtioPciDevice, vq: &Vq, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while vq.used().len() < n {
        assert!(Instant::now() < deadline, "requests never completed");
        let fd = dev.event_fds()[0].0;
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, 100) };
        dev.process_event(COMPLETION_TOKEN);
    }
}

/// A one-sector read of `sector` into a fresh buffer: (data, status) addresses.
fn read_request(mem: &GuestMemoryMmap, vq: &mut Vq, sector: u64, at: u64) -> (u64, u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(at)).unwrap();
    let (data, status) = (at + 0x100, at + 0x400);
    mem.write_slice(&[0xee], GuestAddress(status)).unwrap();
    vq.add(&[(at, 16, false), (data, 512, true), (status, 1, true)]);
    (data, status)
}

#[test]
fn state_round_trips_through_the_transport() {
    let file = TempFile::new().unwrap();
    file.as_file().write_all_at(&pattern(4096, 7), 0).unwrap();
    file.as_file().set_len(DISK_SIZE).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let mut vq = Vq::new(&mem, 0);

    let mut src = PciDriver::new(disk_device(&file), &mem);
    // Without EVENT_IDX every used buffer interrupts (the mock driver never moves
    // used_event).
    let features = src.dev.device().features() & !VIRTIO_F_RING_EVENT_IDX;
    src.start(features, VQ_SIZE, &[&vq.mock]);
    let (data, status) = read_request(&mem, &mut vq, 0, DATA_BASE);
    src.kick(0);
    settle(&mut src.dev, &vq, 1);
    assert_eq!(read_vec(&mem, data, 512), pattern(4096, 7)[..512]);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(status)).unwrap(),
        VIRTIO_BLK_S_OK
    );

    let state = src.save();
    assert!(state.activated);
    assert_eq!(state.queues[0].next_avail, 1);
    assert_eq!(state.queues[0].next_used, 1);
    assert_eq!(
        state.device,
        VirtioDeviceState::Block(BlockState {
            acked_features: features
        })
    );

    // The destination: same command line, same (already copied) guest memory.
    let mut dst = PciDriver::new(disk_device(&file), &mem);
    dst.dev.restore(&state).unwrap();
    assert!(dst.dev.is_activated());
    assert_eq!(
        dst.registers(),
        src.registers(),
        "registers read back the same"
    );
    assert_eq!(dst.dev.state().unwrap(), state);

    // The next request is the destination's, and lands after the first.
    let (data, status) = read_request(&mem, &mut vq, 1, DATA_BASE + 0x1000);
    dst.msi.take();
    dst.kick(0);
    settle(&mut dst.dev, &vq, 2);
    assert_eq!(read_vec(&mem, data, 512), pattern(4096, 7)[512..1024]);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(status)).unwrap(),
        VIRTIO_BLK_S_OK
    );
    assert_eq!(vq.used(), [(0, 513), (3, 513)]);
    assert!(
        dst.msi
            .take()
            .contains(&crate::pci::msix::tests::Event::Trigger(1)),
        "queue 0's vector fires"
    );

    // Corrupted states are refused, each with its reason.
    let refuse = |s: &crate::virtio::pci::VirtioPciState, why: &str| {
        PciDriver::new(disk_device(&file), &mem).assert_refuses(s, why)
    };
    let mut bad = state.clone();
    bad.driver_features |= 1 << 40;
    refuse(&bad, "not offered");
    let mut bad = state.clone();
    bad.device = VirtioDeviceState::Block(BlockState {
        acked_features: features | 1 << 40,
    });
    refuse(&bad, "acked features");
    let mut bad = state.clone();
    bad.queues[0].size = 48;
    refuse(&bad, "power of two");
    let mut bad = state.clone();
    bad.queues[0].size = 2 * QSIZE * 64;
    refuse(&bad, "power of two");
    let mut bad = state.clone();
    bad.queues.push(bad.queues[0]);
    refuse(&bad, "2 queues");
    let mut bad = state.clone();
    bad.queues[0].driver = MEM_SIZE + 0x1000;
    refuse(&bad, "guest memory");
    let mut bad = state.clone();
    bad.pci_config.bytes[2] ^= 1;
    refuse(&bad, "read-only byte 0x2");
}

fn read_vec(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}
