//! virtio-balloon unit tests: inflate/deflate, statistics polling, free page
//! reporting, config space and migration state.

use super::*;
use crate::timer::{ManualClock, ManualTimer};
use crate::virtio::net::testutil::{read, Irq, Vq, F_NEXT};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress};

use super::stats::NS_PER_SEC;

/// A second RAM region past a hole.
const HIGH: u64 = 0x200_0000;
const PAGE: u64 = BALLOON_PAGE_SIZE;
const T0: i64 = 1_700_000_000;
const SEC: u64 = NS_PER_SEC;

/// 16 MiB at 0, a hole, 1 MiB at 32 MiB.
fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x100_0000),
        (GuestAddress(HIGH), 0x10_0000),
    ])
    .unwrap()
}

#[derive(Default)]
struct Events(Mutex<Vec<u32>>);

impl BalloonEvents for Events {
    fn actual_changed(&self, actual_pages: u32) {
        self.0.lock().unwrap().push(actual_pages);
    }
}

impl Events {
    fn take(&self) -> Vec<u32> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

struct Rig {
    dev: VirtioBalloon,
    irq: Arc<Irq>,
    events: Arc<Events>,
    clock: Arc<ManualClock>,
    timer: Arc<ManualTimer>,
    wall: Arc<AtomicI64>,
}

impl Rig {
    fn new(config: BalloonConfig) -> Self {
        let events = Arc::new(Events::default());
        let clock = Arc::new(ManualClock::new(0));
        let timer = Arc::new(ManualTimer::default());
        let wall = Arc::new(AtomicI64::new(T0));
        let w = wall.clone();
        let dev = VirtioBalloon::new(
            config,
            events.clone(),
            clock.clone(),
            timer.clone(),
            Arc::new(move || w.load(Ordering::SeqCst)),
        );
        Rig {
            dev,
            irq: Arc::new(Irq::default()),
            events,
            clock,
            timer,
            wall,
        }
    }

    fn config_u32(&self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.read_config(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn irq_queues(&self) -> Vec<u16> {
        std::mem::take(&mut *self.irq.queues.lock().unwrap())
    }

    fn config_irqs(&self) -> usize {
        self.irq.config.load(Ordering::SeqCst)
    }
}

struct Driver<'a> {
    mem: &'a GuestMemoryMmap,
    vqs: Vec<Vq<'a>>,
    next_addr: u64,
}

impl<'a> Driver<'a> {
    fn new(mem: &'a GuestMemoryMmap, queues: usize) -> Self {
        Driver {
            mem,
            vqs: (0..queues)
                .map(|i| Vq::new(mem, i as u64 * 0x1_0000))
                .collect(),
            next_addr: 0x20_0000,
        }
    }

    fn activate(&self, rig: &mut Rig, features: u64) {
        rig.dev.ack_features(features);
        let queues = self.vqs.iter().map(|v| v.queue()).collect();
        rig.dev
            .activate(self.mem.clone(), rig.irq.clone(), queues)
            .unwrap();
    }

    /// Writes `data` to fresh guest memory; returns its address.
    fn put(&mut self, data: &[u8]) -> u64 {
        let a = self.next_addr;
        self.next_addr += (data.len() as u64).max(1).div_ceil(PAGE) * PAGE;
        self.mem.write_slice(data, GuestAddress(a)).unwrap();
        a
    }

    /// Offers `data` as one device-readable buffer on queue `q` and notifies.
    fn send(&mut self, rig: &mut Rig, q: usize, data: &[u8]) -> u16 {
        let a = self.put(data);
        let head = self.vqs[q].add(&[(a, data.len() as u32, false)]);
        rig.dev.process_queue(q).unwrap();
        head
    }

    fn send_pfns(&mut self, rig: &mut Rig, q: usize, pfns: &[u32]) -> u16 {
        let data: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        self.send(rig, q, &data)
    }
}

fn fill(mem: &GuestMemoryMmap, addr: u64, len: u64, byte: u8) {
    mem.write_slice(&vec![byte; len as usize], GuestAddress(addr))
        .unwrap();
}

fn is_filled(mem: &GuestMemoryMmap, addr: u64, len: u64, byte: u8) -> bool {
    read(mem, addr, len as usize).iter().all(|&b| b == byte)
}

fn stat_entries(entries: &[(u16, u64)]) -> Vec<u8> {
    let mut v = Vec::new();
    for &(tag, value) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&value.to_le_bytes());
    }
    v
}

const STATS: u64 = VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_STATS_VQ;
const BOTH: BalloonConfig = BalloonConfig {
    deflate_on_oom: true,
    free_page_reporting: true,
};

#[test]
fn features_queues_and_config_layout() {
    let mut rig = Rig::new(BalloonConfig::default());
    assert_eq!(rig.dev.device_type(), TYPE_BALLOON);
    assert_eq!(rig.dev.features(), STATS);
    assert_eq!(rig.dev.queue_max_sizes(), vec![QUEUE_SIZE; 3]);
    let full = Rig::new(BOTH);
    assert_eq!(
        full.dev.features(),
        STATS | VIRTIO_BALLOON_F_DEFLATE_ON_OOM | VIRTIO_BALLOON_F_REPORTING
    );
    assert_eq!(full.dev.queue_max_sizes(), vec![QUEUE_SIZE; 4]);

    // Not active yet: the target is stored, nobody is interrupted.
    rig.dev.set_target_pages(0x0102_0304);
    assert_eq!(rig.config_irqs(), 0);
    rig.dev.write_config(4, &7u32.to_le_bytes());
    rig.dev.write_config(12, &0xaabb_ccddu32.to_le_bytes());
    let mut c = [0xffu8; CONFIG_LEN];
    rig.dev.read_config(0, &mut c);
    assert_eq!(
        c,
        [4, 3, 2, 1, 7, 0, 0, 0, 0, 0, 0, 0, 0xdd, 0xcc, 0xbb, 0xaa]
    );
    assert_eq!(rig.events.take(), vec![7]);

    // num_pages and free_page_hint_cmd_id are the device's.
    rig.dev.write_config(0, &[9; 4]);
    rig.dev.write_config(8, &[9; 4]);
    assert_eq!(rig.config_u32(0), 0x0102_0304);
    assert_eq!(rig.config_u32(8), 0);
    // A write straddling num_pages and actual changes only actual's bytes.
    rig.dev.write_config(2, &[0xee, 0xee, 1, 1]);
    assert_eq!(rig.config_u32(0), 0x0102_0304);
    assert_eq!(rig.dev.actual_pages(), 0x0101);

    // Reads of any offset and length.
    let mut b = [0xffu8; 8];
    rig.dev.read_config(14, &mut b);
    assert_eq!(b, [0xbb, 0xaa, 0, 0, 0, 0, 0, 0]);
    rig.dev.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0; 8]);
    rig.dev.read_config(1, &mut []);
    rig.dev.write_config(u64::MAX, &[1, 2, 3]);
    rig.dev.write_config(15, &[1, 2, 3, 4, 5]);
    assert_eq!(rig.config_u32(12), 0x01bb_ccdd);
}

#[test]
fn target_and_actual_signal_only_what_changed() {
    let mem = memory();
    let mut rig = Rig::new(BalloonConfig::default());
    let drv = Driver::new(&mem, 3);
    drv.activate(&mut rig, STATS);

    rig.dev.set_target_pages(256);
    assert_eq!(rig.config_irqs(), 1);
    assert_eq!(rig.dev.target_pages(), 256);
    assert_eq!(rig.config_u32(0), 256);
    // QEMU signals every request, even one repeating the target.
    rig.dev.set_target_pages(256);
    assert_eq!(rig.config_irqs(), 2);

    rig.dev.write_config(4, &256u32.to_le_bytes());
    assert_eq!(rig.dev.actual_pages(), 256);
    assert_eq!(rig.events.take(), vec![256]);
    rig.dev.write_config(4, &256u32.to_le_bytes());
    assert!(rig.events.take().is_empty(), "same value, no event");
    rig.dev.write_config(4, &0u32.to_le_bytes());
    assert_eq!(rig.events.take(), vec![0]);
    // poison_val is not actual.
    rig.dev.write_config(12, &0xaau32.to_le_bytes());
    assert!(rig.events.take().is_empty());
    assert_eq!(rig.config_irqs(), 2, "driver writes do not interrupt");
}

#[test]
fn inflate_discards_guest_pages_and_skips_pfns_outside_memory() {
    let mem = memory();
    let mut rig = Rig::new(BalloonConfig::default());
    let mut drv = Driver::new(&mem, 3);
    drv.activate(&mut rig, STATS);
    fill(&mem, 0x80_0000, 5 * PAGE, 0xab);
    fill(&mem, 0xff_f000, PAGE, 0xab);
    fill(&mem, HIGH + PAGE, PAGE, 0xab);

    let high = (HIGH >> VIRTIO_BALLOON_PFN_SHIFT) as u32;
    let head = drv.send_pfns(
        &mut rig,
        0,
        &[
            0x800,
            0x801,
            0x803,
            0xfff,        // the last page of the first region
            0x1000,       // the hole after it
            high + 1,     // the second region
            high + 0x100, // just past it
            u32::MAX,
        ],
    );
    assert_eq!(drv.vqs[0].used(), vec![(head, 0)]);
    assert_eq!(rig.irq_queues(), vec![0]);
    assert_eq!(rig.dev.inflated_pages(), 5);
    for page in [0x80_0000, 0x80_1000, 0x80_3000, 0xff_f000, HIGH + PAGE] {
        assert!(is_filled(&mem, page, PAGE, 0), "{page:#x} discarded");
    }
    for page in [0x80_2000, 0x80_4000] {
        assert!(is_filled(&mem, page, PAGE, 0xab), "{page:#x} untouched");
    }

    // Many buffers at once, more page numbers than one read takes.
    let pfns: Vec<u32> = (0x900..0x900 + 600).collect();
    fill(&mem, 0x90_0000, 600 * PAGE, 0xcd);
    drv.send_pfns(&mut rig, 0, &pfns);
    assert_eq!(rig.dev.inflated_pages(), 605);
    assert!(is_filled(&mem, 0x90_0000, 600 * PAGE, 0));
    assert_eq!(drv.vqs[0].used().len(), 2);
}

#[test]
fn deflate_counts_pages_back_and_the_guest_uses_them_again() {
    let mem = memory();
    let mut rig = Rig::new(BalloonConfig::default());
    let mut drv = Driver::new(&mem, 3);
    drv.activate(&mut rig, STATS);
    fill(&mem, 0x80_0000, 3 * PAGE, 0xab);
    drv.send_pfns(&mut rig, 0, &[0x800, 0x801, 0x802]);
    assert_eq!(rig.dev.inflated_pages(), 3);

    let head = drv.send_pfns(&mut rig, 1, &[0x800, 0x801, 0x10_0000]);
    assert_eq!(drv.vqs[1].used(), vec![(head, 0)]);
    assert_eq!(rig.irq_queues(), vec![0, 1]);
    assert_eq!(
        rig.dev.inflated_pages(),
        1,
        "the page outside memory is not counted"
    );
    fill(&mem, 0x80_0000, PAGE, 0x11);
    assert!(is_filled(&mem, 0x80_0000, PAGE, 0x11));

    drv.send_pfns(&mut rig, 1, &[0x802, 0x803, 0x804]);
    assert_eq!(rig.dev.inflated_pages(), 0, "saturates");
}

#[test]
fn a_stats_buffer_queued_before_driver_ok_is_taken_at_activation() {
    let mem = memory();
    let mut rig = Rig::new(BalloonConfig::default());
    let mut drv = Driver::new(&mem, 3);
    let buf = stat_entries(&[(4, 4096), (5, 8192)]);
    let a = drv.put(&buf);
    drv.vqs[2].add(&[(a, buf.len() as u32, false)]);
    drv.activate(&mut rig, STATS);
    let s = rig.dev.stats();
    assert_eq!(s.last_update, T0);
    assert_eq!(s.get("stat-free-memory"), Some(4096));
    assert_eq!(s.get("stat-total-memory"), Some(8192));
    assert!(drv.vqs[2].used().is_empty(), "the buffer is held");
}

#[test]
fn stats_are_parsed_held_and_polled_by_the_timer() {
    let mem = memory();
    let mut rig = Rig::new(BalloonConfig::default());
    let mut drv = Driver::new(&mem, 3);
    drv.activate(&mut rig, STATS);
    assert_eq!(rig.dev.stats(), BalloonStats::default());
    assert_eq!(rig.dev.stats().get("stat-free-memory"), Some(-1));

    // Every tag, an unknown one, a value past i64 and a truncated tail.
    let mut entries: Vec<(u16, u64)> = (0..10).map(|t| (t, 100 + u64::from(t))).collect();
    entries.push((42, 7));
    entries.push((9, u64::MAX));
    let mut buf = stat_entries(&entries);
    buf.extend_from_slice(&[1, 0, 0xff, 0xff, 0xff]);
    let first = drv.send(&mut rig, 2, &buf);
    assert!(drv.vqs[2].used().is_empty(), "the buffer is held");
    assert!(rig.irq_queues().is_empty());
    let s = rig.dev.stats();
    assert_eq!(s.last_update, T0);
    assert_eq!(s.get("stat-swap-in"), Some(100));
    assert_eq!(s.get("stat-swap-out"), Some(101));
    assert_eq!(s.get("stat-htlb-pgalloc"), Some(108));
    assert_eq!(s.get("stat-htlb-pgfail"), Some(i64::MAX));
    assert_eq!(s.get("stat-bogus"), None);
    assert_eq!(
        s.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        STAT_NAMES.to_vec()
    );
    assert_eq!(rig.timer.deadline(), None, "no polling interval yet");

    rig.clock.set(SEC);
    rig.dev.set_stats_interval_secs(5);
    assert_eq!(rig.dev.stats_interval_secs(), 5);
    assert_eq!(rig.timer.deadline(), Some(6 * SEC));
    // Early: nothing happens, the deadline stays.
    rig.clock.set(5 * SEC);
    rig.dev.timer_fired().unwrap();
    assert!(drv.vqs[2].used().is_empty());
    assert_eq!(rig.timer.deadline(), Some(6 * SEC));
    // Due: the buffer goes back for a refill.
    rig.clock.set(6 * SEC);
    rig.dev.timer_fired().unwrap();
    assert_eq!(drv.vqs[2].used(), vec![(first, 0)]);
    assert_eq!(rig.irq_queues(), vec![2]);
    assert_eq!(rig.timer.deadline(), None);
    rig.dev.timer_fired().unwrap();
    assert_eq!(drv.vqs[2].used().len(), 1, "nothing held, nothing returned");

    // The driver's fresh values; what it does not report again keeps its value.
    rig.wall.store(T0 + 5, Ordering::SeqCst);
    let second = drv.send(&mut rig, 2, &stat_entries(&[(4, 4096), (6, 8192)]));
    let s = rig.dev.stats();
    assert_eq!(s.last_update, T0 + 5);
    assert_eq!(s.get("stat-free-memory"), Some(4096));
    assert_eq!(s.get("stat-available-memory"), Some(8192));
    assert_eq!(s.get("stat-swap-in"), Some(100));
    assert_eq!(rig.timer.deadline(), Some(11 * SEC), "re-armed");
    rig.clock.set(11 * SEC);
    rig.dev.timer_fired().unwrap();
    assert_eq!(drv.vqs[2].used(), vec![(first, 0), (second, 0)]);
}

#[test]
fn stats_interval_zero_disarms_and_polling_waits_for_a_buffer() {
    let mem = memory();
    let mut rig = Rig::new(BalloonConfig::default());
    let mut drv = Driver::new(&mem, 3);
    drv.activate(&mut rig, STATS);

    // An interval without a buffer to return arms nothing until one comes.
    rig.dev.set_stats_interval_secs(10);
    assert_eq!(rig.timer.deadline(), None);
    rig.dev.timer_fired().unwrap();
    rig.clock.set(SEC);
    let head = drv.send(&mut rig, 2, &stat_entries(&[(5, 1 << 30)]));
    assert_eq!(rig.timer.deadline(), Some(11 * SEC));

    rig.dev.set_stats_interval_secs(0);
    assert_eq!(rig.timer.deadline(), None);
    rig.clock.set(100 * SEC);
    rig.dev.timer_fired().unwrap();
    assert!(drv.vqs[2].used().is_empty(), "still held");

    // A new interval counts from now.
    rig.dev.set_stats_interval_secs(2);
    assert_eq!(rig.timer.deadline(), Some(102 * SEC));
    rig.clock.set(102 * SEC);
    rig.dev.timer_fired().unwrap();
    assert_eq!(drv.vqs[2].used(), vec![(head, 0)]);
}

#[test]
fn a_second_stats_buffer_returns_the_first() {
    let mem = memory();
    let mut rig = Rig::new(BalloonConfig::default());
    let mut drv = Driver::new(&mem, 3);
    drv.activate(&mut rig, STATS);
    let first = drv.send(&mut rig, 2, &stat_entries(&[(0, 1)]));
    drv.send(&mut rig, 2, &stat_entries(&[(0, 2)]));
    assert_eq!(drv.vqs[2].used(), vec![(first, 0)]);
    assert_eq!(rig.irq_queues(), vec![2]);
    assert_eq!(rig.dev.stats().get("stat-swap-in"), Some(2));
}

#[test]
fn free_page_reporting_discards_the_ranges_and_returns_the_buffer() {
    let mem = memory();
    let mut rig = Rig::new(BOTH);
    let drv = Driver::new(&mem, 4);
    drv.activate(&mut rig, STATS | VIRTIO_BALLOON_F_REPORTING);
    assert_eq!(rig.dev.queue_role(3), Some(QueueRole::Reporting));
    fill(&mem, 0x90_0000, 4 * PAGE, 0xab);
    fill(&mem, HIGH, 2 * PAGE, 0xab);

    // Linux offers the ranges device-writable; the unaligned edges are kept.
    let mut vq = drv.vqs.into_iter().nth(3).unwrap();
    let head = vq.add(&[(0x90_0800, 0x2800, true), (HIGH, 0x1000, false)]);
    rig.dev.process_queue(3).unwrap();
    assert_eq!(vq.used(), vec![(head, 0)]);
    assert_eq!(rig.irq_queues(), vec![3]);
    assert_eq!(rig.dev.reported_bytes(), 3 * PAGE);
    assert!(is_filled(&mem, 0x90_0000, PAGE, 0xab));
    assert!(is_filled(&mem, 0x90_1000, 2 * PAGE, 0));
    assert!(is_filled(&mem, 0x90_3000, PAGE, 0xab));
    assert!(is_filled(&mem, HIGH, PAGE, 0));
    assert!(is_filled(&mem, HIGH + PAGE, PAGE, 0xab));

    // A range across the hole: only the memory parts go.
    fill(&mem, 0xff_f000, PAGE, 0xab);
    fill(&mem, HIGH + PAGE, PAGE, 0xab);
    vq.add(&[(0xff_f000, (HIGH + 2 * PAGE - 0xff_f000) as u32, true)]);
    rig.dev.process_queue(3).unwrap();
    assert_eq!(rig.dev.reported_bytes(), 6 * PAGE);
    assert!(is_filled(&mem, 0xff_f000, PAGE, 0));
    assert!(is_filled(&mem, HIGH + PAGE, PAGE, 0));
    assert_eq!(rig.dev.inflated_pages(), 0, "reporting is not ballooning");
}

#[test]
fn queue_roles_follow_the_negotiated_features() {
    let mem = memory();
    let mut rig = Rig::new(BOTH);
    use QueueRole::*;
    let roles = |d: &VirtioBalloon| (0..5).map(|i| d.queue_role(i)).collect::<Vec<_>>();

    rig.dev.ack_features(STATS | VIRTIO_BALLOON_F_REPORTING);
    assert_eq!(
        roles(&rig.dev),
        vec![
            Some(Inflate),
            Some(Deflate),
            Some(Stats),
            Some(Reporting),
            None
        ]
    );
    rig.dev.ack_features(STATS);
    assert_eq!(
        roles(&rig.dev),
        vec![Some(Inflate), Some(Deflate), Some(Stats), None, None]
    );

    // A driver without STATS_VQ has its reporting queue at index 2.
    let mut drv = Driver::new(&mem, 3);
    drv.activate(&mut rig, VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_REPORTING);
    assert_eq!(
        roles(&rig.dev),
        vec![Some(Inflate), Some(Deflate), Some(Reporting), None, None]
    );
    fill(&mem, 0x90_0000, PAGE, 0xab);
    let head = drv.vqs[2].add(&[(0x90_0000, PAGE as u32, true)]);
    rig.dev.process_queue(2).unwrap();
    assert_eq!(drv.vqs[2].used(), vec![(head, 0)]);
    assert!(is_filled(&mem, 0x90_0000, PAGE, 0));
    assert_eq!(rig.dev.reported_bytes(), PAGE);
    // No statistics queue: polling never returns anything.
    rig.dev.set_stats_interval_secs(1);
    rig.clock.set(10 * SEC);
    rig.dev.timer_fired().unwrap();
    drv.send_pfns(&mut rig, 0, &[0x900]);
    assert_eq!(rig.dev.inflated_pages(), 1);
    rig.dev.process_queue(3).unwrap();
}

#[test]
fn activation_needs_the_queues_of_the_negotiated_features() {
    let mem = memory();
    let drv = Driver::new(&mem, 4);
    let q = |n: usize| drv.vqs[..n].iter().map(|v| v.queue()).collect::<Vec<_>>();
    let mut rig = Rig::new(BOTH);
    let irq = rig.irq.clone();
    for (features, want) in [
        (VIRTIO_F_VERSION_1, 2),
        (STATS, 3),
        (VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_REPORTING, 3),
        (STATS | VIRTIO_BALLOON_F_REPORTING, 4),
    ] {
        rig.dev.ack_features(features);
        let e = rig
            .dev
            .activate(mem.clone(), irq.clone(), q(want - 1))
            .unwrap_err();
        assert!(
            matches!(e, ActivateError::QueueCount { got, want: w } if got == want - 1 && w == want),
            "{e}"
        );
        rig.dev.activate(mem.clone(), irq.clone(), q(want)).unwrap();
        rig.dev.reset();
    }
}

#[test]
fn malformed_chains_are_returned_without_harm() {
    let mem = memory();
    let mut rig = Rig::new(BOTH);
    let mut drv = Driver::new(&mem, 4);
    // Nothing happens before activation.
    rig.dev.process_queue(0).unwrap();
    rig.dev.timer_fired().unwrap();
    drv.activate(&mut rig, STATS | VIRTIO_BALLOON_F_REPORTING);
    fill(&mem, 0x80_0000, 4 * PAGE, 0xab);
    let pfns = drv.put(&[0, 8, 0, 0, 1, 8, 0, 0]);

    // Inflate: outside memory, write-only, a length not a multiple of 4, a chain
    // whose next descriptor is past the table, one overflowing the address space.
    drv.vqs[0].add(&[(0x4000_0000, 8, false)]);
    drv.vqs[0].add(&[(pfns, 8, true)]);
    drv.vqs[0].add(&[(pfns, 6, false)]);
    let bad: Vec<RawDescriptor> = vec![SplitDescriptor::new(pfns + 4, 4, F_NEXT, 200).into()];
    drv.vqs[0].mock.add_desc_chains(&bad, 40).unwrap();
    drv.vqs[0].add(&[(u64::MAX - 3, 8, false)]);
    rig.dev.process_queue(0).unwrap();
    assert_eq!(drv.vqs[0].used().len(), 5);
    assert!(drv.vqs[0].used().iter().all(|u| u.1 == 0));
    assert_eq!(rig.dev.inflated_pages(), 2);
    assert!(is_filled(&mem, 0x80_0000, 2 * PAGE, 0));
    assert!(is_filled(&mem, 0x80_2000, 2 * PAGE, 0xab));

    // Deflate from outside memory: returned, nothing counted.
    drv.vqs[1].add(&[(0x4000_0000, 4, false)]);
    rig.dev.process_queue(1).unwrap();
    assert_eq!(drv.vqs[1].used().len(), 1);
    assert_eq!(rig.dev.inflated_pages(), 2);

    // Statistics outside memory: held, nothing recorded; polled back as usual.
    drv.vqs[2].add(&[(0x4000_0000, 20, false)]);
    rig.dev.process_queue(2).unwrap();
    assert_eq!(rig.dev.stats(), BalloonStats::default());
    rig.dev.set_stats_interval_secs(1);
    rig.clock.set(SEC);
    rig.dev.timer_fired().unwrap();
    assert_eq!(drv.vqs[2].used().len(), 1);

    // Reports outside memory, wrapping, empty: returned, nothing discarded.
    drv.vqs[3].add(&[
        (0x4000_0000, 0x1000, true),
        (u64::MAX - 0xfff, 0x2000, true),
    ]);
    drv.vqs[3].add(&[(0x80_2000, 0, true)]);
    drv.vqs[3].add(&[(0x80_2001, 0x1000, true)]);
    rig.dev.process_queue(3).unwrap();
    assert_eq!(drv.vqs[3].used().len(), 3);
    assert_eq!(rig.dev.reported_bytes(), 0);
    assert!(is_filled(&mem, 0x80_2000, 2 * PAGE, 0xab));

    // Unknown queues are harmless and the device still works.
    rig.dev.process_queue(4).unwrap();
    rig.dev.process_queue(usize::MAX).unwrap();
    drv.send_pfns(&mut rig, 0, &[0x802]);
    assert_eq!(rig.dev.inflated_pages(), 3);
    assert!(is_filled(&mem, 0x80_2000, PAGE, 0));
}

#[test]
fn reset_keeps_the_target_and_drops_the_driver_state() {
    let mem = memory();
    let mut rig = Rig::new(BalloonConfig::default());
    let mut drv = Driver::new(&mem, 3);
    drv.activate(&mut rig, STATS);
    rig.dev.set_target_pages(100);
    rig.dev.write_config(4, &100u32.to_le_bytes());
    rig.dev.write_config(12, &0x55u32.to_le_bytes());
    rig.dev.set_stats_interval_secs(3);
    drv.send(&mut rig, 2, &stat_entries(&[(4, 1)]));
    drv.send_pfns(&mut rig, 0, &[0x800]);
    assert_eq!(rig.timer.deadline(), Some(3 * SEC));

    rig.dev.reset();
    assert_eq!(rig.timer.deadline(), None);
    assert_eq!(rig.dev.target_pages(), 100);
    assert_eq!(rig.dev.actual_pages(), 100);
    assert_eq!(rig.config_u32(12), 0);
    assert_eq!(rig.dev.inflated_pages(), 0);
    assert_eq!(rig.dev.state().acked_features, 0);
    assert_eq!(rig.dev.stats().get("stat-free-memory"), Some(1));
    let irqs = rig.config_irqs();
    rig.dev.set_target_pages(50);
    assert_eq!(rig.config_irqs(), irqs, "no driver to tell");
    rig.clock.set(10 * SEC);
    rig.dev.timer_fired().unwrap();
    rig.dev.process_queue(2).unwrap();

    // The driver comes back with fresh rings and a new statistics buffer.
    let mut drv = Driver::new(&mem, 3);
    drv.activate(&mut rig, STATS);
    let head = drv.send(&mut rig, 2, &stat_entries(&[(4, 2)]));
    assert_eq!(rig.timer.deadline(), Some(13 * SEC));
    rig.clock.set(13 * SEC);
    rig.dev.timer_fired().unwrap();
    assert_eq!(drv.vqs[2].used(), vec![(head, 0)]);
}

#[test]
fn state_round_trips_and_stats_serialize_as_qemu_guest_stats() {
    let mut rig = Rig::new(BalloonConfig {
        deflate_on_oom: true,
        free_page_reporting: false,
    });
    rig.dev
        .ack_features(STATS | VIRTIO_BALLOON_F_DEFLATE_ON_OOM);
    rig.dev.set_target_pages(1234);
    rig.dev.write_config(4, &1000u32.to_le_bytes());
    rig.dev.write_config(12, &7u32.to_le_bytes());
    rig.dev.set_stats_interval_secs(2);
    let s = rig.dev.state();
    assert_eq!(
        s,
        BalloonState {
            acked_features: STATS | VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
            num_pages: 1234,
            actual: 1000,
            poison_val: 7,
            stats_interval_secs: 2,
        }
    );
    let json = serde_json::to_string(&s).unwrap();
    let back: BalloonState = serde_json::from_str(&json).unwrap();
    let mut other = Rig::new(BalloonConfig {
        deflate_on_oom: true,
        free_page_reporting: false,
    });
    other.dev.restore(&back).unwrap();
    assert_eq!(other.dev.state(), s);
    assert_eq!(other.config_u32(4), 1000);
    assert!(other.events.take().is_empty());
    let mut plain = Rig::new(BalloonConfig::default());
    assert!(matches!(
        plain.dev.restore(&s),
        Err(BalloonError::InvalidState(_))
    ));

    let mut stats = BalloonStats {
        last_update: T0,
        ..BalloonStats::default()
    };
    stats.values[4] = 4096;
    let v = serde_json::to_value(stats).unwrap();
    assert_eq!(
        serde_json::to_string(&v).unwrap(),
        format!(
            "{{\"last-update\":{T0},\"stats\":{{\"stat-swap-in\":-1,\"stat-swap-out\":-1,\
                 \"stat-major-faults\":-1,\"stat-minor-faults\":-1,\"stat-free-memory\":4096,\
                 \"stat-total-memory\":-1,\"stat-available-memory\":-1,\"stat-disk-caches\":-1,\
                 \"stat-htlb-pgalloc\":-1,\"stat-htlb-pgfail\":-1}}}}"
        )
    );
}
