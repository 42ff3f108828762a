//! The machine with tiny hand-written guests (no `make guest` needed): the serial console,
//! ACPI S5 poweroff and the i8042 reset each end Kestrel as QEMU would, in milliseconds.
#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod common;
use common::{tiny_kernel, Vm};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn boot(kernel: &std::path::Path, extra: &[&str]) -> Vm {
    let mut args = vec![
        "-nodefaults",
        "-serial",
        "stdio",
        "-m",
        "32",
        "-kernel",
        kernel.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Vm::start(&args)
}

#[test]
fn acpi_s5_powers_off_with_status_0() {
    // SLP_TYP 5 << 2 | SLP_EN to the sleep control register.
    let k = tiny_kernel("s5", "TINY-S5\n", Some((0x600, 0x34)));
    let mut vm = boot(&k, &[]);
    let st = vm.wait_exit(T);
    assert_eq!(st.code(), Some(0), "{}", vm.stderr());
    assert_eq!(vm.console(), "TINY-S5\n");
}

#[test]
fn i8042_reset_reboots_and_no_reboot_exits() {
    let k = tiny_kernel("kbdreset", "TINY-RESET\n", Some((0x64, 0xfe)));
    // Without -no-reboot the guest restarts: the marker repeats.
    let mut vm = boot(&k, &[]);
    vm.wait_for_count("TINY-RESET", 3, T);
    assert!(vm.child.try_wait().unwrap().is_none());
    drop(vm);
    let mut vm = boot(&k, &["-no-reboot"]);
    let st = vm.wait_exit(T);
    assert_eq!(st.code(), Some(0), "{}", vm.stderr());
    assert_eq!(vm.console(), "TINY-RESET\n");
}

#[test]
fn acpi_reset_register_reboots() {
    let k = tiny_kernel("acpireset", "TINY-ACPI-RESET\n", Some((0x602, 0x1)));
    let mut vm = boot(&k, &["-no-reboot"]);
    assert_eq!(vm.wait_exit(T).code(), Some(0));
    assert_eq!(vm.console(), "TINY-ACPI-RESET\n");
}

#[test]
fn sigterm_ends_with_status_0() {
    let k = tiny_kernel("sigterm", "TINY-HALT\n", None);
    let mut vm = boot(&k, &["-smp", "2"]);
    vm.wait_for("TINY-HALT", T);
    let st = std::process::Command::new("kill")
        .args(["-TERM", &vm.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(vm.wait_exit(T).code(), Some(0));
    assert!(
        vm.stderr().contains("terminating on signal 15"),
        "{}",
        vm.stderr()
    );
}

/// A disk in use is locked as QEMU locks images: `qemu-img convert` refuses to read it
/// while it may change (and `-U` reads it anyway), `qemu-img resize`, a second Kestrel and
/// QEMU itself refuse to write it, the lock holds across guest resets (which reopen the
/// image), and it goes with the process.
#[test]
#[ignore = "needs qemu-img and QEMU (make deps): run by `make test`"]
fn a_disk_in_use_is_locked_against_qemu_img_qemu_and_a_second_kestrel() {
    let img = common::temp_path("locked.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let img_s = img.to_str().unwrap();
    // The guest resets itself over and over: every boot reopens and relocks the disk.
    let k = tiny_kernel("lock", "TINY-LOCK\n", Some((0x64, 0xfe)));
    let drive = format!("file={img_s},format=raw,if=virtio");
    let mut vm = boot(&k, &["-drive", &drive]);
    vm.wait_for_count("TINY-LOCK", 3, T);

    let copy = common::temp_path("locked-copy.img");
    let convert = |force: bool| {
        let mut c = common::tool("qemu-img");
        c.arg("convert");
        if force {
            c.arg("-U");
        }
        c.args(["-f", "raw", "-O", "raw", img_s, copy.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = convert(false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "qemu-img convert read a disk in use");
    assert!(
        err.contains("Failed to get shared \"write\" lock")
            && err.contains(&format!("Is another process using the image [{img_s}]?")),
        "{err}"
    );
    assert!(convert(true).status.success(), "-U shares the image");
    let out = common::tool("qemu-img")
        .args(["resize", "-f", "raw", img_s, "2M"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "qemu-img resized a disk in use");
    assert!(err.contains("Failed to get \"write\" lock"), "{err}");

    let (code, _, err) = common::run_to_exit(&[
        "-nodefaults",
        "-m",
        "32",
        "-kernel",
        k.to_str().unwrap(),
        "-drive",
        &drive,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("Failed to get \"write\" lock")
            && err.contains(&format!("Is another process using the image [{img_s}]?")),
        "{err}"
    );

    let q = common::tool("qemu-system-x86_64")
        .args([
            "-accel",
            "kvm",
            "-M",
            "microvm",
            "-nodefaults",
            "-display",
            "none",
            "-S",
            "-m",
            "32",
            "-kernel",
            k.to_str().unwrap(),
            "-drive",
            &format!("file={img_s},format=raw,if=none,id=d0"),
            "-device",
            "virtio-blk-device,drive=d0",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&q.stderr);
    assert!(!q.status.success(), "QEMU opened the disk: {err}");
    assert!(err.contains("Failed to get \"write\" lock"), "{err}");

    let _ = vm.child.kill();
    let _ = vm.child.wait();
    let out = convert(false);
    assert!(
        out.status.success(),
        "the lock went with the process: {out:?}"
    );
    std::fs::remove_file(&img).ok();
    std::fs::remove_file(&copy).ok();
}

/// A guest reset drops everything of the old boot: a guest that resets itself 30 times
/// holds no more descriptors than after 3 (PCI devices included, whose BAR plumbing
/// once kept each boot alive through a reference cycle).
#[test]
fn resets_leave_nothing_of_the_old_boot_open() {
    let k = tiny_kernel("resetleak", "TINY-RESET-LEAK\n", Some((0x64, 0xfe)));
    let mut vm = boot(
        &k,
        &["-device", "virtio-balloon-pci", "-device", "i6300esb"],
    );
    vm.wait_for_count("TINY-RESET-LEAK", 3, T);
    let pid = vm.child.id();
    // The fewest over a few samples: a boot being built has its own descriptors open.
    let fds = || {
        (0..20)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(5));
                std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .unwrap()
                    .count()
            })
            .min()
            .unwrap()
    };
    let early = fds();
    vm.wait_for_count("TINY-RESET-LEAK", 30, T);
    let late = fds();
    assert!(
        late <= early + 8,
        "{early} descriptors after 3 boots, {late} after 30"
    );
}
