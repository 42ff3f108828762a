//! Loading a Linux kernel and handing it the machine: the kernel image (an ELF vmlinux
//! entered through its PVH note, or a bzImage through the 64-bit boot protocol), the
//! initrd, the command line, and the memory map in the form each protocol wants
//! (`hvm_start_info` for PVH, the e820 table of `boot_params` for bzImage).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{BzImage, KernelLoader};
use vm_memory::bitmap::Bitmap;
use vm_memory::{
    Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap,
    GuestMemoryRegion,
};

use super::layout;
use super::regs::BootProtocol;

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("could not open kernel '{path}': {err}")]
    KernelOpen { path: String, err: std::io::Error },
    #[error("could not load kernel '{path}': not an ELF vmlinux with a PVH entry note or a bzImage ({detail})")]
    NotAKernel { path: String, detail: String },
    #[error("could not load initrd '{path}': {err}")]
    InitrdOpen { path: String, err: std::io::Error },
    #[error("initrd '{path}' ({size} bytes) does not fit in guest memory below {limit:#x}; give the guest more memory with -m")]
    InitrdTooLarge { path: String, size: u64, limit: u64 },
    #[error("kernel command line is {len} bytes; at most {max} fit")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("the memory map has {0} entries, more than the boot protocol can carry")]
    TooManyE820(usize),
    #[error("writing boot data to guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// One entry of the guest's physical memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The memory map for `mem`: conventional memory below the EBDA, the EBDA and BIOS area
/// reserved (MP and ACPI tables live there), then RAM from 1 MiB in each region.
pub fn e820_map<B: Bitmap>(mem: &GuestMemoryMmap<B>) -> Vec<E820Entry> {
    let mut v = vec![
        E820Entry {
            addr: 0,
            size: layout::EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: layout::EBDA_START,
            size: layout::HIMEM_START - layout::EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for r in mem.iter() {
        let start = r.start_addr().raw_value().max(layout::HIMEM_START);
        let end = r.start_addr().raw_value() + r.len();
        if end > start {
            v.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    v
}

/// What `load_kernel` found and where it put it.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub protocol: BootProtocol,
    pub entry: u64,
    pub kernel_end: u64,
    /// The bzImage setup header, to copy into `boot_params`.
    pub setup_header: Option<linux_loader::loader::bootparam::setup_header>,
}

/// Loads the kernel image at `path`: an ELF with a PVH note boots through PVH, an ELF
/// without one through its 64-bit entry point, a bzImage through the 64-bit protocol.
pub fn load_kernel<B: Bitmap>(
    mem: &GuestMemoryMmap<B>,
    path: &Path,
) -> Result<LoadedKernel, BootError> {
    let p = path.display().to_string();
    let mut f = File::open(path).map_err(|err| BootError::KernelOpen {
        path: p.clone(),
        err,
    })?;
    if f.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        return Err(BootError::KernelOpen {
            path: p,
            err: std::io::Error::other("is a directory"),
        });
    }
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).unwrap_or(0);
    f.seek(SeekFrom::Start(0))
        .map_err(|err| BootError::KernelOpen {
            path: p.clone(),
            err,
        })?;
    let not_kernel = |detail: String| BootError::NotAKernel {
        path: p.clone(),
        detail,
    };
    if n == 4 && &magic == b"\x7fELF" {
        let r = Elf::load(mem, None, &mut f, Some(GuestAddress(layout::HIMEM_START)))
            .map_err(|e| not_kernel(e.to_string()))?;
        return Ok(match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(a) => LoadedKernel {
                protocol: BootProtocol::Pvh,
                entry: a.raw_value(),
                kernel_end: r.kernel_end,
                setup_header: None,
            },
            _ => LoadedKernel {
                protocol: BootProtocol::Linux64,
                entry: r.kernel_load.raw_value(),
                kernel_end: r.kernel_end,
                setup_header: None,
            },
        });
    }
    let r = BzImage::load(mem, None, &mut f, Some(GuestAddress(layout::HIMEM_START)))
        .map_err(|e| not_kernel(e.to_string()))?;
    Ok(LoadedKernel {
        protocol: BootProtocol::Linux64,
        // The 64-bit entry is 0x200 past the start of the protected-mode kernel.
        entry: r.kernel_load.raw_value() + 0x200,
        kernel_end: r.kernel_end,
        setup_header: r.setup_header,
    })
}

/// Loads the initrd at the top of low memory (below the 32-bit MMIO hole and `max_addr`),
/// page aligned, above the kernel. Returns (address, size).
pub fn load_initrd<B: Bitmap>(
    mem: &GuestMemoryMmap<B>,
    path: &Path,
    kernel_end: u64,
    max_addr: u64,
) -> Result<(u64, u64), BootError> {
    let p = path.display().to_string();
    let mut f = File::open(path).map_err(|err| BootError::InitrdOpen {
        path: p.clone(),
        err,
    })?;
    let size = f
        .metadata()
        .map_err(|err| BootError::InitrdOpen {
            path: p.clone(),
            err,
        })?
        .len();
    let low_end = mem
        .iter()
        .map(|r| r.start_addr().raw_value() + r.len())
        .filter(|e| *e <= layout::MMIO32_START)
        .max()
        .unwrap_or(0)
        .min(max_addr.saturating_add(1));
    let limit = low_end;
    let addr = low_end.checked_sub(size).map(|a| a & !0xfff);
    let addr = match addr {
        Some(a) if a >= kernel_end => a,
        _ => {
            return Err(BootError::InitrdTooLarge {
                path: p,
                size,
                limit,
            })
        }
    };
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(|e| match e {
            vm_memory::GuestMemoryError::IOError(err) => BootError::InitrdOpen {
                path: p.clone(),
                err,
            },
            other => BootError::Memory(other),
        })?;
    Ok((addr, size))
}

/// Writes the NUL-terminated command line at `layout::CMDLINE_ADDR`.
pub fn write_cmdline<B: Bitmap>(
    mem: &GuestMemoryMmap<B>,
    cmdline: &str,
    max: usize,
) -> Result<(), BootError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineNul);
    }
    let max = max.min(layout::CMDLINE_MAX_SIZE);
    if cmdline.len() + 1 > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: max - 1,
        });
    }
    mem.write_slice(cmdline.as_bytes(), GuestAddress(layout::CMDLINE_ADDR))?;
    mem.write_obj(
        0u8,
        GuestAddress(layout::CMDLINE_ADDR + cmdline.len() as u64),
    )?;
    Ok(())
}

/// `struct hvm_start_info` (xen/include/public/arch-x86/hvm/start_info.h), version 1.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct HvmStartInfo {
    pub magic: u32,
    pub version: u32,
    pub flags: u32,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
    pub reserved: u32,
}
// SAFETY: plain C struct of integers with no padding holes that matter.
unsafe impl ByteValued for HvmStartInfo {}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct HvmModlistEntry {
    pub paddr: u64,
    pub size: u64,
    pub cmdline_paddr: u64,
    pub reserved: u64,
}
// SAFETY: plain C struct of integers.
unsafe impl ByteValued for HvmModlistEntry {}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct HvmMemmapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
    pub reserved: u32,
}
// SAFETY: plain C struct of integers.
unsafe impl ByteValued for HvmMemmapEntry {}

pub const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// One module (the initrd) fits between the memory map and the zero page.
pub const PVH_MODLIST_ADDR: u64 = 0x6700;
// The module list sits between the PVH memory map and the zero page.
const _: () = assert!(
    PVH_MODLIST_ADDR >= layout::PVH_MEMMAP_ADDR + 24 * layout::PVH_MEMMAP_MAX_ENTRIES as u64
);
const _: () = assert!(PVH_MODLIST_ADDR + 32 <= layout::ZERO_PAGE_ADDR);

/// Writes `hvm_start_info` with the memory map, command line, initrd and RSDP.
/// Returns its address, for EBX.
pub fn write_pvh_info<B: Bitmap>(
    mem: &GuestMemoryMmap<B>,
    e820: &[E820Entry],
    initrd: Option<(u64, u64)>,
    rsdp: Option<u64>,
) -> Result<u64, BootError> {
    if e820.len() > layout::PVH_MEMMAP_MAX_ENTRIES {
        return Err(BootError::TooManyE820(e820.len()));
    }
    for (i, e) in e820.iter().enumerate() {
        let m = HvmMemmapEntry {
            addr: e.addr,
            size: e.size,
            kind: e.kind,
            reserved: 0,
        };
        mem.write_obj(m, GuestAddress(layout::PVH_MEMMAP_ADDR + (i * 24) as u64))?;
    }
    let mut info = HvmStartInfo {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: layout::CMDLINE_ADDR,
        rsdp_paddr: rsdp.unwrap_or(0),
        memmap_paddr: layout::PVH_MEMMAP_ADDR,
        memmap_entries: e820.len() as u32,
        ..Default::default()
    };
    if let Some((addr, size)) = initrd {
        let m = HvmModlistEntry {
            paddr: addr,
            size,
            ..Default::default()
        };
        mem.write_obj(m, GuestAddress(PVH_MODLIST_ADDR))?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_ADDR;
    }
    mem.write_obj(info, GuestAddress(layout::PVH_INFO_ADDR))?;
    Ok(layout::PVH_INFO_ADDR)
}

#[repr(transparent)]
#[derive(Clone, Copy)]
struct BootParams(boot_params);
// SAFETY: boot_params is a packed C struct of integers (bindgen output).
unsafe impl ByteValued for BootParams {}

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const E820_MAX_ENTRIES_ZEROPAGE: usize = 128;

/// Writes `boot_params` (the zero page) for the 64-bit boot protocol. Returns its address, for RSI.
pub fn write_zero_page<B: Bitmap>(
    mem: &GuestMemoryMmap<B>,
    k: &LoadedKernel,
    cmdline_len: usize,
    e820: &[E820Entry],
    initrd: Option<(u64, u64)>,
) -> Result<u64, BootError> {
    if e820.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(BootError::TooManyE820(e820.len()));
    }
    // SAFETY: boot_params is plain data; all-zero is its valid initial state.
    let mut p: boot_params = unsafe { std::mem::zeroed() };
    if let Some(h) = k.setup_header {
        p.hdr = h;
    } else {
        p.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        p.hdr.header = KERNEL_HDR_MAGIC;
        p.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    p.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    p.hdr.cmd_line_ptr = layout::CMDLINE_ADDR as u32;
    p.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        p.hdr.ramdisk_image = addr as u32;
        p.hdr.ramdisk_size = size as u32;
    }
    for (i, e) in e820.iter().enumerate() {
        p.e820_table[i] = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    p.e820_entries = e820.len() as u8;
    mem.write_obj(BootParams(p), GuestAddress(layout::ZERO_PAGE_ADDR))?;
    Ok(layout::ZERO_PAGE_ADDR)
}

/// The highest address an initrd may end at for this kernel.
pub fn initrd_addr_max(k: &LoadedKernel) -> u64 {
    match k.setup_header {
        Some(h) if h.initrd_addr_max != 0 => u64::from(h.initrd_addr_max),
        _ => layout::MMIO32_START - 1,
    }
}

/// The command line limit for this kernel (the header's, for bzImage).
pub fn cmdline_max(k: &LoadedKernel) -> usize {
    match k.setup_header {
        Some(h) if h.cmdline_size != 0 => h.cmdline_size as usize + 1,
        _ => 2048,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mem(size: u64) -> GuestMemoryMmap {
        let ranges: Vec<_> = layout::ram_regions(size)
            .into_iter()
            .map(|(a, l)| (GuestAddress(a), l as usize))
            .collect();
        GuestMemoryMmap::from_ranges(&ranges).unwrap()
    }

    #[test]
    fn e820_reserves_bios_area_and_covers_ram() {
        let m = mem(256 << 20);
        let map = e820_map(&m);
        assert_eq!(
            map[0],
            E820Entry {
                addr: 0,
                size: 0x9fc00,
                kind: E820_RAM
            }
        );
        assert_eq!(map[1].kind, E820_RESERVED);
        assert_eq!(map[1].addr + map[1].size, 0x10_0000);
        assert_eq!(
            map[2],
            E820Entry {
                addr: 0x10_0000,
                size: (256 << 20) - 0x10_0000,
                kind: E820_RAM
            }
        );
        assert_eq!(map.len(), 3);
    }

    #[test]
    fn e820_splits_around_the_mmio_hole() {
        let m = mem(4 << 30);
        let map = e820_map(&m);
        assert_eq!(map.len(), 4);
        assert_eq!(map[2].addr + map[2].size, layout::MMIO32_START);
        assert_eq!(map[3].addr, 1 << 32);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (4 << 30) - (layout::HIMEM_START - layout::EBDA_START));
    }

    #[test]
    fn pvh_start_info_has_magic_memmap_and_initrd() {
        let m = mem(128 << 20);
        let map = e820_map(&m);
        let at = write_pvh_info(
            &m,
            &map,
            Some((0x700_0000, 0x1234)),
            Some(layout::RSDP_ADDR),
        )
        .unwrap();
        let info: HvmStartInfo = m.read_obj(GuestAddress(at)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.memmap_entries as usize, map.len());
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.rsdp_paddr, layout::RSDP_ADDR);
        let module: HvmModlistEntry = m.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x700_0000, 0x1234));
        let e2: HvmMemmapEntry = m.read_obj(GuestAddress(info.memmap_paddr + 48)).unwrap();
        assert_eq!((e2.addr, e2.kind), (0x10_0000, E820_RAM));
        assert_eq!(std::mem::size_of::<HvmStartInfo>(), 56);
    }

    #[test]
    fn zero_page_carries_cmdline_initrd_and_e820() {
        let m = mem(128 << 20);
        let map = e820_map(&m);
        let k = LoadedKernel {
            protocol: BootProtocol::Linux64,
            entry: 0x100200,
            kernel_end: 0x200000,
            setup_header: None,
        };
        let at = write_zero_page(&m, &k, 42, &map, Some((0x600_0000, 99))).unwrap();
        let p: BootParams = m.read_obj(GuestAddress(at)).unwrap();
        let p = p.0;
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ p.hdr.cmd_line_ptr }, layout::CMDLINE_ADDR as u32);
        assert_eq!({ p.hdr.ramdisk_image }, 0x600_0000);
        assert_eq!({ p.e820_entries }, 3);
        assert_eq!({ p.e820_table[2].addr }, 0x10_0000);
    }

    #[test]
    fn initrd_goes_to_top_of_low_ram_page_aligned() {
        let m = mem(64 << 20);
        let mut f = tempfile();
        f.1.write_all(&[7u8; 5000]).unwrap();
        let (addr, size) = load_initrd(&m, &f.0, 0x200_0000, layout::MMIO32_START - 1).unwrap();
        assert_eq!(size, 5000);
        assert_eq!(addr & 0xfff, 0);
        assert!(addr + size <= 64 << 20);
        let b: u8 = m.read_obj(GuestAddress(addr + 4999)).unwrap();
        assert_eq!(b, 7);
        // Too big for the space above the kernel.
        let err = load_initrd(&m, &f.0, (64 << 20) - 4096, u64::MAX).unwrap_err();
        assert!(matches!(err, BootError::InitrdTooLarge { .. }), "{err}");
        std::fs::remove_file(&f.0).ok();
    }

    #[test]
    fn cmdline_limits() {
        let m = mem(16 << 20);
        write_cmdline(&m, "console=ttyS0", 2048).unwrap();
        let mut b = [0u8; 14];
        m.read_slice(&mut b, GuestAddress(layout::CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&b, b"console=ttyS0\0");
        assert!(matches!(
            write_cmdline(&m, &"x".repeat(2048), 2048),
            Err(BootError::CmdlineTooLong { .. })
        ));
        assert!(matches!(
            write_cmdline(&m, "a\0b", 2048),
            Err(BootError::CmdlineNul)
        ));
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let m = mem(16 << 20);
        let mut f = tempfile();
        f.1.write_all(b"this is not a kernel at all, just text")
            .unwrap();
        let err = load_kernel(&m, &f.0).unwrap_err();
        assert!(matches!(err, BootError::NotAKernel { .. }), "{err}");
        std::fs::remove_file(&f.0).ok();
        let err = load_kernel(&m, Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(matches!(err, BootError::KernelOpen { .. }), "{err}");
    }

    fn tempfile() -> (std::path::PathBuf, File) {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "kestrel-arch-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let f = File::create(&p).unwrap();
        (p, f)
    }
}
