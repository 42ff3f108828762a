//! The memory an I/O operation transfers to or from. An engine takes ownership of an
//! [`IoBuffers`] at submission and drops it only after the kernel is done with the memory,
//! so the iovecs stay valid however late the completion arrives: guest memory is kept
//! mapped by holding a clone of the `GuestMemoryMmap` (its regions are reference counted),
//! engine-owned buffers by an `Arc<AlignedBuf>`.

use std::alloc::Layout;
use std::any::Any;
use std::ptr::NonNull;
use std::sync::Arc;

use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

use crate::BlockError;

/// Keeps the memory behind the iovecs alive while the engine owns them.
type KeepAlive = Arc<dyn Any + Send + Sync>;

/// A scatter-gather list plus whatever keeps its memory alive.
pub struct IoBuffers {
    iovecs: Vec<libc::iovec>,
    /// Index of the first iovec not fully transferred yet (short transfers advance it).
    first: usize,
    /// Bytes not transferred yet.
    remaining: usize,
    _keep: Option<KeepAlive>,
    /// Run when the engine is done with the memory (see [`IoBuffers::from_guest`]).
    on_done: Option<Box<dyn FnOnce() + Send>>,
}

impl Drop for IoBuffers {
    fn drop(&mut self) {
        if let Some(f) = self.on_done.take() {
            f();
        }
    }
}

// SAFETY: the iovecs point into memory that `_keep` keeps alive (or that the creator of a
// `from_raw` list vouched for); nothing in `IoBuffers` is tied to the creating thread, and
// the kernel or a worker thread accessing it is the whole point.
unsafe impl Send for IoBuffers {}

impl std::fmt::Debug for IoBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoBuffers")
            .field("segments", &self.iovecs().len())
            .field("len", &self.remaining)
            .finish()
    }
}

impl IoBuffers {
    fn new(iovecs: Vec<libc::iovec>, keep: Option<KeepAlive>) -> Result<Self, BlockError> {
        let iovecs: Vec<libc::iovec> = iovecs.into_iter().filter(|v| v.iov_len > 0).collect();
        let mut remaining = 0usize;
        for v in &iovecs {
            remaining = remaining
                .checked_add(v.iov_len)
                .ok_or_else(|| BlockError::Buffer("total length overflows".into()))?;
        }
        // Completions report the byte count as u32, and a virtio chain is shorter anyway.
        if remaining > u32::MAX as usize {
            return Err(BlockError::Buffer(format!(
                "{remaining} bytes in one request; at most {} are allowed",
                u32::MAX
            )));
        }
        Ok(IoBuffers {
            iovecs,
            first: 0,
            remaining,
            _keep: keep,
            on_done: None,
        })
    }

    /// Buffers in guest memory: each `(address, length)` range is resolved through the
    /// guest memory map (a range may span regions). Fails, touching nothing, if any byte
    /// is outside guest memory. The `Arc` is kept, so the mapping outlives the I/O.
    ///
    /// `fills_guest` says the I/O writes these buffers (a read from the disk): the kernel
    /// writes them through the iovecs, behind guest memory's dirty bitmap, so the pages
    /// are marked dirty for migration to send them again: here, before the I/O, and again
    /// when the buffers are dropped, after it. A migration pass that read and cleared the
    /// bitmap while the I/O was in flight would otherwise have sent the old bytes and
    /// never learn of the new ones.
    pub fn from_guest<B: Bitmap + Send + Sync + 'static>(
        mem: &Arc<GuestMemoryMmap<B>>,
        ranges: &[(GuestAddress, u32)],
        fills_guest: bool,
    ) -> Result<Self, BlockError> {
        let mut iovecs = Vec::with_capacity(ranges.len());
        for &(addr, len) in ranges {
            let mut covered = 0usize;
            for slice in GuestMemoryBackend::get_slices(&**mem, addr, len as usize) {
                let slice = slice.map_err(|e| {
                    BlockError::Buffer(format!(
                        "guest range {:#x}+{len:#x} is not in guest memory: {e}",
                        addr.0
                    ))
                })?;
                covered += slice.len();
                if fills_guest {
                    slice.bitmap().mark_dirty(0, slice.len());
                }
                iovecs.push(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                });
            }
            if covered != len as usize {
                return Err(BlockError::Buffer(format!(
                    "guest range {:#x}+{len:#x} is not in guest memory",
                    addr.0
                )));
            }
        }
        let keep: KeepAlive = mem.clone();
        let mut b = Self::new(iovecs, Some(keep))?;
        if fills_guest {
            let mem = mem.clone();
            let ranges = ranges.to_vec();
            b.on_done = Some(Box::new(move || {
                for (addr, len) in ranges {
                    for slice in GuestMemoryBackend::get_slices(&*mem, addr, len as usize).flatten()
                    {
                        slice.bitmap().mark_dirty(0, slice.len());
                    }
                }
            }));
        }
        Ok(b)
    }

    /// The whole of an aligned buffer, as one segment.
    pub fn from_aligned(buf: Arc<AlignedBuf>) -> Self {
        let iovecs = vec![libc::iovec {
            iov_base: buf.as_ptr().cast(),
            iov_len: buf.len(),
        }];
        let remaining = buf.len();
        IoBuffers {
            iovecs,
            first: 0,
            remaining,
            _keep: Some(buf),
            on_done: None,
        }
    }

    /// Several `(offset, length)` pieces of one aligned buffer, in order, as segments.
    pub fn from_aligned_pieces(
        buf: Arc<AlignedBuf>,
        pieces: &[(usize, usize)],
    ) -> Result<Self, BlockError> {
        let mut iovecs = Vec::with_capacity(pieces.len());
        for &(off, len) in pieces {
            off.checked_add(len)
                .filter(|&end| end <= buf.len())
                .ok_or_else(|| {
                    BlockError::Buffer(format!(
                        "piece {off}+{len} is outside the {}-byte buffer",
                        buf.len()
                    ))
                })?;
            iovecs.push(libc::iovec {
                // SAFETY: off + len <= buf.len(), checked above.
                iov_base: unsafe { buf.as_ptr().add(off) }.cast(),
                iov_len: len,
            });
        }
        Self::new(iovecs, Some(buf))
    }

    /// Buffers from raw iovecs.
    ///
    /// # Safety
    /// Every iovec must describe memory valid for reads and writes of its length until the
    /// engine reports the operation's completion (or is dropped, which waits for it), with
    /// `keep` (if any) being what keeps it so.
    pub unsafe fn from_raw(
        iovecs: Vec<libc::iovec>,
        keep: Option<Arc<dyn Any + Send + Sync>>,
    ) -> Result<Self, BlockError> {
        Self::new(iovecs, keep)
    }

    /// Bytes still to transfer.
    pub fn len(&self) -> usize {
        self.remaining
    }

    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }

    /// The segments still to transfer.
    pub fn iovecs(&self) -> &[libc::iovec] {
        &self.iovecs[self.first..]
    }

    /// Whether every remaining segment starts at and spans a multiple of `align`.
    pub fn is_aligned(&self, align: usize) -> bool {
        align <= 1
            || self
                .iovecs()
                .iter()
                .all(|v| (v.iov_base as usize) % align == 0 && v.iov_len % align == 0)
    }

    /// Marks `n` more bytes as transferred after a short read or write.
    pub(crate) fn advance(&mut self, mut n: usize) {
        n = n.min(self.remaining);
        self.remaining -= n;
        while n > 0 && self.first < self.iovecs.len() {
            let v = &mut self.iovecs[self.first];
            if n >= v.iov_len {
                n -= v.iov_len;
                self.first += 1;
            } else {
                // SAFETY: n < iov_len, so the new base stays inside the segment.
                v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
                v.iov_len -= n;
                n = 0;
            }
        }
    }

    /// Each remaining segment as a volatile slice.
    fn slices(&self) -> impl Iterator<Item = VolatileSlice<'_>> {
        self.iovecs().iter().map(|v| {
            // SAFETY: the iovec is valid memory for as long as `self` lives (type invariant).
            unsafe { VolatileSlice::new(v.iov_base.cast(), v.iov_len) }
        })
    }

    /// Zeroes the remaining bytes (a read that hit the end of the file).
    pub(crate) fn zero_fill(&mut self) {
        for s in self.slices() {
            let mut off = 0;
            while off < s.len() {
                let n = (s.len() - off).min(ZEROES.len());
                if let Ok(sub) = s.subslice(off, n) {
                    sub.copy_from(&ZEROES[..n]);
                }
                off += n;
            }
        }
        let rest = self.remaining;
        self.advance(rest);
    }

    /// Copies the remaining bytes into `dst` (gathering for a bounce write).
    pub(crate) fn gather_into(&self, dst: &AlignedBuf) {
        let mut off = 0;
        let whole = dst.volatile();
        for s in self.slices() {
            if let Ok(d) = whole.subslice(off, s.len().min(whole.len().saturating_sub(off))) {
                s.copy_to_volatile_slice(d);
            }
            off += s.len();
        }
    }

    /// Copies `src` into the remaining bytes (scattering after a bounce read).
    pub(crate) fn scatter_from(&self, src: &AlignedBuf) {
        let mut off = 0;
        let whole = src.volatile();
        for s in self.slices() {
            if let Ok(from) = whole.subslice(off, s.len().min(whole.len().saturating_sub(off))) {
                from.copy_to_volatile_slice(s);
            }
            off += s.len();
        }
    }
}

static ZEROES: [u8; 4096] = [0; 4096];

/// A heap buffer with a chosen alignment (O_DIRECT needs one), zeroed at allocation.
/// Accessed through volatile copies, since an engine may be transferring into it.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
    len: usize,
}

// SAFETY: the buffer is plain heap memory owned by this value; all access goes through
// volatile copies or the kernel, so sharing it between threads is as safe as guest memory.
unsafe impl Send for AlignedBuf {}
// SAFETY: as above.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes aligned to `align` (a power of two).
    pub fn new(len: usize, align: usize) -> Result<Self, BlockError> {
        let err = || BlockError::Alloc { len, align };
        let layout = Layout::from_size_align(len.max(1), align.max(1)).map_err(|_| err())?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(err)?;
        Ok(AlignedBuf { ptr, layout, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn volatile(&self) -> VolatileSlice<'_> {
        // SAFETY: the allocation is `len` bytes and lives as long as `self`.
        unsafe { VolatileSlice::new(self.ptr.as_ptr(), self.len) }
    }

    /// Copies bytes out, starting at `offset`; returns how many were copied.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> usize {
        match self.volatile().offset(offset) {
            Ok(s) => s.copy_to(dst),
            Err(_) => 0,
        }
    }

    /// Copies bytes in, starting at `offset`; returns how many were copied.
    pub fn write_at(&self, offset: usize, src: &[u8]) -> usize {
        match self.volatile().offset(offset) {
            Ok(s) => {
                let n = s.len().min(src.len());
                s.copy_from(&src[..n]);
                n
            }
            Err(_) => 0,
        }
    }

    /// The contents, copied out.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len];
        self.read_at(0, &mut v);
        v
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_splits_and_skips_segments() {
        let buf = Arc::new(AlignedBuf::new(64, 8).unwrap());
        let mut b = IoBuffers::from_aligned_pieces(buf, &[(0, 10), (16, 0), (20, 30)]).unwrap();
        assert_eq!(b.iovecs().len(), 2, "empty pieces are dropped");
        assert_eq!(b.len(), 40);
        b.advance(4);
        assert_eq!(b.iovecs()[0].iov_len, 6);
        b.advance(6);
        assert_eq!(b.iovecs().len(), 1);
        assert_eq!(b.len(), 30);
        b.advance(100);
        assert!(b.is_empty());
        assert!(b.iovecs().is_empty());
    }

    #[test]
    fn pieces_outside_the_buffer_are_refused() {
        let buf = Arc::new(AlignedBuf::new(64, 8).unwrap());
        assert!(IoBuffers::from_aligned_pieces(buf.clone(), &[(60, 8)]).is_err());
        assert!(IoBuffers::from_aligned_pieces(buf, &[(usize::MAX, 2)]).is_err());
    }

    #[test]
    fn guest_ranges_outside_memory_are_refused() {
        let mem = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[
                (GuestAddress(0), 0x1000),
                (GuestAddress(0x1000), 0x1000),
            ])
            .unwrap(),
        );
        // Spanning two adjacent regions is fine.
        let b = IoBuffers::from_guest(&mem, &[(GuestAddress(0xf00), 0x200)], false).unwrap();
        assert_eq!(b.len(), 0x200);
        assert_eq!(b.iovecs().len(), 2);
        assert!(IoBuffers::from_guest(&mem, &[(GuestAddress(0x1f00), 0x200)], false).is_err());
        assert!(IoBuffers::from_guest(&mem, &[(GuestAddress(u64::MAX), 2)], false).is_err());
    }

    #[test]
    fn buffers_the_disk_fills_are_marked_dirty_for_migration() {
        use vm_memory::bitmap::AtomicBitmap;
        let mem = Arc::new(
            GuestMemoryMmap::<AtomicBitmap>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap(),
        );
        let region = mem.iter().next().unwrap();
        // A write to the disk only reads guest memory: nothing becomes dirty.
        IoBuffers::from_guest(&mem, &[(GuestAddress(0x3000), 0x2000)], false).unwrap();
        assert_eq!(std::ops::Deref::deref(region).bitmap().get_and_reset(), [0]);
        // A read from the disk fills pages 3 and 4 (and a byte of page 9).
        IoBuffers::from_guest(
            &mem,
            &[(GuestAddress(0x3000), 0x2000), (GuestAddress(0x9ff0), 1)],
            true,
        )
        .unwrap();
        assert_eq!(
            std::ops::Deref::deref(region).bitmap().get_and_reset(),
            [0b10_0001_1000]
        );
        // A migration pass reads and clears the bitmap while the read is in flight; the
        // pages are dirty again once the engine is done with them (drops the buffers).
        let inflight =
            IoBuffers::from_guest(&mem, &[(GuestAddress(0x5000), 0x1000)], true).unwrap();
        assert_eq!(
            std::ops::Deref::deref(region).bitmap().get_and_reset(),
            [1 << 5]
        );
        drop(inflight);
        assert_eq!(
            std::ops::Deref::deref(region).bitmap().get_and_reset(),
            [1 << 5]
        );
    }

    #[test]
    fn gather_scatter_and_zero_fill() {
        let src = Arc::new(AlignedBuf::new(16, 8).unwrap());
        src.write_at(0, b"0123456789abcdef");
        let b = IoBuffers::from_aligned_pieces(src.clone(), &[(2, 3), (10, 4)]).unwrap();
        let bounce = AlignedBuf::new(7, 512).unwrap();
        b.gather_into(&bounce);
        assert_eq!(bounce.to_vec(), b"234abcd");
        bounce.write_at(0, b"XYZWVUT");
        b.scatter_from(&bounce);
        assert_eq!(src.to_vec(), b"01XYZ56789WVUTef");
        let mut b = b;
        b.advance(1);
        b.zero_fill();
        assert_eq!(src.to_vec(), b"01X\x00\x0056789\x00\x00\x00\x00ef");
    }
}
