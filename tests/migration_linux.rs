//! Live migration of the Linux test guest between two hosts: two Kestrel processes in
//! two network namespaces joined by a veth pair, over tcp, while the guest keeps
//! dirtying memory, printing a running counter with the checksum of a region of its
//! RAM, and writing the counter to its disk. After the switchover the destination's
//! console continues the count with the same checksum, the host pings the guest from
//! the destination's side, the guest's disk writes reach the shared image, and the
//! source is in postmigrate without its disk. One boot; `#[ignore]`d in plain `cargo
//! test` (`make test` runs it).
#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod common;
use common::{guest, sh, temp_path, Cleanup, Qmp, Vm, BOOT_TIMEOUT};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The guest's workload, run from its second disk.
const WORKLOAD: &str = "\
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
dd if=/dev/urandom of=/tmp/blob bs=4k count=64 2>/dev/null
i=0
while true; do
  i=$((i+1))
  dd if=/dev/urandom of=/tmp/churn bs=4k count=32 2>/dev/null
  echo \"COUNT $i SUM $(md5sum < /tmp/blob)\"
  echo \"DISK $i\" | dd of=/dev/vda bs=512 conv=fsync 2>/dev/null
done
";

/// (count, checksum) of every complete COUNT line.
fn counts(console: &str) -> Vec<(u64, String)> {
    console
        .lines()
        .filter_map(|l| {
            let l = l.trim_end_matches('\r');
            let rest = l.strip_prefix("COUNT ")?;
            let mut w = rest.split_whitespace();
            let n = w.next()?.parse().ok()?;
            (w.next()? == "SUM").then_some(())?;
            Some((n, w.next()?.to_string()))
        })
        .collect()
}

fn side(ns: &str, name: &str, words: &str, extra: &[&str]) -> (Vm, Qmp) {
    let g = guest();
    let sock = temp_path(&format!("{name}.qmp"));
    let _ = std::fs::remove_file(&sock);
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let append = format!("{} {words}", g.cmdline);
    let mut args = vec![
        "-nodefaults",
        "-nographic",
        "-serial",
        "stdio",
        "-m",
        "256",
        "-kernel",
        g.vmlinux.to_str().unwrap(),
        "-initrd",
        g.busybox.to_str().unwrap(),
        "-append",
        &append,
        "-qmp",
        &qmp,
    ];
    args.extend_from_slice(extra);
    let vm = Vm::start_in_netns(ns, &args);
    let mut q = Qmp::connect(&sock);
    q.negotiate();
    (vm, q)
}

fn wait_status(q: &mut Qmp, want: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let info = q.ok("query-migrate", Value::Null);
        if info["status"] == want {
            return info;
        }
        assert!(
            !matches!(info["status"].as_str(), Some("failed" | "cancelled")),
            "{info}"
        );
        assert!(t0.elapsed() < BOOT_TIMEOUT, "still {info}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < BOOT_TIMEOUT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "boots a guest: run by `make test`"]
fn a_busy_guest_migrates_over_tcp_between_network_namespaces() {
    let id = std::process::id();
    let (a, b) = (format!("kmig-a{id}"), format!("kmig-b{id}"));
    assert!(
        sh(&format!("ip netns add {a} && ip netns add {b}")),
        "ip netns add (needs root)"
    );
    let _clean = Cleanup(format!("ip netns del {a}; ip netns del {b}"));
    for (ns, addr) in [(&a, "192.168.77.1/24"), (&b, "192.168.77.2/24")] {
        let x = |c: &str| sh(&format!("ip netns exec {ns} {c}"));
        assert!(x("ip tuntap add dev ktap0 mode tap"));
        assert!(x("ip addr add 10.0.2.1/24 dev ktap0"));
        assert!(x("ip link set ktap0 up"));
        assert!(x("ip link set lo up"));
        let _ = addr;
    }
    assert!(sh(&format!(
        "ip link add kva{id} netns {a} type veth peer name kvb{id} netns {b}"
    )));
    assert!(sh(&format!(
        "ip -n {a} addr add 192.168.77.1/24 dev kva{id} && ip -n {a} link set kva{id} up"
    )));
    assert!(sh(&format!(
        "ip -n {b} addr add 192.168.77.2/24 dev kvb{id} && ip -n {b} link set kvb{id} up"
    )));

    let data = temp_path("mig-linux-data.img");
    std::fs::write(&data, vec![0u8; 1 << 20]).unwrap();
    let script = temp_path("mig-linux-workload.img");
    let mut w = WORKLOAD.as_bytes().to_vec();
    w.resize(w.len().div_ceil(4096) * 4096, b'\n');
    std::fs::write(&script, w).unwrap();
    let d0 = format!("file={},format=raw,if=none,id=d0", data.display());
    let d1 = format!(
        "file={},format=raw,if=none,id=d1,readonly=on",
        script.display()
    );
    let devs = [
        "-netdev",
        "tap,id=n0,ifname=ktap0,script=no,downscript=no",
        "-device",
        "virtio-net-pci,netdev=n0,id=net0",
        "-drive",
        &d0,
        "-device",
        "virtio-blk-pci,drive=d0,id=disk0",
        "-drive",
        &d1,
        "-device",
        "virtio-blk-pci,drive=d1,id=disk1",
    ];
    let words = "guest.run=sh,/dev/vdb";
    let (src, mut sq) = side(&a, "mig-linux-src", words, &devs);
    let mut dargs = devs.to_vec();
    dargs.extend_from_slice(&["-incoming", "tcp:192.168.77.2:4444"]);
    let (dst, mut dq) = side(&b, "mig-linux-dst", words, &dargs);
    for q in [&mut sq, &mut dq] {
        q.ok(
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "events", "state": true}]}),
        );
    }
    wait_until("the guest's workload", || counts(&src.console()).len() >= 3);
    assert!(
        sh(&format!("ip netns exec {a} ping -c 2 -W 10 10.0.2.15")),
        "the host reaches the guest before migration"
    );

    sq.ok("migrate", json!({"uri": "tcp:192.168.77.2:4444"}));
    wait_status(&mut sq, "completed");
    wait_status(&mut dq, "completed");
    let mut seen = Vec::new();
    while let Some(i) = sq.events.iter().position(|e| e["event"] == "MIGRATION") {
        seen.push(
            sq.events.remove(i)["data"]["status"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(seen, ["setup", "active", "completed"]);
    assert_eq!(sq.ok("query-status", Value::Null)["status"], "postmigrate");
    assert_eq!(dq.ok("query-status", Value::Null)["status"], "running");

    let before = counts(&src.console());
    let (last, sum) = before.last().cloned().unwrap();
    assert!(before.iter().all(|(_, s)| *s == sum), "{before:?}");
    let t0 = Instant::now();
    while counts(&dst.console()).len() < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the guest does not go on on the destination; its console:\n{}\nstderr: {}",
            dst.console(),
            dst.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = counts(&dst.console());
    let first = after[0].0;
    assert!(
        first > last && first <= last + 2,
        "the count goes on: source ended at {last}, destination starts at {first}; destination console:\n{}",
        dst.console()
    );
    assert!(
        after.iter().all(|(_, s)| *s == sum),
        "the guest's memory is the same: {sum} then {after:?}"
    );

    assert!(
        sh(&format!("ip netns exec {b} ping -c 3 -W 10 10.0.2.15")),
        "the host reaches the guest on the destination's side"
    );
    wait_until("the guest's disk writes after migration", || {
        let img = std::fs::read(&data).unwrap();
        let text = String::from_utf8_lossy(&img[..64]).to_string();
        text.strip_prefix("DISK ")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n > first)
    });
    let r = sq.cmd("cont", Value::Null);
    assert!(
        r["error"]["desc"].as_str().unwrap_or("").contains("lock"),
        "the destination holds the disk: {r}"
    );
    sq.ok("quit", Value::Null);
    dq.ok("quit", Value::Null);
    let mut src = src;
    let mut dst = dst;
    src.wait_exit(BOOT_TIMEOUT);
    dst.wait_exit(BOOT_TIMEOUT);
    let _ = std::fs::remove_file(&data);
    let _ = std::fs::remove_file(&script);
}
