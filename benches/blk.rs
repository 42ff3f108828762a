//! virtio-blk benchmark: 4 KiB random reads, then writes, at queue depth 32 on a 1 GiB
//! raw file with O_DIRECT and io_uring, through three stacks in alternation in one run:
//!
//! - Kestrel's device model: the real `VirtioBlock` over a real `RawImage` (aio=io_uring,
//!   cache=none), driven from the host side as the I/O thread drives it: this file plays
//!   the guest driver on a split virtqueue in `GuestMemoryMmap`, keeps 32 requests in
//!   flight, kicks `process_queue` when the device asks for a kick (EVENT_IDX), sleeps on
//!   the engine's completion fd, calls `process_event`, reaps the used ring and refills.
//!   The interrupt is a real eventfd write, as an irqfd would be. No KVM, no guest;
//! - fio with its io_uring engine: the limit of the host;
//! - `qemu-img bench -i io_uring`: QEMU's block layer.
//!
//! A fourth run, a diagnostic, drives Kestrel with a kick after every request, so the
//! device hands the kernel one request per io_uring_enter instead of a whole batch.
//! Each run also reports the CPU time its process spent per request (getrusage).
//!
//! Run: `make bench` or `cargo bench -p vmm --bench blk`; `KESTREL_BENCH_ROUNDS` sets the
//! rounds (default 3), `KESTREL_BENCH_SECS` the whole seconds of each Kestrel and fio run
//! (default 8), `KESTREL_BENCH_ONLY=kestrel,fio,...` runs only those stacks (to profile
//! one). Per-round lines go to stderr, the tables of medians to stdout. Needs fio and
//! qemu-img; the scratch file lives in the temporary directory (`TMPDIR`, else /tmp).
#![allow(clippy::unwrap_used)] // a benchmark that cannot run has nothing to report

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use block::{AioMode, AlignedBuf, CacheMode, DiskConfig, RawImage};
use devices::virtio::block::{
    VirtioBlock, VirtioBlockConfig, COMPLETION_TOKEN, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use devices::virtio::{VirtioDevice, VirtioInterrupt};
use devices::GuestMemoryMmap;
use virtio_queue::desc::split::{Descriptor as SplitDescriptor, VirtqUsedElem};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::{MockSplitQueue, UsedRing};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const FILE_SIZE: u64 = 1 << 30;
const BS: u32 = 4096;
const DEPTH: usize = 32;
const BLOCKS: u64 = FILE_SIZE / BS as u64;

/// qemu-img bench only walks the image with a fixed step. An odd number of 4 KiB blocks
/// (a prime, 409 MiB) is coprime with the 2^18 blocks of the file, so the walk visits
/// every block once per 2^18 requests and no two consecutive requests are near each
/// other: the closest it gets to random offsets.
const QEMU_STEP: u64 = 104_729 * BS as u64;
/// Seconds a qemu-img run should last (it takes a request count, not a time).
const QEMU_SECS: f64 = 5.0;

// Guest memory layout of the simulated driver.
const MEM_SIZE: usize = 4 << 20;
/// Queue size as Kestrel offers it to Linux guests.
const QSIZE: u16 = devices::virtio::block::DEFAULT_QUEUE_SIZE;
const DESC_TABLE: u64 = 0;
/// virtio-queue's mock places the used ring `QSIZE` bytes after the start of the
/// available ring's entries, which take `2 * QSIZE` bytes: past half the ring, available
/// entries and used ring overlap. A benchmark goes round the ring thousands of times, so
/// the used ring lives here instead, clear of both.
const USED_RING: u64 = 0x2000;
const HEADERS: u64 = 0x4000;
const STATUS: u64 = 0x5000;
/// Page-aligned data buffers, as a guest's are: O_DIRECT uses them without bouncing.
const DATA: u64 = 0x10_0000;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rw {
    Read,
    Write,
}

impl Rw {
    fn fio(self) -> &'static str {
        match self {
            Rw::Read => "randread",
            Rw::Write => "randwrite",
        }
    }
}

/// The 1 GiB scratch file, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    /// Preallocates the file and writes every block once: ext4 keeps fallocated space as
    /// unwritten extents, which O_DIRECT reads as zeroes without touching the disk and
    /// which a first write must convert (a journal update). Written through O_DIRECT so
    /// the page cache holds none of it.
    fn create() -> Scratch {
        let path =
            std::env::temp_dir().join(format!("kestrel-blk-bench-{}.img", std::process::id()));
        let s = Scratch(path);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(&s.0)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", s.0.display()));
        // SAFETY: fallocate on an fd we own.
        let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, FILE_SIZE as libc::off_t) };
        assert_eq!(r, 0, "fallocate: {}", std::io::Error::last_os_error());
        let chunk = 1 << 20;
        let buf = AlignedBuf::new(chunk, 4096).unwrap();
        buf.write_at(0, &vec![0xa5; chunk]);
        // SAFETY: the aligned buffer is `chunk` bytes long and lives until the end.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr(), chunk) };
        for off in (0..FILE_SIZE).step_by(chunk) {
            f.write_all_at(bytes, off).unwrap();
        }
        f.sync_all().unwrap();
        s
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// xorshift64*: offsets need to be scattered, not cryptographic.
struct Rng(u64);

impl Rng {
    fn block(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % BLOCKS
    }
}

/// The irqfd an MSI-X vector would write: the device pays for one write per interrupt.
struct Irq {
    fd: EventFd,
    count: AtomicU64,
}

impl VirtioInterrupt for Irq {
    fn trigger_queue(&self, _queue: u16) -> std::io::Result<()> {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.fd.write(1)
    }
    fn trigger_config(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One run of one stack.
struct Sample {
    iops: f64,
    /// CPU time (user + system) of the stack's process per request, in µs.
    cpu_us: f64,
}

struct KestrelRun {
    sample: Sample,
    kicks: u64,
    wakeups: u64,
    interrupts: u64,
    /// Time asleep on the completion fd, and serving a wakeup (device and driver).
    waiting: Duration,
    busy: Duration,
}

/// User + system CPU seconds of this process (`RUSAGE_SELF`) or of its finished
/// children (`RUSAGE_CHILDREN`).
fn cpu_secs(who: i32) -> f64 {
    // SAFETY: an all-zero rusage is valid; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid rusage to write.
    unsafe { libc::getrusage(who, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// The guest driver's side of the queue, reduced to what Linux's virtio-blk does for
/// single-segment requests: one chain per request (header, data, status), reused.
struct Driver<'m> {
    mem: &'m GuestMemoryMmap,
    avail: MockSplitQueue<'m, GuestMemoryMmap>,
    used: UsedRing<'m, GuestMemoryMmap>,
    avail_idx: u16,
    /// The available index the device was last shown.
    published: u16,
    last_used: u16,
}

impl<'m> Driver<'m> {
    fn new(mem: &'m GuestMemoryMmap) -> (Self, Queue) {
        let avail = MockSplitQueue::create(mem, GuestAddress(DESC_TABLE), QSIZE);
        let used = UsedRing::new(mem, GuestAddress(USED_RING), QSIZE);
        let mut q: Queue = avail.create_queue().unwrap();
        q.set_used_ring_address(Some(USED_RING as u32), Some(0));
        let d = Driver {
            mem,
            avail,
            used,
            avail_idx: 0,
            published: 0,
            last_used: 0,
        };
        (d, q)
    }

    /// Chains for `DEPTH` requests: slot `i` owns descriptors 3i..3i+2.
    fn build_chains(&self, rw: Rw) {
        let data_flags = F_NEXT | if rw == Rw::Read { F_WRITE } else { 0 };
        for i in 0..DEPTH as u16 {
            let s = u64::from(i);
            let descs = [
                (HEADERS + 16 * s, 16, F_NEXT),
                (DATA + u64::from(BS) * s, BS, data_flags),
                (STATUS + s, 1, F_WRITE),
            ];
            for (j, &(addr, len, flags)) in descs.iter().enumerate() {
                let idx = 3 * i + j as u16;
                let d = SplitDescriptor::new(addr, len, flags, idx + 1);
                self.avail
                    .desc_table()
                    .store(idx, RawDescriptor::from(d))
                    .unwrap();
            }
        }
    }

    /// Makes slot `slot`'s chain available for a request at `block`.
    fn submit(&mut self, slot: usize, rw: Rw, block: u64) {
        let req_type = if rw == Rw::Read {
            VIRTIO_BLK_T_IN
        } else {
            VIRTIO_BLK_T_OUT
        };
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&req_type.to_le_bytes());
        h[8..].copy_from_slice(&(block * u64::from(BS) / 512).to_le_bytes());
        let s = slot as u64;
        self.mem
            .write_slice(&h, GuestAddress(HEADERS + 16 * s))
            .unwrap();
        self.mem
            .write_obj(0xffu8, GuestAddress(STATUS + s))
            .unwrap();
        let ring = self.avail.avail().ring();
        ring.ref_at(usize::from(self.avail_idx % QSIZE))
            .unwrap()
            .store(3 * slot as u16);
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Publishes the chains added since the last call and says whether the device wants
    /// a kick (virtio 1.2, 2.7.10: `vring_need_event` on the used ring's avail_event).
    fn publish(&mut self) -> bool {
        let old = std::mem::replace(&mut self.published, self.avail_idx);
        self.avail.avail().idx().store(self.avail_idx);
        let at = USED_RING + 4 + 8 * u64::from(QSIZE);
        let event: u16 = self.mem.read_obj(GuestAddress(at)).unwrap();
        self.avail_idx.wrapping_sub(event).wrapping_sub(1) < self.avail_idx.wrapping_sub(old)
    }

    /// The next used element, if any.
    fn pop_used(&mut self) -> Option<VirtqUsedElem> {
        if self.used.idx().load() == self.last_used {
            return None;
        }
        let e = self
            .used
            .ring()
            .ref_at(usize::from(self.last_used % QSIZE))
            .unwrap()
            .load();
        self.last_used = self.last_used.wrapping_add(1);
        Some(e)
    }

    /// Asks for an interrupt at the next used buffer, as Linux's `virtqueue_enable_cb`
    /// does after draining the ring.
    fn rearm(&self) {
        let at = self.avail.avail_addr().0 + 4 + 2 * u64::from(QSIZE);
        self.mem
            .write_obj(self.last_used, GuestAddress(at))
            .unwrap();
    }
}

fn wait_readable(fd: i32) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    assert!(r > 0, "no io_uring completion within 10 s");
}

/// Kestrel's device model for `secs`. The driver refills every completed request at once
/// and kicks when EVENT_IDX asks for it, after the whole refill or, with `kick_each`,
/// after each request (as a guest submitting requests one at a time does): the device
/// then hands the kernel one request per io_uring_enter instead of the whole batch.
fn kestrel(path: &Path, rw: Rw, secs: f64, seed: u64, kick_each: bool) -> KestrelRun {
    let cpu0 = cpu_secs(libc::RUSAGE_SELF);
    let mut dcfg = DiskConfig::new(path);
    dcfg.cache = CacheMode::None;
    dcfg.aio = AioMode::IoUring;
    let disk = RawImage::open(&dcfg).unwrap();
    let mut dev = VirtioBlock::new(disk, VirtioBlockConfig::new("bench")).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let (mut drv, queue) = Driver::new(&mem);
    drv.build_chains(rw);
    dev.ack_features(dev.features());
    let irq = Arc::new(Irq {
        fd: EventFd::new(EFD_NONBLOCK).unwrap(),
        count: AtomicU64::new(0),
    });
    dev.activate(mem.clone(), irq.clone(), vec![queue]).unwrap();
    let completion_fd = dev.event_fds()[0].0;

    let mut rng = Rng(seed | 1);
    let want_len = if rw == Rw::Read { BS + 1 } else { 1 };
    let (mut kicks, mut wakeups, mut done, mut total) = (0u64, 0u64, 0u64, 0u64);
    let (mut waiting, mut busy) = (Duration::ZERO, Duration::ZERO);
    let mut kick = |dev: &mut VirtioBlock, drv: &mut Driver| {
        if drv.publish() {
            kicks += 1;
            dev.process_queue(0).unwrap();
        }
    };
    for slot in 0..DEPTH {
        drv.submit(slot, rw, rng.block());
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    kick(&mut dev, &mut drv);
    let mut in_flight = DEPTH;
    let mut elapsed = None;
    while in_flight > 0 {
        let t0 = Instant::now();
        wait_readable(completion_fd);
        let t1 = Instant::now();
        wakeups += 1;
        dev.process_event(COMPLETION_TOKEN).unwrap();
        let running = elapsed.is_none();
        while let Some(e) = drv.pop_used() {
            let slot = (e.id() / 3) as usize;
            let status: u8 = mem.read_obj(GuestAddress(STATUS + slot as u64)).unwrap();
            assert!(
                status == VIRTIO_BLK_S_OK && e.len() == want_len,
                "request failed: status {status}, used length {}",
                e.len()
            );
            total += 1;
            if running {
                done += 1;
                drv.submit(slot, rw, rng.block());
                if kick_each {
                    kick(&mut dev, &mut drv);
                }
            } else {
                in_flight -= 1;
            }
        }
        drv.rearm();
        if running && Instant::now() >= deadline {
            elapsed = Some(start.elapsed());
        }
        if drv.avail_idx != drv.published {
            kick(&mut dev, &mut drv);
        }
        if running {
            waiting += t1 - t0;
            busy += t1.elapsed();
        }
    }
    let elapsed = elapsed.unwrap().as_secs_f64();
    drop(dev);
    let cpu = cpu_secs(libc::RUSAGE_SELF) - cpu0;
    KestrelRun {
        sample: Sample {
            iops: done as f64 / elapsed,
            cpu_us: cpu * 1e6 / total as f64,
        },
        kicks,
        wakeups,
        interrupts: irq.count.load(Ordering::Relaxed),
        waiting,
        busy,
    }
}

fn fio(path: &Path, rw: Rw, secs: f64) -> Sample {
    let cpu0 = cpu_secs(libc::RUSAGE_CHILDREN);
    let out = Command::new("fio")
        .args([
            "--name=x",
            &format!("--filename={}", path.display()),
            "--ioengine=io_uring",
            "--direct=1",
            &format!("--rw={}", rw.fio()),
            "--bs=4k",
            "--iodepth=32",
            &format!("--runtime={secs}"),
            "--time_based",
            "--size=1G",
            "--output-format=json",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run fio ({e}): apt-get install fio, or make deps"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "fio failed: {text}");
    // fio may print notes before the JSON document.
    let json = &text[text.find('{').unwrap()..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let dir = if rw == Rw::Read { "read" } else { "write" };
    let job = &v["jobs"][0][dir];
    let ios = job["total_ios"].as_f64().unwrap();
    Sample {
        iops: job["iops"].as_f64().unwrap(),
        cpu_us: (cpu_secs(libc::RUSAGE_CHILDREN) - cpu0) * 1e6 / ios,
    }
}

/// IOPS of `count` requests through `qemu-img bench`. No `-n`: it selects Linux AIO
/// and overrides `-i io_uring` (strace shows io_submit, not io_uring_enter).
fn qemu_img(path: &Path, rw: Rw, count: u64) -> Sample {
    let cpu0 = cpu_secs(libc::RUSAGE_CHILDREN);
    let mut c = Command::new("qemu-img");
    c.args([
        "bench", "-f", "raw", "-i", "io_uring", "-t", "none", "-d", "32",
    ])
    .args(["-s", "4k", "-S", &QEMU_STEP.to_string()])
    .args(["-c", &count.to_string()]);
    if rw == Rw::Write {
        c.arg("-w");
    }
    let out = c.arg(path).output().unwrap_or_else(|e| {
        panic!("cannot run qemu-img ({e}): install Debian's qemu-utils, or make deps")
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "qemu-img bench failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secs: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("Run completed in ")?
                .strip_suffix(" seconds.")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no time in qemu-img's output: {text}"));
    Sample {
        iops: count as f64 / secs,
        cpu_us: (cpu_secs(libc::RUSAGE_CHILDREN) - cpu0) * 1e6 / count as f64,
    }
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v.get(v.len() / 2).copied()
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stack {
    Kestrel,
    /// Kestrel again, the driver kicking after each request (see `kestrel`).
    KestrelKickEach,
    Fio,
    QemuImg,
}

const STACKS: [Stack; 4] = [
    Stack::Kestrel,
    Stack::KestrelKickEach,
    Stack::Fio,
    Stack::QemuImg,
];

fn stack_name(s: Stack) -> &'static str {
    match s {
        Stack::Kestrel => "kestrel",
        Stack::KestrelKickEach => "kestrel-kick-each",
        Stack::Fio => "fio",
        Stack::QemuImg => "qemu-img",
    }
}

/// IOPS and CPU per request of each run, per workload and stack.
#[derive(Default)]
struct Results([[Vec<Sample>; 4]; 2]);

impl Results {
    fn median(&self, w: usize, s: Stack, f: fn(&Sample) -> f64) -> Option<f64> {
        let i = STACKS.iter().position(|&x| x == s).unwrap();
        median(&self.0[w][i].iter().map(f).collect::<Vec<_>>())
    }
}

fn main() {
    // `cargo bench` passes --bench; a filter argument selects nothing here.
    let rounds: usize = env_or("KESTREL_BENCH_ROUNDS", 3).max(1);
    let secs: f64 = env_or("KESTREL_BENCH_SECS", 8.0);
    // For profiling some stacks alone: a comma-separated list of stack names.
    let only = std::env::var("KESTREL_BENCH_ONLY").ok();
    let runs = |s: Stack| match only.as_deref() {
        None => true,
        Some(o) => o.split(',').any(|n| n == stack_name(s)),
    };
    let scratch = Scratch::create();
    let path = scratch.path();
    eprintln!("scratch file {} (1 GiB, written once)", path.display());
    let workloads = [Rw::Read, Rw::Write];
    let mut results = Results::default();
    // qemu-img runs a request count: start from a short run, then aim at QEMU_SECS.
    let mut qemu_estimate = [0.0, 0.0];
    if runs(Stack::QemuImg) {
        qemu_estimate = workloads.map(|rw| qemu_img(path, rw, 20_000).iops);
    }
    for round in 0..rounds {
        for (w, &rw) in workloads.iter().enumerate() {
            // Rotate who goes first, so no stack always follows the same one.
            for k in 0..STACKS.len() {
                let si = (k + round) % STACKS.len();
                let stack = STACKS[si];
                if !runs(stack) {
                    continue;
                }
                let (sample, note) = match stack {
                    Stack::Kestrel | Stack::KestrelKickEach => {
                        let each = stack == Stack::KestrelKickEach;
                        let r = kestrel(path, rw, secs, 0x9e37_79b9 * (round as u64 + 1), each);
                        let n = r.sample.iops * secs;
                        let w = r.wakeups as f64;
                        let note = format!(
                            "; requests per kick {:.1}, per completion wakeup {:.1}, per \
                             interrupt {:.1}; per wakeup {:.0} µs asleep, {:.0} µs busy",
                            n / r.kicks as f64,
                            n / w,
                            n / r.interrupts.max(1) as f64,
                            r.waiting.as_secs_f64() * 1e6 / w,
                            r.busy.as_secs_f64() * 1e6 / w
                        );
                        (r.sample, note)
                    }
                    Stack::Fio => (fio(path, rw, secs), String::new()),
                    Stack::QemuImg => {
                        let count = ((qemu_estimate[w] * QEMU_SECS) as u64).max(10_000);
                        let s = qemu_img(path, rw, count);
                        qemu_estimate[w] = s.iops;
                        (s, format!(" ({count} requests)"))
                    }
                };
                eprintln!(
                    "round {round} {} {}: {:.0} IOPS, {:.2} µs CPU per request{note}",
                    rw.fio(),
                    stack_name(stack),
                    sample.iops,
                    sample.cpu_us
                );
                results.0[w][si].push(sample);
            }
        }
    }

    let fmt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".to_string(), f);
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.2}x", a / b),
        _ => "-".to_string(),
    };
    let us = |v: f64| format!("{v:.2} µs");
    println!(
        "medians of {rounds} alternating rounds; 4 KiB, queue depth 32, O_DIRECT, io_uring, \
         1 GiB file"
    );
    println!();
    println!(
        "| measure | Kestrel device model | fio | qemu-img bench | Kestrel/fio | \
         Kestrel/qemu-img |"
    );
    println!("|---|---|---|---|---|---|");
    for (w, rw) in workloads.iter().enumerate() {
        let m = |s, f| results.median(w, s, f);
        let iops = STACKS.map(|s| m(s, |x: &Sample| x.iops));
        let cpu = STACKS.map(|s| m(s, |x: &Sample| x.cpu_us));
        let [k, _, f, q] = iops;
        println!(
            "| {} IOPS | {} | {} | {} | {} | {} |",
            rw.fio(),
            fmt(k, &thousands),
            fmt(f, &thousands),
            fmt(q, &thousands),
            ratio(k, f),
            ratio(k, q)
        );
        let [k, _, f, q] = cpu;
        println!(
            "| {} CPU per request | {} | {} | {} | {} | {} |",
            rw.fio(),
            fmt(k, &us),
            fmt(f, &us),
            fmt(q, &us),
            ratio(k, f),
            ratio(k, q)
        );
    }
    println!();
    println!("diagnostic: Kestrel with the driver kicking after each request");
    println!();
    println!("| workload | IOPS | CPU per request | /fio | /qemu-img |");
    println!("|---|---|---|---|---|");
    for (w, rw) in workloads.iter().enumerate() {
        let m = |s| results.median(w, s, |x: &Sample| x.iops);
        let e = m(Stack::KestrelKickEach);
        println!(
            "| {} | {} | {} | {} | {} |",
            rw.fio(),
            fmt(e, &thousands),
            fmt(results.median(w, Stack::KestrelKickEach, |x| x.cpu_us), &us),
            ratio(e, m(Stack::Fio)),
            ratio(e, m(Stack::QemuImg))
        );
    }
}

/// 104876.5 -> "104,877".
fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
