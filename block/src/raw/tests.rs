//! Tests of [`RawImage`](super::RawImage) on temporary files, with every engine the host
//! supports: the parsing of the `-drive` options, reads and writes with their statistics,
//! serials, image locking, read-only, O_DIRECT bounce buffers and alignment, discard
//! modes, and the write-zeroes fallback (through a fake engine without hole punching).

use std::os::unix::fs::FileExt;
use std::time::Duration;

use vmm_sys_util::tempfile::TempFile;

use super::*;

fn aio_modes() -> Vec<AioMode> {
    if IoUringEngine::is_supported() {
        vec![AioMode::Threads, AioMode::IoUring]
    } else {
        eprintln!("io_uring is unavailable on this host: only aio=threads is tested");
        vec![AioMode::Threads]
    }
}

fn image_file(len: u64) -> TempFile {
    let t = TempFile::new().unwrap();
    t.as_file().set_len(len).unwrap();
    t
}

fn wait(img: &mut RawImage, n: usize) -> Vec<Completion> {
    img.submit().unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < n {
        while let Some(c) = img.next_completion() {
            out.push(c);
        }
        if out.len() >= n {
            break;
        }
        assert!(Instant::now() < deadline, "timed out");
        let mut pfd = libc::pollfd {
            fd: img.completion_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 1000) };
    }
    out
}

fn one(img: &mut RawImage) -> io::Result<u32> {
    let mut v = wait(img, 1);
    v.remove(0).1
}

fn errno(r: io::Result<u32>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

fn buf(data: &[u8], align: usize) -> Arc<AlignedBuf> {
    let b = AlignedBuf::new(data.len(), align).unwrap();
    b.write_at(0, data);
    Arc::new(b)
}

#[test]
fn options_parse_like_qemu() {
    assert_eq!("none".parse::<CacheMode>().unwrap(), CacheMode::None);
    assert_eq!("unsafe".parse::<CacheMode>().unwrap(), CacheMode::Unsafe);
    assert!(CacheMode::DirectSync.direct() && CacheMode::DirectSync.dsync());
    assert!(!CacheMode::Writeback.direct() && !CacheMode::Writeback.dsync());
    assert!("bogus".parse::<CacheMode>().is_err());
    assert_eq!("on".parse::<DiscardMode>().unwrap(), DiscardMode::Unmap);
    assert_eq!(
        "ignore".parse::<DiscardMode>().unwrap(),
        DiscardMode::Ignore
    );
    assert_eq!("threads".parse::<AioMode>().unwrap(), AioMode::Threads);
    assert_eq!("native".parse::<AioMode>().unwrap(), AioMode::IoUring);
    let e = "x".parse::<AioMode>().unwrap_err().to_string();
    assert!(e.contains("aio=x"), "{e}");
}

#[test]
fn open_reports_the_path() {
    let e = RawImage::open(&DiskConfig::new("/nonexistent/disk.img")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/disk.img"), "{e}");
}

#[test]
fn read_write_and_stats() {
    for aio in aio_modes() {
        let t = image_file(1 << 20);
        let mut cfg = DiskConfig::new(t.as_path());
        cfg.aio = aio;
        let mut img = RawImage::open(&cfg).unwrap();
        assert_eq!(img.size(), 1 << 20);
        assert_eq!(img.alignment(), 512);
        let stats = img.stats();
        img.write(4096, IoBuffers::from_aligned(buf(&[3u8; 8192], 8)), 1)
            .unwrap();
        assert_eq!(one(&mut img).unwrap(), 8192, "{aio:?}");
        let dst = Arc::new(AlignedBuf::new(8192, 8).unwrap());
        img.read(4096, IoBuffers::from_aligned(dst.clone()), 2)
            .unwrap();
        assert_eq!(one(&mut img).unwrap(), 8192);
        assert_eq!(dst.to_vec(), vec![3u8; 8192]);
        img.flush(3).unwrap();
        assert_eq!(one(&mut img).unwrap(), 0);
        // Out of range: refused before the engine, counted as failed.
        let dst = Arc::new(AlignedBuf::new(1024, 8).unwrap());
        img.read((1 << 20) - 512, IoBuffers::from_aligned(dst), 4)
            .unwrap();
        assert_eq!(errno(one(&mut img)), Some(libc::EINVAL));
        let s = stats.snapshot();
        assert_eq!((s.wr_operations, s.wr_bytes), (1, 8192));
        assert_eq!((s.rd_operations, s.rd_bytes), (1, 8192));
        assert_eq!(s.flush_operations, 1);
        assert_eq!(s.failed_rd_operations, 1);
        assert_eq!(s.wr_highest_offset, 4096 + 8192);
        assert!(s.last_access.is_some());
        assert_eq!(img.in_flight(), 0);
    }
}

#[test]
fn serial_is_stable_and_overridable() {
    let t = image_file(4096);
    let cfg = DiskConfig::new(t.as_path());
    let a = RawImage::open(&cfg).unwrap();
    let first = a.serial().to_string();
    drop(a);
    let a = RawImage::open(&cfg).unwrap();
    assert_eq!(a.serial(), first);
    assert!(a.serial().starts_with("KS") && a.serial().len() == 18);
    let other = image_file(4096);
    let c = RawImage::open(&DiskConfig::new(other.as_path())).unwrap();
    assert_ne!(a.serial(), c.serial());
    drop(a);
    let mut cfg = cfg;
    cfg.serial = Some("disk-0".into());
    assert_eq!(RawImage::open(&cfg).unwrap().serial(), "disk-0");
}

#[test]
fn an_image_in_use_by_a_writer_is_locked_as_qemu_locks_it() {
    let t = image_file(4096);
    let cfg = DiskConfig::new(t.as_path());
    let a = RawImage::open(&cfg).unwrap();
    let e = RawImage::open(&cfg).err().unwrap();
    assert!(
        matches!(e, BlockError::Lock(_)) && e.to_string().contains("\"write\" lock"),
        "{e}"
    );
    // locking=off opens regardless (and takes nothing).
    let mut off = cfg.clone();
    off.locking = crate::Locking::Off;
    drop(RawImage::open(&off).unwrap());
    // share-rw on both sides lets two writers in.
    drop(a);
    let mut shared = cfg.clone();
    shared.share_rw = true;
    let _a = RawImage::open(&shared).unwrap();
    let _b = RawImage::open(&shared).unwrap();
    drop((_a, _b));
    // Readers share.
    let mut ro = cfg;
    ro.read_only = true;
    let _r1 = RawImage::open(&ro).unwrap();
    let _r2 = RawImage::open(&ro).unwrap();
}

#[test]
fn read_only_refuses_writes() {
    for aio in aio_modes() {
        let t = image_file(1 << 16);
        let mut cfg = DiskConfig::new(t.as_path());
        cfg.aio = aio;
        cfg.read_only = true;
        cfg.discard = DiscardMode::Unmap;
        let mut img = RawImage::open(&cfg).unwrap();
        assert!(img.read_only());
        img.write(0, IoBuffers::from_aligned(buf(&[1u8; 512], 8)), 1)
            .unwrap();
        assert_eq!(errno(one(&mut img)), Some(libc::EROFS));
        img.discard(0, 512, 2).unwrap();
        assert_eq!(errno(one(&mut img)), Some(libc::EROFS));
        img.write_zeroes(0, 512, false, 3).unwrap();
        assert_eq!(errno(one(&mut img)), Some(libc::EROFS));
        img.flush(4).unwrap();
        assert!(one(&mut img).is_ok());
        let dst = Arc::new(AlignedBuf::new(512, 8).unwrap());
        img.read(0, IoBuffers::from_aligned(dst), 5).unwrap();
        assert!(one(&mut img).is_ok());
        assert_eq!(img.stats().snapshot().failed_wr_operations, 2);
    }
}

#[test]
fn cache_none_bounces_unaligned_memory_and_refuses_unaligned_offsets() {
    for aio in aio_modes() {
        let t = image_file(0);
        t.as_file().write_all_at(&[0u8; 1 << 16], 0).unwrap();
        let mut cfg = DiskConfig::new(t.as_path());
        cfg.aio = aio;
        cfg.cache = CacheMode::None;
        let mut img = match RawImage::open(&cfg) {
            Ok(img) => img,
            Err(e) => {
                eprintln!("SKIPPED: the temp file system refuses O_DIRECT: {e}");
                return;
            }
        };
        let align = img.alignment();
        assert!([512, 1024, 2048, 4096].contains(&align), "{align}");
        // 4096 bytes gathered from pieces that start at odd addresses.
        let data: Vec<u8> = (0..4097u32).map(|i| (i % 251) as u8).collect();
        let src = buf(&data, 4096);
        let bufs = IoBuffers::from_aligned_pieces(src, &[(1, 1000), (1001, 3096)]).unwrap();
        assert!(!bufs.is_aligned(align));
        img.write(8192, bufs, 1).unwrap();
        assert_eq!(one(&mut img).unwrap(), 4096, "{aio:?}");
        let mut on_disk = vec![0u8; 4096];
        t.as_file().read_exact_at(&mut on_disk, 8192).unwrap();
        assert_eq!(on_disk, data[1..]);

        let dst = Arc::new(AlignedBuf::new(4097, 4096).unwrap());
        let bufs = IoBuffers::from_aligned_pieces(dst.clone(), &[(1, 4096)]).unwrap();
        img.read(8192, bufs, 2).unwrap();
        assert_eq!(one(&mut img).unwrap(), 4096);
        assert_eq!(dst.to_vec()[1..], data[1..]);

        // Aligned memory goes straight to the engine.
        let dst = Arc::new(AlignedBuf::new(4096, 4096).unwrap());
        img.read(8192, IoBuffers::from_aligned(dst.clone()), 3)
            .unwrap();
        assert_eq!(one(&mut img).unwrap(), 4096);
        assert_eq!(dst.to_vec(), data[1..]);

        // An offset O_DIRECT cannot do is refused, not bounced.
        let dst = Arc::new(AlignedBuf::new(4096, 4096).unwrap());
        img.read(8192 + 1, IoBuffers::from_aligned(dst), 4).unwrap();
        assert_eq!(errno(one(&mut img)), Some(libc::EINVAL));
    }
}

#[test]
fn discard_modes() {
    for aio in aio_modes() {
        for mode in [DiscardMode::Ignore, DiscardMode::Unmap] {
            let t = image_file(0);
            t.as_file().write_all_at(&[0xaau8; 1 << 18], 0).unwrap();
            let mut cfg = DiskConfig::new(t.as_path());
            cfg.aio = aio;
            cfg.discard = mode;
            let mut img = RawImage::open(&cfg).unwrap();
            img.discard(0, 1 << 17, 1).unwrap();
            assert!(one(&mut img).is_ok());
            let mut got = vec![0u8; 4096];
            t.as_file().read_exact_at(&mut got, 0).unwrap();
            let want = if mode == DiscardMode::Unmap { 0 } else { 0xaa };
            assert!(got.iter().all(|&b| b == want), "{aio:?} {mode:?}");
            let s = img.stats().snapshot();
            assert_eq!((s.unmap_operations, s.unmap_bytes), (1, 1 << 17));
        }
    }
}

#[test]
fn cache_unsafe_ignores_flush() {
    let t = image_file(4096);
    let mut cfg = DiskConfig::new(t.as_path());
    cfg.cache = CacheMode::Unsafe;
    let mut img = RawImage::open(&cfg).unwrap();
    img.flush(7).unwrap();
    let v = wait(&mut img, 1);
    assert_eq!(v[0].0, 7);
    assert!(v[0].1.is_ok());
    assert_eq!(img.stats().snapshot().flush_operations, 1);
}

/// The thread pool, except that hole punching is "not supported".
struct NoPunch(ThreadPoolEngine);

impl IoEngine for NoPunch {
    fn name(&self) -> &'static str {
        "no-punch"
    }
    fn completion_fd(&self) -> RawFd {
        self.0.completion_fd()
    }
    fn read_vectored(&mut self, o: u64, b: IoBuffers, t: u64) -> Result<(), BlockError> {
        self.0.read_vectored(o, b, t)
    }
    fn write_vectored(&mut self, o: u64, b: IoBuffers, t: u64) -> Result<(), BlockError> {
        self.0.write_vectored(o, b, t)
    }
    fn flush(&mut self, t: u64) -> Result<(), BlockError> {
        self.0.flush(t)
    }
    fn discard(&mut self, _o: u64, _l: u64, t: u64) -> Result<(), BlockError> {
        // Reported through the real completion path, like a file system would.
        self.0.flush(t | 1 << 63)
    }
    fn write_zeroes(&mut self, o: u64, l: u64, t: u64) -> Result<(), BlockError> {
        self.0.write_zeroes(o, l, t)
    }
    fn submit(&mut self) -> Result<(), BlockError> {
        self.0.submit()
    }
    fn next_completion(&mut self) -> Option<Completion> {
        self.0.next_completion().map(|(t, r)| {
            if t & 1 << 63 != 0 {
                (
                    t & !(1 << 63),
                    Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP)),
                )
            } else {
                (t, r)
            }
        })
    }
    fn in_flight(&self) -> usize {
        self.0.in_flight()
    }
    fn wait_idle(&mut self) -> Result<(), BlockError> {
        self.0.wait_idle()
    }
    fn notify(&self) {
        self.0.notify()
    }
}

#[test]
fn file_systems_without_hole_punching() {
    let t = image_file(0);
    t.as_file().write_all_at(&[0x11u8; 1 << 16], 0).unwrap();
    let mut cfg = DiskConfig::new(t.as_path());
    cfg.discard = DiscardMode::Unmap;
    let engine = NoPunch(ThreadPoolEngine::new(t.as_file().try_clone().unwrap(), 1).unwrap());
    let mut img = RawImage::with_engine(Box::new(engine), 1 << 16, &cfg);
    // Discard: advisory, so "cannot" is success.
    img.discard(0, 4096, 1).unwrap();
    assert!(one(&mut img).is_ok());
    // Write-zeroes that wanted to punch a hole zeroes the range instead.
    img.write_zeroes(4096, 8192, true, 2).unwrap();
    let v = wait(&mut img, 1);
    assert_eq!(v[0].0, 2);
    assert!(v[0].1.is_ok());
    let mut got = vec![1u8; 8192];
    t.as_file().read_exact_at(&mut got, 4096).unwrap();
    assert!(got.iter().all(|&b| b == 0));
    let s = img.stats().snapshot();
    assert_eq!((s.wr_operations, s.wr_bytes), (1, 8192));
}

#[test]
fn write_zeroes_may_unmap_punches_with_discard_unmap() {
    for aio in aio_modes() {
        let t = image_file(0);
        t.as_file().write_all_at(&[0x22u8; 1 << 18], 0).unwrap();
        t.as_file().sync_all().unwrap();
        let mut cfg = DiskConfig::new(t.as_path());
        cfg.aio = aio;
        cfg.discard = DiscardMode::Unmap;
        let mut img = RawImage::open(&cfg).unwrap();
        img.write_zeroes(0, 1 << 17, true, 1).unwrap();
        assert!(one(&mut img).is_ok());
        // SAFETY: plain syscall on an open fd.
        let hole = unsafe { libc::lseek(t.as_file().as_raw_fd(), 0, libc::SEEK_HOLE) };
        assert_eq!(hole, 0, "{aio:?}: the zeroed range is a hole");
        img.write_zeroes(1 << 17, 4096, false, 2).unwrap();
        assert!(one(&mut img).is_ok());
        let mut got = vec![1u8; 4096];
        t.as_file().read_exact_at(&mut got, 1 << 17).unwrap();
        assert!(got.iter().all(|&b| b == 0));
    }
}
