//! Migration benchmark: Kestrel against QEMU 7.2 on the same machine, in alternation
//! in one run, over a unix socket with `max-bandwidth` unlimited (0).
//!
//! - paused: a guest stopped with `-S` whose RAM (2 GiB by default) is a private
//!   mapping (`share=off`) of a file pre-filled with random bytes, so zero-page
//!   detection skips nothing; the destination's RAM is `memory-backend-ram,prealloc=on`.
//!   Measured: `migrate` to `completed` wall time, GB/s over it, the reported downtime
//!   and setup time, and both sides' peak RSS (VmHWM).
//! - running: the same RAM, with a tiny guest that keeps writing a 1 MiB region;
//!   measured: the reported downtime and total time.
//!
//! Run: `cargo bench -p vmm --bench migration` (`KESTREL_BENCH_ROUNDS`, default 3;
//! `KESTREL_BENCH_MIG_MB`, default 2048).
#![allow(clippy::unwrap_used)] // a benchmark that cannot run has nothing to report

#[path = "../tests/common/mod.rs"]
mod common;

use common::Qmp;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Vmm {
    Kestrel,
    Qemu,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A file of `mb` MiB of pseudo-random bytes (xorshift: incompressible, no zero page).
fn random_file(path: &Path, mb: u64) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == mb << 20) {
        return;
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mb {
        for c in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf).unwrap();
    }
    f.flush().unwrap();
}

fn spawn(vmm: Vmm, mb: u64, ram: &str, kernel: &Path, qmp: &Path, extra: &[&str]) -> Child {
    let size = format!("{mb}M");
    let qmp = format!("unix:{},server=on,wait=off", qmp.display());
    let object = format!("{ram},id=mem,size={size}");
    let mut c = match vmm {
        Vmm::Kestrel => Command::new(common::kestrel()),
        Vmm::Qemu => {
            let mut c = common::tool("qemu-system-x86_64");
            c.args([
                "-accel",
                "kvm",
                "-M",
                "microvm",
                "-cpu",
                "qemu64,+xsaveerptr",
                "-no-user-config",
                "-display",
                "none",
            ]);
            c
        }
    };
    c.args(["-nodefaults", "-m", &size, "-object", &object])
        .args(["-machine", "memory-backend=mem"])
        .args(["-kernel", kernel.to_str().unwrap(), "-qmp", &qmp])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c.spawn().unwrap()
}

fn hwm_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

struct Sample {
    wall: f64,
    downtime_ms: f64,
    setup_ms: f64,
    total_ms: f64,
    src_rss: f64,
    dst_rss: f64,
}

fn run(vmm: Vmm, mb: u64, file: &Path, kernel: &Path, paused: bool) -> Sample {
    let tag = format!("{vmm:?}-{}", std::process::id());
    let sq = std::env::temp_dir().join(format!("kbench-mig-src-{tag}.qmp"));
    let dq = std::env::temp_dir().join(format!("kbench-mig-dst-{tag}.qmp"));
    let sock = std::env::temp_dir().join(format!("kbench-mig-{tag}.sock"));
    for p in [&sq, &dq, &sock] {
        let _ = std::fs::remove_file(p);
    }
    let src_ram = format!("memory-backend-file,mem-path={},share=off", file.display());
    let incoming = format!("unix:{}", sock.display());
    let mut src_extra = vec![];
    if paused {
        src_extra.push("-S");
    }
    let mut src = spawn(vmm, mb, &src_ram, kernel, &sq, &src_extra);
    let mut dst = spawn(
        vmm,
        mb,
        "memory-backend-ram,prealloc=on",
        kernel,
        &dq,
        &["-incoming", &incoming],
    );
    let mut s = Qmp::connect(&sq);
    s.negotiate();
    let mut d = Qmp::connect(&dq);
    d.negotiate();
    // Wait until the destination listens (prealloc can take a while).
    while !sock.exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    s.ok("migrate-set-parameters", json!({"max-bandwidth": 0}));
    if !paused {
        std::thread::sleep(Duration::from_millis(500));
    }
    let t0 = Instant::now();
    s.ok("migrate", json!({ "uri": incoming }));
    let info = loop {
        let i = s.ok("query-migrate", Value::Null);
        match i["status"].as_str() {
            Some("completed") => break i,
            Some("failed" | "cancelled") => panic!("{vmm:?}: {i}"),
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    };
    let wall = t0.elapsed().as_secs_f64();
    let sample = Sample {
        wall,
        downtime_ms: info["downtime"].as_f64().unwrap_or(f64::NAN),
        setup_ms: info["setup-time"].as_f64().unwrap_or(f64::NAN),
        total_ms: info["total-time"].as_f64().unwrap_or(f64::NAN),
        src_rss: hwm_mib(src.id()),
        dst_rss: hwm_mib(dst.id()),
    };
    for c in [&mut src, &mut dst] {
        let _ = c.kill();
        let _ = c.wait();
    }
    for p in [&sq, &dq, &sock] {
        let _ = std::fs::remove_file(p);
    }
    sample
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = env_or("KESTREL_BENCH_ROUNDS", 3);
    let mb: u64 = env_or("KESTREL_BENCH_MIG_MB", 2048);
    let file: PathBuf = std::env::temp_dir().join(format!("kbench-mig-ram-{mb}M.bin"));
    random_file(&file, mb);
    let kernel = common::counting_kernel("bench-mig");
    println!("migration over a unix socket, {mb} MiB of random RAM, {rounds} rounds");
    for paused in [true, false] {
        let mut res: Vec<(Vmm, Vec<Sample>)> = vec![(Vmm::Kestrel, vec![]), (Vmm::Qemu, vec![])];
        for _ in 0..rounds {
            for (vmm, v) in &mut res {
                v.push(run(*vmm, mb, &file, &kernel, paused));
            }
        }
        println!(
            "\n{} guest:",
            if paused {
                "paused (-S)"
            } else {
                "running, dirtying 1 MiB"
            }
        );
        println!(
            "{:8} {:>9} {:>8} {:>12} {:>10} {:>10} {:>12} {:>12}",
            "vmm",
            "wall s",
            "GB/s",
            "downtime ms",
            "setup ms",
            "total ms",
            "src RSS MiB",
            "dst RSS MiB"
        );
        let mut gbs = vec![];
        let mut down = vec![];
        for (vmm, v) in &res {
            let wall = median(v.iter().map(|s| s.wall).collect());
            let rate = (mb << 20) as f64 / 1e9 / wall;
            let dt = median(v.iter().map(|s| s.downtime_ms).collect());
            gbs.push(rate);
            down.push(dt);
            println!(
                "{:8} {:>9.3} {:>8.2} {:>12.1} {:>10.1} {:>10.1} {:>12.0} {:>12.0}",
                format!("{vmm:?}"),
                wall,
                rate,
                dt,
                median(v.iter().map(|s| s.setup_ms).collect()),
                median(v.iter().map(|s| s.total_ms).collect()),
                median(v.iter().map(|s| s.src_rss).collect()),
                median(v.iter().map(|s| s.dst_rss).collect()),
            );
        }
        println!(
            "Kestrel/QEMU: {:.2}x GB/s, downtime {:.2}x",
            gbs[0] / gbs[1],
            down[0] / down[1]
        );
    }
}
