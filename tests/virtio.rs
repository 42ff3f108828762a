//! Virtio devices with the test guest's busybox userland: virtio-blk on io_uring (and the
//! thread pool), read-only drives, werror=stop on a full host file system, virtio-net on a
//! tap in a network namespace the test creates, virtio-console over a unix socket, and the
//! QMP queries about them. Each test is one boot; they are `#[ignore]`d in plain
//! `cargo test` (`make test` runs them).
#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod common;
use common::{guest, temp_path, Qmp, Vm, BOOT_TIMEOUT};
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
                 guest.run=printf,X,>/dev/vdb guest.run=cat,/sys/block/vdb/ro";
    let (mut vm, mut q) = boot(
        "blk",
        words,
        &[
            "-drive",
            &drive_a,
            "-device",
            "virtio-blk-pci,drive=d0,id=disk0,serial=KESTREL-SN-1",
            "-blockdev",
            &file_b,
            "-blockdev",
            "driver=raw,file=f1,node-name=r1,read-only=on",
            "-device",
            "virtio-blk-pci,drive=r1,id=disk1,addr=0x6",
        ],
    );
    vm.wait_for("GUEST-RUN cat /sys/block/vdb/ro", BOOT_TIMEOUT);
    vm.wait_for_count("GUEST-RUN-END", 6, BOOT_TIMEOUT);
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
