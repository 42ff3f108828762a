//! The page queues: inflate and deflate (le32 page numbers) and free page reporting
//! (ranges), and the discarding of the guest memory they name.
//!
//! Invariant: only pages wholly inside guest memory are counted or discarded; a
//! malformed buffer is returned to the guest and never reaches host memory outside
//! the guest's.

use std::io::Read;
use std::sync::OnceLock;

use crate::GuestMemoryMmap;
use virtio_queue::{QueueT, Reader};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::{queue_of, VirtioBalloon, BALLOON_PAGE_SIZE, VIRTIO_BALLOON_PFN_SHIFT};
use crate::virtio::queue_util::{pop, queue_err, signal};
use crate::virtio::DeviceError;

/// Page numbers are read from a buffer this many bytes at a time.
pub(super) const PFN_CHUNK: usize = 1024;

impl VirtioBalloon {
    pub(super) fn note_discard_error(&mut self, e: std::io::Error) {
        if !self.warned_discard {
            self.warned_discard = true;
            log::warn!("virtio-balloon: cannot give guest memory back to the host: {e}");
        }
    }

    /// Inflate (`inflate`) or deflate queue: buffers of le32 page numbers.
    pub(super) fn process_pfns(&mut self, index: usize, inflate: bool) -> Result<(), DeviceError> {
        let Some((mem, interrupt, q)) = queue_of(&mut self.active, index) else {
            return Ok(());
        };
        let mut used = false;
        let mut pages = 0u64;
        let mut error = None;
        while let Some(chain) = pop(q, mem)? {
            used = true;
            let head = chain.head_index();
            match Reader::new(mem, chain) {
                Ok(mut r) => {
                    let (n, e) = apply_pfns(mem, &mut r, inflate);
                    pages += n;
                    error = error.or(e);
                }
                Err(e) => log::debug!("virtio-balloon: malformed page list: {e}"),
            }
            q.add_used(mem, head, 0).map_err(queue_err)?;
        }
        if used {
            signal(q, mem, interrupt.as_ref(), index)?;
        }
        if inflate {
            self.inflated_pages = self.inflated_pages.saturating_add(pages);
        } else {
            self.inflated_pages = self.inflated_pages.saturating_sub(pages);
        }
        if let Some(e) = error {
            self.note_discard_error(e);
        }
        Ok(())
    }

    /// Free page reports: every descriptor is a range of free guest memory.
    pub(super) fn process_reports(&mut self, index: usize) -> Result<(), DeviceError> {
        let Some((mem, interrupt, q)) = queue_of(&mut self.active, index) else {
            return Ok(());
        };
        let mut used = false;
        let mut bytes = 0u64;
        let mut error = None;
        while let Some(chain) = pop(q, mem)? {
            used = true;
            let head = chain.head_index();
            // Linux offers the ranges device-writable, the spec does not say: either
            // direction is taken, the device never reads or writes their contents.
            for desc in chain {
                let start = desc.addr().0;
                let Some(end) = start.checked_add(u64::from(desc.len())) else {
                    continue;
                };
                let Some(start) = start.checked_next_multiple_of(BALLOON_PAGE_SIZE) else {
                    continue;
                };
                let end = end & !(BALLOON_PAGE_SIZE - 1);
                if start < end {
                    let (n, e) = discard_range(mem, start, end);
                    bytes += n;
                    error = error.or(e);
                }
            }
            q.add_used(mem, head, 0).map_err(queue_err)?;
        }
        if used {
            signal(q, mem, interrupt.as_ref(), index)?;
        }
        self.reported_bytes = self.reported_bytes.saturating_add(bytes);
        if let Some(e) = error {
            self.note_discard_error(e);
        }
        Ok(())
    }
}

/// Reads le32 page numbers from `r` (a trailing partial one is ignored); discards the
/// pages when inflating. Returns how many pages were inside guest memory and the first
/// discard error.
pub(super) fn apply_pfns(
    mem: &GuestMemoryMmap,
    r: &mut Reader<'_, crate::GuestBitmapSlice<'_>>,
    inflate: bool,
) -> (u64, Option<std::io::Error>) {
    let mut buf = [0u8; PFN_CHUNK];
    let mut pages = 0u64;
    let mut error = None;
    // Contiguous pages are discarded with one call: [start, end).
    let mut run: Option<(u64, u64)> = None;
    let flush = |(start, end): (u64, u64), error: &mut Option<std::io::Error>| {
        let (_, e) = discard_range(mem, start, end);
        if error.is_none() {
            *error = e;
        }
    };
    loop {
        let n = r.available_bytes().min(PFN_CHUNK) / 4 * 4;
        if n == 0 || r.read_exact(&mut buf[..n]).is_err() {
            break;
        }
        for c in buf[..n].chunks_exact(4) {
            let pfn = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let gpa = u64::from(pfn) << VIRTIO_BALLOON_PFN_SHIFT;
            if !page_in_memory(mem, gpa) {
                log::debug!("virtio-balloon: page {pfn:#x} is not guest memory");
                continue;
            }
            pages += 1;
            if !inflate {
                continue;
            }
            run = match run {
                Some((start, end)) if end == gpa => Some((start, end + BALLOON_PAGE_SIZE)),
                other => {
                    if let Some(done) = other {
                        flush(done, &mut error);
                    }
                    Some((gpa, gpa + BALLOON_PAGE_SIZE))
                }
            };
        }
    }
    if let Some(done) = run {
        flush(done, &mut error);
    }
    (pages, error)
}

/// Whether the whole balloon page at `gpa` is inside one guest memory region.
pub(super) fn page_in_memory(mem: &GuestMemoryMmap, gpa: u64) -> bool {
    mem.find_region(GuestAddress(gpa))
        .is_some_and(|r| gpa + (BALLOON_PAGE_SIZE - 1) <= r.last_addr().0)
}

pub(super) fn host_page_size() -> usize {
    static SIZE: OnceLock<usize> = OnceLock::new();
    *SIZE.get_or_init(|| {
        // SAFETY: sysconf reads a system constant.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
    })
}

/// Gives the host pages of guest range [start, end) back (the parts inside guest
/// memory, whole host pages only). Returns the bytes discarded and the first error.
pub(super) fn discard_range(
    mem: &GuestMemoryMmap,
    start: u64,
    end: u64,
) -> (u64, Option<std::io::Error>) {
    let page = host_page_size();
    let mut done = 0u64;
    let mut error = None;
    for region in mem.iter() {
        let rs = region.start_addr().0;
        let re = rs.saturating_add(region.len());
        let (s, e) = (start.max(rs), end.min(re));
        if s >= e {
            continue;
        }
        let Ok(host) = mem.get_host_address(GuestAddress(s)) else {
            continue;
        };
        let Ok(len) = usize::try_from(e - s) else {
            continue;
        };
        let h = host as usize;
        let (Some(hs), Some(he)) = (h.checked_next_multiple_of(page), h.checked_add(len)) else {
            continue;
        };
        let he = he - he % page;
        if hs >= he {
            continue;
        }
        // SAFETY: [hs, he) lies inside this region's mapping (its host address plus a
        // length within the region). The guest gave these pages up; MADV_DONTNEED only
        // drops their contents, which the host reads and writes volatilely anyway.
        let r = unsafe { libc::madvise(hs as *mut libc::c_void, he - hs, libc::MADV_DONTNEED) };
        if r == 0 {
            done += (he - hs) as u64;
        } else if error.is_none() {
            error = Some(std::io::Error::last_os_error());
        }
    }
    (done, error)
}
