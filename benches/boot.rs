//! Boot benchmark: Kestrel against QEMU microvm on the same kernel and initramfs, in
//! alternation in one run, so both see the same machine load.
//!
//! Measures, per VMM:
//! - exec to the first KVM_RUN (from `strace -ttt` of execve and ioctl, the same tracing
//!   for both, with seccomp-bpf so untraced syscalls cost nothing),
//! - exec to the guest's `GUEST-UP` marker on the serial console (no tracing),
//! - RSS of the VMM itself with a 256 MiB guest started paused (-S): the process's RSS
//!   minus what is resident in the guest RAM mapping, and the total.
//!
//! Run: `make bench` (or `cargo bench -p vmm --bench boot`); `KESTREL_BENCH_ROUNDS`
//! sets the rounds (default 5). Needs the test guest (`make guest`), qemu-system-x86
//! and strace.
#![allow(clippy::unwrap_used)] // a benchmark that cannot run has nothing to report

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MEM_MIB: u64 = 256;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Vmm {
    Kestrel,
    Qemu,
}

struct Guest {
    vmlinux: String,
    initrd: String,
    cmdline: String,
}

fn guest() -> Guest {
    let d = std::env::var("KESTREL_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/guest"));
    let cmdline = std::fs::read_to_string(d.join("cmdline"))
        .unwrap_or_else(|_| panic!("no test guest in {}: run `make guest`", d.display()));
    Guest {
        vmlinux: d.join("vmlinux").display().to_string(),
        initrd: d.join("initramfs.cpio").display().to_string(),
        cmdline: cmdline.trim().to_string(),
    }
}

fn argv(vmm: Vmm, g: &Guest, paused: bool) -> Vec<String> {
    let mut a: Vec<String> = match vmm {
        Vmm::Kestrel => vec![env!("CARGO_BIN_EXE_kestrel").into()],
        Vmm::Qemu => vec![
            "qemu-system-x86_64".into(),
            "-accel".into(),
            "kvm".into(),
            "-M".into(),
            "microvm,rtc=on".into(),
            "-no-user-config".into(),
        ],
    };
    for s in [
        "-cpu",
        "qemu64,+xsaveerptr",
        "-m",
        &MEM_MIB.to_string(),
        "-smp",
        "1",
        "-nodefaults",
        "-nographic",
        "-serial",
        "stdio",
        "-kernel",
        &g.vmlinux,
        "-initrd",
        &g.initrd,
        "-append",
        &g.cmdline,
    ] {
        a.push(s.to_string());
    }
    if paused {
        a.push("-S".into());
    }
    a
}

fn spawn(args: &[String]) -> Child {
    Command::new(&args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", args[0]))
}

fn kill(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// Seconds from exec to the first KVM_RUN, from strace's timestamps.
fn exec_to_first_kvm_run(vmm: Vmm, g: &Guest) -> f64 {
    let trace = std::env::temp_dir().join(format!("kestrel-bench-strace-{}", std::process::id()));
    let mut args: Vec<String> = [
        "strace",
        "-f",
        "-qq",
        "--seccomp-bpf",
        "-ttt",
        "-e",
        "trace=execve,ioctl",
        "-e",
        "signal=none",
        "-o",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(trace.display().to_string());
    args.extend(argv(vmm, g, false));
    let c = spawn(&args);
    let start = Instant::now();
    let mut found = None;
    while start.elapsed() < Duration::from_secs(20) && found.is_none() {
        std::thread::sleep(Duration::from_millis(50));
        let t = std::fs::read_to_string(&trace).unwrap_or_default();
        let ts = |l: &str| -> Option<f64> { l.split_whitespace().nth(1)?.parse().ok() };
        let exec = t.lines().find(|l| l.contains("execve(")).and_then(ts);
        let run = t.lines().find(|l| l.contains("KVM_RUN")).and_then(ts);
        if let (Some(e), Some(r)) = (exec, run) {
            found = Some(r - e);
        }
    }
    // Killing strace detaches its tracee, which would run on: kill the VMM itself too
    // (its pid starts the execve line of the trace).
    let t = std::fs::read_to_string(&trace).unwrap_or_default();
    let traced: Option<i32> = t
        .lines()
        .find(|l| l.contains("execve("))
        .and_then(|l| l.split_whitespace().next()?.parse().ok());
    kill(c);
    if let Some(pid) = traced {
        // SAFETY: kill(2) on a pid we started; at worst it has exited already.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _ = std::fs::remove_file(&trace);
    found.unwrap_or_else(|| panic!("{vmm:?}: no KVM_RUN within 20 s"))
}

fn monotonic_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Kestrel only, untraced: seconds from spawn to its own report of the first KVM_RUN
/// (`KESTREL_TRACE_STARTUP`), both on CLOCK_MONOTONIC.
fn kestrel_first_kvm_run_untraced(g: &Guest) -> f64 {
    let args = argv(Vmm::Kestrel, g, false);
    let t0 = monotonic_ns();
    let mut c = Command::new(&args[0])
        .args(&args[1..])
        .env("KESTREL_TRACE_STARTUP", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(c.stderr.take().unwrap());
    let mut line = String::new();
    let mut found = None;
    while std::io::BufRead::read_line(&mut err, &mut line).unwrap_or(0) > 0 {
        if let Some(v) = line
            .trim()
            .strip_prefix("kestrel-startup: first-kvm-run monotonic-ns=")
        {
            found = v.parse::<i128>().ok();
            break;
        }
        line.clear();
    }
    kill(c);
    let ns = found.unwrap_or_else(|| panic!("no startup trace from kestrel"));
    (ns - t0) as f64 / 1e9
}

/// Seconds from exec to `GUEST-UP` on the console.
fn exec_to_marker(vmm: Vmm, g: &Guest) -> f64 {
    let args = argv(vmm, g, false);
    let start = Instant::now();
    let mut c = spawn(&args);
    let mut out = c.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let found = loop {
        let n = out.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break None;
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.windows(8).any(|w| w == b"GUEST-UP") {
            break Some(start.elapsed().as_secs_f64());
        }
    };
    kill(c);
    found.unwrap_or_else(|| {
        panic!(
            "{vmm:?} ended before the marker:\n{}",
            String::from_utf8_lossy(&seen)
        )
    })
}

/// (VMM RSS without guest RAM, total RSS), in MiB, of a paused 256 MiB guest.
fn rss(vmm: Vmm, g: &Guest) -> (f64, f64) {
    let c = spawn(&argv(vmm, g, true));
    // Let it finish building the machine; a paused guest does nothing after that.
    std::thread::sleep(Duration::from_millis(1500));
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", c.id())).unwrap();
    kill(c);
    let (mut total_kb, mut guest_kb) = (0u64, 0u64);
    let mut size_kb = 0u64;
    for l in smaps.lines() {
        let mut w = l.split_whitespace();
        match w.next() {
            Some("Size:") => size_kb = w.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            Some("Rss:") => {
                let r: u64 = w.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                total_kb += r;
                // Guest RAM is the one mapping at least as large as the guest.
                if size_kb >= MEM_MIB * 1024 {
                    guest_kb += r;
                }
            }
            _ => {}
        }
    }
    (
        (total_kb - guest_kb) as f64 / 1024.0,
        total_kb as f64 / 1024.0,
    )
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; a filter argument selects nothing here.
    let rounds: usize = std::env::var("KESTREL_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let g = guest();
    let vmms = [Vmm::Kestrel, Vmm::Qemu];
    let mut startup = [Vec::new(), Vec::new()];
    let mut marker = [Vec::new(), Vec::new()];
    let mut vmm_rss = [Vec::new(), Vec::new()];
    let mut total_rss = [Vec::new(), Vec::new()];
    let mut untraced = Vec::new();
    for round in 0..rounds {
        untraced.push(kestrel_first_kvm_run_untraced(&g));
        for (i, v) in vmms.iter().enumerate() {
            startup[i].push(exec_to_first_kvm_run(*v, &g));
            let (a, b) = rss(*v, &g);
            vmm_rss[i].push(a);
            total_rss[i].push(b);
            marker[i].push(exec_to_marker(*v, &g));
            eprintln!(
                "round {round} {v:?}: first KVM_RUN {:.1} ms, marker {:.2} s, RSS {:.1} MiB (total {:.1})",
                startup[i].last().unwrap() * 1e3,
                marker[i].last().unwrap(),
                a,
                b
            );
        }
    }
    let k = |m: &mut [Vec<f64>; 2], i: usize| median(&mut m[i]);
    let (s0, s1) = (k(&mut startup, 0) * 1e3, k(&mut startup, 1) * 1e3);
    let (m0, m1) = (k(&mut marker, 0), k(&mut marker, 1));
    let (r0, r1) = (k(&mut vmm_rss, 0), k(&mut vmm_rss, 1));
    let (t0, t1) = (k(&mut total_rss, 0), k(&mut total_rss, 1));
    println!("medians of {rounds} alternating rounds, 256 MiB guest, -smp 1, tiny initramfs");
    println!("| measure | Kestrel | QEMU 7.2 microvm | Kestrel/QEMU |");
    println!("|---|---|---|---|");
    println!(
        "| exec to first KVM_RUN (strace) | {s0:.1} ms | {s1:.1} ms | {:.2}x |",
        s0 / s1
    );
    let u = median(&mut untraced) * 1e3;
    println!("| spawn to first KVM_RUN, untraced (Kestrel's own KESTREL_TRACE_STARTUP report) | {u:.1} ms | - | - |");
    println!(
        "| exec to guest marker | {m0:.2} s | {m1:.2} s | {:.2}x |",
        m0 / m1
    );
    println!(
        "| VMM RSS, guest RAM excluded (paused) | {r0:.1} MiB | {r1:.1} MiB | {:.2}x |",
        r0 / r1
    );
    println!(
        "| total RSS (paused, kernel+initrd loaded) | {t0:.1} MiB | {t1:.1} MiB | {:.2}x |",
        t0 / t1
    );
}
