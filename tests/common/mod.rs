//! Shared helpers for the integration tests: start the real `kestrel` binary, find the
//! test guest, watch the serial console. Guest boots cost tens of seconds on the
//! emulated KVM of the CI machines, so the boot tests are `#[ignore]`d in plain
//! `cargo test` and run by `make test` (`--include-ignored`).
#![allow(dead_code)] // each test binary uses a different subset

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn kestrel() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kestrel"))
}

/// Where `make guest` left the guest (KESTREL_GUEST_DIR overrides).
pub fn guest_dir() -> PathBuf {
    if let Ok(d) = std::env::var("KESTREL_GUEST_DIR") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest")
}

pub struct Guest {
    pub vmlinux: PathBuf,
    pub tiny: PathBuf,
    pub busybox: PathBuf,
    pub cmdline: String,
}

/// The test guest; panics with the fix if it has not been built.
pub fn guest() -> Guest {
    let d = guest_dir();
    let g = Guest {
        vmlinux: d.join("vmlinux"),
        tiny: d.join("initramfs.cpio"),
        busybox: d.join("initramfs-busybox.cpio"),
        cmdline: std::fs::read_to_string(d.join("cmdline"))
            .unwrap_or_else(|_| panic!("no test guest in {}: run `make guest`", d.display()))
            .trim()
            .to_string(),
    };
    for p in [&g.vmlinux, &g.tiny, &g.busybox] {
        assert!(p.exists(), "{} missing: run `make guest`", p.display());
    }
    g
}

/// A running kestrel whose stdout (the serial console) is collected as it arrives.
pub struct Vm {
    pub child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
}

fn collect<R: Read + Send + 'static>(mut r: R) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

impl Vm {
    pub fn start(args: &[&str]) -> Vm {
        let mut child = Command::new(kestrel())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kestrel");
        let out = collect(child.stdout.take().unwrap());
        let err = collect(child.stderr.take().unwrap());
        Vm { child, out, err }
    }

    /// Boots `guest` with the given initramfs, extra kernel words and extra options.
    pub fn boot(g: &Guest, initrd: &Path, words: &str, extra: &[&str]) -> Vm {
        let append = format!("{} {}", g.cmdline, words);
        let mut args = vec![
            "-nodefaults",
            "-nographic",
            "-serial",
            "stdio",
            "-kernel",
            g.vmlinux.to_str().unwrap(),
            "-initrd",
            initrd.to_str().unwrap(),
            "-append",
            &append,
        ];
        args.extend_from_slice(extra);
        Vm::start(&args)
    }

    pub fn console(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    /// Waits until the console contains `needle` `count` times; panics with the console on timeout.
    pub fn wait_for_count(&mut self, needle: &str, count: usize, timeout: Duration) {
        let start = Instant::now();
        loop {
            if self.console().matches(needle).count() >= count {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                if self.console().matches(needle).count() >= count {
                    return;
                }
                panic!(
                    "kestrel exited ({st}) before {needle:?} x{count}\n--- console\n{}\n--- stderr\n{}",
                    self.console(),
                    self.stderr()
                );
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                panic!(
                    "timed out waiting for {needle:?} x{count}\n--- console\n{}\n--- stderr\n{}",
                    self.console(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
        self.wait_for_count(needle, 1, timeout)
    }

    /// Waits for the process to exit; panics (after killing it) on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                return st;
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                panic!(
                    "kestrel did not exit within {timeout:?}\n--- console\n{}\n--- stderr\n{}",
                    self.console(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The text framed by `GUEST-RUN <prog>` ... `GUEST-RUN-END`.
    pub fn run_output(&self, prog: &str) -> Option<String> {
        let c = self.console().replace("\r\n", "\n");
        let start = c.find(&format!("GUEST-RUN {prog}\n"))? + prog.len() + 11;
        let end = c[start..].find("GUEST-RUN-END")? + start;
        Some(c[start..end].to_string())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Generous: one boot is 20-55 s on the emulated KVM of the CI machines.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// Runs kestrel to completion with no guest expected to start.
pub fn run_to_exit(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(kestrel())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kestrel");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
