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

/// -daemonize with -pidfile, the console on a unix-socket chardev that holds startup
/// until a client connects (wait=on), -name process=/debug-threads=on: the parent exits 0
/// once the machine is up, the pid file names the running daemon, the guest's console
/// reaches the socket client, and guest poweroff ends the daemon and removes the pid file.
#[test]
#[ignore = "boots a guest: run by `make test`"]
fn daemon_with_pidfile_and_socket_console() {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    let g = guest();
    let dir = std::env::temp_dir().join(format!("kestrel-daemon-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("console.sock");
    let pidfile = dir.join("kestrel.pid");
    let append = format!("{} guest.cat=/proc/cmdline guest.poweroff", g.cmdline);
    let chardev = format!("socket,id=con0,path={},server=on,wait=on", sock.display());
    let mut parent = std::process::Command::new(common::kestrel())
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-daemonize",
            "-pidfile",
            pidfile.to_str().unwrap(),
            "-name",
            "guest=bootdaemon,process=kestrel-bd,debug-threads=on",
            "-chardev",
            &chardev,
            "-serial",
            "chardev:con0",
            "-kernel",
            g.vmlinux.to_str().unwrap(),
            "-initrd",
            g.tiny.to_str().unwrap(),
            "-append",
            &append,
        ])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();

    // wait=on: nothing starts until we connect.
    let start = Instant::now();
    let mut conn = loop {
        if let Ok(c) = UnixStream::connect(&sock) {
            break c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "console socket never appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let st = parent.wait().unwrap();
    assert!(
        st.success(),
        "the parent exits 0 once the daemon is up: {st}"
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "kestrel-bd"
    );
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect();
    assert!(
        threads.iter().any(|t| t == "CPU 0/KVM"),
        "vCPU thread named as QEMU does: {threads:?}"
    );

    conn.set_read_timeout(Some(common::BOOT_TIMEOUT)).unwrap();
    let mut console = Vec::new();
    let mut buf = [0u8; 4096];
    // The guest powers off after printing its command line; the daemon then closes the socket.
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
        console.extend_from_slice(&buf[..n]);
    }
    let console = String::from_utf8_lossy(&console);
    assert!(console.contains("GUEST-UP"), "{console}");
    assert!(console.contains("guest.poweroff"), "{console}");
    let start = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "daemon still running after poweroff"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!pidfile.exists(), "pid file removed at exit");
    std::fs::remove_dir_all(&dir).ok();
}

fn boot_with_qmp(name: &str, extra: &[&str]) -> (Vm, common::Qmp) {
    let g = guest();
    let sock = common::temp_path(&format!("{name}.qmp"));
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let mut args = vec!["-m", "128", "-qmp", &qmp];
    args.extend_from_slice(extra);
    let mut vm = Vm::boot(&g, &g.tiny, "", &args);
    let mut q = common::Qmp::connect(&sock);
    q.negotiate();
    vm.wait_for("GUEST-UP", BOOT_TIMEOUT);
    (vm, q)
}

/// QMP system_powerdown presses the ACPI power button; the guest's init powers off and
/// Kestrel ends with status 0 after SHUTDOWN(guest-shutdown).
#[test]
#[ignore = "boots a guest: run by `make test`"]
fn system_powerdown_powers_the_guest_off() {
    let (mut vm, mut q) = boot_with_qmp("powerdown", &[]);
    q.ok("system_powerdown", serde_json::Value::Null);
    q.event("POWERDOWN");
    let s = q.event("SHUTDOWN");
    assert_eq!(
        s["data"],
        serde_json::json!({"guest": true, "reason": "guest-shutdown"})
    );
    assert_eq!(vm.wait_exit(BOOT_TIMEOUT).code(), Some(0));
}

/// Under -no-shutdown a guest poweroff stops the machine in `shutdown` instead of
/// exiting; `system_reset` boots it again and `quit` ends it.
#[test]
#[ignore = "boots a guest: run by `make test`"]
fn no_shutdown_keeps_the_machine_for_the_monitor() {
    let (mut vm, mut q) = boot_with_qmp("noshutdown", &["-no-shutdown"]);
    q.ok("system_powerdown", serde_json::Value::Null);
    let s = q.event("SHUTDOWN");
    assert_eq!(s["data"]["reason"], "guest-shutdown");
    q.event("STOP");
    assert_eq!(
        q.ok("query-status", serde_json::Value::Null),
        serde_json::json!({"running": false, "status": "shutdown"})
    );
    assert!(
        vm.child.try_wait().unwrap().is_none(),
        "still running under -no-shutdown"
    );
    let r = q.cmd("cont", serde_json::Value::Null);
    assert!(
        r.get("error").is_some(),
        "cont from shutdown needs a reset first: {r}"
    );
    q.ok("system_reset", serde_json::Value::Null);
    q.event("RESET");
    q.ok("cont", serde_json::Value::Null);
    vm.wait_for_count("GUEST-UP", 2, BOOT_TIMEOUT);
    q.ok("quit", serde_json::Value::Null);
    assert_eq!(vm.wait_exit(BOOT_TIMEOUT).code(), Some(0));
}

/// A real kernel panic reaches the host through pvpanic (found by the guest's driver from
/// the ACPI `QEMU0001` device): with no init to run the kernel panics, and Kestrel reports
/// GUEST_PANICKED and carries out the default action (poweroff).
#[test]
#[ignore = "boots a guest: run by `make test`"]
fn a_guest_kernel_panic_reaches_qmp_through_pvpanic() {
    let g = guest();
    let sock = common::temp_path("panic.qmp");
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let mut vm = Vm::boot(
        &g,
        &g.tiny,
        "rdinit=/no-such-init",
        &["-m", "128", "-device", "pvpanic", "-qmp", &qmp],
    );
    let mut q = common::Qmp::connect(&sock);
    q.negotiate();
    let p = q.event("GUEST_PANICKED");
    assert_eq!(p["data"]["action"], "poweroff", "{p}");
    let s = q.event("SHUTDOWN");
    assert_eq!(
        s["data"],
        serde_json::json!({"guest": true, "reason": "guest-panic"})
    );
    assert_eq!(vm.wait_exit(BOOT_TIMEOUT).code(), Some(0));
    assert!(vm.console().contains("Kernel panic"), "{}", vm.console());
}

/// inject-nmi reaches every vCPU: the guest logs an unknown NMI on each CPU.
///
/// Each NMI prints two lines; when both CPUs print at once the kernel may keep one
/// CPU's first line in its log buffer until the next console flush, so the test waits
/// for both second lines, then powers the guest off (whose own messages flush the
/// buffer) and reads the whole console.
#[test]
#[ignore = "boots a guest: run by `make test`"]
fn inject_nmi_reaches_every_vcpu() {
    let (mut vm, mut q) = boot_with_qmp("nmi", &["-smp", "2"]);
    q.ok("inject-nmi", serde_json::Value::Null);
    vm.wait_for_count("Dazed and confused", 2, BOOT_TIMEOUT);
    q.ok("system_powerdown", serde_json::Value::Null);
    assert_eq!(vm.wait_exit(BOOT_TIMEOUT).code(), Some(0));
    let c = vm.console();
    assert!(c.contains("on CPU 0") && c.contains("on CPU 1"), "{c}");
}
