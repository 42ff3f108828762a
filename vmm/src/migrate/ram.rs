//! Guest RAM as the migration stream reads and writes it ([`migration::protocol::GuestRam`]),
//! straight between the guest's mapping and the transport: no page is staged in a
//! buffer on either side.
//!
//! Pages are read while vCPUs and devices may write them (precopy): the stream may
//! carry a torn page, which is harmless because a page written during a pass is in the
//! dirty log and is sent again, last in the final pass with everything stopped. These
//! reads and writes bypass vm-memory's bitmap on purpose: they are migration's own, not
//! the guest's.

use std::io::{self, Read, Write};

use devices::GuestMemoryMmap;
use migration::protocol::GuestRam;
use vm_memory::{
    Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
};

/// How much guest memory is copied out at a time.
const COPY_CHUNK: usize = 64 << 10;

/// A guest's memory as the stream's RAM.
pub struct MemRam<'a>(pub &'a GuestMemoryMmap);

impl MemRam<'_> {
    /// The host address of `len` bytes at `gpa`, all in one region.
    fn host(&self, gpa: u64, len: u64) -> io::Result<*mut u8> {
        let r = self
            .0
            .find_region(GuestAddress(gpa))
            .ok_or_else(|| io::Error::other(format!("{gpa:#x} is not guest RAM")))?;
        let off = gpa - r.start_addr().raw_value();
        if off.checked_add(len).is_none_or(|end| end > r.len()) {
            return Err(io::Error::other(format!(
                "{len} bytes at {gpa:#x} run past guest RAM"
            )));
        }
        r.get_host_address(MemoryRegionAddress(off))
            .map_err(|e| io::Error::other(e.to_string()))
    }
}

fn usize_len(len: u64) -> io::Result<usize> {
    usize::try_from(len).map_err(|_| io::Error::other("length too large"))
}

impl GuestRam for MemRam<'_> {
    fn is_zero(&self, gpa: u64, len: u64) -> io::Result<bool> {
        let p = self.host(gpa, len)?;
        let n = usize_len(len)?;
        // SAFETY: `host` checked that the n bytes lie in one mapped region of guest
        // memory, which outlives `self`. The guest may write them meanwhile: a torn
        // read only misjudges a page that the dirty log will have sent again.
        let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, n) };
        let (head, words, tail) =
            // SAFETY: reinterpreting initialized bytes as u64 words is valid for any value.
            unsafe { bytes.align_to::<u64>() };
        Ok(head.iter().all(|&b| b == 0)
            && words.iter().all(|&w| w == 0)
            && tail.iter().all(|&b| b == 0))
    }

    fn read_into(&self, gpa: u64, len: u64, w: &mut dyn Write) -> io::Result<()> {
        let p = self.host(gpa, len)?;
        // SAFETY: as in `is_zero`: mapped guest memory that outlives this call.
        let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, usize_len(len)?) };
        // Each byte is read from guest memory once, into a copy that is both written
        // and checksummed: a guest writing the page meanwhile cannot make the two
        // disagree (the page is dirty and goes again anyway).
        let mut copy = [0u8; COPY_CHUNK];
        for chunk in bytes.chunks(COPY_CHUNK) {
            let c = &mut copy[..chunk.len()];
            c.copy_from_slice(chunk);
            w.write_all(c)?;
        }
        Ok(())
    }

    fn write_from(&self, gpa: u64, len: u64, r: &mut dyn Read) -> io::Result<()> {
        let p = self.host(gpa, len)?;
        // SAFETY: mapped guest memory checked by `host`; on the destination no vCPU
        // runs and no device is active while the stream is loaded.
        let bytes = unsafe { std::slice::from_raw_parts_mut(p, usize_len(len)?) };
        r.read_exact(bytes)
    }

    fn zero(&self, gpa: u64, len: u64) -> io::Result<()> {
        let p = self.host(gpa, len)?;
        let n = usize_len(len)?;
        // SAFETY: as in `write_from`. A page already zero is left untouched, so a
        // fresh destination's untouched memory is not faulted in.
        let bytes = unsafe { std::slice::from_raw_parts_mut(p, n) };
        if !self.is_zero(gpa, len)? {
            bytes.fill(0);
        }
        Ok(())
    }

    fn contains(&self, gpa: u64, len: u64) -> bool {
        self.host(gpa, len).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn pages_go_out_and_come_back_through_the_mapping() {
        let mem = crate::memory::RamBacking::anonymous(1 << 20)
            .map(&[(GuestAddress(0), 1 << 20)])
            .unwrap();
        let ram = MemRam(&mem);
        assert!(ram.is_zero(0x1000, 4096).unwrap());
        mem.write_obj(0xabu8, GuestAddress(0x1fff)).unwrap();
        assert!(!ram.is_zero(0x1000, 4096).unwrap());
        let mut out = Vec::new();
        ram.read_into(0x1000, 4096, &mut out).unwrap();
        assert_eq!(out[0xfff], 0xab);
        ram.write_from(0x3000, 4096, &mut &out[..]).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x3fff)).unwrap(), 0xab);
        ram.zero(0x3000, 4096).unwrap();
        assert!(ram.is_zero(0x3000, 4096).unwrap());
        assert!(ram.contains(0xff000, 4096));
        assert!(!ram.contains(0xff000, 8192), "past the end");
        assert!(ram.read_into(0x10_0000, 4096, &mut out).is_err());
    }
}
