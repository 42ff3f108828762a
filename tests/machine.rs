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
