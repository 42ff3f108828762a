//! An opened raw image: the QEMU `-drive` options that concern the file (cache, discard,
//! aio, read-only, serial), the checks every request passes before it reaches the engine
//! (read-only, bounds, O_DIRECT alignment), bounce buffers for guest memory O_DIRECT cannot
//! use directly, and the statistics of query-blockstats.
//!
//! The caller's tokens are mapped to internal ones, so one caller token may cover several
//! operations and an operation can be resubmitted (write-zeroes falling back from a hole
//! punch) without the caller seeing it.
//!
//! The options themselves (`DiskConfig` and its modes) are in `config`; the tests are in
//! `tests`.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::engine::fallocate_unsupported;
use crate::{
    AlignedBuf, BlockError, Completion, IoBuffers, IoEngine, IoUringEngine, OpKind, StatsHandle,
    ThreadPoolEngine,
};

mod config;

pub use config::{AioMode, CacheMode, DiscardMode, DiskConfig, SECTOR_SIZE};

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
mod tests;
