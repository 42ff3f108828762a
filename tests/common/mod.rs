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

/// The external programs the suite runs and the Debian package of each
/// (resources/setup-test-deps.sh installs them all; `make deps`).
const TOOLS: &[(&str, &str)] = &[
    ("qemu-img", "qemu-utils"),
    ("qemu-nbd", "qemu-utils"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("iasl", "acpica-tools"),
    ("ip", "iproute2"),
    ("ping", "iputils-ping"),
    ("mkfs.ext4", "e2fsprogs"),
    ("busybox", "busybox-static"),
    ("cpio", "cpio"),
    ("socat", "socat"),
    ("strace", "strace"),
    ("fio", "fio"),
    ("sh", "dash"),
];

/// A `Command` for the external program `name`, after checking that it is on PATH:
/// a missing tool fails the test with its name and package, not with a spawn error.
pub fn tool(name: &str) -> Command {
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| {
            std::fs::metadata(d.join(name)).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
    });
    if !found {
        let pkg = TOOLS
            .iter()
            .find(|(t, _)| *t == name)
            .map_or("the package that has it", |(_, p)| p);
        panic!("`{name}` is not on PATH: install Debian's {pkg} (`make deps` installs everything the suite needs)");
    }
    Command::new(name)
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

/// Generous: one boot is 20-55 s on the emulated KVM of the CI machines, and a host
/// of this kind has been seen at 45-70 s with two test guests booting at once (the
/// balloon test, a boot plus 64 MiB written and freed, then took 237 s alone). A test
/// that passes never waits this long; one that fails says so a few minutes later.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(480);

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

/// A tiny hand-written guest: an ELF with a PVH entry note whose 32-bit code prints
/// `msg` on COM1, then either halts forever or writes `exit_port`/`exit_value` (e.g. the
/// ACPI sleep register for S5). It runs in microseconds even under instruction
/// emulation, so monitor tests need neither `make guest` nor a real boot.
pub fn tiny_kernel(name: &str, msg: &str, exit: Option<(u16, u8)>) -> PathBuf {
    let mut code = Vec::new();
    // mov dx, 0x3f8
    code.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03]);
    for b in msg.bytes() {
        code.extend_from_slice(&[0xb0, b, 0xee]); // mov al, b; out dx, al
    }
    if let Some((port, val)) = exit {
        let p = port.to_le_bytes();
        code.extend_from_slice(&[0x66, 0xba, p[0], p[1], 0xb0, val, 0xee]);
    }
    code.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp back to hlt
    tiny_kernel_code(name, &code)
}

/// A guest that counts forever, for migration: ECX counts; count N is stored at
/// 2 MiB + (4 N mod 1 MiB), so RAM keeps getting dirty (16 pages a letter, the whole
/// MiB every 64 letters), and every 16384 counts it prints
/// the next letter of `a`..`z` (then `a` again) on COM1. A migrated guest's console
/// continues the alphabet where the source's stopped. Needs at least 4 MiB of RAM.
pub fn counting_kernel(name: &str) -> PathBuf {
    #[rustfmt::skip]
    let code = [
        0x66, 0xba, 0xf8, 0x03,             // mov dx, 0x3f8
        0x31, 0xc9,                         // xor ecx, ecx
        0xb3, b'a',                         // mov bl, 'a'
        // loop:
        0x41,                               // inc ecx
        0x89, 0xc8,                         // mov eax, ecx
        0xc1, 0xe0, 0x02,                   // shl eax, 2
        0x25, 0xfc, 0xff, 0x0f, 0x00,       // and eax, 0xffffc
        0x89, 0x88, 0x00, 0x00, 0x20, 0x00, // mov [eax + 0x200000], ecx
        0xf7, 0xc1, 0xff, 0x3f, 0x00, 0x00, // test ecx, 0x3fff
        0x75, 0xe7,                         // jnz loop (-25)
        0x88, 0xd8,                         // mov al, bl
        0xee,                               // out dx, al
        0xfe, 0xc3,                         // inc bl
        0x80, 0xfb, b'z' + 1,               // cmp bl, 'z' + 1
        0x75, 0xdd,                         // jne loop (-35)
        0xb3, b'a',                         // mov bl, 'a'
        0xeb, 0xd9,                         // jmp loop (-39)
    ];
    tiny_kernel_code(name, &code)
}

/// An ELF with a PVH entry note whose 32-bit `code` is loaded and entered at 1 MiB.
pub fn tiny_kernel_code(name: &str, code: &[u8]) -> PathBuf {
    const LOAD: u32 = 0x10_0000;
    // Xen PVH note: name "Xen", type XEN_ELFNOTE_PHYS32_ENTRY (18), desc = entry.
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&18u32.to_le_bytes());
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&LOAD.to_le_bytes());

    let (ehsize, phsize) = (64u64, 56u64);
    let note_off = ehsize + 2 * phsize;
    let code_off = 0x1000u64;
    let mut f = vec![0u8; code_off as usize];
    f[0..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // 64-bit
    f[5] = 1; // little endian
    f[6] = 1; // version
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..32].copy_from_slice(&u64::from(LOAD).to_le_bytes()); // e_entry
    f[32..40].copy_from_slice(&ehsize.to_le_bytes()); // e_phoff
    f[52..54].copy_from_slice(&(ehsize as u16).to_le_bytes());
    f[54..56].copy_from_slice(&(phsize as u16).to_le_bytes());
    f[56..58].copy_from_slice(&2u16.to_le_bytes()); // e_phnum
    let mut ph = |i: u64, ty: u32, off: u64, addr: u64, size: u64| {
        let o = (ehsize + i * phsize) as usize;
        f[o..o + 4].copy_from_slice(&ty.to_le_bytes());
        f[o + 4..o + 8].copy_from_slice(&5u32.to_le_bytes()); // R+X
        f[o + 8..o + 16].copy_from_slice(&off.to_le_bytes());
        f[o + 16..o + 24].copy_from_slice(&addr.to_le_bytes());
        f[o + 24..o + 32].copy_from_slice(&addr.to_le_bytes());
        f[o + 32..o + 40].copy_from_slice(&size.to_le_bytes());
        f[o + 40..o + 48].copy_from_slice(&size.to_le_bytes());
        f[o + 48..o + 56].copy_from_slice(&4u64.to_le_bytes());
    };
    ph(0, 1, code_off, u64::from(LOAD), code.len() as u64); // PT_LOAD
    ph(1, 4, note_off, 0, note.len() as u64); // PT_NOTE
    f[note_off as usize..note_off as usize + note.len()].copy_from_slice(&note);
    f.extend_from_slice(code);
    let p = std::env::temp_dir().join(format!("kestrel-tiny-{name}-{}.elf", std::process::id()));
    std::fs::write(&p, f).unwrap();
    p
}

/// A unique path for a socket or file of this test process.
pub fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("kestrel-{name}-{}", std::process::id()))
}

/// A raw QMP connection: what a strict client sees on the wire.
pub struct Qmp {
    pub stream: std::os::unix::net::UnixStream,
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    /// Events received while waiting for replies, in order.
    pub events: Vec<serde_json::Value>,
    pub greeting: serde_json::Value,
}

impl Qmp {
    /// Connects (retrying while the socket appears) and reads the greeting.
    pub fn connect(path: &Path) -> Qmp {
        let start = Instant::now();
        let stream = loop {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(
                        start.elapsed() < Duration::from_secs(20),
                        "connect {}: {e}",
                        path.display()
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        // A test may wait here for an event that follows a whole guest boot (20-55 s on
        // the emulated KVM of these machines, more with two guests booting at once), so
        // the wait is a boot's, not a round trip's.
        stream.set_read_timeout(Some(BOOT_TIMEOUT)).unwrap();
        let reader = std::io::BufReader::new(stream.try_clone().unwrap());
        let mut q = Qmp {
            stream,
            reader,
            events: Vec::new(),
            greeting: serde_json::Value::Null,
        };
        q.greeting = q.read_raw();
        q
    }

    /// Reads one message; asserts it is one line ending in CRLF.
    pub fn read_raw(&mut self) -> serde_json::Value {
        use std::io::BufRead;
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read from QMP");
        assert!(n > 0, "QMP connection closed");
        assert!(line.ends_with("\r\n"), "message must end in CRLF: {line:?}");
        assert!(line.is_ascii(), "wire must be ASCII: {line:?}");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON from server {line:?}: {e}"))
    }

    /// Next non-event message; events are kept in `events`.
    pub fn reply(&mut self) -> serde_json::Value {
        loop {
            let v = self.read_raw();
            if v.get("event").is_some() {
                self.events.push(v);
            } else {
                return v;
            }
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.stream.write_all(bytes).unwrap();
    }

    pub fn cmd(&mut self, name: &str, args: serde_json::Value) -> serde_json::Value {
        let mut m = serde_json::json!({ "execute": name });
        if !args.is_null() {
            m["arguments"] = args;
        }
        self.send_raw(m.to_string().as_bytes());
        self.reply()
    }

    /// Runs a command that must succeed; returns its `return`.
    pub fn ok(&mut self, name: &str, args: serde_json::Value) -> serde_json::Value {
        let r = self.cmd(name, args);
        r.get("return")
            .cloned()
            .unwrap_or_else(|| panic!("{name} failed: {r}"))
    }

    pub fn negotiate(&mut self) {
        self.ok("qmp_capabilities", serde_json::Value::Null);
    }

    /// Waits for event `name` (already received or arriving), removing it from `events`.
    pub fn event(&mut self, name: &str) -> serde_json::Value {
        loop {
            if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
                return self.events.remove(i);
            }
            let v = self.read_raw();
            assert!(
                v.get("event").is_some(),
                "unexpected reply while waiting for {name}: {v}"
            );
            self.events.push(v);
        }
    }
}

impl Vm {
    /// Starts kestrel with `args` inside network namespace `ns` (`ip netns exec`).
    pub fn start_in_netns(ns: &str, args: &[&str]) -> Vm {
        let mut child = tool("ip")
            .args(["netns", "exec", ns])
            .arg(kestrel())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kestrel in a network namespace");
        let out = collect(child.stdout.take().unwrap());
        let err = collect(child.stderr.take().unwrap());
        Vm { child, out, err }
    }
}

/// Runs `cmd` with `sh -c`; whether it succeeded.
pub fn sh(cmd: &str) -> bool {
    tool("sh")
        .args(["-c", cmd])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs a shell command when dropped (namespaces, mounts and the like go even if the
/// test fails).
pub struct Cleanup(pub String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        sh(&self.0);
    }
}

/// The Python with qemu.qmp that `make deps` installs (resources/setup-test-deps.sh).
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("KESTREL_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cache = std::env::var("XDG_CACHE_HOME").unwrap_or_else(|_| format!("{home}/.cache"));
    PathBuf::from(format!("{cache}/kestrel/venv/bin/python3"))
}

/// `python3 tests/python/SCRIPT` with the qemu.qmp venv; panics with the fix if the venv
/// is missing.
pub fn python_script(script: &str) -> Command {
    let py = python();
    assert!(
        py.exists(),
        "{} missing: `make deps` makes this venv with PyPI's qemu.qmp",
        py.display()
    );
    let mut c = Command::new(py);
    c.arg(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/python")
            .join(script),
    );
    c
}

/// Mounts a tmpfs of `size` (mount's syntax: "512k") on `dir`, made if missing (needs
/// root); unmounted and removed when the returned value drops.
pub fn mount_tmpfs(dir: &Path, size: &str) -> Cleanup {
    std::fs::create_dir_all(dir).unwrap();
    assert!(
        sh(&format!(
            "mount -t tmpfs -o size={size} kestrel-test {}",
            dir.display()
        )),
        "mount tmpfs (needs root)"
    );
    Cleanup(format!("umount {}; rmdir {}", dir.display(), dir.display()))
}
