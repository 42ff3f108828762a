//! virtio-blk unit tests: the harness (a mock guest driver over virtio-queue's mock
//! rings, a fault-injecting engine, an error-event recorder) and the test groups.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use block::{
    AioMode, BlockError, Completion, DiscardMode, DiskConfig, IoBuffers, IoEngine, IoUringEngine,
    ThreadPoolEngine,
};

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::*;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
const MEM_SIZE: u64 = 4 << 20;
const QSIZE: u16 = 64;
const DATA_BASE: u64 = 0x10_0000;
const DISK_SIZE: u64 = 1 << 20;
const CAPACITY: u64 = DISK_SIZE / 512;

#[derive(Default)]
struct Intr(Mutex<HashMap<u16, usize>>, AtomicUsize);

impl Intr {
    fn count(&self, q: u16) -> usize {
        self.0.lock().unwrap().get(&q).copied().unwrap_or(0)
    }
}

impl VirtioInterrupt for Intr {
    fn trigger_queue(&self, queue: u16) -> std::io::Result<()> {
        *self.0.lock().unwrap().entry(queue).or_default() += 1;
        Ok(())
    }
    fn trigger_config(&self) -> std::io::Result<()> {
        self.1.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[derive(Default)]
struct Errors(Mutex<Vec<BlockIoError>>);

impl BlockErrorHandler for Errors {
    fn io_error(&self, error: &BlockIoError) {
        self.0.lock().unwrap().push(error.clone());
    }
}

/// Host errors to inject, by operation: the errno replaces the engine's result.
#[derive(Default)]
struct Faults {
    read: Option<i32>,
    write: Option<i32>,
}

/// The thread pool, with completions overridden by `Faults`.
struct FaultyEngine {
    inner: ThreadPoolEngine,
    faults: Arc<Mutex<Faults>>,
    writes: std::collections::HashSet<u64>,
}

impl IoEngine for FaultyEngine {
    fn name(&self) -> &'static str {
        "faulty"
    }
    fn completion_fd(&self) -> RawFd {
        self.inner.completion_fd()
    }
    fn read_vectored(&mut self, o: u64, b: IoBuffers, t: u64) -> Result<(), BlockError> {
        self.inner.read_vectored(o, b, t)
    }
    fn write_vectored(&mut self, o: u64, b: IoBuffers, t: u64) -> Result<(), BlockError> {
        self.writes.insert(t);
        self.inner.write_vectored(o, b, t)
    }
    fn flush(&mut self, t: u64) -> Result<(), BlockError> {
        self.writes.insert(t);
        self.inner.flush(t)
    }
    fn discard(&mut self, o: u64, l: u64, t: u64) -> Result<(), BlockError> {
        self.writes.insert(t);
        self.inner.discard(o, l, t)
    }
    fn write_zeroes(&mut self, o: u64, l: u64, t: u64) -> Result<(), BlockError> {
        self.writes.insert(t);
        self.inner.write_zeroes(o, l, t)
    }
    fn submit(&mut self) -> Result<(), BlockError> {
        self.inner.submit()
    }
    fn next_completion(&mut self) -> Option<Completion> {
        let (t, r) = self.inner.next_completion()?;
        let f = self.faults.lock().unwrap();
        let errno = if self.writes.remove(&t) {
            f.write
        } else {
            f.read
        };
        Some((t, errno.map_or(r, |e| Err(io::Error::from_raw_os_error(e)))))
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
    fn wait_idle(&mut self) -> Result<(), BlockError> {
        self.inner.wait_idle()
    }
    fn notify(&self) {
        self.inner.notify()
    }
}

/// A guest driver: memory, mock queues, and a device.
struct Driver {
    mem: &'static GuestMemoryMmap,
    queues: Vec<MockSplitQueue<'static, GuestMemoryMmap>>,
    next_desc: Vec<u16>,
    next_data: u64,
    dev: VirtioBlock,
    intr: Arc<Intr>,
    errors: Arc<Errors>,
    file: TempFile,
}

struct Setup {
    aio: AioMode,
    read_only: bool,
    discard: DiscardMode,
    num_queues: u16,
    active_queues: usize,
    cfg: fn(&mut VirtioBlockConfig),
    faults: Option<Arc<Mutex<Faults>>>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            aio: AioMode::Threads,
            read_only: false,
            discard: DiscardMode::Unmap,
            num_queues: 1,
            active_queues: 1,
            cfg: |_| {},
            faults: None,
        }
    }
}

fn aio_modes() -> Vec<AioMode> {
    if IoUringEngine::is_supported() {
        vec![AioMode::Threads, AioMode::IoUring]
    } else {
        eprintln!("io_uring is unavailable on this host: only aio=threads is tested");
        vec![AioMode::Threads]
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

impl Driver {
    fn new(s: Setup) -> Driver {
        let file = TempFile::new().unwrap();
        file.as_file().set_len(DISK_SIZE).unwrap();
        let mut dcfg = DiskConfig::new(file.as_path());
        dcfg.aio = s.aio;
        dcfg.read_only = s.read_only;
        dcfg.discard = s.discard;
        dcfg.serial = Some("kestrel-serial-0123456789".into());
        let disk = match &s.faults {
            None => RawImage::open(&dcfg).unwrap(),
            Some(faults) => {
                let inner = ThreadPoolEngine::new(file.as_file().try_clone().unwrap(), 2).unwrap();
                let engine = FaultyEngine {
                    inner,
                    faults: faults.clone(),
                    writes: Default::default(),
                };
                RawImage::with_engine(Box::new(engine), DISK_SIZE, &dcfg)
            }
        };
        let mut cfg = VirtioBlockConfig::new("disk0");
        cfg.num_queues = s.num_queues;
        cfg.queue_size = QSIZE;
        (s.cfg)(&mut cfg);
        let mut dev = VirtioBlock::new(disk, cfg).unwrap();
        let errors = Arc::new(Errors::default());
        dev.set_error_handler(errors.clone());
        let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap(),
        ));
        let queues: Vec<_> = (0..s.active_queues)
            .map(|i| MockSplitQueue::create(mem, GuestAddress(i as u64 * 0x4000), QSIZE))
            .collect();
        dev.ack_features(dev.features());
        let intr = Arc::new(Intr::default());
        let qs = queues
            .iter()
            .map(|q| q.create_queue::<Queue>().unwrap())
            .collect();
        dev.activate(mem.clone(), intr.clone(), qs).unwrap();
        Driver {
            mem,
            next_desc: vec![0; queues.len()],
            queues,
            next_data: DATA_BASE,
            dev,
            intr,
            errors,
            file,
        }
    }

    /// Guest memory for a buffer, filled with `fill`.
    fn alloc(&mut self, len: u64, fill: u8) -> u64 {
        let addr = self.next_data;
        self.next_data = (self.next_data + len + 63) & !63;
        assert!(self.next_data < MEM_SIZE);
        self.mem
            .write_slice(&vec![fill; len as usize], GuestAddress(addr))
            .unwrap();
        addr
    }

    fn header(&mut self, req_type: u32, sector: u64) -> u64 {
        let a = self.alloc(16, 0);
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&req_type.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(a)).unwrap();
        a
    }

    /// Puts raw descriptors (addr, len, flags, next) in queue `q`'s table at its cursor
    /// and makes the first one available. `next` is relative to the first index.
    fn push_raw(&mut self, q: usize, descs: &[(u64, u32, u16, u16)]) -> u16 {
        let base = self.next_desc[q];
        let vq = &self.queues[q];
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let d = SplitDescriptor::new(addr, len, flags, (base + next) % QSIZE);
            vq.desc_table()
                .store((base + i as u16) % QSIZE, RawDescriptor::from(d))
                .unwrap();
        }
        self.next_desc[q] = (base + descs.len() as u16) % QSIZE;
        let idx = vq.avail().idx().load();
        vq.avail()
            .ring()
            .ref_at(usize::from(idx % QSIZE))
            .unwrap()
            .store(base);
        vq.avail().idx().store(idx.wrapping_add(1));
        base
    }

    /// A well-linked chain of (addr, len, writable).
    fn push(&mut self, q: usize, descs: &[(u64, u32, bool)]) -> u16 {
        let raw: Vec<_> = descs
            .iter()
            .enumerate()
            .map(|(i, &(a, l, w))| {
                let mut flags = if w { F_WRITE } else { 0 };
                if i + 1 < descs.len() {
                    flags |= F_NEXT;
                }
                (a, l, flags, i as u16 + 1)
            })
            .collect();
        self.push_raw(q, &raw)
    }

    /// A request: header, data descriptors, status; returns the status address.
    fn request(&mut self, q: usize, t: u32, sector: u64, data: &[(u64, u32, bool)]) -> u64 {
        let h = self.header(t, sector);
        let status = self.alloc(1, 0xee);
        let mut descs = vec![(h, 16, false)];
        descs.extend_from_slice(data);
        descs.push((status, 1, true));
        self.push(q, &descs);
        status
    }

    fn status(&self, addr: u64) -> u8 {
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// (head, len) of every used entry of queue `q`.
    fn used(&self, q: usize) -> Vec<(u32, u32)> {
        let vq = &self.queues[q];
        let n = vq.used().idx().load();
        (0..n)
            .map(|i| {
                let e = vq
                    .used()
                    .ring()
                    .ref_at(usize::from(i % QSIZE))
                    .unwrap()
                    .load();
                (e.id(), e.len())
            })
            .collect()
    }

    fn kick(&mut self, q: usize) {
        self.dev.process_queue(q).unwrap();
    }

    /// Lets every request in flight finish, as the event loop would.
    fn settle(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.dev.process_event(COMPLETION_TOKEN).unwrap();
            if self.dev.inflight_requests() == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "requests never completed");
            let mut pfd = libc::pollfd {
                fd: self.dev.event_fds()[0].0,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 1000) };
        }
    }

    fn run(&mut self, q: usize) {
        self.kick(q);
        self.settle();
    }

    fn file_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.file.as_file().read_exact_at(&mut v, offset).unwrap();
        v
    }
}

mod errors;
mod requests;
mod state;
