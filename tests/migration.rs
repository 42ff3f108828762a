//! Live migration between two real Kestrel processes, with a tiny hand-written guest
//! that counts and prints the alphabet (no `make guest`): a migrated guest's console
//! continues the alphabet where the source's stopped, so a lost vCPU state, a lost RAM
//! page of its counter region or a guest that restarted shows as a wrong letter.
//! Transports (unix, exec, file), cancel, a killed destination, corrupted streams,
//! `-S`, pause-before-switchover, multifd and the disk lock handover are each driven
//! over QMP as a manager would. The Linux guest over tcp between network namespaces is
//! in `migration_linux.rs`.
#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod common;
use common::{counting_kernel, sh, temp_path, Cleanup, Qmp, Vm};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

struct Side {
    vm: Vm,
    q: Qmp,
}

impl Drop for Side {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kestrel's stderr: {}", self.vm.stderr());
        }
    }
}

fn args<'a>(kernel: &'a Path, qmp: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "-nodefaults",
        "-nographic",
        "-serial",
        "stdio",
        "-m",
        "16",
        "-kernel",
        kernel.to_str().unwrap(),
    ];
    if !qmp.is_empty() {
        args.extend_from_slice(&["-qmp", qmp]);
    }
    args.extend_from_slice(extra);
    args
}

fn start(kernel: &Path, name: &str, extra: &[&str]) -> Side {
    start_with(kernel, name, extra, Vm::start)
}

/// Starts kestrel through `spawn` (here, or in a network namespace) with a QMP socket
/// named after `name`, and negotiates.
fn start_with(
    kernel: &Path,
    name: &str,
    extra: &[&str],
    spawn: impl FnOnce(&[&str]) -> Vm,
) -> Side {
    let sock = temp_path(&format!("{name}.qmp"));
    let _ = std::fs::remove_file(&sock);
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let vm = spawn(&args(kernel, &qmp, extra));
    let mut q = Qmp::connect(&sock);
    q.negotiate();
    Side { vm, q }
}

/// `quit` on each side, then waits for each process to end.
fn quit_all(sides: &mut [&mut Side]) {
    for s in sides.iter_mut() {
        s.q.ok("quit", Value::Null);
        s.vm.wait_exit(T);
    }
}

fn letters(s: &str) -> String {
    s.chars().filter(char::is_ascii_lowercase).collect()
}

fn next_letter(c: char) -> char {
    if c == 'z' {
        'a'
    } else {
        (c as u8 + 1) as char
    }
}

/// Waits until the console has printed `n` more letters than it has now.
fn wait_letters(vm: &Vm, n: usize) -> String {
    let start = letters(&vm.console()).len();
    let t0 = Instant::now();
    loop {
        let l = letters(&vm.console());
        if l.len() >= start + n {
            return l;
        }
        assert!(t0.elapsed() < T, "the guest stopped printing: {l:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The MIGRATION statuses received until a final one (completed, failed, cancelled).
fn statuses(q: &mut Qmp) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let e = q.event("MIGRATION");
        let s = e["data"]["status"].as_str().unwrap().to_string();
        out.push(s.clone());
        if matches!(s.as_str(), "completed" | "failed" | "cancelled") {
            return out;
        }
    }
}

fn status(q: &mut Qmp) -> String {
    q.ok("query-status", Value::Null)["status"]
        .as_str()
        .unwrap()
        .to_string()
}

fn events_on(q: &mut Qmp) {
    q.ok(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "events", "state": true}]}),
    );
}

/// The guest on `dst` continues the alphabet where `src` stopped.
fn assert_continues(src: &Side, dst: &Side) {
    let before = letters(&src.vm.console());
    let last = before.chars().last().expect("the source printed letters");
    let after = wait_letters(&dst.vm, 3);
    assert_eq!(
        after.chars().next(),
        Some(next_letter(last)),
        "source printed {before:?}, destination {after:?}"
    );
}

fn sock(name: &str) -> PathBuf {
    let p = temp_path(name);
    let _ = std::fs::remove_file(&p);
    p
}

#[test]
fn unix_migration_moves_the_running_guest_and_leaves_the_source_in_postmigrate() {
    let k = counting_kernel("mig-unix");
    let mut src = start(&k, "mig-unix-src", &[]);
    let path = sock("mig-unix.sock");
    let uri = format!("unix:{}", path.display());
    let mut dst = start(&k, "mig-unix-dst", &["-incoming", &uri]);
    assert_eq!(status(&mut dst.q), "inmigrate");
    events_on(&mut src.q);
    events_on(&mut dst.q);
    wait_letters(&src.vm, 3);

    src.q.ok("migrate", json!({ "uri": uri }));
    assert_eq!(statuses(&mut src.q), ["setup", "active", "completed"]);
    src.q.event("STOP");
    assert_eq!(statuses(&mut dst.q), ["active", "completed"]);
    dst.q.event("RESUME");
    assert_eq!(status(&mut src.q), "postmigrate");
    assert_eq!(status(&mut dst.q), "running");
    assert_continues(&src, &dst);
    assert!(src.q.events.iter().any(|e| e["event"] == "MIGRATION_PASS"));

    let info = src.q.ok("query-migrate", Value::Null);
    assert_eq!(info["status"], "completed", "{info}");
    let ram = &info["ram"];
    assert_eq!(ram["total"], 16 << 20, "{info}");
    assert_eq!(ram["remaining"], 0, "{info}");
    assert!(ram["transferred"].as_u64().unwrap() > 64 << 10, "{info}");
    assert!(
        ram["duplicate"].as_u64().unwrap() > 0,
        "zero pages as markers: {info}"
    );
    let printed = letters(&src.vm.console()).len() as u64;
    assert!(
        ram["normal"].as_u64().unwrap() >= printed * 16,
        "16 pages counted per letter printed ({printed}): {info} {}",
        src.vm.stderr()
    );
    assert!(ram["dirty-sync-count"].as_u64().unwrap() >= 1, "{info}");
    assert!(info["downtime"].as_u64().is_some(), "{info}");
    assert!(info["total-time"].as_u64().is_some(), "{info}");

    // The source cannot run again while it is not the guest's: `cont` is allowed
    // (no disk here), and a new migration from the destination works.
    let r = dst.q.cmd("migrate", json!({"uri": "unix:/nonexistent/x"}));
    assert!(r["return"].is_object(), "{r}");
    assert_eq!(statuses(&mut dst.q), ["setup", "failed"]);
    assert_eq!(
        status(&mut dst.q),
        "running",
        "a failed connect leaves it running"
    );
    let info = dst.q.ok("query-migrate", Value::Null);
    assert!(
        info["error-desc"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/x"),
        "{info}"
    );
    src.q.ok("quit", Value::Null);
    dst.q.ok("quit", Value::Null);
    src.vm.wait_exit(T);
    dst.vm.wait_exit(T);
}

#[test]
fn a_snapshot_saved_through_exec_restores_from_file_and_one_saved_to_file_through_exec() {
    let k = counting_kernel("mig-file");
    let f = temp_path("mig-snapshot.bin");
    let _ = std::fs::remove_file(&f);
    let mut src = start(&k, "mig-file-src", &[]);
    wait_letters(&src.vm, 2);
    src.q.ok(
        "migrate",
        json!({ "uri": format!("exec:cat > {}", f.display()) }),
    );
    wait_for_status(&mut src.q, "completed");
    let mut dst = start(
        &k,
        "mig-file-dst",
        &["-incoming", &format!("file:{}", f.display())],
    );
    wait_for_status(&mut dst.q, "completed");
    assert_continues(&src, &dst);

    // And the other way: file: out (at an offset), exec: in.
    let g = temp_path("mig-snapshot2.bin");
    std::fs::write(&g, b"HEADER").unwrap();
    dst.q.ok(
        "migrate",
        json!({ "uri": format!("file:{},offset=0x1000", g.display()) }),
    );
    wait_for_status(&mut dst.q, "completed");
    let saved = std::fs::read(&g).unwrap();
    assert_eq!(&saved[..6], b"HEADER", "what is before the offset is kept");
    assert_eq!(&saved[0x1000..0x1008], b"KESTRMIG");
    let mut third = start(
        &k,
        "mig-file-3",
        &["-incoming", &format!("exec:tail -c +4097 {}", g.display())],
    );
    wait_for_status(&mut third.q, "completed");
    assert_continues(&dst, &third);
    quit_all(&mut [&mut src, &mut dst, &mut third]);
    let _ = std::fs::remove_file(&f);
    let _ = std::fs::remove_file(&g);
}

fn wait_for_status(q: &mut Qmp, want: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let info = q.ok("query-migrate", Value::Null);
        if info["status"] == want {
            return info;
        }
        assert!(
            !matches!(
                info["status"].as_str(),
                Some("failed" | "cancelled" | "completed")
            ),
            "wanted {want}: {info}"
        );
        assert!(t0.elapsed() < T, "still {info}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cancel_and_a_killed_destination_leave_the_source_running_and_migratable() {
    let k = counting_kernel("mig-cancel");
    let mut src = start(&k, "mig-cancel-src", &[]);
    events_on(&mut src.q);
    // 64 KB/s: the counted MiB alone takes 16 s, so the migration is mid-precopy.
    src.q
        .ok("migrate-set-parameters", json!({"max-bandwidth": 65536}));
    for round in 0..2 {
        let path = sock(&format!("mig-cancel-{round}.sock"));
        let uri = format!("unix:{}", path.display());
        let mut dst = start(&k, &format!("mig-cancel-dst{round}"), &["-incoming", &uri]);
        src.q.ok("migrate", json!({ "uri": uri }));
        wait_for_status(&mut src.q, "active");
        std::thread::sleep(Duration::from_millis(300));
        if round == 0 {
            src.q.ok("migrate_cancel", Value::Null);
            assert_eq!(
                statuses(&mut src.q),
                ["setup", "active", "cancelling", "cancelled"]
            );
            // The destination lost its source: it exits 1 with one line, as QEMU's.
            assert_eq!(dst.vm.wait_exit(T).code(), Some(1));
            assert!(
                dst.vm.stderr().contains("load of migration failed"),
                "{}",
                dst.vm.stderr()
            );
        } else {
            dst.vm.child.kill().unwrap();
            assert_eq!(statuses(&mut src.q), ["setup", "active", "failed"]);
            let info = src.q.ok("query-migrate", Value::Null);
            assert!(info["error-desc"].is_string(), "{info}");
        }
        let _ = dst.vm.wait_exit(T);
        assert_eq!(status(&mut src.q), "running");
        wait_letters(&src.vm, 2);
    }
    // Unlimited again: the next migration completes.
    src.q
        .ok("migrate-set-parameters", json!({"max-bandwidth": 0}));
    let path = sock("mig-cancel-ok.sock");
    let uri = format!("unix:{}", path.display());
    let mut dst = start(&k, "mig-cancel-dst-ok", &["-incoming", &uri]);
    src.q.ok("migrate", json!({ "uri": uri }));
    wait_for_status(&mut src.q, "completed");
    wait_for_status(&mut dst.q, "completed");
    assert_continues(&src, &dst);
    quit_all(&mut [&mut src, &mut dst]);
}

#[test]
fn a_corrupted_or_truncated_stream_makes_the_destination_exit_1_with_one_clear_line() {
    let k = counting_kernel("mig-corrupt");
    let f = temp_path("mig-corrupt.bin");
    let mut src = start(&k, "mig-corrupt-src", &[]);
    wait_letters(&src.vm, 1);
    src.q
        .ok("migrate", json!({ "uri": format!("file:{}", f.display()) }));
    wait_for_status(&mut src.q, "completed");
    src.q.ok("quit", Value::Null);
    src.vm.wait_exit(T);
    let good = std::fs::read(&f).unwrap();

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "flipped",
            {
                let mut b = good.clone();
                let i = b.len() / 2;
                b[i] ^= 0x55;
                b
            },
            "corrupted",
        ),
        ("truncated", good[..good.len() / 2].to_vec(), "ended inside"),
        (
            "not-a-stream",
            b"QEVM\0\0\0\x03, a stream of another kind".to_vec(),
            "not a Kestrel migration stream",
        ),
        (
            "other-version",
            {
                let mut b = good.clone();
                b[8] = 99;
                b
            },
            "version 99",
        ),
    ];
    for (name, bytes, want) in cases {
        let p = temp_path(&format!("mig-{name}.bin"));
        std::fs::write(&p, bytes).unwrap();
        let incoming = format!("file:{}", p.display());
        let mut dst = Vm::start(&args(&k, "", &["-incoming", &incoming]));
        let code = dst.wait_exit(T);
        assert_eq!(code.code(), Some(1), "{name}");
        let err = dst.stderr();
        let lines: Vec<&str> = err.lines().filter(|l| l.contains("migration")).collect();
        assert_eq!(lines.len(), 1, "{name}: {err}");
        assert!(lines[0].contains(want), "{name}: {err}");
        assert!(
            letters(&dst.console()).is_empty(),
            "{name}: the guest never ran"
        );
        let _ = std::fs::remove_file(&p);
    }
    // Another machine's stream (more RAM) is refused by its configuration.
    let incoming = format!("file:{}", f.display());
    let mut dst = Vm::start(&args(&k, "", &["-m", "32", "-incoming", &incoming]));
    assert_eq!(dst.wait_exit(T).code(), Some(1));
    assert!(dst.stderr().contains("-m must match"), "{}", dst.stderr());
    let _ = std::fs::remove_file(&f);
}

#[test]
fn dash_s_keeps_the_destination_paused_and_pause_before_switchover_waits_for_continue() {
    let k = counting_kernel("mig-s");
    let mut src = start(&k, "mig-s-src", &[]);
    let path = sock("mig-s.sock");
    let uri = format!("unix:{}", path.display());
    let mut dst = start(&k, "mig-s-dst", &["-S", "-incoming", &uri]);
    events_on(&mut src.q);
    src.q.ok(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "pause-before-switchover", "state": true}]}),
    );
    wait_letters(&src.vm, 2);
    src.q.ok("migrate", json!({ "uri": uri }));
    assert_eq!(src.q.event("MIGRATION")["data"]["status"], "setup");
    assert_eq!(src.q.event("MIGRATION")["data"]["status"], "active");
    assert_eq!(src.q.event("MIGRATION")["data"]["status"], "pre-switchover");
    assert_eq!(status(&mut src.q), "finish-migrate");
    let r = src.q.cmd("cont", Value::Null);
    assert_eq!(r["error"]["desc"], "Migration is not finalized yet", "{r}");
    let r = src.q.cmd("migrate-continue", json!({"state": "active"}));
    assert_eq!(
        r["error"]["desc"], "Migration not in expected state: pre-switchover",
        "{r}"
    );
    src.q
        .ok("migrate-continue", json!({"state": "pre-switchover"}));
    assert_eq!(statuses(&mut src.q), ["device", "completed"]);

    wait_for_status(&mut dst.q, "completed");
    assert_eq!(status(&mut dst.q), "paused");
    std::thread::sleep(Duration::from_millis(500));
    assert!(letters(&dst.vm.console()).is_empty(), "-S: not running yet");
    dst.q.ok("cont", Value::Null);
    assert_continues(&src, &dst);

    // system_reset + cont restarts the source, as QEMU allows after postmigrate.
    src.q.ok("system_reset", Value::Null);
    assert_eq!(status(&mut src.q), "prelaunch");
    src.q.ok("cont", Value::Null);
    assert_eq!(status(&mut src.q), "running");
    quit_all(&mut [&mut src, &mut dst]);
}

#[test]
fn multifd_spreads_ram_over_channels_and_the_disk_lock_moves_at_switchover() {
    let k = counting_kernel("mig-multifd");
    let img = temp_path("mig-disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let drive = format!("file={},format=raw,if=none,id=d0", img.display());
    let disk = [
        "-drive",
        &drive,
        "-device",
        "virtio-blk-pci,drive=d0,id=disk0",
    ];
    let mut src = start(&k, "mig-mfd-src", &disk);
    let path = sock("mig-mfd.sock");
    let uri = format!("unix:{}", path.display());
    let mut args = disk.to_vec();
    args.extend_from_slice(&["-incoming", "defer"]);
    let mut dst = start(&k, "mig-mfd-dst", &args);
    for q in [&mut src.q, &mut dst.q] {
        q.ok(
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "multifd", "state": true}]}),
        );
        q.ok("migrate-set-parameters", json!({"multifd-channels": 3}));
    }
    dst.q.ok("migrate-incoming", json!({ "uri": uri }));
    let r = dst.q.cmd("migrate-incoming", json!({ "uri": uri }));
    assert!(
        r["error"]["desc"].as_str().unwrap().contains("already"),
        "{r}"
    );
    wait_letters(&src.vm, 2);
    src.q.ok("migrate", json!({ "uri": uri }));
    let info = wait_for_status(&mut src.q, "completed");
    assert!(
        info["ram"]["multifd-bytes"].as_u64().unwrap() > 64 << 10,
        "{info}"
    );
    wait_for_status(&mut dst.q, "completed");
    assert_continues(&src, &dst);

    // The destination holds the image now: the source cannot take it back.
    let r = src.q.cmd("cont", Value::Null);
    assert!(r["error"]["desc"].as_str().unwrap().contains("lock"), "{r}");
    assert_eq!(status(&mut src.q), "postmigrate");
    quit_all(&mut [&mut src, &mut dst]);
    let _ = std::fs::remove_file(&img);
}

/// `fd:` on both sides, as libvirt migrates through its own tunnel: each side gets one
/// end of a socket pair with `getfd`, the destination from `-incoming defer` and
/// `migrate-incoming`, and the named descriptor is used up by the migration.
#[test]
fn fd_transport_uses_descriptors_passed_with_getfd_on_both_sides() {
    use std::os::fd::AsRawFd;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    let k = counting_kernel("mig-fd");
    let mut src = start(&k, "mig-fd-src", &[]);
    let mut dst = start(&k, "mig-fd-dst", &["-incoming", "defer"]);
    events_on(&mut src.q);
    wait_letters(&src.vm, 2);
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    for (q, end) in [(&mut src.q, &a), (&mut dst.q, &b)] {
        let msg = br#"{"execute": "getfd", "arguments": {"fdname": "migfd"}}"#;
        q.stream.send_with_fd(&msg[..], end.as_raw_fd()).unwrap();
        assert_eq!(q.reply()["return"], json!({}));
    }
    // Kestrel holds its own copies now: ours must not keep the stream open.
    drop((a, b));
    dst.q.ok("migrate-incoming", json!({"uri": "fd:migfd"}));
    src.q.ok("migrate", json!({"uri": "fd:migfd"}));
    assert_eq!(statuses(&mut src.q), ["setup", "active", "completed"]);
    wait_for_status(&mut dst.q, "completed");
    assert_continues(&src, &dst);
    // The descriptor went to the migration: a second one needs a new getfd.
    let r = src.q.cmd("closefd", json!({"fdname": "migfd"}));
    assert_eq!(r["error"]["class"], "GenericError", "{r}");
    quit_all(&mut [&mut src, &mut dst]);
}

/// A snapshot to a file whose disk fills up fails with the host's error, leaves the
/// source running with its guest untouched, and the next snapshot elsewhere works.
#[test]
fn a_snapshot_to_a_full_disk_fails_and_the_source_runs_on() {
    let dir = temp_path("mig-fullfs");
    let _umount = common::mount_tmpfs(&dir, "16k");
    let k = counting_kernel("mig-full");
    let mut src = start(&k, "mig-full-src", &[]);
    events_on(&mut src.q);
    wait_letters(&src.vm, 2);
    let full = dir.join("snapshot.bin");
    src.q.ok(
        "migrate",
        json!({"uri": format!("file:{}", full.display())}),
    );
    assert_eq!(statuses(&mut src.q), ["setup", "active", "failed"]);
    let info = src.q.ok("query-migrate", Value::Null);
    assert!(
        info["error-desc"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{info}"
    );
    assert_eq!(status(&mut src.q), "running");
    wait_letters(&src.vm, 2);

    let f = temp_path("mig-full-ok.bin");
    let _ = std::fs::remove_file(&f);
    src.q
        .ok("migrate", json!({"uri": format!("file:{}", f.display())}));
    assert_eq!(statuses(&mut src.q), ["setup", "active", "completed"]);
    let mut dst = start(
        &k,
        "mig-full-dst",
        &["-incoming", &format!("file:{}", f.display())],
    );
    wait_for_status(&mut dst.q, "completed");
    assert_continues(&src, &dst);
    quit_all(&mut [&mut src, &mut dst]);
    let _ = std::fs::remove_file(&f);
}

fn start_in(ns: &str, kernel: &Path, name: &str, extra: &[&str]) -> Side {
    start_with(kernel, name, extra, |a| Vm::start_in_netns(ns, a))
}

/// Two hosts joined by a veth pair; the link goes down mid-precopy. The source's guest
/// runs on untouched while the migration waits on the dead network, `migrate_cancel`
/// ends it, and once the link is back a new migration to a new destination completes.
#[test]
fn a_cut_network_leaves_the_source_running_and_the_migration_cancellable() {
    let id = std::process::id();
    let (a, b) = (format!("kcut-a{id}"), format!("kcut-b{id}"));
    assert!(
        sh(&format!("ip netns add {a} && ip netns add {b}")),
        "ip netns add (needs root)"
    );
    let _clean = Cleanup(format!("ip netns del {a}; ip netns del {b}"));
    let (va, vb) = (format!("kca{id}"), format!("kcb{id}"));
    assert!(sh(&format!(
        "ip link add {va} netns {a} type veth peer name {vb} netns {b} && \
         ip -n {a} addr add 192.168.78.1/24 dev {va} && ip -n {a} link set {va} up && \
         ip -n {b} addr add 192.168.78.2/24 dev {vb} && ip -n {b} link set {vb} up"
    )));
    let k = counting_kernel("mig-cut");
    let mut src = start_in(&a, &k, "mig-cut-src", &[]);
    events_on(&mut src.q);
    let dst = start_in(
        &b,
        &k,
        "mig-cut-dst",
        &["-incoming", "tcp:192.168.78.2:4446"],
    );
    // 8 KB/s: the migration is still sending when the link goes (in precopy, or in
    // its final pass with the guest stopped if the socket's buffer took precopy whole).
    src.q
        .ok("migrate-set-parameters", json!({"max-bandwidth": 8192}));
    src.q.ok("migrate", json!({"uri": "tcp:192.168.78.2:4446"}));
    wait_for_status(&mut src.q, "active");
    assert!(sh(&format!("ip -n {a} link set {va} down")));
    std::thread::sleep(Duration::from_secs(2));
    let info = src.q.ok("query-migrate", Value::Null);
    assert_eq!(info["status"], "active", "stuck on the dead link: {info}");
    src.q.ok("migrate_cancel", Value::Null);
    let seen = statuses(&mut src.q);
    assert_eq!(seen[..2], ["setup", "active"]);
    assert_eq!(
        seen[seen.len() - 2..],
        ["cancelling", "cancelled"],
        "{seen:?}"
    );
    assert_eq!(status(&mut src.q), "running");
    wait_letters(&src.vm, 2);
    // The old destination never hears of it (the link is down); a manager kills it.
    let mut dst = dst;
    dst.vm.child.kill().unwrap();
    let _ = dst.vm.wait_exit(T);

    assert!(sh(&format!("ip -n {a} link set {va} up")));
    let mut dst = start_in(
        &b,
        &k,
        "mig-cut-dst2",
        &["-incoming", "tcp:192.168.78.2:4447"],
    );
    src.q
        .ok("migrate-set-parameters", json!({"max-bandwidth": 0}));
    src.q.ok("migrate", json!({"uri": "tcp:192.168.78.2:4447"}));
    assert_eq!(statuses(&mut src.q), ["setup", "active", "completed"]);
    wait_for_status(&mut dst.q, "completed");
    assert_continues(&src, &dst);
    quit_all(&mut [&mut src, &mut dst]);
}

/// qemu.qmp's QMPClient, QEMU's own Python tooling, drives a whole migration and checks
/// both sides' MIGRATION events (tests/python/migration_client.py).
#[test]
#[ignore = "needs the qemu.qmp venv from `make deps`: run by `make test`"]
fn qemu_qmp_drives_a_migration_and_sees_the_spec_event_sequence() {
    let k = counting_kernel("mig-py");
    let (ssock, dsock) = (sock("mig-py-src.qmp"), sock("mig-py-dst.qmp"));
    let qmp = |p: &Path| format!("unix:{},server=on,wait=off", p.display());
    let (sq, dq) = (qmp(&ssock), qmp(&dsock));
    let mut src = Vm::start(&args(&k, &sq, &[]));
    let mut dst = Vm::start(&args(&k, &dq, &["-incoming", "defer"]));
    wait_letters(&src, 2);
    let path = sock("mig-py.sock");
    let out = common::python_script("migration_client.py")
        .args([&ssock, &dsock])
        .arg(format!("unix:{}", path.display()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\nsource: {}\ndestination: {}",
        String::from_utf8_lossy(&out.stderr),
        src.stderr(),
        dst.stderr()
    );
    for line in [
        "destination inmigrate",
        "source events setup active completed",
        "source postmigrate destination running",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    let before = letters(&src.console());
    let after = wait_letters(&dst, 3);
    assert_eq!(
        after.chars().next(),
        before.chars().last().map(next_letter),
        "source {before:?}, destination {after:?}"
    );
    for (vm, p) in [(&mut src, &ssock), (&mut dst, &dsock)] {
        let mut q = Qmp::connect(p);
        q.negotiate();
        q.ok("quit", Value::Null);
        assert_eq!(vm.wait_exit(T).code(), Some(0));
    }
}
