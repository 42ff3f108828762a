//! QMP benchmark: Kestrel against QEMU 7.2 on the same machine, in alternation in one run.
//!
//! - exec to QMP ready: from spawn until the greeting arrives on the unix socket;
//! - sequential round trips: `query-status` with an id, one at a time (rate and latency);
//! - 8 in flight: the same with 8 requests outstanding (pipelined on one connection).
//!
//! Both VMMs start paused (-S), so no guest code competes for the CPU. Kestrel gets a
//! tiny hand-made kernel; QEMU needs none for this. Run: `make bench` or
//! `cargo bench -p vmm --bench qmp` (`KESTREL_BENCH_ROUNDS`, default 5).
//!
//! `KESTREL_BENCH_BASELINE=/path/to/an/older/kestrel` adds that binary as a third VMM
//! in the same alternation, for a before/after comparison of a change in one run.
#![allow(clippy::unwrap_used)] // a benchmark that cannot run has nothing to report

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REQUESTS: usize = 4000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Vmm {
    Kestrel,
    Qemu,
    /// An older Kestrel binary (KESTREL_BENCH_BASELINE).
    Baseline,
}

fn baseline() -> Option<std::path::PathBuf> {
    std::env::var_os("KESTREL_BENCH_BASELINE").map(Into::into)
}

fn spawn(vmm: Vmm, sock: &std::path::Path, kernel: &std::path::Path) -> Child {
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let mut c = match vmm {
        Vmm::Kestrel | Vmm::Baseline => {
            let bin = match vmm {
                Vmm::Baseline => baseline().unwrap(),
                _ => common::kestrel(),
            };
            let mut c = Command::new(bin);
            c.args([
                "-nodefaults",
                "-S",
                "-m",
                "64",
                "-kernel",
                kernel.to_str().unwrap(),
            ]);
            c
        }
        Vmm::Qemu => {
            let mut c = common::tool("qemu-system-x86_64");
            c.args([
                "-accel",
                "kvm",
                "-M",
                "microvm",
                "-cpu",
                "qemu64,+xsaveerptr",
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-S",
                "-m",
                "64",
            ]);
            c
        }
    };
    c.args(["-qmp", &qmp])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c.spawn().unwrap()
}

struct Conn {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Conn {
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        l
    }
}

/// Connects as soon as the socket accepts; returns the connection and the time from
/// `t0` to the greeting.
fn connect(sock: &std::path::Path, t0: Instant) -> (Conn, Duration) {
    let s = loop {
        match UnixStream::connect(sock) {
            Ok(s) => break s,
            Err(_) => {
                assert!(t0.elapsed() < Duration::from_secs(20), "no QMP socket");
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    };
    let mut c = Conn {
        r: BufReader::new(s.try_clone().unwrap()),
        w: s,
    };
    let g = c.line();
    let ready = t0.elapsed();
    assert!(g.contains("QMP"), "{g}");
    c.w.write_all(b"{\"execute\":\"qmp_capabilities\"}")
        .unwrap();
    assert!(c.line().contains("return"));
    (c, ready)
}

/// (requests per second, p50 µs, p99 µs) with `depth` requests outstanding.
fn round_trips(c: &mut Conn, depth: usize) -> (f64, f64, f64) {
    let req = |i: usize| format!("{{\"execute\":\"query-status\",\"id\":{i}}}");
    let mut sent_at = vec![Instant::now(); REQUESTS];
    let mut lat = Vec::with_capacity(REQUESTS);
    let start = Instant::now();
    let mut next = 0;
    while next < depth.min(REQUESTS) {
        sent_at[next] = Instant::now();
        c.w.write_all(req(next).as_bytes()).unwrap();
        next += 1;
    }
    for done in 0..REQUESTS {
        let l = c.line();
        assert!(
            l.contains(&format!("\"id\": {done}}}")),
            "out of order or failed: {l}"
        );
        lat.push(sent_at[done].elapsed().as_secs_f64() * 1e6);
        if next < REQUESTS {
            sent_at[next] = Instant::now();
            c.w.write_all(req(next).as_bytes()).unwrap();
            next += 1;
        }
    }
    let rate = REQUESTS as f64 / start.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (rate, lat[lat.len() / 2], lat[lat.len() * 99 / 100])
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::var("KESTREL_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let kernel = common::tiny_kernel("bench", "", None);
    // [vmm][measure] samples: ready ms, seq rate, seq p50, seq p99, 8-deep rate, 8-deep p50, 8-deep p99
    let mut s: [[Vec<f64>; 7]; 3] = Default::default();
    let mut vmms = vec![Vmm::Kestrel, Vmm::Qemu];
    if baseline().is_some() {
        vmms.push(Vmm::Baseline);
    }
    for round in 0..rounds {
        for (i, vmm) in vmms.iter().copied().enumerate() {
            let sock = common::temp_path(&format!("bench-{i}.qmp"));
            let _ = std::fs::remove_file(&sock);
            let t0 = Instant::now();
            let mut child = spawn(vmm, &sock, &kernel);
            let (mut c, ready) = connect(&sock, t0);
            let (r1, p50_1, p99_1) = round_trips(&mut c, 1);
            let (r8, p50_8, p99_8) = round_trips(&mut c, 8);
            let _ = child.kill();
            let _ = child.wait();
            for (k, v) in [
                ready.as_secs_f64() * 1e3,
                r1,
                p50_1,
                p99_1,
                r8,
                p50_8,
                p99_8,
            ]
            .into_iter()
            .enumerate()
            {
                s[i][k].push(v);
            }
            eprintln!(
                "round {round} {vmm:?}: ready {:.1} ms; sequential {r1:.0}/s p50 {p50_1:.0} µs p99 {p99_1:.0} µs; 8 in flight {r8:.0}/s p50 {p50_8:.0} µs p99 {p99_8:.0} µs",
                ready.as_secs_f64() * 1e3
            );
        }
    }
    let m: Vec<Vec<f64>> = s[..vmms.len()]
        .iter_mut()
        .map(|v| v.iter_mut().map(|x| median(x)).collect())
        .collect();
    println!("medians of {rounds} alternating rounds, {REQUESTS} query-status requests each, both VMMs paused (-S)");
    if m.len() == 3 {
        println!(
            "| measure | Kestrel | QEMU 7.2 | Kestrel/QEMU | baseline Kestrel | Kestrel/baseline |"
        );
        println!("|---|---|---|---|---|---|");
    } else {
        println!("| measure | Kestrel | QEMU 7.2 | Kestrel/QEMU |");
        println!("|---|---|---|---|");
    }
    let names = [
        ("exec to QMP greeting", "ms"),
        ("sequential round trips", "/s"),
        ("sequential latency p50", "µs"),
        ("sequential latency p99", "µs"),
        ("8 in flight round trips", "/s"),
        ("8 in flight latency p50", "µs"),
        ("8 in flight latency p99", "µs"),
    ];
    for (k, (name, unit)) in names.iter().enumerate() {
        let mut row = format!(
            "| {name} | {:.1} {unit} | {:.1} {unit} | {:.2}x |",
            m[0][k],
            m[1][k],
            m[0][k] / m[1][k]
        );
        if let Some(b) = m.get(2) {
            row += &format!(" {:.1} {unit} | {:.2}x |", b[k], m[0][k] / b[k]);
        }
        println!("{row}");
    }
}
