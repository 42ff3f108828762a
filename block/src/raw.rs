//! An opened raw image: the QEMU `-drive` options that concern the file (cache, discard,
//! aio, read-only, serial), the checks every request passes before it reaches the engine
//! (read-only, bounds, O_DIRECT alignment), bounce buffers for guest memory O_DIRECT cannot
//! use directly, and the statistics of query-blockstats.
//!
//! The caller's tokens are mapped to internal ones, so one caller token may cover several
//! operations and an operation can be resubmitted (write-zeroes falling back from a hole
//! punch) without the caller seeing it.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use crate::engine::fallocate_unsupported;
use crate::engine::threads::DEFAULT_THREADS;
use crate::engine::uring::DEFAULT_QUEUE_DEPTH;
use crate::{
    AlignedBuf, BlockError, Completion, IoBuffers, IoEngine, IoUringEngine, OpKind, StatsHandle,
    ThreadPoolEngine,
};

/// The unit of virtio-blk addresses and of capacities.
pub const SECTOR_SIZE: u64 = 512;

/// QEMU's `cache=` modes, as the pair (O_DIRECT, O_DSYNC) plus whether flush is honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// O_DIRECT: bypass the host page cache; flush still makes writes durable.
    None,
    /// The host page cache holds writes until the guest flushes (QEMU's default).
    #[default]
    Writeback,
    /// O_DSYNC: every write is durable when it completes.
    Writethrough,
    /// O_DIRECT and O_DSYNC.
    DirectSync,
    /// Like writeback, but guest flushes are ignored: fast and unsafe on host crash.
    Unsafe,
}

impl CacheMode {
    pub fn direct(self) -> bool {
        matches!(self, CacheMode::None | CacheMode::DirectSync)
    }
    pub fn dsync(self) -> bool {
        matches!(self, CacheMode::Writethrough | CacheMode::DirectSync)
    }
    pub fn ignores_flush(self) -> bool {
        self == CacheMode::Unsafe
    }
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::None => "none",
            CacheMode::Writeback => "writeback",
            CacheMode::Writethrough => "writethrough",
            CacheMode::DirectSync => "directsync",
            CacheMode::Unsafe => "unsafe",
        }
    }
}

impl FromStr for CacheMode {
    type Err = BlockError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "none" | "off" => CacheMode::None,
            "writeback" => CacheMode::Writeback,
            "writethrough" => CacheMode::Writethrough,
            "directsync" => CacheMode::DirectSync,
            "unsafe" => CacheMode::Unsafe,
            _ => {
                return Err(BlockError::Option(format!(
                    "cache={s}: expected none, writeback, writethrough, directsync or unsafe"
                )))
            }
        })
    }
}

/// QEMU's `discard=`: whether guest discards punch holes in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiscardMode {
    /// Discards complete successfully and do nothing (QEMU's default).
    #[default]
    Ignore,
    /// Discards deallocate the range (fallocate PUNCH_HOLE).
    Unmap,
}

impl FromStr for DiscardMode {
    type Err = BlockError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ignore" | "off" => Ok(DiscardMode::Ignore),
            "unmap" | "on" => Ok(DiscardMode::Unmap),
            _ => Err(BlockError::Option(format!(
                "discard={s}: expected ignore (off) or unmap (on)"
            ))),
        }
    }
}

/// QEMU's `aio=`: which engine serves the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AioMode {
    /// io_uring where the host allows it, the thread pool otherwise.
    #[default]
    Auto,
    /// io_uring, or fail to open (`aio=io_uring`; `aio=native` maps here too: Linux AIO
    /// is what io_uring replaces).
    IoUring,
    /// The thread pool (`aio=threads`).
    Threads,
}

impl FromStr for AioMode {
    type Err = BlockError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(AioMode::Auto),
            "io_uring" | "native" => Ok(AioMode::IoUring),
            "threads" => Ok(AioMode::Threads),
            _ => Err(BlockError::Option(format!(
                "aio={s}: expected threads, io_uring or native"
            ))),
        }
    }
}

/// How to open an image: what `-drive file=...,readonly=,cache=,discard=,aio=,serial=`
/// says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
    pub cache: CacheMode,
    pub discard: DiscardMode,
    pub aio: AioMode,
    /// io_uring entries (operations in the kernel at once).
    pub queue_depth: u32,
    /// Worker threads of the thread pool.
    pub threads: usize,
    /// The serial the guest reads (virtio-blk GET_ID: at most 20 bytes are shown). `None`
    /// derives a stable one from the image path.
    pub serial: Option<String>,
    /// QEMU-compatible image locking (see [`crate::lock`]).
    pub locking: crate::Locking,
    /// Let other users write the image too (a device's `share-rw=on`).
    pub share_rw: bool,
}

impl DiskConfig {
    /// Defaults for `path`: read-write, cache=writeback, discard=ignore, aio=auto.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DiskConfig {
            path: path.into(),
            read_only: false,
            cache: CacheMode::default(),
            discard: DiscardMode::default(),
            aio: AioMode::default(),
            queue_depth: DEFAULT_QUEUE_DEPTH,
            threads: DEFAULT_THREADS,
            serial: None,
            locking: crate::Locking::Auto,
            share_rw: false,
        }
    }
}

struct Bounce {
    buf: Arc<AlignedBuf>,
    /// For a read: where the data goes once the bounce buffer is filled.
    dest: Option<IoBuffers>,
}

struct OpMeta {
    user: u64,
    kind: OpKind,
    offset: u64,
    bytes: u64,
    start: Instant,
    bounce: Option<Bounce>,
    /// A write-zeroes served by punching a hole: on EOPNOTSUPP, zero the range instead.
    punched_zeroes: bool,
}

/// An open raw image and its engine.
pub struct RawImage {
    // Declared first so it drops first: the engine's drop waits for in-flight I/O,
    // which may still be filling the bounce buffers held in `ops`.
    engine: Box<dyn IoEngine>,
    ops: HashMap<u64, OpMeta>,
    ready: VecDeque<Completion>,
    next_token: u64,
    path: PathBuf,
    size: u64,
    read_only: bool,
    cache: CacheMode,
    discard: DiscardMode,
    align: usize,
    serial: String,
    stats: StatsHandle,
    warned_unaligned: bool,
    warned_no_discard: bool,
}

impl std::fmt::Debug for RawImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawImage")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("read_only", &self.read_only)
            .field("cache", &self.cache)
            .field("discard", &self.discard)
            .field("engine", &self.engine.name())
            .finish()
    }
}

impl RawImage {
    /// Opens the image and starts its engine.
    pub fn open(cfg: &DiskConfig) -> Result<Self, BlockError> {
        let mut flags = 0;
        if cfg.cache.direct() {
            flags |= libc::O_DIRECT;
        }
        if cfg.cache.dsync() {
            flags |= libc::O_DSYNC;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!cfg.read_only)
            .custom_flags(flags)
            .open(&cfg.path)
            .map_err(|source| {
                let source = if cfg.cache.direct() && source.raw_os_error() == Some(libc::EINVAL) {
                    io::Error::new(
                        source.kind(),
                        "the file system refuses O_DIRECT, which cache=none needs; \
                         use cache=writeback",
                    )
                } else {
                    source
                };
                BlockError::Open {
                    path: cfg.path.clone(),
                    source,
                }
            })?;
        let (perm, shared) = crate::lock::disk_permissions(cfg.read_only, cfg.share_rw);
        crate::lock::lock_image(&file, &cfg.path, perm, shared, cfg.locking)?;
        let size_err = |source| BlockError::Size {
            path: cfg.path.clone(),
            source,
        };
        let size = (&file).seek(SeekFrom::End(0)).map_err(size_err)?;
        let align = if cfg.cache.direct() {
            direct_alignment(&file)
        } else {
            SECTOR_SIZE as usize
        };
        let engine_file = file.try_clone().map_err(|source| BlockError::Open {
            path: cfg.path.clone(),
            source,
        })?;
        let engine: Box<dyn IoEngine> = match cfg.aio {
            AioMode::IoUring => Box::new(IoUringEngine::new(engine_file, cfg.queue_depth)?),
            AioMode::Threads => Box::new(ThreadPoolEngine::new(engine_file, cfg.threads)?),
            AioMode::Auto => match IoUringEngine::new(engine_file, cfg.queue_depth) {
                Ok(e) => Box::new(e),
                Err(e) => {
                    log::info!("{}: {e}; using the thread pool", cfg.path.display());
                    let f = file.try_clone().map_err(|source| BlockError::Open {
                        path: cfg.path.clone(),
                        source,
                    })?;
                    Box::new(ThreadPoolEngine::new(f, cfg.threads)?)
                }
            },
        };
        let mut image = Self::with_engine(engine, size, cfg);
        image.align = align;
        Ok(image)
    }

    /// An image served by a caller-supplied engine (tests inject faults this way), of
    /// `size` bytes, with `cfg`'s modes. The path only names it in messages and seeds
    /// the default serial.
    pub fn with_engine(engine: Box<dyn IoEngine>, size: u64, cfg: &DiskConfig) -> Self {
        let serial = cfg
            .serial
            .clone()
            .unwrap_or_else(|| default_serial(&cfg.path));
        RawImage {
            engine,
            ops: HashMap::new(),
            ready: VecDeque::new(),
            next_token: 0,
            path: cfg.path.clone(),
            size,
            read_only: cfg.read_only,
            cache: cfg.cache,
            discard: cfg.discard,
            align: if cfg.cache.direct() {
                4096
            } else {
                SECTOR_SIZE as usize
            },
            serial,
            stats: StatsHandle::new(),
            warned_unaligned: false,
            warned_no_discard: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn read_only(&self) -> bool {
        self.read_only
    }
    pub fn cache_mode(&self) -> CacheMode {
        self.cache
    }
    pub fn discard_mode(&self) -> DiscardMode {
        self.discard
    }
    /// The offset and length granularity requests must respect: 512, or the O_DIRECT
    /// alignment the file needs with cache=none (advertise it as the logical block size).
    pub fn alignment(&self) -> usize {
        self.align
    }
    pub fn serial(&self) -> &str {
        &self.serial
    }
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }
    /// The fd the event loop watches; then drain `next_completion`.
    pub fn completion_fd(&self) -> RawFd {
        self.engine.completion_fd()
    }
    /// The counters for query-blockstats (shared: clone it once and keep it).
    pub fn stats(&self) -> StatsHandle {
        self.stats.clone()
    }
    /// Operations submitted and not yet returned by `next_completion`.
    pub fn in_flight(&self) -> usize {
        self.ops.len() + self.ready.len()
    }

    fn begin(&mut self, user: u64, kind: OpKind, offset: u64, bytes: u64) -> (u64, OpMeta) {
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1);
        let meta = OpMeta {
            user,
            kind,
            offset,
            bytes,
            start: Instant::now(),
            bounce: None,
            punched_zeroes: false,
        };
        (token, meta)
    }

    fn finish_now(&mut self, meta: OpMeta, result: io::Result<u32>) {
        self.account(&meta, &result);
        self.ready.push_back((meta.user, result));
        self.engine.notify();
    }

    fn account(&self, meta: &OpMeta, result: &io::Result<u32>) {
        self.stats
            .record(meta.kind, meta.bytes, meta.start.elapsed(), result.is_ok());
        if result.is_ok() && meta.kind == OpKind::Write {
            self.stats
                .record_write_end(meta.offset.saturating_add(meta.bytes));
        }
    }

    /// The errno a request gets before reaching the engine, if any.
    fn check(&mut self, offset: u64, len: u64, write: bool) -> Option<i32> {
        if write && self.read_only {
            return Some(libc::EROFS);
        }
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Some(libc::EINVAL);
        }
        let a = self.align as u64;
        if self.cache.direct() && (offset % a != 0 || len % a != 0) {
            if !self.warned_unaligned {
                self.warned_unaligned = true;
                log::warn!(
                    "{}: cache=none needs I/O aligned to {a} bytes; refusing {len} bytes at \
                     offset {offset} (give the device a {a}-byte logical block size)",
                    self.path.display()
                );
            }
            return Some(libc::EINVAL);
        }
        None
    }

    fn direct_needs_bounce(&self, bufs: &IoBuffers) -> bool {
        self.cache.direct() && !bufs.is_aligned(self.align)
    }

    /// Reads `bufs.len()` bytes at byte `offset`.
    pub fn read(&mut self, offset: u64, bufs: IoBuffers, token: u64) -> Result<(), BlockError> {
        let len = bufs.len() as u64;
        let (t, mut meta) = self.begin(token, OpKind::Read, offset, len);
        if let Some(errno) = self.check(offset, len, false) {
            self.finish_now(meta, Err(io::Error::from_raw_os_error(errno)));
            return Ok(());
        }
        if self.direct_needs_bounce(&bufs) {
            let buf = match AlignedBuf::new(bufs.len(), self.align) {
                Ok(b) => Arc::new(b),
                Err(_) => {
                    self.finish_now(meta, Err(io::Error::from_raw_os_error(libc::ENOMEM)));
                    return Ok(());
                }
            };
            self.engine
                .read_vectored(offset, IoBuffers::from_aligned(buf.clone()), t)?;
            meta.bounce = Some(Bounce {
                buf,
                dest: Some(bufs),
            });
        } else {
            self.engine.read_vectored(offset, bufs, t)?;
        }
        self.ops.insert(t, meta);
        Ok(())
    }

    /// Writes `bufs` at byte `offset`.
    pub fn write(&mut self, offset: u64, bufs: IoBuffers, token: u64) -> Result<(), BlockError> {
        let len = bufs.len() as u64;
        let (t, mut meta) = self.begin(token, OpKind::Write, offset, len);
        if let Some(errno) = self.check(offset, len, true) {
            self.finish_now(meta, Err(io::Error::from_raw_os_error(errno)));
            return Ok(());
        }
        if self.direct_needs_bounce(&bufs) {
            let buf = match AlignedBuf::new(bufs.len(), self.align) {
                Ok(b) => Arc::new(b),
                Err(_) => {
                    self.finish_now(meta, Err(io::Error::from_raw_os_error(libc::ENOMEM)));
                    return Ok(());
                }
            };
            bufs.gather_into(&buf);
            self.engine
                .write_vectored(offset, IoBuffers::from_aligned(buf.clone()), t)?;
            meta.bounce = Some(Bounce { buf, dest: None });
        } else {
            self.engine.write_vectored(offset, bufs, t)?;
        }
        self.ops.insert(t, meta);
        Ok(())
    }

    /// Makes completed writes durable (a no-op with cache=unsafe or a read-only image).
    pub fn flush(&mut self, token: u64) -> Result<(), BlockError> {
        let (t, meta) = self.begin(token, OpKind::Flush, 0, 0);
        if self.cache.ignores_flush() || self.read_only {
            self.finish_now(meta, Ok(0));
            return Ok(());
        }
        self.engine.flush(t)?;
        self.ops.insert(t, meta);
        Ok(())
    }

    /// Discards `len` bytes at `offset`: punches a hole with discard=unmap, does nothing
    /// with discard=ignore. A file system that cannot punch holes is not an error.
    pub fn discard(&mut self, offset: u64, len: u64, token: u64) -> Result<(), BlockError> {
        let (t, meta) = self.begin(token, OpKind::Discard, offset, len);
        if let Some(errno) = self.check_unaligned_ok(offset, len, true) {
            self.finish_now(meta, Err(io::Error::from_raw_os_error(errno)));
            return Ok(());
        }
        if self.discard == DiscardMode::Ignore || len == 0 {
            self.finish_now(meta, Ok(0));
            return Ok(());
        }
        self.engine.discard(offset, len, t)?;
        self.ops.insert(t, meta);
        Ok(())
    }

    /// Zeroes `len` bytes at `offset`. With `may_unmap` and discard=unmap the range is
    /// deallocated (it reads back as zeroes either way).
    pub fn write_zeroes(
        &mut self,
        offset: u64,
        len: u64,
        may_unmap: bool,
        token: u64,
    ) -> Result<(), BlockError> {
        let (t, mut meta) = self.begin(token, OpKind::Write, offset, len);
        if let Some(errno) = self.check_unaligned_ok(offset, len, true) {
            self.finish_now(meta, Err(io::Error::from_raw_os_error(errno)));
            return Ok(());
        }
        if len == 0 {
            self.finish_now(meta, Ok(0));
            return Ok(());
        }
        if may_unmap && self.discard == DiscardMode::Unmap {
            meta.punched_zeroes = true;
            self.engine.discard(offset, len, t)?;
        } else {
            self.engine.write_zeroes(offset, len, t)?;
        }
        self.ops.insert(t, meta);
        Ok(())
    }

    /// Range checks for fallocate-based operations, which O_DIRECT does not constrain.
    fn check_unaligned_ok(&mut self, offset: u64, len: u64, write: bool) -> Option<i32> {
        if write && self.read_only {
            return Some(libc::EROFS);
        }
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Some(libc::EINVAL);
        }
        None
    }

    /// Hands queued operations to the engine (call after a batch of submissions).
    pub fn submit(&mut self) -> Result<(), BlockError> {
        self.engine.submit()
    }

    /// The next finished operation with the caller's token. Call until `None` after the
    /// completion fd fires.
    pub fn next_completion(&mut self) -> Option<Completion> {
        loop {
            if let Some(c) = self.ready.pop_front() {
                return Some(c);
            }
            let (t, result) = self.engine.next_completion()?;
            let Some(mut meta) = self.ops.remove(&t) else {
                log::warn!(
                    "{}: completion for unknown operation {t}",
                    self.path.display()
                );
                continue;
            };
            let unsupported = result
                .as_ref()
                .err()
                .and_then(io::Error::raw_os_error)
                .is_some_and(fallocate_unsupported);
            if meta.punched_zeroes && unsupported {
                // No hole punching here: zero the range the ordinary way.
                meta.punched_zeroes = false;
                let resubmitted = self
                    .engine
                    .write_zeroes(meta.offset, meta.bytes, t)
                    .and_then(|()| self.engine.submit());
                match resubmitted {
                    Ok(()) => {
                        self.ops.insert(t, meta);
                        continue;
                    }
                    Err(e) => log::warn!("{}: {e}", self.path.display()),
                }
            }
            let result = if meta.kind == OpKind::Discard && unsupported {
                if !self.warned_no_discard {
                    self.warned_no_discard = true;
                    log::info!(
                        "{}: the file system cannot punch holes; discards do nothing",
                        self.path.display()
                    );
                }
                Ok(0)
            } else {
                result
            };
            if let (Some(b), Ok(_)) = (&meta.bounce, &result) {
                if let Some(dest) = &b.dest {
                    dest.scatter_from(&b.buf);
                }
            }
            self.account(&meta, &result);
            return Some((meta.user, result));
        }
    }

    /// Blocks until every submitted operation has finished (device reset, shutdown); the
    /// completions stay queued for `next_completion`.
    pub fn drain(&mut self) -> Result<(), BlockError> {
        self.engine.wait_idle()
    }
}

/// The O_DIRECT alignment `file` needs: the logical block size of a block device, else
/// the smallest size a direct read at offset 0 into memory aligned to just that size
/// accepts; 4096 when that cannot be told.
fn direct_alignment(file: &File) -> usize {
    let fd = file.as_raw_fd();
    if file
        .metadata()
        .is_ok_and(|m| m.file_type().is_block_device())
    {
        let mut sz: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int to the pointer.
        if unsafe { libc::ioctl(fd, libc::BLKSSZGET, &mut sz) } == 0 && sz > 0 {
            return sz as usize;
        }
        return 4096;
    }
    // An empty file reads 0 bytes whatever the alignment: nothing to learn.
    if file.metadata().is_ok_and(|m| m.len() < 4096) {
        return 4096;
    }
    let Ok(buf) = AlignedBuf::new(2 * 4096, 4096) else {
        return 4096;
    };
    for align in [512usize, 1024, 2048, 4096] {
        // `base + align` is aligned to `align` and (below 4096) to nothing larger.
        // SAFETY: align + align <= 8192, inside the buffer.
        let ptr = unsafe { buf.as_ptr().add(align) };
        // SAFETY: reads at most `align` bytes into the buffer at `ptr`.
        let r = unsafe { libc::pread(fd, ptr.cast(), align, 0) };
        if r >= 0 {
            return align;
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            break;
        }
    }
    4096
}

/// A serial derived from the image's absolute path: stable across runs and migrations
/// that keep the path, at most 20 bytes (what GET_ID returns).
fn default_serial(path: &Path) -> String {
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    // FNV-1a: small, stable across Rust versions (unlike DefaultHasher).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in abs.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("KS{h:016x}")
}

#[cfg(test)]
mod tests {
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
}
