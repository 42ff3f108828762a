//! Image locking that QEMU and qemu-img understand: open file description (OFD) locks
//! on single bytes of the image, QEMU's `file-posix` scheme, so a Kestrel guest's disk
//! is protected from a second VM or a `qemu-img` that would write it (or read it while it
//! changes), and the other way round.
//!
//! Each permission a user of an image can hold has a bit: consistent read (0), write (1),
//! write unchanged (2), resize (3). A user holding permission `i` takes a shared lock on
//! byte 100 + i; a user that does not let others hold permission `i` takes a shared lock
//! on byte 200 + i. Shared locks never conflict with each other, so the conflicts are
//! found by testing: a permission we want is refused if anyone holds byte 200 + i, and a
//! permission we deny others is refused if anyone holds byte 100 + i. The locks belong to
//! the open file description: they last while any descriptor of it (the I/O engine's
//! duplicate included) is open, and the kernel drops them when the process dies.
//!
//! A guest disk wants consistent read (and write unless read-only) and shares everything
//! but write (unless `share-rw=on`), exactly as QEMU's virtio-blk does: two read-only
//! guests may share an image; a writer excludes everyone else who would write, and
//! `qemu-img info` without `-U`, which refuses to run beside a writer.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// `BLK_PERM_CONSISTENT_READ`.
pub const PERM_CONSISTENT_READ: u8 = 1 << 0;
/// `BLK_PERM_WRITE`.
pub const PERM_WRITE: u8 = 1 << 1;
/// `BLK_PERM_WRITE_UNCHANGED`.
pub const PERM_WRITE_UNCHANGED: u8 = 1 << 2;
/// `BLK_PERM_RESIZE`.
pub const PERM_RESIZE: u8 = 1 << 3;
const PERM_COUNT: u8 = 4;
const PERM_ALL: u8 = (1 << PERM_COUNT) - 1;
const PERM_NAMES: [&str; PERM_COUNT as usize] =
    ["consistent read", "write", "write unchanged", "resize"];

const PERM_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;

/// `locking=` of a file node (`-drive file.locking=`, `-blockdev driver=file,locking=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Locking {
    /// Lock; an error if the file system cannot.
    On,
    Off,
    /// Lock where the file system supports OFD locks, silently not elsewhere.
    #[default]
    Auto,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("Failed to get \"{perm}\" lock\nIs another process using the image [{path}]?")]
    Permission { perm: &'static str, path: PathBuf },
    #[error("Failed to get shared \"{perm}\" lock\nIs another process using the image [{path}]?")]
    Shared { perm: &'static str, path: PathBuf },
    #[error("Failed to lock byte {byte} of {path}: {source}")]
    Io {
        byte: i64,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a guest disk asks: read (and write unless read-only); others may do anything
/// but write, unless `share_rw`.
pub fn disk_permissions(read_only: bool, share_rw: bool) -> (u8, u8) {
    let perm = PERM_CONSISTENT_READ | if read_only { 0 } else { PERM_WRITE };
    let shared = PERM_CONSISTENT_READ
        | PERM_WRITE_UNCHANGED
        | PERM_RESIZE
        | if share_rw { PERM_WRITE } else { 0 };
    (perm, shared)
}

fn flock(ty: libc::c_short, byte: i64) -> libc::flock {
    // SAFETY: flock is plain data; all-zero is a valid value that we then fill in.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = ty;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte;
    fl.l_len = 1;
    fl
}

/// Takes a shared lock on `byte` for this open file description.
fn lock_byte(file: &File, byte: i64) -> std::io::Result<()> {
    let fl = flock(libc::F_RDLCK as libc::c_short, byte);
    // SAFETY: F_OFD_SETLK reads the flock we pass and nothing else.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether another open file description holds a lock on `byte`.
fn byte_taken(file: &File, byte: i64) -> std::io::Result<bool> {
    let mut fl = flock(libc::F_WRLCK as libc::c_short, byte);
    // SAFETY: F_OFD_GETLK fills in the flock we own.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Locks `file` (at `path`, for messages) for a user holding `perm` and sharing
/// `shared`, or says which permission another process stands in the way of. On an
/// error the caller drops the file, and with it any byte taken here.
pub fn lock_image(
    file: &File,
    path: &Path,
    perm: u8,
    shared: u8,
    mode: Locking,
) -> Result<(), LockError> {
    if mode == Locking::Off {
        return Ok(());
    }
    let io = |byte, source: std::io::Error| LockError::Io {
        byte,
        path: path.to_path_buf(),
        source,
    };
    let unshared = !shared & PERM_ALL;
    for i in 0..PERM_COUNT {
        let bit = 1 << i;
        for (held, base) in [(perm, PERM_BASE), (unshared, SHARED_BASE)] {
            if held & bit == 0 {
                continue;
            }
            let byte = base + i64::from(i);
            match lock_byte(file, byte) {
                Ok(()) => {}
                // No OFD locks here (an old kernel, some network file systems).
                Err(e)
                    if mode == Locking::Auto
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EINVAL | libc::ENOLCK | libc::ENOTSUP)
                        ) =>
                {
                    return Ok(())
                }
                Err(e) => return Err(io(byte, e)),
            }
        }
    }
    for i in 0..PERM_COUNT {
        let bit = 1 << i;
        let name = PERM_NAMES[usize::from(i)];
        if perm & bit != 0 {
            let byte = SHARED_BASE + i64::from(i);
            if byte_taken(file, byte).map_err(|e| io(byte, e))? {
                return Err(LockError::Permission {
                    perm: name,
                    path: path.to_path_buf(),
                });
            }
        }
        if unshared & bit != 0 {
            let byte = PERM_BASE + i64::from(i);
            if byte_taken(file, byte).map_err(|e| io(byte, e))? {
                return Err(LockError::Shared {
                    perm: name,
                    path: path.to_path_buf(),
                });
            }
        }
    }
    Ok(())
}

/// Opens `path` only to hold its locks (read access is all a shared lock needs) for a
/// guest disk with these permissions: the machine keeps the file for as long as the
/// drive exists, across resets that reopen the image itself, as QEMU keeps its drives.
/// `None` with `Locking::Off`.
pub fn lock_disk(
    path: &Path,
    read_only: bool,
    share_rw: bool,
    mode: Locking,
) -> Result<Option<File>, crate::BlockError> {
    if mode == Locking::Off {
        return Ok(None);
    }
    let file = File::open(path).map_err(|source| crate::BlockError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let (perm, shared) = disk_permissions(read_only, share_rw);
    lock_image(&file, path, perm, shared, mode)?;
    Ok(Some(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> (vmm_sys_util::tempdir::TempDir, PathBuf) {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let p = dir.as_path().join("disk.img");
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        (dir, p)
    }

    fn open(p: &Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .unwrap()
    }

    fn take(p: &Path, read_only: bool, share_rw: bool) -> Result<File, LockError> {
        let f = open(p);
        let (perm, shared) = disk_permissions(read_only, share_rw);
        lock_image(&f, p, perm, shared, Locking::On).map(|_| f)
    }

    #[test]
    fn a_writer_excludes_other_writers_and_readers_that_deny_writes() {
        let (_d, p) = image();
        let w = take(&p, false, false).unwrap();
        let e = take(&p, false, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "Failed to get \"write\" lock\nIs another process using the image [{}]?",
                p.display()
            )
        );
        // A read-only disk still denies writes to others: refused beside a writer.
        let e = take(&p, true, false).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("Failed to get shared \"write\" lock"));
        // Gone with the writer's file.
        drop(w);
        take(&p, false, false).unwrap();
    }

    #[test]
    fn readers_share_and_share_rw_lets_writers_meet() {
        let (_d, p) = image();
        let r1 = take(&p, true, false).unwrap();
        let _r2 = take(&p, true, false).unwrap();
        assert!(take(&p, false, true).is_err(), "readers deny writes");
        drop(r1);
        drop(_r2);
        let _w1 = take(&p, false, true).unwrap();
        let _w2 = take(&p, false, true).unwrap();
        assert!(
            take(&p, false, false).is_err(),
            "must share with the writers"
        );
    }

    #[test]
    fn off_takes_and_checks_nothing() {
        let (_d, p) = image();
        let _w = take(&p, false, false).unwrap();
        let f = open(&p);
        let (perm, shared) = disk_permissions(false, false);
        lock_image(&f, &p, perm, shared, Locking::Off).unwrap();
        // And took nothing: a third user only meets the first.
        drop(_w);
        take(&p, false, false).unwrap();
    }

    #[test]
    fn a_duplicate_descriptor_keeps_the_locks() {
        let (_d, p) = image();
        let w = take(&p, false, false).unwrap();
        let dup = w.try_clone().unwrap();
        drop(w);
        assert!(take(&p, false, false).is_err());
        drop(dup);
        take(&p, false, false).unwrap();
    }
}
