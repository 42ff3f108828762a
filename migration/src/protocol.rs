//! The migration stream: what one Kestrel writes and another reads to move a guest.
//! Kestrel migrates to Kestrel, so the format is ours; it is versioned, every section
//! is framed, checksummed and size-capped, and a reader refuses what it cannot use
//! before it acts on it.
//!
//! ```text
//!  stream
//!  +---------------------------------------------+
//!  | magic "KESTRMIG"                  8 bytes   |
//!  | format version (u32 LE)           4 bytes   |   FORMAT_VERSION; another is refused
//!  | flags (u32 LE, 0)                 4 bytes   |
//!  +---------------------------------------------+
//!  | Config section                              |   first: what both sides must agree on
//!  | Ram sections ...                            |   precopy passes, then the final pass
//!  | Device sections ...                         |   after the source stopped
//!  | End section                                 |   the stream is complete
//!  +---------------------------------------------+
//!
//!  section
//!  +--------+---------+--------+------------------+
//!  | kind   | version | id     | length           |   header, 16 bytes, little endian
//!  | u16    | u16     | u32    | u64              |
//!  +--------+---------+--------+------------------+
//!  | payload: `length` bytes                      |   length <= the kind's cap
//!  +----------------------------------------------+
//!  | crc32 (IEEE) of header and payload, u32 LE   |   trailer
//!  +----------------------------------------------+
//!
//!  Ram payload: records, each
//!  +------------------+-----------+-----------+----------------------------+
//!  | guest address u64| pages u32 | kind u32  | pages * 4096 bytes if DATA |
//!  +------------------+-----------+-----------+----------------------------+
//!  kind ZERO: the pages are zero, no bytes follow (a marker, not 4096 zero bytes)
//!  kind DATA: the page contents follow
//! ```
//!
//! The checksum is a trailer so that a writer can stream RAM straight from guest memory
//! into the socket while it hashes, without staging a section in a buffer. A reader of a
//! Ram section writes the pages into guest memory as they arrive and checks the
//! trailer at the end: a corrupt section fails the whole migration, and the destination
//! never runs a guest from a stream that did not end with a valid End section. Config
//! and Device payloads are read whole (they are capped small), checked, then parsed.
//!
//! Device state is JSON (serde) under a per-device `version`: the section's `id` is the
//! device's index in the Config section's device list, and its payload starts with the
//! device's name, so a stream from a differently configured machine is refused by name
//! and version, never misapplied.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The stream's magic number.
pub const MAGIC: [u8; 8] = *b"KESTRMIG";
/// The stream format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Guest page size in the stream.
pub const PAGE_SIZE: u64 = 4096;

/// Caps on a section's payload, so a corrupt length cannot make the reader allocate or
/// wait for gigabytes.
pub const MAX_CONFIG_LEN: u64 = 1 << 20;
pub const MAX_DEVICE_LEN: u64 = 16 << 20;
pub const MAX_RAM_LEN: u64 = 64 << 20;

const HEADER_LEN: usize = 16;
const RECORD_LEN: usize = 16;

/// Section kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Kind {
    Config = 1,
    Ram = 2,
    Device = 3,
    End = 4,
}

impl Kind {
    fn from_u16(v: u16) -> Option<Kind> {
        Some(match v {
            1 => Kind::Config,
            2 => Kind::Ram,
            3 => Kind::Device,
            4 => Kind::End,
            _ => return None,
        })
    }

    fn cap(self) -> u64 {
        match self {
            Kind::Config => MAX_CONFIG_LEN,
            Kind::Ram => MAX_RAM_LEN,
            Kind::Device => MAX_DEVICE_LEN,
            Kind::End => 0,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Config => "configuration",
            Kind::Ram => "RAM",
            Kind::Device => "device state",
            Kind::End => "end",
        }
    }
}

const RECORD_ZERO: u32 = 0;
const RECORD_DATA: u32 = 1;

/// Why a stream cannot be written or used. Each message names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("migration stream: {0}")]
    Io(#[from] io::Error),
    #[error("the migration stream ended inside {0}: the source stopped or the connection was cut")]
    Truncated(&'static str),
    #[error("not a Kestrel migration stream (bad magic number)")]
    BadMagic,
    #[error("migration stream format version {found} is not supported (this Kestrel reads version {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("migration stream: unknown section kind {0}")]
    UnknownKind(u16),
    #[error("migration stream: {kind} section {id} has {len} bytes, more than the {cap} allowed")]
    TooLarge {
        kind: &'static str,
        id: u32,
        len: u64,
        cap: u64,
    },
    #[error("migration stream: {kind} section {id} is corrupted (checksum mismatch)")]
    Corrupted { kind: &'static str, id: u32 },
    #[error("migration stream: {0}")]
    BadRam(String),
    #[error("migration stream: the source machine differs from this one: {0}")]
    ConfigMismatch(String),
    #[error("migration stream: {0}")]
    BadSection(String),
    #[error("migration stream: device state of '{device}': {msg}")]
    BadState { device: String, msg: String },
}

pub type Result<T> = std::result::Result<T, StreamError>;

/// What the destination must match: the same RAM layout, vCPUs and devices, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfig {
    /// Guest RAM regions as (guest address, size in bytes).
    pub ram: Vec<(u64, u64)>,
    pub vcpus: u32,
    /// Every device whose state the stream carries, by name (`id` or QOM path), in the
    /// order of their Device sections.
    pub devices: Vec<String>,
}

impl MachineConfig {
    /// Whether a stream from `source` can be loaded into this machine.
    pub fn check_source(&self, source: &MachineConfig) -> Result<()> {
        if source.vcpus != self.vcpus {
            return Err(StreamError::ConfigMismatch(format!(
                "the source has {} vCPUs, this machine {} (-smp must match)",
                source.vcpus, self.vcpus
            )));
        }
        if source.ram != self.ram {
            let total = |r: &[(u64, u64)]| r.iter().map(|(_, s)| s).sum::<u64>() >> 20;
            return Err(StreamError::ConfigMismatch(format!(
                "the source has {} MiB of RAM in {} regions, this machine {} MiB in {} (-m must match)",
                total(&source.ram),
                source.ram.len(),
                total(&self.ram),
                self.ram.len()
            )));
        }
        if source.devices != self.devices {
            let missing: Vec<&str> = source
                .devices
                .iter()
                .filter(|d| !self.devices.contains(d))
                .map(String::as_str)
                .collect();
            let extra: Vec<&str> = self
                .devices
                .iter()
                .filter(|d| !source.devices.contains(d))
                .map(String::as_str)
                .collect();
            return Err(StreamError::ConfigMismatch(
                if missing.is_empty() && extra.is_empty() {
                    "the devices are the same but in another order (give -device options in the source's order)".into()
                } else {
                    format!(
                        "devices only on the source: [{}]; only here: [{}]",
                        missing.join(", "),
                        extra.join(", ")
                    )
                },
            ));
        }
        Ok(())
    }
}

/// Guest RAM as the stream sees it: the source reads pages out of it, the destination
/// writes them in. Implemented over vm-memory's guest memory by the vmm; over a vector
/// in tests.
pub trait GuestRam {
    /// Whether `len` bytes at `gpa` are all zero.
    fn is_zero(&self, gpa: u64, len: u64) -> io::Result<bool>;
    /// Writes `len` bytes at `gpa` to `w`.
    fn read_into(&self, gpa: u64, len: u64, w: &mut dyn Write) -> io::Result<()>;
    /// Fills `len` bytes at `gpa` from `r`.
    fn write_from(&self, gpa: u64, len: u64, r: &mut dyn Read) -> io::Result<()>;
    /// Zeroes `len` bytes at `gpa`.
    fn zero(&self, gpa: u64, len: u64) -> io::Result<()>;
    /// Whether `len` bytes at `gpa` are guest RAM.
    fn contains(&self, gpa: u64, len: u64) -> bool;
}

/// Counts of what RAM sections carried (query-migrate's `ram` block).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RamCounts {
    /// Pages sent as zero markers (`duplicate`).
    pub zero_pages: u64,
    /// Pages sent with their bytes (`normal`).
    pub data_pages: u64,
    /// Stream bytes, framing included (`transferred`).
    pub bytes: u64,
}

/// Writes, counting bytes and hashing them for the current section's trailer.
struct Hashing<'a, W: Write> {
    w: &'a mut W,
    crc: crc32fast::Hasher,
    n: u64,
}

impl<W: Write> Write for Hashing<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.w.write(buf)?;
        self.crc.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// Writes a stream: the header on creation, then sections.
pub struct StreamWriter<W: Write> {
    w: W,
    bytes: u64,
}

impl<W: Write> StreamWriter<W> {
    pub fn new(mut w: W) -> Result<Self> {
        w.write_all(&MAGIC)?;
        w.write_all(&FORMAT_VERSION.to_le_bytes())?;
        w.write_all(&0u32.to_le_bytes())?;
        Ok(StreamWriter { w, bytes: 16 })
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// One section: the header, `payload` writing exactly `len` bytes, the trailer.
    fn section(
        &mut self,
        kind: Kind,
        version: u16,
        id: u32,
        len: u64,
        payload: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<()> {
        if len > kind.cap() {
            return Err(StreamError::TooLarge {
                kind: kind.name(),
                id,
                len,
                cap: kind.cap(),
            });
        }
        let mut h = Hashing {
            w: &mut self.w,
            crc: crc32fast::Hasher::new(),
            n: 0,
        };
        let mut header = [0u8; HEADER_LEN];
        header[0..2].copy_from_slice(&(kind as u16).to_le_bytes());
        header[2..4].copy_from_slice(&version.to_le_bytes());
        header[4..8].copy_from_slice(&id.to_le_bytes());
        header[8..16].copy_from_slice(&len.to_le_bytes());
        h.write_all(&header)?;
        payload(&mut h)?;
        if h.n != HEADER_LEN as u64 + len {
            return Err(StreamError::BadSection(format!(
                "internal error: a {} section announced {len} bytes and wrote {}",
                kind.name(),
                h.n - HEADER_LEN as u64
            )));
        }
        let crc = h.crc.finalize();
        self.w.write_all(&crc.to_le_bytes())?;
        self.bytes += HEADER_LEN as u64 + len + 4;
        Ok(())
    }

    pub fn config(&mut self, cfg: &MachineConfig) -> Result<()> {
        let json = serde_json::to_vec(cfg).map_err(|e| StreamError::BadSection(e.to_string()))?;
        self.section(Kind::Config, 1, 0, json.len() as u64, |w| {
            w.write_all(&json)
        })
    }

    /// The state of device `index` of the Config section, named `name`, at `version`.
    pub fn device<S: Serialize>(
        &mut self,
        index: u32,
        name: &str,
        version: u16,
        state: &S,
    ) -> Result<()> {
        let json = serde_json::to_vec(state).map_err(|e| StreamError::BadState {
            device: name.into(),
            msg: e.to_string(),
        })?;
        let name_len = u16::try_from(name.len())
            .map_err(|_| StreamError::BadSection(format!("device name too long: {name}")))?;
        let len = 2 + name.len() as u64 + json.len() as u64;
        self.section(Kind::Device, version, index, len, |w| {
            w.write_all(&name_len.to_le_bytes())?;
            w.write_all(name.as_bytes())?;
            w.write_all(&json)
        })
    }

    /// The pages of `runs` (guest address, page count), as many Ram sections as the cap
    /// needs, zero pages as markers. Returns what was sent.
    pub fn ram(&mut self, ram: &dyn GuestRam, runs: &[(u64, u64)]) -> Result<RamCounts> {
        // Classify first: a section's length must be known before its payload.
        let mut records: Vec<(u64, u32, u32)> = Vec::new();
        for &(gpa, pages) in runs {
            if gpa % PAGE_SIZE != 0 || !ram.contains(gpa, pages * PAGE_SIZE) {
                return Err(StreamError::BadRam(format!(
                    "internal error: {pages} pages at {gpa:#x} are not guest RAM"
                )));
            }
            for p in 0..pages {
                let a = gpa + p * PAGE_SIZE;
                let kind = if ram.is_zero(a, PAGE_SIZE)? {
                    RECORD_ZERO
                } else {
                    RECORD_DATA
                };
                match records.last_mut() {
                    Some((start, n, k))
                        if *k == kind
                            && *start + u64::from(*n) * PAGE_SIZE == a
                            && *n < u32::MAX =>
                    {
                        *n += 1
                    }
                    _ => records.push((a, 1, kind)),
                }
            }
        }
        let mut counts = RamCounts::default();
        let before = self.bytes;
        let max_data_pages = (MAX_RAM_LEN - RECORD_LEN as u64) / PAGE_SIZE;
        let mut i = 0;
        // Records split so that each section stays under the cap.
        let mut pending: Vec<(u64, u32, u32)> = Vec::new();
        let mut pending_len = 0u64;
        while i < records.len() {
            let (gpa, n, kind) = records[i];
            let take = if kind == RECORD_DATA {
                (n as u64).min(max_data_pages) as u32
            } else {
                n
            };
            let rec_len = RECORD_LEN as u64
                + if kind == RECORD_DATA {
                    u64::from(take) * PAGE_SIZE
                } else {
                    0
                };
            if pending_len + rec_len > MAX_RAM_LEN {
                self.ram_section(ram, &pending, pending_len)?;
                pending.clear();
                pending_len = 0;
            }
            pending.push((gpa, take, kind));
            pending_len += rec_len;
            match kind {
                RECORD_ZERO => counts.zero_pages += u64::from(take),
                _ => counts.data_pages += u64::from(take),
            }
            if take < n {
                records[i] = (gpa + u64::from(take) * PAGE_SIZE, n - take, kind);
            } else {
                i += 1;
            }
        }
        if !pending.is_empty() {
            self.ram_section(ram, &pending, pending_len)?;
        }
        counts.bytes = self.bytes - before;
        Ok(counts)
    }

    fn ram_section(
        &mut self,
        ram: &dyn GuestRam,
        records: &[(u64, u32, u32)],
        len: u64,
    ) -> Result<()> {
        self.section(Kind::Ram, 1, 0, len, |w| {
            for &(gpa, n, kind) in records {
                let mut rec = [0u8; RECORD_LEN];
                rec[0..8].copy_from_slice(&gpa.to_le_bytes());
                rec[8..12].copy_from_slice(&n.to_le_bytes());
                rec[12..16].copy_from_slice(&kind.to_le_bytes());
                w.write_all(&rec)?;
                if kind == RECORD_DATA {
                    ram.read_into(gpa, u64::from(n) * PAGE_SIZE, w)?;
                }
            }
            Ok(())
        })
    }

    /// The End section; returns the transport.
    pub fn end(mut self) -> Result<W> {
        self.section(Kind::End, 1, 0, 0, |_| Ok(()))?;
        self.w.flush()?;
        Ok(self.w)
    }
}

/// One section as read.
#[derive(Debug, PartialEq)]
pub enum Section {
    Config(MachineConfig),
    /// A Ram section, already written into guest memory.
    Ram(RamCounts),
    Device {
        index: u32,
        name: String,
        version: u16,
        state: Vec<u8>,
    },
    End,
}

/// Reads, hashing what it reads.
struct HashingReader<'a, R: Read> {
    r: &'a mut R,
    crc: &'a mut crc32fast::Hasher,
    left: u64,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        if max == 0 {
            return Ok(0);
        }
        let n = self.r.read(&mut buf[..max])?;
        self.crc.update(&buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

/// Maps an early end of input to `Truncated(what)`.
fn eof(what: &'static str) -> impl Fn(io::Error) -> StreamError {
    move |e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            StreamError::Truncated(what)
        } else {
            StreamError::Io(e)
        }
    }
}

/// Reads a stream: checks the header on creation, then yields sections.
pub struct StreamReader<R: Read> {
    r: R,
    ended: bool,
}

impl<R: Read> StreamReader<R> {
    pub fn new(mut r: R) -> Result<Self> {
        let mut h = [0u8; 16];
        r.read_exact(&mut h).map_err(eof("the stream header"))?;
        if h[0..8] != MAGIC {
            return Err(StreamError::BadMagic);
        }
        let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        if version != FORMAT_VERSION {
            return Err(StreamError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let flags = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
        if flags != 0 {
            return Err(StreamError::BadSection(format!(
                "unknown stream flags {flags:#x} (from a newer Kestrel?)"
            )));
        }
        Ok(StreamReader { r, ended: false })
    }

    /// The next section; Ram sections go straight into `ram`. After End, an error.
    pub fn next(&mut self, ram: &dyn GuestRam) -> Result<Section> {
        if self.ended {
            return Err(StreamError::BadSection("read past the end section".into()));
        }
        let mut header = [0u8; HEADER_LEN];
        self.r
            .read_exact(&mut header)
            .map_err(eof("a section header"))?;
        let raw_kind = u16::from_le_bytes([header[0], header[1]]);
        let kind = Kind::from_u16(raw_kind).ok_or(StreamError::UnknownKind(raw_kind))?;
        let version = u16::from_le_bytes([header[2], header[3]]);
        let id = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let mut len_bytes = [0u8; 8];
        len_bytes.copy_from_slice(&header[8..16]);
        let len = u64::from_le_bytes(len_bytes);
        if len > kind.cap() {
            return Err(StreamError::TooLarge {
                kind: kind.name(),
                id,
                len,
                cap: kind.cap(),
            });
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        let mut body = HashingReader {
            r: &mut self.r,
            crc: &mut crc,
            left: len,
        };
        // Config and Device payloads are held as bytes until the checksum is checked.
        let mut payload = Vec::new();
        let ram_counts = match kind {
            Kind::Ram => Some(read_ram(&mut body, ram, len)?),
            Kind::End => None,
            Kind::Config | Kind::Device => {
                body.read_to_end(&mut payload)?;
                if payload.len() as u64 != len {
                    return Err(StreamError::Truncated(kind.name()));
                }
                None
            }
        };
        let mut trailer = [0u8; 4];
        self.r
            .read_exact(&mut trailer)
            .map_err(eof("a section checksum"))?;
        if u32::from_le_bytes(trailer) != crc.finalize() {
            return Err(StreamError::Corrupted {
                kind: kind.name(),
                id,
            });
        }
        Ok(match kind {
            Kind::Ram => Section::Ram(ram_counts.unwrap_or_default()),
            Kind::End => {
                self.ended = true;
                Section::End
            }
            Kind::Config => Section::Config(
                serde_json::from_slice(&payload)
                    .map_err(|e| StreamError::BadSection(format!("configuration section: {e}")))?,
            ),
            Kind::Device => {
                let bad = || StreamError::BadSection(format!("device section {id}: bad name"));
                let name_len = payload
                    .get(0..2)
                    .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
                    .ok_or_else(bad)?;
                let name = payload
                    .get(2..2 + name_len)
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .ok_or_else(bad)?
                    .to_string();
                Section::Device {
                    index: id,
                    name,
                    version,
                    state: payload[2 + name_len..].to_vec(),
                }
            }
        })
    }
}

fn read_ram(body: &mut dyn Read, ram: &dyn GuestRam, len: u64) -> Result<RamCounts> {
    let mut counts = RamCounts {
        bytes: HEADER_LEN as u64 + len + 4,
        ..Default::default()
    };
    let mut left = len;
    while left > 0 {
        if left < RECORD_LEN as u64 {
            return Err(StreamError::BadRam("a page record is cut short".into()));
        }
        let mut rec = [0u8; RECORD_LEN];
        body.read_exact(&mut rec).map_err(eof("a RAM section"))?;
        left -= RECORD_LEN as u64;
        let mut a = [0u8; 8];
        a.copy_from_slice(&rec[0..8]);
        let gpa = u64::from_le_bytes(a);
        let pages = u64::from(u32::from_le_bytes([rec[8], rec[9], rec[10], rec[11]]));
        let kind = u32::from_le_bytes([rec[12], rec[13], rec[14], rec[15]]);
        let bytes = pages * PAGE_SIZE;
        if gpa % PAGE_SIZE != 0 || pages == 0 || !ram.contains(gpa, bytes) {
            return Err(StreamError::BadRam(format!(
                "{pages} pages at {gpa:#x} are not guest RAM on this machine"
            )));
        }
        match kind {
            RECORD_ZERO => {
                ram.zero(gpa, bytes)?;
                counts.zero_pages += pages;
            }
            RECORD_DATA => {
                if bytes > left {
                    return Err(StreamError::BadRam(format!(
                        "{pages} pages at {gpa:#x} run past their section"
                    )));
                }
                ram.write_from(gpa, bytes, body)
                    .map_err(eof("a RAM section"))?;
                left -= bytes;
                counts.data_pages += pages;
            }
            other => {
                return Err(StreamError::BadRam(format!(
                    "unknown page record kind {other}"
                )))
            }
        }
    }
    Ok(counts)
}
