//! The engine contract, checked once per engine: every test below runs against the thread
//! pool and, where the host allows it, io_uring.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::tempdir::TempDir;
use vmm_sys_util::tempfile::TempFile;

use super::threads::ThreadPoolEngine;
use super::uring::IoUringEngine;
use super::{Completion, IoEngine};
use crate::{AlignedBuf, IoBuffers};

type MakeEngine = fn(File) -> Box<dyn IoEngine>;

fn make_threads(f: File) -> Box<dyn IoEngine> {
    Box::new(ThreadPoolEngine::new(f, 3).unwrap())
}

fn make_uring(f: File) -> Box<dyn IoEngine> {
    Box::new(IoUringEngine::new(f, 32).unwrap())
}

/// The engines this host can run, named.
fn engines() -> Vec<(&'static str, MakeEngine)> {
    let mut v: Vec<(&'static str, MakeEngine)> = vec![("threads", make_threads)];
    if IoUringEngine::is_supported() {
        v.push(("io_uring", make_uring));
    } else {
        eprintln!("io_uring is unavailable on this host: only the thread-pool engine is tested");
    }
    v
}

fn temp_file(len: u64) -> (TempFile, File) {
    let t = TempFile::new().unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(t.as_path())
        .unwrap();
    f.set_len(len).unwrap();
    (t, f)
}

/// Waits (on the completion fd, like the event loop) for `n` completions.
pub(crate) fn wait_for(e: &mut dyn IoEngine, n: usize) -> Vec<Completion> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    e.submit().unwrap();
    while out.len() < n {
        while let Some(c) = e.next_completion() {
            out.push(c);
        }
        if out.len() >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out: {} of {n} completions",
            out.len()
        );
        let mut pfd = libc::pollfd {
            fd: e.completion_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 1000) };
    }
    out
}

fn one(e: &mut dyn IoEngine) -> Completion {
    let mut v = wait_for(e, 1);
    assert_eq!(v.len(), 1);
    v.remove(0)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn buf_with(data: &[u8]) -> Arc<AlignedBuf> {
    let b = AlignedBuf::new(data.len(), 4096).unwrap();
    b.write_at(0, data);
    Arc::new(b)
}

#[test]
fn read_after_write() {
    for (name, make) in engines() {
        let (_t, f) = temp_file(1 << 20);
        let mut e = make(f);
        let data = pattern(12288, 7);
        let src = buf_with(&data);
        // Three segments, the middle one odd-sized: vectored in both directions.
        let bufs =
            IoBuffers::from_aligned_pieces(src, &[(0, 4096), (4096, 1000), (5096, 7192)]).unwrap();
        e.write_vectored(8192, bufs, 1).unwrap();
        let (tok, r) = one(&mut *e);
        assert_eq!((tok, r.unwrap()), (1, 12288), "{name}");

        let dst = Arc::new(AlignedBuf::new(12288, 4096).unwrap());
        let bufs = IoBuffers::from_aligned_pieces(dst.clone(), &[(0, 6000), (6000, 6288)]).unwrap();
        e.read_vectored(8192, bufs, 2).unwrap();
        let (tok, r) = one(&mut *e);
        assert_eq!((tok, r.unwrap()), (2, 12288), "{name}");
        assert_eq!(dst.to_vec(), data, "{name}");
        assert_eq!(e.in_flight(), 0, "{name}");
    }
}

#[test]
fn many_in_flight_complete_once_each() {
    const N: u64 = 300; // more than the io_uring depth used here: exercises the backlog
    for (name, make) in engines() {
        let (_t, f) = temp_file(N * 4096);
        let check = f.try_clone().unwrap();
        let mut e = make(f);
        for i in 0..N {
            let src = buf_with(&pattern(4096, i as u8));
            e.write_vectored(i * 4096, IoBuffers::from_aligned(src), 1000 + i)
                .unwrap();
        }
        assert!(e.in_flight() > 0);
        let done = wait_for(&mut *e, N as usize);
        let mut tokens: Vec<u64> = done
            .iter()
            .map(|(t, r)| {
                assert_eq!(*r.as_ref().unwrap(), 4096, "{name}");
                *t
            })
            .collect();
        tokens.sort_unstable();
        assert_eq!(tokens, (1000..1000 + N).collect::<Vec<_>>(), "{name}");
        for i in 0..N {
            let mut got = vec![0u8; 4096];
            check.read_exact_at(&mut got, i * 4096).unwrap();
            assert_eq!(got, pattern(4096, i as u8), "{name}: block {i}");
        }
        // Reads in flight together too.
        let dsts: Vec<_> = (0..N)
            .map(|_| Arc::new(AlignedBuf::new(4096, 4096).unwrap()))
            .collect();
        for (i, d) in dsts.iter().enumerate() {
            e.read_vectored(
                i as u64 * 4096,
                IoBuffers::from_aligned(d.clone()),
                i as u64,
            )
            .unwrap();
        }
        let done = wait_for(&mut *e, N as usize);
        assert!(done.iter().all(|(_, r)| r.is_ok()), "{name}");
        for (i, d) in dsts.iter().enumerate() {
            assert_eq!(d.to_vec(), pattern(4096, i as u8), "{name}: read {i}");
        }
    }
}

#[test]
fn flush_completes() {
    for (name, make) in engines() {
        let (_t, f) = temp_file(8192);
        let mut e = make(f);
        e.write_vectored(0, IoBuffers::from_aligned(buf_with(&[9u8; 4096])), 1)
            .unwrap();
        e.flush(2).unwrap();
        let mut done = wait_for(&mut *e, 2);
        done.sort_by_key(|c| c.0);
        assert_eq!(*done[0].1.as_ref().unwrap(), 4096, "{name}");
        assert_eq!(*done[1].1.as_ref().unwrap(), 0, "{name}");
    }
}

/// Offset of the first hole at or after `from`, by SEEK_HOLE.
fn seek_hole(f: &File, from: u64) -> u64 {
    // SAFETY: plain syscall on an open fd.
    let r = unsafe { libc::lseek(f.as_raw_fd(), from as libc::off_t, libc::SEEK_HOLE) };
    assert!(r >= 0);
    r as u64
}

#[test]
fn discard_makes_a_hole() {
    for (name, make) in engines() {
        let (_t, f) = temp_file(0);
        f.write_all_at(&vec![0xabu8; 1 << 20], 0).unwrap();
        f.sync_all().unwrap();
        let check = f.try_clone().unwrap();
        assert_eq!(
            seek_hole(&check, 0),
            1 << 20,
            "{name}: the file starts dense"
        );
        let mut e = make(f);
        e.discard(256 << 10, 256 << 10, 5).unwrap();
        let (tok, r) = one(&mut *e);
        assert_eq!((tok, r.unwrap()), (5, 0), "{name}");
        assert_eq!(
            seek_hole(&check, 0),
            256 << 10,
            "{name}: a hole where discarded"
        );
        let mut got = vec![1u8; 256 << 10];
        check.read_exact_at(&mut got, 256 << 10).unwrap();
        assert!(got.iter().all(|&b| b == 0), "{name}");
        assert_eq!(
            check.metadata().unwrap().len(),
            1 << 20,
            "{name}: size kept"
        );
        let mut tail = vec![0u8; 4096];
        check.read_exact_at(&mut tail, 512 << 10).unwrap();
        assert!(
            tail.iter().all(|&b| b == 0xab),
            "{name}: data after the hole kept"
        );
    }
}

fn write_zeroes_on(dir: &Path, name: &str, make: MakeEngine) {
    let path = dir.join(format!("wz-{name}"));
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    f.write_all_at(&vec![0x5au8; 3 << 20], 0).unwrap();
    let check = f.try_clone().unwrap();
    let mut e = make(f);
    // 2 MiB + 4 KiB: more than one chunk of the zero-writing fallback.
    e.write_zeroes(4096, (2 << 20) + 4096, 9).unwrap();
    let (tok, r) = one(&mut *e);
    assert_eq!((tok, r.unwrap()), (9, 0), "{name} on {}", dir.display());
    let mut got = vec![1u8; 3 << 20];
    check.read_exact_at(&mut got, 0).unwrap();
    let zero_end = 4096 + (2 << 20) + 4096;
    assert!(got[..4096].iter().all(|&b| b == 0x5a), "{name}");
    assert!(got[4096..zero_end].iter().all(|&b| b == 0), "{name}");
    assert!(got[zero_end..].iter().all(|&b| b == 0x5a), "{name}");
    assert_eq!(check.metadata().unwrap().len(), 3 << 20, "{name}");
    // A second one takes the remembered path (io_uring skips the fallocate after EOPNOTSUPP).
    e.write_zeroes(0, 4096, 10).unwrap();
    assert!(one(&mut *e).1.is_ok());
    drop(e);
    let _ = std::fs::remove_file(path);
}

#[test]
fn write_zeroes_with_fallocate() {
    let dir = TempDir::new().unwrap();
    for (name, make) in engines() {
        write_zeroes_on(dir.as_path(), name, make);
    }
}

#[test]
fn write_zeroes_falls_back_to_writing() {
    // tmpfs cannot ZERO_RANGE (EOPNOTSUPP), so the engines write zeroes.
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("no /dev/shm tmpfs: the write-zeroes fallback is not exercised");
        return;
    }
    let dir = TempDir::new_in(shm).unwrap();
    for (name, make) in engines() {
        write_zeroes_on(dir.as_path(), name, make);
    }
}

#[test]
fn read_past_the_end_reads_zeroes() {
    for (name, make) in engines() {
        let (_t, f) = temp_file(0);
        f.write_all_at(&[0x77u8; 1000], 0).unwrap();
        let mut e = make(f);
        let dst = Arc::new(AlignedBuf::new(4096, 4096).unwrap());
        dst.write_at(0, &[0xffu8; 4096]);
        e.read_vectored(0, IoBuffers::from_aligned(dst.clone()), 1)
            .unwrap();
        assert_eq!(one(&mut *e).1.unwrap(), 4096, "{name}");
        let v = dst.to_vec();
        assert!(v[..1000].iter().all(|&b| b == 0x77), "{name}");
        assert!(v[1000..].iter().all(|&b| b == 0), "{name}");
    }
}

#[test]
fn more_segments_than_iov_max() {
    for (name, make) in engines() {
        let (_t, f) = temp_file(0);
        let data = pattern(3000 * 16, 3);
        let src = buf_with(&data);
        let pieces: Vec<(usize, usize)> = (0..3000).map(|i| (i * 16, 16)).collect();
        let mut e = make(f);
        e.write_vectored(0, IoBuffers::from_aligned_pieces(src, &pieces).unwrap(), 1)
            .unwrap();
        assert_eq!(one(&mut *e).1.unwrap(), 48000, "{name}");
        let dst = Arc::new(AlignedBuf::new(data.len(), 8).unwrap());
        e.read_vectored(
            0,
            IoBuffers::from_aligned_pieces(dst.clone(), &pieces).unwrap(),
            2,
        )
        .unwrap();
        assert_eq!(one(&mut *e).1.unwrap(), 48000, "{name}");
        assert_eq!(dst.to_vec(), data, "{name}");
    }
}

#[test]
fn eio_is_surfaced_with_its_errno() {
    // Page 0 of a process is never mapped: /proc/self/mem answers EIO there, a real
    // device-level I/O error without a failing disk.
    for (name, make) in engines() {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/proc/self/mem")
            .unwrap();
        let mut e = make(f);
        let dst = Arc::new(AlignedBuf::new(512, 512).unwrap());
        e.read_vectored(0, IoBuffers::from_aligned(dst.clone()), 1)
            .unwrap();
        e.write_vectored(0, IoBuffers::from_aligned(dst), 2)
            .unwrap();
        for (tok, r) in wait_for(&mut *e, 2) {
            let err = r.expect_err("I/O at address 0 must fail");
            assert_eq!(
                err.raw_os_error(),
                Some(libc::EIO),
                "{name}: token {tok}: {err}"
            );
        }
    }
}

/// A 64 KiB tmpfs mounted for the test (root only), unmounted on drop.
struct TinyFs {
    dir: TempDir,
}

impl TinyFs {
    fn mount() -> Option<TinyFs> {
        let dir = TempDir::new().ok()?;
        let path = dir.as_path().to_path_buf();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "kestrel-enospc"])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(TinyFs { dir })
    }
    fn path(&self) -> PathBuf {
        self.dir.as_path().to_path_buf()
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.as_path())
            .status();
    }
}

#[test]
fn enospc_is_surfaced_with_its_errno() {
    let Some(fs) = TinyFs::mount() else {
        eprintln!(
            "SKIPPED: cannot mount a 64 KiB tmpfs (needs root): the ENOSPC case is not tested"
        );
        return;
    };
    for (name, make) in engines() {
        let path = fs.path().join(format!("full-{name}"));
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut e = make(f);
        let src = buf_with(&pattern(256 << 10, 1));
        e.write_vectored(0, IoBuffers::from_aligned(src), 1)
            .unwrap();
        let err = one(&mut *e).1.expect_err("256 KiB cannot fit in 64 KiB");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{name}: {err}");
        drop(e);
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn wait_idle_then_drain() {
    for (name, make) in engines() {
        let (_t, f) = temp_file(64 << 10);
        let mut e = make(f);
        for i in 0..16u64 {
            e.write_vectored(i * 4096, IoBuffers::from_aligned(buf_with(&[1u8; 4096])), i)
                .unwrap();
        }
        e.wait_idle().unwrap();
        let mut n = 0;
        while let Some((_, r)) = e.next_completion() {
            r.unwrap();
            n += 1;
        }
        assert_eq!(n, 16, "{name}");
        assert_eq!(e.in_flight(), 0, "{name}");
    }
}

#[test]
fn dropping_an_engine_with_io_in_flight_waits_for_it() {
    for (name, make) in engines() {
        let (_t, f) = temp_file(1 << 20);
        let check = f.try_clone().unwrap();
        let mut e = make(f);
        for i in 0..64u64 {
            e.write_vectored(
                i * 4096,
                IoBuffers::from_aligned(buf_with(&[0xeeu8; 4096])),
                i,
            )
            .unwrap();
        }
        e.submit().unwrap();
        drop(e);
        let mut got = vec![0u8; 64 * 4096];
        check.read_exact_at(&mut got, 0).unwrap();
        assert!(got.iter().all(|&b| b == 0xee), "{name}");
    }
}
