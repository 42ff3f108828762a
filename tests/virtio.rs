//! Virtio devices with the test guest's busybox userland: virtio-blk on io_uring (and the
//! thread pool), read-only drives, werror=stop on a full host file system, virtio-net on a
//! tap in a network namespace the test creates, virtio-console over a unix socket, and the
//! QMP queries about them. Each test is one boot; they are `#[ignore]`d in plain
//! `cargo test` (`make test` runs them).
#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod common;
use common::{guest, sh, temp_path, Cleanup, Qmp, Vm, BOOT_TIMEOUT};
use serde_json::{json, Value};
use std::path::Path;

fn image(path: &Path, size: u64, at: u64, pattern: &[u8]) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(pattern, at).unwrap();
}

fn boot(name: &str, words: &str, extra: &[&str]) -> (Vm, Qmp) {
    let g = guest();
    let sock = temp_path(&format!("{name}.qmp"));
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let mut args = vec!["-m", "256", "-qmp", &qmp];
    args.extend_from_slice(extra);
    let vm = Vm::boot(&g, &g.busybox, words, &args);
    let mut q = Qmp::connect(&sock);
    q.negotiate();
    (vm, q)
}

#[test]
#[ignore = "boots a guest: run by `make test`"]
fn virtio_blk_reads_writes_flushes_and_reports() {
    let a = temp_path("blk-a.img");
    let b = temp_path("blk-b.img");
    image(&a, 64 << 20, 1 << 20, b"HOST-WRITTEN-PATTERN-A\n");
    image(&b, 32 << 20, 0, b"READ-ONLY-DISK-B\n");
    let drive_a = format!(
        "file={},format=raw,if=none,id=d0,cache=none,aio=io_uring",
        a.display()
    );
    let file_b = format!(
        "driver=file,filename={},node-name=f1,aio=threads",
        b.display()
    );
    let words = "guest.run=cat,/sys/block/vda/serial guest.run=dd,if=/dev/vda,bs=1M,skip=1,count=1,status=none,|,head,-c,22 \
                 guest.run=head,-c,16,/dev/vdb guest.run=printf,GUEST-WRITTEN-PATTERN,|,dd,of=/dev/vda,conv=fsync,status=none \
                 guest.run=printf,X,>/dev/vdb guest.run=cat,/sys/block/vdb/ro guest.run=ls,/sys/block/vda/mq";
    let (mut vm, mut q) = boot(
        "blk",
        words,
        &[
            // Linux uses at most one virtio-blk queue per CPU.
            "-smp",
            "2",
            "-drive",
            &drive_a,
            "-device",
            "virtio-blk-pci,drive=d0,id=disk0,serial=KESTREL-SN-1,num-queues=2",
            "-blockdev",
            &file_b,
            "-blockdev",
            "driver=raw,file=f1,node-name=r1,read-only=on",
            "-device",
            "virtio-blk-pci,drive=r1,id=disk1,addr=0x6",
        ],
    );
    vm.wait_for("GUEST-RUN ls /sys/block/vda/mq", BOOT_TIMEOUT);
    vm.wait_for_count("GUEST-RUN-END", 7, BOOT_TIMEOUT);
    let mq = vm.run_output("ls /sys/block/vda/mq").unwrap();
    assert_eq!(
        mq.split_whitespace().collect::<Vec<_>>(),
        ["0", "1"],
        "num-queues=2 gives two hardware queues"
    );
    assert_eq!(
        vm.run_output("cat /sys/block/vda/serial").unwrap().trim(),
        "KESTREL-SN-1"
    );
    let host_pattern = vm
        .run_output("dd if=/dev/vda bs=1M skip=1 count=1 status=none | head -c 22")
        .unwrap();
    assert_eq!(host_pattern, "HOST-WRITTEN-PATTERN-A");
    assert_eq!(
        vm.run_output("head -c 16 /dev/vdb").unwrap(),
        "READ-ONLY-DISK-B"
    );
    assert_eq!(vm.run_output("cat /sys/block/vdb/ro").unwrap().trim(), "1");
    let c = vm.console();
    let ro_write = c.split("GUEST-RUN printf X >/dev/vdb").nth(1).unwrap();
    let end = ro_write.find("GUEST-RUN-END status=").unwrap();
    assert!(
        !ro_write[end..].starts_with("GUEST-RUN-END status=0"),
        "a write to the read-only disk must fail: {ro_write}"
    );

    // QMP sees both devices, with real counters.
    let block = q.ok("query-block", Value::Null);
    let block = block.as_array().unwrap();
    assert_eq!(block.len(), 2);
    assert_eq!(block[0]["device"], "d0");
    assert_eq!(block[0]["inserted"]["file"], a.display().to_string());
    assert_eq!(block[0]["inserted"]["ro"], false);
    assert_eq!(block[0]["inserted"]["cache"]["direct"], true);
    assert_eq!(block[0]["inserted"]["image"]["virtual-size"], 64 << 20);
    assert_eq!(block[1]["inserted"]["ro"], true);
    let stats = q.ok("query-blockstats", Value::Null);
    let s0 = &stats[0]["stats"];
    assert!(s0["rd_operations"].as_u64().unwrap() > 0, "{s0}");
    assert!(s0["wr_operations"].as_u64().unwrap() > 0, "{s0}");
    assert!(s0["wr_bytes"].as_u64().unwrap() >= 21, "{s0}");
    assert!(s0["flush_operations"].as_u64().unwrap() > 0, "{s0}");
    assert_eq!(
        stats[1]["stats"]["wr_operations"], 0,
        "nothing reached the read-only disk"
    );
    let pci = q.ok("query-pci", Value::Null);
    let devs = pci[0]["devices"].as_array().unwrap();
    assert_eq!(
        devs[0]["id"],
        json!({"device": 0x0008, "vendor": 0x1b36, "subsystem": 0x1100, "subsystem-vendor": 0x1af4})
    );
    let blk: Vec<&Value> = devs
        .iter()
        .filter(|d| d["id"]["device"] == 0x1042)
        .collect();
    assert_eq!(blk.len(), 2, "{pci}");
    assert_eq!(blk[1]["slot"], 6);
    assert_eq!(blk[0]["qdev_id"], "disk0");
    assert_eq!(blk[0]["class_info"]["class"], 0x0100);
    assert!(
        blk[0]["regions"][0]["address"].as_i64().unwrap() > 0,
        "BAR 0 is mapped: {pci}"
    );

    q.ok("system_powerdown", Value::Null);
    assert_eq!(vm.wait_exit(BOOT_TIMEOUT).code(), Some(0));
    let data = std::fs::read(&a).unwrap();
    assert_eq!(
        &data[..21],
        b"GUEST-WRITTEN-PATTERN",
        "the guest's write is on disk after its flush"
    );
    std::fs::remove_file(&a).ok();
    std::fs::remove_file(&b).ok();
}

/// werror=stop: a write that hits ENOSPC on the host pauses the machine in io-error with
/// BLOCK_IO_ERROR; after space is freed, `cont` retries it and nothing is lost.
#[test]
#[ignore = "boots a guest: run by `make test`"]
fn werror_stop_pauses_and_cont_retries_after_space_is_freed() {
    let dir = temp_path("fullfs");
    let _umount = common::mount_tmpfs(&dir, "512k");
    let img = dir.join("disk.img");
    image(&img, 16 << 20, 0, b"");
    let drive = format!(
        "file={},format=raw,if=none,id=d0,werror=stop",
        img.display()
    );
    let (mut vm, mut q) = boot(
        "werror",
        "guest.run=yes,KESTREL-ENOSPC,|,head,-c,2097152,|,dd,of=/dev/vda,bs=64k,conv=fsync,status=none",
        &["-drive", &drive, "-device", "virtio-blk-pci,drive=d0,id=disk0"],
    );
    let e = q.event("BLOCK_IO_ERROR");
    assert_eq!(e["data"]["device"], "disk0", "{e}");
    assert_eq!(e["data"]["operation"], "write");
    assert_eq!(e["data"]["action"], "stop");
    assert_eq!(e["data"]["nospace"], true);
    q.event("STOP");
    assert_eq!(
        q.ok("query-status", Value::Null),
        json!({"running": false, "status": "io-error"})
    );
    assert!(
        !vm.console().contains("GUEST-RUN-END"),
        "the guest's write has not completed"
    );
    assert!(sh(&format!("mount -o remount,size=64m {}", dir.display())));
    q.ok("cont", Value::Null);
    vm.wait_for("GUEST-RUN-END", BOOT_TIMEOUT);
    let out = vm.console();
    assert!(
        out.contains("GUEST-RUN-END status=0"),
        "the write completed after cont: {out}"
    );
    q.ok("system_powerdown", Value::Null);
    assert_eq!(vm.wait_exit(BOOT_TIMEOUT).code(), Some(0));
    let data = std::fs::read(&img).unwrap();
    let want: Vec<u8> = b"KESTREL-ENOSPC\n"
        .iter()
        .copied()
        .cycle()
        .take(2 << 20)
        .collect();
    assert!(
        data[..2 << 20] == want[..],
        "every byte the guest wrote is on disk"
    );
}

/// virtio-net on a tap in a namespace the test makes: the guest pings the host and the
/// host pings the guest; set_link down stops traffic and up restores it.
#[test]
#[ignore = "boots a guest: run by `make test`"]
fn virtio_net_on_tap_pings_both_ways_and_follows_set_link() {
    let ns = format!("kestrel-t{}", std::process::id());
    let x = |c: &str| sh(&format!("ip netns exec {ns} {c}"));
    assert!(
        sh(&format!("ip netns add {ns}")),
        "ip netns add (needs root and iproute2)"
    );
    let _ns = Cleanup(format!("ip netns del {ns}"));
    assert!(x("ip tuntap add dev ktap0 mode tap"));
    assert!(x("ip addr add 10.0.2.1/24 dev ktap0"));
    assert!(x("ip link set ktap0 up"));
    let g = guest();
    let sock = temp_path("net.qmp");
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let append = format!(
        "{} guest.run=ip,link,set,eth0,up guest.run=ip,addr,add,10.0.2.15/24,dev,eth0 guest.run=ping,-c,2,-W,20,10.0.2.1",
        g.cmdline
    );
    let mut vm = Vm::start_in_netns(
        &ns,
        &[
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
            "-netdev",
            "tap,id=n0,ifname=ktap0,script=no,downscript=no",
            "-device",
            "virtio-net-pci,netdev=n0,id=net0",
        ],
    );
    let mut q = Qmp::connect(&sock);
    q.negotiate();
    vm.wait_for("GUEST-RUN ping", BOOT_TIMEOUT);
    vm.wait_for_count("GUEST-RUN-END", 3, BOOT_TIMEOUT);
    let ping = vm.run_output("ping -c 2 -W 20 10.0.2.1").unwrap();
    assert!(ping.contains("2 packets received"), "guest to host: {ping}");
    assert!(x("ping -c 2 -W 10 10.0.2.15"), "host to guest");
    let f = q.ok("query-rx-filter", json!({"name": "net0"}));
    assert_eq!(f[0]["main-mac"], "52:54:00:12:34:56", "{f}");
    assert!(
        q.events
            .iter()
            .any(|e| e["event"] == "NIC_RX_FILTER_CHANGED")
            || {
                // It may still be in flight; the guest configured its filters when eth0 came up.
                let e = q.event("NIC_RX_FILTER_CHANGED");
                e["data"]["name"] == "net0"
            }
    );
    q.ok("set_link", json!({"name": "net0", "up": false}));
    assert!(
        !x("ping -c 2 -W 2 10.0.2.15"),
        "no traffic with the link down"
    );
    q.ok("set_link", json!({"name": "net0", "up": true}));
    assert!(
        x("ping -c 3 -W 10 10.0.2.15"),
        "traffic again with the link up"
    );
    let r = q.cmd("set_link", json!({"name": "nope", "up": true}));
    assert_eq!(r["error"]["class"], "DeviceNotFound");
    q.ok("quit", Value::Null);
    vm.wait_exit(BOOT_TIMEOUT);
}

/// virtio-console: a virtserialport backed by a unix-socket chardev echoes through the
/// guest, and VSERPORT_CHANGE follows the guest opening and closing the port.
#[test]
#[ignore = "boots a guest: run by `make test`"]
fn virtio_console_echoes_through_a_socket_chardev() {
    use std::io::{BufRead, Write};
    let port_sock = temp_path("vport.sock");
    let chardev = format!(
        "socket,id=vc0,path={},server=on,wait=off",
        port_sock.display()
    );
    let (mut vm, mut q) = boot(
        "vport",
        "guest.run=exec,3<>/dev/vport0p1;,head,-n1,<&3,|,tr,a-z,A-Z,>&3",
        &[
            "-chardev",
            &chardev,
            "-device",
            "virtio-serial-pci,id=vser0",
            "-device",
            "virtserialport,chardev=vc0,name=org.kestrel.0,id=port0",
        ],
    );
    let s = std::os::unix::net::UnixStream::connect(&port_sock).unwrap();
    s.set_read_timeout(Some(BOOT_TIMEOUT)).unwrap();
    let e = q.event("VSERPORT_CHANGE");
    assert_eq!(e["data"], json!({"id": "port0", "open": true}));
    let frontend_open = |q: &mut common::Qmp| {
        q.ok("query-chardev", Value::Null)
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["label"] == "vc0")
            .map(|c| c["frontend-open"].clone())
    };
    assert_eq!(
        frontend_open(&mut q),
        Some(json!(true)),
        "the guest has it open"
    );
    (&s).write_all(b"hello from the host\n").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(&s).read_line(&mut line).unwrap();
    assert_eq!(line, "HELLO FROM THE HOST\n");
    let e = q.event("VSERPORT_CHANGE");
    assert_eq!(e["data"], json!({"id": "port0", "open": false}));
    vm.wait_for("GUEST-RUN-END status=0", BOOT_TIMEOUT);
    assert_eq!(frontend_open(&mut q), Some(json!(false)), "closed again");
    q.ok("quit", Value::Null);
    vm.wait_exit(BOOT_TIMEOUT);
}

/// With MSI disabled in the guest (`pci=nomsi`), virtio falls back to INTx: a level
/// interrupt on the slot's IOAPIC pin, re-asserted through KVM's resample fd.
#[test]
#[ignore = "boots a guest: run by `make test`"]
fn virtio_blk_works_on_intx_without_msi() {
    let a = temp_path("intx.img");
    image(&a, 8 << 20, 4096, b"INTX-PATTERN\n");
    let drive = format!("file={},format=raw,if=virtio", a.display());
    let (mut vm, mut q) = boot(
        "intx",
        "pci=nomsi guest.run=dd,if=/dev/vda,bs=4k,skip=1,count=1,status=none,|,head,-c,12 guest.run=grep,virtio,/proc/interrupts",
        &["-drive", &drive],
    );
    vm.wait_for_count("GUEST-RUN-END", 2, BOOT_TIMEOUT);
    assert_eq!(
        vm.run_output("dd if=/dev/vda bs=4k skip=1 count=1 status=none | head -c 12")
            .unwrap(),
        "INTX-PATTERN"
    );
    let irqs = vm.run_output("grep virtio /proc/interrupts").unwrap();
    assert!(
        irqs.contains("IO-APIC") && !irqs.contains("PCI-MSI"),
        "virtio on an IOAPIC line, no MSI: {irqs}"
    );
    q.ok("quit", Value::Null);
    vm.wait_exit(BOOT_TIMEOUT);
    std::fs::remove_file(&a).ok();
}
