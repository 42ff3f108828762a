//! Real boots of the test guest (resources/guest) with the real binary. Each boot costs
//! 20-55 s on the emulated KVM of the CI machines, so each test checks several things
//! of one boot, and they are `#[ignore]`d in plain `cargo test` (`make test` runs them).
#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod common;
use common::{guest, Vm, BOOT_TIMEOUT};

/// busybox userland, two CPUs: the marker, a command's output on the console, both CPUs
/// online, and `poweroff` ending kestrel with status 0.
#[test]
#[ignore = "boots a guest: run by `make test`"]
fn smp2_runs_a_command_and_powers_off() {
    let g = guest();
    let mut vm = Vm::boot(
        &g,
        &g.busybox,
        "guest.run=cat,/sys/devices/system/cpu/online guest.run=uname,-sm guest.poweroff",
        &["-m", "256", "-smp", "2"],
    );
    vm.wait_for("GUEST-UP", BOOT_TIMEOUT);
    let st = vm.wait_exit(BOOT_TIMEOUT);
    assert_eq!(
        st.code(),
        Some(0),
        "poweroff must exit 0\n{}\n{}",
        vm.console(),
        vm.stderr()
    );
    let online = vm
        .run_output("cat /sys/devices/system/cpu/online")
        .unwrap_or_else(|| panic!("{}", vm.console()));
    assert_eq!(online.trim(), "0-1", "both CPUs online");
    let uname = vm
        .run_output("uname -sm")
        .unwrap_or_else(|| panic!("{}", vm.console()));
    assert_eq!(uname.trim(), "Linux x86_64");
}

/// Tiny init: `reboot` under -no-reboot ends kestrel with status 0; the kernel saw our
/// command line and memory size.
#[test]
#[ignore = "boots a guest: run by `make test`"]
fn reboot_with_no_reboot_exits_zero() {
    let g = guest();
    let mut vm = Vm::boot(
        &g,
        &g.tiny,
        "guest.cat=/proc/cmdline guest.cat=/proc/meminfo guest.reboot",
        &["-m", "192", "-no-reboot"],
    );
    vm.wait_for("GUEST-UP", BOOT_TIMEOUT);
    let st = vm.wait_exit(BOOT_TIMEOUT);
    assert_eq!(st.code(), Some(0), "{}\n{}", vm.console(), vm.stderr());
    let c = vm.console();
    assert!(
        c.contains("guest.reboot"),
        "kernel command line reached the guest: {c}"
    );
    let total_kb: u64 = c
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{c}"));
    // The kernel keeps some for itself; what it reports is a little under 192 MiB.
    assert!(
        total_kb > 150 * 1024 && total_kb <= 192 * 1024,
        "MemTotal {total_kb} kB"
    );
}

/// Without -no-reboot a guest reboot restarts the guest: the marker appears twice.
#[test]
#[ignore = "boots a guest: run by `make test`"]
fn reboot_restarts_the_guest() {
    let g = guest();
    let mut vm = Vm::boot(&g, &g.tiny, "guest.reboot", &["-m", "128"]);
    vm.wait_for_count("GUEST-UP", 2, BOOT_TIMEOUT * 2);
    assert!(
        vm.child.try_wait().unwrap().is_none(),
        "still running after the reboot"
    );
}
