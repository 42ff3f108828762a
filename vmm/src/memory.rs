//! Guest RAM and what backs it: anonymous memory for plain `-m` (QEMU's default backend,
//! named `kestrel.ram` as QEMU names `pc.ram`), or the `-object memory-backend-*` that
//! `-machine memory-backend=ID` names: anonymous (`-ram`), a file or an unlinked file in
//! a directory (`-file`), or a memfd (`-memfd`), shared or private, preallocated or not.
//!
//! A backend's file is opened once, when the machine is built, so a bad `mem-path`
//! fails at startup; each boot maps it again over the guest's RAM regions, at
//! consecutive file offsets. A shared file-backed RAM therefore keeps its contents
//! across a guest reset, as a QEMU guest's RAM does; anonymous RAM starts zeroed.

use std::fs::{File, OpenOptions};
use std::os::fd::FromRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use devices::GuestMemoryMmap;
use vm_memory::bitmap::{AtomicBitmap, NewBitmap};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestRegionMmap};

use crate::cmdline::objects::{MemoryBackend, MemoryKind};
use crate::cmdline::MACHINE_TYPE;

/// Guest RAM's backing, opened.
#[derive(Debug)]
pub struct RamBacking {
    /// Its id, size and mapping flags, as query-memdev reports them.
    info: MemdevInfo,
    /// The file or memfd; `None` for anonymous memory.
    file: Option<Arc<File>>,
}

/// What query-memdev reports of one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemdevInfo {
    pub id: String,
    pub size: u64,
    pub share: bool,
    pub prealloc: bool,
}

impl From<&MemoryBackend> for MemdevInfo {
    fn from(b: &MemoryBackend) -> Self {
        MemdevInfo {
            id: b.id.clone(),
            size: b.size,
            share: b.share,
            prealloc: b.prealloc,
        }
    }
}

impl RamBacking {
    /// Plain `-m`: private anonymous memory.
    pub fn anonymous(size: u64) -> RamBacking {
        RamBacking {
            info: MemdevInfo {
                id: format!("{MACHINE_TYPE}.ram"),
                size,
                share: false,
                prealloc: false,
            },
            file: None,
        }
    }

    /// Opens a memory backend's file or memfd, sized to the backend.
    pub fn open(b: &MemoryBackend) -> Result<RamBacking, String> {
        let file = match &b.kind {
            MemoryKind::Ram => None,
            MemoryKind::Memfd => Some(memfd(&b.id)?),
            MemoryKind::File { mem_path } => {
                let fail = |e: std::io::Error| {
                    format!(
                        "can't open backing store {} for guest RAM: {}",
                        mem_path.display(),
                        strip_os_error(&e)
                    )
                };
                let f = if mem_path.is_dir() {
                    // QEMU makes an unlinked file in a directory it is given.
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .custom_flags(libc::O_TMPFILE)
                        .open(mem_path)
                        .map_err(fail)?
                } else {
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(mem_path)
                        .map_err(fail)?
                };
                Some(f)
            }
        };
        if let Some(f) = &file {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if len < b.size {
                f.set_len(b.size).map_err(|e| {
                    format!("cannot size the RAM of memory backend '{}': {e}", b.id)
                })?;
            }
        }
        Ok(RamBacking {
            info: MemdevInfo::from(b),
            file: file.map(Arc::new),
        })
    }

    /// What query-memdev says of it.
    pub fn info(&self) -> MemdevInfo {
        self.info.clone()
    }

    /// Maps the backing over `ranges` (guest address, length), which together are at
    /// most `size` bytes, at consecutive offsets of the file.
    pub fn map(&self, ranges: &[(GuestAddress, usize)]) -> Result<GuestMemoryMmap, String> {
        let mut flags = libc::MAP_NORESERVE
            | if self.info.share {
                libc::MAP_SHARED
            } else {
                libc::MAP_PRIVATE
            };
        if self.info.prealloc {
            flags |= libc::MAP_POPULATE;
        }
        if self.file.is_none() {
            flags |= libc::MAP_ANONYMOUS;
        }
        let mut offset = 0u64;
        let mut regions = Vec::with_capacity(ranges.len());
        for &(gpa, len) in ranges {
            let mut b = MmapRegionBuilder::new_with_bitmap(len, AtomicBitmap::with_len(len))
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(flags);
            if let Some(f) = &self.file {
                b = b.with_file_offset(FileOffset::from_arc(f.clone(), offset));
            }
            let region = b
                .build()
                .map_err(|e| format!("cannot map guest RAM ({} bytes): {e}", len))?;
            regions.push(
                GuestRegionMmap::new(region, gpa)
                    .ok_or_else(|| format!("guest RAM at {:#x} overflows", gpa.0))?,
            );
            offset += len as u64;
        }
        GuestMemoryMmap::from_regions(regions).map_err(|e| format!("guest RAM: {e}"))
    }
}

fn memfd(id: &str) -> Result<File, String> {
    let name = std::ffi::CString::new(format!("kestrel-{id}")).unwrap_or_default();
    // SAFETY: `name` is a valid NUL-terminated string; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!(
            "cannot create the memfd of memory backend '{id}': {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: memfd_create just returned this descriptor; nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// "No such file or directory (os error 2)" as QEMU prints it: without the number.
fn strip_os_error(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    fn backend(kind: MemoryKind, share: bool) -> MemoryBackend {
        MemoryBackend {
            id: "m".into(),
            kind,
            size: 4 << 20,
            share,
            prealloc: false,
        }
    }

    fn ranges() -> Vec<(GuestAddress, usize)> {
        // Two regions, as the RAM around the 32-bit hole is mapped.
        vec![(GuestAddress(0), 1 << 20), (GuestAddress(1 << 32), 3 << 20)]
    }

    #[test]
    fn a_shared_file_sees_what_the_guest_wrote_at_consecutive_offsets() {
        let dir = std::env::temp_dir().join(format!("kestrel-ram-{}", std::process::id()));
        let path = dir.with_extension("img");
        let b = backend(
            MemoryKind::File {
                mem_path: path.clone(),
            },
            true,
        );
        let ram = RamBacking::open(&b).unwrap();
        let mem = ram.map(&ranges()).unwrap();
        mem.write_slice(b"low", GuestAddress(0x10)).unwrap();
        mem.write_slice(b"high", GuestAddress((1 << 32) + 0x20))
            .unwrap();
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len(), 4 << 20);
        assert_eq!(&data[0x10..0x13], b"low");
        assert_eq!(&data[(1 << 20) + 0x20..(1 << 20) + 0x24], b"high");
        // A second mapping (the next boot) finds it again.
        let again = ram.map(&ranges()).unwrap();
        let mut buf = [0u8; 4];
        again
            .read_slice(&mut buf, GuestAddress((1 << 32) + 0x20))
            .unwrap();
        assert_eq!(&buf, b"high");
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn private_memory_keeps_guest_writes_out_of_the_file() {
        let path =
            std::env::temp_dir().join(format!("kestrel-ram-priv-{}.img", std::process::id()));
        let b = backend(
            MemoryKind::File {
                mem_path: path.clone(),
            },
            false,
        );
        let ram = RamBacking::open(&b).unwrap();
        let mem = ram.map(&ranges()).unwrap();
        mem.write_slice(b"secret", GuestAddress(0)).unwrap();
        assert!(std::fs::read(&path).unwrap().iter().all(|b| *b == 0));
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn memfd_anonymous_and_directory_backings_map() {
        for kind in [
            MemoryKind::Memfd,
            MemoryKind::Ram,
            MemoryKind::File {
                mem_path: std::env::temp_dir(),
            },
        ] {
            let ram = RamBacking::open(&backend(kind.clone(), true)).unwrap();
            let mem = ram.map(&ranges()).unwrap();
            assert_eq!(mem.num_regions(), 2, "{kind:?}");
            mem.write_obj(0xabcdu32, GuestAddress(1 << 32)).unwrap();
            assert_eq!(mem.read_obj::<u32>(GuestAddress(1 << 32)).unwrap(), 0xabcd);
        }
    }

    #[test]
    fn a_missing_directory_is_qemus_error() {
        let b = backend(
            MemoryKind::File {
                mem_path: "/nonexistent/dir/x".into(),
            },
            false,
        );
        assert_eq!(
            RamBacking::open(&b).unwrap_err(),
            "can't open backing store /nonexistent/dir/x for guest RAM: No such file or directory"
        );
    }
}
