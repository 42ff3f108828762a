//! Request parsing: turns one descriptor chain into a [`ReqOp`] (or a status to write
//! at once), treating the chain as two byte streams, device-readable then
//! device-writable, with no framing assumed.
//!
//! Invariant: parsing only reads guest memory through checked ranges (and writes the
//! GET_ID data); every guest address it returns was checked to lie in guest memory.
//! Nothing a guest puts in a chain panics here.

use crate::GuestMemoryMmap;
use block::{OpKind, SECTOR_SIZE};
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::config::{
    MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SEG,
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES,
};

use super::errors::IoOperation;
use super::{
    VirtioBlock, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};

const HEADER_LEN: usize = 16;
const SEGMENT_LEN: usize = 16;

#[derive(Debug, Clone)]
pub(super) enum ReqOp {
    Read {
        offset: u64,
        data: GuestRanges,
        len: u32,
    },
    Write {
        offset: u64,
        data: GuestRanges,
    },
    Flush,
    /// (byte offset, byte length) per segment.
    Discard(Vec<(u64, u64)>),
    WriteZeroes(Vec<(u64, u64, bool)>),
}

impl ReqOp {
    pub(super) fn operation(&self) -> IoOperation {
        match self {
            ReqOp::Read { .. } => IoOperation::Read,
            _ => IoOperation::Write,
        }
    }
}

/// The outcome of parsing a chain.
pub(super) enum Parsed {
    /// No status byte can be written: give the chain back untouched.
    Drop(&'static str),
    /// Finished without the image: `status`, after `written` bytes of data.
    Done {
        status: GuestAddress,
        value: u8,
        written: u32,
        invalid: Option<OpKind>,
        why: Option<String>,
    },
    Submit(GuestAddress, ReqOp),
}

/// What parsing needs to know about the device.
pub(super) struct Limits {
    capacity: u64,
    read_only: bool,
    discard: bool,
    write_zeroes: bool,
    serial: [u8; VIRTIO_BLK_ID_BYTES],
}

impl VirtioBlock {
    pub(super) fn limits(&self) -> Limits {
        let mut serial = [0u8; VIRTIO_BLK_ID_BYTES];
        let s = self.disk.serial().as_bytes();
        let n = s.len().min(VIRTIO_BLK_ID_BYTES);
        serial[..n].copy_from_slice(&s[..n]);
        Limits {
            capacity: self.capacity(),
            read_only: self.disk.read_only(),
            discard: self.acked_features & VIRTIO_BLK_F_DISCARD != 0,
            write_zeroes: self.acked_features & VIRTIO_BLK_F_WRITE_ZEROES != 0,
            serial,
        }
    }
}

/// A byte stream in guest memory, as (address, length) pieces.
type GuestRanges = Vec<(GuestAddress, u32)>;

/// Splits a byte stream given as ranges at `at` bytes.
fn split_ranges(ranges: &[(GuestAddress, u32)], at: usize) -> (GuestRanges, GuestRanges) {
    let mut head = Vec::new();
    let mut tail = Vec::new();
    let mut left = at;
    for &(addr, len) in ranges {
        if left == 0 {
            tail.push((addr, len));
        } else if (len as usize) <= left {
            head.push((addr, len));
            left -= len as usize;
        } else {
            head.push((addr, left as u32));
            tail.push((addr.unchecked_add(left as u64), len - left as u32));
            left = 0;
        }
    }
    (head, tail)
}

fn total_len(ranges: &[(GuestAddress, u32)]) -> u64 {
    ranges.iter().map(|&(_, l)| u64::from(l)).sum()
}

/// Reads a stream of ranges into `out` (exactly its length).
fn read_ranges(
    mem: &GuestMemoryMmap,
    ranges: &[(GuestAddress, u32)],
    out: &mut [u8],
) -> Result<(), String> {
    let mut off = 0;
    for &(addr, len) in ranges {
        if off >= out.len() {
            break;
        }
        let n = (len as usize).min(out.len() - off);
        mem.read_slice(&mut out[off..off + n], addr)
            .map_err(|e| format!("cannot read {n} bytes at {:#x}: {e}", addr.0))?;
        off += n;
    }
    Ok(())
}

/// Writes `data` across a stream of ranges; returns the bytes written.
fn write_ranges(
    mem: &GuestMemoryMmap,
    ranges: &[(GuestAddress, u32)],
    data: &[u8],
) -> Result<u32, String> {
    let mut off = 0;
    for &(addr, len) in ranges {
        if off >= data.len() {
            break;
        }
        let n = (len as usize).min(data.len() - off);
        mem.write_slice(&data[off..off + n], addr)
            .map_err(|e| format!("cannot write {n} bytes at {:#x}: {e}", addr.0))?;
        off += n;
    }
    Ok(off as u32)
}

/// Byte range of `sectors` sectors at `sector`, if inside a disk of `capacity` sectors.
fn sector_range(sector: u64, bytes: u64, capacity: u64) -> Option<u64> {
    let offset = sector.checked_mul(SECTOR_SIZE)?;
    let end = offset.checked_add(bytes)?;
    (end <= capacity.checked_mul(SECTOR_SIZE)?).then_some(offset)
}

/// Turns a descriptor chain into what to do with it.
pub(super) fn parse(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    lim: &Limits,
) -> Parsed {
    let mut descs = Vec::new();
    let mut truncated = false;
    for d in chain {
        truncated = d.has_next();
        descs.push(d);
    }
    // virtio-queue stops at a loop (after queue-size descriptors), at a next index past
    // the table, at an unreadable descriptor or a bad indirect table: in each case the
    // last descriptor it gave still says NEXT.
    let Some(last) = descs.last() else {
        return Parsed::Drop("empty or unreadable descriptor chain");
    };
    if truncated {
        return Parsed::Drop("descriptor chain loops or points outside its table");
    }
    if !last.is_write_only() || last.len() == 0 {
        return Parsed::Drop("the chain does not end with a device-writable status byte");
    }
    let Some(status) = last.addr().checked_add(u64::from(last.len()) - 1) else {
        return Parsed::Drop("status byte address overflows");
    };
    if !GuestMemoryBackend::address_in_range(mem, status) {
        return Parsed::Drop("status byte outside guest memory");
    }
    let ioerr = |why: String, invalid: Option<OpKind>| Parsed::Done {
        status,
        value: VIRTIO_BLK_S_IOERR,
        written: 0,
        invalid,
        why: Some(why),
    };

    // Readable bytes, then writable bytes (minus the status byte).
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    let n = descs.len();
    let mut seen_writable = false;
    for (i, d) in descs.iter().enumerate() {
        let len = if i + 1 == n { d.len() - 1 } else { d.len() };
        if d.is_write_only() {
            seen_writable = true;
            if len > 0 {
                writable.push((d.addr(), len));
            }
        } else if seen_writable {
            return ioerr(
                "a device-readable descriptor follows a device-writable one".into(),
                None,
            );
        } else if len > 0 {
            readable.push((d.addr(), len));
        }
    }

    let (hdr_ranges, rest) = split_ranges(&readable, HEADER_LEN);
    if total_len(&hdr_ranges) < HEADER_LEN as u64 {
        return ioerr("request header shorter than 16 bytes".into(), None);
    }
    let mut hdr = [0u8; HEADER_LEN];
    if let Err(e) = read_ranges(mem, &hdr_ranges, &mut hdr) {
        return ioerr(format!("request header: {e}"), None);
    }
    let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = hdr;
    let req_type = u32::from_le_bytes([t0, t1, t2, t3]);
    let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
    let rest_len = total_len(&rest);
    let writable_len = total_len(&writable);

    match req_type {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            let read = req_type == VIRTIO_BLK_T_IN;
            let kind = if read { OpKind::Read } else { OpKind::Write };
            let (data, wrong) = if read {
                (writable, rest_len)
            } else {
                (rest, writable_len)
            };
            if wrong != 0 {
                return ioerr(
                    format!("{wrong} data bytes in the wrong direction"),
                    Some(kind),
                );
            }
            if !read && lim.read_only {
                return ioerr("write to a read-only device".into(), Some(kind));
            }
            let len = total_len(&data);
            if len == 0 || len % SECTOR_SIZE != 0 || len > u64::from(u32::MAX) {
                return ioerr(
                    format!("data length {len} is not a positive multiple of 512"),
                    Some(kind),
                );
            }
            let Some(offset) = sector_range(sector, len, lim.capacity) else {
                return ioerr(
                    format!(
                        "sector {sector} + {} is past the end ({} sectors)",
                        len / SECTOR_SIZE,
                        lim.capacity
                    ),
                    Some(kind),
                );
            };
            let len = len as u32;
            let op = if read {
                ReqOp::Read { offset, data, len }
            } else {
                ReqOp::Write { offset, data }
            };
            Parsed::Submit(status, op)
        }
        VIRTIO_BLK_T_FLUSH => Parsed::Submit(status, ReqOp::Flush),
        VIRTIO_BLK_T_GET_ID => {
            if rest_len != 0 {
                return ioerr("GET_ID with device-readable data".into(), None);
            }
            if writable_len == 0 {
                return ioerr("GET_ID without room for the id".into(), None);
            }
            match write_ranges(mem, &writable, &lim.serial) {
                Ok(written) => Parsed::Done {
                    status,
                    value: VIRTIO_BLK_S_OK,
                    written,
                    invalid: None,
                    why: None,
                },
                Err(e) => ioerr(format!("GET_ID: {e}"), None),
            }
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let discard = req_type == VIRTIO_BLK_T_DISCARD;
            let kind = if discard {
                OpKind::Discard
            } else {
                OpKind::Write
            };
            let negotiated = if discard {
                lim.discard
            } else {
                lim.write_zeroes
            };
            let unsupp = Parsed::Done {
                status,
                value: VIRTIO_BLK_S_UNSUPP,
                written: 0,
                invalid: None,
                why: None,
            };
            if lim.read_only {
                return ioerr(
                    "discard or write-zeroes on a read-only device".into(),
                    Some(kind),
                );
            }
            if !negotiated {
                return unsupp;
            }
            if writable_len != 0 {
                return ioerr(
                    format!("{writable_len} data bytes in the wrong direction"),
                    Some(kind),
                );
            }
            let max_seg = if discard {
                MAX_DISCARD_SEG
            } else {
                MAX_WRITE_ZEROES_SEG
            };
            if rest_len == 0 || rest_len % SEGMENT_LEN as u64 != 0 {
                return ioerr(
                    format!("segment data of {rest_len} bytes, not a multiple of 16"),
                    Some(kind),
                );
            }
            let nseg = rest_len / SEGMENT_LEN as u64;
            if nseg > u64::from(max_seg) {
                return unsupp;
            }
            let mut raw = vec![0u8; rest_len as usize];
            if let Err(e) = read_ranges(mem, &rest, &mut raw) {
                return ioerr(format!("segments: {e}"), Some(kind));
            }
            let max_sectors = if discard {
                MAX_DISCARD_SECTORS
            } else {
                MAX_WRITE_ZEROES_SECTORS
            };
            let mut segs = Vec::with_capacity(nseg as usize);
            for seg in raw.chunks_exact(SEGMENT_LEN) {
                let mut b8 = [0u8; 8];
                let mut b4 = [0u8; 4];
                b8.copy_from_slice(&seg[0..8]);
                let seg_sector = u64::from_le_bytes(b8);
                b4.copy_from_slice(&seg[8..12]);
                let num = u32::from_le_bytes(b4);
                b4.copy_from_slice(&seg[12..16]);
                let flags = u32::from_le_bytes(b4);
                // Discard has no flags; write-zeroes only UNMAP.
                let allowed = if discard {
                    0
                } else {
                    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
                };
                if flags & !allowed != 0 {
                    return unsupp;
                }
                if num > max_sectors {
                    return ioerr(
                        format!("{num} sectors in one segment; at most {max_sectors}"),
                        Some(kind),
                    );
                }
                let bytes = u64::from(num) * SECTOR_SIZE;
                let Some(offset) = sector_range(seg_sector, bytes, lim.capacity) else {
                    return ioerr(
                        format!("segment at sector {seg_sector} + {num} is past the end"),
                        Some(kind),
                    );
                };
                // An empty segment asks for nothing (fallocate would refuse it).
                if bytes > 0 {
                    segs.push((
                        offset,
                        bytes,
                        flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
                    ));
                }
            }
            if segs.is_empty() {
                return Parsed::Done {
                    status,
                    value: VIRTIO_BLK_S_OK,
                    written: 0,
                    invalid: None,
                    why: None,
                };
            }
            let op = if discard {
                ReqOp::Discard(segs.into_iter().map(|(o, l, _)| (o, l)).collect())
            } else {
                ReqOp::WriteZeroes(segs)
            };
            Parsed::Submit(status, op)
        }
        _ => Parsed::Done {
            status,
            value: VIRTIO_BLK_S_UNSUPP,
            written: 0,
            invalid: None,
            why: None,
        },
    }
}
